"""DynamicSupervisor: many children, started on demand, unordered, stopped concurrently."""

from __future__ import annotations

import contextvars
from typing import Any, Iterable

from gevent import getcurrent, get_hub

from . import _policy
from ._base import RESTARTING, ChildCounts, ChildInfo, SupervisorBase, _describe_reason, _exit_reason
from ._errors import ChildNotFoundError, ChildSpecError, MaxChildrenError, StartChildError
from ._exits import KILL, ShutdownExit, classify
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
    (:class:`MaxChildrenError` past it).  Children are keyed by greenlet, so
    the spec id may be None and many children may share a spec.

    Starting a child costs little more than ``gevent.spawn``: when the
    supervisor is idle and the child needs no start handshake, the caller's
    greenlet creates and starts it directly (it cannot be interleaved with
    anything: gevent never preempts); otherwise the request goes through the
    supervisor's inbox like every other.
    """

    _kind = "dynamic_supervisor"
    _fast_exits = True

    def __init__(
        self,
        max_children: int | None = None,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        extra_args: Iterable[Any] = (),
        name: Any = None,
        *,
        clock=None,
    ):
        label = f"DynamicSupervisor({name!r})" if name is not None else "DynamicSupervisor"
        if max_children is not None and (
            isinstance(max_children, bool) or not isinstance(max_children, int) or max_children < 0
        ):
            raise ChildSpecError(f"{label}: max_children must be an int >= 0 or None, not {max_children!r}")
        if isinstance(extra_args, (str, bytes)) or not hasattr(extra_args, "__iter__"):
            raise ChildSpecError(f"{label}: extra_args must be a tuple of arguments, not {extra_args!r}")
        super().__init__(max_restarts=max_restarts, max_seconds=max_seconds, name=name, clock=clock)
        self.max_children = max_children
        self.extra_args = tuple(extra_args)
        self._children: dict = {}  # greenlet (or the dead one, while restarting) -> _Rec
        self._retrying: dict = {}  # _Rec -> its key in _children while a restart is retried

    @classmethod
    def child_spec(cls, id: Any, **flags: Any) -> ChildSpec:
        """A :class:`ChildSpec` that runs a DynamicSupervisor as a child.

        >>> DynamicSupervisor.child_spec("pool", max_children=10).type
        'supervisor'
        """
        spec_keys = {"restart", "shutdown", "significant", "start_timeout", "name"}
        spec_kw = {k: flags.pop(k) for k in list(flags) if k in spec_keys}
        cls(**flags)  # validate now, in the caller
        return ChildSpec(id, cls, kwargs=flags, type="supervisor", **spec_kw)

    def _child_args(self, spec):
        return self.extra_args + spec.args if self.extra_args else spec.args

    def _init_children(self):
        pass

    # ------------------------------------------------------------ API
    def start_child(self, spec: ChildSpec, *, timeout: float | None = None):
        """Start a child from ``spec``; return its greenlet."""
        if not isinstance(spec, ChildSpec):
            raise ChildSpecError(f"{self}.start_child(): expected a ChildSpec, not {spec!r}")
        ctx = contextvars.copy_context()
        cur = getcurrent()
        if (
            not spec.handshake
            and self._busy == 0
            and self._is_started
            and not self._stopping
            and not self.dead
            and cur is not self
            and cur is not get_hub()
        ):
            return self._do_start_child(spec, ctx)
        return self._call("start_child", spec, ctx, timeout=timeout)

    def _do_start_child(self, spec, ctx):
        if self.max_children is not None and len(self._children) >= self.max_children:
            raise MaxChildrenError(
                f"{self}.start_child(): already {len(self._children)} children, the max_children limit; "
                "raise max_children or stop some children first"
            )
        rec = self._new_rec(spec, ctx)
        try:
            g = self._start_rec(rec)
        except BaseException:
            # Stopped or killed while waiting for the child's handshake: keep
            # the child so the shutdown stops it (none may outlive us).
            if rec.greenlet is not None:
                self._children[rec.greenlet] = rec
            raise
        self._children[g] = rec
        return g

    def _readopt(self, rec):
        self._children.setdefault(rec.greenlet, rec)

    def terminate_child(self, greenlet, *, timeout: float | None = None) -> None:
        """Stop one child by its shutdown protocol and forget it."""
        self._call("terminate_child", greenlet, timeout=timeout)

    def _do_terminate_child(self, g):
        rec = self._children.pop(g, None)
        if rec is not None:
            self._retrying.pop(rec, None)
        if rec is None:
            raise ChildNotFoundError(
                f"terminate_child({g!r}): not a child of {self} (it exited, or belongs to another supervisor)"
            )
        self._stop_greenlets([rec])

    def terminate_all(self, *, timeout: float | None = None) -> int:
        """Stop every child, concurrently; return how many there were."""
        return self._call("terminate_all", timeout=timeout)

    def _do_terminate_all(self):
        recs = list(self._children.values())
        self._children.clear()
        self._retrying.clear()
        self._stop_greenlets(recs)
        return len(recs)

    def which_children(self) -> list[ChildInfo]:
        return [ChildInfo(r.id, r.greenlet, r.spec.type, r.spec.restart) for r in self._children.values()]

    def count_children(self) -> ChildCounts:
        recs = self._children.values()
        n = len(recs)
        sups = sum(1 for r in recs if r.spec.type == "supervisor") if n else 0
        active = sum(1 for r in recs if r.greenlet is not None) if n else 0
        return ChildCounts(n, active, sups, n - sups)

    def describe(self, limit: int = 100) -> dict:
        """A JSON-able snapshot; at most ``limit`` children are listed."""
        d = self._describe_common()
        d["strategy"] = "one_for_one"
        d["max_children"] = self.max_children
        d["count"] = dict(self.count_children()._asdict())
        now = self._clock()
        recs = list(self._children.values())[: max(0, limit)]
        d["children"] = [self._describe_rec(r, now) for r in recs]
        return d

    # ------------------------------------------------------------ exits
    def _on_exit(self, g):
        rec = self._children.get(g)
        if rec is None or rec.greenlet is not g:
            return
        reason = _exit_reason(g)
        kind = classify(reason)
        rec.greenlet = None
        rec.last_exit = reason if reason is not None else "normal"  # formatted by describe()
        if _policy.decide(rec.spec.restart, kind) != _policy.RESTART:
            del self._children[g]  # dynamic children that are not restarted are forgotten
            return
        self._restart_budget(rec, reason)
        self._restart(g, rec)

    def _restart(self, old, rec):
        try:
            new = self._start_rec(rec)
        except StartChildError as e:
            rec.last_exit = f"restart failed: {e.reason!r}"
            self._retrying[rec] = old
            self._schedule_retry(rec)
            return
        del self._children[old]
        rec.restarts += 1
        self._children[new] = rec

    def _do_retry(self, rec):
        old = self._retrying.pop(rec, None)
        if old is None or self._children.get(old) is not rec:
            return  # terminated meanwhile
        self._restart_budget(rec, None)
        self._restart(old, rec)

    # ------------------------------------------------------------ shutdown
    def _shutdown(self):
        recs = list(self._children.values())
        self._stop_greenlets(recs)
        self._children.clear()

    def _kill_everything_now(self):
        for rec in self._children.values():
            g = rec.greenlet
            if g is not None and not g.dead:
                g.kill(ShutdownExit if g.gr_frame is None else KILL, block=False)
