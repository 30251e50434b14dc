"""ClusterSupervisor with its nodes in this process against a real etcd and a real Redis: placement,
restart types, terminate, graceful leave with handoff, rebalancing on join, bad specs."""

from __future__ import annotations

import logging
import uuid

import cluster_sup_jobs as J
import pytest
from cluster_support import BACKENDS, etcd_server, redis_server, worst_stall_during  # noqa: F401 (fixtures)

from greentree import (
    AlreadyStartedError,
    ChildNotFoundError,
    ChildSpec,
    ChildSpecError,
    Cluster,
    ClusterChild,
    ClusterSupervisor,
    Supervisor,
)
from greentree.testing import wait_until


@pytest.fixture(params=BACKENDS)
def store_server(request):
    """The store each scenario runs on: etcd, then Redis (each skipped, saying why, if missing)."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def nodes(store_server):
    """start(name, **cs_options) -> (cluster, cluster supervisor, root); all stopped at teardown."""
    url = f"{store_server.url}/t{uuid.uuid4().hex[:8]}"
    roots = []
    clusters = []

    def start(name, **kw):
        c = Cluster(url, node=name, ttl=2.0, secret=b"test-secret-123")
        cs = ClusterSupervisor(c, "jobs", **kw)
        root = Supervisor([c.child_spec(), cs.child_spec()], name=f"root-{name}", max_restarts=0)
        root.start()
        root.wait_started()
        roots.append(root)
        clusters.append(c)
        live = [x for x in clusters if x.state != "stopped"]
        names = {x.node for x in live}
        wait_until(lambda: all(x.state == "up" and set(x.records("cs.jobs.member")) == names for x in live),
                   timeout=10, what=f"{name} up and seen by every node")
        return c, cs, root

    yield start
    for root in reversed(roots):
        root.stop(timeout=10)


def counters(cs, n, prefix="c"):
    for i in range(n):
        cs.start_child(ChildSpec(f"{prefix}{i}", J.Counter, f"{prefix}{i}"))


def all_running(cs, n):
    children = cs.which_children()
    return len(children) == n and all(ch.state == "running" for ch in children)


def placed(*css):
    """id -> node, from every node's local children; asserts no id runs twice."""
    seen = {}
    for cs in css:
        for cid in cs.local_children():
            assert cid not in seen, f"{cid} runs on {seen[cid]} and {cs.cluster.node}"
            seen[cid] = cs.cluster.node
    return seen


def test_children_run_once_across_the_nodes_and_answer_by_id(nodes):
    (ca, a, _), (cb, b, _), (_cc, c, _) = nodes("a"), nodes("b"), nodes("c")
    counters(a, 12)
    wait_until(lambda: all_running(b, 12) and len(placed(a, b, c)) == 12, timeout=10, what="12 running")
    where = placed(a, b, c)
    assert len(set(where.values())) == 3, "hash placement uses every member"
    for ch in c.which_children():
        assert isinstance(ch, ClusterChild) and ch.node == where[ch.id]
        assert ca.whereis(ch.id).token == ch.token
    cb.cast("c5", "inc")
    assert cb.call("c5", "get") == {"count": 1, "handed": False}  # after the cast: one link, in order


def test_least_loaded_spreads_children_evenly(nodes):
    (_, a, _), (_, b, _) = nodes("a", placement="least_loaded"), nodes("b", placement="least_loaded")
    counters(b, 6)
    wait_until(lambda: len(placed(a, b)) == 6, timeout=10, what="6 running")
    assert sorted(placed(a, b).values()) == ["a"] * 3 + ["b"] * 3


