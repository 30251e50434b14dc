"""State-machine specs for :class:`InstanceManager`, and its errors.  Pure: no gevent.

A *spec* is any object with ``name`` (a str), ``initial`` (a state) and
``allows(state, action, new_state) -> bool``; optionally ``timeouts`` (a
mapping state -> seconds) and then ``target(state, action) -> new_state``,
which says where the action ``"timeout"`` leads.  :class:`StateMachine` is
the ready-made one: a table ``{(state, action): new_state}``.

:func:`check_spec` validates any spec once, when the manager is built, and
returns a :class:`SpecView` the shards use without further checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._errors import ArgumentError, GreentreeError

__all__ = [
    "TIMEOUT_ACTION",
    "InstanceExistsError",
    "InstanceNotFoundError",
    "InstanceValueError",
    "InvalidTransitionError",
    "SpecView",
    "StateMachine",
    "StoreCorruptError",
    "StoreError",
    "StoreMismatchError",
    "check_spec",
    "check_specs",
    "check_state",
]

#: The action applied when an instance stays in a state longer than its timeout.
TIMEOUT_ACTION = "timeout"

_SCALARS = (str, bytes, int, float, bool, type(None))


# ---------------------------------------------------------------- errors
class InstanceNotFoundError(GreentreeError, LookupError):
    """No instance with this id (never created, deleted, or pruned)."""


class InstanceExistsError(GreentreeError, ValueError):
    """:meth:`InstanceManager.init_instance` with an id that is already in use.

    The caller's fault; nothing changed.  Delete the old instance first, or
    pick another id.
    """


class InvalidTransitionError(GreentreeError, ValueError):
    """The instance's spec does not allow ``(state, action) -> new_state``.

    The caller's fault; the instance is unchanged.  The message names the
    instance, its current state and what the spec allows from there.
    """


class InstanceValueError(ArgumentError, TypeError):
    """An id, state, action or meta value that cannot be stored.

    Values must be msgpack-serialisable (ids: str, bytes, int, or tuples of
    them; states and actions: str, bytes, int, float, bool, None, or tuples of
    them; meta: dicts, lists and those scalars) and meta must fit in
    ``MAX_META`` bytes.  Raised at the call, before anything changes.  An
    :class:`ArgumentError` (so a :class:`ValueError`) and a :class:`TypeError`.
    """


class StoreError(GreentreeError, OSError):
    """The instance store cannot be used: its directory or a shard file cannot
    be opened or locked (another manager or process uses it), or a commit
    failed (disk full, I/O error)."""


class StoreMismatchError(StoreError, ValueError):
    """The store was written with another partition count than the manager's.

    ``found`` and ``expected`` are the two counts.  Open it with ``found``
    partitions, or move the instances offline with
    :func:`greentree.reshard` first.
    """

    def __init__(self, message: str, found: int | None = None, expected: int | None = None):
        super().__init__(message)
        self.found = found
        self.expected = expected


class StoreCorruptError(StoreError, ValueError):
    """A shard file is damaged (truncated, overwritten, checksum mismatch) or
    was written by a newer greentree.  The message names the file; restore it
    from a backup or move it aside (its instances are then lost)."""


# ---------------------------------------------------------------- values
def check_state(value: Any, what: str) -> Any:
    """Return ``value`` if it is a storable, hashable state (or action); raise otherwise.

    >>> check_state(("paid", 2), "state")
    ('paid', 2)
    >>> check_state(["paid"], "state")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    greentree._instance_spec.InstanceValueError: state ['paid'] cannot be stored: states and actions must be str, ...
    """
    if type(value) in _SCALARS or _is_state_tuple(value):
        if isinstance(value, int) and not isinstance(value, bool) and not -(1 << 63) <= value < (1 << 64):
            raise InstanceValueError(f"{what} {value!r} cannot be stored: ints must fit in 64 bits")
        return value
    raise InstanceValueError(
        f"{what} {value!r} cannot be stored: states and actions must be str, bytes, int, float, "
        "bool, None or tuples of them"
    )


def _is_state_tuple(value: Any) -> bool:
    return type(value) is tuple and all(type(v) in _SCALARS or _is_state_tuple(v) for v in value)


# ---------------------------------------------------------------- StateMachine
class StateMachine:
    """A spec as data: ``transitions = {(state, action): new_state}``.

    >>> order = StateMachine("order", initial="new",
    ...                      transitions={("new", "pay"): "paid", ("paid", "ship"): "shipped",
    ...                                   ("new", "timeout"): "expired"},
    ...                      timeouts={"new": 3600.0})
    >>> order.allows("new", "pay", "paid"), order.allows("new", "ship", "shipped")
    (True, False)
    >>> order.target("new", "timeout"), sorted(order.states)
    ('expired', ['expired', 'new', 'paid', 'shipped'])

    ``timeouts`` maps a state to the seconds an instance may stay in it; then
    the action ``"timeout"`` is applied, so every state with a timeout needs
    a ``(state, "timeout")`` transition.  States and actions are str, bytes,
    int, float, bool, None or tuples of them.  Everything is checked here:

    >>> StateMachine("order", initial="new", transitions={}, timeouts={"new": 60})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    greentree._instance_spec.InstanceValueError: StateMachine('order'): state 'new' has a timeout but no ('new', 'timeout') ...
    """

    def __init__(
        self,
        name: str,
        initial: Any,
        transitions: Mapping[tuple[Any, Any], Any],
        timeouts: Mapping[Any, float] | None = None,
    ):
        if not isinstance(name, str) or not name:
            raise InstanceValueError(f"StateMachine(name={name!r}): name must be a non-empty str")
        owner = f"StateMachine({name!r})"
        check_state(initial, f"{owner}: initial state")
        if not isinstance(transitions, Mapping):
            raise InstanceValueError(
                f"{owner}: transitions must be a dict {{(state, action): new_state}}, not {transitions!r}"
            )
        table: dict = {}
        for key, new_state in transitions.items():
            if type(key) is not tuple or len(key) != 2:
                raise InstanceValueError(f"{owner}: transition key {key!r} must be a (state, action) pair")
            check_state(key[0], f"{owner}: state")
            check_state(key[1], f"{owner}: action")
            check_state(new_state, f"{owner}: state")
            table[key] = new_state
        self.name = name
        self.initial = initial
        self.transitions: dict = table
        self.timeouts: dict = _check_timeouts(timeouts, owner, lambda s: (s, TIMEOUT_ACTION) in table)
        states = {initial}
        for (state, _action), new_state in table.items():
            states.add(state)
            states.add(new_state)
        self.states = frozenset(states)

    def allows(self, state: Any, action: Any, new_state: Any) -> bool:
        """True if ``action`` takes an instance in ``state`` to ``new_state``."""
        target = self.transitions.get((state, action), _MISSING)
        return target is not _MISSING and target == new_state

    def target(self, state: Any, action: Any) -> Any:
        """Where ``action`` leads from ``state``; raises :class:`KeyError` if nowhere."""
        return self.transitions[(state, action)]

    def actions(self, state: Any) -> list:
        """The ``(action, new_state)`` pairs allowed from ``state``, in table order."""
        return [(a, t) for (s, a), t in self.transitions.items() if s == state]

    def __repr__(self) -> str:
        return f"StateMachine({self.name!r}, initial={self.initial!r}, {len(self.transitions)} transitions)"


_MISSING = object()


def _check_timeouts(timeouts: Any, owner: str, has_target: Callable[[Any], bool]) -> dict:
    if timeouts is None:
        return {}
    if not isinstance(timeouts, Mapping):
        raise InstanceValueError(f"{owner}: timeouts must be a dict {{state: seconds}}, not {timeouts!r}")
    out = {}
    for state, seconds in timeouts.items():
        check_state(state, f"{owner}: timeout state")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or seconds <= 0:
            raise InstanceValueError(
                f"{owner}: timeout for state {state!r} must be a number of seconds > 0, not {seconds!r}"
            )
        if not has_target(state):
            raise InstanceValueError(
                f"{owner}: state {state!r} has a timeout but no ({state!r}, {TIMEOUT_ACTION!r}) "
                "transition saying where it leads"
            )
        out[state] = float(seconds)
    return out


# ---------------------------------------------------------------- any spec
class SpecView:
    """What a shard needs from a spec, checked once."""

    __slots__ = ("actions", "allows", "initial", "name", "spec", "target", "timeouts")

    def __init__(self, spec: Any, name: str, initial: Any, timeouts: dict):
        self.spec = spec
        self.name = name
        self.initial = initial
        self.allows: Callable[[Any, Any, Any], bool] = spec.allows
        self.timeouts = timeouts
        self.target: Callable[[Any, Any], Any] | None = getattr(spec, "target", None)
        self.actions: Callable[[Any], list] | None = getattr(spec, "actions", None)

    def deadline(self, state: Any, now: float) -> float | None:
        """The wall-clock time an instance entering ``state`` at ``now`` times out, or None."""
        seconds = self.timeouts.get(state) if self.timeouts else None
        return None if seconds is None else now + seconds

    def describe_allowed(self, state: Any) -> str:
        if self.actions is None:
            return "see the spec's allows()"
        try:
            pairs = self.actions(state)
        except Exception:  # noqa: BLE001 - a user spec's helper; the error message must still be built
            return "see the spec's allows()"
        if not pairs:
            return "nothing (it is a final state)"
        return ", ".join(f"{a!r} -> {t!r}" for a, t in pairs)


def check_spec(spec: Any, owner: str) -> SpecView:
    """Validate a spec object; return its :class:`SpecView`.

    >>> check_spec(object(), "InstanceManager")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    greentree._instance_spec.InstanceValueError: InstanceManager: spec <object object at 0x...> needs a str `name`, ...
    """
    name = getattr(spec, "name", None)
    if not isinstance(name, str) or not name or not hasattr(spec, "initial") or not callable(
            getattr(spec, "allows", None)):
        raise InstanceValueError(
            f"{owner}: spec {spec!r} needs a str `name`, an `initial` state and an "
            "allows(state, action, new_state) method (or use greentree.StateMachine)"
        )
    initial = check_state(spec.initial, f"{owner}: spec {name!r}: initial state")
    target = getattr(spec, "target", None)
    timeouts = getattr(spec, "timeouts", None)
    if timeouts and not callable(target):
        raise InstanceValueError(
            f"{owner}: spec {name!r} has timeouts but no target(state, action) method to say where "
            f"the action {TIMEOUT_ACTION!r} leads"
        )

    def has_target(state: Any) -> bool:
        try:
            target(state, TIMEOUT_ACTION)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - user code or a thread's failure, handed on, never swallowed
            return False
        return True

    return SpecView(spec, name, initial, _check_timeouts(timeouts, f"{owner}: spec {name!r}", has_target))


def check_specs(specs: Iterable[Any], owner: str) -> dict[str, SpecView]:
    """Validate a list of specs; names must be unique."""
    if isinstance(specs, (str, bytes)) or not hasattr(specs, "__iter__") or hasattr(specs, "allows"):
        raise InstanceValueError(f"{owner}: specs must be a list of specs, e.g. [StateMachine(...)], not {specs!r}")
    out: dict[str, SpecView] = {}
    for spec in specs:
        view = check_spec(spec, owner)
        if view.name in out:
            raise InstanceValueError(f"{owner}: two specs are named {view.name!r}; spec names must be unique")
        out[view.name] = view
    return out
