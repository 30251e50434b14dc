"""The lifecycle every supervisor and server has, and supervisors as processes.

A supervisor is not a greenlet: idle, it is a few small objects.  It still
has the lifecycle a gevent user knows from :class:`gevent.Greenlet`
(``start``, ``stop``, ``kill``, ``join``, ``get``, ``dead``, ``ready``,
``successful``, ``exception``, ``value``, ``rawlink``/``unlink``), and it is
a :class:`~greentree._child.Child`, so a parent supervises it exactly like a
greenlet.
"""

from __future__ import annotations

import contextvars
import os
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from gevent import GreenletExit, get_hub, getcurrent
from gevent.event import Event

from ._child import Child
from ._errors import (
    ArgumentError,
    BlockingCallError,
    GreentreeError,
    NotRunningError,
    StartChildError,
    StartTimeoutError,
)
from ._exits import KILL, ShutdownExit, exit_of
from ._policy import CRASH, Exit, describe_reason
from ._spec import check_seconds

#: The context children start in when whoever started them had no context variable set.  Shared
#: and never run in (a greenlet child gets ``gr_context = None``: greenlet's own fresh, empty
#: context), so a tree started from an empty context makes no Context object per child.
EMPTY_CONTEXT = contextvars.Context()


def context_of_caller() -> contextvars.Context:
    """A copy of the caller's context, or :data:`EMPTY_CONTEXT` if it has no variable set."""
    ctx = contextvars.copy_context()
    return ctx if ctx else EMPTY_CONTEXT

__all__ = ["Lifecycle", "Process", "KILL_GRACE", "NEW", "STARTING", "RUNNING", "STOPPING", "DEAD"]

#: Seconds a child gets to die after greentree's kill before it is reported as a zombie.
KILL_GRACE = 1.0

NEW, STARTING, RUNNING, STOPPING, DEAD = "not started", "starting", "running", "stopping", "dead"


_L = TypeVar("_L", bound="Lifecycle")


