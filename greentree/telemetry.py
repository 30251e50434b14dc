"""Telemetry events: what the trees do, as it happens, to handlers you attach.

Modelled on Erlang's ``:telemetry``.  An event is a tuple of names, such as
``("greentree", "child", "exit")``; a handler is a function
``fn(event, measurements, metadata)`` attached under an id of your choice:

>>> import gevent
>>> import greentree
>>> from greentree import telemetry
>>> seen = []
>>> telemetry.attach("doc", [telemetry.CHILD_EXIT, telemetry.SUPERVISOR_RESTART],
...                  lambda event, measurements, metadata: seen.append((event[-1], metadata["child_id"])))
>>> def worker():
...     if not seen:
...         return  # a permanent child that returns is restarted
...     gevent.sleep(3600)
>>> with greentree.Supervisor([greentree.ChildSpec("db", worker)], name="app"):
...     gevent.sleep(0.01)
>>> seen[:2]
[('exit', 'db'), ('restart', 'db')]
>>> telemetry.detach("doc")
True

*Measurements* are numbers (durations in seconds, counts); *metadata*
names where it happened: ``path`` (the supervisor's path from its root, a
tuple: the root's name, then each supervisor's child id), ``child_id``,
``supervisor`` and ``supervisor_name``, and what each event adds (see
:data:`EVENTS` and the Telemetry page of the docs).

Handlers run synchronously in the greenlet where the event happened (the
exiting child, the caller of ``start_child``, sometimes the gevent hub; for
:data:`LOOP_BLOCKED`, gevent's monitor thread): they must be quick and must
not block.  A handler that raises is detached and its error is logged once.

Cost: with nothing attached to an event, each place that emits it pays one
test of a list, nothing else (``python -m benchmarks --only telemetry``).
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

from . import _process
from ._errors import ArgumentError
from ._telemetry import (
    CHILD_EXIT,
    CHILD_START,
    CHILD_START_FAILURE,
    CHILD_ZOMBIE,
    CLUSTER_NODEDOWN,
    CLUSTER_NODEUP,
    EVENTS,
    INSTANCE_TRANSITION,
    LOOP_BLOCKED,
    REGISTRY_CLAIM,
    REGISTRY_CONFLICT,
    SUPERVISOR_GIVE_UP,
    SUPERVISOR_RESTART,
    WEBSOCKET_CLOSE,
    WEBSOCKET_OPEN,
    WEBSOCKET_REFUSED,
    Handler,
    attach,
    detach,
    execute,
    format_path,
    list_handlers,
    report_blocked,
    tree_path,
)

__all__ = [
    "CHILD_EXIT", "CHILD_START", "CHILD_START_FAILURE", "CHILD_ZOMBIE", "CLUSTER_NODEDOWN", "CLUSTER_NODEUP",
    "EVENTS", "Handler", "INSTANCE_TRANSITION", "LOOP_BLOCKED", "REGISTRY_CLAIM", "REGISTRY_CONFLICT",
    "SUPERVISOR_GIVE_UP", "SUPERVISOR_RESTART", "WEBSOCKET_CLOSE", "WEBSOCKET_OPEN", "WEBSOCKET_REFUSED",
    "attach", "detach", "execute", "format_path", "list_handlers", "locate", "tree_path", "unwatch_blocking",
    "watch_blocking",
]


# ------------------------------------------------------------------ which child is this greenlet?
def _drained_by(g: Any) -> Any:
    """The supervisor whose mailbox ``g`` is draining (a borrowed or spawned greenlet), if any."""
    stack = list(_process._live)
    seen = 0
    while stack and seen < 100_000:
        node = stack.pop()
        seen += 1
        if getattr(node, "_mb_drainer", None) is g:
            return node
        recs = getattr(node, "_recs", None)
        if recs is None:
            continue
        for rec in list(recs()):
            child = rec.child
            if child is not None and hasattr(child, "_recs"):
                stack.append(child)
    return None


def locate(greenlet: Any) -> tuple[tuple | None, Any]:
    """``(path, child_id)`` of the supervised child ``greenlet`` runs for, or ``(None, None)``.

    ``path`` is its supervisor's :func:`tree_path`.  A greenlet a child
    spawned itself (a plain ``gevent.spawn``) is traced back to that child
    through gevent's ``spawning_greenlet``; a greenlet running a
    supervisor's own work (a child's constructor, a start) names that
    supervisor, with ``child_id`` None.

    >>> locate(None)
    (None, None)
    """
    g = greenlet
    for _ in range(64):
        if g is None:
            break
        rec = getattr(g, "_gt_rec", None)
        if rec is not None:
            return tree_path(rec.sup), rec.id
        spawner = getattr(g, "spawning_greenlet", None)
        g = spawner() if spawner is not None else None
    if greenlet is not None:
        sup = _drained_by(greenlet)
        if sup is not None:
            return tree_path(sup), None
    return None, None


# ------------------------------------------------------------------ a blocked loop, named
_watch_lock = threading.Lock()
_watching: dict = {}  # "subscriber" -> the function in gevent.events.subscribers


def _on_gevent_event(event: Any) -> None:
    from gevent.events import EventLoopBlocked

    if not isinstance(event, EventLoopBlocked):
        return
    try:
        g = event.greenlet
        path, child_id = locate(g)
        seconds = event.blocking_time
        report_blocked(path, child_id, g, seconds)
        execute(LOOP_BLOCKED, {"max_blocking_time": seconds},
                {"greenlet": g, "path": path, "child_id": child_id, "info": event.info})
    except Exception as e:  # never break gevent's monitor thread
        logging.getLogger("greentree").error("telemetry: reporting a blocked loop failed: %r", e)


def watch_blocking(max_blocking_time: float = 0.1, *, print_reports: bool = False) -> None:
    """Name the child that blocks the event loop: start gevent's monitor thread
    and turn each :class:`gevent.events.EventLoopBlocked` into a WARNING log
    record (logger ``greentree``) and a :data:`LOOP_BLOCKED` event, both
    naming the tree path and child id of the greenlet that blocked.

    ``max_blocking_time`` is gevent's threshold in seconds.  gevent's own
    report (a dump of every greenlet's stack to stderr) is turned off unless
    ``print_reports`` is true; it is in the event's ``info`` metadata.  Call
    it in the process that runs the trees (under gunicorn, in each worker,
    e.g. in ``post_fork``).  The monitor traces every greenlet switch while
    it runs (gevent's cost, a few percent), so it is opt-in.
    """
    import gevent
    from gevent import events

    if isinstance(max_blocking_time, bool) or not isinstance(max_blocking_time, (int, float)) \
            or not max_blocking_time > 0:
        raise ArgumentError(f"watch_blocking(): max_blocking_time must be a number of seconds > 0, "
                            f"not {max_blocking_time!r}")
    with _watch_lock:
        gevent.config.max_blocking_time = float(max_blocking_time)
        gevent.config.print_blocking_reports = bool(print_reports)
        gevent.config.monitor_thread = True
        if "subscriber" not in _watching:
            _watching["subscriber"] = _on_gevent_event
            events.subscribers.append(_on_gevent_event)
    with warnings.catch_warnings():
        # gevent warns that it cannot also watch memory without psutil: not asked for here.
        warnings.filterwarnings("ignore", message="Unable to monitor memory usage")
        gevent.get_hub().start_periodic_monitoring_thread()


def unwatch_blocking() -> None:
    """Stop what :func:`watch_blocking` started (the monitor thread of this hub included)."""
    import gevent
    from gevent import events

    with _watch_lock:
        fn = _watching.pop("subscriber", None)
        if fn is not None and fn in events.subscribers:
            events.subscribers.remove(fn)
        gevent.config.monitor_thread = False
    hub = gevent.get_hub()
    mon = hub.periodic_monitoring_thread
    if mon is not None:
        mon.kill()
        hub.periodic_monitoring_thread = None
