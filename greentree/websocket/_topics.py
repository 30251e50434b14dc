"""Topics (rooms): named groups of connections and a broadcast that never waits.

::

    topics = Topics()
    topics.join("room-1", connection)        # e.g. in the service's on_open hook
    topics.publish("room-1", {"text": "hi"})  # from any greenlet of the process

A broadcast costs O(members): the body is encoded once per codec and written
to each member inline (one non-blocking ``send``), or queued behind that
member's backlog.  It never blocks the publisher.  Each member's backlog is
bounded; what happens to a member that does not keep up is the
**overflow policy**:

* ``"close"`` (default): the member's backlog is full (``send_queue``
  frames): the member is closed with 1008 (a :class:`SlowConsumerError`, as
  for any send) and leaves its topics; the others get the message;
* ``"drop"``: the message is not queued for a member whose backlog already
  holds ``drop_after`` frames; it is counted in ``stats.topic_drops``
  (of the member's service) and the member stays.

A connection that ends leaves every topic it joined.

**Across processes.**  ``remote`` is a callable ``remote(topic, body)``
that :meth:`Topics.publish` calls after the local fan-out (not for
:meth:`Topics.deliver`); a cluster layer passes one that forwards to the
other processes, which call :meth:`Topics.deliver` on receipt.  Bodies must
then be what the cluster can carry (msgpack data).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import ChildSpecError
from ._errors import ConnectionClosedError, SlowConsumerError

__all__ = ["Topics"]

_POLICIES = ("close", "drop")


class Topics:
    """Named groups of connections with a non-blocking, bounded broadcast.

    >>> t = Topics(overflow="drop", drop_after=64)
    >>> t.publish("nobody-here", {"x": 1})
    0
    >>> t.members("nobody-here"), t.topics()
    ([], [])
    """

    __slots__ = ("overflow", "drop_after", "remote", "_members")

    def __init__(self, *, overflow: str = "close", drop_after: int = 64,
                 remote: Callable[[Any, Any], None] | None = None):
        if overflow not in _POLICIES:
            raise ChildSpecError(f"Topics: overflow must be 'close' or 'drop', not {overflow!r}")
        if isinstance(drop_after, bool) or not isinstance(drop_after, int) or drop_after < 1:
            raise ChildSpecError(f"Topics: drop_after must be an int >= 1, not {drop_after!r}")
        if remote is not None and not callable(remote):
            raise ChildSpecError(f"Topics: remote must be callable(topic, body), not {remote!r}")
        self.overflow = overflow
        self.drop_after = drop_after
        self.remote = remote
        self._members: dict[Any, dict] = {}

    def __repr__(self) -> str:
        return f"<Topics {len(self._members)} topics overflow={self.overflow!r}>"

    def join(self, topic: Any, connection) -> None:
        """Add ``connection`` to ``topic`` (idempotent); it leaves when it ends."""
        if not connection.connected:
            raise ConnectionClosedError(f"Topics.join({topic!r}): {connection!r} is not open")
        self._members.setdefault(topic, {})[connection] = None
        joined = connection.topics
        if type(joined) is not set:  # its first topic (a connection starts with an empty frozenset)
            joined = connection.topics = set()
        joined.add((self, topic))

    def leave(self, topic: Any, connection) -> None:
        """Remove ``connection`` from ``topic`` (no error if it was not a member)."""
        members = self._members.get(topic)
        if members is not None:
            members.pop(connection, None)
            if not members:
                del self._members[topic]
        joined = connection.topics
        if type(joined) is set:
            joined.discard((self, topic))

    def members(self, topic: Any) -> list:
        """The connections in ``topic``, in join order."""
        return list(self._members.get(topic, ()))

    def topics(self) -> list:
        """Topics with at least one member."""
        return list(self._members)

    def publish(self, topic: Any, body: Any, *, exclude=None) -> int:
        """Send ``body`` to every member of ``topic`` here, then hand it to ``remote``.

        Returns how many local members it was written or queued for.
        ``exclude`` is a connection that should not get it (often the sender).
        """
        n = self.deliver(topic, body, exclude=exclude)
        if self.remote is not None:
            self.remote(topic, body)
        return n

    def deliver(self, topic: Any, body: Any, *, exclude=None) -> int:
        """The local fan-out only (what a cluster calls for a message from another process)."""
        members = self._members.get(topic)
        if not members:
            return 0
        encoded: dict[int, Any] = {}
        sent = 0
        drop = self.overflow == "drop"
        for conn in list(members):
            if conn is exclude:
                continue
            codec = conn.service.codec
            data = encoded.get(id(codec))
            if data is None:
                data = encoded[id(codec)] = codec.encode("msg", body)
            if drop and conn._backlog is not None and len(conn._backlog) >= self.drop_after:
                conn.service.stats.topic_drops += 1
                continue
            try:
                conn._send_encoded(data)
            except (ConnectionClosedError, SlowConsumerError):
                continue  # it is ending (and will leave); the others still get the message
            sent += 1
        return sent
