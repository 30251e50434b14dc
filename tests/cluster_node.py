"""A cluster node as an OS process, for the cluster tests and benchmarks.

Reads JSON-line commands on stdin, answers on stdout (same "id"), and pushes
events ({"event": ...}) as they happen.  With --history FILE it appends the
events the history checker needs (join, fence, acquire, release, accept) as
JSON lines, each stamped with the wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import gevent
import gevent.os

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import greentree  # noqa: E402
from greentree import ChildSpec, DynamicSupervisor, Server, Supervisor  # noqa: E402

OUT = sys.stdout.fileno()
HISTORY = None
NODE = ""


def emit(msg: dict) -> None:
    data = (json.dumps(msg, default=repr) + "\n").encode()
    while data:
        try:
            n = os.write(OUT, data)
        except BlockingIOError:
            gevent.get_hub().wait(gevent.get_hub().loop.io(OUT, 2))
            continue
        data = data[n:]


def record(ev: str, **fields) -> None:
    if HISTORY is not None:
        HISTORY.write(json.dumps({"t": time.time(), "ev": ev, "node": NODE, **fields}) + "\n")
        HISTORY.flush()


class Sink(Server):
    """Records what it receives; answers calls with ("echo", msg)."""

    def init(self, cluster, name):
        self.cluster = cluster
        self.cname = name
        self.got = []

    def _accept(self, msg):
        token = self.cluster.token(self.cname)
        if token is None:
            record("late", name=self.cname, inc=self.cluster.incarnation, msg=msg)
            return
        record("accept", name=self.cname, token=token, inc=self.cluster.incarnation, msg=msg)
        self.got.append(msg)

    def handle_call(self, msg, caller):
        if isinstance(msg, dict) and msg.get("sleep"):
            gevent.sleep(msg["sleep"])
        self._accept(msg)
        return ["echo", msg]

    def handle_cast(self, msg):
        self._accept(msg)

    def handle_info(self, msg):
        self._accept(msg)


class Node:
    def __init__(self, args):
        self.cluster = greentree.Cluster(args.etcd, node=args.node, ttl=args.ttl,
                                         listen=("127.0.0.1", 0), secret=args.secret.encode())
        self.sinks: dict = {}
        self.dyn = DynamicSupervisor(name="sinks", max_restarts=1000, max_seconds=1.0)
        self.topic_got: list = []
        self.cluster.monitor_nodes(self.on_node)
        self.cluster.monitor_names(self.on_name)
        self.local_echo = None

    def on_name(self, note):
        if note[0] == "claimed":
            record("acquire", name=note[1], token=note[2], inc=self.cluster.incarnation)
            emit({"event": "claimed", "name": note[1], "token": note[2], "t": time.time()})
        else:
            record("release", name=note[1], token=note[2], inc=self.cluster.incarnation, why=note[3])

    def on_node(self, note):
        c = self.cluster
        if note[0] == "joined":
            record("join", inc=note[2])
        elif note[0] == "fenced":
            wall = time.time() - (time.monotonic() - c.lease_deadline)
            record("end", inc=c.incarnation, t_end=min(time.time(), wall))
        emit({"event": note[0], "node": note[1], "detail": note[2] if len(note) > 2 else None,
              "t": time.time()})

    def start_sink(self, name: str, via: bool):
        spec_name = self.cluster.via(name) if via else None
        spec = ChildSpec(("sink", name, time.monotonic()), Sink, self.cluster, name, restart="temporary",
                         register=spec_name, start_timeout=None)
        g = self.dyn.start_child(spec)
        self.sinks[name] = g
        return g

    def op_register(self, name):
        g = self.start_sink(name, via=False)
        token = self.cluster.register(name, g)
        return {"token": token}

    def op_claim(self, name):
        gevent.spawn(self.start_sink, name, True)
        return {}

    def op_drop(self, name):
        g = self.sinks.pop(name, None)
        if g is not None:
            g.kill()
        return {}

    def op_local_call(self):
        if self.local_echo is None:
            self.local_echo = self.dyn.start_child(ChildSpec("local", Sink, self.cluster, "local"))
        return {"reply": self.local_echo.call("ping")}

    def op_whereis(self, name):
        o = self.cluster.whereis(name)
        return {"owner": None if o is None else [o.node, o.token]}

    def op_call_async(self, name, msg, call_timeout=5.0):
        def run():
            out = self.op_call(name, msg, call_timeout)
            emit({"event": "call_done", **out})

        gevent.spawn(run)
        return {}

    def op_call(self, name, msg, call_timeout=5.0):
        t0 = time.monotonic()
        try:
            return {"reply": self.cluster.call(name, msg, timeout=call_timeout), "elapsed": time.monotonic() - t0}
        except greentree.GreentreeError as e:
            return {"exc": type(e).__name__, "msg": str(e), "elapsed": time.monotonic() - t0}

    def op_send(self, name, msg, kind="send"):
        try:
            getattr(self.cluster, kind)(name, msg)
            return {"ok": True}
        except greentree.GreentreeError as e:
            return {"exc": type(e).__name__, "msg": str(e)}

    def op_received(self, name):
        g = self.sinks.get(name)
        return {"got": [] if g is None else g.got}

    def op_state(self):
        c = self.cluster
        from gevent import monkey

        return {"patched": monkey.is_module_patched("socket"), "state": c.state, "incarnation": c.incarnation,
                "nodes": sorted(c.nodes()), "stats": c.stats,
                "names": sorted(c._local), "port": c.address[1] if c.address else None}

    def op_subscribe(self, topic):
        self.cluster.subscribe(topic, lambda m: self.topic_got.append(m))
        return {}

    def op_publish(self, topic, msg):
        return {"nodes": self.cluster.publish(topic, msg)}

    def op_topic_got(self):
        return {"got": self.topic_got}

    def op_sender(self, name, interval=0.02, count=1000000):
        """Send {"seq", "inc", "deadline"} to ``name`` every ``interval`` until told to stop."""
        def loop():
            for seq in range(count):
                c = self.cluster
                try:
                    c.send(name, {"seq": seq, "from": NODE, "inc": c.incarnation, "sent": time.time()})
                except greentree.GreentreeError:
                    pass
                gevent.sleep(interval)

        self.sender = gevent.spawn(loop)
        return {}

    def op_claim_many(self, names):
        won = []
        for name in names:
            g = self.start_sink(name, via=False)
            try:
                token = self.cluster.register(name, g)
                won.append([name, token])
            except greentree.AlreadyRegisteredError:
                g.kill()
                self.sinks.pop(name, None)
        return {"won": won}

    def handle(self, cmd):
        op = cmd.pop("op")
        rid = cmd.pop("id")
        try:
            out = getattr(self, "op_" + op)(**cmd)
        except Exception as e:
            out = {"error": f"{type(e).__name__}: {e}", "raise": False, "exc": type(e).__name__}
        out["id"] = rid
        emit(out)

    def run(self):
        self.dyn.start()
        self.dyn.wait_started()
        root = Supervisor([self.cluster.child_spec()], name="root", max_restarts=100, max_seconds=1.0)
        root.start()
        root.wait_started()
        emit({"event": "listening", "port": self.cluster.address[1]})
        try:
            for cmd in read_commands():
                if cmd["op"] == "exit":
                    return
                gevent.spawn(self.handle, cmd)
        finally:
            root.stop(timeout=5.0)
            self.dyn.stop(timeout=5.0)
            record("end", inc=self.cluster.incarnation, t_end=time.time())


def read_commands():
    """The JSON commands on stdin, one per line, until EOF (reads never block the hub)."""
    fd = sys.stdin.fileno()
    gevent.os.make_nonblocking(fd)
    buf = b""
    while True:
        data = gevent.os.nb_read(fd, 65536)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, _, buf = buf.partition(b"\n")
            yield json.loads(line)


def main():
    global HISTORY, NODE
    if "--monkey" in sys.argv:
        from gevent import monkey

        monkey.patch_all()
    p = argparse.ArgumentParser()
    p.add_argument("--monkey", action="store_true", help="run monkey patched")
    p.add_argument("--etcd", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--ttl", type=float, default=2.0)
    p.add_argument("--secret", default="test-secret-123")
    p.add_argument("--history")
    args = p.parse_args()
    NODE = args.node
    if args.history:
        HISTORY = open(args.history, "a")
    gevent.os.make_nonblocking(OUT)
    Node(args).run()


if __name__ == "__main__":
    main()
