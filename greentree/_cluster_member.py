"""The greenlets behind :class:`greentree.Cluster`: the lease, the watch, the links.

Theory of operation.  The cluster runs as one supervised child (the
*runner*).  Its greenlet binds the node's listening socket, signals
``started()`` and then keeps the node's lease: join (grant a lease, create
``<prefix>/nodes/<node>`` on it; the key's create revision is the
incarnation), refresh every ``ttl / 3``, and fence when the local deadline
(:class:`LeaseClock`) passes or etcd says the lease is gone.  A second
greenlet lists and then watches ``<prefix>/`` and turns node records into
nodeup/nodedown (:class:`NodeView`) and name records into a cache of owners.
Connection handlers (one per accepted link) and readers (one per outgoing
link) deliver envelopes.  Everything this module spawns lives in one
``gevent.pool.Group`` that the runner kills when it ends, so no greenlet
outlives the cluster's subtree.

The deadline is checked synchronously by every operation too, not only by
the timer: after a SIGSTOP/SIGCONT the greenlet that runs first may be a
sender, and it must already see the node as fenced.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.pool import Group, Pool
from gevent.server import StreamServer

from . import _telemetry
from ._child import Greenlet, started
from ._cluster_inbox import Inbox, InboxPeer
from ._cluster_link import HANDSHAKE_TIMEOUT, Link, accept, connect
from ._cluster_proto import (
    MAX_FRAME,
    LeaseClock,
    Membership,
    NodeInfo,
    NodeView,
    Owner,
    ProtocolError,
    backoff,
    decode_record,
    default_margin,
    encode_record,
    inbox_key,
    node_info,
)
from ._cluster_store import KV, Store, StoreError, StoreUnavailable, prefix_end
from ._errors import ArgumentError, GreentreeError, NotRunningError
from ._etcd import EtcdClient, parse_url
from ._report import RateLimiter, report_event

__all__ = ["ClusterUnavailableError", "ClusterCore", "open_store"]


def open_store(url: str, ttl: float, timeout: float | None = None) -> tuple[Store, str]:
    """The store for ``url`` and the cluster's key prefix (ValueError on a bad URL).

    ``timeout`` defaults to the backend's choice for a lease of ``ttl`` seconds.
    """
    scheme = url.split("://", 1)[0] if isinstance(url, str) else ""
    if scheme == "redis":
        from ._redis_store import RedisStore, parse_redis_url

        endpoints, db, prefix = parse_redis_url(url)
        return RedisStore(endpoints, db=db, prefix=prefix, ttl=ttl, timeout=timeout), prefix
    eps, prefix = parse_url(url)
    return EtcdClient(eps, timeout=timeout or min(2.0, ttl / 3)), prefix


class ClusterUnavailableError(GreentreeError, ConnectionError):
    """The cluster cannot be reached: its store (etcd or Redis) is unreachable, or this node is not
    (or no longer) a member: still connecting, or fenced after losing its
    lease.  Local supervisors, registries and servers keep working; retry the
    cluster operation later, or check ``cluster.state``."""


class _Runner(Greenlet):
    """The cluster's supervised child."""

    handshake = True
    _gt_catch = True

    def _run(self, cluster: ClusterCore) -> None:
        cluster._serve()


