"""Child specs and the enums that describe them.

A :class:`ChildSpec` is validated when it is built, in the caller's greenlet:
an invalid spec raises :class:`ChildSpecError` before anything starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import attrgetter as _attrgetter
from typing import Any

from gevent import Greenlet as _GeventGreenlet

from ._errors import ChildSpecError
from ._imports import resolve
from ._policy import AutoShutdown, Restart, Strategy

__all__ = ["Restart", "Strategy", "AutoShutdown", "BRUTAL_KILL", "ChildSpec", "INFINITY", "check_seconds"]


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
#: clean up gracefully (see :ref:`the shutdown protocol <shutdown>` for why gevent cannot make this
#: uncatchable).
BRUTAL_KILL = _BrutalKill()

#: ``shutdown=None`` (or ``INFINITY``): wait for the child to exit however long
#: it takes.  The default for child supervisors, which stop their own subtree.
INFINITY = None

_DEFAULT = object()
_type = type  # ChildSpec.__init__ has a parameter named ``type``

_P, _TR, _TE = Restart.PERMANENT, Restart.TRANSIENT, Restart.TEMPORARY
_RESTARTS = {_P: _P, _TR: _TR, _TE: _TE, "permanent": _P, "transient": _TR, "temporary": _TE}


def _enum_value(enum_cls, value, what, owner):
    if type(value) is enum_cls:
        return value
    member = enum_cls._value2member_map_.get(value) if type(value) is str else None
    if member is not None:
        return member  # what enum_cls(value) returns, without the enum machinery's calls
    try:
        return enum_cls(value)
    except (ValueError, TypeError):
        if callable(owner):  # a label made only when there is a message to write
            owner = owner()
        choices = ", ".join(repr(m.value) for m in enum_cls)
        raise ChildSpecError(f"{owner}: {what} must be one of {choices}, not {value!r}") from None


def check_seconds(value, what, owner, *, allow_none=True, allow_zero=True, allow_brutal=False, error=ChildSpecError):
    """Validate a duration in seconds: a finite number >= 0 (> 0 unless ``allow_zero``).

    ``None`` (wait forever) when ``allow_none``; :data:`BRUTAL_KILL` when
    ``allow_brutal``.  Returns it as a float.  NaN, infinity, negatives,
    booleans and strings are refused with ``error`` naming ``owner``.
    """
    if value is None and allow_none:
        return None
    if allow_brutal and value is BRUTAL_KILL:
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        extra = ", BRUTAL_KILL" if allow_brutal else ""
        none = " or None (wait forever)" if allow_none else ""
        hint = ""
        if isinstance(value, float) and math.isinf(value) and allow_none:
            hint = "; use None to wait forever"
        raise error(f"{owner}: {what} must be a finite number of seconds {bound}{extra}{none}, not {value!r}{hint}")
    return float(value)


def _field(name: str) -> property:
    """A read-only field: read at C speed, and an assignment says how to change it."""

    def refuse(self, value):
        raise AttributeError(f"ChildSpec({self.id!r}) is immutable; use spec.replace({name}=...)")

    return property(_attrgetter("_" + name), refuse)


def _resolve_start(path: str, id: Any) -> Any:
    """``start`` given as ``"package.module:name"``: the object it names, or ChildSpecError.

    >>> ChildSpec("j", "os.path:join").start is __import__("os").path.join
    True
    >>> ChildSpec("j", "os.path.join")
    Traceback (most recent call last):
      ...
    greentree._errors.ChildSpecError: ChildSpec('j'): start 'os.path.join' is not a function or class, nor "module:name"
    """
    module, sep, name = path.partition(":")
    if not sep or not module or not name:
        raise ChildSpecError(
            f"ChildSpec({id!r}): start {path!r} is not a function or class, nor \"module:name\""
        )
    try:
        return resolve(path)
    except (ImportError, AttributeError) as e:
        raise ChildSpecError(f"ChildSpec({id!r}): start {path!r} cannot be imported: {type(e).__name__}: {e}") from None


_new_spec = object.__new__


class ChildSpec:
    """How to start, restart and stop one child.

    ``start`` is either a function, run as the body of the child greenlet with
    ``*args, **kwargs``, or a class whose instances are children themselves:
    a :class:`greentree.Greenlet` subclass, a :class:`Supervisor`,
    :class:`DynamicSupervisor`, or :class:`Server`, instantiated with
    ``*args, **kwargs``.  It may also be named by its import path,
    ``"package.module:name"``, imported when the spec is made (as specs
    stored by a :class:`ClusterSupervisor` are).

    >>> spec = ChildSpec("cache", dict, restart="transient", shutdown=2)
    >>> spec.restart, spec.shutdown, spec.type
    (<Restart.TRANSIENT: 'transient'>, 2.0, 'worker')
    >>> ChildSpec("x", print, restart="prmanent")
    Traceback (most recent call last):
      ...
    greentree._errors.ChildSpecError: ChildSpec('x'): restart must be one of 'permanent', 'transient', 'temporary', not 'prmanent'

    ``shutdown`` is seconds to wait after :class:`ShutdownExit` before
    escalating, :data:`BRUTAL_KILL`, or ``None`` to wait forever (the default
    for supervisors; 5 seconds for workers).  ``significant`` children
    (transient or temporary only) stop their supervisor when they exit
    normally, if the supervisor's ``auto_shutdown`` says so.
    ``handshake=True`` makes the supervisor wait, up to ``start_timeout``
    seconds, until the child calls :func:`greentree.started` before it starts
    the next sibling; a child that exits or times out before that failed to
    start.  ``register`` is an object with a ``bind(child)`` method (e.g.
    ``registry.via(key)``) called for every (re)start before the child runs:
    the child is registered under that name.

    A spec is immutable (its fields are read-only): :meth:`replace` makes a
    changed copy.
    """

    __slots__ = (
        "_id", "_start", "_args", "_kwargs", "_restart", "_shutdown", "_significant",
        "_type", "_handshake", "_start_timeout", "_register", "_may_block", "_child_class",
    )

    def __init__(
        self,
        id: Any,
        start: Callable[..., Any] | str,
        *args: Any,
        restart: Restart | str = _P,
        shutdown: Any = _DEFAULT,
        significant: bool = False,
        kwargs: dict | None = None,
        type: str | None = None,
        handshake: bool | None = None,
        start_timeout: float | None = 5.0,
        register: Any = None,
    ):
        try:
            hash(id)
        except TypeError:
            raise ChildSpecError(f"ChildSpec: id must be hashable (a str, int or tuple), not {id!r}") from None
        rs = _RESTARTS.get(restart) if isinstance(restart, str) else None
        if rs is None:
            rs = _enum_value(Restart, restart, "restart", f"ChildSpec({id!r})")
        if start.__class__ is str:
            start = _resolve_start(start, id)
        is_class = isinstance(start, _type)
        cls: Any = start
        if is_class and getattr(cls, "_gt_child_class", False):
            child_class = True
            if type is None:
                type = cls._gt_child_type
            if handshake is None:
                handshake = bool(cls.handshake)
        else:
            child_class = False
            if not callable(start):
                raise ChildSpecError(
                    f"ChildSpec({id!r}): start must be a function or a greentree.Greenlet subclass, not {start!r}"
                )
            if is_class and issubclass(cls, _GeventGreenlet):
                raise ChildSpecError(
                    f"ChildSpec({id!r}): start is a gevent.Greenlet subclass ({start.__qualname__}); subclass "
                    "greentree.Greenlet instead so the supervisor can catch its exit, or pass a function"
                )
            if type is None:
                type = "worker"
            if handshake is None:
                handshake = False
        if type == "worker":
            if shutdown is _DEFAULT or shutdown == 5.0:
                shutdown = 5.0
            elif shutdown.__class__ is not float or not 0.0 <= shutdown < math.inf:
                # (A plainly valid float needs no check; naming the spec for a message costs more.)
                shutdown = check_seconds(shutdown, "shutdown", f"ChildSpec({id!r})", allow_brutal=True)
        elif type == "supervisor":
            if shutdown is _DEFAULT:
                shutdown = None
            elif shutdown.__class__ is not float or not 0.0 <= shutdown < math.inf:
                shutdown = check_seconds(shutdown, "shutdown", f"ChildSpec({id!r})", allow_brutal=True)
        else:
            raise ChildSpecError(f"ChildSpec({id!r}): type must be 'worker' or 'supervisor', not {type!r}")
        if significant is not False:
            if significant is not True:
                raise ChildSpecError(f"ChildSpec({id!r}): significant must be True or False, not {significant!r}")
            if rs is _P:
                raise ChildSpecError(
                    f"ChildSpec({id!r}): a significant child must be restart='transient' or 'temporary' "
                    "(a permanent child is always restarted, so its exit can never stop the supervisor)"
                )
        if kwargs is None:
            kwargs = {}
        elif not isinstance(kwargs, dict):
            raise ChildSpecError(f"ChildSpec({id!r}): kwargs must be a dict, not {kwargs!r}")
        else:
            kwargs = dict(kwargs)
        if handshake is not False and handshake is not True:
            raise ChildSpecError(f"ChildSpec({id!r}): handshake must be True or False, not {handshake!r}")
        if start_timeout is not None and start_timeout != 5.0:
            start_timeout = check_seconds(start_timeout, "start_timeout", f"ChildSpec({id!r})", allow_zero=False)
        # A child class's constructor may yield, unless the class promises it never does
        # (``nonblocking_init = True``): then a start without a handshake runs inline.
        may_block = handshake or (child_class and not getattr(cls, "nonblocking_init", False))
        if register is not None:
            bind = getattr(register, "bind", None)
            if not callable(bind):
                raise ChildSpecError(
                    f"ChildSpec({id!r}): register must have a bind(child) method (e.g. registry.via(key)), "
                    f"not {register!r}"
                )
            if not getattr(register, "nonblocking", False):
                may_block = True
        # Plain slot stores (the fields are read-only properties below): an
        # immutable spec without a __setattr__ hook, which would cost more
        # than the rest of the constructor.
        self._id = id
        self._start: Callable[..., Any] = start  # type: ignore[assignment]  # (a str was resolved above)
        self._args = args
        self._kwargs = kwargs
        self._restart = rs
        self._shutdown = shutdown
        self._significant = significant
        self._type = type
        self._handshake = handshake
        self._start_timeout = start_timeout
        self._register = register
        self._may_block = may_block
        self._child_class = child_class

    #: The child's id, unique among its supervisor's children (any hashable).
    id = _field("id")
    #: The function to run, or the child class to instantiate.
    start = _field("start")
    #: Positional arguments for ``start`` (a tuple).
    args = _field("args")
    #: Keyword arguments for ``start`` (a dict).
    kwargs = _field("kwargs")
    #: ``Restart.PERMANENT``, ``TRANSIENT`` or ``TEMPORARY``.
    restart = _field("restart")
    #: Seconds to wait after ShutdownExit, :data:`BRUTAL_KILL`, or None (forever).
    shutdown = _field("shutdown")
    #: Whether its exit may stop the supervisor (see ``auto_shutdown``).
    significant = _field("significant")
    #: ``"worker"`` or ``"supervisor"``.
    type = _field("type")
    #: Whether the supervisor waits for :func:`greentree.started`.
    handshake = _field("handshake")
    #: Seconds to wait for the handshake, or None.
    start_timeout = _field("start_timeout")
    #: The name binder (``registry.via(key)``), or None.
    register = _field("register")
    #: Starting this child may run code that yields (a class's constructor, a
    #: handshake, a name binder that does I/O): the supervisor then starts it
    #: from a greenlet of its own, never from its caller's or the hub.  A child
    #: class that sets ``nonblocking_init = True`` promises its constructor never
    #: yields (no I/O, no waiting), so without a handshake it is False.
    may_block = _field("may_block")

    def _with(self, id: Any, args: tuple, register: Any) -> ChildSpec:
        """This spec with another ``id``, ``args`` and name binder, without validating it again.

        Private, for code that starts many children from one validated spec
        (a connection tree per connection).  ``id`` must be hashable and
        ``register`` a binder that never yields (``registry.via(key)``) or None;
        anything else goes through the constructor.
        """
        if register is not None and not getattr(register, "nonblocking", False):
            return self.replace(id=id, args=args, register=register)
        new = _new_spec(ChildSpec)
        new._id = id
        new._start = self._start
        new._args = args
        new._kwargs = self._kwargs
        new._restart = self._restart
        new._shutdown = self._shutdown
        new._significant = self._significant
        new._type = self._type
        new._handshake = self._handshake
        new._start_timeout = self._start_timeout
        new._register = register
        new._may_block = self._may_block
        new._child_class = self._child_class
        return new

    def replace(self, **changes: Any) -> ChildSpec:
        """Return a copy with ``changes`` applied (validated like a new spec).

        >>> ChildSpec("a", print).replace(restart="temporary").restart
        <Restart.TEMPORARY: 'temporary'>
        """
        fields = {
            "restart": self.restart, "shutdown": self.shutdown, "significant": self.significant,
            "kwargs": self.kwargs, "type": self.type, "handshake": self.handshake,
            "start_timeout": self.start_timeout, "register": self.register,
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
        return all(getattr(self, f) == getattr(other, f) for f in ChildSpec.__slots__)

    def __hash__(self):
        return hash((self.id, self.start))

    def __repr__(self) -> str:
        start = getattr(self.start, "__qualname__", repr(self.start))
        return (
            f"ChildSpec({self.id!r}, {start}, restart={self.restart.value!r}, "
            f"shutdown={self.shutdown!r}, type={self.type!r})"
        )
