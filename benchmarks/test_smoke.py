"""The benchmarks still run: ``python -m benchmarks --smoke`` (tiny sizes, no timing asserted).

Run with ``python -m pytest benchmarks/test_smoke.py -q``.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(180)
def test_every_scenario_runs_and_gives_sane_numbers(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--quiet", "--output", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=170,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads((tmp_path / "latest.json").read_text())
    scenarios = {row["scenario"] for row in doc["rows"]}
    expected = {"spec", "start", "restart", "group_restart", "shutdown", "memory", "storm", "conn_tree", "cluster", "instances",
                "cluster_redis", "telemetry"}
    if not shutil.which("etcd"):
        expected.discard("cluster")  # the cluster scenario needs etcd (Debian etcd-server)
    if not shutil.which("redis-server"):
        expected.discard("cluster_redis")
    assert set(doc["config"]["scenarios"]) == expected | {"cluster", "cluster_redis"} and scenarios == expected
    assert doc["hub_errors"] == 0
    assert all(row["greentree"] is not None for row in doc["rows"])
    assert {"cpu", "cores", "python", "gevent", "greenlet", "greentree", "date"} <= set(doc["machine"])
    assert (tmp_path / "per_child_cost.png").stat().st_size > 1000
    assert (tmp_path / "instances.png").stat().st_size > 1000


def test_an_unknown_scenario_is_refused_with_the_list_of_names():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "nope"], cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "no such scenario" in out.stderr and "storm" in out.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["floor", "greentree"])
def test_the_instances_cost_driver_runs_both_sides_with_the_same_batching(side):
    import re

    from benchmarks.instances_cost import measure

    line = measure(side, "normal", 8, 80)
    m = re.fullmatch(rf"{side} normal x8: [\d,]+ acks/s, event-loop thread CPU [\d.]+ us/transition, ([\d.]+) rows/commit",
                     line)
    assert m, line
    assert float(m.group(1)) == 1.0  # 8 callers with ids 0-7 land in 8 different shards: one row per commit
