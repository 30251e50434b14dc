"""Scenario 2: one_for_one restart latency, with N idle siblings.

A crasher child records ``perf_counter()`` just before it raises; its
replacement records the time it starts running; the difference is one
restart's latency.  The crasher crashes again at once, ``crashes`` times in
a row, so nothing but the restart path runs in between.

* greentree: the crasher and N idle permanent siblings under one
  DynamicSupervisor; and a static one_for_one Supervisor of 10 children.
* floor: the crasher and N idle siblings spawned with one ``rawlink`` each;
  the rawlink callback re-spawns the crasher (its crash is caught in its own
  greenlet, see ``floor_wrap``).

The siblings stay up across the alternating rounds; each round starts a
fresh crasher.  Reported: median over rounds of each round's p50 and p99.
"""

from __future__ import annotations

from gevent import getcurrent
from gevent.event import Event

from greentree import ChildSpec, DynamicSupervisor, Supervisor

from ._harness import Config, Crash, FloorGroup, Row, alternate, park, percentile, perf_counter

NAME = "restart"
TITLE = "restart latency one_for_one (crash -> replacement running), N idle siblings"
TARGET = 1.5        # p50 <= 1.5x the floor
FLAT = 1.2          # p50 at 100k siblings <= 1.2x p50 at 10 siblings
SIZES = [10, 1_000, 10_000, 100_000]
SMOKE_SIZES = [10, 100]


class _State:
    __slots__ = ("count", "lat", "t_crash", "done", "last")

    def __init__(self, count: int):
        self.count = count
        self.lat: list[float] = []
        self.t_crash = None
        self.done = Event()
        self.last = None


def crasher(st: _State) -> None:
    now = perf_counter()
    t = st.t_crash
    if t is not None:
        st.lat.append(now - t)
        st.t_crash = None
    if len(st.lat) >= st.count:
        st.last = getcurrent()
        st.done.set()
        park()
        return
    st.t_crash = perf_counter()
    raise Crash("benchmark crash")


def _stats(st: _State) -> dict:
    assert len(st.lat) == st.count, "not every crash was followed by a restart"
    return {"p50": percentile(st.lat, 50) * 1e6, "p99": percentile(st.lat, 99) * 1e6}


def _floor_round(group: FloorGroup, crashes: int) -> dict:
    st = _State(crashes)
    group.spawn(crasher, st)
    st.done.wait()
    group.children.pop(st.last)  # forget it first, so its exit is not restarted
    st.last.kill(block=True)
    return _stats(st)


def _gt_round(dyn: DynamicSupervisor, crashes: int) -> dict:
    st = _State(crashes)
    dyn.start_child(ChildSpec(None, crasher, st))
    st.done.wait()
    dyn.terminate_child(st.last)
    return _stats(st)


def _gt_static_round(crashes: int, n: int = 10) -> dict:
    st = _State(crashes)
    specs = [ChildSpec(i, park) for i in range(n - 1)] + [ChildSpec("crasher", crasher, st)]
    sup = Supervisor(specs, strategy="one_for_one", max_restarts=10 * crashes, max_seconds=1.0)
    sup.start()
    st.done.wait()
    sup.stop()
    return _stats(st)


def _floor_static_round(crashes: int, n: int = 10) -> dict:
    group = FloorGroup(restart=True)
    for _ in range(n - 1):
        group.spawn(park)
    r = _floor_round(group, crashes)
    group.killall()
    return r


def run(cfg: Config) -> list[Row]:
    crashes = 100 if cfg.smoke else 1_000
    rows = []
    sizes = cfg.n_list(SIZES, SMOKE_SIZES)
    if 10 not in sizes:
        sizes = [10] + sizes
    p50_at: dict = {}
    for n in sizes:
        cfg.log(f"{NAME}: {crashes} crashes, {n:,} idle siblings")
        group = FloorGroup(restart=True)
        for _ in range(n):
            group.spawn(park)
        dyn = DynamicSupervisor(max_restarts=10 * crashes, max_seconds=1.0)
        dyn.start()
        dyn.wait_started()
        spec = ChildSpec(None, park)
        for _ in range(n):
            dyn.start_child(spec)
        f, g = alternate(lambda: _floor_round(group, crashes), lambda: _gt_round(dyn, crashes), cfg)
        assert len(group.children) == n and dyn.count_children().active == n, "a sibling was lost"
        dyn.stop()
        group.killall()
        group = dyn = None  # free them before the next size
        p50_at[n] = g["p50"]
        case = f"dynamic, {n:,} siblings"
        rows.append(Row(NAME, case, "p50", "us", f["p50"], g["p50"], target=f"<= {TARGET}x floor",
                        met=g["p50"] <= TARGET * f["p50"]))
        rows.append(Row(NAME, case, "p99", "us", f["p99"], g["p99"]))
    cfg.log(f"{NAME}: static Supervisor, 10 children")
    f, g = alternate(lambda: _floor_static_round(crashes), lambda: _gt_static_round(crashes), cfg)
    rows.append(Row(NAME, "static, 10 children", "p50", "us", f["p50"], g["p50"],
                    target=f"<= {TARGET}x floor", met=g["p50"] <= TARGET * f["p50"]))
    rows.append(Row(NAME, "static, 10 children", "p99", "us", f["p99"], g["p99"]))
    big = max(sizes)
    if big > 10:
        growth = p50_at[big] / p50_at[10]
        rows.append(Row(NAME, f"p50 at {big:,} / at 10 siblings", "growth", "x", None, growth,
                        target=f"<= {FLAT}x" if big >= 100_000 else None,
                        met=(growth <= FLAT) if big >= 100_000 else None))
    return rows
