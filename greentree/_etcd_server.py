"""``greentree.testing.EtcdServer``: a real etcd for tests, on free loopback ports.

Each member runs in its own process group with ``PR_SET_PDEATHSIG`` (on
Linux), so it dies with the process that started it even if that process is
SIGKILLed; ``atexit`` kills what is left, and :meth:`EtcdServer.stop`
removes the temp dir.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import gevent

__all__ = ["EtcdServer", "free_port", "etcd_available", "pdeathsig", "LIVE"]

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
#: Processes started here and not yet reaped: killed at exit.
LIVE: set = set()


def etcd_available() -> bool:
    """True if the etcd binary is installed (Debian: ``apt-get install etcd-server``)."""
    return os.path.exists(ETCD)


def pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _kill_all() -> None:
    for proc in list(LIVE):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


atexit.register(_kill_all)



def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcesses:
    """Test servers as child processes: each in its own process group with
    ``PR_SET_PDEATHSIG``, killed at exit, data in a temp dir."""

    def __init__(self, n: int, kind: str, base_dir: str | None = None):
        self.n = n
        self.dir = tempfile.mkdtemp(prefix=f"gt-{kind}-", dir=base_dir)
        self.procs: list = [None] * n

    def _launch(self, i: int, args: list[str], log_path: str | None = None) -> None:
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True, preexec_fn=pdeathsig)
        if log_path:
            log.close()  # type: ignore[union-attr]
        self.procs[i] = proc
        LIVE.add(proc)

    def _wait(self, ready, indices, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        for i in indices:
            while not ready(i):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} {i} did not answer in {timeout} s; logs in {self.dir}")
                gevent.sleep(0.05)

    def kill(self, i: int = 0) -> None:
        """SIGKILL server ``i``'s process group and reap it."""
        proc = self.procs[i]
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            LIVE.discard(proc)
            self.procs[i] = None

    def stop(self) -> None:
        """Kill every server and remove the temp dir."""
        for i in range(self.n):
            self.kill(i)
        shutil.rmtree(self.dir, ignore_errors=True)


class EtcdServer(ServerProcesses):
    """``members`` etcd processes forming one cluster on 127.0.0.1, for tests.

    ``EtcdServer(3).start()`` starts them (short raft timings: 50 ms
    heartbeat, 500 ms election) and waits until each answers; ``url`` is
    what :class:`greentree.Cluster` takes; ``kill(i)``, ``restart(i)``
    inject faults; ``stop()`` kills every member and removes the data.
    Waiting never blocks the gevent hub.
    """

    def __init__(self, members: int = 1, base_dir: str | None = None):
        super().__init__(members, "etcd", base_dir)
        self.client_ports = [free_port() for _ in range(members)]
        self.peer_ports = [free_port() for _ in range(members)]
        self.url = "etcd://" + ",".join(f"127.0.0.1:{p}" for p in self.client_ports)

    def _args(self, i: int) -> list[str]:
        cluster = ",".join(f"m{j}=http://127.0.0.1:{p}" for j, p in enumerate(self.peer_ports))
        client = f"http://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        return [
            ETCD, "--name", f"m{i}", "--data-dir", os.path.join(self.dir, f"m{i}"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", os.path.basename(self.dir),
            "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error",
        ]

    def start_member(self, i: int) -> None:
        self._launch(i, self._args(i), os.path.join(self.dir, f"m{i}.log"))

    def start(self, timeout: float = 20.0) -> EtcdServer:
        for i in range(self.n):
            self.start_member(i)
        self.wait_healthy(timeout)
        return self

    def healthy(self, i: int) -> bool:
        """True if member ``i`` answers a read (through gevent's sockets: never blocks the hub)."""
        from ._etcd import EtcdClient, EtcdError

        client = EtcdClient([("127.0.0.1", self.client_ports[i])], timeout=0.5)
        try:
            client.range(b"\0")
            return True
        except (EtcdError, OSError):
            return False
        finally:
            client.close()

    def wait_healthy(self, timeout: float = 20.0, members=None) -> None:
        self._wait(self.healthy, range(self.n) if members is None else members, timeout, "etcd member")

    def restart(self, i: int = 0, wait: bool = True) -> None:
        self.kill(i)
        self.start_member(i)
        if wait:
            self.wait_healthy(members=[i])
