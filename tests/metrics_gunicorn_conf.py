"""gunicorn settings for tests/metrics_app.py: a dead worker's live gauges are dropped."""

from prometheus_client import multiprocess


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
