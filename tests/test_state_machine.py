"""A Hypothesis state machine per strategy: drive a real Supervisor and compare
which_children()/count_children() with a pure model of OTP's rules."""

from __future__ import annotations

import gevent
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from greentree import (
    AlreadyPresentError,
    AlreadyStartedError,
    ChildNotFoundError,
    ChildRunningError,
    ChildSpec,
    NotRunningError,
    RestartIntensityExceeded,
    Supervisor,
)
from greentree._base import SupervisorBase
from greentree.testing import FakeClock, wait_until

IDS = ["a", "b", "c", "d", "e"]
RESTARTS = ["permanent", "transient", "temporary"]
MAX_RESTARTS = 2
MAX_SECONDS = 5.0


class Return(Exception):
    """Thrown into a child to make it return normally."""


def body():
    try:
        gevent.sleep(3600)
    except Return:
        return "done"


class Model:
    """OTP's supervisor rules, written without greenlets."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.children = {}  # id -> [restart, running], in start order
        self.times = []
        self.dead = False

    def add_restart(self, now):
        self.times = [t for t in self.times if now - t <= MAX_SECONDS] + [now]
        if len(self.times) > MAX_RESTARTS:
            self.dead = True
            for child in self.children.values():
                child[1] = False

    def exit(self, cid, kind, now):
        restart = self.children[cid][0]
        if restart == "temporary":
            del self.children[cid]
            return
        if restart == "transient" and kind == "return":
            self.children[cid][1] = False
            return
        self.add_restart(now)
        if self.dead:
            return
        order = list(self.children)
        if self.strategy == "one_for_one":
            affected = [cid]
        elif self.strategy == "one_for_all":
            affected = order
        else:
            affected = order[order.index(cid):]
        for other in affected:
            if other != cid and self.children[other][0] == "temporary":
                del self.children[other]  # a temporary bystander is dropped
            else:
                self.children[other][1] = True


_DELIVER = SupervisorBase._child_exited


def _deliver_from_the_hub(self, child, exit):
    gevent.get_hub().loop.run_callback(_DELIVER, self, child, exit)


def make_machine(strategy, path="inline"):
    """``path``: how events reach the supervisor.  ``inline``: drained by the
    greenlet that delivers them when the supervisor is idle (the default);
    ``worker``: always handed to a spawned greenlet; ``hub``: exits arrive
    from the hub.  The same model must hold on every path."""

    class SupervisorMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            SupervisorBase._mb_force_worker = path == "worker"
            if path == "hub":
                SupervisorBase._child_exited = _deliver_from_the_hub
            self.clock = FakeClock()
            self.model = Model(strategy)
            # two initial children, so exits can happen from the first step
            initial = [ChildSpec("a", body), ChildSpec("b", body, restart="transient")]
            self.model.children = {"a": ["permanent", True], "b": ["transient", True]}
            self.sup = Supervisor(initial, strategy=strategy, max_restarts=MAX_RESTARTS, max_seconds=MAX_SECONDS,
                                  clock=self.clock)
            self.sup.start()
            self.sup.wait_started(5)

        def teardown(self):
            try:
                self.sup.stop()
                assert self.sup.dead
            finally:
                SupervisorBase._mb_force_worker = False
                SupervisorBase._child_exited = _DELIVER

        # -------------------------------------------------------- helpers
        def sync(self):
            gevent.idle()  # exits delivered from the hub arrive after a trip round it
            try:
                self.sup.terminate_child("__sync__")
            except ChildNotFoundError:
                pass
            except NotRunningError:
                self.sup.join(5)

        def running_ids(self):
            return [cid for cid, (_, running) in self.model.children.items() if running]

        # -------------------------------------------------------- rules
        @precondition(lambda self: not self.model.dead)
        @rule(cid=st.sampled_from(IDS), restart=st.sampled_from(RESTARTS))
        def start_child(self, cid, restart):
            spec = ChildSpec(cid, body, restart=restart)
            known = self.model.children.get(cid)
            if known is None:
                g = self.sup.start_child(spec)
                assert not g.dead
                self.model.children[cid] = [restart, True]
            elif known[1]:
                with pytest.raises(AlreadyStartedError):
                    self.sup.start_child(spec)
            else:
                with pytest.raises(AlreadyPresentError):
                    self.sup.start_child(spec)

        @precondition(lambda self: not self.model.dead)
        @rule(cid=st.sampled_from(IDS))
        def terminate_child(self, cid):
            known = self.model.children.get(cid)
            if known is None:
                with pytest.raises(ChildNotFoundError):
                    self.sup.terminate_child(cid)
                return
            self.sup.terminate_child(cid)
            if known[0] == "temporary":
                del self.model.children[cid]
            else:
                known[1] = False

        @precondition(lambda self: not self.model.dead)
        @rule(cid=st.sampled_from(IDS))
        def restart_child(self, cid):
            known = self.model.children.get(cid)
            if known is None:
                with pytest.raises(ChildNotFoundError):
                    self.sup.restart_child(cid)
            elif known[1]:
                with pytest.raises(ChildRunningError):
                    self.sup.restart_child(cid)
            else:
                g = self.sup.restart_child(cid)
                assert not g.dead
                known[1] = True

        @precondition(lambda self: not self.model.dead)
        @rule(cid=st.sampled_from(IDS))
        def delete_child(self, cid):
            known = self.model.children.get(cid)
            if known is None:
                with pytest.raises(ChildNotFoundError):
                    self.sup.delete_child(cid)
            elif known[1]:
                with pytest.raises(ChildRunningError):
                    self.sup.delete_child(cid)
            else:
                self.sup.delete_child(cid)
                del self.model.children[cid]

        @precondition(lambda self: not self.model.dead and self.running_ids())
        @rule(data=st.data(), kind=st.sampled_from(["crash", "return"]))
        def child_exits(self, data, kind):
            cid = data.draw(st.sampled_from(self.running_ids()))
            g = {i.id: i.child for i in self.sup.which_children()}[cid]
            wait_until(lambda: g.gr_frame is not None or g.dead, what="the child to run")
            g.kill(RuntimeError("crash") if kind == "crash" else Return(), block=True)
            self.sync()
            self.model.exit(cid, kind, self.clock())
            event(f"{kind} -> supervisor gave up" if self.model.dead else f"{kind} handled")

        @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 6.0]))
        def advance_clock(self, seconds):
            self.clock.advance(seconds)

        @precondition(lambda self: self.model.dead)
        @rule()
        def calls_to_a_dead_supervisor_raise_not_running(self):
            with pytest.raises(NotRunningError):
                self.sup.start_child(ChildSpec("z", body))

        # -------------------------------------------------------- invariants
        @invariant()
        def which_children_matches_the_model(self):
            infos = self.sup.which_children()
            assert [(i.id, i.restart.value, i.child is not None) for i in infos] == [
                (cid, restart, running) for cid, (restart, running) in self.model.children.items()
            ]
            for i in infos:
                if i.child is not None:
                    assert not i.child.dead

        @invariant()
        def count_children_matches_the_model(self):
            n = len(self.model.children)
            active = len(self.running_ids())
            assert self.sup.count_children() == (n, active, 0, n)

        @invariant()
        def the_supervisor_is_dead_exactly_when_the_model_says_so(self):
            assert self.sup.dead == self.model.dead
            if self.model.dead:
                assert isinstance(self.sup.exception, RestartIntensityExceeded)

    SupervisorMachine.__name__ = f"SupervisorMachine_{strategy}_{path}"
    SupervisorMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
    return SupervisorMachine


TestOneForOne = make_machine("one_for_one").TestCase
TestOneForAll = make_machine("one_for_all").TestCase
TestRestForOne = make_machine("rest_for_one").TestCase
TestOneForOneThroughAWorker = make_machine("one_for_one", "worker").TestCase
TestOneForAllThroughAWorker = make_machine("one_for_all", "worker").TestCase
TestRestForOneThroughAWorker = make_machine("rest_for_one", "worker").TestCase
TestOneForOneFromTheHub = make_machine("one_for_one", "hub").TestCase
TestOneForAllFromTheHub = make_machine("one_for_all", "hub").TestCase
TestRestForOneFromTheHub = make_machine("rest_for_one", "hub").TestCase
