"""Registry, from Elixir's registry_test.exs: unique and duplicate keys, cleanup
on every kind of exit, already-registered races, dispatch, keys/count, naming
children with ``via`` and resolve-or-start."""

from __future__ import annotations

import gevent
import greenlet as raw_greenlet
import pytest
from gevent.event import Event

import greentree
from greentree import (
    AlreadyRegisteredError,
    AlreadyStartedError,
    ChildSpec,
    ChildSpecError,
    DynamicSupervisor,
    NotRunningError,
    Registry,
    RegistryError,
    Server,
    StartChildError,
    Supervisor,
)
from greentree.testing import wait_until

# ---------------------------------------------------------------- helpers


class Owners:
    """Greenlets parked on an Event; every one is killed at teardown."""

    def __init__(self):
        self.all = []

    def parked(self, cls=greentree.Greenlet, start=True):
        release = Event()
        g = cls(release.wait)
        g.release = release
        self.all.append(g)
        if start:
            g.start()
            gevent.sleep(0)  # let it run up to its wait
        return g

    def registering(self, registry, key, value=None, cls=greentree.Greenlet):
        """A greenlet that registers ``key`` itself, then parks."""
        release = Event()
        done = Event()

        def body():
            registry.register(key, value)
            done.set()
            release.wait()

        g = cls(body)
        g.release = release
        self.all.append(g)
        g.start()
        done.wait(5)
        return g

    def close(self):
        gevent.killall([g for g in self.all if not g.dead])


@pytest.fixture
def owners():
    o = Owners()
    yield o
    o.close()


class Echo(Server):
    def init(self, tag=None):
        self.tag = tag

    def handle_call(self, msg, caller):
        return (self.tag, msg)


# ---------------------------------------------------------------- construction


def test_keys_mode_must_be_unique_or_duplicate():
    with pytest.raises(RegistryError, match="keys must be 'unique' or 'duplicate', not 'uniq'"):
        Registry(keys="uniq")
    assert isinstance(RegistryError("x"), ValueError)


def test_repr_len_and_describe_show_the_registry_state(owners):
    reg = Registry(name="instances")
    g = owners.parked()
    reg.register("a", greenlet=g)
    assert repr(reg) == "<Registry('instances') keys='unique' count=1>"
    assert len(reg) == 1
    assert reg.describe() == {"name": "instances", "keys": "unique", "count": 1, "owners": 1}


# ---------------------------------------------------------------- unique keys


def test_unique_key_registers_the_calling_greenlet(owners):
    reg = Registry()
    g = owners.registering(reg, "conn", "v")
    assert reg.whereis("conn") is g
    assert reg.lookup("conn") == [(g, "v")]
    assert reg.keys(g) == ["conn"]
    assert reg.values("conn", g) == ["v"]
    assert reg.count() == 1


def test_unique_key_held_by_another_greenlet_raises_already_registered_with_owner(owners):
    reg = Registry(name="r")
    first = owners.registering(reg, "conn", 1)
    second = owners.parked()
    with pytest.raises(AlreadyRegisteredError, match=r"Registry\('r'\): key 'conn' is already registered") as info:
        reg.register("conn", 2, greenlet=second)
    assert info.value.owner is first
    assert reg.lookup("conn") == [(first, 1)]
    assert reg.keys(second) == []


def test_unique_key_registered_twice_by_the_same_greenlet_raises_with_itself_as_owner(owners):
    reg = Registry()
    g = owners.parked()
    reg.register("k", 1, greenlet=g)
    with pytest.raises(AlreadyRegisteredError) as info:
        reg.register("k", 2, greenlet=g)
    assert info.value.owner is g
    assert reg.lookup("k") == [(g, 1)]


def test_keys_may_be_any_hashable_value(owners):
    reg = Registry()
    g = owners.parked()
    keys = [("i-1", "connection"), None, 0, frozenset({1}), ("nested", ("tuple", 2))]
    for i, key in enumerate(keys):
        reg.register(key, i, greenlet=g)
    for i, key in enumerate(keys):
        assert reg.lookup(key) == [(g, i)]
    assert sorted(map(repr, reg.keys(g))) == sorted(map(repr, keys))
    g.kill()
    assert reg.count() == 0
    assert all(reg.lookup(k) == [] for k in keys)


