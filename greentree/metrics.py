"""Metrics of the live trees, read when they are scraped.

:func:`snapshot` walks every running tree of this process (and every
:class:`~greentree.Registry` and WebSocket service in them) and returns plain
numbers; nothing is counted per message or per start.  On top of it:

* :class:`PrometheusCollector` (``pip install greentree-otp[prometheus]``): a
  ``prometheus_client`` collector that calls :func:`snapshot` at each scrape;
* :class:`MultiprocessExporter`: the same numbers written into
  ``prometheus_client``'s multiprocess files, for gunicorn with several
  workers (a custom collector only ever sees the worker that serves the
  scrape);
* OpenTelemetry: observable instruments whose callbacks read
  :func:`snapshot` (see the Metrics page of the docs).

>>> import gevent, greentree
>>> from greentree import metrics
>>> with greentree.Supervisor([greentree.ChildSpec("w", gevent.sleep, 60)], name="doc-app"):
...     metrics.snapshot()["greentree_children"][("doc-app", "running")]
1.0

Labels.  A supervisor is labelled by its path from the root (``app/pool``);
the children of a :class:`~greentree.DynamicSupervisor` are many and
anonymous, so they share one label element ``*``: the 10,000
per-connection trees under ``app/connections`` are summed into
``app/connections/*``, and the number of series stays that of your static
tree.

Counters of events that leave nothing behind in a live tree (restarts,
give-ups, start failures, zombies) are kept by one telemetry handler that
:func:`enable_counters` attaches (a dict increment per such event; the
collector and the exporter call it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import gevent
from gevent import getcurrent
from gevent._hub_local import get_hub_if_exists

from . import _process, _registry, _telemetry
from ._dynamic import DynamicSupervisor
from ._errors import ArgumentError

__all__ = ["FAMILIES", "YIELD_EVERY", "snapshot", "enable_counters", "disable_counters", "PrometheusCollector",
           "MultiprocessExporter"]

logger = logging.getLogger("greentree")

#: name -> (kind, help, label names, multiprocess mode of a gauge).
FAMILIES: dict[str, tuple[str, str, tuple, str]] = {
    "greentree_supervisors": ("gauge", "Supervisors alive, per tree path", ("supervisor",), "livesum"),
    "greentree_children": ("gauge", "Children per supervisor, by state (running, restarting, stopped)",
                           ("supervisor", "state"), "livesum"),
    "greentree_mailbox_depth": ("gauge", "Events waiting in the mailboxes of supervisors and servers, "
                                "summed per path", ("process",), "livesum"),
    "greentree_mailbox_depth_max": ("gauge", "The deepest mailbox per path", ("process",), "livemax"),
    "greentree_restarts": ("counter", "Restarts decided by supervisors (counted toward intensity)",
                           ("supervisor",), ""),
    "greentree_give_ups": ("counter", "Supervisors that exceeded their restart intensity and gave up",
                           ("supervisor",), ""),
    "greentree_start_failures": ("counter", "Children that failed to start (init, restart, start_child)",
                                 ("supervisor",), ""),
    "greentree_zombies": ("counter", "Children that survived greentree's kill (zombies)", ("supervisor",), ""),
    "greentree_registry_names": ("gauge", "Names held in each Registry", ("registry",), "livesum"),
    "greentree_websocket_connections": ("gauge", "Open WebSocket connection trees per service",
                                        ("service",), "livesum"),
    "greentree_websocket_opened": ("counter", "WebSocket connections opened", ("service",), ""),
    "greentree_websocket_closed": ("counter", "WebSocket connections closed", ("service",), ""),
    "greentree_websocket_refused": ("counter", "WebSocket upgrades refused by on_connect", ("service",), ""),
    "greentree_websocket_writer_queue_frames": ("gauge", "Frames waiting for WebSocket writers, summed",
                                                ("service",), "livesum"),
    "greentree_websocket_writer_queue_max": ("gauge", "The longest WebSocket writer queue",
                                             ("service",), "livemax"),
}

_TALLIED = {
    _telemetry.SUPERVISOR_RESTART: "greentree_restarts",
    _telemetry.SUPERVISOR_GIVE_UP: "greentree_give_ups",
    _telemetry.CHILD_START_FAILURE: "greentree_start_failures",
    _telemetry.CHILD_ZOMBIE: "greentree_zombies",
}
_HANDLER_ID = "greentree.metrics"
#: A snapshot lets the hub run after this many supervisors (per-connection trees are many).
YIELD_EVERY = 200
_tally: dict[str, dict[tuple, float]] = {name: {} for name in _TALLIED.values()}


# ------------------------------------------------------------------ labels
def _root_label(node: Any) -> str:
    name = getattr(node, "name", None)
    return str(name) if name is not None else type(node).__name__


def metric_label(sup: Any) -> str:
    """A supervisor's label: its path, children of dynamic supervisors as ``*``."""
    parts: list[str] = []
    node = sup
    for _ in range(256):
        rec = getattr(node, "_gt_rec", None)
        if rec is None:
            parts.append(_root_label(node))
            break
        parent = rec.sup
        parts.append("*" if isinstance(parent, DynamicSupervisor) else str(rec.id))
        node = parent
    return "/".join(reversed(parts))


