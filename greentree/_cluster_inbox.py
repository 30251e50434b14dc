"""Messages between nodes through the store: an inbox per node (Redis Streams).

With ``transport="inbox"`` (the default on Redis) a node sends a message
to another by appending an authenticated entry (:func:`seal_inbox`) to that
node's inbox; each node reads its own inbox from a cursor.

* One writer greenlet per node drains a queue and appends a batch per store
  call, so the entries of one sender reach every inbox in the order they
  were sent, and their sequence numbers grow: the reader refuses an entry
  whose number does not (a replay).
* The reader keeps its cursor in memory across store outages (nothing is
  read twice, nothing skipped) and saves it in the store now and then, so the
  next process of the same node name goes on where this one stopped.
* Every entry carries ``n``, the count of entries ever appended to that
  inbox; a jump in ``n`` is what ``MAXLEN`` trimmed before it was read, and
  is counted in ``stats["inbox_trimmed"]``.
* Entries for another incarnation of the node (sent before it restarted or
  was fenced) are dropped and counted (``dropped_old_incarnation``).

:class:`InboxPeer` stands where a link stands in :mod:`greentree._cluster`:
``send``, ``send_payload``, ``pending`` (calls awaiting a reply), ``close``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
from gevent.queue import Empty, Queue

from ._cluster_proto import ProtocolError, backoff, encode_envelope, open_inbox, seal_inbox
from ._cluster_store import StoreError
from ._report import report_event

__all__ = ["InboxPeer", "Inbox"]

#: Entries queued for sending beyond which new ones are dropped (and counted).
MAX_QUEUED = 20_000
#: Entries per store call.
BATCH = 256
#: Seconds between saves of the reader's cursor.
SAVE_EVERY = 0.5


class InboxPeer:
    """Another node, reached through its inbox."""

    __slots__ = ("inbox", "peer", "incarnation", "pending", "closed")

    def __init__(self, inbox: Inbox, peer: str, incarnation: int):
        self.inbox = inbox
        self.peer = peer
        self.incarnation = incarnation
        self.pending: dict[int, Any] = {}
        self.closed = False

    def send(self, env: dict) -> None:
        self.send_payload(encode_envelope(env))

    def send_payload(self, payload: bytes) -> None:
        if self.closed:
            raise ConnectionError(f"the inbox of node {self.peer!r} (incarnation {self.incarnation}) is closed to us")
        self.inbox.put(self.peer, self.incarnation, payload)

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<InboxPeer {self.peer!r} incarnation={self.incarnation}>"


class Inbox:
    """The writer and the reader of one node."""

    def __init__(self, core: Any, key: bytes):
        # core: the node's ClusterCore (which imports this module)
        self.core = core
        self.key = key
        self.queue: Queue = Queue()
        self.seq = 0
        self.last_seen: dict[tuple[str, int], int] = {}   # (sender, incarnation) -> last seq
        self.cursor: tuple[str, int] | None = None         # (stream id, n) of the last entry read

    # ------------------------------------------------------------ sending
    def put(self, node: str, incarnation: int, payload: bytes) -> None:
        core = self.core
        if not core._check_deadline():
            raise ConnectionError(f"{core!r}: not a member; nothing is sent")
        if self.queue.qsize() >= MAX_QUEUED:
            core.stats["inbox_send_dropped"] += 1
            raise ConnectionError(f"{core!r}: {MAX_QUEUED} messages wait for the store already")
        self.seq += 1
        entry = seal_inbox(self.key, (node, incarnation), (core.node, core.incarnation or 0), self.seq, payload)
        self.queue.put((node, entry))

    def write_loop(self) -> None:
        store = self.core._store
        while True:
            batch = [self.queue.get()]
            try:
                while len(batch) < BATCH:
                    batch.append(self.queue.get_nowait())
            except Empty:
                pass
            if not self.core._check_deadline():
                self.core.stats["inbox_send_dropped"] += len(batch)  # fenced: links would be closed too
                continue
            try:
                store.inbox_send(batch)
            except StoreError:
                # At most once: an entry whose append may or may not have
                # happened is not sent again.
                self.core.stats["inbox_send_failed"] += len(batch)

    # ------------------------------------------------------------ receiving
    def read_loop(self) -> None:
        core = self.core
        store = core._store
        attempt = 0
        saved_at = 0.0
        saved: tuple[str, int] | None = None
        while True:
            if not core._up.wait(1.0) or not core._check_deadline():
                continue
            try:
                if self.cursor is None:
                    self.cursor = saved = store.inbox_cursor(core.node)
                entries = store.inbox_read(core.node, self.cursor[0])
                attempt = 0
            except StoreError:
                gevent.sleep(backoff(attempt, 0.05, 0.5))
                attempt += 1
                continue
            for entry_id, n, data in entries:
                last_n = self.cursor[1]
                if n > last_n + 1:
                    core.stats["inbox_trimmed"] += n - last_n - 1
                elif n <= last_n:
                    core.stats["inbox_reset"] += 1  # the store lost the inbox (failover, restart)
                self.cursor = (entry_id, n)
                self.deliver(data)
            now = time.monotonic()
            if self.cursor != saved and now - saved_at >= SAVE_EVERY:
                try:
                    store.save_inbox_cursor(core.node, *self.cursor)
                    saved, saved_at = self.cursor, now
                except StoreError:
                    pass
            if entries:
                gevent.idle()

    def deliver(self, data: bytes) -> None:
        core = self.core
        try:
            (to, to_inc), (frm, frm_inc), seq, env = open_inbox(self.key, data, core._max_frame)
        except ProtocolError as e:
            core.stats["refused_connections"] += 1
            if core._refusal_log.allow():
                report_event(logging.WARNING, "%r: refused an inbox entry: %s", core, e)
            return
        if to != core.node or to_inc != core.incarnation:
            core.stats["dropped_old_incarnation"] += 1
            return
        last = self.last_seen.get((frm, frm_inc), 0)
        if seq <= last:
            core.stats["dropped_replayed"] += 1
            return
        self.last_seen[(frm, frm_inc)] = seq
        peer: Any = core._links.get(frm)
        if not isinstance(peer, InboxPeer) or peer.incarnation != frm_inc:
            peer = InboxPeer(self, frm, frm_inc)  # a reply to it goes to its inbox
        core._on_envelope(peer, env)
