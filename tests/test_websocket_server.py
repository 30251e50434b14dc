"""The server side: real websocket-client connections over loopback, one tree each."""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time

import gevent
import msgpack
import pytest
import websocket  # websocket-client
from wshelp import InThread, frame, recv_close_code, wait_until  # noqa: F401  (shared helpers)
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

import greentree
from greentree.websocket import (
    ConnectionSupervisor,
    ConversationSender,
    SenderSupervisor,
    WebSocketServer,
    WebSocketService,
)


def recv_frame(ws):
    return msgpack.unpackb(ws.recv(), raw=False)


def echo(conn, conversation, body):
    if body == "crash":
        raise RuntimeError("handler bug (injected)")
    return body


@pytest.fixture
def serve():
    """``serve(handler, **options) -> (service, url, events)``; the tree is stopped at teardown."""
    roots = []

    def start(handler=echo, app=None, **options):
        options.setdefault("ping_interval", None)
        events = gevent.queue.Queue()
        svc = WebSocketService(handler, events=events, **options)
        root = greentree.Supervisor(
            [svc.child_spec(), WebSocketServer.child_spec(svc, ("127.0.0.1", 0), app=app)], name="ws-test",
        )
        root.start()
        root.wait_started()
        roots.append(root)
        server = root.which_children()[1].child
        svc.root = root
        return svc, f"ws://127.0.0.1:{server.address[1]}/", events

    yield start
    for root in roots:
        root.stop(timeout=10)


def only_instance(svc):
    wait_until(lambda: svc.instance_count() == 1, what="one tree")
    sup = next(iter(svc.connections._children))
    return sup.instance_id, sup


def drain(events):
    out = []
    while not events.empty():
        out.append(events.get_nowait())
    return out


def events_of(events, kind):
    return [ev for ev in drain(events) if ev.kind == kind]


# ---------------------------------------------------------------- the happy path
def test_requests_get_their_replies_in_order_and_the_tree_ends_when_the_client_closes(serve):
    svc, url, events = serve()

    def client():
        ws = websocket.create_connection(url, timeout=5)
        replies = []
        for i in range(50):
            ws.send_binary(frame("req", {"seq": i}, id=i + 1, c="room"))
        for _ in range(50):
            replies.append(recv_frame(ws))
        ws.close()
        return replies

    replies = InThread(client).result()
    assert [r["body"]["seq"] for r in replies] == list(range(50))
    assert {r["t"] for r in replies} == {"rep"} and [r["id"] for r in replies] == list(range(1, 51))
    wait_until(lambda: svc.instance_count() == 0, what="the tree to end")
    assert svc.registry.count() == 0
    assert svc.stats.close_codes == {1000: 1}
    assert [e.kind for e in drain(events)] == ["connected", "disconnected", "instance_down"]


def test_the_tree_has_the_seed_shape_and_every_role_is_named_in_the_registry(serve):
    svc, url, _ = serve()

    def client(stop):
        ws = websocket.create_connection(url, timeout=5)
        ws.send_binary(frame("req", 1, id=1, c="a"))
        recv_frame(ws)
        stop.wait(10)
        ws.close()

    stop = threading.Event()
    t = InThread(client, stop)
    iid, sup = only_instance(svc)
    wait_until(lambda: svc.whereis(iid, ("sender", "a")) is not None, what="the sender")
    assert isinstance(sup, ConnectionSupervisor) and sup.strategy.value == "rest_for_one"
    assert [c.id for c in sup.which_children()] == ["connection", "sender_supervisor"]
    assert svc.whereis(iid, "supervisor") is sup
    assert svc.whereis(iid, "connection") is sup.which_children()[0].child
    assert isinstance(svc.whereis(iid, "sender_supervisor"), SenderSupervisor)
    assert isinstance(svc.whereis(iid, ("sender", "a")), ConversationSender)
    assert svc.registry.count() == 4
    stop.set()
    t.result()
    wait_until(lambda: svc.registry.count() == 0, what="names to be freed")


