"""InstanceManager: the API, its errors, fan-out, async results, timeouts and prune (real SQLite files)."""

from __future__ import annotations

import logging

import gevent
import pytest
from gevent.event import AsyncResult

from greentree import (
    ArgumentError,
    Instance,
    InstanceExistsError,
    InstanceManager,
    InstanceNotFoundError,
    InstanceValueError,
    InvalidTransitionError,
    NotRunningError,
    Server,
    StateMachine,
    StoreError,
    StoreMismatchError,
    Supervisor,
    partition_for,
    reshard,
)
from greentree.testing import FakeClock, wait_until

ORDER = StateMachine(
    "order", initial="new",
    transitions={("new", "pay"): "paid", ("paid", "ship"): "shipped", ("new", "timeout"): "expired",
                 ("paid", "timeout"): "refunded"},
    timeouts={"new": 3600.0, "paid": 7200.0},
)
SESSION = StateMachine("session", initial="open", transitions={("open", "close"): "closed"})


class Counter:
    """A spec that is not a StateMachine: any object with name, initial and allows()."""

    name = "counter"
    initial = 0

    def allows(self, state, action, new_state):
        return action == "inc" and new_state == state + 1


T0 = 1_800_000_000.0


def manager(tmp_path, **kw):
    kw.setdefault("partitions", 4)
    kw.setdefault("store_dir", tmp_path / "state")
    kw.setdefault("durability", "normal")
    return InstanceManager(kw.pop("specs", [ORDER, SESSION, Counter()]), **kw)


# ---------------------------------------------------------------- the basic API
def test_an_order_moves_through_its_states_and_each_call_returns_the_committed_instance(tmp_path):
    clock = FakeClock(T0)
    with manager(tmp_path, clock=clock) as im:
        inst = im.init_instance("order", "o-1", meta={"tenant": 7})
        assert inst == Instance("o-1", "order", "new", {"tenant": 7}, T0, T0, T0 + 3600.0)
        clock.advance(10)
        paid = im.transition("o-1", "pay", "paid")
        assert (paid.state, paid.created, paid.updated, paid.deadline) == ("paid", T0, T0 + 10, T0 + 10 + 7200.0)
        clock.advance(5)
        shipped = im.transition("o-1", "ship", "shipped")
        assert (shipped.state, shipped.deadline) == ("shipped", None)
        assert im.get_instance("o-1") == shipped
    with manager(tmp_path, clock=clock) as im:
        assert im.get_instance("o-1") == shipped


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_both_durability_modes_store_and_reload(tmp_path, durability):
    with manager(tmp_path, durability=durability) as im:
        for n in range(20):
            im.init_instance(Counter(), n)
            im.transition(n, "inc", 1)
    with manager(tmp_path, durability=durability) as im:
        assert sorted((i.id, i.state) for i in im.all_instances()) == [(n, 1) for n in range(20)]


def test_a_spec_object_or_its_name_selects_the_spec_and_state_starts_elsewhere(tmp_path):
    with manager(tmp_path) as im:
        assert im.init_instance(SESSION, "s-1").state == "open"
        assert im.init_instance("order", "o-9", state="paid").state == "paid"
        assert im.transition("o-9", "ship", "shipped").state == "shipped"


def test_ids_may_be_str_bytes_int_or_tuples_and_come_back_equal(tmp_path):
    ids = ["a", b"b", 7, -3, ("tenant", 7, ("x", b"y"))]
    with manager(tmp_path) as im:
        for i in ids:
            im.init_instance("session", i, meta={"k": [1, 2]})
    with manager(tmp_path) as im:
        assert sorted(map(repr, (i.id for i in im.all_instances()))) == sorted(map(repr, ids))
        assert im.get_instance(("tenant", 7, ("x", b"y"))).meta == {"k": [1, 2]}


