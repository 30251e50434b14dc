"""Pure decisions of :class:`greentree.ClusterSupervisor`: no gevent, no I/O.

Everything here is a function of a *view* (which nodes run the cluster
supervisor, which child ids exist, who owns each id now, who owned it
last, which handoffs are pending), so every node computes the same answer
from the same view.  When views differ for a moment, two nodes may both
try to start a child: etcd's create-if-absent lets one win, the other
stands down.  Placement therefore never decides uniqueness, only who tries.

* :func:`rendezvous`: the ``"hash"`` placement (highest random weight):
  when a node leaves, only its children move; when one joins, about 1/n
  of the children would move to it (only if rebalancing is on).
* :func:`assign`: who starts each child that no node owns.  A child
  handed off goes where the handoff says; a child whose last owner is
  still a member restarts there (restarts are local, as in a supervisor);
  the others go by the placement.
* :func:`rebalance`: which running children move when a node joins (only
  when the user opted in; always by graceful handoff).
* the spec and handoff records: msgpack with a version field and limits.

>>> members = ["a", "b", "c"]
>>> assign(["x", "y"], members, owners={}, last={}, handoffs={}, placement="hash")
{'x': 'c', 'y': 'a'}
>>> assign(["x"], members, owners={}, last={"x": "c"}, handoffs={}, placement="hash")
{'x': 'c'}
>>> assign(["x"], members, owners={}, last={"x": "c"}, handoffs={"x": "a"}, placement="hash")
{'x': 'a'}
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import msgpack

__all__ = [
    "PLACEMENTS", "ClusterChild", "rendezvous", "assign", "rebalance", "successor",
    "encode_spec", "decode_spec", "encode_handoff", "decode_handoff", "import_path", "resolve",
    "MAX_SPEC", "MAX_HANDOFF",
]

PLACEMENTS = ("hash", "least_loaded")
VERSION = 1
#: The largest stored child spec (import path + msgpack arguments), in bytes.
MAX_SPEC = 64 * 1024
#: The largest handoff state, in bytes (msgpack), by default.
MAX_HANDOFF = 256 * 1024


class ClusterChild(NamedTuple):
    """One child of a :class:`ClusterSupervisor`, as :meth:`which_children` sees it.

    ``node`` and ``token`` are None while no node runs it; ``state`` is
    ``"running"``, ``"pending"`` (stored, not running anywhere yet: being
    placed, restarting, or waiting for a node) or ``"handoff"`` (its state is
    on its way to ``node``-to-be).
    """

    id: str
    node: str | None
    token: int | None
    state: str


def _weight(node: str, key: str) -> bytes:
    return hashlib.blake2b(f"{node}\0{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()


def rendezvous(key: str, nodes: Iterable[str]) -> str | None:
    """The node with the highest weight for ``key`` (None if there is none).

    >>> rendezvous("job-1", ["a", "b", "c"]) == rendezvous("job-1", ["c", "a", "b"])
    True
    >>> rendezvous("job-1", [])
    """
    best = None
    best_w = b""
    for node in nodes:
        w = _weight(node, key)
        if best is None or (w, node) > (best_w, best):
            best, best_w = node, w
    return best


def _loads(members: Iterable[str], owners: Mapping[str, str]) -> dict[str, int]:
    loads = {m: 0 for m in members}
    for node in owners.values():
        if node in loads:
            loads[node] += 1
    return loads


def assign(
    unowned: Iterable[str],
    members: Iterable[str],
    *,
    owners: Mapping[str, str],
    last: Mapping[str, str],
    handoffs: Mapping[str, str | None],
    placement: str,
) -> dict[str, str]:
    """Who should start each child in ``unowned`` (ids no node runs): id -> node.

    ``members``: the nodes running this cluster supervisor (not leaving);
    ``owners``: id -> node for the children running now (the load);
    ``last``: id -> the node that ran it last; ``handoffs``: id -> the node
    a graceful handoff named (or None).  Empty if there is no member.

    >>> assign(["p", "q", "r"], ["a", "b"], owners={"z": "a"}, last={}, handoffs={}, placement="least_loaded")
    {'p': 'b', 'q': 'a', 'r': 'b'}
    """
    nodes = sorted(set(members))
    if not nodes:
        return {}
    member = set(nodes)
    loads = _loads(nodes, owners)
    out: dict[str, str] = {}
    rest = []
    for cid in sorted(set(unowned)):
        target = handoffs.get(cid)
        if target not in member:
            target = last.get(cid)
        if target in member:
            assert target is not None
            out[cid] = target
            loads[target] += 1
        else:
            rest.append(cid)
    for cid in rest:
        if placement == "hash":
            target = rendezvous(cid, nodes)
            assert target is not None
        else:
            target = min(nodes, key=lambda n: (loads[n], n))
        out[cid] = target
        loads[target] += 1
    return out


def successor(cid: str, members: Iterable[str], owners: Mapping[str, str], placement: str) -> str | None:
    """Where a child of a leaving node should go (None if no other member).

    ``members`` excludes the leaving node.

    >>> successor("x", ["b", "c"], {"y": "b"}, "least_loaded")
    'c'
    >>> successor("x", [], {}, "hash")
    """
    nodes = sorted(set(members))
    if not nodes:
        return None
    if placement == "hash":
        return rendezvous(cid, nodes)
    loads = _loads(nodes, owners)
    return min(nodes, key=lambda n: (loads[n], n))


def rebalance(members: Iterable[str], owners: Mapping[str, str], placement: str) -> dict[str, str]:
    """The moves that even out the children after a node joined: id -> new node.

    ``"hash"``: every child whose hash target is not its owner moves there.
    ``"least_loaded"``: children move one at a time from the most to the
    least loaded member until loads differ by at most one.  Only children
    owned by members move.

    >>> rebalance(["a", "b"], {"x": "a", "y": "a", "z": "a"}, "least_loaded")
    {'x': 'b'}
    """
    nodes = sorted(set(members))
    if len(nodes) < 2:
        return {}
    owned = {cid: node for cid, node in owners.items() if node in set(nodes)}
    moves: dict[str, str] = {}
    if placement == "hash":
        for cid, node in sorted(owned.items()):
            target = rendezvous(cid, nodes)
            if target is not None and target != node:
                moves[cid] = target
        return moves
    loads = _loads(nodes, owned)
    by_node: dict[str, list[str]] = {n: [] for n in nodes}
    for cid, node in sorted(owned.items()):
        by_node[node].append(cid)
    while True:
        high = max(nodes, key=lambda n: (loads[n], n))
        low = min(nodes, key=lambda n: (loads[n], n))
        if loads[high] - loads[low] <= 1:
            return moves
        cid = by_node[high].pop(0)
        moves[cid] = low
        loads[high] -= 1
        loads[low] += 1


# ---------------------------------------------------------------- records
def import_path(obj: Any) -> str:
    """``"module:qualname"`` of an importable class or function, or ValueError why not.

    >>> import_path(rendezvous)
    'greentree._cluster_placement:rendezvous'
    >>> import_path(lambda: 0)
    Traceback (most recent call last):
      ...
    ValueError: <lambda> is not importable by name: define it at module level
    """
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise ValueError(f"{obj!r} has no module and name: pass a class or function defined in a module")
    if "<" in qualname:
        raise ValueError(f"{qualname} is not importable by name: define it at module level")
    if module == "__main__":
        raise ValueError(f"{qualname} is defined in __main__, which other nodes cannot import: move it to a module")
    path = f"{module}:{qualname}"
    try:
        found = resolve(path)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{path} cannot be imported back ({e})") from None
    if found is not obj:
        raise ValueError(f"{path} imports a different object than {obj!r}")
    return path


def resolve(path: str) -> Any:
    """Import ``"module:qualname"`` (ImportError or AttributeError if it cannot be)."""
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, strict_types=False)


def _unpack(data: bytes, limit: int) -> Any:
    if not isinstance(data, (bytes, bytearray)) or len(data) > limit:
        return None
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True,
                               max_str_len=limit, max_bin_len=limit, max_array_len=limit,
                               max_map_len=limit, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData):
        return None


def encode_spec(start: str, args: tuple, kwargs: dict, restart: str, shutdown: Any,
                start_timeout: float | None, limit: int = MAX_SPEC) -> bytes:
    """A child spec as stored: raises TypeError (not msgpack data) or ValueError (too big).

    >>> decode_spec(encode_spec("m:f", (1, "a"), {"k": [2]}, "transient", 5.0, None))["args"]
    [1, 'a']
    >>> encode_spec("m:f", (object(),), {}, "permanent", 5.0, 5.0)
    Traceback (most recent call last):
      ...
    TypeError: can not serialize 'object' object
    """
    rec = {"v": VERSION, "start": start, "args": list(args), "kwargs": kwargs, "restart": restart,
           "shutdown": shutdown, "start_timeout": start_timeout}
    data = _pack(rec)
    if len(data) > limit:
        raise ValueError(f"the spec is {len(data)} bytes of msgpack, over the limit of {limit}")
    return data


_SPEC_FIELDS = {"start": str, "args": list, "kwargs": dict, "restart": str}


def decode_spec(data: bytes, limit: int = MAX_SPEC) -> dict | None:
    """A stored spec, validated field by field; None if it is not one we can read.

    >>> decode_spec(b"junk") is None
    True
    """
    rec = _unpack(data, limit)
    if not isinstance(rec, dict) or rec.get("v") != VERSION:
        return None
    for field, typ in _SPEC_FIELDS.items():
        if not isinstance(rec.get(field), typ):
            return None
    if rec["restart"] not in ("permanent", "transient", "temporary") or ":" not in rec["start"]:
        return None
    if not all(isinstance(k, str) for k in rec["kwargs"]):
        return None
    shutdown = rec.get("shutdown")
    if shutdown is not None and shutdown != "brutal_kill" and not isinstance(shutdown, (int, float)):
        return None
    st = rec.get("start_timeout")
    if st is not None and not isinstance(st, (int, float)):
        return None
    return rec


def encode_handoff(source: str, target: str | None, state: Any, limit: int = MAX_HANDOFF) -> bytes:
    """A handoff record: raises TypeError (not msgpack data) or ValueError (over ``limit``).

    >>> decode_handoff(encode_handoff("a", "b", {"n": 3}))
    {'v': 1, 'from': 'a', 'to': 'b', 'state': {'n': 3}}
    """
    data = _pack({"v": VERSION, "from": source, "to": target, "state": state})
    if len(data) > limit + 256:
        raise ValueError(f"the handoff state is {len(data)} bytes of msgpack, over the limit of {limit}")
    return data


def decode_handoff(data: bytes, limit: int = MAX_HANDOFF) -> dict | None:
    """A handoff record, or None if it is not one we can read.

    >>> decode_handoff(b"\\x01") is None
    True
    """
    rec = _unpack(data, limit + 256)
    if not isinstance(rec, dict) or rec.get("v") != VERSION or not isinstance(rec.get("from"), str):
        return None
    if rec.get("to") is not None and not isinstance(rec["to"], str):
        return None
    return rec