def test_plain_http_requests_still_reach_the_wrapped_wsgi_app(serve):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello " + environ["PATH_INFO"].encode()]

    svc, url, _ = serve(app=app)
    port = int(url.rsplit(":", 1)[1].strip("/"))

    def client():
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/page", timeout=5) as r:
            return r.status, r.read()

    assert InThread(client).result() == (200, b"hello /page")
    assert svc.instance_count() == 0


def test_a_websocket_request_without_a_key_is_refused_with_400(serve):
    svc, url, _ = serve()
    port = int(url.rsplit(":", 1)[1].strip("/"))

    def client():
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        data = s.recv(4096)
        s.close()
        return data

    assert InThread(client).result().startswith(b"HTTP/1.1 400")
    assert svc.instance_count() == 0


# ---------------------------------------------------------------- faults
def test_a_sender_crash_restarts_only_that_sender(serve):
    svc, url, events = serve()
    ctl = queue.Queue()
    first = queue.Queue()

    def client():
        ws = websocket.create_connection(url, timeout=5)
        ws.send_binary(frame("req", "x", id=1, c="a"))
        recv_frame(ws)
        first.put(True)
        assert ctl.get(timeout=10) == "crash"
        ws.send_binary(frame("req", "crash", id=2, c="a"))
        crash_reply = recv_frame(ws)
        ws.send_binary(frame("req", "y", id=3, c="a"))
        after = recv_frame(ws)
        ctl.get(timeout=10)
        ws.close()
        return crash_reply, after

    t = InThread(client)
    wait_until(lambda: not first.empty(), what="the first reply")
    iid, sup = only_instance(svc)
    conn, pool = svc.connection(iid), svc.whereis(iid, "sender_supervisor")
    sender = svc.whereis(iid, ("sender", "a"))
    ctl.put("crash")
    wait_until(lambda: svc.stats.messages_out >= 3, what="three replies")
    # Only the sender was replaced: same Connection, same pool, a new sender under the same name.
    assert sender.dead and svc.whereis(iid, ("sender", "a")) not in (None, sender)
    assert not conn.dead and not pool.dead
    assert svc.connection(iid) is conn and svc.whereis(iid, "sender_supervisor") is pool
    assert [e.data[0] for e in events_of(events, "sender_crashed")] == ["a"]
    ctl.put("done")
    crash_reply, after = t.result()
    assert crash_reply == {"v": 1, "t": "err", "id": 2, "c": "a", "body": "handler failed: RuntimeError"}
    assert after == {"v": 1, "t": "rep", "id": 3, "c": "a", "body": "y"}
    assert svc.stats.sender_crashes == 1 and svc.stats.connection_crashes == 0


def test_exceeding_the_sender_pool_intensity_restarts_the_pool_but_not_the_connection(serve):
    svc, url, events = serve(sender_max_restarts=1, sender_max_seconds=60)
    ctl = queue.Queue()

    def client():
        ws = websocket.create_connection(url, timeout=5)
        ws.send_binary(frame("req", "x", id=1, c="a"))
        recv_frame(ws)
        ctl.put("first")
        assert ctl_back.get(timeout=10) == "crash"
        for i, conv in enumerate(["a", "b", "c"]):
            ws.send_binary(frame("req", "crash", id=10 + i, c=conv))
            recv_frame(ws)
        ws.send_binary(frame("req", "still here", id=20, c="d"))
        after = recv_frame(ws)
        ws.close()
        return after

    ctl_back = queue.Queue()
    t = InThread(client)
    wait_until(lambda: not ctl.empty(), what="the first reply")
    iid, sup = only_instance(svc)
    conn, pool = svc.connection(iid), svc.whereis(iid, "sender_supervisor")
    ctl_back.put("crash")
    after = t.result()
    assert after["body"] == "still here"
    assert pool.dead and isinstance(pool.exception, greentree.RestartIntensityExceeded)
    assert svc.stats.connection_crashes == 0 and svc.stats.sender_crashes == 3
    assert svc.stats.close_codes.get(1000) == 1  # the Connection lived until the client closed
    assert conn.dead and conn.close_code == 1000


