"""Load: 2,000 real connections from 4 client processes, 1% of them crashed or dropped.

Undisturbed connections must lose and reorder nothing; afterwards no tree, no
registry name, no extra greenlet and no extra file descriptor may remain.
"""

from __future__ import annotations

import os
import random
import resource
import sys
import time

import gevent
import msgpack
import pytest
from gevent import subprocess

import greentree
from greentree.testing import live_greenlets
from greentree.websocket import WebSocketServer, WebSocketService

PROCS = 4
PER_PROC = 500
MESSAGES = 20
CRASHED = 10   # server-side Connection crashes
DROPPED = 10   # client-side resets (SO_LINGER 0, no close frame)

# One client process: PER_PROC websocket-client connections in greenlets (gevent-patched).
# Talks to the test over stdin/stdout in msgpack maps with a version field.
CLIENT = r'''
from gevent import monkey; monkey.patch_all()
import socket, struct, sys, gevent, msgpack, websocket
from gevent.pool import Pool

url, n, m, drops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), set(map(int, sys.argv[4].split(",") if sys.argv[4] else []))
out = sys.stdout.buffer
inp = msgpack.Unpacker(raw=False, max_buffer_size=1 << 16)

def say(**msg):
    msg["v"] = 1
    out.write(msgpack.packb(msg)); out.flush()

def hear():
    for msg in inp:
        return msg
    while True:
        data = sys.stdin.buffer.read1(4096)
        if not data:
            sys.exit(0)
        inp.feed(data)
        for msg in inp:
            assert msg["v"] == 1
            return msg

def connect(i):
    return websocket.create_connection(url, timeout=30)

pool = Pool(100)
conns = pool.map(connect, range(n))
say(ready=[c.sock.getsockname()[1] for c in conns])
assert hear()["cmd"] == "go"

def exchange(i):
    ws = conns[i]
    port = ws.sock.getsockname()[1]
    try:
        for seq in range(m):
            ws.send_binary(msgpack.packb({"v": 1, "t": "req", "id": seq + 1, "c": "seq", "body": seq}))
            if i in drops and seq == m // 2:
                ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                ws.sock.close()
                return [port, "dropped", 0, True]
        got = []
        for _ in range(m):
            f = msgpack.unpackb(ws.recv(), raw=False)
            got.append(f["body"])
        return [port, "ok", len(got), got == list(range(m))]
    except Exception as e:
        return [port, type(e).__name__, 0, False]

results = Pool(n).map(exchange, range(n))
say(results=results)
assert hear()["cmd"] == "close"
for i, ws in enumerate(conns):
    if i not in drops:
        try:
            ws.close(timeout=2)
        except Exception:
            pass
say(closed=True)
'''

from greentree.testing import wait_until as _wait_until  # noqa: E402


def wait_until(predicate, timeout=30.0, what="condition"):
    _wait_until(predicate, timeout, what, interval=0.005)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class Client:
    def __init__(self, url, drops):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT, url, str(PER_PROC), str(MESSAGES), ",".join(map(str, drops))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 20)

    def hear(self, timeout=60):
        with gevent.Timeout(timeout):
            while True:
                for msg in self.unpacker:
                    assert msg["v"] == 1
                    return msg
                data = self.proc.stdout.read1(65536)
                assert data, "a client process died"
                self.unpacker.feed(data)

    def say(self, **msg):
        msg["v"] = 1
        self.proc.stdin.write(msgpack.packb(msg))
        self.proc.stdin.flush()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.mark.load
@pytest.mark.timeout(300)
def test_2000_connections_lose_nothing_while_1_percent_are_crashed_or_dropped():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = PROCS * PER_PROC + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < want:
        pytest.skip(f"needs {want} file descriptors")
    rng = random.Random(1)
    fds_before = fd_count()
    greenlets_before = len(live_greenlets())
    svc = WebSocketService(lambda conn, conversation, body: body, ping_interval=None)
    root = greentree.Supervisor(
        [svc.child_spec(), WebSocketServer.child_spec(svc, ("127.0.0.1", 0), backlog=4096)], name="load",
    )
    clients = []
    started = time.monotonic()
    with root:
        port = root.which_children()[1].child.address[1]
        url = f"ws://127.0.0.1:{port}/"
        drops = [rng.sample(range(PER_PROC), DROPPED // PROCS + (i < DROPPED % PROCS)) for i in range(PROCS)]
        try:
            clients = [Client(url, d) for d in drops]
            ready = [c.hear()["ready"] for c in clients]
            total = PROCS * PER_PROC
            wait_until(lambda: svc.instance_count() == total, what=f"{total} trees")
            connected_at = time.monotonic()
            assert svc.registry.count() == 2 * total  # supervisor, connection (the sender pool starts on demand)
            # Crash 1% ... half of it on the server side, while the traffic flows.
            victims = rng.sample([sup for sup in svc.connections._children], CRASHED)
            crashed_ports = set()
            for c in clients:
                c.say(cmd="go")
            # A tree starts inline and its Connection's greenlet runs a moment later: crash
            # connections that are open (the clients' traffic is on its way), as intended.
            wait_until(lambda: all(svc.connection(sup.instance_id).connected for sup in victims),
                       what="the victims' connections to be open")
            for sup in victims:
                conn = svc.connection(sup.instance_id)
                crashed_ports.add(int(conn.peer[1]))
                conn.kill(RuntimeError("injected crash (load test)"), block=False)
            results = [c.hear(timeout=120)["results"] for c in clients]
            exchanged_at = time.monotonic()
            dropped_ports = {ready[i][j] for i in range(PROCS) for j in drops[i]}
            undisturbed = [r for rs in results for r in rs if r[0] not in crashed_ports | dropped_ports]
            # A server-side victim may also be one a client drops (both are sampled at random):
            # count the union, not the sum (the sum made this test fail about one run in twenty).
            assert len(crashed_ports) == CRASHED and len(dropped_ports) == DROPPED
            assert len(undisturbed) == total - len(crashed_ports | dropped_ports)
            bad = [r for r in undisturbed if r[1:] != ["ok", MESSAGES, True]]
            assert not bad, f"{len(bad)} undisturbed connections lost or reordered messages: {bad[:5]}"
            for c in clients:
                c.say(cmd="close")
            assert all(c.hear()["closed"] for c in clients)
            wait_until(lambda: svc.instance_count() == 0, what="every tree to end")
        finally:
            for c in clients:
                c.close()
        assert svc.registry.count() == 0
        # A victim the client also reset ends by whichever comes first: the reset (1006, not a
        # crash) or the injected crash (1011).  Every other victim is one crash closed with 1011.
        both = crashed_ports & dropped_ports
        assert CRASHED - len(both) <= svc.stats.connection_crashes <= CRASHED
        assert svc.stats.close_codes[1011] == svc.stats.connection_crashes
        assert svc.stats.messages_in >= (total - CRASHED - DROPPED) * MESSAGES
    wait_until(lambda: len(live_greenlets()) <= greenlets_before, what="greenlets back to the baseline")
    wait_until(lambda: fd_count() <= fds_before, what="file descriptors back to the baseline")
    print(
        f"\n{total} connections in {connected_at - started:.1f} s, "
        f"{total * MESSAGES} requests in {exchanged_at - connected_at:.1f} s, "
        f"total {time.monotonic() - started:.1f} s; stats {svc.stats.snapshot()}"
    )
