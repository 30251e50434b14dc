"""The per-connection supervision tree (seed 001) and the service that owns them all.

::

    ConnectionsSupervisor (DynamicSupervisor, app level; trees are temporary children)
    └── ConnectionSupervisor (rest_for_one)          one per connection
        ├── Connection        the socket's owner: reader, writer queue, request/reply
        │                     correlation, the consumer API (send, request, close)
        └── SenderSupervisor  (DynamicSupervisor)    one ConversationSender per conversation

Every tree's supervisor, Connection, SenderSupervisor and senders are named
in the service's one :class:`greentree.Registry`, keyed ``(instance_id,
role)``: nothing global is minted per connection, two connections never
collide, and siblings find each other by role.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from contextvars import Context
from typing import Any

from gevent import get_hub, getcurrent
from gevent.event import AsyncResult

from .._dynamic import DynamicSupervisor
from .._errors import BlockingCallError, GreentreeError, NotRunningError, StartChildError
from .._exits import KILL, SHUTDOWN_TYPES, exit_of, strip_traceback
from .._policy import CRASH, EXIT_NORMAL, AutoShutdown, Exit, Strategy
from .._process import DEAD, Process
from .._registry import Registry
from .._report import report_crash, report_event
from .._spec import ChildSpec
from .._supervisor import Supervisor
from ._connection import Connection
from ._errors import (
    BackpressureError,
    ConnectionClosedError,
    FrameError,
    RemoteError,
    SlowConsumerError,
)
from ._frames import REQ, BaseCodec, make_codec
from ._inbox import Full, Inbox
from ._options import Event, Options, Stats, emit
from ._workers import Workers

__all__ = [
    "ConversationSender", "SenderSupervisor", "ConnectionSupervisor", "ConnectionsSupervisor",
    "WebSocketService", "start_instance", "stop_instance",
]

_IN, _OUT = 0, 1
_monotonic = time.monotonic
SUPERVISOR, CONNECTION, SENDERS = "supervisor", "connection", "sender_supervisor"
#: Seconds a greenlet that ran a sender's work stays parked for the next one.
RUNNER_IDLE_TIMEOUT = 10.0


def sender_role(conversation):
    """The registry role of a conversation's sender: ``("sender", conversation)``."""
    return ("sender", conversation)


