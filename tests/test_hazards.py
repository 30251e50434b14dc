"""The gevent hazards greentree handles (ARCHITECTURE section 3, issue 2 section 4)."""

from __future__ import annotations

import contextvars
import io
import logging
import time
import weakref

import gevent
import pytest
from gevent.event import AsyncResult, Event

import greentree
import greentree._process
import greentree._report
from greentree import (
    BlockingCallError,
    ChildSpec,
    DynamicSupervisor,
    NotRunningError,
    ShutdownExit,
    StartChildError,
    Supervisor,
)
from greentree._report import BURST, RateLimiter
from greentree.testing import FakeClock, wait_until

request_id = contextvars.ContextVar("request_id", default=None)


def children(sup):
    return {i.id: i.child for i in sup.which_children()}


def restarted(sup, cid, old):
    """Wait until ``sup`` replaced child ``cid``'s greenlet ``old``; return the new one."""
    wait_until(lambda: children(sup).get(cid) not in (None, old), what=f"{cid!r} to be restarted")
    return children(sup)[cid]


def catching(fn, *args):
    try:
        return fn(*args)
    except Exception as e:
        return e


@pytest.fixture
def fresh_limiter(monkeypatch):
    """A rate limiter of our own with a fake clock, so earlier tests' crashes do not count."""
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    monkeypatch.setattr(greentree._report, "limiter", limiter)
    return clock


def crash_records(caplog):
    return [r for r in caplog.records if r.name == "greentree" and hasattr(r, "greentree_exception")]


# ---------------------------------------------------------------- the hub never sees a child's error


@pytest.mark.parametrize("exc", [RuntimeError("boom"), SystemExit(2), KeyboardInterrupt(), ValueError("bad")],
                         ids=lambda e: type(e).__name__)
def test_a_supervised_childs_crash_never_reaches_the_hub_or_stderr(exc, capfd, fresh_limiter):
    # The suite-wide guard (conftest) fails this test if the error reaches the hub.
    runs = []

    def body():
        runs.append(gevent.getcurrent())
        if len(runs) == 1:
            raise exc
        gevent.sleep(3600)

    with Supervisor([ChildSpec("c", body)], clock=FakeClock()) as sup:
        wait_until(lambda: len(runs) == 2, what="the restart")
        assert runs[0].dead and children(sup)["c"] is runs[1]
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    assert type(exc).__name__ not in err


def test_each_crash_is_logged_once_with_structured_fields(caplog_greentree, fresh_limiter):
    count = []

    def body():
        count.append(1)
        if len(count) <= 3:
            raise RuntimeError(f"crash {len(count)}")
        gevent.sleep(3600)

    with Supervisor([ChildSpec("worker", body, restart="transient")], name="app", clock=FakeClock()):
        wait_until(lambda: len(count) == 4)
    records = crash_records(caplog_greentree)
    assert [r.greentree_exception for r in records] == [
        "RuntimeError('crash 1')", "RuntimeError('crash 2')", "RuntimeError('crash 3')",
    ]
    for r in records:
        assert r.levelno == logging.ERROR
        assert r.greentree_child == "worker"
        assert r.greentree_supervisor == "Supervisor 'app'"
        assert r.greentree_restart == "transient"
        assert r.greentree_suppressed == 0
        assert r.exc_info is not None and r.exc_info[0] is RuntimeError
        assert "child 'worker' of Supervisor 'app' crashed with RuntimeError" in r.getMessage()


def test_the_greentree_logger_has_no_null_handler_so_reports_are_visible_by_default():
    assert not any(isinstance(h, logging.NullHandler) for h in logging.getLogger("greentree").handlers)


@pytest.mark.timeout(60)
def test_a_crash_storm_is_rate_limited_and_does_not_stall_a_timer(caplog_greentree, fresh_limiter):
    n = 2000
    crashes = []
    done = Event()

    def crash_loop():
        crashes.append(1)
        if len(crashes) >= n:
            done.set()
            gevent.sleep(3600)
        raise RuntimeError("storm")

    gaps = []

    def ticker():
        # CPU time of this thread between ticks: the loop's own stall, not the
        # time another process held the core (the machine may be shared).
        last = time.thread_time()
        while not done.is_set():
            gevent.sleep(0.001)
            now = time.thread_time()
            gaps.append(now - last)
            last = now

    tick = gevent.spawn(ticker)
    with Supervisor([ChildSpec("storm", crash_loop)], max_restarts=10**6, clock=FakeClock()) as sup:
        assert done.wait(30)
        tick.join(5)
        records = crash_records(caplog_greentree)
        assert len(records) == BURST  # the fake clock never refills the bucket
        # later, one more crash gets through and says how many were dropped
        fresh_limiter.advance(1.0)
        g = children(sup)["storm"]
        g.kill(RuntimeError("after the storm"))
        restarted(sup, "storm", g)
    records = crash_records(caplog_greentree)
    assert len(records) == BURST + 1
    last = records[-1]
    assert last.greentree_suppressed == n - 1 - int(BURST)
    assert f"({n - 1 - int(BURST)} earlier crash reports suppressed by the rate limit)" in last.getMessage()
    assert gaps and max(gaps) < 0.5, f"the timer stalled for {max(gaps):.3f} s"


