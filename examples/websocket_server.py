"""A WebSocket server where every connection is its own supervision tree.

    python examples/websocket_server.py --port 8765          # serve until Ctrl-C
    python examples/websocket_server.py --self-test          # start, talk to it, stop, exit 0

Protocol: binary WebSocket messages carrying msgpack maps
``{"v": 1, "t": "req", "id": 1, "c": "room", "body": ...}``; each request is
answered with ``{"v": 1, "t": "rep", "id": 1, ...}``.  The handler below echoes
the body, except ``"crash"``, which raises: only that conversation's sender
restarts, the connection stays up.  Plain HTTP requests get a small page.

Try it with websocket-client::

    import websocket, msgpack
    ws = websocket.create_connection("ws://127.0.0.1:8765/ws")
    ws.send_binary(msgpack.packb({"v": 1, "t": "req", "id": 1, "c": "room", "body": "hi"}))
    print(msgpack.unpackb(ws.recv()))
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

import gevent

import greentree
from greentree.websocket import WebSocketServer, WebSocketService


def handler(connection, conversation, body):
    """Runs in the conversation's sender, in order; the return value is the reply."""
    if body == "crash":
        raise RuntimeError("a bug in the handler (on purpose)")
    return body


def http_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"greentree WebSocket example: connect to /ws\n"]


def build(host: str, port: int, events=None):
    """The application tree: the connection trees' supervisor, then the listener."""
    service = WebSocketService(handler, events=events, ping_interval=20.0, ping_timeout=10.0)
    root = greentree.Supervisor([
        service.child_spec(),
        WebSocketServer.child_spec(service, (host, port), app=http_app, path="/ws"),
    ], name="websocket-example")
    return service, root


def self_test() -> int:
    """Start the server, run real clients (in a thread) against it, check, stop."""
    import msgpack
    import websocket

    service, root = build("127.0.0.1", 0)
    with root:
        port = root.which_children()[1].child.address[1]
        results = {}

        def clients():
            try:
                socks = [websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=5) for _ in range(10)]
                for i, ws in enumerate(socks):
                    for seq in range(5):
                        ws.send_binary(msgpack.packb({"v": 1, "t": "req", "id": seq + 1, "c": "c", "body": [i, seq]}))
                replies = [[msgpack.unpackb(ws.recv(), raw=False)["body"] for _ in range(5)] for ws in socks]
                results["ordered"] = all(r == [[i, s] for s in range(5)] for i, r in enumerate(replies))
                socks[0].send_binary(msgpack.packb({"v": 1, "t": "req", "id": 99, "c": "c", "body": "crash"}))
                results["crash_reply"] = msgpack.unpackb(socks[0].recv(), raw=False)["t"]
                for ws in socks:
                    ws.close()
            except Exception as e:
                results["error"] = repr(e)
            finally:
                results["done"] = True

        t = threading.Thread(target=clients, daemon=True)
        t.start()
        with gevent.Timeout(30):
            while "done" not in results or service.instance_count():
                gevent.sleep(0.01)
    ok = results.get("ordered") and results.get("crash_reply") == "err" and service.registry.count() == 0
    print(f"self-test {'passed' if ok else 'FAILED'}: {results}; stats {service.stats.snapshot()}")
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks one)")
    p.add_argument("--self-test", action="store_true", help="run a short self-test and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.self_test:
        return self_test()
    service, root = build(args.host, args.port)
    root.start()
    root.wait_started()
    print(f"listening on ws://{args.host}:{root.which_children()[1].child.address[1]}/ws (Ctrl-C stops)")
    return greentree.run(root)


if __name__ == "__main__":
    sys.exit(main())
