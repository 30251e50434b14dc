"""Real etcd servers and real node processes for the cluster tests and benchmarks.

* :class:`EtcdServer` starts 1 or 3 etcd members on free loopback ports in a
  temp dir, each in its own process group with ``PR_SET_PDEATHSIG`` so it
  dies with the test process even after a SIGKILL of pytest; ``atexit`` and
  the fixtures' finalizers kill what is left.
* :class:`NodeProc` runs ``tests/cluster_node.py`` as a separate OS process
  (a cluster node) and talks to it with JSON lines over its stdin/stdout,
  through gevent's subprocess module so waiting never blocks the hub.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess as _stdsubprocess
import sys
import time

import gevent
import gevent.os
import pytest
from gevent import subprocess

from greentree._etcd_server import LIVE as _LIVE
from greentree._etcd_server import EtcdServer, etcd_available, free_port
from greentree._etcd_server import pdeathsig as _pdeathsig
from greentree._redis_server import RedisServer, redis_available

__all__ = ["worst_stall_during", "BACKENDS", "RedisServer", "redis_available", "EtcdServer", "NodeProc", "PortBlock",
           "etcd_available", "free_port", "iptables_usable", "read_history"]
NODE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_node.py")


#: The cluster backends a scenario runs on, each skipped (saying why) when its server is missing.
BACKENDS = [
    pytest.param("etcd", marks=pytest.mark.skipif(not etcd_available(),
                                                  reason="etcd is not installed (Debian package etcd-server)")),
    pytest.param("redis", marks=pytest.mark.skipif(not redis_available(),
                                                   reason="redis-server (Debian) or redis-py is not installed")),
]


def worst_stall_during(fn) -> float:
    """Run ``fn()`` while a ticker greenlet sleeps 5 ms at a time: the worst
    extra delay it saw (how long the hub was blocked), in seconds."""
    worst, running = [0.0], [True]

    def ticker():
        last = time.perf_counter()
        while running[0]:
            gevent.sleep(0.005)
            now = time.perf_counter()
            worst[0] = max(worst[0], now - last - 0.005)
            last = now

    t = gevent.spawn(ticker)
    gevent.sleep(0.02)
    try:
        fn()
    finally:
        running[0] = False
        t.join()
    return worst[0]


def iptables_usable() -> str | None:
    """None if iptables can add and remove a rule here, else why not."""
    exe = shutil.which("iptables")
    if exe is None:
        return "iptables is not installed"
    probe = ["-p", "tcp", "-d", "127.0.0.1", "--dport", "9", "-j", "DROP"]
    r = _stdsubprocess.run([exe, "-I", "INPUT", *probe], capture_output=True)
    if r.returncode != 0:
        return f"iptables is unusable here: {r.stderr.decode().strip()}"
    _stdsubprocess.run([exe, "-D", "INPUT", *probe], capture_output=True)
    return None


class PortBlock:
    """Drop TCP traffic to 127.0.0.1:port with iptables; ``remove()`` always undoes it."""

    def __init__(self, port: int):
        self.rule = ["INPUT", "-p", "tcp", "-d", "127.0.0.1", "--dport", str(port), "-j", "DROP"]
        self.active = False

    def add(self) -> None:
        _stdsubprocess.run(["iptables", "-I", *self.rule], check=True, capture_output=True)
        self.active = True
        _BLOCKS.add(self)

    def remove(self) -> None:
        while self.active:
            r = _stdsubprocess.run(["iptables", "-D", *self.rule], capture_output=True)
            if r.returncode != 0:
                self.active = False
        _BLOCKS.discard(self)


_BLOCKS: set = set()
atexit.register(lambda: [b.remove() for b in list(_BLOCKS)])


class NodeProc:
    """A cluster node in its own OS process, driven by JSON lines."""

    def __init__(self, url: str, node: str, ttl: float = 2.0, history: str | None = None,
                 secret: str = "test-secret-123", extra: list | None = None, monkey: bool = False,
                 script: str = NODE_SCRIPT):
        args = [sys.executable, script, "--etcd", url, "--node", node, "--ttl", str(ttl),
                "--secret", secret]
        if history:
            args += ["--history", history]
        if monkey:
            args.append("--monkey")
        self.node = node
        self.history = history
        self.proc = subprocess.Popen(args + (extra or []), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True, preexec_fn=_pdeathsig)
        _LIVE.add(self.proc)
        self._fd = self.proc.stdout.fileno()
        gevent.os.make_nonblocking(self._fd)
        self._ids = 0
        self._buf = b""
        self.events: list = []
        self.killed_at: float | None = None

    def _readline(self, timeout: float) -> dict | None:
        with gevent.Timeout(timeout, False):
            while b"\n" not in self._buf:
                data = gevent.os.nb_read(self._fd, 65536)
                if not data:
                    raise EOFError(f"node {self.node} exited (rc={self.proc.poll()})")
                self._buf += data
            line, _, self._buf = self._buf.partition(b"\n")
            return json.loads(line)
        return None

    def request(self, op: str, timeout: float = 15.0, **kw) -> dict:
        self._ids += 1
        rid = self._ids
        self.proc.stdin.write((json.dumps({"id": rid, "op": op, **kw}) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            msg = self._readline(max(0.0, left)) if left > 0 else None
            if msg is None:
                raise TimeoutError(f"node {self.node}: no answer to {op} within {timeout} s")
            if msg.get("id") == rid:
                if "error" in msg and msg.get("raise", True):
                    raise RuntimeError(f"node {self.node}: {op} failed: {msg['error']}")
                return msg
            self.events.append(msg)

    def wait_event(self, pred, timeout: float = 15.0) -> dict:
        for ev in self.events:
            if pred(ev):
                self.events.remove(ev)
                return ev
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            msg = self._readline(left) if left > 0 else None
            if msg is None:
                raise TimeoutError(f"node {self.node}: event not seen within {timeout} s; saw {self.events[-5:]}")
            if pred(msg):
                return msg
            self.events.append(msg)

    def wait_up(self, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            st = self.request("state")
            if st["state"] == "up":
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.node} not up: {st}")
            gevent.sleep(0.05)

    def signal(self, sig: int) -> None:
        if sig == signal.SIGKILL:
            self.killed_at = time.time()
        os.kill(self.proc.pid, sig)

    def kill(self) -> float:
        self.signal(signal.SIGKILL)
        self.proc.wait()
        _LIVE.discard(self.proc)
        assert self.killed_at is not None
        return self.killed_at

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"id": 0, "op": "exit"}\n')
                self.proc.stdin.flush()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except Exception:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        _LIVE.discard(self.proc)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def read_history(paths: list[str]) -> list[dict]:
    out = []
    for p in paths:
        if os.path.exists(p):
            with open(p) as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass  # the last line of a process killed while writing it
    return out


# ---------------------------------------------------------------- store fixtures
# Module-scoped real servers shared by the cluster test modules (import them
# into a test module to use them there).
import pytest  # noqa: E402


@pytest.fixture(scope="module")
def etcd_server():
    server = EtcdServer(1).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()