def test_meta_comes_back_as_a_reload_would_give_it_and_changing_it_in_place_stores_nothing(tmp_path):
    with manager(tmp_path) as im:
        inst = im.init_instance("order", "o-1", meta={"tags": ("a", "b"), 1: None})
        assert inst.meta == {"tags": ["a", "b"], 1: None}
        inst.meta["tags"].append("mutated")
        im.transition("o-1", "pay", "paid")
    with manager(tmp_path) as im:
        assert im.get_instance("o-1").meta == {"tags": ["a", "b"], 1: None}


# ---------------------------------------------------------------- errors change nothing
def test_an_invalid_transition_names_the_instance_its_state_and_what_is_allowed(tmp_path):
    with manager(tmp_path) as im:
        im.init_instance("order", "o-1")
        with pytest.raises(InvalidTransitionError) as e:
            im.transition("o-1", "ship", "shipped")
        msg = str(e.value)
        assert "'o-1'" in msg and "state 'new'" in msg and "'pay' -> 'paid'" in msg
        assert isinstance(e.value, ValueError)
        with pytest.raises(InvalidTransitionError):
            im.transition("o-1", "pay", "shipped")  # right action, wrong target
        with pytest.raises(InvalidTransitionError, match="allows see the spec"):
            im.init_instance("counter", "c")
            im.transition("c", "inc", 5)
        assert im.get_instance("o-1").state == "new"
        assert im.get_instance("c").state == 0


def test_a_duplicate_id_raises_instance_exists_and_keeps_the_original(tmp_path):
    with manager(tmp_path) as im:
        im.init_instance("order", "o-1", meta={"v": 1})
        with pytest.raises(InstanceExistsError, match="already exists"):
            im.init_instance("session", "o-1", meta={"v": 2})
        assert im.get_instance("o-1").meta == {"v": 1}


def test_missing_instances_raise_instance_not_found_a_lookup_error(tmp_path):
    with manager(tmp_path) as im:
        for call in (lambda: im.get_instance("nope"), lambda: im.delete_instance("nope"),
                     lambda: im.transition("nope", "pay", "paid")):
            with pytest.raises(InstanceNotFoundError, match="'nope'") as e:
                call()
            assert isinstance(e.value, LookupError)
        im.init_instance("order", "o-1")
        im.delete_instance("o-1")
        with pytest.raises(InstanceNotFoundError):
            im.get_instance("o-1")


@pytest.mark.parametrize("call, match", [
    (lambda im: im.init_instance("order", "o-2", meta={"when": object()}), "meta of instance 'o-2'"),
    (lambda im: im.init_instance("order", "o-2", meta={"s": {1, 2}}), "meta of instance 'o-2'"),
    (lambda im: im.init_instance("order", "o-2", meta={(1, 2): "tuple key"}), "meta of instance 'o-2'"),
    (lambda im: im.init_instance("order", ["o", 2]), "instance id"),
    (lambda im: im.init_instance("order", 2.5), "instance id"),
    (lambda im: im.init_instance("order", "o-2", state=["new"]), "state"),
    (lambda im: im.init_instance("order", "o-2", meta="x" * (2 << 20)), "limit"),
    (lambda im: im.transition("o-1", {"pay": 1}, "paid"), "action"),
    (lambda im: im.transition("o-1", "pay", object()), "new state"),
    (lambda im: im.transition("o-1", "pay", 1 << 70), "64 bits"),
    (lambda im: im.get_instance(None), "instance id"),
    (lambda im: im.init_instance("invoice", "o-2"), "unknown spec 'invoice'"),
    (lambda im: im.all_instances("invoice"), "unknown spec"),
    (lambda im: im.delete_instances("not callable"), "predicate must be callable"),
    (lambda im: im.transition_async("o-1", "pay", "paid", reply_to="nobody"), "reply_to"),
])
def test_values_that_cannot_be_stored_are_refused_at_the_call_and_nothing_changes(tmp_path, call, match):
    with manager(tmp_path) as im:
        before = im.init_instance("order", "o-1")
        with pytest.raises(InstanceValueError, match=match) as e:
            call(im)
        assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)
        assert im.all_instances() == [before]


