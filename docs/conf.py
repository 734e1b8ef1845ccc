"""Sphinx configuration of the gamfsolve documentation (``nox -s docs`` builds it with -W)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="gamfsolve-docs-keras-"))
ROOT = Path(__file__).resolve().parents[1]

import gamfsolve  # noqa: E402

project = "gamfsolve"
author = "gamfsolve developers"
copyright = "gamfsolve developers"
release = version = gamfsolve.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "gallery/README.rst", "**/*.ipynb", "**/*.zip", "**/*.py", "**/*.md5", "**/*.json"]
templates_path = ["_templates"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # included results files start at level 2 or skip levels

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"  # numpydoc shows the types from the docstrings
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
}
intersphinx_disabled_reftypes = ["*"]
# no network at build time: intersphinx only resolves when the inventories are reachable
intersphinx_timeout = 2
if os.environ.get("GAMFSOLVE_DOCS_OFFLINE", "1") == "1":
    intersphinx_mapping = {}

html_theme = "pydata_sphinx_theme"
html_title = f"gamfsolve {release}"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}

sphinx_gallery_conf = {
    "examples_dirs": "gallery",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "capture_repr": (),
    "reset_modules": ("matplotlib",),
    "abort_on_example_error": True,
    "run_stale_examples": False,
}