class ConversationSender(Process):
    """What serialises one conversation of one connection: a supervised child with an inbox.

    It takes items from a bounded inbox, in order: frames the peer sent in
    this conversation (handed to the service's ``handler``; a ``req`` gets
    the handler's return value as its reply) and bodies the consumer sends
    with :meth:`WebSocketService.send` (each sent as a request whose reply
    acknowledges it before the next one goes: seed 001's "senders block on
    Connection's IQ replies").

    It is not a greenlet of its own: while its inbox holds items, a greenlet
    borrowed from the service's pool takes them one at a time (the handler
    runs there, in the sender's own :mod:`contextvars` context, and may
    block); when the inbox is empty the greenlet goes back to the pool.  An
    idle sender holds no stack, and stopping it switches into nothing.

    It looks its Connection up once: the ConnectionSupervisor is
    ``rest_for_one``, so a new Connection always comes with new senders.  A
    handler that raises crashes only this sender (the peer gets an ``err``
    reply first); the SenderSupervisor restarts it (``transient``).  When
    the connection closes, the sender ends normally.  After
    ``sender_idle_timeout`` seconds without work it gives its name back and
    ends (one timer per idle period, not one per message).  Every request
    queued when it ends gets an ``err`` reply.

    Its start runs nothing and never yields, so the reader that delivers a
    conversation's first frame starts it inline.
    """

    _gt_child_type = "worker"
    nonblocking_init = True  # its constructor never yields: started inline, no handshake
    _timer: Any = None
    _conn: Any = None
    _ctx: Any = None
    #: The stop requested while it ran (thrown into the borrowed greenlet), or None.
    _stop: Any = None
    #: Set once it takes no more frames (its name given back, or it ended).
    _retired = False

    def __init__(self, service, instance_id, conversation):
        self.service = service
        self.instance_id = instance_id
        self.conversation = conversation
        self.inbox = Inbox(service.options.conversation_inbox, service._runner_pool())
        self._last = 0.0

    def __str__(self) -> str:
        return f"ConversationSender {self.instance_id!r}/{self.conversation!r}"

    def __repr__(self) -> str:
        return f"<{self} ({self._pr_state}) queued={self.inbox.qsize()}>"

    # ------------------------------------------------------------ lifecycle
    def _pr_needs_ctx(self) -> bool:
        return True  # its handler runs in a copy of its starter's context

    def _pr_begin(self) -> None:
        ctx = self._pr_ctx
        self._ctx = ctx.copy() if ctx is not None else Context()
        self._pr_mark_running()
        idle = self.service.options.sender_idle_timeout
        self._last = _monotonic()
        if idle is not None:
            self._arm(idle)
        self.inbox.open(self._drain)

    def _pr_end(self, reason: BaseException) -> None:
        """A stop (kill, shutdown, escalation): an idle sender ends now; a busy one gets
        ``reason`` raised where its handler waits, a turn of the event loop later."""
        if self._pr_state is DEAD:
            return
        runner = self.inbox.running
        if runner is None:
            self._finish(exit_of(reason), False)
            return
        if runner is getcurrent():
            self._stop = reason  # from its own handler: it ends once this message is handled
            return
        if self._stop is None or isinstance(reason, KILL):
            self._stop = reason
            get_hub().loop.run_callback(self._throw, runner, reason)

    def _throw(self, runner, reason) -> None:
        """In the hub: raise ``reason`` in the greenlet running this sender's handler (if it still does)."""
        if self.inbox.running is runner and not runner.dead and runner is not getcurrent():
            runner.throw(reason)

    def _lc_check_caller(self, op: str) -> None:
        if getcurrent() is self.inbox.running:
            raise BlockingCallError(
                f"{self}.{op}() called from its own handler: it would wait for itself forever; "
                "use kill(block=False), or raise"
            )
        super()._lc_check_caller(op)

    def _pr_forked(self) -> None:
        """In a forked child process: end without telling anyone (its tree is inert there)."""
        self._pr_state = DEAD
        self.inbox.close()
        self._timer = None

    # ------------------------------------------------------------ the work, on a borrowed greenlet
    def _drain(self) -> None:
        inbox = self.inbox
        if inbox.running is not None or self._pr_state is DEAD:
            return
        inbox.running = getcurrent()
        self._ctx.run(self._take, inbox)

    def _take(self, inbox) -> None:
        """Handle the queued items in order; return when the inbox is empty, or end the sender."""
        items = inbox._items
        crashed = False
        try:
            conn = self._conn
            if conn is None:
                svc = self.service
                conn = self._conn = svc.registry.whereis((self.instance_id, CONNECTION))
                if conn is None:  # the connection is gone: its tree is ending
                    raise ConnectionClosedError(f"{self!r}: its connection has ended")
            while items:
                stop = self._stop
                if stop is not None:
                    raise stop  # requested while the last handler ran: no next one
                item = items.popleft()
                if item[0] == _IN:
                    self._handle_in(conn, item[1])
                else:
                    self._handle_out(conn, item[1], item[2])
                item = None  # not held while the next one runs: a handled message is freed now
            self._last = _monotonic()
            inbox.running = None  # idle: the next item borrows a greenlet again
            return
        except (ConnectionClosedError, SlowConsumerError):
            exit = EXIT_NORMAL  # the connection ended; its own exit tells the story
        except SHUTDOWN_TYPES as e:
            exit = exit_of(strip_traceback(e))
        except BaseException as e:
            crashed = True
            svc = self.service
            svc.stats.sender_crashes += 1
            emit(svc.events, Event("sender_crashed", self.instance_id, (self.conversation, e)))
            rec = self._gt_rec
            if rec is None:
                report_crash(None, self, None, e)
            else:
                report_crash(rec.sup, rec.id, rec.spec, e)
            exit = Exit(CRASH, strip_traceback(e))
        inbox.running = None
        self._finish(exit, crashed)

    def _finish(self, exit, crashed: bool) -> None:
        """End: take no more frames, answer what is queued, then report the exit (never yields)."""
        conn = self._conn or self.service.registry.whereis((self.instance_id, CONNECTION))
        self._retire(conn)
        self.inbox.close()
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()
        self._fail_queued(conn, crashed)
        self._pr_finished(exit)

    def _retire(self, conn) -> None:
        """Take no more frames: forget the reader's memo of this sender."""
        self._retired = True
        if conn is not None:
            memo = conn._memo
            if memo is not None and memo[1] is self:
                conn._memo = None

    # ------------------------------------------------------------ idle
    def _arm(self, after: float) -> None:
        timer = self._timer = get_hub().loop.timer(after)
        timer.start(self._idle_check)

    def _idle_check(self) -> None:
        """The idle timer (in the hub): once ``sender_idle_timeout`` has passed since the last
        work with nothing running or queued, give the name back and end; else wait the rest."""
        old = self._timer
        if old is None:
            return  # ended meanwhile
        old.close()
        self._timer = None
        idle = self.service.options.sender_idle_timeout
        if self.inbox.running is not None or self.inbox._items:
            self._arm(idle)  # busy: checked again later
            return
        left = self._last + idle - _monotonic()
        if left > 0:
            self._arm(left)
            return
        # Idle: give the name back first, so the next frame of this conversation starts a
        # fresh sender instead of landing here.
        svc = self.service
        svc.registry.unregister((self.instance_id, sender_role(self.conversation)), self)
        svc.stats.senders_reaped += 1
        self._finish(EXIT_NORMAL, False)

    def _handle_in(self, conn, frame) -> None:
        handler = self.service.handler
        if frame.type != REQ:
            if handler is not None:
                result = handler(conn, frame.conversation, frame.body)
                if result is not None and not conn.service.codec.has_ids:
                    conn._reply(None, result)  # codecs without ids: the return value is a message back
            return
        if handler is None:
            conn._reply(frame.id, "no handler on this side", frame.conversation, error=True)
            return
        try:
            result = handler(conn, frame.conversation, frame.body)
        except Exception as e:
            try:
                conn._reply(frame.id, f"handler failed: {type(e).__name__}", frame.conversation, error=True)
            except GreentreeError:
                pass
            raise
        conn._reply(frame.id, result, frame.conversation)

    def _handle_out(self, conn, body, ar) -> None:
        try:
            ar.set(conn.request(body, conversation=self.conversation))
        except RemoteError as e:
            ar.set_exception(e)  # the peer refused this one; go on with the next
        except BaseException as e:
            ar.set_exception(e)
            raise  # a timeout: the conversation is stuck, let the supervisor restart it

    def _fail_queued(self, conn, crashed: bool) -> None:
        """Answer everything still queued: every request gets exactly one reply or error."""
        q = self.inbox
        while not q.empty():
            item = q.get_nowait()
            if item[0] == _OUT:
                item[2].set_exception(ConnectionClosedError(
                    f"{self!r} stopped before sending this message (connection closed or sender restarted)"
                ))
            elif item[0] == _IN and item[1].type == REQ and conn is not None:
                why = "an earlier request of this conversation crashed the handler" if crashed else "stopping"
                try:
                    conn._reply(item[1].id, f"not handled: {why}; retry", item[1].conversation, error=True)
                except GreentreeError:
                    pass


