"""PartitionSupervisor: N copies of one child, and a stable key -> copy routing.

The routing must give the same partition for the same key in every process
and every run, so a key can be routed by another process, a restarted one, or
a log reader.  Python's ``hash()`` is salted per process for ``str`` and
``bytes`` (PYTHONHASHSEED), so it is never used.  The rule:

* an ``int`` (not a ``bool``) goes to ``abs(key) % partitions``;
* anything else goes to ``zlib.crc32(msgpack.packb(key, use_bin_type=True)) % partitions``.

msgpack encodes a ``tuple`` and a ``list`` alike (both are arrays), ``str`` as
UTF-8 and ``bytes`` as binary, ``float`` as a float64, and a ``dict`` in its
insertion order (two equal dicts built in different orders can land on
different partitions: use tuples for compound keys).  ``1.0`` and ``1`` are
equal in Python but route differently.  Both rules are easy to reproduce in
any language with CRC-32 and msgpack.
"""

from __future__ import annotations

import contextvars
import zlib
from collections.abc import Callable
from typing import Any

import gevent
import msgpack
from gevent import get_hub, getcurrent

from ._children import RESTARTING
from ._errors import (
    BlockingCallError,
    ChildRestartingError,
    ChildSpecError,
    GreentreeError,
    NotRunningError,
)
from ._exits import KILL
from ._policy import Exit
from ._process import RUNNING as P_RUNNING
from ._process import STARTING
from ._spec import ChildSpec
from ._supervisor import Supervisor
from ._task import TaskCancelledError, TaskTimeoutError

__all__ = ["PartitionSupervisor", "PartitionKeyError", "partition_for"]

#: Seconds the other calls of a failed :meth:`PartitionSupervisor.map_partitions` get to exit.
MAP_KILL_GRACE = 1.0


class PartitionKeyError(GreentreeError, TypeError):
    """A key cannot be routed: msgpack cannot encode it (an ``object()``, a
    ``set``, an int past 64 bits inside a tuple, a str with lone surrogates).
    The caller's fault: use str, bytes, int, float, None, or tuples of them."""


def _check_partitions(partitions, owner) -> int:
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ChildSpecError(f"{owner}: partitions must be a positive int, not {partitions!r}")
    return partitions


def partition_for(key: Any, partitions: int) -> int:
    """The partition, in ``range(partitions)``, that ``key`` is routed to.

    >>> partition_for(10, 4), partition_for(-10, 4)
    (2, 2)
    >>> partition_for("user-42", 8), partition_for(("tenant", 7), 8)
    (1, 5)
    >>> partition_for(("tenant", 7), 8) == partition_for(["tenant", 7], 8)
    True

    Deterministic across processes and runs (see the module docs for the
    exact rule); never uses Python's salted ``hash()``.
    """
    _check_partitions(partitions, "partition_for()")
    return _route(key, partitions)


# One Packer: packb() builds a new one per call.  Safe across threads and
# greenlets: pack() runs in C without releasing the GIL, calls no Python code
# (no ``default=``), and resets its buffer when it raises.
_pack = msgpack.Packer(use_bin_type=True).pack


def _route(key, partitions: int) -> int:
    if type(key) is int or (isinstance(key, int) and not isinstance(key, bool)):
        return abs(key) % partitions
    try:
        data = _pack(key)
    except (TypeError, ValueError, OverflowError) as e:
        raise PartitionKeyError(
            f"partition_for({key!r}): the key cannot be routed because msgpack cannot encode it "
            f"({type(e).__name__}: {e}); use str, bytes, int, float, None or tuples of them"
        ) from None
    return zlib.crc32(data) % partitions


def _append_index(args: tuple, index: int) -> tuple:
    return (*args, index)


