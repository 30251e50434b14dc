"""WebSocket connections at scale: greentree's per-connection trees vs bare greenlets.

Run it (a few minutes; writes ``benchmarks/results/websocket.json`` and
``websocket.png``)::

    python -m benchmarks.websocket_conns                    # 1,000 and 10,000 connections
    python -m benchmarks.websocket_conns --connections 5000 # one size
    python -m benchmarks.websocket_conns --smoke            # 50 connections, a few seconds, writes nothing

Several servers do the same job, one after the other, alternating
(``gevent-websocket, floor, greentree, ...``), each in a fresh process of its own:

* **greentree**: the real :class:`greentree.websocket.WebSocketServer` with a
  :class:`~greentree.websocket.WebSocketService` (echo handler): one
  ``ConnectionSupervisor`` + ``Connection`` (+ its writer) +
  ``SenderSupervisor`` (+ one ``ConversationSender`` once a conversation
  speaks) per connection, all named in the service's ``Registry``;
* **floor**: the same ``gevent.pywsgi`` server and the same wsproto handshake
  with bare greenlets: the request greenlet reads, one writer greenlet drains
  a bounded queue, and frames are decoded and encoded with the same
  :class:`greentree.websocket.Codec`; requests are answered inline by the
  reader.  No supervision, no registry, no conversations;
* **gevent-websocket**: what many gevent applications run
  (``geventwebsocket.handler.WebSocketHandler`` under pywsgi): one greenlet
  per connection, writes inline; the same Codec, answered inline;
* **flask-sock**: a Flask route with ``flask_sock.Sock`` under pywsgi (the
  process is monkey-patched: simple-websocket runs a thread per connection);
* **greentree-before** (with ``--before REV``): the greentree server as it
  was at git revision REV (its ``greentree/`` extracted to a temporary
  directory and put first on the server's ``PYTHONPATH``), to measure a
  change before and after in one run.

Ratios are against gevent-websocket (the floor if it is not run).

Both run with keepalive off (``ping_interval=None``; the floor has none) and
the same 10 s socket timeout, so they do the same work per message.

Real clients (wsproto over gevent sockets) run in ``--clients`` separate
processes (2 by default) and connect to 127.0.0.1 only; the server binds port
0 and reports it.  The driver (this process, no gevent) orchestrates over
pipes carrying msgpack messages with a version field (size-limited when
decoded).  Per run:

1. warm-up: ``max(5, N // 100)`` connections open, exchange 2 requests each
   and close; the server then records its baseline (RSS after
   ``gc.collect()``, live greenlets);
2. **open**: the clients open N connections (64 handshakes in flight per
   client process); connections per second = N / time until the last client
   saw its last ``101``;
3. **memory**: server RSS delta from the baseline / N, with all N open and
   idle, and again after the request phase (greentree then also holds one
   ConversationSender per connection); live greenlets per connection;
4. **round trip**: with all N open, every connection sends ``--rounds``
   (10) sequential requests and waits for each reply (``--inflight`` 8
   connections at a time per client process); median and p99 latency,
   and requests per second;
5. **teardown**: the clients close every connection (close handshake); the
   time until the server holds no connection and its greenlet count is back
   at the baseline.

Greenlet counts leave out greentree's parked request greenlets:
``WebSocketServer`` keeps a request greenlet that finished (an upgrade
finishes its request once the ``101`` is written) for up to
``worker_idle_timeout`` seconds, to serve the next accepted connection.
They hold no connection, so they are not part of a connection's cost or of
its teardown; the memory they use is in the RSS figures.

Each phase also records the server process's CPU time (user + system, the
probes' own scans left out): ``cpu_us_per_connection_open``,
``cpu_us_per_request``, ``cpu_us_per_connection_teardown``, and
``server_busy_open`` (CPU seconds / wall seconds while opening: near 1.0, the
server's one core was the limit; well under it, the clients or the machine
were).  They are in the JSON and the progress lines, not the table.

The table shows the medians over ``--repeat`` runs per side and the ratio
greentree / floor.  With ``--profile N`` (default 1,000 in a full run), one
more run per side executes under cProfile in the server and the top functions
(by own time) are stored in the JSON.

Every wait has a deadline; child processes are killed if anything goes wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time

import msgpack

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Version of the driver <-> child control messages.
CONTROL_VERSION = 1
#: Largest control message a side decodes (latency samples of 10,000 connections are ~1 MiB).
MAX_CONTROL = 64 << 20

KINDS_ALL = ("gevent-websocket", "floor", "greentree", "greentree-before", "flask-sock")
KINDS = ["gevent-websocket", "floor", "greentree", "flask-sock"]  # the default run; --kinds changes it
REFERENCE = "gevent-websocket"
#: Set by --before: the directory holding an older greentree package.
BEFORE_DIR = None
SIZES = [1_000, 10_000]
SMOKE_SIZES = [50]


class BenchError(RuntimeError):
    """A run could not complete (a child died, a deadline passed, a client failed)."""


def raise_nofile(want: int | None = None) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (or ``want``); return it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None else min(max(soft, want), hard)
    if hard == resource.RLIM_INFINITY and want is None:
        target = max(soft, 1 << 20)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _check(msg) -> dict:
    if type(msg) is not dict or msg.get("v") != CONTROL_VERSION or type(msg.get("op")) is not str:
        raise BenchError(f"bad control message (expected a map with v={CONTROL_VERSION} and op): {str(msg)[:200]}")
    return msg


def _unpacker():
    return msgpack.Unpacker(raw=False, max_buffer_size=MAX_CONTROL, strict_map_key=False)


# =====================================================================================
# Child side of the control channel (gevent: stdin / stdout made non-blocking)
# =====================================================================================
class _ChildControl:
    """The child's end: msgpack maps in on fd 0, out on fd 1, cooperative with gevent."""

    def __init__(self):
        from gevent.os import make_nonblocking

        make_nonblocking(0)
        make_nonblocking(1)
        self._unpacker = _unpacker()

    def send(self, op: str, **fields) -> None:
        from gevent.os import nb_write

        data = memoryview(msgpack.packb(dict(fields, v=CONTROL_VERSION, op=op), use_bin_type=True))
        while data:
            data = data[nb_write(1, data):]

    def recv(self) -> dict | None:
        from gevent.os import nb_read

        while True:
            for msg in self._unpacker:
                return _check(msg)
            chunk = nb_read(0, 1 << 16)
            if not chunk:
                return None  # the driver went away
            self._unpacker.feed(chunk)


