"""Server-side cost of one WebSocket connection, phase by phase, as CPU instructions.

``benchmarks/websocket_conns.py`` measures rates and latencies with many
concurrent clients, which on a shared machine moves by tens of percent from
run to run.  This script counts what the *server process* executes, which
another process's load does not change: the server runs under
``valgrind --tool=callgrind`` (or, with ``--cpu``, is timed by
``time.process_time``), one blocking client in this process drives it
sequentially, and each phase is the difference of two runs that stop after
different phases (so import, start-up and warm-up cancel out)::

    open      per connection: accept, HTTP request, 101, the per-connection state
    request   per round trip: one msgpack ``req`` in, its ``rep`` out (echo)
    teardown  per connection: the client's close frame, the close echo, everything freed

Each run warms up with the same phases on a few connections first.  The
servers are ``benchmarks.websocket_conns``' (greentree and gevent-websocket
by default).

.. code-block:: console

   $ python -m benchmarks.websocket_cost                 # callgrind, 200 connections, 5 rounds
   $ python -m benchmarks.websocket_cost --cpu -n 2000   # process time instead (noisy, quick)
   $ python -m benchmarks.websocket_cost --tree          # instructions per tree start, in process
   $ python -m benchmarks.websocket_cost --split -n 100  # a conversation's first request apart
   $ python -m benchmarks.websocket_cost --rounds 0      # connections that never send a message

``--tree`` counts what ``WebSocketService.start_instance`` alone executes
(the ConnectionSupervisor, the Connection, their specs and registry names;
no socket, and the Connection never runs): the difference of two in-process
runs that start 0 and ``-n`` trees.

``--split`` counts the first request of a connection (greentree starts the
sender pool and the conversation's sender there) apart from the requests
after it: three runs per server, stopped after the open phase, after one
request per connection, and after ``1 + rounds`` requests per connection
(warm-up connections included in the last difference).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

PHASES = ("none", "open", "request", "teardown")
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# ------------------------------------------------------------------ the server process
def run_server(kind: str) -> int:
    """Serve ``kind``; a control connection says how many connections to expect, then to exit."""
    import gevent
    from gevent import socket as gsocket

    from benchmarks.websocket_conns import make_server, raise_nofile

    raise_nofile()
    server = make_server(kind)
    port = server.start()
    ctl = gsocket.socket()
    ctl.bind(("127.0.0.1", 0))
    ctl.listen(1)
    print(json.dumps({"port": port, "control": ctl.getsockname()[1]}), flush=True)
    c, _ = ctl.accept()
    f = c.makefile("rb")
    prof = None
    for line in f:
        msg = json.loads(line)
        deadline = time.monotonic() + 600
        while server.active != msg["active"] and time.monotonic() < deadline:
            gevent.sleep(0.01)
        gevent.sleep(0.2)  # what ends after the last connection (tree shutdown, pywsgi greenlets)
        if msg.get("exit"):
            if prof is not None:  # GREENTREE_COST_PSTATS=FILE: cProfile of the measured phases
                prof.disable()
                prof.dump_stats(os.environ["GREENTREE_COST_PSTATS"])
            c.sendall(json.dumps({"cpu": time.process_time(), "active": server.active}).encode() + b"\n")
            os._exit(0)  # callgrind writes its totals here
        if msg.get("profile") and os.environ.get("GREENTREE_COST_PSTATS"):
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        c.sendall(b'{"ok": true}\n')
    return 0


# ------------------------------------------------------------------ one tree's start, in process
def run_trees(n: int) -> int:
    """Start ``n`` connection trees (after 50 to warm up) on transports that never open, then exit."""
    import logging

    from greentree.websocket import WebSocketService
    from greentree.websocket._handler import ServerTransport

    logging.getLogger("greentree").disabled = True
    svc = WebSocketService(lambda c, v, b: b, ping_interval=None, max_connections=None)
    svc.supervisor().start()
    transports = [ServerTransport(None, None, ("peer", 1)) for _ in range(n + 50)]
    for t in transports[:50]:
        svc.start_instance(t)
    for t in transports[50:]:
        svc.start_instance(t)
    os._exit(0)  # the trees never run: nothing to stop


def tree_start_instructions(n: int, tmp: str) -> float:
    counts = []
    for k in (0, n):
        out = os.path.join(tmp, f"cg.tree.{k}")
        cmd = ["valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={out}", sys.executable, "-m",
               "benchmarks.websocket_cost", "--role", "trees", "-n", str(k)]
        subprocess.run(cmd, check=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=1200)
        with open(out) as f:
            counts.append(next(float(line.split()[1]) for line in f if line.startswith(("summary:", "totals:"))))
    return (counts[1] - counts[0]) / n


# ------------------------------------------------------------------ the client (this process)
class Client:
    def __init__(self, port: int):
        from greentree.websocket import Codec

        self.port = port
        self.codec = Codec()
        self.socks: list = []

    def open(self, n: int) -> None:
        head = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=120)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(head)
            data = b""
            while b"\r\n\r\n" not in data:
                more = s.recv(4096)
                if not more:
                    raise ConnectionError("EOF during the handshake")
                data += more
            if not data.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(f"handshake refused: {data[:60]!r}")
            self.socks.append(s)

    @staticmethod
    def _frame(opcode: int, payload: bytes) -> bytes:
        assert len(payload) < 126
        return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload  # a zero mask

    def requests(self, rounds: int) -> None:
        enc = self.codec.encode
        for i, s in enumerate(self.socks):
            for seq in range(1, rounds + 1):
                s.sendall(self._frame(2, enc("req", [i, seq], id=seq, conversation="bench")))
                body = enc("rep", [i, seq], id=seq, conversation="bench")
                want = bytes([0x82, len(body)]) + body
                got = b""
                while len(got) < len(want):
                    more = s.recv(len(want) - len(got))
                    if not more:
                        raise ConnectionError("EOF before the reply")
                    got += more
                if got != want:
                    raise ValueError(f"expected {want!r}, got {got!r}")

    def close(self) -> None:
        for s in self.socks:
            s.sendall(self._frame(8, b"\x03\xe8"))
            while s.recv(4096):
                pass  # the close echo, then EOF
            s.close()
        self.socks.clear()


def one_run(kind: str, upto: str, n: int, warm: int, rounds: int, valgrind: bool, tmp: str) -> float:
    """Run a server of ``kind`` through the phases up to ``upto``; its instructions (or CPU seconds)."""
    out = os.path.join(tmp, f"cg.{kind}.{upto}")
    cmd = [sys.executable, "-m", "benchmarks.websocket_cost", "--role", "server", "--kind", kind]
    if valgrind:
        cmd = ["valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={out}", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())
        ctl = socket.create_connection(("127.0.0.1", ports["control"]), timeout=600)
        cf = ctl.makefile("rb")

        i = PHASES.index(upto)

        def sync(active: int, exit: bool = False, before: int = -1) -> dict:
            # the sync before the last phase starts the server's profile (GREENTREE_COST_PSTATS)
            ctl.sendall(json.dumps({"active": active, "exit": exit, "profile": before == i}).encode() + b"\n")
            return json.loads(cf.readline())

        client = Client(ports["port"])
        client.open(warm)
        client.requests(rounds)
        client.close()
        sync(0, before=1)
        if i >= 1:
            client.open(n)
            sync(n, before=2)
        if i >= 2:
            client.requests(rounds)
            sync(n, before=3)
        if i >= 3:
            client.close()
        end = sync(0 if i >= 3 else n if i >= 1 else 0, exit=True)
        proc.wait(600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not valgrind:
        return float(end["cpu"])
    with open(out) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return float(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.websocket_cost", description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=200, help="connections per run (default 200)")
    p.add_argument("--rounds", type=int, default=5, help="round trips per connection (default 5)")
    p.add_argument("--warm", type=int, default=20, help="warm-up connections (default 20)")
    p.add_argument("--kinds", default="greentree,gevent-websocket")
    p.add_argument("--cpu", action="store_true", help="process time instead of callgrind's instruction count")
    p.add_argument("--tree", action="store_true", help="instructions per start_instance, in process (-n trees)")
    p.add_argument("--split", action="store_true",
                   help="count a connection's first request apart from the ones after it")
    p.add_argument("--role", default="driver", help=argparse.SUPPRESS)
    p.add_argument("--kind", default="greentree", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "server":
        return run_server(args.kind)
    if args.role == "trees":
        return run_trees(args.n)
    valgrind = not args.cpu
    if valgrind and shutil.which("valgrind") is None:
        p.error("valgrind is not installed (apt-get install valgrind), or use --cpu")
    if args.tree:
        if not valgrind:
            p.error("--tree counts instructions: it needs valgrind (no --cpu)")
        with tempfile.TemporaryDirectory() as tmp:
            per = tree_start_instructions(args.n, tmp)
        print(f"start_instance: {per:,.0f} instructions per connection tree (n={args.n})")
        return 0
    kinds = args.kinds.split(",")
    unit = "instructions" if valgrind else "us of CPU"
    scale = 1.0 if valgrind else 1e6
    results: dict = {}
    if args.split:
        with tempfile.TemporaryDirectory() as tmp:
            for kind in kinds:
                k = args.rounds
                opened = one_run(kind, "open", args.n, args.warm, 1, valgrind, tmp) * scale
                one = one_run(kind, "request", args.n, args.warm, 1, valgrind, tmp) * scale
                more = one_run(kind, "request", args.n, args.warm, 1 + k, valgrind, tmp) * scale
                first, after = (one - opened) / args.n, (more - one) / ((args.n + args.warm) * k)
                results[kind] = {"first request": first, "later request": after,
                                 "mean of 10": (first + 9 * after) / 10}
                print(f"{kind}: " + ", ".join(f"{n} {v:,.0f}" for n, v in results[kind].items()), file=sys.stderr)
        ref = kinds[-1] if len(kinds) > 1 else None
        print(f"\nserver {unit} per round trip, n={args.n}, later requests: {args.rounds} per connection")
        print(f"{'':14}" + "".join(f"{k:>18}" for k in kinds) + (f"{'ratio':>10}" if ref else ""))
        for row_name in ("first request", "later request", "mean of 10"):
            row = f"{row_name:14}" + "".join(f"{results[k][row_name]:>18,.0f}" for k in kinds)
            if ref:
                row += f"{results[kinds[0]][row_name] / results[ref][row_name]:>9.2f}x"
            print(row)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            total = {ph: one_run(kind, ph, args.n, args.warm, args.rounds, valgrind, tmp) * scale for ph in PHASES}
            results[kind] = {
                "open": (total["open"] - total["none"]) / args.n,
                # --rounds 0: no request phase (teardown then ends connections that never talked)
                "request": (total["request"] - total["open"]) / (args.n * args.rounds) if args.rounds else float("nan"),
                "teardown": (total["teardown"] - total["request"]) / args.n,
            }
            print(f"{kind}: " + ", ".join(f"{k} {v:,.0f}" for k, v in results[kind].items()), file=sys.stderr)
    ref = kinds[-1] if len(kinds) > 1 else None
    print(f"\nserver {unit} per connection (request: per round trip), n={args.n}, rounds={args.rounds}")
    print(f"{'phase':10}" + "".join(f"{k:>18}" for k in kinds) + (f"{'ratio':>10}" if ref else ""))
    for ph in ("open", "request", "teardown"):
        row = f"{ph:10}" + "".join(f"{results[k][ph]:>18,.0f}" for k in kinds)
        if ref:
            row += f"{results[kinds[0]][ph] / results[ref][ph]:>9.2f}x"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
