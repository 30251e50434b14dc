"""A blocked loop, named: gevent's monitor thread sees a child that blocks the
hub (an unpatched ``time.sleep``), and greentree says which child it was."""

from __future__ import annotations

import logging
import time

import gevent
import pytest

import greentree
from greentree import ChildSpec, Supervisor, telemetry
from greentree.testing import wait_until


@pytest.fixture
def watching():
    telemetry.watch_blocking(0.05)
    yield
    telemetry.unwatch_blocking()
    assert gevent.get_hub().periodic_monitoring_thread is None


@pytest.fixture
def blocked_events():
    seen: list = []
    telemetry.attach("test-blocked", telemetry.LOOP_BLOCKED, lambda e, m, md: seen.append((m, md)))
    yield seen
    telemetry.detach("test-blocked")


def test_a_child_that_blocks_the_loop_is_named_by_its_tree_path(watching, blocked_events, caplog):
    caplog.set_level(logging.WARNING, logger="greentree")
    ran = []

    def blocker():
        gevent.sleep(0.01)  # let the supervisor finish starting first
        time.sleep(0.4)  # not monkey-patched: freezes the whole process
        ran.append(True)
        gevent.sleep(3600)

    inner = Supervisor.child_spec("jobs", [ChildSpec("freezer", blocker)])
    with Supervisor([inner], name="app"):
        wait_until(lambda: ran and blocked_events, timeout=10, what="the blocked-loop event")
    m, md = blocked_events[0]
    assert md["path"] == ("app", "jobs") and md["child_id"] == "freezer"
    assert isinstance(md["greenlet"], greentree.Greenlet)
    assert m == {"max_blocking_time": 0.05}
    assert any("time.sleep(0.4)" in line or "blocker" in line for line in md["info"])
    records = [r for r in caplog.records if "event loop was blocked" in r.getMessage()]
    assert records and records[0].levelno == logging.WARNING
    assert "app/jobs/freezer" in records[0].getMessage()
    assert records[0].greentree_path == ("app", "jobs") and records[0].greentree_child == "freezer"


def test_a_greenlet_outside_any_tree_is_reported_as_such(watching, blocked_events, caplog):
    caplog.set_level(logging.WARNING, logger="greentree")
    g = gevent.spawn(time.sleep, 0.3)
    g.join()
    wait_until(lambda: blocked_events, timeout=10, what="the blocked-loop event")
    m, md = blocked_events[0]
    assert md["path"] is None and md["child_id"] is None
    assert any("outside any tree" in r.getMessage() for r in caplog.records)


def test_watch_blocking_refuses_a_threshold_that_is_not_positive():
    with pytest.raises(greentree.ArgumentError, match="max_blocking_time"):
        telemetry.watch_blocking(0)
    assert gevent.get_hub().periodic_monitoring_thread is None


def test_a_child_constructor_that_blocks_names_the_supervisor_starting_it(watching, blocked_events):
    class SlowToBuild(greentree.Greenlet):
        def __init__(self):
            # (after Greenlet.__init__: gevent's own report cannot describe a greenlet
            # object that is not initialised yet, and fails before telling anyone)
            greentree.Greenlet.__init__(self)
            time.sleep(0.4)  # blocks inside the supervisor's start of this child

        def _run(self):
            gevent.sleep(3600)

    sup = Supervisor([ChildSpec("slow", SlowToBuild)], name="builder")
    sup.start()
    try:
        sup.wait_started()
        wait_until(lambda: blocked_events, timeout=10, what="the blocked-loop event")
    finally:
        sup.stop()
    m, md = blocked_events[0]
    assert md["path"] == ("builder",) and md["child_id"] is None
