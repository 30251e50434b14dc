"""How a connection's tree ends when the peer closes: an idle conversation's sender holds no
greenlet and ends in the closing reader's turn (also when someone waits on it), so the whole
tree is gone before the event loop runs anything else; a busy sender is stopped where its
handler waits, through the event loop."""

from __future__ import annotations

import msgpack
import pytest
import websocket
from gevent import getcurrent
from gevent.event import Event
from greenlet import greenlet

from greentree.websocket._tree import ConversationSender
from tests.wshelp import InThread, frame, served_fixture, wait_until

served = served_fixture
pytestmark = pytest.mark.timeout(30)


def _record_where(s):
    """Record the greenlet each event of the service is emitted in (and queue it, as before)."""
    where: dict = {}
    events = s.svc.events

    def sink(event):
        where.setdefault(event.kind, getcurrent())
        events.put_nowait(event)

    s.svc.events = sink
    return where


def _talk_then_close(s, conversation="chat"):
    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        ws.send_binary(frame("req", "hi", id=1, c=conversation))
        reply = msgpack.unpackb(ws.recv())
        return ws, reply

    ws, reply = InThread(client).result()
    assert reply["body"] == "hi"
    return ws


def _sender(s, conversation="chat"):
    """The conversation's sender, in the one connection's tree."""
    def find():
        conns = s.svc.connections.which_children()
        return s.svc.whereis(conns[0].id, ("sender", conversation)) if conns else None

    wait_until(lambda: find() is not None, what="a sender")
    sender = find()
    assert isinstance(sender, ConversationSender)
    return sender


def _idle_then_closed(s, ws, where, sender, until=lambda: True):
    """Wait for the sender to be idle (no greenlet runs it), close the client, wait for the tree to end."""
    wait_until(lambda: sender.inbox.running is None, what="the sender to be idle")
    InThread(ws.close).result()
    wait_until(lambda: "instance_down" in where and until(), what="the tree to end")


def test_an_idle_sender_holds_no_greenlet_and_ends_in_the_closing_readers_turn(served):
    s = served()
    where = _record_where(s)
    ws = _talk_then_close(s)
    sender = _sender(s)
    assert not isinstance(sender, greenlet)
    wait_until(lambda: s.svc._runners.busy_count() == 0, what="the handler's greenlet to go back to the pool")
    assert s.svc._runners.idle_count() == 1  # the greenlet that answered is parked for the next turn
    _idle_then_closed(s, ws, where, sender)
    # The Connection emitted "disconnected" in its greenlet; the tree ended in that same greenlet.
    assert where["instance_down"] is where["disconnected"]
    assert sender.dead and sender.successful() and sender.exit.kind == "shutdown"
    assert s.svc.registry.count() == 0 and s.svc.instance_count() == 0


def test_a_busy_sender_is_stopped_through_the_event_loop_and_its_queued_requests_are_answered(served):
    gate = Event()
    entered = Event()

    def handler(conn, conversation, body):
        if body == "block":
            entered.set()
            gate.wait(10)
        return body

    s = served(handler)
    where = _record_where(s)

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        ws.send_binary(frame("req", "block", id=1, c="chat"))
        return ws

    ws = InThread(client).result()
    entered.wait(5)
    sender = _sender(s)
    InThread(ws.close).result()
    wait_until(lambda: "instance_down" in where, what="the tree to end")
    # The sender was inside the handler: it was killed through the loop and ended the tree itself.
    assert where["instance_down"] is not where["disconnected"]
    assert sender.dead
    assert s.svc.registry.count() == 0 and s.svc.instance_count() == 0


def test_a_sender_someone_waits_on_also_ends_in_the_readers_turn_and_its_link_hears_from_the_hub(served):
    s = served()
    where = _record_where(s)
    ws = _talk_then_close(s)
    sender = _sender(s)
    told: list = []
    hub = s.svc._runners._hub
    sender.rawlink(lambda g: told.append((g.dead, getcurrent() is hub)))  # links are told from the hub
    _idle_then_closed(s, ws, where, sender, until=lambda: told)
    assert told == [(True, True)]
    assert where["instance_down"] is where["disconnected"]
    assert s.svc.registry.count() == 0 and s.svc.instance_count() == 0
