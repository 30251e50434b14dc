"""The public namespace: everything in ``greentree.__all__`` exists, is public,
and comes from greentree (modelled on trio's test_exports)."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import greentree
import greentree.metrics
import greentree.observe
import greentree.telemetry
import greentree.testing

PUBLIC_MODULES = [greentree, greentree.testing, greentree.observe, greentree.telemetry, greentree.metrics]


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_every_name_in_all_exists(module):
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{module.__name__}.__all__ names missing objects: {missing}"


def test_the_top_level_all_is_sorted_and_unique():
    names = greentree.__all__
    assert len(names) == len(set(names)), "duplicates in greentree.__all__"
    assert names == sorted(names), "greentree.__all__ is not sorted"


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_no_private_name_is_exported(module):
    assert not [name for name in module.__all__ if name.startswith("_")]


def test_no_private_module_leaks_into_the_namespace():
    private_modules = [
        name for name, obj in vars(greentree).items()
        if isinstance(obj, types.ModuleType) and name in greentree.__all__
    ]
    assert not private_modules
    for info in pkgutil.iter_modules(greentree.__path__):
        assert info.name not in greentree.__all__


def test_every_public_object_comes_from_greentree():
    for name in greentree.__all__:
        obj = getattr(greentree, name)
        module = getattr(obj, "__module__", None)
        if module is None:  # constants such as BRUTAL_KILL: their type must be ours
            module = type(obj).__module__
        assert module.startswith("greentree"), f"greentree.{name} comes from {module}"


def test_every_public_class_and_function_has_a_docstring():
    undocumented = [
        name for name in greentree.__all__
        if isinstance(getattr(greentree, name), (type, types.FunctionType)) and not getattr(greentree, name).__doc__
    ]
    assert not undocumented


def test_every_public_error_is_a_greentree_error():
    errors = [getattr(greentree, n) for n in greentree.__all__ if n.endswith("Error") or n == "RestartIntensityExceeded"]
    assert errors
    for cls in errors:
        assert issubclass(cls, greentree.GreentreeError), cls


def test_the_issue_contract_names_are_all_exported():
    contract = {
        "ChildSpec", "Restart", "Strategy", "BRUTAL_KILL", "Supervisor", "DynamicSupervisor", "ShutdownExit",
        "GreentreeError", "ChildSpecError", "StartChildError", "AlreadyStartedError", "AlreadyPresentError",
        "ChildNotFoundError", "ChildRunningError", "MaxChildrenError", "RestartIntensityExceeded", "run",
    }
    assert contract <= set(greentree.__all__)


def test_private_modules_are_importable_and_declare_all():
    for info in pkgutil.iter_modules(greentree.__path__):
        if not info.name.startswith("_") or info.name == "__main__":
            continue
        mod = importlib.import_module(f"greentree.{info.name}")
        for name in getattr(mod, "__all__", ()):
            assert hasattr(mod, name), f"greentree.{info.name}.__all__ names missing {name}"


def test_version_is_a_string():
    assert isinstance(greentree.__version__, str) and greentree.__version__
