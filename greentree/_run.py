"""``greentree.run``: run a tree as a program's main."""

from __future__ import annotations

import signal as _signal
import sys

import gevent

from ._base import SupervisorBase
from ._policy import describe_reason

__all__ = ["run"]


def run(root: SupervisorBase, *, signals=(_signal.SIGINT, _signal.SIGTERM), stop_timeout: float | None = None,
        stream=None) -> int:
    """Run ``root`` until it exits; return a process exit code.

    SIGINT and SIGTERM stop the tree in order (children in reverse start
    order, each under its shutdown deadline); a second signal escalates.
    Returns 0 when the tree stopped normally and 1 when it failed (for
    example with :class:`RestartIntensityExceeded`), after printing one line
    to ``stream`` (stderr).  Use it as ``sys.exit(greentree.run(root))``.

    >>> from greentree import Supervisor
    >>> root = Supervisor([], name="app")
    >>> gevent.spawn_later(0.01, root.stop)  # doctest: +ELLIPSIS
    <Greenlet ...>
    >>> run(root)
    0
    """
    if not isinstance(root, SupervisorBase):
        raise TypeError(f"greentree.run(): expected a Supervisor or DynamicSupervisor, not {root!r}")
    stream = sys.stderr if stream is None else stream
    hits = []

    def on_signal(signum):
        hits.append(signum)
        timeout = stop_timeout if len(hits) == 1 else 0.0
        gevent.spawn(root.stop, timeout)

    handlers = []
    try:
        for sig in signals:
            handlers.append(gevent.signal_handler(sig, on_signal, sig))
        if not root.started and not root.dead:
            root.start()
        root.join()
    finally:
        for h in handlers:
            h.cancel()
    if root.successful():
        return 0
    print(f"greentree.run: {root} failed: {describe_reason(root.exception)}", file=stream)
    return 1
