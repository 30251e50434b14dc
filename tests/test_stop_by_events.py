"""A supervisor's shutdown as a state its children's exits advance, compared with
the shutdown that waits for those exits in a greenlet spawned for it.

Both run the same protocol (``_children.stop_steps``): these tests drive the
same trees through both ways (and, for the exit deliveries, through every
delivery path of ``tests/delivery.py``) and compare the order of the
exits, their kinds and reasons, ``describe()``, and the kill escalation: a
child that ignores its stop is killed at its deadline, one that ignores the
kill too is a zombie, and greentree's kill sent to a stopping supervisor
kills what it still waits for.
"""

from __future__ import annotations

import time

import gevent
import pytest
from delivery import PATHS, count_spawned, deliver_by, normalise
from gevent.event import Event

from greentree import ChildSpec, DynamicSupervisor, ShutdownExit, Supervisor, _process
from greentree._base import SupervisorBase
from greentree.testing import wait_until

WAYS = ["events", "waiting"]


def _setup(way, path, monkeypatch):
    """Stop by events or by waiting; deliver every event by ``path``; count spawned greenlets."""
    monkeypatch.setattr(SupervisorBase, "_stop_by_events", way == "events")
    deliver_by(path, monkeypatch)
    return count_spawned(monkeypatch)


def _watch(order, name, child):
    child.gt_add_exit_hook(lambda c: order.append((name, c._gt_exit_rec.kind, repr(c._gt_exit_rec.reason))))


def _slow_stop(log, name, seconds=0.01):
    """A child that takes ``seconds`` to clean up when stopped."""
    def body():
        try:
            gevent.sleep(3600)
        except ShutdownExit:
            log.append(("stopping", name))
            gevent.sleep(seconds)
            log.append(("stopped", name))
            raise
    return body


# ---------------------------------------------------------------- a talked connection tree

def _drive_tree(way, path, monkeypatch):
    """The shape of a WebSocket connection tree: a significant child ends, the
    rest_for_one tree shuts down, stopping a pool whose child takes a while."""
    spawned = _setup(way, path, monkeypatch)
    order: list = []
    log: list = []
    go = Event()
    specs = [
        ChildSpec("main", go.wait, restart="temporary", significant=True),
        DynamicSupervisor.child_spec("pool", name="pool"),
        Supervisor.child_spec("empty", [], name="empty"),
    ]
    sup = Supervisor(specs, strategy="rest_for_one", auto_shutdown="any_significant", name="tree")
    sup.start()
    sup.wait_started()
    children = {i.id: i.child for i in sup.which_children()}
    sender = children["pool"].start_child(ChildSpec(None, _slow_stop(log, "sender"), restart="temporary"))
    _watch(order, "sender", sender)
    for cid, child in children.items():
        _watch(order, cid, child)
    _watch(order, "tree", sup)
    wait_until(lambda: not sup._mb_busy and sender.gr_frame is not None)
    del spawned[:]
    go.set()
    sup.join(5)
    assert sup.dead and sender.dead
    return order, log, normalise(sup.describe()), len(spawned)


def test_a_tree_stopping_by_events_is_the_same_as_one_waiting_in_a_greenlet(monkeypatch):
    results = {(way, path): _drive_tree(way, path, monkeypatch) for way in WAYS for path in PATHS}
    order, log, _snapshot, spawned = results["events", "inline"]
    assert [o[:2] for o in order] == [
        ("main", "normal"), ("empty", "shutdown"), ("sender", "shutdown"), ("pool", "shutdown"),
        ("tree", "shutdown"),
    ]
    assert log == [("stopping", "sender"), ("stopped", "sender")]
    for key, result in results.items():
        assert result[:3] == results["events", "inline"][:3], key
    assert spawned == 0  # the sender's exit, in its own greenlet, finishes the pool, then the tree
    assert results["waiting", "inline"][3] == 2  # one greenlet per level waits


# ---------------------------------------------------------------- stop(): order and deadlines

def _drive_stop(way, path, monkeypatch):
    """stop() on a nested tree whose children take time to stop: the caller waits for it all."""
    spawned = _setup(way, path, monkeypatch)
    order: list = []
    log: list = []
    inner = [ChildSpec(c, _slow_stop(log, "inner-" + c)) for c in "xy"]
    specs = [
        ChildSpec("a", _slow_stop(log, "a")),
        Supervisor.child_spec("inner", inner, name="inner"),
        ChildSpec("b", _slow_stop(log, "b"), shutdown=2.0),
    ]
    sup = Supervisor(specs, name="top")
    sup.start()
    sup.wait_started()
    children = {i.id: i.child for i in sup.which_children()}
    grandchildren = {i.id: i.child for i in children["inner"].which_children()}
    for name, child in {**children, **{"inner-" + k: v for k, v in grandchildren.items()}}.items():
        _watch(order, name, child)
    wait_until(lambda: all(g.gr_frame is not None for g in [children["a"], children["b"], *grandchildren.values()]))
    wait_until(lambda: not sup._mb_busy)
    del spawned[:]
    sup.stop()
    # The caller waited for the whole tree.
    assert sup.dead and all(c.dead for c in [*children.values(), *grandchildren.values()])
    return order, log, normalise(sup.describe()), len(spawned)