class SenderSupervisor(DynamicSupervisor):
    """One connection's pool of :class:`ConversationSender` (one_for_one).

    Its intensity (``sender_max_restarts`` in ``sender_max_seconds``) bounds
    how often a buggy handler may crash senders; past it the pool exits, and
    the ConnectionSupervisor restarts the pool alone (it is the last child:
    rest_for_one leaves the Connection alone).
    """

    nonblocking_init = True  # its start runs inline in the reader that needs it

    def __init__(self, service, instance_id):
        o = service.options
        super().__init__(
            max_children=o.max_conversations, max_restarts=o.sender_max_restarts,
            max_seconds=o.sender_max_seconds, name=f"senders {instance_id}",
        )
        self.service = service
        self.instance_id = instance_id

    def _pr_finished(self, exit) -> None:
        if exit.kind == CRASH:  # remembered before its parent hears of it (see WebSocketService._giving_up)
            self.service._pool_down(self.instance_id)
        super()._pr_finished(exit)


def senders_spec(service, instance_id) -> ChildSpec:
    """The ChildSpec of one tree's SenderSupervisor (started on the first conversation)."""
    # start_timeout=None: no user code runs in these starts, and under load (thousands of first
    # messages at once) a busy hub must not make a first message fail.
    # handshake=False: its start (no static children) runs inline and cannot fail, so there is
    # nothing to wait for, and the reader that needs it starts it without a greenlet spawned.
    return service._spec("senders")._with(
        SENDERS, (service, instance_id), service.registry.via((instance_id, SENDERS)),
    )


