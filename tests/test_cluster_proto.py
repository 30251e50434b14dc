"""The cluster's pure decisions: frames, envelopes, authentication, the lease
deadline, the membership state machine, the node view."""

from __future__ import annotations

import itertools
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greentree._cluster_proto import (
    DIR_ACCEPTOR,
    DIR_CONNECTOR,
    KINDS,
    VERSION,
    FrameReader,
    LeaseClock,
    Membership,
    NodeInfo,
    NodeView,
    ProtocolError,
    backoff,
    decode_envelope,
    decode_record,
    default_margin,
    encode_envelope,
    encode_record,
    node_info,
    open_frame,
    seal,
    session_key,
)

KEY = session_key(b"secret-1234", b"a" * 16, b"c" * 16)

msgpack_data = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(msg=msgpack_data, token=st.integers(0, 2**62), name=st.text(min_size=1))
@settings(max_examples=200, deadline=None)
def test_every_msgpack_message_round_trips_through_a_sealed_frame(msg, token, name):
    payload = encode_envelope({"k": "send", "to": name, "tok": token, "m": msg})
    frame = seal(KEY, DIR_CONNECTOR, 7, payload)
    [(mac, body)] = list(FrameReader().feed(frame))
    env = open_frame(KEY, DIR_CONNECTOR, 7, mac, body)
    assert env == {"v": VERSION, "k": "send", "to": name, "tok": token, "m": msg}


@given(data=st.binary(max_size=200), cut=st.integers(1, 50))
@settings(max_examples=200, deadline=None)
def test_frames_split_anywhere_reassemble(data, cut):
    frames = seal(KEY, DIR_ACCEPTOR, 1, data) + seal(KEY, DIR_ACCEPTOR, 2, data[::-1])
    r = FrameReader()
    out = []
    for i in range(0, len(frames), cut):
        out += [p for _m, p in r.feed(frames[i:i + cut])]
    assert out == [data, data[::-1]]


def test_a_frame_is_bound_to_its_key_direction_and_sequence_number():
    payload = encode_envelope({"k": "cast", "to": "x", "tok": 1, "m": 1})
    [(mac, body)] = list(FrameReader().feed(seal(KEY, DIR_CONNECTOR, 3, payload)))
    open_frame(KEY, DIR_CONNECTOR, 3, mac, body)
    other = session_key(b"secret-1234", b"b" * 16, b"c" * 16)
    for key, direction, seq in [(other, DIR_CONNECTOR, 3), (KEY, DIR_ACCEPTOR, 3), (KEY, DIR_CONNECTOR, 4)]:
        with pytest.raises(ProtocolError, match="not authenticated"):
            open_frame(key, direction, seq, mac, body)
    with pytest.raises(ProtocolError, match="not authenticated"):
        open_frame(KEY, DIR_CONNECTOR, 3, mac, body[:-1] + bytes([body[-1] ^ 0xFF]))


def test_an_oversized_frame_is_refused_from_its_header_alone():
    r = FrameReader(max_frame=100)
    with pytest.raises(ProtocolError, match="exceeds the limit of 100"):
        list(r.feed(struct.pack(">I", 101)))


GOOD = {
    "hello": {"nonce": b"n" * 16},
    "auth": {"nonce": b"n" * 16, "node": "a", "inc": 3},
    "call": {"to": "x", "tok": 1, "id": 2, "t": 5.0, "m": None},
    "cast": {"to": "x", "tok": 1, "m": [1]},
    "send": {"to": "x", "tok": 1, "m": {"a": 1}},
    "reply": {"id": 1, "ok": True, "m": "r"},
    "pub": {"topic": "t", "m": 1},
}


def test_the_table_of_good_envelopes_covers_every_kind():
    assert set(GOOD) == set(KINDS)
    for kind, fields in GOOD.items():
        assert decode_envelope(encode_envelope({"k": kind, **fields}))["k"] == kind


@pytest.mark.parametrize("kind,field", [(k, f) for k, fs in GOOD.items() for f in fs])
def test_an_envelope_missing_a_field_or_with_a_wrong_type_is_refused(kind, field):
    fields = dict(GOOD[kind])
    del fields[field]
    with pytest.raises(ProtocolError, match=f"lacks field {field!r}"):
        decode_envelope(encode_envelope({"k": kind, **fields}))
    if KINDS[kind][field] != (object,):
        fields[field] = ["wrong"] if not isinstance(GOOD[kind][field], list) else "wrong"
        with pytest.raises(ProtocolError, match="wrong type"):
            decode_envelope(encode_envelope({"k": kind, **fields}))


