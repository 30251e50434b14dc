"""``python -m greentree demo``: watch supervision trees take faults and heal.

Runs a greentree WebSocket server on loopback and a client connection
manager holding a few hundred real WebSocket connections to it (one
supervision tree per connection on *both* sides), injects faults, and shows
live what the supervisors do.  On a terminal the panel redraws in place; in a
pipe or a log it prints one line per second.  It also serves the live tree
page (:mod:`greentree.observe`) on localhost and prints its address.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

__all__ = ["main", "render_panel", "render_line"]

_BAR = 28


def _bar(value: int, total: int) -> str:
    if total <= 0:
        return " " * _BAR
    filled = max(0, min(_BAR, round(_BAR * value / total)))
    return "█" * filled + "·" * (_BAR - filled)


def _restarts(side: dict) -> int:
    return side.get("connection_crashes", 0) + side.get("sender_crashes", 0) + side.get("reconnects", 0)


def render_panel(snap: dict, clients: int, duration: float, events: list, url: str, page: str = "") -> str:
    """The live panel for one snapshot (pure: easy to test and to look at).

    >>> snap = {"uptime": 1.0, "server_trees": 10, "client_trees": 10, "clients_connected": 9,
    ...         "greenlets": 50, "rss_mb": 40.0, "sent": 20, "acked": 19, "failed": 1,
    ...         "injected": {"sender_crash": 1}, "server": {}, "client": {}}
    >>> print(render_panel(snap, 10, 5.0, ["0.5s  client 3 vanished"], "ws://127.0.0.1:1/"))  # doctest: +ELLIPSIS
    greentree demo  ·  10 WebSocket clients ⇄ server at ws://127.0.0.1:1/  ·  1.0 s of 5 s
    ...
    """
    srv, cli = snap.get("server", {}), snap.get("client", {})
    lines = [
        f"greentree demo  ·  {clients} WebSocket clients ⇄ server at {url}  ·  "
        f"{snap['uptime']:.1f} s of {duration:g} s",
        *([f"  live tree page: {page}   (localhost only)"] if page else []),
        "",
        f"  client trees alive   {snap['client_trees']:>6}  {_bar(snap['client_trees'], clients)}",
        f"  connected            {snap['clients_connected']:>6}  {_bar(snap['clients_connected'], clients)}",
        f"  server trees alive   {snap['server_trees']:>6}  {_bar(snap['server_trees'], clients)}",
        "",
        "                          server    client",
        f"  Connection crashes   {srv.get('connection_crashes', 0):>9} {cli.get('connection_crashes', 0):>9}",
        f"  sender crashes       {srv.get('sender_crashes', 0):>9} {cli.get('sender_crashes', 0):>9}",
        f"  reconnects           {'':>9} {cli.get('reconnects', 0):>9}",
        f"  slow consumers cut   {srv.get('slow_consumers', 0):>9} {cli.get('slow_consumers', 0):>9}",
        f"  bad frames           {srv.get('bad_frames', 0):>9} {cli.get('bad_frames', 0):>9}",
        "",
        f"  messages  sent {snap['sent']:>8}   acked {snap['acked']:>8}   failed {snap['failed']:>6}",
        f"  process   greenlets {snap['greenlets']:>6}   RSS {snap['rss_mb']:>7.1f} MiB",
        "",
        "  faults injected: " + (", ".join(f"{k} ×{v}" for k, v in snap["injected"].items() if v) or "none yet"),
        "  latest:",
    ]
    for e in events[-6:]:
        lines.append(f"    {e}")
    return "\n".join(lines)


def render_line(snap: dict) -> str:
    """One log line per snapshot, for pipes and CI logs.

    >>> render_line({"uptime": 2.0, "server_trees": 5, "client_trees": 5, "clients_connected": 5,
    ...              "greenlets": 40, "rss_mb": 33.3, "sent": 10, "acked": 10, "failed": 0,
    ...              "injected": {}, "server": {}, "client": {}})
    't=  2.0s trees server=5 client=5 connected=5 msgs sent=10 acked=10 failed=0 restarts server=0 client=0 greenlets=40 rss=33.3MiB'
    """
    return (
        f"t={snap['uptime']:5.1f}s trees server={snap['server_trees']} client={snap['client_trees']} "
        f"connected={snap['clients_connected']} msgs sent={snap['sent']} acked={snap['acked']} "
        f"failed={snap['failed']} restarts server={_restarts(snap.get('server', {}))} "
        f"client={_restarts(snap.get('client', {}))} greenlets={snap['greenlets']} rss={snap['rss_mb']}MiB"
    )


class _CountingHandler(logging.Handler):
    """Counts the crash reports the demo's injected faults cause."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record):
        self.count += 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m greentree demo",
        description="One supervision tree per WebSocket connection, on a real server with real clients, under fire.",
    )
    parser.add_argument("--clients", type=int, default=300, help="client connections to open (default 300)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to inject faults (default 20)")
    parser.add_argument("--faults-per-second", type=float, default=4.0, help="fault injection rate (default 4)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable run")
    parser.add_argument("--plain", action="store_true", help="print one line per second instead of a live panel")
    parser.add_argument("--observe-port", type=int, default=0,
                        help="port of the live tree page on 127.0.0.1 (default: a free one; -1: no page)")
    parser.add_argument("--log", metavar="FILE", default=None,
                        help="write greentree's crash reports, with tracebacks, to FILE")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.faults_per_second < 0:
        parser.error("--clients must be >= 1, --seconds > 0 and --faults-per-second >= 0")
    if not -1 <= args.observe_port <= 65535:
        parser.error("--observe-port must be a port number, 0 for a free one, or -1 for no page")


    # The faults are injected on purpose: count greentree's crash reports
    # instead of printing a traceback per fault over the panel (--log keeps them).
    from .websocket.demo_support import Demo

    reports = _CountingHandler()
    handlers: list = [reports]
    if args.log:
        file_handler = logging.FileHandler(args.log)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(file_handler)
    gt_logger = logging.getLogger("greentree")
    saved = gt_logger.propagate
    for h in handlers:
        gt_logger.addHandler(h)
    gt_logger.propagate = False
    try:
        return _run(args, Demo, reports)
    finally:
        gt_logger.propagate = saved
        for h in handlers:
            gt_logger.removeHandler(h)
            h.close()


