"""Cluster nodes in this process against a real etcd and a real redis-server
(every scenario that does not name etcd runs on both backends): membership,
names, messages, topics, bad frames, the hub never stalls."""

from __future__ import annotations

import struct
import time
import uuid

import gevent
import msgpack
import pytest
from cluster_support import (  # noqa: F401 (etcd_server, redis_server: fixtures)
    BACKENDS,
    EtcdServer,
    RedisServer,
    etcd_available,
    etcd_server,
    free_port,
    redis_server,
    worst_stall_during,
)
from gevent import socket

import greentree
from greentree import ChildSpec, Cluster, ClusterUnavailableError, Owner, Server, Supervisor
from greentree._cluster_link import connect
from greentree._cluster_proto import encode_envelope, seal
from greentree.testing import wait_until

needs_etcd = pytest.mark.skipif(not etcd_available(), reason="etcd is not installed (Debian package etcd-server)")

SECRET = b"test-secret-123"


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def url(request, backend):
    # A prefix per test: each test is its own cluster on the shared server.
    server = request.getfixturevalue(f"{backend}_server")
    return f"{server.url}/t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def nodes(url):
    """start(name, ...) -> a joined Cluster under its own root Supervisor; all stopped at teardown."""
    roots = []

    def start(name, ttl=2.0, wait_up=True, **kw):
        kw.setdefault("secret", SECRET)
        c = Cluster(kw.pop("url", url), node=name, ttl=ttl, listen=("127.0.0.1", 0), **kw)
        root = Supervisor([c.child_spec()], name=f"root-{name}", max_restarts=0, max_seconds=1.0)
        root.start()
        root.wait_started()
        roots.append(root)
        if wait_up:
            wait_until(lambda: c.state == "up", timeout=10, what=f"{name} up")
        c.root = root
        return c

    yield start
    for root in reversed(roots):
        root.stop(timeout=10)


class Echo(Server):
    def init(self):
        self.got = []

    def handle_call(self, msg, caller):
        if msg == "die":
            raise RuntimeError("asked to die")
        if isinstance(msg, dict) and "sleep" in msg:
            gevent.sleep(msg["sleep"])
        return ["echo", msg]

    def handle_cast(self, msg):
        self.got.append(("cast", msg))

    def handle_info(self, msg):
        self.got.append(("info", msg))


def serve(root, cid="echo"):
    return root.start_child(ChildSpec(cid, Echo, restart="temporary"))


# ---------------------------------------------------------------- membership
def test_nodes_see_each_other_join_and_leave(nodes):
    a = nodes("a")
    seen = []
    a.monitor_nodes(seen.append)
    b = nodes("b")
    wait_until(lambda: ("nodeup", "b") in seen, what="nodeup b at a")
    info = a.nodes()["b"]
    assert info.name == "b" and info.incarnation == b.incarnation and info.address == b.address
    wait_until(lambda: "a" in b.nodes(), what="b lists a")
    assert "a" not in a.nodes()
    b.root.stop(timeout=5)
    wait_until(lambda: ("nodedown", "b", "left") in seen, what="nodedown b (left) at a")
    assert a.nodes() == {}


def test_incarnations_grow_with_every_start(nodes, url):
    a = nodes("a")
    first = a.incarnation
    a.root.stop(timeout=5)
    a2 = nodes("a")
    assert a2.incarnation > first


def test_state_is_connecting_while_etcd_is_unreachable_and_local_trees_work(nodes):
    dead = f"etcd://127.0.0.1:{free_port()}/x"
    c = nodes("lonely", url=dead, wait_up=False)
    assert c.state == "connecting"
    with pytest.raises(ClusterUnavailableError, match="connecting"):
        c.register("x", c.root.start_child(ChildSpec("w", Echo, restart="temporary")))
    t0 = time.monotonic()
    with pytest.raises(ClusterUnavailableError):
        c.call("x", 1)
    assert time.monotonic() - t0 < 0.5
    # the local tree is unaffected: a local Server answers
    echo = serve(c.root, "local")
    assert echo.call("hi") == ["echo", "hi"]


