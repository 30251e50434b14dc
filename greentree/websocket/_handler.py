"""Serving WebSockets from any WSGI application: pywsgi, gunicorn ``-k gevent``, Flask.

The upgrade goes *through* your WSGI application, so its middleware (auth,
logging, sessions) runs first: :func:`upgrade` is a plain WSGI helper you
call from a view with the request's environ and ``start_response``; a
:class:`WebSocketApp` routes paths to services and everything else to your
app; :func:`greentree.websocket.flask_route` makes a Flask route a
supervised connection.

An upgrade: the handshake is checked (``websockets``' sans-I/O
``ServerProtocol``: a bad ``Sec-WebSocket-Key`` or an undecodable ``Host``
gets 400), then the service's ``on_connect(request)`` hook may refuse it
with an HTTP status (401, 403, ...: no 101, no tree), then a tree starts
under the service's ConnectionsSupervisor (503 if ``max_connections`` trees
run), the ``101`` is written on the raw socket, and the tree takes the
socket over.  Under pywsgi with :class:`WebSocketHandler` the request
greenlet is then released at once (the handler lets go of the socket); under
gunicorn it waits until the tree ends (gunicorn closes the socket when the
WSGI app returns).

The raw socket comes from the server: :class:`WebSocketHandler` (pywsgi's
``handler_class``) puts it in the environ; gunicorn's gevent worker already
does (``gunicorn.socket``).  :class:`WebSocketServer` bundles a pywsgi server
with the right handler as a supervised child.
"""

from __future__ import annotations

import logging
import socket as _stdsocket
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote

from gevent import pywsgi as _pywsgi
from gevent import socket as gsocket
from gevent.event import Event as _GEvent
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer
from websockets.protocol import CONNECTING
from websockets.server import ServerProtocol

from .. import _telemetry
from .._child import Greenlet, started
from .._errors import GreentreeError
from .._report import report_event
from .._spec import ChildSpec
from ._connection import _PLAIN_SOCKET, not_tls
from ._errors import ConnectionClosedError
from ._protocol import PROTOCOL_LOGGER, OpenServerProtocol, _remember, accept_response, quick_accept
from ._workers import Workers

__all__ = [
    "Request", "WebSocketApp", "WebSocketHandler", "WebSocketServer", "ServerTransport", "SOCKET_KEY",
    "upgrade", "is_websocket_request",
]

#: The environ key under which :class:`WebSocketHandler` exposes the raw socket.
SOCKET_KEY = "greentree.websocket.socket"
_UPGRADED_KEY = "greentree.websocket.upgraded"
#: Set by :class:`WebSocketHandler` to itself: the tree may keep its socket object (see :func:`_keep`).
_KEEP_KEY = "greentree.websocket.keeper"