@pytest.mark.parametrize("payload,match", [
    (b"\xc1", "undecodable"),
    (msgpack.packb([1, 2]), "must be a map"),
    (msgpack.packb({"v": 2, "k": "cast"}), "version 2"),
    (msgpack.packb({"k": "cast"}), "version None"),
    (msgpack.packb({"v": VERSION, "k": "exec"}), "unknown envelope kind"),
    (msgpack.packb({"v": VERSION, "k": "auth", "nonce": b"n", "node": "a", "inc": True}), "wrong type"),
    (msgpack.packb({1: 2}), "undecodable"),  # non-str map keys are refused by strict_map_key
    (msgpack.ExtType(1, b"x") and msgpack.packb({"v": VERSION, "k": "cast", "to": "x", "tok": 1,
                                                 "m": msgpack.ExtType(1, b"x")}), "undecodable"),
])
def test_bad_envelopes_are_refused(payload, match):
    with pytest.raises(ProtocolError, match=match):
        decode_envelope(payload)


def test_decoding_limits_lengths():
    big = encode_envelope({"k": "cast", "to": "x", "tok": 1, "m": "y" * 1000})
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_envelope(big, max_len=100)


def test_a_message_that_is_not_msgpack_data_is_a_type_error():
    with pytest.raises(TypeError, match="msgpack"):
        encode_envelope({"k": "send", "to": "x", "tok": 1, "m": object()})


# ---------------------------------------------------------------- lease deadline
@given(st.lists(st.tuples(st.floats(0, 1000), st.floats(1, 30)), max_size=20), st.floats(0, 1100))
def test_the_deadline_is_the_latest_send_time_plus_ttl_minus_margin(refreshes, now):
    c = LeaseClock(margin=0.5)
    for sent, ttl in refreshes:
        c.refreshed(sent, ttl)
    expected = max((s + t - 0.5 for s, t in refreshes), default=float("-inf"))
    assert c.deadline == expected
    assert c.is_member(now) == (now < expected)
    c.lost()
    assert not c.is_member(now)


def test_the_margin_is_a_fifth_of_the_ttl_at_most_one_second():
    assert default_margin(2.0) == 0.4 and default_margin(30.0) == 1.0
    with pytest.raises(ValueError):
        LeaseClock(-1)


# ---------------------------------------------------------------- membership
STATES = ["connecting", "up", "fenced", "stopped"]
EVENTS = ["joined", "deadline", "lost", "stop"]


@pytest.mark.parametrize("state,event", list(itertools.product(STATES, EVENTS)))
def test_every_state_and_event_pair(state, event):
    m = Membership()
    m.state = state
    m.incarnation = 5
    expected = Membership.TABLE.get((state, event))
    if expected is None:
        with pytest.raises(ValueError, match=f"not valid in state {state!r}"):
            m.handle(event, incarnation=9)
        assert m.state == state and m.incarnation == 5
    else:
        assert m.handle(event, incarnation=9) == expected == m.state


def test_a_rejoin_needs_a_greater_incarnation():
    m = Membership()
    m.handle("joined", incarnation=5)
    m.handle("lost")
    with pytest.raises(ValueError, match="not greater"):
        m.handle("joined", incarnation=5)
    assert m.state == "fenced"
    m.handle("joined", incarnation=6)
    assert m.history == [("connecting", "up"), ("up", "fenced"), ("fenced", "up")]


# ---------------------------------------------------------------- node view
def info(name, inc):
    return NodeInfo(name, inc, ("127.0.0.1", 1000 + inc), 0.0)


@given(st.lists(st.tuples(st.sampled_from(["put", "delete", "sync", "clear"]), st.sampled_from("abc"),
                          st.integers(1, 6)), max_size=40))
@settings(max_examples=300, deadline=None)
def test_node_view_notifications_alternate_and_never_resurrect_a_dead_incarnation(ops):
    v = NodeView()
    up: dict = {}
    dead: dict = {}
    for op, name, inc in ops:
        if op == "put":
            notes = v.put(info(name, inc))
        elif op == "delete":
            notes = v.delete(name, None, "lease expired")
        elif op == "sync":
            notes = v.sync([info(name, inc)], "lease expired")
        else:
            notes = v.clear("fenced")
        for note in notes:
            if note[0] == "nodeup":
                assert note[1] not in up, f"two nodeups for {note[1]}"
                up[note[1]] = v.nodes[note[1]].incarnation
                assert up[note[1]] > dead.get(note[1], 0)
            else:
                assert note[1] in up, f"nodedown for {note[1]} without nodeup"
                if note[2] != "fenced":
                    dead[note[1]] = max(dead.get(note[1], 0), up[note[1]])
                del up[note[1]]
        assert {n: i.incarnation for n, i in v.nodes.items()} == up
        for n, d in dead.items():
            assert v.is_stale(n, d)


def test_records_decode_or_are_ignored():
    rec = encode_record({"addr": ["h", 1], "since": 1.5})
    assert node_info("a", decode_record(rec), 7) == NodeInfo("a", 7, ("h", 1), 1.5)
    assert decode_record(b"\xc1") is None and decode_record(msgpack.packb({"v": 9})) is None
    assert node_info("a", {"addr": "h:1", "since": 1}, 7) is None
    assert node_info("a", {"addr": ["h", 1], "since": "x"}, 7) is None


def test_backoff_doubles_and_is_capped():
    assert [backoff(i, 0.1, 1.0) for i in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff(10_000) == 1.0
