"""The ConnectionCore's direct path for common data frames (parsed and serialised without
websockets' generator parser) against websockets' own path: any frames, any read boundaries,
the same messages, replies, close codes and bytes on the wire.

The direct side runs on an :class:`OpenServerProtocol` (websockets' protocol made only when a
frame needs it; pings, pongs and the peer's close answered without it), the other on websockets'
``ServerProtocol`` from the start; after the frames, the direct side's protocol is made and both
are compared again, then fed the same bytes and EOF."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.protocol import State
from websockets.server import ServerProtocol

from greentree.websocket import ConnectionCore, JsonCodec, MsgpackCodec, TextCodec
from greentree.websocket._protocol import OpenServerProtocol

pytestmark = pytest.mark.timeout(120)

MAX_SIZE = 300


def make_core(direct: bool, codec_name: str) -> ConnectionCore:
    codec = {"msgpack": MsgpackCodec, "json": JsonCodec, "text": TextCodec}[codec_name](max_size=MAX_SIZE)
    proto = OpenServerProtocol(MAX_SIZE) if direct else ServerProtocol(state=State.OPEN, max_size=MAX_SIZE)
    c = ConnectionCore(proto, codec, ping_interval=None, max_fragments=4)
    c._direct = direct and c._direct
    return c


def test_the_direct_path_is_on_for_a_plain_server_side_and_off_when_disabled():
    assert make_core(True, "msgpack")._direct is True
    assert make_core(False, "msgpack")._direct is False


def wire(opcode: int, payload: bytes, *, fin=True, rsv=0, masked=True, long16=False, mask=b"\x01\x02\x03\x04"):
    """One client frame, possibly malformed (reserved bits, unmasked, a 16-bit length for a short payload)."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    m = 0x80 if masked else 0
    if n < 126 and not long16:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def envelope(t, body, id=None, c=None):
    d = {"v": 1, "t": t, "body": body}
    if id is not None:
        d["id"] = id
    if c is not None:
        d["c"] = c
    return msgpack.packb(d)


payloads = st.one_of(
    st.builds(envelope, st.sampled_from(["msg", "req", "rep"]), st.integers(0, 9), st.integers(1, 3),
              st.sampled_from([None, "a", 7])),
    st.builds(envelope, st.just("req"), st.binary(max_size=200), st.integers(1, 3)),  # 126-form lengths
    st.text(max_size=20).map(lambda t: t.encode()),
    st.binary(max_size=20),
    st.just(b"\xff\xfe"),  # not UTF-8
    st.binary(min_size=MAX_SIZE + 1, max_size=MAX_SIZE + 2),  # too big
)


close_payloads = st.one_of(
    st.sampled_from([b"", b"\x03", struct.pack("!H", 1000) + b"bye", struct.pack("!H", 1001),
                     struct.pack("!H", 999), struct.pack("!H", 1005), struct.pack("!H", 3000) + b"\xff\xfe",
                     struct.pack("!H", 4999) + "é".encode(), struct.pack("!H", 1000) + b"r" * 123]),
    st.builds(lambda code, reason: struct.pack("!H", code) + reason, st.integers(0, 5999),
              st.text(max_size=30).map(lambda t: t.encode()[:60])),
)


@st.composite
def frames(draw):
    kind = draw(st.sampled_from(["text", "binary", "binary", "binary", "fragmented", "ping", "pong", "close",
                                 "close", "bad-opcode", "rsv", "unmasked", "long16", "cont", "control-bad"]))
    data = draw(payloads)
    if kind == "text":
        return wire(1, data)
    if kind == "binary":
        return wire(2, data)
    if kind == "long16":
        return wire(draw(st.sampled_from([1, 2])), data, long16=True)
    if kind == "fragmented":
        cut = draw(st.integers(0, len(data)))
        return wire(draw(st.sampled_from([1, 2])), data[:cut], fin=False) + wire(0, data[cut:])
    if kind == "cont":
        return wire(0, data[:10])  # a continuation nobody started: 1002
    if kind == "ping":
        return wire(9, data[:draw(st.sampled_from([0, 20, 125]))])
    if kind == "pong":
        return wire(10, data[:20])
    if kind == "close":
        return wire(8, draw(close_payloads))
    if kind == "control-bad":  # a control frame websockets fails: too long, fragmented, unmasked, 16-bit length
        op = draw(st.sampled_from([8, 9, 10]))
        return draw(st.sampled_from([wire(op, b"x" * 126), wire(op, b"ab", fin=False), wire(op, b"ab", masked=False),
                                     wire(op, b"ab", long16=True), wire(op, b"ab", rsv=4)]))
    if kind == "bad-opcode":
        return wire(3, data[:10])
    if kind == "rsv":
        return wire(2, data[:10], rsv=draw(st.sampled_from([1, 2, 4])))
    return wire(2, data[:10], masked=False)