def test_unhashable_key_raises_registry_error_and_changes_nothing(owners):
    reg = Registry()
    g = owners.parked()
    with pytest.raises(RegistryError, match=r"register\(\['a'\]\): keys must be hashable"):
        reg.register(["a"], greenlet=g)
    assert reg.count() == 0
    assert reg.keys(g) == []
    assert not g._gt_hooks


def _hooks(g):
    """A child's exit hooks as a list (one hook is kept without a list)."""
    hooks = g._gt_hooks
    return [] if hooks is None else hooks if isinstance(hooks, list) else [hooks]


def test_one_owner_may_hold_many_keys_with_one_exit_hook(owners):
    reg = Registry()
    g = owners.parked()
    for k in ("a", "b", "c"):
        reg.register(k, greenlet=g)
    assert sorted(reg.keys(g)) == ["a", "b", "c"]
    assert _hooks(g).count(reg._on_exit) == 1
    g.kill()
    assert reg.count() == 0
    assert reg.keys(g) == []


def test_two_registries_each_free_the_names_of_a_shared_owner(owners):
    r1, r2 = Registry(), Registry(keys="duplicate")
    g = owners.parked()
    r1.register("a", greenlet=g)
    r2.register("topic", greenlet=g)
    g.kill()
    assert (r1.count(), r2.count()) == (0, 0)


def test_unregister_frees_the_key_and_ignores_non_owners(owners):
    reg = Registry()
    g, other = owners.parked(), owners.parked()
    reg.register("a", greenlet=g)
    reg.register("b", greenlet=g)
    reg.unregister("a", greenlet=other)  # not the owner: nothing happens
    assert reg.whereis("a") is g
    reg.unregister("a", greenlet=g)
    assert reg.whereis("a") is None
    assert reg.keys(g) == ["b"]
    reg.unregister("never-registered", greenlet=g)
    reg.register("a", greenlet=other)
    assert reg.whereis("a") is other


def test_unregister_of_the_last_key_removes_the_exit_hook(owners):
    reg = Registry()
    g = owners.parked()
    reg.register("a", greenlet=g)
    reg.register("b", greenlet=g)
    reg.unregister("a", greenlet=g)
    assert _hooks(g).count(reg._on_exit) == 1
    reg.unregister("b", greenlet=g)
    assert reg._on_exit not in _hooks(g)
    reg.register("c", greenlet=g)
    assert _hooks(g).count(reg._on_exit) == 1


def test_unregister_without_greenlet_uses_the_calling_greenlet(owners):
    reg = Registry()
    result = []

    def body():
        reg.register("me")
        reg.unregister("me")
        result.append(reg.whereis("me"))

    g = greentree.Greenlet(body)
    g.start()
    g.join(5)
    assert result == [None]


def test_values_are_returned_only_for_their_owner(owners):
    reg = Registry()
    g, other = owners.parked(), owners.parked()
    reg.register("a", {"role": "conn"}, greenlet=g)
    assert reg.values("a", g) == [{"role": "conn"}]
    assert reg.values("a", other) == []
    assert reg.values("missing", g) == []


def test_a_dead_greenlet_cannot_register(owners):
    reg = Registry()
    g = owners.parked()
    g.kill()
    with pytest.raises(NotRunningError, match="has exited and cannot hold a name"):
        reg.register("a", greenlet=g)
    assert reg.count() == 0


def test_the_main_greenlet_cannot_hold_a_name():
    reg = Registry(name="r")
    with pytest.raises(RegistryError, match="the main greenlet cannot hold a name"):
        reg.register("a")
    assert reg.count() == 0


def test_a_raw_greenlet_is_refused_with_a_clear_error():
    reg = Registry()
    raw = raw_greenlet.greenlet(lambda: None)
    with pytest.raises(RegistryError, match="the raw greenlet .* cannot hold a name"):
        reg.register("a", greenlet=raw)
    with pytest.raises(RegistryError, match="must be a gevent Greenlet"):
        reg.register("a", greenlet="not a greenlet")


