"""TaskSupervisor, Task and await_many (after Elixir's Task.Supervisor suite)."""

from __future__ import annotations

import contextvars
import logging
import threading
import time

import gevent
import pytest
from gevent.event import Event

import greentree
from greentree import (
    BRUTAL_KILL,
    ChildSpec,
    ChildSpecError,
    MaxChildrenError,
    NotRunningError,
    Supervisor,
    Task,
    TaskCancelledError,
    TaskSupervisor,
    TaskTimeoutError,
    _report,
    await_many,
)
from greentree.testing import FakeClock, wait_until

request_id = contextvars.ContextVar("request_id", default=None)


@pytest.fixture
def tasks():
    with TaskSupervisor(name="tasks") as sup:
        yield sup


@pytest.fixture
def reports(caplog, monkeypatch):
    """Crash reports of the greentree logger, with a fresh rate limiter."""
    monkeypatch.setattr(_report, "limiter", _report.RateLimiter())
    caplog.set_level(logging.ERROR, logger="greentree")
    return lambda: [r for r in caplog.records if r.name == "greentree" and r.levelno >= logging.ERROR]


class Boom(Exception):
    pass


def boom(msg="boom"):
    raise Boom(msg)


# ---------------------------------------------------------------- spawn
def test_spawn_runs_the_function_with_its_args_and_returns_its_greenlet(tasks):
    seen = []
    g = tasks.spawn(lambda a, b=None: seen.append((a, b)), 1, b=2)
    assert isinstance(g, greentree.Greenlet)
    assert g.join(5) is None or g.dead
    assert seen == [(1, 2)]


def test_a_spawned_task_is_forgotten_once_it_ends(tasks):
    release = Event()
    g = tasks.spawn(release.wait)
    assert tasks.count_children().active == 1
    assert tasks.which_children()[0].child is g
    release.set()
    g.join(5)
    wait_until(lambda: tasks.count_children().specs == 0)


def test_a_crashing_spawned_task_is_reported_once_and_leaves_the_caller_alone(tasks, reports):
    g = tasks.spawn(boom, "spawned")
    g.join(5)
    assert isinstance(g.exception, Boom)
    crashes = [r for r in reports() if "Boom" in r.getMessage()]
    assert len(crashes) == 1
    assert "spawned" in crashes[0].getMessage()
    assert not tasks.dead


def test_spawn_rejects_something_that_is_not_callable(tasks):
    with pytest.raises(TypeError, match="must be callable"):
        tasks.spawn(42)
    assert tasks.count_children().specs == 0


# ---------------------------------------------------------------- async_nolink
def test_async_nolink_returns_a_task_whose_get_returns_the_result(tasks):
    task = tasks.async_nolink(lambda x, y: x * y, 6, y=7)
    assert isinstance(task, Task)
    assert task.get(timeout=5) == 42
    assert task.done()
    assert task.get() == 42  # a second get returns the same result


def test_a_crashing_task_does_not_crash_its_caller_and_get_raises_its_exception(tasks, reports):
    outcome = []

    def caller():
        task = tasks.async_nolink(boom, "nolink")
        task.greenlet.join(5)
        outcome.append("caller still running")
        try:
            task.get(timeout=5)
        except Boom as e:
            outcome.append(str(e))

    c = gevent.spawn(caller)
    c.join(5)
    assert c.successful()
    assert outcome == ["caller still running", "nolink"]
    assert len([r for r in reports() if "Boom" in r.getMessage()]) == 1
    assert not tasks.dead


def test_a_caller_that_dies_does_not_take_its_task_with_it(tasks):
    release = Event()
    started = []

    def caller():
        started.append(tasks.async_nolink(lambda: (release.wait(), "finished")[1]))
        gevent.sleep(3600)

    c = gevent.spawn(caller)
    wait_until(lambda: started)
    c.kill()
    task = started[0]
    assert not task.done()
    release.set()
    assert task.get(timeout=5) == "finished"


