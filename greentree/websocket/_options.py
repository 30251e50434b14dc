"""Settings, counters and events shared by every connection of one service."""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, NamedTuple

from .._errors import ChildSpecError
from .._report import report_event

__all__ = ["Options", "Stats", "Event", "emit"]


def _number(owner, name, value, *, allow_none=False, minimum=0.0, integer=False):
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if not ok or (not integer and math.isnan(value)) or value < minimum:
        kind = "an int" if integer else "a number"
        none = " or None" if allow_none else ""
        raise ChildSpecError(f"{owner}: {name} must be {kind} >= {minimum}{none}, not {value!r}")
    return value if integer else float(value)


class Options:
    """The knobs of a WebSocket service, checked when built.

    >>> Options(send_queue=64).send_queue
    64
    >>> Options(ping_interval=-1)
    Traceback (most recent call last):
      ...
    greentree._errors.ChildSpecError: Options: ping_interval must be a number >= 0.0 or None, not -1

    * ``max_size`` / ``max_items``: limits on one received message (bytes) and
      on every array or map in it (1009 / 1007 past them).
    * ``send_queue``: frames waiting for the writer; a full queue means the
      peer does not read, and fails the connection (1008).
    * ``write_timeout``: one ``sendall`` that stalls this long fails the
      connection the same way.
    * ``ping_interval`` / ``ping_timeout``: a ping goes out after
      ``ping_interval`` seconds without traffic from the peer; if nothing
      arrives ``ping_timeout`` seconds later the connection is half-open and is
      closed (1011).  ``ping_interval=None`` turns keepalive off.
    * ``close_timeout``: how long closing waits for the close frame to be written.
    * ``request_timeout``: default timeout of :meth:`Connection.request`.
    * ``conversation_inbox``: frames a conversation may hold unhandled; a peer
      that floods one conversation is closed with 1008, a local sender gets
      :class:`BackpressureError`.
    * ``max_fragments``: fragments one message may arrive in (each costs a
      parse, empty ones included; 1009 past it).
    * ``max_conversations``: live senders per connection (``SenderSupervisor``'s
      ``max_children``, 100 by default); a frame for one more conversation is
      dropped (a request gets an ``err`` reply) and counted in ``dropped``.
    * ``sender_idle_timeout``: a sender with nothing to do for this long
      ends and frees its name and memory (60 s by default; the next frame of
      its conversation starts a new one).
    * ``max_connections``: trees one service runs at once (10,000 by
      default; one more upgrade gets 503).  Also raise ``RLIMIT_NOFILE``:
      every connection is a file descriptor.
    * ``sender_max_restarts`` / ``sender_max_seconds``: the sender pool's
      restart intensity; ``connection_max_restarts`` /
      ``connection_max_seconds``: the per-connection tree's.
    * ``subprotocols``: WebSocket subprotocols the server accepts (the first
      one the client offers that is in this list is chosen).
    """

    __slots__ = (
        "max_size", "max_items", "send_queue", "write_timeout", "ping_interval", "ping_timeout",
        "close_timeout", "request_timeout", "conversation_inbox", "max_conversations", "max_fragments",
        "sender_idle_timeout", "max_connections",
        "sender_max_restarts", "sender_max_seconds", "connection_max_restarts",
        "connection_max_seconds", "subprotocols",
    )

    def __init__(
        self, *, max_size: int = 1 << 20, max_items: int = 65536, send_queue: int = 1024,
        write_timeout: float | None = 10.0, ping_interval: float | None = 20.0,
        ping_timeout: float = 10.0, close_timeout: float = 2.0, request_timeout: float | None = 10.0,
        conversation_inbox: int = 1024, max_conversations: int | None = 100, max_fragments: int = 1024,
        sender_idle_timeout: float | None = 60.0, max_connections: int | None = 10_000,
        sender_max_restarts: int = 3, sender_max_seconds: float = 5.0,
        connection_max_restarts: int = 5, connection_max_seconds: float = 30.0,
        subprotocols: tuple = (),
    ):
        o = "Options"
        self.max_size = _number(o, "max_size", max_size, minimum=1, integer=True)
        self.max_items = _number(o, "max_items", max_items, minimum=1, integer=True)
        self.send_queue = _number(o, "send_queue", send_queue, minimum=1, integer=True)
        self.write_timeout = _number(o, "write_timeout", write_timeout, allow_none=True)
        self.ping_interval = _number(o, "ping_interval", ping_interval, allow_none=True)
        self.ping_timeout = _number(o, "ping_timeout", ping_timeout)
        self.close_timeout = _number(o, "close_timeout", close_timeout)
        self.request_timeout = _number(o, "request_timeout", request_timeout, allow_none=True)
        self.conversation_inbox = _number(o, "conversation_inbox", conversation_inbox, minimum=1, integer=True)
        self.max_conversations = _number(
            o, "max_conversations", max_conversations, allow_none=True, minimum=1, integer=True)
        self.max_fragments = _number(o, "max_fragments", max_fragments, minimum=1, integer=True)
        self.sender_idle_timeout = _number(o, "sender_idle_timeout", sender_idle_timeout, allow_none=True,
                                           minimum=1e-9)
        self.max_connections = _number(o, "max_connections", max_connections, allow_none=True, minimum=1,
                                       integer=True)
        self.sender_max_restarts = _number(o, "sender_max_restarts", sender_max_restarts, integer=True)
        self.sender_max_seconds = _number(o, "sender_max_seconds", sender_max_seconds, minimum=1e-9)
        self.connection_max_restarts = _number(o, "connection_max_restarts", connection_max_restarts, integer=True)
        self.connection_max_seconds = _number(o, "connection_max_seconds", connection_max_seconds, minimum=1e-9)
        if self.ping_interval == 0:
            self.ping_interval = None
        if isinstance(subprotocols, str) or not all(isinstance(p, str) for p in subprotocols):
            raise ChildSpecError(f"{o}: subprotocols must be a tuple of str, not {subprotocols!r}")
        self.subprotocols = tuple(subprotocols)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"Options({fields})"


