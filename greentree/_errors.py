"""The greentree error hierarchy.

Every error greentree raises is a :class:`GreentreeError`; each subclass also
mixes in the builtin it resembles, so ``except LookupError`` still catches a
missing child.  Messages name the object, its state and the fix.
"""

from __future__ import annotations

__all__ = [
    "GreentreeError",
    "ChildSpecError",
    "StartChildError",
    "AlreadyStartedError",
    "AlreadyPresentError",
    "AlreadyRegisteredError",
    "ChildNotFoundError",
    "ChildRunningError",
    "ChildRestartingError",
    "MaxChildrenError",
    "RestartIntensityExceeded",
    "NotRunningError",
    "BlockingCallError",
]


class GreentreeError(Exception):
    """Base class of every error raised by greentree."""


class ChildSpecError(GreentreeError, ValueError):
    """A child spec or supervisor flag is invalid.

    Raised in the caller, before anything starts: the caller's fault, and
    nothing has changed.
    """


class StartChildError(GreentreeError):
    """A child failed to start.

    Raised by :meth:`Supervisor.wait_started` when a static child fails during
    the supervisor's start, and by ``start_child``/``restart_child``.
    ``child_id`` names the child and ``reason`` is what went wrong (also
    chained as ``__cause__``).
    """

    def __init__(self, message: str, child_id: object = None, reason: BaseException | None = None):
        super().__init__(message)
        self.child_id = child_id
        self.reason = reason


class AlreadyStartedError(StartChildError):
    """A child with this id (or this registered name) is already running.

    ``greenlet`` is the running owner, as OTP's ``{already_started, Pid}``.
    A :class:`StartChildError`, since the start did not happen.
    """

    def __init__(self, message: str, greenlet: object = None, child_id: object = None):
        super().__init__(message, child_id)
        self.greenlet = greenlet


class AlreadyPresentError(GreentreeError):
    """A child spec with this id exists but is not running (OTP's ``already_present``).

    Fix: ``restart_child(id)``, or ``delete_child(id)`` then ``start_child(spec)``.
    """


class AlreadyRegisteredError(GreentreeError):
    """A unique registry key is already held; ``owner`` is the greenlet holding it."""

    def __init__(self, message: str, owner: object = None):
        super().__init__(message)
        self.owner = owner


class ChildNotFoundError(GreentreeError, LookupError):
    """No child with this id (or greenlet) under this supervisor."""


class ChildRunningError(GreentreeError):
    """The operation needs a stopped child, and the child is running."""


class ChildRestartingError(GreentreeError):
    """The child is between a failed restart and its retry (OTP's ``restarting``)."""


class MaxChildrenError(GreentreeError):
    """A DynamicSupervisor already holds ``max_children`` children."""


class RestartIntensityExceeded(GreentreeError):
    """A supervisor restarted children more than ``max_restarts`` times in
    ``max_seconds`` and gave up: it stopped all its children and exited with
    this error, which its own supervisor sees as a crash."""


class NotRunningError(GreentreeError, LookupError):
    """The supervisor (or server) is not running: never started, or exited.

    OTP's ``noproc``.  Calls made while it was running but unanswered when it
    exited also raise this, at once: callers never wait for their timeout.
    """


class BlockingCallError(GreentreeError, RuntimeError):
    """A blocking call was made from a greenlet that must not block.

    A supervisor's API is a request to the supervisor greenlet; made from
    that same greenlet, or from a hub callback (a ``rawlink`` callback, a
    timer), it would wait forever, so greentree raises this instead.
    """