# ---------------------------------------------------------------- cleanup on every exit


EXITS = [
    "return",
    pytest.param("crash", marks=pytest.mark.allow_hub_errors),
    "kill",
    "shutdown_exit",
    "unlink_all_then_return",
]


def _end(g, how):
    if how in ("return", "unlink_all_then_return"):
        g.release.set()
    elif how == "crash":
        g.crash = True
        g.release.set()
    elif how == "kill":
        g.kill()
    elif how == "shutdown_exit":
        g.kill(greentree.ShutdownExit)
    g.join(5)
    assert g.dead


def _owner_body(registry, key, how):
    def body():
        registry.register(key, "v")
        if how == "unlink_all_then_return":
            gevent.getcurrent().unlink_all()
        gevent.getcurrent().release.wait()
        if getattr(gevent.getcurrent(), "crash", False):
            raise RuntimeError("owner crashed")
    return body


@pytest.mark.parametrize("how", EXITS)
def test_unique_key_is_freed_the_moment_a_greentree_owner_ends(how):
    reg = Registry()
    seen_by_link = []
    g = greentree.Greenlet(_owner_body(reg, ("i-1", "conn"), how))
    g.release = Event()
    g.start()
    gevent.sleep(0)
    assert reg.whereis(("i-1", "conn")) is g
    if how != "unlink_all_then_return":
        g.rawlink(lambda dead: seen_by_link.append(reg.count()))
    _end(g, how)
    # Freed in the owner's own finally: nothing waits for the hub.
    assert reg.count() == 0
    assert reg.whereis(("i-1", "conn")) is None
    assert reg.keys(g) == []
    if how != "unlink_all_then_return":
        wait_until(lambda: seen_by_link, what="the user's link")
        assert seen_by_link == [0]  # even a link sees the name already gone


@pytest.mark.parametrize("how", EXITS)
def test_duplicate_key_is_freed_the_moment_a_greentree_owner_ends(how):
    reg = Registry(keys="duplicate")
    g = greentree.Greenlet(_owner_body(reg, "topic", how))
    g.release = Event()
    g.start()
    gevent.sleep(0)
    assert reg.lookup("topic") == [(g, "v")]
    _end(g, how)
    assert reg.count() == 0
    assert reg.lookup("topic") == []


@pytest.mark.parametrize("started", [False, True], ids=["never_started", "started_not_yet_run"])
def test_unique_key_is_freed_when_its_owner_is_killed_before_it_ran(started):
    reg = Registry()
    g = greentree.Greenlet(gevent.sleep, 3600)
    reg.register("k", greenlet=g)
    if started:
        g.start()
    g.kill()
    assert g.dead
    assert reg.whereis("k") is None          # never returned dead
    wait_until(lambda: reg.count() == 0, what="the exit notification from the hub")
    assert reg.keys(g) == []


@pytest.mark.parametrize("how", EXITS)
def test_a_plain_gevent_greenlet_owner_is_never_returned_dead_and_is_freed(how):
    reg = Registry()
    g = gevent.Greenlet(_owner_body(reg, "k", how))
    g.release = Event()
    g.start()
    gevent.sleep(0)
    assert reg.whereis("k") is g
    _end(g, how)
    assert reg.whereis("k") is None  # the dead check, before or after the rawlink ran
    wait_until(lambda: reg.count() == 0, what="the registry to forget the dead owner")


def test_a_dead_plain_owners_key_can_be_taken_before_its_link_runs(owners):
    reg = Registry()
    g = gevent.Greenlet(gevent.sleep, 3600)
    reg.register("k", greenlet=g)
    g.unlink_all()  # the registry's rawlink is gone: only the dead check can free the key
    g.kill()
    newcomer = owners.parked()
    reg.register("k", greenlet=newcomer)
    assert reg.whereis("k") is newcomer
    assert reg.keys(g) == []


