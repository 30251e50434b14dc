"""One shard of an :class:`InstanceManager`: a :class:`Server` owning a slice of
the instances, in memory and in its SQLite file.

Theory of operation.  Every request is a message, handled one at a time in
arrival order, so the in-memory dict needs no lock.  A write changes memory
at once and adds its row to the *open batch*; its reply waits in the batch.
When the mailbox is empty (or the batch is large) and no commit is running,
the open batch becomes the *in-flight* batch and its rows are committed in
one transaction in gevent's threadpool; the commit's outcome comes back as
a message, and only then are the batch's callers answered (group commit).
Writes that arrive meanwhile gather in the next open batch.

Nobody sees a write before it is committed: a read of an instance with a
write in a pending batch is answered after that batch commits, and a fan-out
read while anything is pending after the latest batch commits.  Errors
computed against pending state wait the same way.

A failed commit crashes the shard: its callers get :class:`NotRunningError`
(the commit error is the ``__cause__``), the supervisor restarts it, and the
new incarnation reloads the file, which holds exactly the committed writes.
A stop (not a crash) first commits what is pending and answers its callers.
"""

from __future__ import annotations

import logging
from collections import deque
from time import monotonic
from typing import Any

import gevent
from gevent import GreenletExit, get_hub

from . import _telemetry
from ._errors import CallTimeoutError, NotRunningError
from ._instance_record import DeadlineQueue, Instance, encode_row
from ._instance_spec import (
    TIMEOUT_ACTION,
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidTransitionError,
    StoreError,
)
from ._instance_store import ShardFile, close_shard, commit, load_shard
from ._mailbox import _waker
from ._report import report_event
from ._server import NOREPLY, Server

_T_TRANSITION = _telemetry.slot(_telemetry.INSTANCE_TRANSITION)  # non-empty only while a handler listens

__all__ = ["MAX_BATCH", "AsyncOp", "Failure", "Shard"]

#: Rows committed in one transaction at most; more wait for the next one.
MAX_BATCH = 4096
#: Longest a deadline timer sleeps before re-reading the clock (wall clocks jump).
MAX_TIMER = 60.0
#: Instances examined between yields to the hub in a prune pass.
SCAN_CHUNK = 20_000

_COMMITTED, _TICK, _PRUNE = "committed", "tick", "prune"


