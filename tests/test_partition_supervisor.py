"""PartitionSupervisor and partition_for (after Elixir's PartitionSupervisor suite)."""

from __future__ import annotations

import collections
import contextvars
import json
import os
import subprocess
import sys
import time
import zlib

import gevent
import msgpack
import pytest
from gevent.event import Event

from greentree import (
    ChildRestartingError,
    ChildSpec,
    ChildSpecError,
    Greenlet,
    NotRunningError,
    PartitionKeyError,
    PartitionSupervisor,
    RestartIntensityExceeded,
    Supervisor,
    TaskCancelledError,
    TaskTimeoutError,
    partition_for,
    started,
)
from greentree.testing import FakeClock, wait_until

tenant = contextvars.ContextVar("tenant", default=None)


def parked(*args, **kwargs):
    gevent.sleep(3600)


class Boom(Exception):
    pass


# ---------------------------------------------------------------- starting
def test_starts_one_child_per_partition_with_ids_0_to_n_minus_1_each_told_its_index():
    seen = []

    def shard(prefix, index, *, kind):
        seen.append((prefix, index, kind))
        gevent.sleep(3600)

    with PartitionSupervisor(ChildSpec("shard", shard, "p", kwargs={"kind": "cache"}), partitions=4) as sup:
        gevent.sleep(0)
        assert [c.id for c in sup.which_children()] == [0, 1, 2, 3]
        assert sorted(seen) == [("p", i, "cache") for i in range(4)]
        assert sup.count_children().active == 4
        assert sup.partitions == 4
        assert sup.describe()["partitions"] == 4


def test_with_arguments_decides_how_a_child_is_told_its_index():
    seen = []

    def shard(index, label):
        seen.append((index, label))
        gevent.sleep(3600)

    spec = ChildSpec("shard", shard, "db")
    with PartitionSupervisor(spec, partitions=3, with_arguments=lambda args, i: (i, f"{args[0]}-{i}")):
        gevent.sleep(0)
        assert sorted(seen) == [(0, "db-0"), (1, "db-1"), (2, "db-2")]


@pytest.mark.parametrize("bad", [0, -1, True, False, 1.5, "4", None, 2.0])
def test_partitions_must_be_a_positive_int(bad):
    with pytest.raises(ChildSpecError, match=f"partitions must be a positive int, not {bad!r}"):
        PartitionSupervisor(ChildSpec("s", parked), partitions=bad)
    with pytest.raises(ChildSpecError):
        partition_for("key", bad)


def test_bad_child_specs_and_with_arguments_are_rejected_before_anything_starts():
    class Name:
        def bind(self, greenlet):
            pass

    with pytest.raises(ChildSpecError, match="must be a ChildSpec"):
        PartitionSupervisor(parked, partitions=2)
    with pytest.raises(ChildSpecError, match="registers a name"):
        PartitionSupervisor(ChildSpec("s", parked, register=Name()), partitions=2)
    with pytest.raises(ChildSpecError, match="with_arguments must be a function"):
        PartitionSupervisor(ChildSpec("s", parked), partitions=2, with_arguments=(1,))
    with pytest.raises(ChildSpecError, match="must return a tuple"):
        PartitionSupervisor(ChildSpec("s", parked), partitions=2, with_arguments=lambda a, i: i)
    with pytest.raises(ChildSpecError, match="raised ZeroDivisionError"):
        PartitionSupervisor(ChildSpec("s", parked), partitions=2, with_arguments=lambda a, i: 1 / 0)


def test_a_partition_supervisor_has_a_fixed_set_of_children():
    with PartitionSupervisor(ChildSpec("s", parked), partitions=2) as sup:
        with pytest.raises(ChildSpecError, match="exactly 2 copies"):
            sup.start_child(ChildSpec(9, parked))
        assert sup.count_children().specs == 2


def test_a_partition_supervisor_nests_under_a_supervisor_as_a_child():
    spec = PartitionSupervisor.child_spec("shards", ChildSpec("s", parked), partitions=3, max_restarts=10)
    assert spec.type == "supervisor"
    with Supervisor([spec], name="app") as app:
        shards = app.which_children()[0].child
        assert isinstance(shards, PartitionSupervisor)
        assert shards.partitions == 3 and shards.max_restarts == 10
        assert shards.count_children().active == 3
    with pytest.raises(ChildSpecError):
        PartitionSupervisor.child_spec("shards", ChildSpec("s", parked), partitions=0)


# ---------------------------------------------------------------- routing
def test_integer_keys_route_to_their_absolute_value_modulo_the_partition_count():
    assert [partition_for(k, 4) for k in (0, 1, 2, 3, 4, 5, -5, 10**30)] == [0, 1, 2, 3, 0, 1, 1, 10**30 % 4]


def test_other_keys_route_by_the_crc32_of_their_msgpack_encoding():
    for key in ("user-42", b"raw", ("tenant", 7), 2.5, None, True, {"a": 1}):
        expected = zlib.crc32(msgpack.packb(key, use_bin_type=True)) % 8
        assert partition_for(key, 8) == expected


