"""The Redis backend of :class:`greentree.Cluster` (``redis://`` URLs), on redis-py.

Layout.  Everything of one cluster lives under the hash tag ``{prefix}``:

* ``{p}:v`` and ``{p}:m``: two hashes, key -> value and key ->
  ``"create-rev|mod-rev|lease"``: the key space of the cluster;
* ``{p}:log``: a stream with one entry per change, its id the change's
  revision (``<epoch>-<counter>``), trimmed with ``MAXLEN ~``: the watch;
* ``{p}:lease:<id>``: one key per lease with a TTL the node refreshes
  (``PEXPIRE``); ``{p}:lk:<id>`` the keys bound to it; ``{p}:leases`` the
  lease ids;
* ``{p}:meta``: the epoch, the counter, the ``run_id`` of the server that
  started the epoch, the longest lease ttl and the quarantine's end.

Every operation is one Lua script, so it is atomic and replicated as one
unit.  Each script first checks that it runs on a primary, then compares the
server's ``run_id`` with the one in ``{p}:meta``: a different one means the
data came from another server (a replica promoted after a failover) or was
lost (a restart): the script starts a new *epoch* (at least the server's
clock in ms, above every epoch seen in the data and by the calling client),
voids every lease (their keys are deleted, with log entries, so every old
owner is fenced at its next refresh) and refuses lease-bound creates for one
lease ttl (the quarantine: an old owner that cannot reach the new primary
stops at its own deadline before anyone can claim its names).  Then the
script deletes the keys of expired leases (the reaper: Redis expires the
lease key, the next script of any node removes what was bound to it and logs
the deletions), then does its work.

Revisions are ``epoch << 20 | counter``: tokens grow within an epoch and
jump up with a new one, so a token is never given twice, even after a
failover lost the last writes.

The watch reads the log with ``XREAD BLOCK`` from the listing's revision.
When the next entry is not the next revision (the log was trimmed past the
cursor) or comes from another epoch (a failover: this server may lack what
the watcher saw), the watch raises :class:`StoreError` and the cluster lists
afresh.

redis-py's sockets are the standard library's: unless the process is
monkey-patched, every call runs in a small thread pool of this store, so
the gevent hub never waits on Redis.  redis-py's retries are off (a retry
loop hid a partition for 36 s in an earlier experiment): one attempt, a
socket timeout below a third of the lease, and a failure rotates to the next
endpoint of the URL.

>>> parse_redis_url("redis://127.0.0.1:6379,127.0.0.1:6380/2/app")
([('127.0.0.1', 6379), ('127.0.0.1', 6380)], 2, 'app')
>>> parse_redis_url("redis://localhost:6379")
([('localhost', 6379)], 0, 'greentree')
>>> split_rev(join_rev(1_796_225_697_941, 3))
(1796225697941, 3)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import gevent
from gevent.threadpool import ThreadPool

from ._cluster_store import KV, Store, StoreError, StoreUnavailable, Watch, parse_endpoints

__all__ = ["RedisStore", "parse_redis_url", "join_rev", "split_rev"]

T = TypeVar("T")
_CTR_BITS = 20
_CTR_MASK = (1 << _CTR_BITS) - 1


def parse_redis_url(url: str) -> tuple[list[tuple[str, int]], int, str]:
    """``redis://host:port[,host:port...][/db[/prefix]]`` -> (endpoints, db, key prefix)."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"redis url {url!r}: scheme must be redis://")
    endpoints = parse_endpoints(url, parts.netloc)
    path = [p for p in parts.path.split("/") if p]
    if path and not path[0].isdigit():
        raise ValueError(f"redis url {url!r}: the path is /db[/prefix], db a number, not {path[0]!r}")
    db = int(path[0]) if path else 0
    prefix = "/".join(path[1:]) or "greentree"
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"redis url {url!r}: the prefix may not contain braces")
    return endpoints, db, prefix


def join_rev(epoch: int, counter: int) -> int:
    """The int revision of ``<epoch>-<counter>``."""
    return (epoch << _CTR_BITS) | counter


def split_rev(rev: int) -> tuple[int, int]:
    """(epoch, counter) of an int revision."""
    return rev >> _CTR_BITS, rev & _CTR_MASK


def _rev(s: bytes | str) -> int:
    e, _, c = (s.decode() if isinstance(s, bytes) else s).partition("-")
    return join_rev(int(e), int(c))


