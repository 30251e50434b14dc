"""The ClusterSupervisor's pure decisions: placement, restarts in place, handoff targets,
rebalancing moves, and the stored records (exhaustive where small, Hypothesis elsewhere)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greentree import _cluster_placement as P

NODES = st.lists(st.text("abcdefgh", min_size=1, max_size=3), max_size=6, unique=True)
IDS = st.lists(st.text("xyz0123456789", min_size=1, max_size=4), max_size=40, unique=True)
MSGPACK = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@given(st.text(min_size=1), NODES, st.randoms())
def test_rendezvous_is_deterministic_and_independent_of_order(key, nodes, rnd):
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    got = P.rendezvous(key, nodes)
    assert got == P.rendezvous(key, shuffled)
    assert (got is None) == (not nodes)
    assert got is None or got in nodes


@given(st.text(min_size=1), NODES)
def test_rendezvous_moves_a_key_only_when_its_own_node_goes(key, nodes):
    chosen = P.rendezvous(key, nodes)
    for gone in nodes:
        if gone != chosen:
            assert P.rendezvous(key, [n for n in nodes if n != gone]) == chosen


@st.composite
def views(draw):
    members = draw(NODES)
    ids = draw(IDS)
    others = draw(NODES)
    anyone = members + others
    owners = {}
    last = {}
    handoffs = {}
    for cid in ids:
        if anyone and draw(st.booleans()):
            owners[cid] = draw(st.sampled_from(anyone))
        elif anyone and draw(st.booleans()):
            last[cid] = draw(st.sampled_from(anyone))
        if anyone and draw(st.integers(0, 3)) == 0:
            handoffs[cid] = draw(st.sampled_from(anyone + [None]))
    return members, ids, owners, last, handoffs


@settings(max_examples=300)
@given(views(), st.sampled_from(P.PLACEMENTS), st.randoms())
def test_assign_places_every_unowned_child_on_a_member_the_same_way_on_every_node(view, placement, rnd):
    members, ids, owners, last, handoffs = view
    unowned = [c for c in ids if c not in owners]
    plan = P.assign(unowned, members, owners=owners, last=last, handoffs=handoffs, placement=placement)
    if not members:
        assert plan == {}
        return
    assert set(plan) == set(unowned)
    assert set(plan.values()) <= set(members)
    # Each node computes the plan from its own copy of the view, in its own order.
    shuffled_members = list(members)
    rnd.shuffle(shuffled_members)
    shuffled = list(unowned)
    rnd.shuffle(shuffled)
    assert P.assign(shuffled, shuffled_members, owners=dict(reversed(list(owners.items()))), last=last,
                    handoffs=handoffs, placement=placement) == plan
    for cid, node in plan.items():
        if handoffs.get(cid) in members:
            assert node == handoffs[cid], "a graceful handoff names the next owner"
        elif last.get(cid) in members:
            assert node == last[cid], "a restart stays on the child's node while it is a member"
        elif placement == "hash":
            assert node == P.rendezvous(cid, members)


@given(NODES, IDS)
def test_least_loaded_spreads_fresh_children_evenly(members, ids):
    plan = P.assign(ids, members, owners={}, last={}, handoffs={}, placement="least_loaded")
    if members:
        loads = [list(plan.values()).count(m) for m in members]
        assert max(loads) - min(loads) <= 1


@given(NODES, IDS, st.data())
def test_least_loaded_fills_the_emptiest_members_first(members, ids, data):
    if not members:
        return
    owners = {cid: data.draw(st.sampled_from(members)) for cid in ids}
    before = {m: list(owners.values()).count(m) for m in members}
    plan = P.assign(["new"], members, owners=owners, last={}, handoffs={}, placement="least_loaded")
    assert before[plan["new"]] == min(before.values())


@given(NODES, st.text(min_size=1), st.dictionaries(st.text(min_size=1), st.text("abcdefgh", min_size=1)),
       st.sampled_from(P.PLACEMENTS))
def test_successor_is_a_remaining_member(members, cid, owners, placement):
    got = P.successor(cid, members, owners, placement)
    assert (got is None) == (not members)
    assert got is None or got in members


@settings(max_examples=300)
@given(NODES, IDS, st.sampled_from(P.PLACEMENTS), st.data())
def test_rebalance_moves_only_running_children_between_members_and_evens_the_load(members, ids, placement, data):
    anyone = members + ["outsider"]
    owners = {cid: data.draw(st.sampled_from(anyone)) for cid in ids}
    moves = P.rebalance(members, owners, placement)
    for cid, target in moves.items():
        assert owners[cid] in members and target in members and target != owners[cid]
    after = {**owners, **moves}
    if len(members) < 2:
        assert moves == {}
    elif placement == "hash":
        assert all(after[c] == P.rendezvous(c, members) for c, n in owners.items() if n in members)
    else:
        loads = [list(after.values()).count(m) for m in members]
        assert max(loads) - min(loads) <= 1
        # No child moves twice and none moves off a node that was not over the mean.
        mean = sum(1 for n in owners.values() if n in members) / len(members)
        assert all(list(owners.values()).count(owners[c]) > mean for c in moves)


def test_rebalance_to_a_joined_node_moves_about_a_share_under_hash():
    owners = {f"job-{i}": P.rendezvous(f"job-{i}", ["a", "b"]) for i in range(300)}
    moves = P.rebalance(["a", "b", "c"], owners, "hash")
    assert set(moves.values()) == {"c"}
    assert 60 < len(moves) < 140  # about a third


# ---------------------------------------------------------------- records
@given(st.lists(MSGPACK, max_size=4), st.dictionaries(st.text(max_size=5), MSGPACK, max_size=3),
       st.sampled_from(["permanent", "transient", "temporary"]),
       st.one_of(st.none(), st.floats(0, 100), st.just("brutal_kill")), st.one_of(st.none(), st.floats(0.1, 9)))
def test_a_spec_round_trips(args, kwargs, restart, shutdown, start_timeout):
    data = P.encode_spec("pkg.mod:Cls", tuple(args), kwargs, restart, shutdown, start_timeout)
    rec = P.decode_spec(data)
    assert rec is not None
    assert (rec["start"], rec["restart"], rec["shutdown"], rec["start_timeout"]) == (
        "pkg.mod:Cls", restart, shutdown, start_timeout)
    assert rec["args"] == msgpack.unpackb(msgpack.packb(list(args)), raw=False)


@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_record_or_none_never_an_error(data):
    for rec in (P.decode_spec(data), P.decode_handoff(data)):
        assert rec is None or isinstance(rec, dict)


@pytest.mark.parametrize("field,value", [
    ("v", 2), ("start", 3), ("start", "no-colon"), ("args", {}), ("kwargs", []), ("kwargs", {1: 2}),
    ("restart", "prmanent"), ("shutdown", "soon"), ("start_timeout", "x"),
])
def test_a_spec_with_a_wrong_field_is_not_read(field, value):
    good = msgpack.unpackb(P.encode_spec("m:f", (), {}, "permanent", 5.0, 5.0), raw=False)
    good[field] = value
    assert P.decode_spec(msgpack.packb(good)) is None


def test_too_big_or_unserialisable_specs_and_handoffs_are_refused():
    with pytest.raises(ValueError, match="over the limit"):
        P.encode_spec("m:f", (b"x" * (P.MAX_SPEC + 1),), {}, "permanent", 5.0, 5.0)
    with pytest.raises(TypeError):
        P.encode_spec("m:f", ({1, 2},), {}, "permanent", 5.0, 5.0)
    with pytest.raises(ValueError, match="over the limit of 100"):
        P.encode_handoff("a", "b", b"x" * 1000, limit=100)
    with pytest.raises(TypeError):
        P.encode_handoff("a", "b", object())
    assert P.decode_handoff(P.encode_handoff("a", None, [1, "two"])) == {"v": 1, "from": "a", "to": None,
                                                                          "state": [1, "two"]}
    assert P.decode_handoff(msgpack.packb({"v": 1, "from": "a", "to": 5})) is None


class Nested:
    class Inner:
        pass


def test_import_paths_name_module_level_objects_only():
    assert P.import_path(Nested) == f"{__name__}:Nested"
    assert P.resolve(P.import_path(Nested.Inner)) is Nested.Inner

    class Local:
        pass

    for bad, why in [(Local, "define it at module level"), (lambda: 0, "module level"), (3, "no module")]:
        with pytest.raises(ValueError, match=why):
            P.import_path(bad)
    with pytest.raises(ImportError):
        P.resolve("no_such_module_anywhere:x")
