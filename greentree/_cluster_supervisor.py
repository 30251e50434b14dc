"""ClusterSupervisor: children placed on the nodes of a :class:`Cluster`.

The decisions (placement, who restarts what, rebalancing moves, the record
formats) are pure functions in :mod:`greentree._cluster_placement`; this
module is the shell that feeds them the view the cluster keeps and carries
out their answers.

Theory of operation.  Every node runs the same ClusterSupervisor (same
name) as a child of its tree, after the cluster's own child.  Its state
lives in the cluster's key space (``cluster.records``): ``spec`` records
(one per child, not leased: they outlive any node), ``member`` records (one
per node running this supervisor, on the node's lease: they vanish when it
dies) and ``handoff`` records (a leaving node's child state for the next
owner).  Each child owns its id as a cluster name, claimed in its own
greenlet before its body runs, with ``release_on_exit=False``: the name
outlives the greenlet until this module has finished with it (deleted the
spec of a child that is done, written the handoff record), so nobody else
can start the child before that bookkeeping is visible in etcd.

One greenlet (the *runner*) handles everything that changes this node's
share, one event at a time: the watch reporting a change, a child's exit,
the node rejoining.  It never decides uniqueness: etcd's create-if-absent
on the name does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import GreenletExit
from gevent.event import Event

from . import _cluster_placement as P
from ._child import Greenlet, started
from ._cluster import Cluster, ClusterName, ClusterUnavailableError
from ._cluster_placement import ClusterChild
from ._dynamic import DynamicSupervisor
from ._errors import (
    AlreadyRegisteredError,
    AlreadyStartedError,
    ArgumentError,
    ChildNotFoundError,
    ChildSpecError,
    GreentreeError,
    RestartIntensityExceeded,
    StartChildError,
)
from ._exits import ShutdownExit
from ._policy import RESTART, Intensity, Restart, decide
from ._report import report_event
from ._spec import BRUTAL_KILL, ChildSpec

__all__ = ["ClusterSupervisor", "ClusterChild"]


class _Runner(Greenlet):
    handshake = True
    _gt_catch = True

    def _run(self, sup: ClusterSupervisor) -> None:
        sup._serve()


class _Claim(ClusterName):
    """The children's name binder: an exit hook for the runner, then the claim
    (``wait=False``, the name kept past the exit).  A child that finds its id
    taken (another node won the race) exits quietly, as a shutdown."""

    __slots__ = ("sup",)

    def __init__(self, sup: ClusterSupervisor, cid: str):
        super().__init__(sup.cluster, cid, wait=False, release_on_exit=False)
        self.sup = sup

    def bind(self, greenlet: Any) -> None:
        self.sup._live.add(greenlet)
        greenlet.gt_add_exit_hook(self._exited)
        super().bind(greenlet)

    def _claim_for(self, greenlet: Any) -> int:
        try:
            return super()._claim_for(greenlet)
        except AlreadyRegisteredError as e:
            raise ShutdownExit(f"{self.name!r} runs elsewhere ({e.owner})") from None

    def _exited(self, child: Any) -> None:  # in the dying greenlet: never blocks
        self.sup._exits.append((self.name, child))
        self.sup._wake.set()


class ClusterSupervisor:
    """Children spread over the nodes of a :class:`Cluster`, each running once.

    ::

        cluster = greentree.Cluster("etcd://127.0.0.1:2379", node="web-1", secret=b"...")
        jobs = greentree.ClusterSupervisor(cluster, "jobs", placement="hash")
        root = greentree.Supervisor([cluster.child_spec(), jobs.child_spec()])
        ...
        jobs.start_child(ChildSpec("report:42", Report, 42, restart="transient"))
        jobs.which_children()   # [ClusterChild('report:42', 'web-1', 17, 'running')]
        cluster.call("report:42", "status")
        jobs.terminate_child("report:42")

    Run the same ClusterSupervisor (same ``name``) on every node that may
    run its children.  A child spec is stored in etcd (its ``start`` as an
    import path, its arguments as msgpack data), so any node can start it;
    each child runs on one live node and owns its id as a cluster name with
    a fencing token (``cluster.call(id, ...)`` reaches it).

    * ``placement``: ``"hash"`` (rendezvous hashing over the member nodes)
      or ``"least_loaded"`` (the member running the fewest of its
      children).  A child that exits and is restarted restarts on its node.
    * Restarts follow the child's ``restart`` (permanent, transient,
      temporary) as in any supervisor; more than ``max_restarts`` restarts
      on one node within ``max_seconds`` make this node's ClusterSupervisor
      exit with :class:`RestartIntensityExceeded` (its children go to the
      other nodes).
    * When a node dies, its children start again on the live members after
      its lease expires (ttl), each once.  A node cut off from etcd stops
      its children at its local lease deadline, before that.
    * When a node leaves gracefully (its tree stops, e.g. SIGTERM through
      :func:`greentree.run`), each of its children is stopped, its
      ``handoff()`` method (if it has one) returns msgpack data (at most
      ``handoff_limit`` bytes), and the next owner starts with
      ``handoff=state`` among its keyword arguments.
    * ``rebalance=True``: when a node joins, children move to it by the same
      graceful handoff (never killed mid-work).  Off by default.

    See the how-to *Cluster supervisor* for the promises and their limits.
    """

    def __init__(self, cluster: Cluster, name: str, *, placement: str = "hash", rebalance: bool = False,
                 max_restarts: int = 3, max_seconds: float = 5.0, handoff_limit: int = P.MAX_HANDOFF,
                 shutdown: float = 30.0, clock: Callable[[], float] = time.monotonic):
        who = f"ClusterSupervisor({name!r})"
        if not isinstance(cluster, Cluster):
            raise ArgumentError(f"{who}: cluster must be a greentree.Cluster, not {cluster!r}")
        if not isinstance(name, str) or not name or "/" in name:
            raise ArgumentError(f"{who}: name must be a non-empty str without '/'")
        if placement not in P.PLACEMENTS:
            raise ArgumentError(f"{who}: placement must be one of {P.PLACEMENTS}, not {placement!r}")
        if not isinstance(max_restarts, int) or max_restarts < 0:
            raise ArgumentError(f"{who}: max_restarts must be an int >= 0, not {max_restarts!r}")
        if not isinstance(handoff_limit, int) or handoff_limit <= 0:
            raise ArgumentError(f"{who}: handoff_limit must be a positive int (bytes), not {handoff_limit!r}")
        self.cluster = cluster
        self.name = name
        self.placement = placement
        self.rebalance = bool(rebalance)
        self.handoff_limit = handoff_limit
        self.shutdown = float(shutdown)
        self._clock = clock
        self._intensity = Intensity(max_restarts, max_seconds)
        self._k_spec = f"cs.{name}.spec"
        self._k_member = f"cs.{name}.member"
        self._k_handoff = f"cs.{name}.handoff"
        self._kinds = frozenset({"nodes", "names", self._k_spec, self._k_member, self._k_handoff})
        self._wake = Event()
        self._exits: list[tuple[str, Any]] = []
        self._running: dict[str, Any] = {}      # id -> child greenlet on this node
        self._specs: dict[str, dict] = {}       # id -> decoded spec (of what we started)
        self._last: dict[str, str] = {}         # id -> the node that ran it last, as seen here
        # Children whose exit is ours to handle (restart or forget): not those
        # this module stops itself (terminate, handoff) or the fence kills.
        self._live: set[Any] = set()
        self._member_inc: int | None = None
        self._members_seen: set[str] | None = None
        self._leaving = False
        self._sup: DynamicSupervisor | None = None
        self._runner: Any = None

    def __repr__(self) -> str:
        return f"<ClusterSupervisor {self.name!r} node={self.cluster.node!r} running={len(self._running)}>"

    # ------------------------------------------------------------ the runner
    def child_spec(self, id: Any = None) -> ChildSpec:
        """This node's part as a child; put it after ``cluster.child_spec()``.

        Its ``shutdown`` (30 s) bounds the graceful leave: every local child
        is stopped and handed off within it.
        """
        return ChildSpec(f"cluster_supervisor:{self.name}" if id is None else id, _Runner, self,
                         shutdown=self.shutdown, start_timeout=None)

    def _serve(self) -> None:
        if self._runner is not None and not self._runner.dead:
            raise GreentreeError(f"{self!r} is already running; give each node's tree one child_spec()")
        self._runner = gevent.getcurrent()
        self._leaving = False
        self._members_seen = None
        self._sup = DynamicSupervisor(name=f"ClusterSupervisor({self.name!r})", max_restarts=0)
        self._sup.start()
        cluster = self.cluster
        cluster.on_change(self._on_change)
        cluster.monitor_names(self._on_name)
        cluster.monitor_nodes(self._on_node)
        graceful = False
        try:
            started()
            self._wake.set()
            while True:
                self._wake.wait()
                self._wake.clear()
                self._step()
        except GreenletExit:
            graceful = True
            raise
        finally:
            cluster.remove_on_change(self._on_change)
            cluster.demonitor_nodes(self._on_node)
            try:
                self._leave(graceful)
            finally:
                cluster.demonitor_names(self._on_name)
                self._sup.stop(timeout=self.shutdown)

    def _on_change(self, kinds: frozenset) -> None:
        if kinds & self._kinds:
            self._wake.set()

    def _on_node(self, note: tuple) -> None:
        if note[0] in ("joined", "fenced"):
            self._wake.set()

    def _on_name(self, note: tuple) -> None:
        # A node cut off from etcd stops its children at its local deadline
        # (called synchronously by the fence), before the lease expires and
        # other nodes may start them.
        if note[0] == "lost" and note[3] == "fenced":
            child = self._running.get(note[1])
            if child is not None and not child.dead:
                self._live.discard(child)
                child.kill(ShutdownExit("the node lost its cluster lease"), block=False)

    # ------------------------------------------------------------ one step
    def _step(self) -> None:
        cluster = self.cluster
        up = cluster.state == "up"
        exits, self._exits = self._exits, []
        for cid, child in exits:
            self._child_exited(cid, child, up)
        if not up:
            return
        try:
            self._ensure_member()
            self._reconcile()
        except ClusterUnavailableError:
            pass  # the next join (or watch event) wakes us again

    def _ensure_member(self) -> None:
        inc = self.cluster.incarnation
        if self._leaving or (self._member_inc == inc and self.cluster.node in self.cluster.records(self._k_member)):
            return
        self.cluster.put_record(self._k_member, self.cluster.node, b"", leased=True)
        self._member_inc = inc

    def _child_exited(self, cid: str, child: Any, up: bool) -> None:
        if self._running.get(cid) is child:
            del self._running[cid]
        if child not in self._live:
            return  # stopped by us (terminate, handoff) or by the fence: handled there
        self._live.discard(child)
        cluster = self.cluster
        if not up or cluster.token(cid) is None:
            return  # it never got its name (another node won it), or the node is not a member
        spec = self._specs.get(cid)
        exit = child._gt_exit_rec
        kind = exit.kind if exit is not None else "crash"
        restart = Restart(spec["restart"] if spec is not None else "temporary")
        try:
            if decide(restart, kind) == RESTART:
                if self._intensity.add(self._clock()):
                    raise RestartIntensityExceeded(
                        f"{self!r}: more than {self._intensity.max_restarts} restarts in "
                        f"{self._intensity.max_seconds} s on node {cluster.node!r}; last: {cid!r} ({kind}); "
                        "its children go to the other nodes")
                self._last[cid] = cluster.node  # restarts stay on this node
            else:
                cluster.delete_record(self._k_spec, cid)  # done: before the name goes, so nobody restarts it
                self._specs.pop(cid, None)
            cluster.unregister(cid)
        except ClusterUnavailableError:
            pass  # fenced meanwhile: the name went with the lease

    def _view(self) -> tuple[dict[str, bytes], set[str], dict[str, Any]]:
        cluster = self.cluster
        specs = cluster.records(self._k_spec)
        live = set(cluster.nodes()) | {cluster.node}
        members = set(cluster.records(self._k_member)) & live
        if self._leaving:
            members.discard(cluster.node)
        names = cluster.names()
        owners = {cid: names[cid] for cid in specs if cid in names}
        return specs, members, owners

    def _reconcile(self) -> None:
        cluster = self.cluster
        me = cluster.node
        specs, members, owner_recs = self._view()
        owners = {cid: o.node for cid, o in owner_recs.items()}
        for cid, node in owners.items():
            self._last[cid] = node
        for cid in [c for c in self._last if c not in specs]:
            del self._last[cid]
        # Children whose spec is gone (terminate_child): stop them here.
        for cid in [c for c in self._running if c not in specs]:
            self._stop_child(cid, handoff_to=None, write=False)
            self._delete_quietly(self._k_handoff, cid)
        handoffs: dict[str, str | None] = {}
        for cid, data in cluster.records(self._k_handoff).items():
            rec = P.decode_handoff(data, self.handoff_limit)
            handoffs[cid] = rec["to"] if rec is not None else None
        unowned = [cid for cid in specs if cid not in owners and cid not in self._running]
        plan = P.assign(unowned, members, owners=owners, last=self._last, handoffs=handoffs,
                        placement=self.placement)
        for cid in sorted(c for c, node in plan.items() if node == me):
            self._start(cid, specs[cid])
        seen, self._members_seen = self._members_seen, set(members)
        if self.rebalance and seen is not None and members - seen and me in members:
            owned = {cid: node for cid, node in owners.items()}
            for cid, target in sorted(P.rebalance(members, owned, self.placement).items()):
                if owned.get(cid) == me and cid in self._running:
                    report_event(logging.INFO, "%r: moving %r to %r (a node joined)", self, cid, target)
                    self._stop_child(cid, handoff_to=target, write=True)

    def _start(self, cid: str, data: bytes) -> None:
        spec = P.decode_spec(data)
        if spec is None:
            report_event(logging.ERROR, "%r: the stored spec of %r is unreadable; not starting it", self, cid)
            return
        try:
            start = P.resolve(spec["start"])
        except Exception as e:
            report_event(logging.ERROR, "%r: cannot import %s for %r on this node: %r", self, spec["start"], cid, e)
            return
        kwargs = dict(spec["kwargs"])
        handoff = self.cluster.records(self._k_handoff).get(cid)
        rec = P.decode_handoff(handoff, self.handoff_limit) if handoff is not None else None
        if rec is not None and rec.get("state") is not None:
            kwargs["handoff"] = rec["state"]
        shutdown = spec.get("shutdown")
        local = ChildSpec(cid, start, *spec["args"], kwargs=kwargs, restart="temporary",
                          shutdown=BRUTAL_KILL if shutdown == "brutal_kill" else shutdown,
                          start_timeout=spec.get("start_timeout"), register=_Claim(self, cid))
        self._specs[cid] = spec
        assert self._sup is not None
        try:
            child = self._sup.start_child(local)
        except StartChildError:
            return  # its exit (another node won the name, or its start failed) is an event too
        self._running[cid] = child
        if child.dead:  # its exit hook ran before we recorded it: the event is queued
            return
        if handoff is not None:
            self._delete_quietly(self._k_handoff, cid)

    def _delete_quietly(self, kind: str, cid: str) -> None:
        try:
            self.cluster.delete_record(kind, cid)
        except ClusterUnavailableError:
            pass

    def _stop_child(self, cid: str, handoff_to: str | None, write: bool) -> None:
        """Stop a local child; with ``write``, store its handoff state first; then free its name."""
        child = self._running.pop(cid, None)
        if child is None:
            return
        self._live.discard(child)
        assert self._sup is not None
        try:
            if not child.dead:
                try:
                    self._sup.terminate_child(child)
                except ChildNotFoundError:
                    child.join()
            state = None
            if write:
                fn = getattr(child, "handoff", None)
                if callable(fn):
                    try:
                        state = fn()
                    except Exception as e:
                        report_event(logging.ERROR, "%r: %r.handoff() failed: %r; handing off no state",
                                     self, child, e)
                try:
                    data = P.encode_handoff(self.cluster.node, handoff_to, state, self.handoff_limit)
                except (TypeError, ValueError) as e:
                    report_event(logging.ERROR, "%r: the handoff state of %r is not msgpack data within "
                                 "%d bytes (%s); handing off no state", self, cid, self.handoff_limit, e)
                    data = P.encode_handoff(self.cluster.node, handoff_to, None, self.handoff_limit)
                self.cluster.put_record(self._k_handoff, cid, data)  # before the name goes
            self.cluster.unregister(cid)
        except ClusterUnavailableError:
            pass  # fenced: the name went with the lease, and no handoff is possible

    # ------------------------------------------------------------ leaving
    def _leave(self, graceful: bool) -> None:
        """Stop every local child; hand each off if this is a graceful leave."""
        self._leaving = True
        cluster = self.cluster
        up = cluster.state == "up"
        if up:
            try:
                cluster.delete_record(self._k_member, cluster.node)  # nobody places children here now
            except ClusterUnavailableError:
                up = False
        self._member_inc = None
        specs, members, owner_recs = self._view() if up else ({}, set(), {})
        owners = {cid: o.node for cid, o in owner_recs.items()}
        for cid in sorted(self._running):
            target = P.successor(cid, members, owners, self.placement) if graceful else None
            if target is not None:
                owners[cid] = target
            self._stop_child(cid, handoff_to=target, write=graceful and up and cid in specs)
        self._exits.clear()

    # ------------------------------------------------------------ API
    def start_child(self, spec: ChildSpec) -> None:
        """Store ``spec`` in the cluster; a node starts it (this call does not wait for that).

        ``spec.start`` must be importable by name on every node (a class or
        function defined at module level) and its arguments msgpack data;
        the child's id (a ``str``) becomes its cluster name.  Raises
        :class:`ChildSpecError` for a spec that cannot be stored,
        :class:`AlreadyStartedError` if a child with this id exists, and
        :class:`ClusterUnavailableError` if this node is not a member.
        """
        who = f"{self!r}.start_child"
        if not isinstance(spec, ChildSpec):
            raise ChildSpecError(f"{who}(): expected a ChildSpec, not {spec!r}")
        cid = spec.id
        if not isinstance(cid, str) or not cid:
            raise ChildSpecError(f"{who}(): the id {cid!r} must be a non-empty str (it becomes a cluster name)")
        if spec.register is not None:
            raise ChildSpecError(f"{who}({cid!r}): register= is not allowed: each child owns its id as a cluster name")
        if spec.significant:
            raise ChildSpecError(f"{who}({cid!r}): significant children are not supported in a ClusterSupervisor")
        try:
            path = P.import_path(spec.start)
        except ValueError as e:
            raise ChildSpecError(f"{who}({cid!r}): start cannot be stored: {e}") from None
        shutdown = "brutal_kill" if spec.shutdown is BRUTAL_KILL else spec.shutdown
        try:
            data = P.encode_spec(path, spec.args, spec.kwargs, spec.restart.value, shutdown, spec.start_timeout)
        except (TypeError, ValueError) as e:
            raise ChildSpecError(f"{who}({cid!r}): the arguments must be msgpack data (numbers, str, bytes, "
                                 f"lists, dicts with str keys): {e}") from None
        if not self.cluster.create_record(self._k_spec, cid, data):
            owner = self.cluster.names().get(cid)
            raise AlreadyStartedError(f"{who}({cid!r}): a child with this id exists"
                                      + (f" (running on {owner.node!r})" if owner else ""))
        self._wake.set()

    def terminate_child(self, id: str, *, timeout: float | None = 5.0) -> None:
        """Stop the child ``id`` wherever it runs and forget its spec.

        Waits up to ``timeout`` seconds until its name is free (None: do not
        wait).  Raises :class:`ChildNotFoundError` if there is no such child.
        """
        cluster = self.cluster
        if id not in cluster.records(self._k_spec):
            raise ChildNotFoundError(f"{self!r}.terminate_child({id!r}): no such child "
                                     f"(children: {sorted(cluster.records(self._k_spec))[:10]})")
        cluster.delete_record(self._k_spec, id)
        self._wake.set()
        if timeout is None:
            return
        deadline = time.monotonic() + timeout
        changed = Event()

        def on_change(kinds: frozenset) -> None:
            if "names" in kinds:
                changed.set()

        cluster.on_change(on_change)
        try:
            while id in cluster.names() or id in self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                changed.clear()
                changed.wait(min(left, 0.1))
        finally:
            cluster.remove_on_change(on_change)

    def which_children(self) -> list[ClusterChild]:
        """Every child across the cluster: ``[ClusterChild(id, node, token, state)]``, sorted by id.

        As this node last heard from etcd (its watch).  Raises
        :class:`ClusterUnavailableError` if this node is not a member.
        """
        cluster = self.cluster
        if cluster.state != "up":
            raise ClusterUnavailableError(f"{self!r}.which_children(): node {cluster.node!r} is {cluster.state}; "
                                          "retry when the cluster is up")
        specs = cluster.records(self._k_spec)
        handoffs = cluster.records(self._k_handoff)
        names = cluster.names()
        out = []
        for cid in sorted(specs):
            owner = names.get(cid)
            if owner is not None:
                out.append(ClusterChild(cid, owner.node, owner.token, "running"))
            else:
                out.append(ClusterChild(cid, None, None, "handoff" if cid in handoffs else "pending"))
        return out

    def local_children(self) -> dict[str, Any]:
        """The children running on this node: id -> the child (a Server or greenlet)."""
        return {cid: c for cid, c in self._running.items() if not c.dead}
