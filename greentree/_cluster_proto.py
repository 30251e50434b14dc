"""Pure decisions of the cluster: wire format, authentication, lease deadline,
membership state, the node view.  No gevent, no sockets, no clock of its own.

Wire format between nodes.  Every frame on a node-to-node TCP connection is::

    length (4 bytes, big endian) | mac (32 bytes) | payload (length bytes, msgpack)

The payload is a msgpack map with a version field ``"v"``.  Frames longer than
the receiver's limit are refused before a byte of payload is read.  A
connection opens with a challenge: the accepting node sends its 16-byte random
nonce (in an unauthenticated ``hello`` frame), the connecting node answers with
an authenticated ``auth`` frame carrying its own nonce, node name and
incarnation, and the acceptor answers ``auth`` too.  Both sides then use the
session key ``HMAC(secret, "greentree-cluster-1" + nonce_acceptor +
nonce_connector)``; every frame's mac is ``HMAC(session_key, direction + seq +
payload)`` with a per-direction sequence number, so a frame cannot be forged,
replayed or moved to another connection without the shared secret.

>>> key = session_key(b"s3cret", b"a" * 16, b"b" * 16)
>>> frame = seal(key, DIR_CONNECTOR, 0, encode_envelope({"k": "send", "to": "x", "tok": 7, "m": [1]}))
>>> r = FrameReader(max_frame=1024)
>>> [open_frame(key, DIR_CONNECTOR, 0, mac, payload) for mac, payload in r.feed(frame)][0]["m"]
[1]
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterator
from typing import NamedTuple

import msgpack

__all__ = [
    "VERSION", "MAX_FRAME", "ProtocolError", "FrameReader", "seal", "open_frame", "session_key",
    "encode_envelope", "decode_envelope", "LeaseClock", "Membership", "NodeView", "NodeInfo", "Owner",
    "DIR_CONNECTOR", "DIR_ACCEPTOR", "KINDS", "inbox_key", "seal_inbox", "open_inbox",
]

#: The envelope format version this code speaks.
VERSION = 1
#: Default limit on one frame's payload (bytes); larger frames are refused.
MAX_FRAME = 1 << 20
_HEADER = struct.Struct(">I")
_MAC_LEN = 32
DIR_CONNECTOR = b"C"
DIR_ACCEPTOR = b"A"

#: Envelope kinds and the fields each must carry (besides "v" and "k").
KINDS: dict[str, dict[str, tuple]] = {
    "hello": {"nonce": (bytes,)},
    "auth": {"nonce": (bytes,), "node": (str,), "inc": (int,)},
    "call": {"to": (str,), "tok": (int,), "id": (int,), "t": (float, int, type(None)), "m": (object,)},
    "cast": {"to": (str,), "tok": (int,), "m": (object,)},
    "send": {"to": (str,), "tok": (int,), "m": (object,)},
    "reply": {"id": (int,), "ok": (bool,), "m": (object,)},
    "pub": {"topic": (str,), "m": (object,)},
}


class ProtocolError(ValueError):
    """A frame or envelope is malformed, too large, of another version, or not authenticated."""


class Owner(NamedTuple):
    """Who holds a cluster name: the node and the fencing token of the grant."""

    node: str
    token: int


class NodeInfo(NamedTuple):
    """A member of the cluster: its name, incarnation (grows with every start
    and every lost lease), transport address ``(host, port)`` and the wall
    time it joined."""

    name: str
    incarnation: int
    address: tuple
    since: float


# ---------------------------------------------------------------- frames
def session_key(secret: bytes, nonce_acceptor: bytes, nonce_connector: bytes) -> bytes:
    """The per-connection key both ends derive from the shared secret and two nonces."""
    return hmac.new(secret, b"greentree-cluster-1" + nonce_acceptor + nonce_connector, hashlib.sha256).digest()


def _mac(key: bytes, direction: bytes, seq: int, payload: bytes) -> bytes:
    # hmac.digest: the one-shot C path, ~20x cheaper than hmac.new(...).digest()
    return hmac.digest(key, direction + seq.to_bytes(8, "big") + payload, "sha256")


def seal(key: bytes | None, direction: bytes, seq: int, payload: bytes) -> bytes:
    """One frame: header, mac (zeros when ``key`` is None: the hello), payload."""
    mac = b"\0" * _MAC_LEN if key is None else _mac(key, direction, seq, payload)
    return _HEADER.pack(len(payload)) + mac + payload


def open_frame(key: bytes, direction: bytes, seq: int, mac: bytes, payload: bytes) -> dict:
    """Check a frame's mac and decode its envelope; :class:`ProtocolError` if either fails."""
    if not hmac.compare_digest(mac, _mac(key, direction, seq, payload)):
        raise ProtocolError("frame not authenticated: bad mac (wrong secret, replayed or altered frame)")
    return decode_envelope(payload)


