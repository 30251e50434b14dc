"""WebSocketServer's request greenlets: one serves connection after connection, idle ones end."""

from __future__ import annotations

import contextvars
import socket

import gevent
import pytest
import websocket
from gevent.event import Event

from greentree.testing import live_greenlets
from greentree.websocket._workers import Workers
from tests.wshelp import InThread, served_fixture, wait_until  # noqa: F401

pytestmark = pytest.mark.timeout(20)
served = served_fixture


def test_a_finished_worker_serves_the_next_job_and_each_job_runs_in_a_fresh_context():
    var = contextvars.ContextVar("var", default="unset")
    w = Workers(idle_timeout=5.0)
    seen = []

    def job(n):
        seen.append((n, var.get(), gevent.getcurrent()))
        var.set(f"set by {n}")  # must not leak into the next job

    for n in range(3):
        w(job, n)
        gevent.sleep(0)
    assert [(n, v) for n, v, _ in seen] == [(0, "unset"), (1, "unset"), (2, "unset")]
    assert len({g for _, _, g in seen}) == 1  # one greenlet served all three
    assert (w.count(), w.idle_count(), w.busy_count()) == (1, 1, 0)
    w.close()
    assert w.count() == 0
    with pytest.raises(RuntimeError, match="closed"):
        w(job, 4)


def test_jobs_at_once_get_a_worker_each_and_join_waits_for_them():
    w = Workers(idle_timeout=5.0)
    gate = Event()
    done = []
    for n in range(4):
        w(lambda n=n: (gate.wait(), done.append(n)))
    gevent.sleep(0)
    assert w.busy_count() == len(w) == 4 and w and not w.join(timeout=0.01)
    gate.set()
    assert w.join(timeout=5) and sorted(done) == [0, 1, 2, 3]
    assert w.idle_count() == 4
    w.kill(timeout=5)
    assert w.count() == 0


def test_an_idle_worker_ends_after_idle_timeout():
    before = len(live_greenlets())
    w = Workers(idle_timeout=0.05)
    w(lambda: None)
    gevent.sleep(0)
    assert w.idle_count() == 1
    wait_until(lambda: w.count() == 0, timeout=5, what="the idle worker to end")
    assert len(live_greenlets()) <= before
    w(lambda: None)  # a new one is made when none is parked
    gevent.sleep(0)
    assert w.count() == 1
    w.close()


def test_a_failing_job_is_reported_and_the_worker_goes_on(monkeypatch):
    w = Workers(idle_timeout=5.0)
    reported = []
    monkeypatch.setattr(gevent.get_hub(), "handle_error", lambda ctx, t, v, tb: reported.append((ctx, v)))
    w(lambda: 1 / 0)
    gevent.sleep(0)
    assert len(reported) == 1 and isinstance(reported[0][1], ZeroDivisionError)
    ran = []
    w(ran.append, "next")
    gevent.sleep(0)
    assert ran == ["next"] and w.count() == 1
    w.close()


def test_a_job_handed_to_a_worker_killed_meanwhile_goes_to_another_worker():
    w = Workers(idle_timeout=5.0)
    w(lambda: None)
    gevent.sleep(0)
    (slot,) = w._idle
    hub = gevent.get_hub()
    held = []

    class HoldingHub:  # the real hub, but the hand-over's switch is held back
        class loop:
            @staticmethod
            def run_callback(fn, *args):
                held.append((fn, args))

            timer = staticmethod(hub.loop.timer)

        switch = staticmethod(hub.switch)
        handle_error = staticmethod(hub.handle_error)

    w._hub = HoldingHub()
    ran = []
    w(ran.append, "handed over")  # given to the parked worker: its switch is scheduled (held here) ...
    slot.greenlet.kill(block=True)  # ... and the worker is killed before that switch runs
    assert slot.greenlet.dead and ran == []
    w._hub = hub
    (fn, args), = held
    hub.loop.run_callback(fn, *args)
    wait_until(lambda: ran == ["handed over"], timeout=5, what="the job to run in another worker")
    assert w.count() == 1 and w._idle[0].greenlet is not slot.greenlet
    w.close()


def test_lend_runs_the_job_now_in_the_callers_turn_and_reuses_a_parked_worker():
    """``lend`` (what a conversation's sender borrows): the job runs before anything else the
    loop has ready, from a greenlet or from the hub, in the caller's context choice."""
    w = Workers(idle_timeout=5.0, fresh_context=False)
    var = contextvars.ContextVar("var", default="unset")
    log = []
    gevent.spawn(log.append, "scheduled earlier")
    me = gevent.getcurrent()
    guard = gevent.get_hub().loop.run_callback(me.switch, "resumed")  # lend does not come back by itself
    got = w.lend(lambda: log.append(("job", var.get(), gevent.getcurrent())))
    assert got == "resumed" and not guard.pending
    assert log[0][0] == "job" and log[0][1] == "unset" and log[1] == "scheduled earlier"
    first = log[0][2]
    gevent.get_hub().loop.run_callback(w.lend, lambda: log.append(("from the hub", gevent.getcurrent())))
    gevent.sleep(0)
    assert log[-1] == ("from the hub", first)  # the parked worker served it
    assert (w.count(), w.idle_count(), w.busy_count()) == (1, 1, 0)
    w.close()
    ran = []
    guard = gevent.get_hub().loop.run_callback(me.switch)
    w.lend(ran.append, "after close")  # still runs, in a greenlet of its own that then ends
    assert ran == ["after close"] and w.count() == 0


@pytest.mark.parametrize("bad", [0, -1.0, None, "1", True])
def test_a_bad_idle_timeout_is_refused(bad):
    with pytest.raises(ValueError, match="idle_timeout must be a number of seconds > 0"):
        Workers(bad)


def test_the_server_opens_many_connections_with_a_few_request_greenlets(served):
    s = served(server_kw={"worker_idle_timeout": 5.0})
    server = s.root.which_children()[1].child

    def clients():
        out = []
        for _ in range(20):  # one after the other: one request greenlet serves them all
            ws = websocket.create_connection(s.url, timeout=5)
            out.append(ws)
        for ws in out:
            ws.close()

    InThread(clients).result()
    assert server._workers.count() <= 2  # the first, and at most one more while the first finished
    wait_until(lambda: s.svc.instance_count() == 0, what="the trees to end")
    assert server.handling() == 0


def test_a_bounded_server_keeps_a_greenlet_per_request(served):
    s = served(server_kw={"max_connections": 4})
    server = s.root.which_children()[1].child
    assert server._workers is None

    def client():
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = sock.recv(4096)
        sock.close()
        return data

    assert InThread(client).result().startswith(b"HTTP/1.1 426")
    wait_until(lambda: server.handling() == 0, what="the request to end")
