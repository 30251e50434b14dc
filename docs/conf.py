"""Sphinx configuration for greentree."""

import os
import sys

# Document the greentree in this checkout, whether or not it is installed.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import greentree  # noqa: E402

project = "greentree"
author = "greentree developers"
copyright = "2026, greentree developers"
release = greentree.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
]
# No intersphinx: the build machines have no general internet access.

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

autodoc_member_order = "bysource"
nitpicky = False

html_theme = "furo"
html_title = f"greentree {release}"