# ---------------------------------------------------------------- SystemExit / KeyboardInterrupt


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_system_exit_or_keyboard_interrupt_from_child_code_is_a_crash_of_that_child(exc_type, fresh_limiter):
    runs = []

    def body():
        runs.append(gevent.getcurrent())
        if len(runs) == 1:
            raise exc_type()
        gevent.sleep(3600)

    # transient: restarted only after a crash, so the restart proves it was one
    with Supervisor([ChildSpec("c", body, restart="transient")], clock=FakeClock()) as sup:
        wait_until(lambda: len(runs) == 2, what="the restart")
        first = runs[0]
        assert first.dead and children(sup)["c"] is runs[1]
        assert isinstance(first.exception, exc_type)
        assert not first.successful()
        assert sup.describe()["children"][0]["last_exit"].startswith(exc_type.__name__)
    # and we are still here: the process did not exit


# ---------------------------------------------------------------- frames are not kept alive


class Buffer:
    """Stands for a socket or a big buffer held by a child's frame."""


def test_a_crashed_childs_frames_are_not_kept_alive(monkeypatch, fresh_limiter):
    # A real handler that formats the record (and keeps nothing), instead of
    # pytest's capture, which keeps every record and its traceback.
    logger = logging.getLogger("greentree")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(handler)
    refs = []
    glets = []

    def body():
        buf = Buffer()
        refs.append(weakref.ref(buf))
        glets.append(gevent.getcurrent())
        if len(refs) == 1:
            raise RuntimeError("crash with a buffer in scope")
        gevent.sleep(3600)

    try:
        with Supervisor([ChildSpec("c", body)], clock=FakeClock()) as sup:
            wait_until(lambda: len(glets) == 2, what="the restart")
            first = glets[0]
            assert first.dead and children(sup)["c"] is glets[1]
            glets.clear()
            exc = first.exception
            assert isinstance(exc, RuntimeError)
            assert exc.__traceback__ is None
            assert first.exc_info[2] is None
            first_ref = weakref.ref(first)
            del first
            # no gc.collect(): the frame must be freed by reference counting alone
            assert refs[0]() is None
            assert first_ref() is None  # no dead greenlet kept in history
    finally:
        logger.removeHandler(handler)
    assert "Traceback" in stream.getvalue()  # the report itself had the traceback


def test_a_stopped_childs_exit_exception_keeps_no_traceback():
    refs = []

    def body():
        buf = Buffer()
        refs.append(weakref.ref(buf))
        gevent.sleep(3600)

    with Supervisor([ChildSpec("c", body)]) as sup:
        g = children(sup)["c"]
        wait_until(lambda: refs)
    assert isinstance(g.value, ShutdownExit)
    assert g.value.__traceback__ is None
    assert refs[0]() is None


# ---------------------------------------------------------------- unlink_all


@pytest.mark.parametrize("how", ["crash", "return"])
def test_exit_detection_survives_child_code_calling_unlink_all(how, fresh_limiter):
    runs = []

    def body():
        runs.append(gevent.getcurrent())
        gevent.getcurrent().unlink_all()
        if len(runs) == 1:
            if how == "crash":
                raise RuntimeError("after unlink_all")
            return "done"
        gevent.sleep(3600)

    with Supervisor([ChildSpec("c", body)], clock=FakeClock()) as sup:
        wait_until(lambda: len(runs) == 2, what="the restart")
        assert runs[0].dead and children(sup)["c"] is runs[1]


def test_a_child_killed_before_it_ever_ran_is_still_detected():
    with DynamicSupervisor(clock=FakeClock()) as dyn:
        g = dyn.start_child(ChildSpec("b", gevent.sleep, 3600))
        assert g.gr_frame is None and not g.dead  # scheduled, not yet run
        g.kill(block=False)  # its body never runs: only the rawlink backstop can see the exit
        wait_until(lambda: [i.child for i in dyn.which_children()] not in ([g], [None]))
        (new,) = [i.child for i in dyn.which_children()]
        assert new is not g and not new.dead


