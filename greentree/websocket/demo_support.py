"""What ``python -m greentree demo`` drives: a server, many real clients, injected faults.

:class:`Demo` runs, in this process, a greentree WebSocket server on
loopback and a :class:`ClientManager` holding ``clients`` real connections to
it (websockets' sans-I/O protocol over gevent sockets, one tree per connection on *both* sides).
:meth:`Demo.tick` sends one numbered message per client; :meth:`Demo.inject`
causes one fault; :meth:`Demo.snapshot` says what the supervisors did.

>>> Demo.FAULTS
('sender_crash', 'server_connection_crash', 'client_connection_crash', 'client_vanish', 'slow_reader')

A typical loop (what the demo command does, with nicer printing)::

    demo = Demo(clients=200)
    demo.start()
    for second in range(10):
        demo.tick(); demo.inject(random.choice(Demo.FAULTS)); gevent.sleep(1)
        print(demo.snapshot())
    summary = demo.stop()
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time

import gevent

from .._supervisor import Supervisor
from ..testing import live_greenlets
from ._client import ClientManager
from ._handler import WebSocketServer
from ._tree import WebSocketService

__all__ = ["Demo"]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class Demo:
    """A server and ``clients`` client trees in one process, with fault injection."""

    FAULTS = ("sender_crash", "server_connection_crash", "client_connection_crash", "client_vanish", "slow_reader")

    def __init__(self, clients: int = 200, *, seed: int | None = None):
        self.n = clients
        self.rng = random.Random(seed)
        self.server = WebSocketService(self._handle, ping_interval=5.0, ping_timeout=5.0,
                                       send_queue=64, write_timeout=2.0)
        self.manager = ClientManager(ping_interval=None, request_timeout=5.0)
        self.root = Supervisor([
            self.server.child_spec("server-connections"),
            WebSocketServer.child_spec(self.server, ("127.0.0.1", 0)),
            self.manager.child_spec("client-connections"),
        ], name="demo")
        self.sent = self.acked = self.failed = 0
        self.injected: dict = {k: 0 for k in self.FAULTS}
        self._raw: list = []
        self._seq = 0
        self.url = ""
        self.started_at: float | None = None

    @staticmethod
    def _handle(conn, conversation, body):
        if body == "crash":
            raise RuntimeError("injected handler bug")
        return body

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.root.start()
        self.root.wait_started()
        port = self.root.which_children()[1].child.address[1]
        self.url = f"ws://127.0.0.1:{port}/"
        for i in range(self.n):
            self.manager.connect(self.url, instance_id=i, backoff_base=0.05, backoff_max=1.0)

    def tick(self) -> None:
        """Each client sends one numbered message through its conversation sender."""
        self._seq += 1
        for i in range(self.n):
            try:
                r = self.manager.send(i, "demo", self._seq)
            except Exception:
                self.failed += 1
                continue
            self.sent += 1
            r.rawlink(self._on_result)

    def _on_result(self, r) -> None:
        if r.successful():
            self.acked += 1
        else:
            self.failed += 1

    def inject(self, fault: str) -> str:
        """Cause one fault; return a sentence saying what was done."""
        i = self.rng.randrange(self.n)
        if fault == "sender_crash":
            conn = self.manager.connection(i)
            if conn is not None and conn.connected:
                conn.send("crash", conversation="demo-crash")  # the server's handler raises on it
            what = f"client {i} sent a message that crashes its server-side sender"
        elif fault == "server_connection_crash":
            trees = list(self.server.connections._children)
            if trees:
                conn = self.server.connection(self.rng.choice(trees).instance_id)
                if conn is not None:
                    conn.kill(RuntimeError("injected server Connection crash"), block=False)
            what = "a server-side Connection crashed (its tree ends; the client reconnects)"
        elif fault == "client_connection_crash":
            conn = self.manager.connection(i)
            if conn is not None:
                conn.kill(RuntimeError("injected client Connection crash"), block=False)
            what = f"client {i}'s Connection crashed (restarted with its senders)"
        elif fault == "client_vanish":
            conn = self.manager.connection(i)
            if conn is not None and conn._sock is not None:
                conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn._sock.shutdown(socket.SHUT_RDWR)  # the server sees a reset; the client reconnects
            what = f"client {i} vanished (reset, no close frame)"
        elif fault == "slow_reader":
            what = self._slow_reader()
        else:
            raise ValueError(f"Demo.inject({fault!r}): fault must be one of {self.FAULTS}")
        self.injected[fault] += 1
        return what

    def _slow_reader(self) -> str:
        """A raw client that completes the handshake and never reads; the server floods it."""
        from gevent import socket as gsocket
        from websockets.client import ClientProtocol
        from websockets.protocol import OPEN
        from websockets.uri import parse_uri

        host, port = "127.0.0.1", int(self.url.rsplit(":", 1)[1].strip("/"))
        s = gsocket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, port))
        proto = ClientProtocol(parse_uri(f"ws://{host}:{port}/"))
        proto.send_request(proto.connect())
        s.sendall(b"".join(proto.data_to_send()))
        while proto.state is not OPEN:
            proto.receive_data(s.recv(4096))
        self._raw.append(s)
        local_port = s.getsockname()[1]

        def flood():
            conn = None
            with gevent.Timeout(5, False):
                while conn is None:  # find the server-side Connection of this very socket
                    conn = next((c for sup in self.server.connections._children
                                 if (c := self.server.connection(sup.instance_id)) is not None
                                 and c.peer and int(c.peer[1]) == local_port), None)
                    if conn is None:
                        gevent.sleep(0.01)
            try:
                while conn is not None and conn.connected:
                    conn.send(b"x" * 65536)
                    gevent.sleep(0)
            except Exception:
                pass  # SlowConsumerError: what we wanted to show

        gevent.spawn(flood).join(10)
        return "a client stopped reading: its server Connection failed with SlowConsumerError (1008)"

    def snapshot(self) -> dict:
        """Trees alive, restarts, greenlets, memory, counters (JSON-able)."""
        return {
            "uptime": round(time.monotonic() - self.started_at, 1) if self.started_at else 0.0,
            "server_trees": self.server.instance_count(),
            "client_trees": self.manager.service.instance_count(),
            "clients_connected": sum(
                1 for i in range(self.n) if (c := self.manager.connection(i)) is not None and c.connected),
            "greenlets": len(live_greenlets()),
            "rss_mb": round(_rss_bytes() / 2**20, 1),
            "sent": self.sent, "acked": self.acked, "failed": self.failed,
            "injected": dict(self.injected),
            "server": self.server.stats.snapshot(),
            "client": self.manager.service.stats.snapshot(),
        }

    def stop(self) -> dict:
        """Stop everything in order; return the final snapshot (plus registry counts)."""
        self.root.stop(timeout=30)
        for s in self._raw:
            s.close()
        self._raw.clear()
        snap = self.snapshot()
        snap["registry_names_left"] = self.server.registry.count() + self.manager.service.registry.count()
        return snap
