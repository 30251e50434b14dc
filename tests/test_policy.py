"""The pure decisions of greentree._policy, exhaustively and with Hypothesis."""

from __future__ import annotations

import itertools

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greentree import AutoShutdown, Restart, Strategy, _policy
from greentree._exits import KILL, ShutdownExit, exit_of
from greentree._policy import (
    CRASH,
    DROP,
    KEEP,
    NORMAL,
    RESTART,
    RESTART_TABLE,
    SHUTDOWN,
    Intensity,
    auto_shutdown_triggered,
    decide,
    exit_kind,
    plan_restart,
)

# ---------------------------------------------------------------- restart table

EXPECTED_TABLE = {
    # OTP's do_restart: permanent always, transient only after an abnormal
    # exit, temporary never (and forgotten).
    ("permanent", "normal"): "restart",
    ("permanent", "shutdown"): "restart",
    ("permanent", "crash"): "restart",
    ("transient", "normal"): "keep",
    ("transient", "shutdown"): "keep",
    ("transient", "crash"): "restart",
    ("temporary", "normal"): "drop",
    ("temporary", "shutdown"): "drop",
    ("temporary", "crash"): "drop",
}


@pytest.mark.parametrize(("restart", "kind"), sorted(EXPECTED_TABLE))
def test_restart_table_entry_matches_otp(restart, kind):
    assert decide(Restart(restart), kind) == EXPECTED_TABLE[(restart, kind)]


@pytest.mark.parametrize(("restart", "kind"), sorted(EXPECTED_TABLE))
def test_decide_accepts_plain_strings_for_the_restart_type(restart, kind):
    assert decide(restart, kind) == EXPECTED_TABLE[(restart, kind)]


def test_restart_table_covers_every_restart_type_and_exit_kind_and_nothing_else():
    assert set(RESTART_TABLE) == set(itertools.product(Restart, _policy.EXIT_KINDS))
    assert set(RESTART_TABLE.values()) == {RESTART, KEEP, DROP}


def test_decide_rejects_an_unknown_restart_type():
    with pytest.raises(ValueError):
        decide("prmanent", CRASH)


# ---------------------------------------------------------------- exit kinds


class _Custom(Exception):
    pass


@pytest.mark.parametrize(
    ("exception", "kind"),
    [
        (None, NORMAL),
        (gevent.GreenletExit(), SHUTDOWN),
        (ShutdownExit(), SHUTDOWN),
        (KILL(), SHUTDOWN),
        (ValueError("boom"), CRASH),
        (_Custom(), CRASH),
        (SystemExit(0), CRASH),
        (SystemExit(1), CRASH),
        (KeyboardInterrupt(), CRASH),
        (GeneratorExit(), CRASH),
    ],
    ids=lambda v: type(v).__name__,
)
def test_classify_maps_each_way_of_ending_to_its_exit_kind(exception, kind):
    assert exit_of(exception).kind == kind


def test_exit_kind_without_shutdown_types_treats_every_exception_as_a_crash():
    assert exit_kind(gevent.GreenletExit()) == CRASH
    assert exit_kind(None) == NORMAL


# ---------------------------------------------------------------- plan_restart


def reference_plan(strategy, order, failed):
    """An independent, deliberately naive statement of OTP's three strategies."""
    i = order.index(failed)
    if strategy == "one_for_one":
        affected = [failed]
    elif strategy == "one_for_all":
        affected = list(order)
    elif strategy == "rest_for_one":
        affected = list(order[i:])
    else:
        raise AssertionError(strategy)
    to_stop = []
    for j in range(len(order) - 1, -1, -1):  # reverse start order
        if order[j] in affected and order[j] != failed:
            to_stop.append(order[j])
    to_start = [c for c in order if c in affected]
    return to_stop, to_start


PLAN_CASES = [
    (strategy, n, pos)
    for strategy in ("one_for_one", "one_for_all", "rest_for_one")
    for n in range(1, 6)
    for pos in range(n)
]


