"""A small etcd v3 client over etcd's HTTP/JSON gateway, on gevent's own sockets.

Why not a library: the gRPC client (``etcd3``) does not import with current
protobuf and grpc under gevent is experimental; HTTP libraries either block
the hub unless the process is monkey patched (``requests``, ``etcd3gw``) or
add dependencies (``geventhttpclient`` pulls urllib3, certifi and brotli)
for what is here a handful of POSTs of small JSON bodies plus one streamed
response.  ``gevent.socket`` is always cooperative, patched or not, so this
client never blocks the hub; every request runs under one deadline, and a
request that misses it closes its connection and raises
:class:`EtcdUnavailable`.  See docs/design.rst.

Keys and values are bytes; the gateway wants them base64-encoded.
"""

from __future__ import annotations

import base64
import json
import socket as _stdsocket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import gevent
from gevent import socket

__all__ = ["EtcdClient", "EtcdError", "EtcdUnavailable", "parse_url", "prefix_end", "KV"]


class EtcdError(Exception):
    """etcd answered with an error."""


class EtcdUnavailable(EtcdError):
    """No etcd endpoint answered in time (down, unreachable, or no leader)."""


def parse_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """``etcd://host:port[,host:port...][/prefix]`` -> (endpoints, key prefix).

    >>> parse_url("etcd://127.0.0.1:2379,127.0.0.1:2479/app")
    ([('127.0.0.1', 2379), ('127.0.0.1', 2479)], 'app')
    >>> parse_url("http://localhost:2379")
    ([('localhost', 2379)], 'greentree')
    """
    if not isinstance(url, str):
        raise ValueError(f"etcd url must be a str like 'etcd://127.0.0.1:2379', not {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("etcd", "http"):
        raise ValueError(f"etcd url {url!r}: scheme must be etcd:// or http://")
    endpoints = []
    for hp in parts.netloc.split(","):
        host, _, port = hp.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"etcd url {url!r}: {hp!r} is not host:port")
        endpoints.append((host, int(port)))
    prefix = parts.path.strip("/") or "greentree"
    return endpoints, prefix


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix``.

    >>> prefix_end(b"a/")
    b'a0'
    """
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


class KV:
    """One key-value as etcd returns it."""

    __slots__ = ("key", "value", "create_revision", "mod_revision", "lease")

    def __init__(self, d: dict):
        self.key = base64.b64decode(d.get("key", ""))
        self.value = base64.b64decode(d.get("value", ""))
        self.create_revision = int(d.get("create_revision", 0))
        self.mod_revision = int(d.get("mod_revision", 0))
        self.lease = int(d.get("lease", 0))

    def __repr__(self) -> str:
        return f"KV({self.key!r}, create_revision={self.create_revision})"


class _Conn:
    """One HTTP/1.1 keep-alive connection."""

    def __init__(self, endpoint: tuple[str, int], timeout: float):
        self.endpoint = endpoint
        self.sock = socket.create_connection(endpoint, timeout=timeout)
        self.sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError(f"etcd at {self.endpoint[0]}:{self.endpoint[1]} closed the connection")
        self.buf += data

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if len(self.buf) > 65536:
                raise ConnectionError("etcd sent an overlong header line")
            self._fill()

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def send_request(self, path: str, body: bytes) -> None:
        host, port = self.endpoint
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("ascii")
        self.sock.sendall(head + body)

    def read_head(self) -> tuple[int, dict]:
        status_line = self._line()
        try:
            status = int(status_line.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise ConnectionError(f"etcd sent a bad status line {status_line[:80]!r}") from None
        headers: dict[str, str] = {}
        while True:
            line = self._line()
            if not line:
                return status, headers
            k, _, v = line.partition(b":")
            headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")

    def chunks(self, headers: dict) -> Iterator[bytes]:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    self._line()
                    return
                yield self._exact(size)
                self._line()
        else:
            yield self._exact(int(headers.get("content-length", "0")))


class EtcdClient:
    """A cooperative etcd v3 client for ``endpoints`` [(host, port), ...].

    Every call raises :class:`EtcdUnavailable` after ``timeout`` seconds
    without an answer (trying the next endpoint on a connection failure).
    """

    def __init__(self, endpoints: list[tuple[str, int]], timeout: float = 2.0):
        if not endpoints:
            raise ValueError("EtcdClient: at least one endpoint is needed")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._current = 0
        self._idle: list[_Conn] = []

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    # ------------------------------------------------------------ transport
    def _connect(self, timeout: float) -> _Conn:
        n = len(self.endpoints)
        last: Exception | None = None
        for i in range(n):
            ep = self.endpoints[(self._current + i) % n]
            try:
                conn = _Conn(ep, timeout)
            except OSError as e:
                last = e
                continue
            self._current = (self._current + i) % n
            return conn
        raise EtcdUnavailable(f"no etcd endpoint of {self.endpoints} accepts connections: {last}")

    def request(self, path: str, payload: dict, timeout: float | None = None) -> dict:
        """POST ``payload`` as JSON to the gateway's ``path``; the decoded answer."""
        timeout = self.timeout if timeout is None else timeout
        body = json.dumps(payload).encode()
        conn = None
        try:
            with gevent.Timeout(timeout):
                conn = self._idle.pop() if self._idle else self._connect(timeout)
                try:
                    conn.send_request(path, body)
                    status, headers = conn.read_head()
                except (OSError, ConnectionError):
                    # A pooled connection may have been closed by etcd meanwhile: one fresh try.
                    conn.close()
                    conn = self._connect(timeout)
                    conn.send_request(path, body)
                    status, headers = conn.read_head()
                data = b"".join(conn.chunks(headers))
        except gevent.Timeout:
            if conn is not None:
                conn.close()
            self._current += 1  # try the next endpoint next time
            raise EtcdUnavailable(f"etcd {path}: no answer within {timeout} s from {self.endpoints}") from None
        except (OSError, ConnectionError) as e:
            if conn is not None:
                conn.close()
            self._current += 1
            raise EtcdUnavailable(f"etcd {path}: {type(e).__name__}: {e}") from None
        self._idle.append(conn)
        try:
            answer = json.loads(data or b"{}")
        except ValueError:
            raise EtcdError(f"etcd {path}: undecodable answer {data[:200]!r}") from None
        if status != 200:
            msg = answer.get("error") or answer.get("message") or repr(data[:200])
            code = answer.get("code")
            if code in (4, 14) or status in (502, 503, 504):  # deadline exceeded / unavailable
                raise EtcdUnavailable(f"etcd {path}: {msg}")
            raise EtcdError(f"etcd {path}: HTTP {status}: {msg}")
        return answer

    # ------------------------------------------------------------ kv
    def range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, list[KV]]:
        """(revision, kvs) for ``key`` or the range [key, range_end)."""
        req: dict[str, Any] = {"key": _b64(key)}
        if range_end is not None:
            req["range_end"] = _b64(range_end)
        ans = self.request("/v3/kv/range", req)
        return int(ans["header"]["revision"]), [KV(d) for d in ans.get("kvs", [])]

    def create(self, key: bytes, value: bytes, lease: int = 0) -> tuple[bool, int, KV | None]:
        """Put ``key`` only if it does not exist: (created, revision, existing kv).

        On success the revision is the new key's create revision.
        """
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        ans = self.request("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": put}],
            "failure": [{"request_range": {"key": _b64(key)}}],
        })
        rev = int(ans["header"]["revision"])
        if ans.get("succeeded"):
            return True, rev, None
        kvs = ans["responses"][0]["response_range"].get("kvs", [])
        return False, rev, KV(kvs[0]) if kvs else None

    def put_if(self, key: bytes, value: bytes, create_revision: int, lease: int = 0) -> bool:
        """Overwrite ``key`` only if it is still the one created at ``create_revision``."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        ans = self.request("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "CREATE", "create_revision": str(create_revision)}],
            "success": [{"request_put": put}],
        })
        return bool(ans.get("succeeded"))

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Put ``key`` unconditionally (attached to ``lease`` if given); the new revision."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        return int(self.request("/v3/kv/put", put)["header"]["revision"])

    def delete(self, key: bytes) -> int:
        """Delete ``key`` if it exists; the revision after."""
        return int(self.request("/v3/kv/deleterange", {"key": _b64(key)})["header"]["revision"])

    def delete_if(self, key: bytes, create_revision: int) -> bool:
        """Delete ``key`` only if it is still the one created at ``create_revision``."""
        ans = self.request("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "CREATE", "create_revision": str(create_revision)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
        })
        return bool(ans.get("succeeded"))

    # ------------------------------------------------------------ leases
    def lease_grant(self, ttl: float) -> tuple[int, int]:
        """A new lease: (id, granted ttl in whole seconds)."""
        ans = self.request("/v3/lease/grant", {"TTL": max(1, int(round(ttl)))})
        if ans.get("error"):
            raise EtcdError(f"etcd lease grant: {ans['error']}")
        return int(ans["ID"]), int(ans["TTL"])

    def lease_keepalive(self, lease: int, timeout: float | None = None) -> int:
        """Refresh ``lease``; its new ttl, 0 if the lease no longer exists."""
        ans = self.request("/v3/lease/keepalive", {"ID": str(lease)}, timeout=timeout)
        return int(ans.get("result", {}).get("TTL", 0))

    def lease_revoke(self, lease: int, timeout: float | None = None) -> None:
        """Revoke ``lease`` (its keys vanish); a lease already gone is not an error."""
        try:
            self.request("/v3/lease/revoke", {"ID": str(lease)}, timeout=timeout)
        except EtcdUnavailable:
            raise
        except EtcdError as e:
            if "not found" not in str(e):
                raise

    # ------------------------------------------------------------ watch
    def watch(self, key: bytes, range_end: bytes, start_revision: int) -> Watch:
        """Stream the changes of [key, range_end) from ``start_revision`` on."""
        return Watch(self, key, range_end, start_revision)


class Watch:
    """A streamed watch: iterate for lists of (type, KV) events; ``close()`` ends it.

    Raises :class:`EtcdUnavailable` when the stream breaks, and
    :class:`EtcdError` if etcd cancels it (compacted revision).
    """

    def __init__(self, client: EtcdClient, key: bytes, range_end: bytes, start_revision: int):
        self._client = client
        self._req = {"create_request": {
            "key": _b64(key), "range_end": _b64(range_end), "start_revision": str(start_revision),
        }}
        self._conn: _Conn | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __iter__(self) -> Iterator[list[tuple[str, KV]]]:
        client = self._client
        try:
            with gevent.Timeout(client.timeout):
                conn = self._conn = client._connect(client.timeout)
                conn.send_request("/v3/watch", json.dumps(self._req).encode())
                status, headers = conn.read_head()
            conn.sock.settimeout(None)
            if status != 200:
                raise EtcdError(f"etcd watch: HTTP {status}")
            pending = b""
            for chunk in conn.chunks(headers):
                pending += chunk
                while b"\n" in pending:
                    line, _, pending = pending.partition(b"\n")
                    if line.strip():
                        yield self._events(json.loads(line))
                if pending.strip():
                    try:
                        msg = json.loads(pending)
                    except ValueError:
                        continue  # a message split across chunks
                    pending = b""
                    yield self._events(msg)
            raise EtcdUnavailable("etcd closed the watch stream")
        except gevent.Timeout:
            raise EtcdUnavailable(f"etcd watch: no answer within {client.timeout} s") from None
        except (OSError, ConnectionError, ValueError) as e:
            raise EtcdUnavailable(f"etcd watch broke: {type(e).__name__}: {e}") from None
        finally:
            self.close()

    @staticmethod
    def _events(msg: dict) -> list[tuple[str, KV]]:
        if "error" in msg:
            raise EtcdUnavailable(f"etcd watch: {msg['error']}")
        res = msg.get("result", {})
        if res.get("canceled") or res.get("compact_revision"):
            raise EtcdError(f"etcd cancelled the watch: {res.get('cancel_reason') or 'compacted'}")
        return [(ev.get("type", "PUT"), KV(ev.get("kv", {}))) for ev in res.get("events", [])]
