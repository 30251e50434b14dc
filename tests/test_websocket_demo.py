"""demo_support.Demo: the demo's server, clients and faults leave nothing behind."""

from __future__ import annotations

import time

import gevent
import pytest

from greentree.websocket.demo_support import Demo


@pytest.mark.timeout(90)
def test_the_demo_survives_every_fault_and_stops_cleanly():
    demo = Demo(clients=20, seed=3)
    demo.start()
    deadline = time.monotonic() + 20
    while demo.snapshot()["clients_connected"] < 20:
        assert time.monotonic() < deadline, "clients did not connect"
        gevent.sleep(0.01)
    demo.tick()
    for fault in Demo.FAULTS:
        assert isinstance(demo.inject(fault), str)
    with pytest.raises(ValueError, match="fault must be one of"):
        demo.inject("meteor")
    while demo.snapshot()["clients_connected"] < 20:  # every client comes back
        assert time.monotonic() < deadline, "clients did not reconnect"
        gevent.sleep(0.01)
    demo.tick()
    snap = demo.stop()
    assert snap["server_trees"] == snap["client_trees"] == snap["registry_names_left"] == 0
    assert snap["server"]["slow_consumers"] == 1 and snap["server"]["sender_crashes"] == 1
    assert snap["client"]["reconnects"] >= 2
    assert snap["sent"] == 40
