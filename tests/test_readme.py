"""The README's Python examples run as written, and its commands stay true."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 5
    ns: dict = {}
    seen = []
    for code in blocks:
        exec(compile(code, "README.md", "exec"), ns)
        seen.append(dict(ns))
    # the quick start's fused Optimizer loop and its pure form both reach Rosenbrock's minimum
    first = seen[0]["opt"]
    assert isinstance(first, ns["ao"].Optimizer)
    assert abs(float(first.params[0]) - 1.0) < 1e-2 and abs(float(first.params[1]) - 1.0) < 1e-2
    assert abs(float(ns["params"][0]) - 1.0) < 1e-2
    # curve_fit finds the model's parameters; the batched fit every problem's
    assert max(abs(ns["popt"] - [2.5, 1.3, 0.5])) < 1e-2
    assert ns["popt_b"].shape == (ns["B"], 3) and ns["pcov_b"].shape == (ns["B"], 3, 3)
    assert abs(ns["popt_b"] - ns["true"]).max() < 0.1


def test_readme_commands_match_ci():
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = 'python -m pip install -e ".[test,torch,jax,numba,docs]" && python -m pytest'
    assert test_cmd in README
    assert test_cmd.replace("install -e", "install -q -e") in ci
    assert "python -m agnopt tour" in README


def test_readme_orients():
    """Documentation, migration guides, Python versions and the licence are stated, and true."""
    for guide in ("scipy", "optax", "torch"):
        assert f"docs/guides/{guide}.rst" in README
        assert (ROOT / "docs" / "guides" / f"{guide}.rst").exists()
    assert "python -m sphinx -W --keep-going -b html docs docs/_build/html" in README
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.10"' in pyproject and "Python 3.10 and later" in README
    assert 'license = "BSD-3-Clause"' in pyproject and "BSD 3-Clause" in README
    assert "BSD 3-Clause License" in (ROOT / "LICENSE").read_text()
    # every path of the Layout table exists
    layout = README[README.index("## Layout"):]
    for path in re.findall(r"^\| `([\w./]+)`", layout, re.M):
        assert (ROOT / path).exists(), f"README's Layout names {path}, which does not exist"
    # and every sub-package of agnopt is in it
    for pkg in sorted((ROOT / "agnopt").glob("*/__init__.py")):
        assert f"`agnopt/{pkg.parent.name}/`" in layout, f"README's Layout misses agnopt/{pkg.parent.name}/"


def test_extras_do_not_pin():
    """Extras state what agnopt needs (a pin would downgrade a user's newer library)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    extras = pyproject[pyproject.index("[project.optional-dependencies]"):pyproject.index("[project.urls]")]
    assert not re.search(r'"[\w.\[\]-]+==', extras), extras
    assert 'python -m pip install -q "torch==2.13.0"' in (ROOT / ".ci" / "run").read_text()