def _settle() -> None:
    import gc

    import gevent

    gevent.sleep(0)
    gevent.sleep(0)
    gc.collect()


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _greenlets(server=None) -> int:
    """Live greenlets, less greentree's parked request greenlets (see the module's docstring)."""
    from greentree.testing import live_greenlets

    parked = getattr(server, "parked", None)
    return len(live_greenlets()) - (parked() if parked is not None else 0)


_GC = {"s": 0.0, "t0": 0.0}


def _count_gc_time() -> None:
    """Add the time spent in the cyclic GC to ``_GC["s"]`` (reported with every probe)."""
    import gc

    def cb(phase, info):
        if phase == "start":
            _GC["t0"] = time.perf_counter()
        else:
            _GC["s"] += time.perf_counter() - _GC["t0"]

    gc.callbacks.append(cb)


def _stacks() -> int:
    """Bytes of C stack that the parked greenlets keep saved on the heap."""
    from greentree.testing import live_greenlets

    return sum(getattr(g, "_stack_saved", 0) for g in live_greenlets())


# =====================================================================================
# The floor server: pywsgi + wsproto + Codec, one reader and one writer per connection
# =====================================================================================
class FloorServer:
    """The same server without supervision: the cheapest correct code for the same job."""

    SEND_QUEUE = 1024
    SOCKET_TIMEOUT = 10.0

    def __init__(self):
        from greentree.websocket import Codec

        self.codec = Codec()
        self.active = 0
        self.server = None

    def start(self) -> int:
        from gevent.pywsgi import WSGIHandler, WSGIServer

        class Handler(WSGIHandler):
            def run_application(self):
                self.environ["bench.socket"] = self.socket
                try:
                    super().run_application()
                finally:
                    if self.environ.get("bench.upgraded"):
                        self.close_connection = True
                        self.status = "101 Switching Protocols"
                        self.headers_sent = True

        self.server = WSGIServer(("127.0.0.1", 0), self.app, handler_class=Handler, log=None,
                                 environ={"SERVER_NAME": "127.0.0.1"})
        self.server.start()
        return self.server.address[1]

    def stop(self) -> None:
        self.server.stop(timeout=5)

    def app(self, environ, start_response):
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, Request

        from greentree.websocket._handler import is_websocket_request, request_bytes

        if not is_websocket_request(environ):
            start_response("426 Upgrade Required", [("Upgrade", "websocket")])
            return [b"websocket only\n"]
        sock = environ["bench.socket"]
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(request_bytes(environ))
        req = next(ws.events(), None)
        if not isinstance(req, Request):
            start_response("400 Bad Request", [])
            return [b"not a WebSocket handshake\n"]
        environ["bench.upgraded"] = True
        sock.sendall(ws.send(AcceptConnection(extensions=[])))
        self.active += 1
        try:
            self.serve(sock, ws)
        finally:
            self.active -= 1
        return []

    def serve(self, sock, ws) -> None:
        import gevent
        from gevent.queue import Full, Queue
        from wsproto.connection import ConnectionState
        from wsproto.events import CloseConnection

        out = Queue(self.SEND_QUEUE)
        sock.settimeout(self.SOCKET_TIMEOUT)
        writer = gevent.spawn(_floor_write_loop, sock, out, gevent.getcurrent())
        code, reason, flush = 1006, "", False
        try:
            code, reason, flush = self.read_loop(sock, ws, out)
        except _FloorGone:
            pass
        except gevent.GreenletExit:
            code, reason, flush = 1001, "going away", True
            raise
        finally:
            try:
                if flush and not writer.dead:
                    if ws.state is ConnectionState.OPEN:
                        out.put_nowait(ws.send(CloseConnection(code=code, reason=reason)))
                    out.put_nowait(_FLOOR_STOP)
                    writer.join(2.0)
                    _floor_await_peer_close(sock, ws, 2.0)  # the close handshake, as a real server does
            except (Full, OSError):
                pass
            finally:
                writer.kill(block=True, timeout=1.0)
                try:
                    sock.close()
                except OSError:
                    pass

    def read_loop(self, sock, ws, out):

        from gevent.queue import Full
        from wsproto.connection import ConnectionState
        from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

        from greentree.websocket import FrameError
        from greentree.websocket._frames import MessageAssembler

        codec = self.codec
        feed = MessageAssembler(codec.max_size).feed  # the same fragment handling as the real server
        recv = sock.recv
        events = ()
        try:
            while True:
                for ev in events:
                    cls = type(ev)
                    if cls is BytesMessage:
                        data = feed(ev.data, ev.message_finished)
                        if data is None:
                            continue
                        frame = codec.decode(data)
                        if frame.type == "req":  # echo, like the greentree server's handler
                            reply = codec.encode("rep", frame.body, id=frame.id, conversation=frame.conversation)
                            out.put_nowait(ws.send(Message(data=reply)))
                    elif cls is Ping:
                        out.put_nowait(ws.send(ev.response()))
                    elif cls is CloseConnection:
                        if ws.state is ConnectionState.REMOTE_CLOSING:
                            out.put_nowait(ws.send(ev.response()))
                            return ev.code, ev.reason or "", True
                        if ws.state is ConnectionState.CLOSED:
                            return ev.code, ev.reason or "", False
                        raise FrameError(ev.code, ev.reason or "protocol error")
                    elif cls is TextMessage:
                        raise FrameError(1003, "text messages are not accepted")
                try:
                    data = recv(65536)
                except TimeoutError:
                    events = ()
                    continue
                except OSError:
                    return 1006, "connection lost", False
                if not data:
                    return 1006, "EOF", False
                ws.receive_data(data)
                events = ws.events()
        except FrameError as e:
            return e.code, e.reason, True
        except Full:
            return 1008, "slow consumer", False


