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

from collections import deque
from time import perf_counter
from typing import Any

import gevent
from gevent import get_hub, getcurrent, spawn_raw
from gevent.event import Event

__all__ = ["Mailbox", "Reply", "BATCH", "SLICE"]

#: Events handled back to back before the draining greenlet lets the hub
#: run timers and sockets (``gevent.idle()``; ``sleep(0)`` runs no timer).
BATCH = 256
#: ...or sooner, once handling them has taken this many seconds.
SLICE = 0.01

class Reply:
    """A one-shot answer a caller may wait for (no Event unless someone waits)."""

    __slots__ = ("done", "value", "error", "_waiter")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self._waiter: Event | None = None

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
        if self._waiter is not None:
            self._waiter.set()
        return True

    def wait(self, timeout: float | None) -> bool:
        """Wait until answered; False if ``timeout`` passed first."""
        if self.done:
            return True
        if self._waiter is None:
            self._waiter = Event()
        self._waiter.wait(timeout)
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
        cur = self._mb_idle_here()
        if cur is not None and not self._mb_may_block(event):
            # Idle, nothing queued, and handling it cannot yield: exactly what
            # queueing it and draining here would do, minus the queue.
            self._mb_drainer = cur
            try:
                self._mb_handle(event)
            finally:
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
        if self._mb_force_worker or cur is get_hub():
            self._mb_spawn_worker()
        else:
            self._mb_drain_borrowed(cur)

    # -- draining ---------------------------------------------------------
    def _mb_drain_borrowed(self, cur: Any) -> None:
        """Drain in a greenlet that is not ours: only events that cannot
        yield, at most BATCH of them; the rest goes to a spawned greenlet."""
        self._mb_drainer = cur
        q = self._mb_q
        n = 0
        try:
            while q:
                event = q[0]
                if n >= BATCH or self._mb_may_block(event):
                    self._mb_spawn_worker()
                    return
                q.popleft()
                self._mb_handle(event)
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
