"""Codecs: how a connection's messages become :class:`Frame` values, and back.

A codec is chosen per service (``WebSocketService(codec="json")``).  Four
come with greentree:

=================  ========  ========  ==================================================
name               frames    ids       a message is
=================  ========  ========  ==================================================
``"msgpack"``      binary    yes       one msgpack map ``{"v": 1, "t", "id", "c", "body"}``
``"json"``         text      no        one JSON value (what a browser's ``JSON.stringify`` sends)
``"text"``         text      no        a ``str``
``"bytes"``        binary    no        ``bytes``
=================  ========  ========  ==================================================

Codecs *with ids* carry request/reply correlation: a ``req`` frame expects
exactly one ``rep`` or ``err`` frame with the same ``id``, and
:meth:`Connection.request` works.  With a codec *without ids* every message
is a one-way ``msg``: the handler's return value, if not None, is sent back
as a message, and ``request`` raises :class:`TypeError`.

Write your own by subclassing :class:`BaseCodec` (see its docstring); an
instance can be passed as ``codec=``.

The msgpack envelope::

    {"v": 1, "t": "msg" | "req" | "rep" | "err", "id": 7, "c": "room-1", "body": ...}

* ``v`` the frame format version (:data:`VERSION`, the int 1: ``true`` and
  ``1.0`` are refused); another version is closed with 1007 rather than misread.
* ``t`` the type; ``id`` an int (``req``/``rep``/``err`` only); ``c`` an
  optional conversation id (str, int or bytes): frames of one conversation
  are handled in order by one greenlet; ``body`` anything msgpack carries.

Decoding is bounded before anything is allocated (``max_size`` bytes, then
msgpack's ``max_*_len`` limits).  Every failure is a :class:`FrameError`
whose ``code`` is the close code: 1009 too big, 1007 invalid, 1003 the wrong
kind of message (text to a binary codec or the reverse).

>>> codec = MsgpackCodec(max_size=1024)
>>> data = codec.encode("req", {"seq": 1}, id=7, conversation="room-1")
>>> codec.decode(data)
Frame(type='req', id=7, conversation='room-1', body={'seq': 1})
>>> codec.decode(b"\\x00" * 2000)
Traceback (most recent call last):
  ...
greentree.websocket._errors.FrameError: close 1009: message of 2000 bytes exceeds max_size 1024
>>> JsonCodec().decode('{"text": "hi"}')
Frame(type='msg', id=None, conversation=None, body={'text': 'hi'})
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import msgpack

from .._errors import ChildSpecError
from ._errors import FrameError

__all__ = [
    "VERSION", "Frame", "BaseCodec", "MsgpackCodec", "Codec", "JsonCodec", "TextCodec", "BytesCodec",
    "make_codec", "TYPES", "CLOSE_CODES", "MessageAssembler",
]

#: The msgpack envelope's format version.
VERSION = 1

MSG, REQ, REP, ERR = "msg", "req", "rep", "err"
TYPES = frozenset((MSG, REQ, REP, ERR))
_WITH_ID = frozenset((REQ, REP, ERR))

#: The close codes greentree uses, by meaning (RFC 6455 section 7.4.1).
CLOSE_CODES = {
    "normal": 1000,
    "going_away": 1001,
    "protocol_error": 1002,
    "unsupported_data": 1003,
    "abnormal": 1006,          # never sent: no close frame was received
    "invalid_payload": 1007,
    "policy_violation": 1008,
    "too_big": 1009,
    "internal_error": 1011,
}


class Frame(NamedTuple):
    """One decoded message: ``type`` (``"msg"``, ``"req"``, ``"rep"``, ``"err"``),
    the request ``id`` (or None), the ``conversation`` (or None) and the ``body``."""

    type: str
    id: Any
    conversation: Any
    body: Any


#: ``Frame(...)`` without the Python-level ``__new__`` NamedTuple generates (the msgpack hot path).
_new_frame = tuple.__new__


def _positive(owner: str, what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ChildSpecError(f"{owner}: {what} must be an int >= 1, not {value!r}")
    return value


class BaseCodec:
    """The codec interface.  Subclass it and set the class attributes:

    * ``name``: a short name for messages;
    * ``binary``: True if messages travel in binary WebSocket messages
      (``encode`` returns ``bytes`` and ``decode`` receives ``bytes``), False
      for text messages (``str`` both ways);
    * ``has_ids``: True if the format carries ``req``/``rep``/``err`` frames
      with ids (request/reply correlation).

    and implement ``encode(type, body, *, id=None, conversation=None)`` and
    ``decode(data) -> Frame``.  ``decode`` must raise :class:`FrameError`
    with a close code for anything it refuses (never another exception), and
    must not allocate more than ``max_size`` allows.  The default
    implementations below are the plain ``msg``-only behaviour: they call
    :meth:`dump` and :meth:`load`.

    >>> class Upper(BaseCodec):
    ...     name, binary, has_ids = "upper", False, False
    ...     def dump(self, body): return str(body).upper()
    ...     def load(self, data): return data.lower()
    >>> c = Upper(); c.encode("msg", "hi"), c.decode("HO").body
    ('HI', 'ho')
    """

    name = "base"
    binary = True
    has_ids = False
    __slots__ = ("max_size",)

    def __init__(self, max_size: int = 1 << 20):
        self.max_size = _positive(type(self).__name__, "max_size", max_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_size={self.max_size})"

    def encode(self, type: str, body: Any = None, *, id: Any = None, conversation: Any = None) -> bytes | str:
        """Encode one outgoing frame (raises ValueError/TypeError for what it cannot carry)."""
        if type != MSG or id is not None or conversation is not None:
            raise TypeError(
                f"{self!r}.encode({type!r}): this codec carries one-way messages only (no request ids, "
                "no conversations); use the msgpack codec for request/reply"
            )
        data = self.dump(body)
        if len(data) > self.max_size:
            raise ValueError(f"{self!r}.encode(): {len(data)} bytes, more than max_size {self.max_size}")
        return data

    def decode(self, data: bytes | str) -> Frame:
        """Decode one whole received message into a ``msg`` Frame."""
        self.check_kind(data)
        try:
            return Frame(MSG, None, None, self.load(data))
        except FrameError:
            raise
        except Exception as e:
            raise FrameError(1007, f"not valid {self.name}: {type(e).__name__}") from None

    def check_kind(self, data: bytes | str) -> None:
        """Refuse (1003) a text message to a binary codec, or the reverse; 1009 past ``max_size``."""
        if isinstance(data, str) == self.binary:
            want, got = ("binary", "text") if self.binary else ("text", "binary")
            raise FrameError(1003, f"{got} messages are not accepted here; this endpoint speaks {self.name} "
                                   f"in {want} messages")
        if len(data) > self.max_size:
            raise FrameError(1009, f"message of {len(data)} bytes exceeds max_size {self.max_size}")

    def dump(self, body: Any) -> bytes | str:
        raise NotImplementedError

    def load(self, data: Any) -> Any:
        raise NotImplementedError


class TextCodec(BaseCodec):
    """Text messages; the body is a ``str``.

    >>> TextCodec().encode("msg", "hello"), TextCodec().decode("hi").body
    ('hello', 'hi')
    """

    name, binary, has_ids = "text", False, False
    __slots__ = ()

    def dump(self, body: Any) -> str:
        if not isinstance(body, str):
            raise TypeError(f"{self!r}: a text message body must be a str, not {type(body).__name__}")
        return body

    def load(self, data: str) -> str:
        return data


class BytesCodec(BaseCodec):
    """Binary messages; the body is ``bytes``.

    >>> BytesCodec().decode(b"\\x00\\x01").body
    b'\\x00\\x01'
    """

    name, binary, has_ids = "bytes", True, False
    __slots__ = ()

    def dump(self, body: Any) -> bytes:
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError(f"{self!r}: a binary message body must be bytes, not {type(body).__name__}")
        return bytes(body)

    def load(self, data: bytes) -> bytes:
        return data


class JsonCodec(BaseCodec):
    """One JSON value per text message: what ``ws.send(JSON.stringify(x))`` sends.

    >>> JsonCodec().encode("msg", {"user": "ann", "text": "hi"})
    '{"user":"ann","text":"hi"}'
    >>> JsonCodec().decode("{nope")
    Traceback (most recent call last):
      ...
    greentree.websocket._errors.FrameError: close 1007: not valid json: JSONDecodeError
    """

    name, binary, has_ids = "json", False, False
    __slots__ = ()

    def dump(self, body: Any) -> str:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    def load(self, data: str) -> Any:
        return json.loads(data)  # RecursionError on absurd nesting becomes 1007 in decode()


class MsgpackCodec(BaseCodec):
    """greentree's msgpack envelope (binary, with ids and conversations).

    ``max_size`` bounds a whole message in bytes; ``max_items`` bounds every
    array and map in it (msgpack would otherwise allocate one slot per
    element a peer declares).
    """

    name, binary, has_ids = "msgpack", True, True
    __slots__ = ("max_items", "_pack")

    def __init__(self, max_size: int = 1 << 20, max_items: int = 65536):
        super().__init__(max_size)
        self.max_items = _positive("MsgpackCodec", "max_items", max_items)
        # One Packer per codec: msgpack.packb() builds a new Packer for every call.  pack() runs in
        # C to the end without yielding and calls no Python code (no ``default=``), and it resets
        # its buffer when it raises, so one instance serves every greenlet of the service.
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def encode(self, type: str, body: Any = None, *, id: Any = None, conversation: Any = None) -> bytes:
        """Return the msgpack bytes of one frame (raises ValueError/TypeError for bad input)."""
        if type not in TYPES:
            raise ValueError(f"MsgpackCodec.encode(): type must be one of {sorted(TYPES)}, not {type!r}")
        frame = {"v": VERSION, "t": type, "body": body}
        if id is not None:
            frame["id"] = id
        if conversation is not None:
            frame["c"] = conversation
        data = self._pack(frame)
        if len(data) > self.max_size:
            raise ValueError(
                f"MsgpackCodec.encode(): the {type!r} frame is {len(data)} bytes, more than max_size "
                f"{self.max_size}; send smaller bodies or raise max_size on both sides"
            )
        return data

    def decode(self, data: bytes | str) -> Frame:
        """Decode one message; raise :class:`FrameError` (with its close code) if it is not a frame."""
        n = len(data)
        if type(data) is not bytes or n > self.max_size:
            self.check_kind(data)  # refuses text (1003) and oversized messages (1009)
        limit = self.max_items
        try:
            obj = msgpack.unpackb(
                data, raw=False, use_list=False, strict_map_key=False,
                max_str_len=n, max_bin_len=n, max_array_len=limit, max_map_len=limit, max_ext_len=0,
            )
        except Exception as e:  # msgpack raises ValueError, TypeError, FormatError, StackError...
            raise FrameError(1007, f"not msgpack within limits: {type(e).__name__}") from None
        if type(obj) is not dict:
            raise FrameError(1007, f"a frame must be a msgpack map, not {type(obj).__name__}")
        v = obj.get("v")
        if type(v) is not int or v != VERSION:  # True == 1 and 1.0 == 1: both refused
            raise FrameError(1007, f"unsupported frame version {v!r} (this side speaks {VERSION})")
        t = obj.get("t")
        if t not in TYPES:
            raise FrameError(1007, f"unknown frame type {t!r}")
        fid = obj.get("id")
        if t in _WITH_ID:
            if type(fid) is not int:
                raise FrameError(1007, f"a {t!r} frame needs an int id, not {type(fid).__name__}")
        elif fid is not None:
            raise FrameError(1007, "a 'msg' frame has no id")
        conv = obj.get("c")
        if conv is not None and type(conv) not in (str, int, bytes):
            raise FrameError(1007, f"conversation id must be str, int or bytes, not {type(conv).__name__}")
        return _new_frame(Frame, (t, fid, conv, obj.get("body")))


#: The msgpack envelope under its historical name.
Codec = MsgpackCodec

_CODECS: dict[str, type[BaseCodec]] = {
    "msgpack": MsgpackCodec, "json": JsonCodec, "text": TextCodec, "bytes": BytesCodec,
}


def make_codec(codec: str | BaseCodec, max_size: int, max_items: int) -> BaseCodec:
    """A codec by name (``"msgpack"``, ``"json"``, ``"text"``, ``"bytes"``) or an instance as is.

    >>> make_codec("json", 100, 10)
    JsonCodec(max_size=100)
    >>> make_codec("xml", 100, 10)
    Traceback (most recent call last):
      ...
    greentree._errors.ChildSpecError: codec must be one of 'bytes', 'json', 'msgpack', 'text' or a BaseCodec instance, not 'xml'
    """
    if isinstance(codec, BaseCodec):
        return codec
    cls = _CODECS.get(codec) if isinstance(codec, str) else None
    if cls is None:
        names = ", ".join(repr(n) for n in sorted(_CODECS))
        raise ChildSpecError(f"codec must be one of {names} or a BaseCodec instance, not {codec!r}")
    if cls is MsgpackCodec:
        return MsgpackCodec(max_size, max_items)
    return cls(max_size)


class MessageAssembler:
    """Joins fragments into whole messages, bounded in bytes *and* in fragments.

    ``feed(data, finished)`` returns the whole message when ``finished``, else
    None.  Past ``max_size`` bytes it raises ``FrameError(1009)``; past
    ``max_fragments`` fragments (empty ones count: they cost a parse each)
    ``FrameError(1009)`` too.  The parts are joined in one ``bytearray``, so
    memory is the payload, not one object per fragment.

    >>> asm = MessageAssembler(8)
    >>> asm.feed(b"ab", False), asm.feed(b"cd", True)
    (None, b'abcd')
    >>> asm.feed(b"123456789", True)
    Traceback (most recent call last):
      ...
    greentree.websocket._errors.FrameError: close 1009: message exceeds max_size 8
    """

    __slots__ = ("max_size", "max_fragments", "buf", "count")

    def __init__(self, max_size: int, max_fragments: int = 1024):
        self.max_size = max_size
        self.max_fragments = max_fragments
        self.buf: bytearray | None = None
        self.count = 0

    def feed(self, data: bytes, finished: bool) -> bytes | None:
        buf = self.buf
        if buf is None:
            if len(data) > self.max_size:
                raise FrameError(1009, f"message exceeds max_size {self.max_size}")
            if finished:
                return data
            self.buf = bytearray(data)
            self.count = 1
            return None
        self.count += 1
        if len(buf) + len(data) > self.max_size:
            self.buf = None
            raise FrameError(1009, f"message exceeds max_size {self.max_size}")
        if self.count > self.max_fragments:
            self.buf = None
            raise FrameError(1009, f"message in more than max_fragments={self.max_fragments} fragments")
        buf += data
        if not finished:
            return None
        self.buf = None
        return bytes(buf)
