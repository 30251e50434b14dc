"""Request greenlets that serve one connection after another (the ``spawn`` of :class:`WebSocketServer`).

A pywsgi server spawns a new greenlet for every accepted connection.  For a
WebSocket upgrade that greenlet lives only as long as the handshake: the
connection's own tree takes the socket over, and the request greenlet ends.
A new greenlet is not free (under Python 3.11 each one that runs gets its own
16 KiB frame stack, mapped when it starts and unmapped when it ends, plus its
creation, its first switch and its end), so :class:`Workers` keeps a greenlet
that finished a request parked for the next accepted connection, for up to
``idle_timeout`` seconds.  Each request runs in a fresh, empty
:mod:`contextvars` context, as in a new greenlet (``fresh_context=False``:
in whatever context the job enters itself).

The same pool runs conversation senders' work (:meth:`Workers.lend`): a
sender with nothing to do holds no greenlet, and one with work borrows a
parked worker for as long as its inbox holds items.

Hand-over: the server's accept callback (in the hub) gives the connection to
the most recently parked worker (its idle timer is stopped at once) and
schedules a switch to it; if the worker was killed meanwhile, the connection
goes to another worker.  A worker parked longer than ``idle_timeout`` ends.

>>> import gevent
>>> w = Workers(idle_timeout=5.0)
>>> seen = []
>>> _ = w(seen.append, 1); gevent.sleep(0)      # a new worker serves it, then parks
>>> _ = w(seen.append, 2); gevent.sleep(0)      # the parked worker serves the next one
>>> seen, w.count(), w.idle_count()
([1, 2], 1, 1)
>>> w.close(); w.count()
0
"""

from __future__ import annotations

import sys
from contextvars import Context
from typing import Any

from gevent import Greenlet, get_hub, getcurrent, killall
from gevent.event import Event

__all__ = ["Workers"]


class _Slot:
    """One worker greenlet and its hand-over state."""

    __slots__ = ("greenlet", "job", "timer", "parked")

    def __init__(self, greenlet):
        self.greenlet = greenlet
        self.job: Any = None
        self.timer: Any = None
        self.parked = False