class Failure:
    """An error to raise in the caller (a reply is a value, never an exception)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class AsyncOp:
    """A :meth:`InstanceManager.transition_async` whose outcome is owed to ``reply_to``."""

    __slots__ = ("done", "instance_id", "reply_to")

    def __init__(self, reply_to: Any, instance_id: Any):
        self.reply_to = reply_to
        self.instance_id = instance_id
        self.done = False

    def deliver(self, result: Any) -> None:
        """Hand over the outcome once.  Never raises; a failure to deliver is logged."""
        if self.done:
            return
        self.done = True
        if type(result) is Failure:
            result = result.error
        target = self.reply_to
        try:
            if isinstance(target, Server):
                if target.dead:
                    report_event(logging.ERROR, "transition_async(%r): result %r dropped: reply_to %r has exited",
                                 self.instance_id, result, target)
                    return
                target.send(("transition_result", self.instance_id, result))
            else:
                target(self.instance_id, result)
        except Exception as e:  # noqa: BLE001 - user code or a thread's failure, handed on, never swallowed
            report_event(logging.ERROR, "transition_async(%r): reply_to %r raised %s: %s (result was %r)",
                         self.instance_id, target, type(e).__name__, e, result)


def _close_loaded(loaded: Any) -> None:
    # The shard was killed while its file was loading: close what the load opened.
    close_shard(loaded.file)


def _ignore(ok: bool, value: Any) -> None:
    if not ok:
        report_event(logging.WARNING, "closing a shard file failed: %s: %s", type(value).__name__, value)


class _Batch:
    __slots__ = ("asyncs", "done", "ids", "replies", "rows")

    def __init__(self) -> None:
        self.rows: dict = {}      # key -> row, or None for a delete (the last write of a key wins)
        self.ids: list = []
        self.replies: list = []   # (caller, value)
        self.asyncs: list = []    # (AsyncOp, value)
        self.done = False


class Shard(Server):
    """Partition ``index`` of an InstanceManager (started by its supervisor)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The manager's calls (ask()) share one timeout, so their deadlines
        # come in call order: one FIFO of (deadline, caller, msg) and one
        # timer, armed for the oldest, replace a timer per call.
        self._watch: deque = deque()
        self._watch_timer: Any = None
        self._waker = _waker(get_hub())  # wakes the callers of a committed batch from one hub callback

    # ------------------------------------------------------------ the manager's calls
    def ask(self, msg: tuple) -> Any:
        """``self.call(msg, timeout=manager.call_timeout)``, without arming a timer per call.

        The request goes through the mailbox like any call (same order, same
        :class:`NotRunningError` if the shard ends first); on timeout the
        caller gets :class:`CallTimeoutError` and a late reply is dropped,
        as with :meth:`Server.call`.
        """
        caller = self._post_call(msg)
        q = self._watch
        while q and q[0][1].done:
            q.popleft()
        q.append((monotonic() + self._m.call_timeout, caller, msg))
        if self._watch_timer is None:
            self._arm_watch(self._m.call_timeout)
        try:
            if not caller.done:  # caller.wait(None), inlined: park until the hub's waker switches back
                g = caller.greenlet
                w = caller._wake = self._waker
                switch = w.hub.switch
                while not caller.done:
                    caller._parked = g
                    switch()
        finally:
            caller._parked = None
            self._pending.discard(caller)
            if not caller.done:
                caller.set(None)  # killed while waiting: nobody reads it; lets the FIFO drop it
            if not self._pending and self._watch_timer is not None:
                self._watch_timer.close()  # nobody waits: no timer keeps the loop alive
                self._watch_timer = None
                q.clear()
        if caller.error is not None:  # caller.result(), inlined
            raise caller.error
        return caller.value

    def _arm_watch(self, delay: float) -> None:
        t = self._watch_timer = get_hub().loop.timer(delay)
        t.start(self._on_watch)

    def _on_watch(self) -> None:
        # In the hub: fail the calls whose deadline passed, re-arm for the next.
        self._watch_timer.close()
        self._watch_timer = None
        q, pending, now = self._watch, self._pending, monotonic()
        while q:
            deadline, caller, msg = q[0]
            if not caller.done and deadline > now:
                self._arm_watch(deadline - now)
                return
            q.popleft()
            if not caller.done and caller in pending:
                pending.discard(caller)
                caller.set_exception(CallTimeoutError(
                    f"{self}.call({msg!r}): no reply within {self._m.call_timeout} s"))

    def init(self, manager: Any, index: int) -> None:
        m = self._m = manager
        self._index = index
        self._specs = m._specs
        self._clock = m._clock
        self._runner = m._runners[index]
        self._instances: dict = {}
        self._metas: dict = {}    # id -> encoded meta
        self._keys: dict = {}     # id -> encoded id
        self._deadlines = DeadlineQueue()
        self._open = _Batch()
        self._inflight: _Batch | None = None
        self._dirty: dict = {}    # id -> latest batch writing it
        self._async_ops: set = set()
        self._ended = False
        self._broken: StoreError | None = None
        self._file: ShardFile | None = None
        self._timer = self._prune_timer = None
        self._armed: float | None = None
        try:
            loaded = self._runner.call(load_shard, m.store_dir, m.partitions, index, m.durability,
                                       release=_close_loaded)
        except StoreError as e:
            if not m._started_before[index]:
                raise  # the first start fails clearly
            # A restart must not crash-loop into the supervisor's intensity:
            # come up and answer every request with the error.
            self._broken = e
            report_event(logging.ERROR, "%s: shard %d cannot open its store, serving errors: %s", m, index, e)
            m._register(index, self)
            return
        self._file = loaded.file
        self._instances, self._metas, self._keys = loaded.instances, loaded.metas, loaded.keys
        self._deadlines = loaded.deadlines
        now = self._clock()
        self._fire_due(now)
        self._prune(now)
        if m.prune_interval is not None:
            self._next_prune = now + m.prune_interval
            t = self._prune_timer = get_hub().loop.timer(m.prune_interval, m.prune_interval)
            t.start(self.send, _PRUNE)
        m._started_before[index] = True
        m._register(index, self)
        self._after()

    # ------------------------------------------------------------ writes
    def _write(self, inst: Instance) -> None:
        i = inst.id
        self._instances[i] = inst
        key = self._keys[i]
        batch = self._open
        batch.rows[key] = encode_row(key, inst, self._metas[i])
        batch.ids.append(i)
        self._dirty[i] = batch
        if inst.deadline is not None:
            self._deadlines.set(i, inst.deadline)
        elif self._deadlines.live:
            self._deadlines.clear(i)

    def _delete(self, i: Any) -> None:
        del self._instances[i]
        del self._metas[i]
        key = self._keys.pop(i)
        batch = self._open
        batch.rows[key] = None
        batch.ids.append(i)
        self._dirty[i] = batch
        self._deadlines.clear(i)

    def _answer(self, caller: Any, value: Any, i: Any = None, *, wait_all: bool = False) -> Any:
        """Reply now, or after the batch that holds what the reply depends on commits."""
        if wait_all:
            batch = self._open if self._open.rows else self._inflight
        else:
            batch = self._dirty.get(i)
        if batch is None:
            return value
        batch.replies.append((caller, value))
        return NOREPLY

    def _after(self) -> None:
        """After every message: start a commit when the burst is over, re-arm the deadline timer."""
        if self._inflight is None and self._open.rows and (
                not self._mb_q or len(self._open.rows) >= MAX_BATCH):  # (_mb_q: the mailbox)
            self._start_commit()
        if self._deadlines.live or self._armed is not None:
            nd = self._deadlines.next_deadline()
            if nd != self._armed:
                self._arm(nd)

    def _take_open(self) -> tuple[_Batch, list, list]:
        batch, self._open = self._open, _Batch()
        rows = batch.rows
        upserts = [row for row in rows.values() if row is not None]
        deletes = [(key,) for key, row in rows.items() if row is None] if len(upserts) < len(rows) else []
        return batch, upserts, deletes

    def _start_commit(self) -> None:
        batch, upserts, deletes = self._take_open()
        self._inflight = batch
        send = self.send
        self._runner.submit(lambda ok, value: send((_COMMITTED, batch, ok, value)), commit, self._file, upserts, deletes)

    def _complete(self, batch: _Batch) -> None:
        if batch.done:
            return
        batch.done = True
        if self._inflight is batch:
            self._inflight = None
        dirty = self._dirty
        for i in batch.ids:
            if dirty.get(i) is batch:
                del dirty[i]
        pending = self._pending
        for caller, value in batch.replies:  # self.reply(caller, value), inlined
            if caller in pending:
                pending.discard(caller)
                caller.set(value)
        for op, value in batch.asyncs:
            self._async_ops.discard(op)
            op.deliver(value)

    def _commit_failed(self, batch: _Batch, error: BaseException) -> StoreError:
        err = StoreError(
            f"{self._m}: shard {self._index} could not commit {len(batch.rows)} writes to "
            f"{self._file.path if self._file else '?'}: {type(error).__name__}: {error}; "
            "the shard restarts and reloads what was committed"
        )
        err.__cause__ = error
        return err

    # ------------------------------------------------------------ timers
    def _arm(self, deadline: float | None) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self._armed = deadline
        if deadline is None or self._ended:
            return
        delay = min(max(deadline - self._clock(), 0.0), MAX_TIMER)
        t = self._timer = get_hub().loop.timer(delay)
        t.start(self._on_timer)

    def _on_timer(self) -> None:
        # In the hub: only post a message.
        self._armed = None
        self.send(_TICK)

    def _fire_due(self, now: float) -> int:
        fired = 0
        for i in self._deadlines.pop_due(now):
            inst = self._instances.get(i)
            if inst is None or inst.deadline is None or inst.deadline > now:
                continue
            view = self._specs.get(inst.spec)
            try:
                if view is None or view.target is None:
                    raise LookupError(f"spec {inst.spec!r} is not one of this manager's specs")
                new_state = view.target(inst.state, TIMEOUT_ACTION)
            except Exception as e:  # noqa: BLE001 - user code or a thread's failure, handed on, never swallowed
                report_event(logging.WARNING, "%s: instance %r timed out in state %r but %s: %s; its deadline "
                             "is dropped", self._m, i, inst.state, type(e).__name__, e)
                self._write(inst._replace(deadline=None))
                continue
            self._write(inst._replace(state=new_state, updated=now, deadline=view.deadline(new_state, now)))
            fired += 1
            if _T_TRANSITION:
                _telemetry.transition(self, inst, TIMEOUT_ACTION, new_state, now)
        return fired

    def _prune(self, now: float) -> int:
        after = self._m.prune_after
        if after is None:
            return 0
        cutoff = now - after
        victims = self._scan(lambda inst: inst.updated < cutoff)
        for i in victims:
            self._delete(i)
        return len(victims)

    def _scan(self, predicate: Any) -> list:
        """The ids of the instances ``predicate`` selects, yielding to the hub between chunks.

        Safe to yield: only this greenlet changes the instances, and it is
        busy here, so the snapshot stays true.
        """
        items = list(self._instances.items())
        if len(items) <= SCAN_CHUNK:
            return [i for i, inst in items if predicate(inst)]
        victims: list = []
        for start in range(0, len(items), SCAN_CHUNK):
            if start:
                gevent.idle()
            victims.extend(i for i, inst in items[start:start + SCAN_CHUNK] if predicate(inst))
        return victims

    # ------------------------------------------------------------ messages
    def handle_call(self, msg: tuple, caller: Any) -> Any:
        if self._broken is not None:
            return Failure(self._broken_error())
        try:
            return msg[0](self, caller, *msg[1:])
        finally:
            self._after()

    def handle_cast(self, msg: tuple) -> None:
        op: AsyncOp = msg[-1]
        if self._broken is not None:
            self._async_ops.discard(op)
            op.deliver(Failure(self._broken_error()))
            return
        result = self._transition(*msg[1:-1])
        batch = self._dirty.get(msg[1])
        if batch is not None:
            batch.asyncs.append((op, result))
        else:
            self._async_ops.discard(op)
            op.deliver(result)
        self._after()

    def handle_info(self, msg: Any) -> None:
        if msg is _TICK:
            self._fire_due(self._clock())
        elif msg is _PRUNE:
            now = self._clock()
            self._prune(now)
            self._next_prune = now + self._m.prune_interval
        elif type(msg) is tuple and msg[0] is _COMMITTED:
            _, batch, ok, value = msg
            if not ok:
                raise self._commit_failed(batch, value)
            self._complete(batch)
        self._after()

    def _broken_error(self) -> StoreError:
        b = self._broken
        assert b is not None
        err = type(b)(str(b))
        err.__cause__ = b.__cause__
        return err

    def _missing(self, i: Any, op: str) -> Failure:
        return Failure(InstanceNotFoundError(
            f"{op}({i!r}): no instance {i!r} in {self._m} (never created, deleted, or pruned)"
        ))

    def _do_init(self, caller, name, i, key, state, meta, value):
        if i in self._instances:
            old = self._instances[i]
            return self._answer(caller, Failure(InstanceExistsError(
                f"init_instance({name!r}, {i!r}): instance {i!r} already exists ({old.spec} in state "
                f"{old.state!r}); delete_instance({i!r}) first or pick another id"
            )), i)
        now = self._clock()
        inst = Instance(i, name, state, value, now, now, self._specs[name].deadline(state, now))
        self._keys[i] = key
        self._metas[i] = meta
        self._write(inst)
        return self._answer(caller, inst, i)

    def _transition(self, i, action, new_state) -> Any:
        inst = self._instances.get(i)
        if inst is None:
            return self._missing(i, "transition")
        view = self._specs.get(inst.spec)
        if view is None:
            return Failure(InvalidTransitionError(
                f"transition({i!r}, {action!r}, {new_state!r}): instance {i!r} has spec {inst.spec!r}, "
                f"which this manager was not given; pass it in InstanceManager([...])"
            ))
        try:
            ok = view.allows(inst.state, action, new_state)
        except Exception as e:  # noqa: BLE001 - user code or a thread's failure, handed on, never swallowed
            return Failure(e)
        if not ok:
            return Failure(InvalidTransitionError(
                f"transition({i!r}, {action!r}, {new_state!r}): {inst.spec} instance {i!r} is in state "
                f"{inst.state!r}, and from there {inst.spec!r} allows {view.describe_allowed(inst.state)}"
            ))
        now = self._clock()
        new = Instance(i, inst.spec, new_state, inst.meta, inst.created, now,
                       view.deadline(new_state, now) if view.timeouts else None)
        self._write(new)
        if _T_TRANSITION:
            _telemetry.transition(self, inst, action, new_state, now)
        return new

    def _do_transition(self, caller, i, action, new_state):
        result = self._transition(i, action, new_state)
        batch = self._dirty.get(i)  # self._answer(caller, result, i), inlined: the hot path
        if batch is None:
            return result
        batch.replies.append((caller, result))
        return NOREPLY

    def _do_get(self, caller, i):
        inst = self._instances.get(i)
        return self._answer(caller, inst if inst is not None else self._missing(i, "get_instance"), i)

    def _do_delete(self, caller, i):
        if i not in self._instances:
            return self._answer(caller, self._missing(i, "delete_instance"), i)
        self._delete(i)
        return self._answer(caller, None, i)

    def _do_all(self, caller, name):
        values = self._instances.values()
        out = list(values) if name is None else [inst for inst in values if inst.spec == name]
        return self._answer(caller, out, wait_all=True)

    def _do_delete_where(self, caller, predicate):
        try:
            victims = self._scan(predicate)
        except Exception as e:  # noqa: BLE001 - user code or a thread's failure, handed on, never swallowed
            return Failure(e)
        for i in victims:
            self._delete(i)
        return self._answer(caller, len(victims), wait_all=True)

    def _do_tick(self, caller):
        now = self._clock()
        fired = self._fire_due(now)
        pruned = 0
        if self._m.prune_interval is not None and now >= self._next_prune:
            pruned = self._prune(now)
            self._next_prune = now + self._m.prune_interval
        return self._answer(caller, (fired, pruned), wait_all=True)

    # ------------------------------------------------------------ async and end
    def accept_async(self, op: AsyncOp) -> bool:
        """Take responsibility for delivering ``op``; False if this shard is ending."""
        if self._ended or self.dead:
            return False
        self._async_ops.add(op)
        return True

    def _flush(self) -> None:
        """Commit what is pending and answer its callers (on a stop, not a crash)."""
        if self._inflight is not None:
            self._runner.call(len, ())   # queued behind the commit in flight: returns once it is done
            self._complete(self._inflight)  # its message was dropped: the server is stopping
        if self._open.rows:
            batch, upserts, deletes = self._take_open()
            self._runner.call(commit, self._file, upserts, deletes)
            self._complete(batch)

    def terminate(self, reason: BaseException | None) -> None:
        self._ended = True
        for t in (self._timer, self._prune_timer):
            if t is not None:
                t.close()
        self._timer = self._prune_timer = None
        stopped = reason is None or isinstance(reason, GreenletExit)
        self._m._unregister(self._index, self, stopped)
        try:
            if self._file is not None and stopped:
                self._flush()
        finally:
            ops, self._async_ops = self._async_ops, set()
            for op in ops:
                err = NotRunningError(
                    f"transition_async({op.instance_id!r}): shard {self._index} of {self._m} stopped "
                    "before the transition was committed; it may or may not have happened: "
                    "read the instance to know"
                )
                err.__cause__ = reason if isinstance(reason, BaseException) else None
                op.deliver(err)
            if self._file is not None:
                self._runner.submit(_ignore, close_shard, self._file)
                self._file = None
