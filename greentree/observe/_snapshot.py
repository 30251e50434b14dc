"""``/tree.json``: every tree's ``describe()``, bounded, with a version field."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from .. import __version__
from .._base import SupervisorBase
from .._errors import ArgumentError
from .._process import _live

__all__ = ["VERSION", "DEFAULT_LIMIT", "DEFAULT_BUDGET", "snapshot", "roots", "check_roots"]

#: The version of the ``/tree.json`` document; it changes when a field changes meaning.
VERSION = 1
#: Children listed per supervisor by default (the rest are counted).
DEFAULT_LIMIT = 50
#: Children listed in the whole document by default.
DEFAULT_BUDGET = 1000


def roots() -> list[SupervisorBase]:
    """Every root supervisor running in this process (started, not yet exited), in a stable order."""
    found = [p for p in list(_live) if isinstance(p, SupervisorBase) and not p.dead]
    found.sort(key=lambda s: (str(s.name), id(s)))
    return found


def check_roots(root_or_roots: Any, owner: str) -> tuple[SupervisorBase, ...] | None:
    """None (every root, found at each request), or the supervisors given."""
    if root_or_roots is None:
        return None
    given = [root_or_roots] if isinstance(root_or_roots, SupervisorBase) else root_or_roots
    try:
        given = list(given)
    except TypeError:
        given = [given]
    bad = [r for r in given if not isinstance(r, SupervisorBase)]
    if bad:
        raise ArgumentError(
            f"{owner}: expected a supervisor, a list of supervisors or None (every root), not {bad[0]!r}"
        )
    return tuple(given)


def check_limit(value: Any, what: str, owner: str, *, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise ArgumentError(f"{owner}: {what} must be an int from 0 to {most}, not {value!r}")
    return value


def snapshot(root_or_roots: Any = None, *, limit: int = DEFAULT_LIMIT, budget: int = DEFAULT_BUDGET) -> dict:
    """The ``/tree.json`` document: ``describe()`` of each tree, bounded.

    ``root_or_roots`` is a supervisor, a list of them, or None for every root
    supervisor running in this process.  Each supervisor lists at most
    ``limit`` children (those not running and the latest restarted first)
    and the document at most ``budget``; every supervisor still reports its
    ``total`` and its ``counts`` by state.  Non-blocking: call it from any
    greenlet.
    """
    trees = check_roots(root_or_roots, "greentree.observe.snapshot()")
    limit = check_limit(limit, "limit", "greentree.observe.snapshot()", most=100_000)
    budget = check_limit(budget, "budget", "greentree.observe.snapshot()", most=1_000_000)
    left = [budget]
    out = []
    for sup in roots() if trees is None else trees:
        d = sup._describe_tree(limit, left)
        d["key"] = f"{id(sup):#x}"
        out.append(d)
    return {
        "version": VERSION,
        "greentree": __version__,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "time": time.time(),
        "limit": limit,
        "budget": budget,
        "trees": out,
    }