def test_a_restarted_child_can_register_its_name_again_at_once():
    reg = Registry()
    runs = []

    def child():
        reg.register("singleton", len(runs))
        runs.append(gevent.getcurrent())
        if len(runs) == 1:
            raise RuntimeError("first run crashes")
        gevent.sleep(3600)

    with Supervisor([ChildSpec("c", child)]) as sup:
        wait_until(lambda: len(runs) == 2, what="the restart")
        assert reg.lookup("singleton") == [(runs[1], 1)]
        assert sup.which_children()[0].child is runs[1]
    assert reg.count() == 0


@pytest.mark.timeout(60)
def test_ten_thousand_greenlets_hold_ten_thousand_names(owners):
    reg = Registry(name="big")
    release = Event()
    gs = [greentree.Greenlet.spawn(release.wait) for _ in range(10_000)]
    gevent.sleep(0)
    try:
        for i, g in enumerate(gs):
            reg.register(("conn", i), i, greenlet=g)
        assert reg.count() == 10_000
        assert all(reg.whereis(("conn", i)) is g for i, g in enumerate(gs))
        for g in gs[:5000]:
            g.kill(block=False)
        gevent.joinall(gs[:5000], timeout=30)
        assert reg.count() == 5000
        release.set()
        gevent.joinall(gs, timeout=30)
        assert reg.count() == 0
        assert len(reg._owned) == 0
    finally:
        gevent.killall(gs)


# ---------------------------------------------------------------- races


def test_already_registered_race_exactly_one_of_fifty_greenlets_wins():
    reg = Registry()
    go, release = Event(), Event()
    outcomes = {}

    def contender(i):
        go.wait()
        try:
            reg.register("leader", i)
            outcomes[i] = "won"
        except AlreadyRegisteredError as e:
            outcomes[i] = e.owner
        release.wait()

    gs = [greentree.Greenlet.spawn(contender, i) for i in range(50)]
    gevent.sleep(0)
    go.set()
    wait_until(lambda: len(outcomes) == 50, what="all contenders")
    winners = [i for i, o in outcomes.items() if o == "won"]
    assert len(winners) == 1
    winner = gs[winners[0]]
    assert all(o is winner for i, o in outcomes.items() if i != winners[0])
    assert reg.lookup("leader") == [(winner, winners[0])]
    release.set()
    gevent.joinall(gs, timeout=5)
    assert reg.count() == 0


# ---------------------------------------------------------------- duplicate keys


def test_duplicate_keys_allow_many_greenlets_and_repeated_registration(owners):
    reg = Registry(keys="duplicate")
    a, b = owners.parked(), owners.parked()
    reg.register("topic", 1, greenlet=a)
    reg.register("topic", 2, greenlet=a)
    reg.register("topic", 3, greenlet=b)
    assert sorted(v for _, v in reg.lookup("topic")) == [1, 2, 3]
    assert reg.values("topic", a) == [1, 2]
    assert reg.keys(a) == ["topic"]
    assert reg.count() == 3


def test_duplicate_unregister_removes_every_entry_of_that_greenlet(owners):
    reg = Registry(keys="duplicate")
    a, b = owners.parked(), owners.parked()
    reg.register("topic", 1, greenlet=a)
    reg.register("topic", 2, greenlet=a)
    reg.register("topic", 3, greenlet=b)
    reg.unregister("topic", greenlet=a)
    assert reg.lookup("topic") == [(b, 3)]
    assert reg.count() == 1
    assert reg.keys(a) == []


def test_dispatch_calls_fn_once_with_the_live_entries(owners):
    reg = Registry(keys="duplicate")
    subs = [owners.parked() for _ in range(3)]
    for i, g in enumerate(subs):
        reg.register("news", i, greenlet=g)
    calls = []
    reg.dispatch("news", calls.append)
    assert len(calls) == 1
    assert sorted(calls[0], key=lambda e: e[1]) == [(g, i) for i, g in enumerate(subs)]
    subs[1].kill()
    calls.clear()
    reg.dispatch("news", calls.append)
    assert sorted(v for _, v in calls[0]) == [0, 2]


def test_dispatch_does_not_call_fn_when_nobody_is_registered():
    reg = Registry(keys="duplicate")
    reg.dispatch("nobody", lambda entries: pytest.fail("called"))


