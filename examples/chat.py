"""A chat room a person can open in a browser; every connection is its own supervision tree.

    python examples/chat.py --host 127.0.0.1 --port 8000
    # then open http://127.0.0.1:8000/?room=lobby&user=ann in two browser tabs

or, with gunicorn's gevent worker (the same ``app``)::

    gunicorn -k gevent --chdir examples chat:app

* ``/``: a plain HTML + JavaScript page (no external assets);
* ``/ws?room=ROOM&user=USER``: a WebSocket speaking JSON text frames.  Send
  ``{"text": "..."}``; every connection in the room, the sender included,
  receives ``{"user": USER, "text": "..."}``;
* ``/stats``: JSON counters (open connections, registry names), for tests.

SIGTERM and Ctrl-C stop it cleanly: every browser gets close code 1001.
"""

from __future__ import annotations

import argparse
import json
import sys

import gevent

import greentree
from greentree.websocket import Topics, WebSocketApp, WebSocketServer, WebSocketService

MAX_TEXT = 2000
rooms = Topics()  # overflow="close": a browser that stops reading is closed (1008), never waited for


def on_connect(request):
    """Before the upgrade: a room and a user name are required (else 400, no tree)."""
    room, user = request.args.get("room", ""), request.args.get("user", "")
    if not (0 < len(room) <= 64 and 0 < len(user) <= 64):
        return 400, "use /ws?room=ROOM&user=USER (1 to 64 characters each)"
    return {"room": room, "user": user}  # becomes connection.state


def on_open(connection):
    rooms.join(connection.state["room"], connection)


def on_message(connection, conversation, body):
    """Runs in the connection's sender greenlet, in order; a crash here restarts only that sender."""
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        return {"error": f'send {{"text": "..."}} with at most {MAX_TEXT} characters'}  # back to this client only
    rooms.publish(connection.state["room"], {"user": connection.state["user"], "text": text})
    return None


service = WebSocketService(on_message, codec="json", on_connect=on_connect, on_open=on_open)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>greentree chat</title>
<style>
 body { font: 15px sans-serif; max-width: 40em; margin: 2em auto; }
 #log { list-style: none; padding: 0; border: 1px solid #ccc; height: 20em; overflow-y: auto; }
 #log li { padding: .2em .5em; } #status { color: #666; }
</style></head>
<body>
<h1>greentree chat</h1>
<p>room <b id="room"></b> as <b id="user"></b> &middot; <span id="status">connecting</span></p>
<ul id="log"></ul>
<form id="form"><input id="text" autocomplete="off" size="40" autofocus>
<button id="send" type="submit">send</button></form>
<script>
"use strict";
const params = new URLSearchParams(location.search);
const room = params.get("room") || "lobby";
const user = params.get("user") || ("guest" + Math.floor(Math.random() * 1000));
document.getElementById("room").textContent = room;
document.getElementById("user").textContent = user;
const status = document.getElementById("status");
const log = document.getElementById("log");
window.chatState = "connecting";
window.closeCode = null;
const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
  "/ws?room=" + encodeURIComponent(room) + "&user=" + encodeURIComponent(user);
const ws = new WebSocket(url);
ws.onopen = () => { window.chatState = "open"; status.textContent = "connected"; };
ws.onclose = (e) => {
  window.chatState = "closed"; window.closeCode = e.code;
  status.textContent = "closed (" + e.code + ")";
};
ws.onmessage = (e) => {
  const m = JSON.parse(e.data);
  const li = document.createElement("li");
  li.textContent = m.error ? "! " + m.error : m.user + ": " + m.text;
  log.appendChild(li);
  log.scrollTop = log.scrollHeight;
};
document.getElementById("form").onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById("text");
  if (input.value && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({text: input.value}));
    input.value = "";
  }
};
</script>
</body></html>
"""


def pages(environ, start_response):
    """Everything that is not the WebSocket: the page and the counters."""
    path = environ.get("PATH_INFO", "/")
    if path == "/":
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [PAGE.encode("utf-8")]
    if path == "/stats":
        body = {"connections": service.instance_count(), "names": service.registry.count(),
                "rooms": {r: len(rooms.members(r)) for r in rooms.topics()}, "stats": service.stats.snapshot()}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]


#: The WSGI application (gunicorn -k gevent --chdir examples chat:app).
app = WebSocketApp(routes={"/ws": service}, app=pages)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="A browser chat: every WebSocket is its own supervision tree.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = ap.parse_args(argv)
    server = WebSocketServer.child_spec(service, (args.host, args.port), routes={"/ws": service}, app=pages)
    root = greentree.Supervisor([service.child_spec(), server], name="chat")

    def announce():
        root.wait_started()
        srv = root.which_children()[1].child
        print(f"serving on http://{srv.address[0]}:{srv.address[1]}/", flush=True)

    gevent.spawn(announce)
    code = greentree.run(root)  # SIGINT/SIGTERM: the listener stops, then every tree (1001)
    print("stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
