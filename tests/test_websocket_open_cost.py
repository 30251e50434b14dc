"""What an upgrade, a first message and an idle sender cost: the cheap paths of issue 9 item 8.

* the common handshake is checked from the WSGI environ (``quick_accept``): it accepts only
  what websockets' full handshake accepts, with the same accept value;
* a connection tree starts inline, without yielding (no greenlet spawned for its start), and
  so do the sender pool and a conversation's sender on the first message;
* a Connection or a sender stopped before it ever ran still closes its socket / answers what
  was queued for it;
* idle senders are reaped by one timer per idle period, and a busy one is never reaped.
"""

from __future__ import annotations

import base64
import socket
import time

import gevent
import msgpack
import pytest
import websocket  # websocket-client
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from wshelp import (
    InThread,
    frame,
    http_raw,
    mask_frame,
    served_fixture,  # noqa: F401  (the `served` fixture)
    upgrade_head,
    wait_until,
)

from greentree.websocket import ConnectionClosedError, WebSocketService
from greentree.websocket._handler import ServerTransport, request_bytes
from greentree.websocket._protocol import PROTOCOL_LOGGER, accept_response, quick_accept

GOOD = {
    "REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/ws", "QUERY_STRING": "",
    "HTTP_HOST": "127.0.0.1:8000", "HTTP_UPGRADE": "websocket", "HTTP_CONNECTION": "Upgrade",
    "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==", "HTTP_SEC_WEBSOCKET_VERSION": "13",
}


def full_handshake(environ):
    """What websockets' ServerProtocol answers (the path every unusual request takes)."""
    proto = ServerProtocol(logger=PROTOCOL_LOGGER)
    try:
        proto.receive_data(request_bytes(environ))
        parsed = proto.events_received()
        response = proto.accept(parsed[0])
    except Exception:
        return None
    if response.status_code != 101:
        return None
    return response.headers["Sec-WebSocket-Accept"]


keys = st.one_of(
    st.binary(min_size=16, max_size=16).map(lambda b: base64.b64encode(b).decode()),
    st.binary(min_size=0, max_size=20).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= -_!", max_size=26),
)
tokens = st.sampled_from(["Upgrade", "upgrade", "keep-alive, Upgrade", "Upgrade, keep-alive", "close",
                          "keep-alive", "Up grade", "Upgrade,", ",Upgrade", "foo bar, upgrade", "UPGRADE", ""])


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(["GET", "GET", "GET", "POST", "HEAD"]),
    protocol=st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
    connection=tokens,
    upgrade=st.sampled_from(["websocket", "WebSocket", "websocket, h2c", "h2c", "", "websocket "]),
    key=keys,
    version=st.sampled_from(["13", "13", "8", "13, 8", ""]),
    subprotocol=st.sampled_from([None, None, "chat", "a b"]),
)
def test_the_quick_handshake_accepts_only_what_websockets_accepts_with_the_same_key(
        method, protocol, connection, upgrade, key, version, subprotocol):
    env = dict(GOOD, REQUEST_METHOD=method, SERVER_PROTOCOL=protocol, HTTP_CONNECTION=connection,
               HTTP_UPGRADE=upgrade, HTTP_SEC_WEBSOCKET_KEY=key, HTTP_SEC_WEBSOCKET_VERSION=version)
    if subprotocol is not None:
        env["HTTP_SEC_WEBSOCKET_PROTOCOL"] = subprotocol
    quick = quick_accept(env)
    if quick is not None:
        assert full_handshake(env) == quick
    plain = (method == "GET" and protocol == "HTTP/1.1" and version == "13" and subprotocol is None
             and upgrade == "websocket" and connection in ("Upgrade", "keep-alive, Upgrade", "UPGRADE")
             and len(key) == 24 and key.endswith("==") and full_handshake(env) is not None
             and key[21] in "AQgw")
    if plain:  # the common case takes the quick path
        assert quick is not None


