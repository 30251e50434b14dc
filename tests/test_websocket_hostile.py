"""Bad input and hostile peers (issue 9, item 9): each of these was reproduced on the old code.

Real sockets on loopback; clients run in native threads (websocket-client or raw sockets).
"""

from __future__ import annotations

import socket
import struct
import time

import gevent
import msgpack
import pytest
import websocket  # websocket-client
from wshelp import (
    InThread,
    frame,
    http_raw,
    mask_frame,
    recv_close_code,
    served_fixture,  # noqa: F401  (the `served` fixture)
    upgrade_head,
    wait_until,
)

from greentree.testing import live_greenlets
from greentree.websocket import FrameError, MsgpackCodec, Options


def crashy(conn, conversation, body):
    if body == "crash":
        raise RuntimeError("handler bug (injected)")
    gevent.sleep(0.01)
    return body


# ---------------------------------------------------------------- exactly one reply per request
def test_requests_queued_behind_a_crashing_request_each_get_exactly_one_reply_or_error(served):
    s = served(crashy)

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        ws.send_binary(b"".join([]) or frame("req", "crash", id=1, c="room"))
        for i in range(2, 7):
            ws.send_binary(frame("req", i, id=i, c="room"))
        got = []
        ws.settimeout(1.0)
        try:
            while True:
                got.append(msgpack.unpackb(ws.recv(), raw=False))
        except websocket.WebSocketTimeoutException:
            pass
        ws.close()
        return got

    got = InThread(client).result(15)
    ids = sorted(f["id"] for f in got)
    assert ids == [1, 2, 3, 4, 5, 6], got  # every request answered, none twice
    by_id = {f["id"]: f for f in got}
    assert by_id[1]["t"] == "err"
    assert all(by_id[i]["t"] in ("rep", "err") for i in range(2, 7))


# ---------------------------------------------------------------- the reader yields
@pytest.mark.timeout(60)
def test_a_peer_streaming_tiny_fragments_does_not_stall_timers_or_other_connections(served):
    s = served(max_size=1 << 24, max_fragments=10**7)
    stalls = []

    def ticker():
        last = time.monotonic()
        while True:
            gevent.sleep(0.005)
            now = time.monotonic()
            stalls.append(now - last)
            last = now

    t = gevent.spawn(ticker)
    one = mask_frame(0x2, b"x", fin=False)
    cont = mask_frame(0x0, b"x", fin=False)
    chunk = cont * 20_000  # 140 KB of 1-byte fragments

    def client():
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        sock.sendall(upgrade_head())
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        sock.sendall(one)
        for _ in range(15):  # ~2 MB, ~300,000 fragments
            sock.sendall(chunk)
        sock.close()

    try:
        InThread(client).result(40)
        wait_until(lambda: s.svc.instance_count() == 0, 20, "the tree to end")
    finally:
        t.kill()
    print(f"worst stall {max(stalls) * 1000:.0f} ms")
    assert max(stalls) < 0.5, f"worst stall {max(stalls) * 1000:.0f} ms"


# ---------------------------------------------------------------- fragments are bounded
@pytest.mark.parametrize("payload", [b"x", b""], ids=["1-byte", "empty"])
def test_too_many_fragments_close_the_connection_with_1009(served, payload):
    s = served(max_fragments=100)

    def client():
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        sock.sendall(upgrade_head())
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        sock.sendall(mask_frame(0x2, payload, fin=False) + mask_frame(0x0, payload, fin=False) * 200)
        data = b""
        while True:
            more = sock.recv(4096)
            if not more:
                break
            data += more
        sock.close()
        return data

    data = InThread(client).result()
    assert data[0] == 0x88 and struct.unpack("!H", data[2:4])[0] == 1009
    wait_until(lambda: s.svc.instance_count() == 0, what="the tree to end")
    assert s.svc.stats.oversized_frames == 1


def test_fragment_memory_is_the_payload_not_an_object_per_fragment():
    from greentree.websocket._frames import MessageAssembler

    asm = MessageAssembler(1 << 20, max_fragments=10**6)
    for _ in range(100_000):
        asm.feed(b"x", False)
    assert isinstance(asm.buf, bytearray) and len(asm.buf) == 100_000
    assert asm.feed(b"y", True) == b"x" * 100_000 + b"y"
    with pytest.raises(FrameError) as e:
        MessageAssembler(10, max_fragments=3).feed(b"", False) or [MessageAssembler(10, 3)]
        asm2 = MessageAssembler(10, max_fragments=3)
        for _ in range(5):
            asm2.feed(b"", False)
    assert e.value.code == 1009


# ---------------------------------------------------------------- handshakes
def test_a_client_that_never_finishes_its_handshake_is_dropped_after_handshake_timeout(served):
    # A finished request's greenlet waits worker_idle_timeout for the next connection, then ends.
    s = served(server_kw={"handshake_timeout": 0.3, "worker_idle_timeout": 0.5})
    server = s.root.which_children()[1].child
    before = len(live_greenlets())

    def client():
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # ... and never the blank line
        t0 = time.monotonic()
        data = sock.recv(4096)
        sock.close()
        return data, time.monotonic() - t0

    data, took = InThread(client).result()
    assert data == b"" and 0.2 < took < 3.0
    wait_until(lambda: server.handling() == 0, what="the request to be dropped")
    wait_until(lambda: len(live_greenlets()) <= before, what="the request greenlet to end")


