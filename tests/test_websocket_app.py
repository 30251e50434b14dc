"""Real applications: codecs a browser speaks, the HTTP request and refusing it, upgrades through
WSGI middleware and Flask, several endpoints per app, and topics."""

from __future__ import annotations

import json
import socket

import greenlet
import msgpack
import pytest
import websocket  # websocket-client
from gevent.pywsgi import WSGIServer
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

import greentree
from greentree.websocket import (
    BaseCodec,
    Request,
    Topics,
    WebSocketApp,
    WebSocketHandler,
    WebSocketService,
    flask_route,
    upgrade,
)


@pytest.fixture
def wsgi_server():
    """Serve any WSGI app with pywsgi + WebSocketHandler; the services' supervisors start on demand."""
    servers, services = [], []

    def start(app, *svcs):
        server = WSGIServer(("127.0.0.1", 0), app, handler_class=WebSocketHandler, log=None)
        server.start()
        servers.append(server)
        services.extend(svcs)
        return server.server_port

    yield start
    for svc in services:
        svc.shutdown(timeout=5)
    for server in servers:
        server.stop(timeout=5)


# ---------------------------------------------------------------- codecs
def test_json_text_frames_need_no_greentree_framing(served):
    s = served(lambda conn, conv, body: {"echo": body}, codec="json")

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        ws.send(json.dumps({"text": "hi"}))  # a text frame, as new WebSocket(url).send(...) sends
        opcode, data = ws.recv_data()
        ws.close()
        return opcode, data

    opcode, data = InThread(client).result()
    assert opcode == websocket.ABNF.OPCODE_TEXT and json.loads(data) == {"echo": {"text": "hi"}}


@pytest.mark.parametrize("codec, send, expect", [
    ("text", lambda ws: ws.send("hello"), (websocket.ABNF.OPCODE_TEXT, b"HELLO")),
    ("bytes", lambda ws: ws.send_binary(b"\x00\x01"), (websocket.ABNF.OPCODE_BINARY, b"\x01\x00")),
])
def test_text_and_bytes_codecs_carry_plain_messages(served, codec, send, expect):
    def handler(conn, conv, body):
        return body.upper() if isinstance(body, str) else body[::-1]

    s = served(handler, codec=codec)

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        send(ws)
        got = ws.recv_data()
        ws.close()
        return got

    assert InThread(client).result() == expect


@pytest.mark.parametrize("codec, wrong, code", [
    ("json", lambda ws: ws.send_binary(b"{}"), 1003),
    ("json", lambda ws: ws.send("{not json"), 1007),
    ("msgpack", lambda ws: ws.send("text"), 1003),
    ("text", lambda ws: ws.send_binary(b"x"), 1003),
])
def test_the_wrong_kind_of_message_closes_with_its_code(served, codec, wrong, code):
    s = served(codec=codec)

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        wrong(ws)
        return recv_close_code(ws)

    assert InThread(client).result() == code


def test_invalid_utf8_in_a_text_frame_closes_with_1007(served):
    s = served(codec="text")

    def client():
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        sock.sendall(upgrade_head())
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        sock.sendall(mask_frame(0x1, b"\xff\xfe"))
        data = sock.recv(4096)
        sock.close()
        return data

    data = InThread(client).result()
    assert data[0] == 0x88 and int.from_bytes(data[2:4], "big") == 1007


def test_a_custom_codec_plugs_in_through_the_interface(served):
    class Reversed(BaseCodec):
        name, binary, has_ids = "reversed", False, False

        def dump(self, body):
            return body[::-1]

        def load(self, data):
            return data[::-1]

    s = served(lambda conn, conv, body: body + "!", codec=Reversed())

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        ws.send("olleh")
        got = ws.recv()
        ws.close()
        return got

    assert InThread(client).result() == "!olleh"  # "hello" + "!", reversed on the wire


