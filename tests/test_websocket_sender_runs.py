"""A conversation's sender runs its handler on a greenlet borrowed from the service's pool while
its inbox holds work, and holds none while idle: one at a time and in order per conversation, in
its own contextvars context, stopped where its handler waits when busy, and the pool's parked
greenlets end with the service's supervisor."""

from __future__ import annotations

import contextvars

import gevent
import msgpack
import pytest
import websocket
from gevent.event import Event

from greentree import BlockingCallError
from greentree.testing import live_greenlets
from tests.wshelp import InThread, frame, served_fixture, wait_until

served = served_fixture
pytestmark = pytest.mark.timeout(30)


def _iid(s):
    wait_until(lambda: s.svc.instance_count() == 1, what="the connection's tree")
    return s.svc.connections.which_children()[0].id


def _pipelined(s, reqs, expect=None):
    """One client sends every ``(id, conversation, body)`` at once, then reads ``expect`` replies."""
    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        for rid, conv, body in reqs:
            ws.send_binary(frame("req", body, id=rid, c=conv))
        got = [msgpack.unpackb(ws.recv()) for _ in range(len(reqs) if expect is None else expect)]
        return ws, got

    return InThread(client).result()


def test_one_run_at_a_time_and_in_order_per_conversation_while_conversations_overlap(served):
    active: dict = {}
    peak: dict = {}
    order: dict = {}

    def handler(conn, conversation, body):
        active[conversation] = active.get(conversation, 0) + 1
        peak[conversation] = max(peak.get(conversation, 0), active[conversation])
        order.setdefault(conversation, []).append(body)
        gevent.sleep(0.001)  # yields: the other conversation runs meanwhile
        active[conversation] -= 1
        return body

    s = served(handler)
    reqs = [(i, "ab"[i % 2], i) for i in range(1, 41)]
    ws, got = _pipelined(s, reqs)
    try:
        assert sorted(r["id"] for r in got) == list(range(1, 41))
        assert all(r["body"] == r["id"] for r in got)
        assert order == {"a": list(range(2, 41, 2)), "b": list(range(1, 41, 2))}
        assert peak == {"a": 1, "b": 1}
        assert s.svc._runners.count() >= 2  # the two conversations ran side by side
    finally:
        ws.close()


def test_each_conversation_keeps_its_own_context_from_one_message_to_the_next(served):
    seen = contextvars.ContextVar("seen", default=None)

    def handler(conn, conversation, body):
        before = seen.get()
        seen.set(f"{conversation}:{body}")
        return before

    s = served(handler)
    ws, got = _pipelined(s, [(1, "a", 1), (2, "b", 1)])
    try:
        assert [r["body"] for r in got] == [None, None]
        ws.send_binary(frame("req", 2, id=3, c="a"))
        ws.send_binary(frame("req", 2, id=4, c="b"))
        more = sorted((msgpack.unpackb(InThread(ws.recv).result()) for _ in range(2)), key=lambda r: r["id"])
        # Each conversation sees what it set itself, on whichever pooled greenlet it ran.
        assert [r["body"] for r in more] == ["a:1", "b:1"]
    finally:
        ws.close()


def test_an_idle_sender_holds_no_greenlet_so_talked_connections_cost_no_more_greenlets(served):
    s = served()
    wss = InThread(lambda: [websocket.create_connection(s.url, timeout=5) for _ in range(5)]).result()

    def talk():
        for i, ws in enumerate(wss):
            ws.send_binary(frame("req", i, id=1, c="chat"))
            assert msgpack.unpackb(ws.recv())["body"] == i

    try:
        wait_until(lambda: s.svc.instance_count() == 5, what="five trees")
        gevent.sleep(0.05)
        before = len(live_greenlets())
        InThread(talk).result()
        wait_until(lambda: s.svc._runners.busy_count() == 0, what="the handlers' greenlets to park")
        senders = [s.svc.whereis(c.id, ("sender", "chat")) for c in s.svc.connections.which_children()]
        assert all(x is not None and x.inbox.running is None for x in senders)
        # Five conversations started five senders; all they hold is the pool they share.
        assert len(live_greenlets()) - before == s.svc._runners.count() == 1
    finally:
        for ws in wss:
            ws.close()


def test_a_busy_sender_stopped_from_outside_stops_where_its_handler_waits(served):
    entered, gate = Event(), Event()
    stopped = []

    def handler(conn, conversation, body):
        if body == "block":
            entered.set()
            try:
                gate.wait(10)
            except BaseException as e:
                stopped.append(type(e).__name__)
                raise
        return body

    s = served(handler)
    ws, _ = _pipelined(s, [(1, "a", "block"), (2, "a", "queued")], expect=0)
    try:
        entered.wait(5)
        iid = _iid(s)
        sender = s.svc.whereis(iid, ("sender", "a"))
        runner = sender.inbox.running
        assert runner is not None
        sender.kill(timeout=5)  # a turn of the loop later, raised where the handler waits
        assert stopped == ["GreenletExit"] and sender.dead and sender.successful()
        got = msgpack.unpackb(InThread(ws.recv).result())
        assert got["id"] == 2 and got["t"] == "err"  # the queued request got its one answer
        assert s.svc.stats.sender_crashes == 0
        # The greenlet went back to the pool and serves the next turn; the conversation restarts
        # on demand (a killed transient sender exited normally: not restarted until needed).
        wait_until(lambda: not runner.dead and s.svc._runners.idle_count() >= 1, what="the greenlet to park")
        ws.send_binary(frame("req", "again", id=3, c="a"))
        assert msgpack.unpackb(InThread(ws.recv).result())["body"] == "again"
    finally:
        ws.close()


def test_a_handler_cannot_wait_for_its_own_sender_but_may_stop_it_after_this_message(served):
    outcome = []

    def handler(conn, conversation, body):
        me = conn.service.whereis(conn.instance_id, ("sender", conversation))
        if body == "join":
            try:
                me.kill()  # would wait for itself
            except BlockingCallError as e:
                outcome.append(str(e))
            return "refused"
        me.kill(block=False)
        gevent.sleep(0.01)  # still this message's turn: the stop waits for it to be answered
        return "stopping"

    s = served(handler)
    ws, got = _pipelined(s, [(1, "a", "join"), (2, "a", "stop"), (3, "a", "after")])
    try:
        assert outcome and "its own handler" in outcome[0]
        by_id = {r["id"]: r for r in got}
        assert by_id[1]["body"] == "refused" and by_id[2]["body"] == "stopping"
        assert by_id[3]["t"] == "err"  # queued behind the stop: answered, not handled
    finally:
        ws.close()


def test_the_pools_parked_greenlets_end_with_the_services_supervisor(served):
    s = served()
    ws, got = _pipelined(s, [(1, "a", "x")])
    ws.close()
    runners = s.svc._runners
    wait_until(lambda: runners.idle_count() == 1, what="a parked greenlet")
    parked = next(iter(runners._all))
    s.stop()
    wait_until(lambda: parked.dead, what="the parked greenlet to end")
    assert runners.count() == 0