def test_stop_by_events_stops_in_reverse_order_and_waits_for_the_whole_tree(monkeypatch):
    results = {(way, path): _drive_stop(way, path, monkeypatch) for way in WAYS for path in PATHS}
    order, log, _snapshot, _spawned = results["events", "inline"]
    assert [o[:2] for o in order] == [
        ("b", "shutdown"), ("inner-y", "shutdown"), ("inner-x", "shutdown"), ("inner", "shutdown"),
        ("a", "shutdown"),
    ]
    assert log == [
        ("stopping", "b"), ("stopped", "b"), ("stopping", "inner-y"), ("stopped", "inner-y"),
        ("stopping", "inner-x"), ("stopped", "inner-x"), ("stopping", "a"), ("stopped", "a"),
    ]
    for key, result in results.items():
        assert result[:3] == results["events", "inline"][:3], key
    assert results["events", "inline"][3] == 0
    assert results["waiting", "inline"][3] >= 2


# ---------------------------------------------------------------- the kill escalation

def _stubborn(log, name, ignore_kill=False):
    """Ignores ShutdownExit (and, with ``ignore_kill``, greentree's kill too, once)."""
    def body():
        ignored = 0
        while True:
            try:
                gevent.sleep(3600)
            except ShutdownExit:
                log.append(("ignored stop", name, time.monotonic()))
            except BaseException:
                if not ignore_kill or ignored:
                    log.append(("killed", name, time.monotonic()))
                    raise
                ignored += 1
                log.append(("ignored kill", name, time.monotonic()))
                gevent.sleep(3600)  # and now nothing wakes it up but the end of the test
    return body


def _drive_escalation(way, path, monkeypatch, *, in_pool, ignore_kill=False, caller_timeout=None):
    monkeypatch.setattr(_process, "KILL_GRACE", 0.05)
    _setup(way, path, monkeypatch)
    order: list = []
    log: list = []
    shutdown = None if caller_timeout is not None else 0.05
    stubborn = ChildSpec("stubborn", _stubborn(log, "stubborn", ignore_kill), shutdown=shutdown,
                         restart="temporary")
    quick = ChildSpec("quick", gevent.sleep, 3600)
    if in_pool:
        specs = [quick, DynamicSupervisor.child_spec("pool", name="pool")]
    else:
        specs = [quick, stubborn]
    sup = Supervisor(specs, name="top")
    sup.start()
    sup.wait_started()
    children = {i.id: i.child for i in sup.which_children()}
    if in_pool:
        children["stubborn"] = children["pool"].start_child(stubborn)
    for name, child in children.items():
        _watch(order, name, child)
    wait_until(lambda: children["stubborn"].gr_frame is not None)
    asked = time.monotonic()
    sup.stop(timeout=caller_timeout)
    assert sup.dead
    stops = [t for what, _n, t in log if what == "ignored stop"]
    kills = [t for what, _n, t in log if what in ("killed", "ignored kill")]
    assert stops and kills
    deadline = caller_timeout if caller_timeout is not None else shutdown
    assert kills[0] - asked >= deadline * 0.9  # killed at its deadline, not before
    result = [o[:2] for o in order], [entry[:2] for entry in log], normalise(sup.describe())
    if ignore_kill:
        assert sup.describe()["zombies"] + (children["pool"].describe()["zombies"] if in_pool else 0) == 1
        children["stubborn"].kill(block=True, timeout=1)  # the end of the test: let the zombie go
    return result


@pytest.mark.parametrize("in_pool", [False, True], ids=["child", "grandchild"])
@pytest.mark.parametrize("ignore_kill", [False, True], ids=["killed", "zombie"])
def test_a_child_that_ignores_its_stop_is_killed_at_its_deadline_either_way(in_pool, ignore_kill, monkeypatch):
    results = {
        (way, path): _drive_escalation(way, path, monkeypatch, in_pool=in_pool, ignore_kill=ignore_kill)
        for way in WAYS for path in PATHS
    }
    order, log, snapshot = results["events", "inline"]
    if not ignore_kill:
        assert log == [("ignored stop", "stubborn"), ("killed", "stubborn")]
    else:
        assert log == [("ignored stop", "stubborn"), ("ignored kill", "stubborn")]
        assert ("'zombies': 1" in snapshot) is not in_pool  # (a grandchild is the pool's zombie)
    assert order[-1] == ("quick", "shutdown")  # stopped after it, in reverse order
    for key, result in results.items():
        assert result == results["events", "inline"], key


