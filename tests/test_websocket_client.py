"""The client connection manager against a real third-party server (``websockets``, in a subprocess)."""

from __future__ import annotations

import sys

import gevent
import msgpack
import pytest
from gevent import subprocess

import greentree
from greentree.testing import wait_until as _wait_until
from greentree.websocket import ClientManager, ClientTransport, ConversationSender


def wait_until(predicate, timeout=10.0, what="condition"):
    _wait_until(predicate, timeout, what, interval=0.005)

# A msgpack echo server on the `websockets` package: replies to every "req" frame.  A request whose
# body is "drop" makes it abort that connection (no close frame); "close" makes it close with 1001.
SERVER = r'''
import asyncio, sys, msgpack
from websockets.asyncio.server import serve

async def handler(ws):
    async for message in ws:
        f = msgpack.unpackb(message, raw=False)  # websockets bounds message size (max_size, 1 MiB)
        if f.get("v") != 1:
            await ws.close(1007)
            return
        if f["body"] == "drop":
            ws.transport.abort()
            return
        if f["body"] == "close":
            await ws.close(1001)
            return
        if f["t"] == "req":
            reply = {"v": 1, "t": "rep", "id": f["id"], "body": f["body"]}
            if "c" in f:
                reply["c"] = f["c"]
            await ws.send(msgpack.packb(reply))

async def main(port):
    async with serve(handler, "127.0.0.1", port) as server:
        port = server.sockets[0].getsockname()[1]
        sys.stdout.buffer.write(msgpack.packb({"v": 1, "port": port}))
        sys.stdout.flush()
        await server.serve_forever()

asyncio.run(main(int(sys.argv[1])))
'''


class ThirdPartyServer:
    """The `websockets` server in a subprocess; ``restart()`` brings it back on the same port."""

    def __init__(self, port=0):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE)
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=4096)
        while True:
            data = self.proc.stdout.read1(4096)
            if not data:
                raise AssertionError("the websockets server did not start")
            unpacker.feed(data)
            for msg in unpacker:
                assert msg["v"] == 1
                self.port = msg["port"]
                self.url = f"ws://127.0.0.1:{self.port}/"
                return

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def ws_server():
    servers = []

    def start(port=0):
        s = ThirdPartyServer(port)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def manager():
    events = gevent.queue.Queue()
    mgr = ClientManager(events=events, ping_interval=None, request_timeout=5.0)
    mgr.events = events
    with mgr.supervisor() as conns:
        mgr.conns = conns
        yield mgr
    assert mgr.service.registry.count() == 0


def test_a_client_connection_talks_to_a_third_party_server(ws_server, manager):
    server = ws_server()
    sup, conn = manager.connect(server.url, instance_id="acct-1")
    assert conn.wait_connected(5)
    assert [conn.request({"n": i}) for i in range(5)] == [{"n": i} for i in range(5)]
    assert manager.request("acct-1", "hi", conversation="c1") == "hi"


def test_senders_send_a_conversation_in_order_each_acknowledged(ws_server, manager):
    server = ws_server()
    manager.connect(server.url, instance_id="a")
    results = [manager.send("a", "chat", i) for i in range(100)]
    assert [r.get(timeout=10) for r in results] == list(range(100))
    assert isinstance(manager.service.whereis("a", ("sender", "chat")), ConversationSender)


def test_when_the_server_drops_the_connection_it_reconnects_and_the_senders_restart(ws_server, manager):
    server = ws_server()
    sup, conn = manager.connect(server.url, instance_id="a", backoff_base=0.01)
    assert manager.send("a", "chat", "first").get(timeout=5) == "first"
    sender = manager.service.whereis("a", ("sender", "chat"))
    pool = manager.service.whereis("a", "sender_supervisor")
    with pytest.raises(greentree.websocket.ConnectionClosedError):
        conn.request("drop")
    wait_until(lambda: manager.connection("a") not in (None, conn), what="a new Connection")
    new = manager.connection("a")
    assert new.wait_connected(5)
    # rest_for_one: the Connection restarted, so the pool and its senders did too.
    assert sender.dead and pool.dead and manager.service.whereis("a", "sender_supervisor") is not pool
    assert manager.send("a", "chat", "again").get(timeout=5) == "again"
    assert manager.service.stats.reconnects >= 1 and not sup.dead
    assert conn.close_code == 1006


def test_a_server_close_frame_also_reconnects(ws_server, manager):
    server = ws_server()
    sup, conn = manager.connect(server.url, instance_id="a", backoff_base=0.01)
    assert conn.wait_connected(5)
    conn.send("close")
    wait_until(lambda: conn.dead, what="the Connection to end")
    assert conn.close_code == 1001
    assert manager.request("a", "back", timeout=5) == "back"


def test_a_client_connection_crash_restarts_the_connection_and_its_senders(ws_server, manager):
    server = ws_server()
    sup, conn = manager.connect(server.url, instance_id="a")
    assert manager.send("a", "chat", 1).get(timeout=5) == 1
    sender = manager.service.whereis("a", ("sender", "chat"))
    conn.kill(RuntimeError("injected Connection crash"), block=False)
    wait_until(lambda: manager.connection("a") not in (None, conn), what="a new Connection")
    assert sender.dead
    assert manager.send("a", "chat", 2).get(timeout=5) == 2
    assert isinstance(conn.exception, RuntimeError)
    assert [e.kind for e in drain(manager.events) if e.kind == "connection_crashed"] == ["connection_crashed"]


def test_it_reconnects_with_backoff_until_the_server_comes_back(ws_server, manager):
    server = ws_server()
    port = server.port
    sup, conn = manager.connect(server.url, instance_id="a", backoff_base=0.02, backoff_max=0.2)
    assert conn.wait_connected(5)
    server.stop()
    wait_until(lambda: manager.service.stats.connect_failures >= 3, what="failed reconnects")
    assert not sup.dead  # connect failures are retried inside the Connection, not restarts
    ws_server(port)
    assert manager.request("a", "welcome back", timeout=10) == "welcome back"


def test_stop_instance_ends_a_client_tree_for_good(ws_server, manager):
    server = ws_server()
    sup, conn = manager.connect(server.url, instance_id="a")
    assert conn.wait_connected(5)
    assert manager.disconnect("a") is True
    assert sup.dead and conn.dead and conn.close_code == 1001
    assert manager.disconnect("a") is False
    assert manager.service.instance_count() == 0


def test_a_tree_that_cannot_connect_does_not_block_its_supervisor(manager):
    # Nothing listens on this port: the Connection retries in its own greenlet.
    sup, conn = manager.connect("ws://127.0.0.1:9/", instance_id="x", backoff_base=0.01, backoff_max=0.05)
    wait_until(lambda: manager.service.stats.connect_failures >= 2, what="failed connects")
    assert not conn.connected and manager.conns.count_children().active == 1
    assert manager.disconnect("x") is True


def test_the_backoff_doubles_up_to_its_maximum_and_resets_after_a_stable_session():
    t = ClientTransport("ws://h:1/", backoff_base=0.5, backoff_max=3.0, stable_after=0.0)
    assert [t.delay_for(n, jitter=1.0) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert 0.25 <= t.delay_for(1) <= 0.5
    with pytest.raises(greentree.ChildSpecError):
        ClientTransport("http://h/")


def drain(q):
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out
