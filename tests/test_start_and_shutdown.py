"""Ordered start with handshakes, start failures, and the shutdown protocol:
reverse order, deadlines, escalation, zombies, killed supervisors."""

from __future__ import annotations

import logging
import time

import gevent
import pytest
from gevent.event import Event

import greentree
import greentree._process
from greentree import (
    BRUTAL_KILL,
    ChildNotFoundError,
    ChildSpec,
    DynamicSupervisor,
    NotRunningError,
    ShutdownExit,
    StartChildError,
    Supervisor,
)
from greentree.testing import wait_until


def sleeper(log, cid):
    log.append(("start", cid))
    try:
        gevent.sleep(3600)
    finally:
        log.append(("exit", cid))


def catching(fn, *args):
    """Run ``fn`` in a spawned greenlet; return what it raised instead of
    letting it reach the hub."""
    try:
        return fn(*args)
    except Exception as e:
        return e


def children(sup):
    return {i.id: i.child for i in sup.which_children()}


@pytest.fixture
def short_kill_grace(monkeypatch):
    """Zombie tests wait KILL_GRACE after greentree's kill; keep it short."""
    monkeypatch.setattr(greentree._process, "KILL_GRACE", 0.05)


# ---------------------------------------------------------------- start


def test_children_start_in_list_order():
    log = []
    with Supervisor([ChildSpec(c, sleeper, log, c) for c in "abcd"]) as sup:
        wait_until(lambda: len(log) == 4, what="the children to run")
        assert [cid for _, cid in log] == list("abcd")
        assert list(children(sup)) == list("abcd")


def test_a_handshake_child_blocks_the_next_sibling_until_it_calls_started():
    log = []
    gate = Event()

    def slow_setup():
        log.append("a: setup begins")
        gate.wait()
        log.append("a: started")
        greentree.started()
        gevent.sleep(3600)

    sup = Supervisor([ChildSpec("a", slow_setup, handshake=True), ChildSpec("b", sleeper, log, "b")])
    sup.start()
    try:
        wait_until(lambda: log)
        for _ in range(20):
            gevent.sleep(0)
        assert log == ["a: setup begins"]
        with pytest.raises(TimeoutError):
            sup.wait_started(0.001)
        gate.set()
        sup.wait_started(5)
        assert log == ["a: setup begins", "a: started", ("start", "b")]
    finally:
        sup.stop()


def test_a_greenlet_subclass_with_handshake_true_uses_the_handshake_by_default():
    log = []

    class Server(greentree.Greenlet):
        handshake = True

        def _run(self):
            gevent.sleep(0.01)
            log.append("server ready")
            greentree.started()
            gevent.sleep(3600)

    assert ChildSpec("srv", Server).handshake is True
    with Supervisor([ChildSpec("srv", Server), ChildSpec("client", sleeper, log, "client")]):
        assert log == ["server ready", ("start", "client")]


def test_a_handshake_child_that_times_out_is_a_start_failure_and_is_killed():
    log = []
    seen = []

    def never_ready():
        try:
            gevent.sleep(3600)
        except BaseException as e:
            seen.append(type(e))
            raise

    sup = Supervisor([
        ChildSpec("a", sleeper, log, "a"),
        ChildSpec("slow", never_ready, handshake=True, start_timeout=0.05),
        ChildSpec("c", sleeper, log, "c"),
    ], name="app")
    sup.start()
    with pytest.raises(StartChildError, match=r"'slow' did not call started\(\) within its start_timeout of 0.05") as info:
        sup.wait_started(5)
    assert info.value.child_id == "slow"
    assert sup.join(5) is None and sup.dead
    assert log == [("start", "a"), ("exit", "a")]
    assert seen and seen[0] is not ShutdownExit  # killed at once (brutally), not asked
    with pytest.raises(StartChildError):
        sup.get()


def test_a_child_failing_during_the_supervisors_start_stops_the_started_ones_in_reverse_order():
    log = []

    def broken():
        raise OSError("address in use")

    sup = Supervisor([
        ChildSpec("a", sleeper, log, "a"),
        ChildSpec("b", sleeper, log, "b"),
        ChildSpec("bad", broken, handshake=True),
        ChildSpec("d", sleeper, log, "d"),
    ])
    sup.start()
    with pytest.raises(StartChildError, match=r"'bad' exited before it called started\(\): OSError: address in use") as info:
        sup.wait_started(5)
    assert info.value.child_id == "bad"
    assert isinstance(info.value.reason, OSError)
    assert sup.join(5) is None
    assert log == [("start", "a"), ("start", "b"), ("exit", "b"), ("exit", "a")]  # d never started
    assert children(sup) == {"a": None, "b": None}


