"""The handler table behind :mod:`greentree.telemetry`, and the emitters the
core calls.

Cost model.  Every event name has one *slot*: a list that holds the handlers
attached to that event, empty when nobody listens.  The list object never
changes (attach and detach edit it in place), so a module that emits an
event binds the slot once, at import, as a module global, and its emit point
is ``if _SLOT: emit(...)``: one global load and one truth test when nothing
is attached.  Everything else (the tree path, the metadata dict, the clock)
is computed only after that test passed, in the functions below.

This module imports only the standard library, :mod:`._policy` and
:mod:`._report`, so every layer above may emit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from . import _policy
from ._errors import ArgumentError
from ._report import logger

__all__ = [
    "Handler", "attach", "detach", "list_handlers", "execute", "slot", "tree_path", "format_path", "EVENTS",
    "CHILD_START", "CHILD_EXIT", "CHILD_START_FAILURE", "CHILD_ZOMBIE", "SUPERVISOR_RESTART",
    "SUPERVISOR_GIVE_UP", "REGISTRY_CLAIM", "REGISTRY_CONFLICT", "WEBSOCKET_OPEN", "WEBSOCKET_CLOSE",
    "WEBSOCKET_REFUSED", "INSTANCE_TRANSITION", "CLUSTER_NODEUP", "CLUSTER_NODEDOWN", "LOOP_BLOCKED",
]

CHILD_START = ("greentree", "child", "start")
CHILD_EXIT = ("greentree", "child", "exit")
CHILD_START_FAILURE = ("greentree", "child", "start_failure")
CHILD_ZOMBIE = ("greentree", "child", "zombie")
SUPERVISOR_RESTART = ("greentree", "supervisor", "restart")
SUPERVISOR_GIVE_UP = ("greentree", "supervisor", "give_up")
REGISTRY_CLAIM = ("greentree", "registry", "claim")
REGISTRY_CONFLICT = ("greentree", "registry", "conflict")
WEBSOCKET_OPEN = ("greentree", "websocket", "open")
WEBSOCKET_CLOSE = ("greentree", "websocket", "close")
WEBSOCKET_REFUSED = ("greentree", "websocket", "refused")
INSTANCE_TRANSITION = ("greentree", "instance", "transition")
CLUSTER_NODEUP = ("greentree", "cluster", "nodeup")
CLUSTER_NODEDOWN = ("greentree", "cluster", "nodedown")
LOOP_BLOCKED = ("greentree", "loop", "blocked")

#: Every event greentree emits.
EVENTS = (
    CHILD_START, CHILD_EXIT, CHILD_START_FAILURE, CHILD_ZOMBIE, SUPERVISOR_RESTART, SUPERVISOR_GIVE_UP,
    REGISTRY_CLAIM, REGISTRY_CONFLICT, WEBSOCKET_OPEN, WEBSOCKET_CLOSE, WEBSOCKET_REFUSED,
    INSTANCE_TRANSITION, CLUSTER_NODEUP, CLUSTER_NODEDOWN, LOOP_BLOCKED,
)

HandlerFn = Callable[[tuple, dict, dict], Any]


class Handler(NamedTuple):
    """One row of :func:`list_handlers`: a handler attached to one event."""

    id: Any
    event: tuple
    function: HandlerFn


_slots: dict[tuple, list] = {}   # event -> [(handler_id, fn), ...]; the list objects are permanent
_by_id: dict[Any, tuple] = {}    # handler_id -> the events it is attached to


def slot(event: tuple) -> list:
    """The permanent handler list of ``event`` (empty while nobody listens)."""
    handlers = _slots.get(event)
    if handlers is None:
        handlers = _slots[event] = []
    return handlers


def _check_event(event: Any, handler_id: Any) -> tuple:
    if not isinstance(event, tuple) or not event or not all(isinstance(p, str) for p in event):
        raise ArgumentError(
            f"attach({handler_id!r}): an event is a non-empty tuple of str such as "
            f"('greentree', 'child', 'exit'), not {event!r}"
        )
    return event


def attach(handler_id: Any, events: Any, fn: HandlerFn) -> None:
    """Call ``fn(event, measurements, metadata)`` each time one of ``events`` happens.

    ``events`` is one event (a tuple of str) or a list of them.  Raises
    :class:`ArgumentError` if ``handler_id`` is already attached (detach it
    first) or the arguments are malformed; nothing is attached then.
    """
    try:
        hash(handler_id)
    except TypeError:
        raise ArgumentError(f"attach({handler_id!r}): handler_id must be hashable (a str)") from None
    if not callable(fn):
        raise ArgumentError(f"attach({handler_id!r}): fn must be callable (event, measurements, metadata), "
                            f"not {fn!r}")
    if isinstance(events, tuple) and events and all(isinstance(p, str) for p in events):
        wanted: tuple = (events,)
    elif isinstance(events, (str, bytes)) or not isinstance(events, Iterable):
        raise ArgumentError(f"attach({handler_id!r}): events must be an event tuple or a list of them, "
                            f"not {events!r}")
    else:
        wanted = tuple(dict.fromkeys(_check_event(e, handler_id) for e in events))
        if not wanted:
            raise ArgumentError(f"attach({handler_id!r}): no events given")
    if handler_id in _by_id:
        raise ArgumentError(f"attach({handler_id!r}): a handler with this id is already attached; "
                            f"detach({handler_id!r}) first or choose another id")
    _by_id[handler_id] = wanted
    for event in wanted:
        slot(event).append((handler_id, fn))


def detach(handler_id: Any) -> bool:
    """Detach the handler ``handler_id`` from every event; False if it was not attached."""
    events = _by_id.pop(handler_id, None)
    if events is None:
        return False
    for event in events:
        handlers = _slots[event]
        handlers[:] = [h for h in handlers if h[0] != handler_id]
    return True


def list_handlers(prefix: tuple = ()) -> list[Handler]:
    """The attached handlers whose event starts with ``prefix`` (all by default)."""
    n = len(prefix)
    return [
        Handler(hid, event, fn)
        for event, handlers in _slots.items() if event[:n] == tuple(prefix)
        for hid, fn in handlers
    ]


def execute(event: tuple, measurements: dict, metadata: dict) -> None:
    """Emit ``event`` to its handlers (your own events too), in attach order.

    A handler that raises is detached and its error logged once (logger
    ``greentree``); the others still run.  Handlers run in the greenlet where
    the event happened (for some, the gevent hub or gevent's monitor thread):
    they must not block.
    """
    handlers = _slots.get(event)
    if handlers:
        _run(event, handlers, measurements, metadata)


def _run(event: tuple, handlers: list, measurements: dict, metadata: dict) -> None:
    for hid, fn in tuple(handlers):
        try:
            fn(event, measurements, metadata)
        except Exception as e:  # a handler's bug must never break the tree that reports to it
            detach(hid)
            logger.error(
                "telemetry handler %r failed on %s and was detached: %s: %s",
                hid, ".".join(event), type(e).__name__, e,
                exc_info=(type(e), e, e.__traceback__),
                extra={"greentree_handler": hid, "greentree_event": event},
            )


# ------------------------------------------------------------------ paths
def _label(node: Any) -> Any:
    name = getattr(node, "name", None)
    return name if name is not None else type(node).__name__


def tree_path(node: Any) -> tuple:
    """The path of a supervisor (or any child) from its root: the root's
    name, then the child id of each supervisor on the way down.

    Computed on demand from the record every child already holds of its
    parent: nothing is stored for it.
    """
    parts = []
    for _ in range(256):  # a guard, not a limit anyone meets
        rec = getattr(node, "_gt_rec", None)
        if rec is None:
            parts.append(_label(node))
            break
        parts.append(rec.id)
        node = rec.sup
    return tuple(reversed(parts))


def format_path(path: tuple) -> str:
    """``("app", "connections", None)`` -> ``"app/connections/*"`` (None: an anonymous child)."""
    return "/".join("*" if p is None else str(p) for p in path)


def _child_meta(sup: Any, rec: Any, child: Any) -> dict:
    return {
        "supervisor": sup, "supervisor_name": getattr(sup, "name", None), "path": tree_path(sup),
        "child_id": rec.id if rec is not None else None, "child": child,
    }


# ------------------------------------------------------------------ emitters
# The hot ones (start, exit, restart) are called only after the caller saw a
# non-empty slot; the rare ones (start failure, zombie, give-up) test it here.
_START_FAILURE = slot(CHILD_START_FAILURE)
_ZOMBIE = slot(CHILD_ZOMBIE)
_GIVE_UP = slot(SUPERVISOR_GIVE_UP)


def child_start(sup: Any, rec: Any, child: Any) -> None:
    meta = _child_meta(sup, rec, child)
    meta["restart"] = rec.last_exit is not None  # a restart, not a first start
    started = rec.started_at
    execute(CHILD_START, {"duration": (sup._clock() - started) if started is not None else 0.0}, meta)


def child_exit(sup: Any, child: Any, exit: _policy.Exit) -> None:
    rec = child._gt_rec
    if rec is None or rec.child is not child:
        decision = "stopped"  # stopped by its supervisor (terminate, group restart, shutdown)
    else:
        decision = _policy.decide(rec.spec.restart, exit.kind)
    meta = _child_meta(sup, rec, child)
    meta.update(kind=exit.kind, reason=exit.reason, decision=decision)
    started = rec.started_at if rec is not None else None
    execute(CHILD_EXIT, {"uptime": (sup._clock() - started) if started is not None else 0.0}, meta)


def start_failure(sup: Any, child_id: Any, error: BaseException, phase: str) -> None:
    if not _START_FAILURE:
        return
    meta = {"supervisor": sup, "supervisor_name": getattr(sup, "name", None), "path": tree_path(sup),
            "child_id": child_id, "child": None, "reason": getattr(error, "reason", error), "error": error,
            "phase": phase}
    execute(CHILD_START_FAILURE, {"count": 1}, meta)


def zombie(sup: Any, rec: Any, child: Any) -> None:
    if not _ZOMBIE:
        return
    execute(CHILD_ZOMBIE, {"zombies": sup._zombies}, _child_meta(sup, rec, child))


def restart(sup: Any, rec: Any, exit: _policy.Exit | None, now: float | None) -> None:
    meta = _child_meta(sup, rec, rec.child)
    meta.update(reason=None if exit is None else exit.reason, kind=None if exit is None else exit.kind,
                strategy=getattr(getattr(sup, "strategy", None), "value", "one_for_one"))
    window = sup._intensity
    recent = 0 if window is None else window.count(sup._clock() if now is None else now)
    execute(SUPERVISOR_RESTART, {"recent_restarts": recent, "max_restarts": sup.max_restarts}, meta)


def give_up(sup: Any, rec: Any, exit: _policy.Exit | None, error: BaseException) -> None:
    if not _GIVE_UP:
        return
    meta = _child_meta(sup, rec, rec.child)
    meta.update(reason=None if exit is None else exit.reason, error=error)
    execute(SUPERVISOR_GIVE_UP, {"max_restarts": sup.max_restarts, "max_seconds": sup.max_seconds}, meta)


def websocket(event: tuple, conn: Any, service: Any, **more: Any) -> None:
    meta = {"service": service, "connection": conn, "instance_id": conn.instance_id, "peer": conn.peer,
            "path": tree_path(conn), **more}
    execute(event, {"connections": service.instance_count()}, meta)


_WS_REFUSED = slot(WEBSOCKET_REFUSED)


def websocket_refused(service: Any, request: Any, status: int, why: Any) -> None:
    if not _WS_REFUSED:
        return
    meta = {"service": service, "peer": request.peer, "request_path": request.path, "status": status, "reason": why}
    execute(WEBSOCKET_REFUSED, {"count": 1}, meta)


def transition(shard: Any, inst: Any, action: Any, new_state: Any, now: float) -> None:
    meta = {"manager": shard._m, "shard": shard._index, "instance_id": inst.id, "spec": inst.spec,
            "action": action, "from_state": inst.state, "to_state": new_state}
    execute(INSTANCE_TRANSITION, {"time_in_state": now - inst.updated}, meta)


_NODEUP = slot(CLUSTER_NODEUP)
_NODEDOWN = slot(CLUSTER_NODEDOWN)


def node_change(cluster: Any, note: tuple) -> None:
    """``note`` is ``("nodeup", node)`` or ``("nodedown", node, reason)`` (``Cluster.monitor_nodes``)."""
    if note[0] == "nodeup" and _NODEUP:
        execute(CLUSTER_NODEUP, {"nodes": len(cluster._view.nodes)},
                {"cluster": cluster, "node": note[1], "self": getattr(cluster, "node", None)})
    elif note[0] == "nodedown" and _NODEDOWN:
        execute(CLUSTER_NODEDOWN, {"nodes": len(cluster._view.nodes)},
                {"cluster": cluster, "node": note[1], "reason": note[2] if len(note) > 2 else None,
                 "self": getattr(cluster, "node", None)})


def report_blocked(path: Any, child_id: Any, greenlet: Any, seconds: float) -> None:
    """Log a blocked loop at WARNING, naming the tree path (for ``telemetry.watch_blocking``)."""
    where = "outside any tree" if path is None else f"in {format_path(path + (child_id,))}"
    logger.warning(
        "the event loop was blocked for more than %g s by %r (%s)", seconds, greenlet, where,
        extra={"greentree_path": path, "greentree_child": child_id, "greentree_greenlet": repr(greenlet),
               "greentree_blocking_time": seconds},
    )

