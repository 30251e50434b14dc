"""greentree.telemetry: attach/detach, every event greentree emits, with real
trees, registries, WebSocket connections, instance managers and clusters."""

from __future__ import annotations

import contextlib
import logging
import uuid

import gevent
import pytest
import websocket  # websocket-client
from wshelp import InThread, Served, http_raw, upgrade_head

import greentree
from greentree import ChildSpec, DynamicSupervisor, Registry, Supervisor, telemetry
from greentree.testing import wait_until


class Recorder:
    """A handler that keeps every event; attached under a unique id, detached at teardown."""

    def __init__(self, events=telemetry.EVENTS):
        self.id = f"test-{uuid.uuid4().hex[:8]}"
        self.seen: list = []
        telemetry.attach(self.id, events, self)

    def __call__(self, event, measurements, metadata):
        self.seen.append((event, measurements, metadata))

    def of(self, event):
        return [(m, md) for e, m, md in self.seen if e == event]


@pytest.fixture
def rec():
    recorders = []

    def make(events=telemetry.EVENTS):
        r = Recorder(events)
        recorders.append(r)
        return r

    yield make
    for r in recorders:
        telemetry.detach(r.id)
    assert not telemetry.list_handlers(("greentree",)), "a test left a handler attached"


@pytest.fixture(autouse=True)
def quiet_greentree_logger(caplog):
    caplog.set_level(logging.CRITICAL, logger="greentree")


# ---------------------------------------------------------------- attach, detach, list
def test_attach_list_and_detach_a_handler():
    def fn(event, measurements, metadata):
        pass

    telemetry.attach("h1", [telemetry.CHILD_EXIT, telemetry.CHILD_START], fn)
    try:
        assert sorted(h.event for h in telemetry.list_handlers(("greentree", "child"))) == [
            telemetry.CHILD_EXIT, telemetry.CHILD_START]
        assert telemetry.list_handlers(("greentree", "registry")) == []
        assert telemetry.list_handlers()[0].function is fn and telemetry.list_handlers()[0].id == "h1"
    finally:
        assert telemetry.detach("h1") is True
    assert telemetry.detach("h1") is False
    assert telemetry.list_handlers() == []


def test_one_event_tuple_is_accepted_as_the_events_argument():
    telemetry.attach("one", telemetry.CHILD_EXIT, lambda *a: None)
    try:
        assert [h.event for h in telemetry.list_handlers()] == [telemetry.CHILD_EXIT]
    finally:
        telemetry.detach("one")


def test_a_second_handler_with_the_same_id_is_refused_and_the_first_stays():
    telemetry.attach("dup", telemetry.CHILD_EXIT, lambda *a: None)
    try:
        with pytest.raises(greentree.ArgumentError, match="already attached"):
            telemetry.attach("dup", telemetry.CHILD_START, lambda *a: None)
        assert [h.event for h in telemetry.list_handlers()] == [telemetry.CHILD_EXIT]
    finally:
        telemetry.detach("dup")


@pytest.mark.parametrize("events, fn, match", [
    ("greentree.child.exit", print, "event tuple or a list"),
    ([("greentree", 1)], print, "non-empty tuple of str"),
    ([], print, "no events"),
    (telemetry.CHILD_EXIT, "not callable", "must be callable"),
])
def test_malformed_arguments_are_refused_and_nothing_is_attached(events, fn, match):
    with pytest.raises(ValueError, match=match):
        telemetry.attach("bad", events, fn)
    assert telemetry.list_handlers() == []


def test_your_own_events_go_through_execute(rec):
    r = rec([("myapp", "job", "done")])
    telemetry.execute(("myapp", "job", "done"), {"duration": 0.5}, {"job": 7})
    telemetry.execute(("myapp", "job", "other"), {}, {})
    assert r.seen == [(("myapp", "job", "done"), {"duration": 0.5}, {"job": 7})]


