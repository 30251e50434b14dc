"""The child protocol, and the greenlet every supervised function runs in.

A supervisor supervises *children*: greentree :class:`Greenlet` objects and
other supervisors.  What a parent needs from a child is defined once, here,
in :class:`Child`: a record slot the parent fills (``_gt_rec``), a start
handshake it can wait on, exit hooks for registries, and one exit
notification carrying an immutable :class:`~greentree._policy.Exit` record,
built by the child at the moment it knows how it ended.

:class:`Greenlet` is a :class:`gevent.Greenlet` that, while it is supervised,
catches whatever its body raises, so gevent's hub never prints the traceback
and never sees ``SystemExit``/``KeyboardInterrupt`` from child code.  The
exception is kept (without its traceback) and ``get()``, ``exception`` and
``successful()`` behave as gevent's do.  The body's ``finally`` notifies the
supervisor directly; a ``rawlink`` is only the backstop for a greenlet killed
before it ever ran (child code may ``unlink_all()``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gevent import Greenlet as _GeventGreenlet
from gevent import GreenletExit, getcurrent

from ._errors import GreentreeError
from ._exits import SHUTDOWN_TYPES, _Kill, exit_of, strip_traceback
from ._policy import CRASH, EXIT_NORMAL, Exit
from ._report import report_crash

__all__ = ["Child", "Greenlet", "started", "StartAborted", "backstop"]


class StartAborted(Exception):
    """The child ended before it called :func:`started`; ``exit`` says how."""

    def __init__(self, child, exit: Exit):
        super().__init__(child)
        self.child = child
        self.exit = exit


class Child:
    """What a supervisor needs of a child, whether a greenlet or a supervisor.

    Subclasses provide ``start()``, ``kill(exception, block=False)`` and
    ``dead``, and call :meth:`_gt_notify_exit` exactly once when they end.
    """

    #: Instances are children themselves (ChildSpec instantiates the class).
    _gt_child_class = True
    #: The default ``ChildSpec.type`` for this class.
    _gt_child_type = "worker"
    #: True if this kind of child signals :func:`started` itself.
    handshake = False

    # Per-instance state in class-level defaults until needed, so an idle
    # child carries as few entries as possible.
    _gt_rec: Any = None          # the parent's record of this child (has .sup, .id, .spec)
    _gt_exit_rec: Exit | None = None   # how it ended, once known
    _gt_done = False             # exit already notified
    _gt_handshake: Any = None    # AsyncResult the parent waits on during the start
    _gt_hooks: Any = None  # extra exit callbacks (registries): None, one callable, or a list
    #: The value the child passed to :func:`started` (None until then).
    started_value: Any = None

    def _gt_notify_exit(self, exit: Exit) -> None:
        """Tell the start handshake, exit hooks and the parent, once, how this child ended.

        Runs in the ending greenlet (or, for a greenlet killed before it ran,
        from the hub).  Never blocks.
        """
        if self._gt_done:
            return
        self._gt_done = True
        self._gt_exit_rec = exit
        hs = self._gt_handshake
        if hs is not None:
            self._gt_handshake = None
            hs.set_exception(StartAborted(self, exit))
        hooks = self._gt_hooks
        if hooks is not None:
            self._gt_hooks = None
            if hooks.__class__ is list:
                for hook in hooks:
                    hook(self)
            else:
                hooks(self)  # one hook (the usual case) is kept without a list
        rec = self._gt_rec
        if rec is not None and rec.sup is not None:
            rec.sup._child_exited(self, exit)

    def gt_add_exit_hook(self, hook: Callable[[Any], None]) -> None:
        """Call ``hook(child)`` once when this child ends (immediately if it has).

        Survives ``unlink_all()``.  The hook runs in the ending greenlet or in
        the hub, so it must not block or raise.
        """
        if self._gt_done:
            hook(self)
            return
        hooks = self._gt_hooks
        if hooks is None:
            self._gt_hooks = hook
        elif hooks.__class__ is list:
            hooks.append(hook)
        else:
            self._gt_hooks = [hooks, hook]

    def gt_remove_exit_hook(self, hook: Callable[[Any], None]) -> None:
        """Remove a hook added with :meth:`gt_add_exit_hook` (nothing if it is not there)."""
        hooks = self._gt_hooks
        if hooks is None:
            return
        if hooks.__class__ is list:
            try:
                hooks.remove(hook)
            except ValueError:
                pass
        elif hooks == hook:
            self._gt_hooks = None

    def _gt_signal_started(self, value: Any) -> bool:
        hs = self._gt_handshake
        if hs is None:
            return False
        self._gt_handshake = None
        self.started_value = value
        hs.set(value)
        return True


class Greenlet(Child, _GeventGreenlet):
    """A gevent Greenlet that a greentree supervisor can supervise.

    Use it as ``start`` in a :class:`ChildSpec` by subclassing it and defining
    ``_run``, exactly as with :class:`gevent.Greenlet`; plain functions are
    wrapped in it for you.  Set the class attribute ``handshake = True`` if the
    subclass calls :func:`started` once its setup is done (servers do).

    >>> import gevent
    >>> g = Greenlet(lambda: 42); g.start(); g.get()
    42
    """

    #: gevent records this many frames of the spawning stack for every new
    #: greenlet (``spawning_stack``, shown by ``gevent.util.format_run_info``).
    #: A supervised child is spawned by greentree's own frames, which say
    #: nothing its supervisor's ``describe()`` does not, and walking them
    #: cost more than the rest of a child's start.  Set it back to 10 on a
    #: subclass to see them.
    spawning_stack_limit = 0

    #: Catch and report failures even when unsupervised (servers set it:
    #: their failure is always observable through their callers).
    _gt_catch = False

    _gt_body: Any = None         # the function for function children
    _gt_exc: BaseException | None = None  # what the body raised (traceback dropped)
    _gt_started_called = False   # started() was called once

    def __init__(self, run=None, *args, **kwargs):
        if run is not None and type(self)._run is not _GeventGreenlet._run:
            # A subclass with its own _run body: every positional argument is
            # for _run (gevent would take the first one as ``run``, a trap for
            # ChildSpec("x", MyGreenlet, arg, ...)).
            args = (run,) + args
            run = None
        _GeventGreenlet.__init__(self, _gt_main, *args, **kwargs)
        if run is not None:
            self._gt_body = run

    def _gt_never_ran_kill(self, exception):
        """A supervised child killed with an error before it ever ran never
        enters its body, so gevent would hand that error to the hub (which
        prints it, and re-raises SystemExit in the main greenlet).  Record it
        as the child's crash instead, report it once, and end the greenlet
        quietly: its supervisor sees the crash.  Returns the exception to use."""
        if (
            (self._gt_rec is not None or self._gt_catch)
            and self.gr_frame is None  # never ran (or is running: excluded next)
            and getcurrent() is not self
            and not self.dead
            and self._gt_exc is None
            and self._gt_exit_rec is None
        ):
            exc = exception() if isinstance(exception, type) else exception
            if isinstance(exc, BaseException) and not isinstance(exc, SHUTDOWN_TYPES):
                rec = self._gt_rec
                if rec is None:
                    report_crash(None, self, None, exc)
                else:
                    report_crash(rec.sup, rec.id, rec.spec, exc)
                self._gt_exc = strip_traceback(exc)
                self._gt_exit_rec = exit_of(exc)
                return GreenletExit
            if isinstance(exc, BaseException):
                self._gt_exit_rec = exit_of(exc)
        return exception

    def kill(self, exception=GreenletExit, block=True, timeout=None):
        """Kill the greenlet, as :meth:`gevent.Greenlet.kill`.

        A supervised child killed with an error before it ever ran is recorded
        as crashed (its supervisor sees the crash); the error never reaches
        the hub.
        """
        exception = self._gt_never_ran_kill(exception)
        _GeventGreenlet.kill(self, exception, block, timeout)
        if self._gt_exit_rec is not None and not self._gt_done and self.dead:
            # Killed before it ran: report the exit now, not a hub trip later.
            backstop(self)

    def _maybe_kill_before_start(self, exception):
        # gevent.killall() calls this directly (not kill()): same treatment.
        if not (isinstance(exception, tuple) and len(exception) == 3):
            exception = self._gt_never_ran_kill(exception)
        dead = _GeventGreenlet._maybe_kill_before_start(self, exception)
        if dead and self._gt_exit_rec is not None and not self._gt_done:
            backstop(self)
        return dead

    # -- gevent's view of the outcome, including exceptions we caught -------
    @property
    def exception(self):
        if self._gt_exc is not None:
            return self._gt_exc
        return _GeventGreenlet.exception.__get__(self)

    @property
    def exc_info(self):
        if self._gt_exc is not None:
            return (type(self._gt_exc), self._gt_exc, None)
        return _GeventGreenlet.exc_info.__get__(self)

    def successful(self):
        return self._gt_exc is None and _GeventGreenlet.successful(self)

    def _raise_exception(self):
        if self._gt_exc is not None:
            raise self._gt_exc
        return _GeventGreenlet._raise_exception(self)


def _gt_main(*args, **kwargs):
    """The body gevent runs for every greentree Greenlet: one module-level
    function, not a bound method per greenlet."""
    self = getcurrent()
    body = self._gt_body
    exit = EXIT_NORMAL
    try:
        if body is None:
            return type(self)._run(self, *args, **kwargs)
        return body(*args, **kwargs)
    except GreenletExit as e:
        # gevent's meaning: a killed greenlet is successful, value = the exit.
        # Drop its traceback: it holds this frame, which holds self, a
        # cycle that would keep every stopped child's frames alive until
        # the cyclic GC runs.
        exit = exit_of(e)
        return strip_traceback(e)
    except _Kill as e:
        exit = exit_of(e)
        return strip_traceback(e)
    except BaseException as e:
        rec = self._gt_rec
        if rec is None and not self._gt_catch:
            raise  # unsupervised: behave as a plain gevent Greenlet
        # exit_of(e) for an exception that is not a shutdown, without its call.
        exit = _new_exit(Exit, (CRASH, e))
        self._gt_exc = e
        if rec is None:
            report_crash(None, self, None, e)
        else:
            report_crash(rec.sup, rec.id, rec.spec, e)
        if e.__cause__ is None and e.__context__ is None:  # strip_traceback's usual case, inline
            e.__traceback__ = None
        else:
            strip_traceback(e)
        return None
    finally:
        self._gt_body = None
        # The body ran, so this finally reports the exit; the backstop
        # link is not needed, and leaving it would cost a hub callback.
        self.unlink(backstop)
        if self._gt_done or self._gt_handshake is not None or self._gt_hooks is not None:
            self._gt_notify_exit(exit)
        else:
            # _gt_notify_exit with nothing to do but tell the parent, inline:
            # this runs at the end of every child.
            self._gt_done = True
            self._gt_exit_rec = exit
            rec = self._gt_rec
            if rec is not None:
                sup = rec.sup
                if sup is not None:  # None once its supervisor has finished
                    sup._child_exited(self, exit)


# A function child is ``Greenlet(body, *args, **kwargs)`` built without the
# subclass check of ``Greenlet.__init__`` (a supervisor starting a function
# knows): ``g = new_greenlet(Greenlet); init_greenlet(g, _gt_main, *args,
# **kwargs); g._gt_body = body`` (in the caller: it runs for every start).
new_greenlet = _GeventGreenlet.__new__
_new_exit = tuple.__new__  # Exit(kind, reason) without the namedtuple's Python-level __new__
init_greenlet = _GeventGreenlet.__init__


def started(value: Any = None) -> bool:
    """Tell the supervisor that the calling child finished its setup.

    A child whose spec has ``handshake=True`` must call this; until it does,
    its supervisor starts no later sibling, and if the child exits or
    ``start_timeout`` passes first, the start fails.  ``value`` is kept as
    the child's ``started_value``, for whoever started it (``start_child``
    returns the child).  A second call raises :class:`GreentreeError`.
    Outside a supervised start it does nothing and returns False, so the same
    code runs unsupervised.

    >>> started()
    False
    """
    g = getcurrent()
    if getattr(g, "_gt_started_called", False):
        raise GreentreeError(f"started() was already called by {g!r}; call it once, when the setup is done")
    if getattr(g, "_gt_handshake", None) is None:
        return False
    g._gt_started_called = True
    return g._gt_signal_started(value)


def backstop(greenlet) -> None:
    """The rawlink every supervised child gets: one module-level function, no
    per-child allocation.  Reports a greenlet that ended without running its body."""
    if greenlet._gt_done:
        return
    exit = greenlet._gt_exit_rec
    if exit is None:
        exc = _GeventGreenlet.exception.__get__(greenlet)
        if exc is None and isinstance(greenlet.value, BaseException):
            exc = greenlet.value
        exit = exit_of(exc)
    greenlet._gt_notify_exit(exit)
