"""Keep outbound WebSocket connections alive: each is a supervised tree that reconnects.

    python examples/websocket_client_manager.py --url ws://127.0.0.1:8765/ws --connections 5
    python examples/websocket_client_manager.py --self-test

With ``--url``, it connects to a server speaking greentree's frames (for
example ``examples/websocket_server.py``) and sends a numbered message per
connection every second through a conversation sender (ordered,
acknowledged).  Stop the server and start it again: the connections come
back by themselves, with backoff.

``--self-test`` starts a greentree server in the same process, connects,
makes the server drop one connection and crashes another client
Connection, checks that both come back and that messages still flow, then
stops everything and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import sys

import gevent

import greentree
from greentree.websocket import ClientManager, WebSocketServer, WebSocketService


def run(url: str, connections: int) -> int:
    events = gevent.queue.Queue()
    manager = ClientManager(events=events)
    root = greentree.Supervisor([manager.child_spec()], name="clients")
    root.start()
    root.wait_started()
    ids = [f"client-{i}" for i in range(connections)]
    for iid in ids:
        manager.connect(url, instance_id=iid)

    def traffic():
        n = 0
        while True:
            n += 1
            for iid in ids:
                try:
                    result = manager.send(iid, "ticks", n)
                    result.rawlink(lambda r, iid=iid: r.successful() and print(f"{iid}: ack {r.value}"))
                except greentree.GreentreeError as e:
                    print(f"{iid}: not sent ({e})")
            gevent.sleep(1.0)

    def show_events():
        for ev in events:
            print(f"event: {ev.kind} {ev.instance_id} {ev.data!r}")

    helpers = [gevent.spawn(traffic), gevent.spawn(show_events)]
    try:
        return greentree.run(root)
    finally:
        gevent.killall(helpers)


def self_test() -> int:
    server_service = WebSocketService(lambda conn, conversation, body: body, ping_interval=None)
    server_root = greentree.Supervisor(
        [server_service.child_spec(), WebSocketServer.child_spec(server_service)], name="server")
    manager = ClientManager(ping_interval=None)
    checks = {}
    with server_root, manager.supervisor():
        url = f"ws://127.0.0.1:{server_root.which_children()[1].child.address[1]}/"
        for i in range(5):
            manager.connect(url, instance_id=i, backoff_base=0.01)
        checks["first round"] = [manager.send(i, "c", i).get(timeout=5) for i in range(5)] == list(range(5))
        # The server drops connection 0's socket: the client reconnects.
        old0 = manager.connection(0)
        server_service.stop_instance(next(iter(server_service.connections._children)).instance_id)
        # Client Connection 1 crashes: its supervisor restarts it, and its senders with it.
        old1 = manager.connection(1)
        old1.kill(RuntimeError("injected client Connection crash"), block=False)
        with gevent.Timeout(10):  # wait until both were replaced (a request is never retried for you)
            while manager.connection(0) in (None, old0) or manager.connection(1) in (None, old1):
                gevent.sleep(0.01)
        checks["second round"] = [manager.request(i, i * 10, timeout=5) for i in range(5)] == [0, 10, 20, 30, 40]
        checks["replaced"] = old0.dead and old1.dead and isinstance(old1.exception, RuntimeError)
        checks["reconnects"] = manager.service.stats.reconnects >= 1
    checks["clean"] = manager.service.registry.count() == 0 and server_service.registry.count() == 0
    ok = all(checks.values())
    print(f"self-test {'passed' if ok else 'FAILED'}: {checks}")
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="ws://127.0.0.1:8765/ws", help="server to connect to")
    p.add_argument("--connections", type=int, default=3, help="how many connections to keep (default 3)")
    p.add_argument("--self-test", action="store_true", help="run a short self-test and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.self_test:
        return self_test()
    return run(args.url, args.connections)


if __name__ == "__main__":
    sys.exit(main())
