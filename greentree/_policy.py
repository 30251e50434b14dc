"""Pure supervision decisions: no gevent, no greenlets, no clock reads.

Theory of operation
-------------------
A supervisor is a loop that receives *exit records* and *requests*.  For
each exit it asks three questions, each answered here by a table or a small
function, so that the answers can be tested exhaustively without starting a
single greenlet:

1. **What kind of exit was it?**  :func:`exit_kind` maps how the child ended
   to one of ``NORMAL`` (returned), ``SHUTDOWN`` (``GreenletExit`` and its
   subclass ``ShutdownExit``, or greentree's own kill) or ``CRASH`` (anything
   else, including ``SystemExit`` and ``KeyboardInterrupt`` raised by child
   code).  An exit the supervisor caused itself (terminate, group restart,
   shutdown) never reaches these questions: it is expected, and never counts.

2. **Does the child come back?**  :data:`RESTART_TABLE` maps
   ``(restart type, exit kind)`` to ``RESTART``, ``KEEP`` (the spec stays, the
   child is stopped: a transient child that finished) or ``DROP`` (the spec is
   forgotten: every temporary child).

3. **Which children does a restart touch?**  :func:`plan_restart` takes the
   strategy, the children in start order and the failed child, and returns the
   ids to stop (in stop order: reverse start order) and the ids to start (in
   start order).

Restart intensity is a sliding window (:class:`Intensity`): each restart
*event* (a one_for_all restart of ten children is one event) and each failed
restart attempt adds the current time; when more than ``max_restarts`` times
lie within the last ``max_seconds``, the supervisor gives up.  This is OTP's
``add_restart``: ``max_restarts=0`` means the first restart already gives up.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "Restart", "Strategy", "AutoShutdown",
    "NORMAL", "SHUTDOWN", "CRASH", "EXIT_KINDS", "Exit", "EXIT_NORMAL", "describe_reason",
    "RESTART", "KEEP", "DROP", "RESTART_TABLE",
    "exit_kind", "decide", "plan_restart", "Intensity", "auto_shutdown_triggered",
]


class Restart(str, enum.Enum):
    """When a child is restarted (OTP's restart types).

    ============  ===========  ================  ==============
    exit          permanent    transient         temporary
    ============  ===========  ================  ==============
    returned      restart      keep, stopped     drop
    shutdown      restart      keep, stopped     drop
    crash         restart      restart           drop
    ============  ===========  ================  ==============
    """

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"

    def __str__(self) -> str:
        return self.value


class Strategy(str, enum.Enum):
    """Which children a supervisor restarts when one of them must be restarted."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"

    def __str__(self) -> str:
        return self.value


class AutoShutdown(str, enum.Enum):
    """When the exit of *significant* children stops the supervisor (OTP 24)."""

    NEVER = "never"
    ANY_SIGNIFICANT = "any_significant"
    ALL_SIGNIFICANT = "all_significant"

    def __str__(self) -> str:
        return self.value


# Exit kinds.
NORMAL = "normal"
SHUTDOWN = "shutdown"
CRASH = "crash"
EXIT_KINDS = (NORMAL, SHUTDOWN, CRASH)


class Exit(NamedTuple):
    """How a child (or a supervisor) ended: an immutable record.

    Built once, in the ending greenlet, at the moment the outcome is known;
    the supervisor, registries and logs all read this same record, so one
    exit never gets two classifications.  ``kind`` is ``"normal"``,
    ``"shutdown"`` or ``"crash"``; ``reason`` is the exception (None for a
    return), with its traceback dropped.

    >>> Exit(CRASH, ValueError("boom")).describe()
    'ValueError: boom'
    >>> EXIT_NORMAL.describe()
    'normal'
    """

    kind: str
    reason: BaseException | None

    def describe(self) -> str:
        """A short description for people: ``'normal'``, ``'shutdown'``, ``'ValueError: boom'``."""
        return describe_reason(self.reason, self.kind)


#: The record of every child that returned: no allocation per exit.
EXIT_NORMAL = Exit(NORMAL, None)


def describe_reason(reason: BaseException | None, kind: str | None = None) -> str:
    """A short, human description of an exit reason.

    >>> describe_reason(None), describe_reason(KeyError("k"))
    ('normal', "KeyError: 'k'")
    """
    if reason is None:
        return "normal"
    name = type(reason).__name__
    # By name: this module imports no gevent.  The three are greentree's and gevent's own.
    module = type(reason).__module__
    if module == "greentree._exits":
        return "shutdown" if name == "ShutdownExit" else "killed (after its shutdown timeout)"
    if name == "GreenletExit" and module in ("greenlet", "gevent", "gevent.greenlet"):
        return "killed (GreenletExit)"
    text = str(reason)
    return f"{name}: {text}" if text else name

# What happens to the child.
RESTART = "restart"
KEEP = "keep"  # spec kept, child stopped (restart_child can bring it back)
DROP = "drop"  # spec and args forgotten

P, TR, TE = Restart.PERMANENT, Restart.TRANSIENT, Restart.TEMPORARY

#: (restart type, exit kind) -> RESTART | KEEP | DROP.  OTP's ``do_restart``.
RESTART_TABLE = {
    (P, NORMAL): RESTART,
    (P, SHUTDOWN): RESTART,
    (P, CRASH): RESTART,
    # A transient child is restarted only after an abnormal exit; returning
    # or being shut down is "normal" for it.
    (TR, NORMAL): KEEP,
    (TR, SHUTDOWN): KEEP,
    (TR, CRASH): RESTART,
    # A temporary child is never restarted and never remembered.
    (TE, NORMAL): DROP,
    (TE, SHUTDOWN): DROP,
    (TE, CRASH): DROP,
}


def exit_kind(exception: BaseException | None, shutdown_types: tuple = ()) -> str:
    """Classify how a child ended.

    ``exception`` is None when the child returned.  ``shutdown_types`` are the
    exception types that mean "shut down" (``GreenletExit`` and greentree's
    private kill); the caller passes them so this module needs no gevent.

    >>> exit_kind(None)
    'normal'
    >>> exit_kind(ValueError("boom"))
    'crash'
    >>> exit_kind(SystemExit(0))
    'crash'
    >>> exit_kind(KeyError(), shutdown_types=(KeyError,))
    'shutdown'
    """
    if exception is None:
        return NORMAL
    if shutdown_types and isinstance(exception, shutdown_types):
        return SHUTDOWN
    return CRASH


_BY_VALUE = {(r.value, k): v for (r, k), v in RESTART_TABLE.items()}

#: :data:`RESTART_TABLE` as ``ACTIONS[restart.value][kind]``: two lookups by
#: plain strings, for the supervisors' exit paths (no call, no Enum hash).
#:
#: >>> ACTIONS[Restart.TRANSIENT.value][CRASH] == decide(Restart.TRANSIENT, CRASH)
#: True
ACTIONS: dict[str, dict[str, str]] = {}
for (_r, _k), _v in RESTART_TABLE.items():
    ACTIONS.setdefault(_r.value, {})[_k] = _v
del _r, _k, _v


def decide(restart: Restart, kind: str) -> str:
    """Look up :data:`RESTART_TABLE`.

    >>> decide(Restart.TRANSIENT, CRASH), decide(Restart.TRANSIENT, NORMAL)
    ('restart', 'keep')
    """
    # Keyed by the restart type's plain string: an Enum member hashes through
    # a Python-level __hash__, and this runs for every exit.
    try:
        return _BY_VALUE[(restart._value_ if type(restart) is Restart else restart, kind)]
    except KeyError:
        return RESTART_TABLE[(Restart(restart), kind)]


def plan_restart(
    strategy: Strategy, order: Sequence[Hashable], failed: Hashable
) -> tuple[list[Hashable], list[Hashable]]:
    """Return ``(to_stop, to_start)`` for restarting ``failed``.

    ``order`` lists the supervisor's children in start order (the failed one
    included).  ``to_stop`` excludes the failed child (it is already dead) and
    is in stop order, the reverse of start order; ``to_start`` is in start
    order and starts with, or contains, the failed child.  Which of the
    children to stop are temporary (and so are dropped instead of restarted)
    is the caller's business: the plan is about positions only.

    >>> plan_restart(Strategy.ONE_FOR_ONE, "abcd", "b")
    ([], ['b'])
    >>> plan_restart(Strategy.ONE_FOR_ALL, "abcd", "b")
    (['d', 'c', 'a'], ['a', 'b', 'c', 'd'])
    >>> plan_restart(Strategy.REST_FOR_ONE, "abcd", "b")
    (['d', 'c'], ['b', 'c', 'd'])
    """
    strategy = Strategy(strategy)
    if strategy is Strategy.ONE_FOR_ONE:
        return [], [failed]
    order = list(order)
    if strategy is Strategy.ONE_FOR_ALL:
        affected = order
    else:
        affected = order[order.index(failed):]
    to_stop = [c for c in reversed(affected) if c != failed]
    return to_stop, list(affected)


class Intensity:
    """OTP's restart intensity: at most ``max_restarts`` in any ``max_seconds``.

    >>> w = Intensity(2, 10.0)
    >>> [w.add(t) for t in (0.0, 1.0, 2.0)]   # the third restart in 10 s is one too many
    [False, False, True]
    >>> w = Intensity(2, 10.0)
    >>> [w.add(t) for t in (0.0, 1.0, 10.5, 10.9)]   # 0.0 left the window at 10.5
    [False, False, False, True]
    """

    __slots__ = ("max_restarts", "max_seconds", "_times")

    def __init__(self, max_restarts: int, max_seconds: float):
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        # Allocated on the first restart and dropped when the window empties:
        # an idle supervisor carries no deque.
        self._times: deque[float] | None = None

    def _prune(self, now: float) -> int:
        # OTP keeps restarts with now - t <= period: a restart exactly
        # max_seconds old still counts.  Time only moves forward, so what
        # falls out of the window now never comes back: O(1) amortised.
        times = self._times
        if times is None:
            return 0
        horizon = now - self.max_seconds
        while times and times[0] < horizon:
            times.popleft()
        if not times:
            self._times = None
            return 0
        return len(times)

    def add(self, now: float) -> bool:
        """Record a restart at ``now``; return True if the intensity is exceeded."""
        times = self._times
        if times is None:
            times = self._times = deque()
        times.append(now)
        # _prune, inline: this runs for every restart.
        horizon = now - self.max_seconds
        while times[0] < horizon:
            times.popleft()
        return len(times) > self.max_restarts

    def would_exceed(self, now: float) -> bool:
        """Would one more restart at ``now`` exceed the intensity?  Records nothing.

        >>> w = Intensity(1, 10.0); w.add(0.0)
        False
        >>> w.would_exceed(5.0), w.would_exceed(10.5)
        (True, False)
        >>> Intensity(0, 10.0).would_exceed(0.0)   # none allowed: the first one is too many
        True
        """
        times = self._times
        if times is None:
            return self.max_restarts < 1  # an empty window: this one restart alone
        if len(times) < self.max_restarts:
            return False  # pruning only ever shrinks the window
        return self._prune(now) + 1 > self.max_restarts

    def count(self, now: float) -> int:
        """How many restarts lie in the window ending at ``now``."""
        return self._prune(now)

    def window(self) -> list[float]:
        return list(self._times or ())


def auto_shutdown_triggered(
    mode: AutoShutdown, exited_significant: bool, remaining_significant: Iterable[object]
) -> bool:
    """Does a significant child's exit (that is not restarted) stop the supervisor?

    ``remaining_significant`` are the significant children still alive.

    >>> auto_shutdown_triggered(AutoShutdown.ANY_SIGNIFICANT, True, ["b"])
    True
    >>> auto_shutdown_triggered(AutoShutdown.ALL_SIGNIFICANT, True, ["b"])
    False
    >>> auto_shutdown_triggered(AutoShutdown.ALL_SIGNIFICANT, True, [])
    True
    """
    if type(mode) is not AutoShutdown:
        mode = AutoShutdown(mode)
    if not exited_significant or mode is AutoShutdown.NEVER:
        return False
    if mode is AutoShutdown.ANY_SIGNIFICANT:
        return True
    return not any(True for _ in remaining_significant)
