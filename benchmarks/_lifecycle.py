"""Start then stop N idle children: the runs scenarios 1 (start) and 4 (shutdown) share.

One run times both halves, so running both scenarios pays for the 100k-child
setup once.  Results are cached per (N, repeat) for the life of the process.
"""

from __future__ import annotations

import gevent

from greentree import ChildSpec, DynamicSupervisor

from ._harness import Config, FloorGroup, alternate, park, perf_counter

_cache: dict = {}


def _floor(n: int) -> dict:
    group = FloorGroup()
    t0 = perf_counter()
    for _ in range(n):
        group.spawn(park)
    gevent.sleep(0)
    t1 = perf_counter()
    gs = list(group.children)
    assert len(gs) == n and all(gs), "floor children did not all start"
    t2 = perf_counter()
    gevent.killall(gs)
    gevent.sleep(0)  # the rawlink callbacks (the floor's bookkeeping) run before this returns
    t3 = perf_counter()
    assert not any(gs) and not group.children, "floor children survived killall"
    return {"start": (t1 - t0) / n * 1e6, "stop": (t3 - t2) / n * 1e6}


def _greentree(n: int) -> dict:
    dyn = DynamicSupervisor(max_restarts=100_000, max_seconds=1.0)
    dyn.start()
    dyn.wait_started()
    start_child = dyn.start_child
    t0 = perf_counter()
    for _ in range(n):
        start_child(ChildSpec(None, park))  # a fresh spec per child, as users write it
    gevent.sleep(0)
    t1 = perf_counter()
    gs = list(dyn._children)
    assert len(gs) == n and all(gs), "greentree children did not all start"
    t2 = perf_counter()
    dyn.stop()
    t3 = perf_counter()
    assert dyn.dead and not any(gs), "greentree children survived stop()"
    return {"start": (t1 - t0) / n * 1e6, "stop": (t3 - t2) / n * 1e6}


def measure(n: int, cfg: Config) -> tuple[dict, dict]:
    """Medians (floor, greentree) of {"start", "stop"} in us per child."""
    repeat = min(cfg.repeat, 3) if n >= 100_000 else cfg.repeat
    key = (n, repeat, cfg.warmup)
    if key not in _cache:
        _cache[key] = alternate(lambda: _floor(n), lambda: _greentree(n), cfg, repeat=repeat)
    return _cache[key]