@pytest.mark.parametrize("kw, match", [
    ({"partitions": 0}, "partitions"), ({"partitions": -1}, "partitions"), ({"partitions": True}, "partitions"),
    ({"partitions": 2.0}, "partitions"), ({"durability": "fast"}, "durability"),
    ({"prune_interval": 0}, "prune_interval"), ({"prune_after": -5}, "prune_after"),
    ({"prune_interval": float("nan")}, "prune_interval"), ({"clock": 5}, "clock"),
    ({"store_dir": 3}, "store_dir"), ({"max_restarts": -1}, "max_restarts"),
    ({"call_timeout": None}, "call_timeout"),
])
def test_bad_configuration_is_refused_when_the_manager_is_built(tmp_path, kw, match):
    with pytest.raises(ArgumentError, match=match):
        manager(tmp_path, **kw)


class NoAllows:
    name, initial = "x", "a"


class TimeoutsWithoutTarget(Counter):
    timeouts = {0: 5.0}


@pytest.mark.parametrize("specs, match", [
    ([NoAllows()], "needs a str `name`"), ([ORDER, ORDER], "two specs are named 'order'"),
    (ORDER, "specs must be a list"), ([TimeoutsWithoutTarget()], "no target"),
])
def test_bad_specs_are_refused_when_the_manager_is_built(tmp_path, specs, match):
    with pytest.raises(InstanceValueError, match=match):
        manager(tmp_path, specs=specs)


@pytest.mark.parametrize("kw, match", [
    (dict(name="", initial="a", transitions={}), "name"),
    (dict(name="m", initial=["a"], transitions={}), "initial"),
    (dict(name="m", initial="a", transitions=[("a", "b")]), "must be a dict"),
    (dict(name="m", initial="a", transitions={"a": "b"}), "pair"),
    (dict(name="m", initial="a", transitions={("a", "go"): "b"}, timeouts={"a": 0}), "> 0"),
    (dict(name="m", initial="a", transitions={("a", "go"): "b"}, timeouts={"a": 5}), "no .* transition"),
])
def test_state_machine_checks_its_table_when_built(kw, match):
    with pytest.raises(InstanceValueError, match=match):
        StateMachine(**kw)


def test_calls_on_a_manager_that_is_not_running_raise_not_running(tmp_path):
    im = manager(tmp_path)
    with pytest.raises(NotRunningError, match="not running"):
        im.get_instance("o-1")
    with pytest.raises(NotRunningError):
        im.all_instances()


# ---------------------------------------------------------------- fan-out
def test_all_instances_asks_every_shard_and_merges_and_filters_by_spec(tmp_path):
    with manager(tmp_path, partitions=8) as im:
        for n in range(40):
            im.init_instance("order" if n % 2 else "session", f"x-{n}")
        shards = {partition_for(f"x-{n}", 8) for n in range(40)}
        assert len(shards) == 8
        assert sorted(i.id for i in im.all_instances()) == sorted(f"x-{n}" for n in range(40))
        assert {i.spec for i in im.all_instances(ORDER)} == {"order"}
        assert len(im.all_instances("session")) == 20


def test_delete_instances_deletes_matches_in_every_shard_and_counts_them(tmp_path):
    with manager(tmp_path, partitions=8) as im:
        for n in range(30):
            im.init_instance("order", n, meta={"tenant": n % 3})
        assert im.delete_instances(lambda inst: inst.meta["tenant"] == 1) == 10
        assert sorted(i.meta["tenant"] for i in im.all_instances()) == [0] * 10 + [2] * 10
    with manager(tmp_path, partitions=8) as im:
        assert len(im.all_instances()) == 20


class PredicateBug(Exception):
    pass


def test_fan_out_first_error_wins_and_the_failing_shard_deletes_nothing(tmp_path):
    with manager(tmp_path, partitions=4) as im:
        for n in range(20):
            im.init_instance("order", n)

        def predicate(inst):
            if inst.id == 6:
                raise PredicateBug("cannot decide about 6")
            return False

        with pytest.raises(PredicateBug, match="about 6"):
            im.delete_instances(predicate)
        assert len(im.all_instances()) == 20
        assert im.supervisor.count_children().active == 4  # a user error does not crash a shard