@pytest.mark.parametrize("in_pool", [False, True], ids=["child", "grandchild"])
def test_stop_with_a_timeout_kills_what_a_stopping_tree_still_waits_for(in_pool, monkeypatch):
    # shutdown=None: the child would be waited for forever; the caller's timeout escalates.
    results = {
        (way, path): _drive_escalation(way, path, monkeypatch, in_pool=in_pool, caller_timeout=0.05)
        for way in WAYS for path in PATHS
    }
    order, log, _snapshot = results["events", "inline"]
    assert log == [("ignored stop", "stubborn"), ("killed", "stubborn")]
    for key, result in results.items():
        assert result == results["events", "inline"], key


def test_a_sibling_that_crashes_while_its_supervisor_stops_by_events_is_not_restarted():
    """While it waits for a child's exit, a stopping supervisor changes nothing else:
    a sibling that exits meanwhile is not restarted, and it reports no mailbox backlog."""
    log: list = []
    specs = [ChildSpec("early", gevent.sleep, 3600), ChildSpec("slow", _slow_stop(log, "slow", 0.05))]
    sup = Supervisor(specs, name="top")
    sup.start()
    sup.wait_started()
    children = {i.id: i.child for i in sup.which_children()}
    wait_until(lambda: children["slow"].gr_frame is not None and children["early"].gr_frame is not None)
    stopper = gevent.spawn(sup.stop)
    wait_until(lambda: log == [("stopping", "slow")])
    assert sup._stopping is not None and not sup._mb_busy  # a state, not a waiting greenlet
    children["early"].kill(RuntimeError("crash while the tree stops"), block=False)
    children["early"].join(1)
    stopper.join(5)
    assert sup.dead
    d = sup.describe()
    assert [c["state"] for c in d["children"]] == ["stopped", "stopped"]
    assert d["recent_exits"] == [] and d["mailbox"] == 0


# ---------------------------------------------------------------- a deep tree

DEPTH = 150  # about 8 Python frames per level when a stop cascades in one stack


def _deep_chain(order, depth, *, crash=None):
    """Supervisors nested ``depth`` deep; each has a worker "w" and then the next
    level (the deepest, a child "c" that waits on ``crash`` if given, else a worker).
    Every exit is recorded in ``order`` as it happens."""
    def worker(name):
        try:
            gevent.sleep(3600)
        except ShutdownExit:
            order.append(name)
            raise

    def crasher():
        crash.wait()
        raise RuntimeError("deep")

    spec = ChildSpec("c", crasher) if crash is not None else ChildSpec("c", worker, f"w{depth}")
    for level in reversed(range(1, depth)):
        spec = Supervisor.child_spec(
            f"s{level}", [ChildSpec("w", worker, f"w{level}"), spec], name=f"s{level}", max_restarts=0
        )
    top = Supervisor([ChildSpec("w", worker, "w0"), spec], name="s0", max_restarts=0)
    top.start()
    top.wait_started()
    sup, sups = top, [top]
    while len(sups) < depth:
        sup = {i.id: i.child for i in sup.which_children()}[f"s{len(sups)}"]
        sups.append(sup)
    for level, s in enumerate(sups):
        s.gt_add_exit_hook(lambda s, level=level: order.append(f"s{level}"))
    return top, sups


def _expected_order(depth, *, crashed):
    """Reverse start order at every level: the deepest level first, each
    supervisor right after its own worker."""
    out = [] if crashed else [f"w{depth}"]
    for level in reversed(range(depth)):
        out += [f"w{level}", f"s{level}"]
    return out


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("depth", [3, DEPTH])
def test_a_deep_tree_stops_cleanly_in_reverse_order(way, depth, monkeypatch):
    _setup(way, "inline", monkeypatch)
    order: list = []
    top, sups = _deep_chain(order, depth)
    workers = [c for s in sups for c in (i.child for i in s.which_children()) if not isinstance(c, Supervisor)]
    wait_until(lambda: all(w.gr_frame is not None for w in workers))
    top.stop()
    assert top.dead and all(s.dead for s in sups) and all(w.dead for w in workers)
    assert [s.exit.kind for s in sups] == ["shutdown"] * depth
    assert order == _expected_order(depth, crashed=False)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("depth", [3, DEPTH])
def test_a_crash_at_the_bottom_of_a_deep_tree_gives_up_level_by_level(way, depth, monkeypatch, caplog_greentree):
    _setup(way, "inline", monkeypatch)
    order: list = []
    crash = Event()
    top, sups = _deep_chain(order, depth, crash=crash)
    crash.set()
    top.join(10)
    assert top.dead and all(s.dead for s in sups)
    assert [s.exit.kind for s in sups] == ["crash"] * depth
    assert order == _expected_order(depth, crashed=True)