_FLOOR_STOP = object()


def _floor_await_peer_close(sock, ws, timeout: float) -> None:
    """After our close frame: read until the peer's close, EOF or ``timeout`` (no RST over our close)."""
    import gevent
    from wsproto.connection import ConnectionState

    try:
        with gevent.Timeout(timeout, False):
            while ws.state is ConnectionState.LOCAL_CLOSING:
                data = sock.recv(65536)
                if not data:
                    return
                ws.receive_data(data)
                for _ in ws.events():
                    pass
    except OSError:
        pass


class _FloorGone(Exception):
    """Thrown into the floor's reader by its writer when the socket failed."""


def _floor_write_loop(sock, out, reader) -> None:
    sendall = sock.sendall
    get = out.get
    try:
        while True:
            data = get()
            if data is _FLOOR_STOP:
                return
            sendall(data)
    except OSError as e:  # includes socket.timeout: a peer that does not read
        reader.kill(_FloorGone(str(e)), block=False)


# =====================================================================================
# The greentree server
# =====================================================================================
class GreentreeServer:
    """The real greentree WebSocket server: one supervision tree per connection."""

    def __init__(self):
        self.root = None
        self.service = None

    def start(self) -> int:
        import greentree
        from greentree.websocket import WebSocketServer, WebSocketService

        # GREENTREE_BENCH_OPTIONS: extra service options as JSON, e.g. '{"sender_idle_timeout": null}'
        extra = json.loads(os.environ.get("GREENTREE_BENCH_OPTIONS") or "{}")
        self.service = WebSocketService(_echo, ping_interval=None, **extra)
        self.root = greentree.Supervisor([
            self.service.child_spec(),
            WebSocketServer.child_spec(self.service, ("127.0.0.1", 0)),
        ], name="bench-websocket")
        self.root.start()
        self.root.wait_started()
        info = self.root.which_children()[1]
        server = self.ws = getattr(info, "child", None) or info.greenlet  # greentree before 0.2: .greenlet
        return server.address[1]

    def parked(self) -> int:
        """Request greenlets waiting for the next connection (they hold none); 0 before they existed."""
        workers = getattr(self.ws, "_workers", None)
        return workers.idle_count() if workers is not None else 0

    @property
    def active(self) -> int:
        return self.service.instance_count()

    def stop(self) -> None:
        self.root.stop(timeout=30)


def _echo(connection, conversation, body):
    return body


class _EchoServer:
    """A comparison server: answers each msgpack ``req`` with a ``rep`` (the same Codec as greentree's)."""

    def __init__(self):
        from greentree.websocket import Codec

        self.codec = Codec()
        self.active = 0
        self.server = None

    def stop(self) -> None:
        self.server.stop(timeout=5)


class GeventWebSocketServer(_EchoServer):
    """gevent-websocket (``geventwebsocket.handler.WebSocketHandler``): one greenlet, inline writes."""

    def start(self) -> int:
        from gevent.pywsgi import WSGIServer
        from geventwebsocket.handler import WebSocketHandler

        self.server = WSGIServer(("127.0.0.1", 0), self.app, handler_class=WebSocketHandler, log=None,
                                 environ={"SERVER_NAME": "127.0.0.1"})
        self.server.start()
        return self.server.address[1]

    def app(self, environ, start_response):
        from geventwebsocket.exceptions import WebSocketError

        ws = environ.get("wsgi.websocket")
        if ws is None:
            start_response("426 Upgrade Required", [("Upgrade", "websocket")])
            return [b"websocket only\n"]
        codec = self.codec
        self.active += 1
        try:
            while True:
                data = ws.receive()
                if data is None:
                    break
                frame = codec.decode(data)
                if frame.type == "req":
                    ws.send(codec.encode("rep", frame.body, id=frame.id, conversation=frame.conversation),
                            binary=True)
        except WebSocketError:
            pass
        finally:
            self.active -= 1
        return []


class FlaskSockServer(_EchoServer):
    """flask-sock: a Flask route; simple-websocket under pywsgi (monkey-patched: a thread per connection)."""

    def start(self) -> int:
        from flask import Flask
        from flask_sock import ConnectionClosed, Sock
        from gevent.pywsgi import WSGIServer

        app = Flask("bench")
        sock = Sock(app)
        codec = self.codec

        @sock.route("/")
        def echo(ws):
            self.active += 1
            try:
                while True:
                    frame = codec.decode(ws.receive())
                    if frame.type == "req":
                        ws.send(codec.encode("rep", frame.body, id=frame.id, conversation=frame.conversation))
            except ConnectionClosed:
                pass
            finally:
                self.active -= 1

        self.server = WSGIServer(("127.0.0.1", 0), app, log=None, environ={"SERVER_NAME": "127.0.0.1"})
        self.server.start()
        return self.server.address[1]


def make_server(kind: str):
    if kind in ("greentree", "greentree-before"):
        return GreentreeServer()
    if kind == "gevent-websocket":
        return GeventWebSocketServer()
    if kind == "flask-sock":
        return FlaskSockServer()
    return FloorServer()


