"""Server: call/cast/info in order, NOREPLY, timeouts, callers failed at once
when the server dies, the init handshake under a supervisor, terminate, stop,
and calls by name through a registry."""

from __future__ import annotations

import logging
import time

import gevent
import pytest
from gevent.event import AsyncResult, Event

import greentree
from greentree import (
    NOREPLY,
    BlockingCallError,
    CallTimeoutError,
    ChildSpec,
    DynamicSupervisor,
    GreentreeError,
    NotRunningError,
    Registry,
    RegistryError,
    Server,
    StartChildError,
    Supervisor,
)
from greentree.testing import wait_until


class Recorder(Server):
    """Records every message; answers calls with the log so far."""

    def init(self, log=None, gate=None):
        self.log = [] if log is None else log
        self.gate = gate
        self.log.append("init")

    def handle_call(self, msg, caller):
        if msg == "block":
            self.gate.wait()
        if msg == "boom":
            raise ValueError("handle_call crashed")
        if msg == "later":
            self.later = caller
            return NOREPLY
        if msg == "stop-me":
            self.stop()
            return "stopping"
        self.log.append(("call", msg))
        return list(self.log)

    def handle_cast(self, msg):
        self.log.append(("cast", msg))

    def handle_info(self, msg):
        self.log.append(("info", msg))

    def terminate(self, reason):
        self.log.append(("terminate", type(reason).__name__ if reason is not None else None))


@pytest.fixture
def server():
    s = Recorder()
    s.start()
    s.wait_started(5)
    yield s
    s.stop(timeout=5)


# ---------------------------------------------------------------- call, cast, send


def test_call_returns_the_reply_of_handle_call(server):
    assert server.call("hello") == ["init", ("call", "hello")]


def test_calls_casts_and_infos_are_handled_in_the_order_sent(server):
    server.cast(1)
    server.send(2)
    server.cast(3)
    assert server.call("last") == ["init", ("cast", 1), ("info", 2), ("cast", 3), ("call", "last")]


def test_cast_and_send_never_block_and_a_flood_is_drained_in_order(server):
    for i in range(2000):
        server.cast(i)
    assert server.mailbox_size == 2000
    log = server.call("done", timeout=10)
    assert log[1:-1] == [("cast", i) for i in range(2000)]
    assert server.mailbox_size == 0


def test_the_first_message_after_a_pause_is_handled_without_an_extra_trip_through_the_hub(monkeypatch):
    # The server yields to the hub (gevent.idle) after a burst of BATCH messages or
    # SLICE seconds of handling; a pause spent waiting for mail is not handling.
    import greentree._server as server_module

    now = [0.0]
    monkeypatch.setattr(server_module, "perf_counter", lambda: now[0])
    idles = []
    real_idle = gevent.idle
    monkeypatch.setattr(gevent, "idle", lambda *a: (idles.append(now[0]), real_idle(*a))[1])

    class Slow(Recorder):
        def handle_cast(self, msg):
            now[0] += 1.0               # handling this message takes a (fake) second
            super().handle_cast(msg)

    s = Slow()
    s.start()
    s.wait_started(5)
    try:
        assert s.call("a")[-1] == ("call", "a")
        now[0] += 1.0                   # the server waited a second for its next message
        assert s.call("b")[-1] == ("call", "b")
        assert idles == []
        s.cast("slow")                  # ...but handling for longer than SLICE still yields
        assert s.call("c")[-2:] == [("cast", "slow"), ("call", "c")]
        assert idles == [2.0]        # once, after the slow message
    finally:
        s.stop(timeout=5)


def test_handle_call_may_return_noreply_and_reply_later_from_another_greenlet(server):
    result = AsyncResult()
    caller = gevent.spawn(lambda: result.set(server.call("later")))
    wait_until(lambda: hasattr(server, "later"), what="the deferred call")
    assert server.later.greenlet is caller
    assert server.call("meanwhile")[-1] == ("call", "meanwhile")  # the server is not blocked
    assert gevent.spawn(server.reply, server.later, "answer").get(timeout=5) is True
    assert result.get(timeout=5) == "answer"
    assert server.reply(server.later, "again") is False  # answered already: dropped


def test_call_times_out_with_call_timeout_a_timeout_error_and_the_late_reply_is_dropped(server):
    with pytest.raises(CallTimeoutError, match=r"call\('later'\): no reply within 0.05 s") as info:
        server.call("later", timeout=0.05)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, GreentreeError)
    assert server.reply(server.later, "too late") is False
    assert server.call("still alive")[-1] == ("call", "still alive")


def test_a_callers_own_gevent_timeout_is_not_turned_into_call_timeout(server):
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.05):
            server.call("later", timeout=None)
    assert not server._pending


# ---------------------------------------------------------------- the server dies


