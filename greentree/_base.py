"""What every supervisor shares: the inbox, calls, starting and stopping children.

One supervisor greenlet owns all of its state.  Everything that changes that
state arrives in one inbox, a deque drained in order: child exits (put there
by the exiting child's own ``finally``, or by the ``rawlink`` backstop from
the hub) and requests from other greenlets (``start_child`` and friends, each
with an ``AsyncResult`` for the reply).  There are no locks and no watcher
greenlets; several exits that arrive together are handled in one wake-up.
"""

from __future__ import annotations

import contextvars
import time
from collections import deque
from typing import Any, NamedTuple

import gevent
from gevent import getcurrent, get_hub
from gevent.event import AsyncResult, Event

from . import _policy
from ._child import Greenlet, _StartAborted, _StartStopContext, backstop
from ._errors import (
    AlreadyRegisteredError, AlreadyStartedError, BlockingCallError, ChildSpecError,
    GreentreeError, NotRunningError, StartChildError,
)
from ._exits import KILL, ShutdownExit, classify
from ._report import report_event
from ._spec import BRUTAL_KILL, ChildSpec, Restart

import logging

__all__ = ["SupervisorBase", "ChildInfo", "ChildCounts", "RUNNING", "STOPPED", "RESTARTING"]

RUNNING = "running"
STOPPED = "stopped"
RESTARTING = "restarting"

#: Seconds a child gets to die after greentree's kill before it is reported as a zombie.
KILL_GRACE = 1.0
#: Inbox items handled back to back before the supervisor yields to the hub.
BATCH = 256


class ChildInfo(NamedTuple):
    """One row of ``which_children()``: ``greenlet`` is None unless the child runs."""

    id: Any
    greenlet: Any
    type: str
    restart: Restart


class ChildCounts(NamedTuple):
    """``count_children()``: ``specs`` known, ``active`` running, and by type."""

    specs: int
    active: int
    supervisors: int
    workers: int


class _Rec:
    """A supervisor's record of one child (one per child: keep it small)."""

    __slots__ = ("sup", "id", "spec", "greenlet", "state", "restarts", "started_at", "ctx", "last_exit")

    def __init__(self, sup, id, spec, ctx):
        self.sup = sup
        self.id = id
        self.spec = spec
        self.greenlet = None
        self.state = STOPPED
        self.restarts = 0
        self.started_at = None
        self.ctx = ctx
        self.last_exit = None


def _exit_reason(g) -> BaseException | None:
    exc = g._gt_exc
    if exc is not None:
        return exc
    exc = gevent.Greenlet.exception.__get__(g)
    if exc is not None:
        return exc
    value = g.value
    return value if isinstance(value, BaseException) else None


def _describe_reason(exc: BaseException | None) -> str:
    if exc is None:
        return "normal"
    if isinstance(exc, ShutdownExit):
        return "shutdown"
    if isinstance(exc, gevent.GreenletExit):
        return "killed (GreenletExit)"
    if isinstance(exc, KILL):
        return "killed (after its shutdown timeout)"
    return f"{type(exc).__name__}: {exc}"


def _check_flags(owner, max_restarts, max_seconds):
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ChildSpecError(f"{owner}: max_restarts must be an int >= 0, not {max_restarts!r}")
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not max_seconds > 0:
        raise ChildSpecError(f"{owner}: max_seconds must be a number > 0, not {max_seconds!r}")


