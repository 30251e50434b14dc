"""Scenario: the cost of building one ``ChildSpec``.

Users build a fresh spec per child (``start_child(ChildSpec(None, handler,
conn))``), so its cost is part of every start.  Beside it, the cost of
creating (not starting) a bare ``gevent.Greenlet`` for the same function,
for proportion.  Reported: microseconds per object, median of rounds.
"""

from __future__ import annotations

from gevent import Greenlet

from greentree import ChildSpec

from ._harness import Config, Row, alternate, park, perf_counter

NAME = "spec"
TITLE = "ChildSpec() vs creating a bare gevent.Greenlet"
TARGET_US = 1.5


def _time(make, n: int) -> float:
    t0 = perf_counter()
    for _ in range(n):
        make()
    return (perf_counter() - t0) / n * 1e6


def run(cfg: Config) -> list[Row]:
    n = 20_000 if cfg.smoke else 200_000
    cfg.log(f"{NAME}: {n:,} objects")
    f, g = alternate(lambda: _time(lambda: Greenlet(park), n), lambda: _time(lambda: ChildSpec(None, park), n), cfg)
    g2 = alternate(lambda: 0.0, lambda: _time(lambda: ChildSpec("worker", park, 1, restart="temporary"), n), cfg)[1]
    return [
        Row(NAME, "ChildSpec(None, fn)", "build", "us", f, g, target=f"<= {TARGET_US} us", met=g <= TARGET_US),
        Row(NAME, "ChildSpec(id, fn, arg, restart=...)", "build", "us", f, g2,
            target=f"<= {TARGET_US} us", met=g2 <= TARGET_US),
    ]