def _profile_summary(prof, top: int = 25) -> dict:
    import pstats

    st = pstats.Stats(prof)
    total = st.total_tt or 1e-12
    rows = []
    areas: dict = {}
    for (filename, line, name), (_cc, nc, tt, ct, _callers) in st.stats.items():
        area = _area(filename, name)
        areas[area] = areas.get(area, 0.0) + tt
        rows.append((tt, nc, ct, f"{_short(filename)}:{line}({name})"))
    rows.sort(reverse=True)
    return {
        "total_s": total,
        "top": [{"function": f, "calls": nc, "tottime_s": tt, "cumtime_s": ct, "share": tt / total}
                for tt, nc, ct, f in rows[:top]],
        "by_area": {k: {"tottime_s": v, "share": v / total}
                    for k, v in sorted(areas.items(), key=lambda kv: -kv[1])},
    }


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/greentree/", "/benchmarks/", "/lib/python3"):
        i = filename.find(marker)
        if i >= 0:
            return filename[i + len(marker):] if marker != "/greentree/" else "greentree/" + filename[i + len(marker):]
    return filename


def _area(filename: str, name: str) -> str:
    if filename == "~":
        if "switch" in name or "greenlet" in name:
            return "greenlet switches"
        if "recv" in name or "send" in name or "socket" in name or "select" in name or "poll" in name:
            return "socket syscalls"
        return "other builtins"
    for key in ("greentree/websocket", "greentree", "benchmarks", "wsproto", "h11", "msgpack", "gevent",
                "greenlet"):
        if key in filename:
            return {"greentree": "greentree core", "greentree/websocket": "greentree.websocket",
                    "benchmarks": "benchmark driver"}.get(key, key)
    return "stdlib"


def run_server(kind: str) -> int:
    """Child process: serve ``kind`` on 127.0.0.1:0 and obey the driver."""
    raise_nofile()
    if kind == "greentree-before":
        before = os.environ["GREENTREE_BENCH_BEFORE"]
        if "greentree" in sys.modules:
            raise BenchError("greentree-before: greentree was imported before the older copy could be put first")
        sys.path.insert(0, before)
    if kind == "flask-sock":
        from gevent import monkey

        monkey.patch_all()  # simple-websocket runs a thread per connection: make them greenlets
    import gevent

    ctl = _ChildControl()
    _count_gc_time()
    server = make_server(kind)
    port = server.start()
    ctl.send("ready", port=port, pid=os.getpid())
    prof = None
    while True:
        msg = ctl.recv()
        if msg is None:
            server.stop()
            return 0
        op = msg["op"]
        if op == "probe":
            if prof is not None:
                prof.disable()  # the probe's gc scans are the benchmark's cost, not the server's
            gc_s = _GC["s"]  # before this probe's own collections
            _settle()
            cpu = time.process_time()  # before this probe's own scans
            ctl.send("probe", rss=_rss(), greenlets=_greenlets(server), stacks=_stacks(), active=server.active,
                     t=time.monotonic(), gc_s=gc_s, gc_s_after=_GC["s"], cpu=cpu, cpu_after=time.process_time())
            if prof is not None:
                prof.enable()
        elif op == "wait_closed":
            deadline = time.monotonic() + float(msg["timeout"])
            baseline = int(msg["greenlets"])
            t_zero = t_base = gc_s = cpu = None
            count = -1
            while time.monotonic() < deadline:
                if server.active == 0:
                    t_zero = time.monotonic()
                    gc_s = _GC["s"]
                    break
                gevent.sleep(0.002)
            if prof is not None:
                prof.disable()
            scans = 0.0  # CPU seconds of this loop's own scans, not the server's
            while t_zero is not None and time.monotonic() < deadline:
                t = time.monotonic()
                c0 = time.process_time()
                count = _greenlets(server)  # a gc scan: no greenlet runs meanwhile, so the count is of time t
                if count <= baseline:
                    t_base = t
                    cpu = c0 - scans
                    break
                scans += time.process_time() - c0
                gevent.sleep(0.005)
            ctl.send("closed", t_zero=t_zero, t_baseline=t_base, greenlets=count, active=server.active, gc_s=gc_s,
                     cpu=cpu)
        elif op == "profile_start":
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
            ctl.send("ok")
        elif op == "profile_stop":
            prof.disable()
            if os.environ.get("GREENTREE_BENCH_PSTATS"):  # for a closer look: python -m pstats FILE
                prof.dump_stats(f"{os.environ['GREENTREE_BENCH_PSTATS']}.{kind}")
            ctl.send("profile", summary=_profile_summary(prof))
            prof = None
        elif op == "stop":
            server.stop()
            stats = server.service.stats.snapshot() if kind.startswith("greentree") else {}
            ctl.send("stopped", stats=stats)
            return 0
        else:
            ctl.send("error", error=f"unknown op {op!r}")


