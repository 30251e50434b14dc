"""Suite-wide guards: every test fails if an error reaches the gevent hub or a
greenlet it started outlives it.  The per-test timeout is in tox.ini."""

from __future__ import annotations

import logging

import gevent
import pytest

from greentree.testing import HubErrors, LeakCheck


@pytest.fixture(autouse=True)
def _no_hub_errors_no_leaks(request):
    if request.node.get_closest_marker("allow_hub_errors"):
        hub = None
    else:
        hub = HubErrors().__enter__()
    leaks = LeakCheck(timeout=2.0).__enter__()
    yield
    try:
        if not request.node.get_closest_marker("allow_leaks"):
            leaked = leaks.leaked()
            for g in leaked:
                gevent.kill(g)
            assert not leaked, f"greenlets outlived the test: {leaked[:10]!r}"
    finally:
        if hub is not None:
            hub.__exit__(None, None, None)
            assert not hub.errors, f"errors reached the gevent hub: {hub.describe()}"


@pytest.fixture
def caplog_greentree(caplog):
    caplog.set_level(logging.DEBUG, logger="greentree")
    return caplog
