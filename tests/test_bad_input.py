"""Every invalid spec field and supervisor flag raises a GreentreeError that
names the object and the fix, in the caller, and changes nothing."""

from __future__ import annotations

import math

import gevent
import pytest

from greentree import (
    ChildSpec,
    ChildSpecError,
    DynamicSupervisor,
    GreentreeError,
    Supervisor,
)


def work():
    gevent.sleep(3600)


class PlainGeventGreenlet(gevent.Greenlet):
    pass


class NoBind:
    def __repr__(self):
        return "NoBind()"


def spec(**kw):
    return lambda: ChildSpec("x", work, **kw)


# (case id, factory, regex the message must match: names the object, says what is allowed)
SPEC_CASES = [
    ("id unhashable", lambda: ChildSpec(["x"], work), r"ChildSpec: id must be hashable .*not \['x'\]"),
    ("start not callable", lambda: ChildSpec("x", 42), r"ChildSpec\('x'\): start must be a function or a greentree.Greenlet subclass, not 42"),
    ("start a plain gevent Greenlet subclass", lambda: ChildSpec("x", PlainGeventGreenlet),
     r"ChildSpec\('x'\): start is a gevent.Greenlet subclass \(PlainGeventGreenlet\); subclass greentree.Greenlet instead"),
    ("start gevent.Greenlet itself", lambda: ChildSpec("x", gevent.Greenlet), r"ChildSpec\('x'\): start is a gevent.Greenlet subclass"),
    ("restart typo", spec(restart="prmanent"), r"ChildSpec\('x'\): restart must be one of 'permanent', 'transient', 'temporary', not 'prmanent'"),
    ("restart wrong type", spec(restart=1), r"ChildSpec\('x'\): restart must be one of"),
    ("shutdown negative", spec(shutdown=-1), r"ChildSpec\('x'\): shutdown must be a finite number of seconds >= 0, BRUTAL_KILL or None \(wait forever\), not -1"),
    ("shutdown NaN", spec(shutdown=math.nan), r"ChildSpec\('x'\): shutdown must be a finite number of seconds >= 0.*not nan"),
    ("shutdown str", spec(shutdown="5"), r"ChildSpec\('x'\): shutdown must be a finite number.*not '5'"),
    ("shutdown True", spec(shutdown=True), r"ChildSpec\('x'\): shutdown must be a finite number.*not True"),
    ("significant non-bool", spec(restart="transient", significant=1), r"ChildSpec\('x'\): significant must be True or False, not 1"),
    ("significant and permanent", spec(significant=True),
     r"ChildSpec\('x'\): a significant child must be restart='transient' or 'temporary'"),
    ("kwargs not a dict", spec(kwargs=[("a", 1)]), r"ChildSpec\('x'\): kwargs must be a dict, not \[\('a', 1\)\]"),
    ("handshake non-bool", spec(handshake="yes"), r"ChildSpec\('x'\): handshake must be True or False, not 'yes'"),
    ("start_timeout zero", spec(start_timeout=0), r"ChildSpec\('x'\): start_timeout must be a finite number of seconds > 0 or None \(wait forever\), not 0"),
    ("start_timeout negative", spec(start_timeout=-1), r"ChildSpec\('x'\): start_timeout must be a finite number of seconds > 0 or None"),
    ("type typo", spec(type="wroker"), r"ChildSpec\('x'\): type must be 'worker' or 'supervisor', not 'wroker'"),
    ("register without bind", spec(register=NoBind()), r"ChildSpec\('x'\): register must have a bind\(child\) method .*not NoBind\(\)"),
    ("register a plain string", spec(register="db"), r"ChildSpec\('x'\): register must have a bind\(child\) method"),
    ("shutdown infinite", spec(shutdown=float("inf")), r"ChildSpec\('x'\): shutdown must be a finite number of seconds .*not inf; use None to wait forever"),
    ("start_timeout nan", spec(start_timeout=float("nan")), r"ChildSpec\('x'\): start_timeout must be a finite number of seconds > 0"),
    ("unhashable id", lambda: ChildSpec(["x"], print), r"ChildSpec: id must be hashable"),
    ("replace with an unknown field", lambda: ChildSpec("x", work).replace(restrat="temporary"),
     r"ChildSpec\('x'\).replace: unknown fields \['restrat'\]"),
    ("replace with a bad value", lambda: ChildSpec("x", work).replace(shutdown=-3), r"ChildSpec\('x'\): shutdown must be"),
]

