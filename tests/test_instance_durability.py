"""InstanceManager against real failures: SIGKILL under load, damaged files,
other processes and hash seeds, and the hub's latency under load."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greentree import (
    InstanceManager,
    InstanceNotFoundError,
    NotRunningError,
    StoreCorruptError,
    StoreError,
    StoreMismatchError,
    partition_for,
    reshard,
)
from greentree._instance_store import close_shard, open_shard
from greentree.testing import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent("""
    import json, os, sys
    import gevent
    from greentree import InstanceManager, InstanceNotFoundError, partition_for

    class Counter:
        name = "counter"
        initial = 0
        def allows(self, state, action, new_state):
            return action == "inc" and new_state == state + 1

    mode, store_dir = sys.argv[1], sys.argv[2]
    if mode == "route":
        ids = [tuple(i) if isinstance(i, list) else i for i in json.loads(sys.argv[3])]
        print(json.dumps([partition_for(i, 8) for i in ids]))
        with InstanceManager([Counter()], partitions=8, store_dir=store_dir, durability="normal") as im:
            for i in ids:
                try:
                    im.get_instance(i)
                except InstanceNotFoundError:
                    im.init_instance("counter", i)
            print(json.dumps(sorted(repr(inst.id) for inst in im.all_instances())), flush=True)
        sys.exit(0)

    acks_path, durability, callers = sys.argv[3], sys.argv[4], int(sys.argv[5])
    ack_fd = os.open(acks_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    with InstanceManager([Counter()], partitions=4, store_dir=store_dir, durability=durability) as im:
        start = {}
        for k in range(callers):
            try:
                start[k] = im.get_instance(k).state
            except InstanceNotFoundError:
                start[k] = im.init_instance("counter", k).state

        def caller(k):
            state = start[k]
            while True:
                state = im.transition(k, "inc", state + 1).state
                os.write(ack_fd, b"%d %d\\n" % (k, state))   # acknowledged: the call returned

        workers = [gevent.spawn(caller, k) for k in range(callers)]
        print("running", flush=True)
        gevent.joinall(workers, raise_error=True)
""")


class Counter:
    name = "counter"
    initial = 0

    def allows(self, state, action, new_state):
        return action == "inc" and new_state == state + 1


@pytest.fixture
def child_script(tmp_path):
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    return str(path)


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def _read_acks(path):
    """``({caller: highest acknowledged state}, number of acknowledged transitions)``."""
    acked: dict = {}
    count = 0
    if not os.path.exists(path):
        return acked, count
    with open(path, "rb") as f:
        for line in f.read().split(b"\n"):
            parts = line.split()
            if len(parts) == 2:
                k, state = int(parts[0]), int(parts[1])
                acked[k] = max(acked.get(k, 0), state)
                count += 1
    return acked, count


@pytest.mark.timeout(120)
def test_every_acknowledged_transition_survives_sigkill_under_50_greenlets_20_times(tmp_path, child_script):
    store = str(tmp_path / "store")
    rng = random.Random(20261202)
    callers = 50
    total_acked = 0
    for round_no in range(20):
        acks = str(tmp_path / f"acks-{round_no}")
        durability = "normal" if round_no % 2 == 0 else "full"
        proc = subprocess.Popen(
            [sys.executable, child_script, "load", store, acks, durability, str(callers)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), start_new_session=True,
        )
        try:
            line = proc.stdout.readline()
            assert line == b"running\n", line + proc.stderr.read()
            time.sleep(rng.uniform(0.05, 0.35))
        finally:
            _kill_group(proc)
        proc.stdout.close()
        proc.stderr.close()
        acked, count = _read_acks(acks)
        total_acked += count
        with InstanceManager([Counter()], partitions=4, store_dir=store, durability="normal") as im:
            stored = {inst.id: inst.state for inst in im.all_instances()}
        for k, state in acked.items():
            # Every acknowledged transition is there; at most the one call in
            # flight per caller (not acknowledged) may have committed too.
            assert state <= stored[k] <= state + 1, (round_no, k, state, stored[k])
    assert total_acked > 20 * 50, total_acked  # the kills really landed under load
    print(f"{total_acked} acknowledged transitions over 20 SIGKILLs, none lost")


@pytest.mark.timeout(60)
def test_routing_is_identical_across_processes_with_different_hash_seeds(tmp_path, child_script):
    ids = [f"user-{n}" for n in range(30)] + [["tenant", n] for n in range(10)] + list(range(-5, 5))
    store = str(tmp_path / "store")
    outputs = []
    for seed in ("0", "1", "4242"):
        out = subprocess.run(
            [sys.executable, child_script, "route", store, json.dumps(ids)],
            capture_output=True, env=_env(PYTHONHASHSEED=seed), timeout=50, check=True,
        )
        routes, stored = (json.loads(line) for line in out.stdout.decode().splitlines())
        outputs.append(routes)
        # The first process created the instances; the others found every one
        # of them in the shard their own routing pointed to (else they would
        # have created duplicates).
        assert len(stored) == len(ids)
    local = [partition_for(tuple(i) if isinstance(i, list) else i, 8) for i in ids]
    assert outputs[0] == outputs[1] == outputs[2] == local


# ---------------------------------------------------------------- damaged files
def _small_store(tmp_path, n=5, page_size=None):
    store = tmp_path / "orig"
    with InstanceManager([Counter()], partitions=1, store_dir=store, durability="full") as im:
        for k in range(n):
            im.init_instance("counter", f"c-{k}", meta={"k": k})
            im.transition(f"c-{k}", "inc", 1)
    path = store / "shard-0-of-1.sqlite"
    assert not os.path.exists(str(path) + "-wal")  # checkpointed at close: one file holds everything
    if page_size:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    data = path.read_bytes()
    shard, rows = open_shard(str(store), 1, 0, "normal")
    close_shard(shard)
    return data, {key: (inst, meta) for key, inst, meta in rows}


def _open_damaged(work, data, original):
    """Open a damaged copy: it must open (with only original rows) or raise a StoreError naming the file."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    path = os.path.join(work, "shard-0-of-1.sqlite")
    with open(path, "wb") as f:
        f.write(data)
    try:
        shard, rows = open_shard(work, 1, 0, "normal")
    except StoreError as e:
        assert path in str(e), e
        return "error"
    close_shard(shard)
    for key, inst, meta in rows:
        assert original[key] == (inst, meta), "a damaged row was read back as a different value"
    return "open"


@pytest.mark.timeout(120)
def test_a_truncated_or_corrupted_store_opens_cleanly_or_raises_a_clear_error_at_every_byte_offset(tmp_path):
    data, original = _small_store(tmp_path, page_size=512)
    assert len(original) == 5 and len(data) <= 8 * 512
    work = str(tmp_path / "work")
    seen = {"open": 0, "error": 0}
    for offset in range(len(data)):
        seen[_open_damaged(work, data[:offset], original)] += 1
        flipped = data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:]
        seen[_open_damaged(work, flipped, original)] += 1
    assert seen["open"] and seen["error"]  # both outcomes happen; neither hangs nor crashes