class Request:
    """The HTTP request that opened a WebSocket (a view of the WSGI environ).

    >>> r = Request({"PATH_INFO": "/ws", "QUERY_STRING": "room=a&user=b", "HTTP_COOKIE": "sid=42",
    ...              "HTTP_X_TOKEN": "t", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "5000"})
    >>> r.path, r.args["room"], r.query["user"], r.cookies["sid"], r.headers["x-token"], r.peer
    ('/ws', 'a', ['b'], '42', 't', ('127.0.0.1', 5000))
    """

    __slots__ = ("environ", "_cache")

    def __init__(self, environ: dict):
        self.environ = environ
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"<Request {self.path!r} from {self.peer!r}>"

    @property
    def path(self) -> str:
        """``SCRIPT_NAME + PATH_INFO``."""
        e = self.environ
        return e.get("SCRIPT_NAME", "") + e.get("PATH_INFO", "")

    @property
    def query(self) -> dict[str, list[str]]:
        """The query string, every value of every parameter."""
        q = self._cache.get("query")
        if q is None:
            q = self._cache["query"] = parse_qs(self.environ.get("QUERY_STRING", ""), keep_blank_values=True)
        return q

    @property
    def args(self) -> dict[str, str]:
        """The query string, the last value of each parameter."""
        return {k: v[-1] for k, v in self.query.items()}

    @property
    def headers(self) -> dict[str, str]:
        """Request headers by lower-case name (``"x-token"``)."""
        h = self._cache.get("headers")
        if h is None:
            h = {}
            for key, value in self.environ.items():
                if key.startswith("HTTP_"):
                    h[key[5:].replace("_", "-").lower()] = value
            for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                if self.environ.get(key):
                    h[key.replace("_", "-").lower()] = self.environ[key]
            self._cache["headers"] = h
        return h

    @property
    def cookies(self) -> dict[str, str]:
        """Cookies by name (a malformed Cookie header gives an empty dict)."""
        c = self._cache.get("cookies")
        if c is None:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(self.environ.get("HTTP_COOKIE", ""))
            except CookieError:
                pass
            c = self._cache["cookies"] = {k: m.value for k, m in jar.items()}
        return c

    @property
    def peer(self) -> tuple[str | None, int | None]:
        """``(address, port)`` of the client as the server saw it."""
        port = self.environ.get("REMOTE_PORT")
        try:
            port = int(port) if port is not None else None
        except ValueError:
            port = None
        return self.environ.get("REMOTE_ADDR"), port


class ServerTransport:
    """The accepted side of one connection: the socket is handed over once.

    ``restart = "temporary"``: a server-side Connection cannot reconnect, so
    its tree ends with it.
    """

    restart = "temporary"
    __slots__ = ("_sock", "_proto", "peer", "_accepted", "_accepted_ev", "request", "state", "abandoned", "_kept",
                 "early")

    def __init__(self, sock, proto, peer, request: Request | None = None, state: dict | None = None):
        self._sock = sock
        self._proto = proto
        self.peer = peer
        self.request = request
        self.state = state
        # True once the 101 is on the wire (or failed to be); an Event only if the Connection has to wait.
        self._accepted = False
        self._accepted_ev: _GEvent | None = None
        self.abandoned = False
        self._kept = None
        self.early = b""  # bytes the client sent right behind its request head, read by the server already

    def mark_accepted(self) -> None:
        """The upgrade is done with the socket (the ``101`` written, or failed): the Connection may open."""
        self._accepted = True
        ev = self._accepted_ev
        if ev is not None:
            ev.set()

    def take_over(self, sock, kept: bool = False) -> None:
        """The upgrade hands the socket over: the tree owns it.

        ``kept``: ``sock`` is the server's own socket object, held by :func:`_keep` (the server
        closing it after the request leaves the descriptor open); otherwise a new object on the
        same descriptor.
        """
        if kept:
            self._kept = sock
        if self.abandoned:
            self._close(sock)  # the tree was stopped before its Connection ever ran
        else:
            self._sock = sock

    def _close(self, sock) -> None:
        try:
            sock.close()
        except OSError:
            pass
        self._release()

    def _release(self) -> None:
        """Drop :func:`_keep`'s hold: the descriptor closes once both we and the server closed it."""
        kept, self._kept = self._kept, None
        if kept is not None:
            kept._decref_socketios()

    def open(self, conn):
        if self._sock is None:
            raise ConnectionClosedError(f"{conn!r}: a server-side connection cannot be reopened")
        if not self._accepted:  # under pywsgi the 101 is written before the Connection first runs
            ev = self._accepted_ev
            if ev is None:
                ev = self._accepted_ev = _GEvent()
            ev.wait()  # the 101 is written; the socket may have been taken over meanwhile
        sock, proto, early = self._sock, self._proto, self.early
        self._sock = self._proto = None
        self.early = b""
        if proto.state is CONNECTING:
            raise ConnectionClosedError(f"{conn!r}: the handshake was not completed")
        return sock, proto, early

    def closed(self, conn, was_connected) -> None:
        """The Connection ended (it closed the socket it was handed)."""
        self._sock = self._proto = None
        self._release()

    def abandon(self) -> None:
        """The Connection was stopped before it ever ran: close a socket the tree took over."""
        self.abandoned = True
        sock, self._sock, self._proto = self._sock, None, None
        if sock is not None and self._accepted:
            self._close(sock)


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