def test_get_with_a_timeout_raises_a_timeout_error_and_the_task_keeps_running(tasks):
    release = Event()
    task = tasks.async_nolink(lambda: (release.wait(), "late")[1])
    with pytest.raises(TaskTimeoutError, match="still running") as info:
        task.get(timeout=0.01)
    assert isinstance(info.value, TimeoutError)
    assert not task.done()
    release.set()
    assert task.get(timeout=5) == "late"


def test_get_from_the_task_itself_raises_instead_of_deadlocking(tasks):
    box = []

    def body():
        gevent.sleep(0)
        try:
            box[0].get()
        except greentree.BlockingCallError as e:
            return str(e)

    task = tasks.async_nolink(body)
    box.append(task)
    assert "from the task itself" in task.get(timeout=5)


def test_tasks_are_never_restarted(tasks):
    runs = []

    def crash():
        runs.append(1)
        raise Boom("once")

    task = tasks.async_nolink(crash)
    with pytest.raises(Boom):
        task.get(timeout=5)
    wait_until(lambda: tasks.count_children().specs == 0)
    gevent.sleep(0)
    assert runs == [1]


def test_many_crashing_tasks_never_exhaust_the_restart_intensity():
    clock = FakeClock()
    with TaskSupervisor(clock=clock) as sup:
        ts = [sup.async_nolink(boom) for _ in range(20)]
        for t in ts:
            with pytest.raises(Boom):
                t.get(timeout=5)
        assert not sup.dead
        assert sup.async_nolink(int, "5").get(timeout=5) == 5


def test_the_callers_contextvars_flow_into_the_task(tasks):
    def read():
        return request_id.get()

    token = request_id.set("req-1")
    try:
        task = tasks.async_nolink(read)
        g = tasks.spawn(read)
    finally:
        request_id.reset(token)
    assert task.get(timeout=5) == "req-1"
    g.join(5)
    assert g.value == "req-1"
    assert request_id.get() is None


def test_async_nolink_past_max_children_raises_max_children_error():
    release = Event()
    with TaskSupervisor(max_children=2, name="small") as sup:
        a = sup.async_nolink(release.wait)
        b = sup.async_nolink(release.wait)
        with pytest.raises(MaxChildrenError, match="max_children"):
            sup.async_nolink(release.wait)
        release.set()
        await_many([a, b], timeout=5)
        wait_until(lambda: sup.count_children().specs == 0)
        assert sup.async_nolink(len, "abc").get(timeout=5) == 3


def test_a_task_supervisor_refuses_a_child_that_would_be_restarted(tasks):
    with pytest.raises(ChildSpecError, match="temporary"):
        tasks.start_child(ChildSpec("w", gevent.sleep, 1))
    g = tasks.start_child(ChildSpec("w", lambda: "ok", restart="temporary"))
    g.join(5)
    assert g.value == "ok"


def test_a_bad_task_shutdown_is_rejected_before_anything_starts():
    with pytest.raises(ChildSpecError, match="task_shutdown"):
        TaskSupervisor(task_shutdown=-1)
    assert TaskSupervisor(task_shutdown=BRUTAL_KILL).task_shutdown is BRUTAL_KILL


# ---------------------------------------------------------------- cancel
def test_cancel_stops_a_running_task_and_get_then_raises_task_cancelled_error(tasks):
    cleaned = []

    def body():
        try:
            gevent.sleep(3600)
        finally:
            cleaned.append("cleanup ran")

    task = tasks.async_nolink(body)
    gevent.sleep(0)
    assert task.cancel() is True
    assert task.done()
    assert cleaned == ["cleanup ran"]
    with pytest.raises(TaskCancelledError, match="stopped before it returned"):
        task.get()
    assert task.cancel() is False
    assert tasks.count_children().specs == 0


