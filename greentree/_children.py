"""Starting and stopping one supervisor's children: the record, the start,
the handshake, and OTP's shutdown protocol.

These run inside the supervisor's serial mailbox (see ``_mailbox``): a start
that may yield and every stop that waits run in a greenlet spawned for the
purpose, never in a caller's.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
from gevent.event import AsyncResult

from . import _process, _telemetry
from ._child import Greenlet, StartAborted, _gt_main, backstop, init_greenlet, new_greenlet
from ._errors import AlreadyRegisteredError, AlreadyStartedError, StartChildError, StartTimeoutError
from ._exits import KILL, ShutdownExit
from ._policy import Restart
from ._process import EMPTY_CONTEXT
from ._report import report_event
from ._spec import BRUTAL_KILL, ChildSpec

_TEMPORARY = Restart.TEMPORARY
_T_START = _telemetry.slot(_telemetry.CHILD_START)  # non-empty only while a handler listens

__all__ = [
    "Rec", "start_rec", "stop_recs", "stop_steps", "run_steps", "stop_may_block", "yet_to_run", "StopDuringStart",
    "RUNNING", "STOPPED", "RESTARTING",
]

RUNNING = "running"
STOPPED = "stopped"
RESTARTING = "restarting"


class Rec:
    """A supervisor's record of one child (one per child: keep it small)."""

    __slots__ = ("sup", "id", "spec", "child", "state", "restarts", "started_at", "ctx", "last_exit")

    def __init__(self, sup, id, spec: ChildSpec, ctx):
        self.sup = sup
        self.id = id
        self.spec = spec
        self.child: Any = None
        self.state = STOPPED
        self.restarts = 0
        self.started_at: float | None = None
        self.ctx = ctx
        self.last_exit: Any = None


class StopDuringStart(Exception):
    """The supervisor was asked to stop while it waited for a child's start handshake."""

    def __init__(self, reason: BaseException):
        super().__init__(reason)
        self.reason = reason


def start_rec(sup, rec: Rec, args: tuple, now: float | None = None) -> Any:
    """Create, name and start ``rec``'s child; return it or raise StartChildError.

    Runs in the supervisor's serial order.  Nothing is left behind on failure:
    no phantom child, no name.  ``now`` is the supervisor's clock, if the
    caller has just read it (a restart has).
    """
    spec = rec.spec
    # (The spec's private slots are read directly: this runs for every start.)
    try:
        if spec._child_class:
            child = spec._start(*args, **spec._kwargs)
        else:
            # greentree.Greenlet(spec.start, *args, **kwargs), as _child builds function children.
            child = new_greenlet(Greenlet)
            init_greenlet(child, _gt_main, *args, **spec._kwargs)
            child._gt_body = spec._start
    except Exception as e:
        raise StartChildError(
            f"{sup}: child {spec.id!r} failed to start: {type(e).__name__}: {e}", spec.id, e
        ) from e
    child._gt_rec = rec
    is_greenlet = not spec._child_class or isinstance(child, Greenlet)
    if is_greenlet:
        # A temporary child never restarts, so it may run in the record's own
        # context; others run in a copy, so what they set (a ContextVar) is
        # not inherited by their restarts.
        ctx = rec.ctx
        if ctx is not EMPTY_CONTEXT:  # (an empty one: the greenlet's default, a fresh empty context)
            child.gr_context = ctx if spec._restart is _TEMPORARY else ctx.copy()
    elif child._pr_needs_ctx():
        # A supervisor never runs code in it: it only copies it for each of
        # its static children, so it can share the record's context.
        child._pr_ctx = rec.ctx
    reg = spec._register
    if reg is not None:
        try:
            reg.bind(child)
        except AlreadyRegisteredError as e:
            child._gt_rec = None
            raise AlreadyStartedError(
                f"{sup}: child {spec.id!r} not started: its name {reg!r} is held by {e.owner!r}",
                e.owner, spec.id,
            ) from e
        except Exception as e:
            child._gt_rec = None
            raise StartChildError(
                f"{sup}: child {spec.id!r} not started: binding its name {reg!r} failed: "
                f"{type(e).__name__}: {e}", spec.id, e,
            ) from e
    if is_greenlet:
        child.rawlink(backstop)
    hs = None
    if spec._handshake:
        hs = child._gt_handshake = AsyncResult()
    rec.child = child
    rec.state = RUNNING
    rec.started_at = sup._clock() if now is None else now
    child.start()
    if hs is not None:
        sup._pr_awaiting = hs
        try:
            hs.get(timeout=spec.start_timeout)
        except StopDuringStart:
            child._gt_handshake = None
            stop_recs(sup, [rec])  # it never finished starting: it goes with the stop
            rec.state = STOPPED
            raise
        except StartAborted as e:
            rec.child = None
            rec.state = STOPPED
            reason = e.exit.reason
            raise StartChildError(
                f"{sup}: child {spec.id!r} exited before it called started(): {e.exit.describe()}",
                spec.id, reason,
            ) from reason
        except gevent.Timeout:
            child._gt_handshake = None
            stop_recs(sup, [rec], brutal=True)
            rec.state = STOPPED
            raise StartChildError(
                f"{sup}: child {spec.id!r} did not call started() within its "
                f"start_timeout of {spec.start_timeout} s; it was killed",
                spec.id, StartTimeoutError(f"child {spec.id!r}: no started() within {spec.start_timeout} s"),
            ) from None
        finally:
            sup._pr_awaiting = None
    if _T_START:
        _telemetry.child_start(sup, rec, child)
    return child