def test_a_child_whose_constructor_raises_fails_the_start_and_the_with_block_is_not_entered():
    class Boom(greentree.Greenlet):
        def __init__(self):
            raise ValueError("bad config")

    log = []

    def ready(cid):
        greentree.started()
        sleeper(log, cid)

    entered = []
    with pytest.raises(StartChildError, match=r"child 'boom' failed to start: ValueError: bad config"):
        with Supervisor([ChildSpec("a", ready, "a", handshake=True), ChildSpec("boom", Boom)]):
            entered.append(True)
    assert entered == []
    assert log == [("start", "a"), ("exit", "a")]


def test_start_child_failure_leaves_the_supervisor_unchanged():
    def broken():
        raise OSError("nope")

    log = []
    with Supervisor([ChildSpec("a", sleeper, log, "a")]) as sup:
        before = children(sup)
        with pytest.raises(StartChildError, match="'x'"):
            sup.start_child(ChildSpec("x", broken, handshake=True))
        assert children(sup) == before
        assert not sup.dead


def test_wait_started_on_a_supervisor_that_was_never_started_raises_not_running():
    with pytest.raises(NotRunningError, match=r"call start\(\) first"):
        Supervisor([]).wait_started(1)


# ---------------------------------------------------------------- shutdown order and deadlines


def test_children_stop_in_reverse_start_order_one_by_one():
    log = []

    def slow_cleanup(cid):
        log.append(("start", cid))
        try:
            gevent.sleep(3600)
        except ShutdownExit:
            log.append(("stopping", cid))
            gevent.sleep(0.01)
            log.append(("stopped", cid))
            raise

    sup = Supervisor([ChildSpec(c, slow_cleanup, c) for c in "abc"])
    with sup:
        pass
    assert log[3:] == [
        ("stopping", "c"), ("stopped", "c"),
        ("stopping", "b"), ("stopped", "b"),
        ("stopping", "a"), ("stopped", "a"),
    ]
    assert sup.successful()


def test_each_child_gets_its_own_shutdown_deadline(short_kill_grace):
    got = {}

    def stubborn(cid):
        try:
            gevent.sleep(3600)
        except ShutdownExit:
            got[cid] = [time.monotonic()]
            try:
                gevent.sleep(3600)  # ignores the request; only greentree's kill ends it
            except BaseException as e:
                got[cid].append(time.monotonic())
                got[cid].append(type(e).__name__)
                raise

    sup = Supervisor([ChildSpec(c, stubborn, c, shutdown=0.05) for c in "ab"])
    with sup:
        left = time.monotonic()  # before the supervisor asks b to stop
    # Each deadline runs from the moment the supervisor asked, which precedes
    # the moment the child ran its handler (on a loaded machine, by more than
    # the deadline's tolerance): measure from a time known to come before the
    # ask: leaving the block for b, b's kill for a (a is asked only after b is
    # dealt with: children stop in reverse start order, one at a time).
    for cid, before_ask in (("b", left), ("a", got["b"][1])):
        asked, killed, kind = got[cid]
        assert kind == "_Kill"
        assert asked >= before_ask
        assert 0.045 <= killed - before_ask < 1.0


def test_a_child_that_swallows_greenlet_exit_is_killed_after_its_shutdown_time():
    seen = []

    def swallow():
        while True:
            try:
                gevent.sleep(3600)
            except gevent.GreenletExit:
                seen.append(time.monotonic())

    sup = Supervisor([ChildSpec("s", swallow, shutdown=0.05)])
    with sup:
        g = children(sup)["s"]
        left = time.monotonic()  # precedes the ask, which the deadline runs from
    assert g.dead
    assert len(seen) == 1  # it never got a second GreenletExit: the kill is not one
    assert seen[0] >= left
    assert time.monotonic() - left >= 0.045
    assert sup.describe()["zombies"] == 0


