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

from collections import deque
from typing import Any

import gevent
from gevent import getcurrent, get_hub
from gevent.event import AsyncResult, Event

from ._base import KILL_GRACE, _describe_reason, _exit_reason
from ._child import Greenlet, _StartStopContext, backstop, started
from ._errors import BlockingCallError, ChildSpecError, GreentreeError, NotRunningError
from ._exits import KILL, ShutdownExit
from ._report import report_event

import logging

__all__ = ["Server", "NOREPLY", "CallTimeout", "Caller"]

#: Messages handled back to back before the server yields to the hub.
BATCH = 256

_CALL, _CAST, _INFO, _STOP = 0, 1, 2, 3


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


class CallTimeout(GreentreeError, TimeoutError):
    """A :meth:`Server.call` got no reply within its timeout.

    The server may still handle the request later; its reply is then dropped.
    """


class Caller:
    """Who is waiting for a reply: passed to :meth:`Server.handle_call`.

    Keep it to answer later with ``server.reply(caller, value)``.
    ``greenlet`` is the calling greenlet.
    """

    __slots__ = ("greenlet", "_result")

    def __init__(self, greenlet):
        self.greenlet = greenlet
        self._result = AsyncResult()

    def __repr__(self) -> str:
        return f"<Caller {self.greenlet!r}>"


class Server(_StartStopContext, Greenlet):
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

    ``Server(*args, name=None, **kwargs)``: ``name`` may be a registry name,
    ``registry.via(key)``, bound in the server's greenlet before ``init``
    (under a supervisor, prefer ``ChildSpec(..., name=...)``, which fails the
    start with :class:`AlreadyStartedError` if the name is taken).  A Server
    is a child like any other: ``ChildSpec("conn", Connection, sock)``; each
    restart creates a new instance.  Used alone, ``with Server(...) as s:``
    starts it, waits for ``init`` and stops it at the end.

    The mailbox is unbounded: :meth:`cast` and :meth:`send` never block, so a
    producer faster than the server grows it without limit.  Use calls (which
    wait) for backpressure, or watch :attr:`mailbox_size`.
    """

    handshake = True
    _gt_catch = True

    def __init__(self, *args: Any, name: Any = None, **kwargs: Any):
        if name is not None and not callable(getattr(name, "bind", None)):
            raise ChildSpecError(
                f"{type(self).__name__}(name={name!r}): name must be None or a registry name "
                "with a bind(greenlet) method, e.g. registry.via(key)"
            )
        Greenlet.__init__(self, None, *args, **kwargs)
        self.name = name
        self._mailbox: deque = deque()
        self._wakeup = Event()
        self._pending: set = set()
        self._ready = Event()        # set once init returned, or once the server ended
        self._is_started = False     # init returned
        self._closed = False         # ended (or ending): nothing more is accepted
        self._stop_reason = None
        self._stop_requested = False
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
            if self.name is not None:
                self.name.bind(self)
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
        box = self._mailbox
        wakeup = self._wakeup
        n = 0
        while True:
            if not box:
                wakeup.clear()
                wakeup.wait()
            while box:
                kind, msg, caller = box.popleft()
                if kind == _CALL:
                    reply = self.handle_call(msg, caller)
                    if reply is not NOREPLY:
                        self.reply(caller, reply)
                elif kind == _CAST:
                    self.handle_cast(msg)
                elif kind == _INFO:
                    self.handle_info(msg)
                else:
                    self._stop_reason = msg
                    return
                if self._stop_requested:
                    return
                n += 1
                if n >= BATCH:
                    n = 0
                    gevent.sleep(0)  # a flood of messages must not starve the process

    def _fail_pending(self, reason) -> None:
        self._closed = True
        self._mailbox.clear()
        self._ready.set()
        pending = self._pending
        if not pending:
            return
        self._pending = set()
        why = _describe_reason(reason)
        for caller in pending:
            err = NotRunningError(f"{self} exited ({why}) before replying")
            if isinstance(reason, BaseException):
                err.__cause__ = reason
            caller._result.set_exception(err)

    @staticmethod
    def _gt_server_exit(self) -> None:
        # Exit hook: after _run's finally, or from the hub for a server killed
        # before it ran.  Never blocks or raises.
        if self._pending or not self._closed:
            self._fail_pending(_exit_reason(self))

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

        Raises :class:`CallTimeout` after ``timeout`` seconds (None: wait
        forever), and :class:`NotRunningError` at once if the server is not
        running or ends before it replies (a crash is the ``__cause__``).
        A server calling itself raises :class:`BlockingCallError`.
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
        self._check_alive("call")
        caller = Caller(cur)
        self._pending.add(caller)
        self._mailbox.append((_CALL, msg, caller))
        self._wakeup.set()
        result = caller._result
        try:
            result.wait(timeout)  # a gevent.Timeout of the caller's own still propagates
        finally:
            self._pending.discard(caller)
        if not result.ready():
            raise CallTimeout(f"{self}.call({msg!r}): no reply within {timeout} s")
        return result.get(block=False)

    def cast(self, msg: Any) -> None:
        """Send ``msg`` to ``handle_cast``; never blocks, dropped if the server has ended."""
        if self._closed or self.dead:
            return
        self._mailbox.append((_CAST, msg, None))
        self._wakeup.set()

    def send(self, msg: Any) -> None:
        """Send ``msg`` to ``handle_info``; never blocks, dropped if the server has ended."""
        if self._closed or self.dead:
            return
        self._mailbox.append((_INFO, msg, None))
        self._wakeup.set()

    def reply(self, caller: Caller, value: Any) -> bool:
        """Answer ``caller`` (from :data:`NOREPLY`); False if it stopped waiting."""
        pending = self._pending
        if caller not in pending:
            return False
        pending.discard(caller)
        caller._result.set(value)
        return True

    @property
    def mailbox_size(self) -> int:
        """Messages waiting in the mailbox (Erlang's ``message_queue_len``)."""
        return len(self._mailbox)

    def wait_started(self, timeout: float | None = None) -> "Server":
        """Wait until ``init`` returned; raise :class:`NotRunningError` if the server ended first."""
        if not self.started and not self.dead:
            raise NotRunningError(f"{self}.wait_started(): call start() first")
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self}: init did not return within {timeout} s")
        if not self._is_started:
            exc = self.exception
            raise NotRunningError(f"{self} exited before init returned: {_describe_reason(exc)}") from exc
        return self

    def stop(self, reason: BaseException | None = None, timeout: float | None = None) -> None:
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
        cur = getcurrent()
        if cur is self:
            self._stop_requested = True
            self._stop_reason = reason
            return
        if cur is get_hub():
            raise BlockingCallError(f"{self}.stop() from the gevent hub would block it; spawn a greenlet")
        if self.dead:
            return
        if not self.started:
            self.kill(ShutdownExit, block=False)
            return
        if not self._closed:
            self._mailbox.append((_STOP, reason, None))
            self._wakeup.set()
        self.join(timeout)
        if not self.dead:
            self.kill(ShutdownExit, block=False)
            self.join(KILL_GRACE)
        if not self.dead:
            self.kill(KILL, block=False)
            self.join(KILL_GRACE)


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
