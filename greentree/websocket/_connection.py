"""Connection: the greenlet that owns a WebSocket's socket (a thin shell around :class:`ConnectionCore`).

Theory of operation.  A socket has exactly one reader and at most one
blocked writer:

* the **Connection greenlet is the reader**: it reads bytes, hands them to
  its :class:`~greentree.websocket._protocol.ConnectionCore` (the pure
  object that decides everything: frame dispatch, request/reply ids,
  keepalive, close codes) and acts on what the core returns: a frame goes to
  the service (its conversation's sender), a reply wakes the request waiting
  for it.  Before its next read the reader lends its turn to the sender it
  fed last, which answers then, ahead of the other connections' reads (a
  handler that waits for anything gives the turn straight back);
* **writes are inline** while nothing is queued: whoever sends (a sender, a
  topic broadcast, the reader answering a ping) encodes the frame and writes
  it with one non-blocking ``send`` on the raw socket, in its own greenlet,
  without yielding, so frames never interleave.  Only when the kernel buffer
  is full does the rest go to a bounded backlog, drained by a **writer
  greenlet that exists only while there is a backlog**.  A backlog longer
  than ``send_queue`` frames, or one write stalled past ``write_timeout``,
  means the peer does not read: the connection fails (1008).

Keepalive needs no timer of its own: the reader's ``recv`` times out when the
core asks (``tick``), and the core queues a ping or declares the peer
half-open (1011).  While data keeps arriving the reader yields to the hub
(``gevent.idle()``) every few milliseconds, so a peer streaming tiny frames
cannot stall the other connections and timers of the process.

How a Connection ends, and what its supervisor sees:

====================================  ==========  =====================
what happened                         close code  exit
====================================  ==========  =====================
peer sent a close frame               peer's      normal (returns)
EOF or reset, no close frame          1006        normal
invalid / oversized / wrong-kind      1002/1007/  normal (peer's fault,
message                               1009/1003   counted in stats)
a conversation flooded by the peer    1008        normal
no traffic, no pong (half-open)       1011        normal
``close()``                           given       normal
the peer does not read                1008        crash: SlowConsumerError
supervisor stops it (ShutdownExit)    1001        shutdown
its tree gives up (handler keeps      1011        shutdown
crashing past the restart limits)
a bug in greentree or an injected     1011        crash
crash
====================================  ==========  =====================
"""

from __future__ import annotations

import errno
import socket as _socket
import struct
import time
from collections import deque
from typing import Any

import gevent
from gevent import GreenletExit, getcurrent
from gevent.event import AsyncResult
from gevent.event import Event as _GEvent
from gevent.socket import socket as _PLAIN_SOCKET
from gevent.socket import wait_write

from .. import _telemetry
from .._child import Greenlet
from .._errors import BlockingCallError
from ._errors import (
    ConnectionClosedError,
    FrameError,
    KeepaliveTimeoutError,
    RemoteError,
    RequestTimeoutError,
    SlowConsumerError,
)
from ._frames import MSG
from ._options import Event, emit
from ._protocol import ConnectionCore

_T_OPEN = _telemetry.slot(_telemetry.WEBSOCKET_OPEN)  # non-empty only while a handler listens
_T_CLOSE = _telemetry.slot(_telemetry.WEBSOCKET_CLOSE)

__all__ = ["Connection", "not_tls"]

_monotonic = time.monotonic
#: While bytes keep arriving, the reader yields to the hub after this much work (seconds).
YIELD_EVERY = 0.002
#: ... checking after every slice of this many received bytes.
SLICE = 4096


#: gevent's plain socket waits for readability with ``_wait(_read_event)`` (what its ``recv``
#: does after EAGAIN); False if a gevent version has no such method.
_WAIT_FIRST = callable(getattr(_PLAIN_SOCKET, "_wait", None))


def not_tls(sock: Any) -> bool:
    """True if ``sock`` is not a TLS socket.

    gevent's plain socket answers at once; anything else is asked for ``do_handshake``
    (which a gevent socket would look up through its ``__getattr__``, failing with an
    AttributeError: a Python call and an exception per connection).
    """
    return type(sock) is _PLAIN_SOCKET or not hasattr(sock, "do_handshake")


class _LocalClose(BaseException):
    """Thrown into the reader by :meth:`Connection.close` (private)."""

    def __init__(self, code, reason):
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class _PeerGone(Exception):
    """A write saw the socket fail (EPIPE, ECONNRESET): end with 1006 (private)."""


