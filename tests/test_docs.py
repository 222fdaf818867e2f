"""The documentation's promises: every public name on the API page, every example runs.

* ``docs/api.rst`` lists every public name of ``agnopt`` (and only existing ones).
* Every ``>>>`` example of the pages under ``docs/`` passes as a doctest.
* Every ``.. code-block:: python`` of those pages runs (the blocks of a page
  in order, sharing one namespace, as a reader would paste them). A block
  that needs a library that is not installed (torch, jax, optax, scipy,
  dask, cupy) is skipped, not failed.
* Every docstring example (``>>>``) of every ``agnopt`` module passes.
* ``agnopt._cli.plots.write_plots`` writes PNG files and reports progress.
* ``docs/support_matrix.json`` refers to tests that exist.

The Sphinx build itself (``python -m sphinx -W ...``) is run by ``.ci/run``.
"""

from __future__ import annotations

import doctest
import importlib
import json
import os
import pkgutil
import re
import sys
import textwrap
from pathlib import Path

import pytest

import agnopt

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
# the docs extension needs Sphinx (the `docs` extra, part of the README's test command)
pytest.importorskip("docutils", reason="the docs extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]')")
from agnopt_docs import listed_names, public_names  # noqa: E402

OPTIONAL = {"torch", "jax", "jaxlib", "optax", "scipy", "dask", "cupy", "matplotlib"}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PAGES = sorted(p for p in DOCS.rglob("*.rst") if "_build" not in p.parts and "generated" not in p.parts)


def _rel(p: Path) -> str:
    return str(p.relative_to(DOCS))


# --- API page ------------------------------------------------------------------


def test_api_page_lists_every_public_name():
    listed = listed_names((DOCS / "api.rst").read_text())
    missing = [n for n in public_names() if n not in listed]
    assert not missing, (
        f"public names of agnopt missing from docs/api.rst: {missing}; add each to the "
        "autosummary list of its topic"
    )


def test_api_page_lists_only_existing_names():
    listed = listed_names((DOCS / "api.rst").read_text())
    stale = sorted(n for n in listed if not hasattr(agnopt, n.split(".")[0]))
    assert not stale, f"docs/api.rst lists names agnopt does not export: {stale}"


def test_listed_names_parser():
    text = textwrap.dedent("""
        .. autosummary::
           :toctree: generated/

           adam
           agnopt.sgd

        .. data:: schedules
        .. autofunction:: agnopt.minimize
        """)
    assert listed_names(text) == {"adam", "sgd", "schedules", "minimize"}


# --- examples in the pages -------------------------------------------------------


def _skip_if_optional_missing(e: ModuleNotFoundError) -> None:
    if (e.name or "").split(".")[0] in OPTIONAL:
        pytest.skip(f"needs {e.name}")
    raise e


@pytest.mark.parametrize("page", [p for p in PAGES if ">>>" in p.read_text()], ids=_rel)
def test_page_doctests(page):
    test = doctest.DocTestParser().get_doctest(page.read_text(), {}, _rel(page), str(page), 0)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out: list[str] = []
    runner.run(test, out=out.append)
    res = runner.summarize(verbose=False)
    if res.failed:
        report = "".join(out)
        m = re.search(r"ModuleNotFoundError: No module named '([\w.]+)'", report)
        if m and m.group(1).split(".")[0] in OPTIONAL:
            pytest.skip(f"needs {m.group(1)}")
        pytest.fail(f"{res.failed} of {res.attempted} examples failed in {_rel(page)}:\n{report}")


_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. code-block:: python[ \t]*\n", re.M)


