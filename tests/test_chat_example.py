"""examples/chat.py for real: headless Chromium pages chat through it under pywsgi and under
gunicorn -k gevent, and SIGTERM (or gunicorn recycling a worker) gives every client close code 1001.

Chromium is driven over its DevTools protocol (--remote-debugging-port) with websocket-client:
nothing is downloaded.  Every process runs in its own process group, killed in a finalizer.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
import websocket  # websocket-client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


# ---------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A child process in its own process group; ``stop()`` kills the group."""

    def __init__(self, args, cwd=ROOT, env=None):
        self.log = tempfile.TemporaryFile()
        self.p = subprocess.Popen(args, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                  start_new_session=True, env=env)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def signal(self, sig) -> None:
        os.kill(self.p.pid, sig)

    def stop(self) -> None:
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait(10)
        self.log.close()


def http_json(port: int, path: str = "/stats"):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


@pytest.fixture(params=["pywsgi", "gunicorn"])
def chat_server(request):
    """examples/chat.py served by pywsgi (python chat.py) or gunicorn -k gevent; yields (proc, port)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT)
    if request.param == "pywsgi":
        proc = Proc([sys.executable, os.path.join(EXAMPLES, "chat.py"), "--host", "127.0.0.1",
                     "--port", str(port)], env=env)
    else:
        proc = Proc([sys.executable, "-m", "gunicorn", "-k", "gevent", "--chdir", EXAMPLES, "-b",
                     f"127.0.0.1:{port}", "-w", "1", *getattr(request, "gunicorn_args", ()), "chat:app"],
                    env=env)
    request.addfinalizer(proc.stop)
    wait_for(lambda: http_json(port) is not None or proc.p.poll() is not None, 30, "the chat server")
    assert proc.p.poll() is None, proc.output()
    proc.kind = request.param
    return proc, port


# ---------------------------------------------------------------- Chromium over CDP
class Browser:
    """Headless Chromium and a tiny DevTools client (one websocket, flat sessions)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="greentree-chromium-")
        self.proc = Proc([
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={self.dir}", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            "about:blank",
        ])
        port_file = os.path.join(self.dir, "DevToolsActivePort")
        wait_for(lambda: os.path.exists(port_file) and len(open(port_file).read().split()) == 2, 30,
                 "Chromium's DevToolsActivePort")
        port, path = open(port_file).read().split()
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=20,
                                              suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, session: str | None = None, **params):
        mid = next(self.ids)
        msg = {"id": mid, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == mid:
                if "error" in reply:
                    raise AssertionError(f"CDP {method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str) -> tuple[str, str]:
        target = self.call("Target.createTarget", url=url)["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        return target, session

    def js(self, session: str, expression: str):
        r = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"JS {expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close_page(self, target: str) -> None:
        self.call("Target.closeTarget", targetId=target)

    def quit(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def browser(request):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium is not installed at {CHROMIUM} (.ci/run installs Debian's chromium)")
    b = Browser()
    request.addfinalizer(b.quit)
    return b


LOG = "Array.from(document.querySelectorAll('#log li')).map(li => li.textContent)"


def say(browser, session, text):
    browser.js(session, f"document.getElementById('text').value = {json.dumps(text)};"
                        "document.getElementById('send').click(); true")


@pytest.mark.timeout(120)
def test_two_browser_pages_in_one_room_chat_and_closing_one_frees_its_tree(chat_server, browser):
    proc, port = chat_server
    ann_t, ann = browser.open(f"http://127.0.0.1:{port}/?room=lobby&user=ann")
    bob_t, bob = browser.open(f"http://127.0.0.1:{port}/?room=lobby&user=bob")
    for s in (ann, bob):
        wait_for(lambda s=s: browser.js(s, "window.chatState") == "open", 20, "the page's WebSocket to open")
    wait_for(lambda: (http_json(port) or {}).get("rooms", {}).get("lobby") == 2, 10, "both in the room")

    say(browser, ann, "hello from ann")
    for s in (ann, bob):  # the sender receives its own message too
        wait_for(lambda s=s: "ann: hello from ann" in browser.js(s, LOG), 10, "ann's message on both pages")
    say(browser, bob, "hi ann")
    for s in (ann, bob):
        wait_for(lambda s=s: browser.js(s, LOG)[-1:] == ["bob: hi ann"], 10, "bob's reply on both pages")

    browser.close_page(bob_t)
    stats = wait_for(lambda: (s := http_json(port)) and s["connections"] == 1 and s, 10, "bob's tree to end")
    assert stats["rooms"] == {"lobby": 1}
    assert stats["names"] == 4  # ann's tree only: supervisor, connection, sender pool, her sender
    say(browser, ann, "still here")
    wait_for(lambda: browser.js(ann, LOG)[-1:] == ["ann: still here"], 10, "ann still chatting alone")
    assert proc.p.poll() is None, proc.output()


# ---------------------------------------------------------------- shutdown: 1001 for everyone
def recv_close_code(ws) -> int:
    while True:
        try:
            opcode, data = ws.recv_data(control_frame=True)
        except (websocket.WebSocketConnectionClosedException, OSError):
            return 1006
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005


def open_clients(port: int, n: int, room: str = "r"):
    clients = []
    for i in range(n):
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws?room={room}&user=u{i}", timeout=20)
        clients.append(ws)
    clients[0].send(json.dumps({"text": "ready?"}))
    for ws in clients:
        assert json.loads(ws.recv()) == {"user": "u0", "text": "ready?"}
    return clients


@pytest.mark.timeout(90)
def test_sigterm_gives_every_client_1001_and_the_server_exits_well_within_graceful_timeout(chat_server):
    proc, port = chat_server
    clients = open_clients(port, 32)
    t0 = time.monotonic()
    proc.signal(signal.SIGTERM)
    codes = [recv_close_code(ws) for ws in clients]
    all_closed = time.monotonic() - t0
    proc.p.wait(25)  # gunicorn's graceful_timeout is 30 s by default
    exited = time.monotonic() - t0
    assert codes == [1001] * 32, codes
    assert all_closed < 5.0
    assert exited < 10.0, f"{proc.kind} took {exited:.1f} s to exit"
    assert proc.p.returncode == 0, proc.output()
    out = proc.output()
    assert "Traceback" not in out, out
    for ws in clients:
        ws.close()


@pytest.fixture
def recycling_gunicorn(request):
    port = free_port()
    proc = Proc([sys.executable, "-m", "gunicorn", "-k", "gevent", "--chdir", EXAMPLES, "-b", f"127.0.0.1:{port}",
                 "-w", "1", "--max-requests", "5", "chat:app"], env=dict(os.environ, PYTHONPATH=ROOT))
    request.addfinalizer(proc.stop)
    wait_for(lambda: http_json(port) is not None, 30, "gunicorn")  # request 1
    return proc, port


@pytest.mark.timeout(90)
def test_gunicorn_recycling_a_worker_after_max_requests_gives_its_clients_1001_and_serves_on(recycling_gunicorn):
    proc, port = recycling_gunicorn
    clients = open_clients(port, 3)  # requests 2-4
    assert http_json(port)["connections"] == 3  # request 5: the worker is done after it
    codes = [recv_close_code(ws) for ws in clients]
    assert codes == [1001] * 3, codes
    # The arbiter starts a new worker, which serves new connections.
    fresh = wait_for(lambda: http_json(port), 20, "the new worker")
    assert fresh["connections"] == 0
    again = open_clients(port, 2, room="after")
    for ws in again:
        ws.close()
    assert proc.p.poll() is None