class FrameReader:
    """Splits a byte stream into ``(mac, payload)`` frames, refusing oversized ones.

    >>> r = FrameReader(max_frame=4)
    >>> [(len(mac), payload) for mac, payload in r.feed(seal(None, DIR_ACCEPTOR, 0, b"abc"))]
    [(32, b'abc')]
    >>> list(r.feed(b"\\x00\\x00\\x00\\x05"))
    Traceback (most recent call last):
      ...
    greentree._cluster_proto.ProtocolError: frame of 5 bytes exceeds the limit of 4 bytes
    """

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        buf = self._buf
        buf += data
        while len(buf) >= _HEADER.size:
            (n,) = _HEADER.unpack_from(buf)
            if n > self.max_frame:
                raise ProtocolError(f"frame of {n} bytes exceeds the limit of {self.max_frame} bytes")
            end = _HEADER.size + _MAC_LEN + n
            if len(buf) < end:
                return
            mac = bytes(buf[_HEADER.size:_HEADER.size + _MAC_LEN])
            payload = bytes(buf[_HEADER.size + _MAC_LEN:end])
            del buf[:end]
            yield mac, payload


# ---------------------------------------------------------------- envelopes
def encode_envelope(env: dict) -> bytes:
    """msgpack-encode an envelope, adding the version; TypeError if a value cannot be encoded."""
    out = {"v": VERSION}
    out.update(env)
    try:
        return msgpack.packb(out, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"cannot send {env.get('m')!r} across nodes: {e} (messages must be msgpack data)") from None


def decode_envelope(payload: bytes, max_len: int = MAX_FRAME) -> dict:
    """Decode and validate an envelope: version, kind, field types.

    >>> decode_envelope(encode_envelope({"k": "cast", "to": "a", "tok": 3, "m": "hi"}))["tok"]
    3
    >>> decode_envelope(msgpack.packb({"v": 2, "k": "cast"}))
    Traceback (most recent call last):
      ...
    greentree._cluster_proto.ProtocolError: envelope version 2 is not supported (this node speaks 1)
    """
    if len(payload) > max_len:
        raise ProtocolError(f"envelope of {len(payload)} bytes exceeds the limit of {max_len} bytes")
    try:
        env = msgpack.unpackb(
            payload, raw=False, use_list=True, strict_map_key=True,
            max_str_len=max_len, max_bin_len=max_len, max_array_len=max_len, max_map_len=max_len,
            max_ext_len=0,
        )
    except Exception as e:
        raise ProtocolError(f"undecodable envelope: {type(e).__name__}: {e}") from None
    if not isinstance(env, dict):
        raise ProtocolError(f"envelope must be a map, not {type(env).__name__}")
    if env.get("v") != VERSION:
        raise ProtocolError(f"envelope version {env.get('v')!r} is not supported (this node speaks {VERSION})")
    kind = env.get("k")
    fields = KINDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ProtocolError(f"unknown envelope kind {kind!r}")
    for name, types in fields.items():
        if name not in env:
            raise ProtocolError(f"{kind} envelope lacks field {name!r}")
        value = env[name]
        if types != (object,) and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise ProtocolError(f"{kind} envelope field {name!r} has the wrong type {type(value).__name__}")
    return env


