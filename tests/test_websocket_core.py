"""The sans-IO ConnectionCore: frame dispatch, keepalive, close codes and request/reply correlation,
fed bytes and a clock, no socket anywhere."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Opcode
from websockets.frames import Frame as WsFrame
from websockets.protocol import State
from websockets.server import ServerProtocol

from greentree.websocket import ConnectionCore, JsonCodec, KeepaliveTimeoutError, MsgpackCodec, TextCodec


def core(codec=None, **kw):
    kw.setdefault("ping_interval", None)
    proto = ServerProtocol(state=State.OPEN, max_size=(codec or MsgpackCodec()).max_size)  # OPEN
    return ConnectionCore(proto, codec or MsgpackCodec(), **kw)


def client_frame(opcode, data, fin=True):
    return WsFrame(opcode, data, fin).serialize(mask=True, extensions=[])


def parse_server_bytes(chunks):
    """Decode the frames a core wants to send (a client's view)."""
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    c = ClientProtocol(parse_uri("ws://x/"), state=State.OPEN)
    c.receive_data(b"".join(chunks))
    return c.events_received()


def mp(t, body=None, id=None, c=None):
    d = {"v": 1, "t": t, "body": body}
    if id is not None:
        d["id"] = id
    if c is not None:
        d["c"] = c
    return msgpack.packb(d)


# ---------------------------------------------------------------- dispatch
def test_whole_messages_become_frame_actions_and_replies_resolve_their_token():
    c = core()
    rid = c.request("token-A", {"q": 1})
    out = parse_server_bytes(c.data_to_send())
    sent = msgpack.unpackb(out[0].data)
    assert sent["t"] == "req" and sent["id"] == rid
    data = client_frame(Opcode.BINARY, mp("msg", "hello", c="room")) + client_frame(Opcode.BINARY, mp("rep", 42, id=rid))
    actions = c.receive(data, now=1.0)
    assert actions[0][0] == "frame" and actions[0][1].body == "hello" and actions[0][1].conversation == "room"
    assert actions[1] == ("reply", "token-A", True, 42)
    assert c.pending == {}


def test_a_reply_nobody_waits_for_is_counted_not_delivered():
    c = core()
    assert c.receive(client_frame(Opcode.BINARY, mp("rep", 1, id=99)), now=0) == []
    assert c.late_replies == 1
    rid = c.request("t", 1)
    assert c.forget(rid) == "t"
    assert c.receive(client_frame(Opcode.BINARY, mp("err", "x", id=rid)), now=0) == [] and c.late_replies == 2


def test_the_json_codec_has_no_ids_so_request_is_refused_and_reply_sends_a_message():
    c = core(JsonCodec())
    with pytest.raises(TypeError):
        c.request("t", 1)
    c.reply(None, {"ok": True})
    (f,) = parse_server_bytes(c.data_to_send())
    assert f.opcode is Opcode.TEXT and json.loads(f.data) == {"ok": True}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=8), st.data())
def test_any_fragmentation_and_any_read_boundaries_give_the_same_messages(texts, data):
    wire = b""
    for t in texts:
        raw = t.encode()
        cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=4)))
        parts = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=False)]
        for i, p in enumerate(parts):
            wire += client_frame(Opcode.TEXT if i == 0 else Opcode.CONT, p, fin=i == len(parts) - 1)
    reads = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    c = core(TextCodec())
    got = []
    for a, b in zip([0, *reads], [*reads, len(wire)], strict=False):
        got += [act[1].body for act in c.receive(wire[a:b], now=0)]
    assert got == texts and c.ended is None


# ---------------------------------------------------------------- close codes
def test_the_peer_closing_ends_with_its_code_and_our_echo_is_queued():
    c = core()
    c.receive(client_frame(Opcode.CLOSE, Close(1000, "bye").serialize()), now=0)
    assert c.ended == (1000, "bye")
    frames = parse_server_bytes([d for d in c.data_to_send() if d])
    assert frames[0].opcode is Opcode.CLOSE


@pytest.mark.parametrize("wire, code", [
    (client_frame(Opcode.BINARY, b"\xc1"), 1007),                         # not msgpack
    (client_frame(Opcode.BINARY, mp("msg", 1, id=3)), 1007),              # a msg with an id
    (client_frame(Opcode.TEXT, b"hi"), 1003),                             # text to the binary codec
    (client_frame(Opcode.BINARY, b"x" * 2000), 1009),                     # over max_size
    (WsFrame(Opcode.BINARY, b"x").serialize(mask=False, extensions=[]), 1002),  # unmasked client frame
    (client_frame(Opcode.CONT, b"x"), 1002),                              # continuation out of nowhere
])
def test_bad_input_ends_with_its_close_code_and_queues_the_close_frame(wire, code):
    c = core(MsgpackCodec(max_size=1024))
    assert c.receive(wire, now=0) == []
    assert c.ended[0] == code
    frames = parse_server_bytes([d for d in c.data_to_send() if d])
    assert frames and frames[-1].opcode is Opcode.CLOSE and Close.parse(frames[-1].data).code == code


def test_invalid_utf8_in_a_text_message_is_1007():
    c = core(TextCodec())
    c.receive(client_frame(Opcode.TEXT, b"\xff"), now=0)
    assert c.ended[0] == 1007


def test_fragments_past_max_fragments_are_1009_even_when_empty():
    c = core(TextCodec(), max_fragments=10)
    wire = client_frame(Opcode.TEXT, b"", fin=False) + client_frame(Opcode.CONT, b"", fin=False) * 20
    c.receive(wire, now=0)
    assert c.ended[0] == 1009


def test_eof_without_a_close_frame_is_1006():
    c = core()
    c.receive_eof()
    assert c.ended[0] == 1006


# ---------------------------------------------------------------- keepalive, on a fake clock
def test_keepalive_pings_after_silence_and_gives_up_after_ping_timeout(fake_clock):
    c = core(ping_interval=10.0, ping_timeout=5.0, now=fake_clock())
    assert c.tick(fake_clock.advance(4)) == pytest.approx(6)   # not yet: wake me in 6 s
    assert c.data_to_send() == []
    assert c.tick(fake_clock.advance(6)) == pytest.approx(5)   # silent 10 s: a ping, 5 s to answer
    (ping,) = parse_server_bytes(c.data_to_send())
    assert ping.opcode is Opcode.PING
    assert c.tick(fake_clock.advance(3)) == pytest.approx(2)
    with pytest.raises(KeepaliveTimeoutError):
        c.tick(fake_clock.advance(2))


def test_any_traffic_counts_as_life_and_resets_keepalive(fake_clock):
    c = core(ping_interval=10.0, ping_timeout=5.0, now=fake_clock())
    c.tick(fake_clock.advance(10))
    c.data_to_send()
    c.receive(client_frame(Opcode.PONG, b""), now=fake_clock.advance(1))
    assert c.tick(fake_clock()) == pytest.approx(10) and c.data_to_send() == []


def test_keepalive_off_never_asks_for_a_wakeup():
    assert core(ping_interval=None).tick(1e9) is None