class PartitionSupervisor(Supervisor):
    """A supervisor that runs ``partitions`` copies of one child and routes keys to them.

    >>> from greentree import ChildSpec, PartitionSupervisor
    >>> import gevent
    >>> def shard(index):
    ...     gevent.sleep(3600)
    >>> with PartitionSupervisor(ChildSpec("shard", shard), partitions=4, name="shards") as sup:
    ...     [info.id for info in sup.which_children()], sup.partition_for("user-42")
    ([0, 1, 2, 3], 1)

    Child ``i`` (its id is the int ``i``) is started from ``child_spec`` with
    ``i`` appended to its positional args: ``start(*args, i, **kwargs)``.
    ``with_arguments=fn(args, index) -> args`` replaces that rule (Elixir's
    ``:with_arguments``), e.g. ``lambda args, i: (i, *args)`` to put it first.
    ``partitions`` must be a positive int.  Strategy is one_for_one:
    a crashed partition is restarted alone, and ``max_restarts`` within
    ``max_seconds`` counts the restarts of all partitions together.

    :meth:`partition_for` is a stable hash (see :func:`partition_for`),
    :meth:`which_partition` returns the greenlet running a key's partition now
    (a new one after a restart), and :meth:`map_partitions` runs a call on
    every partition concurrently, first error wins.

    What partitions buy: a crash, a slow call or a full mailbox stays in one
    partition, and a crash storm there only restarts that child.  What they
    do not buy: greenlets in one gevent thread share one CPU core, so N
    partitions add no CPU parallelism; for that, run processes.
    """

    _kind = "partition_supervisor"

    def __init__(
        self,
        child_spec: ChildSpec,
        *,
        partitions: int,
        name: Any = None,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        with_arguments: Callable[[tuple, int], Any] | None = None,
        clock=None,
    ):
        label = f"PartitionSupervisor({name!r})" if name is not None else "PartitionSupervisor"
        if not isinstance(child_spec, ChildSpec):
            raise ChildSpecError(f"{label}: child_spec must be a ChildSpec, not {child_spec!r}")
        _check_partitions(partitions, label)
        if child_spec.register is not None:
            raise ChildSpecError(
                f"{label}: child_spec {child_spec.id!r} registers a name ({child_spec.register!r}); its "
                f"{partitions} copies would fight for it. Drop the name and find a partition with "
                "which_partition(key), or give each partition its own name in with_arguments"
            )
        if with_arguments is None:
            with_arguments = _append_index
        elif not callable(with_arguments):
            raise ChildSpecError(f"{label}: with_arguments must be a function (args, index) -> args, not {with_arguments!r}")
        specs = []
        for i in range(partitions):
            try:
                args = with_arguments(child_spec.args, i)
            except Exception as e:
                raise ChildSpecError(
                    f"{label}: with_arguments({child_spec.args!r}, {i}) raised {type(e).__name__}: {e}"
                ) from e
            if not isinstance(args, (tuple, list)):
                raise ChildSpecError(
                    f"{label}: with_arguments({child_spec.args!r}, {i}) must return a tuple of args, not {args!r}"
                )
            specs.append(child_spec.replace(id=i, args=tuple(args)))
        super().__init__(
            specs, strategy="one_for_one", max_restarts=max_restarts, max_seconds=max_seconds,
            name=name, clock=clock,
        )
        self.partitions = partitions
        #: The spec every partition is started from (before its index is added).
        self.partition_spec = child_spec

    @classmethod
    def child_spec(cls, id: Any, child_spec: ChildSpec, *, partitions: int, **flags: Any) -> ChildSpec:  # type: ignore[override]
        """A :class:`ChildSpec` that runs a PartitionSupervisor as a child (flags checked now).

        >>> from greentree import ChildSpec, PartitionSupervisor
        >>> spec = PartitionSupervisor.child_spec("shards", ChildSpec("s", print), partitions=2)
        >>> spec.type, spec.shutdown
        ('supervisor', None)
        """
        spec_keys = {"restart", "shutdown", "significant", "start_timeout", "register"}
        spec_kw = {k: flags.pop(k) for k in list(flags) if k in spec_keys}
        cls(child_spec, partitions=partitions, **flags)  # validate in the caller, now
        flags["partitions"] = partitions
        return ChildSpec(id, cls, child_spec, kwargs=flags, type="supervisor", **spec_kw)

    # ------------------------------------------------------------ routing
    def partition_for(self, key: Any) -> int:
        """The partition index for ``key`` (see :func:`partition_for`); works before start."""
        return _route(key, self.partitions)

    def which_partition(self, key: Any):
        """The greenlet running ``key``'s partition now.

        After a partition crashed and was restarted this is the new greenlet.
        Raises :class:`NotRunningError` if the supervisor, or that partition,
        is not running, and :class:`ChildRestartingError` while its restart is
        being retried.
        """
        index = _route(key, self.partitions)
        return self._partition_greenlet("which_partition", index, key)

    def _partition_greenlet(self, op, index, key=None):
        if self._pr_state not in (P_RUNNING, STARTING) or self._forked:
            raise self._not_running(op)
        rec = self._children.get(index)
        where = f"{self}.{op}({key!r}): partition {index}" if op == "which_partition" else f"{self}.{op}(): partition {index}"
        if rec is None:
            raise NotRunningError(f"{where} is not running: its temporary child exited and is not restarted")
        g = rec.child
        if g is None:
            if rec.state == RESTARTING:
                raise ChildRestartingError(f"{where} failed to restart and is being retried; try again shortly")
            raise NotRunningError(
                f"{where} is stopped (last exit: {_last_exit(rec)}); restart_child({index}) starts it again"
            )
        return g

    def _describe_kind(self, d: dict, supervisors: int) -> None:
        super()._describe_kind(d, supervisors)
        d["partitions"] = self.partitions

    def start_child(self, spec, *, timeout=None):
        """Not supported: a PartitionSupervisor has exactly ``partitions`` children."""
        raise ChildSpecError(
            f"{self}.start_child(): a PartitionSupervisor runs exactly {self.partitions} copies of "
            "one child; put other children in a Supervisor next to it"
        )

    def map_partitions(self, fn: Callable[[Any, int], Any], timeout: float | None = None) -> list:
        """Run ``fn(greenlet, index)`` for every partition concurrently; return the results in partition order.

        >>> from greentree import ChildSpec, PartitionSupervisor
        >>> import gevent
        >>> with PartitionSupervisor(ChildSpec("s", gevent.sleep, 3600), partitions=3) as sup:
        ...     sup.map_partitions(lambda g, i: i * 10, timeout=5)
        [0, 10, 20]

        Each call runs in its own greenlet (with a copy of the caller's
        ``contextvars``), so a fan-out query costs the slowest partition, not
        the sum.  First error wins: when one call raises, the others are
        killed (``GreenletExit``, then greentree's kill, a short grace) and
        that error is raised here.  If the calls have not all returned within
        ``timeout`` seconds, they are killed the same way and
        :class:`TaskTimeoutError` is raised.  If the caller is killed while
        it waits, the calls are killed too.  A partition that is not running
        raises at once, before any call starts.
        """
        if not callable(fn):
            raise TypeError(f"{self}.map_partitions(): fn must be callable, not {fn!r}")
        cur = getcurrent()
        if cur is get_hub() or cur is self._mb_drainer:
            raise BlockingCallError(
                f"{self}.map_partitions() called from the hub or the supervisor's own greenlet: it "
                "must wait for other greenlets; call it from another greenlet"
            )
        targets = [self._partition_greenlet("map_partitions", i) for i in range(self.partitions)]
        calls = []
        for i, g in enumerate(targets):
            call = gevent.Greenlet(_map_call, fn, g, i)
            call.gr_context = contextvars.copy_context()
            calls.append(call)
        try:
            for call in calls:
                call.start()
            with gevent.iwait(calls, timeout=timeout) as ended:
                for call in ended:
                    ok, value = call.value
                    if not ok:
                        if isinstance(value, gevent.GreenletExit):
                            value = TaskCancelledError(
                                f"{self}.map_partitions(): the call for partition {calls.index(call)} "
                                f"was killed by someone else ({type(value).__name__})"
                            )
                        try:
                            raise value
                        finally:
                            value = None
            late = [i for i, call in enumerate(calls) if not call.dead]
            if late:
                raise TaskTimeoutError(
                    f"{self}.map_partitions(): partitions {late} did not answer within {timeout} s; "
                    "their calls were killed"
                )
            return [call.value[1] for call in calls]
        finally:
            _kill_calls(calls)


def _map_call(fn, greenlet, index):
    # Never let an error reach the hub: the caller reads it from the value.
    try:
        return True, fn(greenlet, index)
    except BaseException as e:  # noqa: B902 - includes GreenletExit when killed
        return False, e


def _kill_calls(calls) -> None:
    live = [c for c in calls if not c.dead]
    if not live:
        return
    gevent.killall(live, block=True, timeout=MAP_KILL_GRACE)
    live = [c for c in live if not c.dead]
    if live:
        gevent.killall(live, KILL, block=True, timeout=MAP_KILL_GRACE)


def _last_exit(rec) -> str:
    last = rec.last_exit
    return last.describe() if isinstance(last, Exit) else str(last)
