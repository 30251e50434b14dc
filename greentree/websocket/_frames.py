"""The frames greentree's WebSocket connections exchange: msgpack maps with a version.

Every WebSocket *binary* message carries one msgpack map::

    {"v": 1, "t": "msg" | "req" | "rep" | "err", "id": 7, "c": "room-1", "body": ...}

* ``v`` the frame format version (:data:`VERSION`); a peer speaking another
  version is refused with close code 1007 rather than misread.
* ``t`` the type: ``msg`` one-way, ``req`` a request that expects exactly one
  ``rep`` (reply) or ``err`` (error reply) with the same ``id``.
* ``id`` the request id (``req``/``rep``/``err`` only), an int chosen by the
  side that sends the request.
* ``c`` optional conversation id (str, int or bytes): frames of one
  conversation are handled in order by one greenlet (a ``ConversationSender``).
* ``body`` anything msgpack carries (no ext types).

Decoding is bounded before msgpack allocates anything: the message size is
checked first, then msgpack's own ``max_*_len`` limits bound strings, bins,
arrays and maps.  Every failure is a :class:`FrameError` whose ``code`` is the
close code to send: 1009 for too big, 1007 for bytes that are not a valid
frame, 1003 for text messages (this protocol is binary only).

>>> codec = Codec(max_size=1024)
>>> data = codec.encode("req", {"seq": 1}, id=7, conversation="room-1")
>>> codec.decode(data)
Frame(type='req', id=7, conversation='room-1', body={'seq': 1})
>>> codec.decode(b"\\x00" * 2000)
Traceback (most recent call last):
  ...
greentree.websocket._errors.FrameError: close 1009: message of 2000 bytes exceeds max_size 1024
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from .._errors import ChildSpecError
from ._errors import FrameError

__all__ = ["VERSION", "Frame", "Codec", "TYPES", "CLOSE_CODES", "MessageAssembler"]

#: The frame format version this module speaks.
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
    """One decoded frame."""

    type: str
    id: Any
    conversation: Any
    body: Any


class Codec:
    """Encode and decode frames under size limits.

    ``max_size`` bounds a whole message in bytes; ``max_items`` bounds every
    array and map in it (msgpack would otherwise allocate one slot per
    element a peer declares).
    """

    __slots__ = ("max_size", "max_items")

    def __init__(self, max_size: int = 1 << 20, max_items: int = 65536):
        for what, value in (("max_size", max_size), ("max_items", max_items)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ChildSpecError(f"Codec: {what} must be an int >= 1, not {value!r}")
        self.max_size = max_size
        self.max_items = max_items

    def encode(self, type: str, body: Any = None, *, id: Any = None, conversation: Any = None) -> bytes:
        """Return the msgpack bytes of one frame (raises ValueError/TypeError for bad input)."""
        if type not in TYPES:
            raise ValueError(f"Codec.encode(): type must be one of {sorted(TYPES)}, not {type!r}")
        frame = {"v": VERSION, "t": type, "body": body}
        if id is not None:
            frame["id"] = id
        if conversation is not None:
            frame["c"] = conversation
        data = msgpack.packb(frame, use_bin_type=True)
        if len(data) > self.max_size:
            raise ValueError(
                f"Codec.encode(): the {type!r} frame is {len(data)} bytes, more than max_size "
                f"{self.max_size}; send smaller bodies or raise max_size on both sides"
            )
        return data

    def decode(self, data: bytes) -> Frame:
        """Decode one message; raise :class:`FrameError` (with its close code) if it is not a frame."""
        n = len(data)
        if n > self.max_size:
            raise FrameError(1009, f"message of {n} bytes exceeds max_size {self.max_size}")
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
        if v != VERSION:
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
        return Frame(t, fid, conv, obj.get("body"))


class MessageAssembler:
    """Joins the fragments wsproto delivers into whole binary messages, under a size limit.

    ``feed(data, finished)`` returns the whole message when ``finished``, else
    None; past ``max_size`` bytes it raises ``FrameError(1009)``.  One per
    connection, used by its single reader.

    >>> asm = MessageAssembler(8)
    >>> asm.feed(b"ab", False), asm.feed(b"cd", True)
    (None, b'abcd')
    >>> asm.feed(b"123456789", True)
    Traceback (most recent call last):
      ...
    greentree.websocket._errors.FrameError: close 1009: message exceeds max_size 8
    """

    __slots__ = ("max_size", "parts", "size")

    def __init__(self, max_size: int):
        self.max_size = max_size
        self.parts: list = []
        self.size = 0

    def feed(self, data: bytes, finished: bool):
        from ._errors import FrameError

        self.size += len(data)
        if self.size > self.max_size:
            raise FrameError(1009, f"message exceeds max_size {self.max_size}")
        parts = self.parts
        if not finished:
            parts.append(data)
            return None
        if parts:
            parts.append(data)
            data = b"".join(parts)
            parts.clear()
        self.size = 0
        return data