def stop_may_block(child) -> bool:
    """Would stopping ``child`` (``stop_recs``) have to wait for its exit?

    A live greenlet must be waited for (the kill reaches it through the hub).
    A supervisor that is idle and has no live child is stopped inline: its
    exit is reported before ``stop_recs`` waits, so nothing waits.
    """
    if child._gt_done:
        return False
    stops_inline = getattr(child, "_stops_inline", None)
    return stops_inline is None or not stops_inline()


def _never_ran(child) -> bool:
    return child.gr_frame is None if isinstance(child, Greenlet) else False


def yet_to_run(child) -> bool:
    """A greenlet child that is started but has not had its first turn yet.

    Stopping it now would end it before it ever runs.  A stop that reaches
    it from a greenlet spawned for the purpose comes after that first turn
    (gevent runs greenlets in the order they were scheduled), so a stop that
    would otherwise be handled at once is handed to a spawned greenlet
    while such a child lives: children always get their first turn.
    """
    return isinstance(child, Greenlet) and child.gr_frame is None and not child._gt_done and not child.dead


def stop_recs(sup, recs, brutal: bool = False) -> None:
    """OTP's shutdown protocol for ``recs``, waiting in place (see :func:`stop_steps`).

    Blocks: runs only in a greenlet spawned for the supervisor's handler.
    """
    run_steps(sup, stop_steps(sup, recs, brutal))


def run_steps(sup, steps) -> None:
    """Carry out ``steps`` (a generator of waits, see :func:`stop_steps`) by waiting in place."""
    for pending, deadline in steps:
        sup._await_exits(pending, deadline)


def stop_steps(sup, recs, brutal: bool = False):
    """OTP's shutdown protocol for ``recs``, concurrently, each under its own deadline.

    ShutdownExit; wait ``spec.shutdown``; greentree's kill; wait a grace;
    then report zombies and go on.  The exits are expected: they never count
    as crashes.

    A generator: each wait is yielded as ``(pending, deadline)``, "resume me
    once every child in ``pending`` (a dict, child -> record) has exited and
    been removed from it, or at ``deadline`` (``time.monotonic()``; None:
    never)".  Whoever drives it decides how to wait: in place
    (:func:`run_steps`, a handler in its own greenlet), or as a state of the
    supervisor that the children's exit events and a deadline timer advance
    (``SupervisorBase._terminate``): the same decisions either way.
    """
    pending: dict = {}
    now = time.monotonic()
    by_deadline: dict = {}
    for rec in recs:
        child = rec.child
        rec.child = None  # from now on its exit record is stale
        if rec.state == RUNNING:
            rec.state = STOPPED
        if child is None or child._gt_done:
            continue
        shutdown = rec.spec.shutdown
        if brutal or shutdown is BRUTAL_KILL or sup._pr_brutal:
            exc: Any = KILL if not _never_ran(child) else ShutdownExit
            deadline: float | None = now + _process.KILL_GRACE
            escalate = False
        else:
            exc = ShutdownExit
            deadline = None if shutdown is None else now + shutdown
            escalate = True
        child.kill(exc, block=False)
        if child._gt_done:
            # It has ended and reported its exit already (a process that stops inline, such
            # as an idle supervisor or conversation sender): its exit event is queued for this
            # supervisor, which drops it unread as stale, and there is nothing to wait for.
            continue
        pending[child] = rec
        by_deadline.setdefault((deadline, escalate), []).append(child)
    if not pending:
        return
    # Deadlines in order; None (wait forever) last.  (A brutal kill's deadline
    # is already its grace: no escalation, and late children are waited for
    # as long as others keep exiting, as after an escalation.)
    for (deadline, escalate), children in (
        by_deadline.items() if len(by_deadline) == 1
        else sorted(by_deadline.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0.0))
    ):
        before = len(pending)
        yield pending, deadline
        late = [c for c in children if c in pending]
        if late and not escalate:
            yield from _wait_while_exiting(pending, late, before)
            late = [c for c in late if c in pending]
        if not late:
            continue
        if escalate:
            for c in late:
                c.kill(KILL, block=False)
            before = len(pending)
            yield pending, time.monotonic() + _process.KILL_GRACE
            yield from _wait_while_exiting(pending, late, before)
        for c in late:
            if c in pending:
                del pending[c]
                zombie(sup, c)


def _wait_while_exiting(pending: dict, late: list, before: int):
    """After a grace, wait for the ``late`` children again while others keep exiting.

    A zombie is a child that ignores greentree's kill.  When many children
    stop at once (100,000 under one supervisor, on a busy machine) the kills
    wait their turn in gevent's loop, and a child that has not had its turn
    yet ignores nothing: so the grace is extended while exits keep arriving
    (``before``: how many children were pending when the last grace began),
    and what is left once a whole grace passes without one is a zombie.
    """
    n = before
    while len(pending) < n and any(c in pending for c in late):
        n = len(pending)
        yield pending, time.monotonic() + _process.KILL_GRACE


def zombie(sup, child) -> None:
    sup._zombies += 1
    rec = child._gt_rec
    report_event(
        logging.WARNING,
        "%s: child %r ignored ShutdownExit and greentree's kill; leaving it as a zombie",
        sup, rec.id if rec is not None else None,
        supervisor=str(sup), child=rec.id if rec is not None else None,
    )
    _telemetry.zombie(sup, rec, child)

