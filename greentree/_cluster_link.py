"""Authenticated TCP links between cluster nodes: the socket shell around
:mod:`greentree._cluster_proto`.

One :class:`Link` per connection, used in both directions: exactly one
greenlet reads it (the acceptor's connection handler, or the reader the
connector spawns) and exactly one writes it (the link's writer, fed by a
queue), so two greenlets never write the socket at once and frames queued in
one turn of the hub leave in one ``sendall``.  A link that sees one bad frame (garbage,
oversized, wrong version, bad mac) is closed; the node's other links and its
listening socket are untouched.
"""

from __future__ import annotations

import os
import socket as _stdsocket
from collections.abc import Callable
from typing import Any

import gevent
from gevent import socket
from gevent.event import Event

from ._cluster_proto import (
    DIR_ACCEPTOR,
    DIR_CONNECTOR,
    FrameReader,
    ProtocolError,
    decode_envelope,
    encode_envelope,
    open_frame,
    seal,
    session_key,
)

__all__ = ["Link", "connect", "accept", "HANDSHAKE_TIMEOUT"]

#: Seconds a connection may take to authenticate before it is closed.
HANDSHAKE_TIMEOUT = 2.0
#: Bytes a link may queue for a slow peer before it is cut off.
MAX_QUEUED = 16 << 20
_NONCE = 16


class Link:
    """An authenticated connection to ``peer`` (node name) of ``incarnation``."""

    def __init__(self, sock, key: bytes, outgoing: bytes, reader: FrameReader, peer: str, incarnation: int):
        self.sock = sock
        self.key = key
        self.peer = peer
        self.incarnation = incarnation
        self._out_dir = outgoing
        self._in_dir = DIR_ACCEPTOR if outgoing == DIR_CONNECTOR else DIR_CONNECTOR
        self._send_seq = 1
        self._recv_seq = 1
        self._reader = reader
        self._out: list[bytes] = []     # sealed frames waiting for the writer
        self._out_bytes = 0
        self._wakeup = Event()
        self.closed = False
        #: call id -> AsyncResult of calls sent on this link and not answered yet
        self.pending: dict[int, Any] = {}
        self._writer = gevent.spawn(self._write_loop)

    def __repr__(self) -> str:
        return f"<Link to {self.peer!r} inc={self.incarnation}{' closed' if self.closed else ''}>"

    def send(self, env: dict) -> None:
        """Encode, seal and write one envelope (TypeError if it is not msgpack data)."""
        payload = encode_envelope(env)
        self.send_payload(payload)

    def send_payload(self, payload: bytes) -> None:
        """Queue one frame for the link's writer; never blocks.

        Frames are sealed (numbered) in the order they are queued and written
        in that order; frames queued by many greenlets in one turn of the hub
        go out in one ``sendall``.  A peer that falls more than
        :data:`MAX_QUEUED` bytes behind is cut off: the link closes and its
        pending calls fail (messages are at most once).
        """
        if self.closed:
            raise ConnectionError(f"{self!r} is closed")
        frame = seal(self.key, self._out_dir, self._send_seq, payload)
        self._send_seq += 1
        self._out.append(frame)
        self._out_bytes += len(frame)
        if self._out_bytes > MAX_QUEUED:
            self.close()
            raise ConnectionError(f"{self!r}: the peer is more than {MAX_QUEUED} bytes behind; link closed")
        self._wakeup.set()

    def _write_loop(self) -> None:
        out = self._out
        try:
            while not self.closed:
                self._wakeup.wait()
                self._wakeup.clear()
                while out and not self.closed:
                    data = out[0] if len(out) == 1 else b"".join(out)
                    out.clear()
                    self._out_bytes = 0
                    self.sock.sendall(data)
        except OSError:
            self.close()

    def read_loop(self, handle: Callable[[Link, dict], None]) -> None:
        """Read envelopes and pass each to ``handle`` until the link ends.

        Returns normally when the peer closes; raises ProtocolError on a bad frame.
        """
        reader = self._reader
        while True:
            for mac, payload in reader.feed(b""):
                self._dispatch(handle, mac, payload)
            data = self.sock.recv(65536)
            if not data:
                return
            for mac, payload in reader.feed(data):
                self._dispatch(handle, mac, payload)

    def _dispatch(self, handle, mac: bytes, payload: bytes) -> None:
        env = open_frame(self.key, self._in_dir, self._recv_seq, mac, payload)
        self._recv_seq += 1
        handle(self, env)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._out.clear()
        self._wakeup.set()  # the writer sees closed and ends
        try:
            self.sock.close()
        except OSError:
            pass


