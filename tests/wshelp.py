"""Helpers shared by the WebSocket test files: native-thread clients, a served service, frames."""

from __future__ import annotations

import queue
import socket
import struct
import threading

import gevent
import msgpack
import pytest
import websocket  # websocket-client

import greentree
from greentree.testing import wait_until as _wait_until
from greentree.websocket import WebSocketServer, WebSocketService


def wait_until(predicate, timeout=10.0, what="condition"):
    _wait_until(predicate, timeout, what, interval=0.005)


class InThread:
    """Run blocking client code (websocket-client, raw sockets) in a native thread; wait cooperatively."""

    def __init__(self, fn, *args):
        self._q: queue.Queue = queue.Queue()
        self._t = threading.Thread(target=self._main, args=(fn, args), daemon=True)
        self._t.start()

    def _main(self, fn, args):
        try:
            self._q.put((True, fn(*args)))
        except BaseException as e:  # handed to the test
            self._q.put((False, e))

    def result(self, timeout=10.0):
        wait_until(lambda: not self._q.empty(), timeout, "the client thread")
        ok, value = self._q.get()
        if not ok:
            raise value
        return value


def frame(t, body=None, id=None, c=None, v=1):
    d = {"v": v, "t": t, "body": body}
    if id is not None:
        d["id"] = id
    if c is not None:
        d["c"] = c
    return msgpack.packb(d, use_bin_type=True)


def recv_close_code(ws):
    """Read until the server's close frame; return its code (1006 if the socket just ended)."""
    while True:
        try:
            opcode, data = ws.recv_data(control_frame=True)
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            return 1006
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005


def http_raw(port, head: bytes, timeout=5.0) -> bytes:
    """Send a raw HTTP request head; return everything the server answers until it closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(head)
        out = b""
        while True:
            data = s.recv(65536)
            if not data:
                return out
            out += data
            if b"\r\n\r\n" in out and not out.startswith(b"HTTP/1.1 101"):
                return out
    finally:
        s.close()


def upgrade_head(key="dGhlIHNhbXBsZSBub25jZQ==", host="127.0.0.1", path="/") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode("latin-1")


def mask_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One client frame (masked with a zero key, which RFC 6455 allows)."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + b"\0\0\0\0" + payload


class Served:
    """A service behind a supervised WebSocketServer on a free loopback port."""

    def __init__(self, handler=None, server_kw=None, **service_kw):
        service_kw.setdefault("ping_interval", None)
        self.events = gevent.queue.Queue()
        self.svc = WebSocketService(handler, events=self.events, **service_kw)
        self.root = greentree.Supervisor(
            [self.svc.child_spec(), WebSocketServer.child_spec(self.svc, ("127.0.0.1", 0), **(server_kw or {}))],
            name="ws-test",
        )
        self.root.start()
        self.root.wait_started()
        self.port = self.root.which_children()[1].child.address[1]
        self.url = f"ws://127.0.0.1:{self.port}/"

    def stop(self):
        self.root.stop(timeout=10)


@pytest.fixture(name="served")
def served_fixture():
    """``served(handler, server_kw=None, **service_options) -> Served``; all stopped at teardown."""
    started = []

    def start(handler=lambda c, conv, body: body, **kw):
        s = Served(handler, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
