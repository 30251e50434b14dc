"""The ConnectionCore's direct path for common data frames (parsed and serialised without
websockets' generator parser) against websockets' own path: any frames, any read boundaries,
the same messages, replies, close codes and bytes on the wire."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.protocol import State
from websockets.server import ServerProtocol

from greentree.websocket import ConnectionCore, JsonCodec, MsgpackCodec, TextCodec

pytestmark = pytest.mark.timeout(120)

MAX_SIZE = 300


def make_core(direct: bool, codec_name: str) -> ConnectionCore:
    codec = {"msgpack": MsgpackCodec, "json": JsonCodec, "text": TextCodec}[codec_name](max_size=MAX_SIZE)
    proto = ServerProtocol(state=State.OPEN, max_size=MAX_SIZE)
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


@st.composite
def frames(draw):
    kind = draw(st.sampled_from(["text", "binary", "binary", "binary", "fragmented", "ping", "pong", "close",
                                 "bad-opcode", "rsv", "unmasked", "long16", "cont"]))
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
        return wire(9, data[:20])
    if kind == "pong":
        return wire(10, data[:20])
    if kind == "close":
        return wire(8, struct.pack("!H", 1000) + b"bye")
    if kind == "bad-opcode":
        return wire(3, data[:10])
    if kind == "rsv":
        return wire(2, data[:10], rsv=draw(st.sampled_from([1, 2, 4])))
    return wire(2, data[:10], masked=False)


def drive(direct, codec_name, chunks):
    c = make_core(direct, codec_name)
    seen = []
    for i, chunk in enumerate(chunks):
        actions = c.receive(chunk, now=float(i))
        seen.append([a if a[0] == "frame" else (a[0], a[1], a[2], a[3]) for a in actions])
        seen.append(b"".join(c.data_to_send()))
        if c.ended is not None:
            break
    proto = c.proto
    return seen, c.ended, proto.state, proto.close_rcvd, type(proto.parser_exc), c.messages_in, c.late_replies


@settings(max_examples=300, deadline=None)
@given(st.lists(frames(), min_size=1, max_size=8), st.sampled_from(["msgpack", "json", "text"]), st.data())
def test_direct_and_websockets_paths_agree_on_any_frames_and_read_boundaries(wire_frames, codec_name, data):
    stream = b"".join(wire_frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    fast, slow = drive(True, codec_name, chunks), drive(False, codec_name, chunks)
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
