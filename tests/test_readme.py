"""The README's Python examples run as written, and its commands stay true."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 2
    ns: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), ns)
    # the quick start converges to Rosenbrock's minimum
    assert abs(float(ns["params"][0]) - 1.0) < 1e-2


def test_readme_commands_match_ci():
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = 'python -m pip install -e ".[test,torch,jax,numba,docs]" && python -m pytest'
    assert test_cmd in README
    assert test_cmd.replace("install -e", "install -q -e") in ci
    assert "python -m agnopt tour" in README