@pytest.mark.timeout(10)
def test_a_call_to_a_server_that_dies_mid_call_fails_within_milliseconds():
    s = Recorder(gate=Event())
    s.start()
    s.wait_started(5)
    errors = []

    def caller():
        started = time.monotonic()
        try:
            s.call("block", timeout=5.0)
        except NotRunningError as e:
            errors.append((e, time.monotonic() - started))

    c = gevent.spawn(caller)
    wait_until(lambda: s._pending and not s.mailbox_size, what="the server to be inside handle_call")
    s.kill()
    c.join(5)
    (err, elapsed), = errors
    assert elapsed < 0.5
    assert "exited (killed (GreenletExit)) before replying" in str(err)


def test_handle_call_raising_crashes_the_server_and_callers_get_not_running_with_the_cause(caplog):
    caplog.set_level(logging.ERROR, logger="greentree")
    s = Recorder()
    s.start()
    s.wait_started(5)
    queued = []

    def queued_caller():
        try:
            s.call("behind the crash")
        except NotRunningError as e:
            queued.append(e)

    with pytest.raises(NotRunningError, match="ValueError: handle_call crashed") as info:
        gevent.spawn(queued_caller)  # runs once this greenlet waits: its call queues behind "boom"
        s.call("boom")
    assert isinstance(info.value.__cause__, ValueError)
    s.join(5)
    assert s.dead and isinstance(s.exception, ValueError)
    assert s.log[-1] == ("terminate", "ValueError")
    wait_until(lambda: queued, what="the queued caller to fail")
    assert isinstance(queued[0].__cause__, ValueError)


def test_calls_to_a_dead_or_never_started_server_raise_not_running_at_once():
    s = Recorder()
    with pytest.raises(NotRunningError, match="never started"):
        s.call("x")
    s.start()
    s.wait_started(5)
    s.stop()
    assert s.dead
    with pytest.raises(NotRunningError, match="not running \\(it exited\\)"):
        s.call("x")


def test_cast_and_send_to_a_dead_server_are_dropped_silently():
    s = Recorder()
    s.start()
    s.wait_started(5)
    s.stop()
    s.cast("lost")
    s.send("lost")
    assert s.mailbox_size == 0


def test_a_server_killed_before_it_ran_fails_its_queued_callers_at_once():
    s = Recorder()
    s.start_later(30)  # started, but it will not run during this test
    errors = []

    def caller():
        try:
            s.call("x", timeout=5)
        except NotRunningError as e:
            errors.append(e)

    c = gevent.spawn(caller)
    wait_until(lambda: s._pending, what="the call to be queued")
    s.kill()
    c.join(2)
    assert len(errors) == 1
    assert not s._pending


# ---------------------------------------------------------------- misuse


def test_a_server_calling_itself_raises_blocking_call_error():
    class SelfCaller(Server):
        def handle_call(self, msg, caller):
            try:
                self.call("again")
            except BlockingCallError as e:
                return str(e)

    with SelfCaller() as s:
        assert "from the server's own greenlet would wait for itself forever" in s.call("go")


def test_a_call_from_the_hub_raises_blocking_call_error(server):
    result = AsyncResult()

    def from_hub():
        try:
            server.call("x")
        except BlockingCallError as e:
            result.set(str(e))

    gevent.get_hub().loop.run_callback(from_hub)
    assert "from the gevent hub" in result.get(timeout=5)


def test_register_must_be_none_or_a_registry_name():
    with pytest.raises(greentree.ChildSpecError, match="register must be None or a registry name"):
        Recorder(register="conn")


def test_name_is_a_label_shown_in_the_repr():
    assert "'conn'" in repr(Recorder(name="conn"))


def test_stop_reason_must_be_none_or_an_exception(server):
    with pytest.raises(greentree.ChildSpecError, match="reason must be None or an exception"):
        server.stop(reason="bye")
    assert server.call("alive")[-1] == ("call", "alive")


