"""What every scenario shares: the alternating runner, rows, the floor, probes.

Method.  Each scenario measures greentree and the bare-gevent *floor* (the
cheapest correct gevent code for the same job) in the same process,
alternating ``floor, greentree, floor, greentree, ...`` after one warm-up run
of each, with ``gc.collect()`` before every run.  It reports the median of
each side and the ratio greentree / floor.  On a shared, noisy 2-core machine
absolute numbers drift by tens of percent from one minute to the next; two
sides measured back to back drift together, so their ratio is what a target
can be set on.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import gevent
from gevent import GreenletExit, getcurrent
from gevent.event import Event

__all__ = [
    "Config", "Row", "alternate", "park", "Crash", "FloorGroup", "floor_wrap", "percentile",
    "rss_bytes", "live_greenlet_count", "perf_counter", "settle", "pyplot",
]


@dataclass
class Config:
    """What to run and how hard."""

    smoke: bool = False
    repeat: int = 5
    warmup: int = 1
    sizes: list[int] | None = None  # overrides the N lists of the scaling scenarios
    storm_seconds: float = 30.0
    storm_children: int = 10_000
    storm_rate: float = 1000.0
    verbose: bool = True

    def n_list(self, default: list[int], smoke: list[int]) -> list[int]:
        if self.sizes:
            return list(self.sizes)
        return list(smoke if self.smoke else default)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"  .. {msg}", file=sys.stderr, flush=True)


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    case: str
    metric: str
    unit: str
    floor: float | None
    greentree: float
    target: str | None = None  # human-readable, e.g. "<= 1.25x floor"
    met: bool | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.floor is None or not self.floor:
            return None
        return self.greentree / self.floor

    def as_dict(self) -> dict:
        d = {
            "scenario": self.scenario, "case": self.case, "metric": self.metric, "unit": self.unit,
            "floor": self.floor, "greentree": self.greentree, "ratio": self.ratio,
            "target": self.target, "met": self.met,
        }
        if self.extra:
            d["extra"] = self.extra
        return d


def _median_of(samples: list) -> Any:
    if isinstance(samples[0], dict):
        return {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    return statistics.median(samples)


def alternate(floor: Callable[[], Any], greentree: Callable[[], Any], cfg: Config,
              repeat: int | None = None) -> tuple[Any, Any]:
    """Run ``floor`` and ``greentree`` alternately; return their medians.

    Each callable performs one measured run and returns a number or a dict of
    numbers (then the median is taken key by key).  Warm-up runs are
    discarded.  ``gc.collect()`` runs before every run, outside the timing.
    """
    repeat = cfg.repeat if repeat is None else repeat
    fs, gs = [], []
    for i in range(cfg.warmup + repeat):
        settle()
        f = floor()
        settle()
        g = greentree()
        if i >= cfg.warmup:
            fs.append(f)
            gs.append(g)
    settle()
    return _median_of(fs), _median_of(gs)


def settle() -> None:
    """Let the hub run pending callbacks, then ``gc.collect()``.

    gevent keeps the arguments of the last callback it ran (``killall``'s list
    of dead greenlets, with their exceptions and tracebacks) until the next
    one runs: two trips round the hub release them before the collection.
    """
    gevent.sleep(0)
    gevent.sleep(0)
    gc.collect()


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100), nearest rank."""
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


# ---------------------------------------------------------------- children
def park() -> None:
    """An idle child: parked on its own Event until it is killed."""
    Event().wait()


class Crash(Exception):
    """The exception benchmark children crash with."""


def floor_wrap(fn, *args):
    """The floor's child wrapper: catch the crash in the child's own greenlet.

    That is the cheapest correct way for bare gevent too: a crash that reaches
    the hub costs ~10 us more and prints a traceback.  The traceback is dropped
    so the dead greenlet keeps no frames alive.
    """
    try:
        return fn(*args)
    except GreenletExit:
        raise
    except Exception as e:
        e.__traceback__ = None
        return e


class FloorGroup:
    """The bare-gevent floor: ``gevent.spawn`` + one ``rawlink`` per child.

    With ``restart=True`` the rawlink callback re-spawns an exited child at
    once (one_for_one), unless the group is stopping.
    """

    __slots__ = ("children", "restart", "stopping", "_cb")

    def __init__(self, restart: bool = False):
        self.children: dict = {}  # greenlet -> (fn, args)
        self.restart = restart
        self.stopping = False
        self._cb = self._on_exit

    def spawn(self, fn, *args):
        g = gevent.spawn(floor_wrap, fn, *args) if self.restart else gevent.spawn(fn, *args)
        g.rawlink(self._cb)
        self.children[g] = (fn, args)
        return g

    def _on_exit(self, g):
        item = self.children.pop(g, None)
        if item is not None and self.restart and not self.stopping:
            self.spawn(item[0], *item[1])

    def killall(self):
        self.stopping = True
        gevent.killall(list(self.children))
        self.children.clear()


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend, or None (and a hint) if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install greentree-otp[bench]): no plot", file=sys.stderr)
        return None
    return plt


# ---------------------------------------------------------------- probes
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (psutil elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def live_greenlet_count() -> int:
    """How many greenlets are alive (started, not dead), from the GC's view."""
    from greentree.testing import live_greenlets

    gc.collect()
    return len(live_greenlets())


def current_greenlet():
    return getcurrent()