def _target(environ) -> str:
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not target:
        target = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""), safe="/;=,:@!$&'()*+~")
        if environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
    return target


def request_bytes(environ) -> bytes:
    """Rebuild the raw HTTP request head from a WSGI environ (for the sans-I/O handshake).

    >>> request_bytes({"REQUEST_METHOD": "GET", "PATH_INFO": "/ws", "QUERY_STRING": "a=1",
    ...                "HTTP_HOST": "x", "HTTP_SEC_WEBSOCKET_KEY": "k"})
    b'GET /ws?a=1 HTTP/1.1\\r\\nHost: x\\r\\nSec-Websocket-Key: k\\r\\n\\r\\n'
    """
    lines = [f"{environ.get('REQUEST_METHOD', 'GET')} {_target(environ)} HTTP/1.1"]
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = "-".join(part.capitalize() for part in key[5:].split("_"))
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _host_error(environ) -> str | None:
    host = environ.get("HTTP_HOST")
    if not host:
        return "no Host header"
    if host in _good_hosts:  # clients of one server send a handful of Host values
        return None
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    try:
        name.encode("ascii").decode("idna")
    except (UnicodeError, ValueError):
        return f"the Host header {host!r} is not a valid host name"
    _remember(_good_hosts, host, True)
    return None


#: Host header values already found valid.
_good_hosts: dict[str, bool] = {}


def _respond(start_response, status: str, text: str, headers=()) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), *headers])
    return [text.encode("utf-8")]


def _refusal(result: Any) -> tuple[int, str] | None:
    """What ``on_connect`` returned, as ``(status, text)`` if it refuses."""
    if result is None or result is True or isinstance(result, dict):
        return None
    if isinstance(result, int) and not isinstance(result, bool):
        return result, ""
    if (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], int)
            and isinstance(result[1], str)):
        return result
    raise TypeError(
        f"on_connect returned {result!r}: return None (or a dict of connection state) to accept, "
        "or an HTTP status (401, 403, ...) or (status, text) to refuse"
    )


def upgrade(service, environ: dict, start_response: Callable) -> list[bytes]:
    """Turn one WSGI request into a supervised WebSocket connection of ``service``.

    Call it from your WSGI app (or a framework view) with the request's
    ``environ`` and ``start_response``, and return what it returns.  Under
    pywsgi with :class:`WebSocketHandler` it returns as soon as the ``101``
    is written (the tree owns the socket from then on, and the request
    greenlet is free); under gunicorn it returns when the tree ends.  A request that is not a
    WebSocket upgrade gets 426; a bad handshake 400; a refusal by
    ``service.on_connect`` its status; a full server 503.

    >>> from greentree.websocket import WebSocketService
    >>> out = []
    >>> upgrade(WebSocketService(), {"PATH_INFO": "/ws"}, lambda s, h: out.append(s))
    [b'this endpoint speaks WebSocket only\\n']
    >>> out
    ['426 Upgrade Required']
    """
    if not is_websocket_request(environ):
        return _respond(start_response, "426 Upgrade Required", "this endpoint speaks WebSocket only\n",
                        [("Upgrade", "websocket")])
    return _upgrade(service, environ, start_response)


