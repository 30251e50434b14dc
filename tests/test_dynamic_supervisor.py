"""DynamicSupervisor, written from Elixir's dynamic_supervisor_test.exs:
children on demand, keyed by greenlet, one_for_one, max_children, extra_args."""

from __future__ import annotations

import json

import gevent
import pytest
from gevent.event import AsyncResult, Event

import greentree
from greentree import (
    BlockingCallError,
    ChildNotFoundError,
    ChildSpec,
    DynamicSupervisor,
    MaxChildrenError,
    RestartIntensityExceeded,
    ShutdownExit,
    StartChildError,
    Supervisor,
)
from greentree.testing import FakeClock, wait_until


def greenlets(dyn):
    return [i.child for i in dyn.which_children()]


def forever(*args):
    gevent.sleep(3600)


def replaced(dyn, old):
    """Wait until ``old`` is no longer among ``dyn``'s children; return the new one(s)."""
    wait_until(lambda: old not in greenlets(dyn) and None not in greenlets(dyn), what="the restart")
    return greenlets(dyn)


# ---------------------------------------------------------------- start_child


def test_start_child_returns_the_running_greenlet():
    with DynamicSupervisor() as dyn:
        g = dyn.start_child(ChildSpec("worker", forever))
        assert isinstance(g, greentree.Greenlet) and not g.dead
        assert greenlets(dyn) == [g]
        assert dyn.count_children() == (1, 1, 0, 1)


def test_extra_args_are_prepended_to_every_childs_args():
    got = AsyncResult()

    def child(*args, **kwargs):
        got.set((args, kwargs))
        gevent.sleep(3600)

    with DynamicSupervisor(extra_args=("tenant-1", 7)) as dyn:
        dyn.start_child(ChildSpec(None, child, "conn", kwargs={"mode": "ro"}))
        assert got.get(5) == (("tenant-1", 7, "conn"), {"mode": "ro"})


def test_many_children_may_share_one_spec_and_its_id_may_be_none():
    spec = ChildSpec(None, forever, restart="temporary")
    with DynamicSupervisor() as dyn:
        gs = [dyn.start_child(spec) for _ in range(5)]
        assert len(set(gs)) == 5
        assert [i.id for i in dyn.which_children()] == [None] * 5


def test_max_children_is_enforced_and_a_refused_start_changes_nothing():
    with DynamicSupervisor(max_children=2, name="pool") as dyn:
        a = dyn.start_child(ChildSpec(None, forever))
        dyn.start_child(ChildSpec(None, forever))
        with pytest.raises(MaxChildrenError,
                           match=r"DynamicSupervisor 'pool'.start_child\(\): already 2 children.*raise max_children"):
            dyn.start_child(ChildSpec(None, forever))
        assert dyn.count_children().specs == 2
        dyn.terminate_child(a)
        dyn.start_child(ChildSpec(None, forever))  # room again
        assert dyn.count_children().specs == 2


def test_max_children_zero_refuses_every_child():
    with DynamicSupervisor(max_children=0) as dyn:
        with pytest.raises(MaxChildrenError):
            dyn.start_child(ChildSpec(None, forever))


def test_a_handshake_child_is_started_once_it_calls_started():
    log = []

    def slow_setup():
        gevent.sleep(0.01)
        log.append("ready")
        greentree.started()
        gevent.sleep(3600)

    with DynamicSupervisor() as dyn:
        g = dyn.start_child(ChildSpec(None, slow_setup, handshake=True))
        assert log == ["ready"] and not g.dead


def test_a_handshake_child_that_fails_before_started_is_a_start_error_and_is_not_kept():
    def broken():
        raise OSError("no route")

    with DynamicSupervisor() as dyn:
        with pytest.raises(StartChildError, match="OSError: no route"):
            dyn.start_child(ChildSpec("b", broken, handshake=True))
        assert dyn.count_children() == (0, 0, 0, 0)


def test_a_child_can_start_a_sibling():
    with DynamicSupervisor() as dyn:
        def parent():
            dyn.start_child(ChildSpec("sibling", forever))
            gevent.sleep(3600)

        dyn.start_child(ChildSpec("parent", parent))
        wait_until(lambda: dyn.count_children().specs == 2)


def test_start_child_from_the_supervisors_own_greenlet_raises_blocking_call_error():
    errors = []

    class Nested(greentree.Greenlet):
        handshake = True
        dyn = None

        def __init__(self):
            try:
                self.dyn.start_child(ChildSpec(None, forever))
            except BlockingCallError as e:
                errors.append(e)
            greentree.Greenlet.__init__(self)

        def _run(self):
            greentree.started()
            gevent.sleep(3600)

    with DynamicSupervisor() as dyn:
        Nested.dyn = dyn
        dyn.start_child(ChildSpec(None, Nested))
    assert len(errors) == 1


def test_a_supervisor_can_be_a_dynamic_child():
    with DynamicSupervisor() as dyn:
        inner = dyn.start_child(Supervisor.child_spec("inner", [ChildSpec("w", forever)]))
        assert isinstance(inner, Supervisor)
        assert inner.wait_started(5) is inner
        assert dyn.count_children() == (1, 1, 1, 0)
        w = inner.which_children()[0].child
    assert inner.dead and w.dead


