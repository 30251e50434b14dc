"""The WebSocket examples run as programs: --help works and the self-tests pass."""

from __future__ import annotations

import os
import sys

import pytest
from gevent import subprocess

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run(name, *args, timeout=60):
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


@pytest.mark.parametrize("name", ["websocket_server.py", "websocket_client_manager.py"])
def test_the_example_prints_its_usage(name):
    code, out, err = run(name, "--help")
    assert code == 0, err
    assert out.startswith("usage:") and "--self-test" in out


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", ["websocket_server.py", "websocket_client_manager.py"])
def test_the_example_self_test_passes(name):
    code, out, err = run(name, "--self-test")
    assert code == 0, out + err
    assert "self-test passed" in out
