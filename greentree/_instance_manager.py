"""InstanceManager: many durable state-machine instances, sharded over supervised servers.

The manager object holds the configuration, the routing table and one
:class:`~greentree._instance_store.SerialRunner` per shard index; the shards
themselves are :class:`~greentree._instance_shard.Shard` servers under a
:class:`PartitionSupervisor`, started either by :meth:`InstanceManager.start`
(or ``with``) or by a parent supervisor through
:meth:`InstanceManager.child_spec`.  Each shard registers itself in the
routing table when its ``init`` has loaded its file, and leaves it when it
ends, so a call finds the current incarnation and waits (up to its timeout)
while a crashed shard restarts.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

from gevent.event import Event

from ._errors import ArgumentError, NotRunningError, StartChildError
from ._instance_record import Instance, check_id, encode_key, encode_meta
from ._instance_shard import AsyncOp, Failure, Shard
from ._instance_spec import InstanceValueError, StoreError, check_specs, check_state
from ._instance_store import SerialRunner
from ._partition import PartitionSupervisor, _route, partition_for
from ._process import Lifecycle
from ._server import Server
from ._spec import ChildSpec

__all__ = ["InstanceManager"]

DURABILITY = ("full", "normal")


def _seconds(value: Any, what: str, owner: str, *, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        extra = " or None" if allow_none else ""
        raise ArgumentError(f"{owner}: {what} must be a number of seconds > 0{extra}, not {value!r}")
    return float(value)


_INT_MIN, _INT_END = -(1 << 63), 1 << 64  # the ints msgpack stores


class _ShardSupervisor(PartitionSupervisor):
    """The PartitionSupervisor of one InstanceManager's shards."""

    def __init__(self, manager: InstanceManager):
        super().__init__(
            ChildSpec("shard", Shard, manager, shutdown=manager.shutdown, start_timeout=manager.start_timeout),
            partitions=manager.partitions, name=manager.name,
            max_restarts=manager.max_restarts, max_seconds=manager.max_seconds,
        )
        manager._sup = self
        for up in manager._up:
            up.clear()  # a new tree: wait for its shards