_REST_FOR_ONE, _ANY_SIGNIFICANT, _NEVER = Strategy.REST_FOR_ONE, AutoShutdown.ANY_SIGNIFICANT, AutoShutdown.NEVER


class ConnectionSupervisor(Supervisor):
    """The tree of one connection: ``[Connection, SenderSupervisor]``, rest_for_one.

    The SenderSupervisor is started on demand, when the first conversation
    speaks (a connection that only receives broadcasts never pays for it);
    it is then the last child, as in seed 001.

    Why ``rest_for_one`` (not ``one_for_one``): senders block on
    Connection's replies and hold a reference to it, so if the Connection
    restarts, the senders waiting on it must restart too.  The reverse is not
    true: a sender crash is isolated and never touches the Connection (and
    the SenderSupervisor, being the last child, restarts alone).

    Server side (``transport.restart == "temporary"``): the Connection ends
    with its socket and cannot come back, so it is a temporary, *significant*
    child and the supervisor has ``auto_shutdown="any_significant"``: when
    the Connection exits, however it exits, the whole tree stops normally.

    Client side (``"permanent"``): the Connection is restarted after every
    exit and reconnects with backoff; the senders are restarted with it.

    Nothing in its start yields (its constructor, the Connection's, two
    registry names; the Connection has no start handshake), so an upgrade
    starts the whole tree in the request's greenlet, with no greenlet spawned
    for the start.
    """

    nonblocking_init = True

    def __init__(self, service, instance_id, transport):
        o = service.options
        server_side = transport.restart == "temporary"
        # The Connection's spec differs between trees only by its arguments and its name: it
        # is made from one validated spec per service and side (see WebSocketService._spec).
        kind = "connection" if server_side else "client-connection"
        children = [
            service._spec(kind)._with(
                CONNECTION, (service, instance_id, transport), service.registry.via((instance_id, CONNECTION)),
            ),
        ]
        super().__init__(
            children, strategy=_REST_FOR_ONE, max_restarts=o.connection_max_restarts,
            max_seconds=o.connection_max_seconds, name=f"connection {instance_id}",
            auto_shutdown=_ANY_SIGNIFICANT if server_side else _NEVER,
        )
        self.instance_id = instance_id


class ConnectionsSupervisor(DynamicSupervisor):
    """The app-level supervisor of every connection tree (temporary children).

    Build it through the service (``service.child_spec()`` under your root
    supervisor, or ``with service.supervisor(): ...``); the service finds the
    running one, also after a restart.
    """

    def __init__(self, service, max_connections=-1):
        if max_connections == -1:
            max_connections = service.options.max_connections
        super().__init__(max_children=max_connections, max_restarts=10, max_seconds=5.0, name="connections")
        self.service = service

    def _init_children(self):
        self.service._connections = self

    def _shutdown(self):
        try:
            super()._shutdown()
        finally:
            if self.service._connections is self:
                self.service._connections = None

    def _pr_finished(self, exit) -> None:
        super()._pr_finished(exit)
        svc = self.service
        runners = svc._runners
        if runners is not None and (svc._connections is None or svc._connections is self or svc._connections.dead):
            runners.close(block=False)  # every tree has ended: its parked greenlets end too


