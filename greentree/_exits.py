"""How greenlets end: the exceptions greentree sends, and the exit records it builds."""

from __future__ import annotations

from gevent import GreenletExit

from ._policy import CRASH, EXIT_NORMAL, SHUTDOWN, Exit

__all__ = ["ShutdownExit", "KILL", "SHUTDOWN_TYPES", "strip_traceback", "exit_of"]


class ShutdownExit(GreenletExit):
    """Raised inside a child to ask it to stop (OTP's ``shutdown`` exit).

    A subclass of :class:`gevent.GreenletExit`, so code that already handles
    ``GreenletExit`` cleans up as usual.  A child that raises it, or lets it
    propagate, has been shut down: a transient child is not restarted.
    """


class _Kill(BaseException):
    """greentree's escalation after a child ignored ShutdownExit past its deadline.

    Private, and not a GreenletExit, so ``except GreenletExit: pass`` in child
    code does not swallow it.  gevent has no uncatchable kill: a child that
    catches ``BaseException`` and loops can still survive it (it is then
    reported as a zombie).
    """


#: Exception types that mean "this child was shut down", not "it crashed".
SHUTDOWN_TYPES = (GreenletExit, _Kill)

KILL = _Kill


def strip_traceback(exc: BaseException) -> BaseException:
    """Drop the tracebacks of ``exc`` and its chain, so no frame stays alive."""
    if exc.__cause__ is None and exc.__context__ is None:  # no chain: the usual case
        exc.__traceback__ = None
        return exc
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    return exc


def exit_of(exception: BaseException | None) -> Exit:
    """The exit record of a greenlet that ended with ``exception`` (None: it returned).

    >>> exit_of(None).kind, exit_of(ShutdownExit()).kind, exit_of(ValueError()).kind
    ('normal', 'shutdown', 'crash')
    """
    if exception is None:
        return EXIT_NORMAL
    if isinstance(exception, SHUTDOWN_TYPES):
        return Exit(SHUTDOWN, exception)
    return Exit(CRASH, exception)