def test_restart_types_decide_what_comes_back(nodes):
    (ca, a, _), (_cb, _b, _) = nodes("a"), nodes("b")
    a.start_child(ChildSpec("perm", J.Counter, "perm"))
    a.start_child(ChildSpec("trans", J.finish, "trans", restart="transient"))
    a.start_child(ChildSpec("temp", J.crash, "temp", restart="temporary"))
    wait_until(lambda: [ch.id for ch in a.which_children()] == ["perm"] and all_running(a, 1), timeout=10,
               what="transient and temporary children done, the permanent one running")
    before = ca.whereis("perm")
    with pytest.raises(Exception):
        ca.call("perm", "crash")
    wait_until(lambda: (ca.whereis("perm") or before).token > before.token, timeout=10, what="perm restarted")
    assert ca.whereis("perm").node == before.node, "a restart stays on the child's node"


def test_terminate_child_stops_it_wherever_it_runs(nodes):
    (ca, a, _), (_cb, b, _) = nodes("a"), nodes("b")
    counters(a, 4)
    wait_until(lambda: all_running(a, 4), timeout=10, what="4 running")
    for i in range(4):
        b.terminate_child(f"c{i}")
        assert ca.whereis(f"c{i}") is None
    assert a.which_children() == [] and placed(a, b) == {}
    with pytest.raises(ChildNotFoundError, match="no such child"):
        a.terminate_child("c0")


def test_start_child_refuses_specs_it_cannot_store(nodes):
    _, a, _ = nodes("a")

    class Local(J.Counter):
        pass

    bad = [
        (ChildSpec("x", lambda: None), "define it at module level"),
        (ChildSpec("x", Local, "x"), "module level"),
        (ChildSpec("x", J.Counter, object()), "msgpack"),
        (ChildSpec("x", J.Counter, kwargs={"s": {1, 2}}), "msgpack"),
        (ChildSpec(7, J.Counter, 7), "must be a non-empty str"),
        (ChildSpec("x", J.Counter, "x", register=a.cluster.via("x")), "register= is not allowed"),
        (ChildSpec("x", J.Counter, b"y" * 100_000), "over the limit"),
    ]
    for spec, why in bad:
        with pytest.raises(ChildSpecError, match=why):
            a.start_child(spec)
    with pytest.raises(ChildSpecError, match="expected a ChildSpec"):
        a.start_child("x")
    assert a.which_children() == []
    a.start_child(ChildSpec("x", J.Counter, "x"))
    with pytest.raises(AlreadyStartedError, match="exists"):
        a.start_child(ChildSpec("x", J.Counter, "x"))


def test_a_graceful_leave_hands_each_child_state_to_its_successor(nodes):
    (ca, a, _), (_cb, b, root_b) = nodes("a"), nodes("b")
    counters(a, 8)
    wait_until(lambda: len(placed(a, b)) == 8, timeout=10, what="8 running")
    for i in range(8):
        for _ in range(i):
            ca.cast(f"c{i}", "inc")
    moving = [cid for cid, node in placed(a, b).items() if node == "b"]
    assert moving
    wait_until(lambda: ca.call("c7", "get")["count"] == 7 and ca.call(moving[0], "get")["count"] > -1, timeout=5)
    root_b.stop(timeout=10)
    wait_until(lambda: len(a.local_children()) == 8, timeout=10, what="b's children on a")
    for i in range(8):
        got = ca.call(f"c{i}", "get")
        assert got["count"] == i
        assert got["handed"] == (f"c{i}" in moving)


def test_a_handoff_state_over_the_limit_is_dropped_and_reported(nodes, caplog):
    (ca, a, _), (_cb, b, root_b) = nodes("a"), nodes("b", handoff_limit=1000)
    for i in range(6):
        a.start_child(ChildSpec(f"big{i}", J.Big, f"big{i}", 5))
    wait_until(lambda: len(placed(a, b)) == 6, timeout=10, what="6 running")
    moving = [cid for cid, node in placed(a, b).items() if node == "b"]
    with caplog.at_level(logging.ERROR, logger="greentree"):
        root_b.stop(timeout=10)
    wait_until(lambda: len(a.local_children()) == 6, timeout=10, what="b's children on a")
    assert all(ca.call(cid, "get") == {"count": 5, "handed": False} for cid in moving)
    assert "not msgpack data within 1000 bytes" in caplog.text