def test_default_handle_info_logs_and_the_server_keeps_running(caplog):
    caplog.set_level(logging.WARNING, logger="greentree")

    class Quiet(Server):
        def handle_call(self, msg, caller):
            return msg

    with Quiet() as s:
        s.send("unexpected")
        assert s.call("ping") == "ping"
    assert any("unexpected message 'unexpected'" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- stop and terminate


def test_stop_handles_earlier_messages_then_runs_terminate_with_none():
    s = Recorder()
    s.start()
    s.wait_started(5)
    s.cast("before")
    s.stop()
    assert s.dead and s.successful()
    assert s.log == ["init", ("cast", "before"), ("terminate", None)]


def test_stop_from_a_callback_stops_after_the_current_message(server):
    assert server.call("stop-me") == "stopping"
    server.join(5)
    assert server.dead
    assert server.log[-1] == ("terminate", None)


def test_stop_with_an_exception_reason_ends_the_server_with_it(caplog):
    caplog.set_level(logging.ERROR, logger="greentree")
    s = Recorder()
    s.start()
    s.wait_started(5)
    s.stop(reason=RuntimeError("bad state"))
    assert isinstance(s.exception, RuntimeError)
    assert s.log[-1] == ("terminate", "RuntimeError")


def test_terminate_runs_with_shutdown_exit_when_the_supervisor_stops():
    log = []
    with Supervisor([ChildSpec("r", Recorder, log)]):
        pass
    assert log == ["init", ("terminate", "ShutdownExit")]


def test_with_statement_starts_waits_for_init_and_stops():
    log = []
    with Recorder(log) as s:
        assert log == ["init"]
        assert "running" in repr(s)
    assert s.dead and log[-1] == ("terminate", None)
    assert "dead" in repr(s)


def test_init_failure_fails_the_start_and_terminate_is_not_called(caplog):
    caplog.set_level(logging.ERROR, logger="greentree")

    class BadInit(Server):
        def init(self):
            raise OSError("port in use")

        def terminate(self, reason):
            raise AssertionError("terminate must not run")

    s = BadInit()
    s.start()
    with pytest.raises(NotRunningError, match="exited before init returned: OSError: port in use"):
        s.wait_started(5)
    sup = Supervisor([ChildSpec("bad", BadInit)])
    sup.start()
    with pytest.raises(StartChildError, match="exited before it called started"):
        sup.wait_started(5)
    sup.join(5)


# ---------------------------------------------------------------- under a supervisor


def test_the_next_sibling_starts_only_after_init_returned():
    order = []
    gate = Event()

    class SlowInit(Server):
        def init(self):
            order.append("init begins")
            gate.wait()
            order.append("init returned")

    def sibling():
        order.append("sibling runs")
        gevent.sleep(3600)

    sup = Supervisor([ChildSpec("server", SlowInit), ChildSpec("sibling", sibling)])
    sup.start()
    wait_until(lambda: order, what="init to begin")
    gevent.sleep(0)
    assert order == ["init begins"]
    gate.set()
    sup.wait_started(5)
    wait_until(lambda: len(order) == 3, what="the sibling")
    assert order == ["init begins", "init returned", "sibling runs"]
    sup.stop()


def test_a_crashed_server_is_restarted_as_a_new_instance_and_answers_again(caplog):
    caplog.set_level(logging.ERROR, logger="greentree")
    with Supervisor([ChildSpec("r", Recorder)]) as sup:
        first = sup.which_children()[0].child
        with pytest.raises(NotRunningError):
            first.call("boom")
        wait_until(lambda: sup.which_children()[0].child not in (None, first), what="the restart")
        second = sup.which_children()[0].child
        assert isinstance(second, Recorder) and second is not first
        assert second.call("hi") == ["init", ("call", "hi")]


# ---------------------------------------------------------------- by name


def test_calls_casts_and_sends_by_name_through_a_registry():
    reg = Registry(name="app")
    via = reg.via(("i-1", "connection"))
    log = []
    with DynamicSupervisor() as dyn:
        s = dyn.start_child(ChildSpec(None, Recorder, log, register=via))
        via.cast("c")
        reg.send(("i-1", "connection"), "i")
        assert via.call("v")[-3:] == [("cast", "c"), ("info", "i"), ("call", "v")]
        assert reg.call(("i-1", "connection"), "r")[-1] == ("call", "r")
        assert via.whereis() is s
    with pytest.raises(NotRunningError, match=r"Registry\('app'\).call\(\('i-1', 'connection'\)\): no greenlet"):
        via.call("gone")
    via.cast("dropped")  # nobody registered: dropped like a cast to a dead server
    reg.send(("i-1", "connection"), "dropped")


def test_a_call_by_name_to_a_greenlet_that_is_not_a_server_raises_registry_error():
    reg = Registry()
    g = greentree.Greenlet.spawn(gevent.sleep, 3600)
    try:
        reg.register("plain", greenlet=g)
        with pytest.raises(RegistryError, match="is not a greentree.Server"):
            reg.call("plain", "x")
    finally:
        g.kill()


def test_a_server_named_in_its_constructor_registers_before_init_and_frees_on_exit():
    reg = Registry()
    seen = []

    class Named(Server):
        def init(self):
            seen.append(reg.whereis("named") is self)

        def handle_call(self, msg, caller):
            return msg

    with Named(register=reg.via("named")) as s:
        assert seen == [True]
        assert reg.call("named", 1) == 1
        assert s.register is not None and "Named" in repr(s)
    assert reg.whereis("named") is None


def test_a_server_whose_constructor_name_is_taken_fails_to_start(caplog):
    caplog.set_level(logging.ERROR, logger="greentree")
    reg = Registry()
    with Recorder(register=reg.via("one")) as first:
        second = Recorder(register=reg.via("one"))
        second.start()
        with pytest.raises(NotRunningError, match="AlreadyRegisteredError"):
            second.wait_started(5)
        assert reg.whereis("one") is first
