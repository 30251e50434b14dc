"""Scenario 7: a per-connection supervision tree: start/stop cost and memory.

The tree is *emulated* with the same shape as
``greentree.websocket.ConnectionSupervisor`` (the real one needs an open,
handshaken WebSocket per connection, so it is measured by the WebSocket load
tests instead): per connection, a rest_for_one Supervisor holding one worker (the
Connection) and one DynamicSupervisor (the SenderSupervisor, empty), all
under one top-level DynamicSupervisor (the server's connection supervisor).
That is two supervisor greenlets and one worker per connection.

Floor: what a bare gevent server pays per connection, one greenlet spawned
with one ``rawlink``.  There is no target: the ratio shows what the tree
costs, to keep in view when designing the WebSocket layer.
"""

from __future__ import annotations

import gevent

from greentree import ChildSpec, DynamicSupervisor, Supervisor

from ._harness import Config, FloorGroup, Row, alternate, park, perf_counter

NAME = "conn_tree"
TITLE = "per-connection tree (ConnectionSupervisor + Connection + SenderSupervisor) vs one greenlet"
SIZES = [1_000, 10_000]
SMOKE_SIZES = [100]

LABEL = "emulated tree"


def connection_spec() -> ChildSpec:
    """rest_for_one: [Connection worker, SenderSupervisor (DynamicSupervisor)]."""
    return Supervisor.child_spec(
        None,
        [ChildSpec("connection", park), DynamicSupervisor.child_spec("senders")],
        strategy="rest_for_one", restart="temporary",
    )


class TreeFactory:
    """A top-level DynamicSupervisor starting one tree per connection."""

    def __init__(self):
        self.top = DynamicSupervisor(max_restarts=100_000, max_seconds=1.0, name="connections")
        self.top.start()
        self.top.wait_started()
        self.spec = connection_spec()

    def start(self, n: int):
        for _ in range(n):
            self.top.start_child(self.spec)

        def stop():
            self.top.terminate_all()
        return stop


def _floor(n: int) -> dict:
    group = FloorGroup()
    t0 = perf_counter()
    for _ in range(n):
        group.spawn(park)
    gevent.sleep(0)
    t1 = perf_counter()
    group.killall()
    gevent.sleep(0)  # let the rawlink callbacks run
    t2 = perf_counter()
    return {"start": (t1 - t0) / n * 1e6, "stop": (t2 - t1) / n * 1e6}


def _greentree(n: int) -> dict:
    f = TreeFactory()
    t0 = perf_counter()
    f.start(n)
    gevent.sleep(0)
    t1 = perf_counter()
    assert f.top.count_children().active == n
    f.top.stop()
    t2 = perf_counter()
    return {"start": (t1 - t0) / n * 1e6, "stop": (t2 - t1) / n * 1e6}


def run(cfg: Config) -> list[Row]:
    from .memory import measure_in_child

    rows = []
    for n in (SMOKE_SIZES if cfg.smoke else SIZES):
        cfg.log(f"{NAME}: {n:,} connections ({LABEL})")
        repeat = min(cfg.repeat, 3) if n >= 10_000 else cfg.repeat
        f, g = alternate(lambda: _floor(n), lambda: _greentree(n), cfg, repeat=repeat)
        case = f"{LABEL}, {n:,} conns"
        rows.append(Row(NAME, case, "start", "us/conn", f["start"], g["start"]))
        rows.append(Row(NAME, case, "stop", "us/conn", f["stop"], g["stop"]))
    n = SMOKE_SIZES[0] * 10 if cfg.smoke else 10_000
    cfg.log(f"{NAME}: memory, {n:,} connections")
    repeat = 1 if cfg.smoke else min(cfg.repeat, 3)
    f, g = alternate(lambda: measure_in_child("conn_floor", n), lambda: measure_in_child("conn_tree", n),
                     Config(warmup=0, repeat=repeat), repeat=repeat)
    rows.append(Row(NAME, f"{LABEL}, {n:,} conns", "RSS", "KiB/conn", f["rss"] / 1024, g["rss"] / 1024))
    rows.append(Row(NAME, f"{LABEL}, {n:,} conns", "tracemalloc", "KiB/conn",
                    f["traced"] / 1024, g["traced"] / 1024))
    return rows