def test_rebalancing_on_join_moves_children_by_handoff_only_when_asked(nodes):
    (ca, a, _) = nodes("a", rebalance=True)
    counters(a, 9)
    wait_until(lambda: len(a.local_children()) == 9, timeout=10, what="9 on a")
    for i in range(9):
        ca.cast(f"c{i}", "inc")
    wait_until(lambda: all(ca.call(f"c{i}", "get")["count"] == 1 for i in range(9)), timeout=5)
    tokens = {ch.id: ch.token for ch in a.which_children()}
    (cb, b, _) = nodes("b", rebalance=True)
    wait_until(lambda: len(b.local_children()) > 0 and len(placed(a, b)) == 9, timeout=10, what="moves to b")
    moved = sorted(b.local_children())
    for i in range(9):
        assert ca.call(f"c{i}", "get") == {"count": 1, "handed": f"c{i}" in moved}
    assert all(ch.token == tokens[ch.id] for ch in a.which_children() if ch.id not in moved)


def test_without_rebalancing_a_joining_node_gets_only_new_children(nodes):
    (ca, a, _) = nodes("a")
    counters(a, 6)
    wait_until(lambda: len(a.local_children()) == 6, timeout=10, what="6 on a")
    (cb, b, _) = nodes("b")
    counters(b, 6, prefix="n")
    wait_until(lambda: len(placed(a, b)) == 12, timeout=10, what="12 running")
    assert all(node == "a" for cid, node in placed(a, b).items() if cid.startswith("c"))


def test_too_many_restarts_on_a_node_stop_its_cluster_supervisor(nodes, caplog):
    (ca, a, root_a) = nodes("a", max_restarts=2, max_seconds=10.0)
    with caplog.at_level(logging.ERROR, logger="greentree"):
        a.start_child(ChildSpec("looping", J.crash, "looping"))
        wait_until(lambda: root_a.dead, timeout=10, what="the node's tree to give up")
    assert "more than 2 restarts in 10.0 s on node 'a'; last: 'looping' (crash)" in caplog.text
    assert a.local_children() == {}


def test_placing_and_handing_off_children_never_stalls_the_hub(nodes):
    (_ca, a, _), (_cb, b, root_b) = nodes("a"), nodes("b")

    def place_and_hand_off():
        counters(a, 40)
        wait_until(lambda: len(placed(a, b)) == 40, timeout=15, what="40 running")
        root_b.stop(timeout=10)  # b hands its share to a
        wait_until(lambda: len(a.local_children()) == 40, timeout=15, what="40 on a")

    worst = worst_stall_during(place_and_hand_off)
    # Every store request is on gevent sockets or in the threadpool; the bound
    # leaves room for the OS scheduler of a loaded 2-core machine.
    assert worst < 0.2, f"the hub stalled for {worst * 1000:.1f} ms"


def test_specs_and_handed_off_state_outlive_every_node(nodes):
    (ca, a, root_a) = nodes("a")
    counters(a, 3)
    wait_until(lambda: all_running(a, 3), timeout=10, what="3 running")
    for _ in range(4):
        ca.cast("c1", "inc")
    wait_until(lambda: ca.call("c1", "get")["count"] == 4, timeout=5)
    root_a.stop(timeout=10)  # the last node leaves: the state waits in etcd
    (cb, b, _) = nodes("b")
    wait_until(lambda: all_running(b, 3), timeout=10, what="3 running on the next node")
    assert cb.call("c1", "get") == {"count": 4, "handed": True}
    assert cb.call("c0", "get") == {"count": 0, "handed": True}


def test_children_wait_as_pending_while_no_node_runs_the_supervisor(nodes, store_server):
    (ca, a, root_a) = nodes("a")
    root_a.terminate_child("cluster_supervisor:jobs")  # a stays in the cluster, its share goes
    a.start_child(ChildSpec("later", J.Counter, "later"))
    assert a.which_children() == [ClusterChild("later", None, None, "pending")]
    root_a.restart_child("cluster_supervisor:jobs")
    wait_until(lambda: all_running(a, 1), timeout=10, what="started once a member is back")
