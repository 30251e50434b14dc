"""The live tree page in a real browser: headless Chromium (Debian's, nothing downloaded), driven
over the DevTools protocol with the Browser fixture of test_chat_example.py, shows a running tree
and follows a crash.

The DevTools calls block on a socket, so they run in gevent's threadpool: the tree and the page's
server in this process keep running while the test waits for the browser.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys

import gevent
import pytest
from test_chat_example import browser  # noqa: F401  (the fixture: headless Chromium, killed after the test)

from greentree import ChildSpec, DynamicSupervisor, Supervisor
from greentree.observe import serve
from greentree.testing import wait_until


def forever(*args):
    gevent.sleep(3600)


class Page:
    def __init__(self, browser, url):  # noqa: F811
        self.browser = browser
        self.pool = gevent.get_hub().threadpool
        self.target, self.session = self.pool.apply(browser.open, (url,))

    def js(self, expression: str):
        return self.pool.apply(self.browser.js, (self.session, expression))

    def wait(self, expression: str, what: str, timeout: float = 20.0):
        deadline = gevent.get_hub().loop.now() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if gevent.get_hub().loop.now() > deadline:
                raise AssertionError(f"the page did not show {what} within {timeout} s; it shows:\n"
                                     + str(self.js("document.body.innerText")))
            gevent.sleep(0.1)

    def node(self, child_id: str) -> dict:
        return self.js(f"""(() => {{
            const n = document.querySelector('[data-id={json.dumps(child_id)}]');
            return n && {{state: n.dataset.state, restarts: Number(n.dataset.restarts),
                          flash: n.classList.contains('flash'), text: n.querySelector('.row').innerText}};
        }})()""")


@pytest.mark.timeout(120)
def test_the_page_draws_a_running_tree_and_follows_a_crash(browser, request):  # noqa: F811
    specs = [ChildSpec("db", forever), ChildSpec("cache", forever), DynamicSupervisor.child_spec("sessions")]
    with Supervisor(specs, name="shop", max_restarts=10) as sup:
        sessions = {i.id: i.child for i in sup.which_children()}["sessions"]
        for _ in range(3):
            sessions.start_child(ChildSpec("session", forever))
        server = serve(sup)
        request.addfinalizer(server.stop)
        page = Page(browser, f"http://127.0.0.1:{server.server_port}/")

        page.wait("!!(window.greentree && window.greentree.polls >= 1 && document.querySelector('[data-id=db]'))",
                  "the tree")
        assert page.js("document.querySelector('section.node.root .name').textContent") == "shop"
        for cid in ("db", "cache", "sessions"):
            node = page.node(cid)
            assert node["state"] == "running" and node["restarts"] == 0 and not node["flash"], node
        assert page.js("document.querySelectorAll('[data-id=session]').length") == 3
        assert "live" in page.js("document.getElementById('status').textContent")
        assert page.js("getComputedStyle(document.querySelector('[data-id=db] .dot')).backgroundColor") == \
            "rgb(63, 185, 80)"  # running is green

        db = {i.id: i.child for i in sup.which_children()}["db"]
        db.kill(RuntimeError("db connection lost"), block=False)
        wait_until(lambda: {i.id: i.child for i in sup.which_children()}["db"] not in (None, db), what="restart")

        page.wait("document.querySelector('[data-id=db]').dataset.restarts === '1'", "the restart")
        node = page.node("db")
        assert node["flash"], "a child that just restarted is highlighted"
        assert "RuntimeError: db connection lost" in node["text"]
        assert not page.node("cache")["flash"]
        exits = page.js("document.querySelector('section.node.root > details.exits').textContent")
        assert "recent exits (1)" in exits and "db connection lost" in exits and "crash" in exits

        # Collapsing a supervisor survives the next refreshes.
        page.js("document.querySelector('[data-id=sessions] .toggle').click(); true")
        polls = page.js("window.greentree.polls")
        page.wait(f"window.greentree.polls >= {polls + 2}", "two more refreshes")
        assert page.js("document.querySelector('[data-id=sessions]').classList.contains('collapsed')")

        shot = page.pool.apply(browser.call, ("Page.captureScreenshot", page.session))
        assert base64.b64decode(shot["data"]).startswith(b"\x89PNG")

        server.stop()
        page.wait("document.getElementById('status').classList.contains('offline')", "the server gone")


@pytest.mark.timeout(120)
def test_the_page_of_the_running_demo_shows_its_tree_and_the_restarts_its_faults_cause(browser):  # noqa: F811
    import re

    from gevent import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "greentree", "demo", "--clients", "4", "--seconds", "30",
                             "--faults-per-second", "4", "--seed", "2", "--plain"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            m = re.match(r"live tree page: (\S+)", line)
            if m:
                break
        else:
            raise AssertionError("the demo printed no live page address")
        page = Page(browser, m.group(1) + "?depth=3")
        page.wait("!!document.querySelector('section.node.root [data-id=server-connections]')", "the demo's tree")
        assert page.js("document.querySelector('section.node.root > .row .name').textContent") == "demo"
        assert page.js("!!document.querySelector('[data-id=client-connections]')")
        page.wait("window.greentree.flashes >= 1", "a restart caused by an injected fault", timeout=40)
        assert page.js("document.querySelectorAll('.restarts.some').length") >= 1
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
