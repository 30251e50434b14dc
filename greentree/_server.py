"""Server: a greenlet with a mailbox, OTP's gen_server.

Theory of operation.  The mailbox is a deque and one Event; senders append
and set the Event, the server drains the deque in order.  A call carries a
:class:`Caller` holding the caller's ``AsyncResult``; the server keeps every
unanswered Caller in ``_pending`` (a set: O(1) add, reply and timeout), so
when it ends, however it ends, each waiting caller gets
:class:`NotRunningError` at once instead of sitting out its timeout.  That
happens in the server's own ``finally`` and, for a server killed before it
ever ran, in its exit hook (called from the hub).  No greenlet is created per
call: the caller waits in its own greenlet.
"""

from __future__ import annotations

import logging
from collections import deque
from math import inf as _INF
from time import perf_counter
from typing import Any

import gevent
from gevent import get_hub, getcurrent
from gevent.event import Event

from ._child import Greenlet, backstop, started
from ._errors import ArgumentError, BlockingCallError, CallTimeoutError, ChildSpecError, NotRunningError
from ._exits import KILL, ShutdownExit
from ._mailbox import BATCH, SLICE, Mailbox, Reply, _waker
from ._policy import describe_reason
from ._process import Lifecycle
from ._report import report_event
from ._spec import check_seconds

__all__ = ["Server", "NOREPLY", "Caller"]


class _NoReply:
    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOREPLY"

    def __reduce__(self):
        return "NOREPLY"


#: Return this from :meth:`Server.handle_call` to answer later with :meth:`Server.reply`.
NOREPLY = _NoReply()


class Caller(Reply):
    """Who is waiting for a reply: passed to :meth:`Server.handle_call`.

    Keep it to answer later with ``server.reply(caller, value)``.
    ``greenlet`` is the calling greenlet.
    """

    __slots__ = ("greenlet",)

    def __init__(self, greenlet):
        # Reply.__init__, inlined (one Caller per call).
        self.done = False
        self.value = None
        self.error = None
        self._waiter = None
        self._parked = None
        self._wake = None
        self.greenlet = greenlet

    def __repr__(self) -> str:
        return f"<Caller {self.greenlet!r}>"


# Messages: typed, one class each.
class _Call:
    __slots__ = ("msg", "caller")

    def __init__(self, msg, caller):
        self.msg = msg
        self.caller = caller


class _Cast:
    __slots__ = ("msg",)

    def __init__(self, msg):
        self.msg = msg


class _Info(_Cast):
    __slots__ = ()


class _Stop:
    __slots__ = ("reason",)

    def __init__(self, reason):
        self.reason = reason


