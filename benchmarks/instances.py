"""InstanceManager: acknowledged transitions per second, hub stalls, load and fan-out times.

Run it alone (writes ``benchmarks/results/instances.json`` and ``instances.png``)::

    python -m benchmarks.instances            # full sizes, ~3 minutes
    python -m benchmarks.instances --smoke    # tiny sizes, a few seconds, writes nothing

or as the ``instances`` scenario of ``python -m benchmarks``.

The floor is the same job without greentree: per shard, one SQLite file in
WAL mode with the same ``synchronous`` setting, one writer greenlet draining
a list of pending rows and committing them as one transaction in gevent's
threadpool (the same group commit), callers appending a row and waiting on
the batch's Event.  Rows are routed by ``crc32 % 8`` and hold a msgpack'd
counter.  No Server, no validation, no state machine, no records in memory.

* **throughput**: C callers (1, 8, 50), each on its own instance, each
  doing ``transition(k, "inc", n + 1)`` and waiting for the acknowledgement,
  for a fixed time per run; acknowledged transitions per second.  A ticker
  greenlet (``sleep(0.001)`` in a loop) records the worst hub stall.
* **load**: start a manager on 100,000 instances over 8 shards (files
  written beforehand), until ``wait_started()`` returns; the floor reads the
  same 8 files in the threadpool and decodes every row into a dict.
* **fan-out**: ``all_instances()`` over those 100,000 instances; the floor
  concatenates 8 in-memory dicts' values, each in its own greenlet.
* **what a user might write instead** (rows "vs sqlite3 on the hub", at 50
  callers, where the floor column holds it): sqlite3 called directly on the
  hub, one autocommit per write, no batching, no threadpool.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import zlib

import gevent
import msgpack
from gevent.event import Event

from ._harness import Config, Row, alternate, pyplot

TITLE = "InstanceManager: acknowledged transitions/s, hub stall, load and fan-out"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PARTITIONS = 8
CALLERS = (1, 8, 50)
MODES = ("normal", "full")
TARGETS = {("normal", 50): 10_000.0, ("full", 50): 5_000.0}
KEYS = ("rate", "stall", "busy")
STALL_TARGET_MS = 10.0


class Counter:
    """The spec measured: ``inc`` takes n to n + 1."""

    name = "counter"
    initial = 0

    def allows(self, state, action, new_state):
        return action == "inc" and new_state == state + 1


class StallTicker:
    """A greenlet that wakes every millisecond and records the longest gap.

    ``worst`` is the wall-clock gap; ``busy`` the CPU time the hub's thread
    spent within one gap (code running on the hub, as opposed to the thread
    waiting for the GIL or for a core the OS gave to another process).
    """

    def __init__(self):
        self.worst = self.busy = 0.0
        self._running = True
        self._g = gevent.spawn(self._run)

    def _run(self):
        last, last_cpu = time.perf_counter(), time.thread_time()
        while self._running:
            gevent.sleep(0.001)
            now, cpu = time.perf_counter(), time.thread_time()
            self.worst = max(self.worst, now - last - 0.001)
            self.busy = max(self.busy, cpu - last_cpu)
            last, last_cpu = now, cpu

    def stop(self) -> tuple[float, float]:
        """(worst wall-clock stall, worst busy stretch), in ms."""
        self._running = False
        self._g.join()
        return self.worst * 1000.0, self.busy * 1000.0


def drive(callers: int, seconds: float, step) -> tuple[float, float, float]:
    """Run ``step(k, n)`` in ``callers`` greenlets for ``seconds``; (acks/s, worst stall ms, busy ms)."""
    done = [0] * callers
    stop = [False]

    def caller(k):
        n = 0
        while not stop[0]:
            step(k, n)
            n += 1
            done[k] = n

    ticker = StallTicker()
    workers = [gevent.spawn(caller, k) for k in range(callers)]
    t0 = time.perf_counter()
    gevent.sleep(seconds)
    stop[0] = True
    gevent.joinall(workers, raise_error=True)
    elapsed = time.perf_counter() - t0
    return (sum(done) / elapsed, *ticker.stop())


# ---------------------------------------------------------------- the floor
FLOOR_CHUNK = 128
_FLOOR_UPSERT = {n: "INSERT OR REPLACE INTO t VALUES (?, ?)" + ", (?, ?)" * (n - 1) for n in (1 << k for k in range(8))}


class FloorShard:
    """One file, one writer greenlet, group commit in the threadpool: the same job with bare gevent."""

    def __init__(self, path: str, durability: str):
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={durability.upper()}")
        self.conn.execute("CREATE TABLE IF NOT EXISTS t (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        self.rows: dict = {}
        self.done = Event()
        self.wakeup = Event()
        self.writer = gevent.spawn(self._write)

    def _commit(self, rows):
        # As greentree's commit: one multi-row statement per 128 rows, padded
        # to a power of two with the last row (sqlite3 lets go of the GIL at
        # every step; executemany steps once per row).
        stmts = []
        for start in range(0, len(rows), FLOOR_CHUNK):
            chunk = rows[start:start + FLOOR_CHUNK]
            size = 1 << (len(chunk) - 1).bit_length()
            chunk = chunk + [chunk[-1]] * (size - len(chunk))
            stmts.append((_FLOOR_UPSERT[size], [v for row in chunk for v in row]))
        if len(stmts) == 1:
            self.conn.execute(*stmts[0])
            return
        self.conn.execute("BEGIN IMMEDIATE")
        for sql, values in stmts:
            self.conn.execute(sql, values)
        self.conn.execute("COMMIT")

    def _write(self):
        pool = gevent.get_hub().threadpool
        while True:
            self.wakeup.wait()
            self.wakeup.clear()
            rows, done = self.rows, self.done
            self.rows, self.done = {}, Event()
            pool.apply(self._commit, (list(rows.items()),))
            done.set()

    def put(self, key: bytes, value: bytes) -> None:
        self.rows[key] = value
        done = self.done
        self.wakeup.set()
        done.wait()

    def close(self):
        self.writer.kill()
        self.conn.close()


def floor_throughput(mode: str, callers: int, seconds: float) -> tuple[float, float, float]:
    d = tempfile.mkdtemp(prefix="gt-floor-")
    shards = [FloorShard(os.path.join(d, f"f{i}.sqlite"), mode) for i in range(PARTITIONS)]
    keys = [msgpack.packb(k) for k in range(callers)]

    def step(k, n):
        key = keys[k]
        shards[zlib.crc32(key) % PARTITIONS].put(key, msgpack.packb([n + 1]))

    try:
        return drive(callers, seconds, step)
    finally:
        for s in shards:
            s.close()
        shutil.rmtree(d, ignore_errors=True)


def naive_throughput(mode: str, callers: int, seconds: float) -> tuple[float, float, float]:
    """What a user might write first: sqlite3 called on the hub, one autocommit per write, no batching."""
    d = tempfile.mkdtemp(prefix="gt-naive-")
    conns = []
    for i in range(PARTITIONS):
        conn = sqlite3.connect(os.path.join(d, f"n{i}.sqlite"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={mode.upper()}")
        conn.execute("CREATE TABLE t (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        conns.append(conn)
    keys = [msgpack.packb(k) for k in range(callers)]

    def step(k, n):
        key = keys[k]
        conns[zlib.crc32(key) % PARTITIONS].execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (key, msgpack.packb([n + 1])))
        gevent.idle()  # let the other callers and the ticker run between writes

    try:
        return drive(callers, seconds, step)
    finally:
        for c in conns:
            c.close()
        shutil.rmtree(d, ignore_errors=True)


def greentree_throughput(mode: str, callers: int, seconds: float) -> tuple[float, float, float]:
    from greentree import InstanceManager

    d = tempfile.mkdtemp(prefix="gt-im-")
    try:
        with InstanceManager([Counter()], partitions=PARTITIONS, store_dir=d, durability=mode) as im:
            for k in range(callers):
                im.init_instance("counter", k)
            transition = im.transition
            return drive(callers, seconds, lambda k, n: transition(k, "inc", n + 1))
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- load and fan-out
def write_store(store_dir: str, n: int) -> None:
    """Write ``n`` counter instances over 8 shard files directly (the setup, not measured)."""
    from greentree import Instance, partition_for
    from greentree._instance_record import encode_key, encode_meta, encode_row
    from greentree._instance_store import create_shard_file, shard_path

    os.makedirs(store_dir, exist_ok=True)
    rows: list[list] = [[] for _ in range(PARTITIONS)]
    now = time.time()
    for k in range(n):
        i = f"order-{k}"
        meta, value = encode_meta({"tenant": k % 100}, i)
        rows[partition_for(i, PARTITIONS)].append(
            encode_row(encode_key(i), Instance(i, "counter", k % 7, value, now, now), meta))
    for index, shard_rows in enumerate(rows):
        create_shard_file(shard_path(store_dir, index, PARTITIONS), PARTITIONS, index, shard_rows)


def floor_load(store_dir: str) -> tuple[float, list]:
    def read(path):
        conn = sqlite3.connect(path, check_same_thread=False)
        try:
            return {msgpack.unpackb(k, use_list=False): (msgpack.unpackb(h), msgpack.unpackb(m))
                    for k, c, h, m in conn.execute("SELECT key, crc, head, meta FROM instances")}
        finally:
            conn.close()

    pool = gevent.get_hub().threadpool
    paths = sorted(os.path.join(store_dir, f) for f in os.listdir(store_dir) if f.endswith(".sqlite"))
    t0 = time.perf_counter()
    results = [pool.spawn(read, p) for p in paths]
    dicts = [r.get() for r in results]
    return time.perf_counter() - t0, dicts


def floor_fan_out(dicts: list) -> float:
    t0 = time.perf_counter()
    parts = [gevent.spawn(lambda d: list(d.values()), d) for d in dicts]
    gevent.joinall(parts, raise_error=True)
    merged = [v for g in parts for v in g.value]
    assert merged
    return time.perf_counter() - t0


def greentree_load_and_fan_out(store_dir: str, n: int) -> tuple[float, float]:
    from greentree import InstanceManager

    im = InstanceManager([Counter()], partitions=PARTITIONS, store_dir=store_dir, durability="normal",
                         prune_after=None)
    t0 = time.perf_counter()
    im.start()
    im.wait_started()
    load = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        got = im.all_instances()
        fan = time.perf_counter() - t0
        assert len(got) == n, (len(got), n)
    finally:
        im.stop()
    return load, fan


# ---------------------------------------------------------------- the scenario
def _case(mode: str, callers: int) -> str:
    return f"{mode}, {callers} caller{'s' if callers > 1 else ''}"


def run(cfg: Config) -> list[Row]:
    seconds = 0.15 if cfg.smoke else 1.5
    n_instances = 2_000 if cfg.smoke else 100_000
    rows: list[Row] = []
    repeat = 1 if cfg.smoke else max(1, min(cfg.repeat, 3))
    for mode in MODES:
        for callers in CALLERS:
            cfg.log(f"throughput {mode} x{callers}")
            f, g = alternate(
                lambda mode=mode, callers=callers: dict(zip(KEYS, floor_throughput(mode, callers, seconds), strict=True)),
                lambda mode=mode, callers=callers: dict(
                    zip(KEYS, greentree_throughput(mode, callers, seconds), strict=True)),
                cfg, repeat=repeat)
            target = TARGETS.get((mode, callers))
            rows.append(Row(
                "instances", _case(mode, callers), "throughput", "acks/s", f["rate"], g["rate"],
                target=f">= {target:,.0f}/s" if target else None,
                met=None if target is None or cfg.smoke else g["rate"] >= target,
            ))
            if callers == 50:
                rows.append(Row(
                    "instances", _case(mode, callers), "worst stall", "ms", f["stall"], g["stall"],
                    target=f"< {STALL_TARGET_MS:.0f} ms", met=None if cfg.smoke else g["stall"] < STALL_TARGET_MS,
                ))
                rows.append(Row(
                    "instances", _case(mode, callers), "worst hub busy stretch", "ms", f["busy"], g["busy"],
                    target=f"< {STALL_TARGET_MS:.0f} ms", met=None if cfg.smoke else g["busy"] < STALL_TARGET_MS,
                ))
                # What a user might write instead: sqlite3 on the hub, one commit per write.
                # In these rows the "floor" column holds that alternative.
                cfg.log(f"naive alternative {mode} x{callers}")
                naive = [dict(zip(KEYS, naive_throughput(mode, callers, seconds), strict=True))
                         for _ in range(repeat)]
                n = {k: sorted(r[k] for r in naive)[len(naive) // 2] for k in KEYS}
                case = f"{mode}, {callers} callers, vs sqlite3 on the hub"
                rows.append(Row("instances", case, "throughput", "acks/s", n["rate"], g["rate"]))
                rows.append(Row("instances", case, "worst stall", "ms", n["stall"], g["stall"]))
    d = tempfile.mkdtemp(prefix="gt-load-")
    try:
        cfg.log(f"writing {n_instances:,} instances")
        write_store(d, n_instances)
        state: dict = {}

        def floor():
            load, dicts = floor_load(d)
            return {"load": load * 1000, "fan": floor_fan_out(dicts) * 1000}

        def greentree():
            load, fan = greentree_load_and_fan_out(d, n_instances)
            return {"load": load * 1000, "fan": fan * 1000}

        cfg.log(f"load and fan-out, {n_instances:,} instances")
        f, g = alternate(floor, greentree, cfg, repeat=repeat)
        state.update(f)
        case = f"{n_instances:,} instances, {PARTITIONS} shards"
        rows.append(Row("instances", case, "load", "ms", f["load"], g["load"]))
        rows.append(Row("instances", case, "fan-out all_instances", "ms", f["fan"], g["fan"]))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return rows


def write_plot(rows: list[Row], out_dir: str, machine: dict) -> bool:
    """``instances.png``: throughput by callers and mode, greentree vs floor, with the targets."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=False)
    for ax, mode in zip(axes, MODES, strict=True):
        pts = [r for r in rows if r.scenario == "instances" and r.metric == "throughput"
               and r.case.startswith(mode) and " vs " not in r.case]
        if not pts:
            continue
        xs = range(len(pts))
        ax.bar([x - 0.2 for x in xs], [r.floor for r in pts], 0.4, label="floor: bare gevent + sqlite3", alpha=0.6)
        ax.bar([x + 0.2 for x in xs], [r.greentree for r in pts], 0.4, label="greentree InstanceManager")
        ax.set_xticks(list(xs), [r.case.split(", ")[1] for r in pts])
        target = TARGETS.get((mode, 50))
        if target:
            ax.axhline(target, color="tab:red", linestyle="--", linewidth=1, label=f"target at 50 callers ({target:,.0f}/s)")
        ax.set_title(f'durability="{mode}"')
        ax.set_ylabel("acknowledged transitions per second")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"InstanceManager, {PARTITIONS} shards, group commit in the threadpool "
        f"(greentree {machine.get('greentree')}, Python {machine.get('python')}, {machine.get('cores')} cores)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "instances.png"), dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    from .__main__ import format_rst_table, format_table, machine_info

    p = argparse.ArgumentParser(prog="python -m benchmarks.instances", description=TITLE)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds, writes nothing")
    p.add_argument("--repeat", type=int, default=3, help="runs per side (default 3)")
    p.add_argument("--output", default=None, help="directory for instances.json and instances.png")
    args = p.parse_args(argv)
    cfg = Config(smoke=args.smoke, repeat=args.repeat)
    machine = machine_info()
    t0 = time.perf_counter()
    rows = run(cfg)
    print(format_table(rows))
    out_dir = args.output or (None if args.smoke else RESULTS)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "instances.json"), "w") as f:
            json.dump({"machine": machine, "seconds": round(time.perf_counter() - t0, 1),
                       "rows": [r.as_dict() for r in rows], "rst_table": format_rst_table(rows)}, f, indent=1)
            f.write("\n")
        drew = write_plot(rows, out_dir, machine)
        print(f"wrote {out_dir}/instances.json" + (" and instances.png" if drew else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