class Connection(Greenlet):
    """The owner of one WebSocket connection and its consumer API.

    A Connection is started by its ``ConnectionSupervisor`` (see
    :func:`greentree.websocket.start_instance`); the greenlet is the handle a
    consumer talks to:

    * :meth:`send` a message, :meth:`request` a reply (both take an optional
      ``conversation``; ``request`` needs a codec with ids),
    * :meth:`close` the connection, :meth:`wait_connected` for the handshake
      (the client side connects after it started).

    ``request`` (the server side's :class:`Request`: path, query, headers,
    cookies, peer; None on the client side), ``instance_id`` and ``peer`` are
    attributes; ``state`` is a dict for your own per-connection data (the
    ``on_connect`` hook's return value when it returned a dict);
    ``close_code`` and ``close_reason`` tell how it ended.

    It starts without a handshake and its constructor never yields, so its
    tree starts inline in the greenlet that accepted the upgrade.

    >>> Connection.handshake, Connection.nonblocking_init
    (False, True)
    """

    nonblocking_init = True

    # What every Connection starts with (class attributes: a new connection stores only what
    # differs, a smaller instance dict made with fewer stores).
    close_code: int | None = None
    close_reason: str | None = None
    #: ``(topics, topic)`` pairs it joined (a set of its own from the first join on).
    topics: frozenset | set = frozenset()
    _core: ConnectionCore | None = None
    # True once open or ended (what wait_connected() waits for); an Event only if someone waits.
    _settled = False
    _settled_ev: _GEvent | None = None
    _sock: Any = None
    _raw_send: Any = None
    _backlog: deque | None = None
    _writer: Any = None
    _closing = False
    _abortive = False
    _gone = False
    _memo: tuple | None = None  # (conversation, its sender): see WebSocketService._deliver
    _fed: Any = None  # the inbox the reader fed last, handed its turn before the next read

    def __init__(self, service, instance_id, transport):
        Greenlet.__init__(self)
        self.service = service
        self.instance_id = instance_id
        self.transport = transport
        self.request_info = getattr(transport, "request", None)
        self.state: dict = dict(getattr(transport, "state", None) or ())
        # Known from the start (the tree starts inline, before this greenlet first runs).
        self.peer = getattr(transport, "peer", None)

    def __repr__(self) -> str:
        state = "connected" if self._settled else ("closed" if self._closing or self.dead else "connecting")
        return f"<Connection {self.instance_id!r} {state} peer={self.peer!r}>"

    def _settle(self) -> None:
        self._settled = True
        ev = self._settled_ev
        if ev is not None:
            ev.set()

    def _wait_settled(self, timeout: float | None) -> bool:
        if self._settled:
            return True
        ev = self._settled_ev
        if ev is None:
            ev = self._settled_ev = _GEvent()
        return ev.wait(timeout)

    # ------------------------------------------------------------ consumer API
    @property
    def connected(self) -> bool:
        """True while the WebSocket is open."""
        return self._settled and not self._closing

    @property
    def codec(self):
        """The service's codec (what :meth:`send` bodies go through)."""
        return self.service.codec

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the WebSocket is open; return False on timeout or if it ended."""
        if self._settled:
            return not self._closing
        if self.dead:
            return False
        return self._wait_settled(timeout) and not self._closing

    def send(self, body, conversation=None) -> None:
        """Send a one-way message now (inline, or queued behind a backlog).

        Never blocks.  Raises :class:`ConnectionClosedError` if the connection
        is closed, and :class:`SlowConsumerError` (the connection then fails)
        if the peer lets more than ``send_queue`` frames pile up.
        """
        self._send(MSG, body, None, conversation, "send")

    def request(self, body, conversation=None, timeout: float | None = -1.0):
        """Send a ``req`` frame and return the peer's reply body.

        Waits for the connection to be open first (client side).  ``timeout``
        defaults to ``options.request_timeout``; past it,
        :class:`RequestTimeoutError`.  An ``err`` reply raises
        :class:`RemoteError`; the connection closing first raises
        :class:`ConnectionClosedError`.  Needs a codec with ids (TypeError).
        """
        if getcurrent() is self:
            raise BlockingCallError(
                f"{self!r}.request() called from the Connection's own reader greenlet: the reply "
                "could never be read; call it from a sender or another greenlet"
            )
        if not self.service.codec.has_ids:
            raise TypeError(f"{self!r}.request(): the {self.service.codec.name} codec has no request ids")
        if timeout == -1.0:
            timeout = self.service.options.request_timeout
        deadline = None if timeout is None else _monotonic() + timeout
        if not self._settled:
            if self.dead or self._closing:
                raise ConnectionClosedError(f"{self!r}.request(): the connection is closed")
            if not self._wait_settled(timeout):
                raise RequestTimeoutError(f"{self!r}.request(): not connected within {timeout} s")
        core = self._open_core("request")
        ar = AsyncResult()
        rid = core.request(ar, body, conversation)
        try:
            self._flush()
            left = None if deadline is None else max(0.0, deadline - _monotonic())
            try:
                return ar.get(timeout=left)
            except gevent.Timeout:
                raise RequestTimeoutError(
                    f"{self!r}.request(): no reply to request {rid} within {timeout} s"
                ) from None
        finally:
            core.forget(rid)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket with ``code``: the reader sends the close frame,
        flushes it and ends (normally).  Idempotent; does not wait.

        On the client side the supervisor reconnects a closed Connection; use
        ``stop_instance`` to end it for good.
        """
        if self._closing or self.dead:
            return
        if getcurrent() is self:
            raise _LocalClose(code, reason)
        self.kill(_LocalClose(code, reason), block=False)

    # ------------------------------------------------------------ used by senders and topics
    def _reply(self, rid, body, conversation=None, error=False) -> None:
        core = self._core
        if core is None or self._closing or core.ended is not None or self.dead or not core.is_open:
            raise ConnectionClosedError(f"{self!r}.reply(): the connection is closed")
        core.reply(rid, body, conversation, error=error)
        self.service.stats.messages_out += 1
        self._flush()

    def _send(self, type: str, body, rid, conversation, op: str) -> None:
        core = self._open_core(op)
        core.send(type, body, id=rid, conversation=conversation)
        self.service.stats.messages_out += 1
        self._flush()

    def _send_encoded(self, data: bytes | str) -> None:
        """Send an already encoded message (a topic broadcast encodes once for all members)."""
        core = self._open_core("publish")
        core.send_encoded(data)
        self.service.stats.messages_out += 1
        self._flush()

    def _open_core(self, op: str) -> ConnectionCore:
        core = self._core
        if core is None or self._closing or self.dead or not core.is_open:
            raise ConnectionClosedError(f"{self!r}.{op}(): the connection is closed")
        return core

    # ------------------------------------------------------------ writing
    def _flush(self) -> None:
        """Write what the core produced: inline while there is no backlog."""
        core = self._core
        if core is None:
            return
        proto = core.proto
        writes = proto.writes
        if not writes:  # nothing produced (the common case)
            return
        proto.writes = []  # what core.data_to_send() does, without two calls
        for data in writes:
            if not data:  # websockets' SEND_EOF: the closing handshake is over on our side
                continue
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self._gone:
            return
        backlog = self._backlog
        if backlog is None:
            raw = self._raw_send
            if raw is not None:
                try:
                    n = raw(data)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError as e:
                    self._lost(e)
                    return
                if n == len(data):
                    return
                data = data[n:]
            backlog = self._backlog = deque()
        if len(backlog) >= self.service.options.send_queue:
            err = SlowConsumerError(
                f"{self!r}: {len(backlog)} frames wait to be written (send_queue): the peer does not "
                "read; closing it (1008)"
            )
            self._fail(err)
            raise err
        backlog.append(data)
        if self._writer is None:
            self._writer = gevent.spawn(self._drain)

    def _drain(self) -> None:
        """The writer greenlet: lives only while there is a backlog."""
        backlog = self._backlog
        sock = self._sock
        timeout = self.service.options.write_timeout
        raw = self._raw_send
        try:
            while backlog:
                data = backlog[0]
                if raw is None:
                    with gevent.Timeout(timeout, TimeoutError("write_timeout")):
                        sock.sendall(data)
                    backlog.popleft()
                    continue
                try:
                    n = raw(data)
                except (BlockingIOError, InterruptedError):
                    n = 0
                if n == len(data):
                    backlog.popleft()
                else:
                    backlog[0] = data[n:]
                    wait_write(sock.fileno(), timeout=timeout, timeout_exc=TimeoutError("write_timeout"))
        except TimeoutError:
            self._fail(SlowConsumerError(
                f"{self!r}: one write stalled for write_timeout={timeout} s: the peer does not read; "
                "closing it (1008)"
            ))
        except OSError as e:
            self._lost(e)
        finally:
            self._writer = None
            if not backlog:
                self._backlog = None

    def _lost(self, e: OSError) -> None:
        self._gone = True
        self._fail(_PeerGone(f"connection lost while writing: {errno.errorcode.get(e.errno or 0, e)}"))

    def _fail(self, err: BaseException) -> None:
        """Make the reader end with ``err`` (from a writer or a sender). Never blocks."""
        if self._closing or self.dead:
            return
        if getcurrent() is self:
            raise err
        self.kill(err, block=False)

    # ------------------------------------------------------------ the reader
    def _gt_notify_exit(self, exit) -> None:
        if not self._closing:
            # Stopped before its body ever ran: nothing has closed the socket it was handed.
            self._closing = True
            if exit.kind == "crash":  # killed with an error before it ran: still a crash to count
                svc = self.service
                svc.stats.connection_crashes += 1
                emit(svc.events, Event("connection_crashed", self.instance_id, exit.reason))
            abandon = getattr(self.transport, "abandon", None)
            if abandon is not None:
                abandon()
        super()._gt_notify_exit(exit)

    def _run(self):
        svc = self.service
        stats = svc.stats
        code, reason, flush = 1006, "", False
        try:
            sock, proto, data = self.transport.open(self)
            o = svc.options
            self._core = ConnectionCore(
                proto, svc.codec, ping_interval=o.ping_interval, ping_timeout=o.ping_timeout,
                max_fragments=o.max_fragments, now=_monotonic(),
            )
            self._sock = sock
            raw = getattr(sock, "_sock", None)  # gevent's socket wraps a non-blocking stdlib one
            if raw is not None and not_tls(sock):
                self._raw_send = raw.send
            self.peer = self.transport.peer
            self._settle()
            stats.connections_opened += 1
            if _T_OPEN:
                _telemetry.websocket(_telemetry.WEBSOCKET_OPEN, self, svc)
            if svc.events is not None:
                emit(svc.events, Event("connected", self.instance_id, self.peer))
            if svc.on_open is not None:
                svc._on_open(self)
            code, reason, flush = self._read_loop(sock, data)
        except _LocalClose as e:
            code, reason, flush = e.code, e.reason, True
        except _PeerGone as e:
            code, reason = 1006, str(e)
        except KeepaliveTimeoutError as e:
            stats.keepalive_timeouts += 1
            code, reason, flush = 1011, "keepalive timeout", True
            self.close_reason = str(e)
        except SlowConsumerError as e:
            stats.slow_consumers += 1
            code, reason, self._abortive = 1008, "slow consumer", True
            emit(svc.events, Event("connection_crashed", self.instance_id, e))
            raise
        except GreenletExit:
            if svc._giving_up(self.instance_id):
                code, reason = 1011, "the handler keeps failing"
            else:
                code, reason = 1001, "going away"
            flush = True
            raise
        except BaseException as e:
            stats.connection_crashes += 1
            code, reason, flush = 1011, "internal error", True
            emit(svc.events, Event("connection_crashed", self.instance_id, e))
            raise
        finally:
            self._teardown(code, reason, flush)

    def _read_loop(self, sock, data: bytes):
        """Read until the WebSocket ends; return ``(close_code, reason, flush)``."""
        svc = self.service
        stats = svc.stats
        core = self._core
        assert core is not None
        recv = sock.recv
        deliver = svc._deliver
        timeout: Any = -1
        busy = 0.0  # seconds spent on received data since the last yield
        # gevent's plain socket: its own wait for readability (what its recv() does after EAGAIN).
        plain = type(sock) is _PLAIN_SOCKET and _WAIT_FIRST and getattr(sock, "_read_event", None) is not None
        first = sock._read_event if not data and plain else None
        try:
            early = bool(core.proto.events)  # frames that arrived with the handshake
            while True:
                if data or early:
                    early = False
                    # Big reads are fed in slices so that a stream of tiny frames yields often.
                    for i in range(0, max(len(data), 1), SLICE):
                        now = _monotonic()
                        for action in core.receive(data[i:i + SLICE] if len(data) > SLICE else data, now):
                            stats.messages_in += 1
                            if action[0] == "frame":
                                deliver(self, action[1])
                            elif action[2]:
                                action[1].set(action[3])
                            else:
                                action[1].set_exception(RemoteError(
                                    f"{self!r}: the peer answered a request with an error: {action[3]!r}"))
                        action = None  # not held while reading: a delivered message is its sender's alone
                        self._flush()
                        if core.ended is not None:
                            return self._ended(core)
                        busy += _monotonic() - now
                        if busy >= YIELD_EVERY:
                            gevent.idle()  # let timers and other connections run; sleep(0) would not
                            busy = 0.0
                if core.ping_interval is not None:  # keepalive: maybe a ping to send now
                    wait = core.tick(_monotonic())
                    self._flush()
                else:
                    wait = None
                if wait != timeout:
                    sock.settimeout(wait)
                    timeout = wait
                fed = self._fed
                if fed is not None:  # the conversation fed last answers now, before other connections run
                    self._fed = None
                    if plain:
                        # Wait for the next read while it answers: the loop resumes us when the
                        # socket is readable, with no read tried (and failed) first.
                        ready = fed.hand_over_until(sock._read_event, timeout)
                        if ready is False:
                            data = b""
                            continue  # quiet: tick() decides (ping, or half-open)
                    else:
                        fed.hand_over()
                try:
                    if first is not None:
                        # A new connection has usually nothing to read yet (its client waits for
                        # the 101 before it sends): wait until it has, rather than try a read that
                        # fails (EAGAIN) first.  Times out and fails as recv() would.
                        sock._wait(first)
                        first = None
                    data = recv(65536)
                except TimeoutError:
                    data = b""
                    continue  # quiet: tick() decides (ping, or half-open)
                except OSError as e:
                    return 1006, f"connection lost: {errno.errorcode.get(e.errno or 0, e)}", False
                if not data:
                    core.receive_eof()
                    return 1006, "connection lost: EOF without a close frame", False
        except FrameError as e:
            # A flooded conversation (1008, raised by deliver()).
            stats.bad_frames += 1
            stats.conversation_overflows += e.code == 1008
            return e.code, e.reason, True

    def _ended(self, core: ConnectionCore):
        code, reason = core.ended  # type: ignore[misc]
        stats = self.service.stats
        if core.proto.close_rcvd is not None and core.proto.close_rcvd_then_sent:
            return code, reason, False  # the peer closed; our echo is written
        if code not in (1000, 1001, 1005, 1006):
            stats.bad_frames += 1
            stats.oversized_frames += code == 1009
        return code, reason, True

    # ------------------------------------------------------------ ending
    def _teardown(self, code, reason, flush) -> None:
        self._closing = True
        self.close_code = code
        if self.close_reason is None:
            self.close_reason = reason
        was_connected = self._settled
        self._settle()  # wake wait_connected(); `connected` is now False
        svc = self.service
        core, sock = self._core, self._sock
        try:
            if was_connected:
                svc._on_close(self)
            if core is not None and core.pending:
                pending, core.pending = core.pending, {}
                for ar in pending.values():
                    ar.set_exception(ConnectionClosedError(f"{self!r} closed ({code} {reason}) before the reply came"))
            if core is not None and sock is not None and not self._gone and not self._abortive:
                if flush:
                    core.close(code, reason)
                    self._flush()
                    writer = self._writer
                    if writer is not None:
                        writer.join(svc.options.close_timeout)
                    self._await_peer_close(sock, core, svc.options.close_timeout)
            writer = self._writer
            if writer is not None:
                writer.kill(block=True, timeout=1.0)
        finally:
            if sock is not None:
                try:
                    if self._abortive:
                        # RST now: a peer that stopped reading must not pin kernel buffers.
                        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                except OSError:
                    pass
                if core is not None:
                    core.release()  # after the socket: nothing more can arrive to parse
            self._backlog = None
            if was_connected:
                svc.stats.connections_closed += 1
                svc.stats.close_codes[int(code)] += 1
                if _T_CLOSE:
                    _telemetry.websocket(_telemetry.WEBSOCKET_CLOSE, self, svc, code=code, reason=reason)
                if svc.events is not None:
                    emit(svc.events, Event("disconnected", self.instance_id, (code, reason)))
            self.transport.closed(self, was_connected)

    @staticmethod
    def _await_peer_close(sock, core: ConnectionCore, timeout: float) -> None:
        """After our close frame: read (and drop) until the peer's close, EOF or ``timeout``.

        Closing a socket with unread input makes the kernel send a reset,
        which can destroy our close frame before the peer reads it.
        """
        if core.closing_handshake_done:
            return
        try:
            sock.settimeout(timeout)
            with gevent.Timeout(timeout, False):
                while not core.closing_handshake_done:
                    data = sock.recv(65536)
                    if not data:
                        return
                    core.proto.receive_data(data)
                    core.proto.events_received()
        except (OSError, FrameError):
            pass
