"""Children that end in their stopper's turn (``Child._gt_stop_now``, ``_child.throw_here``).

A supervisor stops a greenlet child with ``kill(block=False)``: the exception
reaches it when the event loop next runs it.  A child that knows it is idle
may instead end at once, in the stopper's turn.  These tests check the
mechanism (the stopper resumes as soon as the child ended, or as soon as the
child waits for something while it unwinds) and that a tree whose children
end that way stops exactly as one whose children are killed through the
loop: same exits, same order, same snapshot, along every delivery path.
"""

from __future__ import annotations

import gevent
import pytest
from delivery import PATHS, deliver_by, normalise
from gevent import get_hub, getcurrent
from gevent.event import Event

from greentree import ChildSpec, DynamicSupervisor, ShutdownExit, Supervisor, _children
from greentree._base import SupervisorBase
from greentree._child import Greenlet, throw_here
from greentree.testing import wait_until

pytestmark = pytest.mark.timeout(30)


class Idle(Greenlet):
    """A child that waits for nothing but its stop, and may be ended in its stopper's turn."""

    stop_now = True

    def __init__(self, log, name, pause=0.0):
        Greenlet.__init__(self)
        self.log, self.name, self.pause = log, name, pause
        self.parked = False

    def _run(self):
        self.parked = True
        try:
            get_hub().switch()  # parked until something is thrown in
        except ShutdownExit:
            self.parked = False
            self.log.append(("stopping", self.name, getcurrent() is self))
            if self.pause:
                gevent.sleep(self.pause)  # its cleanup waits: the stopper must not
            self.log.append(("stopped", self.name))
            raise

    def _gt_stop_now(self, exception):
        cur = getcurrent()
        if not (self.stop_now and self.parked) or cur is self or cur is get_hub():
            return False
        throw_here(self, exception)
        return True


def _parked(*gs):
    wait_until(lambda: all(g.parked for g in gs))


# ---------------------------------------------------------------- throw_here


def test_throw_here_returns_once_the_child_ended_and_leaves_the_hub_its_parent():
    log: list = []
    g = Idle(log, "g")
    g.start()
    _parked(g)
    seen = []

    def stopper():
        throw_here(g, ShutdownExit)
        seen.append((g.dead, list(log)))

    gevent.spawn(stopper).join(5)
    # The child unwound in the stopper's turn, in its own greenlet, and was dead on return.
    assert seen == [(True, [("stopping", "g", True), ("stopped", "g")])]
    assert g.parent is get_hub()
    assert isinstance(g.value, ShutdownExit)


def test_throw_here_resumes_the_stopper_when_the_child_waits_while_it_unwinds():
    log: list = []
    g = Idle(log, "g", pause=0.05)
    g.start()
    _parked(g)
    seen = []
    later = Event()

    def stopper():
        throw_here(g, ShutdownExit)
        seen.append((g.dead, list(log), g.parent is get_hub()))
        later.wait(5)  # a wait of its own: the child's end must not resume it
        seen.append(("woken by", later.is_set()))

    s = gevent.spawn(stopper)
    g.join(5)
    assert g.dead and log[-1] == ("stopped", "g")
    gevent.sleep(0)
    assert not s.dead  # still waiting on its own event: the child's end went to the hub
    later.set()
    s.join(5)
    assert seen == [(False, [("stopping", "g", True)], True), ("woken by", True)]


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
    _parked(*idle)

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
    # Each child still unwinds in its own greenlet.
    assert ("stopping", "x", True) in now[1] and ("stopping", "y", True) in now[1]


def test_with_inline_delivery_the_whole_tree_ends_in_the_turn_of_the_child_that_ended_it(monkeypatch):
    _order, _log, _snapshot, where = _drive_tree("inline", True, monkeypatch)
    assert where["ended tree"] is where["main"] and where["ended pool"] is where["main"]
    # Killed through the loop instead, the last idle child to end finishes the pool and the tree.
    _order, _log, _snapshot, where = _drive_tree("inline", False, monkeypatch)
    assert where["ended tree"] is not where["main"]


def test_at_most_stop_now_max_children_of_one_stop_end_in_the_stoppers_turn(monkeypatch):
    monkeypatch.setattr(_children, "STOP_NOW_MAX", 3)
    log: list = []
    pool = DynamicSupervisor(name="pool")
    pool.start()
    pool.wait_started()
    idle = [pool.start_child(ChildSpec(None, Idle, log, i, restart="temporary")) for i in range(5)]
    _parked(*idle)
    in_stoppers_turn: list = []
    for g in idle:
        # In the ending greenlet: its parent is the stopper while it ends in the stopper's turn.
        g.gt_add_exit_hook(lambda c: in_stoppers_turn.append(c.parent is not get_hub()))
    gevent.spawn(pool.stop).join(5)
    assert pool.dead and all(g.dead for g in idle)
    assert sorted(in_stoppers_turn) == [False, False, True, True, True]
    assert sorted(i for what, i, *_rest in log if what == "stopped") == [0, 1, 2, 3, 4]
    assert all(g.parent is get_hub() for g in idle)
