"""Scenario: the cluster on a real etcd, nodes in separate OS processes.

* call round trip: ``cluster.call`` to a Server on another node (another
  process, over the authenticated TCP link) vs a local ``Server.call`` in the
  same run: what a user pays to cross a process boundary.
* call throughput: 32 concurrent callers for a fixed time, same two sides.
* publish fan-out: ``cluster.publish`` to subscribers on 3 other nodes, until
  all 3 have every message, vs publishing on this node alone.
* claim rate: ``register`` + ``unregister`` of fresh names vs the bare etcd
  transaction that a claim is (the floor: create-if-absent + delete).
* takeover after SIGKILL: a ``via`` standby here, the owner in a process
  that is SIGKILLed; time until the standby holds the name (ttl 2 s).

Needs ``etcd`` (Debian ``etcd-server``); without it the scenario reports
nothing and says why.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import gevent

from greentree import ChildSpec, Cluster, Server, Supervisor
from greentree.testing import wait_until

from ._harness import Config, Row, percentile, perf_counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

NAME = "cluster"
TITLE = "cluster on etcd: cross-node call, publish fan-out, claim rate, takeover (nodes in other processes)"
SECRET = "bench-secret-123"


class Echo(Server):
    def handle_call(self, msg, caller):
        return msg


def _local_calls(server, n: int) -> list[float]:
    lat = []
    for i in range(n):
        t = perf_counter()
        server.call(i)
        lat.append(perf_counter() - t)
    return lat


def _remote_calls(cluster, n: int) -> list[float]:
    lat = []
    for i in range(n):
        t = perf_counter()
        cluster.call("echo", i)
        lat.append(perf_counter() - t)
    return lat


def _throughput(call, seconds: float, workers: int = 32) -> float:
    done = [0]
    stop = time.monotonic() + seconds

    def worker():
        while time.monotonic() < stop:
            call()
            done[0] += 1

    t = perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(workers)], raise_error=True)
    return done[0] / (perf_counter() - t)


def run(cfg: Config) -> list[Row]:
    from cluster_support import EtcdServer, etcd_available

    if not etcd_available():
        print("cluster: etcd is not installed (apt-get install etcd-server): skipped", file=sys.stderr)
        return []
    return run_on(cfg, EtcdServer(1), NAME)


def run_on(cfg: Config, server, name: str) -> list[Row]:
    """The scenario on ``server`` (an EtcdServer or a RedisServer, not started), rows named ``name``."""
    from cluster_support import NodeProc

    etcd = server.start()
    procs: list = []
    root = None
    try:
        url = f"{etcd.url}/bench{uuid.uuid4().hex[:6]}"
        me = Cluster(url, node="bench", ttl=2.0, secret=SECRET.encode())
        root = Supervisor([me.child_spec()], name="bench-root", max_restarts=0, max_seconds=1.0)
        root.start()
        root.wait_started()
        peers = [NodeProc(url, f"peer{i}", ttl=2.0, secret=SECRET) for i in range(3)]
        procs += peers
        for p in peers:
            p.wait_up()
        wait_until(lambda: me.state == "up" and len(me.nodes()) == 3, timeout=15,
                                     what="3 peers seen")
        peers[0].request("register", name="echo")
        rows: list[Row] = []
        n = 200 if cfg.smoke else 5000
        local = root.start_child(ChildSpec("local-echo", Echo, restart="temporary"))
        _local_calls(local, 50)
        _remote_calls(me, 50)
        cfg.log(f"call round trip x{n}")
        loc, rem = _local_calls(local, n), _remote_calls(me, n)
        for p in (50, 99):
            lp, rp = percentile(loc, p) * 1e6, percentile(rem, p) * 1e6
            rows.append(Row(name, f"call round trip p{p}", "latency", "us", lp, rp,
                            extra={"floor_is": "local Server.call in this process"}))
        secs = 0.5 if cfg.smoke else 5.0
        cfg.log(f"call throughput, 32 callers, {secs} s per side")
        lt = _throughput(lambda: local.call(1), secs)
        rt = _throughput(lambda: me.call("echo", 1), secs)
        rows.append(Row(name, "call throughput (32 callers)", "calls/s", "calls/s", lt, rt,
                        extra={"floor_is": "local Server.call in this process"}))
        # publish fan-out
        m = 100 if cfg.smoke else 2000
        for p in peers:
            p.request("subscribe", topic="room")
        got_here: list = []
        me.subscribe("room", got_here.append)
        cfg.log(f"publish fan-out x{m} to 3 nodes")
        t = perf_counter()
        for i in range(m):
            me.publish("room", i)
        deadline = time.monotonic() + 30
        while any(len(p.request("topic_got")["got"]) < m for p in peers):
            if time.monotonic() > deadline:
                raise RuntimeError("publish fan-out: not every message arrived in 30 s")
            gevent.sleep(0.01)
        fan = (perf_counter() - t) / m
        me.unsubscribe("room", got_here.append)
        rows.append(Row(name, "publish to 3 other nodes (until all received)", "per message", "us",
                        None, fan * 1e6, extra={"messages": m}))
        # claim rate
        k = 30 if cfg.smoke else 500
        dummy = root.start_child(ChildSpec("claimer", Echo, restart="temporary"))
        cfg.log(f"claim rate x{k}")
        t = perf_counter()
        for i in range(k):
            me.register(f"c{i}", dummy)
            me.unregister(f"c{i}")
        claim = k / (perf_counter() - t)
        etcd_client = me._store
        t = perf_counter()
        for _ in range(k):
            key = f"raw/{uuid.uuid4().hex}".encode()
            _ok, rev, _ = etcd_client.create(key, b"x", me._lease)
            etcd_client.delete_if(key, rev)
        raw = k / (perf_counter() - t)
        rows.append(Row(name, "claim + release", "rate", "claims/s", raw, claim,
                        extra={"floor_is": f"the bare {me._store.kind} create-if-absent + delete"}))
        # takeover after SIGKILL
        owner = NodeProc(url, "owner", ttl=2.0, secret=SECRET)
        procs.append(owner)
        owner.wait_up()
        owner.request("register", name="single")
        standby = root.start_child(ChildSpec("single", Echo, register=me.via("single"), restart="temporary",
                                             start_timeout=None))
        gevent.sleep(0.2)
        killed = owner.kill()
        wait_until(lambda: me.token("single") is not None, timeout=10, what="takeover")
        takeover = time.time() - killed
        rows.append(Row(name, "takeover after SIGKILL (ttl 2 s)", "time", "ms", None, takeover * 1000,
                        target="<= ttl + 1 s", met=takeover <= 3.0))
        standby.stop()
        return rows
    finally:
        for p in procs:
            p.stop()
        if root is not None:
            root.stop(timeout=10)
        etcd.stop()