def test_dispatch_skips_a_dead_subscriber_whose_link_has_not_run(owners):
    reg = Registry(keys="duplicate")
    live = owners.parked()
    dead = gevent.Greenlet(gevent.sleep, 3600)
    reg.register("t", "live", greenlet=live)
    reg.register("t", "dead", greenlet=dead)
    dead.unlink_all()
    dead.kill()
    got = []
    reg.dispatch("t", got.extend)
    assert got == [(live, "live")]
    assert reg.count() == 1


def test_dispatch_works_on_a_unique_registry_too(owners):
    reg = Registry()
    g = owners.parked()
    reg.register("k", "v", greenlet=g)
    got = []
    reg.dispatch("k", got.extend)
    assert got == [(g, "v")]


def test_whereis_via_and_resolve_or_start_refuse_a_duplicate_registry():
    reg = Registry(keys="duplicate", name="topics")
    with pytest.raises(RegistryError, match="only a unique registry"):
        reg.whereis("t")
    with pytest.raises(RegistryError, match="only a unique registry"):
        reg.via("t")


# ---------------------------------------------------------------- via: naming children


def test_via_has_a_readable_repr_and_compares_by_registry_and_key():
    reg = Registry(name="app")
    via = reg.via(("i-1", "connection"))
    assert repr(via) == "Registry('app').via(('i-1', 'connection'))"
    assert repr(reg.via("k", "v")) == "Registry('app').via('k', 'v')"
    assert via == reg.via(("i-1", "connection"))
    assert via != Registry(name="app").via(("i-1", "connection"))
    assert hash(via) == hash(reg.via(("i-1", "connection")))


def test_via_names_a_supervised_child_and_every_restart_rebinds_the_new_greenlet():
    reg = Registry()
    runs = []

    def child():
        runs.append(gevent.getcurrent())
        if len(runs) < 3:
            raise RuntimeError("crash")
        gevent.sleep(3600)

    spec = ChildSpec("c", child, register=reg.via(("i-1", "worker"), "meta"))
    with Supervisor([spec], max_restarts=5) as sup:
        wait_until(lambda: len(runs) == 3, what="two restarts")
        assert reg.lookup(("i-1", "worker")) == [(runs[2], "meta")]
        assert sup.which_children()[0].child is runs[2]
        assert spec.register.whereis() is runs[2]
    assert reg.count() == 0


def test_a_taken_via_name_makes_start_child_fail_with_the_already_started_owner(owners):
    reg = Registry()
    holder = owners.parked()
    reg.register("conn", greenlet=holder)
    with DynamicSupervisor() as dyn:
        with pytest.raises(AlreadyStartedError, match="its name .* is held by") as info:
            dyn.start_child(ChildSpec(None, gevent.sleep, 3600, register=reg.via("conn")))
        assert info.value.owner is holder
        assert dyn.count_children().active == 0


def test_a_static_supervisor_fails_to_start_when_a_childs_name_is_taken(owners):
    reg = Registry()
    holder = owners.parked()
    reg.register("db", greenlet=holder)
    sup = Supervisor([ChildSpec("db", gevent.sleep, 3600, register=reg.via("db"))])
    sup.start()
    with pytest.raises(StartChildError) as info:
        sup.wait_started(5)
    assert isinstance(info.value, AlreadyStartedError)
    assert info.value.owner is holder
    sup.join(5)


def test_via_bind_is_idempotent_for_the_greenlet_that_holds_the_name(owners):
    reg = Registry()
    g = owners.parked()
    via = reg.via("k", "v")
    via.bind(g)
    via.bind(g)
    assert reg.lookup("k") == [(g, "v")]
    assert _hooks(g).count(reg._on_exit) == 1


def test_a_server_named_by_via_in_its_spec_is_reachable_by_that_name():
    reg = Registry()
    via = reg.via("echo")
    with Supervisor([ChildSpec("echo", Echo, "t", register=via)]):
        assert via.call("hi") == ("t", "hi")
        assert reg.call("echo", "ho") == ("t", "ho")
    assert via.whereis() is None