def test_a_handler_that_raises_is_detached_and_reported_once_and_the_others_still_run(caplog):
    caplog.set_level(logging.ERROR, logger="greentree")
    calls = []

    def bad(event, measurements, metadata):
        calls.append("bad")
        raise RuntimeError("handler bug")

    telemetry.attach("bad", telemetry.CHILD_START, bad)
    telemetry.attach("good", telemetry.CHILD_START, lambda *a: calls.append("good"))
    try:
        with DynamicSupervisor() as dyn:
            dyn.start_child(ChildSpec(None, gevent.sleep, 10))
            dyn.start_child(ChildSpec(None, gevent.sleep, 10))
        assert calls == ["bad", "good", "good"]
        assert [h.id for h in telemetry.list_handlers()] == ["good"]
        reports = [r for r in caplog.records if "telemetry handler" in r.getMessage()]
        assert len(reports) == 1
        assert "'bad'" in reports[0].getMessage() and "RuntimeError" in reports[0].getMessage()
        assert reports[0].exc_info is not None
    finally:
        telemetry.detach("good")
        telemetry.detach("bad")


# ---------------------------------------------------------------- the tree's events
def test_start_exit_and_restart_name_the_tree_path_child_and_decision(rec):
    r = rec()
    runs = []

    def flaky():
        runs.append(1)
        if len(runs) == 1:
            raise ValueError("first run fails")
        gevent.sleep(3600)

    inner = Supervisor.child_spec("workers", [ChildSpec("db", flaky)])
    with Supervisor([inner], name="app"):
        wait_until(lambda: len(runs) == 2)
    starts = r.of(telemetry.CHILD_START)
    # db, then the inner supervisor (after its children), then db again (the restart)
    assert [(md["path"], md["child_id"], md["restart"]) for _, md in starts] == [
        (("app", "workers"), "db", False), (("app",), "workers", False), (("app", "workers"), "db", True)]
    assert all(m["duration"] >= 0 for m, _ in starts)
    exits = r.of(telemetry.CHILD_EXIT)
    first = exits[0]
    assert first[1]["child_id"] == "db" and first[1]["kind"] == "crash" and first[1]["decision"] == "restart"
    assert isinstance(first[1]["reason"], ValueError) and first[0]["uptime"] >= 0
    # the shutdown: db stopped by its supervisor, then the inner supervisor by the root
    assert [(md["child_id"], md["kind"], md["decision"]) for _, md in exits[1:]] == [
        ("db", "shutdown", "stopped"), ("workers", "shutdown", "stopped")]
    (m, md), = r.of(telemetry.SUPERVISOR_RESTART)
    assert md["path"] == ("app", "workers") and md["child_id"] == "db" and md["strategy"] == "one_for_one"
    assert md["supervisor_name"] is None and isinstance(md["supervisor"], Supervisor)
    assert m == {"recent_restarts": 1, "max_restarts": 3}
    assert telemetry.format_path(md["path"] + (md["child_id"],)) == "app/workers/db"


def test_a_transient_child_that_returns_is_kept_and_a_temporary_one_dropped(rec):
    r = rec([telemetry.CHILD_EXIT])
    with Supervisor([ChildSpec("t", lambda: None, restart="transient"),
                     ChildSpec("tmp", lambda: None, restart="temporary")], name="app"):
        wait_until(lambda: len(r.seen) == 2)
    assert sorted((md["child_id"], md["kind"], md["decision"]) for _, md in r.of(telemetry.CHILD_EXIT)) == [
        ("t", "normal", "keep"), ("tmp", "normal", "drop")]


def test_giving_up_emits_give_up_with_the_limits_and_the_error(rec):
    r = rec()

    def crash():
        raise RuntimeError("always")

    sup = Supervisor([ChildSpec("c", crash)], name="app", max_restarts=2, max_seconds=10)
    sup.start()
    sup.join(5)
    assert sup.dead
    (m, md), = r.of(telemetry.SUPERVISOR_GIVE_UP)
    assert m == {"max_restarts": 2, "max_seconds": 10.0}
    assert md["path"] == ("app",) and md["child_id"] == "c"
    assert isinstance(md["error"], greentree.RestartIntensityExceeded) and isinstance(md["reason"], RuntimeError)
    assert len(r.of(telemetry.SUPERVISOR_RESTART)) == 2