def test_a_bool_is_not_routed_as_an_int():
    assert partition_for(True, 1000) == zlib.crc32(msgpack.packb(True)) % 1000
    assert partition_for(True, 1000) != 1


def test_tuples_and_lists_route_alike_and_str_and_bytes_do_not_collide_by_accident():
    assert partition_for(("a", 1, ("b",)), 16) == partition_for(["a", 1, ["b"]], 16)
    encodings = {msgpack.packb("abc", use_bin_type=True), msgpack.packb(b"abc", use_bin_type=True)}
    assert len(encodings) == 2


@pytest.mark.parametrize("key", [object(), {1, 2}, ("big", 2**70), "\ud800"])
def test_a_key_msgpack_cannot_encode_raises_a_clear_error(key):
    with pytest.raises(PartitionKeyError, match="msgpack cannot encode") as info:
        partition_for(key, 4)
    assert isinstance(info.value, TypeError)


def test_routing_is_the_same_in_another_process_with_another_hash_seed():
    keys = ["user-1", "user-2", "ÿ-unicode", ["tenant", 3], 42, -7, 3.25, None, b"\x00\x01"]
    here = [partition_for(k, 7) for k in keys]
    code = (
        "import json, sys, msgpack\n"
        "from greentree import partition_for\n"
        "keys = msgpack.unpackb(sys.stdin.buffer.read(), raw=False)\n"
        "print(json.dumps([partition_for(k, 7) for k in keys]), hash('user-1'))\n"
    )
    results = []
    for seed in ("1", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code], input=msgpack.packb(keys, use_bin_type=True),
            capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed}, timeout=30, check=True,
        ).stdout.decode()
        routes, salted = out.rsplit(" ", 1)
        assert json.loads(routes) == here
        results.append(int(salted))
    assert results[0] != results[1]  # hash() really differed between the two processes


def test_keys_spread_evenly_over_the_partitions():
    counts = collections.Counter(partition_for(f"conn-{i}", 8) for i in range(8000))
    assert sorted(counts) == list(range(8))
    assert max(counts.values()) - min(counts.values()) < 0.1 * 1000
    counts = collections.Counter(partition_for(("instance", i), 5) for i in range(5000))
    assert max(counts.values()) < 1.1 * 1000 and min(counts.values()) > 0.9 * 1000


def test_the_method_routes_exactly_as_the_function():
    sup = PartitionSupervisor(ChildSpec("s", parked), partitions=6)
    assert [sup.partition_for(k) for k in ("a", 9, ("x", 1))] == [partition_for(k, 6) for k in ("a", 9, ("x", 1))]


# ---------------------------------------------------------------- which_partition
def test_which_partition_returns_the_greenlet_running_the_keys_partition():
    with PartitionSupervisor(ChildSpec("s", parked), partitions=4) as sup:
        children = {c.id: c.child for c in sup.which_children()}
        for key in ("a", "b", 7, ("t", 1)):
            assert sup.which_partition(key) is children[partition_for(key, 4)]


def test_which_partition_returns_the_new_greenlet_after_the_partition_crashes_and_restarts():
    crash = {i: Event() for i in range(3)}

    def shard(index):
        crash[index].wait()
        crash[index].clear()
        raise Boom(f"partition {index}")

    with PartitionSupervisor(ChildSpec("s", shard), partitions=3) as sup:
        key = 4  # partition 1
        old = sup.which_partition(key)
        others = [sup.which_partition(0), sup.which_partition(2)]
        crash[1].set()
        wait_until(lambda: sup.which_children()[1].child not in (None, old))
        new = sup.which_partition(key)
        assert new is not old and not new.dead and old.dead
        assert [sup.which_partition(0), sup.which_partition(2)] == others  # isolated
        assert sup.describe()["children"][1]["restarts"] == 1


def test_which_partition_of_a_stopped_supervisor_or_partition_raises_not_running():
    sup = PartitionSupervisor(ChildSpec("s", parked), partitions=2, name="shards")
    with pytest.raises(NotRunningError, match="call start"):
        sup.which_partition("k")
    with sup:
        sup.terminate_child(1)
        with pytest.raises(NotRunningError, match="partition 1 is stopped"):
            sup.which_partition(1)
        sup.restart_child(1)
        assert not sup.which_partition(1).dead
    with pytest.raises(NotRunningError):
        sup.which_partition("k")