# KEYS[1] = "{prefix}"; ARGV[1] = the highest epoch this client has seen;
# ARGV[2] = the client's lease ttl in ms (the quarantine if the data holds none);
# ARGV[3] = the log's MAXLEN; ARGV[4...] = the operation's own.
_PRELUDE = r"""
local B = KEYS[1]
local META, V, M, LOG, LEASES = B..':meta', B..':v', B..':m', B..':log', B..':leases'
if not string.find(redis.call('INFO', 'replication'), 'role:master', 1, true) then
  return redis.error_reply('NOTPRIMARY this Redis is a replica')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local runid = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local meta = redis.call('HMGET', META, 'epoch', 'ctr', 'runid', 'maxttl', 'quiet')
local epoch = tonumber(meta[1]) or 0
local ctr = tonumber(meta[2]) or 0
local maxttl = tonumber(meta[4]) or 0
local quiet = tonumber(meta[5]) or 0
local seen = tonumber(ARGV[1])
local logmax = ARGV[3]

local function revstr() return string.format('%d-%d', epoch, ctr) end

local function logev(typ, key, val, crev, lease)
  ctr = ctr + 1
  if ctr > 1000000 then epoch = math.max(now, epoch + 1); ctr = 1 end
  local rev = revstr()
  redis.call('HSET', META, 'epoch', string.format('%d', epoch), 'ctr', ctr)
  redis.call('XADD', LOG, 'MAXLEN', '~', logmax, rev, 't', typ, 'k', key, 'v', val, 'c', crev or rev, 'l', lease)
  return rev
end

local function parse(m)
  return string.match(m, '^([^|]*)|([^|]*)|(.*)$')
end

local function droplease(id)
  local lk = B..':lk:'..id
  for _, k in ipairs(redis.call('SMEMBERS', lk)) do
    local m = redis.call('HGET', M, k)
    if m then
      local c, _, l = parse(m)
      if l == id then
        redis.call('HDEL', V, k)
        redis.call('HDEL', M, k)
        logev('DELETE', k, '', c, id)
      end
    end
  end
  redis.call('DEL', lk, B..':lease:'..id)
  redis.call('SREM', LEASES, id)
end

if meta[3] ~= runid then
  -- Another server's data (failover) or lost data: a new epoch, every lease void.
  local fresh = (meta[3] == false) and (seen == 0) and (redis.call('EXISTS', LOG) == 0)
  local last = redis.call('XREVRANGE', LOG, '+', '-', 'COUNT', 1)
  local lastep = 0
  if last[1] then lastep = tonumber(string.match(last[1][1], '^(%d+)')) end
  epoch = math.max(now, epoch + 1, seen + 1, lastep + 1)
  ctr = 0
  redis.call('HSET', META, 'runid', runid, 'epoch', string.format('%d', epoch), 'ctr', 0)
  for _, id in ipairs(redis.call('SMEMBERS', LEASES)) do droplease(id) end
  if not fresh then
    quiet = now + math.max(maxttl, tonumber(ARGV[2]))
    redis.call('HSET', META, 'quiet', string.format('%d', quiet))
  end
end

for _, id in ipairs(redis.call('SMEMBERS', LEASES)) do
  if redis.call('EXISTS', B..':lease:'..id) == 0 then droplease(id) end
end
"""

