"""Measure the memory of N idle children of one kind, in a fresh process.

``python -m benchmarks._memchild KIND N`` prints one JSON object:
``{"rss": bytes per child, "traced": bytes per child}``.  A fresh process
per measurement, because freed memory is reused: an RSS delta taken after an
earlier run in the same process reads low.  RSS is measured first, without
tracemalloc (its own bookkeeping would inflate RSS); then the children are
stopped and started again under tracemalloc, which counts only allocations
made after it starts.
"""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc

import gevent

from ._harness import park, rss_bytes, settle


def _bare(n):
    gs = [gevent.spawn(park) for _ in range(n)]

    def stop():
        gevent.killall(gs)
    return stop


def _supervised_factory():
    from greentree import ChildSpec, DynamicSupervisor

    dyn = DynamicSupervisor(max_restarts=100_000, max_seconds=1.0)
    dyn.start()
    dyn.wait_started()
    spec = ChildSpec(None, park)

    def start(n):
        for _ in range(n):
            dyn.start_child(spec)

        def stop():
            dyn.terminate_all()
        return stop
    return start


def _conn_floor(n):
    from ._harness import FloorGroup

    group = FloorGroup()
    for _ in range(n):
        group.spawn(park)
    return group.killall


def _conn_tree_factory():
    from .conn_tree import TreeFactory

    return TreeFactory().start


def _idle_sups(cls_name):
    def factory():
        import greentree

        cls = getattr(greentree, cls_name)

        def start(n):
            sups = [cls() for _ in range(n)]
            for s in sups:
                s.start()

            def stop():
                for s in sups:
                    s.stop()
            return stop
        return start
    return factory


KINDS = {
    "idle_dynamic": _idle_sups("DynamicSupervisor"),
    "idle_static": _idle_sups("Supervisor"),
    "bare": lambda: _bare,
    "supervised": _supervised_factory,
    "conn_floor": lambda: _conn_floor,
    "conn_tree": _conn_tree_factory,
}


def measure(kind: str, n: int) -> dict:
    start = KINDS[kind]()
    start(max(10, n // 100))()  # warm up: imports, caches, free lists
    settle()
    rss0 = rss_bytes()
    stop = start(n)
    gevent.sleep(0)
    gc.collect()
    rss1 = rss_bytes()
    stop()
    del stop
    settle()
    tracemalloc.start()
    t0 = tracemalloc.get_traced_memory()[0]
    stop = start(n)
    gevent.sleep(0)
    gc.collect()
    t1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    stop()
    return {"rss": (rss1 - rss0) / n, "traced": (t1 - t0) / n}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
