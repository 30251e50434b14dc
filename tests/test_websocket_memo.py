"""The reader remembers its last conversation's sender instead of asking the registry for every
frame.  Whether the registry is asked or the memo answers, every request gets the same replies in
the same order: conversations switching, senders reaped while idle, senders crashing and being
restarted, requests queued behind a busy handler."""

from __future__ import annotations

import gevent
import msgpack
import pytest
import websocket  # websocket-client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wshelp import InThread, frame, served_fixture, wait_until  # noqa: F401  (the `served` fixture)

from greentree.websocket import Connection

pytestmark = pytest.mark.timeout(240)

CONVERSATIONS = ["a", "b", None, 7]


def handler(conn, conversation, body):
    if body == "crash":
        raise RuntimeError("handler bug (injected)")
    if body % 3 == 0:
        gevent.sleep(0)  # busy: the next frames queue behind this one
    return [conversation, body]


batches = st.lists(
    st.one_of(
        st.lists(st.tuples(st.sampled_from(CONVERSATIONS), st.integers(0, 99)), min_size=1, max_size=6),
        st.tuples(st.just("crash"), st.sampled_from(CONVERSATIONS)),
        st.just("reap"),
    ),
    min_size=1, max_size=6,
)


def run(served, ops, memo: bool, monkeypatch):
    """Play ``ops`` on one connection; return every reply in the order it came, per conversation."""
    with monkeypatch.context() as m:
        if not memo:  # every frame asks the registry, as before the memo
            m.setattr(Connection, "_memo", property(lambda self: None, lambda self, value: None), raising=False)
        s = served(handler, sender_idle_timeout=0.05)
        ws = InThread(websocket.create_connection, s.url, 5).result()
        got: dict = {}
        rid = 0
        for op in ops:
            if op == "reap":
                wait_until(lambda: all(s.svc.whereis(1, ("sender", c)) is None for c in CONVERSATIONS),
                           what="idle senders reaped")
                continue
            if op[0] == "crash":
                batch = [(op[1], "crash")]
            else:
                batch = op
            wire = []
            for conversation, body in batch:
                rid += 1
                wire.append(frame("req", body, id=rid, c=conversation))

            def exchange(wire=wire):
                for data in wire:
                    ws.send_binary(data)
                return [msgpack.unpackb(ws.recv(), raw=False) for _ in wire]

            for reply in InThread(exchange).result(20):
                got.setdefault(reply.get("c"), []).append((reply["id"], reply["t"], reply["body"]))
        InThread(ws.close).result()
        s.stop()
        return got


def expected(ops) -> dict:
    want: dict = {}
    rid = 0
    for op in ops:
        if op == "reap":
            continue
        batch = [(op[1], "crash")] if op[0] == "crash" else op
        for conversation, body in batch:
            rid += 1
            if body == "crash":
                reply = (rid, "err", "handler failed: RuntimeError")
            else:
                reply = (rid, "rep", [conversation, body])
            want.setdefault(conversation, []).append(reply)
    return want


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches)
def test_memo_and_registry_give_the_same_replies_in_the_same_order(served, monkeypatch, ops):
    want = expected(ops)
    assert run(served, ops, True, monkeypatch) == want
    assert run(served, ops, False, monkeypatch) == want


def test_the_memo_follows_a_restarted_sender_and_is_dropped_when_its_sender_is_reaped(served):
    s = served(handler, sender_idle_timeout=0.2)
    ws = InThread(websocket.create_connection, s.url, 5).result()

    def ask(body, rid):
        ws.send_binary(frame("req", body, id=rid, c="a"))
        return msgpack.unpackb(ws.recv(), raw=False)

    assert InThread(ask, 1, 1).result()["t"] == "rep"
    iid = next(iter(s.svc.connections.which_children())).child.instance_id
    conn = s.svc.connection(iid)
    first = s.svc.whereis(iid, ("sender", "a"))
    assert conn._memo == ("a", first)
    assert InThread(ask, "crash", 2).result()["t"] == "err"
    wait_until(lambda: conn._memo is None, what="the crashed sender to drop the memo")
    assert InThread(ask, 4, 3).result()["body"] == ["a", 4]
    second = s.svc.whereis(iid, ("sender", "a"))
    assert second is not first and conn._memo == ("a", second)
    wait_until(lambda: s.svc.stats.senders_reaped == 1, what="the idle sender to be reaped")
    assert conn._memo is None  # a reaped sender is not kept alive by the reader
    assert InThread(ask, 5, 4).result()["body"] == ["a", 5]
    InThread(ws.close).result()