def test_a_child_that_fails_to_start_emits_start_failure_with_its_phase(rec):
    r = rec([telemetry.CHILD_START_FAILURE])

    def boom(*a):
        raise OSError("no such file")

    class Bad(greentree.Greenlet):
        def __init__(self):
            raise OSError("constructor fails")

    sup = Supervisor([ChildSpec("bad", Bad)], name="init-fails")
    sup.start()
    with pytest.raises(greentree.StartChildError):
        sup.wait_started()
    with DynamicSupervisor(name="dyn") as dyn:
        with pytest.raises(greentree.StartChildError):
            dyn.start_child(ChildSpec("x", Bad))
    with Supervisor([], name="static") as st:
        with pytest.raises(greentree.StartChildError):
            st.start_child(ChildSpec("y", Bad))
    got = [(md["path"], md["child_id"], md["phase"], type(md["reason"]).__name__) for _, md in
           r.of(telemetry.CHILD_START_FAILURE)]
    assert got == [(("init-fails",), "bad", "init", "OSError"), (("dyn",), "x", "start_child", "OSError"),
                   (("static",), "y", "start_child", "OSError")]


def test_a_failed_restart_emits_start_failure_in_the_restart_phase(rec):
    r = rec([telemetry.CHILD_START_FAILURE])
    attempts = []

    class Flaky(greentree.Greenlet):
        def __init__(self):
            attempts.append(1)
            if len(attempts) in (2, 3):
                raise OSError("not yet")
            greentree.Greenlet.__init__(self)

        def _run(self):
            if len(attempts) == 1:
                raise ValueError("crash once")
            gevent.sleep(3600)

    with Supervisor([ChildSpec("f", Flaky)], name="app", max_restarts=10):
        wait_until(lambda: len(attempts) == 4)
    assert [(md["child_id"], md["phase"]) for _, md in r.of(telemetry.CHILD_START_FAILURE)] == [
        ("f", "restart"), ("f", "restart")]


def test_a_zombie_emits_zombie_with_the_supervisors_count(rec, monkeypatch):
    monkeypatch.setattr("greentree._process.KILL_GRACE", 0.05)
    r = rec([telemetry.CHILD_ZOMBIE])

    class Stubborn(greentree.Greenlet):
        """Ignores ShutdownExit and greentree's kill until told to go."""

        go = False

        def _run(self):
            while not self.go:
                with contextlib.suppress(BaseException):
                    gevent.sleep(3600)

    sup = Supervisor([ChildSpec("z", Stubborn, shutdown=0.05)], name="app")
    sup.start()
    sup.wait_started()
    g = sup.which_children()[0].child
    sup.stop()
    (m, md), = r.of(telemetry.CHILD_ZOMBIE)
    assert m == {"zombies": 1} and md["child_id"] == "z" and md["child"] is g and md["path"] == ("app",)
    g.go = True
    g.kill()


def test_a_dynamic_childs_path_is_its_supervisors_and_its_id_may_be_none(rec):
    r = rec([telemetry.CHILD_START])
    pool = DynamicSupervisor.child_spec("pool")
    with Supervisor([pool], name="app") as root:
        dyn = root.which_children()[0].child
        g = dyn.start_child(ChildSpec(None, gevent.sleep, 10))
        assert telemetry.locate(g) == (("app", "pool"), None)
    md = r.of(telemetry.CHILD_START)[-1][1]
    assert md["path"] == ("app", "pool") and md["child_id"] is None and md["child"] is g
    assert telemetry.format_path(md["path"] + (None,)) == "app/pool/*"


def test_locate_follows_a_greenlet_a_child_spawned_back_to_that_child():
    found = []

    def parent():
        helper = gevent.spawn(lambda: found.append(telemetry.locate(gevent.getcurrent())))
        helper.join()
        gevent.sleep(10)

    with Supervisor([ChildSpec("owner", parent)], name="app"):
        wait_until(lambda: found)
    assert found == [(("app",), "owner")]
    assert telemetry.locate(gevent.getcurrent()) == (None, None)


# ---------------------------------------------------------------- registries
def test_registry_claims_and_conflicts(rec):
    r = rec([telemetry.REGISTRY_CLAIM, telemetry.REGISTRY_CONFLICT])
    reg = Registry(name="names")
    a = greentree.Greenlet(gevent.sleep, 10)
    b = greentree.Greenlet(gevent.sleep, 10)
    a.start()
    b.start()
    try:
        reg.register("k", 1, greenlet=a)
        with pytest.raises(greentree.AlreadyRegisteredError):
            reg.register("k", 2, greenlet=b)
    finally:
        gevent.killall([a, b])
    (m, claim), = r.of(telemetry.REGISTRY_CLAIM)
    assert claim == {"registry": reg, "key": "k", "owner": a, "value": 1} and m == {"count": 1}
    (_, conflict), = r.of(telemetry.REGISTRY_CONFLICT)
    assert conflict == {"registry": reg, "key": "k", "owner": a, "claimant": b}


