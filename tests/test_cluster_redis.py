"""What only the Redis backend has to prove, against real redis-servers:
a failover (primary + replica, replication cut, primary killed, replica
promoted with REPLICAOF NO ONE) and a restart that lost the data: no token is
given twice, the old owner is fenced within one refresh interval, claims wait
out one lease ttl, stale sends are dropped; the change log trimmed under a
watcher; redis-py calls never block the hub (and the ticker would see it if
they did)."""

from __future__ import annotations

import time
import uuid

import gevent
import pytest
from cluster_support import redis_available, worst_stall_during

from greentree import ChildSpec, Cluster, Server, Supervisor, _redis_store
from greentree.testing import RedisServer, TcpProxy, wait_until

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server (Debian) or redis-py is not installed")

SECRET = b"test-secret-123"
TTL = 2.0
INTERVAL = TTL / 3  # the refresh interval


class Echo(Server):
    def init(self):
        self.got = []

    def handle_call(self, msg, caller):
        return ["echo", msg]

    def handle_info(self, msg):
        self.got.append(msg)


class Node:
    """A Cluster under its own root, with what its monitors saw (timestamped)."""

    def __init__(self, url: str, name: str, **kw):
        self.c = Cluster(url, node=name, ttl=TTL, listen=("127.0.0.1", 0), secret=SECRET, **kw)
        self.notes: list = []
        self.names: list = []
        self.c.monitor_nodes(lambda n: self.notes.append((time.monotonic(), n)))
        self.c.monitor_names(lambda n: self.names.append((time.monotonic(), n)))
        self.root = Supervisor([self.c.child_spec()], name=f"root-{name}", max_restarts=0, max_seconds=1.0)
        self.root.start()
        self.root.wait_started()
        wait_until(lambda: self.c.state == "up", timeout=10, what=f"{name} up")

    def serve(self, cid: str) -> Echo:
        return self.root.start_child(ChildSpec(cid, Echo, restart="temporary"))

    def first(self, kind: str, after: float) -> float | None:
        for t, n in self.notes:
            if n[0] == kind and n[1] == self.c.node and t >= after:
                return t
        return None

    def tokens(self, name: str) -> list[int]:
        return [n[2] for _t, n in self.names if n[0] == "claimed" and n[1] == name]


@pytest.fixture
def made(request):
    """Everything a test starts, stopped at teardown in reverse order."""
    things: list = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, Node):
            thing.root.stop(timeout=10)
        else:
            thing.stop() if hasattr(thing, "stop") else thing.close()


@pytest.mark.timeout(60)
def test_failover_to_a_replica_that_missed_writes_reuses_no_token_and_fences_the_old_owner(tmp_path, made):
    rs = RedisServer(replicas=1, base_dir=str(tmp_path))
    proxy = TcpProxy(rs.ports[0])  # the replica reaches the primary through it: cut() is the partition
    rs.replica_of = proxy.port
    made += [rs, proxy]
    rs.start()
    url = f"{rs.url}/fo{uuid.uuid4().hex[:6]}"
    a, b = Node(url, "a"), Node(url, "b")
    made += [a, b]
    e1 = a.serve("e1")
    t1 = a.c.register("x", e1)
    assert b.c.call("x", "hi") == ["echo", "hi"]
    rs.wait_in_sync()

    proxy.cut()  # from here on the replica hears nothing
    a.c.unregister("x")
    e2 = a.serve("e2")
    t2 = a.c.register("x", e2)  # acknowledged by the primary only
    ty = a.c.register("y", a.serve("ey"))
    assert t2 > t1
    gevent.sleep(0.2)

    rs.kill(0)
    rs.promote(1)
    promoted = time.monotonic()

    # The old owner is fenced within one refresh interval of the promotion:
    # its next refresh reaches the new primary, which voided every lease.
    wait_until(lambda: a.first("fenced", promoted - 5) is not None, timeout=5, what="a fenced")
    fenced_at = a.first("fenced", promoted - 5)
    print(f"old owner fenced {fenced_at - promoted:.3f} s after the promotion")  # shown with pytest -s
    assert fenced_at - promoted <= INTERVAL + 0.3, f"fenced {fenced_at - promoted:.2f} s after the promotion"
    assert a.c.token("x") is None
    # Claims wait out one lease ttl after the new epoch: every old owner has
    # stopped by its own deadline before anyone may take its names.
    wait_until(lambda: a.first("joined", promoted) is not None, timeout=10, what="a rejoins")
    assert a.first("joined", promoted) - promoted >= TTL - 0.3
    wait_until(lambda: a.c.token("x") is not None, timeout=10, what="a re-claims x for e2")
    t3 = a.c.token("x")
    wait_until(lambda: b.c.state == "up" and b.c.names().get("x") == (a.c.node, t3), timeout=10,
               what="b sees the new grant")

    # No token given twice, each greater than every earlier one, even though
    # the new primary never saw t2 (nor ty).
    assert a.tokens("x") == [t1, t2, t3] and t1 < t2 < t3
    wait_until(lambda: a.c.token("y") is not None, what="a re-claims y")
    assert a.tokens("y") == [ty, a.c.token("y")] and a.c.token("y") > ty

    # Stale sends are dropped and counted; the current token gets through.
    before = a.c.stats["dropped_stale_token"]
    link = b.c._link_to("a")
    for tok in (t1, t2):
        link.send({"k": "send", "to": "x", "tok": tok, "m": f"stale {tok}"})
    link.send({"k": "send", "to": "x", "tok": t3, "m": "fresh"})
    wait_until(lambda: e2.got == ["fresh"], what="the fresh message")
    assert a.c.stats["dropped_stale_token"] - before == 2
    assert e1.got == [] and b.c.call("x", 1) == ["echo", 1]