@pytest.mark.parametrize("shutdown", [0.01, BRUTAL_KILL])
def test_children_still_waiting_for_their_turn_are_not_zombies(short_kill_grace, caplog_greentree, shutdown):
    """300 children that each need 2 ms of CPU to exit, stopped at once: they
    exit one after another for more than half a second, far past the 0.05 s grace.  A
    child that has not yet had its turn in the loop ignores nothing: none is a
    zombie, and the supervisor waits for all of them."""
    exited = []

    def slow_to_exit(i):
        try:
            gevent.sleep(3600)
        finally:
            end = time.thread_time() + 0.002  # cleanup that does not yield
            while time.thread_time() < end:
                pass
            exited.append(i)

    n = 300
    dyn = DynamicSupervisor(name="pool")
    dyn.start()
    for i in range(n):
        dyn.start_child(ChildSpec(i, slow_to_exit, i, shutdown=shutdown))
    gevent.idle()  # every child is parked in its sleep
    dyn.stop()
    assert sorted(exited) == list(range(n))
    assert dyn.describe()["zombies"] == 0
    assert not [r for r in caplog_greentree.records if "zombie" in r.getMessage()]


def test_a_child_that_swallows_everything_is_reported_as_a_zombie_and_stop_still_returns(
    short_kill_grace, caplog_greentree
):
    release = []

    def zombie():
        while not release:
            try:
                gevent.sleep(3600)
            except BaseException:
                pass

    sup = Supervisor([ChildSpec("z", zombie, shutdown=0.05)], name="app")
    sup.start()
    sup.wait_started()
    g = children(sup)["z"]
    t0 = time.monotonic()
    sup.stop()
    assert time.monotonic() - t0 < 2.0
    assert sup.dead and not g.dead
    assert sup.describe()["zombies"] == 1
    records = [r for r in caplog_greentree.records if "zombie" in r.getMessage()]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert records[0].name == "greentree"
    assert records[0].greentree_child == "z"
    assert "Supervisor 'app'" in records[0].greentree_supervisor
    # let the zombie go, so the test leaves no greenlet behind
    release.append(True)
    g.kill()
    assert g.dead


def test_brutal_kill_does_not_ask_first():
    seen = []

    def polite():
        try:
            gevent.sleep(3600)
        except BaseException as e:
            seen.append(type(e))
            raise

    with Supervisor([ChildSpec("b", polite, shutdown=BRUTAL_KILL)]):
        pass
    assert len(seen) == 1
    assert not issubclass(seen[0], gevent.GreenletExit)


def test_shutdown_none_waits_for_the_child_however_long_it_takes():
    log = []

    def slow(cid):
        try:
            gevent.sleep(3600)
        except ShutdownExit:
            gevent.sleep(0.2)  # longer than anything else in the tree would wait
            log.append("cleaned up")
            raise

    sup = Supervisor([ChildSpec("s", slow, "s", shutdown=None)])
    with sup:
        pass
    assert log == ["cleaned up"]
    assert sup.describe()["zombies"] == 0


def test_stop_is_idempotent_and_a_second_stop_does_not_cut_a_slow_shutdown_short():
    log = []

    def slow():
        try:
            gevent.sleep(3600)
        except ShutdownExit:
            gevent.sleep(0.1)
            log.append("cleaned up")
            raise

    sup = Supervisor([ChildSpec("s", slow, shutdown=5)])
    sup.start()
    sup.wait_started()
    first = gevent.spawn(sup.stop)
    wait_until(lambda: sup.describe()["state"] == "stopping")
    sup.stop()
    first.join()
    assert log == ["cleaned up"]
    sup.stop()


def test_two_stops_in_a_row_let_the_children_clean_up():
    log = []

    def slow():
        try:
            gevent.sleep(3600)
        except ShutdownExit:
            gevent.sleep(0.05)
            log.append("cleaned up")
            raise

    sup = Supervisor([ChildSpec("s", slow, shutdown=5)])
    sup.start()
    sup.wait_started()
    stoppers = [gevent.spawn(sup.stop) for _ in range(3)]
    gevent.joinall(stoppers, raise_error=True)
    assert log == ["cleaned up"]


def test_stop_with_a_timeout_escalates_to_killing_the_children():
    seen = []

    def slow():
        try:
            gevent.sleep(3600)
        except ShutdownExit:
            try:
                gevent.sleep(3600)
            except BaseException as e:
                seen.append(type(e).__name__)
                raise

    sup = Supervisor([ChildSpec("s", slow, shutdown=None)])
    sup.start()
    sup.wait_started()
    g = children(sup)["s"]
    t0 = time.monotonic()
    sup.stop(timeout=0.05)
    assert time.monotonic() - t0 < 1.0
    assert sup.dead and g.dead
    assert seen == ["_Kill"]