def test_which_partition_while_a_failed_restart_is_retried_raises_child_restarting():
    crash = Event()
    runs = []

    class Shard(Greenlet):
        handshake = True  # started() must be called: an exit before it is a failed start

        def __init__(self, index):
            Greenlet.__init__(self)
            self.index = index

        def _run(self):
            runs.append(self.index)
            if len(runs) > 1:
                raise Boom("setup failed")  # every restart fails before started()
            started()
            crash.wait()
            raise Boom("crash")

    with PartitionSupervisor(ChildSpec("s", Shard), partitions=1, max_restarts=10**6, clock=FakeClock()) as sup:
        crash.set()
        wait_until(lambda: sup.which_children()[0].child is None and len(runs) > 1)
        with pytest.raises(ChildRestartingError, match="being retried"):
            sup.which_partition("any key")
        with pytest.raises(ChildRestartingError):
            sup.map_partitions(lambda g, i: i)


def test_restarts_of_all_partitions_share_one_budget():
    clock = FakeClock()
    crash = Event()

    def shard(index):
        crash.wait()
        raise Boom(f"partition {index}")

    sup = PartitionSupervisor(ChildSpec("s", shard), partitions=4, max_restarts=2, max_seconds=10, clock=clock)
    sup.start()
    sup.wait_started()
    crash.set()  # all four crash: the third restart is one too many
    sup.join(5)
    assert sup.dead
    assert isinstance(sup.exception, RestartIntensityExceeded)


# ---------------------------------------------------------------- map_partitions
def test_map_partitions_returns_the_results_in_partition_order():
    gates = [Event() for _ in range(4)]

    def ask(greenlet, index):
        gates[index].wait()
        return (index, greenlet)

    with PartitionSupervisor(ChildSpec("s", parked), partitions=4) as sup:
        children = [c.child for c in sup.which_children()]
        for gate in reversed(gates):
            gevent.spawn_later(0, gate.set)
        assert sup.map_partitions(ask, timeout=5) == [(i, children[i]) for i in range(4)]


def test_map_partitions_runs_the_calls_concurrently():
    arrived = []
    everyone = Event()

    def ask(greenlet, index):
        arrived.append(index)
        if len(arrived) == 3:
            everyone.set()
        everyone.wait()  # only returns if all three calls run at once
        return index

    with PartitionSupervisor(ChildSpec("s", parked), partitions=3) as sup:
        assert sup.map_partitions(ask, timeout=5) == [0, 1, 2]


def test_map_partitions_raises_the_first_error_and_kills_the_other_calls():
    killed = []

    def ask(greenlet, index):
        if index == 2:
            raise Boom("partition 2 failed")
        try:
            gevent.sleep(3600)
        except gevent.GreenletExit:
            killed.append(index)
            raise

    with PartitionSupervisor(ChildSpec("s", parked), partitions=4) as sup:
        with pytest.raises(Boom, match="partition 2 failed"):
            sup.map_partitions(ask, timeout=5)
        assert sorted(killed) == [0, 1, 3]
        assert sup.count_children().active == 4  # the partitions themselves are untouched


def test_map_partitions_timeout_kills_the_calls_and_raises():
    def ask(greenlet, index):
        if index == 1:
            gevent.sleep(3600)
        return index

    with PartitionSupervisor(ChildSpec("s", parked), partitions=3, name="slow") as sup:
        start = time.monotonic()
        with pytest.raises(TaskTimeoutError, match=r"partitions \[1\] did not answer"):
            sup.map_partitions(ask, timeout=0.05)
        assert time.monotonic() - start < 2


def test_a_caller_killed_during_map_partitions_takes_the_calls_with_it():
    running = []

    def ask(greenlet, index):
        running.append(index)
        gevent.sleep(3600)

    with PartitionSupervisor(ChildSpec("s", parked), partitions=2) as sup:
        caller = gevent.spawn(sup.map_partitions, ask)
        wait_until(lambda: len(running) == 2)
        caller.kill()
        assert caller.dead
        # the suite's leak guard fails this test if a call outlived the caller


def test_a_call_killed_by_someone_else_fails_map_partitions_with_task_cancelled():
    calls = []

    def ask(greenlet, index):
        calls.append(gevent.getcurrent())
        gevent.sleep(3600)

    with PartitionSupervisor(ChildSpec("s", parked), partitions=2) as sup:
        gevent.spawn(lambda: (wait_until(lambda: len(calls) == 2), calls[0].kill()))
        with pytest.raises(TaskCancelledError, match="partition 0 was killed"):
            sup.map_partitions(ask, timeout=5)


def test_map_partitions_carries_the_callers_contextvars_into_every_call():
    with PartitionSupervisor(ChildSpec("s", parked), partitions=3) as sup:
        token = tenant.set("acme")
        try:
            assert sup.map_partitions(lambda g, i: (tenant.get(), i), timeout=5) == [("acme", i) for i in range(3)]
        finally:
            tenant.reset(token)


def test_map_partitions_refuses_to_start_when_a_partition_is_not_running():
    called = []
    with PartitionSupervisor(ChildSpec("s", parked), partitions=2) as sup:
        sup.terminate_child(0)
        with pytest.raises(NotRunningError, match="partition 0"):
            sup.map_partitions(lambda g, i: called.append(i))
    assert called == []
