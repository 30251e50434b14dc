"""greentree.run: a tree as a program's main, with signals and an exit code."""

from __future__ import annotations

import io
import os
import signal

import gevent
import pytest

import greentree
from greentree import ChildSpec, DynamicSupervisor, ShutdownExit, Supervisor
from greentree.testing import FakeClock


def recorder(log, name):
    log.append(("start", name))
    try:
        gevent.sleep(3600)
    except ShutdownExit:
        log.append(("stop", name))
        raise


def test_run_returns_0_after_the_tree_is_stopped():
    log = []
    root = Supervisor([ChildSpec(c, recorder, log, c) for c in "ab"], name="app")
    stopper = gevent.spawn_later(0.01, root.stop)
    stream = io.StringIO()
    assert greentree.run(root, stream=stream) == 0
    stopper.join()
    assert stream.getvalue() == ""
    assert log == [("start", "a"), ("start", "b"), ("stop", "b"), ("stop", "a")]


def test_run_returns_1_and_prints_one_line_after_restart_intensity_exceeded():
    def crash():
        raise RuntimeError("boom")

    root = Supervisor([ChildSpec("c", crash)], name="app", max_restarts=2, clock=FakeClock())
    stream = io.StringIO()
    assert greentree.run(root, stream=stream) == 1
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("greentree.run: Supervisor 'app' failed: RestartIntensityExceeded:")
    assert "more than 2 restarts" in lines[0]
    assert root.dead


def test_run_returns_1_when_a_child_fails_during_start():
    def broken():
        raise OSError("port in use")

    root = Supervisor([ChildSpec("srv", broken, handshake=True)], name="app")
    stream = io.StringIO()
    assert greentree.run(root, stream=stream) == 1
    assert "StartChildError" in stream.getvalue() and "'srv'" in stream.getvalue()


def test_a_sigterm_stops_the_tree_in_order_and_run_returns_0():
    log = []
    root = Supervisor(
        [ChildSpec("a", recorder, log, "a"),
         Supervisor.child_spec("inner", [ChildSpec("b", recorder, log, "b")]),
         ChildSpec("c", recorder, log, "c")],
        name="app",
    )

    def send_sigterm():
        root.wait_started(5)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = gevent.spawn(send_sigterm)
    assert greentree.run(root, stream=io.StringIO()) == 0
    sender.join()
    assert log == [
        ("start", "a"), ("start", "b"), ("start", "c"),
        ("stop", "c"), ("stop", "b"), ("stop", "a"),
    ]


def test_run_accepts_a_dynamic_supervisor_and_an_already_started_root():
    root = DynamicSupervisor(name="pool")
    root.start()
    root.wait_started()
    g = root.start_child(ChildSpec(None, gevent.sleep, 3600))
    stopper = gevent.spawn_later(0.01, root.stop)
    assert greentree.run(root) == 0
    stopper.join()
    assert g.dead


def test_run_rejects_something_that_is_not_a_supervisor():
    with pytest.raises(TypeError, match="expected a Supervisor or DynamicSupervisor"):
        greentree.run(gevent.spawn(gevent.sleep, 0))