def test_a_child_killed_with_an_error_before_it_ever_ran_is_a_crash_not_a_hub_error(caplog_greentree, fresh_limiter):
    # gevent hands such an error straight to the hub: the child's body, which
    # catches everything, never ran.
    with DynamicSupervisor(clock=FakeClock()) as dyn:
        g = dyn.start_child(ChildSpec("early", gevent.sleep, 3600, restart="transient"))
        assert g.gr_frame is None and not g.dead
        g.kill(RuntimeError("killed early"))
        assert g.dead and not g.successful()
        assert isinstance(g.exception, RuntimeError)
        with pytest.raises(RuntimeError, match="killed early"):
            g.get()
        # transient: restarted only after a crash
        wait_until(lambda: [i.child for i in dyn.which_children()] not in ([g], [None]))
    assert [r.greentree_exception for r in crash_records(caplog_greentree)] == ["RuntimeError('killed early')"]


# ---------------------------------------------------------------- GreenletExit swallowers


def test_a_child_that_swallows_greenlet_exit_cannot_hang_stop():
    def swallow():
        while True:
            try:
                gevent.sleep(3600)
            except gevent.GreenletExit:
                pass

    sup = Supervisor([ChildSpec("s", swallow, shutdown=0.05)])
    sup.start()
    sup.wait_started()
    g = children(sup)["s"]
    t0 = time.monotonic()
    sup.stop()
    assert time.monotonic() - t0 < 1.0
    assert g.dead


# ---------------------------------------------------------------- contextvars


def test_the_starters_contextvars_flow_into_children_started_with_start_child():
    seen = []

    def body():
        seen.append(request_id.get())
        gevent.sleep(3600)

    def client():
        request_id.set("req-42")
        sup.start_child(ChildSpec("c", body))

    with Supervisor([]) as sup:
        gevent.spawn(client).join()
        wait_until(lambda: seen)
        assert seen == ["req-42"]
        assert request_id.get() is None


def test_the_starters_contextvars_flow_into_static_children_and_their_restarts(fresh_limiter):
    seen = []

    def body():
        seen.append(request_id.get())
        request_id.set("changed by the child")  # must not leak into the restart
        if len(seen) == 1:
            raise RuntimeError("restart me")
        gevent.sleep(3600)

    def starter():
        request_id.set("trace-7")
        sup = Supervisor([ChildSpec("c", body), Supervisor.child_spec("inner", [ChildSpec("d", body)])],
                         clock=FakeClock())
        sup.start()
        return sup

    sup = gevent.spawn(starter).get()
    try:
        sup.wait_started()
        wait_until(lambda: len(seen) == 3)
        assert seen == ["trace-7"] * 3
    finally:
        sup.stop()


def test_contextvars_flow_into_dynamic_children():
    seen = AsyncResult()

    def body():
        seen.set(request_id.get())
        gevent.sleep(3600)

    with DynamicSupervisor() as dyn:
        token = request_id.set("tenant-1")
        try:
            dyn.start_child(ChildSpec(None, body))
        finally:
            request_id.reset(token)
        assert seen.get(5) == "tenant-1"


def test_children_started_from_an_empty_context_get_their_own_and_restarts_start_empty(fresh_limiter):
    """A tree started where no variable is set shares one empty context object that nothing runs in:
    what a child sets reaches neither its siblings, nor its restarts, nor the tree's other levels."""
    from greentree._process import EMPTY_CONTEXT

    seen = []

    def body(name):
        seen.append((name, request_id.get()))
        request_id.set(f"set by {name}")
        if name == "a" and sum(n == "a" for n, _ in seen) < 3:
            raise RuntimeError("restart me")
        gevent.sleep(3600)

    def starter():  # a fresh greenlet: an empty context
        sup = Supervisor([ChildSpec("a", body, "a"),
                          Supervisor.child_spec("inner", [ChildSpec("b", body, "b")])], clock=FakeClock())
        sup.start()
        dyn = DynamicSupervisor()
        dyn.start()
        dyn.start_child(ChildSpec(None, body, "c", restart="temporary"))
        return sup, dyn

    sup, dyn = gevent.spawn(starter).get()
    try:
        sup.wait_started()
        wait_until(lambda: len(seen) >= 5, what=f"every child and a's restarts to run (seen {seen})")
        assert {v for _, v in seen} == {None}, seen
        assert sorted(n for n, _ in seen) == ["a", "a", "a", "b", "c"]
        assert len(EMPTY_CONTEXT) == 0
    finally:
        dyn.stop()
        sup.stop()


# ---------------------------------------------------------------- blocking calls from the wrong greenlet