# ---------------------------------------------------------------- inbox entries
def inbox_key(secret: bytes) -> bytes:
    """The key that authenticates inbox entries (messages through the store, Redis)."""
    return hmac.digest(secret, b"greentree-inbox-1", "sha256")


def seal_inbox(key: bytes, to: tuple[str, int], sender: tuple[str, int], seq: int, envelope: bytes) -> bytes:
    """One entry of a node's inbox: mac (32 bytes) + msgpack ``[1, to, to_inc, from, from_inc, seq, envelope]``.

    The mac covers the addressee and its incarnation, the sender and its
    incarnation and the sender's sequence number: an entry cannot be forged,
    moved to another node or incarnation, or replayed (the receiver wants
    sequence numbers to grow per sender incarnation).

    >>> k = inbox_key(b"s3cret")
    >>> entry = seal_inbox(k, ("b", 7), ("a", 3), 1, encode_envelope({"k": "send", "to": "x", "tok": 9, "m": 1}))
    >>> to, sender, seq, env = open_inbox(k, entry)
    >>> to, sender, seq, env["tok"]
    (('b', 7), ('a', 3), 1, 9)
    >>> open_inbox(inbox_key(b"other"), entry)
    Traceback (most recent call last):
      ...
    greentree._cluster_proto.ProtocolError: inbox entry not authenticated: bad mac (wrong secret or altered entry)
    """
    body = msgpack.packb([VERSION, to[0], to[1], sender[0], sender[1], seq, envelope], use_bin_type=True)
    return hmac.digest(key, body, "sha256") + body


def open_inbox(key: bytes, entry: bytes, max_len: int = MAX_FRAME) -> tuple[tuple[str, int], tuple[str, int], int, dict]:
    """Check and decode an inbox entry: (to, sender, seq, envelope); :class:`ProtocolError` if bad."""
    if len(entry) > max_len + 256:
        raise ProtocolError(f"inbox entry of {len(entry)} bytes exceeds the limit of {max_len} bytes")
    mac, body = entry[:_MAC_LEN], entry[_MAC_LEN:]
    if not hmac.compare_digest(mac, hmac.digest(key, body, "sha256")):
        raise ProtocolError("inbox entry not authenticated: bad mac (wrong secret or altered entry)")
    try:
        fields = msgpack.unpackb(body, raw=False, use_list=True, max_str_len=max_len, max_bin_len=max_len,
                                 max_array_len=16, max_map_len=0, max_ext_len=0)
    except Exception as e:
        raise ProtocolError(f"undecodable inbox entry: {type(e).__name__}: {e}") from None
    if not (isinstance(fields, list) and len(fields) == 7 and fields[0] == VERSION):
        raise ProtocolError(f"inbox entry of another version or shape: {str(fields)[:80]}")
    _v, to, to_inc, frm, frm_inc, seq, envelope = fields
    if not (isinstance(to, str) and isinstance(frm, str) and isinstance(envelope, bytes)
            and all(isinstance(i, int) and not isinstance(i, bool) for i in (to_inc, frm_inc, seq))):
        raise ProtocolError("inbox entry fields have the wrong types")
    return (to, to_inc), (frm, frm_inc), seq, decode_envelope(envelope, max_len)