class Workers:
    """``spawn(fn, *args)`` for a gevent ``StreamServer``/``WSGIServer``, reusing idle greenlets."""

    def __init__(self, idle_timeout: float = 10.0, fresh_context: bool = True):
        if not isinstance(idle_timeout, (int, float)) or isinstance(idle_timeout, bool) or not idle_timeout > 0:
            raise ValueError(f"Workers: idle_timeout must be a number of seconds > 0, not {idle_timeout!r}")
        self.idle_timeout = float(idle_timeout)
        self.fresh_context = fresh_context
        self._hub = get_hub()
        self._idle: list[_Slot] = []  # parked workers, the most recent last
        self._busy: set = set()  # workers serving a connection
        self._all: set = set()  # every live worker
        self._quiet: Event | None = None  # set when no worker is busy (only while join() waits)
        self._closed = False

    def __repr__(self) -> str:
        return f"<Workers busy={len(self._busy)} idle={len(self._idle)}{' closed' if self._closed else ''}>"

    def count(self) -> int:
        """Live worker greenlets (busy and idle)."""
        return len(self._all)

    def idle_count(self) -> int:
        """Parked workers, waiting for a connection."""
        return len(self._idle)

    def busy_count(self) -> int:
        """Workers serving a connection now."""
        return len(self._busy)

    def __len__(self) -> int:  # what gevent's Pool answers: the greenlets at work
        return len(self._busy)

    def __bool__(self) -> bool:  # an object, not a container: never false because it is idle
        return True

    def __call__(self, fn, *args):
        """Serve ``fn(*args)`` in a parked worker if there is one, else in a new one."""
        if self._closed:
            raise RuntimeError(f"{self!r}: closed; it serves no more connections")
        slot = self._unpark(fn, args)
        if slot is not None:
            self._hub.loop.run_callback(self._resume, slot)
            return slot.greenlet
        g = Greenlet(self._work, fn, args)
        self._all.add(g)
        g.start()
        return g

    def lend(self, fn, *args):
        """Run ``fn(*args)`` in a parked worker (or a new one) now, in the caller's turn.

        Switches to the worker at once, from the calling greenlet or from the
        hub.  The worker, when ``fn`` waits for something or has returned,
        switches to the event loop, not back to a calling greenlet: that one
        must have arranged to be resumed (a watcher, a callback), and this
        returns what it is resumed with.  Once the pool is closed, ``fn``
        still runs, in a greenlet of its own.
        """
        slot = self._unpark(fn, args)
        if slot is not None:
            return slot.greenlet.switch()
        g = Greenlet(self._work, fn, args)
        if not self._closed:
            self._all.add(g)
        return g.switch()  # (a gevent Greenlet runs when switched to, as its start() would do a turn later)

    def _unpark(self, fn, args) -> _Slot | None:
        """The most recently parked worker's slot, its idle timer stopped and ``fn(*args)``
        its job; None if no worker is parked."""
        idle = self._idle
        if not idle:
            return None
        slot = idle.pop()
        slot.parked = False
        slot.timer.stop()
        slot.job = (fn, args)
        return slot

    def _resume(self, slot: _Slot) -> None:
        """In the hub: switch to the worker that was handed a job (or hand it on if it died meanwhile)."""
        g = slot.greenlet
        if g.dead:
            fn, args = slot.job
            slot.job = None
            if not self._closed:
                self(fn, *args)
            return
        g.switch()

    def _work(self, fn, args) -> None:
        me = getcurrent()
        slot = _Slot(me)
        busy = self._busy
        fresh = self.fresh_context
        try:
            while True:
                busy.add(me)
                try:
                    if fresh:
                        Context().run(fn, *args)
                    else:
                        fn(*args)
                except Exception:
                    # What a new greenlet's failure would print; this worker goes on serving.
                    self._hub.handle_error(me, *sys.exc_info())
                finally:
                    fn = args = None
                    busy.discard(me)
                    quiet = self._quiet
                    if quiet is not None and not busy:
                        quiet.set()
                job = self._park(slot)
                if job is None:
                    return
                fn, args = job
        finally:
            self._all.discard(me)
            timer, slot.timer = slot.timer, None
            if timer is not None:
                timer.close()

    def _park(self, slot: _Slot):
        """Wait for the next job; None once idle for ``idle_timeout`` seconds, or closed."""
        if self._closed:
            return None
        timer = slot.timer
        if timer is None:
            timer = slot.timer = self._hub.loop.timer(self.idle_timeout)
        slot.parked = True
        self._idle.append(slot)
        timer.start(self._expire, slot)
        try:
            self._hub.switch()
        finally:
            if slot.parked:  # woken by its idle timer or killed, not handed a job
                slot.parked = False
                timer.stop()
                try:
                    self._idle.remove(slot)
                except ValueError:
                    pass
        job, slot.job = slot.job, None
        return job

    def _expire(self, slot: _Slot) -> None:
        """In the hub: a worker parked for ``idle_timeout`` seconds ends."""
        if slot.parked:
            slot.greenlet.switch()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no worker serves a connection; False on timeout."""
        if not self._busy:
            return True
        quiet = self._quiet = Event()
        try:
            return quiet.wait(timeout)
        finally:
            self._quiet = None

    def close(self, block: bool = True) -> None:
        """Serve no more connections; parked workers end now (``block=False``: a turn of the
        event loop later, without waiting; from the hub too)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for slot in idle:
            slot.parked = False
            slot.timer.stop()
        killall([slot.greenlet for slot in idle], block=block, timeout=1.0 if block else None)

    def kill(self, block: bool = True, timeout: float | None = None) -> None:
        """Close, and kill the workers still serving a connection (as gevent's ``Pool.kill``)."""
        self.close()
        killall(list(self._all), block=block, timeout=timeout)
