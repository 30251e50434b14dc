"""Supervisor conformance, written from Erlang's supervisor_SUITE and Elixir's
supervisor tests: strategy x restart type x exit kind, intensity, nesting, API errors."""

from __future__ import annotations

import json
import re

import gevent
import pytest
from gevent.event import AsyncResult, Event

import greentree
from greentree import (
    AlreadyPresentError,
    AlreadyStartedError,
    ChildNotFoundError,
    ChildRestartingError,
    ChildRunningError,
    ChildSpec,
    ChildSpecError,
    DynamicSupervisor,
    NotRunningError,
    RestartIntensityExceeded,
    ShutdownExit,
    StartChildError,
    Supervisor,
)
from greentree.testing import FakeClock, wait_until

STRATEGIES = ["one_for_one", "one_for_all", "rest_for_one"]
RESTARTS = ["permanent", "transient", "temporary"]
EXIT_KINDS = ["return", "shutdown_exit", "killed", "crash", "system_exit"]
ABNORMAL = {"crash", "system_exit"}


# ---------------------------------------------------------------- helpers


def sync(sup):
    """Return once ``sup`` has handled everything already in its inbox.

    A call goes through the same inbox as exit records, so its answer comes
    after them.
    """
    try:
        sup.terminate_child("__sync__" if isinstance(sup, Supervisor) else object())
    except NotRunningError:
        sup.join(5)  # it is exiting: wait until it has
        assert sup.dead
    except ChildNotFoundError:
        pass
    else:
        raise AssertionError("sync: the sentinel child exists")


class Probe:
    """Child bodies that record every incarnation and exit on command."""

    def __init__(self):
        self.incarnations = []  # (id, greenlet)
        self.exits = []         # ids in the order they exited
        self.cmds = {}          # greenlet -> AsyncResult

    def body(self, cid):
        g = gevent.getcurrent()
        cmd = self.cmds[g] = AsyncResult()
        self.incarnations.append((cid, g))
        try:
            what = cmd.get()
            if what == "return":
                return cid
            raise what
        finally:
            self.exits.append(cid)

    def spec(self, cid, **kw):
        return ChildSpec(cid, self.body, cid, **kw)

    def make_exit(self, sup, g, kind):
        """End child greenlet ``g`` in the given way and wait until ``sup`` processed it."""
        if kind != "killed":
            # A started child is scheduled; let it run up to its command.
            wait_until(lambda: g in self.cmds, what=f"{g!r} to run")
        if kind == "return":
            self.cmds[g].set("return")
        elif kind == "shutdown_exit":
            self.cmds[g].set(ShutdownExit())
        elif kind == "killed":
            g.kill(gevent.GreenletExit)  # a third party kills it
        elif kind == "crash":
            self.cmds[g].set(RuntimeError("boom"))
        elif kind == "system_exit":
            self.cmds[g].set(SystemExit(3))
        else:
            raise AssertionError(kind)
        assert g.join(5) is None and g.dead
        if not sup.dead:
            sync(sup)


def children(sup):
    return {info.id: info.child for info in sup.which_children()}


def crash(probe, sup, cid):
    g = children(sup)[cid]
    probe.make_exit(sup, g, "crash")
    return g


# ---------------------------------------------------------------- the grid


def expected_outcome(strategy, restart, kind):
    """What OTP does to [a, b, c] when b (of type ``restart``) exits by ``kind``;
    a and c are permanent.  Returns (b's fate, set of ids restarted)."""
    if restart == "permanent" or (restart == "transient" and kind in ABNORMAL):
        fate = "restart"
        restarted = {"one_for_one": {"b"}, "one_for_all": {"a", "b", "c"}, "rest_for_one": {"b", "c"}}[strategy]
    elif restart == "transient":
        fate, restarted = "keep", set()
    else:
        fate, restarted = "drop", set()
    return fate, restarted