class Server(Lifecycle, Mailbox, Greenlet):
    """A greenlet with a mailbox that answers calls, casts and messages in order.

    Subclass it and override the callbacks; all of them run in the server's
    own greenlet, one message at a time, so the server's state needs no lock.

    >>> import greentree
    >>> class Counter(greentree.Server):
    ...     def init(self, start):
    ...         self.n = start
    ...     def handle_call(self, msg, caller):
    ...         if msg == "get":
    ...             return self.n
    ...     def handle_cast(self, msg):
    ...         self.n += msg
    >>> with Counter(10) as counter:
    ...     counter.cast(5)
    ...     counter.call("get")
    15

    * ``init(*args, **kwargs)`` gets the constructor's arguments and is the
      start handshake: under a supervisor the next sibling starts only after
      it returned.  If it raises, the server fails to start.
    * ``handle_call(msg, caller)`` returns the reply, or :data:`NOREPLY` to
      answer later with :meth:`reply` (from any greenlet).
    * ``handle_cast(msg)`` and ``handle_info(msg)`` handle :meth:`cast` and
      :meth:`send`; they return nothing.
    * ``terminate(reason)`` runs when the server ends after a successful
      ``init``: ``None`` for a normal stop, :class:`ShutdownExit` when its
      supervisor stops it, the exception when it crashed.

    An exception raised by a callback crashes the server, as in OTP: it is
    reported once, its supervisor restarts it per its restart type, and every
    pending caller gets :class:`NotRunningError` with the crash as
    ``__cause__``, never the exception as a reply.

    ``Server(*args, name=None, register=None, **kwargs)``: ``name`` is a
    label for messages; ``register`` may be a registry name,
    ``registry.via(key)``, bound in the server's greenlet before ``init``
    (under a supervisor, prefer ``ChildSpec(..., register=...)``, which fails
    the start with :class:`AlreadyStartedError` if the name is taken).  A Server
    is a child like any other: ``ChildSpec("conn", Connection, sock)``; each
    restart creates a new instance.  Used alone, ``with Server(...) as s:``
    starts it, waits for ``init`` and stops it at the end.

    The mailbox is unbounded: :meth:`cast` and :meth:`send` never block, so a
    producer faster than the server grows it without limit.  Use calls (which
    wait) for backpressure, or watch :attr:`mailbox_size`.
    """

    handshake = True
    _gt_catch = True
    _mb_owned = True

    def __init__(self, *args: Any, name: Any = None, register: Any = None, **kwargs: Any):
        if register is not None and not callable(getattr(register, "bind", None)):
            raise ChildSpecError(
                f"{type(self).__name__}(register={register!r}): register must be None or a registry name "
                "with a bind(greenlet) method, e.g. registry.via(key)"
            )
        Greenlet.__init__(self, None, *args, **kwargs)
        self.name = name
        self.register = register
        self._pending: set = set()
        self._ready = Event()        # set once init returned, or once the server ended
        self._is_started = False     # init returned
        self._closed = False         # ended (or ending): nothing more is accepted
        self._stop_reason: BaseException | None = None
        self._stop_requested = False
        # The loop parks itself when the mailbox is empty; a post queues one
        # wake on the hub's waker (the same one that wakes callers).
        self._parked: Any = None
        self._mb_woken = False
        self._mb_waker: Any = None
        self.gt_add_exit_hook(Server._gt_server_exit)
        self.rawlink(backstop)       # a server killed before it ran still fails its callers

    # ------------------------------------------------------------ callbacks
    def init(self, *args: Any, **kwargs: Any) -> None:
        """Set up the server's state; runs in the server's greenlet before any message."""
        if args or kwargs:
            raise TypeError(
                f"{type(self).__name__}.init() got arguments {args!r} {kwargs!r}; override init() to take them"
            )

    def handle_call(self, msg: Any, caller: Caller) -> Any:
        """Answer a :meth:`call`: return the reply, or :data:`NOREPLY`."""
        raise NotImplementedError(f"{type(self).__name__} got call {msg!r} but does not define handle_call()")

    def handle_cast(self, msg: Any) -> None:
        """Handle a :meth:`cast`."""
        raise NotImplementedError(f"{type(self).__name__} got cast {msg!r} but does not define handle_cast()")

    def handle_info(self, msg: Any) -> None:
        """Handle a message sent with :meth:`send`.  The default logs and drops it."""
        report_event(logging.WARNING, "%s: unexpected message %r (define handle_info)", self, msg)

    def terminate(self, reason: BaseException | None) -> None:
        """Clean up when the server ends; ``reason`` says why (None: normal stop)."""

    # ------------------------------------------------------------ the loop
    def _run(self, *args, **kwargs):
        reason = None
        try:
            if self.register is not None:
                self.register.bind(self)
            self.init(*args, **kwargs)
            self._is_started = True
            self._ready.set()
            started()
            self._loop()
            reason = self._stop_reason
            if reason is not None:
                raise reason
        except BaseException as e:
            reason = e
            raise
        finally:
            self._closed = True
            try:
                if self._is_started:
                    self.terminate(reason)
            finally:
                self._fail_pending(reason)

    def _loop(self) -> None:
        hub = get_hub()
        switch = hub.switch
        self._mb_waker = _waker(hub)
        n = 0
        since = perf_counter()
        while True:
            box = self._mb_q
            if not box:
                # Park until _mb_post queues a wake (a switch from anything
                # else finds the mailbox still empty and parks again).
                try:
                    while not self._mb_q:
                        self._parked = self
                        self._mb_woken = False
                        switch()
                finally:
                    self._parked = None
                # The hub ran while we waited: count the next burst afresh
                # (else the first message after every pause paid an idle()).
                n = 0
                since = perf_counter()
                continue
            while box:
                m = box.popleft()
                t = type(m)
                if t is _Call:
                    caller = m.caller
                    reply = self.handle_call(m.msg, caller)
                    if reply is not NOREPLY:
                        self.reply(caller, reply)
                elif t is _Cast:
                    self.handle_cast(m.msg)
                elif t is _Info:
                    self.handle_info(m.msg)
                else:
                    self._stop_reason = m.reason
                    return
                if self._stop_requested:
                    return
                n += 1
                if n >= BATCH or perf_counter() - since > SLICE:
                    # A flood of messages must not starve timers and sockets:
                    # gevent.idle() lets them run (sleep(0) runs no timer).
                    gevent.idle()
                    n = 0
                    since = perf_counter()

    def _fail_pending(self, reason) -> None:
        self._closed = True
        q = self._mb_q
        if q:
            q.clear()
        self._ready.set()
        pending = self._pending
        if not pending:
            return
        self._pending = set()
        why = describe_reason(reason)
        for caller in pending:
            err = NotRunningError(f"{self} exited ({why}) before replying")
            if isinstance(reason, BaseException):
                err.__cause__ = reason
            caller.set_exception(err)

    @staticmethod
    def _gt_server_exit(self) -> None:
        # Exit hook: after _run's finally, or from the hub for a server killed
        # before it ran.  Never blocks or raises.
        if self._pending or not self._closed:
            exit = self._gt_exit_rec
            self._fail_pending(exit.reason if exit is not None else None)

    # ------------------------------------------------------------ client API
    def _check_alive(self, op: str) -> None:
        if self._closed or self.dead:
            why = "it is stopping" if not self.dead else "it exited"
            raise NotRunningError(f"{self}.{op}(): the server is not running ({why})")
        if not self.started:
            raise NotRunningError(
                f"{self}.{op}(): the server was never started; start() it or run it under a supervisor"
            )

    def call(self, msg: Any, timeout: float | None = 5.0) -> Any:
        """Send ``msg`` to ``handle_call`` and return the reply.

        Raises :class:`CallTimeoutError` after ``timeout`` seconds (None: wait
        forever), and :class:`NotRunningError` at once if the server is not
        running or ends before it replies (a crash is the ``__cause__``).
        A server calling itself raises :class:`BlockingCallError`.
        """
        if timeout is not None and (type(timeout) is not float or not 0.0 <= timeout < _INF):
            # (Checked only when it is not plainly valid: the message names
            # the server, and formatting it costs more than the call.)
            timeout = check_seconds(timeout, "timeout", f"{self}.call()", error=ArgumentError)
        caller = self._post_call(msg)
        try:
            caller.wait(timeout)  # a gevent.Timeout of the caller's own still propagates
        finally:
            self._pending.discard(caller)
        if not caller.done:
            raise CallTimeoutError(f"{self}.call({msg!r}): no reply within {timeout} s")
        return caller.result()

    def _post_call(self, msg: Any) -> Caller:
        """The first half of :meth:`call`: check, register the caller as pending, post the request.

        The caller must then wait on the returned Caller and, however the
        wait ends, discard it from ``_pending``.
        """
        cur = getcurrent()
        if cur is self:
            raise BlockingCallError(
                f"{self}.call({msg!r}) from the server's own greenlet would wait for itself forever; "
                "handle the request directly, or cast() it to yourself"
            )
        if cur is get_hub():
            raise BlockingCallError(
                f"{self}.call({msg!r}) from the gevent hub (a rawlink callback or timer): the hub must "
                "never block; spawn a greenlet to make the call, or cast()"
            )
        if self._closed or self.dead or not self.started:
            self._check_alive("call")
        caller = Caller(cur)
        self._pending.add(caller)
        self._mb_post(_Call(msg, caller))
        return caller

    def cast(self, msg: Any) -> None:
        """Send ``msg`` to ``handle_cast``; never blocks, dropped if the server has ended."""
        if self._closed or self.dead:
            return
        self._mb_post(_Cast(msg))

    def send(self, msg: Any) -> None:
        """Send ``msg`` to ``handle_info``; never blocks, dropped if the server has ended."""
        if self._closed or self.dead:
            return
        self._mb_post(_Info(msg))

    def reply(self, caller: Caller, value: Any) -> bool:
        """Answer ``caller`` (from :data:`NOREPLY`); False if it stopped waiting."""
        pending = self._pending
        if caller not in pending:
            return False
        pending.discard(caller)
        caller.set(value)
        return True

    @property
    def mailbox_size(self) -> int:
        """Messages waiting in the mailbox (Erlang's ``message_queue_len``)."""
        return self._mb_size()

    def _mb_post(self, event: Any, front: bool = False) -> None:
        # Mailbox._mb_post for a mailbox the server's own greenlet drains:
        # never handled inline, only queued and the server woken.
        q = self._mb_q
        if q is None:
            q = self._mb_q = deque()
        if front:
            q.appendleft(event)
        else:
            q.append(event)
        if self._parked is not None and not self._mb_woken:
            self._mb_woken = True
            w = self._mb_waker
            w.q.append(self)
            if not w.scheduled:
                w.schedule()

    # ------------------------------------------------------------ lifecycle
    def _lc_is_started(self) -> bool:
        return self._is_started

    def _lc_started_event(self) -> Any:
        return self._ready

    def _lc_start_failure(self) -> BaseException:
        exc = self.exception
        err = NotRunningError(f"{self} exited before init returned: {describe_reason(exc)}")
        err.__cause__ = exc
        return err

    def _lc_own_failure(self) -> BaseException | None:
        if self._stop_requested_by_stop:
            return None
        return self.exception

    _stop_requested_by_stop = False

    def _lc_request_stop(self) -> None:
        self._stop_requested_by_stop = True
        if not self.started:
            self.kill(ShutdownExit, block=False)
            return
        if not self._closed:
            self._mb_post(_Stop(self._pending_stop_reason))

    _pending_stop_reason: BaseException | None = None

    def _lc_escalate(self, step: int) -> None:
        self.kill(ShutdownExit if step == 0 else KILL, block=False)

    def stop(self, timeout: float | None = None, *, reason: BaseException | None = None) -> None:
        """Stop the server after the messages already in its mailbox.

        ``terminate(reason)`` runs, then the server exits: normally for
        ``reason=None``, as shut down for a :class:`ShutdownExit`, as crashed
        with any other exception (a supervisor restarts a permanent server in
        every case, as OTP does).  Waits for the exit; past ``timeout`` it
        escalates to :class:`ShutdownExit` and then greentree's kill, as
        :meth:`Supervisor.stop`.  Idempotent.

        Called from the server's own callbacks, it only marks the server to
        stop after the current message, and returns.
        """
        if reason is not None and not isinstance(reason, BaseException):
            raise ChildSpecError(
                f"{self}.stop(reason={reason!r}): reason must be None or an exception instance"
            )
        if getcurrent() is self:
            check_seconds(timeout, "timeout", f"{self}.stop()", error=ArgumentError)
            self._stop_requested = True
            self._stop_reason = reason
            self._stop_requested_by_stop = True
            return
        self._pending_stop_reason = reason
        Lifecycle.stop(self, timeout)

    def __repr__(self) -> str:
        if self.dead:
            state = "dead"
        elif self._closed:
            state = "stopping"
        elif self._is_started:
            state = "running"
        else:
            state = "starting" if self.started else "not started"
        name = f" {self.name!r}" if self.name is not None else ""
        return f"<{type(self).__name__}{name} ({state}) at {id(self):#x}>"

    __str__ = __repr__

