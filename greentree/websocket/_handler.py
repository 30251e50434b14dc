"""Serving WebSockets from gevent's pywsgi (or gunicorn ``-k gevent``).

:class:`WebSocketApp` is a WSGI application: an ``Upgrade: websocket``
request is answered by wsproto (sans-IO: we feed it the request and write the
``101`` it produces on the raw socket) and handed to a new connection tree;
every other request goes to the WSGI app you wrap.  The request greenlet then
*blocks until the tree ends*: gevent (and gunicorn) close the socket when the
WSGI app returns.

The raw socket comes from the server: :class:`WebSocketHandler` (pywsgi's
``handler_class``) puts it in the environ; gunicorn's gevent worker already
does (``gunicorn.socket``).  :class:`WebSocketServer` bundles a pywsgi server
with the right handler as a supervised child.
"""

from __future__ import annotations

from urllib.parse import quote

from gevent.event import Event as _GEvent
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request
from wsproto.utilities import ProtocolError

from .._child import Greenlet, started
from .._errors import GreentreeError
from .._spec import ChildSpec
from ._errors import ConnectionClosedError

__all__ = ["WebSocketApp", "WebSocketHandler", "WebSocketServer", "ServerTransport", "SOCKET_KEY"]

#: The environ key under which :class:`WebSocketHandler` exposes the raw socket.
SOCKET_KEY = "greentree.websocket.socket"
_UPGRADED_KEY = "greentree.websocket.upgraded"


class ServerTransport:
    """The accepted side of one connection: the socket is handed over once.

    ``restart = "temporary"``: a server-side Connection cannot reconnect, so
    its tree ends with it.
    """

    restart = "temporary"
    __slots__ = ("_sock", "_ws", "peer", "accepted")

    def __init__(self, sock, ws, peer):
        self._sock = sock
        self._ws = ws
        self.peer = peer
        self.accepted = _GEvent()  # set once the 101 is on the wire

    def open(self, conn):
        sock, ws = self._sock, self._ws
        if sock is None:
            raise ConnectionClosedError(f"{conn!r}: a server-side connection cannot be reopened")
        self.accepted.wait()
        self._sock = self._ws = None
        if ws.state.name != "OPEN":
            raise ConnectionClosedError(f"{conn!r}: the handshake was not completed")
        return sock, ws, ()

    def closed(self, conn, was_connected) -> None:
        self._sock = self._ws = None


def is_websocket_request(environ) -> bool:
    """True if ``environ`` asks for a WebSocket upgrade.

    >>> is_websocket_request({"HTTP_UPGRADE": "WebSocket", "HTTP_CONNECTION": "keep-alive, Upgrade"})
    True
    >>> is_websocket_request({"PATH_INFO": "/"})
    False
    """
    return (
        environ.get("HTTP_UPGRADE", "").lower() == "websocket"
        and "upgrade" in environ.get("HTTP_CONNECTION", "").lower()
    )