# ------------------------------------------------------------------ counters
def _count(event: tuple, measurements: dict, metadata: dict) -> None:
    sup = metadata.get("supervisor")
    key = (metric_label(sup) if sup is not None else "",)
    counts = _tally[_TALLIED[event]]
    counts[key] = counts.get(key, 0.0) + 1.0


def enable_counters() -> None:
    """Attach the handler that counts restarts, give-ups, start failures and zombies (idempotent)."""
    if not any(h.id == _HANDLER_ID for h in _telemetry.list_handlers(("greentree",))):
        _telemetry.attach(_HANDLER_ID, list(_TALLIED), _count)


def disable_counters() -> None:
    """Detach it; the counts so far are kept."""
    _telemetry.detach(_HANDLER_ID)


# ------------------------------------------------------------------ the walk
def _roots(roots: Iterable[Any] | None) -> list:
    return list(_process._live) if roots is None else list(roots)


def _add(out: dict, name: str, key: tuple, value: float) -> None:
    d = out[name]
    d[key] = d.get(key, 0.0) + value


def _max(out: dict, name: str, key: tuple, value: float) -> None:
    d = out[name]
    if value > d.get(key, -1.0):
        d[key] = float(value)


def snapshot(roots: Iterable[Any] | None = None) -> dict[str, dict[tuple, float]]:
    """Every metric of :data:`FAMILIES`: ``{name: {label values: value}}``.

    ``roots`` are the trees to walk (default: every tree started in this
    process).  It costs a few microseconds per child and about 25 us per
    small per-connection tree; in a greenlet it lets the hub run every
    :data:`YIELD_EVERY` supervisors, so a big walk does not freeze the loop.
    """
    out: dict[str, dict[tuple, float]] = {name: {} for name in FAMILIES}
    services: dict = {}
    stack = [(root, _root_label(root)) for root in _roots(roots)]
    hub = get_hub_if_exists()  # None in a thread without a hub: then never yield
    may_yield = hub is not None and getcurrent() is not hub
    walked = 0
    while stack:
        sup, label = stack.pop()
        walked += 1
        if may_yield and walked % YIELD_EVERY == 0:
            # gevent never preempts: let timers and sockets in during a big walk
            # (each supervisor's children are read from a copy, so changes meanwhile are safe).
            gevent.idle()
        _add(out, "greentree_supervisors", (label,), 1.0)
        depth = float(sup._mb_size())
        _add(out, "greentree_mailbox_depth", (label,), depth)
        _max(out, "greentree_mailbox_depth_max", (label,), depth)
        service = getattr(sup, "service", None)
        if service is not None and hasattr(service, "stats"):
            services[id(service)] = (service, label)
        dynamic = isinstance(sup, DynamicSupervisor)
        counts = {"running": 0, "restarting": 0, "stopped": 0}
        for rec in list(sup._recs()):
            child = rec.child
            if child is None:
                counts[rec.state if rec.state in counts else "stopped"] += 1
                continue
            counts["running"] += 1
            child_label = label + "/" + ("*" if dynamic else str(rec.id))
            if hasattr(child, "_recs"):
                stack.append((child, child_label))
            elif hasattr(child, "_mb_size"):  # a Server
                d = float(child._mb_size())
                _add(out, "greentree_mailbox_depth", (child_label,), d)
                _max(out, "greentree_mailbox_depth_max", (child_label,), d)
            backlog: Any = getattr(child, "_backlog", _MISSING)
            if backlog is not _MISSING and hasattr(child, "service"):  # a WebSocket Connection
                svc_label = services.get(id(child.service), (None, label))[1]
                n = float(len(backlog)) if backlog else 0.0
                _add(out, "greentree_websocket_writer_queue_frames", (svc_label,), n)
                _max(out, "greentree_websocket_writer_queue_max", (svc_label,), n)
        for state, n in counts.items():
            _add(out, "greentree_children", (label, state), float(n))
    for service, label in services.values():
        stats = service.stats
        _add(out, "greentree_websocket_connections", (label,), float(service.instance_count()))
        _add(out, "greentree_websocket_opened", (label,), float(stats.connections_opened))
        _add(out, "greentree_websocket_closed", (label,), float(stats.connections_closed))
        _add(out, "greentree_websocket_refused", (label,), float(stats.refused))
        out["greentree_websocket_writer_queue_frames"].setdefault((label,), 0.0)
        out["greentree_websocket_writer_queue_max"].setdefault((label,), 0.0)
    for reg in list(_registry.live_registries):
        _add(out, "greentree_registry_names", (str(reg.name) if reg.name is not None else str(reg),),
             float(reg.count()))
    for name, tally in _tally.items():
        out[name].update(tally)
    return out


