"""``python -m benchmarks``: run the scenarios, print the table, write JSON and PNG.

Options: ``--smoke`` (tiny sizes, a few seconds, checks only that every
scenario runs and gives sane numbers; writes nothing unless ``--output`` is
given), ``--only NAME`` (repeatable), ``--repeat K``, ``--sizes 1000,10000``
(the N list of the scaling scenarios), ``--storm-seconds S``, ``--output DIR``.
A full default run writes ``benchmarks/results/latest.json`` and
``benchmarks/results/per_child_cost.png``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import sys
import time

from . import ALIASES, SCENARIOS
from ._harness import Config, Row, pyplot

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine_info() -> dict:
    import gevent
    import greenlet

    import greentree

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "gevent": gevent.__version__,
        "greenlet": greenlet.__version__,
        "greentree": greentree.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
    }


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    if math.isnan(x):
        return "nan"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _status(row: Row) -> str:
    if row.met is None:
        return ""
    return "met" if row.met else "MISSED"


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        ratio = r.ratio
        out.append([
            r.scenario, r.case, r.metric, r.unit, _fmt(r.floor), _fmt(r.greentree),
            "-" if ratio is None else f"{ratio:.2f}x", r.target or "", _status(r),
        ])
    return out


HEADER = ["scenario", "case", "metric", "unit", "floor", "greentree", "ratio", "target", "status"]


def format_table(rows: list[Row]) -> str:
    body = table_rows(rows)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(HEADER)]
    right = {4, 5, 6}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(HEADER), sep] + [line(b) for b in body])


def format_rst_table(rows: list[Row]) -> str:
    """The same table as an RST simple table (for docs/performance.rst)."""
    body = table_rows(rows)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(HEADER)]
    sep = "  ".join("=" * w for w in widths)

    def line(cells):
        cells = [c if c else ".." if i == 0 else c for i, c in enumerate(cells)]
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([sep, line(HEADER), sep] + [line(b) for b in body] + [sep])


def sanity_problems(rows: list[Row]) -> list[str]:
    """Numbers that cannot be right: NaN, negative costs, missing greentree values."""
    bad = []
    for r in rows:
        for side, v in (("floor", r.floor), ("greentree", r.greentree)):
            if v is None:
                if side == "greentree":
                    bad.append(f"{r.scenario} {r.case} {r.metric}: no greentree value")
                continue
            if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
                bad.append(f"{r.scenario} {r.case} {r.metric}: {side} is {v}")
            elif r.unit in ("us", "us/child", "us/conn", "ms", "restarts/s") and not v > 0:
                bad.append(f"{r.scenario} {r.case} {r.metric}: {side} = {v} (must be > 0)")
            elif r.unit.startswith("KiB") and r.metric == "tracemalloc" and not v > 0:
                bad.append(f"{r.scenario} {r.case} {r.metric}: {side} = {v} (must be > 0)")
        if r.metric == "leaked greenlets" and r.greentree != 0:
            bad.append(f"{r.scenario} {r.case}: greentree leaked {r.greentree} greenlets")
    return bad


def plot(rows: list[Row], path: str, machine: dict) -> bool:
    """Per-child cost vs N, greentree (solid) vs floor (dashed), log-log."""
    plt = pyplot()
    if plt is None:
        return False
    import matplotlib.ticker

    def series(scenario, metric, prefix=""):
        pts = []
        for r in rows:
            if r.scenario == scenario and r.metric == metric and r.case.startswith(prefix) and "N=" in r.case:
                n = int(r.case.split("N=")[1].split()[0].replace(",", ""))
                pts.append((n, r.floor, r.greentree))
        return sorted(pts)

    panels = [
        ("time per child", "microseconds per child", [
            ("start", series("start", "start"), "tab:blue"),
            ("stop (dynamic)", series("shutdown", "stop", "dynamic"), "tab:red"),
        ]),
        ("memory per idle child", "KiB per child (RSS)", [
            ("idle child", series("memory", "RSS"), "tab:green"),
        ]),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    drew = False
    for ax, (title, ylabel, lines) in zip(axes, panels, strict=True):
        for label, pts, color in lines:
            if not pts:
                continue
            drew = True
            ns = [p[0] for p in pts]
            ax.plot(ns, [p[2] for p in pts], "o-", color=color, label=f"greentree {label}")
            ax.plot(ns, [p[1] for p in pts], "s--", color=color, alpha=0.6, label=f"gevent floor {label}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
        ax.set_xlabel("N children")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(
        f"greentree {machine['greentree']} vs bare gevent {machine['gevent']} "
        f"(Python {machine['python']}, {machine['cores']} cores, {machine['cpu']})", fontsize=9,
    )
    fig.tight_layout()
    if drew:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drew


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds: check that all scenarios run")
    p.add_argument("--only", action="append", metavar="NAME",
                   help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")
    p.add_argument("--repeat", type=int, default=None, help="measured repetitions per side (default 5; smoke 2)")
    p.add_argument("--sizes", default=None, help="comma-separated N list for the scaling scenarios")
    p.add_argument("--storm-seconds", type=float, default=None, help="crash storm duration (default 30; smoke 1)")
    p.add_argument("--output", default=None, help="directory for latest.json and per_child_cost.png")
    p.add_argument("--replot", action="store_true",
                   help="redraw the PNG from the JSON in --output (default benchmarks/results) and exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.replot:
        out_dir = args.output or RESULTS
        with open(os.path.join(out_dir, "latest.json")) as f:
            doc = json.load(f)
        rows = [Row(**{k: v for k, v in r.items() if k not in ("ratio",)}) for r in doc["rows"]]
        ok = plot(rows, os.path.join(out_dir, "per_child_cost.png"), doc["machine"])
        return 0 if ok else 1
    names = list(SCENARIOS)
    if args.only:
        names = []
        for name in args.only:
            name = ALIASES.get(name, name)
            if name not in SCENARIOS:
                print(f"--only {name!r}: no such scenario (choose from {', '.join(SCENARIOS)})", file=sys.stderr)
                return 2
            names.append(name)
    cfg = Config(smoke=args.smoke, verbose=not args.quiet)
    if args.repeat is not None:
        if args.repeat < 1:
            print("--repeat must be >= 1", file=sys.stderr)
            return 2
        cfg.repeat = args.repeat
    elif args.smoke:
        cfg.repeat = 2
    if args.sizes:
        try:
            cfg.sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
        except ValueError:
            print(f"--sizes {args.sizes!r}: expected comma-separated integers, e.g. 1000,10000", file=sys.stderr)
            return 2
    if args.storm_seconds is not None:
        cfg.storm_seconds = args.storm_seconds
    elif args.smoke:
        cfg.storm_seconds = 1.0

    # The benchmarks crash children on purpose: keep greentree's reports (rate
    # limited, as in production) but do not print thousands of tracebacks.
    import logging

    gt_logger = logging.getLogger("greentree")
    gt_logger.addHandler(logging.NullHandler())
    gt_logger.propagate = False

    machine = machine_info()
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    rows: list[Row] = []
    timings = {}
    from greentree.testing import HubErrors

    plots = []  # scenarios that draw their own PNG: (write_plot, their rows)
    with HubErrors() as hub_errors:
        for name in names:
            mod = importlib.import_module(f"benchmarks.{name}")
            print(f"== {name}: {mod.TITLE}", file=sys.stderr, flush=True)
            s = time.perf_counter()
            mod_rows = mod.run(cfg)
            rows.extend(mod_rows)
            if hasattr(mod, "write_plot"):
                plots.append((mod.write_plot, mod_rows))
            timings[name] = round(time.perf_counter() - s, 1)
    elapsed = time.perf_counter() - t0
    machine["loadavg_before"] = load0
    machine["loadavg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    print(f"greentree {machine['greentree']}, gevent {machine['gevent']}, greenlet {machine['greenlet']}, "
          f"Python {machine['python']} on {machine['cpu']} ({machine['cores']} cores), {machine['date']}")
    print(format_table(rows))
    missed = [r for r in rows if r.met is False]
    met = [r for r in rows if r.met]
    print(f"\ntargets: {len(met)} met, {len(missed)} missed; {elapsed:.0f} s"
          + (" (smoke run: sizes too small for the targets to mean anything)" if cfg.smoke else ""))

    full_run = not (args.smoke or args.only or args.sizes or args.repeat or args.storm_seconds)
    out_dir = args.output or (RESULTS if full_run else None)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        doc = {
            "machine": machine,
            "config": {"smoke": cfg.smoke, "repeat": cfg.repeat, "warmup": cfg.warmup, "sizes": cfg.sizes,
                       "storm_seconds": cfg.storm_seconds, "scenarios": names},
            "seconds": {"total": round(elapsed, 1), **timings},
            "rows": [r.as_dict() for r in rows],
            "hub_errors": len(hub_errors.errors),
            "targets": {"met": len(met), "missed": [f"{r.scenario} {r.case} {r.metric}" for r in missed]},
            "rst_table": format_rst_table(rows),
        }
        tmp = os.path.join(out_dir, "latest.json.tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, default=str)
            f.write("\n")
        os.replace(tmp, os.path.join(out_dir, "latest.json"))
        if plot(rows, os.path.join(out_dir, "per_child_cost.png"), machine):
            print(f"wrote {out_dir}/latest.json and per_child_cost.png")
        else:
            print(f"wrote {out_dir}/latest.json (no plot: no start/stop/memory rows)")
        for write_plot, mod_rows in plots:
            write_plot(mod_rows, out_dir, machine)

    problems = sanity_problems(rows)
    if hub_errors.errors:
        problems.append(f"{len(hub_errors.errors)} errors reached the gevent hub (greentree must catch "
                        f"its children's crashes), first: {hub_errors.describe()[:300]}")
    if problems:
        print("\nnot sane:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