# ---------------------------------------------------------------- lease deadline
class LeaseClock:
    """When this node must stop acting as a member.

    A refresh sent at ``sent_at`` and answered with a ttl of ``ttl`` proves
    the lease lives until at least ``sent_at + ttl`` on etcd's side (etcd
    counts from when it handled the refresh, which is later).  The node stops
    acting ``margin`` seconds before that, so its names are lost locally
    before anyone else can take them, even if etcd is unreachable.

    >>> c = LeaseClock(margin=0.5)
    >>> c.is_member(0.0)
    False
    >>> c.refreshed(sent_at=10.0, ttl=5.0); c.deadline
    14.5
    >>> c.refreshed(sent_at=9.0, ttl=5.0); c.deadline  # an older answer never moves it back
    14.5
    >>> c.is_member(14.4), c.is_member(14.5)
    (True, False)
    """

    def __init__(self, margin: float):
        if margin < 0:
            raise ValueError(f"LeaseClock(margin={margin!r}): margin must be >= 0")
        self.margin = margin
        self.deadline = float("-inf")

    def refreshed(self, sent_at: float, ttl: float) -> None:
        self.deadline = max(self.deadline, sent_at + ttl - self.margin)

    def lost(self) -> None:
        self.deadline = float("-inf")

    def is_member(self, now: float) -> bool:
        return now < self.deadline

    def remaining(self, now: float) -> float:
        return self.deadline - now


def default_margin(ttl: float) -> float:
    """The safety margin for a lease of ``ttl`` seconds: a fifth of it, at most 1 s.

    >>> default_margin(5.0), default_margin(2.0)
    (1.0, 0.4)
    """
    return min(1.0, ttl / 5.0)


# ---------------------------------------------------------------- membership state
class Membership:
    """This node's own state: connecting, up, fenced, stopped.

    =============  =====================================================
    event          effect
    =============  =====================================================
    ``joined``     connecting/fenced -> up (a new lease and incarnation)
    ``deadline``   up -> fenced (the local lease deadline passed)
    ``lost``       up -> fenced (etcd said the lease is gone)
    ``stop``       any -> stopped
    =============  =====================================================

    Any other (state, event) pair is refused with ValueError and changes nothing.

    >>> m = Membership(); m.state
    'connecting'
    >>> m.handle("joined", incarnation=7), m.incarnation
    ('up', 7)
    >>> m.handle("deadline")
    'fenced'
    >>> m.handle("deadline")
    Traceback (most recent call last):
      ...
    ValueError: membership: event 'deadline' is not valid in state 'fenced'
    """

    TABLE: dict[tuple[str, str], str] = {
        ("connecting", "joined"): "up",
        ("fenced", "joined"): "up",
        ("up", "deadline"): "fenced",
        ("up", "lost"): "fenced",
        ("connecting", "stop"): "stopped",
        ("up", "stop"): "stopped",
        ("fenced", "stop"): "stopped",
    }

    def __init__(self) -> None:
        self.state = "connecting"
        self.incarnation: int | None = None
        self.history: list[tuple[str, str]] = []

    def can(self, event: str) -> bool:
        return (self.state, event) in self.TABLE

    def handle(self, event: str, incarnation: int | None = None) -> str:
        new = self.TABLE.get((self.state, event))
        if new is None:
            raise ValueError(f"membership: event {event!r} is not valid in state {self.state!r}")
        if event == "joined":
            if incarnation is None or (self.incarnation is not None and incarnation <= self.incarnation):
                raise ValueError(
                    f"membership: joined with incarnation {incarnation!r}, which is not greater "
                    f"than the previous {self.incarnation!r}"
                )
            self.incarnation = incarnation
        self.history.append((self.state, new))
        self.state = new
        return new