def request_bytes(environ) -> bytes:
    """Rebuild the raw HTTP request head from a WSGI environ, for wsproto.

    >>> request_bytes({"REQUEST_METHOD": "GET", "PATH_INFO": "/ws", "QUERY_STRING": "a=1",
    ...                "HTTP_HOST": "x", "HTTP_SEC_WEBSOCKET_KEY": "k"})
    b'GET /ws?a=1 HTTP/1.1\\r\\nHost: x\\r\\nSec-Websocket-Key: k\\r\\n\\r\\n'
    """
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not target:
        target = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""), safe="/;=,:@!$&'()*+~")
        if environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
    lines = [f"{environ.get('REQUEST_METHOD', 'GET')} {target} HTTP/1.1"]
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = "-".join(part.capitalize() for part in key[5:].split("_"))
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class WebSocketApp:
    """A WSGI app that runs each WebSocket connection as its own supervised tree.

    ``WebSocketApp(service, app=None, path=None)``: upgrade requests (for
    ``path``, if given) start a tree under ``service``'s
    ConnectionsSupervisor; everything else goes to ``app`` (426 Upgrade
    Required if there is none).

    >>> from greentree.websocket import WebSocketService
    >>> app = WebSocketApp(WebSocketService(), path="/ws")
    >>> out = []
    >>> app({"PATH_INFO": "/", "REQUEST_METHOD": "GET"}, lambda s, h: out.append(s))
    [b'this endpoint speaks WebSocket only\\n']
    >>> out
    ['426 Upgrade Required']

    Serve it with pywsgi and :class:`WebSocketHandler`, or with gunicorn's
    gevent worker; see the how-to.  Requests run in the server's greenlets;
    the tree does not: it lives under the ConnectionsSupervisor, and the
    request greenlet only waits for it (and stops it if it is itself killed).
    """

    def __init__(self, service, app=None, path: str | None = None):
        self.service = service
        self.app = app
        self.path = path

    def __call__(self, environ, start_response):
        if not is_websocket_request(environ) or (self.path is not None and environ.get("PATH_INFO") != self.path):
            if self.app is not None:
                return self.app(environ, start_response)
            start_response("426 Upgrade Required", [("Upgrade", "websocket"), ("Content-Type", "text/plain")])
            return [b"this endpoint speaks WebSocket only\n"]
        sock = environ.get(SOCKET_KEY) or environ.get("gunicorn.socket")
        if sock is None:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"WebSocketApp: the server does not expose its socket; run pywsgi with "
                    b"handler_class=greentree.websocket.WebSocketHandler, or gunicorn -k gevent\n"]
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(request_bytes(environ))
            req = next(ws.events(), None)
        except ProtocolError as e:
            req = None
            why = str(e)
        else:
            why = "not a WebSocket handshake"
        if not isinstance(req, Request):
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [f"{why}\n".encode()]
        offered = req.subprotocols
        subprotocol = next((p for p in offered if p in self.service.options.subprotocols), None)
        transport = ServerTransport(sock, ws, (environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT")))
        try:
            sup, _conn = self.service.start_instance(transport)
        except GreentreeError as e:  # no ConnectionsSupervisor, or max_connections reached
            start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Retry-After", "1")])
            return [f"{e}\n".encode()]
        environ[_UPGRADED_KEY] = True
        try:
            try:
                sock.sendall(ws.send(AcceptConnection(subprotocol=subprotocol, extensions=[])))
            finally:
                transport.accepted.set()
            sup.join()
        finally:
            if not sup.dead:
                # The request greenlet was killed (server stopping): stop the tree, which
                # sends the close frame, before the server closes the socket.
                self.service.stop_instance(sup.instance_id)
        if SOCKET_KEY not in environ:
            # gunicorn: tell the worker the response was handled (it closes the socket).
            raise StopIteration("websocket closed")
        return []


class WebSocketHandler(WSGIHandler):
    """pywsgi's handler, plus the raw socket in ``environ[SOCKET_KEY]``.

    ``WSGIServer(addr, WebSocketApp(service), handler_class=WebSocketHandler)``.
    After an upgraded request it closes the connection instead of reading
    another HTTP request from it.
    """

    def run_application(self):
        self.environ[SOCKET_KEY] = self.socket
        try:
            super().run_application()
        finally:
            if self.environ.get(_UPGRADED_KEY):
                self.close_connection = True
                self.status = "101 Switching Protocols"
                self.headers_sent = True


class WebSocketServer(Greenlet):
    """A supervised pywsgi server for a :class:`WebSocketApp`.

    Put it *after* the service's ConnectionsSupervisor in your root
    supervisor (``WebSocketServer.child_spec(service, ("127.0.0.1", 8000))``):
    it starts listening once the trees have somewhere to live, and stops
    first.  Stopping it stops accepting, then stops every connection tree
    (each client gets a 1001 close frame), then waits for the request
    greenlets.  ``started(address)`` reports the bound address (``address``
    attribute), handy with port 0.

    >>> WebSocketServer.handshake
    True
    """

    handshake = True

    def __init__(self, service, listener=("127.0.0.1", 0), app=None, path=None, *, log=None, error_log="default",
                 max_connections: int | None = None, **ssl_args):
        Greenlet.__init__(self)
        self.service = service
        self.listener = listener
        self.app = app
        self.path = path
        self.log = log
        self.error_log = error_log
        self.max_connections = max_connections
        self.ssl_args = ssl_args
        self.address = None
        self.server = None

    @classmethod
    def child_spec(cls, service, listener=("127.0.0.1", 0), id="websocket-server", **kwargs) -> ChildSpec:
        """A ChildSpec for this server (shutdown waits for the trees to close)."""
        shutdown = kwargs.pop("shutdown", service.options.close_timeout * 2 + 5.0)
        return ChildSpec(id, cls, service, listener, kwargs=kwargs, shutdown=shutdown)

    def _run(self):
        pool = Pool(self.max_connections)
        environ = None
        if isinstance(self.listener, tuple):
            # Name the server ourselves: pywsgi would call getfqdn(), a DNS lookup in gevent's threadpool.
            environ = {"SERVER_NAME": str(self.listener[0])}
        server = WSGIServer(
            self.listener, WebSocketApp(self.service, self.app, self.path), handler_class=WebSocketHandler,
            spawn=pool, log=self.log, error_log=self.error_log, environ=environ, **self.ssl_args,
        )
        server.start()
        self.server = server
        self.address = server.address
        started(self.address)
        try:
            _GEvent().wait()  # serve until stopped
        finally:
            server.close()  # stop accepting
            conns = self.service._connections
            if conns is not None and not conns.dead and len(pool):
                try:
                    conns.terminate_all()
                except GreentreeError:
                    pass
            pool.join(timeout=self.service.options.close_timeout + 1.0)
            pool.kill(block=True, timeout=1.0)
            self.server = None
