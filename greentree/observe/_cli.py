"""``python -m greentree tree --url http://127.0.0.1:PORT/tree.json [--watch]``: a node's trees as text.

>>> main(["--url", "http://127.0.0.1:1/tree.json", "--interval", "0"])
Traceback (most recent call last):
  ...
SystemExit: 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from ._text import render_text

__all__ = ["main", "fetch"]

#: The most a tree.json document may be (the server bounds it far below this).
MAX_BYTES = 32 * 1024 * 1024


def fetch(url: str, timeout: float, limit: int | None = None) -> dict:
    """GET and decode ``url`` (a ``/tree.json``); raise OSError or ValueError with a readable message."""
    if limit is not None:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.urlencode([*urllib.parse.parse_qsl(parts.query), ("limit", str(limit))])
        url = urllib.parse.urlunsplit(parts._replace(query=query))
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read(MAX_BYTES + 1)
    if len(body) > MAX_BYTES:
        raise ValueError(f"{url} sent more than {MAX_BYTES} bytes; is it a greentree tree.json?")
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise ValueError(f"{url} did not send a JSON object; is it a greentree tree.json?")
    return doc


def _frame(url: str, timeout: float, limit: int | None, exits: int) -> tuple[str, bool]:
    try:
        doc = fetch(url, timeout, limit)
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        return f"python -m greentree tree: cannot read {url}: {reason}", False
    return render_text(doc, source=url, exits=exits), True


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m greentree tree",
                                description="Print the supervision trees a greentree.observe app serves.")
    p.add_argument("--url", required=True, help="the app's tree.json, e.g. http://127.0.0.1:8000/tree.json")
    p.add_argument("--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between redraws with --watch (default 1)")
    p.add_argument("--limit", type=int, default=None, help="children listed per supervisor (the server's default: 50)")
    p.add_argument("--exits", type=int, default=5, help="recent exits shown per supervisor (default 5)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server (default 5)")
    args = p.parse_args(argv)
    if args.interval <= 0 or args.timeout <= 0:
        p.error("--interval and --timeout must be > 0")
    if args.limit is not None and args.limit < 0 or args.exits < 0:
        p.error("--limit and --exits must be >= 0")
    if not args.url.startswith(("http://", "https://")):
        p.error(f"--url must be an http:// or https:// URL, not {args.url!r}")
    if not args.watch:
        text, ok = _frame(args.url, args.timeout, args.limit, args.exits)
        print(text, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 3
    live = sys.stdout.isatty()
    try:
        while True:
            text, _ok = _frame(args.url, args.timeout, args.limit, args.exits)
            if live:
                sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
            else:
                sys.stdout.write(text + "\n\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