@pytest.mark.parametrize(("strategy", "n", "pos"), PLAN_CASES)
def test_plan_restart_matches_the_reference_for_every_failed_position(strategy, n, pos):
    order = [f"c{i}" for i in range(n)]
    failed = order[pos]
    assert plan_restart(Strategy(strategy), order, failed) == reference_plan(strategy, order, failed)
    # plain strings work too
    assert plan_restart(strategy, order, failed) == reference_plan(strategy, order, failed)


def test_plan_restart_one_for_one_touches_only_the_failed_child():
    assert plan_restart("one_for_one", ["a", "b", "c"], "b") == ([], ["b"])


def test_plan_restart_one_for_all_stops_the_others_in_reverse_and_starts_all_in_order():
    assert plan_restart("one_for_all", ["a", "b", "c", "d"], "c") == (["d", "b", "a"], ["a", "b", "c", "d"])


def test_plan_restart_rest_for_one_of_the_last_child_touches_only_it():
    assert plan_restart("rest_for_one", ["a", "b", "c"], "c") == ([], ["c"])


def test_plan_restart_does_not_mutate_the_order_it_is_given():
    order = ["a", "b", "c"]
    plan_restart("one_for_all", order, "b")
    plan_restart("rest_for_one", order, "a")
    assert order == ["a", "b", "c"]


def test_plan_restart_rejects_an_unknown_strategy():
    with pytest.raises(ValueError):
        plan_restart("one_for_some", ["a"], "a")


@settings(max_examples=300)
@given(
    strategy=st.sampled_from(list(Strategy)),
    order=st.lists(st.integers(0, 1000), min_size=1, max_size=12, unique=True),
    data=st.data(),
)
def test_plan_restart_properties(strategy, order, data):
    failed = data.draw(st.sampled_from(order))
    to_stop, to_start = plan_restart(strategy, order, failed)
    assert (to_stop, to_start) == reference_plan(strategy.value, order, failed)
    # the failed child is always restarted and never stopped (it is dead already)
    assert failed in to_start and failed not in to_stop
    # to_start is a contiguous, ordered slice of order; to_stop is the rest of it reversed
    i = order.index(to_start[0])
    assert to_start == order[i: i + len(to_start)]
    assert to_stop == [c for c in reversed(to_start) if c != failed]
    # nothing started before the failed child is touched by rest_for_one
    if strategy is Strategy.REST_FOR_ONE:
        assert to_start[0] == failed


# ---------------------------------------------------------------- Intensity


def test_intensity_allows_exactly_max_restarts_in_the_window():
    w = Intensity(3, 5.0)
    assert [w.add(0.0) for _ in range(3)] == [False, False, False]


def test_intensity_the_restart_after_max_restarts_exceeds():
    w = Intensity(3, 5.0)
    for t in (0.0, 1.0, 2.0):
        assert not w.add(t)
    assert w.add(3.0)


def test_intensity_a_restart_exactly_max_seconds_old_still_counts():
    w = Intensity(1, 5.0)
    assert not w.add(0.0)
    assert w.add(5.0)  # 0.0 is exactly 5 s old: still in the window (OTP: Now - T =< Period)


def test_intensity_a_restart_just_older_than_max_seconds_has_left_the_window():
    w = Intensity(1, 5.0)
    assert not w.add(0.0)
    assert not w.add(5.0001)


def test_intensity_max_restarts_zero_gives_up_on_the_first_restart():
    w = Intensity(0, 5.0)
    assert w.add(0.0)


def test_intensity_restarts_spaced_wider_than_the_window_never_exceed():
    w = Intensity(1, 1.0)
    assert not any(w.add(t * 1.5) for t in range(100))
    assert len(w.window()) <= 2  # old timestamps are dropped: memory stays bounded


def test_intensity_count_reports_the_restarts_in_the_window():
    w = Intensity(5, 10.0)
    for t in (0.0, 4.0, 8.0):
        w.add(t)
    assert w.count(8.0) == 3
    assert w.count(10.0) == 3
    assert w.count(14.0) == 2
    assert w.count(100.0) == 0


def reference_exceeded(times, max_restarts, max_seconds):
    """For each add: is the number of restarts in [now - max_seconds, now] > max_restarts?"""
    out = []
    for i, now in enumerate(times):
        in_window = [t for t in times[: i + 1] if now - t <= max_seconds]
        out.append(len(in_window) > max_restarts)
    return out