def _run(args, Demo, reports) -> int:
    import gevent


    out = sys.stdout
    live = out.isatty() and not args.plain
    demo = Demo(clients=args.clients, seed=args.seed)
    print(f"starting a WebSocket server and {args.clients} client connections on loopback ...", file=out, flush=True)
    demo.start()
    page_server = None
    page = ""
    if args.observe_port >= 0:
        from .observe import serve

        page_server = serve(demo.root, port=args.observe_port)
        page = f"http://127.0.0.1:{page_server.server_port}/"
        print(f"live tree page: {page}  (localhost only; in a terminal: python -m greentree tree "
              f"--url {page}tree.json --watch)", file=out, flush=True)
    deadline = time.monotonic() + 10
    while demo.snapshot()["clients_connected"] < args.clients and time.monotonic() < deadline:
        gevent.sleep(0.05)
    events: list = []
    started = time.monotonic()
    fault_gap = 1.0 / args.faults_per_second if args.faults_per_second else None
    next_fault = started + (fault_gap or 0)
    next_frame = started
    faults = demo.FAULTS
    k = 0
    try:
        while True:
            now = time.monotonic()
            elapsed = now - started
            if elapsed >= args.seconds:
                break
            if fault_gap is not None and now >= next_fault:
                fault = faults[k % len(faults)] if demo.rng.random() < 0.5 else demo.rng.choice(faults)
                k += 1
                events.append(f"{elapsed:5.1f}s  {demo.inject(fault)}")
                next_fault += fault_gap
            if now >= next_frame:
                demo.tick()
                snap = demo.snapshot()
                if live:
                    out.write("\x1b[H\x1b[2J" + render_panel(snap, args.clients, args.seconds, events, demo.url, page) + "\n")
                    out.flush()
                else:
                    print(render_line(snap), file=out, flush=True)
                next_frame += 1.0
            gevent.sleep(min(0.05, max(0.0, min(next_frame, next_fault if fault_gap else next_frame) - time.monotonic())))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every tree in order ...", file=out, flush=True)
    gevent.sleep(1.0)  # let the last restarts and reconnects land before the summary
    before_stop = demo.snapshot()
    if page_server is not None:
        page_server.stop()
    summary = demo.stop()
    print("", file=out)
    print("summary", file=out)
    print("-------", file=out)
    print(f"  ran {before_stop['uptime']:.1f} s with {args.clients} clients; faults injected: "
          + (", ".join(f"{k} ×{v}" for k, v in before_stop["injected"].items() if v) or "none"), file=out)
    print(f"  messages: {before_stop['sent']} sent, {before_stop['acked']} acknowledged, "
          f"{before_stop['failed']} failed (on connections hit by a fault)", file=out)
    print(f"  before stopping: {before_stop['client_trees']} client trees, {before_stop['server_trees']} server trees, "
          f"{before_stop['clients_connected']} connected", file=out)
    srv, cli = before_stop["server"], before_stop["client"]
    print(f"  supervisors handled: server {srv.get('connection_crashes', 0)} Connection crashes, "
          f"{srv.get('sender_crashes', 0)} sender crashes, {srv.get('slow_consumers', 0)} slow consumers; "
          f"client {cli.get('reconnects', 0)} reconnects, {cli.get('connection_crashes', 0)} Connection crashes", file=out)
    print(f"  greentree logged {reports.count} crash reports" + (f" (in {args.log})" if args.log else
          " (pass --log FILE to keep them with their tracebacks)"), file=out)
    print(f"  after stop: {summary['server_trees']} server trees, {summary['client_trees']} client trees, "
          f"{summary['registry_names_left']} registry names left, {summary['greenlets']} greenlets alive", file=out)
    clean = summary["server_trees"] == 0 and summary["client_trees"] == 0 and summary["registry_names_left"] == 0
    print("  everything stopped cleanly" if clean else "  NOT everything stopped: see above", file=out)
    return 0 if clean else 1