class Lifecycle:
    """What supervisors and servers share: ``with``, ``wait_started``, ``stop``.

    Owners provide ``_lc_request_stop()`` (ask for an orderly stop, once),
    ``_lc_escalate(step)`` (step 0: ShutdownExit for servers; step 1: the
    kill), ``_lc_is_started()``, ``_lc_started_event()``, ``_lc_start_failure()``.
    """

    __slots__ = ()

    def _lc_check_caller(self, op: str) -> None:
        cur = getcurrent()
        if cur is get_hub():
            raise BlockingCallError(
                f"{self}.{op}() called from the gevent hub (a rawlink callback or timer): the hub "
                "must never block; spawn a greenlet to make the call"
            )
        if cur is self or getattr(self, "_mb_drainer", None) is cur:
            raise BlockingCallError(
                f"{self}.{op}() called from inside {self} itself (one of its own handlers or a child's "
                "constructor): it would wait for itself forever; spawn a greenlet to make the call"
            )

    def __enter__(self: _L) -> _L:
        if getattr(self, "dead", False):
            raise NotRunningError(f"{self} has already exited; create a new one to use it in a with block")
        if not self.started:  # type: ignore[attr-defined]
            self.start()  # type: ignore[attr-defined]
        try:
            self.wait_started()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, t, v, tb):
        self.stop()
        if t is None:
            failure = self._lc_own_failure()
            if failure is not None:
                raise failure

    def _lc_own_failure(self) -> BaseException | None:
        """The error this object ended with on its own (not by our stop), if any."""
        return None

    def wait_started(self: _L, timeout: float | None = None) -> _L:
        """Wait until started; raise why it failed to start.

        :class:`StartTimeoutError` after ``timeout`` seconds;
        :class:`StartChildError` if a child failed to start;
        :class:`NotRunningError` if it exited before it started.
        """
        timeout = check_seconds(timeout, "timeout", f"{self}.wait_started()", error=ArgumentError)
        if not self.started and not self.dead:  # type: ignore[attr-defined]
            raise NotRunningError(f"{self}.wait_started(): call start() first")
        if not self._lc_is_started() and not self.dead:  # type: ignore[attr-defined]
            self._lc_check_caller("wait_started")
            if not self._lc_started_event().wait(timeout):
                raise StartTimeoutError(f"{self}: not started within {timeout} s")
        if not self._lc_is_started():
            raise self._lc_start_failure()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop in order and wait until it has exited.  Idempotent.

        A supervisor stops its children (in reverse start order, or all at
        once for a dynamic one) and exits; a server handles the messages
        already in its mailbox, runs ``terminate`` and exits.  Past
        ``timeout`` seconds it escalates to greentree's kill (see
        :ref:`the shutdown protocol <shutdown>`).
        """
        timeout = check_seconds(timeout, "timeout", f"{self}.stop()", error=ArgumentError)
        self._lc_check_caller("stop")
        if self.dead:  # type: ignore[attr-defined]
            return
        self._lc_request_stop()
        self.join(timeout)  # type: ignore[attr-defined]
        step = 0
        while not self.dead and step < 2:  # type: ignore[attr-defined]
            self._lc_escalate(step)
            step += 1
            self.join(KILL_GRACE)  # type: ignore[attr-defined]

    # to implement
    def _lc_request_stop(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _lc_escalate(self, step: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def _lc_is_started(self) -> bool:  # pragma: no cover
        raise NotImplementedError

    def _lc_started_event(self) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _lc_start_failure(self) -> BaseException:  # pragma: no cover
        raise NotImplementedError


# Every process started in this OS process, so a fork can make them inert.
_live: weakref.WeakSet[Process] = weakref.WeakSet()
_pid = os.getpid()


class Process(Lifecycle, Child):
    """A supervised process that is not a greenlet: the lifecycle without a stack.

    Subclasses implement ``_pr_begin()`` (called by :meth:`start`) and
    ``_pr_end(exit_request)``; they call :meth:`_pr_finished` once with the
    final exit record.
    """

    _gt_child_type = "supervisor"

    _pr_state = NEW
    _pr_exit: Exit | None = None
    _pr_links: list | None = None
    _pr_done: Event | None = None
    _pr_started: Event | None = None
    _pr_ctx: Any = None
    _pr_stop_requested = False
    _pr_pid = 0
    _pr_rooted = False  # in _live (started as a root)

    # ------------------------------------------------------------ state
    @property
    def started(self) -> bool:
        """True once :meth:`start` was called (as gevent's ``Greenlet.started``)."""
        return self._pr_state is not NEW

    @property
    def dead(self) -> bool:
        """True once it has exited (as gevent's ``Greenlet.dead``)."""
        return self._pr_state is DEAD

    def ready(self) -> bool:
        """True once it has exited."""
        return self._pr_state is DEAD

    def successful(self) -> bool:
        """True if it exited without an error (stopped, or shut down)."""
        e = self._pr_exit
        return e is not None and e.kind != CRASH

    @property
    def exception(self) -> BaseException | None:
        """The error it exited with, or None."""
        e = self._pr_exit
        return e.reason if e is not None and e.kind == CRASH else None

    @property
    def value(self) -> Any:
        """None (a supervisor returns nothing); set once it exited."""
        return None

    @property
    def exit(self) -> Exit | None:
        """How it ended (an exit record with ``kind`` and ``reason``), or None while it runs."""
        return self._pr_exit

    def _lc_is_started(self) -> bool:
        return self._pr_state is RUNNING or (self._pr_state is STOPPING and self._pr_was_running)

    _pr_was_running = False

    def _lc_started_event(self) -> Any:
        ev = self._pr_started
        if ev is None:
            ev = self._pr_started = Event()
            if self._pr_state is not STARTING:
                ev.set()
        return ev

    def _lc_start_failure(self) -> BaseException:
        e = self._pr_exit
        reason = e.reason if e is not None else None
        if isinstance(reason, StartChildError):
            return reason
        err = NotRunningError(f"{self} exited before it started: {describe_reason(reason)}")
        err.__cause__ = reason
        return err

    def _lc_own_failure(self) -> BaseException | None:
        e = self._pr_exit
        if e is not None and e.kind == CRASH and not self._pr_stop_requested:
            return e.reason
        return None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start it (as :meth:`gevent.Greenlet.start`).  The caller's
        :mod:`contextvars` flow into its children."""
        state = self._pr_state
        if state is not NEW:
            if state is DEAD:
                raise NotRunningError(
                    f"{self}.start(): it has already exited ({describe_reason(self.exception)}); "
                    "create a new one"
                )
            return
        if self._pr_ctx is None and self._pr_needs_ctx():
            self._pr_ctx = context_of_caller()
        self._pr_state = STARTING
        self._pr_pid = os.getpid()
        if self._gt_rec is None:
            _live.add(self)  # a root: its subtree goes inert with it after a fork
            self._pr_rooted = True
        self._pr_begin()

    def join(self, timeout: float | None = None) -> None:
        """Wait until it has exited, or ``timeout`` seconds."""
        if self._pr_state is DEAD:
            return
        ev = self._pr_done
        if ev is None:
            ev = self._pr_done = Event()
        ev.wait(timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Wait for the exit; raise its error, or return None (as gevent's ``get``)."""
        if self._pr_state is not DEAD:
            if not block:
                from gevent import Timeout

                raise Timeout()
            self.join(timeout)
            if self._pr_state is not DEAD:
                from gevent import Timeout

                raise Timeout(timeout)
        exc = self.exception
        if exc is not None:
            raise exc
        return None

    def rawlink(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(self)`` from the hub once it has exited (at once if it has)."""
        if not callable(callback):
            raise TypeError(f"{self}.rawlink(): expected a callable, not {callback!r}")
        if self._pr_state is DEAD:
            get_hub().loop.run_callback(callback, self)
            return
        if self._pr_links is None:
            self._pr_links = []
        self._pr_links.append(callback)

    link = rawlink

    def unlink(self, callback: Callable[[Any], None]) -> None:
        """Remove a callback added with :meth:`rawlink` (nothing if it is not there)."""
        links = self._pr_links
        if links:
            try:
                links.remove(callback)
            except ValueError:
                pass

    def kill(self, exception: Any = GreenletExit, block: bool = True, timeout: float | None = None) -> None:
        """Stop it with ``exception`` as the exit reason (as gevent's ``kill``).

        ``GreenletExit`` and :class:`ShutdownExit` stop it in order (a normal
        shutdown); greentree's kill stops its children without waiting; any
        other exception stops it in order and it exits *crashed* with that
        exception, which its own supervisor sees.
        """
        exc = exception() if isinstance(exception, type) else exception
        if not isinstance(exc, BaseException):
            raise TypeError(f"{self}.kill(): expected an exception, not {exception!r}")
        if self._pr_state is DEAD:
            return
        if self._pr_state is NEW:
            self._pr_state = STARTING  # never ran: it ends at once
            self._pr_finished(exit_of(exc))
            return
        if block:
            self._lc_check_caller("kill")  # before anything changes: a call that cannot wait stops nothing
        self._pr_end(exc)
        if block:
            self.join(timeout)

    def _lc_request_stop(self) -> None:
        if self._pr_state is NEW:
            self._pr_stop_requested = True
            self._pr_state = STARTING
            self._pr_finished(exit_of(ShutdownExit()))
            return
        if not self._pr_stop_requested:
            self._pr_stop_requested = True
            self._pr_end(ShutdownExit())

    def _lc_escalate(self, step: int) -> None:
        self._pr_end(KILL())

    def _pr_finished(self, exit: Exit) -> None:
        """Record the exit and tell everyone: parent, hooks, joiners, links."""
        if self._pr_state is DEAD:
            return
        self._pr_was_running = self._lc_is_started()
        self._pr_state = DEAD
        self._pr_exit = exit
        if self._pr_rooted:
            _live.discard(self)
        ev = self._pr_started
        if ev is not None:
            ev.set()
        ev = self._pr_done
        if ev is not None:
            ev.set()
        links = self._pr_links
        if links:
            self._pr_links = None
            loop = get_hub().loop
            for cb in links:
                loop.run_callback(cb, self)
        self._gt_notify_exit(exit)

    def _pr_mark_running(self) -> None:
        self._pr_state = RUNNING
        self._pr_was_running = True
        ev = self._pr_started
        if ev is not None:
            ev.set()

    def _pr_needs_ctx(self) -> bool:
        """Does it start children in the context of whoever started it?"""
        return True

    # to implement
    def _pr_begin(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _pr_end(self, reason: BaseException) -> None:  # pragma: no cover
        raise NotImplementedError

    def _pr_forked(self) -> None:  # pragma: no cover
        raise NotImplementedError


def _after_fork_in_child() -> None:
    """A tree started before ``os.fork()`` must not run twice: in the child
    process every such supervisor becomes inert (its children are killed
    without restarts, every call raises :class:`NotRunningError` naming the fork)."""
    for proc in list(_live):
        try:
            proc._pr_forked()
        except Exception:  # pragma: no cover - never let a fork hook raise
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def forked_error(obj: Any, op: str) -> GreentreeError:
    return NotRunningError(
        f"{obj}.{op}(): this supervisor was started in process {obj._pr_pid} before os.fork(); "
        "its children do not run in this process.  Start trees after the fork (gunicorn: "
        "start them in the post_fork hook or in the app, and do not start them at import time "
        "with preload_app)"
    )