def _read_frame(sock, reader: FrameReader) -> tuple[bytes, bytes]:
    while True:
        for frame in reader.feed(b""):
            return frame
        data = sock.recv(65536)
        if not data:
            raise ProtocolError("peer closed the connection during the handshake")
        for frame in reader.feed(data):
            return frame


def connect(address: tuple, secret: bytes, me: tuple[str, int], max_frame: int,
            timeout: float = HANDSHAKE_TIMEOUT) -> Link:
    """Open an authenticated link to the node listening at ``address``.

    ``me`` is (node, incarnation).  Raises OSError if it cannot connect and
    ProtocolError if the peer does not authenticate.
    """
    sock = None
    try:
        with gevent.Timeout(timeout, ConnectionError(f"handshake with {address} took longer than {timeout} s")):
            sock = socket.create_connection(tuple(address), timeout=timeout)
            sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
            reader = FrameReader(max_frame)
            _mac, payload = _read_frame(sock, reader)
            hello = decode_envelope(payload)
            if hello["k"] != "hello" or len(hello["nonce"]) != _NONCE:
                raise ProtocolError(f"expected a hello frame, got {hello['k']!r}")
            mine = os.urandom(_NONCE)
            key = session_key(secret, hello["nonce"], mine)
            sock.sendall(seal(key, DIR_CONNECTOR, 0, encode_envelope(
                {"k": "auth", "nonce": mine, "node": me[0], "inc": me[1]})))
            mac, payload = _read_frame(sock, reader)
            auth = open_frame(key, DIR_ACCEPTOR, 0, mac, payload)
            if auth["k"] != "auth" or auth["nonce"] != hello["nonce"]:
                raise ProtocolError("the peer's auth frame does not answer our challenge")
            sock.settimeout(None)
            return Link(sock, key, DIR_CONNECTOR, reader, auth["node"], auth["inc"])
    except BaseException:
        if sock is not None:
            sock.close()
        raise


def accept(sock, secret: bytes, me: tuple[str, int], max_frame: int,
           timeout: float = HANDSHAKE_TIMEOUT) -> Link:
    """Authenticate an accepted connection; ProtocolError if the peer fails to."""
    with gevent.Timeout(timeout, ProtocolError(f"no authentication within {timeout} s")):
        sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
        mine = os.urandom(_NONCE)
        sock.sendall(seal(None, DIR_ACCEPTOR, 0, encode_envelope({"k": "hello", "nonce": mine})))
        reader = FrameReader(max_frame)
        mac, payload = _read_frame(sock, reader)
        auth = decode_envelope(payload, max_frame)
        if auth["k"] != "auth" or len(auth["nonce"]) != _NONCE:
            raise ProtocolError(f"expected an auth frame, got {auth['k']!r}")
        key = session_key(secret, mine, auth["nonce"])
        auth = open_frame(key, DIR_CONNECTOR, 0, mac, payload)
        sock.sendall(seal(key, DIR_ACCEPTOR, 0, encode_envelope(
            {"k": "auth", "nonce": mine, "node": me[0], "inc": me[1]})))
    return Link(sock, key, DIR_ACCEPTOR, reader, auth["node"], auth["inc"])