def _upgrade(svc, environ: dict, start_response: Callable) -> list[bytes]:
    """:func:`upgrade` of a request already found to be a WebSocket upgrade."""
    sock = environ.get(SOCKET_KEY) or environ.get("gunicorn.socket")
    if sock is None:
        return _respond(start_response, "500 Internal Server Error",
                        "the server does not expose its socket; run pywsgi with handler_class="
                        "greentree.websocket.WebSocketHandler, or gunicorn -k gevent\n")
    svc._ensure_started()
    why = _host_error(environ)
    if why is not None:
        svc.stats.bad_handshakes += 1
        return _respond(start_response, "400 Bad Request", f"Failed to open a WebSocket connection: {why}.\n")
    o = svc.options
    accept = None if o.subprotocols else quick_accept(environ)
    if accept is not None:  # the common case, checked from the environ: no request to re-parse
        proto: Any = OpenServerProtocol(svc.codec.max_size)  # websockets' protocol is made only if needed
        head = accept_response(accept)
    else:
        proto = ServerProtocol(subprotocols=list(o.subprotocols) or None, max_size=svc.codec.max_size,
                               logger=PROTOCOL_LOGGER)
        try:
            proto.receive_data(request_bytes(environ))
            parsed = proto.events_received()
            if not parsed:
                raise ValueError("incomplete request head")
            response = proto.accept(parsed[0])
        except Exception as e:  # websockets refuses what it cannot parse with its own errors
            svc.stats.bad_handshakes += 1
            return _respond(start_response, "400 Bad Request", f"Failed to open a WebSocket connection: {e}.\n")
        if response.status_code != 101:
            svc.stats.bad_handshakes += 1
            return _respond(start_response, f"{response.status_code} {response.reason_phrase}",
                            response.body.decode("utf-8", "replace"))
        proto.send_response(response)
        head = b"".join(proto.data_to_send())
    request = Request(environ)
    state = None
    if svc.on_connect is not None:
        result = svc.on_connect(request)
        refused = _refusal(result)
        if refused is not None:
            svc.stats.refused += 1
            status, text = refused
            _telemetry.websocket_refused(svc, request, status, "on_connect")
            from http import HTTPStatus

            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Refused"
            return _respond(start_response, f"{status} {phrase}", (text or phrase) + "\n")
        state = result if isinstance(result, dict) else None
    transport = ServerTransport(sock, proto, request.peer, request, state)
    try:
        sup, _conn = svc.start_instance(transport)
    except GreentreeError as e:  # no ConnectionsSupervisor, or max_connections reached
        _telemetry.websocket_refused(svc, request, 503, e)
        return _respond(start_response, "503 Service Unavailable", f"{e}\n", [("Retry-After", "1")])
    environ[_UPGRADED_KEY] = True
    # Under our pywsgi handler the request greenlet is released: the tree takes the socket
    # over (a new socket object on the same descriptor) and the handler lets go of its own.
    release = environ.get(SOCKET_KEY) is sock and not_tls(sock)
    try:
        try:
            sock.sendall(head)
            keeper = environ.get(_KEEP_KEY)
            transport.early = _read_ahead(keeper, sock)
            if release:
                if keeper is not None and keeper.socket is sock and _keep(sock):
                    keeper._gt_kept = True  # it lets go of the socket (WebSocketHandler.run_application)
                    transport.take_over(sock, kept=True)
                else:
                    transport.take_over(_take_over(sock))
        except OSError:
            proto.state = CONNECTING  # the Connection ends at once (1006)
            release = False
        finally:
            transport.mark_accepted()
        if release:
            return []
        sup.join()
    finally:
        if not release and not sup.dead:
            # The request greenlet was killed (server stopping): stop the tree, which
            # sends the close frame, before the server closes the socket.
            svc.stop_instance(sup.instance_id)
    if SOCKET_KEY not in environ:
        # gunicorn: tell the worker the response was handled (it closes the socket).
        raise StopIteration("websocket closed")
    return []