def test_the_quick_101_is_a_complete_response_websockets_clients_accept():
    head = accept_response(quick_accept(GOOD))
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and head.endswith(b"\r\n\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head


def test_a_real_client_opens_through_the_quick_path_and_a_subprotocol_through_the_full_one(served):
    plain = served(handler=lambda conn, conversation, body: body)
    negotiating = served(handler=lambda conn, conversation, body: conn.request_info.path, subprotocols=("chat",))

    def client():
        ws = websocket.create_connection(plain.url, timeout=5)
        ws.send_binary(frame("req", "hi", id=1))
        one = msgpack.unpackb(ws.recv(), raw=False)["body"]
        ws.close()
        ws = websocket.create_connection(negotiating.url, timeout=5, subprotocols=["chat"])  # full handshake
        sub = ws.getsubprotocol()
        ws.send_binary(frame("req", "again", id=1))
        two = msgpack.unpackb(ws.recv(), raw=False)["body"]
        ws.close()
        return one, sub, two

    assert InThread(client).result() == ("hi", "chat", "/")
    wait_until(lambda: plain.svc.instance_count() == negotiating.svc.instance_count() == 0, what="the trees to end")


# ---------------------------------------------------------------- the tree starts inline
@pytest.fixture
def service():
    svc = WebSocketService(lambda conn, conversation, body: body, ping_interval=None)
    with svc.supervisor():
        yield svc


def transport_on_a_socketpair():
    ours, theirs = socket.socketpair()
    from gevent import socket as gsocket

    sock = gsocket.socket(fileno=ours.detach())
    t = ServerTransport(sock, ServerProtocol(state=OPEN, logger=PROTOCOL_LOGGER), ("peer", 1))
    return t, theirs


def test_opening_a_tree_and_its_first_conversation_never_yield(service):
    ran = []
    marker = gevent.spawn(ran.append, "other greenlets ran")
    t, theirs = transport_on_a_socketpair()
    try:
        sup, conn = service.start_instance(t)  # the whole tree: supervisor, Connection, two names
        iid = conn.instance_id
        assert service.whereis(iid, "supervisor") is sup and service.whereis(iid, "connection") is conn
        assert [c.id for c in sup.which_children()] == ["connection"]  # the sender pool waits for a conversation
        sender = service._sender(iid, "c")  # the first message of a conversation: pool and sender
        assert service.whereis(iid, "sender_supervisor") is not None
        assert service.whereis(iid, ("sender", "c")) is sender
        assert ran == [], "starting the tree or its first sender yielded to the hub"
    finally:
        marker.join()
        t.mark_accepted()
        theirs.close()
    assert ran == ["other greenlets ran"]
    wait_until(lambda: service.instance_count() == 0, what="the tree to end after EOF")


def test_a_connection_stopped_before_it_ever_ran_closes_its_socket_and_its_tree_ends(service):
    t, theirs = transport_on_a_socketpair()
    t.mark_accepted()  # as after the 101: the tree owns the socket
    sup, conn = service.start_instance(t)
    conn.kill(block=False)  # before its first switch: its body never runs
    assert conn.dead and conn._core is None
    theirs.settimeout(5)
    assert theirs.recv(10) == b""  # EOF: the socket was closed, not left to the garbage collector
    theirs.close()
    wait_until(lambda: service.instance_count() == 0 and sup.dead, what="the tree to end")
    assert service.registry.count() == 0


def test_a_sender_stopped_before_it_ever_ran_still_answers_what_was_queued(service):
    t, theirs = transport_on_a_socketpair()
    t.mark_accepted()
    sup, conn = service.start_instance(t)
    ar = service.send(conn.instance_id, "c", "body")  # starts the sender inline and queues the message
    sender = service.whereis(conn.instance_id, ("sender", "c"))
    sender.kill(block=False)
    with pytest.raises(ConnectionClosedError):
        ar.get(timeout=5)
    theirs.close()
    wait_until(lambda: service.instance_count() == 0, what="the tree to end")


def _ended_tree(service, talk: bool):
    """Open a tree on a socketpair, optionally start a conversation's sender, close the peer's
    side; return the exits in the order they were reported and how many greenlets the
    supervisors' mailboxes spawned to stop it."""
    from greentree._base import SupervisorBase

    t, theirs = transport_on_a_socketpair()
    t.mark_accepted()
    sup, conn = service.start_instance(t)
    iid = conn.instance_id
    if talk:
        service._sender(iid, "c")
    order = []
    members = [("connection", conn), ("tree", sup)]
    if talk:
        members += [("senders", service.whereis(iid, "sender_supervisor")), ("sender", service.whereis(iid, ("sender", "c")))]
    for name, member in members:
        member.gt_add_exit_hook(lambda m, name=name: order.append((name, m._gt_exit_rec.kind)))
    gevent.sleep(0)  # the Connection reads
    spawned = []
    real = SupervisorBase._mb_spawn_worker

    def counting(self):
        spawned.append(str(self))
        real(self)

    SupervisorBase._mb_spawn_worker = counting
    try:
        theirs.close()  # EOF: the Connection ends (1006) and its tree shuts down
        wait_until(lambda: sup.dead and service.instance_count() == 0, what="the tree to end")
    finally:
        SupervisorBase._mb_spawn_worker = real
    assert service.registry.count() == 0
    return order, spawned


def test_a_tree_whose_connection_never_talked_ends_in_the_connections_own_greenlet(service):
    order, spawned = _ended_tree(service, talk=False)
    assert order == [("connection", "normal"), ("tree", "shutdown")]
    assert spawned == []  # nothing left to wait for: the automatic shutdown ran inline


def test_a_tree_with_a_sender_still_stops_it_before_the_tree_ends(service):
    order, spawned = _ended_tree(service, talk=True)
    assert order == [("connection", "normal"), ("sender", "shutdown"), ("senders", "shutdown"), ("tree", "shutdown")]
    # The tree and the pool stop by events: the sender's exit, in the sender's own greenlet,
    # finishes the pool, whose exit finishes the tree.  No greenlet waits for either.
    assert spawned == []


# ---------------------------------------------------------------- reaping idle senders
def test_a_busy_sender_is_never_reaped_and_an_idle_one_is_after_the_timeout(served):
    s = served(sender_idle_timeout=0.3)

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        for i in range(12):  # 0.6 s of traffic, a message every 50 ms: never idle for 0.3 s
            ws.send_binary(frame("req", i, id=i + 1, c="a"))
            assert msgpack.unpackb(ws.recv(), raw=False)["body"] == i
            time.sleep(0.05)
        return ws

    ws = InThread(client).result(15)
    assert s.svc.stats.senders_reaped == 0
    wait_until(lambda: s.svc.stats.senders_reaped == 1, what="the idle sender to be reaped")
    ws.close()
    wait_until(lambda: s.svc.instance_count() == 0, what="the tree to end")


def test_a_child_class_promising_a_nonblocking_constructor_starts_inline_unless_it_has_a_handshake():
    from greentree import ChildSpec, DynamicSupervisor, Greenlet

    class Plain(Greenlet):
        def _run(self):
            gevent.sleep(10)

    class Promised(Plain):
        nonblocking_init = True

    assert ChildSpec("a", Plain).may_block  # a constructor may yield: started from a greenlet of its own
    assert not ChildSpec("b", Promised).may_block
    assert ChildSpec("c", Promised, handshake=True).may_block
    ran = []
    marker = gevent.spawn(ran.append, 1)
    with DynamicSupervisor() as sup:
        child = sup.start_child(ChildSpec("b", Promised))
        assert ran == [] and not child.dead  # started here, without a switch
    marker.join()


def test_a_connection_knows_its_peer_and_request_before_its_greenlet_first_runs(service):
    t, theirs = transport_on_a_socketpair()
    try:
        sup, conn = service.start_instance(t)
        assert conn.peer == ("peer", 1) and conn._core is None  # not run yet: the start was inline
    finally:
        t.mark_accepted()
        theirs.close()
    wait_until(lambda: service.instance_count() == 0, what="the tree to end")


def test_a_connection_crashed_before_it_ever_ran_is_counted_as_a_crash(service):
    t, theirs = transport_on_a_socketpair()
    t.mark_accepted()
    sup, conn = service.start_instance(t)
    conn.kill(RuntimeError("injected before the first switch"), block=False)
    theirs.settimeout(5)
    assert theirs.recv(10) == b""
    theirs.close()
    wait_until(lambda: service.instance_count() == 0, what="the tree to end")
    assert service.stats.connection_crashes == 1 and service.stats.connections_opened == 0


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(["127.0.0.1:8000", "example.com", "[::1]:80", "xn--bcher-kva.example",
                                  "xn--a.example", "a..b", "é.example", "", "a" * 64 + ".com"]),
                 st.text(max_size=30)))
