"""The store behind a :class:`greentree.Cluster`: the operations the cluster
needs from etcd or Redis, as one interface.

The cluster core (:mod:`greentree._cluster_member`, :mod:`greentree._cluster`)
talks only to a :class:`Store`; ``_cluster_member.open_store`` picks the
backend from the URL's scheme (``etcd://`` or ``redis://``).  The operations are generic
key/value operations on byte keys, so other parts of greentree (the
ClusterSupervisor's specs and placements) can keep their own records in the
cluster's key space with the same guarantees:

* ``create(key, value, lease)``: put only if absent, optionally bound to a
  lease (the key goes when the lease does); the answer carries the new
  key's *create revision*, the fencing token of a name;
* ``put_if(key, value, create_revision)``: compare-and-put on the create
  revision; ``delete_if(key, create_revision)``; ``put(key, value, lease)``
  and ``delete(key)`` unconditionally;
* ``range(key, end)``: a consistent listing of ``[key, end)`` and the
  revision it was taken at;
* ``watch(key, end, start_revision)``: every change after a listing, in
  order; it raises :class:`StoreError` when it cannot go on from there (the
  history was compacted or the store lost data), and the caller lists again;
* leases: ``lease_grant(ttl)``, ``lease_keepalive(id)`` (0 once the lease is
  gone), ``lease_revoke(id)``.

Revisions and tokens are ints that only grow (etcd: the store's revision;
Redis: an epoch and a counter, see :mod:`greentree._redis_store`).  Every
operation raises :class:`StoreUnavailable` when the store does not answer
within the store's ``timeout``, and never blocks the gevent hub.

>>> prefix_end(b"app/")
b'app0'
>>> KV(b"k", b"v", 7)
KV(b'k', create_revision=7)
"""

from __future__ import annotations

import abc
from collections.abc import Iterator

__all__ = ["KV", "Store", "StoreError", "StoreUnavailable", "Watch", "parse_endpoints", "prefix_end"]


class StoreError(Exception):
    """The store answered with an error, or a watch cannot go on (list again)."""


class StoreUnavailable(StoreError):
    """The store did not answer in time (down, unreachable, no leader or primary)."""


def parse_endpoints(url: str, netloc: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` -> [(host, port), ...] (ValueError naming ``url``).

    >>> parse_endpoints("redis://a:1,b:2", "a:1,b:2")
    [('a', 1), ('b', 2)]
    """
    endpoints = []
    for hp in netloc.split(","):
        host, _, port = hp.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"cluster url {url!r}: {hp!r} is not host:port")
        endpoints.append((host, int(port)))
    return endpoints


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


class KV:
    """One key and value as a store returns it."""

    __slots__ = ("key", "value", "create_revision", "mod_revision", "lease")

    def __init__(self, key: bytes, value: bytes, create_revision: int, mod_revision: int = 0, lease: int = 0):
        self.key = key
        self.value = value
        self.create_revision = create_revision
        self.mod_revision = mod_revision or create_revision
        self.lease = lease

    def __repr__(self) -> str:
        return f"KV({self.key!r}, create_revision={self.create_revision})"


class Watch(abc.ABC):
    """Iterate for lists of ``(type, KV)`` events, type ``"PUT"`` or ``"DELETE"``
    (a DELETE's KV carries the key and its ``mod_revision``; etcd gives no
    create revision there); ``close()`` (from another greenlet) ends the
    iteration."""

    @abc.abstractmethod
    def __iter__(self) -> Iterator[list[tuple[str, KV]]]: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class Store(abc.ABC):
    """What a cluster needs from its store (see the module's docstring)."""

    #: "etcd" or "redis"; used in messages and docs.
    kind: str = "store"
    #: Seconds one request may take before it raises :class:`StoreUnavailable`.
    timeout: float = 2.0
    #: True for a store that can lose acknowledged writes on failover (Redis):
    #: names are unique while the primary keeps its data (see the how-to).
    bounded_overlap: bool = False

    @abc.abstractmethod
    def range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, list[KV]]:
        """(revision, kvs) for ``key`` or the keys in [key, range_end), sorted by key."""

    @abc.abstractmethod
    def create(self, key: bytes, value: bytes, lease: int = 0) -> tuple[bool, int, KV | None]:
        """Put ``key`` only if absent: (created, revision, existing kv).  On
        success the revision is the new key's create revision (its token)."""

    @abc.abstractmethod
    def put_if(self, key: bytes, value: bytes, create_revision: int, lease: int = 0) -> bool:
        """Overwrite ``key`` only if it is still the one created at ``create_revision``."""

    @abc.abstractmethod
    def delete_if(self, key: bytes, create_revision: int) -> bool:
        """Delete ``key`` only if it is still the one created at ``create_revision``."""

    @abc.abstractmethod
    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Put ``key`` unconditionally (bound to ``lease`` if given); the new revision.
        An existing key keeps its create revision."""

    @abc.abstractmethod
    def delete(self, key: bytes) -> int:
        """Delete ``key`` whoever created it (nothing if absent); the revision after."""

    @abc.abstractmethod
    def lease_grant(self, ttl: float) -> tuple[int, float]:
        """A new lease: (id, granted ttl in seconds)."""

    @abc.abstractmethod
    def lease_keepalive(self, lease: int, timeout: float | None = None) -> float:
        """Refresh ``lease``: its ttl in seconds, 0 if the lease no longer exists."""

    @abc.abstractmethod
    def lease_revoke(self, lease: int, timeout: float | None = None) -> None:
        """Revoke ``lease`` (its keys go); a lease already gone is not an error."""

    @abc.abstractmethod
    def watch(self, key: bytes, range_end: bytes, start_revision: int) -> Watch:
        """The changes of [key, range_end) from ``start_revision`` on."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop connections and threads; the store can be used again after."""

    # Messages through the store (an inbox per node).  Optional: etcd carries
    # none (nodes talk over direct links), Redis does (a Stream per node).
    #: True if the store carries messages (the ``inbox_*`` methods work).
    inbox: bool = False

    def inbox_send(self, entries: list[tuple[str, bytes]]) -> None:
        """Append each ``(node, entry)`` to that node's inbox, in order."""
        raise NotImplementedError(f"{self.kind} carries no messages: nodes talk over direct links")

    def inbox_read(self, node: str, cursor: str) -> list[tuple[str, int, bytes]]:
        """Entries of ``node``'s inbox after ``cursor`` (waiting a little for
        some): ``(id, n, entry)``, ``n`` counting every entry ever appended
        to that inbox, so a gap in ``n`` is what was trimmed unread."""
        raise NotImplementedError(f"{self.kind} carries no messages")

    def inbox_cursor(self, node: str) -> tuple[str, int]:
        """The saved ``(cursor, n)`` of ``node``'s reader (``("0", 0)`` if none)."""
        raise NotImplementedError(f"{self.kind} carries no messages")

    def save_inbox_cursor(self, node: str, cursor: str, n: int) -> None:
        """Save the reader's position, for the next process of that node name."""
        raise NotImplementedError(f"{self.kind} carries no messages")