_OPS = {
    "range": r"""
local key = ARGV[4]
if ARGV[5] == '' then
  local m = redis.call('HGET', M, key)
  if not m then return {revstr()} end
  return {revstr(), key, redis.call('HGET', V, key), m}
end
local out = {revstr()}
local ms = redis.call('HGETALL', M)
for i = 1, #ms, 2 do
  local k = ms[i]
  if k >= key and k < ARGV[5] then
    out[#out + 1] = k
    out[#out + 1] = redis.call('HGET', V, k)
    out[#out + 1] = ms[i + 1]
  end
end
return out
""",
    "create": r"""
local key, value, lease = ARGV[4], ARGV[5], ARGV[6]
if lease ~= '0' then
  if now < quiet then return {'quiet', tostring(quiet - now), revstr()} end
  if redis.call('EXISTS', B..':lease:'..lease) == 0 then return {'nolease', '', revstr()} end
end
local m = redis.call('HGET', M, key)
if m then return {'exists', redis.call('HGET', V, key), revstr(), m} end
local rev = logev('PUT', key, value, nil, lease)
redis.call('HSET', V, key, value)
redis.call('HSET', M, key, rev..'|'..rev..'|'..lease)
if lease ~= '0' then redis.call('SADD', B..':lk:'..lease, key) end
return {'ok', '', rev}
""",
    "put_if": r"""
local key, value, crev, lease = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local m = redis.call('HGET', M, key)
if not m then return 0 end
local c, _, l = parse(m)
if c ~= crev then return 0 end
if lease ~= '0' and redis.call('EXISTS', B..':lease:'..lease) == 0 then return 0 end
local rev = logev('PUT', key, value, c, lease)
redis.call('HSET', V, key, value)
redis.call('HSET', M, key, c..'|'..rev..'|'..lease)
if l ~= lease then
  if l ~= '0' then redis.call('SREM', B..':lk:'..l, key) end
  if lease ~= '0' then redis.call('SADD', B..':lk:'..lease, key) end
end
return 1
""",
    "put": r"""
local key, value, lease = ARGV[4], ARGV[5], ARGV[6]
if lease ~= '0' and redis.call('EXISTS', B..':lease:'..lease) == 0 then return {'nolease'} end
local m = redis.call('HGET', M, key)
local c, l = nil, '0'
if m then
  local c0, _, l0 = parse(m)
  c, l = c0, l0
end
local rev = logev('PUT', key, value, c, lease)
c = c or rev
redis.call('HSET', V, key, value)
redis.call('HSET', M, key, c..'|'..rev..'|'..lease)
if l ~= lease then
  if l ~= '0' then redis.call('SREM', B..':lk:'..l, key) end
  if lease ~= '0' then redis.call('SADD', B..':lk:'..lease, key) end
end
return {'ok', rev}
""",
    "delete_if": r"""
local key, crev = ARGV[4], ARGV[5]
local m = redis.call('HGET', M, key)
if not m then return {0, revstr()} end
local c, _, l = parse(m)
if crev ~= '' and c ~= crev then return {0, revstr()} end
redis.call('HDEL', V, key)
redis.call('HDEL', M, key)
if l ~= '0' then redis.call('SREM', B..':lk:'..l, key) end
return {1, logev('DELETE', key, '', c, l)}
""",
    "grant": r"""
local id, ttl = ARGV[4], tonumber(ARGV[5])
redis.call('SET', B..':lease:'..id, '1', 'PX', ttl)
redis.call('SADD', LEASES, id)
if ttl > maxttl then redis.call('HSET', META, 'maxttl', ttl) end
return ttl
""",
    "keepalive": r"""
local id, ttl = ARGV[4], tonumber(ARGV[5])
if redis.call('PEXPIRE', B..':lease:'..id, ttl) == 1 then return ttl end
droplease(id)
return 0
""",
    "revoke": r"""
droplease(ARGV[4])
return 1
""",
}


_INBOX_SEND = r"""
local B, maxlen = KEYS[1], ARGV[1]
for i = 2, #ARGV, 2 do
  local n = redis.call('HINCRBY', B..':inseq', ARGV[i], 1)
  redis.call('XADD', B..':inbox:'..ARGV[i], 'MAXLEN', '~', maxlen, '*', 'n', n, 'p', ARGV[i + 1])
end
return 1
"""


def _patched() -> bool:
    from gevent import monkey

    return bool(monkey.is_module_patched("socket"))