class Stats:
    """Counters for one service (plain ints: reading them costs nothing).

    >>> s = Stats(); s.bad_frames += 1; s.snapshot()["bad_frames"]
    1
    """

    connections_opened: int
    connections_closed: int
    messages_in: int
    messages_out: int
    bad_frames: int
    oversized_frames: int
    slow_consumers: int
    keepalive_timeouts: int
    conversation_overflows: int
    dropped: int
    late_replies: int
    connection_crashes: int
    sender_crashes: int
    reconnects: int
    connect_failures: int
    bad_handshakes: int
    refused: int
    senders_reaped: int
    topic_drops: int
    close_codes: Counter

    _FIELDS = (
        "connections_opened", "connections_closed", "messages_in", "messages_out", "bad_frames",
        "oversized_frames", "slow_consumers", "keepalive_timeouts", "conversation_overflows",
        "dropped", "late_replies", "connection_crashes", "sender_crashes", "reconnects",
        "connect_failures", "bad_handshakes", "refused", "senders_reaped", "topic_drops",
    )
    __slots__ = _FIELDS + ("close_codes",)

    def __init__(self):
        for f in self._FIELDS:
            setattr(self, f, 0)
        #: close code -> how many connections ended with it (1006: no close frame).
        self.close_codes: Counter = Counter()

    def snapshot(self) -> dict:
        d = {f: getattr(self, f) for f in self._FIELDS}
        d["close_codes"] = dict(self.close_codes)
        return d

    def __repr__(self) -> str:
        return f"Stats({self.snapshot()!r})"


class Event(NamedTuple):
    """What a consumer learns about its connections (instead of being killed).

    ``kind`` is one of ``"connected"`` (data: the peer), ``"disconnected"``
    (data: ``(close_code, reason)``), ``"connection_crashed"`` (data: the
    exception), ``"sender_crashed"`` (data: ``(conversation, exception)``) and
    ``"instance_down"`` (data: None, or the exception that ended the tree).
    """

    kind: str
    instance_id: Any
    data: Any = None


def emit(sink, event: Event) -> None:
    """Deliver ``event`` to ``sink`` (a queue's ``put_nowait`` or a callable); never raises.

    Runs in the greenlet where the event happened, or in the hub for
    ``instance_down``: a callable sink must not block.
    """
    if sink is None:
        return
    try:
        put = getattr(sink, "put_nowait", None)
        if put is not None:
            put(event)
        else:
            sink(event)
    except Exception as e:  # a consumer's bug must not break the connection reporting it
        report_event(logging.ERROR, "greentree.websocket: event sink %r failed on %r: %r", sink, event, e)