def test_a_connection_crash_ends_its_tree_cleanly_on_the_server_side(serve):
    svc, url, events = serve()
    ready = queue.Queue()

    def client():
        ws = websocket.create_connection(url, timeout=5)
        ws.send_binary(frame("req", 1, id=1, c="a"))
        recv_frame(ws)
        ready.put(True)
        return recv_close_code(ws)

    t = InThread(client)
    wait_until(lambda: not ready.empty(), what="the first reply")
    iid, sup = only_instance(svc)
    svc.connection(iid).kill(RuntimeError("injected Connection crash"), block=False)
    assert t.result() == 1011
    wait_until(lambda: sup.dead, what="the tree to end")
    assert sup.successful()  # auto_shutdown: the tree ends normally, it does not crash upward
    assert svc.registry.count() == 0 and svc.instance_count() == 0
    assert svc.stats.connection_crashes == 1
    kinds = [e.kind for e in drain(events)]
    assert "connection_crashed" in kinds and kinds[-1] == "instance_down"


def test_stop_instance_stops_a_tree_and_reports_not_found_afterwards(serve):
    svc, url, _ = serve()
    t = InThread(lambda: recv_close_code(websocket.create_connection(url, timeout=5)))
    iid, sup = only_instance(svc)
    assert svc.stop_instance(iid) is True
    assert t.result() == 1001
    assert svc.stop_instance(iid) is False
    assert svc.registry.count() == 0


def test_a_client_reset_ends_the_tree_with_1006(serve):
    svc, url, _ = serve()

    def client():
        ws = websocket.create_connection(url, timeout=5)
        ws.send_binary(frame("req", 1, id=1))
        recv_frame(ws)
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.sock.close()  # RST, no close frame

    InThread(client).result()
    wait_until(lambda: svc.instance_count() == 0 and svc.stats.connections_closed == 1, what="the tree to end")
    assert svc.stats.close_codes == {1006: 1}
    assert svc.registry.count() == 0