def test_request_needs_a_codec_with_ids(served):
    s = served(codec="json")
    conns = []

    def on(conn, conv, body):
        with pytest.raises(TypeError):
            conn.request("x")
        conns.append(conn)

    s.svc.handler = on

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        ws.send("1")
        return ws

    ws = InThread(client).result()
    wait_until(lambda: conns, what="the handler")
    InThread(ws.close).result()


# ---------------------------------------------------------------- the request, and refusing it
def test_the_handler_sees_path_query_headers_cookies_and_peer(served):
    seen = []

    def handler(conn, conv, body):
        r = conn.request_info
        seen.append((r.path, r.args, r.headers.get("x-token"), r.cookies, r.peer[0]))
        return "ok"

    s = served(handler, codec="text")

    def client():
        ws = websocket.create_connection(s.url + "room?name=ann&x=1", timeout=5,
                                         header=["X-Token: t0k"], cookie="sid=42; theme=dark")
        ws.send("hi")
        ws.recv()
        ws.close()

    InThread(client).result()
    assert seen == [("/room", {"name": "ann", "x": "1"}, "t0k", {"sid": "42", "theme": "dark"}, "127.0.0.1")]


@pytest.mark.parametrize("answer, status", [(401, b"401"), ((403, "no"), b"403")])
def test_on_connect_refuses_before_the_upgrade_no_101_no_tree_nothing_leaked(served, answer, status):
    calls = []

    def on_connect(request):
        calls.append(request.args.get("token"))
        return None if request.args.get("token") == "good" else answer

    s = served(codec="text", on_connect=on_connect)
    names_before = s.svc.registry.count()
    refused = InThread(http_raw, s.port, upgrade_head(path="/?token=bad")).result()
    assert refused.startswith(b"HTTP/1.1 " + status) and b"101" not in refused.split(b"\r\n")[0]
    assert s.svc.instance_count() == 0 and s.svc.registry.count() == names_before
    assert s.svc.stats.refused == 1 and s.svc.stats.connections_opened == 0

    def good():
        ws = websocket.create_connection(s.url + "?token=good", timeout=5)
        ws.send("x")
        got = ws.recv()
        ws.close()
        return got

    assert InThread(good).result() == "x"
    assert calls == ["bad", "good"]


def test_on_connect_state_and_the_open_and_close_hooks(served):
    log = []
    s = served(codec="text", on_connect=lambda r: {"user": r.args["user"]},
               on_open=lambda c: log.append(("open", c.state["user"])),
               on_close=lambda c: log.append(("close", c.state["user"])))

    def client():
        ws = websocket.create_connection(s.url + "?user=ann", timeout=5)
        ws.close()

    InThread(client).result()
    wait_until(lambda: len(log) == 2, what="both hooks")
    assert log == [("open", "ann"), ("close", "ann")]


def test_request_view_of_the_environ():
    r = Request({"PATH_INFO": "/ws", "HTTP_COOKIE": "bad;;=", "REMOTE_PORT": "x"})
    assert r.cookies == {} or isinstance(r.cookies, dict)
    assert r.peer == (None, None) and r.args == {} and "ws" in repr(r)


# ---------------------------------------------------------------- inside any WSGI app
def test_wsgi_middleware_runs_on_upgrades_and_can_refuse_them(wsgi_server):
    svc = WebSocketService(lambda conn, conv, body: f"{conn.request_info.environ['app.user']}: {body}",
                           codec="text", ping_interval=None)
    seen = []

    def inner(environ, start_response):
        if environ["PATH_INFO"] == "/ws":
            return upgrade(svc, environ, start_response)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"page"]

    def auth_middleware(environ, start_response):
        seen.append(environ["PATH_INFO"])
        if environ.get("HTTP_AUTHORIZATION") != "Bearer ok":
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"who are you?\n"]
        environ["app.user"] = "ann"
        return inner(environ, start_response)

    port = wsgi_server(auth_middleware, svc)
    refused = InThread(http_raw, port, upgrade_head(path="/ws")).result()
    assert refused.startswith(b"HTTP/1.1 401")

    def client():
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=5, header=["Authorization: Bearer ok"])
        ws.send("hi")
        got = ws.recv()
        ws.close()
        return got

    assert InThread(client).result() == "ann: hi"
    assert seen == ["/ws", "/ws"]
    wait_until(lambda: svc.instance_count() == 0, what="the tree to end")