# ---------------------------------------------------------------- names
def test_register_whereis_unregister_and_tokens_increase(nodes):
    a = nodes("a")
    b = nodes("b")
    ea, eb = serve(a.root), serve(b.root)
    t1 = a.register("billing", ea)
    assert a.register("billing", ea) == t1  # idempotent for the same owner
    assert b.whereis("billing") == Owner("a", t1)
    with pytest.raises(greentree.AlreadyRegisteredError) as info:
        b.register("billing", eb)
    assert info.value.owner == Owner("a", t1)
    a.unregister("billing")
    assert b.whereis("billing") is None
    t2 = b.register("billing", eb)
    assert t2 > t1 and a.whereis("billing") == Owner("b", t2)


def test_a_name_is_freed_when_its_owner_exits(nodes):
    a = nodes("a")
    b = nodes("b")
    ea = serve(a.root)
    t1 = a.register("x", ea)
    ea.stop()
    wait_until(lambda: b.whereis("x") is None, what="x freed")
    assert b.register("x", serve(b.root)) > t1


def test_via_claims_in_the_child_and_a_standby_takes_over(nodes):
    a = nodes("a")
    b = nodes("b")
    a.root.start_child(ChildSpec("single", Echo, register=a.via("single"), start_timeout=None, restart="temporary"))
    wait_until(lambda: a.token("single") is not None, what="a claims single")
    # b's child waits as a standby: it counts as started (b's supervisor goes
    # on), but its body does not run until it holds the name
    standby = b.root.start_child(ChildSpec("single", Echo, register=b.via("single"), start_timeout=None,
                                           restart="temporary"))
    gevent.sleep(0.3)
    assert b.token("single") is None and not hasattr(standby, "got")
    old = a.token("single")
    a.root.terminate_child("single")
    wait_until(lambda: b.token("single") is not None, what="b takes over")
    assert b.token("single") > old
    assert standby.call("x") == ["echo", "x"]
    assert a.whereis("single") == Owner("b", b.token("single"))


def test_via_with_wait_false_fails_the_start(nodes):
    a = nodes("a")
    b = nodes("b")
    a.register("x", serve(a.root))
    with pytest.raises(greentree.StartChildError):
        b.root.start_child(ChildSpec("x", Echo, register=b.via("x", wait=False), restart="temporary"))


# ---------------------------------------------------------------- messages
def test_call_cast_send_across_nodes(nodes):
    a = nodes("a")
    b = nodes("b")
    ea = serve(a.root)
    a.register("echo", ea)
    assert b.call("echo", {"n": [1, 2]}) == ["echo", {"n": [1, 2]}]
    assert a.call("echo", "local") == ["echo", "local"]
    b.cast("echo", 1)
    b.send("echo", 2)
    wait_until(lambda: len(ea.got) == 2, what="cast and send delivered")
    assert ea.got == [("cast", 1), ("info", 2)]
    with pytest.raises(TypeError, match="msgpack"):
        b.send("echo", object())


def test_call_errors_timeout_noproc_and_crash(nodes):
    a = nodes("a")
    b = nodes("b")
    a.register("echo", serve(a.root))
    with pytest.raises(greentree.CallTimeoutError):
        b.call("echo", {"sleep": 1.0}, timeout=0.2)
    with pytest.raises(greentree.NotRunningError):
        b.call("nobody", 1)
    t0 = time.monotonic()
    with pytest.raises(greentree.NotRunningError):
        b.call("echo", "die", timeout=5)
    assert time.monotonic() - t0 < 1.0


def test_call_fails_fast_when_the_owner_node_goes_down_mid_call(nodes):
    a = nodes("a")
    b = nodes("b")
    a.register("echo", serve(a.root))
    def call():
        try:
            return b.call("echo", {"sleep": 30}, 20.0)
        except greentree.NotRunningError as e:
            return e

    caller = gevent.spawn(call)
    gevent.sleep(0.2)
    t0 = time.monotonic()
    a.root.stop(timeout=5)
    assert isinstance(caller.get(timeout=5), greentree.NotRunningError)
    assert time.monotonic() - t0 < 3.0


def test_a_message_with_a_stale_token_is_dropped_and_counted(nodes):
    a = nodes("a")
    b = nodes("b")
    e1 = serve(a.root, "e1")
    t1 = a.register("x", e1)
    b.call("x", "warm")  # b's link to a exists
    a.unregister("x")
    e2 = serve(a.root, "e2")
    t2 = a.register("x", e2)
    assert t2 > t1
    link = b._link_to("a")
    link.send({"k": "send", "to": "x", "tok": t1, "m": "stale"})
    link.send({"k": "send", "to": "x", "tok": t2, "m": "fresh"})
    wait_until(lambda: e2.got, what="the fresh message")
    assert e2.got == [("info", "fresh")] and e1.got == []
    assert a.stats["dropped_stale_token"] == 1


