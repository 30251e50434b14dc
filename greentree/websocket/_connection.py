"""Connection: the one greenlet that owns a WebSocket's socket.

Theory of operation.  A socket has exactly one reader and one writer:

* the **Connection greenlet is the reader**.  It feeds received bytes to
  wsproto (sans-IO), answers pings, matches replies to pending requests by id
  (seed 001's "IQ" correlation) and hands every other frame to its
  conversation's ``ConversationSender``;
* a **writer greenlet**, owned by the Connection (started by it, killed in its
  ``finally``), drains a bounded queue of ready-made frames with ``sendall``.
  Everyone else, senders included, only *enqueues*: several greenlets writing
  one gevent socket interleave frames or raise ``ConcurrentObjectUseError``.

The writer also keeps the connection alive: when the queue stays empty for
``ping_interval`` seconds and nothing came from the peer, it sends a ping; if
nothing at all arrives ``ping_timeout`` seconds later, the connection is
half-open and is closed with 1011.

How a Connection ends, and what its supervisor sees:

====================================  ==========  =====================
what happened                         close code  exit
====================================  ==========  =====================
peer sent a close frame               peer's      normal (returns)
EOF or reset, no close frame          1006        normal
undecodable / oversized / text frame  1007/1009/  normal (peer's fault,
                                      1003        counted in stats)
a conversation flooded by the peer    1008        normal
no traffic, no pong (half-open)       1011        normal
``close()``                           given       normal
send queue full / a write stalled     1008        crash: SlowConsumerError
supervisor stops it (ShutdownExit)    1001        shutdown
a bug in greentree or an injected     1011        crash
crash
====================================  ==========  =====================

On the server side the Connection is a temporary, significant child: any
exit ends its tree.  On the client side it is permanent: its supervisor
starts a new one, which reconnects with backoff.
"""

from __future__ import annotations

import errno
import itertools
import socket as _socket
import struct
import time

import gevent
from gevent import GreenletExit, getcurrent
from gevent.event import AsyncResult, Event as _GEvent
from gevent.queue import Empty, Full, Queue
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage

from .._child import Greenlet, started
from .._errors import BlockingCallError
from ._errors import (
    WebSocketError, ConnectionClosedError, FrameError, KeepaliveTimeoutError, RemoteError, RequestTimeoutError,
    SlowConsumerError,
)
from ._frames import ERR, MSG, REP, REQ, MessageAssembler
from ._options import Event, emit

__all__ = ["Connection"]

_STOP = object()  # tells the writer to return after what is queued before it
_monotonic = time.monotonic


class _LocalClose(BaseException):
    """Thrown into the reader by :meth:`Connection.close` (private)."""

    def __init__(self, code, reason):
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class _PeerGone(Exception):
    """The writer saw the socket fail (EPIPE, ECONNRESET): end with 1006 (private)."""


