"""Frames: msgpack maps with a version field, decoded under size limits."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import greentree
from greentree.websocket import VERSION, Codec, Frame, FrameError, Options

bodies = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5).map(tuple) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)


@given(body=bodies, t=st.sampled_from(["msg", "req", "rep", "err"]), conv=st.none() | st.text(max_size=8) | st.integers(0, 99))
def test_every_frame_round_trips(body, t, conv):
    codec = Codec()
    fid = None if t == "msg" else 7
    assert codec.decode(codec.encode(t, body, id=fid, conversation=conv)) == Frame(t, fid, conv, body)


def test_a_frame_carries_the_version_field():
    assert msgpack.unpackb(Codec().encode("msg", 1))["v"] == VERSION == 1


@pytest.mark.parametrize("data, code", [
    (b"\x00" * 101, 1009),                                                   # bigger than max_size
    (b"\xc1", 1007),                                                         # not msgpack
    (msgpack.packb({"v": 1, "t": "msg", "body": 1}) + b"\x00", 1007),        # trailing bytes
    (msgpack.packb([1]), 1007),                                              # not a map
    (msgpack.packb({"v": 2, "t": "msg"}), 1007),                             # another version
    (msgpack.packb({"t": "msg"}), 1007),                                     # no version
    (msgpack.packb({"v": 1, "t": "hello"}), 1007),                           # unknown type
    (msgpack.packb({"v": 1, "t": "rep", "id": "x"}), 1007),                  # id is not an int
    (msgpack.packb({"v": 1, "t": "msg", "id": 1}), 1007),                    # msg with an id
    (msgpack.packb({"v": 1, "t": "msg", "c": [1]}), 1007),                   # conversation not str/int/bytes
    (msgpack.packb({"v": 1, "t": "msg", "body": list(range(20))}), 1007),    # array longer than max_items
    (msgpack.packb({"v": 1, "t": "msg", "body": msgpack.ExtType(1, b"x")}), 1007),  # ext types refused
])
def test_a_bad_frame_raises_frame_error_with_its_close_code(data, code):
    with pytest.raises(FrameError) as info:
        Codec(max_size=100, max_items=10).decode(data)
    assert info.value.code == code and isinstance(info.value, greentree.GreentreeError)


def test_encoding_refuses_an_unknown_type_and_a_frame_bigger_than_max_size():
    with pytest.raises(ValueError, match="type must be one of"):
        Codec().encode("hello")
    with pytest.raises(ValueError, match="more than max_size 64"):
        Codec(max_size=64).encode("msg", b"x" * 100)


def test_bad_limits_and_options_are_refused_when_built():
    with pytest.raises(greentree.ChildSpecError):
        Codec(max_size=0)
    with pytest.raises(greentree.ChildSpecError, match="send_queue"):
        Options(send_queue=0)
    with pytest.raises(greentree.ChildSpecError, match="subprotocols"):
        Options(subprotocols="chat")