# ---------------------------------------------------------------- topics
def test_publish_reaches_subscribers_on_every_node(nodes):
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    wait_until(lambda: len(a.nodes()) == 2, what="a sees b and c")
    got = {n: [] for n in "abc"}
    for n, cl in zip("abc", (a, b, c), strict=True):
        cl.subscribe("room:42", got[n].append)
    echo = serve(b.root)
    b.subscribe("room:42", echo)
    assert a.publish("room:42", {"text": "hi"}) == 3
    wait_until(lambda: all(got.values()) and echo.got, what="fan-out")
    assert got == {n: [{"text": "hi"}] for n in "abc"}
    assert echo.got == [("info", {"text": "hi"})]


# ---------------------------------------------------------------- bad input
def _frame(payload: bytes, mac: bytes = b"\0" * 32) -> bytes:
    return struct.pack(">I", len(payload)) + mac + payload


@pytest.mark.parametrize("what", ["garbage", "oversized", "wrong-version", "unauthenticated", "wrong-secret"])
def test_bad_frames_are_refused_and_the_transport_keeps_working(nodes, what):
    a = nodes("a", max_frame=4096)
    b = nodes("b")
    a.register("echo", serve(a.root))
    before = a.stats["refused_connections"]
    if what == "wrong-secret":
        with pytest.raises(Exception):
            connect(a.address, b"not-the-secret", ("evil", 1), 4096)
    else:
        s = socket.create_connection(a.address, timeout=5)
        s.recv(1024)  # the hello
        if what == "garbage":
            s.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
        elif what == "oversized":
            s.sendall(struct.pack(">I", 10_000_000) + b"x" * 100)
        elif what == "wrong-version":
            s.sendall(_frame(msgpack.packb({"v": 99, "k": "auth", "nonce": b"n" * 16, "node": "e", "inc": 1})))
        else:
            s.sendall(_frame(encode_envelope({"k": "auth", "nonce": b"n" * 16, "node": "e", "inc": 1})))
        s.settimeout(5)
        assert s.recv(1024) == b""  # closed by a
        s.close()
    wait_until(lambda: a.stats["refused_connections"] > before, what="the refusal counted")
    assert b.call("echo", "still fine") == ["echo", "still fine"]


def test_a_frame_replayed_on_a_link_is_refused(nodes):
    a = nodes("a", transport="links")
    b = nodes("b", transport="links")
    echo = serve(a.root)
    tok = a.register("echo", echo)
    link = b._link_to("a")
    payload = encode_envelope({"k": "send", "to": "echo", "tok": tok, "m": 1})
    frame = seal(link.key, link._out_dir, link._send_seq, payload)
    link.send_payload(payload)
    wait_until(lambda: echo.got, what="first delivery")
    link.sock.sendall(frame)  # the same bytes again: wrong sequence number, bad mac
    wait_until(lambda: link.closed, what="a closes the replaying link")
    assert echo.got == [("info", 1)]
    assert b.call("echo", "after") == ["echo", "after"]  # b reconnects


# ---------------------------------------------------------------- the hub
def test_cluster_work_never_stalls_the_hub(nodes, backend):
    a = nodes("a")
    b = nodes("b")
    a.register("echo", serve(a.root))

    def work():
        for i in range(200):
            b.call("echo", i)
            b.whereis("echo")
        # a request to a store that never answers: a listening socket that accepts nothing
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        path = "/0" if backend == "redis" else ""
        c = Cluster(f"{backend}://127.0.0.1:{silent.getsockname()[1]}{path}", node="c", ttl=3.0, secret=SECRET,
                    request_timeout=0.5)
        with pytest.raises(greentree.ClusterUnavailableError):
            c._store_call("probe", c._store.range, b"k")
        c._store.close()
        silent.close()

    worst = worst_stall_during(work)
    # A blocking store request would stall it for its whole 0.5 s timeout; the
    # bound leaves room for the OS scheduler of a loaded 2-core machine.
    assert worst < 0.2, f"the hub stalled for {worst * 1000:.1f} ms"


