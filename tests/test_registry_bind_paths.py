"""Via.bind has an inline path for its usual case (a free key, a live greentree child
holding no name); every case must leave the registry, the owner's exit hooks and its
links exactly as the general path does, and free the name the same way on exit."""

from __future__ import annotations

import gevent
import pytest

import greentree
from greentree import ChildSpec, DynamicSupervisor, Registry, Supervisor, _registry
from greentree._child import Child

pytestmark = pytest.mark.timeout(30)

CASES = ["free", "held-by-live", "held-by-dead", "owner-holds-another", "supervisor", "dead-owner",
         "unsupervised-never-ran", "gevent-greenlet", "same-key-again"]


def _state(reg, g):
    hooks = g._gt_hooks if isinstance(g, Child) else None
    hooks = hooks if isinstance(hooks, list) else [hooks]
    return {
        "table": {k: (v[0] is g, v[1]) for k, v in reg._table.items()},
        "owned": sorted(repr(k) for o, k in reg._owned.items() if o is g),
        "hooks": [h == reg._on_exit for h in hooks],
        "links": len(getattr(g, "_links", ())),
    }


def _drive(case, fast, monkeypatch):
    monkeypatch.setattr(_registry, "_FAST_BIND", fast)
    reg = Registry(name="paths")
    other = greentree.Greenlet(gevent.sleep, 3600)
    other.start()
    dead = greentree.Greenlet(lambda: None)
    dead.start()
    dead.join()
    made = []
    if case == "supervisor":
        g = DynamicSupervisor(name="d")
        g.start()
    elif case == "gevent-greenlet":
        g = gevent.Greenlet(gevent.sleep, 3600)
        g.start()
    elif case == "dead-owner":
        g = dead
    else:
        g = greentree.Greenlet(gevent.sleep, 3600)
        if case != "unsupervised-never-ran":
            g._gt_rec = object()  # as a supervisor's start does before it binds
    made.append(g)
    if case == "held-by-live":
        reg.register("k", "old", greenlet=other)
    elif case == "held-by-dead":
        reg._table["k"] = (dead, "old")  # its exit notice has not run yet
    elif case == "owner-holds-another":
        reg.register("other-key", greenlet=g)
    elif case == "same-key-again":
        reg.via("k", "v0").bind(g)
    try:
        reg.via("k", "v").bind(g)
        outcome = "bound"
    except Exception as e:  # noqa: BLE001 - the outcome is what is compared
        outcome = type(e).__name__
    before = _state(reg, g)
    if isinstance(g, greentree.Greenlet):
        g._gt_rec = None
    if isinstance(g, DynamicSupervisor):
        g.stop()
    else:
        g.kill(block=True)
    gevent.sleep(0)
    gevent.sleep(0)
    after = (reg.whereis("k") is None, reg.whereis("k") is other, reg.count())
    other.kill()
    return outcome, before, after


@pytest.mark.parametrize("case", CASES)
def test_the_inline_bind_leaves_what_the_general_bind_leaves(case, monkeypatch):
    assert _drive(case, True, monkeypatch) == _drive(case, False, monkeypatch)


def test_the_inline_bind_is_the_one_a_supervised_start_takes(monkeypatch):
    calls = []
    put = Registry._put
    monkeypatch.setattr(Registry, "_put", lambda self, *a, **k: (calls.append(a[0]), put(self, *a, **k))[1])
    reg = Registry()
    with Supervisor([ChildSpec("w", gevent.sleep, 3600, register=reg.via("w"))]) as sup:
        assert reg.whereis("w") is sup.which_children()[0].child
        assert calls == []  # the inline path
        monkeypatch.setattr(_registry, "_FAST_BIND", False)
        sup.terminate_child("w")
        sup.restart_child("w")
        assert calls == ["w"]  # the general path, when it is turned off
        assert reg.whereis("w") is sup.which_children()[0].child
