"""``greentree.testing.RedisServer``: a real redis-server for tests, on free loopback ports.

The same process hygiene as :class:`greentree.testing.EtcdServer`: every
server in its own process group with ``PR_SET_PDEATHSIG`` (dies with the
process that started it, even a SIGKILLed one), ``atexit`` kills what is
left, and :meth:`RedisServer.stop` removes the temp dir.  No persistence
(``--save ''``, no AOF): a killed server loses its data, as a test wants.
"""

from __future__ import annotations

import os
import shutil
import socket
import time

import gevent
from gevent import socket as gsocket

from ._etcd_server import ServerProcesses, free_port

__all__ = ["RedisServer", "redis_available"]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_available() -> bool:
    """True if redis-server is installed (Debian: ``apt-get install redis-server``) and redis-py imports."""
    try:
        import redis  # noqa: F401
    except ImportError:
        return False
    return os.path.exists(REDIS_SERVER)


def command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one inline command to the redis-server on ``port``; the raw first reply line.

    On gevent's sockets: never blocks the hub.
    """
    s = gsocket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall((" ".join(args) + "\r\n").encode())
        buf = b""
        while b"\r\n" not in buf:
            data = s.recv(4096)
            if not data:
                break
            buf += data
        return buf.split(b"\r\n", 1)[0]
    finally:
        s.close()


class RedisServer(ServerProcesses):
    """``1 + replicas`` redis-server processes on 127.0.0.1 for tests.

    ``RedisServer().start()`` starts a primary and waits until it answers;
    ``RedisServer(replicas=1, replica_of=port)`` makes server 1 replicate
    from ``port`` (give a proxy's port to cut replication at will, else the
    primary's).  ``url`` lists every server (a cluster node tries them in
    turn and uses the one that is a primary); ``kill(i)``, ``promote(i)``
    inject faults; ``stop()`` kills them all and removes the temp dir.
    """

    def __init__(self, replicas: int = 0, base_dir: str | None = None, replica_of: int | None = None):
        super().__init__(1 + replicas, "redis", base_dir)
        self.ports = [free_port() for _ in range(self.n)]
        self.replica_of = replica_of
        self.url = "redis://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/0"

    def _args(self, i: int) -> list[str]:
        args = [REDIS_SERVER, "--port", str(self.ports[i]), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--logfile", os.path.join(self.dir, f"r{i}.log"),
                "--protected-mode", "no", "--daemonize", "no"]
        if i > 0:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of or self.ports[0]),
                     "--repl-timeout", "60", "--repl-ping-replica-period", "1"]
        return args

    def start_server(self, i: int) -> None:
        self._launch(i, self._args(i))

    def start(self, timeout: float = 20.0) -> RedisServer:
        for i in range(self.n):
            self.start_server(i)
        self.wait_ready(timeout)
        return self

    def ready(self, i: int) -> bool:
        try:
            return command(self.ports[i], "PING", timeout=0.5) == b"+PONG"
        except OSError:
            return False

    def wait_ready(self, timeout: float = 20.0, servers=None) -> None:
        self._wait(self.ready, range(self.n) if servers is None else servers, timeout, "redis-server")

    def wait_in_sync(self, i: int = 1, timeout: float = 10.0) -> None:
        """Wait until replica ``i`` has the primary's whole replication stream."""
        deadline = time.monotonic() + timeout
        while True:
            ok = command(self.ports[0], "WAIT", "1", "100")
            if ok.startswith(b":") and int(ok[1:]) >= 1:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis replica r{i} did not catch up; log in {self.dir}")
            gevent.sleep(0.05)

    def promote(self, i: int = 1) -> None:
        """``REPLICAOF NO ONE`` on server ``i``: it becomes a primary with the data it has."""
        answer = command(self.ports[i], "REPLICAOF", "NO", "ONE")
        if answer != b"+OK":
            raise RuntimeError(f"REPLICAOF NO ONE on r{i}: {answer!r}")


class TcpProxy:
    """A TCP relay on a free loopback port to ``port`` (for replication links
    a test wants to cut): ``cut()`` closes every relayed connection and
    refuses new ones; ``close()`` stops it."""

    def __init__(self, port: int):
        self.target = port
        self.listener = gsocket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.open = True
        self._socks: list = []
        self._greenlets = [gevent.spawn(self._accept)]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = gsocket.create_connection(("127.0.0.1", self.target), timeout=2.0)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            self._socks += [client, upstream]
            self._greenlets += [gevent.spawn(self._pipe, client, upstream), gevent.spawn(self._pipe, upstream, client)]

    @staticmethod
    def _pipe(src: gsocket.socket, dst: gsocket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self.open = False
        socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self.cut()
        self.listener.close()
        gevent.killall(self._greenlets, block=True, timeout=2)
