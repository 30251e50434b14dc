"""The decisions of one open WebSocket, as a pure object fed bytes and a clock.

:class:`ConnectionCore` knows nothing of sockets or greenlets: the
:class:`~greentree.websocket.Connection` (the thin shell) reads bytes and
passes them to :meth:`~ConnectionCore.receive` with the time, writes what
:meth:`~ConnectionCore.data_to_send` returns, and calls
:meth:`~ConnectionCore.tick` when the socket has been quiet for the time
``tick`` asked for.  The core decides:

* **frame dispatch**: whole messages are assembled (bounded in bytes and in
  fragments), decoded by the codec, and returned as actions: a
  ``("frame", Frame)`` to deliver, or a ``("reply", token, ok, body)``
  resolving one of our requests;
* **request/reply correlation**: :meth:`~ConnectionCore.request` allocates
  an id and remembers an opaque token (the shell's waiter); a reply with an
  unknown id is counted in ``late_replies`` and dropped;
* **keepalive**: a ping after ``ping_interval`` seconds without traffic from
  the peer, :class:`KeepaliveTimeoutError` if nothing comes ``ping_timeout``
  seconds later;
* **close codes**: ``ended`` is ``(code, reason)`` once the WebSocket is
  over: the peer's code, 1006 for EOF without a close frame, the code of
  the :class:`FrameError` that failed the connection (1002, 1003, 1007, 1009).

The WebSocket framing itself is the ``websockets`` package's sans-I/O
``Protocol`` (chosen over wsproto by ``benchmarks/ws_protocol.py``: 3.5x
cheaper per received frame, 1.7x per handshake).

>>> from websockets.server import ServerProtocol
>>> from websockets.protocol import State
>>> from websockets.frames import Frame as WsFrame, Opcode
>>> from greentree.websocket import JsonCodec
>>> core = ConnectionCore(ServerProtocol(state=State.OPEN), JsonCodec(), ping_interval=None, now=0.0)
>>> masked = WsFrame(Opcode.TEXT, b'{"a": 1}').serialize(mask=True, extensions=[])
>>> core.receive(masked, now=1.0)
[('frame', Frame(type='msg', id=None, conversation=None, body={'a': 1}))]
>>> core.send("msg", {"b": 2}); core.data_to_send()
[b'\\x81\\x07{"b":2}']
"""

from __future__ import annotations

import logging
import re
import struct
from binascii import b2a_base64 as _b2a_base64
from hashlib import sha1 as _sha1
from typing import Any

from websockets.frames import Close, Frame, Opcode, apply_mask
from websockets.protocol import CLOSING, OPEN, SERVER, Protocol
from websockets.server import ServerProtocol
from websockets.utils import GUID as _GUID

from ._errors import FrameError, KeepaliveTimeoutError
from ._frames import ERR, MSG, REP, REQ, BaseCodec, MessageAssembler

__all__ = ["ConnectionCore", "OpenServerProtocol", "PROTOCOL_LOGGER", "accept_response", "quick_accept"]

#: websockets' Protocol objects log here (INFO on close); greentree's loggers have a NullHandler.
PROTOCOL_LOGGER = logging.getLogger("greentree.websocket.protocol")
PROTOCOL_LOGGER.addHandler(logging.NullHandler())
PROTOCOL_LOGGER.propagate = False

_TEXT, _BINARY, _CONT, _CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE
_pack_len16 = struct.Struct("!H").pack
_unpack_len16 = struct.Struct("!H").unpack_from


class _NoBuffer:
    __slots__ = ()
    buffer = b""


#: What :class:`OpenServerProtocol` stands in for, read or written as plain attributes.
_STAND_IN = (
    "state", "writes", "events", "current_size", "expect_continuation_frame", "close_rcvd", "close_sent",
    "close_rcvd_then_sent", "eof_sent", "parser_exc", "side", "extensions", "debug", "max_message_size",
    "reader",
)


