"""The WebSocket benchmark still runs: ``python -m benchmarks.websocket_conns --smoke``.

It starts a greentree server process, a bare-greenlet server process, gevent-websocket
and flask-sock servers, and two client processes, 50 connections each way; only sanity
is checked, never timings.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(150)
def test_the_websocket_benchmark_smoke_run_exits_cleanly_and_writes_sane_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.websocket_conns", "--smoke", "--quiet", "--output", str(tmp_path),
         "--kinds", "gevent-websocket,floor,greentree,flask-sock"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=140,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "greentree/gevent-websocket" in out.stdout  # the table
    doc = json.loads((tmp_path / "websocket.json").read_text())
    assert doc["config"]["sizes"] == [50]
    assert {"cpu", "cores", "python", "gevent", "greenlet", "date"} <= set(doc["machine"])
    assert {r["kind"] for r in doc["runs"]} == {"gevent-websocket", "floor", "greentree", "flask-sock"}
    assert not [r for r in doc["runs"] if r.get("failed")]
    for run in doc["runs"]:
        assert run["n"] == 50 and run["requests"] == 50 * doc["config"]["rounds"]
        assert run["connections_per_s"] > 0 and run["teardown_s"] >= 0
        assert 0 < run["latency_p50_ms"] <= run["latency_p99_ms"]
        assert run["greenlets_per_connection"] >= 1  # the request greenlet at least
    greentree_stats = next(r["server_stats"] for r in doc["runs"] if r["kind"] == "greentree")
    assert greentree_stats["connection_crashes"] == greentree_stats["bad_frames"] == 0
    assert greentree_stats["connections_opened"] == greentree_stats["connections_closed"]
    assert all(r["reference"] == "gevent-websocket" for r in doc["rows"])
    ratios = [r["ratios"][k] for r in doc["rows"] for k in ("floor", "greentree")]
    assert all(ratio is not None and ratio > 0 for ratio in ratios)
    assert (tmp_path / "websocket.png").stat().st_size > 1000


def test_the_websocket_benchmark_refuses_a_connection_count_below_two():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.websocket_conns", "--connections", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "--connections must be >= 2" in out.stderr
