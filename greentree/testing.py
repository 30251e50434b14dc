"""Helpers for testing code that uses greentree, and a pytest plugin.

* :class:`FakeClock` drives restart windows without sleeping.
* :func:`live_greenlets` and :class:`LeakCheck` find greenlets a test left behind.
* :class:`HubErrors` records every error that reaches gevent's hub.
* The pytest plugin (entry point ``pytest11``) provides the
  ``start_supervised`` fixture, Elixir's ``start_supervised!``: children
  started under a per-test supervisor, stopped at teardown, and the test
  fails if anything leaked.

>>> clock = FakeClock()
>>> clock(), clock.advance(2.5), clock()
(0.0, 2.5, 2.5)
"""

from __future__ import annotations

import gc
from typing import Any

import gevent
import greenlet as _greenlet

from ._etcd_server import EtcdServer
from ._history import check as check_history
from ._redis_server import RedisServer, TcpProxy

__all__ = [
    "FakeClock", "live_greenlets", "LeakCheck", "HubErrors", "GreenletLeakError", "wait_until", "check_history", "EtcdServer",
    "RedisServer", "TcpProxy",
]


class FakeClock:
    """A clock for ``Supervisor(clock=...)``: time moves only when told."""

    def __init__(self, start: float = 0.0):
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"FakeClock.advance({seconds!r}): time cannot go backwards")
        self.now += seconds
        return self.now


def wait_until(predicate, timeout: float = 5.0, what: str = "condition", interval: float = 0.001) -> None:
    """Poll ``predicate`` cooperatively until it is true; fail after ``timeout`` seconds.

    For tests that must observe something another greenlet does (a restart,
    a name freed) when there is no event to wait on.  It yields to the hub
    between polls, so the thing it waits for can happen.

    >>> import gevent
    >>> box = []
    >>> _ = gevent.spawn_later(0.01, box.append, 1)
    >>> wait_until(lambda: box, what="the append")
    """
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        gevent.sleep(interval)


def live_greenlets() -> set:
    """Every greenlet of this thread that has started and not finished, except
    the hub and the main greenlet."""
    hub = gevent.get_hub()
    main = _greenlet.getcurrent()
    while main.parent is not None:
        main = main.parent
    out = set()
    for obj in gc.get_objects():
        if isinstance(obj, _greenlet.greenlet) and obj is not hub and obj is not main:
            try:
                if obj.dead:
                    continue
                root = obj
                while root.parent is not None:
                    root = root.parent
                if root is not main:
                    continue  # a greenlet of another thread (gevent's threadpool)
                # started and not finished, or a gevent Greenlet scheduled to start
                if bool(obj) or (isinstance(obj, gevent.Greenlet) and obj.started and not obj.dead):
                    out.add(obj)
            except Exception:  # a greenlet of another thread
                continue
    return out


class GreenletLeakError(AssertionError):
    """Greenlets that a test started are still alive after it."""


class LeakCheck:
    """``with LeakCheck(): ...`` fails if greenlets started inside outlive the block.

    The check yields to the hub a few times first, so greenlets that are
    finishing get to finish.
    """

    def __init__(self, settle: int = 5, timeout: float = 1.0):
        self.settle = settle
        self.timeout = timeout

    def __enter__(self):
        self.before = {id(g) for g in live_greenlets()}
        return self

    def leaked(self) -> list:
        deadline = gevent.get_hub().loop.now() + self.timeout
        while True:
            for _ in range(self.settle):
                gevent.sleep(0)
            leaked = [g for g in live_greenlets() if id(g) not in self.before]
            if not leaked or gevent.get_hub().loop.now() >= deadline:
                return leaked
            gevent.sleep(0.01)

    def __exit__(self, t, v, tb):
        if t is not None:
            return False
        leaked = self.leaked()
        if leaked:
            for g in leaked:
                g.kill(block=False)
            raise GreenletLeakError(f"{len(leaked)} greenlet(s) outlived the test: {leaked[:10]!r}")
        return False


class HubErrors:
    """Record every error that reaches the gevent hub while active.

    gevent prints such errors and carries on, so a test would pass while a
    greenlet crashed; with this, it can fail instead.
    """

    def __init__(self):
        self.errors: list = []

    def __enter__(self):
        hub = gevent.get_hub()
        self._hub = hub
        self._saved = hub.__dict__.get("handle_error")
        original = type(hub).handle_error

        def handle_error(context, t, v, tb, _orig=original, _hub=hub):
            if t is not None and not issubclass(t, gevent.GreenletExit):
                self.errors.append((context, t, v))
            return _orig(_hub, context, t, v, tb)

        hub.handle_error = handle_error
        return self

    def __exit__(self, *exc):
        if self._saved is None:
            self._hub.__dict__.pop("handle_error", None)
        else:
            self._hub.handle_error = self._saved
        return False

    def describe(self) -> str:
        return "; ".join(f"{t.__name__}: {v} (in {c!r})" for c, t, v in self.errors)


# ---------------------------------------------------------------- pytest plugin
try:
    import pytest
except ImportError:  # pragma: no cover - the plugin needs pytest, the helpers do not
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    class _StartSupervised:
        def __init__(self, name: str):
            from ._supervisor import Supervisor

            self.sup = Supervisor([], name=name, max_restarts=3, max_seconds=5.0)
            self._count = 0

        def __call__(self, child: Any, *args: Any, **spec_kw: Any):
            from ._spec import ChildSpec

            if not self.sup.started and not self.sup.dead:
                self.sup.start()
                self.sup.wait_started()
            if isinstance(child, ChildSpec):
                if args or spec_kw:
                    raise TypeError("start_supervised(spec): pass a ChildSpec alone, or a function and its args")
                spec = child
            else:
                self._count += 1
                spec_kw.setdefault("restart", "temporary")
                spec = ChildSpec(spec_kw.pop("id", f"child-{self._count}"), child, *args, **spec_kw)
            return self.sup.start_child(spec)

    @pytest.fixture
    def start_supervised(request):
        """Start children under a supervisor that lives for this test only.

        ``start_supervised(ChildSpec(...))`` or ``start_supervised(fn, *args,
        restart=..., id=...)`` returns the child's greenlet (functions default
        to ``restart="temporary"``).  At teardown the supervisor stops every
        child in reverse order, and the test fails if any greenlet it started
        is still alive.  ``start_supervised.sup`` is the supervisor.
        """
        leaks = LeakCheck()
        leaks.__enter__()
        helper = _StartSupervised(f"start_supervised[{request.node.name}]")
        yield helper
        helper.sup.stop(timeout=10.0)
        leaks.__exit__(None, None, None)

    @pytest.fixture
    def fake_clock():
        """A :class:`FakeClock` starting at 0."""
        return FakeClock()