class RedisStore(Store):
    """A :class:`Store` on Redis ``endpoints`` [(host, port), ...] (the first
    that is a primary answers), database ``db``, keys under ``{prefix}``.

    ``timeout`` is redis-py's socket timeout (default ttl/4, at most 2 s);
    ``log_max`` bounds the change log and ``inbox_max`` each node's inbox
    (``XADD MAXLEN ~``: Redis trims whole stream nodes, so a little more stays).
    """

    kind = "redis"
    bounded_overlap = True
    inbox = True

    def __init__(self, endpoints: list[tuple[str, int]], *, db: int = 0, prefix: str = "greentree",
                 ttl: float = 5.0, timeout: float | None = None, log_max: int = 10_000, inbox_max: int = 10_000,
                 threads: int = 6):
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ValueError("redis:// clusters need redis-py: pip install 'greentree-otp[redis]'") from None
        if not endpoints:
            raise ValueError("RedisStore: at least one endpoint is needed")
        self.endpoints = list(endpoints)
        self.db = db
        self.prefix = prefix
        self.ttl = float(ttl)
        self.timeout = timeout if timeout is not None else min(2.0, self.ttl / 4)
        self.log_max = log_max
        self.inbox_max = inbox_max
        self.seen_epoch = 0   # the highest epoch this client has seen: a new one is always above it
        self._base = "{" + prefix + "}"
        self._current = 0
        self._clients: dict[tuple[int, float], Any] = {}
        self._scripts: dict[str, Any] = {}
        self._threads = threads
        self._pool: ThreadPool | None = None
        self.block = max(0.05, min(0.5, self.ttl / 8))  # one XREAD's wait; bounds a closed watch's exit

    def __repr__(self) -> str:
        return f"<RedisStore {self.endpoints} db={self.db} prefix={self.prefix!r}>"

    # ------------------------------------------------------------ transport
    def _client(self, extra: float = 0.0) -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        key = (self._current % len(self.endpoints), extra)
        client = self._clients.get(key)
        if client is None:
            host, port = self.endpoints[key[0]]
            client = self._clients[key] = redis.Redis(
                host=host, port=port, db=self.db,
                socket_timeout=self.timeout + extra, socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0), retry_on_error=[], health_check_interval=0,
            )
        return client

    def _run(self, fn: Callable[[], T], what: str) -> T:
        """Run a blocking redis-py call without blocking the hub; its errors as StoreErrors."""
        if _patched():
            try:
                return fn()
            except Exception as e:
                raise self._failed(e, what) from None
        if self._pool is None:
            self._pool = ThreadPool(self._threads)

        def guarded() -> tuple[bool, Any]:
            # Errors come back as values: one raised in the thread after its
            # caller was killed would otherwise be reported to the hub.
            try:
                return True, fn()
            except Exception as e:
                return False, e

        ok, value = self._pool.apply(guarded)
        if not ok:
            raise self._failed(value, what) from None
        return value

    def _failed(self, e: Exception, what: str) -> StoreError:
        import redis

        host, port = self.endpoints[self._current % len(self.endpoints)]
        where = f"{host}:{port}"
        if isinstance(e, redis.exceptions.ResponseError) and not (
                "NOTPRIMARY" in str(e) or "READONLY" in str(e) or "LOADING" in str(e)):
            return StoreError(f"redis {what} at {where}: {e}")
        self._current += 1  # try the next endpoint next time
        return StoreUnavailable(f"redis {what} at {where}: {type(e).__name__}: {e}")

    def _script(self, op: str, *args: Any) -> Any:
        def call() -> Any:
            client = self._client()
            script = self._scripts.get(op)
            if script is None:
                src = _INBOX_SEND if op == "inbox_send" else _PRELUDE + _OPS[op]
                script = self._scripts[op] = client.register_script(src)
            if op == "inbox_send":
                return script(keys=[self._base], args=[self.inbox_max, *args], client=client)
            return script(keys=[self._base],
                          args=[self.seen_epoch, int(self.ttl * 1000), self.log_max, *args], client=client)

        return self._run(call, op)

    def _saw(self, rev: int) -> int:
        self.seen_epoch = max(self.seen_epoch, split_rev(rev)[0])
        return rev

    @staticmethod
    def _kv(key: bytes, value: bytes | None, meta: bytes) -> KV:
        c, m, lease = meta.decode().split("|")
        return KV(key, value or b"", _rev(c), _rev(m), int(lease))

    # ------------------------------------------------------------ kv
    def range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, list[KV]]:
        out = self._script("range", key, range_end or b"")
        rev = self._saw(_rev(out[0]))
        kvs = [self._kv(out[i], out[i + 1], out[i + 2]) for i in range(1, len(out), 3)]
        kvs.sort(key=lambda kv: kv.key)
        return rev, kvs

    def create(self, key: bytes, value: bytes, lease: int = 0) -> tuple[bool, int, KV | None]:
        status, info, rev, *rest = self._script("create", key, value, str(lease))
        rev = self._saw(_rev(rev))
        if status == b"ok":
            return True, rev, None
        if status == b"exists":
            return False, rev, self._kv(key, info, rest[0])
        if status == b"quiet":
            raise StoreUnavailable(
                f"redis: a failover or data loss was detected; claims wait {int(info) / 1000:.1f} s more "
                "(one lease ttl) so that old owners stop first")
        raise StoreError(f"redis create {key!r}: lease {lease} does not exist (expired or voided by a failover)")

    def put_if(self, key: bytes, value: bytes, create_revision: int, lease: int = 0) -> bool:
        return bool(self._script("put_if", key, value, _revs(create_revision), str(lease)))

    def delete_if(self, key: bytes, create_revision: int) -> bool:
        return bool(self._script("delete_if", key, _revs(create_revision))[0])

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        status, *rest = self._script("put", key, value, str(lease))
        if status != b"ok":
            raise StoreError(f"redis put {key!r}: lease {lease} does not exist (expired or voided by a failover)")
        return self._saw(_rev(rest[0]))

    def delete(self, key: bytes) -> int:
        return self._saw(_rev(self._script("delete_if", key, "")[1]))

    # ------------------------------------------------------------ leases
    def lease_grant(self, ttl: float) -> tuple[int, float]:
        lease = int.from_bytes(os.urandom(8), "big") >> 1
        ms = self._script("grant", str(lease), max(1, int(ttl * 1000)))
        return lease, int(ms) / 1000.0

    def lease_keepalive(self, lease: int, timeout: float | None = None) -> float:
        """As :meth:`Store.lease_keepalive`; ``timeout`` is the socket timeout's (fixed per client)."""
        return int(self._script("keepalive", str(lease), int(self.ttl * 1000))) / 1000.0

    def lease_revoke(self, lease: int, timeout: float | None = None) -> None:
        self._script("revoke", str(lease))

    # ------------------------------------------------------------ watch
    def watch(self, key: bytes, range_end: bytes, start_revision: int) -> RedisWatch:
        return RedisWatch(self, key, range_end, start_revision)

    def _xread(self, stream: str, cursor: str, count: int = 512) -> list:
        def call() -> list:
            client = self._client(extra=self.block)
            return client.xread({stream: cursor}, count=count, block=int(self.block * 1000)) or []

        return self._run(call, "xread")

    # ------------------------------------------------------------ inbox
    def inbox_send(self, entries: list[tuple[str, bytes]]) -> None:
        args: list[Any] = []
        for node, entry in entries:
            args += [node, entry]
        self._script("inbox_send", *args)

    def inbox_read(self, node: str, cursor: str) -> list[tuple[str, int, bytes]]:
        out = []
        for _name, entries in self._xread(f"{self._base}:inbox:{node}", cursor):
            for entry_id, f in entries:
                out.append((entry_id.decode(), int(f[b"n"]), f[b"p"]))
        return out

    def inbox_cursor(self, node: str) -> tuple[str, int]:
        saved = self._run(lambda: self._client().get(f"{self._base}:cursor:{node}"), "inbox cursor")
        if not saved:
            return "0", 0
        cursor, _, n = saved.decode().partition("|")
        return cursor, int(n or 0)

    def save_inbox_cursor(self, node: str, cursor: str, n: int) -> None:
        self._run(lambda: self._client().set(f"{self._base}:cursor:{node}", f"{cursor}|{n}"), "inbox cursor")

    def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        self._scripts = {}
        pool, self._pool = self._pool, None
        if pool is not None:
            # Calls in flight end within their socket timeout; their clients close after.
            with gevent.Timeout(self.timeout + self.block + 1.0, False):
                pool.join()
            pool.kill()
        for c in clients:
            try:
                c.close()
            except Exception:
                pass