# ---------------------------------------------------------------- resolve_or_start


class SlowInit(Server):
    """A server whose init waits for the test: the start handshake is held open."""

    inits = 0

    def init(self, gate):
        type(self).inits += 1
        gate.wait()

    def handle_call(self, msg, caller):
        return msg


def test_resolve_or_start_returns_the_registered_child_or_starts_it():
    reg = Registry()
    with DynamicSupervisor() as dyn:
        spec = ChildSpec(None, Echo, "a", restart="temporary")
        g = reg.resolve_or_start("a", dyn, spec)
        assert isinstance(g, Echo)
        assert reg.whereis("a") is g
        assert reg.resolve_or_start("a", dyn, spec) is g
        assert dyn.count_children().active == 1
        assert g.call("x") == ("a", "x")


@pytest.mark.timeout(30)
def test_resolve_or_start_starts_exactly_one_child_for_fifty_racing_greenlets():
    reg = Registry()
    gate = Event()
    SlowInit.inits = 0
    with DynamicSupervisor() as dyn:
        spec = ChildSpec(None, SlowInit, gate, restart="temporary")
        results = {}

        def resolver(i):
            results[i] = reg.resolve_or_start(("app", "my-app"), dyn, spec, timeout=10)

        racers = [gevent.spawn(resolver, i) for i in range(50)]
        wait_until(lambda: SlowInit.inits == 1, what="the first init")
        gevent.sleep(0)
        assert not results  # nobody got a half-started child through start_child
        gate.set()
        gevent.joinall(racers, timeout=10, raise_error=True)
        assert len(results) == 50
        winner = reg.whereis(("app", "my-app"))
        assert all(g is winner for g in results.values())
        assert SlowInit.inits == 1
        assert dyn.count_children().active == 1
        assert winner.call("ping") == "ping"


def test_resolve_or_start_starts_a_new_child_after_the_old_one_died():
    reg = Registry()
    with DynamicSupervisor() as dyn:
        spec = ChildSpec(None, Echo, restart="temporary")
        first = reg.resolve_or_start("k", dyn, spec)
        first.stop()
        second = reg.resolve_or_start("k", dyn, spec)
        assert second is not first and not second.dead
        assert reg.whereis("k") is second


def test_resolve_or_start_refuses_a_spec_named_with_another_key():
    reg = Registry()
    with DynamicSupervisor() as dyn:
        spec = ChildSpec(None, Echo, register=reg.via("other"))
        with pytest.raises(ChildSpecError, match="registers Registry.*via\\('other'\\)"):
            reg.resolve_or_start("k", dyn, spec)
        assert dyn.count_children().specs == 0
        assert reg.resolve_or_start("k", dyn, spec.replace(register=reg.via("k"))) is reg.whereis("k")


def test_resolve_or_start_takes_a_supervisors_registry_key_and_waits_out_its_restart():
    reg = Registry(name="app")
    pool_spec = DynamicSupervisor.child_spec("pool", register=reg.via("pool"))
    with Supervisor([pool_spec], name="root", max_restarts=5) as root:
        first_pool = reg.whereis("pool")
        assert first_pool is not None
        worker = ChildSpec(None, gevent.sleep, 3600, restart="temporary")
        a = reg.resolve_or_start("user-1", "pool", worker)
        assert reg.whereis("user-1") is a
        # the pool crashes; its supervisor restarts it; a caller arriving
        # meanwhile waits for the new pool instead of failing
        first_pool.kill(RuntimeError("pool crashed"), block=False)
        b = reg.resolve_or_start("user-2", "pool", worker, timeout=5)
        new_pool = reg.whereis("pool")
        assert new_pool is not first_pool and not new_pool.dead
        assert b in [i.child for i in new_pool.which_children()]
        assert root.which_children()[0].child is new_pool


def test_resolve_or_start_with_an_unknown_supervisor_key_times_out_clearly():
    reg = Registry(name="app")
    with pytest.raises(NotRunningError, match="no supervisor is registered under 'nowhere'"):
        reg.resolve_or_start("k", "nowhere", ChildSpec(None, gevent.sleep, 1), timeout=0.05)
