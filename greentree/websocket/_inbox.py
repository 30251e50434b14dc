"""A conversation sender's inbox: a bounded FIFO with one consumer greenlet.

:class:`gevent.queue.Queue` serves any number of producers and consumers,
with blocking puts and timeouts; a sender's inbox needs none of that: the
producers never block (``put_nowait``, :class:`gevent.queue.Full` when it
holds ``maxsize`` items) and its one consumer, the sender, waits without a
timeout (its idle timer puts a reap item instead).  This one is a deque, the
consumer parked in the hub while it is empty, and at most one wake-up
scheduled at a time: two objects per inbox instead of four, and about a
third less work to hand a frame to a waiting sender (see
``docs/performance_websocket.rst``).

The wake-up is a callback in the hub that switches to the consumer only if
it is still parked on *this* inbox with something to take, so a wake-up
that arrives after the consumer was killed (or took the item itself) does
nothing, as gevent's own waiters behave.

A producer that is about to wait itself can instead lend the consumer its
turn (:meth:`Inbox.hand_over`): a connection's reader, having handed a
request to its conversation's sender, lets the sender answer it before the
event loop runs the other connections' readers, the order a server with
one greenlet per connection has (read, answer, read the next).  Without it
every reader that was ready ran first and every sender after them, so each
answer waited for all the reads of its turn of the loop.

>>> import gevent
>>> box = Inbox(2)
>>> got = []
>>> g = gevent.spawn(lambda: got.extend([box.get(), box.get()]))
>>> gevent.sleep(0)  # the consumer is parked on the empty inbox
>>> box.put_nowait("a"); box.put_nowait("b")
>>> try:
...     box.put_nowait("c")
... except Full:
...     print("full")
full
>>> g.join(); got, box.qsize()
(['a', 'b'], 0)
"""

from __future__ import annotations

from collections import deque
from typing import Any

from gevent import get_hub, getcurrent
from gevent.queue import Full

from .._child import Raise

__all__ = ["Inbox", "Full"]


_READY, _TIMED_OUT = object(), object()  # how hand_over_until's wait ended


class Inbox:
    """Bounded FIFO: any greenlet (or the hub) puts without blocking, one greenlet takes."""

    __slots__ = ("_items", "maxsize", "_parked", "_waking", "_hub", "_lender")

    def __init__(self, maxsize: int):
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ValueError(f"Inbox: maxsize must be an int >= 1, not {maxsize!r}")
        self._items: deque = deque()
        self.maxsize = maxsize
        self._parked: Any = None  # the consumer, while it waits in get()
        self._waking = False  # a wake-up callback is scheduled
        self._hub = get_hub()
        self._lender: Any = None  # the greenlet that handed its turn over (hand_over), while it waits

    def __repr__(self) -> str:
        return f"<Inbox {len(self._items)}/{self.maxsize}{' parked' if self._parked is not None else ''}>"

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
        if self._parked is not None and not self._waking:
            self._waking = True
            self._hub.loop.run_callback(self._wake)

    def _wake(self) -> None:
        """In the hub: resume the consumer if it still waits here and there is something to take."""
        self._waking = False
        g = self._parked
        if g is not None and self._items:
            self._parked = None
            g.switch()

    def get(self):
        """The oldest item; waits (in the hub) while the inbox is empty.  One consumer only."""
        items = self._items
        while not items:
            if self._parked is not None:
                raise RuntimeError(f"{self!r}: {self._parked!r} already waits on it; one consumer only")
            self._parked = getcurrent()
            try:
                lender = self._lender
                if lender is not None:  # hand_over() switched to us: give its turn back
                    self._lender = None
                    got = lender.switch()
                else:
                    got = self._hub.switch()
                if type(got) is Raise:  # stopped while it waits (throw_here(..., by_switch=True))
                    raise got.exception
            finally:
                self._parked = None
        return items.popleft()

    def hand_over(self) -> None:
        """Run the parked consumer now, in the caller's turn; return once it waits here again.

        For a producer greenlet that is about to wait itself (a connection's
        reader, before its next read): the consumer handles what was just put
        before anything else runs, as if the producer had called it, instead
        of after everything else the event loop has ready.  If the consumer
        waits for something else meanwhile (or ends), the event loop resumes
        the caller first thing, so the caller never waits for the consumer's
        work.  Never from the hub; does nothing if the consumer is not parked
        here or there is nothing to take.
        """
        g = self._parked
        if g is None or not self._items or self._lender is not None:
            return
        me = getcurrent()
        self._lender = me
        guard = self._hub.loop.run_callback(self._reclaim, me)  # runs only if the consumer waits elsewhere
        try:
            g.switch()
        finally:
            guard.stop()
            if self._lender is me:
                self._lender = None

    def hand_over_until(self, watcher, timeout: float | None) -> bool | None:
        """Run the parked consumer now, in the caller's turn, and wait for ``watcher`` meanwhile.

        For a reader that, having fed the consumer, would next wait for its
        socket (``watcher``: the socket's read watcher, not started): it
        starts waiting first, then lends the consumer its turn, and the event
        loop resumes it when the socket is readable.  The consumer, when it
        waits again, goes back to the event loop rather than to the caller, so
        there is one switch fewer than :meth:`hand_over` then a read that
        would fail first.  Returns True when the socket is readable, False if
        ``timeout`` seconds passed first, and None (having done nothing) if
        the consumer is not parked here or there is nothing to take.  As for
        any wait, an exception thrown into the caller (a kill, the socket
        closed under it) ends the wait.
        """
        g = self._parked
        if g is None or not self._items or self._lender is not None:
            return None
        me = getcurrent()
        hub = self._hub
        watcher.start(me.switch, _READY)
        timer = None
        if timeout is not None:
            timer = hub.loop.timer(max(timeout, 0.0))
            timer.start(me.switch, _TIMED_OUT)
        try:
            got = g.switch()
            while got is not _READY and got is not _TIMED_OUT:
                got = hub.switch()  # a stray switch into us: keep waiting, as gevent's waits do
        finally:
            watcher.stop()
            if timer is not None:
                timer.close()
        return got is _READY

    def _reclaim(self, lender) -> None:
        """In the hub: the consumer waits on something else (or ended): resume the lender now."""
        if self._lender is lender:
            self._lender = None
            lender.switch()

    def get_nowait(self):
        """The oldest item; IndexError if empty."""
        return self._items.popleft()