def test_host_checks_give_the_same_answer_whether_remembered_or_not(host):
    from greentree.websocket import _handler

    env = {"HTTP_HOST": host}
    _handler._good_hosts.clear()
    first = _handler._host_error(env)
    assert _handler._host_error(env) == first  # the second time may come from what was remembered
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    try:
        name.encode("ascii").decode("idna")
        valid = bool(host)
    except (UnicodeError, ValueError):
        valid = False
    assert (first is None) is valid
    assert len(_handler._good_hosts) <= 256


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.sampled_from(["Upgrade", "keep-alive, Upgrade", "upgrade,x",
                                                            "keep-alive", "Upgrade;", "a b"]))
def test_the_quick_accept_value_is_websockets_and_remembered_connection_headers_answer_the_same(raw, connection):
    from websockets.utils import accept_key

    env = dict(GOOD, HTTP_SEC_WEBSOCKET_KEY=base64.b64encode(raw).decode(), HTTP_CONNECTION=connection)
    answers = [quick_accept(env), quick_accept(env)]
    assert answers[0] == answers[1]
    if answers[0] is not None:
        assert answers[0] == accept_key(env["HTTP_SEC_WEBSOCKET_KEY"]) == full_handshake(env)
    else:  # not a comma-separated token list naming upgrade: websockets' full handshake decides
        assert connection in ("keep-alive", "Upgrade;", "a b")



