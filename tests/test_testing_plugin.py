"""The pytest plugin of greentree.testing (start_supervised, fake_clock), run
through pytest's own pytester."""

from __future__ import annotations

import gevent
import pytest

from greentree.testing import FakeClock, GreenletLeakError, LeakCheck, live_greenlets

pytest_plugins = ["pytester"]


def run(pytester, source, *args):
    pytester.makepyfile(test_inner=source)
    # hypothesis's plugin makes an in-process run import (and rewrite) much more: skip it
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-q", *args)


def test_a_passing_test_with_start_supervised_passes(pytester):
    result = run(pytester, """
        import gevent
        from greentree import ChildSpec

        def test_uses_children(start_supervised):
            g = start_supervised(gevent.sleep, 3600)
            assert not g.dead
            h = start_supervised(ChildSpec("named", gevent.sleep, 3600))
            ids = [i.id for i in start_supervised.sup.which_children()]
            assert ids == ["child-1", "named"]
            assert start_supervised.sup.count_children().active == 2
    """)
    result.assert_outcomes(passed=1)


def test_children_are_stopped_in_reverse_order_at_teardown(pytester):
    result = run(pytester, """
        import gevent
        from greentree import ShutdownExit

        log = []
        kept = []

        def child(name):
            try:
                gevent.sleep(3600)
            except ShutdownExit:
                log.append(name)
                raise

        def test_a_starts_children(start_supervised):
            kept.append(start_supervised(child, "first"))
            kept.append(start_supervised(child, "second"))

        def test_b_they_were_stopped_at_teardown():
            assert all(g.dead for g in kept) and len(kept) == 2
            assert log == ["second", "first"]
    """)
    result.assert_outcomes(passed=2)


def test_a_test_that_leaks_a_greenlet_fails(pytester):
    result = run(pytester, """
        import gevent

        def test_leaks(start_supervised):
            start_supervised(gevent.sleep, 3600)
            gevent.spawn(gevent.sleep, 3600)  # not supervised: outlives the test
    """)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*GreenletLeakError: 1 greenlet(s) outlived the test*"])


def test_start_supervised_defaults_functions_to_temporary_children(pytester):
    result = run(pytester, """
        def test_temporary(start_supervised):
            g = start_supervised(lambda: None)
            g.join()
            import gevent
            gevent.sleep(0)
            assert start_supervised.sup.count_children().specs == 0
    """)
    result.assert_outcomes(passed=1)


def test_start_supervised_rejects_a_spec_with_extra_arguments(pytester):
    result = run(pytester, """
        import pytest
        from greentree import ChildSpec

        def test_bad(start_supervised):
            with pytest.raises(TypeError, match="pass a ChildSpec alone"):
                start_supervised(ChildSpec("x", print), 1)
    """)
    result.assert_outcomes(passed=1)


def test_the_fake_clock_fixture_drives_a_restart_window(pytester):
    result = run(pytester, """
        import gevent
        import pytest
        from greentree import ChildSpec, RestartIntensityExceeded, Supervisor

        def crash(sup):
            g = sup.which_children()[0].child
            g.kill(RuntimeError("boom"))
            for _ in range(1000):
                if sup.dead or sup.which_children()[0].child not in (None, g):
                    return
                gevent.sleep(0.001)
            raise AssertionError("the supervisor never handled the crash")

        def test_window(fake_clock):
            assert fake_clock() == 0.0
            sup = Supervisor([ChildSpec("c", gevent.sleep, 3600)], max_restarts=1, max_seconds=5, clock=fake_clock)
            with pytest.raises(RestartIntensityExceeded), sup:
                crash(sup)
                fake_clock.advance(6)  # the first restart left the window
                crash(sup)
                assert not sup.dead
                crash(sup)  # two restarts within 5 s: one too many
                sup.join(5)
                assert sup.dead
    """)
    result.assert_outcomes(passed=1)


def test_fake_clock_moves_only_forward():
    clock = FakeClock(10)
    assert clock() == 10.0
    assert clock.advance(0.5) == 10.5
    with pytest.raises(ValueError, match="cannot go backwards"):
        clock.advance(-1)
    assert clock() == 10.5


def test_leak_check_reports_and_kills_a_leaked_greenlet():
    with pytest.raises(GreenletLeakError, match="1 greenlet"):
        with LeakCheck(timeout=0.05):
            g = gevent.spawn(gevent.sleep, 3600)
    g.join(1)
    assert g.dead
    assert g not in live_greenlets()
