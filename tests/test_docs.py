"""The README, the tutorial, the upgrading notes and the how-to pages are executable: their examples run here."""

from __future__ import annotations

import doctest
import pathlib
import shutil

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted([DOCS / "tutorial.rst", DOCS / "upgrading.rst", *sorted((DOCS / "howto").glob("*.rst"))])
PAGES.append(DOCS / "observing.rst")
PAGES.append(DOCS.parent / "README.rst")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_documentation_examples_run_as_written(page):
    if page.name in ("cluster.rst", "cluster_supervisor.rst") and not shutil.which("etcd"):
        pytest.skip("the cluster how-to runs against a real etcd (Debian package etcd-server)")
    if page.name == "cluster_redis.rst":
        from greentree._redis_server import redis_available

        if not redis_available():
            pytest.skip("the Redis cluster how-to runs against a real redis-server (Debian) with redis-py")
    result = doctest.testfile(
        str(page), module_relative=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False, report=True,
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {page.name}"


def test_api_reference_documents_every_public_name():
    import re

    import greentree

    text = (DOCS / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. (?:auto)?(?:class|exception|function|data)::\s+(\w+)", text, re.M))
    missing = sorted(set(greentree.__all__) - documented)
    assert not missing, f"docs/api.rst has no entry for {missing}"