def test_a_supervisor_killed_with_gevent_kill_still_stops_its_children():
    log = []
    sup = Supervisor([ChildSpec(c, sleeper, log, c) for c in "abc"])
    sup.start()
    sup.wait_started()
    gs = list(children(sup).values())
    sup.kill()  # gevent's own kill: a GreenletExit
    assert sup.dead
    assert all(g.dead for g in gs)
    assert log[3:] == [("exit", "c"), ("exit", "b"), ("exit", "a")]


def test_a_supervisor_killed_with_an_exception_still_stops_its_children():
    log = []
    sup = Supervisor([ChildSpec(c, sleeper, log, c) for c in "ab"])
    sup.start()
    sup.wait_started()
    gs = list(children(sup).values())
    sup.kill(RuntimeError("operator error"))
    assert all(g.dead for g in gs)
    assert isinstance(sup.exception, RuntimeError)


def test_stopping_the_supervisor_while_it_terminates_a_stubborn_child_still_stops_that_child(short_kill_grace):
    # The supervisor is interrupted in the middle of terminate_child: the child
    # it was stopping must not outlive it, and the caller must not hang.
    def stubborn():
        try:
            gevent.sleep(3600)
        except ShutdownExit:
            gevent.sleep(3600)  # ignores ShutdownExit; greentree's kill ends it

    sup = Supervisor([ChildSpec("s", stubborn, shutdown=30)])
    sup.start()
    sup.wait_started()
    g = children(sup)["s"]
    caller = gevent.spawn(catching, sup.terminate_child, "s")
    wait_until(lambda: g.gr_frame is not None and sup._mb_busy, what="terminate_child in progress")
    sup.stop(timeout=0.1)
    assert sup.dead
    assert caller.join(5) is None and caller.dead
    # The stop waits its turn behind terminate_child; the escalation makes
    # that terminate kill the child at once, so terminate_child succeeds.
    assert caller.value is None
    assert g.join(5) is None and g.dead


def test_a_dynamic_supervisor_killed_while_terminating_a_child_still_stops_it(short_kill_grace):
    def stubborn():
        try:
            gevent.sleep(3600)
        except ShutdownExit:
            gevent.sleep(3600)

    dyn = DynamicSupervisor()
    dyn.start()
    dyn.wait_started()
    g = dyn.start_child(ChildSpec(None, stubborn, shutdown=30))
    caller = gevent.spawn(catching, dyn.terminate_child, g)
    wait_until(lambda: dyn._mb_busy, what="terminate_child in progress")
    dyn.stop(timeout=0.1)
    assert caller.join(5) is None and caller.value is None  # it finished first (see above)
    assert g.join(5) is None and g.dead


def test_a_dynamic_supervisor_stops_its_children_concurrently():
    def slow():
        try:
            gevent.sleep(3600)
        except ShutdownExit:
            gevent.sleep(0.1)
            raise

    dyn = DynamicSupervisor()
    with dyn:
        gs = [dyn.start_child(ChildSpec(None, slow)) for _ in range(20)]
        t0 = time.monotonic()
    elapsed = time.monotonic() - t0
    assert all(g.dead for g in gs)
    assert elapsed < 1.0  # 20 one-by-one stops would take 2 s


@pytest.mark.timeout(120)
def test_ten_thousand_dynamic_children_start_and_stop():
    n = 10_000
    dyn = DynamicSupervisor(max_children=n)
    with dyn:
        t0 = time.monotonic()
        gs = [dyn.start_child(ChildSpec(None, gevent.sleep, 3600, restart="temporary")) for _ in range(n)]
        started = time.monotonic() - t0
        gevent.sleep(0)
        assert dyn.count_children() == (n, n, 0, n)
        t0 = time.monotonic()
    stopped = time.monotonic() - t0
    assert all(g.dead for g in gs)
    assert stopped < 10.0, f"stopping {n} children took {stopped:.2f} s"
    assert started < 30.0


def test_terminate_all_stops_every_dynamic_child_and_returns_the_count():
    dyn = DynamicSupervisor()
    with dyn:
        gs = [dyn.start_child(ChildSpec(None, gevent.sleep, 3600)) for _ in range(5)]
        assert dyn.terminate_all() == 5
        assert all(g.dead for g in gs)
        assert dyn.count_children() == (0, 0, 0, 0)
        with pytest.raises(ChildNotFoundError):
            dyn.terminate_child(gs[0])
