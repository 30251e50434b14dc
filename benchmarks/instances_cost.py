"""CPU cost per acknowledged transition, greentree vs the floor of ``benchmarks/instances.py``.

``python -m benchmarks.instances_cost floor|greentree normal|full CALLERS N``
runs 20 warm-up transitions per caller, then N transitions over CALLERS
greenlets (each on its own instance, 8 shards), and prints the rate, the
CPU time of the event loop's thread per transition and the rows per commit.

For instruction counts, run it under callgrind with two values of N and
divide the difference of the main thread's totals by the difference of the
N's (start-up and warm-up cancel out)::

    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=cg.2000.%p \\
        python -m benchmarks.instances_cost greentree normal 50 2000
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=cg.6000.%p \\
        python -m benchmarks.instances_cost greentree normal 50 6000
    # main thread = the file ending in -01: (totals of cg.6000.*-01 - cg.2000.*-01) / 4000

See docs/performance_instances.rst for the numbers.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import zlib

import gevent
import msgpack

from .instances import PARTITIONS, Counter, FloorShard

WARMUP = 20


def measure(side: str, mode: str, callers: int, n: int) -> str:
    import greentree._instance_shard as shard_module

    per = n // callers
    commits = [0]

    def counted(commit):
        def wrapper(*args):
            commits[0] += 1
            return commit(*args)
        return wrapper

    close: list = []
    d = tempfile.mkdtemp(prefix="gt-cost-")
    try:
        if side == "floor":
            shards = [FloorShard(os.path.join(d, f"f{i}.sqlite"), mode) for i in range(PARTITIONS)]
            for s in shards:
                s._commit = counted(s._commit)
            keys = [msgpack.packb(k) for k in range(callers)]

            def step(k, n):
                key = keys[k]
                shards[zlib.crc32(key) % PARTITIONS].put(key, msgpack.packb([n]))
            close.extend(s.close for s in shards)
            return _run(side, mode, callers, per, step, commits)
        from greentree import InstanceManager

        original = shard_module.commit
        shard_module.commit = counted(original)
        try:
            with InstanceManager([Counter()], partitions=PARTITIONS, store_dir=d, durability=mode) as im:
                for k in range(callers):
                    im.init_instance("counter", k)
                transition = im.transition
                return _run(side, mode, callers, per, lambda k, n: transition(k, "inc", n), commits)
        finally:
            shard_module.commit = original
    finally:
        for c in close:
            c()
        shutil.rmtree(d, ignore_errors=True)


def _run(side, mode, callers, per, step, commits) -> str:
    def caller(k, first, count):
        for j in range(first, first + count):
            step(k, j + 1)

    gevent.joinall([gevent.spawn(caller, k, 0, WARMUP) for k in range(callers)], raise_error=True)
    commits[0] = 0
    t0, c0 = time.perf_counter(), time.thread_time()
    gevent.joinall([gevent.spawn(caller, k, WARMUP, per) for k in range(callers)], raise_error=True)
    t1, c1 = time.perf_counter(), time.thread_time()
    total = per * callers
    return (f"{side} {mode} x{callers}: {total / (t1 - t0):,.0f} acks/s, event-loop thread CPU "
            f"{(c1 - c0) / total * 1e6:.1f} us/transition, {total / max(commits[0], 1):.2f} rows/commit")


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] not in ("floor", "greentree") or argv[1] not in ("normal", "full"):
        print(__doc__)
        return 2
    print(measure(argv[0], argv[1], int(argv[2]), int(argv[3])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