# ---------------------------------------------------------------- exits and restarts


def test_a_crashed_permanent_child_is_restarted_under_a_new_greenlet():
    with DynamicSupervisor(clock=FakeClock()) as dyn:
        g = dyn.start_child(ChildSpec("p", forever))
        g.kill(RuntimeError("boom"))
        (new,) = replaced(dyn, g)
        assert new is not g and not new.dead
        d = dyn.describe()
        assert d["children"][0]["restarts"] == 1
        assert d["children"][0]["last_exit"] == "RuntimeError: boom"
        with pytest.raises(ChildNotFoundError):
            dyn.terminate_child(g)  # the old greenlet is no longer a child
        dyn.terminate_child(new)


@pytest.mark.parametrize(("restart", "how", "kept"), [
    ("permanent", "return", True),
    ("transient", "return", False),
    ("transient", "crash", True),
    ("transient", "shutdown", False),
    ("temporary", "crash", False),
    ("temporary", "return", False),
])
def test_dynamic_children_follow_the_restart_table_and_are_forgotten_when_not_restarted(restart, how, kept):
    done = Event()

    def child():
        if not done.is_set():
            done.set()
            if how == "return":
                return
            if how == "shutdown":
                raise ShutdownExit()
            raise RuntimeError("boom")
        gevent.sleep(3600)

    with DynamicSupervisor(clock=FakeClock()) as dyn:
        g = dyn.start_child(ChildSpec(None, child, restart=restart))
        g.join(5)
        if kept:
            replaced(dyn, g)
            assert dyn.count_children() == (1, 1, 0, 1)
        else:
            wait_until(lambda: dyn.count_children().specs == 0, what="the child to be forgotten")


def test_too_many_restarts_make_a_dynamic_supervisor_give_up():
    clock = FakeClock()
    dyn = DynamicSupervisor(max_restarts=2, max_seconds=5, clock=clock)
    with pytest.raises(RestartIntensityExceeded), dyn:
        bystander = dyn.start_child(ChildSpec(None, forever))
        g = dyn.start_child(ChildSpec(None, forever))
        for _ in range(3):
            g.kill(RuntimeError("boom"))
            if _ < 2:
                g = [x for x in replaced(dyn, g) if x is not bystander][0]
        assert dyn.join(5) is None
        assert bystander.dead
    with pytest.raises(RestartIntensityExceeded):
        dyn.get()


def test_a_failed_dynamic_restart_is_retried_until_it_succeeds():
    class Flaky(greentree.Greenlet):
        failures = 0

        def __init__(self):
            if Flaky.failures:
                Flaky.failures -= 1
                raise OSError("busy")
            greentree.Greenlet.__init__(self)

        def _run(self):
            gevent.sleep(3600)

    with DynamicSupervisor(max_restarts=10, clock=FakeClock()) as dyn:
        g = dyn.start_child(ChildSpec(None, Flaky))
        Flaky.failures = 3
        g.kill(RuntimeError("boom"))
        (new,) = replaced(dyn, g)
        assert Flaky.failures == 0 and not new.dead
        assert dyn.describe()["intensity"]["recent_restarts"] == 4  # the crash and three failed attempts


# ---------------------------------------------------------------- terminate


def test_terminate_child_stops_and_forgets_the_child():
    with DynamicSupervisor() as dyn:
        g = dyn.start_child(ChildSpec(None, forever))
        h = dyn.start_child(ChildSpec(None, forever))
        dyn.terminate_child(g)
        assert g.dead and greenlets(dyn) == [h]


def test_terminate_child_of_a_stranger_raises_child_not_found():
    stranger = gevent.spawn(forever)
    try:
        with DynamicSupervisor(name="pool") as dyn:
            with pytest.raises(ChildNotFoundError, match="not a child of DynamicSupervisor 'pool'") as info:
                dyn.terminate_child(stranger)
            assert isinstance(info.value, LookupError)
    finally:
        stranger.kill()


def test_terminate_all_and_count_children():
    with DynamicSupervisor() as dyn:
        dyn.start_child(ChildSpec(None, forever))
        dyn.start_child(DynamicSupervisor.child_spec("sub"))
        assert dyn.count_children() == (2, 2, 1, 1)
        assert dyn.terminate_all() == 2
        assert dyn.count_children() == (0, 0, 0, 0)
        assert dyn.terminate_all() == 0


def test_describe_lists_at_most_limit_children_and_is_json_able():
    with DynamicSupervisor(name="pool", max_children=50) as dyn:
        for _ in range(10):
            dyn.start_child(ChildSpec(("conn", 1), forever))
        d = dyn.describe(limit=3)
        assert json.loads(json.dumps(d)) == d
        assert d["kind"] == "dynamic_supervisor" and d["max_children"] == 50
        assert d["count"] == {"specs": 10, "active": 10, "supervisors": 0, "workers": 10}
        assert len(d["children"]) == 3
        assert d["children"][0]["id"] == repr(("conn", 1))