# =====================================================================================
# The clients
# =====================================================================================
class Clients:
    """Child process: hold many client WebSocket connections (wsproto over gevent sockets)."""

    def __init__(self):
        from greentree.websocket import Codec

        self.codec = Codec()
        self.conns: list = []

    def connect(self, port: int, n: int, inflight: int) -> dict:
        import gevent
        from gevent.pool import Pool

        errors: list = []
        opened: list = []

        def one(_i):
            try:
                with gevent.Timeout(60):
                    opened.append(self._open(port))
            except BaseException as e:  # noqa: B036 - gevent.Timeout is a BaseException
                errors.append(repr(e))

        pool = Pool(inflight)
        for i in range(n):
            pool.spawn(one, i)
        pool.join()
        self.conns.extend(opened)
        return {"t_done": time.monotonic(), "ok": len(opened), "failed": len(errors), "errors": errors[:5]}

    def _open(self, port):
        import socket as _socket

        from gevent import socket as gsocket
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, RejectConnection, Request

        s = gsocket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            s.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            ws = WSConnection(ConnectionType.CLIENT)
            s.sendall(ws.send(Request(host=f"127.0.0.1:{port}", target="/")))
            while True:
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("EOF during the handshake")
                ws.receive_data(data)
                for ev in ws.events():
                    if isinstance(ev, AcceptConnection):
                        return s, ws
                    if isinstance(ev, RejectConnection):
                        raise ConnectionError(f"handshake rejected: {ev.status_code}")
        except BaseException:
            s.close()
            raise

    def requests(self, rounds: int, inflight: int) -> dict:
        import gevent
        from gevent.pool import Pool
        from wsproto.events import Message
        from wsproto.frame_protocol import FrameProtocol

        lat: list = []
        errors: list = []
        encode = self.codec.encode
        server_frames = FrameProtocol(client=False, extensions=[])
        perf = time.perf_counter

        def one(i):
            s, ws = self.conns[i]
            try:
                with gevent.Timeout(60):
                    for seq in range(1, rounds + 1):
                        request = ws.send(Message(data=encode("req", [i, seq], id=seq, conversation="bench")))
                        # The exact bytes both servers must answer (an unmasked binary frame holding
                        # the echo reply): comparing bytes checks the reply and keeps the clients cheap.
                        expected = server_frames.send_data(
                            encode("rep", [i, seq], id=seq, conversation="bench"), fin=True)
                        t = perf()
                        s.sendall(request)
                        got = self._recv_exactly(s, len(expected))
                        lat.append(perf() - t)
                        if got != expected:
                            raise ValueError(f"connection {i}, request {seq}: expected {expected!r}, got {got!r}")
            except BaseException as e:  # noqa: B036
                errors.append(repr(e))

        t0 = time.monotonic()
        pool = Pool(inflight)
        for i in range(len(self.conns)):
            pool.spawn(one, i)
        pool.join()
        return {"t_start": t0, "t_done": time.monotonic(), "lat": lat, "failed": len(errors), "errors": errors[:5]}

    @staticmethod
    def _recv_exactly(s, n: int) -> bytes:
        data = s.recv(n)
        while len(data) < n:
            more = s.recv(n - len(data))
            if not more:
                raise ConnectionError(f"EOF after {len(data)} of {n} reply bytes")
            data += more
        return data

    def close(self, inflight: int) -> dict:
        import gevent
        from gevent.pool import Pool
        from wsproto.connection import ConnectionState
        from wsproto.events import CloseConnection

        errors: list = []

        def one(conn):
            s, ws = conn
            try:
                with gevent.Timeout(30):
                    s.sendall(ws.send(CloseConnection(code=1000)))
                    while ws.state is not ConnectionState.CLOSED:
                        data = s.recv(65536)
                        if not data:
                            break
                        ws.receive_data(data)
                        for _ in ws.events():
                            pass
            except BaseException as e:  # noqa: B036
                errors.append(repr(e))
            finally:
                s.close()

        pool = Pool(inflight)
        for conn in self.conns:
            pool.spawn(one, conn)
        pool.join()
        n = len(self.conns)
        self.conns.clear()
        return {"t_done": time.monotonic(), "closed": n, "failed": len(errors), "errors": errors[:5]}


def run_clients() -> int:
    raise_nofile()
    ctl = _ChildControl()
    clients = Clients()
    ctl.send("ready", pid=os.getpid())
    while True:
        msg = ctl.recv()
        if msg is None:
            return 0
        op = msg["op"]
        if op == "connect":
            ctl.send("connected", **clients.connect(int(msg["port"]), int(msg["n"]), int(msg["inflight"])))
        elif op == "requests":
            ctl.send("replied", **clients.requests(int(msg["rounds"]), int(msg["inflight"])))
        elif op == "close":
            ctl.send("closed", **clients.close(int(msg["inflight"])))
        elif op == "quit":
            return 0
        else:
            ctl.send("error", error=f"unknown op {op!r}")


# =====================================================================================
# The driver (plain Python, no gevent)
# =====================================================================================
class Child:
    """A child process of this module, spoken to in msgpack over its stdin / stdout."""

    def __init__(self, *args: str, what: str, first_on_path: str | None = None):
        self.what = what
        path = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
        env = dict(os.environ, PYTHONPATH=path)
        if first_on_path:
            env["GREENTREE_BENCH_BEFORE"] = first_on_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.websocket_conns", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env,
        )
        self._unpacker = _unpacker()

    def send(self, op: str, **fields) -> None:
        try:
            self.proc.stdin.write(msgpack.packb(dict(fields, v=CONTROL_VERSION, op=op), use_bin_type=True))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise BenchError(f"{self.what} (pid {self.proc.pid}) is gone: {e} (exit code {self.proc.poll()})") from None

    def recv(self, expect: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            for msg in self._unpacker:
                msg = _check(msg)
                if msg["op"] != expect:
                    raise BenchError(f"{self.what}: expected {expect!r}, got {str(msg)[:300]}")
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.what}: no {expect!r} within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise BenchError(f"{self.what} (pid {self.proc.pid}) exited with code {self.proc.wait(5)} "
                                     f"before sending {expect!r}")
                self._unpacker.feed(chunk)

    def call(self, op: str, expect: str, wait: float, **fields) -> dict:
        self.send(op, **fields)
        return self.recv(expect, wait)

    def end(self) -> None:
        p = self.proc
        if p.poll() is None:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        else:
            try:
                p.stdin.close()
            except OSError:
                pass
        p.stdout.close()