def test_fan_out_returns_the_first_error_without_waiting_for_slow_shards(tmp_path):
    with manager(tmp_path, partitions=4) as im:
        for n in range(8):
            im.init_instance("order", n)
        slow = partition_for(1, 4)

        def predicate(inst):
            if partition_for(inst.id, 4) == slow:
                gevent.sleep(2)
            elif inst.id == 2:
                raise PredicateBug("fast failure")
            return False

        t = gevent.get_hub().loop.now()
        with pytest.raises(PredicateBug):
            im.delete_instances(predicate)
        assert gevent.get_hub().loop.now() - t < 1.5


# ---------------------------------------------------------------- restarts
def test_a_crashed_shard_is_restarted_and_reloads_every_acknowledged_write(tmp_path):
    with manager(tmp_path, partitions=2) as im:
        for n in range(50):
            im.init_instance("counter", n)
        results = {}

        def worker(n):
            for _ in range(5):
                try:
                    results[n] = im.transition(n, "inc", results.get(n, 0) + 1).state
                except NotRunningError:
                    results[n] = im.get_instance(n).state  # the outcome of that call is unknown: read it

        workers = [gevent.spawn(worker, n) for n in range(50)]
        gevent.sleep(0.005)
        shard = im.supervisor.which_partition(0)
        shard.kill(RuntimeError("disk gremlin"), block=True)
        gevent.joinall(workers, raise_error=True)
        wait_until(lambda: im.supervisor.which_partition(0) is not shard and not im.supervisor.which_partition(0).dead)
        assert {i.id: i.state for i in im.all_instances()} == results


def test_a_second_manager_on_the_same_store_is_refused(tmp_path):
    with manager(tmp_path) as im:
        im.init_instance("order", "o-1")
        with pytest.raises(StoreError, match="in use by another InstanceManager"):
            with manager(tmp_path):
                pass
        assert im.get_instance("o-1").state == "new"


def test_opening_with_another_partition_count_names_both_counts_and_reshard_moves_instances(tmp_path):
    with manager(tmp_path, partitions=4) as im:
        for n in range(25):
            im.init_instance("order", f"o-{n}")
        im.transition("o-3", "pay", "paid")
    with pytest.raises(StoreMismatchError) as e, manager(tmp_path, partitions=6):
        pass
    assert (e.value.found, e.value.expected) == (4, 6)
    assert "4 partitions, not 6" in str(e.value) and "reshard" in str(e.value)
    assert reshard(tmp_path / "state", 6) == 25
    assert reshard(tmp_path / "state", 6) == 0  # nothing left to do
    with manager(tmp_path, partitions=6) as im:
        assert len(im.all_instances()) == 25
        assert im.get_instance("o-3").state == "paid"
        assert all(im.get_instance(f"o-{n}").id == f"o-{n}" for n in range(25))


def test_as_a_child_spec_in_a_supervisor(tmp_path):
    im = manager(tmp_path)
    with Supervisor([im.child_spec("orders")], name="app") as app:
        assert app.which_children()[0].id == "orders"
        im.wait_started(5)
        im.init_instance("order", "o-1")
        assert im.get_instance("o-1").state == "new"
    im.stop()  # waits until the files are closed
    with manager(tmp_path) as im2:
        assert im2.get_instance("o-1").state == "new"


# ---------------------------------------------------------------- transition_async
def test_transition_async_delivers_the_committed_instance_or_the_error_to_a_callable(tmp_path):
    with manager(tmp_path) as im:
        im.init_instance("order", "o-1")
        got = []
        done = AsyncResult()

        def reply_to(instance_id, result):
            got.append((instance_id, result))
            if len(got) == 2:
                done.set()

        im.transition_async("o-1", "pay", "paid", reply_to=reply_to)
        im.transition_async("o-1", "pay", "paid", reply_to=reply_to)  # no longer allowed
        done.get(timeout=5)
        assert got[0][0] == "o-1" and got[0][1].state == "paid"
        assert isinstance(got[1][1], InvalidTransitionError)
        assert im.get_instance("o-1").state == "paid"