def test_bad_arguments_are_refused_clearly(url):
    with pytest.raises(ValueError, match="ttl"):
        Cluster(url, node="a", ttl=0.1, secret=SECRET)
    with pytest.raises(ValueError, match="secret"):
        Cluster(url, node="a", secret=b"x")
    with pytest.raises(ValueError, match="node"):
        Cluster(url, node="a/b", secret=SECRET)
    with pytest.raises(ValueError, match="advertise"):
        Cluster(url, node="a", secret=SECRET, listen=("0.0.0.0", 0))
    with pytest.raises(ValueError, match="scheme"):
        Cluster("foo://x:1", node="a", secret=SECRET)


# ---------------------------------------------------------------- operations CLI
def _cli(*args):
    import sys

    from gevent import subprocess

    return subprocess.run([sys.executable, "-m", "greentree", "cluster", *args], capture_output=True, text=True,
                          timeout=30)


def test_the_operations_cli_lists_nodes_and_names_and_finds_an_owner(nodes, url):
    import json

    a = nodes("a")
    b = nodes("b")
    tok = a.register("billing", serve(a.root))
    out = _cli("--etcd", url, "nodes")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["node", "incarnation", "address", "since"]
    assert {ln.split()[0] for ln in lines[1:]} == {"a", "b"}
    assert f"{b.address[0]}:{b.address[1]}" in out.stdout
    out = _cli("--etcd", url, "--json", "names")
    assert json.loads(out.stdout) == [{"name": "billing", "node": "a", "token": tok}]
    out = _cli("--etcd", url, "whereis", "billing")
    assert out.returncode == 0 and out.stdout.split()[-3:] == ["billing", "a", str(tok)]
    out = _cli("--etcd", url, "whereis", "nobody")
    assert out.returncode == 1 and "not registered" in out.stderr
    out = _cli("--etcd", f"etcd://127.0.0.1:{free_port()}", "--timeout", "0.5", "nodes")
    assert out.returncode == 3 and "etcd" in out.stderr
    out = _cli("--etcd", url, "whereis")
    assert out.returncode == 2 and "needs a NAME" in out.stderr


def test_the_cluster_child_restarted_by_its_supervisor_rejoins_as_a_new_incarnation(nodes):
    a = nodes("a")
    b = nodes("b")
    first = a.incarnation
    a.root.terminate_child("cluster")
    assert a.state == "stopped"
    wait_until(lambda: "a" not in b.nodes(), what="b sees a leave")
    a.root.restart_child("cluster")
    wait_until(lambda: a.state == "up", what="a rejoins")
    assert a.incarnation > first
    wait_until(lambda: "a" in b.nodes(), what="b sees a again")
    a.register("x", serve(a.root))
    assert b.call("x", 1) == ["echo", 1]


