"""One serial mailbox, shared by supervisors and servers.

Every change to a supervisor's or a server's state is an *event* (a child's
exit, a request, a retry, a stop) handled one at a time, in arrival order.
Handling an event may run user code that yields (a child class's
constructor, a start handshake, a server's ``handle_call``); events that
arrive meanwhile wait their turn.  That is OTP's mailbox, and it is what makes
"terminate_child wins over a restart in flight" and "no child outlives its
supervisor" true by construction.

A server drains its mailbox in its own greenlet.  A supervisor has no
greenlet of its own: its mailbox is a *serial executor*, drained by whichever
greenlet finds it idle (the exiting child, the caller of ``start_child``), and
a greenlet is spawned only for an event whose handling must block (an ordered
start waiting on a handshake, a shutdown waiting on exits, a child class
whose constructor may yield) or that arrives from the hub.  gevent never
preempts, so "idle" is a field, not a lock: a borrowed greenlet runs only
handlers that cannot yield, so nothing can interleave with them.
"""

from __future__ import annotations

import sys
from collections import deque
from time import perf_counter
from typing import Any

import gevent
from gevent import get_hub, getcurrent, spawn_raw
from gevent._hub_local import get_hub_if_exists
from gevent.event import Event

__all__ = ["Mailbox", "Reply", "BATCH", "SLICE"]

#: Events handled back to back before the draining greenlet lets the hub
#: run timers and sockets (``gevent.idle()``; ``sleep(0)`` runs no timer).
BATCH = 256
#: ...or sooner, once handling them has taken this many seconds.
SLICE = 0.01
#: Events handled inline, one inside another, in the running greenlet's stack
#: (a stop cascading down a tree of supervisors nests one per level, about 8
#: Python frames each).  Beyond NESTED_MAX an event is queued and its mailbox
#: handed to a spawned greenlet, a fresh stack: same order, one event at a time,
#: and no depth of tree reaches Python's recursion limit.  Inline handlers never
#: yield, so one counter for the process is the depth of the running stack.
NESTED_MAX = 16
nested = 0

class _Waker:
    """Wakes the greenlets waiting on answered :class:`Reply` objects, from one hub callback.

    One per hub.  Answering a Reply whose waiter is parked queues the Reply
    here; the first one queued schedules :meth:`run`, which switches to each
    waiter in the order the answers were given (what one Event per waiter
    did, with one callback per waiter).  A Reply whose waiter has left (it
    was killed, or timed out) is skipped, so no greenlet is ever switched
    to after it stopped waiting.
    """

    __slots__ = ("hub", "q", "scheduled")

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.q: deque = deque()
        self.scheduled = False

    def schedule(self) -> None:
        """Run :meth:`run` soon; from another thread (a cast from a threadpool function) too."""
        self.scheduled = True
        if get_hub_if_exists() is self.hub:  # (thread-local, right under monkey-patching too)
            self.hub.loop.run_callback(self.run)
        else:
            self.hub.loop.run_callback_threadsafe(self.run)

    def run(self) -> None:
        q = self.q
        try:
            while q:
                reply = q.popleft()
                g = reply._parked
                if g is not None:
                    reply._parked = None
                    try:
                        g.switch()
                    except:  # noqa: E722 - as gevent's Event: a raw greenlet's error goes to the hub
                        self.hub.handle_error(g, *sys.exc_info())
        finally:
            self.scheduled = False
            if q:  # interrupted (the hub raised), or queued from another thread meanwhile
                self.schedule()


def _waker(hub: Any) -> _Waker:
    w = getattr(hub, "_gt_waker", None)
    if w is None:
        w = hub._gt_waker = _Waker(hub)
    return w


def _expire(reply: Reply, g: Any) -> None:
    # A wait's timer, in the hub: wake the waiter if it is still parked on this reply.
    if reply._parked is g:
        reply._parked = None
        g.switch(_EXPIRED)


_EXPIRED = object()