@pytest.mark.parametrize("max_connections", [None, 4])
def test_stopping_the_server_ends_a_request_stuck_in_its_handshake(served, max_connections):
    # The request greenlets are tracked (to be stopped after the trees) with a bound or without.
    s = served(close_timeout=0.1, server_kw={"handshake_timeout": 60.0, "max_connections": max_connections})
    before = len(live_greenlets())
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # ... and never the blank line
        wait_until(lambda: len(live_greenlets()) > before, what="the request greenlet")
        s.stop()  # the server waits close_timeout + 1 s for request greenlets, then kills them
        assert InThread(sock.recv, 4096).result() == b""  # closed now, not after the 60 s handshake_timeout
    finally:
        sock.close()


def test_the_server_bound_counts_handshakes_only_not_open_websockets(served):
    s = served(server_kw={"max_connections": 1})

    def client():
        a = websocket.create_connection(s.url, timeout=5)
        b = websocket.create_connection(s.url, timeout=5)  # a's request left the server's pool at its 101
        a.send_binary(frame("req", "a", id=1))
        b.send_binary(frame("req", "b", id=1))
        got = [msgpack.unpackb(ws.recv(), raw=False)["body"] for ws in (a, b)]
        a.close()
        b.close()
        return got

    assert InThread(client).result() == ["a", "b"]


def test_connections_past_max_connections_get_503_and_the_limit_is_documented(served):
    assert Options().max_connections == 10_000 and "max_connections" in Options.__doc__
    s = served(max_connections=2)

    def client():
        a = websocket.create_connection(s.url, timeout=5)
        b = websocket.create_connection(s.url, timeout=5)
        third = http_raw(s.port, upgrade_head())
        a.close()
        b.close()
        return third

    assert InThread(client).result().startswith(b"HTTP/1.1 503")


@pytest.mark.parametrize("key", ["", "not base64!!", "c2hvcnQ="], ids=["empty", "not-base64", "wrong-length"])
def test_an_invalid_sec_websocket_key_gets_400_and_no_tree(served, key):
    s = served()
    head = upgrade_head(key=key) if key else upgrade_head().replace(
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Key: ")
    answer = InThread(http_raw, s.port, head).result()
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert s.svc.instance_count() == 0 and s.svc.stats.bad_handshakes == 1


def test_a_host_that_cannot_be_idna_decoded_gets_400_not_500(served):
    s = served()
    answer = InThread(http_raw, s.port, upgrade_head(host="xn--zz")).result()
    assert answer.startswith(b"HTTP/1.1 400"), answer


@pytest.mark.timeout(60)
def test_clients_resetting_mid_headers_print_no_traceback(served, capfd):
    s = served()

    def storm():
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webs")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST mid-headers

    InThread(storm).result(30)
    ok = InThread(lambda: websocket.create_connection(s.url, timeout=5).close()).result()
    assert ok is None  # a well-behaved client is still served
    gevent.sleep(0.1)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[:2000]


# ---------------------------------------------------------------- giving up is an internal error
def test_a_tree_that_gives_up_after_repeated_handler_crashes_closes_with_1011(served):
    def always_crash(conn, conversation, body):
        raise RuntimeError("handler bug (injected)")

    s = served(always_crash, sender_max_restarts=0, connection_max_restarts=1)

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        for i in range(1, 20):  # one request at a time: each crashes the handler again
            ws.send_binary(frame("req", i, id=i, c=f"c{i}"))
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return struct.unpack("!H", data[:2])[0]
            assert msgpack.unpackb(data, raw=False)["t"] == "err"
        return None

    assert InThread(client).result(15) == 1011
    wait_until(lambda: s.svc.instance_count() == 0, what="the tree to end")
    assert s.svc.stats.close_codes == {1011: 1}


# ---------------------------------------------------------------- conversations are bounded
def test_idle_senders_are_reaped_and_their_conversation_comes_back_on_demand(served):
    s = served(sender_idle_timeout=0.2)
    assert Options().sender_idle_timeout == 60.0 and Options().max_conversations == 100

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        ws.send_binary(frame("req", "a", id=1, c="a"))
        first = msgpack.unpackb(ws.recv(), raw=False)
        return ws, first

    ws, first = InThread(client).result()
    assert first["body"] == "a"
    iid = next(iter(s.svc.connections.which_children())).child.instance_id
    wait_until(lambda: s.svc.stats.senders_reaped == 1, what="the idle sender to be reaped")
    wait_until(lambda: s.svc.whereis(iid, ("sender", "a")) is None, what="its name to be freed")

    def again():
        ws.send_binary(frame("req", "b", id=2, c="a"))
        reply = msgpack.unpackb(ws.recv(), raw=False)
        ws.close()
        return reply

    assert InThread(again).result()["body"] == "b"


def test_conversations_past_max_conversations_get_an_error_reply_and_the_connection_stays(served):
    s = served(max_conversations=3)

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        out = []
        for i in range(5):
            ws.send_binary(frame("req", i, id=i + 1, c=f"conv{i}"))
            out.append(msgpack.unpackb(ws.recv(), raw=False)["t"])
        ws.send_binary(frame("req", "again", id=99, c="conv0"))
        out.append(msgpack.unpackb(ws.recv(), raw=False)["t"])
        ws.close()
        return out

    assert InThread(client).result() == ["rep", "rep", "rep", "err", "err", "rep"]
    assert s.svc.stats.dropped == 2


# ---------------------------------------------------------------- the version field
@pytest.mark.parametrize("v", [True, 1.0, 2, "1"])
def test_the_frame_version_must_be_the_int_1(v):
    data = msgpack.packb({"v": v, "t": "msg", "body": None})
    with pytest.raises(FrameError) as e:
        MsgpackCodec().decode(data)
    assert e.value.code == 1007


def test_a_frame_with_version_true_closes_the_connection_with_1007(served):
    s = served()

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        ws.send_binary(msgpack.packb({"v": True, "t": "msg", "body": 1}))
        return recv_close_code(ws)

    assert InThread(client).result() == 1007
