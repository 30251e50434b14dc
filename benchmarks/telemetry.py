"""Scenario: what telemetry costs, on the core's start and restart paths.

Three sides, alternated in the same process after a warm-up: the bare-gevent
floor, greentree with no telemetry handler attached (what every user pays:
one test of an empty list per emit point), and greentree with one no-op
handler attached to every event greentree emits (the handler's call, the
metadata dict and the tree path).

* start: N children under a DynamicSupervisor (the ``start`` scenario's
  run), microseconds per child;
* restart: one_for_one restart latency p50 with 10 idle siblings (the
  ``restart`` scenario's round).

The "nothing attached" rows are what the issue's target is about; compare
them with the ``start`` and ``restart`` scenarios' own rows.  An instruction
count of the same paths before and after the hooks (callgrind) is in
``docs/telemetry.rst``: wall-clock ratios on a shared machine cannot resolve
a few instructions.
"""

from __future__ import annotations

import statistics

from greentree import ChildSpec, DynamicSupervisor, telemetry

from . import _lifecycle, restart
from ._harness import Config, FloorGroup, Row, park, settle

NAME = "telemetry"
TITLE = "telemetry: start and restart with nothing attached, one handler attached, and the floor"
HANDLER = "benchmarks.telemetry"
SIZES = [10_000]
SMOKE_SIZES = [200]


def _noop(event, measurements, metadata) -> None:
    pass


def _with_handler(fn):
    def run():
        telemetry.attach(HANDLER, telemetry.EVENTS, _noop)
        try:
            return fn()
        finally:
            telemetry.detach(HANDLER)

    return run


def _alternate3(sides: list, cfg: Config) -> list:
    """Run each side once per round, in turn, after ``cfg.warmup`` rounds; medians per side."""
    samples: list[list] = [[] for _ in sides]
    for i in range(cfg.warmup + cfg.repeat):
        for k, side in enumerate(sides):
            settle()
            v = side()
            if i >= cfg.warmup:
                samples[k].append(v)
    settle()
    out = []
    for s in samples:
        if isinstance(s[0], dict):
            out.append({key: statistics.median(x[key] for x in s) for key in s[0]})
        else:
            out.append(statistics.median(s))
    return out


def _rows(case: str, metric: str, unit: str, floor: float, none: float, one: float) -> list[Row]:
    return [
        Row(NAME, f"{case}, nothing attached", metric, unit, floor, none),
        Row(NAME, f"{case}, one handler attached", metric, unit, floor, one),
        Row(NAME, f"{case}, one handler / nothing attached", metric, "x", None, one / none),
    ]


def run(cfg: Config) -> list[Row]:
    assert not telemetry.list_handlers(), "a handler is attached: the 'nothing attached' side would be wrong"
    rows: list[Row] = []
    for n in cfg.n_list(SIZES, SMOKE_SIZES):
        cfg.log(f"{NAME}: start N={n:,}")
        f, none, one = _alternate3([lambda n=n: _lifecycle._floor(n), lambda n=n: _lifecycle._greentree(n),
                                    _with_handler(lambda n=n: _lifecycle._greentree(n))], cfg)
        rows += _rows(f"start N={n:,}", "start", "us/child", f["start"], none["start"], one["start"])

    crashes = 100 if cfg.smoke else 1_000
    siblings = 10
    cfg.log(f"{NAME}: restart, {crashes} crashes, {siblings} siblings")
    group = FloorGroup(restart=True)
    dyn = DynamicSupervisor(max_restarts=100 * crashes, max_seconds=1.0)
    dyn.start()
    dyn.wait_started()
    for _ in range(siblings):
        group.spawn(park)
        dyn.start_child(ChildSpec(None, park))
    try:
        f, none, one = _alternate3([
            lambda: restart._floor_round(group, crashes),
            lambda: restart._gt_round(dyn, crashes),
            _with_handler(lambda: restart._gt_round(dyn, crashes)),
        ], cfg)
    finally:
        dyn.stop()
        group.killall()
    rows += _rows(f"restart, {siblings} siblings", "p50", "us", f["p50"], none["p50"], one["p50"])
    return rows