class ClusterCore:
    """State and greenlets of one node; the public API is :class:`greentree.Cluster`."""

    def __init__(self, url: str, *, node: str, ttl: float = 5.0, listen: tuple = ("127.0.0.1", 0),
                 secret: bytes, advertise: str | None = None, max_frame: int = MAX_FRAME,
                 request_timeout: float | None = None, clock: Callable[[], float] = time.monotonic,
                 transport: str | None = None):
        who = f"Cluster(node={node!r})"
        if not isinstance(node, str) or not node or "/" in node:
            raise ArgumentError(f"{who}: node must be a non-empty str without '/'")
        if not isinstance(ttl, (int, float)) or ttl < 1.0:
            raise ArgumentError(f"{who}: ttl must be a number of seconds >= 1 (etcd leases count whole seconds)")
        if not isinstance(secret, bytes) or len(secret) < 8:
            raise ArgumentError(f"{who}: secret must be bytes of at least 8 (the same on every node)")
        if not (isinstance(listen, tuple) and len(listen) == 2 and isinstance(listen[1], int)):
            raise ArgumentError(f"{who}: listen must be a (host, port) tuple, not {listen!r}")
        if advertise is None:
            if listen[0] in ("", "0.0.0.0", "::"):
                raise ArgumentError(f"{who}: listening on {listen[0]!r} needs advertise='<address others reach>'")
            advertise = listen[0]
        if request_timeout is not None and not (0 < request_timeout < ttl / 3):
            raise ArgumentError(f"{who}: request_timeout must be above 0 and below ttl/3 ({ttl / 3:.3g} s), "
                                "so a node notices a lost store before its lease runs out")
        try:
            self._store, self.prefix = open_store(url, float(ttl), request_timeout)
        except ValueError as e:
            raise ArgumentError(f"{who}: {e}") from None
        if transport is None:
            transport = "inbox" if self._store.inbox else "links"
        if transport not in ("links", "inbox") or (transport == "inbox" and not self._store.inbox):
            raise ArgumentError(f"{who}: transport must be 'links' or, on Redis, 'inbox'; not {transport!r}")
        self.transport = transport
        self.url = url
        self.node = node
        self.ttl = float(ttl)
        self.margin = default_margin(self.ttl)
        self._listen = listen
        self._advertise = advertise
        self._secret = secret
        self._max_frame = max_frame
        self._clock = clock
        self._root = f"{self.prefix}/".encode()
        self._lease_clock = LeaseClock(self.margin)
        self._membership = Membership()
        self._view = NodeView()
        self._leaving: set[str] = set()
        self._cache: dict[str, Owner] = {}                  # names of the cluster, from the watch
        self._local: dict[str, tuple[int, Any, Any]] = {}   # name -> (token, greenlet, exit hook)
        self._orphans: dict[str, Any] = {}                  # names lost by fencing: name -> greenlet
        self._links: dict[str, Link] = {}                    # outgoing, by node
        self._inbound: set[Link] = set()
        self._connecting: dict[str, Semaphore] = {}
        self._monitors: list = []
        self._records: dict[str, dict[str, bytes]] = {}  # kind -> key -> value, from the watch
        self._change_listeners: list[Callable[[frozenset], Any]] = []
        self._name_waiters: dict[str, Event] = {}
        self._group = Group()
        self._lease = 0
        self._watch: Any = None
        self._listed = 0  # revision of the listing done by the last join, for the watch to go on from
        self._up = Event()
        self._call_ids = 0
        self._refusal_log = RateLimiter(rate=1.0, burst=5.0)
        self.address: tuple | None = None
        self.stats: dict[str, int] = {
            "dropped_stale_token": 0, "dropped_no_name": 0, "dropped_stale_sender": 0,
            "dropped_not_member": 0, "refused_connections": 0, "publish_failed": 0, "fenced": 0,
            "inbox_trimmed": 0, "inbox_reset": 0, "dropped_old_incarnation": 0, "dropped_replayed": 0,
            "inbox_send_failed": 0, "inbox_send_dropped": 0,
        }
        self._inbox = Inbox(self, inbox_key(secret)) if transport == "inbox" else None

    # ------------------------------------------------------------ state
    def __repr__(self) -> str:
        return f"<Cluster node={self.node!r} state={self.state!r} incarnation={self.incarnation}>"

    @property
    def state(self) -> str:
        """``"connecting"``, ``"up"``, ``"fenced"`` or ``"stopped"`` (checks the deadline now)."""
        self._check_deadline()
        return self._membership.state

    @property
    def lease_deadline(self) -> float:
        """When this node stops acting as a member unless a refresh succeeds (the cluster's clock)."""
        return self._lease_clock.deadline

    @property
    def incarnation(self) -> int | None:
        """This node's current incarnation (None before it first joined)."""
        return self._membership.incarnation

    def _check_deadline(self) -> bool:
        """True if this node may act as a member right now; fences it if its deadline passed."""
        if self._membership.state != "up":
            return False
        if self._lease_clock.is_member(self._clock()):
            return True
        self._fence("its lease deadline passed without a successful refresh")
        return False

    def _require_member(self, op: str) -> None:
        if not self._check_deadline():
            state = self._membership.state
            why = {
                "connecting": f"it has not joined yet (is {self._store.kind} reachable?)",
                "fenced": f"it lost its lease ({self._store.kind} unreachable or the node was paused) and is rejoining",
                "stopped": "the cluster child has stopped",
            }.get(state, state)
            raise ClusterUnavailableError(
                f"{self!r}.{op}: node {self.node!r} is {state}: {why}; local trees keep working, "
                "retry later or watch cluster.state"
            )

    def _store_call(self, op: str, fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except StoreUnavailable as e:
            raise ClusterUnavailableError(f"{self!r}.{op}: {self._store.kind} is unreachable ({e}); retry later") from None

    def _key(self, kind: str, name: str) -> bytes:
        return self._root + kind.encode() + b"/" + name.encode("utf-8")

    # ------------------------------------------------------------ records
    # A small key-value facility in the cluster's key space for layers built
    # on the cluster (the ClusterSupervisor keeps its specs, members and
    # handoffs here): values under ``<prefix>/records/<kind>/<key>``, kept in
    # a local cache by the same watch as nodes and names, so a listener sees
    # records, names and nodes change in the one order etcd applied them.
    def _record_key(self, op: str, kind: str, key: str) -> bytes:
        for what, s in (("kind", kind), ("key", key)):
            if not isinstance(s, str) or not s or (what == "kind" and "/" in s):
                raise ArgumentError(f"{self!r}.{op}({kind!r}, {key!r}): {what} must be a non-empty str"
                                    + (" without '/'" if what == "kind" else ""))
        return self._key("records", f"{kind}/{key}")

    def records(self, kind: str) -> dict[str, bytes]:
        """The records of ``kind`` as this node last heard from the store: key -> value (a copy)."""
        return dict(self._records.get(kind, ()))

    def create_record(self, kind: str, key: str, value: bytes) -> bool:
        """Store ``value`` under (kind, key) unless a record is there: True if stored.

        Not tied to this node's lease: it stays until deleted.  Raises
        :class:`ClusterUnavailableError` if the store or membership is missing.
        """
        k = self._record_key("create_record", kind, key)
        self._require_member("create_record")
        ok, _rev, existing = self._store_call("create_record", self._store.create, k, value, 0)
        self._records.setdefault(kind, {})[key] = value if ok else (existing.value if existing else value)
        return bool(ok)

    def put_record(self, kind: str, key: str, value: bytes, *, leased: bool = False) -> None:
        """Store ``value`` under (kind, key), replacing what is there.

        ``leased=True`` ties it to this node's lease: it vanishes when the
        node leaves, crashes or is cut off.
        """
        k = self._record_key("put_record", kind, key)
        self._require_member("put_record")
        self._store_call("put_record", self._store.put, k, value, self._lease if leased else 0)
        self._records.setdefault(kind, {})[key] = value

    def delete_record(self, kind: str, key: str) -> None:
        """Remove the record (kind, key) if it exists."""
        k = self._record_key("delete_record", kind, key)
        self._require_member("delete_record")
        self._store_call("delete_record", self._store.delete, k)
        self._records.get(kind, {}).pop(key, None)

    def on_change(self, fn: Callable[[frozenset], Any]) -> None:
        """Call ``fn(kinds)`` after the watch applied changes.

        ``kinds`` is a frozenset of what changed: ``"nodes"``, ``"names"``
        and record kinds.  After a (re)join's listing every kind is reported.
        Called in the watch greenlet, in etcd's order: ``fn`` must not block.
        """
        if not callable(fn):
            raise TypeError(f"{self!r}.on_change({fn!r}): pass a function")
        self._change_listeners.append(fn)

    def remove_on_change(self, fn: Callable[[frozenset], Any]) -> None:
        """Stop calling ``fn``."""
        if fn in self._change_listeners:
            self._change_listeners.remove(fn)

    def _changed(self, kinds: set[str]) -> None:
        if not kinds:
            return
        frozen = frozenset(kinds)
        for fn in list(self._change_listeners):
            try:
                fn(frozen)
            except Exception as e:
                report_event(logging.ERROR, "%r: change listener %r failed: %r", self, fn, e)

    # ------------------------------------------------------------ the runner
    def child_spec(self, id: Any = "cluster") -> Any:
        """The cluster as a child: ``Supervisor([cluster.child_spec(), ...])``.

        It starts once the node's port is listening (not once etcd answers:
        an etcd outage never stops a tree from starting) and leaves the
        cluster when it is stopped.
        """
        from ._spec import ChildSpec

        return ChildSpec(id, _Runner, self, shutdown=self._store.timeout + 2.0)

    def _serve(self) -> None:
        if self._membership.state == "stopped":
            # Restarted by its supervisor: join again, as a new incarnation.
            self._membership = Membership()
            self._view = NodeView()
        server = StreamServer(self._listen, self._handle_connection, spawn=Pool(1024))
        server.start()
        self.address = (self._advertise, server.address[1])
        try:
            started()
            self._group.spawn(self._watch_loop)
            if self._inbox is not None:
                self._group.spawn(self._inbox.write_loop)
                self._group.spawn(self._inbox.read_loop)
            self._lease_loop()
        finally:
            self._shutdown(server)

    def _shutdown(self, server: StreamServer) -> None:
        was_up = self._check_deadline()
        if self._membership.can("stop"):
            self._membership.handle("stop")
        self._up.clear()
        lease, self._lease = self._lease, 0
        self._drop_local_names(orphan=False)  # before the lease goes: nobody else may hold them yet
        if was_up and lease:
            try:  # leave: mark the record (nodedown reason "left"), then drop the lease and every name
                self._store.put_if(self._key("nodes", self.node), self._node_record(leaving=True),
                                  self.incarnation or 0, lease)
                self._store.lease_revoke(lease, timeout=1.0)
            except (StoreError, OSError):
                pass
        self._close_links("the cluster child stopped")
        server.stop(timeout=1.0)
        self._group.kill(block=True, timeout=2.0)
        self._store.close()

    def _node_record(self, leaving: bool = False) -> bytes:
        assert self.address is not None
        rec: dict[str, Any] = {"addr": [self.address[0], self.address[1]], "since": time.time(), "pid": os.getpid()}
        if leaving:
            rec["leaving"] = True
        return encode_record(rec)

    # ------------------------------------------------------------ lease
    def _lease_loop(self) -> None:
        interval = self.ttl / 3.0
        attempt = 0
        next_refresh = 0.0
        troubled = False
        while True:
            if self._membership.state != "up":
                try:
                    self._join()
                    attempt = 0
                    next_refresh = self._clock() + interval
                except (StoreError, OSError) as e:
                    if attempt == 0:
                        report_event(logging.WARNING, "%r: cannot join yet: %s", self, e)
                    gevent.sleep(backoff(attempt, 0.1, 1.0))
                    attempt += 1
                continue
            now = self._clock()
            remaining = self._lease_clock.remaining(now)
            if remaining <= 0:
                self._fence("its lease deadline passed without a successful refresh")
                continue
            if now < next_refresh:
                gevent.sleep(min(next_refresh - now, remaining))
                continue
            sent = self._clock()
            try:
                ttl = self._store.lease_keepalive(self._lease, timeout=max(0.05, min(self._store.timeout, remaining)))
            except (StoreError, OSError):
                next_refresh = self._clock() + min(0.25, interval)
                troubled = True
                continue
            if not self._check_deadline():
                continue
            if ttl <= 0:
                self._fence(f"{self._store.kind} says its lease is gone")
                continue
            self._lease_clock.refreshed(sent, ttl)
            next_refresh = sent + interval
            if troubled:
                # etcd answers again after a gap: the watch's connection may be
                # stuck in TCP retransmission backoff; list afresh now.
                troubled = False
                self._kick_watch()

    def _join(self) -> None:
        store = self._store
        if self._lease:
            # Our fenced incarnation's names must go before we claim them again
            # (kept until etcd confirms, so a failed attempt retries it).
            store.lease_revoke(self._lease)
            self._lease = 0
        sent = self._clock()
        lease, granted = store.lease_grant(self.ttl)
        try:
            ok, rev, existing = store.create(self._key("nodes", self.node), self._node_record(), lease)
        except BaseException:
            self._revoke_quietly(lease)
            raise
        if not ok:
            self._revoke_quietly(lease)
            raise StoreError(
                f"node name {self.node!r} is held by another live process (lease {existing and existing.lease}); "
                "waiting for it to leave or expire: give every process its own node name"
            )
        self._lease = lease
        self._lease_clock = LeaseClock(self.margin)
        self._lease_clock.refreshed(sent, granted)
        # Know the cluster before calling ourselves up: the watch continues from this listing.
        list_rev, kvs = store.range(self._root, prefix_end(self._root))
        self._membership.handle("joined", incarnation=rev)
        self._kick_watch()
        self._listed = list_rev
        self._resync(kvs)
        self._up.set()
        report_event(logging.INFO, "%r: joined", self)
        self._notify([("joined", self.node, rev)])
        if self._orphans:
            self._group.spawn(self._reclaim_orphans)

    def _revoke_quietly(self, lease: int) -> None:
        try:
            self._store.lease_revoke(lease, timeout=0.5)
        except (StoreError, OSError):
            pass

    def _fence(self, why: str) -> None:
        if self._membership.state != "up":
            return
        self._membership.handle("deadline")
        self._up.clear()
        self.stats["fenced"] += 1
        report_event(logging.WARNING, "%r: fenced: %s; its names are lost locally, rejoining", self, why)
        self._drop_local_names(orphan=True)
        self._close_links(f"node {self.node!r} was fenced ({why})")
        self._kick_watch()
        self._notify([("fenced", self.node, why)] + self._view.clear("fenced"))
        self._cache.clear()

    # ------------------------------------------------------------ watch
    def _kick_watch(self) -> None:
        w, self._watch = self._watch, None
        if w is not None:
            w.close()

    def _watch_loop(self) -> None:
        attempt = 0
        end = prefix_end(self._root)
        while True:
            if not self._up.wait(1.0) or not self._check_deadline():
                continue
            try:
                rev, self._listed = self._listed, 0
                if not rev:
                    rev, kvs = self._store.range(self._root, end)
                    if not self._check_deadline():
                        continue
                    self._resync(kvs)
                w = self._watch = self._store.watch(self._root, end, rev + 1)
                attempt = 0
                for events in w:
                    if w is not self._watch:
                        break
                    self._apply(events)
            except (StoreError, OSError):
                gevent.sleep(backoff(attempt, 0.05, 0.5))
                attempt += 1

    def _parse_key(self, key: bytes) -> tuple[str, str] | None:
        rest = key[len(self._root):]
        kind, _, name = rest.partition(b"/")
        if kind not in (b"nodes", b"names", b"records") or not name:
            return None
        return kind.decode(), name.decode("utf-8", "replace")

    def _resync(self, kvs: list[KV]) -> None:
        infos = []
        self._cache.clear()
        old_kinds = set(self._records)
        self._records = {}
        for kv in kvs:
            parsed = self._parse_key(kv.key)
            if parsed is not None and parsed[0] == "records":
                self._put_cached_record(parsed[1], kv.value)
                continue
            rec = decode_record(kv.value)
            if parsed is None or rec is None:
                continue
            kind, name = parsed
            if kind == "names":
                if isinstance(rec.get("node"), str):
                    self._cache[name] = Owner(rec["node"], kv.create_revision)
            elif name != self.node:
                info = node_info(name, rec, kv.create_revision)
                if info is not None:
                    infos.append(info)
                    if rec.get("leaving"):
                        self._leaving.add(name)
        self._notify(self._view.sync(infos, "lease expired"))
        self._changed({"nodes", "names"} | old_kinds | set(self._records))

    def _put_cached_record(self, path: str, value: bytes | None) -> str | None:
        kind, _, key = path.partition("/")
        if not key:
            return None
        if value is None:
            table = self._records.get(kind)
            if table is not None:
                table.pop(key, None)
        else:
            self._records.setdefault(kind, {})[key] = value
        return kind

    def _apply(self, events: list[tuple[str, KV]]) -> None:
        notes: list[tuple] = []
        kinds: set[str] = set()
        for typ, kv in events:
            parsed = self._parse_key(kv.key)
            if parsed is None:
                continue
            kind, name = parsed
            if kind == "records":
                rkind = self._put_cached_record(name, None if typ == "DELETE" else kv.value)
                if rkind is not None:
                    kinds.add(rkind)
                continue
            kinds.add(kind)
            if kind == "names":
                if typ == "DELETE":
                    self._cache.pop(name, None)
                    ev = self._name_waiters.get(name)
                    if ev is not None:
                        ev.set()
                else:
                    rec = decode_record(kv.value)
                    if rec is not None and isinstance(rec.get("node"), str):
                        self._cache[name] = Owner(rec["node"], kv.create_revision)
            elif name == self.node:
                if typ == "DELETE" and kv.mod_revision > (self.incarnation or 0):
                    self._fence(f"{self._store.kind} deleted its node record (lease expired or revoked)")
            elif typ == "DELETE":
                reason = "left" if name in self._leaving else "lease expired"
                self._leaving.discard(name)
                notes += self._view.delete(name, None, reason)
            else:
                rec = decode_record(kv.value)
                info = node_info(name, rec, kv.create_revision) if rec is not None else None
                if info is not None:
                    if rec is not None and rec.get("leaving"):
                        self._leaving.add(name)
                    notes += self._view.put(info)
        self._notify(notes)
        self._changed(kinds)

    def _notify(self, notes: list[tuple]) -> None:
        for note in notes:
            _telemetry.node_change(self, note)
            if note[0] == "nodedown":
                node = note[1]
                link = self._links.pop(node, None)
                if link is not None:
                    self._fail_link(link, f"node {node!r} went down ({note[2]})")
                for name in [n for n, o in self._cache.items() if o.node == node]:
                    del self._cache[name]
                for ev in self._name_waiters.values():
                    ev.set()
            for fn in list(self._monitors):
                try:
                    send = getattr(fn, "send", None)
                    if isinstance(fn, gevent.Greenlet) and send is not None:
                        send(note)
                    else:
                        fn(note)
                except Exception as e:
                    report_event(logging.ERROR, "%r: node monitor %r failed on %r: %r", self, fn, note, e)

    # ------------------------------------------------------------ links
    def _close_links(self, why: str) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links + list(self._inbound):
            self._fail_link(link, why)
        self._inbound.clear()

    def _fail_link(self, link: Link, why: str) -> None:
        link.close()
        pending, link.pending = link.pending, {}
        for result in pending.values():
            result.set_exception(NotRunningError(f"{self!r}: call failed: {why}"))

    def _link_to(self, node: str, timeout: float | None = None) -> Link:
        link = self._links.get(node)
        if link is not None and not link.closed:
            return link
        if self._inbox is not None:
            return self._inbox_peer(node)  # type: ignore[return-value]
        lock = self._connecting.setdefault(node, Semaphore())
        with lock:
            link = self._links.get(node)
            if link is not None and not link.closed:
                return link
            info = self._view.nodes.get(node) or self._fetch_node(node)
            if info is None:
                raise NotRunningError(f"{self!r}: node {node!r} is not up")
            try:
                link = connect(info.address, self._secret, (self.node, self.incarnation or 0), self._max_frame,
                               HANDSHAKE_TIMEOUT if timeout is None else max(0.01, min(timeout, HANDSHAKE_TIMEOUT)))
            except (OSError, ConnectionError, ProtocolError) as e:
                raise NotRunningError(f"{self!r}: cannot reach node {node!r} at {info.address}: {e}") from None
            if (link.peer, link.incarnation) != (node, info.incarnation) or not self._check_deadline():
                link.close()
                raise NotRunningError(f"{self!r}: node {node!r} at {info.address} is not incarnation {info.incarnation}")
            self._links[node] = link
            self._group.spawn(self._read_link, link, self._links)
            return link

    def _inbox_peer(self, node: str) -> InboxPeer:
        info = self._view.nodes.get(node) or self._fetch_node(node)
        if info is None or not self._check_deadline():
            raise NotRunningError(f"{self!r}: node {node!r} is not up")
        assert self._inbox is not None
        peer = InboxPeer(self._inbox, node, info.incarnation)
        self._links[node] = peer  # type: ignore[assignment]
        return peer

    def _fetch_node(self, node: str) -> NodeInfo | None:
        """A node our watch has not reported yet (it lags a little): ask etcd."""
        try:
            _rev, kvs = self._store.range(self._key("nodes", node))
        except (StoreError, OSError):
            return None
        rec = decode_record(kvs[0].value) if kvs else None
        info = node_info(node, rec, kvs[0].create_revision) if kvs and rec is not None else None
        if info is None or self._view.is_stale(node, info.incarnation) or not self._check_deadline():
            return None
        self._notify(self._view.put(info))
        return info

    def _handle_connection(self, sock: Any, addr: Any) -> None:
        if not self._check_deadline():
            self.stats["refused_connections"] += 1
            sock.close()
            return
        try:
            link = accept(sock, self._secret, (self.node, self.incarnation or 0), self._max_frame)
        except (ProtocolError, OSError, ConnectionError, gevent.Timeout) as e:
            self.stats["refused_connections"] += 1
            if self._refusal_log.allow():  # a flood of bad connections must not become a flood of logs
                report_event(logging.WARNING, "%r: refused a connection from %s: %s", self, addr, e)
            sock.close()
            return
        if self._view.is_stale(link.peer, link.incarnation) or not self._check_deadline():
            self.stats["refused_connections"] += 1
            link.close()
            return
        self._inbound.add(link)
        self._read_link(link, None)

    def _read_link(self, link: Link, table: dict | None) -> None:
        why = f"the connection to node {link.peer!r} was lost"
        try:
            link.read_loop(self._on_envelope)
        except ProtocolError as e:
            self.stats["refused_connections"] += 1
            if self._refusal_log.allow():
                report_event(logging.WARNING, "%r: closed the link to %r: %s", self, link.peer, e)
        except (OSError, ConnectionError):
            pass
        finally:
            if table is not None and table.get(link.peer) is link:
                del table[link.peer]
            self._inbound.discard(link)
            self._fail_link(link, why)

    def _on_envelope(self, link: Link, env: dict) -> None:  # pragma: no cover - defined by Cluster
        raise NotImplementedError

    def _reclaim_orphans(self) -> None:  # pragma: no cover - defined by Cluster
        raise NotImplementedError

    def _drop_local_names(self, orphan: bool) -> None:  # pragma: no cover - defined by Cluster
        raise NotImplementedError