@needs_etcd
def test_etcd_dies_with_the_process_that_started_it(tmp_path):
    import os
    import sys

    from gevent import subprocess

    code = ("import sys, time; from greentree.testing import EtcdServer; "
            f"e = EtcdServer(base_dir={str(tmp_path)!r}).start(); print(e.procs[0].pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        os.kill(parent.pid, 9)  # no atexit, no finalizer: only PR_SET_PDEATHSIG is left
        parent.wait()

        def gone():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split()[2] == "Z"  # a zombie waiting for init to reap it
        wait_until(gone, timeout=10, what="etcd killed with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_two_greenlets_claiming_one_name_on_one_node_get_one_owner(nodes):
    a = nodes("a")
    e1, e2 = serve(a.root, "e1"), serve(a.root, "e2")

    def claim(g):
        try:
            return a.register("x", g)
        except greentree.AlreadyRegisteredError as e:
            return e

    r1, r2 = [g.get() for g in [gevent.spawn(claim, e1), gevent.spawn(claim, e2)]]
    tokens = [r for r in (r1, r2) if isinstance(r, int)]
    errors = [r for r in (r1, r2) if isinstance(r, greentree.AlreadyRegisteredError)]
    assert len(tokens) == 1 and len(errors) == 1
    assert errors[0].owner == Owner("a", tokens[0])
    assert a.call("x", "who") == ["echo", "who"]


def test_the_cli_in_this_process(nodes, url, capsys):
    from greentree._cluster_cli import main

    a = nodes("a")
    tok = a.register("x", serve(a.root))
    assert main(["--etcd", url, "names"]) == 0
    assert capsys.readouterr().out.split() == ["name", "node", "token", "x", "a", str(tok)]
    assert main(["--etcd", url, "--json", "whereis", "x"]) == 0
    assert f'"token": {tok}' in capsys.readouterr().out
    assert main(["--etcd", url, "whereis", "y"]) == 1
    assert main(["--etcd", url, "--json", "nodes"]) == 0
    assert '"node": "a"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--etcd", "foo://x:1", "nodes"])


def test_a_link_to_a_peer_that_stops_reading_is_cut_off_not_grown_forever(monkeypatch):
    from greentree import _cluster_link
    from greentree._cluster_proto import DIR_CONNECTOR, FrameReader

    monkeypatch.setattr(_cluster_link, "MAX_QUEUED", 1 << 20)
    mine, theirs = socket.socketpair()  # theirs is never read
    link = _cluster_link.Link(mine, b"k" * 32, DIR_CONNECTOR, FrameReader(), "slow", 1)
    try:
        with pytest.raises(ConnectionError, match="behind"):
            for _ in range(1000):
                link.send_payload(b"x" * 65536)
                gevent.sleep(0)  # the writer fills the socket buffers, then blocks
        assert link.closed
        with pytest.raises(ConnectionError, match="closed"):
            link.send_payload(b"y")
        wait_until(lambda: link._writer.dead, what="the writer ends")
    finally:
        link.close()
        theirs.close()


@needs_etcd
def test_an_etcd_outage_delays_a_via_start_and_burns_no_restart_intensity(tmp_path):
    port = free_port()
    c = Cluster(f"etcd://127.0.0.1:{port}/late", node="a", ttl=2.0, secret=SECRET)
    ran = []
    root = Supervisor([c.child_spec()], name="strict", max_restarts=0, max_seconds=1.0)
    root.start()
    root.wait_started()
    etcd = None
    try:
        root.start_child(ChildSpec("single", lambda: (ran.append(1), gevent.sleep(3600)),
                                   register=c.via("single")))
        gevent.sleep(1.0)  # etcd is down: the child waits for its name, the supervisor is fine
        assert c.state == "connecting" and ran == [] and not root.dead
        assert [ci.state for ci in root.which_children() if ci.id == "single"] == ["running"]
        etcd = EtcdServer(1, base_dir=str(tmp_path))
        etcd.client_ports[0] = port  # etcd comes up where the node was told to look
        etcd.start()
        wait_until(lambda: ran == [1], timeout=15, what="the delayed start")
        assert c.token("single") is not None and not root.dead
    finally:
        root.stop(timeout=10)
        if etcd is not None:
            etcd.stop()


def test_websocket_topics_span_the_cluster_through_a_bridge(nodes):
    """A message for a room reaches the WebSocket clients connected to any node, once."""
    import websocket  # websocket-client
    from wshelp import InThread, Served

    from greentree.websocket import Topics

    a, b = nodes("a"), nodes("b")
    wait_until(lambda: "b" in a.nodes() and "a" in b.nodes(), what="the nodes to see each other")
    ta, tb = Topics(), Topics()
    a.bridge_topics(ta)
    b.bridge_topics(tb)
    with pytest.raises(greentree.ArgumentError, match="already has a remote hook"):
        a.bridge_topics(ta)
    served = [
        Served(lambda conn, conv, body, t=t: t.publish("room", body) and None, codec="text",
               on_open=lambda c, t=t: t.join("room", c))
        for t in (ta, tb)
    ]
    try:
        def clients():
            return [websocket.create_connection(s.url, timeout=5) for s in served]

        ca, cb = InThread(clients).result()
        wait_until(lambda: len(ta.members("room")) == 1 and len(tb.members("room")) == 1, what="both to join")

        def talk():
            got = []
            ca.send("from a")
            got += [ca.recv(), cb.recv()]
            cb.send("from b")
            got += [ca.recv(), cb.recv()]
            ca.send("again")  # a duplicate of an earlier message would arrive before this one
            got += [ca.recv(), cb.recv()]
            ca.close()
            cb.close()
            return got

        assert InThread(talk).result() == ["from a", "from a", "from b", "from b", "again", "again"]
    finally:
        for s in served:
            s.stop()
