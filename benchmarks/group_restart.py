"""Scenario 3: one_for_all and rest_for_one restarts of a static supervisor.

The first child crashes on request (it records ``perf_counter()`` just before
raising); the restart is over when the last child of the new generation
starts (it records the time).  With the first child crashing, both
strategies restart the whole group: stop the others in reverse order, start
all in order.

Floor: the same children spawned with one ``rawlink`` each; the rawlink
callback hands the crash to a restarter greenlet (a hub callback must not
block) which ``gevent.killall``\\ s the others and re-spawns all in order.
"""

from __future__ import annotations

import gevent
from gevent.event import Event

from greentree import ChildSpec, Supervisor

from ._harness import Config, Crash, Row, alternate, floor_wrap, perf_counter

NAME = "group_restart"
TITLE = "one_for_all / rest_for_one: restart of the whole static group"
SIZES = [10, 100]


class _Group:
    __slots__ = ("n", "trigger", "t_crash", "t_done", "done")

    def __init__(self, n: int):
        self.n = n
        self.trigger = None
        self.t_crash = 0.0
        self.t_done = 0.0
        self.done = Event()


def member(i: int, st: _Group) -> None:
    if i == st.n - 1:
        st.t_done = perf_counter()
        st.done.set()
    ev = Event()
    if i == 0:
        st.trigger = ev
    ev.wait()
    st.t_crash = perf_counter()
    raise Crash("benchmark crash")


def _one(st: _Group) -> float:
    st.done.clear()
    st.trigger.set()
    st.done.wait()
    return (st.t_done - st.t_crash) * 1e6


class _FloorGroupRestart:
    """spawn + rawlink; a restarter greenlet fed by the rawlink restarts all."""

    def __init__(self, n: int, st: _Group):
        self.st = st
        self.n = n
        self.current: dict = {}   # greenlet -> index
        self.order: list = []
        self.crashed = Event()
        self.spawn_all()
        self.restarter = gevent.spawn(self._restarter)

    def spawn_all(self):
        order = []
        for i in range(self.n):
            g = gevent.spawn(floor_wrap, member, i, self.st)
            g.rawlink(self._on_exit)
            self.current[g] = i
            order.append(g)
        self.order = order

    def _on_exit(self, g):
        if self.current.pop(g, None) is not None:
            self.crashed.set()

    def _restarter(self):
        while True:
            self.crashed.wait()
            self.crashed.clear()
            others = [g for g in reversed(self.order) if g in self.current]
            self.current.clear()
            gevent.killall(others)
            self.spawn_all()

    def stop(self):
        self.restarter.kill()
        gs = list(self.current)
        self.current.clear()
        gevent.killall(gs)


def run(cfg: Config) -> list[Row]:
    rows = []
    for strategy in ("one_for_all", "rest_for_one"):
        for n in (SIZES[:1] if cfg.smoke else SIZES):
            restarts = 20 if cfg.smoke else max(50, 2_000 // n)
            cfg.log(f"{NAME}: {strategy}, {n} children, {restarts} restarts")
            fst = _Group(n)
            floor = _FloorGroupRestart(n, fst)
            gst = _Group(n)
            sup = Supervisor([ChildSpec(i, member, i, gst) for i in range(n)], strategy=strategy,
                             max_restarts=100_000, max_seconds=1.0)
            sup.start()
            sup.wait_started()
            gevent.sleep(0)

            def batch(st):
                return sorted(_one(st) for _ in range(restarts))[restarts // 2]

            f, g = alternate(lambda: batch(fst), lambda: batch(gst), cfg)
            sup.stop()
            floor.stop()
            rows.append(Row(NAME, f"{strategy}, {n} children", "group restart", "us", f, g,
                            extra={"per_child_floor": f / n, "per_child_greentree": g / n}))
    return rows