def protocol_state(proto):
    return (proto.state, proto.close_rcvd, proto.close_sent, proto.close_rcvd_then_sent, proto.eof_sent,
            proto.current_size, proto.expect_continuation_frame, type(proto.parser_exc), list(proto.events))


def drive(direct, codec_name, chunks, tail=b""):
    c = make_core(direct, codec_name)
    seen = []
    for i, chunk in enumerate(chunks):
        actions = c.receive(chunk, now=float(i))
        seen.append([a if a[0] == "frame" else (a[0], a[1], a[2], a[3]) for a in actions])
        seen.append(b"".join(c.data_to_send()))
        if c.ended is not None:
            break
    proto = c.proto
    seen.append((c.ended, protocol_state(proto), c.messages_in, c.late_replies))
    # websockets' own protocol, made now on the direct side: the same state, and the same from here on.
    real = proto.real() if isinstance(proto, OpenServerProtocol) else proto
    assert isinstance(real, ServerProtocol) and c.proto is real
    seen.append(protocol_state(real))
    actions = c.receive(tail, now=99.0)
    seen.append([a if a[0] == "frame" else (a[0], a[1], a[2], a[3]) for a in actions])
    c.receive_eof()
    seen.append((b"".join(c.data_to_send()), c.ended, protocol_state(real), c.closing_handshake_done))
    return seen


@settings(max_examples=300, deadline=None)
@given(st.lists(frames(), min_size=1, max_size=8), st.sampled_from(["msgpack", "json", "text"]), st.data())
def test_direct_and_websockets_paths_agree_on_any_frames_and_read_boundaries(wire_frames, codec_name, data):
    stream = b"".join(wire_frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    tail = data.draw(frames())
    fast, slow = drive(True, codec_name, chunks, tail), drive(False, codec_name, chunks, tail)
    assert fast == slow


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["msg", "req", "rep", "err"]),
                          st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=30), st.binary(max_size=70000))),
                min_size=1, max_size=5))
def test_direct_and_websockets_paths_write_the_same_bytes(messages):
    codec = MsgpackCodec(max_size=1 << 20)
    out = []
    for direct in (True, False):
        c = ConnectionCore(ServerProtocol(state=State.OPEN, max_size=1 << 20), codec, ping_interval=None)
        c._direct = direct
        for i, (t, body) in enumerate(messages):
            c.send(t, body, id=None if t == "msg" else i, conversation="c")
        out.append(b"".join(c.data_to_send()))
    assert out[0] == out[1]


def test_text_codecs_write_the_same_bytes_on_both_paths():
    for codec in (JsonCodec(), TextCodec()):
        out = []
        for direct in (True, False):
            c = ConnectionCore(ServerProtocol(state=State.OPEN), codec, ping_interval=None)
            c._direct = direct
            c.send("msg", "é" * 200)
            c.send("msg", "x")
            out.append(b"".join(c.data_to_send()))
        assert out[0] == out[1] and out[0].startswith(b"\x81\x7e")


def test_a_connection_that_exchanges_data_pings_and_the_peers_close_never_makes_a_protocol():
    c = make_core(True, "msgpack")
    proto = c.proto
    actions = c.receive(wire(2, envelope("msg", 1)) + wire(9, b"hi") + wire(10, b"") + wire(2, envelope("req", 2, 5)),
                        now=1.0)
    assert [a[1].body for a in actions] == [1, 2]
    c.send("rep", 2, id=5)
    assert c.receive(wire(8, struct.pack("!H", 1000) + b"bye") + wire(2, envelope("msg", 3)), now=2.0) == []
    assert c.ended == (1000, "bye") and c.closing_handshake_done
    assert c.proto is proto and proto._real is None  # never needed
    rep = envelope("rep", 2, 5)
    assert c.data_to_send() == [b"\x8a\x02hi", b"\x82" + bytes([len(rep)]) + rep, b"\x88\x05\x03\xe8bye", b""]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["tick", "send", "ping-in"]), min_size=1, max_size=6), st.data())
def test_keepalive_pings_are_the_same_bytes_with_and_without_the_protocol(steps, data):
    out = []
    for direct in (True, False):
        proto = OpenServerProtocol(1 << 20) if direct else ServerProtocol(state=State.OPEN, max_size=1 << 20)
        c = ConnectionCore(proto, MsgpackCodec(), ping_interval=1.0, ping_timeout=100.0, now=0.0)
        now, wrote = 0.0, []
        for step in steps:
            now += 1.5
            if step == "tick":
                c.tick(now)
            elif step == "send":
                c.send("msg", now)
            else:
                c.receive(wire(9, b"p"), now)
            wrote.append(b"".join(c.data_to_send()))
        out.append((wrote, c.proto.state))
        assert not direct or c.proto._real is None
    assert out[0] == out[1]
