"""The client side: outbound connections kept alive by their supervisor.

A client Connection is a *permanent* child: when the server drops it, its
ConnectionSupervisor starts a new one (and, rest_for_one, new senders), and
the new one reconnects through the same :class:`ClientTransport`, which
remembers how the last attempts went and backs off.  The WebSocket protocol
is websockets' sans-I/O ClientProtocol over a gevent socket, driven by the same
Connection shell as on the server side.
"""

from __future__ import annotations

import ipaddress
import random
import time
from urllib.parse import urlsplit

import gevent
from gevent import socket as gsocket
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidURI
from websockets.http11 import Response
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from .._errors import ChildSpecError, NotRunningError
from ._errors import RequestTimeoutError
from ._protocol import PROTOCOL_LOGGER
from ._tree import WebSocketService

__all__ = ["ClientTransport", "ClientManager"]


class _HandshakeFailed(Exception):
    pass


class ClientTransport:
    """How a client Connection (re)connects to ``url`` (``ws://`` or ``wss://``).

    >>> t = ClientTransport("ws://127.0.0.1:9000/chat", backoff_base=0.1, backoff_max=2.0)
    >>> t.peer, [t.delay_for(n, jitter=1.0) for n in range(5)]
    ('ws://127.0.0.1:9000/chat', [0.0, 0.1, 0.2, 0.4, 0.8])

    Backoff: ``failures`` counts failed connects and sessions shorter than
    ``stable_after`` seconds in a row; the n-th consecutive failure waits
    ``backoff_base * 2**(n-1)`` seconds (at most ``backoff_max``), times a
    random jitter in [0.5, 1] so that many clients of one restarted server
    do not reconnect in lockstep.  A session that lasted ``stable_after``
    seconds resets the count.
    """

    restart = "permanent"

    def __init__(self, url: str, *, connect_timeout: float = 5.0, backoff_base: float = 0.05,
                 backoff_max: float = 5.0, stable_after: float = 1.0, subprotocols=(), headers=(),
                 ssl_context=None):
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ChildSpecError(f"ClientTransport({url!r}): the url must look like ws://host:port/path or wss://...")
        for name, value in (("connect_timeout", connect_timeout), ("backoff_base", backoff_base),
                            ("backoff_max", backoff_max), ("stable_after", stable_after)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ChildSpecError(f"ClientTransport({url!r}): {name} must be a number >= 0, not {value!r}")
        self.url = url
        self.peer = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "wss" else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.secure = parts.scheme == "wss"
        self.host_header = parts.netloc.rsplit("@", 1)[-1]
        self.connect_timeout = float(connect_timeout)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.stable_after = float(stable_after)
        self.subprotocols = list(subprotocols)
        self.headers = list(headers)
        self.ssl_context = ssl_context
        self.failures = 0
        self.attempts = 0
        self._opened_at: float | None = None
        self.subprotocol: str | None = None

    def delay_for(self, failures: int, jitter: float | None = None) -> float:
        """Seconds to wait before an attempt after ``failures`` consecutive failures."""
        if failures <= 0:
            return 0.0
        base = min(self.backoff_max, self.backoff_base * (2 ** (failures - 1)))
        return base * (random.uniform(0.5, 1.0) if jitter is None else jitter)

    def open(self, conn):
        """Connect (with backoff) and do the client handshake; return ``(sock, protocol, b"")``.

        Runs in the Connection greenlet, after it signalled started(): the
        supervisor is not blocked while this retries.
        """
        stats = conn.service.stats
        while True:
            self.attempts += 1
            if self.attempts > 1:
                stats.reconnects += 1
            delay = self.delay_for(self.failures)
            if delay:
                gevent.sleep(delay)
            sock = None
            try:
                sock = self._connect()
                if self.secure:
                    from gevent import ssl as gssl

                    ctx = self.ssl_context or gssl.create_default_context()
                    sock = ctx.wrap_socket(sock, server_hostname=self.host)
                proto, data = self._handshake(sock, conn.service.codec.max_size)
            except (OSError, gevent.Timeout, InvalidHandshake, _HandshakeFailed) as e:
                if isinstance(e, gevent.Timeout):
                    e.close()
                self.failures += 1
                stats.connect_failures += 1
                conn.close_reason = f"connect to {self.url} failed: {type(e).__name__}: {e}"
                if sock is not None:
                    sock.close()
                continue
            self._opened_at = time.monotonic()
            return sock, proto, data

    def _connect(self):
        try:
            family = gsocket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else gsocket.AF_INET
        except ValueError:  # a host name: resolve it (gevent's resolver)
            return gsocket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        # An IP literal: no resolver round trip (gevent's default one runs in a thread pool).
        sock = gsocket.socket(family, gsocket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout)
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        return sock

    def _handshake(self, sock, max_size):
        try:
            uri = parse_uri(self.url)
        except InvalidURI as e:
            raise _HandshakeFailed(str(e)) from None
        proto = ClientProtocol(uri, subprotocols=self.subprotocols or None, max_size=max_size,
                               logger=PROTOCOL_LOGGER)
        request = proto.connect()
        for k, v in self.headers:
            request.headers[k] = v
        proto.send_request(request)
        for data in proto.data_to_send():
            sock.sendall(data)
        deadline = time.monotonic() + self.connect_timeout
        while True:
            if time.monotonic() > deadline:
                raise _HandshakeFailed(f"no handshake answer within {self.connect_timeout} s")
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                raise _HandshakeFailed("the server closed the connection during the handshake")
            proto.receive_data(data)
            events = proto.events_received()
            for i, ev in enumerate(events):
                if isinstance(ev, Response):
                    if proto.state is not OPEN:
                        raise _HandshakeFailed(f"the server refused the upgrade (HTTP {ev.status_code})")
                    self.subprotocol = proto.subprotocol
                    # Frames that came in the same read as the 101: the Connection reads them first.
                    proto.events[:0] = events[i + 1:]
                    return proto, b""

    def closed(self, conn, was_connected) -> None:
        """Called by the Connection as it ends: feeds the backoff."""
        if not was_connected or self._opened_at is None:
            return
        lasted = time.monotonic() - self._opened_at
        self._opened_at = None
        self.failures = 0 if lasted >= self.stable_after else self.failures + 1


class ClientManager:
    """Keeps outbound WebSocket connections alive, each in its own tree.

    ``ClientManager(handler=None, **service_options)`` builds its own
    :class:`WebSocketService` (``manager.service``): run its
    ``manager.child_spec()`` under your root supervisor (or ``with
    manager.supervisor(): ...``), then :meth:`connect`.

    >>> mgr = ClientManager(ping_interval=5.0)
    >>> mgr.service.options.ping_interval
    5.0

    The ids of :meth:`connect` survive reconnects: address a connection by
    id (:meth:`request`, :meth:`send`, :meth:`connection`), not by the
    Connection greenlet, which is replaced on every reconnect.
    """

    def __init__(self, handler=None, *, service: WebSocketService | None = None, **service_kw):
        if service is not None and (handler is not None or service_kw):
            raise TypeError("ClientManager: pass service=... or the service's arguments, not both")
        self.service = service if service is not None else WebSocketService(handler, **service_kw)

    def supervisor(self, max_connections: int | None = -1):
        return self.service.supervisor(max_connections)

    def child_spec(self, id="client-connections", max_connections: int | None = -1, **spec_kw):
        return self.service.child_spec(id, max_connections, **spec_kw)

    def connect(self, url: str, instance_id=None, **transport_kw):
        """Start a tree that keeps a connection to ``url`` open; return ``(supervisor, connection)``.

        Returns at once: the Connection connects (and reconnects) in its own
        greenlet; use ``connection.wait_connected()`` or :meth:`request`.
        """
        return self.service.start_instance(ClientTransport(url, **transport_kw), instance_id)

    def disconnect(self, instance_id, timeout: float | None = None) -> bool:
        """Stop the tree for good; False if there is no such connection."""
        return self.service.stop_instance(instance_id, timeout)

    def connection(self, instance_id):
        """The current Connection greenlet of ``instance_id``, or None."""
        return self.service.connection(instance_id)

    def request(self, instance_id, body, conversation=None, timeout: float | None = 10.0):
        """Send a request on the current connection of ``instance_id`` (waiting for it to be up)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise RequestTimeoutError(f"ClientManager.request(): {instance_id!r} not connected within {timeout} s")
            conn = self.service.connection(instance_id)
            if conn is None:
                if self.service.whereis(instance_id, "supervisor") is None:
                    raise NotRunningError(f"ClientManager.request(): no connection {instance_id!r}")
                gevent.sleep(0.005)  # between a Connection's exit and its restart
                continue
            if conn.wait_connected(left):
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                return conn.request(body, conversation, timeout=left)

    def send(self, instance_id, conversation, body):
        """Queue ``body`` on a conversation sender (ordered, acknowledged); return an AsyncResult."""
        return self.service.send(instance_id, conversation, body)
