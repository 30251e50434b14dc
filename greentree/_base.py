"""What both supervisors share: a process with a serial mailbox, restart
intensity, calls, the exit path, termination and snapshots.

Every change to a supervisor's state is an event in its mailbox (``_mailbox``):
a child's exit, a request (``start_child`` and friends), a retry of a failed
restart, a stop.  Events are typed objects; an exit carries the child's
immutable exit record.  Handlers return decisions (give up, shut down) as
values; nothing private is raised through user code.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from math import inf as _INF
from typing import Any, NamedTuple

from gevent import get_hub, getcurrent

from . import _mailbox, _policy, _process, _telemetry
from ._children import RESTARTING, RUNNING, STOPPED, Rec, StopDuringStart, run_steps, stop_recs, yet_to_run
from ._errors import (
    ArgumentError,
    BlockingCallError,
    CallTimeoutError,
    ChildSpecError,
    GreentreeError,
    NotRunningError,
    RestartIntensityExceeded,
    StartChildError,
)
from ._exits import KILL, exit_of
from ._mailbox import Mailbox, Reply
from ._policy import CRASH, Exit, describe_reason
from ._process import DEAD, NEW, STARTING, STOPPING, Process, context_of_caller, forked_error
from ._process import RUNNING as P_RUNNING
from ._report import report_event
from ._spec import check_seconds

_T_EXIT = _telemetry.slot(_telemetry.CHILD_EXIT)  # non-empty only while a handler listens
_T_RESTART = _telemetry.slot(_telemetry.SUPERVISOR_RESTART)

__all__ = ["SupervisorBase", "ChildInfo", "ChildCounts", "RUNNING", "STOPPED", "RESTARTING", "RECENT_EXITS"]

#: How many recent exits each supervisor keeps for ``describe()`` (a ring: O(1) per exit).
RECENT_EXITS = 20


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One row of ``which_children()``: a frozen record, not a tuple.

    ``child`` is the running child (a greenlet or a supervisor), or None
    unless ``state`` is ``"running"``; ``state`` is ``"running"``,
    ``"restarting"`` (a failed restart is being retried) or ``"stopped"``.
    """

    id: Any
    child: Any
    type: str
    restart: _policy.Restart
    state: str


class ChildCounts(NamedTuple):
    """``count_children()``: ``specs`` known, ``active`` running, and by type."""

    specs: int
    active: int
    supervisors: int
    workers: int


# ------------------------------------------------------------------ events
class _Init:
    __slots__ = ()


INIT = _Init()


class _ChildExit:
    __slots__ = ("child", "exit", "now", "rec", "action")

    def __init__(self, child, exit: Exit):
        self.child = child
        self.exit = exit
        self.now: float | None = None  # read by _exit_may_block, reused by the handler
        self.rec: Any = None           # found by _exit_may_block, reused by the handler
        self.action: str | None = None  # the exit table's answer for rec, from _exit_may_block


_new_object = object.__new__


class _Request:
    __slots__ = ("op", "fn", "args", "reply", "may_block")

    def __init__(self, op: str, fn: Callable, args: tuple, reply: Reply, may_block: bool):
        self.op = op
        self.fn = fn
        self.args = args
        self.reply = reply
        self.may_block = may_block


class _Retry:
    __slots__ = ("rec",)

    def __init__(self, rec: Rec):
        self.rec = rec


class _Stop:
    __slots__ = ("reason",)

    def __init__(self, reason: BaseException):
        self.reason = reason


class _StopTimer:
    __slots__ = ()


#: A stopping supervisor's deadline timer fired (posted from the hub).
DEADLINE = _StopTimer()


class _Escalate:
    __slots__ = ()


#: greentree's kill reached a supervisor that is stopping by events.
ESCALATE = _Escalate()


