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