def test_cancel_of_a_task_that_already_returned_is_false_and_keeps_its_result(tasks):
    task = tasks.async_nolink(lambda: "result")
    # The task was scheduled before the cancel request reached the supervisor: it ran.
    assert task.cancel() is False
    assert task.get(timeout=5) == "result"
    wait_until(lambda: tasks.count_children().specs == 0)


def test_stopping_the_supervisor_stops_its_tasks():
    sup = TaskSupervisor(name="short-lived")
    sup.start()
    sup.wait_started()
    task = sup.async_nolink(gevent.sleep, 3600)
    gevent.sleep(0)
    sup.stop()
    assert task.done()
    with pytest.raises(TaskCancelledError):
        task.get()
    assert task.cancel() is False
    with pytest.raises(NotRunningError):
        sup.async_nolink(int)


def test_a_task_supervisor_nests_under_a_supervisor_as_a_child():
    spec = TaskSupervisor.child_spec("tasks", max_children=5, task_shutdown=1)
    with Supervisor([spec], name="app") as app:
        tasks = app.which_children()[0].child
        assert isinstance(tasks, TaskSupervisor)
        assert tasks.max_children == 5 and tasks.task_shutdown == 1.0
        assert tasks.async_nolink(max, 3, 9).get(timeout=5) == 9


# ---------------------------------------------------------------- await_many
def test_await_many_returns_results_in_the_order_given_not_the_order_finished(tasks):
    events = [Event() for _ in range(4)]

    def work(i):
        events[i].wait()
        return i * 10

    ts = [tasks.async_nolink(work, i) for i in range(4)]
    for e in reversed(events):
        e.set()
        gevent.sleep(0)
    assert await_many(ts, timeout=5) == [0, 10, 20, 30]


def test_await_many_of_nothing_is_an_empty_list():
    assert await_many([]) == []


def test_await_many_raises_the_first_error_and_cancels_the_tasks_still_running(tasks, reports):
    fail_now = Event()

    def fails_second():
        fail_now.wait()
        raise Boom("second")

    def fails_later():
        gevent.sleep(3600)
        raise Boom("never reached")

    done = tasks.async_nolink(lambda: "done")
    done.get(timeout=5)
    failing = tasks.async_nolink(fails_second)
    slow = tasks.async_nolink(fails_later)
    blocked = tasks.async_nolink(gevent.sleep, 3600)
    gevent.spawn_later(0, fail_now.set)
    with pytest.raises(Boom, match="second"):
        await_many([done, failing, slow, blocked], timeout=5)
    # the others were cancelled, synchronously, before await_many raised
    assert slow.done() and blocked.done()
    for t in (slow, blocked):
        with pytest.raises(TaskCancelledError):
            t.get()
    assert done.get() == "done"  # a task that had already finished keeps its result
    assert tasks.count_children().specs == 0
    crashes = [r.getMessage() for r in reports() if "Boom" in r.getMessage()]
    assert len(crashes) == 1 and "second" in crashes[0]  # cancelled tasks are not crashes


def test_await_many_raises_an_error_that_happened_before_it_was_called(tasks):
    release = Event()
    failed = tasks.async_nolink(boom, "early")
    failed.greenlet.join(5)
    waiting = tasks.async_nolink(release.wait)
    with pytest.raises(Boom, match="early"):
        await_many([waiting, failed])
    assert waiting.done()


def test_await_many_treats_a_cancelled_task_as_a_failure(tasks):
    a = tasks.async_nolink(gevent.sleep, 3600)
    b = tasks.async_nolink(gevent.sleep, 3600)
    gevent.spawn_later(0, a.cancel)
    with pytest.raises(TaskCancelledError):
        await_many([a, b], timeout=5)
    assert b.done()


def test_await_many_timeout_cancels_the_unfinished_tasks_and_raises(tasks):
    quick = tasks.async_nolink(lambda: "quick")
    slow = tasks.async_nolink(gevent.sleep, 3600)
    start = time.monotonic()
    with pytest.raises(TaskTimeoutError, match="1 of 2 tasks did not finish"):
        await_many([quick, slow], timeout=0.05)
    assert time.monotonic() - start < 2
    assert slow.done()
    assert quick.get() == "quick"


