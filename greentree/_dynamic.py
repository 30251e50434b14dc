"""DynamicSupervisor: many children, started on demand, unordered, stopped concurrently."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import _policy, _telemetry
from ._base import SupervisorBase
from ._children import Rec, start_rec, stop_steps
from ._errors import ArgumentError, ChildNotFoundError, ChildSpecError, MaxChildrenError, StartChildError
from ._policy import Exit
from ._spec import ChildSpec

__all__ = ["DynamicSupervisor"]


class DynamicSupervisor(SupervisorBase):
    """A supervisor for children started on demand: one per connection, per
    tenant, per run.  Always one_for_one; children are unordered and, when it
    stops, stopped concurrently under their shutdown deadlines.

    >>> import gevent
    >>> from greentree import ChildSpec, DynamicSupervisor
    >>> with DynamicSupervisor(max_children=100, extra_args=("tenant-1",)) as dyn:
    ...     g = dyn.start_child(ChildSpec(None, gevent.sleep, 3600, restart="temporary"))
    ...     dyn.count_children()
    ChildCounts(specs=1, active=1, supervisors=0, workers=1)

    ``extra_args`` are prepended to every child's args (Elixir's
    ``extra_arguments``).  ``max_children`` bounds how many it holds
    (:class:`MaxChildrenError` past it).  Children are keyed by the child
    object, so the spec id may be None and many children may share a spec.

    Starting a child that needs no handshake costs little more than
    ``gevent.spawn``: when the supervisor is idle, the caller's greenlet runs
    the start as the supervisor's next event (it cannot yield, so nothing
    can interleave with it); otherwise the request waits its turn.
    """

    _kind = "dynamic_supervisor"

    def __init__(
        self,
        *,
        max_children: int | None = None,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        extra_args: Iterable[Any] = (),
        name: Any = None,
        clock: Callable[[], float] | None = None,
    ):
        def label() -> str:  # (formatted only for a message)
            return f"DynamicSupervisor({name!r})" if name is not None else "DynamicSupervisor"

        if max_children is not None and (
            isinstance(max_children, bool) or not isinstance(max_children, int) or max_children < 0
        ):
            raise ChildSpecError(f"{label()}: max_children must be an int >= 0 or None, not {max_children!r}")
        if isinstance(extra_args, (str, bytes)) or not hasattr(extra_args, "__iter__"):
            raise ChildSpecError(f"{label()}: extra_args must be a tuple of arguments, not {extra_args!r}")
        super().__init__(max_restarts=max_restarts, max_seconds=max_seconds, name=name, clock=clock)
        self.max_children = max_children
        self.extra_args = extra_args if extra_args.__class__ is tuple else tuple(extra_args)
        self._children: dict = {}  # child (or the dead one, while restarting) -> Rec
        self._retrying: dict | None = None  # Rec -> its key in _children while a restart is retried

    @classmethod
    def child_spec(cls, id: Any, **flags: Any) -> ChildSpec:
        """A :class:`ChildSpec` that runs a DynamicSupervisor as a child.

        >>> DynamicSupervisor.child_spec("pool", max_children=10).type
        'supervisor'
        """
        spec_keys = {"restart", "shutdown", "significant", "start_timeout", "register"}
        spec_kw = {k: flags.pop(k) for k in list(flags) if k in spec_keys}
        cls(**flags)  # validate now, in the caller
        return ChildSpec(id, cls, kwargs=flags, type="supervisor", **spec_kw)

    def _recs(self):
        return self._children.values()

    def _pr_needs_ctx(self) -> bool:
        return False  # each child runs in the context of its own start_child caller

    def _args(self, spec: ChildSpec) -> tuple:
        return self.extra_args + spec.args if self.extra_args else spec.args

    def _init_may_block(self) -> bool:
        return False

    def _init_children(self) -> None:
        pass

    # ------------------------------------------------------------ API
    def start_child(self, spec: ChildSpec, *, timeout: float | None = None) -> Any:
        """Start a child from ``spec``; return it (a greenlet, or a supervisor)."""
        if type(spec) is not ChildSpec and not isinstance(spec, ChildSpec):
            raise ChildSpecError(f"{self}.start_child(): expected a ChildSpec, not {spec!r}")
        return self._start_child_call(spec, timeout)

    def _do_start_child(self, spec: ChildSpec, ctx) -> Any:
        if self.max_children is not None and len(self._children) >= self.max_children:
            raise MaxChildrenError(
                f"{self}.start_child(): already {len(self._children)} children, the max_children limit; "
                "raise max_children or stop some children first"
            )
        rec = Rec(self, spec._id, spec, ctx)
        extra = self.extra_args
        try:
            child = start_rec(self, rec, extra + spec._args if extra else spec._args)
        except StartChildError as e:
            _telemetry.start_failure(self, spec._id, e, "start_child")
            raise
        self._children[child] = rec
        return child

    def _check_child(self, op: str, child: Any) -> None:
        try:
            hash(child)
        except TypeError:
            raise ArgumentError(f"{self}.{op}({child!r}): expected a child (as start_child returned it)") from None

    def terminate_child(self, child: Any, *, timeout: float | None = None) -> None:
        """Stop one child by its shutdown protocol and forget it."""
        self._check_child("terminate_child", child)
        self._call("terminate_child", self._do_terminate_child, (child,), may_block=True, timeout=timeout)

    def _do_terminate_child(self, child: Any) -> None:
        rec = self._children.pop(child, None)
        if rec is None:
            raise ChildNotFoundError(
                f"terminate_child({child!r}): not a child of {self} (it exited, or belongs to another supervisor)"
            )
        if self._retrying:
            self._retrying.pop(rec, None)
        self._stop_recs([rec])

    def terminate_all(self, *, timeout: float | None = None) -> int:
        """Stop every child, concurrently; return how many there were."""
        return self._call("terminate_all", self._do_terminate_all, (), may_block=True, timeout=timeout)

    def _do_terminate_all(self) -> int:
        recs = list(self._children.values())
        self._children.clear()
        self._retrying = None
        self._stop_recs(recs)
        return len(recs)

    def describe(self, limit: int | None = 100, *, budget: int | None = None) -> dict:
        """A JSON-able snapshot, as :meth:`Supervisor.describe`; at most ``limit`` children are listed."""
        return super().describe(limit, budget=budget)

    def _describe_kind(self, d: dict, supervisors: int) -> None:
        d["strategy"] = "one_for_one"
        d["max_children"] = self.max_children
        n = d["total"]  # count_children(), from the pass describe() already made
        d["count"] = {"specs": n, "active": d["counts"]["running"], "supervisors": supervisors,
                      "workers": n - supervisors}

    # ------------------------------------------------------------ exits
    def _exit_may_block(self, event) -> bool:
        child = event.child
        rec = self._children.get(child)
        if rec is None or rec.child is not child:
            return False
        event.rec = rec
        spec = rec.spec
        action = event.action = _policy.ACTIONS[spec._restart._value_][event.exit.kind]
        if action != _policy.RESTART:
            return False
        if spec._may_block:
            return True
        now = event.now = self._clock()
        window = self._intensity
        return window.would_exceed(now) if window is not None else self.max_restarts < 1  # nothing counted yet

    def _on_exit(self, event) -> Exit | None:
        child = event.child
        rec = event.rec  # found by _exit_may_block just before, when it ran
        action = event.action
        if rec is None:
            rec = self._children.get(child)
        if rec is None or rec.child is not child:
            return None
        exit = event.exit
        rec.child = None
        rec.last_exit = exit
        if action is None:
            action = _policy.decide(rec.spec._restart, exit.kind)
        now = self._note_exit(rec, exit, event.now)
        if action != _policy.RESTART:
            del self._children[child]  # dynamic children that are not restarted are forgotten
            return None
        give_up = self._restart_budget(rec, exit, now)
        if give_up is not None:
            return give_up
        self._restart(child, rec, now)
        return None

    def _restart(self, old: Any, rec: Rec, now: float | None = None) -> None:
        spec = rec.spec
        extra = self.extra_args
        try:
            new = start_rec(self, rec, extra + spec._args if extra else spec._args, now)
        except StartChildError as e:
            rec.last_exit = f"restart failed: {e.reason!r}"
            if self._retrying is None:
                self._retrying = {}
            self._retrying[rec] = old
            self._schedule_retry(rec, e)
            return
        del self._children[old]
        rec.restarts += 1
        self._children[new] = rec

    def _do_retry(self, rec: Rec) -> Exit | None:
        old = self._retrying.pop(rec, None) if self._retrying else None
        if old is None or self._children.get(old) is not rec:
            return None  # terminated meanwhile
        give_up = self._restart_budget(rec, None)
        if give_up is not None:
            return give_up
        self._restart(old, rec)
        return None

    # ------------------------------------------------------------ shutdown
    def _shutdown_steps(self):
        # Every child at once, each under its own deadline.
        recs = list(self._children.values())
        yield from stop_steps(self, recs)
        self._children.clear()