def code_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every ``.. code-block:: python`` of an rst text."""
    lines = text.splitlines()
    out = []
    for m in _BLOCK.finditer(text):
        indent = len(m.group("indent"))
        start = text.count("\n", 0, m.end())
        i = start
        while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith(":")):
            i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        out.append((start + 1, textwrap.dedent("\n".join(body)).strip() + "\n"))
    return out


def test_code_blocks_parser():
    text = "Intro\n\n.. code-block:: python\n   :caption: x\n\n   a = 1\n\n   b = a + 1\n\nafter\n"
    assert code_blocks(text) == [(4, "a = 1\n\nb = a + 1\n")]


@pytest.mark.parametrize("page", [p for p in PAGES if ".. code-block:: python" in p.read_text()],
                         ids=_rel)
def test_page_code_blocks(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for lineno, code in code_blocks(page.read_text()):
        try:
            exec(compile(code, f"{page}:{lineno}", "exec"), namespace)  # noqa: S102
        except ModuleNotFoundError as e:
            _skip_if_optional_missing(e)


# --- docstring examples ----------------------------------------------------------


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(agnopt.__path__, "agnopt."))


@pytest.mark.parametrize("modname", _modules())
def test_docstring_examples(modname):
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as e:  # e.g. a CuPy-only module without CuPy
        _skip_if_optional_missing(e)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out: list[str] = []
    for test in finder.find(mod, modname, globs={}):
        runner.run(test, out=out.append)
    res = runner.summarize(verbose=False)
    assert res.failed == 0, "".join(out)


# --- plots -------------------------------------------------------------------------


def test_write_plots(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from agnopt._cli import plots as _plots

    good = tmp_path / "good.py"
    good.write_text("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])\n")
    missing = tmp_path / "missing.py"
    missing.write_text("import agnopt_no_such_module\n")
    monkeypatch.setattr(_plots, "PLOTS", {"good": good, "needs_missing_module": missing,
                                          "adam_bias_correction": _plots.GALLERY / "adam_bias_correction.py"})
    said: list[str] = []
    paths = _plots.write_plots(tmp_path / "plots", progress=said.append)
    assert [Path(p).name for p in paths] == ["good.png", "adam_bias_correction.png"]
    for p in paths:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("needs_missing_module: skipped" in s for s in said)
    assert said[-1].startswith("2 plots written")


def test_gallery_scripts_use_the_public_api():
    """The gallery shows each script whole: it must be code a user can run (no private imports)."""
    from agnopt._cli import plots as _plots

    for name, path in _plots.PLOTS.items():
        src = path.read_text()
        assert "import agnopt as ao" in src or name == "bench_ratios", name
        private = re.findall(r"(?:from|import)\s+agnopt\.\w+|ao\._\w+", src)
        assert not private, f"{path.name} uses private agnopt names: {private}"


def test_gallery_page_shows_every_script_with_alt_text():
    from agnopt._cli import plots as _plots

    text = (DOCS / "gallery.rst").read_text()
    blocks = re.findall(r"^\.\. plot:: (\S+)\n((?:[ \t]+.*\n)+)", text, re.M)
    assert [b[0] for b in blocks] == [f"{n}.py" for n in _plots.PLOTS]
    for script, opts in blocks:
        assert ":width: 100%" in opts, script  # scaled: Sphinx links it to the full-size file
        alt = re.search(r":alt: (.*?)(?=\n\s*:\w+:|\Z)", opts, re.S)
        assert alt and len(alt.group(1).split()) >= 15, f"{script}: alt text should describe the figure"
    assert "agnopt._cli" not in text


def test_user_pages_have_no_wording_meant_for_us():
    for page in PAGES:
        text = page.read_text().lower()
        for phrase in ("the draft", "the seed", "seed's", "draft's"):
            assert phrase not in text, f"{_rel(page)} says {phrase!r}"


def test_plots_do_not_import_matplotlib_eagerly():
    code = ("import sys, agnopt, agnopt._cli.plots; "
            "sys.exit(1 if 'matplotlib' in sys.modules else 0)")
    assert os.system(f'"{sys.executable}" -c "{code}"') == 0


# --- support matrix ------------------------------------------------------------------


def test_support_matrix_json_refers_to_existing_tests():
    data = json.loads((DOCS / "support_matrix.json").read_text())
    assert data["rows"] and set(data["backends"]) >= {"numpy", "array_api_strict"}
    for r in data["rows"]:
        assert r["cells"].get("numpy", {}).get("status") in ("passed", "skipped"), r
    sys.path.insert(0, str(DOCS))
    try:
        import support_matrix
    finally:
        sys.path.remove(str(DOCS))
    for _, node, _ in support_matrix.ROWS:
        path, _, func = node.partition("::")
        assert f"def {func}(" in (ROOT / path).read_text(), f"{node} no longer exists"


# --- the site's set-up ------------------------------------------------------------------


def test_site_renders_math_offline_and_links_sources():
    conf = (DOCS / "conf.py").read_text()
    assert '"sphinx-mathjax-offline"' in conf and '"sphinx.ext.viewcode"' in conf
    assert "mathjax_path" not in conf  # the offline extension sets the local copy
    ext = importlib.import_module("sphinx-mathjax-offline")
    assert (Path(ext.__file__).parent / "static" / "mathjax" / "tex-chtml.js").exists()


def test_index_toctree_has_the_newcomer_and_contributor_pages():
    index = (DOCS / "index.rst").read_text()
    toc = index[index.index(".. toctree::"):]
    for page in ("getting_started", "architecture", "changelog", "api", "guides/index"):
        assert f"\n   {page}\n" in toc, page
        assert (DOCS / f"{page}.rst").exists()


def test_architecture_page_covers_every_subpackage():
    text = (DOCS / "architecture.rst").read_text()
    for pkg in sorted((ROOT / "agnopt").glob("*/__init__.py")):
        assert f"``agnopt/{pkg.parent.name}/``" in text, f"architecture.rst misses agnopt/{pkg.parent.name}/"