def test_several_endpoints_in_one_app_each_with_its_own_service(wsgi_server):
    upper = WebSocketService(lambda c, v, b: b.upper(), codec="text", ping_interval=None)
    js = WebSocketService(lambda c, v, b: {"n": b["n"] + 1}, codec="json", ping_interval=None)

    def page(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"page " + environ["PATH_INFO"].encode()]

    port = wsgi_server(WebSocketApp(routes={"/upper": upper, "/json": js}, app=page), upper, js)

    def client():
        a = websocket.create_connection(f"ws://127.0.0.1:{port}/upper", timeout=5)
        b = websocket.create_connection(f"ws://127.0.0.1:{port}/json", timeout=5)
        a.send("abc")
        b.send(json.dumps({"n": 1}))
        got = a.recv(), json.loads(b.recv())
        a.close()
        b.close()
        plain = http_raw(port, b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return got, plain

    (ra, rb), plain = InThread(client).result()
    assert ra == "ABC" and rb == {"n": 2} and plain.startswith(b"HTTP/1.1 200")


def test_a_flask_route_becomes_a_supervised_connection_after_before_request_hooks(wsgi_server):
    flask = pytest.importorskip("flask")
    app = flask.Flask("chat-test")
    svc = WebSocketService(lambda conn, conv, body: {"you": conn.state.get("user"), "said": body},
                           codec="json", ping_interval=None,
                           on_connect=lambda r: {"user": r.environ.get("test.user")})
    other = WebSocketService(lambda conn, conv, body: body * 2, codec="text", ping_interval=None)
    flask_route(app, "/chat", svc)
    flask_route(app, "/double", other)

    @app.before_request
    def auth():
        if flask.request.args.get("key") != "k":
            flask.abort(403)
        flask.request.environ["test.user"] = "ann"

    @app.route("/")
    def index():
        return "index"

    port = wsgi_server(app, svc, other)
    assert InThread(http_raw, port, upgrade_head(path="/chat")).result().startswith(b"HTTP/1.1 403")

    def client():
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/chat?key=k", timeout=5)
        ws.send(json.dumps("hi"))
        got = json.loads(ws.recv())
        d = websocket.create_connection(f"ws://127.0.0.1:{port}/double?key=k", timeout=5)
        d.send("ab")
        got2 = d.recv()
        ws.close()
        d.close()
        return got, got2

    assert InThread(client).result() == ({"you": "ann", "said": "hi"}, "abab")
    wait_until(lambda: svc.instance_count() == 0 and other.instance_count() == 0, what="the trees to end")
    assert svc.registry.count() == 0


# ---------------------------------------------------------------- topics
def test_a_broadcast_reaches_every_member_and_an_ended_connection_leaves_its_topics(served):
    topics = Topics()
    s = served(lambda conn, conv, body: topics.publish("room", body) and None, codec="text",
               on_open=lambda c: topics.join("room", c))

    def clients():
        a = websocket.create_connection(s.url, timeout=5)
        b = websocket.create_connection(s.url, timeout=5)
        c = websocket.create_connection(s.url, timeout=5)
        return a, b, c

    a, b, c = InThread(clients).result()
    wait_until(lambda: len(topics.members("room")) == 3, what="three members")
    InThread(c.close).result()
    wait_until(lambda: len(topics.members("room")) == 2, what="c to leave")

    def talk():
        a.send("hello")
        got = a.recv(), b.recv()
        a.close()
        b.close()
        return got

    assert InThread(talk).result() == ("hello", "hello")
    wait_until(lambda: topics.topics() == [], what="everyone to leave")


@pytest.mark.parametrize("policy", ["close", "drop"])
def test_a_slow_member_never_stalls_the_broadcaster_and_the_overflow_policy_holds(served, policy):
    topics = Topics(overflow=policy, drop_after=8)
    s = served(codec="bytes", on_open=lambda c: topics.join("t", c), send_queue=16)

    def slow():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", s.port))
        sock.sendall(upgrade_head())
        sock.recv(200)
        return sock

    def fast():
        return websocket.create_connection(s.url, timeout=5)

    slow_sock = InThread(slow).result()
    fast_ws = InThread(fast).result()
    wait_until(lambda: len(topics.members("t")) == 2, what="two members")
    fast_conn = [m for m in topics.members("t") if m.peer[1] != slow_sock.getsockname()[1]][0]
    received = []

    def reader():
        try:
            while len(received) < 200:
                received.append(fast_ws.recv())
        except Exception:
            pass

    r = InThread(reader)
    blob = b"x" * 65536
    switches: list = []

    def trace(event, args):
        switches.append((event, args))

    for i in range(200):
        # publish never waits for a member: it returns without ever leaving this
        # greenlet (waiting for anything in gevent is a switch to the hub), even
        # once the slow member's queue is full.  The next publish goes out once the
        # fast member has this one, so the fast member keeps up however busy the
        # machine is, and the slow one (a 4 KiB receive buffer, never read) does not.
        previous = greenlet.settrace(trace)
        try:
            topics.publish("t", blob)
        finally:
            greenlet.settrace(previous)
        assert switches == [], f"publish {i} switched greenlets: {switches[:3]}"
        wait_until(lambda i=i: len(received) == i + 1, 20, f"the fast member to get message {i}")
    if policy == "close":
        wait_until(lambda: len(topics.members("t")) == 1, what="the slow member to be closed")
        assert s.svc.stats.slow_consumers == 1 and s.svc.stats.close_codes.get(1008) == 1
    else:
        assert len(topics.members("t")) == 2 and s.svc.stats.topic_drops > 0
    assert fast_conn.connected
    InThread(fast_ws.close).result()
    r.result()
    slow_sock.close()


def test_topics_hand_every_publish_to_the_remote_hook_but_not_deliver():
    sent = []
    t = Topics(remote=lambda topic, body: sent.append((topic, body)))
    assert t.publish("a", 1) == 0 and t.deliver("a", 2) == 0
    assert sent == [("a", 1)]
    with pytest.raises(greentree.ChildSpecError):
        Topics(overflow="block")


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames (payloads under 64 KiB); ``(opcode, payload)`` each."""
    out, i = [], 0
    while i + 2 <= len(data):
        n = data[i + 1] & 0x7F
        start = i + 2
        if n == 126:
            n, start = int.from_bytes(data[i + 2:i + 4], "big"), i + 4
        if start + n > len(data):
            break
        out.append((data[i] & 0x0F, data[start:start + n]))
        i = start + n
    return out


@pytest.mark.parametrize("count", [1, 3, 200])
def test_frames_sent_right_behind_the_upgrade_request_are_not_lost(served, count):
    # A client may pipeline its first frames with the request head (before it saw the 101);
    # the server has read them along with the head, and must answer each, in order.
    s = served(lambda c, conv, body: ["echo", body])

    def client():
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        try:
            sock.sendall(upgrade_head() + b"".join(
                mask_frame(0x2, frame("req", i, id=i + 1, c="a")) for i in range(count)))
            data = b""
            while data.count(b"\r\n\r\n") == 0 or len(_server_frames(data.split(b"\r\n\r\n", 1)[1])) < count:
                chunk = sock.recv(65536)
                assert chunk, f"the server closed after {data!r}"
                data += chunk
            head, rest = data.split(b"\r\n\r\n", 1)
            return head, [msgpack.unpackb(p) for _, p in _server_frames(rest)]
        finally:
            sock.close()

    head, replies = InThread(client).result()
    assert head.startswith(b"HTTP/1.1 101")
    assert [(r["id"], r["body"]) for r in replies] == [(i + 1, ["echo", i]) for i in range(count)]
