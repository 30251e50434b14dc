"""The wake-up of a waiting caller: one hub callback per group of answers, not one Event each.

Every Server call, supervisor request and instance-manager call waits on a
``Reply``.  Waiting parks the greenlet; answering queues the reply, and one
hub callback switches to every parked waiter in answer order.  These tests
drive every path of that object (answered before the wait, during it, from a
greenlet and from the hub, with an error, timed out, killed, interrupted by
the caller's own gevent.Timeout, two waiters at once, a raw greenlet that
fails after waking) through the new ``Reply`` and through ``EventReply``
below, the Event-per-waiter object it replaced, and require the same
observable outcome.
"""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

import greentree
from greentree._mailbox import Reply

pytestmark = pytest.mark.timeout(30)


class EventReply:
    """The previous Reply, kept as the reference: one gevent Event per waiter."""

    __slots__ = ("done", "value", "error", "_waiter")

    def __init__(self):
        self.done = False
        self.value = None
        self.error = None
        self._waiter = None

    def set(self, value=None):
        return self._finish(value, None)

    def set_exception(self, error):
        return self._finish(None, error)

    def _finish(self, value, error):
        if self.done:
            return False
        self.done = True
        self.value = value
        self.error = error
        if self._waiter is not None:
            self._waiter.set()
        return True

    def wait(self, timeout):
        if self.done:
            return True
        if self._waiter is None:
            self._waiter = Event()
        self._waiter.wait(timeout)
        return self.done

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


def _outcome(r):
    try:
        return ("value", r.result())
    except Exception as e:  # noqa: BLE001
        return ("error", type(e).__name__, str(e))


def answered_before_wait(cls):
    r = cls()
    assert r.set(1) is True
    assert r.set(2) is False
    return [r.wait(None), r.wait(0), _outcome(r)]


def wake_order(cls):
    """Waiters woken in the order their replies were answered, from a greenlet."""
    log = []
    replies = [cls() for _ in range(6)]

    def waiter(k):
        log.append(("parked", k))
        ok = replies[k].wait(None)
        log.append(("woke", k, ok, _outcome(replies[k])))

    gs = [gevent.spawn(waiter, k) for k in range(6)]
    gevent.idle()

    def answer():
        for k in (3, 1, 5, 0, 4, 2):
            if k == 5:
                replies[k].set_exception(ValueError("five"))
            else:
                replies[k].set(k * 10)
        log.append("answered")

    gevent.spawn(answer).join()
    gevent.joinall(gs, raise_error=True)
    return log


def answered_from_hub(cls):
    """Answers given in hub callbacks and timers (a call's deadline, a commit's outcome)."""
    log = []
    a, b, c = cls(), cls(), cls()

    def waiter(name, r):
        log.append((name, r.wait(None), _outcome(r)))

    gs = [gevent.spawn(waiter, n, r) for n, r in (("a", a), ("b", b), ("c", c))]
    gevent.idle()
    loop = gevent.get_hub().loop
    loop.run_callback(lambda: (b.set("B"), a.set_exception(KeyError("A"))))
    t = loop.timer(0.0)
    t.start(lambda: c.set("C"))
    gevent.joinall(gs, raise_error=True)
    t.close()
    return log


def timed_out_then_late_answer(cls):
    log = []
    r = cls()

    def waiter():
        log.append(("wait", r.wait(0.0), r.done))

    gevent.spawn(waiter).join()
    log.append(("late set", r.set("late"), _outcome(r)))
    # a new wait after the answer returns at once
    log.append(("again", r.wait(None)))
    return log


def answer_and_deadline_together(cls):
    """The answer and the wait's deadline become due in the same loop turn: the answer wins."""
    log = []
    r = cls()

    def waiter():
        log.append(("wait", r.wait(0.0), _outcome(r)))

    g = gevent.spawn(waiter)
    gevent.idle()
    r.set("both")
    g.join()
    return log


def killed_while_waiting(cls):
    """A killed waiter is never switched to again, even when its answer was already queued."""
    log = []
    r, later, other = cls(), cls(), Event()

    def waiter():
        try:
            r.wait(None)
            log.append("woke normally")
        except gevent.GreenletExit:
            log.append("killed")
            other.wait()  # now waiting on something else: must not be woken by r's answer
            log.append(("other", other.is_set()))

    g = gevent.spawn(waiter)
    gevent.idle()
    r.set("answered")      # queued for waking ...
    g.kill(block=False)    # ... and the kill arrives in the same turn
    gevent.idle()
    gevent.idle()
    log.append(("after kill", g.dead, other.is_set()))
    other.set()
    g.join()

    def waiter2():
        try:
            later.wait(None)
        except gevent.GreenletExit:
            log.append("killed 2")

    g2 = gevent.spawn(waiter2)
    gevent.idle()
    g2.kill()
    log.append(("late set after kill", later.set("x"), g2.dead))
    gevent.idle()
    return log


def own_timeout(cls):
    """The caller's own gevent.Timeout around a wait without timeout still propagates."""
    log = []
    r = cls()

    def waiter():
        try:
            with gevent.Timeout(0.0):
                r.wait(None)
        except gevent.Timeout:
            log.append("own timeout")
        log.append(("then", r.set(1), r.wait(None), _outcome(r)))

    gevent.spawn(waiter).join()
    return log


def two_waiters(cls):
    log = []
    r = cls()

    def waiter(name):
        log.append((name, r.wait(None), _outcome(r)))

    gs = [gevent.spawn(waiter, n) for n in ("x", "y")]
    gevent.idle()
    r.set("shared")
    gevent.joinall(gs, raise_error=True)
    return sorted(log)


