"""Instance records: the :class:`Instance` value, its on-disk encoding, and the
deadline queue.  Pure: no gevent.

A stored row is ``(key, crc, head, meta)``:

* ``key``  = ``msgpack(id)``;
* ``head`` = ``msgpack([FORMAT_VERSION, spec, state, created, updated, deadline])``;
* ``meta`` = ``msgpack(meta)``, kept as bytes by the shard so a caller who
  changes an :class:`Instance`'s meta dict in place never changes what is
  stored;
* ``crc``  = CRC-32 of key, head and meta: a damaged row is refused rather
  than read back as a different value.

Decoding refuses rows larger than :data:`MAX_META` + a small head, a
``FORMAT_VERSION`` it does not know, and anything that is not the shape
above, with :class:`ValueError` (the store turns it into
:class:`StoreCorruptError` naming the file).
"""

from __future__ import annotations

import heapq
import itertools
import zlib
from typing import Any, NamedTuple

import msgpack

from ._instance_spec import InstanceValueError

__all__ = [
    "FORMAT_VERSION",
    "MAX_META",
    "DeadlineQueue",
    "Instance",
    "decode_key",
    "decode_row",
    "encode_key",
    "encode_meta",
    "encode_row",
]

#: Version of the row layout; a newer one is refused when read.
FORMAT_VERSION = 1
#: Largest encoded meta, in bytes.
MAX_META = 1 << 20
_MAX_HEAD = 64 << 10
# One Packer for the row heads: packb() builds a new Packer per call (2.5 us
# against 1 us).  Safe across threads: pack() runs in C without releasing the
# GIL and calls no Python code (no ``default=``).
_pack_head = msgpack.Packer(use_bin_type=True).pack
_KEY_TYPES = (str, bytes, int)
_NUMBERS = (float, int)


class Instance(NamedTuple):
    """One state-machine instance, as last committed.

    ``spec`` is the spec's name, ``created``/``updated`` are wall-clock times
    (the manager's clock), ``deadline`` is when the current state times out
    (None: no timeout).  A snapshot: later transitions return new Instances.
    Treat ``meta`` as read-only (changing it in place changes only your copy,
    never the store).
    """

    id: Any
    spec: str
    state: Any
    meta: Any
    created: float
    updated: float
    deadline: float | None = None


def _check_key(value: Any) -> bool:
    t = type(value)
    if t is tuple:
        return all(_check_key(v) for v in value)
    return t in _KEY_TYPES


def check_id(instance_id: Any) -> None:
    """Raise :class:`InstanceValueError` unless ``instance_id`` is a valid id (see :func:`encode_key`)."""
    t = type(instance_id)
    if t is str or (t is int and -(1 << 63) <= instance_id < (1 << 64)):
        return
    encode_key(instance_id)


