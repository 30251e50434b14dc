"""Who owns an upgraded socket under pywsgi, and that its descriptor really closes.

Under :class:`WebSocketHandler` the tree keeps pywsgi's own socket object (no
new object on the descriptor); when a middleware hides the handler (a copied
environ) it takes the descriptor over instead.  Either way, however the
connection ends (the client's close frame, its EOF, the server stopping the
tree, the tree stopped before its Connection ran), the client sees the socket
end and the server process holds no descriptor for it afterwards.
"""

from __future__ import annotations

import gc
import os
import socket
import struct
import weakref

import gevent
import pytest
from gevent.pywsgi import WSGIServer
from wshelp import InThread, mask_frame, upgrade_head, wait_until

from greentree.websocket import SOCKET_KEY, WebSocketApp, WebSocketHandler, WebSocketService, _connection, upgrade
from greentree.websocket._protocol import OpenServerProtocol

pytestmark = pytest.mark.timeout(60)


def open_files() -> set:
    """What this process's descriptors refer to (``socket:[inode]``, ``pipe:[inode]``, paths).

    Compared as sets, not counted: descriptors that earlier tests left to the
    garbage collector may close while a test runs, which would hide a leak in
    a count (and did make an exact count fail on a CI machine).
    """
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, already closed
            pass
    return out


class Setup:
    """A service behind pywsgi, built one of three ways (``how``)."""

    def __init__(self, how: str):
        self.svc = WebSocketService(lambda c, v, b: b, ping_interval=None, close_timeout=2.0)
        self.sup = self.svc.supervisor()
        self.sup.start()
        self.sup.wait_started()
        self.environs: list = []
        ws_app = WebSocketApp(self.svc)

        def app(environ, start_response):
            self.environs.append(environ)
            if how.startswith("copied-environ"):  # a middleware that hands the app a copy: the handler is hidden
                environ = {k: v for k, v in environ.items() if k != "greentree.websocket.keeper"}
            if how.endswith("stopped-before-run"):
                # The Connection is killed before it first runs (nothing yields between the
                # upgrade and the kill): the tree closes the socket it was handed.
                out = upgrade(self.svc, environ, start_response)
                conn = self.svc.connection(next(iter(self.svc.connections._children)).instance_id)
                conn.kill(block=False)
                return out
            return ws_app(environ, start_response)

        self.server = WSGIServer(("127.0.0.1", 0), app, handler_class=WebSocketHandler, log=None)
        self.server.start()
        self.port = self.server.address[1]

    def stop(self):
        self.server.stop(timeout=2)
        self.sup.stop(timeout=5)


