"""The tutorial and how-to pages are executable: their examples run here."""

from __future__ import annotations

import doctest
import pathlib
import shutil

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted([DOCS / "tutorial.rst", *sorted((DOCS / "howto").glob("*.rst"))])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_documentation_examples_run_as_written(page):
    if page.name == "cluster.rst" and not shutil.which("etcd"):
        pytest.skip("the cluster how-to runs against a real etcd (Debian package etcd-server)")
    result = doctest.testfile(
        str(page), module_relative=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False, report=True,
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {page.name}"