class Inbox(Server):
    def init(self):
        self.results = []

    def handle_info(self, msg):
        self.results.append(msg)

    def handle_call(self, msg, caller):
        return list(self.results)


def test_transition_async_sends_the_result_to_a_server(tmp_path):
    with manager(tmp_path) as im, Inbox() as inbox:
        im.init_instance("order", "o-1")
        im.transition_async("o-1", "pay", "paid", reply_to=inbox)
        im.transition_async("nope", "pay", "paid", reply_to=inbox)
        wait_until(lambda: len(inbox.call("get")) == 2)
        # Different shards: "nope" (nothing to commit) may be answered first.
        (_, j, error), (tag, i, result) = sorted(inbox.call("get"), key=lambda m: m[1])
        assert (tag, i, result.state) == ("transition_result", "o-1", "paid")
        assert j == "nope" and isinstance(error, InstanceNotFoundError)


def test_transition_async_reports_a_shard_that_dies_before_the_commit(tmp_path):
    with manager(tmp_path, partitions=1) as im:
        im.init_instance("order", "o-1")
        got = AsyncResult()
        im.transition_async("o-1", "pay", "paid", reply_to=lambda i, r: got.set(r))
        im.supervisor.which_partition("o-1").kill(RuntimeError("crash before handling"), block=False)
        result = got.get(timeout=5)
        assert isinstance(result, NotRunningError) and "may or may not" in str(result)


def test_a_reply_to_that_raises_or_has_exited_is_logged_with_the_result(tmp_path, caplog_greentree):
    with manager(tmp_path) as im:
        im.init_instance("order", "o-1")
        im.init_instance("order", "o-2")

        def broken(instance_id, result):
            raise KeyError("handler bug")

        im.transition_async("o-1", "pay", "paid", reply_to=broken)
        inbox = Inbox()
        inbox.start()
        inbox.stop()
        im.transition_async("o-2", "pay", "paid", reply_to=inbox)
        wait_until(lambda: len([r for r in caplog_greentree.records if r.levelno == logging.ERROR]) >= 2)
        text = " ".join(r.getMessage() for r in caplog_greentree.records)
        assert "handler bug" in text and "has exited" in text and "state='paid'" in text


# ---------------------------------------------------------------- timeouts and prune
def test_a_timeout_fires_when_the_fake_clock_passes_the_deadline(tmp_path):
    clock = FakeClock(T0)
    with manager(tmp_path, clock=clock) as im:
        im.init_instance("order", "o-1")
        im.init_instance("order", "o-2")
        im.transition("o-2", "pay", "paid")
        clock.advance(3599)
        assert im.tick() == (0, 0)
        clock.advance(1)
        assert im.tick() == (1, 0)
        assert im.get_instance("o-1").state == "expired"
        assert im.get_instance("o-1").updated == T0 + 3600
        clock.advance(7200)
        assert im.tick() == (1, 0)
        assert im.get_instance("o-2").state == "refunded"
        assert im.get_instance("o-2").deadline is None


def test_timeouts_are_re_armed_across_a_restart_and_overdue_ones_fire_at_start(tmp_path):
    clock = FakeClock(T0)
    with manager(tmp_path, clock=clock) as im:
        im.init_instance("order", "late")
        clock.advance(1000)
        im.init_instance("order", "later")
    clock.advance(3000)  # the process is down while "late" passes its deadline
    with manager(tmp_path, clock=clock) as im:
        assert im.get_instance("late").state == "expired"   # fired at start
        assert im.get_instance("later").state == "new"      # re-armed
        assert im.get_instance("later").deadline == T0 + 1000 + 3600
        clock.advance(600)
        assert im.tick() == (1, 0)
        assert im.get_instance("later").state == "expired"


