"""``python -m greentree tree`` against a live app served in this process, and ``python -m greentree
demo`` serving the live page.  Subprocesses go through gevent.subprocess so this process's server
keeps answering while the test reads their output."""

from __future__ import annotations

import json
import re
import signal
import sys
import urllib.request

import gevent
import pytest
from gevent import subprocess

from greentree import ChildSpec, DynamicSupervisor, Supervisor
from greentree.observe import render_text, serve, snapshot
from greentree.testing import wait_until


def forever(*args):
    gevent.sleep(3600)


def tree_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greentree", "tree", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def crash(sup, child_id):
    g = {i.id: i.child for i in sup.which_children()}[child_id]
    g.kill(RuntimeError(f"{child_id} broke"), block=False)
    wait_until(lambda: {i.id: i.child for i in sup.which_children()}[child_id] not in (None, g), what="restart")


@pytest.fixture
def shop(request):
    sup = Supervisor([ChildSpec("db", forever), ChildSpec("web", forever), DynamicSupervisor.child_spec("jobs")],
                     name="shop", max_restarts=10)
    sup.start()
    sup.wait_started()
    request.addfinalizer(sup.stop)
    jobs = {i.id: i.child for i in sup.which_children()}["jobs"]
    for n in range(5):
        jobs.start_child(ChildSpec(f"job{n}", forever))
    server = serve(sup)
    request.addfinalizer(server.stop)
    return sup, f"http://127.0.0.1:{server.server_port}/tree.json"


def test_tree_prints_the_trees_of_a_live_app_with_counts_and_recent_exits(shop):
    sup, url = shop
    crash(sup, "db")
    proc = tree_cli("--url", url, "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"greentree  ·  {url}  ·  pid " in out
    assert "Supervisor 'shop'  one_for_one  running  3 children: 3 running  restarts 1/10 in 5.0s" in out
    assert re.search(r"├── db  running  permanent  restarts 1  up [0-9.]+s  last exit: RuntimeError: db broke", out)
    assert "DynamicSupervisor  one_for_one  running  5 children: 5 running (listing 3)" in out
    assert "… 2 more not listed (counted above)" in out
    assert re.search(r"recent exits:\n\s+[0-9.]+s ago  db  crash  RuntimeError: db broke", out)


@pytest.mark.timeout(150)
def test_tree_watch_redraws_and_shows_a_crash_that_happens_meanwhile(shop):
    sup, url = shop
    proc = subprocess.Popen([sys.executable, "-m", "greentree", "tree", "--url", url, "--watch", "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        def frame_with(text):
            # Every line the watcher prints is an event; a frame is whole once the next
            # one begins.  The deadline only bounds a watcher that stopped printing.
            lines: list[str] = []
            with gevent.Timeout(40, AssertionError(f"no frame with {text!r} in 40 s")):
                while True:
                    line = proc.stdout.readline()
                    assert line, "tree --watch exited: " + proc.stderr.read()
                    if line.startswith("greentree  ·") and lines:  # the next frame begins
                        if text in "".join(lines):
                            return "".join(lines)
                        lines = []
                    lines.append(line)

        frame_with("├── db  running  permanent  restarts 0")
        crash(sup, "db")
        frame = frame_with("├── db  running  permanent  restarts 1")
        assert "RuntimeError: db broke" in frame
        proc.send_signal(signal.SIGINT)
        # Keep reading what it prints until it closes its output (it exits): a watcher
        # whose output nobody reads could block on a full pipe instead of exiting.
        with gevent.Timeout(40, AssertionError("tree --watch did not exit within 40 s of SIGINT")):
            while proc.stdout.readline():
                pass
            assert proc.wait() == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_tree_says_clearly_when_the_url_does_not_answer_or_is_not_a_url(shop):
    _sup, url = shop
    dead = re.sub(r":\d+/", ":1/", url)
    proc = tree_cli("--url", dead, "--timeout", "2")
    assert proc.returncode == 3
    assert f"cannot read {dead}" in proc.stderr and "Traceback" not in proc.stderr
    proc = tree_cli("--url", url.replace("tree.json", "nothing-here"))
    assert proc.returncode == 3 and "Not Found" in proc.stderr
    proc = tree_cli("--url", "ftp://example/tree.json")
    assert proc.returncode == 2 and "--url must be an http:// or https:// URL" in proc.stderr


def test_render_text_of_an_empty_process_and_of_a_document_it_does_not_know():
    assert render_text({"version": 1, "pid": 1, "host": "h", "trees": []}).endswith("no supervision tree is running")
    assert "version: 99" in render_text({"version": 99})


def test_render_text_shows_nested_trees_stopped_children_and_zombies():
    with Supervisor([ChildSpec("once", lambda: None, restart="transient"),
                     DynamicSupervisor.child_spec("pool")], name="app") as sup:
        wait_until(lambda: sup.describe()["counts"]["stopped"] == 1, what="once stopped")
        doc = snapshot(sup)
        doc["trees"][0]["zombies"] = 2
        text = render_text(doc)
        assert "Supervisor 'app'  one_for_one  running  2 children: 1 running, 1 stopped" in text
        assert "ZOMBIES 2" in text
        assert "├── once  stopped  transient  restarts 0  last exit: normal" in text
        assert "│   DynamicSupervisor  one_for_one  running  0 children" in text


@pytest.mark.timeout(120)
def test_the_demo_serves_the_live_page_and_prints_its_address():
    proc = subprocess.Popen([sys.executable, "-m", "greentree", "demo", "--clients", "6", "--seconds", "4",
                             "--faults-per-second", "3", "--seed", "5", "--plain"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        seen = []
        while True:
            line = proc.stdout.readline()
            assert line, "the demo ended without printing the page's address:\n" + "".join(seen)
            seen.append(line)
            m = re.match(r"live tree page: (http://127\.0\.0\.1:\d+/)  \(localhost only", line)
            if m:
                break
        page = m.group(1)
        assert f"python -m greentree tree --url {page}tree.json --watch" in line

        def get(path):
            with urllib.request.urlopen(page + path, timeout=10) as r:
                return r.read()

        pool = gevent.get_hub().threadpool
        assert b'src="observe.js"' in pool.apply(get, ("",))
        doc = json.loads(pool.apply(get, ("tree.json",)))
        assert [t["name"] for t in doc["trees"]] == ["demo"]
        assert doc["trees"][0]["counts"]["running"] >= 2
        out, err = proc.communicate(timeout=100)
        assert proc.returncode == 0, out + err
        assert "everything stopped cleanly" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