@pytest.mark.timeout(60)
def test_a_restart_that_lost_the_data_reuses_no_token_and_fences_within_the_interval(tmp_path, made):
    rs = RedisServer(base_dir=str(tmp_path))
    made.append(rs)
    rs.start()
    url = f"{rs.url}/dl"
    a = Node(url, "a")
    made.append(a)
    e = a.serve("e")
    t1 = a.c.register("x", e)
    rs.kill(0)
    rs.start_server(0)  # no persistence: an empty server on the same port
    rs.wait_ready()
    back = time.monotonic()
    wait_until(lambda: a.first("fenced", back - 5) is not None, timeout=5, what="a fenced")
    print(f"fenced {a.first('fenced', back - 5) - back:.3f} s after the empty server answered")
    assert a.first("fenced", back - 5) - back <= INTERVAL + 0.3
    wait_until(lambda: a.c.token("x") is not None, timeout=10, what="a re-claims x")
    assert a.c.token("x") > t1
    assert a.first("joined", back) - back >= TTL - 0.3  # the quarantine


def test_a_watch_behind_a_trimmed_log_says_so_and_the_listing_has_everything(made, tmp_path):
    rs = RedisServer(base_dir=str(tmp_path))
    made.append(rs)
    rs.start()
    store = _redis_store.RedisStore([("127.0.0.1", rs.ports[0])], prefix="tr", ttl=2.0, log_max=5)
    made.append(store)
    root, end = b"tr/", b"tr0"
    rev, _ = store.range(root, end)
    for i in range(300):  # MAXLEN ~ 5: Redis trims whole stream nodes (100 entries each)
        store.create(root + b"k%03d" % i, b"")
    with pytest.raises(_redis_store.StoreError, match="trimmed"):
        next(iter(store.watch(root, end, rev + 1)))
    rev2, kvs = store.range(root, end)  # what the cluster does next: list again, watch from there
    assert len(kvs) == 300 and rev2 > rev
    store.create(root + b"late", b"")
    (typ, kv), = next(iter(store.watch(root, end, rev2 + 1)))
    assert (typ, kv.key) == ("PUT", root + b"late")


def test_redis_calls_never_block_the_hub_and_the_ticker_would_see_it(made, tmp_path, monkeypatch):
    from gevent import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    made.append(silent)

    def probe():
        store = _redis_store.RedisStore([("127.0.0.1", silent.getsockname()[1])], ttl=3.0, timeout=0.5)
        try:
            with pytest.raises(_redis_store.StoreUnavailable):
                store.range(b"k")
        finally:
            store.close()

    assert worst_stall_during(probe) < 0.2  # in the store's threads: the hub runs on
    monkeypatch.setattr(_redis_store, "_patched", lambda: True)  # pretend: call redis-py in the hub
    assert worst_stall_during(probe) >= 0.4  # the ticker sees the whole 0.5 s socket timeout