def test_a_timeout_fires_on_its_own_with_a_real_clock(tmp_path):
    quick = StateMachine("quick", initial="waiting", transitions={("waiting", "timeout"): "gave up"},
                         timeouts={"waiting": 0.05})
    with manager(tmp_path, specs=[quick]) as im:
        im.init_instance("quick", "q")
        wait_until(lambda: im.get_instance("q").state == "gave up", timeout=5)


def test_prune_runs_at_start_and_every_prune_interval(tmp_path):
    clock = FakeClock(T0)
    kw = dict(clock=clock, prune_after=100.0, prune_interval=50.0)
    with manager(tmp_path, **kw) as im:
        im.init_instance("session", "old")
        clock.advance(60)
        im.init_instance("session", "young")
        assert im.tick() == (0, 0)                 # no prune pass due yet
        clock.advance(50)                          # old: 110 s, young: 50 s
        assert im.tick() == (0, 1)
        assert [i.id for i in im.all_instances()] == ["young"]
    clock.advance(100)
    with manager(tmp_path, **kw) as im:             # the start pass removes it
        assert im.all_instances() == []


def test_prune_interval_none_prunes_only_at_start_and_prune_after_none_never(tmp_path):
    clock = FakeClock(T0)
    with manager(tmp_path, clock=clock, prune_after=10.0, prune_interval=None) as im:
        im.init_instance("session", "s")
        clock.advance(1000)
        assert im.tick() == (0, 0)
        assert len(im.all_instances()) == 1
    with manager(tmp_path, clock=clock, prune_after=None) as im:
        assert len(im.all_instances()) == 1
    with manager(tmp_path, clock=clock, prune_after=10.0, prune_interval=None) as im:
        assert im.all_instances() == []


def test_calls_made_while_the_manager_stops_fail_at_once_instead_of_waiting_for_a_restart(tmp_path):
    im = manager(tmp_path, call_timeout=30.0)
    im.start()
    im.wait_started()
    im.init_instance("order", "o-1")
    stopper = gevent.spawn(im.stop)
    gevent.sleep(0)
    t = gevent.get_hub().loop.now()
    with pytest.raises(NotRunningError):
        for _ in range(1000):
            im.get_instance("o-1")
            gevent.sleep(0.001)
    assert gevent.get_hub().loop.now() - t < 5
    stopper.join(10)
    im.start()                       # a stopped manager starts again on the same store
    im.wait_started()
    assert im.get_instance("o-1").state == "new"
    im.stop()


def test_instances_of_a_spec_the_manager_was_not_given_load_read_and_refuse_transitions(tmp_path, caplog_greentree):
    clock = FakeClock(T0)
    with manager(tmp_path, clock=clock) as im:
        im.init_instance("order", "o-1")
    other = StateMachine("session", initial="open", transitions={("open", "close"): "closed"})
    with manager(tmp_path, clock=clock, specs=[other]) as im:
        assert im.get_instance("o-1").state == "new"
        with pytest.raises(InvalidTransitionError, match="'order', which this manager was not given"):
            im.transition("o-1", "pay", "paid")
        clock.advance(3600)
        assert im.tick() == (0, 0)  # its deadline cannot be applied: dropped, with a warning
        assert im.get_instance("o-1").deadline is None
    assert "timed out in state 'new'" in caplog_greentree.text


def test_delete_instances_over_many_instances_yields_to_the_hub_between_chunks(tmp_path, monkeypatch):
    import greentree._instance_shard as shard_module

    monkeypatch.setattr(shard_module, "SCAN_CHUNK", 10)
    ticks = []
    seen = []

    def other_work():
        while True:
            ticks.append(1)
            gevent.idle()

    def predicate(inst):
        seen.append(len(ticks))
        return inst.id % 2 == 0

    with manager(tmp_path, partitions=1) as im:
        for n in range(45):
            im.init_instance("session", n)
        other = gevent.spawn(other_work)
        try:
            assert im.delete_instances(predicate) == 23
        finally:
            other.kill()
        assert len(seen) == 45 and seen[-1] > seen[0]  # another greenlet ran while the shard scanned
        assert len(im.all_instances()) == 22