_MISSING = object()


# ------------------------------------------------------------------ Prometheus
class PrometheusCollector:
    """A ``prometheus_client`` collector over the live trees, read at scrape time.

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> registry = CollectorRegistry()
    >>> PrometheusCollector(registry=registry)  # doctest: +ELLIPSIS
    <greentree.metrics.PrometheusCollector object at ...>
    >>> b"# TYPE greentree_restarts_total counter" in generate_latest(registry)
    True

    ``registry`` defaults to ``prometheus_client.REGISTRY``; ``roots`` to
    every tree of this process.  Under gunicorn with several workers use
    :class:`MultiprocessExporter` instead.
    """

    def __init__(self, roots: Iterable[Any] | None = None, registry: Any = "default"):
        self.roots = None if roots is None else list(roots)
        enable_counters()
        if registry == "default":
            from prometheus_client import REGISTRY

            registry = REGISTRY
        if registry is not None:
            registry.register(self)

    def describe(self) -> list:
        return []  # prometheus_client then does not collect at registration

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = snapshot(self.roots)
        for name, (kind, help_, labels, _mode) in FAMILIES.items():
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = cls(name, help_, labels=labels)
            for key, value in sorted(snap[name].items()):
                family.add_metric(list(key), value)
            yield family


class MultiprocessExporter:
    """Write this worker's metrics into ``prometheus_client``'s multiprocess
    files, every ``interval`` seconds and at each :meth:`write`.

    prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set
    before it is imported) aggregates only metrics kept in its per-process
    files; a custom collector would report the one worker that happens to
    serve the scrape.  So each worker copies :func:`snapshot` into
    multiprocess gauges (``livesum``: summed over live workers; the maxima
    ``livemax``) and counters (summed over all workers, dead ones included),
    and the scrape endpoint (:meth:`wsgi_app`) refreshes its own worker
    first.  The other workers' numbers are at most ``interval`` seconds old.

    Start one per worker, after the fork (gunicorn's ``post_worker_init``,
    or where the worker builds its trees); in gunicorn's ``child_exit`` call
    ``prometheus_client.multiprocess.mark_process_dead(worker.pid)``.
    """

    def __init__(self, interval: float = 5.0, roots: Iterable[Any] | None = None):
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
            raise ArgumentError(f"MultiprocessExporter: interval must be a number of seconds > 0, not {interval!r}")
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") and not os.environ.get("prometheus_multiproc_dir"):
            raise ArgumentError(
                "MultiprocessExporter: PROMETHEUS_MULTIPROC_DIR is not set; set it to an empty directory "
                "in the environment of gunicorn (before prometheus_client is imported), or use "
                "PrometheusCollector in a single process"
            )
        from prometheus_client import Counter, Gauge

        self.interval = float(interval)
        self.roots = None if roots is None else list(roots)
        self._registry = None  # the instruments live in no registry: the files are what is scraped
        self._metrics: dict[str, Any] = {}
        for name, (kind, help_, labels, mode) in FAMILIES.items():
            if kind == "counter":
                self._metrics[name] = Counter(name, help_, labels, registry=None)
            else:
                self._metrics[name] = Gauge(name, help_, labels, registry=None,
                                            multiprocess_mode=mode)  # type: ignore[arg-type]
        self._written: dict[str, dict[tuple, float]] = {name: {} for name in FAMILIES}
        self._greenlet: Any = None
        enable_counters()

    def write(self) -> None:
        """Copy the current :func:`snapshot` into the multiprocess files now."""
        snap = snapshot(self.roots)
        for name, values in snap.items():
            metric = self._metrics[name]
            written = self._written[name]
            if FAMILIES[name][0] == "counter":
                for key, value in values.items():
                    delta = value - written.get(key, 0.0)
                    if delta > 0:
                        metric.labels(*key).inc(delta)
                        written[key] = value
                    elif delta < 0:  # the source was reset (a service restarted): count on from there
                        written[key] = value
                continue
            for key in written.keys() - values.keys():
                metric.labels(*key).set(0.0)  # a tree that went away: no stale value
            for key, value in values.items():
                metric.labels(*key).set(value)
            self._written[name] = dict.fromkeys(written, 0.0) | values

    def _loop(self) -> None:
        while True:
            try:
                self.write()
            except Exception as e:  # noqa: BLE001 - a metrics failure must not take the worker down
                logger.error("greentree.metrics: writing the multiprocess metrics failed: %r", e)
            gevent.sleep(self.interval)

    def start(self) -> MultiprocessExporter:
        """Write now, then every ``interval`` seconds in a greenlet of this worker."""
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._loop)
        return self

    def stop(self) -> None:
        g, self._greenlet = self._greenlet, None
        if g is not None:
            g.kill()

    def wsgi_app(self, environ: dict, start_response: Any) -> list[bytes]:
        """A WSGI app serving every worker's metrics (refreshing this worker's first)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        self.write()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        body = generate_latest(registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]