class InstanceManager(Lifecycle):
    """Many small durable state machines, routed by id to ``partitions`` shards.

    >>> import tempfile
    >>> from greentree import InstanceManager, StateMachine
    >>> order = StateMachine("order", initial="new",
    ...                      transitions={("new", "pay"): "paid", ("paid", "ship"): "shipped"})
    >>> with tempfile.TemporaryDirectory() as d, InstanceManager([order], partitions=2, store_dir=d) as im:
    ...     im.init_instance("order", "o-1", meta={"tenant": 7}).state
    ...     im.transition("o-1", "pay", "paid").state
    ...     [i.id for i in im.all_instances()]
    'new'
    'paid'
    ['o-1']

    Each shard is a :class:`Server` under a :class:`PartitionSupervisor`;
    instance ``id`` lives in shard ``partition_for(id, partitions)``.  A shard
    keeps its instances in memory and in its own SQLite file in ``store_dir``
    (WAL mode); writes are committed in batches in gevent's threadpool, and a
    call returns only once its write is committed: ``durability="full"``
    (fsync per commit) survives power loss, ``"normal"`` survives a crash of
    the process.  A crashed shard is restarted and reloads its file.

    A state with a timeout (``StateMachine(timeouts=...)``) gets a wall-clock
    deadline stored with the instance; when it passes, the action
    ``"timeout"`` is applied, also after a restart (overdue ones fire when
    the shard starts).  Instances not updated for ``prune_after`` seconds are
    deleted when a shard starts and every ``prune_interval`` seconds (None:
    at start only; ``prune_after=None``: never).  ``clock`` (default
    :func:`time.time`) is read for every timestamp; tests pass a fake one and
    call :meth:`tick` after moving it.

    Start it with ``with im:``, :meth:`start` + :meth:`wait_started`, or put
    :meth:`child_spec` in a supervisor.  One manager runs one tree at a time,
    and a store directory is locked by the manager using it.
    """

    def __init__(
        self,
        specs: Any,
        partitions: int = 8,
        store_dir: str | os.PathLike = "./state",
        durability: str = "full",
        prune_interval: float | None = 6 * 3600.0,
        prune_after: float | None = 30 * 86400.0,
        clock: Callable[[], float] | None = None,
        *,
        name: Any = "instances",
        call_timeout: float = 30.0,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        shutdown: float = 30.0,
        start_timeout: float = 60.0,
    ):
        owner = f"InstanceManager({name!r})"
        self._specs = check_specs(specs, owner)
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ArgumentError(f"{owner}: partitions must be a positive int, not {partitions!r}")
        if not isinstance(store_dir, (str, os.PathLike)):
            raise ArgumentError(f"{owner}: store_dir must be a path, not {store_dir!r}")
        if durability not in DURABILITY:
            raise ArgumentError(
                f"{owner}: durability must be 'full' (survives power loss) or 'normal' (survives a "
                f"process crash), not {durability!r}"
            )
        if clock is not None and not callable(clock):
            raise ArgumentError(f"{owner}: clock must be a function returning wall-clock seconds, not {clock!r}")
        self.name = name
        self.partitions = partitions
        self.store_dir = os.fspath(store_dir)
        self.durability = durability
        self.prune_interval = _seconds(prune_interval, "prune_interval", owner, allow_none=True)
        self.prune_after = _seconds(prune_after, "prune_after", owner, allow_none=True)
        self.call_timeout = _seconds(call_timeout, "call_timeout", owner, allow_none=False)
        self.shutdown = _seconds(shutdown, "shutdown", owner, allow_none=False)
        self.start_timeout = _seconds(start_timeout, "start_timeout", owner, allow_none=False)
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._clock: Callable[[], float] = clock if clock is not None else time.time
        self._shards: list[Shard | None] = [None] * partitions
        self._up = [Event() for _ in range(partitions)]
        self._runners = [SerialRunner() for _ in range(partitions)]
        self._started_before = [False] * partitions
        self._sup: PartitionSupervisor | None = None   # the supervisor running the shards now
        self._own: PartitionSupervisor | None = None   # the one start() made
        _ShardSupervisor(self)  # check the supervisor flags now, in the caller
        self._sup = None

    def __repr__(self) -> str:
        return f"<InstanceManager {self.name!r} ({self.partitions} shards in {self.store_dir})>"

    __str__ = __repr__

    @property
    def supervisor(self) -> PartitionSupervisor | None:
        """The :class:`PartitionSupervisor` running the shards now (None before a start)."""
        return self._sup

    @property
    def specs(self) -> dict:
        """The specs by name."""
        return {name: view.spec for name, view in self._specs.items()}

    # ------------------------------------------------------------ lifecycle
    def child_spec(self, id: Any = "instances", **spec_kw: Any) -> ChildSpec:
        """A :class:`ChildSpec` that runs this manager's shards under a parent supervisor.

        ``spec_kw`` goes to the ChildSpec (``restart``, ``shutdown``, ...).
        """
        return ChildSpec(id, _ShardSupervisor, self, type="supervisor", **spec_kw)

    def start(self) -> None:
        """Start the shards under a supervisor of the manager's own."""
        if self.started:
            raise ArgumentError(f"{self}.start(): already started; stop() it first")
        self._started_before = [False] * self.partitions  # a damaged store fails this start clearly
        self._own = _ShardSupervisor(self)
        self._own.start()

    def wait_started(self, timeout: float | None = None) -> InstanceManager:
        """Wait until every shard has loaded its file.

        A store that cannot be opened raises its :class:`StoreError`
        (:class:`StoreMismatchError`, :class:`StoreCorruptError`) here.
        """
        if self._own is not None:
            try:
                self._own.wait_started(timeout)
            except StartChildError as e:
                cause = e.reason if e.reason is not None else e.__cause__
                if isinstance(cause, StoreError):
                    raise cause from None
                raise
        else:
            for index in range(self.partitions):
                if not self._up[index].wait(timeout):
                    raise TimeoutError(f"{self}: shard {index} not started within {timeout} s")
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the shards (each commits what is pending first) and wait until their files are closed."""
        own = self._own
        if own is not None:
            own.stop(timeout)
        for runner in self._runners:
            runner.wait_idle(timeout)

    @property
    def started(self) -> bool:
        """True while the supervisor :meth:`start` made is running."""
        return self._own is not None and not self._own.dead

    # ------------------------------------------------------------ routing
    def _register(self, index: int, shard: Shard) -> None:
        self._shards[index] = shard
        self._up[index].set()

    def _unregister(self, index: int, shard: Shard, stopped: bool) -> None:
        if self._shards[index] is shard:
            self._shards[index] = None
            if stopped:
                self._up[index].set()    # callers waiting for a restart learn at once that none comes
            else:
                self._up[index].clear()  # crashed: callers wait (up to call_timeout) for the restart

    def partition_for(self, instance_id: Any) -> int:
        """The shard index of ``instance_id`` (:func:`greentree.partition_for`)."""
        return partition_for(instance_id, self.partitions)

    def _shard(self, instance_id: Any, op: str, wait: bool = True) -> Shard:
        index = _route(instance_id, self.partitions)  # partition_for(), minus re-checking the count
        shard = self._shards[index]
        if shard is None and wait and self._sup is not None and not self._sup.dead and not self._up[index].ready():
            self._up[index].wait(self.call_timeout)
            shard = self._shards[index]
        if shard is None:
            raise NotRunningError(
                f"{self}.{op}({instance_id!r}): shard {index} is not running (start the manager with "
                "`with im:`, start(), or its child_spec in a supervisor)"
            )
        return shard

    def _call(self, instance_id: Any, op: str, msg: tuple) -> Any:
        # The route of _shard(), inlined for the running case (ints: abs(id) % partitions).
        partitions = self.partitions
        shard = self._shards[abs(instance_id) % partitions if type(instance_id) is int
                             else _route(instance_id, partitions)]
        if shard is None:
            shard = self._shard(instance_id, op)
        try:
            result = shard.ask(msg)
        except NotRunningError as e:
            raise NotRunningError(
                f"{self}.{op}({instance_id!r}): its shard ended before answering ({e}); a write may or "
                "may not have been committed: read the instance to know"
            ) from e.__cause__
        if type(result) is Failure:
            raise result.error
        return result

    def _fan_out(self, op: str, msg: tuple) -> list:
        sup = self._sup
        if sup is None or sup.dead:
            raise NotRunningError(f"{self}.{op}(): not running")
        for index, up in enumerate(self._up):
            if not up.wait(self.call_timeout):
                raise NotRunningError(f"{self}.{op}(): shard {index} did not come up within {self.call_timeout} s")
        timeout = self.call_timeout

        def ask(shard: Any, index: int) -> Any:
            result = shard.call(msg, timeout=timeout)
            if type(result) is Failure:
                raise result.error
            return result

        return sup.map_partitions(ask, timeout=timeout)

    # ------------------------------------------------------------ the API
    def _view(self, spec: Any, op: str):
        name = spec if isinstance(spec, str) else getattr(spec, "name", None)
        view = self._specs.get(name) if isinstance(name, str) else None
        if view is None:
            raise InstanceValueError(
                f"{self}.{op}(): unknown spec {spec!r}; this manager knows {sorted(self._specs)}"
            )
        return view

    def init_instance(self, spec: Any, instance_id: Any, meta: Any = None, *, state: Any = None) -> Instance:
        """Create instance ``instance_id`` of ``spec`` (a name or a spec) in its initial state.

        ``state`` starts it elsewhere.  Raises :class:`InstanceExistsError` if
        the id is taken, :class:`InstanceValueError` for values that cannot be
        stored.  Returns the committed :class:`Instance`.
        """
        view = self._view(spec, "init_instance")
        key = encode_key(instance_id)
        state = view.initial if state is None else check_state(state, f"init_instance({instance_id!r}): state")
        meta_bytes, meta_value = encode_meta(meta, instance_id)
        return self._call(instance_id, "init_instance",
                          (Shard._do_init, view.name, instance_id, key, state, meta_bytes, meta_value))

    def _check_transition(self, instance_id: Any, action: Any, new_state: Any) -> None:
        check_id(instance_id)
        if type(action) is not str:
            check_state(action, f"transition({instance_id!r}): action")
        if type(new_state) is not str:
            check_state(new_state, f"transition({instance_id!r}): new state")

    def transition(self, instance_id: Any, action: Any, new_state: Any) -> Instance:
        """Apply ``action``, moving the instance to ``new_state``; return the committed :class:`Instance`.

        The spec must allow ``(state, action) -> new_state``, otherwise
        :class:`InvalidTransitionError` and nothing changes.
        """
        # str, or ints that fit in 64 bits: valid ids and states, nothing more to check.
        ti, ts = type(instance_id), type(new_state)
        if not ((ti is str or (ti is int and _INT_MIN <= instance_id < _INT_END)) and type(action) is str
                and (ts is str or (ts is int and _INT_MIN <= new_state < _INT_END))):
            self._check_transition(instance_id, action, new_state)
        return self._call(instance_id, "transition", (Shard._do_transition, instance_id, action, new_state))

    def transition_async(self, instance_id: Any, action: Any, new_state: Any, reply_to: Any) -> None:
        """Start a transition without waiting; its outcome goes to ``reply_to``.

        ``reply_to`` is a function, called ``reply_to(instance_id, result)``
        in the shard's greenlet (keep it quick, never block), or a
        :class:`Server`, sent ``("transition_result", instance_id, result)``
        to its ``handle_info`` (as any message, it is lost if that server
        stops before handling it).  ``result`` is the committed
        :class:`Instance`, or the exception the call would have raised.

        Exactly one outcome is delivered once this returns, after the commit:
        if the shard stops first, a :class:`NotRunningError`.  Errors found
        at the call (bad values, shard not running) raise here instead.  A
        ``reply_to`` that raises, or a Server that has exited, is logged at
        ERROR on the ``greentree`` logger with the result.
        """
        if not isinstance(reply_to, Server) and not callable(reply_to):
            raise InstanceValueError(
                f"transition_async({instance_id!r}): reply_to must be a function (instance_id, result) or "
                f"a greentree.Server, not {reply_to!r}"
            )
        self._check_transition(instance_id, action, new_state)
        shard = self._shard(instance_id, "transition_async", wait=False)
        op = AsyncOp(reply_to, instance_id)
        if not shard.accept_async(op):
            raise NotRunningError(f"{self}.transition_async({instance_id!r}): its shard is stopping")
        shard.cast((None, instance_id, action, new_state, op))

    def get_instance(self, instance_id: Any) -> Instance:
        """The instance, as last committed; :class:`InstanceNotFoundError` if there is none."""
        check_id(instance_id)
        return self._call(instance_id, "get_instance", (Shard._do_get, instance_id))

    def all_instances(self, spec: Any = None) -> list[Instance]:
        """Every instance (of ``spec``, a name or a spec, if given), from every shard at once.

        Shards answer concurrently; the lists are concatenated in shard
        order.  First error wins: if one shard fails, the other calls are
        abandoned and that error is raised.
        """
        name = None if spec is None else self._view(spec, "all_instances").name
        return [inst for part in self._fan_out("all_instances", (Shard._do_all, name)) for inst in part]

    def delete_instance(self, instance_id: Any) -> None:
        """Delete the instance; :class:`InstanceNotFoundError` if there is none."""
        check_id(instance_id)
        self._call(instance_id, "delete_instance", (Shard._do_delete, instance_id))

    def delete_instances(self, predicate: Callable[[Instance], bool]) -> int:
        """Delete every instance for which ``predicate(instance)`` is true; return how many.

        The predicate runs in each shard's greenlet.  If it raises in a shard,
        that shard deletes nothing and the error is raised here (first error
        wins), while other shards may already have deleted their matches:
        the deletion is atomic per shard, not across shards.
        """
        if not callable(predicate):
            raise InstanceValueError(f"{self}.delete_instances(): predicate must be callable, not {predicate!r}")
        return sum(self._fan_out("delete_instances", (Shard._do_delete_where, predicate)))

    def tick(self) -> tuple[int, int]:
        """Re-read the clock in every shard now: fire due timeouts, prune if due.

        Returns ``(timeouts fired, instances pruned)``.  Shards do this on
        their own (deadline timers, every ``prune_interval``); call it after
        moving a fake clock, or after the wall clock jumped.
        """
        results = self._fan_out("tick", (Shard._do_tick,))
        return sum(r[0] for r in results), sum(r[1] for r in results)