def raw_client(port, rcvbuf=None):
    """A blocking raw socket that did the WebSocket handshake (wsproto, client mode)."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    ws = WSConnection(ConnectionType.CLIENT)
    s.sendall(ws.send(Request(host="127.0.0.1", target="/")))
    while True:
        ws.receive_data(s.recv(4096))
        if any(isinstance(e, AcceptConnection) for e in ws.events()):
            return s, ws


def test_a_client_that_stops_reading_fails_its_connection_instead_of_growing_memory(serve):
    svc, url, events = serve(send_queue=16, write_timeout=0.5)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    hold = threading.Event()
    t = InThread(lambda: (raw_client(port, rcvbuf=4096), hold.wait(20)))
    iid, sup = only_instance(svc)
    conn = svc.connection(iid)
    assert conn.wait_connected(5)
    chunk = b"x" * 65536
    with pytest.raises((greentree.websocket.SlowConsumerError, greentree.websocket.ConnectionClosedError)):
        for _ in range(10_000):
            conn.send(chunk)
            gevent.sleep(0)
    wait_until(lambda: sup.dead, what="the tree to end")
    assert svc.stats.slow_consumers == 1 and svc.registry.count() == 0
    assert isinstance(conn.exception, greentree.websocket.SlowConsumerError)
    assert [type(e.data).__name__ for e in events_of(events, "connection_crashed")] == ["SlowConsumerError"]
    hold.set()
    t.result()


def test_a_half_open_client_is_detected_by_keepalive_and_closed(serve):
    svc, url, events = serve(ping_interval=0.1, ping_timeout=0.2)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    hold = threading.Event()
    # Completes the handshake, then neither sends nor answers pings (reads nothing).
    t = InThread(lambda: (raw_client(port), hold.wait(20)))
    iid, sup = only_instance(svc)
    wait_until(lambda: sup.dead, what="keepalive to close the connection")
    assert svc.stats.keepalive_timeouts == 1 and svc.stats.close_codes == {1011: 1}
    hold.set()
    t.result()


def test_an_idle_client_that_answers_pings_stays_connected(serve):
    svc, url, _ = serve(ping_interval=0.05, ping_timeout=0.5)

    def client():
        ws = websocket.create_connection(url, timeout=5)
        deadline = time.monotonic() + 0.6
        pings = 0
        while time.monotonic() < deadline:  # websocket-client answers pings as it reads
            opcode, _ = ws.recv_data(control_frame=True)
            pings += opcode == websocket.ABNF.OPCODE_PING
        ws.close()
        return pings

    assert InThread(client).result() >= 3
    assert svc.stats.keepalive_timeouts == 0 and svc.stats.close_codes == {1000: 1}


@pytest.mark.parametrize("payload, code, counter", [
    (("text", "hello"), 1003, "bad_frames"),
    (("binary", b"\xc1\xc1garbage"), 1007, "bad_frames"),
    (("binary", msgpack.packb({"v": 2, "t": "msg", "body": 1})), 1007, "bad_frames"),
    (("binary", msgpack.packb([1, 2, 3])), 1007, "bad_frames"),
    (("binary", msgpack.packb({"v": 1, "t": "req", "body": 1})), 1007, "bad_frames"),
    (("binary", b"\x00" * 5000), 1009, "oversized_frames"),
])
def test_a_bad_frame_closes_only_its_connection_with_a_clear_code_and_is_counted(serve, payload, code, counter):
    svc, url, _ = serve(max_size=4096)

    def client():
        good = websocket.create_connection(url, timeout=5)
        bad = websocket.create_connection(url, timeout=5)
        kind, data = payload
        (bad.send if kind == "text" else bad.send_binary)(data)
        got = recv_close_code(bad)
        good.send_binary(frame("req", "ok", id=1))
        reply = recv_frame(good)
        good.close()
        return got, reply

    got, reply = InThread(client).result()
    assert got == code and reply["body"] == "ok"
    assert getattr(svc.stats, counter) == 1
    wait_until(lambda: svc.instance_count() == 0, what="both trees to end")


def test_a_peer_flooding_one_conversation_is_closed_with_1008(serve):
    gate = gevent.event.Event()

    def slow(conn, conversation, body):
        gate.wait(5)
        return body

    svc, url, _ = serve(slow, conversation_inbox=4)

    def client():
        ws = websocket.create_connection(url, timeout=5)
        for i in range(50):
            ws.send_binary(frame("msg", i, c="a"))
        return recv_close_code(ws)

    assert InThread(client).result() == 1008
    gate.set()
    assert svc.stats.conversation_overflows == 1
    wait_until(lambda: svc.instance_count() == 0, what="the tree to end")


def test_server_shutdown_sends_every_client_a_close_frame(serve):
    svc, url, _ = serve()
    n = 20
    clients = [InThread(lambda: recv_close_code(websocket.create_connection(url, timeout=5))) for _ in range(n)]
    wait_until(lambda: svc.stats.connections_opened == n, what="all clients")
    svc.root.stop(timeout=10)
    assert [c.result() for c in clients] == [1001] * n
    assert svc.registry.count() == 0


def test_consumer_send_goes_through_the_conversation_sender_and_resolves_with_the_reply(serve):
    svc, url, _ = serve()

    def client():
        ws = websocket.create_connection(url, timeout=5)
        got = []
        for _ in range(3):
            f = recv_frame(ws)
            got.append(f)
            ws.send_binary(frame("rep", {"ack": f["body"]}, id=f["id"], c=f.get("c")))
        ws.close()
        return got

    t = InThread(client)
    iid, _ = only_instance(svc)
    assert svc.connection(iid).wait_connected(5)
    results = [svc.send(iid, "news", n) for n in range(3)]
    assert [r.get(timeout=5) for r in results] == [{"ack": 0}, {"ack": 1}, {"ack": 2}]
    assert [f["body"] for f in t.result()] == [0, 1, 2]
