"""TaskSupervisor: supervised one-off tasks, awaited or not (Elixir's Task.Supervisor).

A task is a temporary child of a :class:`TaskSupervisor`: it runs once, is
never restarted, and is stopped with its supervisor.  Its failure is caught in
its own greenlet and reported once through the ``greentree`` logger, so it
never reaches the gevent hub and never touches the greenlet that started it.
The caller sees the failure only if it asks, through :meth:`Task.get` or
:func:`await_many`.  Tasks are "nolink" in Elixir's sense: a caller that dies
does not take its tasks with it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import gevent
from gevent import get_hub, getcurrent

from ._dynamic import DynamicSupervisor
from ._errors import BlockingCallError, ChildSpecError, GreentreeError, GreentreeTimeoutError, NotRunningError
from ._exits import SHUTDOWN_TYPES
from ._spec import ChildSpec, Restart, check_seconds

__all__ = ["TaskSupervisor", "Task", "await_many", "TaskTimeoutError", "TaskCancelledError"]

T = TypeVar("T")


class TaskTimeoutError(GreentreeTimeoutError):
    """A task (or a group of tasks) did not finish within the time the caller gave it.

    Raised by :meth:`Task.get`, :func:`await_many` and
    :meth:`PartitionSupervisor.map_partitions`.  The caller's timeout was too
    short or the task is stuck; what happened to the task is documented by the
    function that raised.
    """


class TaskCancelledError(GreentreeError):
    """The task was stopped before it returned: :meth:`Task.cancel`, a failed
    :func:`await_many`, or its :class:`TaskSupervisor` shutting down."""


def _label(fn) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


class Task(Generic[T]):
    """A handle on one task started by :meth:`TaskSupervisor.async_nolink`.

    >>> from greentree import TaskSupervisor
    >>> with TaskSupervisor(name="demo") as tasks:
    ...     task = tasks.async_nolink(sum, [1, 2, 3])
    ...     task.get(timeout=5), task.done()
    (6, True)

    ``greenlet`` is the task's greenlet (a :class:`greentree.Greenlet`).
    """

    __slots__ = ("greenlet", "supervisor")

    def __init__(self, greenlet, supervisor: TaskSupervisor):
        self.greenlet = greenlet
        self.supervisor = supervisor

    def __repr__(self) -> str:
        g = self.greenlet
        if not g.dead:
            state = "running"
        elif self._failed():
            state = "cancelled" if self._cancelled() else f"failed: {type(g.exception).__name__}"
        else:
            state = "done"
        rec = g._gt_rec
        label = f" {rec.id}" if rec is not None else ""
        return f"<Task{label} of {self.supervisor} ({state})>"

    def done(self) -> bool:
        """True once the task has ended, whatever the way (returned, failed, cancelled)."""
        return self.greenlet.dead

    def get(self, timeout: float | None = None) -> T:
        """Wait for the task and return its result, or raise its exception.

        :class:`TaskTimeoutError` if it has not ended within ``timeout``
        seconds: the task keeps running (Elixir's ``Task.yield``; call
        :meth:`cancel` to stop it).  :class:`TaskCancelledError` if it was
        stopped before it returned.  The task's own exception is re-raised here,
        in the caller, only because the caller asked: it was already reported
        once, in the task, through the ``greentree`` logger.
        """
        g = self.greenlet
        if not g.dead:
            cur = getcurrent()
            if cur is g:
                raise BlockingCallError(f"{self!r}.get() called from the task itself: it would wait for itself forever")
            if cur is get_hub():
                raise BlockingCallError(
                    f"{self!r}.get() called from the gevent hub (a rawlink callback or timer): "
                    "the hub must never block; spawn a greenlet to wait for the task"
                )
            g.join(timeout)
            if not g.dead:
                raise TaskTimeoutError(
                    f"{self!r}.get(): the task did not finish within {timeout} s; it is still running "
                    "(cancel() stops it)"
                )
        return self._outcome()

    def cancel(self) -> bool:
        """Stop the task through its supervisor's shutdown protocol; wait until it has stopped.

        Returns True if it was running and has been stopped, False if it had
        already ended.  A task running :meth:`TaskSupervisor.run_in_thread`
        only stops *waiting*: a thread cannot be killed, it runs to completion
        and its result is dropped.
        """
        if self.greenlet.dead:
            return False
        return _cancel([self]) > 0

    # -- reading the outcome of a dead task ------------------------------
    def _cancelled(self) -> bool:
        g = self.greenlet
        return isinstance(g.exception, SHUTDOWN_TYPES) or isinstance(g.value, SHUTDOWN_TYPES)

    def _failed(self) -> bool:
        g = self.greenlet
        return g.exception is not None or isinstance(g.value, SHUTDOWN_TYPES)

    def _outcome(self) -> Any:
        g = self.greenlet
        if self._cancelled():
            reason = g.exception if g.exception is not None else g.value
            raise TaskCancelledError(
                f"{self!r}: the task was stopped before it returned ({type(reason).__name__}: "
                "cancelled, or its supervisor shut down)"
            )
        exc = g.exception
        if exc is not None:
            raise exc
        return g.value


def _cancel(tasks: Iterable[Task]) -> int:
    """Stop ``tasks`` (grouped by supervisor, concurrently within each); return how many ran."""
    by_sup: dict = {}
    for t in tasks:
        if not t.greenlet.dead:
            by_sup.setdefault(t.supervisor, []).append(t.greenlet)
    stopped = 0
    for sup, greenlets in by_sup.items():
        try:
            stopped += sup._call("cancel_tasks", sup._do_cancel_tasks, (greenlets,), may_block=True, timeout=None)
        except NotRunningError:
            pass  # the supervisor is gone or stopping: it stops its tasks itself
    return stopped


def await_many(tasks: Iterable[Task], timeout: float | None = None) -> list:
    """Wait for every task; return their results in the order given.

    >>> from greentree import TaskSupervisor, await_many
    >>> with TaskSupervisor() as sup:
    ...     await_many([sup.async_nolink(pow, 2, n) for n in range(5)], timeout=5)
    [1, 2, 4, 8, 16]

    First error wins: as soon as one task fails (or was cancelled), every
    task in the list still running is cancelled through its supervisor, and
    :func:`await_many` raises that task's exception (or
    :class:`TaskCancelledError`) once they have stopped.  If they have not all
    ended within ``timeout`` seconds (one deadline for the whole list), the
    unfinished ones are cancelled the same way and :class:`TaskTimeoutError`
    is raised.  This is Elixir's ``Task.await_many``, where the caller's exit
    takes its linked tasks with it: here nothing is left running that no one
    will read.  Use :meth:`Task.get` on each task to let the others run on.
    A caller killed while it waits leaves the tasks running (they are not
    linked to it).
    """
    tasks = list(tasks)
    for t in tasks:
        if not isinstance(t, Task):
            raise TypeError(f"await_many(): expected Task objects (from async_nolink), not {t!r}")
    if getcurrent() is get_hub():
        raise BlockingCallError(
            "await_many() called from the gevent hub (a rawlink callback or timer): the hub must "
            "never block; spawn a greenlet to wait for the tasks"
        )
    by_greenlet = {t.greenlet: t for t in tasks}

    def fail(task):
        try:
            _cancel(t for t in tasks if t is not task)
        finally:
            task._outcome()  # raises

    for t in tasks:  # already-ended failures first, in list order
        if t.greenlet.dead and t._failed():
            fail(t)
    pending = [g for g in by_greenlet if not g.dead]
    if pending:
        with gevent.iwait(pending, timeout=timeout) as ended:
            for g in ended:
                t = by_greenlet[g]
                if t._failed():
                    fail(t)
        late = [t for t in tasks if not t.greenlet.dead]
        if late:
            _cancel(late)
            raise TaskTimeoutError(
                f"await_many(): {len(late)} of {len(tasks)} tasks did not finish within {timeout} s "
                f"(first: {late[0]!r}); they were cancelled"
            )
    return [t._outcome() for t in tasks]


def _run_in_thread(fn, args, kwargs):
    # Runs in the task greenlet: hand the call to the hub's threadpool and wait.
    ctx = contextvars.copy_context()
    ok, value = get_hub().threadpool.spawn(_thread_body, ctx, fn, args, kwargs).get()
    if ok:
        return value
    try:
        raise value
    finally:
        value = None


def _thread_body(ctx, fn, args, kwargs):
    # Runs in a pool thread.  Catch everything: gevent's threadpool would hand
    # an exception to the hub's handle_error, and we report it from the task.
    try:
        return True, ctx.run(fn, *args, **kwargs)
    except BaseException as e:  # noqa: B902 - the task greenlet re-raises it
        return False, e


class TaskSupervisor(DynamicSupervisor):
    """A supervisor of one-off tasks: fire-and-forget or awaited, never restarted.

    >>> import contextvars
    >>> from greentree import TaskSupervisor
    >>> request_id = contextvars.ContextVar("request_id")
    >>> def work(n):
    ...     return f"{request_id.get()}: {n * 2}"
    >>> with TaskSupervisor(name="jobs") as tasks:
    ...     _ = request_id.set("req-7")
    ...     task = tasks.async_nolink(work, 21)
    ...     task.get(timeout=5)
    'req-7: 42'

    :meth:`spawn` starts a task and forgets it, :meth:`async_nolink` returns a
    :class:`Task` to wait on, :meth:`run_in_thread` offloads a blocking call
    to gevent's threadpool.  Every task is a temporary child: it runs once,
    is never restarted (so restart intensity never applies), and is stopped
    with the supervisor (``task_shutdown`` seconds after
    :class:`ShutdownExit`, then killed; :data:`BRUTAL_KILL` and None work as in
    a :class:`ChildSpec`).  ``max_children`` bounds how many run at once:
    past it, starting one raises :class:`MaxChildrenError`.

    The caller's ``contextvars`` are copied into each task.  A task's failure
    is reported once through the ``greentree`` logger and kept for
    :meth:`Task.get`; it never reaches the hub or the caller.

    Run it as a child with ``TaskSupervisor.child_spec("tasks", max_children=100)``.
    """

    _kind = "task_supervisor"

    def __init__(
        self,
        *,
        max_children: int | None = None,
        name: Any = None,
        task_shutdown: Any = 5.0,
        clock=None,
    ):
        label = f"TaskSupervisor({name!r})" if name is not None else "TaskSupervisor"
        self.task_shutdown = check_seconds(task_shutdown, "task_shutdown", label, allow_brutal=True)
        super().__init__(max_children=max_children, name=name, clock=clock)

    # ------------------------------------------------------------ starting
    def start_child(self, spec: ChildSpec, *, timeout: float | None = None):
        """Start a task from a full :class:`ChildSpec`; it must be ``restart="temporary"``."""
        if isinstance(spec, ChildSpec) and spec.restart is not Restart.TEMPORARY:
            raise ChildSpecError(
                f"{self}.start_child({spec!r}): a TaskSupervisor runs temporary tasks only, never "
                "restarted; use spec.replace(restart='temporary'), or a DynamicSupervisor"
            )
        return DynamicSupervisor.start_child(self, spec, timeout=timeout)

    def _start_task(self, label: str, fn: Callable, args: tuple, kwargs: dict):
        spec = ChildSpec(label, fn, *args, kwargs=kwargs, restart=Restart.TEMPORARY, shutdown=self.task_shutdown)
        return DynamicSupervisor.start_child(self, spec)

    def spawn(self, fn: Callable, *args: Any, **kwargs: Any):
        """Start ``fn(*args, **kwargs)`` as a task no one waits for; return its greenlet.

        >>> import gevent
        >>> from greentree import TaskSupervisor
        >>> seen = []
        >>> with TaskSupervisor() as tasks:
        ...     g = tasks.spawn(seen.append, "hello")
        ...     _ = g.join(5)
        >>> seen
        ['hello']
        """
        if not callable(fn):
            raise TypeError(f"{self}.spawn(): fn must be callable, not {fn!r}")
        return self._start_task(_label(fn), fn, args, kwargs)

    def async_nolink(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Task[T]:
        """Start ``fn(*args, **kwargs)`` as a task; return a :class:`Task` to wait on.

        Not linked to the caller: if the task crashes, the caller carries on
        and :meth:`Task.get` raises the task's exception when (if) it asks.
        """
        if not callable(fn):
            raise TypeError(f"{self}.async_nolink(): fn must be callable, not {fn!r}")
        return Task(self._start_task(_label(fn), fn, args, kwargs), self)

    def run_in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Task[T]:
        """Run a blocking ``fn(*args, **kwargs)`` in gevent's threadpool, supervised by a task.

        >>> import time
        >>> from greentree import TaskSupervisor
        >>> with TaskSupervisor() as tasks:
        ...     tasks.run_in_thread(time.sleep, 0.01).get(timeout=5) is None
        True

        The task greenlet waits for the thread without blocking the other
        greenlets; the result or the exception comes back through the task
        (its failure is reported like any task's).  The caller's
        ``contextvars`` flow into the thread.

        A thread cannot be killed: cancelling the task, or stopping the
        supervisor, only stops the *waiting*; the thread runs ``fn`` to
        completion and its result is dropped.  The pool has
        ``gevent.get_hub().threadpool.maxsize`` threads (10 by default):
        calls past that queue for a free thread.
        """
        if not callable(fn):
            raise TypeError(f"{self}.run_in_thread(): fn must be callable, not {fn!r}")
        return Task(self._start_task(_label(fn) + " (thread)", _run_in_thread, (fn, args, kwargs), {}), self)

    # ------------------------------------------------------------ cancelling
    def _do_cancel_tasks(self, greenlets) -> int:
        recs = []
        for g in greenlets:
            rec = self._children.pop(g, None)
            # A task that already ended (its exit still in the inbox) is not cancelled.
            if rec is not None and not g._gt_done:
                recs.append(rec)
        self._stop_recs(recs)
        return len(recs)
