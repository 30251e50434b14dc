"""``python -m greentree cluster --etcd URL nodes|names|whereis NAME``: look at a cluster.

Reads etcd only (linearizable reads); it never joins the cluster.

>>> main(["--etcd", "etcd://127.0.0.1:1/x", "frobnicate"])
Traceback (most recent call last):
  ...
SystemExit: 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from ._cluster_member import open_store
from ._cluster_proto import decode_record, node_info
from ._cluster_store import Store, StoreError, prefix_end

__all__ = ["main"]


def _listing(client: Store, prefix: str, kind: str) -> list[tuple[str, dict, int]]:
    root = f"{prefix}/{kind}/".encode()
    _rev, kvs = client.range(root, prefix_end(root))
    out = []
    for kv in kvs:
        rec = decode_record(kv.value)
        if rec is not None:
            out.append((kv.key[len(root):].decode("utf-8", "replace"), rec, kv.create_revision))
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m greentree cluster", description="Look at a greentree cluster in etcd or Redis.")
    p.add_argument("--etcd", "--url", dest="url", required=True,
                   help="etcd://host:port[,host:port...][/prefix] or redis://host:port[/db[/prefix]] (as given to Cluster)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the store (default 3)")
    p.add_argument("what", choices=["nodes", "names", "whereis"])
    p.add_argument("name", nargs="?", help="the cluster name, for whereis")
    args = p.parse_args(argv)
    if args.what == "whereis" and not args.name:
        p.error("whereis needs a NAME")
    try:
        client, prefix = open_store(args.url, ttl=3 * args.timeout, timeout=args.timeout)
    except ValueError as e:
        p.error(str(e))
    try:
        if args.what == "nodes":
            rows = []
            for name, rec, rev in _listing(client, prefix, "nodes"):
                info = node_info(name, rec, rev)
                if info is not None:
                    since = datetime.datetime.fromtimestamp(info.since, datetime.timezone.utc).isoformat(timespec="seconds")
                    rows.append({"node": name, "incarnation": rev, "address": f"{info.address[0]}:{info.address[1]}",
                                 "since": since, "leaving": bool(rec.get("leaving"))})
            _print(rows, args.json, ["node", "incarnation", "address", "since"])
        elif args.what == "names":
            rows = [{"name": name, "node": rec.get("node"), "token": rev}
                    for name, rec, rev in _listing(client, prefix, "names")]
            _print(rows, args.json, ["name", "node", "token"])
        else:
            key = f"{prefix}/names/{args.name}".encode()
            _rev, kvs = client.range(key)
            owner = decode_record(kvs[0].value) if kvs else None
            if owner is None:
                print(f"{args.name!r} is not registered in {args.url}", file=sys.stderr)
                return 1
            _print([{"name": args.name, "node": owner.get("node"), "token": kvs[0].create_revision}],
                   args.json, ["name", "node", "token"])
    except StoreError as e:
        print(f"python -m greentree cluster: {e}", file=sys.stderr)
        return 3
    finally:
        client.close()
    return 0


def _print(rows: list[dict], as_json: bool, cols: list[str]) -> None:
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    table = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