def _revs(rev: int) -> str:
    e, c = split_rev(rev)
    return f"{e}-{c}"


class RedisWatch(Watch):
    """The change log from a revision on (see the module's docstring)."""

    def __init__(self, store: RedisStore, key: bytes, range_end: bytes, start_revision: int):
        self._store = store
        self._key = key
        self._end = range_end
        self._closed = False
        self._cursor = split_rev(max(0, start_revision - 1))

    def close(self) -> None:
        self._closed = True

    def __iter__(self) -> Iterator[list[tuple[str, KV]]]:
        store = self._store
        stream = store._base + ":log"
        epoch, ctr = self._cursor
        while not self._closed:
            answer = store._xread(stream, f"{epoch}-{ctr}")
            events: list[tuple[str, KV]] = []
            for _name, entries in answer:
                for entry_id, f in entries:
                    e, c = split_rev(_rev(entry_id))
                    if (epoch, ctr) != (0, 0) and (e, c) != (epoch, ctr + 1):
                        why = "a new epoch (failover or data loss)" if e != epoch else "the log was trimmed"
                        raise StoreError(f"redis watch cannot go on from {epoch}-{ctr}: {why}; list again")
                    epoch, ctr = e, c
                    k = f[b"k"]
                    if not (self._key <= k < self._end):
                        continue
                    rev = store._saw(join_rev(e, c))
                    events.append((f[b"t"].decode(), KV(k, f[b"v"], _rev(f[b"c"]), rev, int(f[b"l"]))))
            if events and not self._closed:
                yield events
            gevent.idle()