def test_a_blocking_call_from_the_supervisors_own_greenlet_raises_blocking_call_error():
    errors = []

    class Meddler(greentree.Greenlet):
        sup = None

        def __init__(self):
            try:
                self.sup.terminate_child("other")  # runs in the supervisor's greenlet
            except BlockingCallError as e:
                errors.append(e)
            greentree.Greenlet.__init__(self)

        def _run(self):
            gevent.sleep(3600)

    with Supervisor([ChildSpec("other", gevent.sleep, 3600)], name="app") as sup:
        Meddler.sup = sup
        sup.start_child(ChildSpec("meddler", Meddler))
    assert len(errors) == 1
    assert "would wait for itself forever" in str(errors[0]) and "Supervisor 'app'" in str(errors[0])
    assert isinstance(errors[0], RuntimeError)


def test_a_blocking_call_in_a_childs_constructor_fails_its_start_cleanly():
    class Meddler(greentree.Greenlet):
        sup = None

        def __init__(self):
            self.sup.stop()

    with Supervisor([]) as sup:
        Meddler.sup = sup
        with pytest.raises(StartChildError) as info:
            sup.start_child(ChildSpec("meddler", Meddler))
        assert isinstance(info.value.reason, BlockingCallError)
        assert not sup.dead


def test_a_blocking_call_from_a_hub_callback_raises_blocking_call_error():
    result = AsyncResult()

    def callback(_g):
        # runs in the hub: must not block and must not raise
        try:
            sup.terminate_child("x")
        except BlockingCallError as e:
            result.set(e)
        except Exception as e:  # pragma: no cover - reported through the assert below
            result.set(e)

    with Supervisor([ChildSpec("x", gevent.sleep, 3600)]) as sup:
        g = gevent.spawn(lambda: None)
        g.rawlink(callback)
        err = result.get(5)
        assert isinstance(err, BlockingCallError), err
        assert "hub" in str(err)
        assert children(sup)["x"] is not None


# ---------------------------------------------------------------- dead and never-started supervisors


CALLS = [
    ("start_child", lambda: (ChildSpec("n", gevent.sleep, 1),)),
    ("terminate_child", lambda: ("a",)),
    ("restart_child", lambda: ("a",)),
    ("delete_child", lambda: ("a",)),
]


@pytest.mark.parametrize(("op", "args"), CALLS, ids=[c[0] for c in CALLS])
def test_calls_to_a_never_started_supervisor_raise_not_running_at_once(op, args):
    sup = Supervisor([ChildSpec("a", gevent.sleep, 1)], name="idle")
    ran = []
    gevent.spawn(ran.append, True)  # runs only if the call yields to the event loop
    with pytest.raises(NotRunningError, match=r"call start\(\) first"):
        getattr(sup, op)(*args())
    assert ran == []  # raised without waiting for anything


@pytest.mark.parametrize(("op", "args"), CALLS, ids=[c[0] for c in CALLS])
def test_calls_to_a_dead_supervisor_raise_not_running_at_once(op, args):
    sup = Supervisor([ChildSpec("a", gevent.sleep, 1)], name="gone")
    with sup:
        pass
    with pytest.raises(NotRunningError, match="not running.*exited: shutdown") as info:
        getattr(sup, op)(*args())
    assert isinstance(info.value, LookupError)


def test_dynamic_supervisor_calls_when_not_running_raise_not_running():
    dyn = DynamicSupervisor()
    with pytest.raises(NotRunningError):
        dyn.start_child(ChildSpec(None, gevent.sleep, 1))
    with pytest.raises(NotRunningError):
        dyn.terminate_all()
    with dyn:
        pass
    with pytest.raises(NotRunningError):
        dyn.start_child(ChildSpec(None, gevent.sleep, 1))


def test_callers_waiting_when_the_supervisor_dies_get_not_running_instead_of_hanging():
    gate = Event()

    def slow_setup():
        gate.wait()  # the supervisor is stuck waiting for this handshake
        greentree.started()

    sup = Supervisor([])
    sup.start()
    sup.wait_started()
    first = gevent.spawn(catching, sup.start_child, ChildSpec("slow", slow_setup, handshake=True, start_timeout=60))
    wait_until(lambda: sup._mb_busy)
    second = gevent.spawn(catching, sup.terminate_child, "slow")
    wait_until(lambda: sup._mb_size())  # queued behind the first call
    sup.kill(RuntimeError("the supervisor died"))
    assert first.join(5) is None and second.join(5) is None
    assert isinstance(first.value, NotRunningError)
    assert isinstance(second.value, NotRunningError)
    assert "RuntimeError: the supervisor died" in str(second.value)
    assert sup.dead
