"""``python -m greentree tree``: a ``/tree.json`` document as an indented text tree (pure)."""

from __future__ import annotations

from typing import Any

__all__ = ["render_text"]


def _secs(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{value / 60:.1f}m"
    if value < 86400:
        return f"{value / 3600:.1f}h"
    return f"{value / 86400:.1f}d"


def _name(tree: dict) -> str:
    kind = "".join(w.capitalize() for w in str(tree.get("kind", "supervisor")).split("_"))
    name = tree.get("name")
    return kind if name is None else f"{kind} {name!r}"


def _counts(tree: dict) -> str:
    counts = tree.get("counts") or {}
    parts = [f"{n} {state}" for state, n in counts.items() if n]
    text = f"{tree.get('total', 0)} children" + (": " + ", ".join(parts) if parts else "")
    listed = len(tree.get("children") or ())
    if listed < tree.get("total", 0):
        text += f" (listing {listed})"
    return text


def _header(tree: dict) -> str:
    i = tree.get("intensity") or {}
    bits = [_name(tree), str(tree.get("strategy", "")), str(tree.get("state")), _counts(tree),
            f"restarts {i.get('recent_restarts', 0)}/{i.get('max_restarts', '?')} in {i.get('max_seconds', '?')}s"]
    if tree.get("zombies"):
        bits.append(f"ZOMBIES {tree['zombies']}")
    if tree.get("mailbox"):
        bits.append(f"mailbox {tree['mailbox']}")
    if tree.get("exit"):
        bits.append(f"exit: {tree['exit']}")
    return "  ".join(b for b in bits if b)


def _child(c: dict) -> str:
    bits = [str(c.get("id")), str(c.get("state")), str(c.get("restart")), f"restarts {c.get('restarts', 0)}"]
    if c.get("uptime") is not None:
        bits.append(f"up {_secs(c['uptime'])}")
    if c.get("last_exit"):
        bits.append(f"last exit: {c['last_exit']}")
    return "  ".join(bits)


def _tree(tree: dict, prefix: str, out: list[str], exits: int) -> None:
    children = tree.get("children") or []
    more = tree.get("total", 0) - len(children)
    recent = (tree.get("recent_exits") or [])[:exits]
    for n, c in enumerate(children):
        last = n == len(children) - 1 and not more and not recent
        out.append(prefix + ("└── " if last else "├── ") + _child(c))
        sub = c.get("tree")
        if sub is not None:
            inner = prefix + ("    " if last else "│   ")
            out.append(inner + _header(sub))
            _tree(sub, inner, out, exits)
    if more:
        out.append(prefix + ("└── " if not recent else "├── ") + f"… {more} more not listed (counted above)")
    if recent:
        out.append(prefix + "└── recent exits:")
        for e in recent:
            out.append(prefix + f"      {_secs(e.get('ago'))} ago  {e.get('id')}  {e.get('kind')}  {e.get('reason')}")


def render_text(doc: dict, *, source: str = "", exits: int = 5) -> str:
    """A ``/tree.json`` document (see :func:`snapshot`) as text: one indented tree per root.

    >>> doc = {"version": 1, "pid": 7, "host": "h", "trees": [
    ...     {"name": "app", "kind": "supervisor", "strategy": "one_for_one", "state": "running",
    ...      "intensity": {"recent_restarts": 1, "max_restarts": 3, "max_seconds": 5.0},
    ...      "total": 2, "counts": {"running": 2},
    ...      "recent_exits": [{"ago": 1.5, "id": "db", "kind": "crash", "reason": "OSError: gone"}],
    ...      "children": [
    ...         {"id": "db", "state": "running", "restart": "permanent", "restarts": 1, "uptime": 1.5,
    ...          "last_exit": "OSError: gone"},
    ...         {"id": "web", "state": "running", "restart": "permanent", "restarts": 0, "uptime": 90}]}]}
    >>> print(render_text(doc))
    greentree  ·  pid 7 on h  ·  1 tree
    <BLANKLINE>
    Supervisor 'app'  one_for_one  running  2 children: 2 running  restarts 1/3 in 5.0s
    ├── db  running  permanent  restarts 1  up 1.5s  last exit: OSError: gone
    ├── web  running  permanent  restarts 0  up 1.5m
    └── recent exits:
          1.5s ago  db  crash  OSError: gone
    """
    if not isinstance(doc, dict) or doc.get("version") != 1:
        version = doc.get("version") if isinstance(doc, dict) else None
        return f"not a greentree tree.json version 1 document (version: {version!r})"
    trees = doc.get("trees") or []
    head = ["greentree"] + ([source] if source else [])
    head.append(f"pid {doc.get('pid')} on {doc.get('host')}")
    head.append(f"{len(trees)} tree" + ("" if len(trees) == 1 else "s"))
    out = ["  ·  ".join(head)]
    if not trees:
        out += ["", "no supervision tree is running"]
    for tree in trees:
        out += ["", _header(tree)]
        _tree(tree, "", out, exits)
    return "\n".join(out)