@pytest.mark.parametrize("kind", EXIT_KINDS)
@pytest.mark.parametrize("restart", RESTARTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_child_exit_follows_the_restart_table_and_the_strategy(strategy, restart, kind):
    probe = Probe()
    specs = [probe.spec("a"), probe.spec("b", restart=restart), probe.spec("c")]
    with Supervisor(specs, strategy=strategy, max_restarts=10, clock=FakeClock()) as sup:
        before = children(sup)
        probe.make_exit(sup, before["b"], kind)
        after = children(sup)
        fate, restarted = expected_outcome(strategy, restart, kind)
        if fate == "drop":
            assert list(after) == ["a", "c"]
        else:
            assert list(after) == ["a", "b", "c"]
        if fate == "keep":
            assert after["b"] is None
            assert sup.count_children() == (3, 2, 0, 3)
        for cid in after:
            if cid in restarted:
                assert after[cid] is not None and after[cid] is not before[cid], cid
                assert not after[cid].dead
            elif cid != "b":
                assert after[cid] is before[cid], f"{cid} should not have been touched"
        assert sup.describe()["intensity"]["recent_restarts"] == (1 if restarted else 0)
    # every incarnation is gone after stop
    assert all(g.dead for _, g in probe.incarnations)


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_temporary_bystanders_of_a_group_restart_are_dropped(strategy):
    probe = Probe()
    specs = [
        probe.spec("t1", restart="temporary"),
        probe.spec("p", restart="permanent"),
        probe.spec("t2", restart="temporary"),
        probe.spec("q", restart="transient"),
    ]
    with Supervisor(specs, strategy=strategy, clock=FakeClock()) as sup:
        before = children(sup)
        crash(probe, sup, "p")
        after = children(sup)
        if strategy == "one_for_all":
            assert list(after) == ["p", "q"]
        else:
            assert list(after) == ["t1", "p", "q"]
            assert after["t1"] is before["t1"]
        assert after["p"] is not before["p"] and after["q"] is not before["q"]
        assert sup.count_children() == (len(after), len(after), 0, len(after))


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_group_restart_also_restarts_a_stopped_transient_sibling(strategy):
    # OTP's one_for_all/rest_for_one terminate and then start every child in
    # the affected part of the list, running or not.
    probe = Probe()
    specs = [probe.spec("a"), probe.spec("b"), probe.spec("c", restart="transient")]
    with Supervisor(specs, strategy=strategy, clock=FakeClock()) as sup:
        probe.make_exit(sup, children(sup)["c"], "return")
        assert children(sup)["c"] is None
        crash(probe, sup, "b")
        assert children(sup)["c"] is not None


def test_group_restart_stops_the_others_one_by_one_in_reverse_order_and_starts_in_order():
    log = []
    slow_cleanup = {"c"}

    def body(cid):
        log.append(("start", cid))
        try:
            gevent.sleep(3600)
        except ShutdownExit:
            log.append(("stopping", cid))
            if cid in slow_cleanup:
                gevent.sleep(0.05)  # cleanup that takes a while: the next sibling must wait
            log.append(("stopped", cid))
            raise

    specs = [ChildSpec(c, body, c) for c in "abcd"]
    with Supervisor(specs, strategy="one_for_all", clock=FakeClock()) as sup:
        wait_until(lambda: len(log) == 4, what="the children to run")
        del log[:]
        g = children(sup)["b"]
        g.kill(RuntimeError("boom"), block=True)
        sync(sup)
        assert log == [
            ("stopping", "d"), ("stopped", "d"),
            ("stopping", "c"), ("stopped", "c"),
            ("stopping", "a"), ("stopped", "a"),
            ("start", "a"), ("start", "b"), ("start", "c"), ("start", "d"),
        ]


def test_one_for_one_restart_keeps_the_child_position():
    probe = Probe()
    with Supervisor([probe.spec(c) for c in "abc"], clock=FakeClock()) as sup:
        crash(probe, sup, "a")
        assert [i.id for i in sup.which_children()] == ["a", "b", "c"]


# ---------------------------------------------------------------- intensity


def test_exactly_max_restarts_within_the_window_are_allowed():
    probe = Probe()
    clock = FakeClock()
    with Supervisor([probe.spec("a")], max_restarts=3, max_seconds=5, clock=clock) as sup:
        for _ in range(3):
            crash(probe, sup, "a")
            clock.advance(1)
        assert not sup.dead
        assert sup.describe()["intensity"]["recent_restarts"] == 3


def test_one_restart_too_many_stops_every_child_and_the_supervisor_exits_with_restart_intensity_exceeded():
    probe = Probe()
    clock = FakeClock()
    sup = Supervisor([probe.spec("a"), probe.spec("b")], max_restarts=2, max_seconds=5, clock=clock, name="app")
    # A root supervisor that gives up inside ``with`` raises out of the block.
    with pytest.raises(RestartIntensityExceeded), sup:
        for _ in range(2):
            crash(probe, sup, "a")
        b = children(sup)["b"]
        last = children(sup)["a"]
        probe.cmds[last].set(RuntimeError("again"))
        assert sup.join(5) is None and sup.dead
        assert b.dead
        assert probe.exits[-1] == "b"
    with pytest.raises(RestartIntensityExceeded, match="more than 2 restarts within 5 s"):
        sup.get()
    assert isinstance(sup.exception, RestartIntensityExceeded)
    assert all(g.dead for _, g in probe.incarnations)
    assert sup.describe()["state"] == "dead"
    with pytest.raises(NotRunningError):
        sup.start_child(probe.spec("z"))


def test_restarts_that_left_the_window_no_longer_count():
    probe = Probe()
    clock = FakeClock()
    with Supervisor([probe.spec("a")], max_restarts=2, max_seconds=5, clock=clock) as sup:
        crash(probe, sup, "a")
        crash(probe, sup, "a")
        clock.advance(5.5)
        crash(probe, sup, "a")
        crash(probe, sup, "a")
        assert not sup.dead


def test_a_restart_exactly_max_seconds_old_still_counts():
    probe = Probe()
    clock = FakeClock()
    sup = Supervisor([probe.spec("a")], max_restarts=1, max_seconds=5, clock=clock)
    with pytest.raises(RestartIntensityExceeded), sup:
        crash(probe, sup, "a")
        clock.advance(5)
        crash(probe, sup, "a")
        assert sup.dead
    with pytest.raises(RestartIntensityExceeded):
        sup.get()


def test_max_restarts_zero_gives_up_at_the_first_crash():
    probe = Probe()
    sup = Supervisor([probe.spec("a")], max_restarts=0, clock=FakeClock())
    with pytest.raises(RestartIntensityExceeded), sup:
        crash(probe, sup, "a")
        assert sup.dead
    assert isinstance(sup.exception, RestartIntensityExceeded)


@pytest.mark.parametrize("kind", ["Supervisor", "DynamicSupervisor"])
def test_max_restarts_zero_still_lets_a_sibling_that_never_ran_have_its_first_turn(kind, caplog_greentree):
    # "a" crashes in its first turn, before "b" (started just after it) ever ran;
    # with max_restarts=0 that gives up at once.  Stopping "b" waits for its first
    # turn, as every stop does: it runs, then sees the stop.
    log = []

    def a():
        log.append("a")
        raise RuntimeError("boom")

    def b():
        log.append("b")
        try:
            gevent.sleep(3600)
        except ShutdownExit:
            log.append("b stopped")
            raise

    if kind == "Supervisor":
        sup = Supervisor([ChildSpec("a", a), ChildSpec("b", b)], max_restarts=0, clock=FakeClock())
        sup.start()
    else:
        sup = DynamicSupervisor(max_restarts=0, clock=FakeClock())
        sup.start()
        sup.wait_started()
        sup.start_child(ChildSpec("a", a))
        sup.start_child(ChildSpec("b", b))
    sup.join(5)
    assert sup.dead and isinstance(sup.exit.reason, RestartIntensityExceeded)
    assert log == ["a", "b", "b stopped"]


def test_a_one_for_all_restart_counts_once_toward_intensity():
    probe = Probe()
    sup = Supervisor([probe.spec(c) for c in "abcde"], strategy="one_for_all", max_restarts=1, clock=FakeClock())
    with sup:
        crash(probe, sup, "c")
        assert not sup.dead
        assert sup.describe()["intensity"]["recent_restarts"] == 1


def test_kills_the_supervisor_issues_itself_never_count_toward_intensity():
    probe = Probe()
    sup = Supervisor([probe.spec(c) for c in "abc"], strategy="one_for_all", max_restarts=1, clock=FakeClock())
    with sup:
        for _ in range(5):
            sup.terminate_child("b")
            sup.restart_child("b")
        assert sup.describe()["intensity"]["recent_restarts"] == 0
        crash(probe, sup, "a")  # stops b and c: expected exits, not crashes
        assert sup.describe()["intensity"]["recent_restarts"] == 1
        assert not sup.dead


class FlakyStart(greentree.Greenlet):
    """A child whose construction fails while ``failures`` > 0 (a failed start)."""

    failures = 0
    attempts = 0
    allow = None  # an Event: when set, construction succeeds

    def __init__(self, *args, **kwargs):
        cls = type(self)
        cls.attempts += 1
        if cls.allow is not None and not cls.allow.is_set():
            raise OSError("port busy")
        if cls.failures > 0:
            cls.failures -= 1
            raise OSError("port busy")
        greentree.Greenlet.__init__(self, *args, **kwargs)

    def _run(self):
        gevent.sleep(3600)


def flaky_class(failures=0, allow=None):
    return type("Flaky", (FlakyStart,), {"failures": failures, "attempts": 0, "allow": allow})


def test_failed_restart_attempts_count_toward_intensity():
    # one crash (1) + two failed attempts (2) = 3 restarts: allowed with max_restarts=3
    cls = flaky_class()
    sup = Supervisor([ChildSpec("f", cls)], max_restarts=3, clock=FakeClock())
    with sup:
        g = children(sup)["f"]
        cls.failures = 2
        g.kill(RuntimeError("boom"))
        wait_until(lambda: children(sup)["f"] not in (None, g), what="the restart to succeed")
        assert cls.attempts == 4
        assert not sup.dead


def test_failed_restart_attempts_beyond_max_restarts_make_the_supervisor_give_up():
    cls = flaky_class()
    sup = Supervisor([ChildSpec("f", cls)], max_restarts=3, clock=FakeClock())
    with pytest.raises(RestartIntensityExceeded), sup:
        g = children(sup)["f"]
        cls.failures = 10
        g.kill(RuntimeError("boom"))
        assert sup.join(5) is None
    assert isinstance(sup.exception, RestartIntensityExceeded)
    assert cls.attempts == 1 + 3  # the initial start, then three attempts; the 4th restart event gives up


def test_a_failed_restart_is_retried_while_the_supervisor_keeps_answering_calls():
    allow = Event()
    cls = flaky_class(allow=allow)
    probe = Probe()
    sup = Supervisor([ChildSpec("f", cls), probe.spec("other")], max_restarts=10**6, clock=FakeClock())
    allow.set()
    with sup:
        g = children(sup)["f"]
        allow.clear()
        g.kill(RuntimeError("boom"))
        wait_until(lambda: cls.attempts > 5, what="a few failed restart attempts")
        # still answering calls, in order, between attempts
        assert children(sup)["f"] is None
        new = sup.start_child(probe.spec("late"))
        assert children(sup)["late"] is new
        with pytest.raises(ChildRestartingError, match="retrying"):
            sup.restart_child("f")
        with pytest.raises(ChildRestartingError):
            sup.delete_child("f")
        # and a timer still fires: the retries go round the hub
        fired = Event()
        timer = gevent.spawn_later(0.01, fired.set)
        assert fired.wait(5)
        timer.join()
        before = cls.attempts
        allow.set()
        wait_until(lambda: children(sup)["f"] is not None, what="the retry to succeed")
        assert cls.attempts > before
        assert sup.describe()["children"][0]["state"] == "running"


def test_terminate_child_during_a_retry_stops_the_retrying():
    allow = Event()
    cls = flaky_class(allow=allow)
    sup = Supervisor([ChildSpec("f", cls)], max_restarts=10**6, clock=FakeClock())
    allow.set()
    with sup:
        g = children(sup)["f"]
        allow.clear()
        g.kill(RuntimeError("boom"))
        wait_until(lambda: cls.attempts > 3)
        sup.terminate_child("f")
        n = cls.attempts
        sync(sup)
        sync(sup)
        assert cls.attempts == n
        assert sup.describe()["children"][0]["state"] == "stopped"
        allow.set()
        assert sup.restart_child("f") is not None


def test_a_parent_sees_a_child_supervisors_restart_intensity_exceeded_as_a_crash_and_restarts_it():
    probe = Probe()
    inner = Supervisor.child_spec("inner", [probe.spec("w")], max_restarts=0, clock=FakeClock())
    with Supervisor([inner], max_restarts=5, clock=FakeClock(), name="outer") as outer:
        first = children(outer)["inner"]
        w = children(first)["w"]
        probe.make_exit(first, w, "crash")
        assert first.join(5) is None
        assert isinstance(first.exception, RestartIntensityExceeded)
        sync(outer)
        second = children(outer)["inner"]
        assert second is not first and not second.dead
        assert second.wait_started(5) is second
        assert children(second)["w"] is not None
        assert outer.describe()["intensity"]["recent_restarts"] == 1
        assert outer.describe()["children"][0]["last_exit"].startswith("RestartIntensityExceeded")


# ---------------------------------------------------------------- nesting


def test_nested_supervisors_start_in_order_and_appear_as_supervisor_children():
    probe = Probe()
    spec_sup = Supervisor.child_spec("workers", [probe.spec("w1"), probe.spec("w2")], strategy="one_for_all")
    spec_dyn = DynamicSupervisor.child_spec("pool", max_children=5)
    with Supervisor([spec_sup, spec_dyn, probe.spec("tail")]) as root:
        infos = root.which_children()
        assert [(i.id, i.type) for i in infos] == [("workers", "supervisor"), ("pool", "supervisor"), ("tail", "worker")]
        assert root.count_children() == (3, 3, 2, 1)
        workers, pool = infos[0].child, infos[1].child
        assert isinstance(workers, Supervisor) and workers.strategy.value == "one_for_all"
        assert isinstance(pool, DynamicSupervisor) and pool.max_children == 5
        assert [i.id for i in workers.which_children()] == ["w1", "w2"]
        # the probe's tail started after both subtrees were fully started
        assert [cid for cid, _ in probe.incarnations] == ["w1", "w2", "tail"]
        g = pool.start_child(ChildSpec(None, gevent.sleep, 3600))
        tree = root.describe()
        assert tree["children"][0]["tree"]["children"][1]["id"] == "w2"
        assert tree["children"][1]["tree"]["count"]["active"] == 1
        json.dumps(tree)
    assert workers.dead and pool.dead and g.dead
    assert all(g.dead for _, g in probe.incarnations)


def test_child_spec_of_a_supervisor_defaults_to_waiting_forever_on_shutdown():
    spec = Supervisor.child_spec("s", [])
    assert spec.type == "supervisor" and spec.shutdown is None and spec.handshake
    spec = DynamicSupervisor.child_spec("d", restart="transient", shutdown=3)
    assert spec.restart.value == "transient" and spec.shutdown == 3.0


def test_a_crashing_child_supervisor_is_restarted_with_its_whole_subtree():
    probe = Probe()
    with Supervisor([Supervisor.child_spec("inner", [probe.spec("w")])]) as root:
        inner = children(root)["inner"]
        w = children(inner)["w"]
        inner.kill(RuntimeError("inner broke"))
        assert inner.join(5) is None and w.dead
        sync(root)
        inner2 = children(root)["inner"]
        assert inner2 is not inner
        assert children(inner2)["w"] not in (None, w)


# ---------------------------------------------------------------- API errors


def test_start_child_with_the_id_of_a_running_child_raises_already_started_with_its_greenlet():
    probe = Probe()
    with Supervisor([probe.spec("a")]) as sup:
        g = children(sup)["a"]
        with pytest.raises(AlreadyStartedError, match="already running") as info:
            sup.start_child(probe.spec("a"))
        assert info.value.owner is g
        assert isinstance(info.value, StartChildError)
        assert children(sup) == {"a": g}


def test_start_child_with_the_id_of_a_stopped_child_raises_already_present():
    probe = Probe()
    with Supervisor([probe.spec("a")]) as sup:
        sup.terminate_child("a")
        with pytest.raises(AlreadyPresentError, match=r"restart_child\('a'\)"):
            sup.start_child(probe.spec("a"))
        assert children(sup) == {"a": None}


@pytest.mark.parametrize("op", ["terminate_child", "restart_child", "delete_child"])
def test_operations_on_an_unknown_id_raise_child_not_found(op):
    probe = Probe()
    with Supervisor([probe.spec("a"), probe.spec("b")], name="app") as sup:
        with pytest.raises(ChildNotFoundError, match=r"'nope'.*Supervisor 'app'.*'a', 'b'") as info:
            getattr(sup, op)("nope")
        assert isinstance(info.value, LookupError)
        assert list(children(sup)) == ["a", "b"]


@pytest.mark.parametrize("op", ["restart_child", "delete_child"])
def test_restart_or_delete_of_a_running_child_raises_child_running(op):
    probe = Probe()
    with Supervisor([probe.spec("a")]) as sup:
        g = children(sup)["a"]
        with pytest.raises(ChildRunningError, match="terminate it first"):
            getattr(sup, op)("a")
        assert children(sup) == {"a": g}


def test_terminate_child_keeps_the_spec_so_restart_child_brings_it_back():
    probe = Probe()
    with Supervisor([probe.spec("a"), probe.spec("b")]) as sup:
        g = children(sup)["a"]
        assert sup.terminate_child("a") is None
        assert g.dead
        assert children(sup)["a"] is None
        assert sup.count_children() == (2, 1, 0, 2)
        sup.terminate_child("a")  # terminating a stopped child is fine (OTP returns ok)
        new = sup.restart_child("a")
        assert children(sup)["a"] is new and new is not g and not new.dead
        assert list(children(sup)) == ["a", "b"]


def test_terminate_child_forgets_a_temporary_child():
    probe = Probe()
    with Supervisor([probe.spec("a", restart="temporary"), probe.spec("b")]) as sup:
        sup.terminate_child("a")
        assert list(children(sup)) == ["b"]
        with pytest.raises(ChildNotFoundError):
            sup.restart_child("a")


def test_delete_child_forgets_a_stopped_child_and_its_id_can_be_reused():
    probe = Probe()
    with Supervisor([probe.spec("a"), probe.spec("b")]) as sup:
        sup.terminate_child("a")
        sup.delete_child("a")
        assert list(children(sup)) == ["b"]
        g = sup.start_child(probe.spec("a"))
        assert list(children(sup)) == ["b", "a"]  # start_child appends
        assert children(sup)["a"] is g


def test_a_terminated_child_is_not_restarted_when_it_would_otherwise_be():
    probe = Probe()
    with Supervisor([probe.spec("a")]) as sup:
        sup.terminate_child("a")
        sync(sup)
        assert children(sup) == {"a": None}
        assert probe.exits == ["a"]


def test_which_children_and_count_children_report_types_restart_types_and_greenlets():
    probe = Probe()
    specs = [
        probe.spec("w", restart="transient"),
        Supervisor.child_spec("s", []),
        probe.spec("t", restart="temporary"),
    ]
    with Supervisor(specs) as sup:
        infos = sup.which_children()
        assert [(i.id, i.type, i.restart.value) for i in infos] == [
            ("w", "worker", "transient"), ("s", "supervisor", "permanent"), ("t", "worker", "temporary"),
        ]
        # children are greenlets, or supervisors (which have a greenlet's lifecycle but no stack)
        assert [type(i.child).__name__ for i in infos] == ["Greenlet", "Supervisor", "Greenlet"]
        assert not any(i.child.dead for i in infos)
        assert all(i.state == "running" for i in infos)
        assert sup.count_children() == greentree.ChildCounts(specs=3, active=3, supervisors=1, workers=2)
        sup.terminate_child("w")
        assert sup.count_children() == (3, 2, 1, 2)


def test_describe_is_a_json_able_snapshot_of_the_tree():
    probe = Probe()
    clock = FakeClock(100.0)
    specs = [probe.spec("a"), probe.spec("b", restart="transient"), Supervisor.child_spec(("x", 1), [])]
    with Supervisor(specs, name="app", max_restarts=4, max_seconds=7, clock=clock) as sup:
        crash(probe, sup, "a")
        probe.make_exit(sup, children(sup)["b"], "return")
        clock.advance(2.5)
        d = sup.describe()
        assert json.loads(json.dumps(d)) == d
        assert d["name"] == "app" and d["kind"] == "supervisor" and d["state"] == "running"
        assert d["strategy"] == "one_for_one"
        assert d["intensity"] == {"max_restarts": 4, "max_seconds": 7.0, "recent_restarts": 1}
        assert d["zombies"] == 0 and d["exit"] is None
        a, b, x = d["children"]
        assert a["id"] == "a" and a["state"] == "running" and a["restarts"] == 1
        assert a["last_exit"] == "RuntimeError: boom" and a["uptime"] == 2.5
        assert a["restart"] == "permanent" and a["type"] == "worker"
        assert b["state"] == "stopped" and b["last_exit"] == "normal" and b["uptime"] is None
        assert x["id"] == repr(("x", 1)) and x["type"] == "supervisor" and x["tree"]["children"] == []
    d = sup.describe()
    assert d["state"] == "dead" and d["exit"] == "shutdown"
    json.dumps(d)


def test_describe_of_a_supervisor_that_never_started():
    d = Supervisor([], name="idle").describe()
    assert d["state"] == "not started" and d["children"] == []
    json.dumps(d)


# ---------------------------------------------------------------- auto_shutdown


def test_any_significant_child_exiting_normally_stops_the_supervisor_normally():
    probe = Probe()
    specs = [probe.spec("a"), probe.spec("s", restart="transient", significant=True), probe.spec("c")]
    sup = Supervisor(specs, auto_shutdown="any_significant")
    with sup:
        probe.make_exit(sup, children(sup)["s"], "return")
        assert sup.join(5) is None
    assert sup.successful() and sup.get() is None
    assert probe.exits == ["s", "c", "a"]


def test_a_crashing_transient_significant_child_is_restarted_not_a_shutdown():
    probe = Probe()
    specs = [probe.spec("s", restart="transient", significant=True)]
    with Supervisor(specs, auto_shutdown="any_significant", clock=FakeClock()) as sup:
        old = crash(probe, sup, "s")
        assert not sup.dead
        assert children(sup)["s"] not in (None, old)


def test_all_significant_waits_for_every_significant_child():
    probe = Probe()
    specs = [
        probe.spec("s1", restart="transient", significant=True),
        probe.spec("s2", restart="temporary", significant=True),
        probe.spec("other"),
    ]
    sup = Supervisor(specs, auto_shutdown="all_significant", clock=FakeClock())
    with sup:
        probe.make_exit(sup, children(sup)["s1"], "return")
        assert not sup.dead
        probe.make_exit(sup, children(sup)["s2"], "crash")  # temporary: dropped, any reason counts
        assert sup.join(5) is None
    assert sup.successful()


def test_auto_shutdown_never_ignores_significant_children():
    probe = Probe()
    specs = [probe.spec("s", restart="transient", significant=True), probe.spec("other")]
    with Supervisor(specs, auto_shutdown="never") as sup:
        probe.make_exit(sup, children(sup)["s"], "return")
        assert not sup.dead
        assert children(sup)["s"] is None


def test_terminate_child_of_a_significant_child_does_not_trigger_auto_shutdown():
    # OTP: auto_shutdown is triggered only when a significant child terminates
    # by itself, not by terminate_child.
    probe = Probe()
    specs = [probe.spec("s", restart="transient", significant=True), probe.spec("other")]
    with Supervisor(specs, auto_shutdown="any_significant") as sup:
        sup.terminate_child("s")
        sync(sup)
        assert not sup.dead


def test_a_spec_made_from_another_with_new_arguments_equals_one_built_and_validated_from_scratch():
    from greentree import Registry

    reg = Registry(name="specs")
    template = ChildSpec(None, gevent.sleep, restart="temporary", shutdown=2.5, start_timeout=None)
    made = template._with(("i", 1), (3600,), reg.via(("i", 1)))
    built = ChildSpec(("i", 1), gevent.sleep, 3600, restart="temporary", shutdown=2.5, start_timeout=None,
                      register=reg.via(("i", 1)))
    assert made == built and made.may_block == built.may_block is False

    class SlowBinder:  # a binder that may yield: goes through the constructor, which says so
        def bind(self, child):
            pass

    assert template._with("x", (), SlowBinder()).may_block is True


@pytest.mark.parametrize("flags, message", [
    ({"strategy": "one_for_none"}, "Supervisor('n'): strategy must be one of"),
    ({"auto_shutdown": 3}, "Supervisor('n'): auto_shutdown must be one of"),
    ({"max_restarts": -1}, "Supervisor('n'): max_restarts must be an int >= 0"),
    ({"max_restarts": True}, "Supervisor('n'): max_restarts must be an int >= 0"),
    ({"max_seconds": float("nan")}, "Supervisor('n'): max_seconds must be a finite number of seconds > 0"),
    ({"max_seconds": 0}, "Supervisor('n'): max_seconds must be a finite number of seconds > 0"),
    ({"clock": 3}, "Supervisor('n'): clock must be a callable"),
])
def test_invalid_supervisor_flags_are_refused_naming_the_supervisor(flags, message):
    with pytest.raises(ChildSpecError, match=re.escape(message)):
        Supervisor([], name="n", **flags)


@pytest.mark.parametrize("fields, message", [
    ({"shutdown": -1.0}, "ChildSpec('a'): shutdown must be a finite number of seconds >= 0"),
    ({"shutdown": float("inf")}, "use None to wait forever"),
    ({"shutdown": True}, "ChildSpec('a'): shutdown must be"),
    ({"start_timeout": 0}, "ChildSpec('a'): start_timeout must be a finite number of seconds > 0"),
])
def test_invalid_spec_durations_are_refused_naming_the_spec(fields, message):
    with pytest.raises(ChildSpecError, match=re.escape(message)):
        ChildSpec("a", gevent.sleep, **fields)
    assert ChildSpec("a", gevent.sleep, shutdown=2).shutdown == 2.0  # an int is taken as seconds
