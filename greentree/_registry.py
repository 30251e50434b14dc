"""Registry: names for greenlets, freed the moment their owner dies.

Theory of operation.  Two dicts, both O(1) per operation:

* ``_table``: key -> ``(greenlet, value)`` for a unique registry, or
  key -> ``{greenlet: [value, ...]}`` for a duplicate one;
* ``_owned``: greenlet -> the one key it holds, or a private ``_KeySet``
  when it holds several (most owners hold one name: no set per owner).

A greenlet is watched once per registry, however many keys it holds, and only
while it holds one: a greentree :class:`Greenlet` through its exit hook
(called in the dying greenlet's own ``finally``, so the names are gone before
anyone can see it dead, and it survives ``unlink_all()``), a plain
:class:`gevent.Greenlet` through one ``rawlink`` of a single bound method, as
gevent's ``Group`` does.  The hook runs in the dying greenlet or in the hub:
it only deletes dict entries and never blocks or raises.  Lookups also check
``dead`` and drop an owner whose notification has not run yet, so a lookup
never returns a dead greenlet.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import gevent
import greenlet as _raw_greenlet
from gevent import Greenlet as _GeventGreenlet
from gevent import get_hub, getcurrent

from . import _telemetry
from ._child import Child, Greenlet, backstop
from ._errors import (
    AlreadyRegisteredError,
    AlreadyStartedError,
    ChildSpecError,
    GreentreeError,
    NotRunningError,
)
from ._report import report_event

__all__ = ["Registry", "RegistryError", "Via"]

_MISSING = object()
_T_CLAIM = _telemetry.slot(_telemetry.REGISTRY_CLAIM)
_T_CONFLICT = _telemetry.slot(_telemetry.REGISTRY_CONFLICT)
#: Every Registry alive in this process (read by greentree.metrics at scrape time).
live_registries: weakref.WeakSet = weakref.WeakSet()

#: Via.bind's inline path for a free key and a live greentree child (tests turn it off to compare).
_FAST_BIND = True

#: How many times ``resolve_or_start`` retries when the owner it was handed died meanwhile.
RESOLVE_ATTEMPTS = 5


class RegistryError(GreentreeError, ValueError):
    """A registry was used wrongly: an unknown ``keys`` mode, an unhashable
    key, a unique-only operation on a duplicate registry, or an owner that
    cannot be watched (a raw ``greenlet.greenlet``).  The caller's fault;
    nothing changed."""


class _KeySet(set):
    """The keys of an owner holding more than one (a private type, so it is
    never mistaken for a user's key)."""

    __slots__ = ()


def _is_dead(g) -> bool:
    # A greentree Greenlet whose exit hooks ran is as good as dead: it is in
    # its last ``finally`` and can hold no name.
    return g.dead or getattr(g, "_gt_done", False)


class Registry:
    """A table of names for greenlets: unique or duplicate keys, freed when the owner dies.

    >>> import gevent
    >>> import greentree
    >>> reg = greentree.Registry(name="instances")
    >>> worker = greentree.Greenlet(gevent.sleep, 3600)
    >>> reg.register(("i-1", "connection"), "v1", greenlet=worker)
    >>> reg.whereis(("i-1", "connection")) is worker, reg.lookup(("i-1", "connection"))[0][1]
    (True, 'v1')
    >>> worker.start(); worker.kill()
    >>> reg.whereis(("i-1", "connection")), reg.count()
    (None, 0)

    ``keys="unique"`` (the default): a key names at most one greenlet and
    :meth:`register` raises :class:`AlreadyRegisteredError` (carrying
    ``.owner``) if it is taken.  ``keys="duplicate"``: any number of greenlets
    (and the same greenlet several times) may register a key; that is a
    pub/sub topic, see :meth:`dispatch`.  Keys are any hashable value, e.g.
    ``(instance_id, "connection")``: nothing global is minted per connection.

    Names are freed the moment their owner ends, however it ends: returns,
    crashes, is killed, or is killed before it ever ran.  Owners are gevent
    Greenlets (greentree's or gevent's) or greentree supervisors; a raw
    ``greenlet.greenlet``, including the main greenlet, gives no exit
    notification and is refused.

    Every operation is O(1) (``lookup`` of a duplicate key is O(entries)).
    A registry is plain data with no greenlet of its own: put it where both
    the registering children and their callers can reach it.

    Caveat: a plain gevent Greenlet's names are freed by a ``rawlink`` from
    the hub, so they linger until the next trip round the hub after its death
    (lookups already skip it), and are only freed by a lookup if the greenlet
    calls ``unlink_all()``.  greentree Greenlets have neither caveat.
    """

    def __init__(self, keys: str = "unique", name: Any = None):
        if keys not in ("unique", "duplicate"):
            raise RegistryError(
                f"Registry({name!r}): keys must be 'unique' or 'duplicate', not {keys!r}"
            )
        self.name = name
        self.kind = keys
        self._unique = keys == "unique"
        self._table: dict = {}
        self._owned: dict = {}
        self._entries = 0  # duplicate registries: number of (key, greenlet, value) entries
        self._on_exit = self._owner_exited  # one bound method shared by every watched greenlet
        live_registries.add(self)  # for scrape-time metrics (greentree.metrics)

    # ------------------------------------------------------------ naming
    def __str__(self) -> str:
        if self.name is not None:
            return f"Registry({self.name!r})"
        return f"Registry at {id(self):#x}"

    def __repr__(self) -> str:
        return f"<{self} keys={self.kind!r} count={self.count()}>"

    def __len__(self) -> int:
        return self.count()

    # ------------------------------------------------------------ watching owners
    def _owner(self, greenlet, op: str, key: Any):
        g = getcurrent() if greenlet is None else greenlet
        if not isinstance(g, (_GeventGreenlet, Child)):
            if isinstance(g, _raw_greenlet.greenlet):
                who = "the gevent hub" if g is get_hub() else (
                    "the main greenlet" if g.parent is None else f"the raw greenlet {g!r}")
                raise RegistryError(
                    f"{self}.{op}({key!r}): {who} cannot hold a name: it gives no exit notification, "
                    "so the name could never be freed; register from a gevent or greentree Greenlet, "
                    "or pass greenlet=<that greenlet>"
                )
            raise RegistryError(f"{self}.{op}({key!r}): greenlet must be a gevent Greenlet, not {g!r}")
        if _is_dead(g):
            raise NotRunningError(f"{self}.{op}({key!r}): {g!r} has exited and cannot hold a name")
        return g

    def _watch(self, g) -> None:
        if not isinstance(g, Greenlet) and isinstance(g, Child):
            g.gt_add_exit_hook(self._on_exit)  # a supervisor: its exit hooks always run
        elif isinstance(g, Greenlet):
            g.gt_add_exit_hook(self._on_exit)
            if g.gr_frame is None and g._gt_rec is None:
                # Never switched to yet and unsupervised: if it is killed before
                # it runs, only a link tells us.  (A supervisor links the same
                # backstop itself; a second one would be harmless, _gt_exit
                # runs once.)
                g.rawlink(backstop)
        else:
            g.rawlink(self._on_exit)

    def _unwatch(self, g) -> None:
        if isinstance(g, Child):
            g.gt_remove_exit_hook(self._on_exit)
        else:
            g.unlink(self._on_exit)

    def _own(self, g, key) -> None:
        keys = self._owned.get(g, _MISSING)
        if keys is _MISSING:
            self._owned[g] = key
            self._watch(g)
        elif type(keys) is _KeySet:
            keys.add(key)
        elif keys != key:
            self._owned[g] = _KeySet((keys, key))

    def _disown(self, g, key) -> None:
        keys = self._owned.get(g, _MISSING)
        if keys is _MISSING:
            return
        if type(keys) is _KeySet:
            keys.discard(key)
            if len(keys) == 1:
                self._owned[g] = next(iter(keys))
            return
        if keys == key:
            del self._owned[g]
            self._unwatch(g)

    def _owner_exited(self, g) -> None:
        """The exit hook: drop every entry of ``g``.  Runs in the dying
        greenlet or in the hub, so it must never block or raise."""
        try:
            self._drop(g)
        except Exception as e:  # a user key whose __eq__/__hash__ raised: never kill the hub
            report_event(logging.ERROR, "%s: freeing the names of %r failed: %r", self, g, e)

    def _drop(self, g) -> None:
        keys = self._owned.pop(g, _MISSING)
        if keys is _MISSING:
            return
        if type(keys) is not _KeySet:
            self._remove_entry(keys, g)  # one name (each child of a connection tree): no tuple, no loop
            return
        for key in keys:
            self._remove_entry(key, g)

    def _remove_entry(self, key, g) -> bool:
        table = self._table
        if self._unique:
            cur = table.get(key)
            if cur is None or cur[0] is not g:
                return False
            del table[key]
            return True
        by_owner = table.get(key)
        if not by_owner:
            return False
        values = by_owner.pop(g, None)
        if values is None:
            return False
        self._entries -= len(values)
        if not by_owner:
            del table[key]
        return True

    def _check_key(self, op: str, key) -> None:
        try:
            hash(key)
        except TypeError:
            raise RegistryError(
                f"{self}.{op}({key!r}): keys must be hashable (a str, int or tuple of them)"
            ) from None

    def _need_unique(self, op: str) -> None:
        if not self._unique:
            raise RegistryError(
                f"{self}.{op}(): only a unique registry names one greenlet per key; "
                "this one has duplicate keys, use lookup() or dispatch()"
            )

    # ------------------------------------------------------------ registering
    def register(self, key: Any, value: Any = None, greenlet=None) -> None:
        """Register ``key`` (with ``value``) for the calling greenlet, or for ``greenlet``.

        A unique key already held by a live greenlet raises
        :class:`AlreadyRegisteredError`, whose ``owner`` is that greenlet
        (even if it is the caller: unregister first to change the value).
        """
        self._check_key("register", key)
        g = self._owner(greenlet, "register", key)
        self._put(key, value, g, strict=True)

    def _put(self, key, value, g, strict: bool) -> None:
        table = self._table
        if self._unique:
            cur = table.get(key)
            if cur is not None:
                owner = cur[0]
                if _is_dead(owner):
                    self._drop(owner)
                elif owner is g and not strict:
                    table[key] = (g, value)
                    return
                else:
                    if _T_CONFLICT:
                        _telemetry.execute(_telemetry.REGISTRY_CONFLICT, {"count": 1},
                                           {"registry": self, "key": key, "owner": owner, "claimant": g})
                    raise AlreadyRegisteredError(
                        f"{self}: key {key!r} is already registered by {owner!r}; "
                        "wait for it to exit, or use a duplicate registry",
                        owner,
                    )
            table[key] = (g, value)
        else:
            by_owner = table.get(key)
            if by_owner is None:
                table[key] = by_owner = {}
            values = by_owner.get(g)
            if values is None:
                by_owner[g] = [value]
            else:
                values.append(value)
            self._entries += 1
        self._own(g, key)
        if _T_CLAIM:
            _telemetry.execute(_telemetry.REGISTRY_CLAIM, {"count": 1},
                               {"registry": self, "key": key, "owner": g, "value": value})

    def unregister(self, key: Any, greenlet=None) -> None:
        """Remove the calling greenlet's (or ``greenlet``'s) entries for ``key``.

        Does nothing if it holds none, as Elixir's ``Registry.unregister``.
        """
        self._check_key("unregister", key)
        g = getcurrent() if greenlet is None else greenlet
        if self._remove_entry(key, g):
            self._disown(g, key)

    # ------------------------------------------------------------ reading
    def lookup(self, key: Any) -> list:
        """Return ``[(greenlet, value), ...]`` for ``key`` (``[]`` if nobody holds it)."""
        self._check_key("lookup", key)
        cur = self._table.get(key)
        if cur is None:
            return []
        if self._unique:
            if _is_dead(cur[0]):
                self._drop(cur[0])
                return []
            return [cur]
        out = []
        dead = None
        for g, values in cur.items():
            if _is_dead(g):
                dead = [g] if dead is None else dead + [g]
                continue
            for v in values:
                out.append((g, v))
        if dead:
            for g in dead:
                self._drop(g)
        return out

    def whereis(self, key: Any):
        """Return the greenlet registered under ``key`` in a unique registry, or None."""
        # ``lookup(key)[0][0]`` without the list and the helper calls: the
        # supervisors' and the WebSocket layer's most frequent registry call.
        if not self._unique:
            self._need_unique("whereis")
        try:
            cur = self._table.get(key)
        except TypeError:
            self._check_key("lookup", key)  # an unhashable key: RegistryError, as lookup()
            raise
        if cur is None:
            return None
        g = cur[0]
        if _is_dead(g):
            self._drop(g)
            return None
        return g

    def keys(self, greenlet) -> list:
        """Return the keys ``greenlet`` holds here (``[]`` if none, or if it died)."""
        keys = self._owned.get(greenlet, _MISSING)
        if keys is _MISSING:
            return []
        if _is_dead(greenlet):
            self._drop(greenlet)
            return []
        return list(keys) if type(keys) is _KeySet else [keys]

    def values(self, key: Any, greenlet) -> list:
        """Return the values ``greenlet`` registered under ``key`` (``[]`` if none)."""
        self._check_key("values", key)
        cur = self._table.get(key)
        if cur is None or _is_dead(greenlet):
            return []
        if self._unique:
            return [cur[1]] if cur[0] is greenlet else []
        return list(cur.get(greenlet, ()))

    def count(self) -> int:
        """How many entries the registry holds.

        Exact for owners that ran: their names go in their own ``finally``.
        An owner killed before it ever ran, or a plain gevent Greenlet, is
        counted until the hub delivers its exit (the next loop iteration);
        lookups never return it meanwhile.
        """
        return len(self._table) if self._unique else self._entries

    def dispatch(self, key: Any, fn: Callable[[list], Any]) -> None:
        """Call ``fn(entries)`` with the live ``[(greenlet, value), ...]`` of ``key``.

        Pub/sub, as Elixir's ``Registry.dispatch``: subscribers register a
        topic in a duplicate registry, a publisher dispatches to them.  ``fn``
        runs in the caller's greenlet and is not called when nobody is
        registered.

        >>> import gevent, greentree
        >>> topics = greentree.Registry(keys="duplicate")
        >>> subs = [greentree.Greenlet.spawn(gevent.sleep, 3600) for _ in range(2)]
        >>> gevent.sleep(0)  # let the subscribers run
        >>> for i, g in enumerate(subs):
        ...     topics.register("news", i, greenlet=g)
        >>> topics.dispatch("news", lambda entries: print(sorted(v for _, v in entries)))
        [0, 1]
        >>> for g in subs:
        ...     g.kill()
        >>> topics.count()
        0
        """
        entries = self.lookup(key)
        if entries:
            fn(entries)

    def describe(self) -> dict:
        """A JSON-able snapshot: name, key mode, entry and owner counts."""
        name = self.name if isinstance(self.name, (str, int, type(None))) else repr(self.name)
        return {"name": name, "keys": self.kind, "count": self.count(), "owners": len(self._owned)}

    # ------------------------------------------------------------ naming children
    def via(self, key: Any, value: Any = None) -> Via:
        """A name for a child: ``ChildSpec(..., register=registry.via(key))``.

        The supervisor binds every (re)started greenlet to ``key`` before it
        runs; a key held by another live greenlet makes the start fail with
        :class:`AlreadyStartedError` carrying the owner.  The same object
        addresses the child later: ``via.whereis()``, ``via.call(msg)``.
        """
        if not self._unique:
            self._need_unique("via")
        try:
            hash(key)
        except TypeError:
            self._check_key("via", key)
        return Via(self, key, value)

    def resolve_or_start(self, key: Any, supervisor, spec, *, timeout: float | None = None):
        """Return the greenlet registered under ``key``, or start it under ``supervisor``.

        ``supervisor`` is the supervisor, or a key under which it is
        registered in this registry (so a restarted supervisor is found
        again).  ``spec`` is started with ``register=self.via(key)`` (a spec
        naming another key is refused).  Safe when many greenlets race for the same
        key: exactly one child starts, every caller gets it.  The loser of the
        race gets :class:`AlreadyStartedError` from the supervisor, and
        resolve_or_start returns its ``.owner``.  With a start handshake the child is
        returned only once it called ``started()``, except to callers that
        found it already registered.
        """
        if not self._unique:
            self._need_unique("resolve_or_start")
        reg = spec.register
        if reg is None:
            spec = spec.replace(register=Via(self, key, None))
        elif not (isinstance(reg, Via) and reg.registry is self and reg.key == key):
            raise ChildSpecError(
                f"{self}.resolve_or_start({key!r}): spec {spec.id!r} registers {reg!r}; "
                f"leave register=None (it becomes {Via(self, key, None)!r}) or pass that name"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        last: BaseException | None = None
        attempts = 0
        while True:
            g = self.whereis(key)
            if g is not None:
                return g
            sup = self._resolve_supervisor(key, supervisor, deadline)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return sup.start_child(spec, timeout=left)
            except AlreadyStartedError as e:
                owner = e.owner
                if owner is not None and not _is_dead(owner):
                    return owner
                last = e  # the owner died meanwhile: try again
            except NotRunningError as e:
                if supervisor is sup:
                    raise
                last = e  # the named supervisor is restarting: wait for the new one
            attempts += 1
            if attempts >= RESOLVE_ATTEMPTS and last is not None:
                raise last

    def _resolve_supervisor(self, key: Any, supervisor: Any, deadline: float | None):
        """The supervisor itself, or the live one registered here under the key ``supervisor``."""
        if hasattr(supervisor, "start_child"):
            return supervisor
        while True:
            sup = self.whereis(supervisor)
            if sup is not None and not getattr(sup, "dead", False) and hasattr(sup, "start_child"):
                return sup
            if deadline is not None and time.monotonic() >= deadline:
                raise NotRunningError(
                    f"{self}.resolve_or_start({key!r}): no supervisor is registered under {supervisor!r}"
                )
            gevent.sleep(0.005)  # its own supervisor is restarting it: wait it out

    # ------------------------------------------------------------ calls by name
    def _server(self, key, op: str):
        from ._server import Server

        g = self.whereis(key)
        if g is None:
            raise NotRunningError(f"{self}.{op}({key!r}): no greenlet is registered under this key")
        if not isinstance(g, Server):
            raise RegistryError(
                f"{self}.{op}({key!r}): the owner {g!r} is not a greentree.Server; "
                "only servers answer call/cast/send"
            )
        return g

    def call(self, key: Any, msg: Any, timeout: float | None = 5.0) -> Any:
        """``Server.call`` on the server registered under ``key``.

        Raises :class:`NotRunningError` if nobody holds ``key``.
        """
        return self._server(key, "call").call(msg, timeout)

    def cast(self, key: Any, msg: Any) -> None:
        """``Server.cast`` on the server under ``key``; dropped if nobody holds it."""
        try:
            server = self._server(key, "cast")
        except NotRunningError:
            return
        server.cast(msg)

    def send(self, key: Any, msg: Any) -> None:
        """``Server.send`` on the server under ``key``; dropped if nobody holds it."""
        try:
            server = self._server(key, "send")
        except NotRunningError:
            return
        server.send(msg)


class Via:
    """A registry name: ``registry.via(key)``.  Give it to a ChildSpec (or a
    Server) as ``register=`` and use it to reach the child.

    >>> import greentree
    >>> reg = greentree.Registry(name="app")
    >>> reg.via(("i-1", "connection"))
    Registry('app').via(('i-1', 'connection'))
    >>> reg.via("x") == reg.via("x")
    True
    """

    __slots__ = ("registry", "key", "value")

    def __init__(self, registry: Registry, key: Any, value: Any = None):
        self.registry = registry
        self.key = key
        self.value = value

    #: Binding never yields: a supervisor may bind in any greenlet.
    nonblocking = True

    def bind(self, greenlet) -> None:
        """Register ``greenlet`` under the key (idempotent if it already holds it).

        The supervisor calls this for every (re)start, before the greenlet
        runs.  Raises :class:`AlreadyRegisteredError` if another live greenlet
        holds the key.
        """
        reg = self.registry
        key = self.key
        if (
            _FAST_BIND and reg._unique and not _T_CLAIM and isinstance(greenlet, Child)
            and not greenlet._gt_done and not greenlet.dead  # type: ignore[attr-defined]
            and reg._table.get(key) is None and greenlet not in reg._owned
        ):
            # The usual start of a supervised child: a live greentree child
            # that holds no name here takes a free key.  What _owner, _put,
            # _own and _watch do in that case, without their calls.
            reg._table[key] = (greenlet, self.value)
            reg._owned[greenlet] = key
            hook = reg._on_exit
            if greenlet._gt_hooks is None:
                greenlet._gt_hooks = hook
            else:
                greenlet.gt_add_exit_hook(hook)
            if isinstance(greenlet, Greenlet) and greenlet.gr_frame is None and greenlet._gt_rec is None:
                greenlet.rawlink(backstop)  # as _watch: unsupervised and never ran
            return
        g = reg._owner(greenlet, "via.bind", key)
        reg._put(key, self.value, g, strict=False)

    def whereis(self):
        """The greenlet holding this name, or None."""
        return self.registry.whereis(self.key)

    def call(self, msg: Any, timeout: float | None = 5.0) -> Any:
        """Call the server holding this name (:class:`NotRunningError` if none)."""
        return self.registry.call(self.key, msg, timeout)

    def cast(self, msg: Any) -> None:
        """Cast to the server holding this name; dropped if none."""
        self.registry.cast(self.key, msg)

    def send(self, msg: Any) -> None:
        """Send an info message to the server holding this name; dropped if none."""
        self.registry.send(self.key, msg)

    def __eq__(self, other):
        if not isinstance(other, Via):
            return NotImplemented
        return self.registry is other.registry and self.key == other.key and self.value == other.value

    def __hash__(self):
        return hash((id(self.registry), self.key))

    def __repr__(self) -> str:
        if self.value is None:
            return f"{self.registry}.via({self.key!r})"
        return f"{self.registry}.via({self.key!r}, {self.value!r})"
