"""The module layering: each private module imports only from the layers
before it (no import cycles), and the pure modules load without gevent."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "greentree"

#: Lowest first.  A module may import (at any depth, even inside a function)
#: only modules listed before it.
LAYERS = [
    "_errors", "_policy", "_imports",           # pure: standard library only
    "_cluster_proto", "_history", "_cluster_placement",  # pure: standard library and msgpack
    "_report", "_telemetry", "_exits", "_spec",
    "_child", "_mailbox", "_process",
    "_children", "_base",
    "_supervisor", "_dynamic", "_server",
    "_registry", "_task", "_partition",
    "_instance_spec", "_instance_record",        # pure: no gevent (tests/test_instance_records.py)
    "_instance_store", "_instance_shard", "_instance_manager", "_instance_reshard",
    "_run",
    "_cluster_store", "_etcd", "_redis_store", "_etcd_server", "_redis_server",
    "_cluster_link", "_cluster_inbox", "_cluster_member", "_cluster", "_cluster_supervisor", "_cluster_cli",
    "telemetry", "metrics",
    "testing", "websocket", "observe", "_demo", "__main__", "__init__",
]
PURE = ["_errors", "_policy", "_imports", "_cluster_proto", "_history", "_cluster_placement"]


def _relative_imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("greentree"):
            parts = (node.module or "").split(".")
            if len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_module_is_in_a_layer():
    modules = {p.stem for p in PKG.glob("*.py")} | {"websocket"}
    assert modules <= set(LAYERS), f"add {sorted(modules - set(LAYERS))} to LAYERS"


@pytest.mark.parametrize("module", [m for m in LAYERS if m not in ("websocket", "observe")])
def test_a_module_imports_only_earlier_layers(module):
    path = PKG / f"{module}.py"
    rank = LAYERS.index(module)
    for imported in _relative_imports(path):
        assert imported in LAYERS, f"{module} imports unknown {imported}"
        assert LAYERS.index(imported) < rank, f"{module} imports {imported}, which is not in an earlier layer"


def test_the_websocket_package_imports_only_the_core_below_it():
    rank = LAYERS.index("websocket")
    for path in (PKG / "websocket").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
                imported = node.module.split(".")[0]
                assert LAYERS.index(imported) < rank, f"websocket/{path.name} imports {imported}"


def test_the_observe_package_imports_only_the_core_below_it():
    rank = LAYERS.index("observe")
    for path in (PKG / "observe").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
                imported = node.module.split(".")[0]
                assert LAYERS.index(imported) < rank, f"observe/{path.name} imports {imported}"


@pytest.mark.parametrize("module", PURE)
def test_the_pure_modules_load_in_a_fresh_interpreter_without_gevent(module):
    # The module is loaded inside an empty stand-in package ("pure"), so its
    # relative imports find their sibling files without running greentree's
    # __init__; every sibling it pulls in must be pure too.
    code = (
        "import importlib.util, sys, types\n"
        f"pkg = types.ModuleType('pure'); pkg.__path__ = [{str(PKG)!r}]; sys.modules['pure'] = pkg\n"
        f"spec = importlib.util.spec_from_file_location('pure.{module}', {str(PKG / (module + '.py'))!r})\n"
        f"m = importlib.util.module_from_spec(spec); sys.modules['pure.{module}'] = m; spec.loader.exec_module(m)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('gevent', 'greenlet', 'greentree'))\n"
        "print(bad, sorted(n[5:] for n in sys.modules if n.startswith('pure.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    bad, siblings = out.stdout.strip().split("] [")
    assert bad == "[", f"{module} imports {bad}]"
    for sibling in siblings.rstrip("]").replace("'", "").split(", "):
        assert sibling in PURE, f"{module} imports {sibling}, which is not a pure module"