def test_the_serial_runner_runs_one_function_at_a_time_in_submission_order_off_the_hub():
    import threading
    import time

    from greentree._instance_store import SerialRunner

    runner = SerialRunner()
    log, running = [], []
    hub_thread = threading.get_ident()

    def work(name, seconds):
        running.append(name)
        assert len(running) == 1, running      # never two at once
        assert threading.get_ident() != hub_thread
        time.sleep(seconds)
        log.append(name)
        running.remove(name)
        if name == "bad":
            raise OSError("disk gone")
        return name

    outcomes = []
    runner.submit(lambda ok, v: outcomes.append((ok, v)), work, "a", 0.03)
    runner.submit(lambda ok, v: outcomes.append((ok, v)), work, "bad", 0.0)
    runner.submit(lambda ok, v: outcomes.append((ok, v)), work, "b", 0.0)
    assert runner.call(work, "c", 0.0) == "c"   # queued behind the others
    assert log == ["a", "bad", "b", "c"]
    assert outcomes[0] == (True, "a") and outcomes[2] == (True, "b")
    assert outcomes[1][0] is False and isinstance(outcomes[1][1], OSError)
    with pytest.raises(OSError, match="disk gone"):
        runner.call(work, "bad", 0.0)
    assert runner.wait_idle(1)


def test_a_shard_killed_while_loading_releases_its_file_for_the_next_start(tmp_path):
    import greentree._instance_shard as shard_module
    import greentree._instance_store as store_module

    gate = __import__("threading").Event()
    real_load = store_module.load_shard

    def slow_load(*args):
        gate.wait(5)
        return real_load(*args)

    with manager(tmp_path, partitions=1) as im:
        im.init_instance("order", "o-1")
    shard_module.load_shard = slow_load
    try:
        im = manager(tmp_path, partitions=1)
        im.start()
        gevent.sleep(0.05)           # the shard is waiting for its load
        stopper = gevent.spawn(im.stop)
        gevent.sleep(0.05)
        gate.set()                   # the load finishes after its shard was stopped
        stopper.join(10)
    finally:
        shard_module.load_shard = real_load
    with manager(tmp_path, partitions=1) as im:   # the file and its lock were released
        assert im.get_instance("o-1").state == "new"


# ---------------------------------------------------------------- the calls' shared timeout
class GatedCounter(Counter):
    """Counter whose checks wait on ``gate`` while it is set up (user code may yield in a shard)."""

    def __init__(self):
        self.gate = None
        self.seen = []

    def allows(self, state, action, new_state):
        if self.gate is not None:
            self.gate.get()
        self.seen.append(new_state)
        return super().allows(state, action, new_state)


def test_calls_with_and_without_a_timeout_and_casts_go_through_the_shards_order_together(tmp_path):
    # The manager's calls share one deadline timer instead of a timer each;
    # they still go through the shard's mailbox with every other request.
    from greentree._instance_shard import Shard

    spec = GatedCounter()
    with manager(tmp_path, specs=[spec], partitions=1) as im:
        im.init_instance("counter", "c")
        shard = im._shards[0]
        spec.gate = AsyncResult()
        results = {}
        do = (Shard._do_transition, "c", "inc")
        paths = [
            ("manager", lambda n: im.transition("c", "inc", n)),                        # the shared timer
            ("call, no timeout", lambda n: shard.call(do + (n,), timeout=None)),      # Server.call
            ("call, own timeout", lambda n: shard.call(do + (n,), timeout=5.0)),
            ("async", lambda n: im.transition_async("c", "inc", n, lambda i, r: results.__setitem__(n, r))),
        ]
        callers = []
        for n in range(1, 13):
            name, fn = paths[(n - 1) % len(paths)]
            callers.append(gevent.spawn(lambda fn=fn, n=n: results.__setitem__(n, fn(n))))
            gevent.sleep(0)                    # let it post before the next one
        spec.gate.set(None)                    # the first check was waiting: all 12 are queued behind it
        gevent.joinall(callers, timeout=5, raise_error=True)
        wait_until(lambda: len(results) == 12, what="the async results")
        # Each transition checks state n-1 -> n: any one handled out of order would have failed.
        assert spec.seen == list(range(1, 13))
        assert [results[n].state for n in range(1, 13)] == list(range(1, 13))
        assert im.get_instance("c").state == 12
        assert not shard._pending and shard._watch_timer is None and not shard._watch