class OpenServerProtocol:
    """websockets' ``ServerProtocol(state=OPEN)`` for an accepted upgrade, made only when needed.

    A ``ServerProtocol`` costs about as much to make as the rest of the
    upgrade's own work (a ``uuid4()`` for its log id, a parser coroutine).  On
    the server side of a plain connection, :class:`ConnectionCore` reads and
    writes whole data frames, pings, pongs and the peer's close frame itself
    (its direct path), so a connection that only does that never needs one.
    This object holds what such a connection changes (the bytes to write,
    and the state after the peer's close) under ``ServerProtocol``'s
    attribute names.  The first time anything else is asked of it (a method:
    a fragment, a partial frame, an invalid frame, EOF, our own close), it
    makes the real ``ServerProtocol``, brings it to the same state (the
    peer's close frame, if one came, is fed to it again, and what it would
    write then was already written), hands it to its :class:`ConnectionCore`,
    and forwards to it from then on.  ``tests/test_websocket_direct.py``
    compares the two on random frames and read boundaries, including after
    the hand-over.
    """

    __slots__ = (*_STAND_IN, "_real", "_core", "_close_payload")

    def __init__(self, max_size: int | None = 2**20):
        self.state = OPEN
        self.writes: list = []
        self.events: list = []
        self.current_size = None
        self.expect_continuation_frame = False
        self.close_rcvd: Close | None = None
        self.close_sent: Close | None = None
        self.close_rcvd_then_sent: bool | None = None
        self.eof_sent = False
        self.parser_exc = None
        self.side = SERVER
        self.extensions: Any = ()  # none negotiated (read only; the real protocol has its own list)
        self.debug = PROTOCOL_LOGGER.isEnabledFor(logging.DEBUG)
        self.max_message_size = max_size
        self.reader = _NO_BUFFER
        self._real: ServerProtocol | None = None
        self._core: ConnectionCore | None = None

    def __getattr__(self, name: str) -> Any:
        # Reached for any other method, and for every attribute once the real protocol is made.
        if name in ("_real", "_core", "_close_payload"):
            raise AttributeError(name)
        return getattr(self.real(), name)

    def real(self) -> ServerProtocol:
        """The ``ServerProtocol`` in the same state (made on the first call)."""
        real = self._real
        if real is not None:
            return real
        real = ServerProtocol(state=OPEN, max_size=self.max_message_size, logger=PROTOCOL_LOGGER)
        if self.close_rcvd is not None:
            # The peer's close frame, received again: the same state and the same parser
            # (discarding what follows); its echo and EOF are already in our writes.
            payload = self._close_payload
            real.receive_data(bytes((0x88, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
            real.events_received()
        elif self.state is not OPEN:
            real.state = self.state  # CONNECTING: the 101 could not be written
        real.writes = self.writes
        real.events = self.events
        self._real = real
        for name in _STAND_IN:  # from now on every attribute is the real one's (__getattr__)
            delattr(self, name)
        core = self._core
        if core is not None and core.proto is self:
            core.proto = real
        return real

    def _peer_closed(self, close: Close, payload: bytes) -> None:
        """What ``ServerProtocol`` does on a valid close frame while open: echo it, half-close."""
        self._close_payload = payload
        self.close_rcvd = self.close_sent = close
        self.close_rcvd_then_sent = True
        self.state = CLOSING
        self.writes.append(bytes((0x88, len(payload))) + payload)
        self.eof_sent = True
        self.writes.append(b"")  # SEND_EOF

    # The methods the direct path calls; each is the real one's once that is made.
    def events_received(self) -> list:
        real = self._real
        if real is not None:
            return real.events_received()
        events, self.events = self.events, []
        return events

    def data_to_send(self) -> list:
        real = self._real
        if real is not None:
            return real.data_to_send()
        writes, self.writes = self.writes, []
        return writes

    def send_ping(self, data: bytes) -> None:
        real = self._real
        if real is not None or len(data) > 125:
            self.real().send_ping(data)
            return
        self.writes.append(bytes((0x89, len(data))) + data)


_NO_BUFFER = _NoBuffer()


class ConnectionCore:
    """Frame dispatch, correlation, keepalive and close codes of one open WebSocket.

    ``proto`` is a websockets ``ServerProtocol``/``ClientProtocol`` in state
    OPEN; ``codec`` a :class:`BaseCodec`.  ``max_fragments`` bounds the
    fragments of one message (each costs a parse, empty ones included).
    """

    __slots__ = (
        "proto", "codec", "ping_interval", "ping_timeout", "pending", "_next_id", "last_recv", "ping_sent",
        "_assembler", "_text", "ended", "late_replies", "messages_in", "messages_out", "_direct",
    )

    #: Parse and serialise the common data frames directly (see :meth:`_receive_direct`); a class
    #: attribute so that tests can compare both paths.
    direct = True

    def __init__(self, proto: Protocol, codec: BaseCodec, *, ping_interval: float | None = 20.0,
                 ping_timeout: float = 10.0, max_fragments: int = 1024, now: float = 0.0):
        self.proto = proto
        self.codec = codec
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.pending: dict[int, Any] = {}
        self._next_id = 1
        self.last_recv = now
        self.ping_sent = 0.0
        self._assembler = MessageAssembler(codec.max_size, max_fragments)
        self._text = False
        self.ended: tuple[int, str] | None = None
        self.late_replies = 0
        self.messages_in = 0
        self.messages_out = 0
        # The server side of a plain connection (no extensions, no debug log) takes the direct path.
        self._direct = self.direct and proto.side is SERVER and not proto.extensions and not proto.debug
        if proto.__class__ is OpenServerProtocol:
            proto._core = self
            if not self._direct:
                proto.real()

    # ------------------------------------------------------------ input
    def receive(self, data: bytes, now: float) -> list:
        """Feed received bytes; return the actions (frames to deliver, replies resolved).

        A bad message ends the WebSocket: its close frame is queued (see
        ``data_to_send``) and ``ended`` is set; actions decoded before it are
        still returned.
        """
        self.last_recv = now
        self.ping_sent = 0.0
        proto = self.proto
        actions: list = []
        if data:
            if self._direct and proto.current_size is None and not proto.reader.buffer and proto.state is OPEN:
                data = self._receive_direct(data, actions)
                if self.ended is not None:
                    return actions
            if data:
                proto.receive_data(data)
        try:
            events: list[Any] = proto.events_received()
            for f in events:
                op = f.opcode
                if op is _TEXT or op is _BINARY:
                    self._text = op is _TEXT
                elif op is not _CONT:
                    if op is _CLOSE:
                        self._closed_by_peer()
                    continue  # ping (answered by proto), pong: life only
                whole = self._assembler.feed(f.data, f.fin)
                if whole is not None:
                    self._dispatch(whole, actions)
        except FrameError as e:
            self.fail(e.code, e.reason)
            return actions
        exc = proto.parser_exc
        if exc is not None and self.ended is None:
            code = proto.close_sent.code if proto.close_sent is not None else 1002
            self.ended = (code, str(exc) or type(exc).__name__)
        return actions

    def _receive_direct(self, data: bytes, actions: list) -> bytes:
        """Dispatch the whole, unfragmented, masked text and binary frames at the start of ``data``
        without websockets' parser; return the rest (from the first other frame on) for it.

        Only called while the parser waits for a new frame (no buffered bytes, no fragmented
        message), so it sees the same frames in the same order, and what it hands on starts at a
        frame boundary.  It checks what websockets' parser checks for such a frame (FIN, no
        reserved bit, the mask bit, ``max_size``); anything else (control and continuation
        frames, a partial frame, 64-bit lengths) goes to websockets.  A message that fails to
        decode ends the connection after the rest was fed to websockets, as when websockets had
        parsed the whole read (its pongs and close echo come first).
        """
        limit = self.proto.max_message_size
        n = len(data)
        i = 0
        while n - i >= 6:
            b0 = data[i]
            if b0 != 0x82 and b0 != 0x81:  # FIN, no RSV bit, text or binary
                if 0x88 <= b0 <= 0x8A and self.proto.__class__ is OpenServerProtocol:
                    j = self._control_direct(data, i, n, limit)
                    if j < 0:
                        return b""  # the peer closed: websockets discards what follows
                    if j > i:
                        i = j
                        continue
                break
            b1 = data[i + 1]
            if b1 < 0x80:  # unmasked: websockets fails it (1002)
                break
            length = b1 & 0x7F
            start = i + 6
            if length == 126:
                if n - i < 8:
                    break
                (length,) = _unpack_len16(data, i + 2)
                start = i + 8
            elif length == 127:
                break
            end = start + length
            if end > n or (limit is not None and length > limit):
                break
            payload = apply_mask(data[start:end], data[start - 4:start])
            i = end
            self._text = b0 == 0x81
            try:
                whole = self._assembler.feed(payload, True)
                if whole is not None:
                    self._dispatch(whole, actions)
            except FrameError as e:
                rest = data[i:]
                if rest:
                    self.proto.receive_data(rest)
                self.proto.events_received()
                self.fail(e.code, e.reason)
                return b""
        return data[i:] if i else data

    def _control_direct(self, data: bytes, i: int, n: int, limit: int | None) -> int:
        """A ping, pong or close frame at ``data[i]`` while no ``ServerProtocol`` was made
        (:class:`OpenServerProtocol`): answered as websockets answers it.  Returns the index after
        it, ``i`` if websockets must see it (it fails it, or it is not whole), -1 after a close."""
        b1 = data[i + 1]
        length = b1 & 0x7F
        if b1 < 0x80 or length > 125:  # unmasked, or too long for a control frame: websockets fails it
            return i
        end = i + 6 + length
        if end > n or (limit is not None and length > limit):
            return i
        payload = apply_mask(data[i + 6:end], data[i + 2:i + 6])
        proto: Any = self.proto
        b0 = data[i]
        if b0 == 0x89:  # ping: a pong with the same payload
            proto.writes.append(bytes((0x8A, length)) + payload)
        elif b0 == 0x88:  # close
            try:
                close = Close.parse(payload)
            except Exception:  # a bad code or reason: websockets fails it (1002, 1007)
                return i
            proto._peer_closed(close, payload)
            self._closed_by_peer()
            return -1
        return end  # a ping answered, or a pong (nothing to do but note the traffic)

    def receive_eof(self) -> None:
        """The peer closed its end of the socket."""
        if self.ended is None:
            self.ended = (1006, "connection lost: EOF without a close frame")
        try:
            self.proto.receive_eof()
        except Exception:  # EOF after EOF: nothing more to learn
            pass

    def _closed_by_peer(self) -> None:
        rcvd = self.proto.close_rcvd
        if self.ended is None and rcvd is not None:
            code = rcvd.code
            self.ended = (1005 if code is None else int(code), rcvd.reason or "")

    def _dispatch(self, data: bytes, actions: list) -> None:
        if self._text:
            try:
                message: bytes | str = data.decode("utf-8")
            except UnicodeDecodeError:
                raise FrameError(1007, "a text message that is not valid UTF-8") from None
        else:
            message = data
        frame = self.codec.decode(message)
        self.messages_in += 1
        t = frame.type
        if t == REP or t == ERR:
            token = self.pending.pop(frame.id, None)
            if token is None:
                self.late_replies += 1
            else:
                actions.append(("reply", token, t == REP, frame.body))
            return
        actions.append(("frame", frame))

    # ------------------------------------------------------------ output
    def send(self, type: str, body: Any = None, *, id: Any = None, conversation: Any = None) -> None:
        """Encode one frame and queue it (raises ValueError/TypeError from the codec)."""
        self.send_encoded(self.codec.encode(type, body, id=id, conversation=conversation))

    def send_encoded(self, data: bytes | str) -> None:
        """Queue one already encoded message (text if a str)."""
        proto = self.proto
        if isinstance(data, str):
            data = data.encode("utf-8")
            head = 0x81
        else:
            head = 0x82
        if self._direct and proto.state is OPEN and not proto.expect_continuation_frame:
            # The bytes websockets' Frame.serialize() produces for an unmasked, unfragmented frame.
            n = len(data)
            if n < 126:
                proto.writes.append(bytes((head, n)) + data)
            elif n < 65536:
                proto.writes.append(bytes((head, 126)) + _pack_len16(n) + data)
            else:
                proto.send_frame(Frame(Opcode(head & 0x0F), data))
        elif head == 0x81:
            proto.send_text(data)
        else:
            proto.send_binary(data)
        self.messages_out += 1

    def request(self, token: Any, body: Any, conversation: Any = None) -> int:
        """Queue a ``req`` frame; ``token`` comes back in the ``reply`` action. Returns the id."""
        if not self.codec.has_ids:
            raise TypeError(
                f"request(): the {self.codec.name} codec has no request ids; send one-way messages, or "
                "use codec='msgpack' for request/reply"
            )
        rid = self._next_id
        self._next_id = rid + 1
        self.send(REQ, body, id=rid, conversation=conversation)
        self.pending[rid] = token
        return rid

    def reply(self, rid: Any, body: Any, conversation: Any = None, *, error: bool = False) -> None:
        """Answer the peer's request ``rid``; with a codec without ids, send ``body`` as a message."""
        if self.codec.has_ids:
            self.send(ERR if error else REP, body, id=rid, conversation=conversation)
        elif body is not None and not error:
            self.send(MSG, body)

    def forget(self, rid: int) -> Any:
        """Stop waiting for request ``rid`` (it timed out); return its token or None."""
        return self.pending.pop(rid, None)

    def data_to_send(self) -> list[bytes]:
        """Bytes to write, in order; ``b""`` means: half-close the socket (no more writes)."""
        return self.proto.data_to_send()

    # ------------------------------------------------------------ keepalive
    def tick(self, now: float) -> float | None:
        """Check keepalive; return the seconds until the next check (None: keepalive is off).

        Queues a ping when the peer was silent for ``ping_interval``; raises
        :class:`KeepaliveTimeoutError` when it stayed silent ``ping_timeout``
        seconds after it.
        """
        interval = self.ping_interval
        if interval is None or self.ended is not None:
            return None
        if self.ping_sent:
            left = self.ping_sent + self.ping_timeout - now
            if left <= 0:
                raise KeepaliveTimeoutError(
                    f"no traffic and no pong for {now - self.last_recv:.1f} s (ping_interval={interval}, "
                    f"ping_timeout={self.ping_timeout}): half-open, closing (1011)"
                )
            return left
        idle = now - self.last_recv
        if idle < interval:
            return interval - idle
        self.ping_sent = now
        if self.proto.state is OPEN:
            self.proto.send_ping(struct.pack("!d", now))
        return self.ping_timeout

    # ------------------------------------------------------------ ending
    def fail(self, code: int, reason: str) -> None:
        """End the WebSocket with ``code`` (queues the close frame if it is still open)."""
        if self.ended is None:
            self.ended = (code, reason)
        if self.proto.state is OPEN:
            self.proto.send_close(code, reason[:120])

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake from our side (no-op once closing)."""
        if self.proto.state is OPEN:
            self.proto.send_close(code, reason[:120])
        if self.ended is None:
            self.ended = (code, reason)

    @property
    def is_open(self) -> bool:
        return self.proto.state is OPEN and self.ended is None

    @property
    def closing_handshake_done(self) -> bool:
        """True once both close frames crossed (or the protocol is over)."""
        return self.proto.close_rcvd is not None or self.proto.state.name == "CLOSED"

    def release(self) -> None:
        """The connection's socket is closed: nothing will be parsed or sent any more.

        Let go of what would keep this connection for Python's cyclic garbage
        collector instead of freeing it at once: websockets' parser is a
        suspended generator whose frame refers back to its protocol (closed
        here: its frame goes), the error it stopped on keeps that frame in its
        traceback (dropped: nothing reads it after the end), and the direct
        path's stand-in protocol refers back to this core.  Only call it once
        the socket is closed.
        """
        proto: Any = self.proto
        if proto.__class__ is OpenServerProtocol:
            proto._core = None
            return
        parser = getattr(proto, "parser", None)
        if parser is not None and hasattr(parser, "close"):
            parser.close()
        exc = getattr(proto, "parser_exc", None)
        if exc is not None:
            exc.__traceback__ = None


# ------------------------------------------------------------------ the upgrade's common case
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
#: A ``Connection`` header websockets parses without complaint: tokens (RFC 9110) separated by commas.
_TOKEN_LIST = re.compile(r"[ \t]*[-!#$%&'*+.^_`|~0-9A-Za-z]+(?:[ \t]*,[ \t]*[-!#$%&'*+.^_`|~0-9A-Za-z]+)*[ \t]*")


def quick_accept(environ: dict) -> str | None:
    """The ``Sec-WebSocket-Accept`` value for a plain, valid upgrade request, else None.

    The common case of a handshake, checked straight from the WSGI environ the
    server already parsed (no request to rebuild and parse again): ``GET``
    over HTTP/1.1, ``Connection`` listing ``upgrade``, ``Upgrade:
    websocket``, version 13, a key that is 16 bytes in base64 and no
    ``Sec-WebSocket-Protocol`` offer.  Anything
    else returns None and goes through websockets' full ``ServerProtocol``
    handshake, which answers it (400, 426...); the accepted requests and the
    accept value are the same (tests/test_websocket_core.py checks it
    against websockets).  It negotiates nothing: callers offering
    subprotocols or extensions use the full handshake.

    >>> quick_accept({"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_CONNECTION": "Upgrade",
    ...               "HTTP_UPGRADE": "websocket", "HTTP_SEC_WEBSOCKET_VERSION": "13",
    ...               "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ=="})
    's3pPLMBiTxaQ9kYGzzhZRbK+xOo='
    >>> quick_accept({"REQUEST_METHOD": "GET", "HTTP_SEC_WEBSOCKET_KEY": "short"}) is None
    True
    """
    get = environ.get
    key = get("HTTP_SEC_WEBSOCKET_KEY")
    if (
        key is None or len(key) != 24 or key[22:] != "==" or get("REQUEST_METHOD") != "GET"
        or get("SERVER_PROTOCOL") != "HTTP/1.1" or get("HTTP_SEC_WEBSOCKET_VERSION") != "13"
        or get("HTTP_UPGRADE", "").lower() != "websocket" or "HTTP_SEC_WEBSOCKET_PROTOCOL" in environ
    ):
        return None
    connection = get("HTTP_CONNECTION", "")
    ok = _connection_ok.get(connection)
    if ok is None:
        ok = bool(_TOKEN_LIST.fullmatch(connection)) and "upgrade" in [
            t.strip().lower() for t in connection.split(",")
        ]
        _remember(_connection_ok, connection, ok)
    if not ok:
        return None
    raw = key[:22].encode("ascii", "replace")
    if not _B64.issuperset(raw) or raw[21] not in b"AQgw":  # 16 bytes: the last sextet has 2 bits
        return None
    # websockets.utils.accept_key, without the base64 module's wrapper
    return _b2a_base64(_sha1((key + _GUID).encode()).digest(), newline=False).decode()


#: ``Connection`` header values already checked (clients send a handful of spellings).
_connection_ok: dict[str, bool] = {}
_REMEMBER = 256


def _remember(cache: dict, key: str, value: Any) -> None:
    """Keep a checked header value (at most ``_REMEMBER``: a client cannot grow it without bound)."""
    if len(cache) >= _REMEMBER:
        cache.clear()
    cache[key] = value


def accept_response(accept: str) -> bytes:
    """The ``101`` response head for :func:`quick_accept`'s value."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode("ascii")