class WebSocketService:
    """Everything one WebSocket endpoint (server or client manager) shares:
    the handler, the codec, the registry, options, stats and the events sink.

    >>> import gevent
    >>> svc = WebSocketService(lambda conn, conversation, body: body, ping_interval=None)
    >>> with svc.supervisor() as conns:
    ...     svc.instance_count(), svc.registry.count()
    (0, 0)

    * ``handler(connection, conversation, body)`` runs in the conversation's
      :class:`ConversationSender`, in order per conversation; for a request,
      its return value is the reply (with a codec without ids, a return
      value other than None is sent back as a message).  If it raises, only
      that sender crashes.  ``connection.request_info`` is the HTTP
      :class:`~greentree.websocket.Request` that opened the connection.
    * ``codec``: ``"msgpack"`` (default), ``"json"``, ``"text"``, ``"bytes"``
      or a :class:`~greentree.websocket.BaseCodec` instance.
    * ``on_connect(request)``: called before the upgrade with the
      :class:`~greentree.websocket.Request`; return None to accept (or a
      dict: it becomes ``connection.state``), or an HTTP status (``401``,
      ``403``, or ``(403, "text")``) to refuse: no 101, no tree.
    * ``on_open(connection)`` / ``on_close(connection)``: called in the
      Connection's greenlet when it opens and as it ends (join topics there;
      a connection leaves its topics by itself).  Must not block for long.
    * ``events``: a queue (``put_nowait``) or a non-blocking callable that
      receives :class:`~greentree.websocket.Event` tuples; this is how a
      consumer learns of crashes and disconnections, never by being killed.
    * ``registry``: the app-level :class:`greentree.Registry` (one is made
      if you pass none); keys are ``(instance_id, role)``.
    * the other keywords are :class:`Options`.
    """

    def __init__(self, handler=None, *, codec: str | BaseCodec = "msgpack", on_connect=None, on_open=None,
                 on_close=None, registry: Registry | None = None, events=None,
                 options: Options | None = None, **option_kw):
        for what, fn in (("handler", handler), ("on_connect", on_connect), ("on_open", on_open),
                         ("on_close", on_close)):
            if fn is not None and not callable(fn):
                raise TypeError(f"WebSocketService: {what} must be callable, not {fn!r}")
        if options is not None and option_kw:
            raise TypeError("WebSocketService: pass options=Options(...) or keyword options, not both")
        self.handler = handler
        self.on_connect = on_connect
        self.on_open = on_open
        self.on_close = on_close
        self.options = options if options is not None else Options(**option_kw)
        self.registry = registry if registry is not None else Registry(name="websocket")
        self.events = events
        self.stats = Stats()
        self.codec = make_codec(codec, self.options.max_size, self.options.max_items)
        self._connections: Any = None
        self._own: Any = None
        self._ids = itertools.count(1)
        self._pool_crashes: dict = {}
        self._specs: dict = {}
        self._runners: Workers | None = None

    # ------------------------------------------------------------ the app-level supervisor
    def supervisor(self, max_connections: int | None = -1) -> ConnectionsSupervisor:
        """A new (not started) ConnectionsSupervisor for this service (``max_connections``
        defaults to ``options.max_connections``; None: no limit)."""
        return ConnectionsSupervisor(self, max_connections)

    def child_spec(self, id="connections", max_connections: int | None = -1, **spec_kw) -> ChildSpec:
        """The ChildSpec of this service's ConnectionsSupervisor, for your root supervisor."""
        return ChildSpec(id, ConnectionsSupervisor, self, max_connections, type="supervisor", **spec_kw)

    @property
    def connections(self) -> ConnectionsSupervisor:
        """The running ConnectionsSupervisor (:class:`NotRunningError` if none)."""
        sup = self._connections
        if sup is None or sup.dead:
            raise NotRunningError(
                "WebSocketService: no ConnectionsSupervisor is running; start service.supervisor() "
                "or put service.child_spec() under your root supervisor"
            )
        return sup

    def stop_all(self, timeout: float | None = None) -> int:
        """Stop every connection tree now (each client gets 1001); return how many ran."""
        sup = self._connections
        if sup is None or sup.dead:
            return 0
        try:
            return sup.terminate_all(timeout=timeout)
        except GreentreeError:
            return 0  # it is stopping anyway

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop every tree (1001), then the ConnectionsSupervisor the service started by itself
        (the one a plain WSGI app or gunicorn uses; one under your root supervisor stops with it)."""
        self.stop_all(timeout)
        own, self._own = self._own, None
        if own is not None and not own.dead:
            own.stop(timeout)

    def _ensure_started(self) -> None:
        """Start a ConnectionsSupervisor owned by the service if none runs (gunicorn, plain WSGI).

        Under gunicorn's gevent worker it also stops every tree (1001) when
        the worker stops accepting (SIGTERM, ``max_requests``).
        """
        sup = self._connections
        if sup is not None and not sup.dead:
            return
        from ._gunicorn import watch_worker

        sup = self._own = self.supervisor()
        sup.start()
        sup.wait_started()
        watch_worker(self)

    # ------------------------------------------------------------ instances
    def start_instance(self, transport, instance_id=None):
        """Start one connection tree under the ConnectionsSupervisor; return ``(supervisor, connection)``.

        The tree is **not linked to the caller**: its crash never reaches
        you as an exception; you learn of it through ``events``
        (``"instance_down"``).  ``instance_id`` defaults to a fresh id.
        Raises :class:`greentree.AlreadyStartedError` if ``instance_id`` runs.
        """
        if instance_id is None:
            instance_id = next(self._ids)
        reg = self.registry
        # handshake=False: nothing in the tree's start yields, so it runs inline, here, to the
        # end; a start that failed shows as a tree that already exited with StartChildError.
        spec = self._spec("tree")._with(instance_id, (self, instance_id, transport), reg.via((instance_id, SUPERVISOR)))
        sup = self.connections.start_child(spec)
        conn = reg.whereis((instance_id, CONNECTION))
        if conn is None and isinstance(sup.exception, StartChildError):
            raise StartChildError(
                f"WebSocketService.start_instance(): the tree of instance {instance_id!r} failed to start: "
                f"{sup.exception!r}", instance_id, sup.exception,
            )
        sink = self.events
        if sink is not None:
            sup.gt_add_exit_hook(lambda g, iid=instance_id: emit(sink, Event("instance_down", iid, g._gt_exit_rec.reason)))
        return sup, conn

    def stop_instance(self, instance_id, timeout: float | None = None) -> bool:
        """Stop a whole connection tree; True if it ran, False if no such instance (not found)."""
        sup = self.registry.whereis((instance_id, SUPERVISOR))
        if sup is None:
            return False
        conns = self._connections
        try:
            if conns is not None and not conns.dead:
                conns.terminate_child(sup, timeout=timeout)
                return True
        except GreentreeError:
            pass  # it ended meanwhile, or the app supervisor is stopping
        sup.stop(timeout)
        return True

    def whereis(self, instance_id, role):
        """The greenlet holding ``role`` in tree ``instance_id`` (``"supervisor"``,
        ``"connection"``, ``"sender_supervisor"``, or ``("sender", conversation)``), or None."""
        return self.registry.whereis((instance_id, role))

    def connection(self, instance_id) -> Connection | None:
        """The current Connection of ``instance_id`` (it changes when a client reconnects)."""
        return self.registry.whereis((instance_id, CONNECTION))

    def instance_count(self) -> int:
        """How many connection trees run."""
        sup = self._connections
        return 0 if sup is None else len(sup._children)

    def send(self, instance_id, conversation, body) -> AsyncResult:
        """Queue ``body`` on the conversation's sender; return an AsyncResult of the peer's reply.

        Messages of one conversation go out in order, each after the peer
        acknowledged the previous one.  Raises :class:`BackpressureError` when
        ``conversation_inbox`` messages are already queued, and
        :class:`NotRunningError` if the instance does not run.
        """
        g = self._sender(instance_id, conversation)
        if g is None:
            raise NotRunningError(f"WebSocketService.send(): instance {instance_id!r} does not run")
        ar = AsyncResult()
        try:
            g.inbox.put_nowait((_OUT, body, ar))
        except Full:
            raise BackpressureError(
                f"WebSocketService.send(): conversation {conversation!r} of instance {instance_id!r} "
                f"already holds {g.inbox.maxsize} unsent messages; wait for their results first"
            ) from None
        return ar

    # ------------------------------------------------------------ plumbing
    def _spec(self, kind: str) -> ChildSpec:
        """The validated spec every tree's ``kind`` child is made from (with its own id,
        arguments and name: ``ChildSpec._with``); built once per service."""
        specs = self._specs
        spec = specs.get(kind)
        if spec is None:
            o = self.options
            if kind == "tree":
                spec = ChildSpec(None, ConnectionSupervisor, restart="temporary", type="supervisor", handshake=False)
            elif kind == "senders":
                spec = ChildSpec(SENDERS, SenderSupervisor, type="supervisor", start_timeout=None, handshake=False)
            elif kind == "sender":
                spec = ChildSpec(None, ConversationSender, restart="transient", shutdown=5.0, start_timeout=None)
            else:
                server_side = kind == "connection"
                spec = ChildSpec(
                    CONNECTION, Connection, restart="temporary" if server_side else "permanent",
                    significant=server_side, shutdown=o.close_timeout + 1.0, start_timeout=None,
                )
            specs[kind] = spec
        return spec

    def _runner_pool(self) -> Workers:
        """The greenlets that run conversation senders' work, parked between turns (made on
        first use; its parked greenlets end with the ConnectionsSupervisor)."""
        pool = self._runners
        if pool is None or pool._closed:
            pool = self._runners = Workers(RUNNER_IDLE_TIMEOUT, fresh_context=False)
        return pool

    def _sender(self, instance_id, conversation):
        reg = self.registry
        key = (instance_id, sender_role(conversation))
        g = reg.whereis(key)
        if g is not None:
            return g
        pool = self._sender_pool(instance_id)
        if pool is None:
            return None
        # register=: what resolve_or_start would copy the spec to add.
        spec = self._spec("sender")._with(key[1], (self, instance_id, conversation), reg.via(key))
        try:
            return reg.resolve_or_start(key, pool, spec)
        except GreentreeError as e:  # the pool is restarting or full
            report_event(logging.INFO, "greentree.websocket: no sender for %r: %s", key, e)
            return None

    def _on_open(self, conn) -> None:
        if self.on_open is not None:
            self.on_open(conn)

    def _on_close(self, conn) -> None:
        """As a Connection ends: it leaves its topics, then the user's hook."""
        if conn.topics:
            for topics, topic in list(conn.topics):
                topics.leave(topic, conn)
        self._pool_crashes.pop(conn.instance_id, None)
        if self.on_close is not None:
            try:
                self.on_close(conn)
            except Exception as e:  # the connection is ending anyway; report, do not mask
                report_event(logging.ERROR, "greentree.websocket: on_close(%r) failed: %r", conn, e)

    def _pool_down(self, instance_id) -> None:
        """A SenderSupervisor crashed: remember when (see :meth:`_giving_up`)."""
        self._pool_crashes.setdefault(instance_id, deque()).append(time.monotonic())

    def _giving_up(self, instance_id) -> bool:
        """True if this tree is being stopped because its senders crashed past its restart limits."""
        crashes = self._pool_crashes.get(instance_id)
        if not crashes:
            return False
        o = self.options
        horizon = time.monotonic() - o.connection_max_seconds
        return sum(1 for t in crashes if t >= horizon) > o.connection_max_restarts

    def _sender_pool(self, instance_id):
        reg = self.registry
        pool = reg.whereis((instance_id, SENDERS))
        if pool is not None:
            return pool
        tree = reg.whereis((instance_id, SUPERVISOR))
        if tree is None:
            return None
        try:
            pool = reg.resolve_or_start((instance_id, SENDERS), tree, senders_spec(self, instance_id))
        except GreentreeError as e:  # the tree is stopping
            report_event(logging.INFO, "greentree.websocket: no sender pool for %r: %s", instance_id, e)
            return None
        return pool

    def _deliver(self, conn, frame) -> None:
        """Called by a Connection's reader for each ``msg``/``req`` frame.

        The reader remembers the last conversation's sender (``conn._memo``): while that sender
        runs and holds its name, it is what the registry would answer.  A sender clears the memo
        when it gives its name back or ends, so the next frame asks the registry again (and
        starts a fresh sender if none holds the name).
        """
        conversation = frame.conversation
        memo = conn._memo
        if memo is not None and memo[0] == conversation:  # equal keys: the same registry name
            g = memo[1]
        else:
            g = self._sender(conn.instance_id, conversation)
            if g is not None and not g._retired:
                conn._memo = (conversation, g)
        if g is None:
            self.stats.dropped += 1
            if frame.type == REQ:
                conn._reply(frame.id, "conversation unavailable, retry later", frame.conversation, error=True)
            return
        inbox = g.inbox
        try:
            inbox.put_nowait((_IN, frame))
        except Full:
            raise FrameError(
                1008, f"conversation {frame.conversation!r} has {inbox.maxsize} unhandled frames"
            ) from None
        conn._fed = inbox  # the reader hands its turn to this sender before it reads again


def start_instance(service: WebSocketService, transport, instance_id=None):
    """``service.start_instance(transport, instance_id)``: seed 001's ``start_instance``."""
    return service.start_instance(transport, instance_id)


def stop_instance(service: WebSocketService, instance_id, timeout: float | None = None) -> bool:
    """``service.stop_instance(instance_id)``: True if stopped, False if not found."""
    return service.stop_instance(instance_id, timeout)
