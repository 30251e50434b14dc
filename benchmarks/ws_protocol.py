"""wsproto vs the ``websockets`` package's sans-I/O protocol objects: handshake and frame cost.

Run it (a few seconds; prints a table, writes ``benchmarks/results/ws_protocol.json``)::

    python -m benchmarks.ws_protocol            # full
    python -m benchmarks.ws_protocol --smoke    # a fraction of a second, writes nothing

Both libraries run server side, in this process, fed the same bytes:

* **handshake**: parse one client upgrade request and produce the ``101``
  response bytes (a new protocol object each time);
* **receive**: parse N masked client frames of 32 payload bytes (one
  ``receive_data`` call per 64 frames, as a socket read would deliver them)
  and collect the messages;
* **send**: encode N unmasked server frames of 32 bytes.

The figures are microseconds per operation (best of ``--repeat``), and the
ratio websockets / wsproto (below 1: websockets is cheaper).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
REQUEST = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
PAYLOAD = b"x" * 32


def client_frames(n: int) -> bytes:
    """n masked binary frames of 32 bytes, as a browser would send them."""
    from wsproto.frame_protocol import FrameProtocol, Opcode

    out = bytearray()
    for _ in range(n):
        proto = FrameProtocol(client=True, extensions=[])
        out += proto._serialize_frame(Opcode.BINARY, PAYLOAD)
    return bytes(out)


def wsproto_handshake() -> bytes:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection

    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(REQUEST)
    next(ws.events())
    return ws.send(AcceptConnection(extensions=[]))


def websockets_handshake() -> bytes:
    from websockets.server import ServerProtocol

    p = ServerProtocol()
    p.receive_data(REQUEST)
    req = p.events_received()[0]
    p.send_response(p.accept(req))
    return b"".join(p.data_to_send())


def wsproto_open():
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection

    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(REQUEST)
    next(ws.events())
    ws.send(AcceptConnection(extensions=[]))
    return ws


def websockets_open():
    from websockets.server import ServerProtocol

    p = ServerProtocol()
    p.receive_data(REQUEST)
    req = p.events_received()[0]
    p.send_response(p.accept(req))
    p.data_to_send()
    return p


def wsproto_receive(ws, chunks) -> int:
    n = 0
    for chunk in chunks:
        ws.receive_data(chunk)
        for _ev in ws.events():
            n += 1
    return n


def websockets_receive(p, chunks) -> int:
    n = 0
    for chunk in chunks:
        p.receive_data(chunk)
        n += len(p.events_received())
    return n


def wsproto_send(ws, n: int) -> int:
    from wsproto.events import BytesMessage

    size = 0
    for _ in range(n):
        size += len(ws.send(BytesMessage(data=PAYLOAD)))
    return size


def websockets_send(p, n: int) -> int:
    size = 0
    for _ in range(n):
        p.send_binary(PAYLOAD)
        for d in p.data_to_send():
            size += len(d)
    return size


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(n_handshakes: int, n_frames: int, repeat: int) -> dict:
    frames = client_frames(n_frames)
    step = len(frames) // n_frames * 64
    chunks = [frames[i:i + step] for i in range(0, len(frames), step)]
    rows = {}
    for name, hs, opener, recv, send in (
        ("wsproto", wsproto_handshake, wsproto_open, wsproto_receive, wsproto_send),
        ("websockets", websockets_handshake, websockets_open, websockets_receive, websockets_send),
    ):
        assert hs().startswith(b"HTTP/1.1 101"), name
        t_hs = best(lambda hs=hs: [hs() for _ in range(n_handshakes)], repeat) / n_handshakes
        got: list = []
        t_rx = best(lambda opener=opener, recv=recv, got=got: got.append(recv(opener(), chunks)), repeat) / n_frames
        assert got[-1] == n_frames, (name, got[-1])
        t_tx = best(lambda opener=opener, send=send: send(opener(), n_frames), repeat) / n_frames
        rows[name] = {"handshake_us": t_hs * 1e6, "receive_us": t_rx * 1e6, "send_us": t_tx * 1e6}
    rows["ratio"] = {k: rows["websockets"][k] / rows["wsproto"][k] for k in rows["wsproto"]}
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    n_hs, n_frames = (50, 640) if args.smoke else (2000, 64000)
    rows = measure(n_hs, n_frames, 1 if args.smoke else args.repeat)
    import websockets
    import wsproto

    print(f"us per operation (best of {args.repeat}); wsproto {wsproto.__version__}, "
          f"websockets {websockets.__version__}, Python {sys.version.split()[0]}")
    print(f"{'':12}{'handshake':>12}{'receive':>12}{'send':>12}")
    for name in ("wsproto", "websockets", "ratio"):
        r = rows[name]
        fmt = "{:>12.3f}" if name == "ratio" else "{:>12.2f}"
        print(f"{name:12}" + "".join(fmt.format(r[k]) for k in ("handshake_us", "receive_us", "send_us")))
    if not args.smoke:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "ws_protocol.json"), "w") as f:
            json.dump({"rows": rows, "wsproto": wsproto.__version__, "websockets": websockets.__version__}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