@pytest.mark.timeout(120)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damage_anywhere_in_a_default_page_size_store_never_gives_back_a_wrong_value(tmp_path, data):
    key = "default"
    cache = getattr(test_damage_anywhere_in_a_default_page_size_store_never_gives_back_a_wrong_value, "cache", {})
    if key not in cache:
        cache[key] = _small_store(tmp_path / "fixture", n=20)
        test_damage_anywhere_in_a_default_page_size_store_never_gives_back_a_wrong_value.cache = cache
    raw, original = cache[key]
    offset = data.draw(st.integers(0, len(raw) - 1))
    if data.draw(st.booleans()):
        damaged = raw[:offset]
    else:
        length = data.draw(st.integers(1, 64))
        noise = data.draw(st.binary(min_size=length, max_size=length))
        damaged = raw[:offset] + noise + raw[offset + length:]
    _open_damaged(str(tmp_path / "work"), damaged, original)


def test_a_corrupt_store_fails_the_first_start_with_a_clear_error(tmp_path):
    store = tmp_path / "store"
    os.makedirs(store)
    (store / "shard-0-of-2.sqlite").write_bytes(b"this is not a database" * 200)
    with pytest.raises(StoreCorruptError, match="shard-0-of-2.sqlite"):
        with InstanceManager([Counter()], partitions=2, store_dir=store):
            pass


def test_a_store_damaged_while_running_does_not_crash_loop_its_shard(tmp_path):
    store = tmp_path / "store"
    with InstanceManager([Counter()], partitions=2, store_dir=store, max_restarts=3) as im:
        for k in range(20):
            im.init_instance("counter", k)
        victim = im.partition_for(0)
        path = store / f"shard-{victim}-of-2.sqlite"
        junk = tmp_path / "junk"
        junk.write_bytes(b"\x00garbage" * 1000)
        os.replace(junk, path)                   # the disk goes bad under the running shard...
        for suffix in ("-wal", "-shm"):          # (with the WAL intact, SQLite would recover every page)
            os.unlink(f"{path}{suffix}")
        old = im.supervisor.which_partition(0)
        old.kill(RuntimeError("I/O error"), block=True)   # ...and the shard crashes
        wait_until(lambda: im.supervisor.which_children()[victim].child not in (None, old))
        new = im.supervisor.which_partition(0)
        for _ in range(3):
            with pytest.raises(StoreCorruptError, match=f"shard-{victim}-of-2.sqlite"):
                im.get_instance(0)
        gevent.sleep(0.05)
        assert im.supervisor.which_partition(0) is new and not new.dead  # no restart loop
        assert not im.supervisor.dead
        healthy = next(k for k in range(20) if im.partition_for(k) != victim)
        assert im.transition(healthy, "inc", 1).state == 1
        with pytest.raises(StoreCorruptError):
            im.all_instances()                   # a fan-out cannot be complete: first error wins
        missing = next(k for k in range(1000, 1100) if im.partition_for(k) != victim)
        with pytest.raises(InstanceNotFoundError):
            im.get_instance(missing)             # the healthy shard answers normally