class SupervisorBase(_StartStopContext, Greenlet):
    """Machinery shared by :class:`Supervisor` and :class:`DynamicSupervisor`."""

    handshake = True
    _gt_catch = True
    _kind = "supervisor"

    def __init__(self, *, max_restarts: int = 3, max_seconds: float = 5.0, name: Any = None, clock=None):
        label = f"{type(self).__name__}({name!r})" if name is not None else type(self).__name__
        _check_flags(label, max_restarts, max_seconds)
        if clock is not None and not callable(clock):
            raise ChildSpecError(f"{label}: clock must be a callable returning seconds, not {clock!r}")
        Greenlet.__init__(self)
        self.name = name
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self._clock = clock or time.monotonic
        self._intensity = _policy.Intensity(max_restarts, float(max_seconds))
        self._inbox: deque = deque()
        self._wakeup = Event()
        self._ready = Event()       # set once started, or once dead
        self._is_started = False
        self._stopping = False
        self._stop_sent = False     # stop() already asked it to stop
        self._kill_sent = False     # kill() threw an Exception (not a GreenletExit) in
        self._busy = 0              # >0 while the supervisor blocks inside an operation
        self._zombies = 0
        self._exit_reason = None

    # ------------------------------------------------------------------ naming
    def __str__(self) -> str:
        if self.name is not None:
            return f"{type(self).__name__} {self.name!r}"
        return f"{type(self).__name__} at {id(self):#x}"

    def __repr__(self) -> str:
        state = "running" if self._is_started and not self.dead else ("dead" if self.dead else "not started")
        return f"<{self} ({state})>"

    # ------------------------------------------------------------ the inbox
    def _post(self, item) -> None:
        self._inbox.append(item)
        self._wakeup.set()

    #: Whether an exit may be handled in the exiting child's greenlet (see _child_exited).
    _fast_exits = False

    def _child_exited(self, g) -> None:
        """An exit record arrives (in the exiting child's greenlet, or in the hub).

        Never blocks.  The usual path appends to the inbox.  The fast path
        handles the exit right here when nothing can be reordered by doing
        so: the supervisor is idle (inbox empty, not inside an operation, not
        stopping), and handling the exit cannot block (a one_for_one restart
        of a child without a start handshake).  gevent never preempts, so
        this is as atomic as running in the supervisor greenlet, and it saves
        the hop into the supervisor (an Event wake-up and two switches), the
        largest part of the restart latency.  Whatever it raises (giving up,
        auto-shutdown) is handed to the supervisor greenlet to raise there.
        """
        if (
            self._fast_exits
            and not self._inbox
            and self._busy == 0
            and self._is_started
            and not self._stopping
        ):
            rec = g._gt_rec
            if rec is not None and rec.greenlet is g and not rec.spec.handshake and getcurrent() is not self:
                self._busy += 1
                try:
                    self._on_exit(g)
                except BaseException as e:
                    self._post(("raise", (e,), None))
                finally:
                    self._busy -= 1
                return
        self._inbox.append(g)
        self._wakeup.set()

    def _do_raise(self, exc: BaseException):
        raise exc

    def _check_caller(self, op: str) -> None:
        cur = getcurrent()
        if cur is self:
            raise BlockingCallError(
                f"{self}.{op}() called from the supervisor's own greenlet (for example in a child "
                "Greenlet's __init__, which runs in the supervisor): it would wait for itself forever; "
                "call it from another greenlet or spawn one to do it"
            )
        if cur is get_hub():
            raise BlockingCallError(
                f"{self}.{op}() called from the gevent hub (a rawlink callback or timer): the hub "
                "must never block; spawn a greenlet to make the call"
            )

    def _check_running(self, op: str) -> None:
        if self.dead:
            reason = _describe_reason(self._exit_reason) if self._is_started else "it never ran"
            raise NotRunningError(f"{self}.{op}(): the supervisor is not running (it exited: {reason})")
        if not self.started:
            raise NotRunningError(f"{self}.{op}(): the supervisor is not running; call start() first")
        if self._stopping:
            raise NotRunningError(f"{self}.{op}(): the supervisor is shutting down")

    def _call(self, op: str, *args, timeout: float | None = None):
        """Run ``self._do_<op>(*args)`` in the supervisor greenlet and return its result."""
        self._check_caller(op)
        self._check_running(op)
        ar = AsyncResult()
        self._post((op, args, ar))
        try:
            return ar.get(timeout=timeout)
        except gevent.Timeout:
            raise TimeoutError(f"{self}.{op}(): no answer within {timeout} s") from None

    def _handle(self, item) -> None:
        if type(item) is tuple:
            op, args, ar = item
            try:
                result = getattr(self, "_do_" + op)(*args)
            except GreentreeError as e:
                if ar is None:
                    raise
                ar.set_exception(e)
            except Exception as e:  # a bug in a request must reach its caller, not kill the tree
                if ar is None:
                    raise
                if self._kill_sent:
                    # Not a bug in the request: kill(SomeError) was thrown
                    # into the supervisor while it blocked inside it.
                    ar.set_exception(NotRunningError(f"{self} was killed before it finished {op}()"))
                    raise
                ar.set_exception(e)
            except BaseException:
                # The supervisor was stopped or killed in the middle of this
                # request: the request has left the inbox, so _fail_pending
                # cannot see it; answer it here or its caller waits forever.
                if ar is not None:
                    ar.set_exception(NotRunningError(f"{self} was stopped before it finished {op}()"))
                raise
            else:
                if ar is not None:
                    ar.set(result)
        else:
            self._on_exit(item)

    # ------------------------------------------------------------ lifecycle
    def _run(self):
        try:
            self._init_children()
            self._is_started = True
            self._ready.set()
            from ._child import started

            started()
            self._loop()
        except BaseException as e:
            self._exit_reason = e
            raise
        finally:
            self._stopping = True
            try:
                self._shutdown()
            except BaseException:
                # Interrupted (killed again while stopping): no child may outlive
                # us, so kill the rest without waiting and let the error go on.
                self._kill_everything_now()
                raise
            finally:
                self._fail_pending()
                self._ready.set()

    def _loop(self):
        inbox = self._inbox
        wakeup = self._wakeup
        while True:
            if not inbox:
                wakeup.clear()
                wakeup.wait()
            n = 0
            while inbox:
                self._handle(inbox.popleft())
                n += 1
                if n >= BATCH:
                    n = 0
                    gevent.sleep(0)  # a burst of exits must not starve the rest of the process

    def _fail_pending(self):
        reason = _describe_reason(self._exit_reason)
        while self._inbox:
            item = self._inbox.popleft()
            if type(item) is tuple and item[2] is not None:
                item[2].set_exception(NotRunningError(f"{self} exited ({reason}) before answering {item[0]}()"))

    # -- to implement: _init_children, _shutdown, _kill_everything_now, _on_exit

    # ------------------------------------------------------------ public API
    def start(self) -> None:
        """Schedule the supervisor to start (as :meth:`gevent.Greenlet.start`).

        The caller's :mod:`contextvars` flow into the supervisor and so into
        its static children (a parent supervisor sets them itself).
        """
        if not self.started and not self.dead and self.gr_context is None:
            self.gr_context = contextvars.copy_context()
        Greenlet.start(self)

    def kill(self, exception=gevent.GreenletExit, block=True, timeout=None):
        """Kill the supervisor (as :meth:`gevent.Greenlet.kill`); it still stops its children."""
        exc_type = exception if isinstance(exception, type) else type(exception)
        if not self.dead and issubclass(exc_type, Exception):
            # Lets _handle tell an error thrown in by kill() from a bug in a request.
            self._kill_sent = True
        return Greenlet.kill(self, exception, block, timeout)

    def wait_started(self, timeout: float | None = None) -> "SupervisorBase":
        """Wait until every initial child is started; raise :class:`StartChildError` if one failed."""
        if not self.started and not self.dead:
            raise NotRunningError(f"{self}.wait_started(): call start() first")
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self}: not started within {timeout} s")
        if not self._is_started:
            exc = self._exit_reason or self.exception
            if isinstance(exc, StartChildError):
                raise exc
            raise NotRunningError(f"{self} exited before it started: {_describe_reason(exc)}") from exc
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the supervisor: its children stop (in reverse start order for a
        static supervisor, concurrently for a dynamic one), then it exits.

        Idempotent.  With ``timeout``, escalate to greentree's kill once it
        passes (the supervisor then kills its children without waiting).
        """
        self._check_caller("stop")
        if self.dead:
            return
        if not self._stopping and not self._stop_sent:
            # Once it is stopping, another ShutdownExit would interrupt the
            # orderly shutdown in progress: stop() must stay idempotent.
            self._stop_sent = True
            self.kill(ShutdownExit, block=False)
        self.join(timeout)
        if not self.dead:
            self.kill(KILL, block=False)
            self.join(KILL_GRACE)


    # ------------------------------------------------------------ children
    def _new_rec(self, spec: ChildSpec, ctx=None) -> _Rec:
        return _Rec(self, spec.id, spec, ctx if ctx is not None else contextvars.copy_context())

    def _child_args(self, spec: ChildSpec) -> tuple:
        return spec.args

    def _start_rec(self, rec: _Rec):
        """Start ``rec``'s child; return the greenlet or raise StartChildError."""
        spec = rec.spec
        args = self._child_args(spec)
        start = spec.start
        try:
            if isinstance(start, type) and issubclass(start, Greenlet):
                g = start(*args, **spec.kwargs)
            else:
                g = Greenlet(start, *args, **spec.kwargs)
        except Exception as e:
            raise StartChildError(
                f"{self}: child {spec.id!r} failed to start: {type(e).__name__}: {e}", spec.id, e
            ) from e
        g._gt_rec = rec
        # Every run gets its own copy: child code that sets a ContextVar must
        # not change what its restarts start with.
        g.gr_context = rec.ctx.copy()
        if spec.name is not None:
            try:
                spec.name.bind(g)
            except AlreadyRegisteredError as e:
                raise AlreadyStartedError(
                    f"{self}: child {spec.id!r} not started: its name {spec.name!r} is held by {e.owner!r}",
                    e.owner, spec.id,
                ) from e
        g.rawlink(backstop)
        hs = None
        if spec.handshake:
            hs = g._gt_handshake = AsyncResult()
        g.start()
        rec.greenlet = g
        rec.state = RUNNING
        rec.started_at = self._clock()
        if hs is not None:
            self._busy += 1
            try:
                hs.get(timeout=spec.start_timeout)
            except _StartAborted:
                rec.greenlet = None
                rec.state = STOPPED
                reason = _exit_reason(g)
                raise StartChildError(
                    f"{self}: child {spec.id!r} exited before it called started(): {_describe_reason(reason)}",
                    spec.id, reason,
                ) from reason
            except gevent.Timeout:
                self._stop_greenlets([rec], brutal=True)
                rec.state = STOPPED
                raise StartChildError(
                    f"{self}: child {spec.id!r} did not call started() within its "
                    f"start_timeout of {spec.start_timeout} s; it was killed",
                    spec.id, TimeoutError(spec.start_timeout),
                ) from None
            finally:
                self._busy -= 1
        return g

    # ------------------------------------------------------------ stopping
    def _await_exits(self, pending: dict, deadline: float | None) -> None:
        """Wait until the greenlets in ``pending`` (greenlet -> rec) exit or ``deadline``.

        Exits of those greenlets are consumed; every other inbox item is put
        back, in order, for the main loop.
        """
        inbox = self._inbox
        deferred = []
        try:
            while pending:
                while inbox:
                    item = inbox.popleft()
                    if type(item) is not tuple and item in pending:
                        del pending[item]
                    else:
                        deferred.append(item)
                if not pending:
                    break
                if deadline is None:
                    timeout = None
                else:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                self._wakeup.clear()
                self._wakeup.wait(timeout)
        finally:
            inbox.extendleft(reversed(deferred))

    def _stop_greenlets(self, recs, brutal: bool = False) -> None:
        """The shutdown protocol for ``recs``, concurrently, under each child's own deadline.

        ShutdownExit; wait ``spec.shutdown``; greentree's kill; wait a grace;
        then report zombies and go on.  The exits are expected: they never
        count as crashes.
        """
        self._busy += 1
        pending = {}
        try:
            now = time.monotonic()
            by_deadline: dict = {}
            for rec in recs:
                g = rec.greenlet
                rec.greenlet = None  # from now on its exit record is stale
                if rec.state == RUNNING:
                    rec.state = STOPPED
                if g is None or g._gt_done:
                    continue
                shutdown = rec.spec.shutdown if rec.spec is not None else 5.0
                if brutal or shutdown is BRUTAL_KILL:
                    g.kill(KILL if g.gr_frame is not None else ShutdownExit, block=False)
                    deadline = now + KILL_GRACE
                    escalate = False
                else:
                    g.kill(ShutdownExit, block=False)
                    deadline = None if shutdown is None else now + shutdown
                    escalate = True
                pending[g] = rec
                by_deadline.setdefault((deadline, escalate), []).append(g)
            if not pending:
                return
            # Deadlines in order; None (wait forever) last.
            for (deadline, escalate), gs in sorted(
                by_deadline.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0.0)
            ):
                self._await_exits(pending, deadline)
                late = [g for g in gs if g in pending]
                if not late:
                    continue
                if escalate:
                    for g in late:
                        g.kill(KILL, block=False)
                    self._await_exits(pending, time.monotonic() + KILL_GRACE)
                for g in late:
                    if g in pending:
                        del pending[g]
                        self._zombie(g)
        except BaseException:
            # The supervisor itself is being stopped or killed while it waits:
            # give the children still stopping back to their records, so its
            # own shutdown (or _kill_everything_now) deals with them too.  No
            # child may outlive its supervisor.
            for g, rec in pending.items():
                if rec.greenlet is None and not g.dead:
                    rec.greenlet = g
                    rec.state = RUNNING
                    self._readopt(rec)
            raise
        finally:
            self._busy -= 1

    def _readopt(self, rec: _Rec) -> None:
        """Put back a child whose stop was interrupted (see _stop_greenlets)."""

    def _zombie(self, g) -> None:
        self._zombies += 1
        rec = g._gt_rec
        report_event(
            logging.WARNING,
            "%s: child %r ignored ShutdownExit and greentree's kill; leaving it as a zombie",
            self, rec.id if rec is not None else None,
            supervisor=str(self), child=rec.id if rec is not None else None,
        )

    # ------------------------------------------------------------ exits
    def _restart_budget(self, rec: _Rec, reason) -> None:
        """Count one restart event; give up if the intensity is exceeded."""
        if self._intensity.add(self._clock()):
            msg = (
                f"{self}: more than {self.max_restarts} restarts within {self.max_seconds:g} s "
                f"(last: child {rec.id!r}, {_describe_reason(reason)}); gave up and stopped all children"
            )
            report_event(logging.ERROR, "%s", msg, supervisor=str(self), child=rec.id)
            raise RestartIntensityExceeded(msg)

    def _schedule_retry(self, rec: _Rec) -> None:
        """Retry a failed restart through the inbox, after a trip round the hub.

        gevent never preempts: retrying in a loop here would freeze the whole
        process; going through the hub lets timers, sockets and calls in.
        """
        rec.state = RESTARTING
        get_hub().loop.run_callback(self._post, ("retry", (rec,), None))

    # ------------------------------------------------------------ snapshots
    def _describe_rec(self, rec: _Rec, now: float) -> dict:
        g = rec.greenlet
        d = {
            "id": rec.id if isinstance(rec.id, (str, int, float, bool, type(None))) else repr(rec.id),
            "state": rec.state,
            "type": rec.spec.type,
            "restart": rec.spec.restart.value,
            "restarts": rec.restarts,
            "last_exit": rec.last_exit if isinstance(rec.last_exit, (str, type(None))) else _describe_reason(rec.last_exit),
            "uptime": (now - rec.started_at) if (g is not None and rec.started_at is not None) else None,
        }
        if isinstance(g, SupervisorBase):
            d["tree"] = g.describe()
        return d

    def _describe_common(self) -> dict:
        now = self._clock()
        if self.dead:
            state = "dead"
        elif self._stopping:
            state = "stopping"
        elif self._is_started:
            state = "running"
        else:
            state = "starting" if self.started else "not started"
        return {
            "name": self.name if isinstance(self.name, (str, int, type(None))) else repr(self.name),
            "kind": self._kind,
            "state": state,
            "intensity": {
                "max_restarts": self.max_restarts,
                "max_seconds": self.max_seconds,
                "recent_restarts": self._intensity.count(now),
            },
            "zombies": self._zombies,
            "exit": None if not self.dead else _describe_reason(self._exit_reason),
        }


from ._errors import RestartIntensityExceeded  # noqa: E402  (kept near its use above)
