"""greentree.metrics: the scrape-time snapshot, the Prometheus collector, the
multiprocess exporter under a real gunicorn with several workers scraped over
HTTP, and the OpenTelemetry bridge of the docs."""

from __future__ import annotations

import logging
import os
import signal
import sys
import urllib.request

import gevent
import pytest
import websocket  # websocket-client
from wshelp import InThread, Served

import greentree
from greentree import ChildSpec, DynamicSupervisor, Registry, Supervisor, metrics, telemetry
from greentree.testing import wait_until

prometheus_client = pytest.importorskip("prometheus_client")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


@pytest.fixture(autouse=True)
def counters_detached_afterwards(caplog):
    caplog.set_level(logging.CRITICAL, logger="greentree")
    yield
    metrics.disable_counters()
    for counts in metrics._tally.values():
        counts.clear()


def crash_once(flag):
    if not flag:
        flag.append(True)
        raise RuntimeError("crash once")
    gevent.sleep(3600)


# ---------------------------------------------------------------- the snapshot
def test_snapshot_counts_children_by_state_and_collapses_dynamic_children():
    metrics.enable_counters()
    flag: list = []
    pool = DynamicSupervisor.child_spec("pool")
    root = Supervisor([ChildSpec("a", gevent.sleep, 60), ChildSpec("t", lambda: None, restart="transient"),
                       ChildSpec("flaky", crash_once, flag), pool], name="snap-app")
    with root:
        dyn = root.which_children()[-1].child
        for _ in range(3):
            dyn.start_child(ChildSpec(None, gevent.sleep, 60))
        inner = Supervisor.child_spec(None, [ChildSpec("x", gevent.sleep, 60)])
        dyn.start_child(inner)
        dyn.start_child(inner)
        wait_until(lambda: flag and root.which_children()[2].state == "running")
        snap = metrics.snapshot([root])
    children = snap["greentree_children"]
    assert children[("snap-app", "running")] == 3.0  # a, flaky, pool
    assert children[("snap-app", "stopped")] == 1.0  # t returned: kept, stopped
    assert children[("snap-app/pool", "running")] == 5.0
    # the two anonymous supervisors under the dynamic pool share one label
    assert snap["greentree_supervisors"][("snap-app/pool/*",)] == 2.0
    assert children[("snap-app/pool/*", "running")] == 2.0
    assert snap["greentree_mailbox_depth"][("snap-app",)] == 0.0
    assert snap["greentree_restarts"][("snap-app",)] == 1.0


def test_snapshot_reads_registries_servers_and_websocket_services():
    reg = Registry(name="metrics-names")
    g = greentree.Greenlet(gevent.sleep, 60)
    g.start()
    reg.register("k", greenlet=g)
    s = Served(lambda c, conv, body: body)
    try:
        ws = InThread(websocket.create_connection, s.url, 5).result()
        try:
            wait_until(lambda: s.svc.instance_count() == 1)
            snap = metrics.snapshot()
            assert snap["greentree_registry_names"][("metrics-names",)] == 1.0
            label = ("ws-test/connections",)
            assert snap["greentree_websocket_connections"][label] == 1.0
            assert snap["greentree_websocket_opened"][label] == 1.0
            assert snap["greentree_websocket_writer_queue_frames"][label] == 0.0
            assert snap["greentree_supervisors"][("ws-test/connections/*",)] == 1.0
        finally:
            ws.close()
    finally:
        s.stop()
        g.kill()


def test_the_prometheus_collector_exposes_every_family_at_scrape_time():
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    flag: list = []
    metrics.PrometheusCollector(registry=registry)
    with Supervisor([ChildSpec("flaky", crash_once, flag)], name="prom-app") as root:
        wait_until(lambda: flag and root.which_children()[0].state == "running")
        text = generate_latest(registry).decode()
    assert 'greentree_children{state="running",supervisor="prom-app"} 1.0' in text
    assert 'greentree_restarts_total{supervisor="prom-app"} 1.0' in text
    for name, (kind, *_rest) in metrics.FAMILIES.items():
        assert f"# TYPE {name}{'_total' if kind == 'counter' else ''} {kind}" in text or \
            f"# TYPE {name} {kind}" in text


