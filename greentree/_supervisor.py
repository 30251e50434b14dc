"""Supervisor: a static, ordered list of children and OTP's three strategies."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import _policy, _telemetry
from ._base import SupervisorBase
from ._children import RESTARTING, STOPPED, Rec, start_rec, stop_may_block, stop_steps
from ._errors import (
    AlreadyPresentError,
    AlreadyStartedError,
    ArgumentError,
    ChildNotFoundError,
    ChildRestartingError,
    ChildRunningError,
    ChildSpecError,
    StartChildError,
)
from ._policy import SHUTDOWN, AutoShutdown, Exit, Restart, Strategy
from ._spec import ChildSpec, _enum_value

__all__ = ["Supervisor"]

_ONE_FOR_ONE = Strategy.ONE_FOR_ONE
_AUTO_SHUTDOWN = Exit(SHUTDOWN, None)  # (an Exit is immutable: one serves every automatic shutdown)


class Supervisor(SupervisorBase):
    """Starts children in order, restarts them by OTP's rules, and stops them
    in reverse order.

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
    supervisor normally, as in OTP 24.  ``name`` is a label for messages and
    snapshots.  ``clock`` is the function the restart window reads
    (``time.monotonic``); tests pass a fake one.

    A supervisor is not a greenlet: while idle it costs a few small objects.
    It has a greenlet's lifecycle (``start``, ``stop``, ``join``, ``get``,
    ``dead``, ``ready``, ``rawlink``) and can be the child of another.
    """

    _kind = "supervisor"

    def __init__(
        self,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: Any = None,
        auto_shutdown: AutoShutdown | str = AutoShutdown.NEVER,
        clock: Callable[[], float] | None = None,
    ):
        def label() -> str:  # (formatted only for a message)
            return f"Supervisor({name!r})" if name is not None else "Supervisor"

        # (An enum member is taken as it is, without a call: every connection tree passes members.)
        strategy_: Strategy = (
            strategy if type(strategy) is Strategy else _enum_value(Strategy, strategy, "strategy", label)
        )
        auto_shutdown_: AutoShutdown = (
            auto_shutdown if type(auto_shutdown) is AutoShutdown
            else _enum_value(AutoShutdown, auto_shutdown, "auto_shutdown", label)
        )
        if isinstance(children, (str, bytes, ChildSpec)) or not hasattr(children, "__iter__"):
            raise ChildSpecError(f"{label()}: children must be a list of ChildSpec, not {children!r}")
        specs = list(children)
        seen = set()
        for spec in specs:
            if spec.__class__ is not ChildSpec and not isinstance(spec, ChildSpec):
                raise ChildSpecError(f"{label()}: children must be ChildSpec objects, not {spec!r}")
            if spec._id in seen:
                raise ChildSpecError(f"{label()}: two children have the id {spec._id!r}; ids must be unique")
            seen.add(spec._id)
        super().__init__(max_restarts=max_restarts, max_seconds=max_seconds, name=name, clock=clock)
        self.strategy = strategy_
        self.auto_shutdown = auto_shutdown_
        self._specs: list | None = specs
        self._children: dict = {}  # id -> Rec, in start order

    @classmethod
    def child_spec(cls, id: Any, children: Iterable[ChildSpec] = (), **flags: Any) -> ChildSpec:
        """A :class:`ChildSpec` that runs a supervisor as a child of another.

        ``restart``, ``shutdown``, ``significant``, ``start_timeout`` and
        ``register`` go to the spec; every other keyword is a supervisor flag.
        Flags are checked now.

        >>> spec = Supervisor.child_spec("pool", [], strategy="one_for_all")
        >>> spec.type, spec.shutdown
        ('supervisor', None)
        """
        spec_keys = {"restart", "shutdown", "significant", "start_timeout", "register"}
        spec_kw = {k: flags.pop(k) for k in list(flags) if k in spec_keys}
        cls(list(children), **flags)  # validate the flags in the caller, now
        return ChildSpec(id, cls, list(children), kwargs=flags, type="supervisor", **spec_kw)

    def _recs(self):
        return self._children.values()

    def _pr_needs_ctx(self) -> bool:
        return bool(self._specs)

    # ------------------------------------------------------------ start
    def _init_may_block(self) -> bool:
        for spec in self._specs or ():  # (a loop, not any() over a generator: one call, not three)
            if spec._may_block:
                return True
        return False

    def _init_children(self) -> None:
        ctx = self._pr_ctx
        for spec in self._specs or ():
            rec = Rec(self, spec.id, spec, ctx)
            self._children[spec.id] = rec
            try:
                start_rec(self, rec, spec.args)
            except StartChildError:
                del self._children[spec.id]
                raise
        self._specs = None

    # ------------------------------------------------------------ exits
    def _current(self, child) -> Rec | None:
        rec = child._gt_rec
        if rec is None or rec.child is not child or self._children.get(rec.id) is not rec:
            return None  # stale: a child we already stopped or replaced
        return rec

    def _exit_may_block(self, event) -> bool:
        rec = self._current(event.child)
        if rec is None:
            return False
        event.rec = rec
        spec = rec.spec
        action = event.action = _policy.ACTIONS[spec._restart._value_][event.exit.kind]
        if action == _policy.RESTART:
            if self.strategy is not _ONE_FOR_ONE or spec._may_block:
                return True
            now = event.now = self._clock()
            window = self._intensity
            return window.would_exceed(now) if window is not None else self.max_restarts < 1  # nothing counted yet
        if not spec._significant or self.auto_shutdown is AutoShutdown.NEVER:
            return False
        if self._stop_by_events:
            # Stopping by events never waits in the handler; only a child yet to have its
            # first turn sends it to a spawned greenlet (see _children.yet_to_run).
            return self._has_children_yet_to_run(rec)
        # It may stop the supervisor: that waits only if stopping a remaining child waits
        # (a live greenlet, or a supervisor that is busy or has live children).
        return any(
            r is not rec and r.child is not None and stop_may_block(r.child) for r in self._children.values()
        )

    def _on_exit(self, event) -> Exit | None:
        rec = event.rec  # found by _exit_may_block just before, when it ran
        action = event.action
        if rec is None or rec.child is not event.child:
            rec = self._current(event.child)
            action = None
        if rec is None:
            return None
        exit = event.exit
        rec.child = None
        rec.last_exit = exit
        if action is None:
            action = _policy.ACTIONS[rec.spec._restart._value_][exit.kind]
        now = self._note_exit(rec, exit, event.now)
        if action == _policy.RESTART:
            return self._restart(rec, exit, now)
        if action == _policy.DROP:
            del self._children[rec.id]
        else:
            rec.state = STOPPED
        return self._auto_shutdown(rec)

    def _auto_shutdown(self, rec: Rec) -> Exit | None:
        if not rec.spec.significant:
            return None
        remaining = (r for r in self._children.values() if r.spec.significant and r.child is not None)
        if _policy.auto_shutdown_triggered(self.auto_shutdown, True, remaining):
            return _AUTO_SHUTDOWN  # a normal stop, decided by a significant child
        return None

    def _restart(self, rec: Rec, exit: Exit | None, now: float | None = None) -> Exit | None:
        if now is None:
            now = self._clock()
        give_up = self._restart_budget(rec, exit, now)
        if give_up is not None:
            return give_up
        children = self._children
        to_stop: Any
        to_start: Any
        if self.strategy is _ONE_FOR_ONE:
            # plan_restart's answer for one_for_one, without listing every child.
            to_stop, to_start = (), (rec.id,)
        else:
            to_stop, to_start = _policy.plan_restart(self.strategy, list(children), rec.id)
        if to_stop:
            # One by one, in reverse start order, each under its own deadline
            # (OTP's terminate_children), as when the supervisor shuts down.
            for cid in to_stop:
                self._stop_recs([children[cid]])
            for cid in to_stop:
                # A temporary bystander is dropped, not restarted.
                if children[cid].spec.restart is Restart.TEMPORARY:
                    del children[cid]
        for cid in to_start:
            r = children.get(cid)
            if r is None:
                continue
            try:
                start_rec(self, r, r.spec._args, None if to_stop else now)  # stopping takes time
                r.restarts += 1
            except StartChildError as e:
                r.last_exit = f"restart failed: {e.reason!r}"
                self._schedule_retry(r, e)
                return None
        return None

    def _do_retry(self, rec: Rec) -> Exit | None:
        if self._children.get(rec.id) is not rec or rec.state != RESTARTING:
            return None  # terminated or deleted meanwhile
        return self._restart(rec, None)

    # ------------------------------------------------------------ shutdown
    def _shutdown_steps(self):
        # One by one, in reverse start order, each under its own deadline.
        for rec in reversed(list(self._children.values())):
            if rec.child is not None:
                yield from stop_steps(self, [rec])
            rec.state = STOPPED

    # ------------------------------------------------------------ API
    def _check_id(self, op: str, child_id: Any) -> None:
        try:
            hash(child_id)
        except TypeError:
            raise ArgumentError(
                f"{self}.{op}({child_id!r}): a child id is hashable (a str, int or tuple)"
            ) from None

    def start_child(self, spec: ChildSpec, *, timeout: float | None = None) -> Any:
        """Add ``spec`` at the end and start it; return the child.

        Raises :class:`AlreadyStartedError` if a child with that id runs,
        :class:`AlreadyPresentError` if it exists stopped, and
        :class:`StartChildError` if it fails to start.  ``timeout`` bounds the
        wait for the answer (:class:`CallTimeoutError`).
        """
        if type(spec) is not ChildSpec and not isinstance(spec, ChildSpec):
            raise ChildSpecError(f"{self}.start_child(): expected a ChildSpec, not {spec!r}")
        return self._start_child_call(spec, timeout)

    def _do_start_child(self, spec: ChildSpec, ctx) -> Any:
        cid = spec._id
        rec = self._children.get(cid)
        if rec is not None:
            if rec.child is not None:
                raise AlreadyStartedError(
                    f"{self}.start_child(): child {spec.id!r} is already running", rec.child, spec.id
                )
            raise AlreadyPresentError(
                f"{self}.start_child(): child {spec.id!r} exists but is stopped; use "
                f"restart_child({spec.id!r}), or delete_child({spec.id!r}) first"
            )
        rec = Rec(self, cid, spec, ctx)
        self._children[cid] = rec
        try:
            return start_rec(self, rec, spec._args)
        except StartChildError as e:
            del self._children[cid]
            _telemetry.start_failure(self, spec.id, e, "start_child")
            raise

    def _lookup(self, op: str, child_id: Any) -> Rec:
        rec = self._children.get(child_id)
        if rec is None:
            ids = ", ".join(repr(c) for c in self._children) or "none"
            raise ChildNotFoundError(f"{op}({child_id!r}): no such child in {self} (children: {ids})")
        return rec

    def terminate_child(self, child_id: Any, *, timeout: float | None = None) -> None:
        """Stop a child by its shutdown protocol.  Its spec stays (restart it
        with :meth:`restart_child`), except a temporary child's, which goes."""
        self._check_id("terminate_child", child_id)
        self._call("terminate_child", self._do_terminate_child, (child_id,), may_block=True, timeout=timeout)

    def _do_terminate_child(self, child_id: Any) -> None:
        rec = self._lookup("terminate_child", child_id)
        if rec.child is not None:
            self._stop_recs([rec])
        rec.state = STOPPED
        if rec.spec.restart is Restart.TEMPORARY and self._children.get(child_id) is rec:
            del self._children[child_id]

    def restart_child(self, child_id: Any, *, timeout: float | None = None) -> Any:
        """Start a stopped child again from its spec; return the new child."""
        self._check_id("restart_child", child_id)
        rec = self._children.get(child_id)
        may_block = rec is None or rec.spec.may_block
        return self._call("restart_child", self._do_restart_child, (child_id,), may_block=may_block, timeout=timeout)

    def _do_restart_child(self, child_id: Any) -> Any:
        rec = self._lookup("restart_child", child_id)
        if rec.child is not None:
            raise ChildRunningError(f"restart_child({child_id!r}): child is running in {self}; terminate it first")
        if rec.state == RESTARTING:
            raise ChildRestartingError(
                f"restart_child({child_id!r}): {self} is already retrying a failed restart of it"
            )
        return start_rec(self, rec, rec.spec.args)

    def delete_child(self, child_id: Any, *, timeout: float | None = None) -> None:
        """Forget a stopped child's spec."""
        self._check_id("delete_child", child_id)
        self._call("delete_child", self._do_delete_child, (child_id,), may_block=False, timeout=timeout)

    def _do_delete_child(self, child_id: Any) -> None:
        rec = self._lookup("delete_child", child_id)
        if rec.child is not None:
            raise ChildRunningError(f"delete_child({child_id!r}): child is running in {self}; terminate it first")
        if rec.state == RESTARTING:
            raise ChildRestartingError(f"delete_child({child_id!r}): {self} is retrying a failed restart of it")
        del self._children[child_id]

    def _describe_kind(self, d: dict, supervisors: int) -> None:
        d["strategy"] = self.strategy.value