def raw_greenlet_fails_after_waking(cls):
    """A raw greenlet's error after its wake goes to the hub; the others are still woken."""
    log = []
    a, b = cls(), cls()
    hub = gevent.get_hub()
    errors = []
    original = hub.handle_error
    hub.handle_error = lambda ctx, t, v, tb: errors.append(t.__name__)
    try:
        def raw():
            a.wait(None)
            raise RuntimeError("after wake")

        def normal():
            log.append(("b", b.wait(None), _outcome(b)))

        gevent.spawn_raw(raw)
        g = gevent.spawn(normal)
        gevent.idle()
        a.set(1)
        b.set(2)
        g.join()
    finally:
        hub.handle_error = original
    log.append(("errors", errors))
    return log


SCENARIOS = [answered_before_wait, wake_order, answered_from_hub, timed_out_then_late_answer,
             answer_and_deadline_together, killed_while_waiting, own_timeout, two_waiters,
             raw_greenlet_fails_after_waking]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_reply_behaves_as_the_event_reply(scenario):
    expected = scenario(EventReply)
    got = scenario(Reply)
    assert got == expected
    assert expected  # every scenario observes something


def test_wake_order_is_answer_order():
    log = wake_order(Reply)
    woke = [e[1] for e in log if e[0] == "woke"]
    assert woke == [3, 1, 5, 0, 4, 2]
    assert log[6] == "answered"  # nobody woke before the answering greenlet yielded


def test_a_killed_waiter_leaves_nothing_queued():
    killed_while_waiting(Reply)
    w = gevent.get_hub()._gt_waker
    assert not w.q and not w.scheduled


class _Deferred(greentree.Server):
    """Answers later, in the order it is told: every call path parks on a Caller."""

    def init(self):
        self.callers = {}

    def handle_call(self, msg, caller):
        if msg[0] == "release":
            for k in msg[1]:
                self.reply(self.callers.pop(k), k)
            return None
        self.callers[msg[1]] = caller
        return greentree.NOREPLY


def test_server_calls_wake_in_reply_order_on_every_path():
    """Server.call without and with a timeout, a supervisor request, all answered in a chosen order."""
    log = []
    with _Deferred() as s:
        def call(k, timeout):
            log.append((k, s.call(("hold", k), timeout=timeout)))

        gs = [gevent.spawn(call, k, None if k % 2 else 5.0) for k in range(8)]
        gevent.idle()
        order = [5, 2, 7, 0, 3, 6, 1, 4]
        assert s.call(("release", order)) is None
        gevent.joinall(gs, raise_error=True)
    assert log == [(k, k) for k in order]


def test_server_call_timeout_late_reply_dropped_and_not_running():
    with _Deferred() as s:
        with pytest.raises(greentree.CallTimeoutError):
            s.call(("hold", "late"), timeout=0.0)
        assert s.call(("release", ["late"])) is None  # the late reply is dropped (reply() said False)
        g = gevent.spawn(s.call, ("hold", "dies"), None)
        gevent.idle()
        g.kill()
        assert s._pending == set()
        def ends():
            with pytest.raises(greentree.NotRunningError):
                s.call(("hold", "ends"), None)
            return "not running"

        waiting = gevent.spawn(ends)
        gevent.idle()
    assert waiting.get() == "not running"


class _Log(greentree.Server):
    def init(self):
        self.seen = []

    def handle_cast(self, msg):
        self.seen.append(msg)

    def handle_call(self, msg, caller):
        return list(self.seen)


def test_a_parked_server_woken_by_a_stray_switch_parks_again():
    """The server's loop parks without an Event; a switch that is not a post changes nothing."""
    with _Log() as s:
        gevent.idle()
        assert s._parked is s
        loop = gevent.get_hub().loop
        loop.run_callback(s.switch)  # a stray switch from the hub, not a post
        gevent.idle()
        assert s._parked is s and not s._mb_woken
        for k in range(5):
            s.cast(k)
        assert s._mb_woken and len(gevent.get_hub()._gt_waker.q) == 1  # one wake for five posts
        assert s.call("seen") == [0, 1, 2, 3, 4]
        gevent.idle()
        assert s._parked is s


def test_a_server_killed_while_parked_fails_its_callers():
    s = _Deferred()
    s.start()
    s.wait_started()

    def call():
        with pytest.raises(greentree.NotRunningError):
            s.call(("hold", 1), None)
        return "failed"

    g = gevent.spawn(call)
    gevent.idle()
    assert s._parked is s
    s.kill()
    assert g.get() == "failed"
    assert s._parked is None


class _Seen(greentree.Server):
    def init(self, seen):
        self.seen_event = seen

    def handle_cast(self, msg):
        self.seen_event.set()


def test_a_cast_from_a_threadpool_thread_wakes_the_parked_server():
    """The wake is scheduled thread-safely when the post comes from another thread."""
    import threading

    seen = Event()
    release = threading.Event()
    with _Seen(seen) as s:
        gevent.idle()
        assert s._parked is s

        def in_thread():
            s.cast("from a thread")
            release.wait(10)  # keep the thread busy: its result must not be what wakes the loop

        pool = gevent.get_hub().threadpool
        done = pool.spawn(in_thread)
        try:
            assert seen.wait(3), "the server was not woken by a cast from a thread"
        finally:
            release.set()
        done.get()
