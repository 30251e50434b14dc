"""Scenario 1: start N idle children under a DynamicSupervisor.

greentree: ``dyn.start_child(ChildSpec(None, park))`` N times (a fresh spec
per child, as users write it), then one ``gevent.sleep(0)``
so every child has run up to its park (callbacks run in FIFO order, so the
sleep returns after the last child started).  Floor: ``gevent.spawn`` + one
``rawlink`` per child, tracked in a dict, then the same ``sleep(0)``.
Reported: microseconds per child.
"""

from __future__ import annotations

from . import _lifecycle
from ._harness import Config, Row

NAME = "start"
TITLE = "start N children: DynamicSupervisor.start_child vs spawn + rawlink"
TARGET = 1.25  # greentree <= 1.25x the floor per child, at 10k and 100k
SIZES = [1_000, 10_000, 100_000]
SMOKE_SIZES = [200]


def run(cfg: Config) -> list[Row]:
    rows = []
    for n in cfg.n_list(SIZES, SMOKE_SIZES):
        cfg.log(f"{NAME}: N={n:,}")
        f, g = _lifecycle.measure(n, cfg)
        row = Row(NAME, f"N={n:,}", "start", "us/child", f["start"], g["start"])
        if n >= 10_000:
            row.target = f"<= {TARGET}x floor"
            row.met = row.ratio <= TARGET
        rows.append(row)
    return rows