# ---------------------------------------------------------------- other nodes
class NodeView:
    """What this node knows of the others, fed by etcd's watch.

    ``put``/``delete`` return the notifications to deliver, in order;
    :meth:`sync` replaces the whole view after a re-list and returns the
    difference.  An incarnation that was seen going down is stale forever:
    envelopes from it are dropped.

    >>> v = NodeView()
    >>> v.put(NodeInfo("a", 5, ("h", 1), 0.0))
    [('nodeup', 'a')]
    >>> v.put(NodeInfo("a", 9, ("h", 2), 0.0))  # restarted before we saw it go
    [('nodedown', 'a', 'restarted'), ('nodeup', 'a')]
    >>> v.is_stale("a", 5), v.is_stale("a", 9)
    (True, False)
    >>> v.delete("a", 9, "lease expired")
    [('nodedown', 'a', 'lease expired')]
    """

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self._down: dict[str, int] = {}   # node name -> highest incarnation known to be gone

    def put(self, info: NodeInfo) -> list[tuple]:
        old = self.nodes.get(info.name)
        if info.incarnation <= self._down.get(info.name, -1):
            return []  # a late event about an incarnation already gone
        if old is not None:
            if old.incarnation == info.incarnation:
                self.nodes[info.name] = info
                return []
            if old.incarnation > info.incarnation:
                return []
            self._mark_down(old)
            self.nodes[info.name] = info
            return [("nodedown", info.name, "restarted"), ("nodeup", info.name)]
        self.nodes[info.name] = info
        return [("nodeup", info.name)]

    def delete(self, name: str, incarnation: int | None, reason: str) -> list[tuple]:
        old = self.nodes.get(name)
        if old is None or (incarnation is not None and incarnation != old.incarnation):
            return []
        del self.nodes[name]
        self._mark_down(old)
        return [("nodedown", name, reason)]

    def sync(self, infos: list[NodeInfo], reason: str) -> list[tuple]:
        out: list[tuple] = []
        seen = {i.name for i in infos}
        for name in [n for n in self.nodes if n not in seen]:
            out += self.delete(name, None, reason)
        for info in infos:
            out += self.put(info)
        return out

    def clear(self, reason: str) -> list[tuple]:
        """Forget every node without marking it gone (this node was fenced:
        the others may well be alive, and are listed again on rejoin).

        >>> v = NodeView(); _ = v.put(NodeInfo("a", 5, ("h", 1), 0.0))
        >>> v.clear("fenced"), v.is_stale("a", 5), v.put(NodeInfo("a", 5, ("h", 1), 0.0))
        ([('nodedown', 'a', 'fenced')], False, [('nodeup', 'a')])
        """
        out = [("nodedown", name, reason) for name in self.nodes]
        self.nodes = {}
        return out

    def _mark_down(self, info: NodeInfo) -> None:
        self._down[info.name] = max(self._down.get(info.name, -1), info.incarnation)

    def is_stale(self, name: str, incarnation: int) -> bool:
        """True if envelopes from ``(name, incarnation)`` must be dropped."""
        cur = self.nodes.get(name)
        if cur is not None and incarnation < cur.incarnation:
            return True
        return incarnation <= self._down.get(name, -1)


def encode_record(record: dict) -> bytes:
    """A value stored in etcd (node or name record): msgpack with a version."""
    out = {"v": VERSION}
    out.update(record)
    return msgpack.packb(out, use_bin_type=True)


def decode_record(data: bytes) -> dict | None:
    """Decode a stored record; None if it is not one of ours (or another version)."""
    try:
        rec = msgpack.unpackb(data, raw=False, strict_map_key=True, max_str_len=1 << 16,
                              max_bin_len=1 << 16, max_array_len=64, max_map_len=64, max_ext_len=0)
    except Exception:
        return None
    if not isinstance(rec, dict) or rec.get("v") != VERSION:
        return None
    return rec


def node_info(name: str, record: dict, incarnation: int) -> NodeInfo | None:
    """The :class:`NodeInfo` of a node record, or None if malformed."""
    addr = record.get("addr")
    since = record.get("since")
    if not (isinstance(addr, list) and len(addr) == 2 and isinstance(addr[0], str) and isinstance(addr[1], int)):
        return None
    if not isinstance(since, (int, float)):
        return None
    return NodeInfo(name, incarnation, (addr[0], addr[1]), float(since))


def backoff(attempt: int, base: float = 0.05, cap: float = 1.0) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): doubling, capped.

    >>> [backoff(i) for i in range(6)]
    [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    """
    return min(cap, base * (2 ** min(attempt, 30)))