# ---------------------------------------------------------------- the inbox
@pytest.fixture
def pair(made, tmp_path):
    rs = RedisServer(base_dir=str(tmp_path))
    made.append(rs)
    rs.start()
    url = f"{rs.url}/ib{uuid.uuid4().hex[:6]}"
    a, b = Node(url, "a"), Node(url, "b")
    made += [a, b]
    assert a.c.transport == b.c.transport == "inbox"
    e = b.serve("e")
    tok = b.c.register("sink", e)
    wait_until(lambda: "b" in a.c.nodes() and a.c.names().get("sink"), what="a sees b and its name")
    return rs, a, b, e, tok


def test_inbox_trims_are_counted_exactly_and_order_kept(pair):
    _rs, a, b, e, _tok = pair
    for store in (a.c._store, b.c._store):
        store.inbox_max = 5  # MAXLEN ~ 5: whole stream nodes of 100 entries go
    for i in range(1000):  # queued without yielding: the writer appends 256 per store call
        a.c.send("sink", i)
    wait_until(lambda: e.got and e.got[-1] == 999, timeout=10, what="the last message")
    got, trimmed = e.got, b.c.stats["inbox_trimmed"]
    assert got == sorted(got) and len(set(got)) == len(got)  # in order, none twice
    assert trimmed > 0 and len(got) + trimmed == 1000, (len(got), trimmed)


def test_the_inbox_cursor_survives_killed_connections_nothing_lost_or_repeated(pair):
    from greentree._redis_server import command

    rs, a, b, e, _tok = pair
    sent = 0
    for _burst in range(6):
        for _ in range(50):
            a.c.send("sink", sent)
            sent += 1
        gevent.sleep(0.05)
        assert command(rs.ports[0], "CLIENT", "KILL", "TYPE", "normal").startswith(b":")
    failed = a.c.stats["inbox_send_failed"]
    wait_until(lambda: len(e.got) + failed >= sent, timeout=10, what="every message that was appended")
    gevent.sleep(0.3)
    assert e.got == sorted(set(e.got)) and len(e.got) + a.c.stats["inbox_send_failed"] == sent
    assert b.c.stats["inbox_trimmed"] == 0 and b.c.stats["dropped_replayed"] == 0


def test_a_replayed_or_forged_inbox_entry_is_refused(pair):
    _rs, a, b, e, tok = pair
    a.c.send("sink", "once")
    wait_until(lambda: e.got == ["once"], what="the first delivery")
    store = a.c._store
    stream = f"{store._base}:inbox:b"
    [(_id, fields)] = store._run(lambda: store._client().xrange(stream, count=1), "test")
    refused = b.c.stats["refused_connections"]
    for payload in (fields[b"p"], b"\0" * 32 + fields[b"p"][32:]):  # the same bytes again; a bad mac
        store._run(lambda p=payload: store._client().xadd(stream, {"n": 99, "p": p}), "test")
    a.c.send("sink", "twice")
    wait_until(lambda: e.got[-1:] == ["twice"], what="the next real message")
    assert e.got == ["once", "twice"]
    assert b.c.stats["dropped_replayed"] == 1 and b.c.stats["refused_connections"] == refused + 1


def test_the_next_process_of_a_node_goes_on_from_the_saved_cursor(pair, made):
    _rs, a, b, e, _tok = pair
    for i in range(10):
        a.c.send("sink", i)
    wait_until(lambda: len(e.got) == 10, what="10 delivered")
    store = b.c._store
    wait_until(lambda: store.inbox_cursor("b") == b.c._inbox.cursor, timeout=5, what="the cursor saved")
    b.root.stop(timeout=10)
    b2 = Node(a.c.url, "b")  # the same node name, a new process's Cluster
    made.append(b2)
    e2 = b2.serve("e2")
    b2.c.register("sink", e2)
    wait_until(lambda: a.c.names().get("sink", (None,))[0] == "b" and "b" in a.c.nodes(), what="a sees b again")
    a.c.send("sink", "new")
    wait_until(lambda: e2.got == ["new"], what="delivery to the new process")
    # The 10 entries the old process read are not read again (else each
    # would count as an entry for an old incarnation).
    assert b2.c.stats["dropped_old_incarnation"] == 0 and b2.c.stats["inbox_trimmed"] == 0