def _percentile(values: list, p: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def _split(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _all(children, op, expect, timeout, per_child_fields):
    for child, fields in zip(children, per_child_fields, strict=False):
        child.send(op, **fields)
    return [child.recv(expect, timeout) for child in children]


def _client_failures(replies, phase) -> None:
    failed = sum(r["failed"] for r in replies)
    if failed:
        errs = [e for r in replies for e in r["errors"]][:3]
        raise BenchError(f"{failed} client operations failed during {phase}, e.g. {errs}")


def one_run(kind: str, n: int, args, profile: bool = False) -> dict:
    """One server process of ``kind``, ``args.clients`` client processes, N connections: the metrics."""
    server = Child("--role", "server", "--kind", kind, what=f"{kind} server",
                   first_on_path=BEFORE_DIR if kind == "greentree-before" else None)
    clients = []
    try:
        clients = [Child("--role", "client", what=f"client {i}") for i in range(args.clients)]
        port = server.recv("ready", 60)["port"]
        for c in clients:
            c.recv("ready", 60)
        k = len(clients)
        slow = 60 + n / 50.0  # generous deadlines: a 2-core machine may be busy
        inflight = args.inflight

        # warm-up: the same work on a few connections
        w = max(5, n // 100)
        _client_failures(_all(clients, "connect", "connected", slow,
                              [{"port": port, "n": m, "inflight": 64} for m in _split(w, k)]), "warm-up")
        _client_failures(_all(clients, "requests", "replied", slow,
                              [{"rounds": 2, "inflight": inflight}] * k), "warm-up")
        _client_failures(_all(clients, "close", "closed", slow, [{"inflight": 64}] * k), "warm-up")
        # the trees of the warm-up must be gone; then the baseline
        server.send("wait_closed", timeout=30, greenlets=1 << 30)
        server.recv("closed", 60)
        base = server.call("probe", "probe", 120)
        wc = server.call("wait_closed", "closed", 60, timeout=30, greenlets=base["greenlets"])
        if wc["t_baseline"] is None:
            raise BenchError(f"{kind}: greenlets did not settle after the warm-up ({wc})")

        if profile:
            server.call("profile_start", "ok", 30)
        t0 = time.monotonic()
        opened = _all(clients, "connect", "connected", slow,
                      [{"port": port, "n": m, "inflight": 64} for m in _split(n, k)])
        t_open = max(r["t_done"] for r in opened) - t0
        _client_failures(opened, "open")
        idle = server.call("probe", "probe", 120)
        if idle["active"] != n:
            raise BenchError(f"{kind}: the server holds {idle['active']} connections, expected {n}")

        replied = _all(clients, "requests", "replied", slow + n * args.rounds / 200.0,
                       [{"rounds": args.rounds, "inflight": inflight}] * k)
        _client_failures(replied, "requests")
        lat = [x for r in replied for x in r["lat"]]
        t_req = max(r["t_done"] for r in replied) - min(r["t_start"] for r in replied)
        busy = server.call("probe", "probe", 120)

        server.send("wait_closed", timeout=slow, greenlets=base["greenlets"])
        t0 = time.monotonic()
        closed = _all(clients, "close", "closed", slow, [{"inflight": 64}] * k)
        done = server.recv("closed", slow + 30)
        _client_failures(closed, "close")
        if done["t_baseline"] is None:
            raise BenchError(f"{kind}: the server did not return to {base['greenlets']} greenlets: {done}")
        prof = server.call("profile_stop", "profile", 120)["summary"] if profile else None
        stopped = server.call("stop", "stopped", 60)
        return {
            "kind": kind, "n": n,
            "connect_s": t_open,
            "connections_per_s": n / t_open,
            "us_per_connection_open": t_open / n * 1e6,
            "bytes_per_connection": (idle["rss"] - base["rss"]) / n,
            "bytes_per_connection_after_requests": (busy["rss"] - base["rss"]) / n,
            "greenlets_per_connection": (idle["greenlets"] - base["greenlets"]) / n,
            "saved_stack_bytes_per_connection": (idle["stacks"] - base["stacks"]) / n,
            "saved_stack_bytes_per_connection_after_requests": (busy["stacks"] - base["stacks"]) / n,
            "greenlets_per_connection_after_requests": (busy["greenlets"] - base["greenlets"]) / n,
            "latency_p50_ms": statistics.median(lat) * 1e3,
            "latency_p99_ms": _percentile(lat, 99) * 1e3,
            "requests": len(lat),
            "requests_per_s": len(lat) / t_req,
            "teardown_s": done["t_baseline"] - t0,
            "teardown_until_no_connection_s": done["t_zero"] - t0,
            "teardown_clients_done_s": max(r["t_done"] for r in closed) - t0,
            # seconds the server spent in the cyclic GC during each phase (probes' own collections excluded)
            "gc_s_open": idle["gc_s"] - base["gc_s_after"],
            "gc_s_requests": busy["gc_s"] - idle["gc_s_after"],
            "gc_s_teardown": done["gc_s"] - busy["gc_s_after"],
            # the server process's CPU seconds in each phase (user + system; probes' own scans excluded):
            # divided by the phase's wall time, how close the server was to using a whole core
            "cpu_s_open": idle["cpu"] - base["cpu_after"],
            "cpu_s_requests": busy["cpu"] - idle["cpu_after"],
            "cpu_s_teardown": done["cpu"] - busy["cpu_after"],
            "cpu_us_per_connection_open": (idle["cpu"] - base["cpu_after"]) / n * 1e6,
            "cpu_us_per_request": (busy["cpu"] - idle["cpu_after"]) / len(lat) * 1e6,
            "cpu_us_per_connection_teardown": (done["cpu"] - busy["cpu_after"]) / n * 1e6,
            "server_busy_open": (idle["cpu"] - base["cpu_after"]) / t_open,
            "baseline_rss": base["rss"], "baseline_greenlets": base["greenlets"],
            "server_stats": stopped["stats"],
            "profile": prof,
        }
    finally:
        for c in clients:
            try:
                c.send("quit")
            except BenchError:
                pass
            c.end()
        server.end()


#: (key, label, unit, higher is better)
METRICS = [
    ("connections_per_s", "connections per second (open + handshake)", "conn/s", True),
    ("us_per_connection_open", "time to open one connection", "us", False),
    ("bytes_per_connection", "server RSS per connection, idle", "KiB", False),
    ("bytes_per_connection_after_requests", "server RSS per connection, after requests", "KiB", False),
    ("greenlets_per_connection_after_requests", "greenlets per connection", "", False),
    ("saved_stack_bytes_per_connection_after_requests", "saved greenlet stacks per connection", "KiB", False),
    ("latency_p50_ms", "round trip, median", "ms", False),
    ("latency_p99_ms", "round trip, p99", "ms", False),
    ("requests_per_s", "requests per second", "req/s", True),
    ("teardown_s", "teardown (close all, back to baseline greenlets)", "s", False),
]


def summarize(runs: list[dict], n: int) -> list[dict]:
    """Medians per kind of every metric at N, and each kind's ratio to the reference."""
    kinds = [k for k in KINDS if any(r["kind"] == k and r["n"] == n for r in runs)]
    ref = REFERENCE if REFERENCE in kinds else "floor"
    rows = []
    for key, label, unit, higher in METRICS:
        scale = 1 / 1024 if unit == "KiB" else 1.0
        values = {}
        for kind in KINDS:
            vals = [r[key] for r in runs if r["kind"] == kind and r["n"] == n and r.get(key) is not None]
            values[kind] = statistics.median(vals) * scale if vals else None
        base = values.get(ref)
        rows.append({
            "n": n, "metric": key, "label": label, "unit": unit, "higher_is_better": higher, "reference": ref,
            "values": values,
            "ratios": {k: (v / base if v is not None and base else None) for k, v in values.items()},
        })
    return rows


def _fmt(x) -> str:
    return "-" if x is None else (f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}")


def format_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    kinds = [k for k in KINDS if any(r["values"].get(k) is not None for r in rows)]
    ref = rows[0]["reference"]
    ratio_kinds = [k for k in ("greentree", "greentree-before") if k in kinds and k != ref]
    head = ["N", "metric", "unit", *kinds, *[f"{k}/{ref}" for k in ratio_kinds]]
    body = []
    for r in rows:
        body.append([f"{r['n']:,}", r["label"], r["unit"], *[_fmt(r["values"].get(k)) for k in kinds],
                     *["-" if r["ratios"].get(k) is None else f"{r['ratios'][k]:.2f}x" for k in ratio_kinds]])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i in (1, 2) else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=False)))
    out = [line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    return "\n".join(out)


def plot(rows: list[dict], path: str, machine: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    # Cost ratios to the reference: > 1 means costlier (rates are inverted into time per item).
    shown = [("us_per_connection_open", "open\n(time/conn)"), ("bytes_per_connection", "RSS/conn\nidle"),
             ("bytes_per_connection_after_requests", "RSS/conn\nafter req"),
             ("latency_p50_ms", "round trip\np50"), ("latency_p99_ms", "round trip\np99"),
             ("requests_per_s", "time per\nrequest"), ("teardown_s", "teardown")]
    sizes = sorted({r["n"] for r in rows})
    kinds = [k for k in KINDS if k != rows[0]["reference"] and any(r["values"].get(k) is not None for r in rows)]
    have = {(k, r["n"]) for r in rows for k, v in r["values"].items() if v is not None}
    series = [(k, n) for k in kinds for n in sizes if (k, n) in have]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.85 / max(1, len(series))
    for j, (kind, n) in enumerate(series):
        vals = []
        for key, _ in shown:
            r = next((r for r in rows if r["n"] == n and r["metric"] == key), None)
            ratio = None if r is None else r["ratios"].get(kind)
            if ratio and r["higher_is_better"]:
                ratio = 1 / ratio
            vals.append(ratio or 0.0)
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(shown))]
        ax.bar(xs, vals, width, label=f"{kind}, {n:,} connections")
        for x, v in zip(xs, vals, strict=False):
            ax.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=6)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(shown)))
    ax.set_xticklabels([s[1] for s in shown], fontsize=8)
    ax.set_ylabel(f"cost ratio to {rows[0]['reference']}")
    ax.set_title(f"WebSocket servers, same clients: cost relative to {rows[0]['reference']} (1.0)", fontsize=10)
    fig.text(0.5, 0.005, f"greentree {machine['greentree']}, gevent {machine['gevent']}, greenlet "
             f"{machine['greenlet']}, Python {machine['python']}, {machine['cores']} cores, {machine['cpu']}, "
             f"{machine['date'][:10]}", ha="center", fontsize=7)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine_info() -> dict:
    from .__main__ import machine_info as general

    m = general()
    m["loadavg"] = os.getloadavg()
    m["rlimit_nofile"] = raise_nofile()
    return m


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.websocket_conns", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="50 connections, one run per side, writes nothing "
                   "unless --output is given")
    p.add_argument("--connections", type=int, action="append", metavar="N",
                   help="connection count (repeatable; default 1000 and 10000)")
    p.add_argument("--repeat", type=int, default=None, help="runs per side and size (default 3; smoke 1)")
    p.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--rounds", type=int, default=10, help="request/replies per connection (default 10)")
    p.add_argument("--inflight", type=int, default=8,
                   help="connections exchanging requests at once, per client process (default 8)")
    p.add_argument("--profile", type=int, default=None, metavar="N",
                   help="also profile one run per side at N connections (default 1000; 0 = no profile; "
                        "smoke: none)")
    p.add_argument("--output", default=None, help="directory for websocket.json and websocket.png")
    p.add_argument("--kinds", default=None,
                   help="comma-separated servers to run (default gevent-websocket,floor,greentree,flask-sock; "
                        "smoke: floor,greentree)")
    p.add_argument("--before", default=None, metavar="REV",
                   help="also run greentree as it was at git revision REV (greentree-before)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    # internal: the child processes
    p.add_argument("--role", choices=("driver", "server", "client"), default="driver", help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=KINDS_ALL, default="greentree", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.role == "server":
        return run_server(args.kind)
    if args.role == "client":
        return run_clients()
    sizes = args.connections or (SMOKE_SIZES if args.smoke else SIZES)
    if any(n < 2 for n in sizes) or args.clients < 1 or args.rounds < 1 or args.inflight < 1:
        print("--connections must be >= 2; --clients, --rounds and --inflight >= 1", file=sys.stderr)
        return 2
    repeat = args.repeat if args.repeat is not None else (1 if args.smoke else 3)
    if repeat < 1:
        print("--repeat must be >= 1", file=sys.stderr)
        return 2
    profile_n = args.profile if args.profile is not None else (0 if args.smoke else 1000)
    nofile = raise_nofile()
    need = max(sizes) // args.clients + 200
    if nofile < max(sizes) + 200:
        print(f"RLIMIT_NOFILE hard limit {nofile} is too low for {max(sizes)} connections in the server "
              f"process (each client process needs about {need})", file=sys.stderr)
        return 2
    log = (lambda msg: None) if args.quiet else (lambda msg: print(f"  .. {msg}", file=sys.stderr, flush=True))
    global BEFORE_DIR
    if args.kinds:
        chosen = [k.strip() for k in args.kinds.split(",") if k.strip()]
    else:
        chosen = ["floor", "greentree"] if args.smoke else list(KINDS)
    bad = [k for k in chosen if k not in KINDS_ALL]
    if bad:
        print(f"--kinds: unknown {bad}; choose from {', '.join(KINDS_ALL)}", file=sys.stderr)
        return 2
    if args.before:
        BEFORE_DIR = _extract_before(args.before)
        if "greentree-before" not in chosen:
            chosen.insert(chosen.index("greentree") if "greentree" in chosen else len(chosen), "greentree-before")
    KINDS[:] = chosen
    machine = machine_info()
    print(f"greentree {machine['greentree']}, gevent {machine['gevent']}, greenlet {machine['greenlet']}, "
          f"Python {machine['python']} on {machine['cpu']} ({machine['cores']} cores), {machine['date']}")
    runs: list[dict] = []
    t_start = time.monotonic()
    try:
        for n in sizes:
            for i in range(repeat):
                for kind in KINDS:
                    t = time.monotonic()
                    try:
                        r = one_run(kind, n, args)
                    except BenchError as e:
                        if kind == "greentree":
                            raise
                        log(f"N={n:,} run {i + 1}/{repeat} {kind}: FAILED: {e}")
                        runs.append({"kind": kind, "n": n, "failed": str(e)})
                        continue
                    runs.append(r)
                    log(f"N={n:,} run {i + 1}/{repeat} {kind:9}: {r['connections_per_s']:,.0f} conn/s, "
                        f"{r['bytes_per_connection'] / 1024:.1f} KiB/conn, p50 {r['latency_p50_ms']:.2f} ms, "
                        f"p99 {r['latency_p99_ms']:.2f} ms, teardown {r['teardown_s']:.2f} s; server CPU "
                        f"{r['cpu_us_per_connection_open']:.0f} us/open ({r['server_busy_open']:.0%} busy), "
                        f"{r['cpu_us_per_request']:.0f} us/request, {r['cpu_us_per_connection_teardown']:.0f} "
                        f"us/close ({time.monotonic() - t:.0f} s)")
        profiles = {}
        if profile_n:
            for kind in [k for k in KINDS if k.startswith("greentree") or k == "floor"]:
                log(f"profiling the {kind} server at {profile_n:,} connections")
                profiles[kind] = one_run(kind, profile_n, args, profile=True)["profile"]
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    rows = [row for n in sizes for row in summarize(runs, n)]
    print()
    print(format_table(rows))
    overhead = {}
    for n in sizes:
        get = {(r["metric"]): r for r in rows if r["n"] == n}
        f, g = get["bytes_per_connection"]["values"], get["bytes_per_connection_after_requests"]["values"]
        if f.get("floor") is None or f.get("greentree") is None:
            continue
        overhead[n] = {
            "tree_kib_idle": f["greentree"] - f["floor"],
            "tree_kib_after_requests": g["greentree"] - g["floor"],
        }
        print(f"\nN={n:,}: supervision adds {overhead[n]['tree_kib_idle']:.1f} KiB per connection idle "
              f"({f['greentree']:.1f} vs {f['floor']:.1f} KiB), {overhead[n]['tree_kib_after_requests']:.1f} KiB "
              f"with a conversation sender ({g['greentree']:.1f} vs {g['floor']:.1f} KiB)")
    for kind, prof in profiles.items():
        print(f"\n{kind} server at {profile_n:,} connections, cProfile, top functions by own time "
              f"(total {prof['total_s']:.2f} s):")
        for t in prof["top"][:12]:
            print(f"  {t['share'] * 100:5.1f}%  {t['calls']:>9,}  {t['function']}")
        areas = ", ".join(f"{k} {v['share'] * 100:.0f}%" for k, v in list(prof["by_area"].items())[:7])
        print(f"  by area: {areas}")
    machine["loadavg_after"] = os.getloadavg()
    doc = {
        "version": 1,
        "benchmark": "websocket_conns",
        "machine": machine,
        "config": {"sizes": sizes, "kinds": list(KINDS), "before": args.before,
                   "repeat": repeat, "clients": args.clients, "rounds": args.rounds,
                   "inflight_per_client": args.inflight, "smoke": args.smoke, "profile_connections": profile_n,
                   "wall_s": time.monotonic() - t_start},
        "rows": rows,
        "supervision_overhead_kib_per_connection": {str(n): v for n, v in overhead.items()},
        "runs": [{k: v for k, v in r.items() if k != "profile"} for r in runs],
        "profile": profiles,
    }
    out_dir = args.output or (None if args.smoke else RESULTS)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        tmp = os.path.join(out_dir, "websocket.json.tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, os.path.join(out_dir, "websocket.json"))
        drew = plot(rows, os.path.join(out_dir, "websocket.png"), machine)
        print(f"\nwrote {out_dir}/websocket.json" + (" and websocket.png" if drew else " (no matplotlib: no PNG)"))
    return 0


def _extract_before(rev: str) -> str:
    """Extract ``greentree/`` as it was at git revision ``rev`` into a temporary directory."""
    import tarfile
    import tempfile

    out = tempfile.mkdtemp(prefix="greentree-before-")
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "greentree"], cwd=ROOT,
                             stdout=subprocess.PIPE, check=True).stdout
    import io

    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(out, filter="data")
    return out


if __name__ == "__main__":
    sys.exit(main())
