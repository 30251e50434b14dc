"""The greenlet every supervised child runs in.

:class:`Greenlet` is a :class:`gevent.Greenlet` that, while it is supervised,
catches whatever its body raises, so gevent's hub never prints the traceback
and never sees ``SystemExit``/``KeyboardInterrupt`` from child code.  The
exception is kept (without its traceback) and ``get()``, ``exception`` and
``successful()`` behave as gevent's do.  The body's ``finally`` notifies the
supervisor directly; a ``rawlink`` set by the supervisor is only the backstop
for a greenlet killed before it ever ran (child code may ``unlink_all()``).

An unsupervised greentree Greenlet (a root supervisor you started yourself)
behaves exactly like a gevent Greenlet: its failure reaches the hub.
"""

from __future__ import annotations

from gevent import GreenletExit, getcurrent
from gevent import Greenlet as _GeventGreenlet

from ._exits import SHUTDOWN_TYPES, _Kill, strip_traceback
from ._report import report_crash

__all__ = ["Greenlet", "started"]


class Greenlet(_GeventGreenlet):
    """A gevent Greenlet that a greentree supervisor can supervise.

    Use it as ``start`` in a :class:`ChildSpec` by subclassing it and defining
    ``_run``, exactly as with :class:`gevent.Greenlet`; plain functions are
    wrapped in it for you.  Set the class attribute ``handshake = True`` if the
    subclass calls :func:`started` once its setup is done (supervisors and
    servers do).

    >>> import gevent
    >>> g = Greenlet(lambda: 42); g.start(); g.get()
    42
    """

    #: True if this kind of child signals :func:`started` itself.
    handshake = False

    #: Catch and report failures even when unsupervised.  Supervisors set it:
    #: their failure is always observable (``get()``, ``wait_started()``, the
    #: ``greentree`` log), so the hub need not print it.
    _gt_catch = False

    # Per-instance state lives in class-level defaults until it is needed, so
    # an idle supervised child carries as few dict entries as possible.
    _gt_body = None        # the function for function children
    _gt_rec = None         # the supervisor's record of this child (has .sup)
    _gt_exc = None         # what the body raised (traceback dropped)
    _gt_done = False       # exit already reported
    _gt_handshake = None   # AsyncResult the supervisor waits on during start
    _gt_hooks = None       # extra exit callbacks (registries)

    def __init__(self, run=None, *args, **kwargs):
        if run is not None and type(self)._run is not _GeventGreenlet._run:
            # A subclass with its own _run body: every positional argument is
            # for _run (gevent would take the first one as ``run``, a trap for
            # ChildSpec("x", MyGreenlet, arg, ...)).
            args = (run,) + args
            run = None
        _GeventGreenlet.__init__(self, self._gt_main, *args, **kwargs)
        if run is not None:
            self._gt_body = run

    def _gt_main(self, *args, **kwargs):
        body = self._gt_body
        try:
            if body is None:
                return type(self)._run(self, *args, **kwargs)
            return body(*args, **kwargs)
        except GreenletExit as e:
            # gevent's meaning: a killed greenlet is successful, value = the exit.
            # Drop its traceback: it holds this frame, which holds self, a
            # cycle that would keep every stopped child's frames alive until
            # the cyclic GC runs.
            return strip_traceback(e)
        except _Kill as e:
            return strip_traceback(e)
        except BaseException as e:
            rec = self._gt_rec
            if rec is None and not self._gt_catch:
                raise  # unsupervised: behave as a plain gevent Greenlet
            self._gt_exc = e
            if rec is None:
                report_crash(None, self, None, e)
            else:
                report_crash(rec.sup, rec.id, rec.spec.restart if rec.spec is not None else None, e)
            strip_traceback(e)
            return None
        finally:
            self._gt_body = None
            # The body ran, so this finally reports the exit; the backstop
            # link is not needed, and leaving it would cost a hub callback.
            self.unlink(backstop)
            self._gt_exit()

    def _gt_exit(self, _unused=None):
        """Tell the supervisor (and registries) once that this greenlet ended.

        Runs in the child's own ``finally`` or, for a greenlet killed before it
        started, from the hub through the ``rawlink`` backstop.  Never blocks.
        """
        if self._gt_done:
            return
        self._gt_done = True
        hs = self._gt_handshake
        if hs is not None:
            self._gt_handshake = None
            hs.set_exception(_StartAborted(self))
        hooks = self._gt_hooks
        if hooks:
            self._gt_hooks = None
            for hook in hooks:
                hook(self)
        rec = self._gt_rec
        if rec is not None:
            rec.sup._child_exited(self)

    def kill(self, exception=GreenletExit, block=True, timeout=None):
        """Kill the greenlet, as :meth:`gevent.Greenlet.kill`.

        A supervised child killed with an error before it ever ran never
        enters its body, so gevent would hand that error to the hub (which
        prints it).  Record it as the child's crash instead, report it once,
        and end the greenlet quietly: its supervisor sees the crash.
        """
        if (
            (self._gt_rec is not None or self._gt_catch)
            and self.gr_frame is None  # never ran (or is running: excluded next)
            and getcurrent() is not self
            and not self.dead
            and self._gt_exc is None
        ):
            exc = exception() if isinstance(exception, type) else exception
            if not isinstance(exc, (GreenletExit, _Kill)):
                rec = self._gt_rec
                if rec is None:
                    report_crash(None, self, None, exc)
                else:
                    report_crash(rec.sup, rec.id, rec.spec.restart if rec.spec is not None else None, exc)
                self._gt_exc = strip_traceback(exc)
                exception = GreenletExit
        return _GeventGreenlet.kill(self, exception, block, timeout)

    def gt_add_exit_hook(self, hook) -> None:
        """Call ``hook(greenlet)`` once when this greenlet ends (immediately if it has).

        Survives ``unlink_all()``.  The hook runs in the ending greenlet or in
        the hub, so it must not block or raise.
        """
        if self._gt_done:
            hook(self)
            return
        if self._gt_hooks is None:
            self._gt_hooks = []
        self._gt_hooks.append(hook)

    def gt_remove_exit_hook(self, hook) -> None:
        hooks = self._gt_hooks
        if hooks:
            try:
                hooks.remove(hook)
            except ValueError:
                pass

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


class _StartStopContext:
    """``with x:`` starts ``x``, waits until it has started, and stops it at the end.

    For greenlets with ``wait_started()`` and ``stop()`` (supervisors and servers).
    """

    def __enter__(self):
        if not self.started:
            self.start()
        try:
            self.wait_started()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, t, v, tb):
        self.stop()


class _StartAborted(Exception):
    """The child ended before it called :func:`started`."""

    def __init__(self, greenlet):
        super().__init__(greenlet)
        self.greenlet = greenlet


def started(value=None) -> bool:
    """Tell the supervisor that the calling child finished its setup.

    A child whose spec has ``handshake=True`` must call this; until it does,
    its supervisor starts no later sibling, and if the child exits or
    ``start_timeout`` passes first, the start fails.  Anywhere else it does
    nothing and returns False, so the same code runs unsupervised.

    >>> started()
    False
    """
    g = getcurrent()
    hs = getattr(g, "_gt_handshake", None)
    if hs is None:
        return False
    g._gt_handshake = None
    hs.set(value)
    return True


def backstop(greenlet) -> None:
    """The rawlink every supervised child gets: one module-level function, no
    per-child allocation."""
    greenlet._gt_exit()
