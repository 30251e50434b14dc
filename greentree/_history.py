"""A checker for cluster histories: the names promise, verified after the fact.

A history is a list of events (dicts), each with a wall-clock time ``t``
taken on one machine, as the nodes and the test harness recorded them:

* ``{"ev": "acquire", "t", "node", "inc", "name", "token"}``: ``register``
  (or a ``via`` claim) returned ``token`` for ``name`` to incarnation
  ``inc`` of ``node``;
* ``{"ev": "release", "t", "node", "inc", "name"}``: the owner let the name
  go (exited, unregistered, or its node was fenced);
* ``{"ev": "end", "t", "node", "inc", "t_end"?}``: the incarnation stopped
  acting as a member at ``t_end`` (default ``t``): fenced at its lease
  deadline, stopped, or killed (recorded by whoever killed it);
* ``{"ev": "accept", "t", "node", "inc", "name", "token"}``: a message for
  ``name`` was delivered by the owner holding ``token``.

:func:`check` returns the violations (an empty list means the history keeps
the promises):

1. per name, tokens strictly increase in the order they were granted, and
   never repeat;
2. per name, no two ownership intervals overlap (an interval runs from
   ``acquire`` to the first ``release`` of that name by that incarnation or
   the end of the incarnation);
3. no message is accepted with a stale token: outside its owner's
   interval, or after a greater token of the name was granted.

>>> h = [
...     {"ev": "acquire", "t": 1.0, "node": "a", "inc": 1, "name": "x", "token": 5},
...     {"ev": "end", "t": 2.0, "node": "a", "inc": 1},
...     {"ev": "acquire", "t": 3.0, "node": "b", "inc": 2, "name": "x", "token": 9},
...     {"ev": "accept", "t": 3.5, "node": "b", "inc": 2, "name": "x", "token": 9},
... ]
>>> check(h)
[]
>>> check(h + [{"ev": "accept", "t": 3.6, "node": "a", "inc": 1, "name": "x", "token": 5}])
["accept of 'x' token 5 at 3.6 on a/1: outside its ownership [1.0, 2.0)"]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["check", "Interval", "intervals"]

_INF = float("inf")
_KINDS = ("acquire", "release", "end", "accept")


class Interval:
    """One grant of a name: who held which token, from when until when."""

    __slots__ = ("name", "token", "node", "inc", "start", "end")

    def __init__(self, name: str, token: int, node: str, inc: Any, start: float, end: float = _INF):
        self.name, self.token, self.node, self.inc, self.start, self.end = name, token, node, inc, start, end

    def __repr__(self) -> str:
        return f"Interval({self.name!r}, token={self.token}, {self.node}/{self.inc}, [{self.start}, {self.end}))"


def _validate(history: Iterable[dict]) -> list[dict]:
    out = []
    for i, ev in enumerate(history):
        if not isinstance(ev, dict) or not isinstance(ev.get("ev"), str) or not isinstance(ev.get("t"), (int, float)):
            raise ValueError(f"history event #{i} is malformed: {ev!r} (needs a kind ev and a time t)")
        if ev["ev"] in _KINDS:  # other kinds ("join", "late") are notes for humans
            out.append(ev)
    return sorted(out, key=lambda e: e["t"])


def intervals(history: Iterable[dict]) -> list[Interval]:
    """The ownership intervals of a history, in grant order."""
    events = _validate(history)
    ends: dict[tuple, float] = {}
    for ev in events:
        if ev["ev"] == "end":
            key = (ev["node"], ev["inc"])
            ends[key] = min(ends.get(key, _INF), float(ev.get("t_end", ev["t"])))
    out: list[Interval] = []
    open_: dict[tuple, Interval] = {}
    for ev in events:
        key = (ev.get("node"), ev.get("inc"))
        if ev["ev"] == "acquire":
            iv = Interval(ev["name"], ev["token"], ev["node"], ev["inc"], ev["t"], ends.get(key, _INF))
            out.append(iv)
            open_[key + (ev["name"],)] = iv
        elif ev["ev"] == "release":
            k = key + (ev["name"],)
            if k in open_:
                iv = open_.pop(k)
                iv.end = min(iv.end, ev["t"])
    return out


def check(history: Iterable[dict], max_overlap: float = 0.0) -> list[str]:
    """Every violation of the names and messages promises in ``history``.

    ``max_overlap`` (seconds) is the bounded-overlap mode of a Redis
    cluster: two owners of a name may overlap that long (and the old one
    may accept messages that long after the new grant) without a violation.
    Tokens must still grow and never repeat.

    >>> h = [
    ...     {"ev": "acquire", "t": 1.0, "node": "a", "inc": 1, "name": "x", "token": 5},
    ...     {"ev": "acquire", "t": 1.9, "node": "b", "inc": 2, "name": "x", "token": 9},
    ...     {"ev": "end", "t": 2.0, "node": "a", "inc": 1},
    ... ]
    >>> len(check(h)), check(h, max_overlap=0.5)
    (1, [])
    """
    events = _validate(history)
    ivs = intervals(events)
    problems: list[str] = []
    by_name: dict[str, list[Interval]] = {}
    for iv in ivs:
        by_name.setdefault(iv.name, []).append(iv)
    for name, grants in by_name.items():
        seen: set[int] = set()
        for prev, cur in zip(grants, grants[1:], strict=False):
            if cur.token <= prev.token:
                problems.append(
                    f"{name!r}: token {cur.token} granted to {cur.node}/{cur.inc} at {cur.start} is not "
                    f"greater than token {prev.token} granted earlier to {prev.node}/{prev.inc}"
                )
        for iv in grants:
            if iv.token in seen:
                problems.append(f"{name!r}: token {iv.token} was granted twice")
            seen.add(iv.token)
        ordered = sorted(grants, key=lambda iv: iv.start)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1:]:
                if b.start >= a.end - max_overlap:
                    break
                problems.append(
                    f"{name!r}: {a.node}/{a.inc} (token {a.token}, [{a.start}, {a.end})) and "
                    f"{b.node}/{b.inc} (token {b.token}, from {b.start}) owned it at the same time"
                )
    for ev in events:
        if ev["ev"] != "accept":
            continue
        name, token, t = ev["name"], ev["token"], ev["t"]
        where = f"accept of {name!r} token {token} at {t} on {ev['node']}/{ev['inc']}"
        mine = [iv for iv in by_name.get(name, ()) if iv.token == token and iv.node == ev["node"]]
        if not mine:
            problems.append(f"{where}: no such grant")
            continue
        iv = mine[0]
        if not iv.start <= t < iv.end:
            problems.append(f"{where}: outside its ownership [{iv.start}, {iv.end})")
            continue
        newer = [g for g in by_name[name] if g.token > token and g.start <= t - max_overlap]
        if newer:
            problems.append(f"{where}: token {newer[0].token} was already granted to {newer[0].node} at {newer[0].start}")
    return problems
