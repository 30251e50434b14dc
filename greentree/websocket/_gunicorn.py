"""Under gunicorn's gevent worker: stop every tree (close code 1001) when the worker stops accepting.

gunicorn's worker sets ``worker.alive = False`` when it receives SIGTERM
(graceful shutdown) and when it reaches ``max_requests`` (recycling); it
then stops accepting and waits up to ``graceful_timeout`` for the open
requests, which, for WebSockets, would be every connection, and finally
kills them without a close frame.  :func:`watch_worker` finds the worker
that runs this process (it is the object whose ``handle_exit`` is the
SIGTERM handler) and gives it an ``alive`` property: the moment it turns
False, every watched service stops its trees, in order, so every client
gets a 1001 close frame and the worker exits within a second or two.

Nothing happens outside gunicorn (a plain pywsgi server or
:func:`greentree.run` handles SIGTERM itself).
"""

from __future__ import annotations

import signal
from typing import Any

import gevent

__all__ = ["watch_worker", "current_worker"]


def current_worker() -> Any:
    """The gunicorn worker running this process, or None."""
    handler = signal.getsignal(signal.SIGTERM)
    worker = getattr(handler, "__self__", None)
    if worker is None or not type(worker).__module__.startswith("gunicorn"):
        return None
    return worker


def _get_alive(worker) -> bool:
    return worker.__dict__.get("_greentree_alive", True)


def _set_alive(worker, value: bool) -> None:
    was = worker.__dict__.get("_greentree_alive", True)
    worker.__dict__["_greentree_alive"] = value
    if was and not value:
        # May run inside a signal handler: only spawn, never block here.
        gevent.spawn(_stop_services, list(worker.__dict__.get("_greentree_services", ())))


def _stop_services(services) -> None:
    for svc in services:
        svc.stop_all()


def watch_worker(service) -> bool:
    """Stop ``service``'s trees when this process's gunicorn worker stops accepting.

    Returns True if a gunicorn worker runs this process.  Idempotent.
    """
    worker = current_worker()
    if worker is None:
        return False
    services = worker.__dict__.setdefault("_greentree_services", [])
    if service not in services:
        services.append(service)
    cls = type(worker)
    if not getattr(cls, "_greentree_watched", False):
        alive = worker.__dict__.pop("alive", True)
        watched = type(cls.__name__, (cls,), {
            "alive": property(_get_alive, _set_alive), "_greentree_watched": True,
            "__module__": cls.__module__,
        })
        worker.__dict__["_greentree_alive"] = alive
        worker.__class__ = watched
        if not alive:
            gevent.spawn(_stop_services, [service])
    return True