class Reply:
    """A one-shot answer a caller may wait for.

    Waiting parks the greenlet (no Event, no Timeout object): answering
    queues the reply on the hub's :class:`_Waker`, and one hub callback
    switches to every waiter answered since, in answer order.  A second
    greenlet waiting on the same reply at the same time gets an Event.
    """

    __slots__ = ("done", "value", "error", "_waiter", "_parked", "_wake")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self._waiter: Event | None = None  # only for a second concurrent waiter
        self._parked: Any = None           # the greenlet parked in wait(), until it is woken or leaves
        self._wake: _Waker | None = None

    def set(self, value: Any = None) -> bool:
        """Answer with ``value``; False if it was already answered."""
        return self._finish(value, None)

    def set_exception(self, error: BaseException) -> bool:
        """Answer with ``error`` (raised to the waiter); False if already answered."""
        return self._finish(None, error)

    def _finish(self, value: Any, error: BaseException | None) -> bool:
        if self.done:
            return False
        self.done = True
        self.value = value
        self.error = error
        if self._parked is not None:
            w = self._wake
            assert w is not None  # set before _parked
            w.q.append(self)
            if not w.scheduled:
                w.schedule()
        if self._waiter is not None:
            self._waiter.set()
        return True

    def wait(self, timeout: float | None) -> bool:
        """Wait until answered; False if ``timeout`` passed first."""
        if self.done:
            return True
        g = getcurrent()
        if self._parked is not None and self._parked is not g:
            if self._waiter is None:
                self._waiter = Event()
            self._waiter.wait(timeout)
            return self.done
        hub = get_hub()
        self._wake = _waker(hub)
        timer = None
        if timeout is not None:
            # As gevent's Timeout (what Event.wait used): lowest priority, clock updated.
            timer = hub.loop.timer(max(timeout, 0.0), priority=-1)
            timer.start(_expire, self, g, update=True)
        self._parked = g
        try:
            while not self.done:
                if hub.switch() is _EXPIRED and not self.done:
                    break
                if not self.done:
                    self._parked = g  # woken by someone else: wait on
        finally:
            if self._parked is g:
                self._parked = None
            if timer is not None:
                timer.close()
        return self.done

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class Mailbox:
    """The serial mailbox mixin.  Owners implement :meth:`_mb_handle` (and,
    for executors, :meth:`_mb_may_block`); they call :meth:`_mb_post`."""

    #: A server: its own greenlet drains the mailbox (posting only wakes it).
    _mb_owned = False
    #: Tests: hand every event to a spawned greenlet (one of the delivery paths).
    _mb_force_worker = False

    _mb_q: deque | None = None
    _mb_drainer: Any = None    # the greenlet draining now; None when idle
    _mb_wake: Event | None = None

    # -- posting ----------------------------------------------------------
    def _mb_post(self, event: Any, front: bool = False) -> None:
        """Queue ``event`` (first, with ``front``: a stop overtakes queued
        requests); if nobody is draining, drain now (or hand off)."""
        global nested
        cur = self._mb_idle_here()
        if cur is not None and nested < NESTED_MAX and not self._mb_may_block(event):
            # Idle, nothing queued, and handling it cannot yield: exactly what
            # queueing it and draining here would do, minus the queue.
            self._mb_drainer = cur
            nested += 1
            try:
                self._mb_handle(event)
            finally:
                nested -= 1
                self._mb_finish_inline(cur)
            return
        q = self._mb_q
        if q is None:
            q = self._mb_q = deque()
        if front:
            q.appendleft(event)
        else:
            q.append(event)
        if self._mb_owned or self._mb_drainer is not None:
            wake = self._mb_wake
            if wake is not None:
                wake.set()
            return
        cur = getcurrent()
        if self._mb_force_worker or cur is get_hub() or nested >= NESTED_MAX:
            self._mb_spawn_worker()
        else:
            self._mb_drain_borrowed(cur)

    # -- draining ---------------------------------------------------------
    def _mb_drain_borrowed(self, cur: Any) -> None:
        """Drain in a greenlet that is not ours: only events that cannot
        yield, at most BATCH of them; the rest goes to a spawned greenlet."""
        global nested
        self._mb_drainer = cur
        q = self._mb_q
        n = 0
        try:
            while q:
                event = q[0]
                if n >= BATCH or nested >= NESTED_MAX or self._mb_may_block(event):
                    self._mb_spawn_worker()
                    return
                q.popleft()
                nested += 1
                try:
                    self._mb_handle(event)
                finally:
                    nested -= 1
                n += 1
        except BaseException:
            # A handler that cannot yield raised: a bug.  Hand the rest on, and
            # let the error surface in this greenlet.
            if q:
                self._mb_spawn_worker()
            else:
                self._mb_drainer = None
            raise
        self._mb_drainer = None
        self._mb_q = None  # empty: an idle mailbox holds no deque

    def _mb_spawn_worker(self) -> None:
        self._mb_drainer = spawn_raw(self._mb_worker)

    def _mb_worker(self) -> None:
        q = self._mb_q
        n = 0
        since = perf_counter()
        try:
            while q:
                event = q.popleft()
                self._mb_handle(event)
                n += 1
                if q and (n >= BATCH or perf_counter() - since > SLICE):
                    gevent.idle()
                    n = 0
                    since = perf_counter()
        finally:
            self._mb_drainer = None
            if q:  # killed from outside mid-way: never leave events stranded
                self._mb_spawn_worker()
            else:
                self._mb_q = None  # empty: an idle mailbox holds no deque

    def _mb_idle_here(self) -> Any:
        """The calling greenlet, if it may drain right now: the mailbox is idle
        and empty, and the caller is not the hub.  Else None."""
        if self._mb_drainer is None and not self._mb_q and not self._mb_owned and not self._mb_force_worker:
            cur = getcurrent()
            if cur is not get_hub():
                return cur
        return None

    def _mb_finish_inline(self, cur: Any) -> None:
        """After an event handled inline: drain what it queued, or go idle."""
        if self._mb_q:
            self._mb_drain_borrowed(cur)
        else:
            self._mb_drainer = None

    # -- waiting inside a handler ----------------------------------------
    def _mb_wait(self, timeout: float | None) -> None:
        """Inside a handler: wait until something is posted, or ``timeout``."""
        wake = self._mb_wake
        if wake is None:
            wake = self._mb_wake = Event()
        wake.clear()
        wake.wait(timeout)

    # -- for owners -------------------------------------------------------
    def _mb_may_block(self, event: Any) -> bool:  # pragma: no cover - overridden
        return True

    def _mb_handle(self, event: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def _mb_busy(self) -> bool:
        return self._mb_drainer is not None

    def _mb_size(self) -> int:
        q = self._mb_q
        return len(q) if q is not None else 0