def encode_key(instance_id: Any) -> bytes:
    """The stored key of ``instance_id``; refuses ids that cannot round-trip.

    >>> encode_key("o-1"), encode_key(("tenant", 7))
    (b'\\xa3o-1', b'\\x92\\xa6tenant\\x07')
    >>> encode_key(["o", 1])
    Traceback (most recent call last):
      ...
    greentree._instance_spec.InstanceValueError: instance id ['o', 1] cannot be stored: ids must be str, bytes, int, or tuples of them
    """
    if not _check_key(instance_id):
        raise InstanceValueError(
            f"instance id {instance_id!r} cannot be stored: ids must be str, bytes, int, or tuples of them"
        )
    try:
        return msgpack.packb(instance_id, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise InstanceValueError(f"instance id {instance_id!r} cannot be stored: {e}") from None


def decode_key(key: bytes) -> Any:
    """The id stored under ``key`` (tuples come back as tuples)."""
    value = msgpack.unpackb(key, raw=False, use_list=False)
    if type(value) is not str and not _check_key(value):
        raise ValueError(f"stored key {key!r} is not a valid instance id")
    return value


def encode_meta(meta: Any, instance_id: Any) -> tuple[bytes, Any]:
    """``(bytes, value)``: the stored meta and the value a reload will give back.

    Tuples come back as lists, so the returned value is what every later read
    returns too.

    >>> encode_meta({"tenant": 7, "tags": ("a", "b")}, "o-1")
    (b'\\x82\\xa6tenant\\x07\\xa4tags\\x92\\xa1a\\xa1b', {'tenant': 7, 'tags': ['a', 'b']})
    >>> encode_meta({"when": object()}, "o-1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    greentree._instance_spec.InstanceValueError: meta of instance 'o-1' cannot be stored: ...; use dicts, lists, ...
    """
    try:
        data = msgpack.packb(meta, use_bin_type=True)
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (TypeError, ValueError, OverflowError) as e:
        raise InstanceValueError(
            f"meta of instance {instance_id!r} cannot be stored: {type(e).__name__}: {e}; "
            "use dicts, lists, str, bytes, int, float, bool and None"
        ) from None
    if len(data) > MAX_META:
        raise InstanceValueError(
            f"meta of instance {instance_id!r} is {len(data)} bytes encoded; the limit is {MAX_META}"
        )
    return data, value


def encode_row(key: bytes, inst: Instance, meta: bytes) -> tuple[bytes, int, bytes, bytes]:
    """The row for ``inst`` (its meta already encoded)."""
    head = _pack_head([FORMAT_VERSION, inst.spec, inst.state, inst.created, inst.updated, inst.deadline])
    return key, zlib.crc32(meta, zlib.crc32(head, zlib.crc32(key))), head, meta


def decode_row(key: Any, crc: Any, head: Any, meta: Any) -> tuple[Instance, bytes]:
    """``(Instance, meta bytes)`` from a stored row; :class:`ValueError` if it is damaged."""
    if type(key) is not bytes or type(head) is not bytes or type(meta) is not bytes or type(crc) is not int:
        raise ValueError("a column has the wrong type")
    if len(head) > _MAX_HEAD or len(meta) > MAX_META or len(key) > _MAX_HEAD:
        raise ValueError("a column is larger than any row greentree writes")
    if zlib.crc32(meta, zlib.crc32(head, zlib.crc32(key))) != crc:
        raise ValueError("checksum mismatch")
    fields = msgpack.unpackb(head, raw=False, use_list=False)
    if type(fields) is not tuple or len(fields) != 6:
        raise ValueError("the row head is not a 6-field array")
    version, spec, state, created, updated, deadline = fields
    if version != FORMAT_VERSION:
        raise ValueError(f"row format {version!r}; this greentree reads format {FORMAT_VERSION}")
    if type(spec) is not str or type(created) not in _NUMBERS or type(updated) not in _NUMBERS or not (
            deadline is None or type(deadline) in _NUMBERS):
        raise ValueError("the row head has fields of the wrong type")
    value = msgpack.unpackb(meta, raw=False, strict_map_key=False)
    return Instance(decode_key(key), spec, state, value, created, updated, deadline), meta


class DeadlineQueue:
    """Deadlines by instance id: set, clear, and pop the due ones, earliest first.

    >>> q = DeadlineQueue()
    >>> q.set("a", 30.0); q.set("b", 10.0); q.set("c", 20.0); q.clear("c")
    >>> q.next_deadline(), q.pop_due(25.0), q.next_deadline(), len(q)
    (10.0, ['b'], 30.0, 1)

    A heap with lazy deletion: :meth:`set` and :meth:`clear` are O(log n) and
    O(1); stale entries are dropped when they reach the top, and the heap is
    rebuilt when they outnumber the live ones.  Ids are never compared.
    """

    __slots__ = ("_heap", "_live", "_seq", "live")

    def __init__(self) -> None:
        self._heap: list = []
        self._live: dict = {}  # id -> (deadline, seq)
        self._seq = itertools.count()
        #: The live deadlines by id (read-only; truthy when any is set): a
        #: test without the cost of a ``len()`` call.
        self.live = self._live

    def __len__(self) -> int:
        return len(self._live)

    @classmethod
    def from_items(cls, items: list) -> DeadlineQueue:
        """A queue holding ``(id, deadline)`` pairs (ids unique), built in O(n)."""
        q = cls()
        seq = q._seq
        heap = [(deadline, next(seq), i) for i, deadline in items]
        q._live = q.live = {entry[2]: entry for entry in heap}
        heapq.heapify(heap)
        q._heap = heap
        return q

    def set(self, instance_id: Any, deadline: float | None) -> None:
        """Set (or with None, clear) the deadline of ``instance_id``."""
        if deadline is None:
            self.clear(instance_id)
            return
        entry = (deadline, next(self._seq), instance_id)
        self._live[instance_id] = entry
        heapq.heappush(self._heap, entry)
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = list(self._live.values())
            heapq.heapify(self._heap)

    def clear(self, instance_id: Any) -> None:
        self._live.pop(instance_id, None)

    def _top(self):
        heap, live = self._heap, self._live
        while heap:
            entry = heap[0]
            if live.get(entry[2]) is entry:
                return entry
            heapq.heappop(heap)
        return None

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None."""
        top = self._top()
        return None if top is None else top[0]

    def pop_due(self, now: float, limit: int | None = None) -> list:
        """Remove and return the ids whose deadline is <= ``now``, earliest first."""
        out: list = []
        while limit is None or len(out) < limit:
            top = self._top()
            if top is None or top[0] > now:
                break
            heapq.heappop(self._heap)
            del self._live[top[2]]
            out.append(top[2])
        return out
