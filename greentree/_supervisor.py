"""Supervisor: a static, ordered list of children and OTP's three strategies."""

from __future__ import annotations

from typing import Any, Iterable

from . import _policy
from ._base import RESTARTING, RUNNING, STOPPED, ChildCounts, ChildInfo, SupervisorBase, _describe_reason, _exit_reason
from ._errors import (
    AlreadyPresentError, AlreadyStartedError, ChildNotFoundError, ChildRestartingError,
    ChildRunningError, ChildSpecError, StartChildError,
)
from ._exits import classify
from ._spec import AutoShutdown, ChildSpec, Restart, Strategy, _enum_value

__all__ = ["Supervisor"]


class _AutoShutdownExit(Exception):
    """Internal: a significant child's exit stops the supervisor normally."""


class Supervisor(SupervisorBase):
    """A greenlet that starts children in order, restarts them by OTP's rules,
    and stops them in reverse order.

    >>> import gevent
    >>> from greentree import ChildSpec, Supervisor
    >>> calls = []
    >>> def worker(n):
    ...     calls.append(n)
    ...     if len(calls) == 1:
    ...         raise RuntimeError("first run crashes")
    ...     gevent.sleep(3600)
    >>> with Supervisor([ChildSpec("w", worker, 7)], name="demo") as sup:
    ...     gevent.sleep(0.01)
    ...     [info.id for info in sup.which_children()], calls
    (['w'], [7, 7])

    ``strategy`` is ``"one_for_one"`` (restart the child that failed),
    ``"one_for_all"`` (stop the others in reverse order, restart all in order)
    or ``"rest_for_one"`` (stop and restart the failed child and those started
    after it).  More than ``max_restarts`` restarts within ``max_seconds``
    makes the supervisor stop every child and exit with
    :class:`RestartIntensityExceeded`.

    Children start one by one, in list order: a child whose spec has
    ``handshake=True`` (supervisors and servers have it) must call
    :func:`greentree.started` before the next one starts.  If one fails, the
    children already started stop in reverse order, the later ones never
    start, and :meth:`wait_started` raises :class:`StartChildError`.

    ``auto_shutdown`` (``"never"``, ``"any_significant"``,
    ``"all_significant"``) lets the exit of ``significant`` children stop the
    supervisor normally, as in OTP 24.  ``clock`` is the function the restart
    window reads (``time.monotonic``); tests pass a fake one.
    """

    _kind = "supervisor"

    def __init__(
        self,
        children: Iterable[ChildSpec] = (),
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: Any = None,
        *,
        auto_shutdown: AutoShutdown | str = AutoShutdown.NEVER,
        clock=None,
    ):
        label = f"Supervisor({name!r})" if name is not None else "Supervisor"
        strategy = _enum_value(Strategy, strategy, "strategy", label)
        auto_shutdown = _enum_value(AutoShutdown, auto_shutdown, "auto_shutdown", label)
        if isinstance(children, (str, bytes, ChildSpec)) or not hasattr(children, "__iter__"):
            raise ChildSpecError(f"{label}: children must be a list of ChildSpec, not {children!r}")
        specs = list(children)
        seen = set()
        for spec in specs:
            if not isinstance(spec, ChildSpec):
                raise ChildSpecError(f"{label}: children must be ChildSpec objects, not {spec!r}")
            if spec.id in seen:
                raise ChildSpecError(f"{label}: two children have the id {spec.id!r}; ids must be unique")
            seen.add(spec.id)
        super().__init__(max_restarts=max_restarts, max_seconds=max_seconds, name=name, clock=clock)
        self.strategy = strategy
        # Only a one_for_one restart never blocks (group restarts stop siblings).
        self._fast_exits = strategy is Strategy.ONE_FOR_ONE
        self.auto_shutdown = auto_shutdown
        self._specs = specs
        self._children: dict = {}  # id -> _Rec, in start order

    @classmethod
    def child_spec(cls, id: Any, children: Iterable[ChildSpec] = (), **flags: Any) -> ChildSpec:
        """A :class:`ChildSpec` that runs a supervisor as a child of another.

        ``restart``, ``shutdown`` and ``significant`` go to the spec; every
        other keyword is a supervisor flag.  Flags are checked now.

        >>> spec = Supervisor.child_spec("pool", [], strategy="one_for_all")
        >>> spec.type, spec.shutdown
        ('supervisor', None)
        """
        spec_keys = {"restart", "shutdown", "significant", "start_timeout", "name"}
        spec_kw = {k: flags.pop(k) for k in list(flags) if k in spec_keys}
        cls(list(children), **flags)  # validate the flags in the caller, now
        return ChildSpec(id, cls, list(children), kwargs=flags, type="supervisor", **spec_kw)

    # ------------------------------------------------------------ start
    def _init_children(self):
        ctx = None
        for spec in self._specs:
            rec = self._new_rec(spec, ctx)
            self._children[spec.id] = rec
            try:
                self._start_rec(rec)
            except StartChildError:
                del self._children[spec.id]
                raise
        self._specs = None

    # ------------------------------------------------------------ exits
    def _on_exit(self, g):
        rec = g._gt_rec
        if rec is None or rec.greenlet is not g or self._children.get(rec.id) is not rec:
            return  # stale: a child we already stopped or replaced
        reason = _exit_reason(g)
        kind = classify(reason)
        rec.greenlet = None
        rec.last_exit = reason if reason is not None else "normal"  # formatted by describe()
        action = _policy.decide(rec.spec.restart, kind)
        if action == _policy.RESTART:
            self._restart(rec, reason)
            return
        if action == _policy.DROP:
            del self._children[rec.id]
        else:
            rec.state = STOPPED
        self._check_auto_shutdown(rec)

    def _check_auto_shutdown(self, rec):
        if not rec.spec.significant:
            return
        remaining = (r for r in self._children.values() if r.spec.significant and r.greenlet is not None)
        if _policy.auto_shutdown_triggered(self.auto_shutdown, True, remaining):
            raise _AutoShutdownExit(rec.id)

    def _restart(self, rec, reason):
        self._restart_budget(rec, reason)
        to_stop, to_start = _policy.plan_restart(self.strategy, list(self._children), rec.id)
        children = self._children
        if to_stop:
            # One by one, in reverse start order, each under its own deadline
            # (OTP's terminate_children), as when the supervisor shuts down.
            for cid in to_stop:
                self._stop_greenlets([children[cid]])
            for cid in to_stop:
                # A temporary bystander is dropped, not restarted.
                if children[cid].spec.restart is Restart.TEMPORARY:
                    del children[cid]
        for cid in to_start:
            r = children.get(cid)
            if r is None:
                continue
            try:
                self._start_rec(r)
                r.restarts += 1
            except StartChildError as e:
                r.last_exit = f"restart failed: {e.reason!r}"
                self._schedule_retry(r)
                return

    def _do_retry(self, rec):
        if self._children.get(rec.id) is not rec or rec.state != RESTARTING:
            return  # terminated or deleted meanwhile
        self._restart(rec, None)

    # ------------------------------------------------------------ shutdown
    def _shutdown(self):
        children = list(self._children.values())
        for rec in reversed(children):
            if rec.greenlet is not None:
                self._stop_greenlets([rec])
            rec.state = STOPPED

    def _kill_everything_now(self):
        for rec in self._children.values():
            g = rec.greenlet
            if g is not None and not g.dead:
                g.kill(ShutdownExit if g.gr_frame is None else KILL, block=False)

    def _run(self):
        try:
            return super()._run()
        except _AutoShutdownExit:
            return None

    # ------------------------------------------------------------ API
    def start_child(self, spec: ChildSpec, *, timeout: float | None = None):
        """Add ``spec`` at the end and start it; return its greenlet.

        Raises :class:`AlreadyStartedError` if a child with that id runs,
        :class:`AlreadyPresentError` if it exists stopped, and
        :class:`StartChildError` if it fails to start.
        """
        if not isinstance(spec, ChildSpec):
            raise ChildSpecError(f"{self}.start_child(): expected a ChildSpec, not {spec!r}")
        return self._call("start_child", spec, contextvars_copy(), timeout=timeout)

    def _do_start_child(self, spec, ctx):
        rec = self._children.get(spec.id)
        if rec is not None:
            if rec.greenlet is not None:
                raise AlreadyStartedError(
                    f"{self}.start_child(): child {spec.id!r} is already running", rec.greenlet, spec.id
                )
            raise AlreadyPresentError(
                f"{self}.start_child(): child {spec.id!r} exists but is stopped; use "
                f"restart_child({spec.id!r}), or delete_child({spec.id!r}) first"
            )
        rec = self._new_rec(spec, ctx)
        self._children[spec.id] = rec
        try:
            return self._start_rec(rec)
        except StartChildError:
            del self._children[spec.id]
            raise

    def _lookup(self, op, child_id):
        rec = self._children.get(child_id)
        if rec is None:
            ids = ", ".join(repr(c) for c in self._children) or "none"
            raise ChildNotFoundError(f"{op}({child_id!r}): no such child in {self} (children: {ids})")
        return rec

    def terminate_child(self, child_id: Any, *, timeout: float | None = None) -> None:
        """Stop a child by its shutdown protocol.  Its spec stays (restart it
        with :meth:`restart_child`), except a temporary child's, which goes."""
        self._call("terminate_child", child_id, timeout=timeout)

    def _do_terminate_child(self, child_id):
        rec = self._lookup("terminate_child", child_id)
        if rec.greenlet is not None:
            self._stop_greenlets([rec])
        rec.state = STOPPED
        if rec.spec.restart is Restart.TEMPORARY and self._children.get(child_id) is rec:
            del self._children[child_id]

    def restart_child(self, child_id: Any, *, timeout: float | None = None):
        """Start a stopped child again from its spec; return the new greenlet."""
        return self._call("restart_child", child_id, timeout=timeout)

    def _do_restart_child(self, child_id):
        rec = self._lookup("restart_child", child_id)
        if rec.greenlet is not None:
            raise ChildRunningError(f"restart_child({child_id!r}): child is running in {self}; terminate it first")
        if rec.state == RESTARTING:
            raise ChildRestartingError(
                f"restart_child({child_id!r}): {self} is already retrying a failed restart of it"
            )
        return self._start_rec(rec)

    def delete_child(self, child_id: Any, *, timeout: float | None = None) -> None:
        """Forget a stopped child's spec."""
        self._call("delete_child", child_id, timeout=timeout)

    def _do_delete_child(self, child_id):
        rec = self._lookup("delete_child", child_id)
        if rec.greenlet is not None:
            raise ChildRunningError(f"delete_child({child_id!r}): child is running in {self}; terminate it first")
        if rec.state == RESTARTING:
            raise ChildRestartingError(f"delete_child({child_id!r}): {self} is retrying a failed restart of it")
        del self._children[child_id]

    def which_children(self) -> list[ChildInfo]:
        """Every child in start order, running or not (non-blocking snapshot)."""
        return [ChildInfo(r.id, r.greenlet, r.spec.type, r.spec.restart) for r in self._children.values()]

    def count_children(self) -> ChildCounts:
        recs = self._children.values()
        sups = sum(1 for r in recs if r.spec.type == "supervisor")
        return ChildCounts(len(recs), sum(1 for r in recs if r.greenlet is not None), sups, len(recs) - sups)

    def describe(self) -> dict:
        """A JSON-able snapshot of this subtree (non-blocking).

        >>> Supervisor([], name="app").describe()["state"]
        'not started'
        """
        d = self._describe_common()
        d["strategy"] = self.strategy.value
        now = self._clock()
        d["children"] = [self._describe_rec(r, now) for r in self._children.values()]
        return d


def contextvars_copy():
    import contextvars

    return contextvars.copy_context()


from ._exits import KILL, ShutdownExit  # noqa: E402