def handshake(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(upgrade_head())
    data = b""
    while b"\r\n\r\n" not in data:
        more = s.recv(4096)
        assert more, "EOF during the handshake"
        data += more
    assert data.startswith(b"HTTP/1.1 101"), data
    return s, data.split(b"\r\n\r\n", 1)[1]


def read_to_eof(s, data=b""):
    """Everything until the server ends the socket (a timeout fails the test)."""
    while True:
        more = s.recv(65536)
        if not more:
            return data
        data += more


def close_code(data: bytes):
    assert data[:1] == b"\x88", data
    return struct.unpack("!H", data[2:4])[0]


HOWS = ["handler", "copied-environ"]


@pytest.fixture
def setup():
    made = []

    def make(how):
        s = Setup(how)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def settle(st, before):
    """The server let go of every descriptor it opened for the connections (the clients closed theirs)."""
    wait_until(lambda: st.svc.instance_count() == 0, what="the trees to end")
    wait_until(lambda: not open_files() - before,
               what=f"the descriptors to close (still open: {sorted(open_files() - before)})")


@pytest.mark.parametrize("how", HOWS)
def test_the_client_closing_ends_the_socket_and_leaves_no_descriptor(setup, how):
    st = setup(how)
    gevent.sleep(0)
    before = open_files()

    def client():
        out = []
        for _ in range(5):
            s, rest = handshake(st.port)
            s.sendall(mask_frame(8, struct.pack("!H", 1000)))
            out.append(close_code(read_to_eof(s, rest)))
            s.close()
        return out

    assert InThread(client).result() == [1000] * 5
    settle(st, before)
    assert st.svc.stats.close_codes == {1000: 5}


@pytest.mark.parametrize("how", HOWS)
def test_the_client_half_closing_ends_the_socket_and_leaves_no_descriptor(setup, how):
    st = setup(how)
    gevent.sleep(0)
    before = open_files()

    def client():
        for _ in range(5):
            s, rest = handshake(st.port)
            s.shutdown(socket.SHUT_WR)
            assert read_to_eof(s, rest) == b""  # 1006: no close frame to answer EOF with
            s.close()

    InThread(client).result()
    settle(st, before)
    assert st.svc.stats.close_codes == {1006: 5}


@pytest.mark.parametrize("how", HOWS)
def test_the_server_stopping_a_tree_sends_1001_then_ends_the_socket(setup, how):
    st = setup(how)
    gevent.sleep(0)
    before = open_files()
    conns = []

    def client():
        s, rest = handshake(st.port)
        conns.append(s)
        return rest

    rest = InThread(client).result()
    wait_until(lambda: st.svc.instance_count() == 1, what="the tree")
    assert st.svc.stop_all() == 1

    def finish():
        s = conns[0]
        data = read_to_eof(s, rest)
        s.close()
        return data

    data = InThread(finish).result()
    assert close_code(data) == 1001
    settle(st, before)


@pytest.mark.parametrize("how", [f"{h}+stopped-before-run" for h in HOWS])
def test_a_connection_stopped_before_it_ran_closes_the_socket_and_leaves_no_descriptor(setup, how):
    st = setup(how)
    gevent.sleep(0)
    before = open_files()

    def client():
        s, rest = handshake(st.port)
        data = read_to_eof(s, rest)
        s.close()
        return data

    assert InThread(client).result() == b""  # closed without a close frame: the Connection never ran
    settle(st, before)


@pytest.mark.parametrize("how", HOWS)
def test_the_handler_keeps_its_socket_object_unless_a_middleware_hides_it(setup, how):
    st = setup(how)
    seen = []
    st.svc.on_open = seen.append

    def client():
        s, _ = handshake(st.port)
        return s

    s = InThread(client).result()
    wait_until(lambda: seen, what="the connection to open")
    kept = seen[0]._sock is st.environs[0][SOCKET_KEY]
    assert kept is (how == "handler")
    s.close()
    wait_until(lambda: st.svc.instance_count() == 0, what="the tree to end")


# ---------------------------------------------------------------- freed without the cyclic GC

ENDS = ["client-close", "client-close-mid-message", "client-eof", "server-stop"]


@pytest.mark.parametrize("end", ENDS)
def test_a_closed_connection_is_freed_without_the_cyclic_gc(setup, end, monkeypatch):
    # websockets' parser is a suspended generator that refers back to its protocol
    # (and the error it stopped on keeps its frame); once the socket is closed nothing
    # is parsed any more, and a closed connection's protocol core, its websockets
    # protocol and parser are freed by reference counting, however the connection ended.
    made = []

    class Core(_connection.ConnectionCore):
        __slots__ = ("__weakref__",)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))

    monkeypatch.setattr(_connection, "ConnectionCore", Core)
    st = setup("handler")
    refs: dict = {}

    def on_event(event):
        # "disconnected" comes at the very end of the teardown, with the socket closed.
        if event.kind == "disconnected":
            (core,) = [r() for r in made]
            refs["core"] = made[0]
            refs["ended"] = core.ended
            proto = core.proto
            if not isinstance(proto, OpenServerProtocol):  # the real one: made for anything but plain frames
                refs["protocol"] = weakref.ref(proto)
                refs["parser"] = weakref.ref(proto.parser)

    st.svc.events = on_event
    gevent.sleep(0)

    def client():
        s, rest = handshake(st.port)
        if end == "client-close":
            s.sendall(mask_frame(8, struct.pack("!H", 1000)))
        elif end == "client-close-mid-message":  # websockets' own parser takes over
            s.sendall(mask_frame(1, b"ab", fin=False) + mask_frame(8, struct.pack("!H", 1000)))
        elif end == "client-eof":
            s.shutdown(socket.SHUT_WR)
        return s, rest

    gc.collect()
    gc.disable()
    try:
        s, rest = InThread(client).result()
        if end == "server-stop":
            wait_until(lambda: st.svc.instance_count() == 1, what="the tree")
            assert st.svc.stop_all() == 1
        data = InThread(read_to_eof, s, rest).result()
        s.close()
        wait_until(lambda: st.svc.instance_count() == 0, what="the tree to end")
        if end != "client-eof":  # a close frame inside a fragmented message is a protocol error
            assert close_code(data) == {"client-close": 1000, "client-close-mid-message": 1002,
                                        "server-stop": 1001}[end]
        assert refs.pop("ended") is not None
        assert (end == "client-close") == ("protocol" not in refs)  # every kind of protocol is covered
        wait_until(lambda: not [k for k, r in refs.items() if r() is not None],
                   what=f"reference counting to free {[k for k, r in refs.items() if r() is not None]}")
    finally:
        gc.enable()
