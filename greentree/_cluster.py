"""Cluster: nodes, cluster-unique names with fencing tokens, messages and topics, on etcd.

See :class:`Cluster`; the greenlets behind it are in :mod:`greentree._cluster_member`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import getcurrent
from gevent.event import AsyncResult, Event

from ._child import Greenlet
from ._cluster_link import Link
from ._cluster_member import ClusterCore, ClusterUnavailableError
from ._cluster_proto import NodeInfo, Owner, backoff, decode_record, encode_envelope, encode_record
from ._errors import (
    AlreadyRegisteredError,
    ArgumentError,
    BlockingCallError,
    CallTimeoutError,
    GreentreeError,
    NotRunningError,
)
from ._exits import ShutdownExit
from ._report import report_event
from ._server import Server

__all__ = ["Cluster", "ClusterName", "ClusterUnavailableError", "NodeInfo", "Owner"]


def _check_name(op: str, name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ArgumentError(f"Cluster.{op}({name!r}): a cluster name must be a non-empty str")


class Cluster(ClusterCore):
    """This OS process as a node of a cluster kept in etcd.

    ``Cluster(url, node=..., ttl=5.0, listen=("127.0.0.1", 0), secret=b"...")``
    connects nothing by itself: put :meth:`child_spec` in your root
    supervisor and the node joins when the tree starts and leaves when it
    stops::

        cluster = greentree.Cluster("etcd://127.0.0.1:2379", node="web-1", ttl=5.0,
                                    listen=("127.0.0.1", 0), secret=b"shared-secret")
        root = greentree.Supervisor([cluster.child_spec(), ChildSpec("app", App)])

    * ``url``: ``etcd://host:port[,host:port...][/prefix]``; nodes sharing a
      prefix form one cluster.
    * ``node``: this process's name, unique among live processes (a
      restarted process may reuse it: it gets a new incarnation).
    * ``ttl``: seconds of the node's lease.  A node that cannot refresh it
      stops acting as a member ``margin`` (ttl/5, at most 1 s) before it
      would expire; its names come free for others after ``ttl``.
    * ``listen``: where other nodes connect (``advertise=`` the address to
      publish if you listen on 0.0.0.0); ``secret``: shared by every node,
      it authenticates the node-to-node links (HMAC-SHA256).
    * ``max_frame``: the largest message frame accepted (1 MiB);
      ``request_timeout``: seconds an etcd request may take (ttl/3, at most
      2 s); ``clock``: the monotonic clock of the lease deadline.

    ``stats`` counts what was refused or dropped: ``dropped_stale_token``,
    ``dropped_no_name``, ``dropped_stale_sender``, ``dropped_not_member``,
    ``refused_connections``, ``publish_failed`` and ``fenced``.

    Cluster names are ``str``; messages are msgpack data (never pickle).
    See the how-to *Clusters* for the promises this class keeps.
    """

    def __init__(self, url: str, *, node: str, ttl: float = 5.0, listen: tuple = ("127.0.0.1", 0),
                 secret: bytes, **options: Any):
        super().__init__(url, node=node, ttl=ttl, listen=listen, secret=secret, **options)
        self._topics: dict[str, list] = {}
        self._name_monitors: list = []
        self._unanswered: dict[str, set] = {}  # name -> claim ids sent while etcd did not answer

    # ------------------------------------------------------------ nodes
    def nodes(self) -> dict[str, NodeInfo]:
        """The other nodes that are up, as this node last heard from etcd.

        Empty while this node is not a member (connecting or fenced).
        """
        if not self._check_deadline():
            return {}
        return dict(self._view.nodes)

    def monitor_nodes(self, fn: Any) -> None:
        """Call ``fn(("nodeup", node))`` and ``fn(("nodedown", node, reason))`` on changes.

        ``fn`` is a function (called in the cluster's watch greenlet: it must
        not block) or a :class:`Server`, which gets the tuple through
        ``send``.  ``reason`` is ``"left"`` (stopped cleanly),
        ``"lease expired"`` (crashed, paused or cut off), ``"restarted"`` (a
        new incarnation replaced it) or ``"fenced"`` (this node itself lost
        its lease: every other node is down from its point of view until it
        rejoins).
        """
        if not callable(fn) and not isinstance(fn, Server):
            raise TypeError(f"{self!r}.monitor_nodes({fn!r}): pass a function or a Server")
        self._monitors.append(fn)

    def demonitor_nodes(self, fn: Any) -> None:
        """Stop calling ``fn``."""
        try:
            self._monitors.remove(fn)
        except ValueError:
            pass

    # ------------------------------------------------------------ names
    def register(self, name: str, greenlet: Any, *, release_on_exit: bool = True) -> int:
        """Claim ``name`` cluster-wide for a local greenlet; returns the fencing token.

        The token (etcd's create revision of the claim) is strictly greater
        than every earlier token of ``name``.  The name is freed when the
        greenlet ends (unless ``release_on_exit=False``: then the name
        outlives it until :meth:`unregister`, so whoever manages the
        greenlet can finish its bookkeeping before anyone else may take the
        name), on :meth:`unregister`, or when this node's lease expires.  Raises :class:`AlreadyRegisteredError` (``.owner`` is the
        :class:`Owner`) if another greenlet holds it anywhere, and
        :class:`ClusterUnavailableError` if etcd or membership is missing.
        """
        _check_name("register", name)
        if not isinstance(greenlet, gevent.Greenlet) or greenlet.dead:
            raise ArgumentError(f"{self!r}.register({name!r}): owner must be a live gevent Greenlet, not {greenlet!r}")
        self._require_member("register")
        held = self._local.get(name)
        if held is not None:
            if held[1] is greenlet:
                return held[0]
            raise AlreadyRegisteredError(
                f"{self!r}.register({name!r}): held by {held[1]!r} on this node", Owner(self.node, held[0]))
        key = self._key("names", name)
        lease = self._lease
        claim = os.urandom(8)  # tells a claim of ours whose answer was lost from anyone else's
        record = encode_record({"node": self.node, "inc": self.incarnation, "claim": claim})
        try:
            ok, token, existing = self._etcd_call("register", self._etcd.create, key, record, lease)
        except ClusterUnavailableError:
            self._unanswered.setdefault(name, set()).add(claim)
            raise
        if not ok:
            assert existing is not None
            rec = decode_record(existing.value) or {}
            if existing.lease == lease and rec.get("claim") in self._unanswered.get(name, ()):
                token = existing.create_revision  # our own earlier claim, whose answer was lost: adopt it
            else:
                owner = Owner(str(rec.get("node", "?")), existing.create_revision)
                raise AlreadyRegisteredError(f"{self!r}.register({name!r}): held by {owner}", owner)
        self._unanswered.pop(name, None)
        if lease != self._lease or not self._check_deadline():
            raise ClusterUnavailableError(f"{self!r}.register({name!r}): the node lost its lease meanwhile")
        if greenlet.dead:
            self._group.spawn(self._release, name, token)
            raise NotRunningError(f"{self!r}.register({name!r}): {greenlet!r} exited during the claim")
        hook: Any = None
        if release_on_exit:
            hook = functools.partial(self._owner_exited, name, token)
            _hook(greenlet, hook, add=True)
        self._local[name] = (token, greenlet, hook)
        self._cache[name] = Owner(self.node, token)
        self._name_event(("claimed", name, token))
        return token

    def monitor_names(self, fn: Callable[[tuple], Any]) -> None:
        """Call ``fn`` when a name held by this node changes hands.

        ``fn(("claimed", name, token))`` after a claim (``register``, a
        ``via`` child's start, a re-claim after a rejoin) and
        ``fn(("lost", name, token, reason))`` when it goes: ``"exited"``,
        ``"unregistered"``, ``"fenced"`` (the node's lease deadline passed)
        or ``"stopped"``.  Called in whichever greenlet made the change (or
        the hub, for an owner that exits): ``fn`` must not block.
        """
        if not callable(fn):
            raise TypeError(f"{self!r}.monitor_names({fn!r}): pass a function")
        self._name_monitors.append(fn)

    def demonitor_names(self, fn: Callable[[tuple], Any]) -> None:
        """Stop calling ``fn``."""
        if fn in self._name_monitors:
            self._name_monitors.remove(fn)

    def _name_event(self, note: tuple) -> None:
        for fn in list(self._name_monitors):
            try:
                fn(note)
            except Exception as e:
                report_event(logging.ERROR, "%r: name monitor %r failed on %r: %r", self, fn, note, e)

    def _owner_exited(self, name: str, token: int, _g: Any) -> None:
        # Exit hook: runs in the dying greenlet or the hub; never blocks.
        held = self._local.get(name)
        if held is not None and held[0] == token:
            del self._local[name]
            self._name_event(("lost", name, token, "exited"))
            if self._membership.state == "up":
                self._group.spawn(self._release, name, token)

    def _release(self, name: str, token: int) -> None:
        for attempt in range(1000):
            if self._membership.state != "up":
                return  # the lease is going or gone, and the name with it
            try:
                self._etcd.delete_if(self._key("names", name), token)
                return
            except Exception:
                gevent.sleep(backoff(attempt, 0.1, 1.0))

    def unregister(self, name: str) -> None:
        """Free ``name`` held by a greenlet of this node (a no-op if this node does not hold it)."""
        _check_name("unregister", name)
        held = self._local.pop(name, None)
        if held is None:
            self._orphans.pop(name, None)
            return
        token, g, hook = held
        _hook(g, hook, add=False)
        self._name_event(("lost", name, token, "unregistered"))
        try:
            self._etcd.delete_if(self._key("names", name), token)
        except Exception:
            self._group.spawn(self._release, name, token)

    def token(self, name: str) -> int | None:
        """The token this node holds ``name`` with right now, or None.

        None as well once the node's lease deadline has passed: a handler
        about to act on an outside resource can check it is still the owner
        (and pass the token to the resource, which can refuse lower ones).
        """
        if not self._check_deadline():
            return None
        held = self._local.get(name)
        return None if held is None else held[0]

    def whereis(self, name: str) -> Owner | None:
        """Who holds ``name`` now: ``Owner(node, token)`` or None (asks etcd: linearizable)."""
        _check_name("whereis", name)
        self._require_member("whereis")
        held = self._local.get(name)
        if held is not None:
            return Owner(self.node, held[0])
        _rev, kvs = self._etcd_call("whereis", self._etcd.range, self._key("names", name))
        if not kvs:
            self._cache.pop(name, None)
            return None
        rec = decode_record(kvs[0].value) or {}
        owner = Owner(str(rec.get("node", "?")), kvs[0].create_revision)
        self._cache[name] = owner
        return owner

    def names(self) -> dict[str, Owner]:
        """Every cluster name this node knows of (from its watch): name -> Owner."""
        if not self._check_deadline():
            return {}
        return dict(self._cache)

    def via(self, name: str, wait: bool = True) -> ClusterName:
        """A cluster name for a child: ``ChildSpec("billing", Billing, register=cluster.via("billing"))``.

        The claim happens in the child's own greenlet before its body runs.
        If it cannot succeed at once, the child counts as started (its
        supervisor goes on) and keeps trying: with backoff while etcd is
        unreachable, so an outage delays the start and never burns the
        supervisor's restart intensity; and, with ``wait=True`` (the
        default), as a standby while another node holds the name, taking
        over when it comes free: one singleton per cluster, a hot standby on
        every other node.  With ``wait=False`` a name held elsewhere makes
        the child exit with :class:`AlreadyRegisteredError` (a failed start
        if etcd answered at once).
        """
        _check_name("via", name)
        return ClusterName(self, name, wait)

    def _claim(self, name: str, g: Any, wait: bool, release_on_exit: bool = True) -> int:
        attempt = 0
        while True:
            ev = self._name_waiters.get(name)
            if ev is None:
                ev = self._name_waiters[name] = Event()
            ev.clear()
            try:
                return self.register(name, g, release_on_exit=release_on_exit)
            except ClusterUnavailableError:
                pause = backoff(attempt, 0.05, 1.0)
            except AlreadyRegisteredError:
                if not wait:
                    raise
                pause = 1.0  # the watch wakes us as soon as the name comes free
            _release_start(g)
            ev.wait(pause)
            attempt += 1

    def _reclaim_orphans(self) -> None:
        orphans, self._orphans = self._orphans, {}
        for name, g in orphans.items():
            if g.dead:
                continue
            try:
                self.register(name, g)
            except AlreadyRegisteredError as e:
                report_event(logging.WARNING, "%r: %r lost %r to %s while fenced; stopping it", self, g, name, e.owner)
                g.kill(ShutdownExit, block=False)
            except (ClusterUnavailableError, NotRunningError, ArgumentError):
                self._orphans[name] = g

    def _drop_local_names(self, orphan: bool) -> None:
        local, self._local = self._local, {}
        for name, (token, g, hook) in local.items():
            _hook(g, hook, add=False)
            self._name_event(("lost", name, token, "fenced" if orphan else "stopped"))
            if orphan and not g.dead:
                self._orphans[name] = g

    # ------------------------------------------------------------ messages
    def _route(self, op: str, name: str) -> Owner | None:
        _check_name(op, name)
        self._require_member(op)
        held = self._local.get(name)
        if held is not None:
            return Owner(self.node, held[0])
        owner = self._cache.get(name)
        if owner is None:
            owner = self.whereis(name)
        return owner

    def _local_server(self, name: str, token: int) -> Server | None:
        held = self._local.get(name)
        if held is None:
            self.stats["dropped_no_name"] += 1
            return None
        if held[0] != token:
            self.stats["dropped_stale_token"] += 1
            return None
        g = held[1]
        return g if isinstance(g, Server) else None

    def call(self, name: str, msg: Any, timeout: float | None = 5.0) -> Any:
        """Call the Server holding ``name``, on whichever node: its reply.

        Raises :class:`CallTimeoutError` after ``timeout`` seconds,
        :class:`NotRunningError` if nobody holds the name or its owner (or
        its node) goes down before replying: at once, not at the timeout;
        :class:`ClusterUnavailableError` if this node is not a member or
        etcd cannot be reached to find the owner.
        """
        cur = getcurrent()
        if cur is gevent.get_hub():
            raise BlockingCallError(f"{self!r}.call({name!r}) from the gevent hub; spawn a greenlet")
        owner = self._route("call", name)
        if owner is None:
            raise NotRunningError(f"{self!r}.call({name!r}): no greenlet holds this cluster name")
        if owner.node == self.node:
            server = self._local_server(name, owner.token)
            if server is None:
                raise NotRunningError(f"{self!r}.call({name!r}): the local owner is not a running Server")
            return server.call(msg, timeout)
        started_at = time.monotonic()
        link = self._link_to(owner.node, timeout)
        if timeout is not None:
            timeout = max(0.0, timeout - (time.monotonic() - started_at))
        self._call_ids += 1
        call_id = self._call_ids
        result = AsyncResult()
        link.pending[call_id] = result
        try:
            try:
                link.send({"k": "call", "to": name, "tok": owner.token, "id": call_id, "t": timeout, "m": msg})
            except (OSError, ConnectionError) as e:
                raise NotRunningError(f"{self!r}.call({name!r}): the link to {owner.node!r} broke: {e}") from None
            result.wait(timeout)
            if not result.ready():
                raise CallTimeoutError(f"{self!r}.call({name!r}, {msg!r}): no reply within {timeout} s")
        finally:
            link.pending.pop(call_id, None)
        ok, value = result.get()
        if ok:
            return value
        kind, text = value if isinstance(value, list) and len(value) == 2 else ("error", repr(value))
        if kind == "timeout":
            raise CallTimeoutError(f"{self!r}.call({name!r}) on {owner.node!r}: {text}")
        raise NotRunningError(f"{self!r}.call({name!r}) on {owner.node!r}: {text}")

    def cast(self, name: str, msg: Any) -> None:
        """``handle_cast(msg)`` on the Server holding ``name``: at most once, never waits for it.

        Dropped if nobody holds the name; raises :class:`ClusterUnavailableError`
        if this node is not a member, TypeError if ``msg`` is not msgpack data.
        """
        self._one_way("cast", name, msg)

    def send(self, name: str, msg: Any) -> None:
        """``handle_info(msg)`` on the Server holding ``name``; as :meth:`cast`."""
        self._one_way("send", name, msg)

    def _one_way(self, kind: str, name: str, msg: Any) -> None:
        owner = self._route(kind, name)
        if owner is None:
            return
        if owner.node == self.node:
            server = self._local_server(name, owner.token)
            if server is not None:
                getattr(server, kind)(msg)
            return
        payload = encode_envelope({"k": kind, "to": name, "tok": owner.token, "m": msg})
        try:
            link = self._link_to(owner.node)
            if self._check_deadline():
                link.send_payload(payload)
        except (NotRunningError, OSError, ConnectionError):
            pass  # at most once: the owner's node is going or gone

    # ------------------------------------------------------------ topics
    def subscribe(self, topic: str, subscriber: Any) -> None:
        """Deliver every message published on ``topic`` (on any node) to ``subscriber``.

        A :class:`Server` gets it through ``send(msg)`` and is unsubscribed
        when it exits; a function is called as ``fn(msg)`` in the greenlet
        reading the link, so it must not block.
        """
        _check_name("subscribe", topic)
        if not callable(subscriber) and not isinstance(subscriber, Server):
            raise TypeError(f"{self!r}.subscribe({topic!r}, {subscriber!r}): pass a Server or a function")
        subs = self._topics.setdefault(topic, [])
        if subscriber not in subs:
            subs.append(subscriber)

    def unsubscribe(self, topic: str, subscriber: Any) -> None:
        """Stop delivering ``topic`` to ``subscriber``."""
        subs = self._topics.get(topic)
        if subs and subscriber in subs:
            subs.remove(subscriber)
            if not subs:
                del self._topics[topic]

    def publish(self, topic: str, msg: Any) -> int:
        """Send ``msg`` to the subscribers of ``topic`` on this node and every node that is up.

        At most once per subscriber.  Returns the number of nodes it was
        handed to (this one included).
        """
        _check_name("publish", topic)
        self._require_member("publish")
        payload = encode_envelope({"k": "pub", "topic": topic, "m": msg})
        self._deliver_topic(topic, msg)
        reached = 1
        for node in list(self._view.nodes):
            try:
                self._link_to(node).send_payload(payload)
                reached += 1
            except (NotRunningError, OSError, ConnectionError):
                self.stats["publish_failed"] += 1
        return reached

    def bridge_topics(self, topics: Any, channel: str = "greentree.topics") -> None:
        """Carry a :class:`greentree.websocket.Topics` across the cluster.

        After this, a ``topics.publish(topic, body)`` on any node reaches the
        members of ``topic`` connected to every node that is up (at most
        once each): the local fan-out happens at once, then the message goes
        to the other nodes on the cluster topic ``channel``, where each
        node's bridge delivers it locally.  Topic names and bodies must be
        msgpack data.  One channel carries every topic: a broadcast costs one
        message per other node, whoever is in the room there.

        ``topics`` is any object with a ``remote`` hook attribute and a
        ``deliver(topic, body)`` method (the WebSocket package's Topics).
        """
        _check_name("bridge_topics", channel)
        if not callable(getattr(topics, "deliver", None)) or not hasattr(topics, "remote"):
            raise ArgumentError(f"{self!r}.bridge_topics({topics!r}): expected a greentree.websocket.Topics")
        if topics.remote is not None:
            raise ArgumentError(f"{self!r}.bridge_topics(): {topics!r} already has a remote hook; bridge it once")
        node = self.node

        def remote(topic: Any, body: Any) -> None:
            try:
                self.publish(channel, [node, topic, body])
            except ClusterUnavailableError:
                pass  # fenced or not joined: the local members already have it (at most once)

        def on_message(msg: Any) -> None:
            origin, topic, body = msg
            if origin != node:  # this node's members got it from the local fan-out
                topics.deliver(topic, body)

        self.subscribe(channel, on_message)
        topics.remote = remote

    def _deliver_topic(self, topic: str, msg: Any) -> None:
        for sub in list(self._topics.get(topic, ())):
            if isinstance(sub, Server):
                if sub.dead:
                    self.unsubscribe(topic, sub)
                else:
                    sub.send(msg)
                continue
            try:
                sub(msg)
            except Exception as e:
                report_event(logging.ERROR, "%r: subscriber %r of %r failed: %r", self, sub, topic, e)

    # ------------------------------------------------------------ receiving
    def _on_envelope(self, link: Link, env: dict) -> None:
        kind = env["k"]
        if kind == "reply":
            result = link.pending.pop(env["id"], None)
            if result is not None:
                result.set((env["ok"], env["m"]))
            return
        refusal = None
        if not self._check_deadline():
            self.stats["dropped_not_member"] += 1
            refusal = "the receiving node is not a member (fenced)"
        elif self._view.is_stale(link.peer, link.incarnation):
            self.stats["dropped_stale_sender"] += 1
            refusal = f"the sender {link.peer!r} incarnation {link.incarnation} is gone"
        if kind == "pub":
            if refusal is None:
                self._deliver_topic(env["topic"], env["m"])
            return
        server = None if refusal is not None else self._local_server(env["to"], env["tok"])
        if kind == "call":
            if server is None:
                self._reply(link, env["id"], False, ["noproc", refusal or f"no running Server holds {env['to']!r} "
                                                      f"with token {env['tok']} on node {self.node!r}"])
            else:
                self._group.spawn(self._serve_call, link, env, server)
        elif server is not None:
            getattr(server, kind)(env["m"])

    def _serve_call(self, link: Link, env: dict, server: Server) -> None:
        try:
            self._reply(link, env["id"], True, server.call(env["m"], env["t"]))
        except CallTimeoutError as e:
            self._reply(link, env["id"], False, ["timeout", str(e)])
        except GreentreeError as e:
            self._reply(link, env["id"], False, ["noproc", str(e)])

    def _reply(self, link: Link, call_id: int, ok: bool, value: Any) -> None:
        try:
            try:
                link.send({"k": "reply", "id": call_id, "ok": ok, "m": value})
            except TypeError as e:
                link.send({"k": "reply", "id": call_id, "ok": False, "m": ["error", str(e)]})
        except (OSError, ConnectionError):
            pass


def _hook(g: Any, hook: Any, add: bool) -> None:
    if hook is None:
        return
    if isinstance(g, Greenlet):
        (g.gt_add_exit_hook if add else g.gt_remove_exit_hook)(hook)
    else:
        (g.rawlink if add else g.unlink)(hook)


def _release_start(g: Any) -> None:
    """A standby (or a child waiting out an etcd outage) counts as started:
    its supervisor goes on with its other work.  The child's own
    ``started()`` later finds no handshake pending and does nothing."""
    signal = getattr(g, "_gt_signal_started", None)
    if signal is not None:
        signal(None)


class ClusterName:
    """``cluster.via(name)``: claims a cluster name in the child's start.

    Give it as a child's ``register``; the claim runs in the child's greenlet
    before its body (see :meth:`Cluster.via`).
    """

    __slots__ = ("cluster", "name", "wait", "release_on_exit")

    #: ``bind`` never blocks its caller: the claim runs in the child's greenlet.
    nonblocking = True

    def __init__(self, cluster: Cluster, name: str, wait: bool = True, *, release_on_exit: bool = True):
        self.cluster = cluster
        self.name = name
        self.wait = wait
        self.release_on_exit = release_on_exit

    def bind(self, greenlet: Any) -> None:
        """Arrange the claim: now if called from ``greenlet`` itself, else first thing in its run."""
        if getcurrent() is greenlet:
            self._claim_for(greenlet)
            return
        if not isinstance(greenlet, gevent.Greenlet) or greenlet.started:
            raise ArgumentError(f"{self!r}.bind({greenlet!r}): needs a gevent Greenlet that has not started")
        claim = self._claim_for
        if isinstance(greenlet, Greenlet):
            # Inside greentree's child wrapper, so a failed claim is the child's
            # exit like any other.  (The one place that knows the wrapper's slot.)
            body = greenlet._gt_body
            if body is None:
                body = functools.partial(type(greenlet)._run, greenlet)

            def claim_then_body(*args: Any, **kwargs: Any) -> Any:
                claim(greenlet)
                return body(*args, **kwargs)

            greenlet._gt_body = claim_then_body
        else:
            run = greenlet._run  # gevent's slot for the body

            def claim_then_run(*args: Any, **kwargs: Any) -> Any:
                claim(greenlet)
                return run(*args, **kwargs)

            greenlet._run = claim_then_run

    def _claim_for(self, greenlet: Any) -> int:
        """The claim, run in ``greenlet`` before its body."""
        return self.cluster._claim(self.name, greenlet, self.wait, self.release_on_exit)

    def whereis(self) -> Owner | None:
        return self.cluster.whereis(self.name)

    def call(self, msg: Any, timeout: float | None = 5.0) -> Any:
        return self.cluster.call(self.name, msg, timeout)

    def cast(self, msg: Any) -> None:
        self.cluster.cast(self.name, msg)

    def send(self, msg: Any) -> None:
        self.cluster.send(self.name, msg)

    def __repr__(self) -> str:
        return f"Cluster(node={self.cluster.node!r}).via({self.name!r})"
