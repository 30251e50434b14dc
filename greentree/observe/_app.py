"""The read-only WSGI app (``/``, ``/tree.json``, the page's two files) and ``serve()``."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from .._errors import ArgumentError
from ._snapshot import DEFAULT_BUDGET, DEFAULT_LIMIT, check_limit, check_roots, snapshot

__all__ = ["wsgi_app", "serve"]

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    # Nothing but this app's own files: no CDN, no inline script, no framing by other sites.
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "connect-src 'self'; img-src 'self' data:; frame-ancestors 'self'"),
    ("Referrer-Policy", "no-referrer"),
]


#: Connections ``serve()`` handles at once (more wait to be accepted).
MAX_CONNECTIONS = 64


def _static() -> dict[str, tuple[bytes, str]]:
    files = {}
    folder = resources.files(__package__).joinpath("static")
    for name in ("index.html", "observe.js", "observe.css"):
        body = folder.joinpath(name).read_bytes()
        files["/" + name] = (body, _TYPES[name[name.rindex("."):]])
    files["/"] = files.pop("/index.html")
    return files


def wsgi_app(root_or_roots: Any = None, *, limit: int = DEFAULT_LIMIT, budget: int = DEFAULT_BUDGET):
    """A read-only WSGI app that shows supervision trees live.

    ``root_or_roots``: a supervisor, a list of them, or None for every root
    supervisor running in the process (looked up at each request, so trees
    started later appear).  ``/`` is the page, ``/tree.json`` the snapshot
    (see :func:`snapshot`; ``?limit=N&budget=M`` override the defaults).
    Mount it anywhere: it honours ``SCRIPT_NAME``, and the page uses
    relative URLs.  It only reads (``GET`` and ``HEAD``); it has no
    authentication, so serve it on localhost or behind your own.

    >>> app = wsgi_app()
    >>> from wsgiref.util import setup_testing_defaults
    >>> env = {"PATH_INFO": "/nope"}; setup_testing_defaults(env)
    >>> seen = []
    >>> body = app(env, lambda status, headers: seen.append(status))
    >>> seen
    ['404 Not Found']
    """
    trees = check_roots(root_or_roots, "greentree.observe.wsgi_app()")
    limit = check_limit(limit, "limit", "greentree.observe.wsgi_app()", most=100_000)
    budget = check_limit(budget, "budget", "greentree.observe.wsgi_app()", most=1_000_000)
    files = _static()

    def app(environ: dict, start_response: Any) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO") or ""
        if method not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", b"read-only: GET and HEAD only\n",
                          "text/plain; charset=utf-8", method, [("Allow", "GET, HEAD")])
        if path == "":  # mounted at /trees and asked for /trees: the page's relative URLs need the slash
            location = environ.get("SCRIPT_NAME", "") + "/"
            qs = environ.get("QUERY_STRING")
            return _reply(start_response, "301 Moved Permanently", b"", "text/plain; charset=utf-8", method,
                          [("Location", location + ("?" + qs if qs else ""))])
        if path == "/tree.json":
            try:
                doc = snapshot(trees, **_query(environ.get("QUERY_STRING", ""), limit, budget))
            except ArgumentError as e:
                return _reply(start_response, "400 Bad Request", f"{e}\n".encode(), "text/plain; charset=utf-8",
                              method)
            body = json.dumps(doc, separators=(",", ":"), default=repr).encode()
            return _reply(start_response, "200 OK", body, "application/json", method)
        found = files.get(path)
        if found is None:
            return _reply(start_response, "404 Not Found", b"not found: the page is at ./ and the data at ./tree.json\n",
                          "text/plain; charset=utf-8", method)
        return _reply(start_response, "200 OK", found[0], found[1], method)

    return app


def _query(qs: str, limit: int, budget: int) -> dict:
    args = {"limit": limit, "budget": budget}
    for key, values in parse_qs(qs).items():
        if key in args:
            try:
                args[key] = int(values[-1])
            except ValueError:
                raise ArgumentError(f"/tree.json: {key} must be an integer, not {values[-1]!r}") from None
    return args


def _reply(start_response: Any, status: str, body: bytes, ctype: str, method: str,
           extra: list | None = None) -> list[bytes]:
    headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), *_HEADERS, *(extra or ())]
    start_response(status, headers)
    return [b""] if method == "HEAD" else [body]


def serve(root_or_roots: Any = None, *, host: str = "127.0.0.1", port: int = 0,
          limit: int = DEFAULT_LIMIT, budget: int = DEFAULT_BUDGET):
    """Serve :func:`wsgi_app` with gevent's WSGI server; return the started server.

    Bound to ``127.0.0.1`` by default: the page and its JSON show child ids,
    exit reasons and error messages, which may carry data you do not want
    on the network, and the app has no authentication.  Pass
    ``host="0.0.0.0"`` only behind a firewall or a proxy that authenticates.
    ``port=0`` picks a free port: read it from ``server.server_port``.
    Stop it with ``server.stop()``.

    >>> server = serve()
    >>> server.server_host, server.server_port > 0
    ('127.0.0.1', True)
    >>> server.stop()
    """
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIServer

    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ArgumentError(f"greentree.observe.serve(): expected a host name and a port 0-65535, "
                            f"not host={host!r}, port={port!r}")
    app = wsgi_app(root_or_roots, limit=limit, budget=budget)
    # A pool, not gevent's default spawn: stop() then also ends the browsers' keep-alive
    # connections, and a burst of clients cannot start unbounded greenlets.
    server = WSGIServer((host, port), app, log=None, spawn=Pool(MAX_CONNECTIONS))
    server.start()
    return server