# ---------------------------------------------------------------- WebSocket connections
def test_websocket_open_close_and_refusals(rec):
    r = rec([telemetry.WEBSOCKET_OPEN, telemetry.WEBSOCKET_CLOSE, telemetry.WEBSOCKET_REFUSED])

    def on_connect(request):
        return 403 if request.path == "/no" else None

    s = Served(lambda c, conv, body: body, on_connect=on_connect)
    try:
        def client():
            ws = websocket.create_connection(s.url, timeout=5)
            ws.close()

        InThread(client).result()
        wait_until(lambda: r.of(telemetry.WEBSOCKET_CLOSE), what="the close event")
        refused = InThread(http_raw, s.port, upgrade_head(path="/no")).result()
        assert refused.startswith(b"HTTP/1.1 403")
    finally:
        s.stop()
    (m_open, opened), = r.of(telemetry.WEBSOCKET_OPEN)
    assert opened["service"] is s.svc and opened["peer"][0] == "127.0.0.1" and m_open["connections"] == 1
    assert opened["path"][0] == "ws-test"
    (_, closed), = r.of(telemetry.WEBSOCKET_CLOSE)
    assert closed["instance_id"] == opened["instance_id"] and closed["code"] == 1000
    (_, no), = r.of(telemetry.WEBSOCKET_REFUSED)
    assert no["status"] == 403 and no["reason"] == "on_connect" and no["request_path"] == "/no"


# ---------------------------------------------------------------- instances
def test_instance_transitions_name_the_instance_and_both_states(rec, tmp_path):
    from greentree.testing import FakeClock

    r = rec([telemetry.INSTANCE_TRANSITION])
    order = greentree.StateMachine("order", initial="new", transitions={("new", "pay"): "paid"})
    clock = FakeClock(1_800_000_000.0)
    with greentree.InstanceManager([order], partitions=2, store_dir=tmp_path, clock=clock) as im:
        im.init_instance("order", "o-1")
        clock.advance(7)
        im.transition("o-1", "pay", "paid")
    (m, md), = r.of(telemetry.INSTANCE_TRANSITION)
    assert m == {"time_in_state": 7.0}
    assert (md["instance_id"], md["spec"], md["action"], md["from_state"], md["to_state"]) == (
        "o-1", "order", "pay", "new", "paid")
    assert md["manager"] is im and md["shard"] == im.partition_for("o-1")


# ---------------------------------------------------------------- clusters
def test_cluster_nodeup_and_nodedown(rec):
    from cluster_support import EtcdServer, etcd_available

    if not etcd_available():
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    r = rec([telemetry.CLUSTER_NODEUP, telemetry.CLUSTER_NODEDOWN])
    server = EtcdServer(1).start()
    roots = []
    try:
        url = f"{server.url}/t{uuid.uuid4().hex[:8]}"

        def node(name):
            c = greentree.Cluster(url, node=name, ttl=2.0, listen=("127.0.0.1", 0), secret=b"test-secret-123")
            root = Supervisor([c.child_spec()], name=f"root-{name}", max_restarts=0)
            root.start()
            root.wait_started()
            roots.append(root)
            wait_until(lambda: c.state == "up", timeout=10)
            return c

        a = node("a")
        node("b")
        wait_until(lambda: any(md["node"] == "b" and md["cluster"] is a for _, md in r.of(telemetry.CLUSTER_NODEUP)),
                   timeout=10)
        roots.pop().stop(timeout=5)
        wait_until(lambda: any(md["node"] == "b" and md["cluster"] is a
                               for _, md in r.of(telemetry.CLUSTER_NODEDOWN)), timeout=10)
        m, md = [x for x in r.of(telemetry.CLUSTER_NODEDOWN) if x[1]["cluster"] is a][0]
        assert md["reason"] == "left" and md["self"] == "a" and m == {"nodes": 0}
    finally:
        for root in reversed(roots):
            root.stop(timeout=5)
        server.stop()


# ---------------------------------------------------------------- cost
def test_with_nothing_attached_every_slot_is_an_empty_list():
    from greentree import _base, _children, _registry

    assert telemetry.list_handlers() == []
    for slot in (_children._T_START, _base._T_EXIT, _base._T_RESTART, _registry._T_CLAIM):
        assert slot == [] and not slot
