"""The app tests/test_metrics.py serves with gunicorn -k gevent and several workers
(``metrics_app:create_app()``).

Each worker (the factory runs after the fork: no --preload) starts one tree
with three idle workers, a child that crashes once and a dynamic pool of two,
and a MultiprocessExporter; ``/metrics`` serves every worker's numbers.
Importing this module starts nothing (pytest collects it).
"""

import os

import gevent

import greentree


def _crash_once(crashed):
    if not crashed:
        crashed.append(True)
        raise RuntimeError("crash once, to be counted")
    gevent.sleep(3600)


def create_app():
    from greentree.metrics import MultiprocessExporter

    root = greentree.Supervisor(
        [greentree.ChildSpec(f"w{i}", gevent.sleep, 3600) for i in range(3)]
        + [greentree.ChildSpec("flaky", _crash_once, []), greentree.DynamicSupervisor.child_spec("pool")],
        name="app",
    )
    exporter = MultiprocessExporter(interval=0.2)
    root.start()
    root.wait_started()
    pool = root.which_children()[-1].child
    for _ in range(2):
        pool.start_child(greentree.ChildSpec(None, gevent.sleep, 3600))
    exporter.start()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/metrics":
            return exporter.wsgi_app(environ, start_response)
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    app.root = root  # keep the tree referenced for the worker's life
    return app