def test_a_call_past_call_timeout_raises_call_timeout_and_its_late_reply_is_dropped(tmp_path):
    from greentree import CallTimeoutError

    spec = GatedCounter()
    with manager(tmp_path, specs=[spec], partitions=1, call_timeout=0.05) as im:
        im.init_instance("counter", "c")
        shard = im._shards[0]
        spec.gate = AsyncResult()
        def outcome(fn, *args):
            try:
                return fn(*args)
            except CallTimeoutError as e:
                return e

        first = gevent.spawn(outcome, im.transition, "c", "inc", 1)
        gevent.sleep(0)
        second = gevent.spawn(outcome, im.get_instance, "c")   # queued behind the first
        for g in (first, second):
            error = g.get(timeout=5)
            assert isinstance(error, CallTimeoutError), error
            assert "no reply within 0.05 s" in str(error)
        assert not shard._pending                      # the late replies have nobody to go to
        spec.gate.set(None)
        spec.gate = None
        # The shard went on: the timed-out transition happened (a timeout says nothing about
        # whether it did), later calls are answered, and the timer is gone once nobody waits.
        assert im.get_instance("c").state == 1
        assert im.transition("c", "inc", 2).state == 2
        assert shard._watch_timer is None and not shard._watch


def test_a_caller_killed_while_waiting_leaves_nothing_behind(tmp_path):
    spec = GatedCounter()
    with manager(tmp_path, specs=[spec], partitions=1, call_timeout=30.0) as im:
        im.init_instance("counter", "c")
        shard = im._shards[0]
        spec.gate = AsyncResult()
        waiting = [gevent.spawn(im.transition, "c", "inc", 1), gevent.spawn(im.get_instance, "c")]
        gevent.sleep(0)
        assert shard._watch_timer is not None and len(shard._watch) == 2
        gevent.killall(waiting, timeout=5)
        assert not shard._pending
        assert shard._watch_timer is None and not shard._watch   # no 30 s timer left armed
        spec.gate.set(None)
        spec.gate = None
        assert im.transition("c", "inc", 2).state == 2        # the killed caller's write still happened


@pytest.mark.parametrize("bad", [
    ("transition", (1 << 64, "inc", 1)), ("transition", (-(1 << 63) - 1, "inc", 1)),
    ("transition", (0, "inc", 1 << 64)), ("transition", (0, "inc", [1])), ("transition", (0, ["inc"], 1)),
    ("transition", (True, "inc", 1)), ("transition", (0.5, "inc", 1)),
])
def test_the_fast_check_of_plain_ids_and_states_refuses_what_the_full_check_refuses(tmp_path, bad):
    op, args = bad
    with manager(tmp_path) as im:
        with pytest.raises(InstanceValueError):
            getattr(im, op)(*args)


def test_ints_at_the_64_bit_edges_are_routed_as_partition_for_routes_them(tmp_path):
    ids = [0, 1, -1, 7, -(1 << 63), (1 << 64) - 1, "x", b"y", ("t", 1)]
    with manager(tmp_path, partitions=5) as im:
        for i in ids:
            im.init_instance("counter", i)
            assert im.transition(i, "inc", 1).state == 1
        for index in range(5):
            assert sorted(map(repr, im._shards[index]._instances)) == sorted(
                repr(i) for i in ids if partition_for(i, 5) == index)
