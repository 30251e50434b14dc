"""A conversation sender's inbox: a bounded FIFO handled on a pooled greenlet while it holds work.

:class:`gevent.queue.Queue` serves any number of producers and consumers,
with blocking puts and timeouts; a sender's inbox needs none of that: the
producers never block (``put_nowait``, :class:`gevent.queue.Full` when it
holds ``maxsize`` items), and nothing waits on it.  When an item arrives
and nothing is handling the inbox, a greenlet is taken from a pool
(:class:`~greentree.websocket._workers.Workers`) to run ``drain``, which
takes the items one by one; when the inbox is empty, ``drain`` returns
and the greenlet goes back to the pool.  An inbox with nothing to do holds
no greenlet: no stack, and nothing to switch into when its sender stops.

``drain`` runs once at a time: it sets :attr:`Inbox.running` to its greenlet
when it starts and back to None just before it returns (with no yield in
between after it saw the inbox empty), and an item put while it runs is
taken by that same run.  At most one start is scheduled at a time: a
callback in the hub that does nothing if a run started meanwhile (or took
the items), or if the inbox was closed.

A producer that is about to wait itself can instead lend its turn
(:meth:`Inbox.hand_over`, :meth:`Inbox.hand_over_until`): a connection's
reader, having handed a request to its conversation's inbox, lets the
request be answered before the event loop runs the other connections'
readers, the order a server with one greenlet per connection has (read,
answer, read the next).

>>> import gevent
>>> from greentree.websocket._workers import Workers
>>> got = []
>>> box = Inbox(2, Workers(fresh_context=False))
>>> def drain():
...     box.running = gevent.getcurrent()
...     while not box.empty():
...         got.append(box.get_nowait())
...     box.running = None
>>> box.open(drain)
>>> box.put_nowait("a"); box.put_nowait("b")
>>> try:
...     box.put_nowait("c")
... except Full:
...     print("full")
full
>>> gevent.sleep(0); got, box.qsize()
(['a', 'b'], 0)
"""

from __future__ import annotations

from collections import deque
from typing import Any

from gevent import get_hub, getcurrent
from gevent.queue import Full

__all__ = ["Inbox", "Full"]


_READY, _TIMED_OUT = object(), object()  # how hand_over_until's wait ended


class Inbox:
    """Bounded FIFO: any greenlet (or the hub) puts without blocking; ``drain`` runs on a pooled
    greenlet while there are items."""

    __slots__ = ("_items", "maxsize", "running", "_drain", "_pool", "_waking", "_hub")

    def __init__(self, maxsize: int, pool: Any):
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ValueError(f"Inbox: maxsize must be an int >= 1, not {maxsize!r}")
        self._items: deque = deque()
        self.maxsize = maxsize
        #: The greenlet running ``drain`` now, or None.  ``drain`` sets and clears it.
        self.running: Any = None
        self._drain: Any = None  # the function that takes the items (None: closed, or not opened yet)
        self._pool = pool
        self._waking = False  # a start is scheduled in the hub
        self._hub = get_hub()

    def __repr__(self) -> str:
        state = " running" if self.running is not None else "" if self._drain is not None else " closed"
        return f"<Inbox {len(self._items)}/{self.maxsize}{state}>"

    def open(self, drain) -> None:
        """Run ``drain()`` on a pooled greenlet whenever items wait and it is not running."""
        self._drain = drain
        if self._items and self.running is None:
            self._schedule()

    def close(self) -> None:
        """No more runs of ``drain`` (one running goes on until it returns)."""
        self._drain = None

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item) -> None:
        """Append ``item``; :class:`gevent.queue.Full` (and nothing changes) if ``maxsize`` are queued."""
        items = self._items
        if len(items) >= self.maxsize:
            raise Full
        items.append(item)
        if self.running is None and not self._waking and self._drain is not None:
            self._schedule()

    def get_nowait(self):
        """The oldest item; IndexError if empty."""
        return self._items.popleft()

    def _schedule(self) -> None:
        self._waking = True
        self._hub.loop.run_callback(self._wake)

    def _wake(self) -> None:
        """In the hub: start ``drain`` if there is something to take and nothing takes it."""
        self._waking = False
        drain = self._drain
        if drain is not None and self.running is None and self._items:
            self._pool.lend(drain)

    def _ready(self) -> bool:
        return self.running is None and self._drain is not None and bool(self._items)

    def hand_over(self) -> None:
        """Run ``drain`` now, in the caller's turn; return once it returned or waits for something.

        For a producer greenlet that is about to wait itself (a connection's
        reader, before its next read): what was just put is handled before
        anything else runs, as if the producer had called it, instead of
        after everything else the event loop has ready.  The event loop
        resumes the caller first thing after that, so the caller never waits
        for the work.  Never from the hub; does nothing if ``drain`` runs
        already or there is nothing to take.
        """
        if not self._ready():
            return
        me = getcurrent()
        guard = self._hub.loop.run_callback(me.switch)  # runs once the pooled greenlet waits or parks
        try:
            self._pool.lend(self._drain)
            while guard.pending:
                self._hub.switch()  # a stray switch into us: keep waiting for the guard
        finally:
            guard.stop()

    def hand_over_until(self, watcher, timeout: float | None) -> bool | None:
        """Run ``drain`` now, in the caller's turn, and wait for ``watcher`` meanwhile.

        For a reader that, having fed the inbox, would next wait for its
        socket (``watcher``: the socket's read watcher, not started): it
        starts waiting first, then lends its turn, and the event loop resumes
        it when the socket is readable.  Returns True when the socket is
        readable, False if ``timeout`` seconds passed first, and None (having
        done nothing) if ``drain`` runs already or there is nothing to take.
        As for any wait, an exception thrown into the caller (a kill, the
        socket closed under it) ends the wait.
        """
        if not self._ready():
            return None
        me = getcurrent()
        hub = self._hub
        watcher.start(me.switch, _READY)
        timer = None
        if timeout is not None:
            timer = hub.loop.timer(max(timeout, 0.0))
            timer.start(me.switch, _TIMED_OUT)
        try:
            got = self._pool.lend(self._drain)  # what we are resumed with, once drain waits or returned
            while got is not _READY and got is not _TIMED_OUT:
                got = hub.switch()  # (a stray switch into us: keep waiting, as gevent's waits do)
        finally:
            watcher.stop()
            if timer is not None:
                timer.close()
        return got is _READY
