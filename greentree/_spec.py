"""Child specs and the enums that describe them.

A :class:`ChildSpec` is validated when it is built, in the caller's greenlet:
an invalid spec raises :class:`ChildSpecError` before anything starts.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Callable

from ._errors import ChildSpecError

__all__ = ["Restart", "Strategy", "AutoShutdown", "BRUTAL_KILL", "ChildSpec", "INFINITY"]


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


class _BrutalKill:
    """The ``shutdown`` value that kills a child at once, without ``ShutdownExit``."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "BRUTAL_KILL"

    def __reduce__(self):
        return "BRUTAL_KILL"


#: ``shutdown=BRUTAL_KILL``: the child is killed at once, with no chance to
#: clean up gracefully (see :ref:`shutdown` for why gevent cannot make this
#: uncatchable).
BRUTAL_KILL = _BrutalKill()

#: ``shutdown=None`` (or ``INFINITY``): wait for the child to exit however long
#: it takes.  The default for child supervisors, which stop their own subtree.
INFINITY = None

_DEFAULT = object()
_type = type  # ChildSpec.__init__ has a parameter named ``type``


def _enum_value(enum_cls, value, what, owner):
    try:
        return enum_cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum_cls)
        raise ChildSpecError(f"{owner}: {what} must be one of {choices}, not {value!r}") from None


def _check_timeout(value, what, owner, *, allow_brutal=False):
    if value is None or (allow_brutal and value is BRUTAL_KILL):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        extra = ", BRUTAL_KILL" if allow_brutal else ""
        raise ChildSpecError(
            f"{owner}: {what} must be a number of seconds >= 0{extra} or None (wait forever), not {value!r}"
        )
    return float(value)


def _gevent_greenlet():
    from gevent import Greenlet

    return Greenlet


def _gt_greenlet():
    from ._child import Greenlet

    return Greenlet


def _is_supervisor_class(start) -> bool:
    from ._base import SupervisorBase  # late: _base imports this module

    return isinstance(start, type) and issubclass(start, SupervisorBase)


