"""The conversation sender's inbox: a bounded FIFO whose ``drain`` runs on a pooled greenlet while
it holds items, at most one run at a time and one start scheduled at a time."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from greentree.websocket._inbox import Full, Inbox
from greentree.websocket._workers import Workers
from tests.wshelp import served_fixture, wait_until

served = served_fixture

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def make():
    """``make(maxsize=8, work=None) -> (box, log)``: an inbox whose drain logs each item it takes
    (and calls ``work(item)`` in between); every pool is closed after the test."""
    pools = []

    def _make(maxsize=8, work=None):
        pool = Workers(fresh_context=False)
        pools.append(pool)
        box = Inbox(maxsize, pool)
        log: list = []

        def drain():
            box.running = gevent.getcurrent()
            try:
                while not box.empty():
                    item = box.get_nowait()
                    log.append(("took", item))
                    if work is not None:
                        work(item)
                    log.append(("done", item))
            finally:
                box.running = None

        box.open(drain)
        return box, log

    yield _make
    for pool in pools:
        pool.kill(timeout=1)


def test_fifo_bounded_and_full_changes_nothing():
    box = Inbox(3, Workers())  # never opened: nothing takes the items
    for i in range(3):
        box.put_nowait(i)
    with pytest.raises(Full):
        box.put_nowait(3)
    assert box.qsize() == 3 and not box.empty() and not box._waking
    assert [box.get_nowait(), box.get_nowait(), box.get_nowait()] == [0, 1, 2]
    assert box.empty()
    with pytest.raises(IndexError):
        box.get_nowait()


@pytest.mark.parametrize("bad", [0, -1, None, 1.5, True])
def test_bad_maxsize_is_refused(bad):
    with pytest.raises(ValueError, match="maxsize must be an int >= 1"):
        Inbox(bad, None)


def test_a_burst_schedules_one_start_and_one_run_takes_all_in_order(make):
    box, log = make(100)
    hub = gevent.get_hub()
    scheduled = []

    class CountingHub:  # the real hub, counting the starts the inbox schedules
        class loop:
            @staticmethod
            def run_callback(fn, *args):
                scheduled.append(fn)
                return hub.loop.run_callback(fn, *args)

        switch = staticmethod(hub.switch)

    box._hub = CountingHub()
    for i in range(10):
        box.put_nowait(i)  # one start is scheduled for the whole burst
    wait_until(lambda: len(log) == 20, what="the burst to be taken")
    assert [item for what, item in log if what == "took"] == list(range(10))
    assert len(scheduled) == 1 and box.running is None


def test_put_from_the_hub_starts_the_drain(make):
    box, log = make(4)
    gevent.get_hub().loop.run_callback(box.put_nowait, "from the hub")
    wait_until(lambda: log == [("took", "from the hub"), ("done", "from the hub")], what="the drain")


def test_the_drain_runs_on_one_pooled_greenlet_burst_after_burst(make):
    ran_in = []
    box, log = make(4, work=lambda item: ran_in.append(gevent.getcurrent()))
    for item in ("a", "b"):
        box.put_nowait(item)
        wait_until(lambda: box.running is None and box.empty(), what="the burst to end")
        gevent.sleep(0)
    assert len(ran_in) == 2 and ran_in[0] is ran_in[1]  # parked between the bursts, then reused
    assert box._pool.count() == 1 and box._pool.idle_count() == 1


def test_items_put_while_it_runs_are_taken_by_that_run(make):
    gate = Event()
    runs = []
    box, log = make(8, work=lambda item: gate.wait() if item == "first" else None)
    real = box._drain

    def counting_drain():
        runs.append(1)
        real()

    box.open(counting_drain)
    box.put_nowait("first")
    wait_until(lambda: log == [("took", "first")], what="the first item")
    box.put_nowait("second")  # it runs: nothing is scheduled
    assert not box._waking
    gate.set()
    wait_until(lambda: log[-1] == ("done", "second"), what="both items")
    assert runs == [1]


def test_a_scheduled_start_does_nothing_once_closed(make):
    box, log = make(4)
    box.put_nowait("x")  # a start is scheduled ...
    box.close()  # ... and the inbox closes first
    gevent.sleep(0.01)
    assert log == [] and box.get_nowait() == "x"


def test_a_scheduled_start_does_nothing_when_a_hand_over_took_the_items(make):
    box, log = make(4)
    box.put_nowait("x")  # a start is scheduled
    box.hand_over()  # the drain runs now, in our turn
    assert log == [("took", "x"), ("done", "x")]
    gevent.sleep(0.01)  # the scheduled start finds nothing to take
    assert log == [("took", "x"), ("done", "x")] and not box._waking


# ---------------------------------------------------------------- hand_over: the producer lends its turn


def test_hand_over_runs_the_drain_now_and_returns_when_it_is_done(make):
    box, log = make()
    other = []
    gevent.spawn(other.append, "scheduled earlier")  # ready in the event loop before the hand-over
    box.put_nowait(1)
    box.hand_over()
    log.append(("back", None))
    assert log == [("took", 1), ("done", 1), ("back", None)]
    assert box.running is None
    gevent.sleep(0)
    assert other == ["scheduled earlier"]


def test_a_drain_that_waits_elsewhere_gives_the_turn_back_at_once(make):
    gate = Event()
    box, log = make(work=lambda item: gate.wait())
    box.put_nowait("slow")
    box.hand_over()  # the drain blocks on the gate: the event loop resumes us first
    assert log == [("took", "slow")] and box.running is not None
    gate.set()
    wait_until(lambda: log[-1] == ("done", "slow") and box.running is None, what="the drain to finish")
    box.put_nowait("next")  # an ordinary start, no hand-over
    wait_until(lambda: log[-1] == ("done", "next"), what="the next item")


def test_a_drain_that_dies_during_a_hand_over_gives_the_turn_back(make):
    class GreenletExitLike(gevent.GreenletExit):
        pass

    def boom(item):
        if item == "x":
            raise GreenletExitLike

    box, log = make(work=boom)
    box.put_nowait("x")
    box.hand_over()
    assert log == [("took", "x")] and box.running is None
    box.put_nowait("y")  # another greenlet takes over
    wait_until(lambda: log[-1] == ("done", "y"), what="the next item")


def test_a_lender_killed_while_lent_is_not_switched_back_into(make):
    gate = Event()
    box, log = make(work=lambda item: gate.wait())
    reached = []

    def lender():
        box.put_nowait("y")
        box.hand_over()
        reached.append("after hand_over")
        gevent.sleep(3600)

    lend = gevent.spawn(lender)
    wait_until(lambda: reached, what="the lender to get its turn back")
    lend.kill()
    gate.set()
    wait_until(lambda: log[-1] == ("done", "y") and box.running is None, what="the drain to finish")
    assert lend.dead and reached == ["after hand_over"]


def test_hand_over_does_nothing_without_an_item_or_while_it_runs(make):
    box, log = make()
    box.hand_over()  # nothing queued
    assert log == []
    gate = Event()
    box2, log2 = make(work=lambda item: gate.wait())
    box2.put_nowait(1)
    box2.hand_over()
    box2.put_nowait(2)
    box2.hand_over()  # it runs (waiting on the gate): nothing to lend
    assert log2 == [("took", 1)]
    gate.set()
    wait_until(lambda: log2[-1] == ("done", 2), what="both items")


# ---------------------------------------------------------------- hand_over_until: lend the turn, wait to read


@pytest.fixture
def rig(make):
    """``rig(work=None) -> (box, log, a, b)``: an inbox and a socket pair; all closed after."""
    import gevent.socket

    made = []

    def _rig(work=None):
        box, log = make(work=work)
        a, b = gevent.socket.socketpair()
        made.append((a, b))
        return box, log, a, b

    yield _rig
    for a, b in made:
        a.close()
        b.close()


def test_hand_over_until_runs_the_drain_now_and_resumes_the_caller_when_readable(rig):
    box, log, a, b = rig()
    other = []
    gevent.spawn(other.append, "scheduled earlier")
    box.put_nowait(1)
    gevent.get_hub().loop.run_callback(lambda: (log.append(("peer writes", None)), b.send(b"x")))
    ready = box.hand_over_until(a._read_event, None)
    # The drain ran first, in our turn; then the loop ran the rest, and resumed us once a was readable.
    assert ready is True
    assert log[:3] == [("took", 1), ("done", 1), ("peer writes", None)]
    assert other == ["scheduled earlier"]
    assert a.recv(1) == b"x"
    assert box.running is None and not a._read_event.active


def test_hand_over_until_returns_false_at_its_timeout(rig):
    box, log, a, _b = rig()
    box.put_nowait(1)
    assert box.hand_over_until(a._read_event, 0.01) is False
    assert log == [("took", 1), ("done", 1)] and not a._read_event.active


def test_hand_over_until_does_nothing_without_an_item_or_once_closed(rig):
    box, log, a, _b = rig()
    assert box.hand_over_until(a._read_event, 0.01) is None  # nothing queued
    box.close()
    box.put_nowait(1)
    assert box.hand_over_until(a._read_event, 0.01) is None  # closed
    assert log == [] and not a._read_event.active


def test_a_drain_that_waits_elsewhere_does_not_resume_the_waiting_reader(rig):
    gate = Event()
    box, log, a, b = rig(work=lambda item: gate.wait())
    woke = []

    def reader():
        box.put_nowait("slow")
        woke.append(box.hand_over_until(a._read_event, None))

    r = gevent.spawn(reader)
    wait_until(lambda: log == [("took", "slow")], what="the drain to take the item")
    gate.set()
    wait_until(lambda: log[-1] == ("done", "slow") and box.running is None, what="the drain to finish")
    assert woke == [] and not r.dead  # the drain's end went to the event loop, not to the reader
    b.send(b"y")
    r.join(5)
    assert woke == [True]


def test_a_reader_killed_while_it_waits_stops_its_watcher(rig):
    box, log, a, b = rig()

    def reader():
        box.put_nowait(1)
        box.hand_over_until(a._read_event, None)

    r = gevent.spawn(reader)
    wait_until(lambda: log == [("took", 1), ("done", 1)], what="the drain to run")
    assert a._read_event.active
    r.kill()
    assert r.dead and not a._read_event.active
    b.send(b"z")  # nothing is switched into the dead reader
    gevent.sleep(0.01)
    assert a.recv(1) == b"z"


def test_a_handled_message_is_not_kept_while_its_connection_and_sender_wait(served):
    """Neither the reader nor the sender holds on to the last message while waiting for the next."""
    import gc

    import msgpack
    import websocket

    from greentree.websocket._frames import Frame
    from tests.wshelp import InThread, frame

    s = served()
    marker = "kept? " + "x" * 64

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        ws.send_binary(frame("req", marker, id=1, c="room"))
        reply = msgpack.unpackb(ws.recv())
        return ws, reply

    ws, reply = InThread(client).result()
    try:
        assert reply["body"] == marker
        gc.collect()
        held = [o for o in gc.get_objects() if type(o) is Frame and o.body == marker]
        assert held == []
    finally:
        ws.close()


def test_a_slow_conversation_does_not_hold_up_another_on_the_same_connection(served):
    """The reader lends its turn to the sender it fed; a handler that waits gives it straight back."""
    import msgpack
    import websocket

    from tests.wshelp import InThread, frame

    gate = Event()

    def handler(conn, conversation, body):
        if conversation == "slow":
            gate.wait(10)
        return body

    s = served(handler)

    def client():
        ws = websocket.create_connection(s.url, timeout=5)
        ws.send_binary(frame("req", "s", id=1, c="slow"))
        ws.send_binary(frame("req", "f", id=2, c="fast"))
        first = msgpack.unpackb(ws.recv())
        return ws, first

    ws, first = InThread(client).result()
    try:
        assert first["id"] == 2 and first["body"] == "f"  # answered while "slow" still waits
        gate.set()
        assert msgpack.unpackb(InThread(ws.recv).result())["id"] == 1
    finally:
        ws.close()
