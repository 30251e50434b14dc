"""A Hypothesis state machine for Registry: register / unregister / owner dies /
lookup, on a unique and a duplicate registry at once, against a pure model.

Owners are real greentree Greenlets parked on an Event; they end by returning,
crashing, being killed, or being killed before they ever ran.
"""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import greentree
from greentree import AlreadyRegisteredError, NotRunningError, Registry

KEY_LIST = ["a", "b", ("i-1", "conn"), ("i-2", "conn"), 0, None]
KEYS = st.sampled_from(KEY_LIST)
VALUES = st.integers(0, 3)


class Owner(greentree.Greenlet):
    """Parked until released; crashes quietly if told to (reported, not printed by the hub)."""

    _gt_catch = True

    def __init__(self):
        super().__init__()
        self.release = Event()
        self.crash = False

    def _run(self):
        self.release.wait()
        if self.crash:
            raise RuntimeError("owner crashed on purpose")


class RegistryMachine(RuleBasedStateMachine):
    owners = Bundle("owners")

    def __init__(self):
        super().__init__()
        self.unique = Registry(name="unique")
        self.dup = Registry(keys="duplicate", name="dup")
        self.u_model: dict = {}   # key -> (owner, value)
        self.d_model: dict = {}   # key -> {owner: [values]}
        self.live: list = []
        self.dead: list = []

    # ------------------------------------------------------------ owners
    @rule(target=owners, run=st.booleans())
    def new_owner(self, run):
        g = Owner()
        if run:
            g.start()
            gevent.sleep(0)
        self.live.append(g)
        return g

    def _forget(self, g):
        self.live.remove(g)
        self.dead.append(g)
        for key in [k for k, (o, _) in self.u_model.items() if o is g]:
            del self.u_model[key]
        for key in list(self.d_model):
            self.d_model[key].pop(g, None)
            if not self.d_model[key]:
                del self.d_model[key]

    @rule(g=consumes(owners), how=st.sampled_from(["return", "crash", "kill", "shutdown"]))
    def owner_ends(self, g, how):
        if g.gr_frame is None and not g.started and how in ("return", "crash"):
            how = "kill"  # never started: it can only be killed
        if how == "return":
            g.release.set()
        elif how == "crash":
            g.crash = True
            g.release.set()
        elif how == "kill":
            g.kill(block=False)
        else:
            g.kill(greentree.ShutdownExit, block=False)
        g.join(5)
        assert g.dead
        self._forget(g)

    # ------------------------------------------------------------ registering
    @rule(g=owners, key=KEYS, value=VALUES)
    def register_unique(self, g, key, value):
        held = self.u_model.get(key)
        if held is not None:
            with pytest.raises(AlreadyRegisteredError) as info:
                self.unique.register(key, value, greenlet=g)
            assert info.value.owner is held[0]
        else:
            self.unique.register(key, value, greenlet=g)
            self.u_model[key] = (g, value)

    @rule(g=owners, key=KEYS, value=VALUES)
    def register_duplicate(self, g, key, value):
        self.dup.register(key, value, greenlet=g)
        self.d_model.setdefault(key, {}).setdefault(g, []).append(value)

    @rule(g=owners, key=KEYS)
    def unregister(self, g, key):
        self.unique.unregister(key, greenlet=g)
        if key in self.u_model and self.u_model[key][0] is g:
            del self.u_model[key]
        self.dup.unregister(key, greenlet=g)
        if key in self.d_model:
            self.d_model[key].pop(g, None)
            if not self.d_model[key]:
                del self.d_model[key]

    @rule(key=KEYS, value=VALUES)
    def a_dead_greenlet_cannot_register(self, key, value):
        if not self.dead:
            return
        with pytest.raises(NotRunningError):
            self.unique.register(key, value, greenlet=self.dead[-1])

    # ------------------------------------------------------------ checks
    @invariant()
    def lookups_match_the_model(self):
        for key in KEY_LIST:
            assert self.unique.lookup(key) == ([self.u_model[key]] if key in self.u_model else [])
            want = sorted(
                ((id(g), v) for g, vs in self.d_model.get(key, {}).items() for v in vs)
            )
            assert sorted((id(g), v) for g, v in self.dup.lookup(key)) == want
            who = self.unique.whereis(key)
            assert who is (self.u_model[key][0] if key in self.u_model else None)
            assert who is None or not who.dead

    @invariant()
    def keys_and_counts_match_the_model(self):
        # Owners killed before they ran are freed from the hub: let it run.
        gevent.sleep(0)
        assert self.unique.count() == len(self.u_model)
        assert self.dup.count() == sum(len(vs) for d in self.d_model.values() for vs in d.values())
        for g in self.live + self.dead:
            want_u = sorted(repr(k) for k, (o, _) in self.u_model.items() if o is g)
            assert sorted(repr(k) for k in self.unique.keys(g)) == want_u
            want_d = sorted(repr(k) for k, d in self.d_model.items() if g in d)
            assert sorted(repr(k) for k in self.dup.keys(g)) == want_d

    def teardown(self):
        for g in self.live:
            g.kill(block=False)
        gevent.joinall(self.live, timeout=5)
        gevent.sleep(0)
        assert self.unique.count() == 0
        assert self.dup.count() == 0
        assert not self.unique._owned and not self.dup._owned


RegistryMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRegistryStateMachine = pytest.mark.timeout(120)(RegistryMachine.TestCase)
