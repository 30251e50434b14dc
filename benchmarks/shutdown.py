"""Scenario 4: shutdown.

* Dynamic: ``DynamicSupervisor.stop()`` of N idle children (ShutdownExit to
  all at once, one deadline) vs ``gevent.killall`` of N spawned+rawlinked
  greenlets.  Same runs as scenario 1 (see ``_lifecycle``).
* Static: ``Supervisor.stop()`` of 10/100/1000 children (one by one, in
  reverse start order, each awaited) vs ``g.kill(block=True)`` for each
  greenlet in reverse order.
"""

from __future__ import annotations

import gevent

from greentree import ChildSpec, Supervisor

from . import _lifecycle
from ._harness import Config, FloorGroup, Row, alternate, park, perf_counter

NAME = "shutdown"
TITLE = "shutdown: DynamicSupervisor.stop vs gevent.killall; Supervisor.stop vs ordered kill(block=True)"
TARGET = 1.5  # dynamic shutdown <= 1.5x gevent.killall
SIZES = [1_000, 10_000, 100_000]
SMOKE_SIZES = [200]
STATIC_SIZES = [10, 100, 1_000]
SMOKE_STATIC_SIZES = [10]


def _floor_static(n: int) -> float:
    group = FloorGroup()
    gs = [group.spawn(park) for _ in range(n)]
    gevent.sleep(0)
    t0 = perf_counter()
    for g in reversed(gs):
        g.kill(block=True)
    dt = perf_counter() - t0
    assert not any(gs)
    return dt / n * 1e6


def _greentree_static(n: int) -> float:
    sup = Supervisor([ChildSpec(i, park) for i in range(n)], max_restarts=100_000, max_seconds=1.0)
    sup.start()
    sup.wait_started()
    gs = [info.child for info in sup.which_children()]
    t0 = perf_counter()
    sup.stop()
    dt = perf_counter() - t0
    assert sup.dead and not any(gs)
    return dt / n * 1e6


def run(cfg: Config) -> list[Row]:
    rows = []
    for n in cfg.n_list(SIZES, SMOKE_SIZES):
        cfg.log(f"{NAME}: dynamic N={n:,}")
        f, g = _lifecycle.measure(n, cfg)
        row = Row(NAME, f"dynamic N={n:,}", "stop", "us/child", f["stop"], g["stop"],
                  target=f"<= {TARGET}x killall")
        row.met = row.ratio <= TARGET
        rows.append(row)
    for n in (SMOKE_STATIC_SIZES if cfg.smoke else STATIC_SIZES):
        cfg.log(f"{NAME}: static N={n:,}")
        f, g = alternate(lambda: _floor_static(n), lambda: _greentree_static(n), cfg)
        rows.append(Row(NAME, f"static N={n:,} (ordered)", "stop", "us/child", f, g))
    return rows
