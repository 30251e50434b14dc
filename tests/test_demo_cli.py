"""``python -m greentree demo`` (the README's first command) runs, injects faults and ends clean."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_demo_command_runs_faults_and_stops_every_tree_cleanly():
    proc = subprocess.run(
        [sys.executable, "-m", "greentree", "demo", "--clients", "30", "--seconds", "3",
         "--faults-per-second", "5", "--seed", "7", "--plain"],
        capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "t=" in out and "trees server=" in out  # the per-second progress lines
    assert "faults injected:" in out
    assert "0 server trees, 0 client trees, 0 registry names left" in out
    assert "everything stopped cleanly" in out
    assert "Traceback" not in proc.stderr


def test_unknown_command_is_refused_with_a_clear_message():
    proc = subprocess.run([sys.executable, "-m", "greentree", "dmeo"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "unknown command 'dmeo'" in proc.stderr


@pytest.mark.timeout(120)
def test_demo_main_in_process_prints_progress_and_a_clean_summary(capsys):
    from greentree._demo import main

    assert main(["--clients", "20", "--seconds", "2", "--faults-per-second", "4", "--seed", "3", "--plain"]) == 0
    out = capsys.readouterr().out
    assert "trees server=" in out
    assert "everything stopped cleanly" in out


def test_cli_help_and_usage_errors(capsys):
    from greentree.__main__ import _cli

    assert _cli(["--help"]) == 0
    assert "usage: python -m greentree demo" in capsys.readouterr().out
    assert _cli([]) == 2
    with pytest.raises(SystemExit):
        from greentree._demo import main

        main(["--clients", "0"])