class _Stopping:
    """A supervisor stopping by events: where its shutdown is, and what it waits for.

    ``steps`` is the shutdown (``_shutdown_steps()``), paused at a wait:
    ``pending`` (child -> record) must empty, or ``deadline`` pass.  The
    children's exit events and a timer on the deadline resume it, one event
    at a time in the mailbox's order, like any other event.
    """

    __slots__ = ("steps", "exit", "pending", "deadline", "brutal_seen", "timer")

    def __init__(self, steps: Any, exit: Exit):
        self.steps = steps
        self.exit = exit
        self.pending: Any = None
        self.deadline: float | None = None
        self.brutal_seen = False
        self.timer: Any = None


def _check_flags(owner: Any, max_restarts: Any, max_seconds: Any) -> None:
    """Refuse invalid intensity flags; ``owner()`` names the supervisor (only for a message)."""
    if (
        max_restarts.__class__ is int and max_restarts >= 0
        and max_seconds.__class__ in (int, float) and 0 < max_seconds < _INF
    ):
        return  # plainly valid: nothing to format
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ChildSpecError(f"{owner()}: max_restarts must be an int >= 0, not {max_restarts!r}")
    check_seconds(max_seconds, "max_seconds", owner(), allow_none=False, allow_zero=False)


class SupervisorBase(Process, Mailbox):
    """Machinery shared by :class:`Supervisor` and :class:`DynamicSupervisor`."""

    handshake = True
    _kind = "supervisor"
    _pr_brutal = False
    _pr_awaiting: Any = None  # the start handshake being waited for, if any
    _zombies = 0
    _forked = False
    #: Stop by events: the shutdown is a state of the supervisor that its
    #: children's exits and a deadline timer advance, so no greenlet waits
    #: for them.  False: the shutdown waits for them in a greenlet spawned for
    #: it (a subclass that overrides ``_shutdown`` itself, and tests that
    #: compare both ways).
    _stop_by_events = True
    _stopping: _Stopping | None = None  # the shutdown in progress, while stopping by events

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "_shutdown" in cls.__dict__ and "_shutdown_steps" not in cls.__dict__:
            cls._stop_by_events = False  # its own _shutdown waits in place: keep it

    def __init__(self, *, max_restarts: int = 3, max_seconds: float = 5.0, name: Any = None,
                 clock: Callable[[], float] | None = None):
        def label() -> str:
            return f"{type(self).__name__}({name!r})" if name is not None else type(self).__name__

        _check_flags(label, max_restarts, max_seconds)
        if clock is not None and not callable(clock):
            raise ChildSpecError(f"{label()}: clock must be a callable returning seconds, not {clock!r}")
        self.name = name
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self._clock = clock or time.monotonic

    #: The restart window (made at the first restart: an idle supervisor carries none).
    _intensity: _policy.Intensity | None = None

    #: Recent exits for describe(): (clock time, child id, Exit), newest last,
    #: in a deque(maxlen=RECENT_EXITS) made at the first exit (an idle
    #: supervisor carries none).
    _exits: deque | None = None

    # ------------------------------------------------------------------ naming
    def __str__(self) -> str:
        if self.name is not None:
            return f"{type(self).__name__} {self.name!r}"
        return f"{type(self).__name__} at {id(self):#x}"

    def __repr__(self) -> str:
        return f"<{self} ({self._pr_state})>"

    # ------------------------------------------------------------ lifecycle
    def _pr_begin(self) -> None:
        self._mb_post(INIT)

    def _pr_end(self, reason: BaseException) -> None:
        if isinstance(reason, KILL):
            # Escalation: whatever is stopping now stops its children without waiting.
            self._pr_brutal = True
            wake = self._mb_wake
            if wake is not None:
                wake.set()
            if self._pr_state is STOPPING:
                if self._stopping is not None:
                    self._mb_post(ESCALATE, front=True)
                return
        if self._pr_state is DEAD:
            return
        hs = self._pr_awaiting
        if hs is not None:
            # Blocked on a child's start handshake: stop waiting for it.
            hs.set_exception(StopDuringStart(reason))
        # A stop overtakes queued requests (they are answered NotRunningError);
        # the event being handled now finishes first.
        self._mb_post(_Stop(reason), front=True)

    def _pr_forked(self) -> None:
        """In a forked child process: go inert (see ``_process._after_fork_in_child``)."""
        self._forked = True
        self._pr_state = DEAD  # every call now fails, naming the fork
        st, self._stopping = self._stopping, None
        if st is not None and st.timer is not None:
            st.timer.close()
        self._mb_q = None
        self._mb_drainer = None
        self._mb_wake = None
        for rec in self._recs():
            child = rec.child
            rec.child = None
            rec.state = STOPPED
            if child is not None and not child.dead:
                if isinstance(child, SupervisorBase):
                    child._pr_forked()
                else:
                    child._gt_rec = None
                    child.kill(KILL, block=False)

    # ------------------------------------------------------------ the mailbox
    def _mb_may_block(self, event: Any) -> bool:
        if self._stopping is not None:
            return False  # stopping by events: every event only advances the shutdown
        t = type(event)
        if t is _ChildExit:
            return self._exit_may_block(event)
        if t is _Request:
            return event.may_block
        if t is _Stop:
            if self._stop_by_events:
                return self._has_children_yet_to_run()
            return self._has_live_children()
        if event is INIT:
            return self._init_may_block()
        return True  # retries: rare, and they may start anything

    def _mb_handle(self, event: Any) -> None:
        t = type(event)
        if self._pr_state is DEAD:
            if t is _Request:
                event.reply.set_exception(self._not_running(event.op))
            return
        st = self._stopping
        if st is not None:
            self._stopping_handle(st, event)
            return
        if t is _ChildExit:
            decision = self._on_exit(event)
            if decision is not None:
                self._terminate(decision)
        elif t is _Request:
            reply = event.reply
            try:
                reply.set(event.fn(*event.args))
            except StopDuringStart as e:
                reply.set_exception(NotRunningError(
                    f"{self} was stopped ({describe_reason(e.reason)}) before it finished {event.op}()"
                ))
            except GreentreeError as e:
                reply.set_exception(e)
            except Exception as e:  # a bug in a request must reach its caller, not kill the tree
                reply.set_exception(e)
            except BaseException as e:  # the greenlet running it is being killed from outside
                reply.set_exception(NotRunningError(f"{self} was interrupted before it finished {event.op}()"))
                raise e
        elif t is _Retry:
            decision = self._do_retry(event.rec)
            if decision is not None:
                self._terminate(decision)
        elif t is _Stop:
            if self._pr_state is not STOPPING:
                self._terminate(exit_of(event.reason), requested=True)
        elif event is INIT:
            try:
                self._init_children()
            except StartChildError as e:
                _telemetry.start_failure(self, e.child_id, e, "init")
                self._terminate(Exit(CRASH, e))
                return
            except StopDuringStart as e:
                self._terminate(exit_of(e.reason), requested=True)
                return
            self._pr_mark_running()
            self._gt_signal_started(None)

    def _child_exited(self, child: Any, exit: Exit) -> None:
        """An exit record arrives, in the exiting child's greenlet or the hub.  Never blocks."""
        if self._pr_state is DEAD or self._forked:
            return
        if _T_EXIT:
            _telemetry.child_exit(self, child, exit)
        # _ChildExit(child, exit), without a Python-level __init__ call.
        event = _new_object(_ChildExit)
        event.child = child
        event.exit = exit
        event.now = event.rec = event.action = None
        if self._mb_drainer is None and not self._mb_q and not self._mb_force_worker and self._stopping is None:
            cur = getcurrent()
            if cur is not get_hub() and _mailbox.nested < _mailbox.NESTED_MAX and not self._exit_may_block(event):
                # The mailbox's inline drain (see _mailbox._mb_post), for the
                # one event every restart starts with, without its dispatch.
                self._mb_drainer = cur
                _mailbox.nested += 1
                try:
                    decision = self._on_exit(event)
                    if decision is not None:  # pragma: no cover - _exit_may_block predicts every decision
                        self._terminate(decision)
                finally:
                    _mailbox.nested -= 1
                    if self._mb_q:
                        self._mb_drain_borrowed(cur)
                    else:
                        self._mb_drainer = None
                return
        self._mb_post(event)

    def _terminate(self, exit: Exit, requested: bool = False) -> None:
        """Stop every child, answer what is queued, and exit with ``exit``.

        Stopping by events (the default), this starts the shutdown and
        returns at its first wait for a child's exit: the supervisor is then
        ``stopping``, and the exit events it waits for (and a timer on the
        shutdown deadline, for the kill escalation) carry the shutdown on,
        in whichever greenlet delivers them, until it finishes.  Otherwise it
        waits in place, in the greenlet running this handler.
        """
        self._pr_state = STOPPING
        if self._stop_by_events:
            st = self._stopping = _Stopping(self._shutdown_steps(), exit)
            self._stopping_advance(st)
            return
        try:
            self._shutdown()
        except BaseException:
            self._kill_everything_now()
            raise
        finally:
            self._stopped(exit)

    def _stopped(self, exit: Exit) -> None:
        """The children are stopped: answer what is queued, and exit with ``exit``."""
        q = self._mb_q
        while q:
            event = q.popleft()
            if type(event) is _Request:
                event.reply.set_exception(
                    NotRunningError(f"{self} exited ({exit.describe()}) before answering {event.op}()")
                )
        self._pr_finished(exit)
        # Its records stay for snapshots, but no longer point back at it: without the
        # cycle (supervisor -> record -> supervisor) a finished tree is freed by
        # reference counting, not left to the cyclic GC.  A child that outlived it
        # (a zombie) finds no parent to notify.
        for rec in self._recs():
            rec.sup = None

    # ------------------------------------------------------------ stopping by events
    def _stopping_advance(self, st: _Stopping) -> None:
        """Run the shutdown on from where it waits, until it waits for an exit
        that has not arrived (then arm the deadline timer and go idle) or ends."""
        try:
            while True:
                pending = st.pending
                if pending is not None:
                    if pending:
                        q = self._mb_q
                        if q:
                            self._consume_exits(pending, q)  # as _await_exits would, first
                    if pending:
                        deadline = st.deadline
                        if self._pr_brutal and not st.brutal_seen:
                            # greentree's kill arrived while it waited: kill what is left now.
                            st.brutal_seen = True
                            for c in pending:
                                c.kill(KILL, block=False)
                            grace = time.monotonic() + _process.KILL_GRACE
                            deadline = st.deadline = grace if deadline is None else min(deadline, grace)
                            if self._mb_q:
                                continue  # a kill may have ended one at once
                        if deadline is None:
                            return  # its exit events resume it
                        left = deadline - time.monotonic()
                        if left > 0:
                            timer = st.timer
                            if timer is not None:
                                timer.close()
                            timer = st.timer = get_hub().loop.timer(left)
                            timer.start(self._mb_post, DEADLINE)
                            return
                    timer = st.timer
                    if timer is not None:
                        st.timer = None
                        timer.close()
                try:
                    st.pending, st.deadline = st.steps.send(None)
                except StopIteration:
                    break
                st.brutal_seen = self._pr_brutal
        except BaseException:
            self._stopping = None
            if st.timer is not None:
                st.timer.close()
            try:
                self._kill_everything_now()
            finally:
                self._stopped(st.exit)
            raise
        self._stopping = None
        self._stopped(st.exit)

    def _stopping_handle(self, st: _Stopping, event: Any) -> None:
        """One event while stopping by events: nothing but the shutdown changes now."""
        t = type(event)
        if t is _ChildExit:
            pending = st.pending
            if pending and event.child in pending:
                del pending[event.child]
                if not pending:
                    self._stopping_advance(st)
            # Any other exit is stale (a child already stopped) or of a child the
            # shutdown has yet to reach, which then finds it ended: nothing restarts.
        elif event is DEADLINE or event is ESCALATE:
            self._stopping_advance(st)
        elif t is _Request:
            event.reply.set_exception(
                NotRunningError(f"{self} exited ({st.exit.describe()}) before answering {event.op}()")
            )
        # A retry or another stop: the shutdown already covers it.

    @staticmethod
    def _consume_exits(pending: dict, q: deque) -> None:
        """Take the queued exits of ``pending`` children out of ``q`` (in place: a
        draining greenlet holds it); every other event keeps its place."""
        if len(q) == 1:
            e = q[0]
            if type(e) is _ChildExit and e.child in pending:
                del pending[e.child]
                q.clear()
            return
        rest = [e for e in q if not (type(e) is _ChildExit and e.child in pending)]
        if len(rest) != len(q):
            for e in q:
                if type(e) is _ChildExit and e.child in pending:
                    del pending[e.child]
            q.clear()
            q.extend(rest)

    def _kill_everything_now(self) -> None:
        for rec in self._recs():
            child = rec.child
            if child is not None and not child.dead:
                child.kill(KILL, block=False)

    def _not_running(self, op: str) -> NotRunningError:
        if self._forked:
            return forked_error(self, op)  # type: ignore[return-value]
        state = self._pr_state
        if state is DEAD:
            reason = self._pr_exit.describe() if self._pr_exit is not None else "never started"
            return NotRunningError(f"{self}.{op}(): the supervisor is not running (it exited: {reason})")
        if state is NEW:
            return NotRunningError(f"{self}.{op}(): the supervisor is not running; call start() first")
        return NotRunningError(f"{self}.{op}(): the supervisor is shutting down")

    # ------------------------------------------------------------ calls
    def _start_child_call(self, spec: Any, timeout: Any) -> Any:
        """``start_child``'s request: ``self._do_start_child(spec, context)`` as the next event.

        When the supervisor runs, is idle, and the start cannot yield (no
        handshake, a constructor and name binder that never yield), the
        caller's greenlet runs it, as :meth:`_call` does for an idle supervisor,
        without its checks and keyword arguments: the per-child hot path.
        ``_mb_force_worker`` turns it off (the tests compare both paths).
        """
        do_start = self._do_start_child  # type: ignore[attr-defined]  # (each subclass has its own)
        if (
            timeout is None and not spec._may_block and self._pr_state is P_RUNNING
            and self._mb_drainer is None and not self._mb_q and not self._mb_force_worker
        ):
            cur = getcurrent()
            if cur is not get_hub():
                self._mb_drainer = cur
                try:
                    return do_start(spec, context_of_caller())
                finally:
                    if self._mb_q:
                        self._mb_drain_borrowed(cur)
                    else:
                        self._mb_drainer = None
        return self._call("start_child", do_start, (spec, context_of_caller()),
                          may_block=spec._may_block, timeout=timeout)

    def _call(self, op: str, fn: Callable, args: tuple, *, may_block: bool, timeout: Any) -> Any:
        """Run ``fn(*args)`` as the next event in the mailbox and return its result."""
        if timeout is not None and (type(timeout) is not float or not 0.0 <= timeout < _INF):
            # (Checked only when it is not plainly valid: formatting the name costs more than the call.)
            timeout = check_seconds(timeout, "timeout", f"{self}.{op}()", error=ArgumentError)
        state = self._pr_state
        if state is not P_RUNNING and state is not STARTING or self._forked:
            raise self._not_running(op)
        if not may_block:
            cur = self._mb_idle_here()
            if cur is not None:
                # Idle and nothing queued: run it here as the next event (it
                # cannot yield), exactly what queueing a request and draining
                # it here would do, minus the request.
                self._mb_drainer = cur
                try:
                    return fn(*args)
                finally:
                    self._mb_finish_inline(cur)
        cur = getcurrent()
        if cur is get_hub():
            raise BlockingCallError(
                f"{self}.{op}() called from the gevent hub (a rawlink callback or timer): the hub "
                "must never block; spawn a greenlet to make the call"
            )
        if self._mb_drainer is cur:
            raise BlockingCallError(
                f"{self}.{op}() called from inside {self} (for example in a child class's __init__, "
                "which runs in the supervisor's order): it would wait for itself forever; "
                "spawn a greenlet to make the call"
            )
        reply = Reply()
        self._mb_post(_Request(op, fn, args, reply, may_block))
        if not reply.wait(timeout):
            raise CallTimeoutError(
                f"{self}.{op}(): no answer within {timeout} s (the request stays queued and may still "
                "be carried out)"
            )
        return reply.result()

    # ------------------------------------------------------------ restarts
    def _note_exit(self, rec: Rec, exit: Exit, now: float | None) -> float:
        """Keep ``exit`` in the recent-exits ring (for describe(); made at the first
        exit, fixed size); the clock reading, taken if ``now`` is None."""
        if now is None:
            now = self._clock()
        exits = self._exits
        if exits is None:
            exits = self._exits = deque(maxlen=RECENT_EXITS)
        exits.append((now, rec.id, exit))
        return now

    def _restart_budget(self, rec: Rec, exit: Exit | None, now: float | None = None) -> Exit | None:
        """Count one restart event; return the give-up decision if the intensity is exceeded."""
        if now is None:
            now = self._clock()
        window = self._intensity
        if window is None:
            window = self._intensity = _policy.Intensity(self.max_restarts, self.max_seconds)
        if window.add(now):
            return self._give_up(rec, exit)
        if _T_RESTART:
            _telemetry.restart(self, rec, exit, now)
        return None

    def _give_up(self, rec: Rec, exit: Exit | None) -> Exit:
        """The intensity is exceeded (already counted): report it; the decision to stop everything."""
        why = exit.describe() if exit is not None else "a failed restart"
        msg = (
            f"{self}: more than {self.max_restarts} restarts within {self.max_seconds:g} s "
            f"(last: child {rec.id!r}, {why}); gave up and stopped all children"
        )
        report_event(logging.ERROR, "%s", msg, supervisor=str(self), child=rec.id)
        error = RestartIntensityExceeded(msg)
        _telemetry.give_up(self, rec, exit, error)
        return Exit(CRASH, error)

    def _schedule_retry(self, rec: Rec, error: StartChildError) -> None:
        """Retry a failed restart through the mailbox, after a trip round the hub.

        gevent never preempts: retrying in a loop would freeze the whole
        process; going through the hub lets timers, sockets and calls in.
        """
        _telemetry.start_failure(self, rec.id, error, "restart")
        rec.state = RESTARTING
        get_hub().loop.run_callback(self._mb_post, _Retry(rec))

    def _await_exits(self, pending: dict, deadline: float | None) -> None:
        """Inside a handler: wait until the children in ``pending`` exit, or ``deadline``.

        Their exits are consumed; every other event stays queued, in order.
        An escalation (greentree's kill sent to this supervisor) kills them
        at once and waits only a grace.
        """
        q = self._mb_q
        if q is None:
            q = self._mb_q = __import__("collections").deque()
        deferred: list = []
        brutal_seen = self._pr_brutal
        try:
            while pending:
                while q:
                    event = q.popleft()
                    if type(event) is _ChildExit and event.child in pending:
                        del pending[event.child]
                    else:
                        deferred.append(event)
                if not pending:
                    break
                if self._pr_brutal and not brutal_seen:
                    brutal_seen = True
                    for c in pending:
                        c.kill(KILL, block=False)
                    grace = time.monotonic() + _process.KILL_GRACE
                    deadline = grace if deadline is None else min(deadline, grace)
                if deadline is None:
                    timeout = None
                else:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                self._mb_wait(timeout)
        finally:
            q.extendleft(reversed(deferred))

    def _stop_recs(self, recs, brutal: bool = False) -> None:
        stop_recs(self, recs, brutal)

    def _shutdown(self) -> None:
        """Stop every child, waiting in place (see ``_shutdown_steps``)."""
        run_steps(self, self._shutdown_steps())

    # ------------------------------------------------------------ snapshots
    def _recs(self):
        raise NotImplementedError

    def _has_live_children(self) -> bool:
        return any(r.child is not None for r in self._recs())

    def _has_children_yet_to_run(self, but: Any = None) -> bool:
        """Is a child (other than record ``but``) a greenlet that has not had its first turn?"""
        for r in self._recs():
            child = r.child
            if child is not None and r is not but and yet_to_run(child):
                return True
        return False

    def _stops_inline(self) -> bool:
        """Would a stop sent to this supervisor now be handled at once, in the sender's greenlet?

        True when it runs, is idle (nothing queued, nobody draining) and has
        no live child: its stop event cannot block, so the greenlet that
        stops it handles it as the next event, and the exit it reports is
        queued before the stopper looks for it.  A parent whose stop of the
        remaining children cannot wait may then handle the exit that decides
        it (an automatic shutdown) inline too.
        """
        return (
            self._pr_state is P_RUNNING and self._mb_drainer is None and not self._mb_q
            and not self._mb_force_worker and not self._forked and not self._has_live_children()
        )

    def _info(self, rec: Rec) -> ChildInfo:
        state = RUNNING if rec.child is not None else rec.state
        if state == RUNNING and rec.child is None:
            state = STOPPED
        return ChildInfo(rec.id, rec.child, rec.spec.type, rec.spec.restart, state)

    def which_children(self) -> list[ChildInfo]:
        """Every child, running or not, as :class:`ChildInfo` records (a non-blocking snapshot)."""
        return [self._info(r) for r in self._recs()]

    def count_children(self) -> ChildCounts:
        """How many children, running, supervisors and workers (a non-blocking snapshot)."""
        n = active = sups = 0
        for r in self._recs():
            n += 1
            if r.child is not None:
                active += 1
            if r.spec.type == "supervisor":
                sups += 1
        return ChildCounts(n, active, sups, n - sups)

    def describe(self, limit: int | None = None, *, budget: int | None = None) -> dict:
        """A JSON-able snapshot of this subtree (non-blocking).

        >>> from greentree import Supervisor
        >>> Supervisor([], name="app").describe()["state"]
        'not started'

        Every supervisor in it reports ``total`` children and their
        ``counts`` by state, its ``recent_exits`` (newest first: ``ago``
        seconds, child ``id``, ``kind``, ``reason``) and ``children``, the
        listed ones.  With ``limit``, each supervisor lists at most ``limit``
        children: those not running first, then the most recently restarted,
        then running ones in start order (a sample); ``budget`` caps the
        children listed in the whole snapshot (nested supervisors past it
        report their counts only).  A tree of 100k children then stays a few
        kilobytes.
        """
        owner = f"{self}.describe()"
        for value, what in ((limit, "limit"), (budget, "budget")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ArgumentError(f"{owner}: {what} must be an int >= 0 or None, not {value!r}")
        return self._describe_tree(limit, None if budget is None else [budget])

    def _describe_tree(self, limit: int | None, budget: list | None) -> dict:
        d = self._describe_common()
        now = self._clock()
        recs = self._recs()
        total = len(recs)
        cap = total if limit is None else min(limit, total)
        if budget is not None:
            cap = max(0, min(cap, budget[0]))
        picked, counts, supervisors = _pick(recs, cap)
        if budget is not None:
            budget[0] -= len(picked)
        d["total"] = total
        d["counts"] = counts
        self._describe_kind(d, supervisors)
        d["recent_exits"] = [
            {"ago": now - t, "id": _jsonable(cid), "kind": e.kind, "reason": e.describe()}
            for t, cid, e in reversed(self._exits or ())
        ]
        d["children"] = [self._describe_rec(r, now, limit, budget) for r in picked]
        return d

    def _describe_kind(self, d: dict, supervisors: int) -> None:
        """Add what only this kind of supervisor has (strategy, limits) to a snapshot
        that has its ``total`` and ``counts`` (``supervisors``: how many children are)."""

    def _describe_rec(self, rec: Rec, now: float, limit: int | None = None, budget: list | None = None) -> dict:
        child = rec.child
        last = rec.last_exit
        if isinstance(last, Exit):
            last = last.describe()
        d = {
            "id": _jsonable(rec.id),
            "key": f"{id(rec):#x}",
            "state": self._info(rec).state,
            "type": rec.spec.type,
            "restart": rec.spec.restart.value,
            "restarts": rec.restarts,
            "last_exit": last,
            "uptime": (now - rec.started_at) if (child is not None and rec.started_at is not None) else None,
        }
        if isinstance(child, SupervisorBase):
            d["tree"] = child._describe_tree(limit, budget)
        return d

    def _describe_common(self) -> dict:
        now = self._clock()
        return {
            "name": self.name if isinstance(self.name, (str, int, type(None))) else repr(self.name),
            "kind": self._kind,
            "state": self._pr_state,
            "intensity": {
                "max_restarts": self.max_restarts,
                "max_seconds": self.max_seconds,
                "recent_restarts": 0 if self._intensity is None else self._intensity.count(now),
            },
            "zombies": self._zombies,
            "mailbox": self._mb_size(),
            "exit": None if self._pr_exit is None else self._pr_exit.describe(),
        }

    # ------------------------------------------------------------ to implement
    def _init_may_block(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _init_children(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _exit_may_block(self, event: _ChildExit) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_exit(self, event: _ChildExit) -> Exit | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _do_retry(self, rec: Rec) -> Exit | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _shutdown_steps(self):  # pragma: no cover - abstract
        """Stop every child: a generator of waits (see ``_children.stop_steps``)."""
        raise NotImplementedError



def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _pick(recs, cap: int) -> tuple[list, dict, int]:
    """One pass over a supervisor's records: counts by state, how many are
    supervisors, and which ``cap`` to list (not running first, then the
    latest restarted, then the first running ones), in their start order."""
    n = len(recs)
    everything = cap >= n
    running = restarting = sups = 0
    idle: list = []
    restarted: list = []  # a min-heap of (started_at, index, rec): the latest ``cap`` restarts
    plain: list = []
    for i, r in enumerate(recs):
        if r.spec._type == "supervisor":
            sups += 1
        if r.child is not None:
            running += 1
            if everything:
                continue
            if r.restarts:
                item = (r.started_at or 0.0, i, r)
                if len(restarted) < cap:
                    heapq.heappush(restarted, item)
                elif cap and item[:2] > restarted[0][:2]:
                    heapq.heapreplace(restarted, item)
            elif len(plain) < cap:
                plain.append((i, r))
        else:
            if r.state == RESTARTING:
                restarting += 1
            if not everything and len(idle) < cap:
                idle.append((i, r))
    counts = {RUNNING: running, RESTARTING: restarting, STOPPED: n - running - restarting}
    if everything:
        return list(recs), counts, sups
    chosen = idle
    if len(chosen) < cap:
        latest = sorted(restarted, reverse=True, key=lambda item: item[:2])
        chosen += [(i, r) for _t, i, r in latest[: cap - len(chosen)]]
    if len(chosen) < cap:
        chosen += plain[: cap - len(chosen)]
    chosen.sort(key=lambda item: item[0])
    return [r for _i, r in chosen], counts, sups
