"""Crash reports: once per crash, through ``logging``, rate-limited.

The logger is ``greentree``.  It has no handler of its own: with no logging
configured, Python's last-resort handler prints crash reports and give-ups
(WARNING and above) to stderr, as gevent users expect to see tracebacks; once
the application configures logging, its handlers decide.  Each record carries
structured fields in ``extra``: ``greentree_supervisor``, ``greentree_child``,
``greentree_restart`` and ``greentree_exception``.

A crash storm must not stall the process: formatting tracebacks costs
hundreds of microseconds, and gevent never preempts.  A token bucket lets
:data:`BURST` reports through at once and :data:`RATE` per second after that;
the rest are counted and summarised in the next report that gets through.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("greentree")

#: Reports per second once the burst is spent.
RATE = 20.0
#: Reports allowed back to back.
BURST = 50.0


class RateLimiter:
    __slots__ = ("rate", "burst", "tokens", "stamp", "suppressed", "clock")

    def __init__(self, rate: float = RATE, burst: float = BURST, clock=time.monotonic):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.clock = clock
        self.stamp = clock()
        self.suppressed = 0

    def allow(self) -> bool:
        now = self.clock()
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        self.suppressed += 1
        return False


limiter = RateLimiter()


def report_crash(supervisor: object, child_id: object, spec: object, exc: BaseException) -> None:
    """Log one child crash (called in the crashed child's greenlet, traceback intact).

    ``spec`` is the child's ChildSpec (or None); its restart type is read only
    if the report is logged.
    """
    # The limiter first: in a crash storm it says no, and that is one call.
    if not limiter.allow() or not logger.isEnabledFor(logging.ERROR):
        return
    restart = getattr(spec, "restart", None)
    suppressed, limiter.suppressed = limiter.suppressed, 0
    more = f" ({suppressed} earlier crash reports suppressed by the rate limit)" if suppressed else ""
    args: tuple
    if supervisor is None:
        msg, args = "%s failed with %s: %s%s", (child_id, type(exc).__name__, exc, more)
    else:
        msg, args = "child %r of %s crashed with %s: %s%s", (child_id, supervisor, type(exc).__name__, exc, more)
    logger.error(
        msg, *args,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={
            "greentree_supervisor": str(supervisor),
            "greentree_child": child_id,
            "greentree_restart": str(restart),
            "greentree_exception": repr(exc),
            "greentree_suppressed": suppressed,
        },
    )


def report_event(level: int, msg: str, *args, **fields) -> None:
    """Log a supervisor event (giving up, zombies, start failures)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, *args, extra={"greentree_" + k: v for k, v in fields.items()})
