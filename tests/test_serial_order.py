"""One serial mailbox: every state change of a supervisor happens one event
at a time, in arrival order, whatever greenlet delivers it.

The reproductions of issue 8 (orphans and lost requests, one exit with two
classifications, hub errors, forks, floods), and a differential test that
drives the same scenarios through every delivery path (the caller's or the
exiting child's greenlet, a spawned greenlet, the hub) and compares what the
supervisor reports.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time

import gevent
import pytest
from delivery import PATHS, count_spawned, deliver_by, normalise
from gevent.event import Event

import greentree
from greentree import (
    ArgumentError,
    ChildSpec,
    DynamicSupervisor,
    NotRunningError,
    RestartIntensityExceeded,
    Server,
    ShutdownExit,
    Supervisor,
)
from greentree._base import SupervisorBase
from greentree.testing import FakeClock, wait_until

# ---------------------------------------------------------------- a child whose constructor yields

class SlowInit(greentree.Greenlet):
    """A child class whose constructor does cooperative I/O (it yields)."""

    live: list = []
    gate: Event | None = None

    def __init__(self, *args):
        if SlowInit.gate is not None:
            SlowInit.gate.wait()
        else:
            gevent.sleep(0.02)
        super().__init__(*args)

    def _run(self, mode):
        SlowInit.live.append(self)
        try:
            if mode == "crash-first" and len(SlowInit.live) == 1:
                raise RuntimeError("first run crashes")
            gevent.sleep(3600)
        finally:
            SlowInit.live.remove(self)


@pytest.fixture
def slow_init():
    SlowInit.live = []
    SlowInit.gate = None
    yield SlowInit
    SlowInit.gate = None


def test_terminate_child_during_a_restart_with_a_yielding_constructor_wins(slow_init):
    gate = slow_init.gate = Event()
    sup = Supervisor([ChildSpec("w", SlowInit, "plain")], name="app")
    gate.set()
    with sup:
        wait_until(lambda: len(SlowInit.live) == 1)
        gate.clear()
        SlowInit.live[0].kill(RuntimeError("crash"), block=True)  # restart in flight, constructor blocked
        wait_until(lambda: sup._mb_busy, what="the restart to start")
        terminator = gevent.spawn(sup.terminate_child, "w")
        gevent.sleep(0.01)
        assert not terminator.dead  # it waits for the restart in flight
        gate.set()
        terminator.join(5)
        assert terminator.successful()
        gevent.sleep(0.02)
        assert SlowInit.live == []  # 'w' does not run again afterwards
        [info] = sup.which_children()
        assert (info.state, info.child) == ("stopped", None)


def test_stop_during_a_restart_leaves_no_child_running(slow_init):
    gate = slow_init.gate = Event()
    gate.set()
    sup = Supervisor([ChildSpec("w", SlowInit, "plain")])
    sup.start()
    sup.wait_started()
    wait_until(lambda: len(SlowInit.live) == 1)
    gate.clear()
    SlowInit.live[0].kill(RuntimeError("crash"), block=True)
    wait_until(lambda: sup._mb_busy)
    stopper = gevent.spawn(sup.stop)
    gevent.sleep(0.01)
    gate.set()
    stopper.join(5)
    assert sup.dead
    gevent.sleep(0.02)
    assert SlowInit.live == []


def test_a_dynamic_supervisor_stopped_while_start_childs_constructor_yields_leaves_no_child(slow_init):
    gate = slow_init.gate = Event()
    dyn = DynamicSupervisor()
    dyn.start()
    starter = gevent.spawn(lambda: dyn.start_child(ChildSpec(None, SlowInit, "plain")))
    wait_until(lambda: dyn._mb_busy, what="the start to begin")
    stopper = gevent.spawn(dyn.stop)
    gevent.sleep(0.01)
    gate.set()
    stopper.join(5)
    starter.join(5)
    assert dyn.dead
    gevent.sleep(0.02)
    assert SlowInit.live == []
    # the start either completed before the stop (and the stop stopped it) or was refused
    assert starter.successful() or isinstance(starter.exception, NotRunningError)


# ---------------------------------------------------------------- one exit, one classification

@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one"])
def test_a_transient_child_shut_down_is_recorded_as_shutdown_under_every_strategy(strategy):
    def body():
        gevent.sleep(3600)

    with Supervisor([ChildSpec("t", body, restart="transient"), ChildSpec("p", body)], strategy=strategy) as sup:
        g = sup.which_children()[0].child
        wait_until(lambda: g.gr_frame is not None)
        g.kill(ShutdownExit, block=True)
        wait_until(lambda: sup.which_children()[0].state == "stopped")
        child = sup.describe()["children"][0]
        assert child["last_exit"] == "shutdown"
        assert g._gt_exit_rec.kind == "shutdown"
        assert sup.which_children()[1].child is not None  # the bystander was not restarted


# ---------------------------------------------------------------- hub, binders, timeouts, lifecycle

@pytest.mark.parametrize("exc", [SystemExit(3), KeyError("k"), KeyboardInterrupt()])
def test_killall_with_an_error_on_children_that_never_ran_is_a_crash_not_a_hub_error(exc, caplog_greentree):
    with DynamicSupervisor(max_restarts=100) as dyn:
        kids = [dyn.start_child(ChildSpec(None, gevent.sleep, 3600)) for _ in range(3)]
        gevent.killall(kids, exc)
        wait_until(lambda: all(i.child not in kids and i.child is not None for i in dyn.which_children()))
        assert all(k.dead for k in kids)
        assert all(type(k.exception) is type(exc) for k in kids)


class FailingBinder:
    nonblocking = True

    def __init__(self):
        self.calls = 0

    def bind(self, child):
        self.calls += 1
        raise OSError("name server down")


def test_a_binder_that_raises_is_a_failed_start_with_no_phantom_child():
    binder = FailingBinder()
    with Supervisor([], name="app") as sup:
        with pytest.raises(greentree.StartChildError, match="binding its name .* failed: OSError: name server down"):
            sup.start_child(ChildSpec("w", gevent.sleep, 3600, register=binder))
        assert sup.which_children() == []
        assert not sup.dead


def test_a_binder_that_raises_on_restart_counts_toward_intensity_and_gives_up_cleanly():
    class Flaky:
        nonblocking = True
        fail = False

        def bind(self, child):
            if Flaky.fail:
                raise OSError("name server down")

    sup = Supervisor([ChildSpec("w", gevent.sleep, 3600, register=Flaky())], max_restarts=2, clock=FakeClock())
    with pytest.raises(RestartIntensityExceeded), sup:
        g = sup.which_children()[0].child
        Flaky.fail = True
        g.kill(RuntimeError("crash"))
        sup.join(5)
        assert sup.dead
    assert gevent.sleep(0) is None and not any(i.child for i in sup.which_children())


@pytest.mark.parametrize("bad", ["soon", -1, float("nan"), float("inf"), True])
def test_an_invalid_timeout_is_refused_before_the_operation_happens(bad):
    with Supervisor([ChildSpec("a", gevent.sleep, 3600)], name="app") as sup:
        before = sup.which_children()
        with pytest.raises(ArgumentError, match=r"start_child\(\): timeout must be a finite number"):
            sup.start_child(ChildSpec("b", gevent.sleep, 3600), timeout=bad)
        with pytest.raises(ArgumentError, match=r"terminate_child\(\): timeout"):
            sup.terminate_child("a", timeout=bad)
        with pytest.raises(ArgumentError, match=r"stop\(\): timeout"):
            sup.stop(timeout=bad)
        assert sup.which_children() == before and not sup.dead
    with Server() as server:
        with pytest.raises(ArgumentError, match=r"call\(\): timeout"):
            server.call("x", timeout=bad)


def test_start_or_with_on_a_supervisor_that_already_exited_is_refused():
    sup = Supervisor([], name="app")
    with sup:
        pass
    with pytest.raises(NotRunningError, match="already exited"):
        sup.start()
    with pytest.raises(NotRunningError, match="already exited"):
        with sup:
            pass
    assert sup.dead


def test_a_root_supervisor_that_gives_up_inside_with_raises_out_of_the_block():
    def crash():
        raise RuntimeError("boom")

    with pytest.raises(RestartIntensityExceeded, match="more than 1 restarts"):
        with Supervisor([ChildSpec("c", crash)], max_restarts=1) as sup:
            sup.join(5)


def test_started_keeps_its_value_for_the_starter_and_a_second_call_raises():
    seen = []

    def child():
        greentree.started({"port": 8080})
        try:
            greentree.started()
        except greentree.GreentreeError as e:
            seen.append(str(e))
        gevent.sleep(3600)

    with Supervisor([]) as sup:
        g = sup.start_child(ChildSpec("c", child, handshake=True))
        assert g.started_value == {"port": 8080}
        wait_until(lambda: seen)
        assert "already called" in seen[0]


# ---------------------------------------------------------------- floods must not starve timers

def _worst_stall(during):
    """The longest stretch of this thread's CPU time between two ticks of a
    1 ms timer while ``during()`` runs: how long the loop kept timers waiting.
    CPU time, not wall time, so another process holding the core (this
    machine is shared) does not count as our stall."""
    stalls = [0.0]
    stop = Event()

    def ticker():
        last = time.thread_time()
        while not stop.is_set():
            gevent.sleep(0.001)
            now = time.thread_time()
            stalls[0] = max(stalls[0], now - last)
            last = now

    t = gevent.spawn(ticker)
    gevent.sleep(0.005)
    try:
        during()
    finally:
        stop.set()
        t.join()
    return stalls[0]


def test_a_server_flooded_with_casts_does_not_starve_timers():
    class Busy(Server):
        def init(self):
            self.n = 0

        def handle_cast(self, msg):
            end = time.thread_time() + 0.0005  # 0.5 ms of CPU work per cast
            while time.thread_time() < end:
                pass
            self.n += 1

        def handle_call(self, msg, caller):
            return self.n

    with Busy() as server:
        def flood():
            for _ in range(2000):
                server.cast(1)
            wait_until(lambda: server.call("n", timeout=None) == 2000, timeout=30)

        worst = _worst_stall(flood)
    # 2000 x 0.5 ms is a second of work; without yielding it is one 1 s stall.
    assert worst < 0.2, f"timers stalled {worst * 1000:.0f} ms"


# ---------------------------------------------------------------- fork

def test_a_tree_started_before_fork_does_not_run_in_the_child_process(tmp_path):
    # The child "t" ticks once each time it is prompted: it runs only when asked, so
    # what the forked process sees does not depend on whether a timer of the parent
    # happened to be due at the fork.  The parent waits for events, with deadlines.
    script = textwrap.dedent("""
        import os, sys, gevent
        from gevent.event import Event
        from greentree import ChildSpec, NotRunningError, Supervisor
        from greentree.testing import wait_until
        ticks = []
        prompt = Event()
        def ticker():
            while True:
                prompt.wait()
                prompt.clear()
                ticks.append(1)
        sup = Supervisor([ChildSpec("t", ticker)], name="app")
        sup.start(); sup.wait_started()
        t = sup.which_children()[0].child
        prompt.set()
        wait_until(lambda: len(ticks) == 1, 30, "the first tick")
        pid = os.fork()
        if pid == 0:
            before = len(ticks)
            prompt.set()  # the ticker would tick now if it still ran
            dead = t.join(30) is None and t.dead  # killed, not run
            gevent.idle()
            try:
                sup.start_child(ChildSpec("x", gevent.sleep, 1))
                msg = "no error"
            except NotRunningError as e:
                msg = str(e)
            print("child", len(ticks) - before, dead, "before os.fork()" in msg, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        before = len(ticks)
        prompt.set()
        wait_until(lambda: len(ticks) > before, 30, "a tick in the parent after the fork")
        print("parent", len(ticks) > before, flush=True)
        sup.stop()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert "child 0 True True" in lines, out.stdout + out.stderr
    assert "parent True" in lines


# ---------------------------------------------------------------- visible by default

def test_with_no_logging_configured_crash_reports_and_give_ups_reach_stderr():
    script = textwrap.dedent("""
        import gevent
        from greentree import ChildSpec, RestartIntensityExceeded, Supervisor
        def crash():
            raise RuntimeError("visible crash")
        try:
            with Supervisor([ChildSpec("c", crash)], max_restarts=1, name="app") as sup:
                sup.join(5)
        except RestartIntensityExceeded:
            print("raised out of with")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "raised out of with" in out.stdout
    assert "RuntimeError: visible crash" in out.stderr
    assert "Traceback" in out.stderr
    assert "gave up" in out.stderr


# ---------------------------------------------------------------- the differential test

def _drive(path, strategy, restart, kind, monkeypatch):
    """One conformance scenario; every event delivered by ``path``.  Returns what
    the supervisor reports: which_children, describe and the log, normalised."""
    deliver_by(path, monkeypatch)
    records = []

    class Capture(__import__("logging").Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = __import__("logging").getLogger("greentree")
    handler = Capture()
    logger.addHandler(handler)
    runs = []

    def body(cid):
        runs.append(cid)
        gevent.sleep(3600)

    try:
        clock = FakeClock()
        specs = [ChildSpec("a", body, "a"), ChildSpec("b", body, "b", restart=restart), ChildSpec("c", body, "c")]
        sup = Supervisor(specs, strategy=strategy, max_restarts=1, clock=clock, name="diff")
        gives_up = kind == "crash-twice" and restart != "temporary"
        with pytest.raises(RestartIntensityExceeded) if gives_up else _Nothing():
            with sup:
                wait_until(lambda: len(runs) == 3)
                snapshots = []
                for _ in range(2 if kind == "crash-twice" else 1):
                    g = {i.id: i.child for i in sup.which_children()}.get("b")
                    if g is None:
                        break
                    wait_until(lambda: g.gr_frame is not None)  # noqa: B023 - waited for here
                    exc = {"return": ShutdownExit(), "crash": RuntimeError("boom"),
                           "crash-twice": RuntimeError("boom")}[kind]
                    g.kill(exc, block=False)
                    g.join(5)
                    wait_until(lambda: not sup._mb_busy and not sup._mb_q)
                    gevent.sleep(0.01)
                    snapshots.append(normalise([(i.id, i.state, i.type, i.restart) for i in sup.which_children()]))
                    snapshots.append(normalise(sup.describe()))
        return snapshots, [re.sub(r"0x[0-9a-f]+", "0x", r) for r in records], sup.exit.kind
    finally:
        logger.removeHandler(handler)


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("kind", ["return", "crash", "crash-twice"])
@pytest.mark.parametrize("restart", ["permanent", "transient", "temporary"])
@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one"])
def test_every_delivery_path_gives_the_same_result(strategy, restart, kind, monkeypatch, caplog_greentree):
    results = {path: _drive(path, strategy, restart, kind, monkeypatch) for path in PATHS}
    assert results["worker"] == results["inline"]
    assert results["hub"] == results["inline"]


# ---------------------------------------------------------------- an automatic shutdown, inline or not

def _drive_auto_shutdown(path, pool_busy, monkeypatch):
    """A significant child ends; its supervisor shuts down automatically, stopping a
    DynamicSupervisor (idle, with or without a live child) and a childless Supervisor.
    Returns the exits in the order they were reported, the supervisor's exit, its
    snapshot, and how many greenlets the mailboxes spawned."""
    deliver_by(path, monkeypatch)
    spawned = count_spawned(monkeypatch)
    order = []
    go = Event()

    def main():
        go.wait()

    specs = [
        ChildSpec("main", main, restart="temporary", significant=True),
        DynamicSupervisor.child_spec("pool", name="pool"),
        Supervisor.child_spec("empty", [], name="empty"),
    ]
    sup = Supervisor(specs, strategy="rest_for_one", auto_shutdown="any_significant", name="tree")
    sup.start()
    sup.wait_started()
    children = {i.id: i.child for i in sup.which_children()}
    if pool_busy:
        children["pool"].start_child(ChildSpec(None, gevent.sleep, 3600, restart="temporary"))
    for cid, child in children.items():
        child.gt_add_exit_hook(lambda c, cid=cid: order.append((cid, c._gt_exit_rec.kind)))
    sup.gt_add_exit_hook(lambda s: order.append(("tree", s._gt_exit_rec.kind)))
    wait_until(lambda: not sup._mb_busy)
    del spawned[:]
    go.set()
    sup.join(5)
    assert sup.dead
    return order, sup.exit.kind, normalise(sup.describe()), len(spawned)


@pytest.mark.parametrize("pool_busy", [False, True])
def test_an_automatic_shutdown_handled_inline_is_the_same_as_through_a_worker(pool_busy, monkeypatch):
    results = {path: _drive_auto_shutdown(path, pool_busy, monkeypatch) for path in PATHS}
    order, kind, snapshot, spawned = results["inline"]
    # main ends first, then the others in reverse start order, then the tree (normally).
    assert order == [("main", "normal"), ("empty", "shutdown"), ("pool", "shutdown"), ("tree", "shutdown")]
    assert kind == "shutdown"
    for path in ("worker", "hub"):
        assert results[path][:3] == results["inline"][:3], path
    # No greenlet spawned: with a live grandchild too, the tree and the pool stop by
    # events (the grandchild's exit carries both shutdowns on; tests/test_stop_by_events.py).
    assert spawned == 0
    assert results["worker"][3] >= 3


def test_a_finished_supervisor_is_freed_without_the_cyclic_gc():
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        sup = Supervisor([ChildSpec("a", gevent.sleep, 3600)], name="gone")
        sup.start()
        sup.wait_started()
        sup.start_child(ChildSpec("b", gevent.sleep, 3600))
        sup.stop()
        ref = weakref.ref(sup)
        del sup
        gevent.sleep(0)  # the children's greenlets finish
        assert ref() is None  # reference counting freed it: no cycle through its records
    finally:
        gc.enable()


# ---------------------------------------------------------------- start_child inline or through a worker

def _drive_start_child(path, monkeypatch):
    """Every start_child outcome of a Supervisor and a DynamicSupervisor, with the
    request run inline by its caller or by a spawned worker."""
    monkeypatch.setattr(SupervisorBase, "_mb_force_worker", path == "worker")

    def boom():
        raise RuntimeError("no")

    class Refuses(greentree.Greenlet):
        nonblocking_init = True

        def __init__(self):
            raise ValueError("constructor")

    out = []
    for sup in (Supervisor([], name="s"), DynamicSupervisor(name="d", max_children=2)):
        with sup:
            for spec in (ChildSpec("a", gevent.sleep, 3600), ChildSpec("a", gevent.sleep, 3600),
                         ChildSpec("r", Refuses), ChildSpec("b", boom, restart="temporary")):
                try:
                    child = sup.start_child(spec)
                    out.append(("ok", type(child).__name__))
                except Exception as e:  # noqa: BLE001 - the outcome is what is compared
                    out.append((type(e).__name__, re.sub(r"0x[0-9a-f]+", "0x", str(e))))
            gevent.sleep(0.01)
            out.append(normalise([(i.id if isinstance(sup, Supervisor) else None, i.state)
                                   for i in sup.which_children()]))
    return out


def test_start_child_inline_is_the_same_as_through_a_worker(monkeypatch):
    assert _drive_start_child("inline", monkeypatch) == _drive_start_child("worker", monkeypatch)
