"""Scenario 5: memory per idle supervised child vs a bare parked greenlet.

greentree: N children ``ChildSpec(None, park)`` under a DynamicSupervisor.
Floor: ``gevent.spawn(park)``, nothing else.  ``park`` waits on the child's
own Event in both.  Each measurement runs in a fresh process (see
``_memchild``), alternating floor and greentree; reported are the medians of
the RSS delta (``/proc/self/statm``) and of the tracemalloc delta, in bytes
per child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ._harness import Config, Row, alternate

NAME = "memory"
TITLE = "memory per idle child: supervised vs bare parked greenlet (fresh process each)"
TARGET = 1.1
IDLE_SUP_TARGET = 2048  # bytes per idle supervisor with no children
SIZES = [10_000, 100_000]
SMOKE_SIZES = [1_000]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure_in_child(kind: str, n: int) -> dict:
    """Run ``_memchild`` for ``kind`` and N children in a fresh interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = _ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks._memchild", kind, str(n)],
        cwd=_ROOT, env=env, check=True, capture_output=True, text=True, timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(cfg: Config) -> list[Row]:
    rows = []
    repeat = 1 if cfg.smoke else min(cfg.repeat, 3)
    sizes = cfg.n_list(SIZES, SMOKE_SIZES)
    sizes = [n for n in sizes if n >= 1_000] or sizes
    for n in sizes:
        cfg.log(f"{NAME}: N={n:,}")
        f, g = alternate(lambda: measure_in_child("bare", n), lambda: measure_in_child("supervised", n),
                         Config(warmup=0, repeat=repeat), repeat=repeat)
        row = Row(NAME, f"N={n:,}", "RSS", "KiB/child", f["rss"] / 1024, g["rss"] / 1024,
                  target=f"<= {TARGET}x bare")
        row.met = row.ratio <= TARGET
        rows.append(row)
        rows.append(Row(NAME, f"N={n:,}", "tracemalloc", "KiB/child", f["traced"] / 1024, g["traced"] / 1024))
    # An idle supervisor with no children, next to what one cost when every
    # supervisor was a greenlet: a parked greenlet.
    n_sup = 1_000 if cfg.smoke else 10_000
    for kind, label in (("idle_dynamic", "idle DynamicSupervisor"), ("idle_static", "idle Supervisor")):
        cfg.log(f"{NAME}: {label} x {n_sup:,}")
        f, g = alternate(lambda: measure_in_child("bare", n_sup), lambda k=kind: measure_in_child(k, n_sup),
                         Config(warmup=0, repeat=repeat), repeat=repeat)
        row = Row(NAME, f"{label}, no children", "tracemalloc", "B/supervisor", f["traced"], g["traced"],
                  target=f"<= {IDLE_SUP_TARGET} B")
        row.met = g["traced"] <= IDLE_SUP_TARGET
        rows.append(row)
        rows.append(Row(NAME, f"{label}, no children", "RSS", "B/supervisor", f["rss"], g["rss"]))
    return rows