SUPERVISOR_CASES = [
    ("strategy typo", lambda: Supervisor([], strategy="one_for_some", name="app"),
     r"Supervisor\('app'\): strategy must be one of 'one_for_one', 'one_for_all', 'rest_for_one', not 'one_for_some'"),
    ("max_restarts negative", lambda: Supervisor([], max_restarts=-1, name="app"),
     r"Supervisor\('app'\): max_restarts must be an int >= 0, not -1"),
    ("max_restarts float", lambda: Supervisor([], max_restarts=2.5, name="app"), r"Supervisor\('app'\): max_restarts must be an int >= 0, not 2.5"),
    ("max_restarts bool", lambda: Supervisor([], max_restarts=True, name="app"), r"Supervisor\('app'\): max_restarts must be an int >= 0, not True"),
    ("max_seconds zero", lambda: Supervisor([], max_seconds=0, name="app"), r"Supervisor\('app'\): max_seconds must be a finite number of seconds > 0, not 0"),
    ("max_seconds negative", lambda: Supervisor([], max_seconds=-5, name="app"), r"Supervisor\('app'\): max_seconds must be a finite number of seconds > 0, not -5"),
    ("max_seconds NaN", lambda: Supervisor([], max_seconds=math.nan, name="app"), r"Supervisor\('app'\): max_seconds must be a finite number of seconds > 0, not nan"),
    ("duplicate ids", lambda: Supervisor([ChildSpec("a", work), ChildSpec("a", work)], name="app"),
     r"Supervisor\('app'\): two children have the id 'a'; ids must be unique"),
    ("children not ChildSpec", lambda: Supervisor([work], name="app"), r"Supervisor\('app'\): children must be ChildSpec objects, not <function work"),
    ("children a single spec", lambda: Supervisor(ChildSpec("a", work), name="app"), r"Supervisor\('app'\): children must be a list of ChildSpec"),
    ("children a string", lambda: Supervisor("abc", name="app"), r"Supervisor\('app'\): children must be a list of ChildSpec, not 'abc'"),
    ("auto_shutdown typo", lambda: Supervisor([], auto_shutdown="any", name="app"),
     r"Supervisor\('app'\): auto_shutdown must be one of 'never', 'any_significant', 'all_significant', not 'any'"),
    ("clock not callable", lambda: Supervisor([], clock=3, name="app"), r"Supervisor\('app'\): clock must be a callable returning seconds, not 3"),
    ("child_spec with a bad flag", lambda: Supervisor.child_spec("s", [], strategy="bogus"), r"Supervisor: strategy must be one of"),
    ("unnamed supervisor", lambda: Supervisor([], max_restarts=-1), r"^Supervisor: max_restarts must be an int >= 0"),
    ("dynamic max_children negative", lambda: DynamicSupervisor(max_children=-1, name="pool"),
     r"DynamicSupervisor\('pool'\): max_children must be an int >= 0 or None, not -1"),
    ("dynamic max_children float", lambda: DynamicSupervisor(max_children=1.5, name="pool"), r"DynamicSupervisor\('pool'\): max_children must be an int"),
    ("dynamic max_children bool", lambda: DynamicSupervisor(max_children=True, name="pool"), r"DynamicSupervisor\('pool'\): max_children must be an int"),
    ("dynamic extra_args a str", lambda: DynamicSupervisor(extra_args="tenant-1", name="pool"),
     r"DynamicSupervisor\('pool'\): extra_args must be a tuple of arguments, not 'tenant-1'"),
    ("dynamic max_restarts negative", lambda: DynamicSupervisor(max_restarts=-2, name="pool"),
     r"DynamicSupervisor\('pool'\): max_restarts must be an int >= 0, not -2"),
    ("dynamic child_spec with a bad flag", lambda: DynamicSupervisor.child_spec("d", max_children="many"),
     r"DynamicSupervisor: max_children must be an int"),
]