def _read_ahead(handler: Any, sock: Any) -> bytes:
    """What pywsgi's buffered reader already holds past the request head; never waits.

    A client may send its first frames right behind the upgrade request (before it
    saw the ``101``); pywsgi's reader then holds them, and the connection must read
    them before anything from the socket.  Under gunicorn the worker's own reader
    keeps such bytes out of reach: a client there must wait for the ``101``, as
    RFC 6455 asks of it.
    """
    if handler is None or handler.socket is not sock:  # not our pywsgi handler, or not its socket
        return b""
    rfile = handler.rfile
    if rfile is None:
        return b""
    raw: Any = rfile.raw
    if type(raw) is _SocketIO and not raw._timeout_occurred:
        # peek() returns the buffer, or on an empty buffer reads the socket once.  That read is
        # not needed (what is still in the kernel is the connection's to read) and costs a system
        # call and two exceptions: a SocketIO marked as timed out refuses it at once.
        raw._timeout_occurred = True
        try:
            return bytes(rfile.peek(1 << 16))
        except (OSError, ValueError):  # nothing buffered (or closed meanwhile)
            return b""
        finally:
            raw._timeout_occurred = False
    timeout = sock.gettimeout()
    sock.settimeout(0.0)  # peek returns what is buffered, or at most one read that does not wait
    try:
        return bytes(rfile.peek(1 << 16))
    except (OSError, ValueError):  # closed or reset meanwhile: the connection finds out itself
        return b""
    finally:
        sock.settimeout(timeout)


def _take_over(sock):
    """A new gevent socket on ``sock``'s descriptor; ``sock`` no longer closes (or reads) it."""
    family, type_, proto = sock.family, sock.type, sock.proto
    return gsocket.socket(family, type_, proto, fileno=sock.detach())


def _keep(sock) -> bool:
    """Let the tree keep pywsgi's own socket object (cheaper than :func:`_take_over`'s new one).

    The tree holds one more reference to it, the way a ``makefile()`` file does
    (``_io_refs``): the server's ``close()`` after the request then only marks it
    closed, and the descriptor closes when the tree's Connection has closed it too
    and dropped that reference (:meth:`ServerTransport._release`).  False if the
    socket does not count such references (then the caller takes the descriptor over).
    """
    if type(sock) is not _PLAIN_SOCKET and (
        not isinstance(getattr(sock, "_io_refs", None), int) or not hasattr(sock, "_decref_socketios")
    ):
        return False  # (gevent's plain socket counts them)
    sock._io_refs += 1
    return True


class _Discarded:
    """What an upgraded request's body reader (and its environ's ``wsgi.input``) becomes:
    nothing is left to read from the socket for the HTTP request (the WebSocket's bytes
    belong to the tree)."""

    __slots__ = ()

    def _discard(self) -> None:
        pass

    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int = -1) -> bytes:
        return b""

    def readlines(self, hint: int = -1) -> list[bytes]:
        return []

    def __iter__(self):
        return iter(())


_DISCARDED = _Discarded()

#: The raw stream of a socket's ``makefile()`` reader (pywsgi's ``rfile``).
_SocketIO: Any = _stdsocket.SocketIO

#: What pywsgi makes of ``log=None`` (a log that drops every line); None if gevent renames it.
_NoopLog: Any = getattr(_pywsgi, "_NoopLog", None)


