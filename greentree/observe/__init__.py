"""See your supervision trees: a live page, its JSON and a terminal view.

::

    import greentree.observe

    server = greentree.observe.serve()            # http://127.0.0.1:<port>/, localhost only
    print(f"live trees at http://127.0.0.1:{server.server_port}/")

or mount the read-only WSGI app in an existing one (Flask shown; any WSGI
framework or middleware that sets ``SCRIPT_NAME`` works)::

    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/trees": greentree.observe.wsgi_app()})

``/`` is the page (plain HTML, CSS and JavaScript from this package: nothing
external is loaded), ``/tree.json`` the snapshot it polls every second, and
``python -m greentree tree --url http://127.0.0.1:PORT/tree.json`` prints the
same snapshot as text.

>>> from greentree import Supervisor
>>> doc = snapshot([Supervisor([], name="app")])
>>> doc["version"], doc["trees"][0]["name"], doc["trees"][0]["state"]
(1, 'app', 'not started')
"""

from ._app import serve, wsgi_app
from ._snapshot import VERSION, snapshot
from ._text import render_text

__all__ = ["VERSION", "render_text", "serve", "snapshot", "wsgi_app"]