# ---------------------------------------------------------------- the access log
class _Lines:
    """A server log (anything with ``write``) that keeps its lines."""

    def __init__(self):
        self.lines = []

    def write(self, line):
        self.lines.append(line)


def _upgrade_close_and_get(s, path="/page"):
    """Open a WebSocket (a 101), close it, then a plain HTTP request; return the plain response."""
    def client():
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        sock.sendall(upgrade_head())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        sock.sendall(mask_frame(0x8, b"\x03\xe8"))  # close 1000
        while sock.recv(4096):
            pass
        sock.close()
        return head, http_raw(s.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())

    head, plain = InThread(client).result()
    assert head.startswith(b"HTTP/1.1 101")
    return plain


def _plain_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"plain"]


def test_a_server_with_a_log_writes_the_access_line_of_an_upgrade_and_of_a_plain_request(served):
    log = _Lines()
    s = served(server_kw={"log": log, "app": _plain_app})
    assert _upgrade_close_and_get(s).startswith(b"HTTP/1.1 200 OK")
    wait_until(lambda: len(log.lines) == 2, what="two access lines")
    upgraded, plain = log.lines
    assert '"GET / HTTP/1.1" 101 ' in upgraded and upgraded.startswith("127.0.0.1 - - [")
    assert '"GET /page HTTP/1.1" 200 ' in plain


def test_a_server_without_a_log_formats_no_access_line(served, monkeypatch):
    from greentree.websocket import WebSocketHandler

    formatted = []
    real = WebSocketHandler.format_request

    def counting(self):
        formatted.append(self.requestline)
        return real(self)

    monkeypatch.setattr(WebSocketHandler, "format_request", counting)
    s = served(server_kw={"app": _plain_app})  # WebSocketServer's default: log=None
    assert _upgrade_close_and_get(s).startswith(b"HTTP/1.1 200 OK")
    wait_until(lambda: s.svc.instance_count() == 0, what="the tree to end")
    assert formatted == []
    # The same handler with a log formats again (the check is per server, not global).
    log = _Lines()
    logged = served(server_kw={"log": log, "app": _plain_app})
    _upgrade_close_and_get(logged)
    wait_until(lambda: len(log.lines) == 2, what="two access lines")
    assert formatted == ["GET / HTTP/1.1", "GET /page HTTP/1.1"]


# ---------------------------------------------------------------- what an open connection keeps
def test_an_upgraded_request_environ_keeps_neither_the_handler_nor_its_reader(served):
    import gc
    import weakref

    from greentree.websocket._handler import _KEEP_KEY

    seen = {}

    def on_connect(request):
        handler = request.environ[_KEEP_KEY]
        seen["handler"] = weakref.ref(handler)
        seen["rfile"] = weakref.ref(handler.rfile)

    s = served(on_connect=on_connect)
    gc.disable()  # what stays alive must be freed by reference counting, not by a collection
    try:
        def client():
            ws = websocket.create_connection(s.url, timeout=5)
            ws.send_binary(frame("req", "hi", id=1))
            assert msgpack.unpackb(ws.recv(), raw=False)["body"] == "hi"
            return ws

        ws = InThread(client).result()
        wait_until(lambda: seen["handler"]() is None, what="pywsgi's handler to be freed")
        assert seen["rfile"]() is None
        conn = next(iter(s.svc.connections._children))._children["connection"].child
        environ = conn.request_info.environ
        assert _KEEP_KEY not in environ
        assert environ["wsgi.input"].read() == b"" and list(environ["wsgi.input"]) == []
    finally:
        gc.enable()
    ws.close()
    wait_until(lambda: s.svc.instance_count() == 0, what="the tree to end")


# ---------------------------------------------------------------- what pywsgi read ahead
class _Handler:
    """What _read_ahead looks at in pywsgi's handler: its socket and its buffered reader."""

    def __init__(self, sock, rfile):
        self.socket = sock
        self.rfile = rfile