# ---------------------------------------------------------------- gunicorn, several workers
def _scrape(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.timeout(90)
def test_gunicorn_workers_are_summed_over_http(tmp_path):
    from test_chat_example import Proc, free_port, wait_for

    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + TESTS, PROMETHEUS_MULTIPROC_DIR=str(prom_dir))
    proc = Proc([sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "3", "-b", f"127.0.0.1:{port}",
                 "-c", os.path.join(TESTS, "metrics_gunicorn_conf.py"), "--chdir", TESTS, "metrics_app:create_app()"],
                env=env)
    try:
        def summed():
            s = _scrape(port)
            if s is None:
                return None
            sups = s.get(("greentree_supervisors", (("supervisor", "app"),)))
            restarts = s.get(("greentree_restarts_total", (("supervisor", "app"),)))
            return s if sups == 3.0 and restarts == 3.0 else None

        s = wait_for(summed, 60, "three workers' metrics in one scrape")
        assert proc.p.poll() is None, proc.output()
        # 3 workers x (w0, w1, w2, flaky, pool) running; 3 x 2 pool children
        assert s[("greentree_children", (("state", "running"), ("supervisor", "app")))] == 15.0
        assert s[("greentree_children", (("state", "running"), ("supervisor", "app/pool")))] == 6.0
        # every worker answers with its pid: several served requests, one sum
        pids = set()
        for _ in range(30):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                pids.add(int(r.read()))
        assert len(pids) >= 2
        # a worker killed: its live gauges go (child_exit marks it dead), its counters stay;
        # gunicorn starts a new worker, whose tree counts again
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        s = wait_for(lambda: (x := _scrape(port)) is not None and
                     x.get(("greentree_restarts_total", (("supervisor", "app"),))) == 4.0 and
                     x.get(("greentree_supervisors", (("supervisor", "app"),))) == 3.0 and x, 60,
                     "the replacement worker's metrics")
        assert s[("greentree_children", (("state", "running"), ("supervisor", "app")))] == 15.0
        out = proc.output()
        assert "multiprocess metrics failed" not in out and "Worker failed to boot" not in out, out
    finally:
        proc.stop()


# ---------------------------------------------------------------- OpenTelemetry
def test_the_opentelemetry_recipe_of_the_docs():
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("greentree")

    # 1. gauges read at collection time
    def children(options: CallbackOptions):
        for (supervisor, state), value in metrics.snapshot()["greentree_children"].items():
            yield Observation(value, {"supervisor": supervisor, "state": state})

    meter.create_observable_gauge("greentree.children", callbacks=[children])

    # 2. events as counters
    restarts = meter.create_counter("greentree.restarts")

    def on_restart(event, measurements, metadata):
        restarts.add(1, {"supervisor": telemetry.format_path(metadata["path"]), "child": str(metadata["child_id"])})

    telemetry.attach("otel", telemetry.SUPERVISOR_RESTART, on_restart)
    flag: list = []
    try:
        with Supervisor([ChildSpec("flaky", crash_once, flag)], name="otel-app") as root:
            wait_until(lambda: flag and root.which_children()[0].state == "running")
            data = reader.get_metrics_data()
    finally:
        telemetry.detach("otel")
        provider.shutdown()
    points = {
        m.name: [(dict(p.attributes), p.value) for p in m.data.data_points]
        for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    assert ({"supervisor": "otel-app", "state": "running"}, 1.0) in points["greentree.children"]
    assert points["greentree.restarts"] == [({"supervisor": "otel-app", "child": "flaky"}, 1)]


def test_the_exporter_refuses_a_bad_interval():
    with pytest.raises(greentree.ArgumentError, match="interval"):
        metrics.MultiprocessExporter(interval=0)


def test_the_exporter_needs_the_multiprocess_directory(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    with pytest.raises(greentree.ArgumentError, match="PROMETHEUS_MULTIPROC_DIR is not set"):
        metrics.MultiprocessExporter()


def test_a_big_snapshot_lets_the_loop_run():
    ticks = []

    def ticker():
        while True:
            ticks.append(1)
            gevent.sleep(0.001)  # a timer: gevent.idle() lets it run once due

    inner = Supervisor.child_spec(None, [ChildSpec("a", gevent.sleep, 60)])
    with DynamicSupervisor(name="many") as dyn:
        for _ in range(3 * metrics.YIELD_EVERY):
            dyn.start_child(inner)
        t = gevent.spawn(ticker)
        gevent.sleep(0.01)
        before = len(ticks)
        snap = metrics.snapshot([dyn])
        during = len(ticks) - before
        t.kill()
    assert snap["greentree_supervisors"][("many/*",)] == 3 * metrics.YIELD_EVERY
    assert during >= 1  # the ticker ran while the walk was going on