@pytest.mark.parametrize(("factory", "message"), [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_an_invalid_child_spec_field_raises_child_spec_error_naming_it(factory, message):
    with pytest.raises(ChildSpecError, match=message) as info:
        factory()
    assert isinstance(info.value, GreentreeError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("factory", "message"), [c[1:] for c in SUPERVISOR_CASES], ids=[c[0] for c in SUPERVISOR_CASES])
def test_an_invalid_supervisor_flag_raises_child_spec_error_naming_it(factory, message):
    from greentree.testing import live_greenlets

    before = live_greenlets()
    with pytest.raises(ChildSpecError, match=message) as info:
        factory()
    assert isinstance(info.value, ValueError)
    assert live_greenlets() == before  # nothing was started


def test_every_case_message_says_what_is_allowed():
    # The messages above all either say what a field "must" be or how to fix it.
    for _, factory, _ in SPEC_CASES + SUPERVISOR_CASES:
        with pytest.raises(ChildSpecError) as info:
            factory()
        text = str(info.value)
        assert "must" in text or "instead" in text or "unknown" in text, text


@pytest.mark.parametrize("bad", [None, "child", ("x", work), work], ids=repr)
def test_start_child_with_a_non_spec_raises_and_changes_nothing(bad):
    with Supervisor([ChildSpec("a", work)], name="app") as sup:
        before = sup.which_children()
        with pytest.raises(ChildSpecError, match=r"Supervisor 'app'.start_child\(\): expected a ChildSpec, not "):
            sup.start_child(bad)
        assert sup.which_children() == before
        assert not sup.dead


@pytest.mark.parametrize("bad", [None, "child", work], ids=repr)
def test_dynamic_start_child_with_a_non_spec_raises_and_changes_nothing(bad):
    with DynamicSupervisor(name="pool") as dyn:
        dyn.start_child(ChildSpec(None, work))
        before = dyn.which_children()
        with pytest.raises(ChildSpecError, match=r"DynamicSupervisor 'pool'.start_child\(\): expected a ChildSpec"):
            dyn.start_child(bad)
        assert dyn.which_children() == before


def test_child_spec_is_immutable_and_says_how_to_change_it():
    s = ChildSpec("x", work)
    with pytest.raises(AttributeError, match=r"ChildSpec\('x'\) is immutable; use spec.replace\(restart=...\)"):
        s.restart = "temporary"
    assert s.restart.value == "permanent"


def test_a_failed_operation_on_a_running_supervisor_changes_nothing():
    from greentree import AlreadyPresentError, AlreadyStartedError, ChildNotFoundError, ChildRunningError

    with Supervisor([ChildSpec("a", work), ChildSpec("b", work)], name="app") as sup:
        sup.terminate_child("b")
        before = sup.which_children()
        counts = sup.count_children()
        for call, err in [
            (lambda: sup.start_child(ChildSpec("a", work)), AlreadyStartedError),
            (lambda: sup.start_child(ChildSpec("b", work)), AlreadyPresentError),
            (lambda: sup.terminate_child("zz"), ChildNotFoundError),
            (lambda: sup.restart_child("a"), ChildRunningError),
            (lambda: sup.delete_child("a"), ChildRunningError),
            (lambda: sup.delete_child("zz"), ChildNotFoundError),
        ]:
            with pytest.raises(err):
                call()
            assert sup.which_children() == before
            assert sup.count_children() == counts


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, -1, "5", True])
def test_a_bad_call_timeout_is_refused_naming_the_object_and_changes_nothing(bad):
    """The calls check a plainly valid float timeout inline and everything else in full:
    both paths must refuse the same values with the same message."""
    from greentree import ArgumentError, Server

    class Echo(Server):
        def handle_call(self, msg, caller):
            return msg

    with DynamicSupervisor(name="pool") as dyn, Echo(name="echo") as srv:
        before = dyn.which_children()
        with pytest.raises(ArgumentError, match=r"DynamicSupervisor 'pool'\.start_child\(\): timeout must be a finite number"):
            dyn.start_child(ChildSpec("x", work), timeout=bad)
        assert dyn.which_children() == before
        with pytest.raises(ArgumentError, match=r"\.call\(\): timeout must be a finite number of seconds"):
            srv.call("hi", timeout=bad)
        assert srv.call("hi", timeout=5) == "hi"  # an int is fine
        assert srv.call("hi", timeout=0.5) == "hi"
        assert dyn.start_child(ChildSpec("y", work), timeout=1) is not None


def test_a_start_named_by_import_path_is_imported_when_the_spec_is_made():
    import os.path

    s = ChildSpec("w", "os.path:join", restart="transient")
    assert s.start is os.path.join and s.type == "worker"
    sup_spec = ChildSpec("pool", "greentree:DynamicSupervisor")
    assert sup_spec.start is DynamicSupervisor and sup_spec.type == "supervisor"


@pytest.mark.parametrize("path, why", [
    ("tests.test_bad_input.work", r"is not a function or class, nor \"module:name\""),
    ("no_such_module_here:f", r"cannot be imported: ModuleNotFoundError"),
    ("tests.test_bad_input:no_such_name", r"cannot be imported: AttributeError"),
    (":work", r"nor \"module:name\""),
])
def test_a_bad_import_path_is_refused_naming_the_spec(path, why):
    with pytest.raises(ChildSpecError, match=r"ChildSpec\('w'\): start " + repr(path).replace(".", r"\.") + ".*" + why):
        ChildSpec("w", path)
