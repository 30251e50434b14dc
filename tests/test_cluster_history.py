"""The history checker finds every kind of violation in synthetic histories,
and passes the histories that keep the promises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greentree._history import check, intervals
from greentree.testing import check_history


def acq(t, node, inc, name, token):
    return {"ev": "acquire", "t": t, "node": node, "inc": inc, "name": name, "token": token}


def rel(t, node, inc, name):
    return {"ev": "release", "t": t, "node": node, "inc": inc, "name": name}


def end(t, node, inc, t_end=None):
    ev = {"ev": "end", "t": t, "node": node, "inc": inc}
    if t_end is not None:
        ev["t_end"] = t_end
    return ev


def acc(t, node, inc, name, token):
    return {"ev": "accept", "t": t, "node": node, "inc": inc, "name": name, "token": token}


GOOD = [
    acq(1, "a", 1, "x", 10), acc(2, "a", 1, "x", 10), rel(3, "a", 1, "x"),
    acq(4, "b", 2, "x", 12), acc(5, "b", 2, "x", 12),
    end(9, "b", 2, t_end=6),  # fenced at its deadline, noticed later
    acq(7, "a", 1, "x", 15), acc(8, "a", 1, "x", 15),
    acq(1, "c", 3, "y", 11), {"ev": "join", "t": 0, "node": "c", "inc": 3},  # other kinds are ignored
]


def test_a_good_history_passes():
    assert check(GOOD) == []
    assert check_history is check
    assert [(i.name, i.token, i.start, i.end) for i in intervals(GOOD)] == [
        ("x", 10, 1, 3), ("y", 11, 1, float("inf")), ("x", 12, 4, 6), ("x", 15, 7, float("inf")),
    ]


@pytest.mark.parametrize("bad,expect", [
    # two owners at once: b acquires before a released
    ([acq(1, "a", 1, "x", 10), acq(2, "b", 2, "x", 12), rel(3, "a", 1, "x")], "at the same time"),
    # a's incarnation ended (fenced at 5) after b took the name at 4
    ([acq(1, "a", 1, "x", 10), acq(4, "b", 2, "x", 12), end(6, "a", 1, t_end=5)], "at the same time"),
    # a token that does not grow
    ([acq(1, "a", 1, "x", 10), rel(2, "a", 1, "x"), acq(3, "b", 2, "x", 9)], "not greater"),
    # the same token twice (an etcd that lost its data)
    ([acq(1, "a", 1, "x", 10), rel(2, "a", 1, "x"), acq(3, "b", 2, "x", 10)], "granted twice"),
    # accepted after its owner released the name
    ([acq(1, "a", 1, "x", 10), rel(2, "a", 1, "x"), acc(3, "a", 1, "x", 10)], "outside its ownership"),
    # accepted after the owner's node was fenced (its deadline)
    ([acq(1, "a", 1, "x", 10), end(9, "a", 1, t_end=2), acc(3, "a", 1, "x", 10)], "outside its ownership"),
    # accepted with a token that was never granted
    ([acq(1, "a", 1, "x", 10), acc(2, "a", 1, "x", 11)], "no such grant"),
    # accepted with a token granted to another node
    ([acq(1, "a", 1, "x", 10), acc(2, "b", 2, "x", 10)], "no such grant"),
    # accepted while a newer token exists (overlap also reported)
    ([acq(1, "a", 1, "x", 10), acq(2, "b", 2, "x", 12), acc(3, "a", 1, "x", 10)], "already granted"),
])
def test_each_kind_of_violation_is_found(bad, expect):
    problems = check(GOOD + [dict(e, name="z" + e.get("name", "")) if "name" in e else e for e in bad])
    assert problems and any(expect in p for p in problems), problems


def test_malformed_events_are_refused():
    with pytest.raises(ValueError, match="malformed"):
        check([{"ev": "acquire"}])
    with pytest.raises(ValueError, match="malformed"):
        check(["acquire"])


@st.composite
def serial_histories(draw):
    """Random histories of one name handed from owner to owner without overlap."""
    events, t, token = [], 0.0, 0
    for i in range(draw(st.integers(1, 8))):
        node, inc = draw(st.sampled_from("abc")), i
        token += draw(st.integers(1, 5))
        t += draw(st.floats(0.01, 1))
        events.append(acq(t, node, inc, "x", token))
        for _ in range(draw(st.integers(0, 3))):
            t += draw(st.floats(0.01, 1))
            events.append(acc(t, node, inc, "x", token))
        t += draw(st.floats(0.01, 1))
        events.append(draw(st.sampled_from([rel(t, node, inc, "x"), end(t + 5, node, inc, t_end=t)])))
    return events


@given(serial_histories(), st.data())
@settings(max_examples=200, deadline=None)
def test_serial_handovers_pass_and_any_late_accept_is_caught(history, data):
    assert check(history) == []
    ivs = intervals(history)
    late = data.draw(st.sampled_from(ivs))
    after = min(late.end, 1e9) + data.draw(st.floats(0, 0.5))
    bad = history + [acc(after, late.node, late.inc, "x", late.token)]
    assert check(bad) != []


def test_bounded_overlap_mode_allows_that_much_overlap_and_no_more():
    def h(second_start: float, late_accept: float) -> list[dict]:
        return [
            {"ev": "acquire", "t": 1.0, "node": "a", "inc": 1, "name": "x", "token": 5},
            {"ev": "acquire", "t": second_start, "node": "b", "inc": 2, "name": "x", "token": 9},
            {"ev": "accept", "t": late_accept, "node": "a", "inc": 1, "name": "x", "token": 5},
            {"ev": "end", "t": 2.0, "node": "a", "inc": 1},
        ]

    assert check_history(h(1.8, 1.95), max_overlap=0.25) == []
    assert check_history(h(1.8, 1.95)) != []  # strict: both the overlap and the late accept
    assert len(check_history(h(1.7, 1.75), max_overlap=0.25)) == 1  # 0.3 s of overlap: too long
    tokens_back = h(1.8, 1.5)
    tokens_back[1]["token"] = 5
    assert any("granted twice" in p for p in check_history(tokens_back, max_overlap=10))  # never relaxed