class ChildSpec:
    """How to start, restart and stop one child.

    ``start`` is either a function, run as the body of the child greenlet with
    ``*args, **kwargs``, or a :class:`greentree.Greenlet` subclass (a
    :class:`Supervisor`, :class:`DynamicSupervisor`, a ``Server``), instantiated
    with ``*args, **kwargs`` as the child.

    >>> spec = ChildSpec("cache", dict, restart="transient", shutdown=2)
    >>> spec.restart, spec.shutdown, spec.type
    (<Restart.TRANSIENT: 'transient'>, 2.0, 'worker')
    >>> ChildSpec("x", print, restart="prmanent")
    Traceback (most recent call last):
      ...
    greentree._errors.ChildSpecError: ChildSpec('x'): restart must be one of 'permanent', 'transient', 'temporary', not 'prmanent'

    ``shutdown`` is seconds to wait after :class:`ShutdownExit` before
    escalating, :data:`BRUTAL_KILL`, or ``None`` to wait forever (the default
    for supervisors; 5 seconds for workers).  ``significant`` children (transient
    or temporary only) stop their supervisor when they exit normally, if the
    supervisor's ``auto_shutdown`` says so.  ``handshake=True`` makes the
    supervisor wait, up to ``start_timeout`` seconds, until the child calls
    :func:`greentree.started` before it starts the next sibling; a child that
    exits or times out before that failed to start.  ``name`` is an object with
    a ``bind(greenlet)`` method (e.g. ``registry.via(key)``) called for every
    (re)start before the greenlet runs.
    """

    __slots__ = (
        "id", "start", "args", "kwargs", "restart", "shutdown", "significant",
        "type", "handshake", "start_timeout", "name",
    )

    def __init__(
        self,
        id: Any,
        start: Callable[..., Any],
        *args: Any,
        restart: Restart | str = Restart.PERMANENT,
        shutdown: Any = _DEFAULT,
        significant: bool = False,
        kwargs: dict | None = None,
        type: str | None = None,
        handshake: bool | None = None,
        start_timeout: float | None = 5.0,
        name: Any = None,
    ):
        owner = f"ChildSpec({id!r})"
        try:
            hash(id)
        except TypeError:
            raise ChildSpecError(f"ChildSpec: id must be hashable (a str, int or tuple), not {id!r}") from None
        if not callable(start):
            raise ChildSpecError(f"{owner}: start must be a function or a greentree.Greenlet subclass, not {start!r}")
        if isinstance(start, _type) and issubclass(start, _gevent_greenlet()) and not issubclass(start, _gt_greenlet()):
            raise ChildSpecError(
                f"{owner}: start is a gevent.Greenlet subclass ({start.__qualname__}); subclass "
                "greentree.Greenlet instead so the supervisor can catch its exit, or pass a function"
            )
        restart = _enum_value(Restart, restart, "restart", owner)
        is_sup = _is_supervisor_class(start)
        if type is None:
            type = "supervisor" if is_sup else "worker"
        elif type not in ("worker", "supervisor"):
            raise ChildSpecError(f"{owner}: type must be 'worker' or 'supervisor', not {type!r}")
        if shutdown is _DEFAULT:
            shutdown = None if type == "supervisor" else 5.0
        shutdown = _check_timeout(shutdown, "shutdown", owner, allow_brutal=True)
        if not isinstance(significant, bool):
            raise ChildSpecError(f"{owner}: significant must be True or False, not {significant!r}")
        if significant and restart is Restart.PERMANENT:
            raise ChildSpecError(
                f"{owner}: a significant child must be restart='transient' or 'temporary' "
                "(a permanent child is always restarted, so its exit can never stop the supervisor)"
            )
        if kwargs is None:
            kwargs = {}
        elif not isinstance(kwargs, dict):
            raise ChildSpecError(f"{owner}: kwargs must be a dict, not {kwargs!r}")
        if handshake is None:
            handshake = bool(getattr(start, "handshake", False)) if isinstance(start, _type) else False
        elif not isinstance(handshake, bool):
            raise ChildSpecError(f"{owner}: handshake must be True or False, not {handshake!r}")
        start_timeout = _check_timeout(start_timeout, "start_timeout", owner)
        if start_timeout == 0:
            raise ChildSpecError(f"{owner}: start_timeout must be > 0 or None, not 0")
        if name is not None and not callable(getattr(name, "bind", None)):
            raise ChildSpecError(
                f"{owner}: name must have a bind(greenlet) method (e.g. registry.via(key)), not {name!r}"
            )
        set_ = object.__setattr__
        set_(self, "id", id)
        set_(self, "start", start)
        set_(self, "args", tuple(args))
        set_(self, "kwargs", dict(kwargs))
        set_(self, "restart", restart)
        set_(self, "shutdown", shutdown)
        set_(self, "significant", significant)
        set_(self, "type", type)
        set_(self, "handshake", handshake)
        set_(self, "start_timeout", start_timeout)
        set_(self, "name", name)

    def __setattr__(self, name, value):
        raise AttributeError(f"ChildSpec({self.id!r}) is immutable; use spec.replace({name}=...)")

    def replace(self, **changes: Any) -> "ChildSpec":
        """Return a copy with ``changes`` applied (validated like a new spec).

        >>> ChildSpec("a", print).replace(restart="temporary").restart
        <Restart.TEMPORARY: 'temporary'>
        """
        fields = {
            "restart": self.restart, "shutdown": self.shutdown, "significant": self.significant,
            "kwargs": self.kwargs, "type": self.type, "handshake": self.handshake,
            "start_timeout": self.start_timeout, "name": self.name,
        }
        id_ = changes.pop("id", self.id)
        start = changes.pop("start", self.start)
        args = changes.pop("args", self.args)
        unknown = set(changes) - set(fields)
        if unknown:
            raise ChildSpecError(f"ChildSpec({self.id!r}).replace: unknown fields {sorted(unknown)}")
        fields.update(changes)
        return ChildSpec(id_, start, *args, **fields)

    def __eq__(self, other):
        if not isinstance(other, ChildSpec):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __hash__(self):
        return hash((self.id, self.start))

    def __repr__(self) -> str:
        start = getattr(self.start, "__qualname__", repr(self.start))
        return (
            f"ChildSpec({self.id!r}, {start}, restart={self.restart.value!r}, "
            f"shutdown={self.shutdown!r}, type={self.type!r})"
        )