@settings(max_examples=300)
@given(
    max_restarts=st.integers(0, 6),
    max_seconds=st.sampled_from([0.5, 1.0, 2.5, 5.0]),
    gaps=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 5.0]), min_size=1, max_size=30),
)
def test_intensity_matches_a_naive_sliding_window(max_restarts, max_seconds, gaps):
    # gaps are multiples of 0.25, exact in binary floating point
    times = list(itertools.accumulate(gaps))
    w = Intensity(max_restarts, max_seconds)
    assert [w.add(t) for t in times] == reference_exceeded(times, max_restarts, max_seconds)


def test_intensity_max_restarts_zero_would_exceed_before_any_restart():
    # Nothing recorded yet, none allowed: one more restart is already too many,
    # as add() says (a supervisor with max_restarts=0 gives up on the first exit
    # that needs a restart).
    w = Intensity(0, 5.0)
    assert w.would_exceed(0.0) is True
    assert w.add(0.0) is True


@pytest.mark.parametrize("max_restarts", range(4))
def test_intensity_would_exceed_with_nothing_recorded_is_what_the_first_add_says(max_restarts):
    w = Intensity(max_restarts, 5.0)
    assert w.would_exceed(1.0) == Intensity(max_restarts, 5.0).add(1.0) == (max_restarts == 0)


@settings(max_examples=400)
@given(
    max_restarts=st.integers(0, 6),
    max_seconds=st.sampled_from([0.5, 1.0, 2.5, 5.0]),
    gaps=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 5.0]), min_size=1, max_size=30),
    probes=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]), min_size=1, max_size=30),
)
def test_intensity_would_exceed_always_predicts_add(max_restarts, max_seconds, gaps, probes):
    """Before every add(now), and at probe times in between (which record nothing),
    would_exceed(now) is exactly what add(now) returns; with the window empty too."""
    times = list(itertools.accumulate(gaps))
    w = Intensity(max_restarts, max_seconds)
    for i, now in enumerate(times):
        # Probes between the previous restart and this one: read-only, and what a
        # copy of the history would answer if it recorded a restart then.
        start = times[i - 1] if i else 0.0
        for p in probes[i:i + 2]:
            t = min(start + p, now)
            shadow = Intensity(max_restarts, max_seconds)
            for old in w.window():
                shadow.add(old)
            assert w.would_exceed(t) == shadow.add(t), (w.window(), t)
        predicted = w.would_exceed(now)
        assert predicted == w.add(now), (w.window(), now)


# ---------------------------------------------------------------- auto_shutdown


@pytest.mark.parametrize("mode", list(AutoShutdown))
@pytest.mark.parametrize("remaining", [[], ["b"], ["b", "c"]])
def test_auto_shutdown_is_never_triggered_by_a_non_significant_child(mode, remaining):
    assert auto_shutdown_triggered(mode, False, remaining) is False


@pytest.mark.parametrize("remaining", [[], ["b"]])
def test_auto_shutdown_never_ignores_significant_children(remaining):
    assert auto_shutdown_triggered("never", True, remaining) is False


@pytest.mark.parametrize("remaining", [[], ["b"], ["b", "c"]])
def test_auto_shutdown_any_significant_triggers_on_the_first_significant_exit(remaining):
    assert auto_shutdown_triggered("any_significant", True, remaining) is True


def test_auto_shutdown_all_significant_waits_for_the_last_significant_child():
    assert auto_shutdown_triggered(AutoShutdown.ALL_SIGNIFICANT, True, ["b"]) is False
    assert auto_shutdown_triggered(AutoShutdown.ALL_SIGNIFICANT, True, iter(["b"])) is False
    assert auto_shutdown_triggered(AutoShutdown.ALL_SIGNIFICANT, True, []) is True
    assert auto_shutdown_triggered(AutoShutdown.ALL_SIGNIFICANT, True, iter(())) is True


def test_auto_shutdown_rejects_an_unknown_mode():
    with pytest.raises(ValueError):
        auto_shutdown_triggered("sometimes", True, [])


def test_policy_module_imports_no_gevent():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(_policy))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "gevent" not in imported and "greenlet" not in imported
