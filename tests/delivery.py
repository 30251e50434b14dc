"""Helpers shared by the tests that drive supervisors through every way an event
reaches a mailbox (tests/test_serial_order.py, tests/test_stop_by_events.py)."""

from __future__ import annotations

import re

import gevent

from greentree._base import SupervisorBase

#: How a child's exit reaches its supervisor: handled in the exiting greenlet
#: ("inline"), always by a spawned greenlet ("worker"), or posted from the hub ("hub").
PATHS = ["inline", "worker", "hub"]


def deliver_by(path, monkeypatch):
    """Make every supervisor's events arrive by ``path`` (one of PATHS) for this test."""
    monkeypatch.setattr(SupervisorBase, "_mb_force_worker", path == "worker")
    if path == "hub":
        deliver = SupervisorBase._child_exited

        def from_the_hub(self, child, exit):
            gevent.get_hub().loop.run_callback(deliver, self, child, exit)

        monkeypatch.setattr(SupervisorBase, "_child_exited", from_the_hub)


def count_spawned(monkeypatch) -> list:
    """A list that gets the name of each supervisor whose mailbox spawns a greenlet."""
    spawned: list = []
    spawn_worker = SupervisorBase._mb_spawn_worker

    def counting(self):
        spawned.append(str(self))
        spawn_worker(self)

    monkeypatch.setattr(SupervisorBase, "_mb_spawn_worker", counting)
    return spawned


def normalise(obj):
    """``repr(obj)`` without addresses and times, to compare snapshots across runs."""
    text = repr(obj)
    text = re.sub(r"0x[0-9a-f]+", "0x", text)
    text = re.sub(r"'ago': [0-9.e-]+", "'ago': T", text)
    return re.sub(r"'uptime': [0-9.e-]+", "'uptime': T", text)
