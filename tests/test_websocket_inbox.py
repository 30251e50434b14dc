"""The conversation sender's inbox: bounded FIFO, one consumer parked in the hub, at most one wake-up."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from greentree.websocket._inbox import Full, Inbox
from tests.wshelp import served_fixture

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
