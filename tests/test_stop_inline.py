"""Children that end inline when stopped: a supervisor does not wait for them.

A supervisor stops a child with ``kill(block=False)``.  A process that is
idle (an idle supervisor, a WebSocket conversation's sender with nothing to
do) ends right there: its exit is already reported, queued for the
supervisor, when ``kill`` returns, and the supervisor goes on without
waiting for it (the queued exit is dropped as stale).  These tests check
that a tree whose children end that way stops exactly as one whose children
end a turn of the event loop later: same exits, same order, same snapshot,
along every delivery path, stopping by events or waiting in a greenlet.
"""

from __future__ import annotations

import pytest
from delivery import PATHS, deliver_by, normalise
from gevent import get_hub, getcurrent
from gevent.event import Event

from greentree import ChildSpec, DynamicSupervisor, Supervisor
from greentree._base import SupervisorBase
from greentree._exits import exit_of
from greentree._process import DEAD, Process
from greentree.testing import wait_until

pytestmark = pytest.mark.timeout(30)


class Idle(Process):
    """A child with no greenlet that waits for nothing but its stop: it ends inline, or (with
    ``stop_now`` False) a turn of the event loop later, as a killed greenlet would."""

    _gt_child_type = "worker"
    nonblocking_init = True
    stop_now = True

    def __init__(self, log, name):
        self.log, self.name = log, name

    def _pr_begin(self):
        self._pr_mark_running()

    def _pr_end(self, reason):
        if self.stop_now:
            self._end(reason)
        else:
            get_hub().loop.run_callback(self._end, reason)

    def _end(self, reason):
        if self._pr_state is DEAD:
            return
        self.log.append(("stopped", self.name))
        self._pr_finished(exit_of(reason))

    def _pr_forked(self):
        self._pr_state = DEAD


# ---------------------------------------------------------------- a tree, both ways, every path


def _drive_tree(path, stop_now, monkeypatch, way="events"):
    """A significant child ends; the rest_for_one tree stops a pool of idle children."""
    monkeypatch.setattr(SupervisorBase, "_stop_by_events", way == "events")
    deliver_by(path, monkeypatch)
    monkeypatch.setattr(Idle, "stop_now", stop_now)
    order: list = []
    log: list = []
    where: dict = {}
    go = Event()

    def main():
        where["main"] = getcurrent()
        go.wait()

    specs = [
        ChildSpec("main", main, restart="temporary", significant=True),
        DynamicSupervisor.child_spec("pool", name="pool"),
    ]
    sup = Supervisor(specs, strategy="rest_for_one", auto_shutdown="any_significant", name="tree")
    sup.start()
    sup.wait_started()
    pool = {i.id: i.child for i in sup.which_children()}["pool"]
    idle = [pool.start_child(ChildSpec(None, Idle, log, n, restart="transient")) for n in ("x", "y")]

    def watch(name, child):
        def hook(c):
            order.append((name, c._gt_exit_rec.kind, repr(c._gt_exit_rec.reason)))
            where.setdefault("ended " + name, getcurrent())
        child.gt_add_exit_hook(hook)

    for name, child in (("x", idle[0]), ("y", idle[1]), ("pool", pool), ("tree", sup)):
        watch(name, child)
    wait_until(lambda: not sup._mb_busy and not pool._mb_busy)
    go.set()
    sup.join(5)
    assert sup.dead and all(g.dead for g in idle)
    return order, sorted(log), normalise(sup.describe()), where


@pytest.mark.parametrize("way", ["events", "waiting"])
@pytest.mark.parametrize("path", PATHS)
def test_a_tree_whose_idle_children_end_at_once_stops_as_one_that_kills_them_through_the_loop(
    path, way, monkeypatch
):
    """Along every delivery path, stopping by events or waiting in a greenlet (tests/test_stop_by_events.py)."""
    now = _drive_tree(path, True, monkeypatch, way)
    loop = _drive_tree(path, False, monkeypatch, way)
    assert now[:3] == loop[:3]
    assert [o[:2] for o in now[0]] == [
        ("x", "shutdown"), ("y", "shutdown"), ("pool", "shutdown"), ("tree", "shutdown"),
    ]
    assert now[1] == [("stopped", "x"), ("stopped", "y")]


def test_with_inline_delivery_the_whole_tree_ends_in_the_turn_of_the_child_that_ended_it(monkeypatch):
    _order, _log, _snapshot, where = _drive_tree("inline", True, monkeypatch)
    assert where["ended tree"] is where["main"] and where["ended pool"] is where["main"]
    # Ended a turn later instead, the last child to end finishes the pool and the tree, in the hub.
    _order, _log, _snapshot, where = _drive_tree("inline", False, monkeypatch)
    assert where["ended tree"] is not where["main"]


