"""Scenario 6: crash storm.

10,000 permanent children; a driver greenlet throws ``Crash`` into random
running children at 1,000 crashes/s for 30 s (``--smoke``: 100 children,
1 s).  Each child records ``perf_counter()`` just before its crash propagates
and its replacement records when it starts: that is one restart's latency.
A sampler greenlet reads RSS every 0.25 s; the slope is a least-squares fit
over the samples after the first third (warm-up).  Live greenlets are counted
(through the GC) before the children start and after they are stopped.

greentree: a DynamicSupervisor with ``max_restarts=100_000`` per second, so
intensity never trips.  Floor: spawn + rawlink, the rawlink re-spawns.
Both sides run once each, floor first.
"""

from __future__ import annotations

import random

import gevent
from gevent import getcurrent
from gevent.event import Event

from greentree import ChildSpec, DynamicSupervisor

from ._harness import (
    Config,
    Crash,
    FloorGroup,
    Row,
    live_greenlet_count,
    percentile,
    perf_counter,
    rss_bytes,
    settle,
)

NAME = "storm"
TITLE = "crash storm: random crashes at a fixed rate into N permanent children"
P99_TARGET_MS = 10.0
SLOPE_TARGET = 0.1  # MiB/s


class _Slot:
    __slots__ = ("g", "t_crash", "busy")

    def __init__(self):
        self.g = None
        self.t_crash = 0.0
        self.busy = False


class _Storm:
    def __init__(self):
        self.lat: list[float] = []
        self.restarts = 0


def storm_child(slot: _Slot, storm: _Storm) -> None:
    t = slot.t_crash
    if t:
        storm.lat.append(perf_counter() - t)
        storm.restarts += 1
        slot.t_crash = 0.0
    slot.g = getcurrent()
    slot.busy = False
    try:
        Event().wait()
    except Crash:
        slot.t_crash = perf_counter()
        raise


def _drive(slots: list, rate: float, seconds: float, rss: list) -> int:
    """Throw Crash into random idle children at ``rate`` per second; sample RSS."""
    rnd = random.Random(1234)
    sent = 0
    t0 = perf_counter()
    next_sample = t0
    while True:
        now = perf_counter()
        if now >= next_sample:
            rss.append((now - t0, rss_bytes()))
            next_sample += 0.25
        elapsed = now - t0
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) - sent
        tries = 0
        while due > 0 and tries < 10 * due + 10:
            tries += 1
            slot = slots[rnd.randrange(len(slots))]
            g = slot.g
            if slot.busy or g is None or g.dead:
                continue
            slot.busy = True
            g.kill(Crash("storm"), block=False)
            sent += 1
            due -= 1
        gevent.sleep(0.001)
    return sent


def _slope(samples: list) -> float:
    """Least-squares slope of RSS (MiB) over time (s), after the first third."""
    pts = samples[len(samples) // 3:]
    if len(pts) < 2:
        return 0.0
    n = len(pts)
    mx = sum(t for t, _ in pts) / n
    my = sum(r for _, r in pts) / n / 2**20
    sxx = sum((t - mx) ** 2 for t, _ in pts)
    sxy = sum((t - mx) * (r / 2**20 - my) for t, r in pts)
    return sxy / sxx if sxx else 0.0


def _run_side(kind: str, n: int, rate: float, seconds: float) -> dict:
    settle()
    before = live_greenlet_count()
    storm = _Storm()
    slots = [_Slot() for _ in range(n)]
    if kind == "floor":
        group = FloorGroup(restart=True)
        for s in slots:
            group.spawn(storm_child, s, storm)
    else:
        dyn = DynamicSupervisor(max_restarts=100_000, max_seconds=1.0)
        dyn.start()
        dyn.wait_started()
        for s in slots:
            dyn.start_child(ChildSpec(None, storm_child, s, storm))
    gevent.sleep(0)
    rss: list = []
    t0 = perf_counter()
    sent = _drive(slots, rate, seconds, rss)
    # let the last restarts land (bounded wait)
    deadline = perf_counter() + 2.0
    while storm.restarts < sent and perf_counter() < deadline:
        gevent.sleep(0.001)
    wall = perf_counter() - t0
    if kind == "floor":
        group.killall()
    else:
        alive = not dyn.dead
        dyn.stop()
        assert alive, f"the DynamicSupervisor died during the storm: {dyn.exception!r}"
    del slots
    settle()
    after = live_greenlet_count()
    lat = storm.lat
    return {
        "crashes": sent,
        "restarts": storm.restarts,
        "throughput": storm.restarts / wall,
        "p50_ms": percentile(lat, 50) * 1e3 if lat else float("nan"),
        "p99_ms": percentile(lat, 99) * 1e3 if lat else float("nan"),
        "rss_slope": _slope(rss),
        "leaked": after - before,
    }


def run(cfg: Config) -> list[Row]:
    n = 100 if cfg.smoke else cfg.storm_children
    seconds = 1.0 if cfg.smoke else cfg.storm_seconds
    rate = cfg.storm_rate
    cfg.log(f"{NAME}: {n:,} children, {rate:g} crashes/s for {seconds:g} s, floor then greentree")
    f = _run_side("floor", n, rate, seconds)
    g = _run_side("greentree", n, rate, seconds)
    case = f"{n:,} children, {rate:g}/s, {seconds:g} s"
    return [
        Row(NAME, case, "throughput", "restarts/s", f["throughput"], g["throughput"],
            extra={"floor": f, "greentree": g}),
        Row(NAME, case, "p50", "ms", f["p50_ms"], g["p50_ms"]),
        Row(NAME, case, "p99", "ms", f["p99_ms"], g["p99_ms"], target=f"< {P99_TARGET_MS:g} ms",
            met=g["p99_ms"] < P99_TARGET_MS),
        Row(NAME, case, "RSS slope", "MiB/s", f["rss_slope"], g["rss_slope"],
            target=f"< {SLOPE_TARGET} MiB/s", met=g["rss_slope"] < SLOPE_TARGET),
        Row(NAME, case, "leaked greenlets", "count", f["leaked"], g["leaked"], target="0",
            met=g["leaked"] == 0),
    ]