class WebSocketApp:
    """A WSGI app routing WebSocket upgrades to services and everything else to ``app``.

    ``WebSocketApp(service, app=None, path=None)`` serves one service (at
    ``path`` only, if given); ``WebSocketApp(routes={"/chat": chat, "/feed":
    feed}, app=flask_app)`` several.  Plain HTTP requests go to ``app``
    (426 Upgrade Required if there is none).

    >>> from greentree.websocket import WebSocketService
    >>> app = WebSocketApp(WebSocketService(), path="/ws")
    >>> out = []
    >>> app({"PATH_INFO": "/", "REQUEST_METHOD": "GET"}, lambda s, h: out.append(s))
    [b'this endpoint speaks WebSocket only\\n']
    >>> out
    ['426 Upgrade Required']

    Serve it with pywsgi and :class:`WebSocketHandler`, or with gunicorn's
    gevent worker; see the how-to.  To run your own middleware on upgrades
    too, wrap *this* app in it, or call :func:`upgrade` from your app.
    """

    def __init__(self, service=None, app=None, path: str | None = None, *, routes: dict | None = None):
        if routes is None:
            if service is None:
                raise TypeError("WebSocketApp: pass a service, or routes={path: service}")
            self.routes: dict | None = None if path is None else {path: service}
            self.service = service
        else:
            if service is not None or path is not None:
                raise TypeError("WebSocketApp: pass either service (and path) or routes, not both")
            self.routes = dict(routes)
            self.service = None
        self.app = app

    def __call__(self, environ, start_response):
        svc = self.service if self.routes is None else self.routes.get(environ.get("PATH_INFO"))
        if svc is None or not is_websocket_request(environ):
            if self.app is not None:
                return self.app(environ, start_response)
            return _respond(start_response, "426 Upgrade Required", "this endpoint speaks WebSocket only\n",
                            [("Upgrade", "websocket")])
        return _upgrade(svc, environ, start_response)


class WebSocketHandler(WSGIHandler):
    """pywsgi's handler, plus the raw socket in ``environ[SOCKET_KEY]``.

    ``WSGIServer(addr, WebSocketApp(service), handler_class=WebSocketHandler)``.
    A client has ``server.handshake_timeout`` seconds (10 by default) to
    send its request head; one that resets meanwhile is dropped quietly.
    After an upgraded request it closes the connection instead of reading
    another HTTP request from it.
    """

    def handle(self):
        self.socket.settimeout(getattr(self.server, "handshake_timeout", 10.0))
        try:
            super().handle()
        except OSError:  # the client reset while we answered it: nothing to report
            pass

    def log_request(self):
        # pywsgi formats an access line (a timestamp, the request line, the status) for every
        # request, then gives it to the server's log; with no log (``log=None``, the default of
        # WebSocketServer) that log drops it: format nothing then.
        if type(self.server.log) is _NoopLog:
            return
        super().log_request()

    def _handle_client_error(self, ex):
        if isinstance(ex, OSError):  # a timeout or a reset while reading the head
            report_event(logging.DEBUG, "greentree.websocket: dropped %s: %r", self.client_address, ex)
            self.close_connection = True
            return None
        return super()._handle_client_error(ex)

    socket: Any  # None once an upgraded connection's tree kept it
    #: Set by :func:`upgrade` when the tree keeps this handler's socket object.
    _gt_kept = False

    def run_application(self):
        environ = self.environ
        environ[SOCKET_KEY] = self.socket
        if is_websocket_request(environ):
            self.socket.settimeout(None)
            environ[_KEEP_KEY] = self
        try:
            super().run_application()
        finally:
            # The environ outlives the request (a connection's ``request_info`` holds it): it must
            # not hold this handler (its headers, buffers and their cycle with the environ).
            environ.pop(_KEEP_KEY, None)
            if self._gt_kept or environ.get(_UPGRADED_KEY):
                self.close_connection = True
                self.status = "101 Switching Protocols"
                self.headers_sent = True
            if self._gt_kept:
                # The tree kept this socket object: from here on pywsgi neither reads from it
                # (a request body to discard, its last read before closing) nor closes its
                # descriptor directly; its buffered reader lets go of it now.
                self.wsgi_input = _DISCARDED
                self.socket = None
                rfile = self.rfile
                if rfile is not None:
                    rfile.close()
                    if environ.get("wsgi.input") is rfile:  # pywsgi's reader, closed: not kept by the environ
                        environ["wsgi.input"] = _DISCARDED


