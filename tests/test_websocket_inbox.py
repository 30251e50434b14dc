"""The conversation sender's inbox: bounded FIFO, one consumer parked in the hub, at most one wake-up."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from greentree.websocket._inbox import Full, Inbox
from tests.wshelp import greenlet_throws, served_fixture, wait_until

served = served_fixture

pytestmark = pytest.mark.timeout(10)


def test_fifo_bounded_and_full_changes_nothing():
    box = Inbox(3)
    for i in range(3):
        box.put_nowait(i)
    with pytest.raises(Full):
        box.put_nowait(3)
    assert box.qsize() == 3 and not box.empty()
    assert [box.get(), box.get(), box.get()] == [0, 1, 2]  # items there: no wait, no switch
    assert box.empty()
    with pytest.raises(IndexError):
        box.get_nowait()


@pytest.mark.parametrize("bad", [0, -1, None, 1.5, True])
def test_bad_maxsize_is_refused(bad):
    with pytest.raises(ValueError, match="maxsize must be an int >= 1"):
        Inbox(bad)


def test_a_parked_consumer_is_woken_once_for_a_burst_and_takes_all_in_order():
    box = Inbox(100)
    hub = gevent.get_hub()
    scheduled = []

    class CountingHub:  # the real hub, counting the wake-ups the inbox schedules
        class loop:
            @staticmethod
            def run_callback(fn, *args):
                scheduled.append(fn)
                return hub.loop.run_callback(fn, *args)

        switch = staticmethod(hub.switch)

    box._hub = CountingHub()
    got: list = []
    parked = Event()

    def consumer():
        while len(got) < 10:
            if box.empty():
                parked.set()
            got.append(box.get())

    g = gevent.spawn(consumer)
    parked.wait()
    for i in range(10):
        box.put_nowait(i)  # one wake-up is scheduled for the whole burst
    g.join()
    assert got == list(range(10))
    assert len(scheduled) == 1


def test_put_from_the_hub_wakes_the_consumer():
    box = Inbox(4)
    got = []
    g = gevent.spawn(lambda: got.append(box.get()))
    gevent.sleep(0)
    gevent.get_hub().loop.run_callback(box.put_nowait, "from the hub")
    g.join()
    assert got == ["from the hub"]


def test_a_wake_up_after_the_consumer_was_killed_does_nothing():
    box = Inbox(4)
    g = gevent.spawn(box.get)
    gevent.sleep(0)
    assert box._parked is g
    box.put_nowait("x")  # a wake-up is now scheduled ...
    g.kill(block=False)  # ... and so is the kill
    # Whichever runs first, the consumer either took "x" or died waiting; never both, never a stray switch.
    g.join()
    assert box._parked is None
    assert (g.value == "x" and box.empty()) or (g.value is None and box.get_nowait() == "x")
    other = gevent.spawn(box.get)  # a new consumer parks and is woken normally
    gevent.sleep(0)
    box.put_nowait("y")
    assert other.get(timeout=5) == "y"


def test_killed_while_parked_leaves_it_usable():
    box = Inbox(4)
    g = gevent.spawn(box.get)
    gevent.sleep(0)
    g.kill()
    assert box._parked is None and not box._waking
    box.put_nowait(1)  # no consumer parked: nothing scheduled
    assert not box._waking
    assert gevent.spawn(box.get).get(timeout=5) == 1


@pytest.mark.parametrize("parked_by", ["event loop", "hand-over"])
def test_a_consumer_stopped_by_switch_raises_in_get_and_stays_usable(parked_by, monkeypatch):
    """``throw_here(..., by_switch=True)``: the parked consumer raises the exception itself, from
    ``get``, wherever it parked (the event loop, or giving a lender its turn back); no greenlet throw."""
    from greentree import _child

    class Stop(gevent.GreenletExit):
        pass

    thrown = greenlet_throws(monkeypatch)
    box = Inbox(4)
    log: list = []
    if parked_by == "hand-over":
        g = _parked_consumer(box, log)
        box.put_nowait(1)
        box.hand_over()  # it handles 1, then gives the turn back from inside get()
        assert log == [("took", 1), ("done", 1)]
    else:
        g = gevent.spawn(box.get)
        gevent.sleep(0)
    assert box._parked is g

    def stopper():
        _child.throw_here(g, Stop("stop"), by_switch=True)
        return g.dead

    assert gevent.spawn(stopper).get(timeout=5) is True
    assert isinstance(g.value, Stop) and thrown == []
    assert box._parked is None and box._lender is None
    box.put_nowait("next")  # another consumer takes over as usual
    assert gevent.spawn(box.get).get(timeout=5) == "next"


def test_one_consumer_only():
    box = Inbox(4)
    first = gevent.spawn(box.get)
    gevent.sleep(0)
    with pytest.raises(RuntimeError, match="one consumer only"):
        box.get()  # this greenlet is a second consumer
    box.put_nowait("z")
    assert first.get(timeout=5) == "z"


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


# ---------------------------------------------------------------- hand_over: the producer lends its turn


def _parked_consumer(box, log, work=None):
    def consumer():
        while True:
            item = box.get()
            log.append(("took", item))
            if work is not None:
                work(item)
            log.append(("done", item))

    g = gevent.spawn(consumer)
    gevent.sleep(0)
    assert box._parked is g
    return g


def test_hand_over_runs_the_consumer_now_and_returns_when_it_waits_again():
    box = Inbox(8)
    log: list = []
    g = _parked_consumer(box, log)
    other = []
    gevent.spawn(other.append, "scheduled earlier")  # ready in the event loop before the hand-over
    box.put_nowait(1)
    box.hand_over()
    log.append(("back", None))
    assert log == [("took", 1), ("done", 1), ("back", None)]
    assert other == []  # nothing else ran in between
    assert box._parked is g and box._lender is None
    gevent.sleep(0)
    assert other == ["scheduled earlier"]
    g.kill()


def test_a_consumer_that_waits_elsewhere_gives_the_turn_back_at_once():
    box = Inbox(8)
    log: list = []
    gate = Event()
    g = _parked_consumer(box, log, work=lambda item: gate.wait())
    box.put_nowait("slow")
    box.hand_over()  # the consumer blocks on the gate: the event loop resumes us first
    assert log == [("took", "slow")] and box._lender is None
    gate.set()
    wait_until(lambda: log[-1] == ("done", "slow"), timeout=5, what="the consumer to finish")
    wait_until(lambda: box._parked is g, timeout=5, what="the consumer to park on the event loop")
    box.put_nowait("next")  # an ordinary wake-up, no hand-over
    wait_until(lambda: log[-1] == ("done", "next"), timeout=5, what="the next item")
    g.kill()


def test_a_consumer_that_dies_during_a_hand_over_gives_the_turn_back():
    box = Inbox(8)
    log: list = []

    def boom(item):
        raise GreenletExitLike

    class GreenletExitLike(gevent.GreenletExit):
        pass

    g = _parked_consumer(box, log, work=boom)
    box.put_nowait("x")
    box.hand_over()
    assert g.dead and log == [("took", "x")] and box._lender is None


def test_a_lender_killed_while_lent_is_not_switched_back_into():
    box = Inbox(8)
    log: list = []
    gate = Event()
    g = _parked_consumer(box, log, work=lambda item: gate.wait())
    reached = []

    def lender():
        box.put_nowait("y")
        box.hand_over()
        reached.append("after hand_over")
        gevent.sleep(3600)

    lend = gevent.spawn(lender)
    wait_until(lambda: reached, timeout=5, what="the lender to get its turn back")
    lend.kill()
    gate.set()
    wait_until(lambda: log[-1] == ("done", "y") and box._parked is g, timeout=5, what="the consumer to park")
    assert lend.dead and reached == ["after hand_over"]
    g.kill()


def test_hand_over_does_nothing_without_a_parked_consumer_or_an_item():
    box = Inbox(8)
    box.hand_over()  # no consumer
    log: list = []
    g = _parked_consumer(box, log)
    box.hand_over()  # nothing queued
    assert log == [] and box._lender is None
    g.kill()


# ---------------------------------------------------------------- hand_over_until: lend the turn, wait to read


@pytest.fixture
def rig():
    """``rig(work=None) -> (box, log, consumer, a, b)``: a parked consumer and a socket pair; all ended after."""
    import gevent.socket

    made = []

    def make(work=None):
        box = Inbox(8)
        log: list = []
        g = _parked_consumer(box, log, work)
        a, b = gevent.socket.socketpair()
        made.append((g, a, b))
        return box, log, g, a, b

    yield make
    for g, a, b in made:
        g.kill()
        a.close()
        b.close()


def test_hand_over_until_runs_the_consumer_now_and_resumes_the_caller_when_readable(rig):
    box, log, g, a, b = rig()
    other = []
    gevent.spawn(other.append, "scheduled earlier")
    box.put_nowait(1)
    gevent.get_hub().loop.run_callback(lambda: (log.append(("peer writes", None)), b.send(b"x")))
    ready = box.hand_over_until(a._read_event, None)
    # The consumer ran first, in our turn; then the loop ran the rest, and resumed us once a was readable.
    assert ready is True
    assert log[:3] == [("took", 1), ("done", 1), ("peer writes", None)]
    assert other == ["scheduled earlier"]
    assert a.recv(1) == b"x"
    assert box._parked is g and not a._read_event.active


def test_hand_over_until_returns_false_at_its_timeout(rig):
    box, log, _g, a, _b = rig()
    box.put_nowait(1)
    assert box.hand_over_until(a._read_event, 0.01) is False
    assert log == [("took", 1), ("done", 1)] and not a._read_event.active


def test_hand_over_until_does_nothing_without_a_parked_consumer_or_an_item(rig):
    box, log, _g, a, _b = rig()
    assert Inbox(8).hand_over_until(a._read_event, 0.01) is None  # no consumer
    assert box.hand_over_until(a._read_event, 0.01) is None  # nothing queued
    assert log == [] and not a._read_event.active


def test_a_consumer_that_waits_elsewhere_does_not_resume_the_waiting_reader(rig):
    gate = Event()
    box, log, g, a, b = rig(work=lambda item: gate.wait())
    woke = []

    def reader():
        box.put_nowait("slow")
        woke.append(box.hand_over_until(a._read_event, None))

    r = gevent.spawn(reader)
    wait_until(lambda: log == [("took", "slow")], timeout=5, what="the consumer to take the item")
    gate.set()
    wait_until(lambda: log[-1] == ("done", "slow") and box._parked is g, timeout=5, what="the consumer to park")
    assert woke == [] and not r.dead  # the consumer's end went to the event loop, not to the reader
    b.send(b"y")
    r.join(5)
    assert woke == [True]


def test_a_reader_killed_while_it_waits_stops_its_watcher(rig):
    box, log, _g, a, b = rig()

    def reader():
        box.put_nowait(1)
        box.hand_over_until(a._read_event, None)

    r = gevent.spawn(reader)
    wait_until(lambda: log == [("took", 1), ("done", 1)], timeout=5, what="the consumer to run")
    assert a._read_event.active
    r.kill()
    assert r.dead and not a._read_event.active
    b.send(b"z")  # nothing is switched into the dead reader
    gevent.sleep(0.01)
    assert a.recv(1) == b"z"


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