def test_await_many_accepts_tasks_from_several_supervisors():
    with TaskSupervisor(name="a") as a, TaskSupervisor(name="b") as b:
        ts = [a.async_nolink(str, 1), b.async_nolink(str, 2), a.async_nolink(str, 3)]
        assert await_many(ts, timeout=5) == ["1", "2", "3"]
        keep = a.async_nolink(gevent.sleep, 3600)
        with pytest.raises(Boom):
            await_many([keep, b.async_nolink(boom)], timeout=5)
        assert keep.done()


def test_await_many_rejects_things_that_are_not_tasks(tasks):
    with pytest.raises(TypeError, match="expected Task"):
        await_many([gevent.spawn(int)])


# ---------------------------------------------------------------- run_in_thread
@pytest.fixture(scope="module", autouse=True)
def _threadpool_started():
    """Start every thread of gevent's pool before the leak guard takes its snapshot.

    Each pool thread runs greenlets of its own that live as long as the
    thread; the suite's leak check (greenlets of all threads) would count
    the first use of a pool thread as a leak.
    """
    pool = gevent.get_hub().threadpool
    gate = threading.Event()
    waits = [pool.spawn(gate.wait, 10) for _ in range(pool.maxsize)]
    gate.set()
    for w in waits:
        w.get()
    gevent.sleep(0.01)
    yield


def test_run_in_thread_returns_the_result_of_a_blocking_call_without_blocking_other_greenlets(tasks):
    in_thread = threading.Event()
    release = threading.Event()
    ticks = []

    def blocking():
        in_thread.set()
        release.wait(10)  # a real, blocking wait, in a pool thread
        return threading.get_ident()

    task = tasks.run_in_thread(blocking)
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.001)) for _ in range(5)])
    ticker.join(5)
    assert len(ticks) == 5  # the hub ran while the thread blocked
    assert not task.done()
    release.set()
    ident = task.get(timeout=5)
    assert ident != threading.get_ident()
    assert in_thread.is_set()


def test_run_in_thread_failure_is_raised_by_get_and_reported_once_never_through_the_hub(tasks, reports):
    def fails(x):
        raise Boom(f"thread {x}")

    task = tasks.run_in_thread(fails, 7)
    with pytest.raises(Boom, match="thread 7"):
        task.get(timeout=5)
    crashes = [r for r in reports() if "Boom" in r.getMessage()]
    assert len(crashes) == 1
    assert "fails (thread)" in crashes[0].getMessage()


def test_run_in_thread_carries_the_callers_contextvars_into_the_thread(tasks):
    token = request_id.set("req-thread")
    try:
        task = tasks.run_in_thread(request_id.get)
    finally:
        request_id.reset(token)
    assert task.get(timeout=5) == "req-thread"


def test_cancelling_a_thread_task_stops_waiting_but_the_thread_runs_to_completion(tasks):
    release = threading.Event()
    finished = threading.Event()

    def blocking():
        release.wait(10)
        finished.set()
        return "dropped"

    task = tasks.run_in_thread(blocking)
    gevent.sleep(0)
    start = time.monotonic()
    assert task.cancel() is True
    assert time.monotonic() - start < 1  # the wait stopped at once
    with pytest.raises(TaskCancelledError):
        task.get()
    assert not finished.is_set()  # the thread is still running
    release.set()
    assert finished.wait(5)


def test_the_howto_thread_example_prints_what_the_page_says(tasks):
    import hashlib

    def checksum(data):
        time.sleep(0.01)  # stands for a blocking call
        return hashlib.sha256(data).hexdigest()[:12]

    job = tasks.run_in_thread(checksum, b"greentree")
    ticks = gevent.spawn(lambda: [gevent.sleep(0.001) for _ in range(3)])
    assert (job.get(timeout=5), ticks.join(5) or ticks.successful()) == ("283d4080fca9", True)