# ---------------------------------------------------------------- the hub stays responsive
def _run_load(tmp_path, durability, callers, per_caller, ticker):
    with InstanceManager([Counter()], partitions=8, store_dir=tmp_path / "s", durability=durability) as im:
        for k in range(callers):
            im.init_instance("counter", k)
        tick = gevent.spawn(ticker)

        def caller(k):
            for n in range(per_caller):
                im.transition(k, "inc", n + 1)

        try:
            gevent.joinall([gevent.spawn(caller, k) for k in range(callers)], raise_error=True)
        finally:
            tick.kill()
        assert sum(i.state for i in im.all_instances()) == callers * per_caller


@pytest.mark.timeout(120)
@pytest.mark.parametrize("durability", ["normal", "full"])
def test_the_hub_never_stalls_long_during_20k_transitions(tmp_path, durability):
    """A ticker wakes every millisecond; the longest gap is the worst stall.

    Two measures: ``busy``, the CPU time the hub's thread spent inside one
    gap (our code running on the hub: a commit made on the hub would show
    hundreds of ms here), and the wall-clock gap, which on a shared machine
    also counts time the OS gave the core to other processes.  On the shared
    2-core machine this was written on, with the suite niced and under
    coverage, wall-clock gaps of 300 ms to 1.1 s happened while the hub's
    thread ran for under 20 ms: the wall-clock gap is printed, not asserted.
    What is asserted is what the library controls, the busy time, with a
    generous bound; the 10 ms target is checked by the benchmark.
    """
    worst = [0.0, 0.0]  # wall, busy
    running = [True]

    def ticker():
        last, last_cpu = time.perf_counter(), time.thread_time()
        while running[0]:
            gevent.sleep(0.001)
            now, cpu = time.perf_counter(), time.thread_time()
            worst[0] = max(worst[0], now - last - 0.001)
            worst[1] = max(worst[1], cpu - last_cpu)
            last, last_cpu = now, cpu

    callers, per_caller = 50, 400
    # The test process's own heap (pytest, Hypothesis, earlier tests) is moved
    # out of the cyclic GC's reach, so a full collection triggered here costs
    # what this workload allocated, as in a service, not what pytest holds.
    import gc

    gc.collect()
    gc.freeze()
    try:
        _run_load(tmp_path, durability, callers, per_caller, ticker)
    finally:
        running[0] = False
        gc.unfreeze()
    wall, busy = worst[0] * 1000, worst[1] * 1000
    print(f"worst stall {wall:.1f} ms wall, {busy:.1f} ms busy")
    assert busy < 50, f"the hub was busy for {busy:.1f} ms in one stretch (wall-clock stall {wall:.1f} ms)"


def test_a_failed_commit_crashes_the_shard_fails_its_callers_and_the_restart_reloads_what_was_committed(tmp_path):
    """A full disk, made real with SQLite's max_page_count on the shard's own connection."""
    with InstanceManager([Counter()], partitions=1, store_dir=tmp_path / "s", durability="full") as im:
        im.init_instance("counter", "kept", meta={"pad": "x" * 100})
        shard = im.supervisor.which_partition("kept")
        conn = shard._file.conn  # the test reaches in only to make the disk full
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")
        with pytest.raises(NotRunningError) as e:
            im.init_instance("counter", "lost", meta={"pad": "y" * 200_000})
        assert isinstance(e.value.__cause__, StoreError)
        assert "full" in str(e.value.__cause__.__cause__)
        wait_until(lambda: im.supervisor.which_partition("kept") is not shard)
        assert im.get_instance("kept").meta == {"pad": "x" * 100}
        with pytest.raises(InstanceNotFoundError):
            im.get_instance("lost")
        assert im.transition("kept", "inc", 1).state == 1


def test_reshard_interrupted_after_the_new_files_are_in_place_finishes_when_run_again(tmp_path):
    store = tmp_path / "s"
    with InstanceManager([Counter()], partitions=2, store_dir=store) as im:
        for k in range(12):
            im.init_instance("counter", k)
    assert reshard(store, 3) == 12
    # Simulate a crash before the old files were deleted: put a copy of an old set back.
    for name in os.listdir(store):
        if name.startswith("shard-") and name.endswith("-of-3.sqlite"):
            shutil.copy(store / name, store / name.replace("-of-3", "-of-2").replace("shard-2-", "shard-1-"))
    with pytest.raises(StoreMismatchError, match="interrupted reshard"):
        with InstanceManager([Counter()], partitions=3, store_dir=store):
            pass
    assert reshard(store, 3) == 0
    with InstanceManager([Counter()], partitions=3, store_dir=store) as im:
        assert sorted(i.id for i in im.all_instances()) == list(range(12))