class WebSocketServer(Greenlet):
    """A supervised pywsgi server for one service, or several (``routes=``).

    Put it *after* the services' ConnectionsSupervisors in your root
    supervisor (``WebSocketServer.child_spec(service, ("127.0.0.1", 8000))``):
    it starts listening once the trees have somewhere to live, and stops
    first.  Stopping it stops accepting, then stops every connection tree
    (each client gets a 1001 close frame), then waits for the request
    greenlets.  ``started(address)`` reports the bound address (``address``
    attribute), handy with port 0.

    ``max_connections`` bounds the requests handled at once (HTTP requests
    and handshakes; more wait in the listen backlog; upgraded WebSockets
    leave the pool and are bounded by the service's ``max_connections``);
    ``handshake_timeout`` bounds how long a client may take to send its
    request head.  Without ``max_connections``, a request's greenlet that
    has finished (an upgrade finishes its request as soon as the ``101`` is
    written) waits up to ``worker_idle_timeout`` seconds (10) to serve the
    next accepted connection instead of ending, so that opening many
    connections does not create and destroy a greenlet for each;
    :meth:`handling` counts the requests being handled now.

    >>> WebSocketServer.handshake
    True
    """

    handshake = True

    def __init__(self, service, listener=("127.0.0.1", 0), app=None, path=None, *, routes=None, log=None,
                 error_log="default", max_connections: int | None = None, handshake_timeout: float = 10.0,
                 worker_idle_timeout: float = 10.0, **ssl_args):
        Greenlet.__init__(self)
        self.service = service
        self.listener = listener
        self.app = app
        self.path = path
        self.routes = routes
        self.log = log
        self.error_log = error_log
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.ssl_args = ssl_args
        self.address = None
        self.server = None
        # Checked here, in the caller's start, not later in the server's greenlet.
        self._workers = None if max_connections is not None else Workers(worker_idle_timeout)

    def handling(self) -> int:
        """How many HTTP requests and handshakes are being handled now (upgraded connections not counted)."""
        pool = self._pool
        if pool is None:
            return 0
        return len(pool)  # (Workers counts its busy workers, as gevent's Pool its greenlets)

    _pool: Any = None

    @classmethod
    def child_spec(cls, service, listener=("127.0.0.1", 0), id="websocket-server", **kwargs) -> ChildSpec:
        """A ChildSpec for this server (shutdown waits for the trees to close)."""
        services = list(kwargs["routes"].values()) if kwargs.get("routes") else [service]
        shutdown = kwargs.pop("shutdown", max(s.options.close_timeout for s in services) * 2 + 5.0)
        return ChildSpec(id, cls, service, listener, kwargs=kwargs, shutdown=shutdown)

    def _services(self) -> list:
        return list(dict.fromkeys(self.routes.values())) if self.routes else [self.service]

    def _run(self):
        # Unbounded (the default): request greenlets serve one connection after another (an
        # upgrade ends its request at once). Bounded: gevent's Pool, which stops accepting when full.
        pool: Any = self._workers if self._workers is not None else Pool(self.max_connections)
        self._pool = pool
        environ = None
        if isinstance(self.listener, tuple):
            # Name the server ourselves: pywsgi would call getfqdn(), a DNS lookup in gevent's threadpool.
            environ = {"SERVER_NAME": str(self.listener[0])}
        if self.routes:
            app = WebSocketApp(routes=self.routes, app=self.app)
        else:
            app = WebSocketApp(self.service, self.app, self.path)
        server = WSGIServer(
            self.listener, app, handler_class=WebSocketHandler,
            spawn=pool, log=self.log, error_log=self.error_log, environ=environ, **self.ssl_args,
        )
        server.handshake_timeout = self.handshake_timeout
        server.start()
        self.server = server
        self.address = server.address
        started(self.address)
        try:
            _GEvent().wait()  # serve until stopped
        finally:
            server.close()  # stop accepting
            for svc in self._services():
                svc.stop_all()  # every tree (1001); released request greenlets are not in the pool
            pool.join(timeout=max(s.options.close_timeout for s in self._services()) + 1.0)
            pool.kill(block=True, timeout=1.0)
            self.server = None
