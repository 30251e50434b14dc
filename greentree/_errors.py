"""The greentree error hierarchy.

Every error greentree raises is a :class:`GreentreeError`; each subclass also
mixes in the builtin it resembles, so ``except LookupError`` still catches a
missing child.  Messages name the object, its state and the fix.
"""

from __future__ import annotations

__all__ = [
    "GreentreeError",
    "ArgumentError",
    "ChildSpecError",
    "GreentreeTimeoutError",
    "CallTimeoutError",
    "StartTimeoutError",
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


class ArgumentError(GreentreeError, ValueError):
    """An argument is invalid (a timeout of ``"soon"`` or ``-1``, an unhashable id).

    Raised in the caller, before anything happens: the caller's fault, and
    nothing has changed.
    """


class ChildSpecError(ArgumentError):
    """A child spec or supervisor flag is invalid.

    Raised in the caller, before anything starts: the caller's fault, and
    nothing has changed.
    """


class GreentreeTimeoutError(GreentreeError, TimeoutError):
    """Base of every timeout greentree raises: a blocking call waited longer
    than the ``timeout`` its caller gave.

    Each area has its own subclass (:class:`CallTimeoutError`,
    :class:`StartTimeoutError`, ``TaskTimeoutError``); ``except
    greentree.GreentreeTimeoutError`` (or the builtin ``TimeoutError``)
    catches them all.  What happened to the operation is documented by the
    call that raised: a call that timed out may still be carried out later.
    """


class CallTimeoutError(GreentreeTimeoutError):
    """A request to a server or supervisor got no answer within its timeout.

    Raised by :meth:`Server.call` and by supervisor calls such as
    ``start_child(spec, timeout=...)``.  The request stays queued and may
    still be handled later; its answer is then dropped.
    """


class StartTimeoutError(GreentreeTimeoutError):
    """``wait_started(timeout)`` passed before the supervisor or server finished starting."""


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

    ``owner`` is the running child holding it, as OTP's ``{already_started, Pid}``.
    A :class:`StartChildError`, since the start did not happen.
    """

    def __init__(self, message: str, owner: object = None, child_id: object = None):
        super().__init__(message, child_id)
        self.owner = owner


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

    A supervisor's API is a request handled in the supervisor's order; made
    from inside that order (a child class's ``__init__``, a server's own
    handler), or from a hub callback (a ``rawlink`` callback, a timer), it
    would wait forever, so greentree raises this instead.
    """
