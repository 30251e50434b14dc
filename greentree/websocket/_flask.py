"""A Flask route that becomes a supervised WebSocket connection (like flask-sock, with a tree).

::

    from flask import Flask
    from greentree.websocket import WebSocketService, flask_route

    app = Flask(__name__)
    chat = WebSocketService(on_message, codec="json")
    flask_route(app, "/chat", chat)

The view runs inside Flask's request handling, so ``before_request`` hooks
(authentication, sessions) run first and may abort with 401/403 as for any
route; the response the view returns performs the upgrade when Flask hands
it the environ, and blocks until the connection's tree ends.  Needs Flask
(not a greentree dependency) and a server that exposes the socket: pywsgi
with :class:`~greentree.websocket.WebSocketHandler`, or gunicorn ``-k gevent``.
"""

from __future__ import annotations

from typing import Any

from ._handler import upgrade

__all__ = ["flask_route"]


def flask_route(app: Any, rule: str, service: Any, *, endpoint: str | None = None, **options: Any) -> None:
    """Register ``rule`` on a Flask app (or blueprint) as a WebSocket endpoint of ``service``.

    ``options`` go to ``add_url_rule`` (the method is GET).  Several routes,
    each with its own service (codec, handler, hooks), may share one app.
    """
    import flask

    # The app's own response class: Flask would otherwise convert the response (and lose __call__).
    base: Any = getattr(app, "response_class", None) or flask.Response

    class _Upgrade(base):
        def __call__(self, environ, start_response):
            return upgrade(service, environ, start_response)

    def view(**_kwargs: Any) -> Any:
        return _Upgrade()

    name = endpoint or "greentree_websocket_" + rule.strip("/").replace("/", "_").replace("<", "").replace(">", "")
    view.__name__ = name
    # websocket=True: werkzeug routes Upgrade requests only to such rules (and plain GETs never to them).
    app.add_url_rule(rule, name, view, methods=["GET"], websocket=True, **options)