@pytest.mark.parametrize("kernel", [b"", b"still in the kernel"])
@pytest.mark.parametrize("buffered", [b"", b"frames read with the head"])
def test_read_ahead_returns_only_what_the_reader_buffered_and_never_reads_the_socket(buffered, kernel):
    from gevent import socket as gsocket

    from greentree.websocket._handler import _read_ahead

    ours, theirs = socket.socketpair()
    sock = gsocket.socket(fileno=ours.detach())
    sock.settimeout(7.0)
    try:
        rfile = sock.makefile("rb")
        theirs.sendall(b"GET / HTTP/1.1\r\n\r\n" + buffered)
        assert rfile.readline() == b"GET / HTTP/1.1\r\n" and rfile.readline() == b"\r\n"  # as pywsgi reads
        if kernel:
            theirs.sendall(kernel)
        assert _read_ahead(_Handler(sock, rfile), sock) == buffered
        assert not rfile.raw._timeout_occurred and sock.gettimeout() == 7.0  # left as it was
        # What was not buffered is still the socket's: read by whoever reads the socket next.
        if buffered:
            assert rfile.read(len(buffered)) == buffered
        if kernel:
            assert sock.recv(100) == kernel
        assert _read_ahead(None, sock) == b"" and _read_ahead(_Handler(object(), rfile), sock) == b""
    finally:
        sock.close()
        theirs.close()


def test_read_ahead_of_a_reader_that_is_not_a_socket_file_peeks_without_waiting():
    import io

    from gevent import socket as gsocket

    from greentree.websocket._handler import _read_ahead

    ours, theirs = socket.socketpair()
    sock = gsocket.socket(fileno=ours.detach())
    sock.settimeout(7.0)
    try:
        rfile = io.BufferedReader(io.BytesIO(b"head\r\nrest"))
        rfile.readline()
        assert _read_ahead(_Handler(sock, rfile), sock) == b"rest" and sock.gettimeout() == 7.0
    finally:
        sock.close()
        theirs.close()


def test_tls_sockets_are_told_apart_from_plain_ones():
    import ssl

    import gevent.ssl
    from gevent import socket as gsocket

    from greentree.websocket._connection import not_tls

    plain, std = gsocket.socket(), socket.socket()
    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls = ctx.wrap_socket(gsocket.socket(), server_hostname="x", do_handshake_on_connect=False)
    std_tls = ssl.create_default_context().wrap_socket(socket.socket(), server_hostname="x",
                                                       do_handshake_on_connect=False)
    try:
        assert isinstance(tls, gevent.ssl.SSLSocket)
        assert not_tls(plain) and not_tls(std)
        assert not not_tls(tls) and not not_tls(std_tls)
    finally:
        for s in (plain, std, tls, std_tls):
            s.close()


@pytest.mark.parametrize("first", ["the 101", "the connection"])
def test_a_connection_waits_for_the_101_only_if_it_runs_first(service, first):
    t, theirs = transport_on_a_socketpair()
    try:
        sup, conn = service.start_instance(t)
        if first == "the 101":
            t.mark_accepted()  # the usual order: the upgrade ends before the connection first runs
            assert conn.wait_connected(5)
            assert t._accepted_ev is None  # nobody waited: no Event was made
        else:
            gevent.sleep(0)  # the connection runs first, and waits for the 101
            assert not conn.dead and not conn.connected and t._accepted_ev is not None
            t.mark_accepted()
            assert conn.wait_connected(5) and t._accepted_ev.is_set()
        conn.send("hello")
        theirs.settimeout(5)
        assert theirs.recv(100).endswith(b"hello")
    finally:
        theirs.close()
    wait_until(lambda: service.instance_count() == 0, what="the tree to end")


@pytest.mark.parametrize("when", ["before it first runs", "after it waits"])
def test_a_new_connection_reads_what_its_peer_sent_before_or_after_its_first_wait(service, when):
    from gevent import socket as gsocket

    t, plain = transport_on_a_socketpair()
    theirs = gsocket.socket(fileno=plain.detach())  # the reply needs the connection and a sender to run
    try:
        t.mark_accepted()
        sup, conn = service.start_instance(t)
        request = mask_frame(0x2, frame("req", "hi", id=1))
        if when == "before it first runs":
            theirs.sendall(request)  # in the kernel before the connection's first read
            gevent.sleep(0)
        else:
            gevent.sleep(0)  # the connection runs and waits for something to read
            assert conn.connected
            theirs.sendall(request)
        theirs.settimeout(5)
        reply = b""
        while len(reply) < 2 or len(reply) < 2 + (reply[1] & 0x7F):  # one unmasked frame, < 126 bytes
            more = theirs.recv(100)
            assert more, "the connection closed instead of answering"
            reply += more
        assert reply[0] == 0x82
        assert msgpack.unpackb(reply[2:], raw=False) == {"v": 1, "t": "rep", "id": 1, "body": "hi"}
    finally:
        theirs.close()
    wait_until(lambda: service.instance_count() == 0, what="the tree to end")
