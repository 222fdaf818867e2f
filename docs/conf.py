"""Sphinx configuration of the agnopt documentation.

Build (from the repository root)::

    python -m pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html

Everything the pages show is computed during the build: the API pages from
the docstrings (autosummary + numpydoc), the gallery's PNGs by
matplotlib's ``plot`` directive running the scripts of ``agnopt/_cli/gallery``
(written into the build directory, never committed), the support matrix from
``docs/support_matrix.json`` (made from the test suite's results by
``docs/support_matrix.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the gallery is drawn during the build

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import agnopt  # noqa: E402

project = "agnopt"
author = "the agnopt developers"
copyright = "the agnopt developers"  # noqa: A001
version = release = agnopt.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static: math renders without a CDN
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",  # "[source]" links from the API pages to highlighted source
    "numpydoc",
    "matplotlib.sphinxext.plot_directive",
    "agnopt_docs",
]

# --- intersphinx -----------------------------------------------------------
# Links to numpy, scipy, Python and the Array API standard need their
# objects.inv inventories. The build machines have no network (package
# registries only), and a failed download is a warning, which -W turns into
# an error. So the mapping is empty unless AGNOPT_DOCS_INTERSPHINX=1 is set
# (for a build with network access); with it unset, references such as
# :func:`scipy.optimize.curve_fit` render as plain code text, without a link
# and without a warning (nitpicky mode is off).
intersphinx_mapping: dict = {}
if os.environ.get("AGNOPT_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "scipy": ("https://docs.scipy.org/doc/scipy", None),
        "array-api": ("https://data-apis.org/array-api/latest", None),
    }
intersphinx_timeout = 5

# --- API pages --------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": False}
autodoc_typehints = "none"  # the numpydoc "Parameters" sections say it in words
numpydoc_show_class_members = False  # NamedTuple fields would need stub pages
numpydoc_validation_checks: set = set()
numpydoc_xref_param_type = False

# --- plots (the gallery) -----------------------------------------------------
# The gallery's scripts live in agnopt/_cli/gallery/ (public-API code; the same
# scripts make `python -m agnopt tour --plot DIR`); the page shows each script
# whole, offers it for download, and its figure (:width: 100%) links to the
# full-size PNG (Sphinx's html_scaled_image_link).
from agnopt._cli.plots import GALLERY, RC  # noqa: E402

plot_basedir = str(GALLERY)
plot_include_source = True
plot_html_show_source_link = True
plot_html_show_formats = False
plot_formats = [("png", 100)]
plot_pre_code = ""
plot_rcparams = dict(RC)
html_scaled_image_link = True

# --- HTML --------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"agnopt {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": {"**": ["page-toc"], "gallery": []},
}
html_sidebars = {"index": [], "gallery": []}  # the gallery uses the whole width
html_static_path = ["_static"]
html_css_files = ["agnopt.css"]
templates_path: list = []
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
pygments_style = "sphinx"

# The API page lists the public names by topic by hand; any public name of
# agnopt/__init__.py that it does not list goes to "Other public names"
# (written here, before autosummary reads the sources), so the reference is
# never incomplete. tests/test_docs.py checks the hand-written lists.
from agnopt_docs import write_uncategorized  # noqa: E402

write_uncategorized(HERE)