class Connection(Greenlet):
    """The owner of one WebSocket connection and its consumer API.

    A Connection is started by its ``ConnectionSupervisor`` (see
    :func:`greentree.websocket.start_instance`); the greenlet is the handle a
    consumer talks to:

    * :meth:`send` a one-way message, :meth:`request` a reply (both take an
      optional ``conversation``),
    * :meth:`close` the connection, :meth:`wait_connected` for the handshake
      (the client side connects after it started).

    All of them may be called from any greenlet except the Connection's own
    (its reader): they only enqueue frames and wait on results.

    >>> Connection.handshake
    True

    The instance id and the peer are attributes; ``close_code`` and
    ``close_reason`` tell how it ended.
    """

    handshake = True

    def __init__(self, service, instance_id, transport):
        Greenlet.__init__(self)
        self.service = service
        self.instance_id = instance_id
        self.transport = transport
        self.peer = None
        self.close_code = None
        self.close_reason = None
        self._out = Queue(service.options.send_queue)
        self._pending: dict = {}
        self._ids = itertools.count(1)
        self._connected = _GEvent()
        self._ws = None
        self._sock = None
        self._writer = None
        self._closing = False
        self._abortive = False
        self._last_recv = 0.0
        self._ping_sent = 0.0

    def __repr__(self) -> str:
        state = "connected" if self._connected.is_set() else ("closed" if self._closing or self.dead else "connecting")
        return f"<Connection {self.instance_id!r} {state} peer={self.peer!r}>"

    # ------------------------------------------------------------ consumer API
    @property
    def connected(self) -> bool:
        """True while the WebSocket is open."""
        return self._connected.is_set() and not self._closing

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the WebSocket is open; return False on timeout or if it ended."""
        if self._connected.is_set():
            return not self._closing
        if self.dead:
            return False
        return self._connected.wait(timeout) and not self._closing

    def send(self, body, conversation=None) -> None:
        """Enqueue a one-way ``msg`` frame.

        Raises :class:`ConnectionClosedError` if the connection is closed, and
        :class:`SlowConsumerError` (the connection then fails) if the peer
        lets ``send_queue`` frames pile up.
        """
        data = self.service.codec.encode(MSG, body, conversation=conversation)
        self._enqueue_message(data, "send")

    def request(self, body, conversation=None, timeout: float | None = -1.0):
        """Send a ``req`` frame and return the peer's reply body.

        Waits for the connection to be open first (client side).  ``timeout``
        defaults to ``options.request_timeout``; past it,
        :class:`RequestTimeoutError`.  An ``err`` reply raises
        :class:`RemoteError`; the connection closing first raises
        :class:`ConnectionClosedError`.
        """
        if getcurrent() is self:
            raise BlockingCallError(
                f"{self!r}.request() called from the Connection's own reader greenlet: the reply "
                "could never be read; call it from a sender or another greenlet"
            )
        if timeout == -1.0:
            timeout = self.service.options.request_timeout
        deadline = None if timeout is None else _monotonic() + timeout
        if not self._connected.is_set():
            if self.dead or self._closing:
                raise ConnectionClosedError(f"{self!r}.request(): the connection is closed")
            if not self._connected.wait(timeout):
                raise RequestTimeoutError(f"{self!r}.request(): not connected within {timeout} s")
        rid = next(self._ids)
        data = self.service.codec.encode(REQ, body, id=rid, conversation=conversation)
        ar = AsyncResult()
        self._pending[rid] = ar
        try:
            self._enqueue_message(data, "request")
            left = None if deadline is None else max(0.0, deadline - _monotonic())
            try:
                return ar.get(timeout=left)
            except gevent.Timeout:
                raise RequestTimeoutError(
                    f"{self!r}.request(): no reply to request {rid} within {timeout} s"
                ) from None
        finally:
            self._pending.pop(rid, None)

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

    # ------------------------------------------------------------ used by senders
    def _reply(self, rid, body, conversation=None, error=False) -> None:
        data = self.service.codec.encode(ERR if error else REP, body, id=rid, conversation=conversation)
        self._enqueue_message(data, "reply")

    def _enqueue_message(self, data: bytes, op: str) -> None:
        ws = self._ws
        if ws is None or self._closing or self.dead:
            raise ConnectionClosedError(f"{self!r}.{op}(): the connection is closed")
        self._enqueue(ws.send(Message(data=data)))
        self.service.stats.messages_out += 1

    def _enqueue(self, data) -> None:
        try:
            self._out.put_nowait(data)
        except Full:
            err = SlowConsumerError(
                f"{self!r}: {self._out.maxsize} frames wait to be written (send_queue): the peer "
                "does not read; closing it (1008)"
            )
            self._fail(err)
            raise err from None

    def _fail(self, err: BaseException) -> None:
        """Make the reader end with ``err`` (from the writer or a sender). Never blocks."""
        if self._closing or self.dead:
            return
        if getcurrent() is self:
            raise err
        self.kill(err, block=False)

    # ------------------------------------------------------------ the reader
    def _run(self):
        started(self)
        svc = self.service
        stats = svc.stats
        code, reason, flush = 1006, "", False
        try:
            sock, ws, events = self.transport.open(self)
            self._sock, self._ws = sock, ws
            self.peer = self.transport.peer
            sock.settimeout(svc.options.write_timeout)
            self._last_recv = _monotonic()
            self._writer = gevent.spawn(self._write_loop, sock)
            self._connected.set()
            stats.connections_opened += 1
            emit(svc.events, Event("connected", self.instance_id, self.peer))
            code, reason, flush = self._read_loop(sock, ws, events)
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
            code, reason, flush = 1001, "going away", True
            raise
        except BaseException as e:
            stats.connection_crashes += 1
            code, reason, flush = 1011, "internal error", True
            emit(svc.events, Event("connection_crashed", self.instance_id, e))
            raise
        finally:
            self._teardown(code, reason, flush)

    def _read_loop(self, sock, ws, events):
        """Read until the WebSocket ends; return ``(close_code, reason, flush)``."""
        svc = self.service
        stats = svc.stats
        codec = svc.codec
        feed = MessageAssembler(codec.max_size).feed
        recv = sock.recv
        try:
            while True:
                for ev in events:
                    cls = type(ev)
                    if cls is BytesMessage:
                        data = feed(ev.data, ev.message_finished)
                        if data is None:
                            continue
                        stats.messages_in += 1
                        self._on_frame(codec.decode(data))
                    elif cls is Ping:
                        self._enqueue(ws.send(ev.response()))
                    elif cls is Pong:
                        pass  # any traffic counts as life, see _last_recv
                    elif cls is CloseConnection:
                        if ws.state is ConnectionState.REMOTE_CLOSING:
                            self._enqueue(ws.send(ev.response()))
                            return ev.code, ev.reason or "", True
                        if ws.state is ConnectionState.CLOSED:  # the reply to our own close
                            return ev.code, ev.reason or "", False
                        # wsproto could not parse a frame (ParseFailed): protocol error.
                        raise FrameError(ev.code, ev.reason or "protocol error")
                    elif cls is TextMessage:
                        raise FrameError(1003, "text messages are not accepted; send msgpack in binary messages")
                try:
                    data = recv(65536)
                except WebSocketError:
                    raise  # thrown in by the writer (our errors subclass TimeoutError/OSError too)
                except _socket.timeout:
                    events = ()
                    continue  # idle; the writer does keepalive
                except OSError as e:
                    return 1006, f"connection lost: {errno.errorcode.get(e.errno, e)}", False
                if not data:
                    return 1006, "connection lost: EOF without a close frame", False
                self._last_recv = _monotonic()
                self._ping_sent = 0.0
                ws.receive_data(data)
                events = ws.events()
        except FrameError as e:
            stats.bad_frames += 1
            if e.code == 1009:
                stats.oversized_frames += 1
            elif e.code == 1008:
                stats.conversation_overflows += 1
            return e.code, e.reason, True

    def _on_frame(self, frame) -> None:
        t = frame.type
        if t == REP or t == ERR:
            ar = self._pending.pop(frame.id, None)
            if ar is None:
                self.service.stats.late_replies += 1
            elif t == REP:
                ar.set(frame.body)
            else:
                ar.set_exception(RemoteError(f"{self!r}: the peer answered request {frame.id} with an error: {frame.body!r}"))
            return
        self.service._deliver(self, frame)

    # ------------------------------------------------------------ the writer
    def _write_loop(self, sock):
        out = self._out
        opts = self.service.options
        interval = opts.ping_interval
        ping_timeout = opts.ping_timeout
        ws = self._ws
        sendall = sock.sendall
        try:
            while True:
                if interval is None:
                    data = out.get()
                else:
                    wait = interval if not self._ping_sent else ping_timeout
                    try:
                        data = out.get(timeout=wait)
                    except Empty:
                        self._keepalive(ws, interval, ping_timeout)
                        continue
                if data is _STOP:
                    return
                sendall(data)
        except _socket.timeout:
            self._fail(SlowConsumerError(
                f"{self!r}: one write stalled for write_timeout={opts.write_timeout} s: the peer does "
                "not read; closing it (1008)"
            ))
        except OSError as e:
            self._fail(_PeerGone(f"connection lost while writing: {errno.errorcode.get(e.errno, e)}"))

    def _keepalive(self, ws, interval, ping_timeout) -> None:
        now = _monotonic()
        if self._ping_sent:
            if now - self._ping_sent >= ping_timeout:
                self._fail(KeepaliveTimeoutError(
                    f"{self!r}: no traffic and no pong for {now - self._last_recv:.1f} s "
                    f"(ping_interval={interval}, ping_timeout={ping_timeout}): half-open, closing (1011)"
                ))
            return
        if now - self._last_recv >= interval:
            self._ping_sent = now
            self._out.put_nowait(ws.send(Ping(payload=struct.pack("!d", now))))

    # ------------------------------------------------------------ ending
    @staticmethod
    def _await_peer_close(sock, ws, timeout) -> None:
        """After our close frame: read (and drop) until the peer's close, EOF or ``timeout``.

        Closing a socket with unread input makes the kernel send a reset,
        which can destroy our close frame before the peer reads it.
        """
        if ws.state is not ConnectionState.LOCAL_CLOSING:
            return
        try:
            with gevent.Timeout(timeout, False):
                while ws.state is ConnectionState.LOCAL_CLOSING:
                    data = sock.recv(65536)
                    if not data:
                        return
                    ws.receive_data(data)
                    for _ in ws.events():
                        pass
        except (OSError, WebSocketError):
            pass

    def _teardown(self, code, reason, flush) -> None:
        self._closing = True
        self.close_code = code
        if self.close_reason is None:
            self.close_reason = reason
        was_connected = self._connected.is_set()
        self._connected.set()  # wake wait_connected(); `connected` is now False
        svc = self.service
        pending, self._pending = self._pending, {}
        for ar in pending.values():
            ar.set_exception(ConnectionClosedError(f"{self!r} closed ({code} {reason}) before the reply came"))
        writer, ws, sock = self._writer, self._ws, self._sock
        try:
            if writer is not None and not writer.dead:
                if flush and ws is not None:
                    try:
                        if ws.state is ConnectionState.OPEN:
                            self._out.put_nowait(ws.send(CloseConnection(code=code, reason=reason)))
                        self._out.put_nowait(_STOP)
                        writer.join(svc.options.close_timeout)
                    except Exception:  # queue full or wsproto refused: nothing more to say
                        pass
                    else:
                        self._await_peer_close(sock, ws, svc.options.close_timeout)
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
            if was_connected:
                svc.stats.connections_closed += 1
                svc.stats.close_codes[int(code)] += 1
                emit(svc.events, Event("disconnected", self.instance_id, (code, reason)))
            self.transport.closed(self, was_connected)
