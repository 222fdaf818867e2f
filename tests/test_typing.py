"""The public API's types: a user's code type-checks with mypy, wrong calls are caught, and
``py.typed`` ships (issue 15 item 10).

mypy runs on small user scripts against this checkout's ``agnopt`` (``MYPYPATH``), with the
project's ``[tool.mypy]`` settings. The scripts with mistakes make sure the signatures are
real types and not ``Any`` (a package mypy could not find would type-check anything).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy is in the test extra (pip install -e '.[test]')")

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
from typing import TypeVar

import numpy as np
import agnopt as ao
from agnopt.typing import Array, ArrayTree, ScalarOrSchedule, Schedule

params: dict[str, np.ndarray] = {"w": np.ones(3), "b": np.zeros(1)}
grads = {"w": 2.0 * params["w"], "b": np.ones(1)}

opt: ao.Transform = ao.chain(ao.clip_by_global_norm(1.0), ao.adam(1e-3))
state = opt.init(params)
updates, state = opt.update(grads, state, params)
u_w: np.ndarray = updates["w"]                    # updates keep the grads' type
params = ao.apply_updates(params, updates)        # and apply_updates the params'
params, state = ao.step(opt, params, grads, state)

loop = ao.Optimizer(ao.sgd(0.1, momentum=0.9), params)
new_params: dict[str, np.ndarray] = loop.step(grads)

sched: Schedule = ao.warmup_cosine_decay(0.0, 1e-3, warmup_steps=10, decay_steps=100)
lr: float = float(sched(5))
lr_arg: ScalarOrSchedule = sched
txs = [ao.adamw(lr_arg, weight_decay=1e-2), ao.sgd(lambda step: 0.1), ao.muon(1e-3),
       ao.shampoo(1e-3), ao.soap(1e-3), ao.full_matrix_adagrad(0.1)]

T = TypeVar("T", bound=ArrayTree)


def neg_update(updates: T, state: ao.EmptyState, params: ArrayTree | None = None) -> tuple[T, ao.EmptyState]:
    return ao.tree_map(lambda g: -g, updates), state


custom = ao.chain(ao.Transform(lambda p: ao.EmptyState(), neg_update), ao.sgd(0.1))
tree: ArrayTree = {"layer": [np.ones(2), np.zeros(2)]}
leaves = ao.tree_leaves(tree)
doubled = ao.tree_map(lambda a: 2 * a, tree)
saved = ao.state_dict(state)
state = ao.load_state_dict(state, saved)

res: ao.OptimizeResult = ao.least_squares(lambda x: x - 1.0, [0.0, 3.0])
x_opt = res.x
res2: ao.OptimizeResult = ao.minimize(lambda x: np.sum(x ** 2), [1.0, 2.0])
xs = np.arange(5.0)
popt, pcov = ao.curve_fit(lambda x, a, b: a * x + b, xs, 2.0 * xs + 1.0)
slope: float = float(popt[0])
popt, pcov, info, mesg, ier = ao.curve_fit(lambda x, a: a * x, xs, xs, full_output=True)
J: Array = ao.approx_derivative(lambda x: x ** 2, np.ones(3))
"""

# (line, mypy error code) of each mistake in BAD
BAD = """
import numpy as np
import agnopt as ao

ao.adam("fast")
wrong: int = ao.least_squares(lambda x: x - 1.0, np.ones(2))
ao.apply_updates(np.ones(2), 3)
popt, pcov = ao.curve_fit(lambda x, a: a * x, np.ones(3), np.ones(3), full_output=True)
ao.step(ao.sgd(0.1), np.ones(2), np.ones(2))
"""
BAD_ERRORS = {(5, "arg-type"), (6, "assignment"), (7, "arg-type"), (8, "misc"), (9, "call-arg")}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A fresh mypy cache for this module (no result comes from an earlier run's cache)."""
    return tmp_path_factory.mktemp("mypy_cache")


def _mypy(tmp_path: Path, cache_dir: Path, source: str) -> subprocess.CompletedProcess:
    script = tmp_path / "user_code.py"
    script.write_text(textwrap.dedent(source))
    env = dict(os.environ, MYPYPATH=str(ROOT))  # this checkout's agnopt, not an installed one
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--show-error-codes",
         "--hide-error-context", "--cache-dir", str(cache_dir), str(script)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


def test_user_code_type_checks(tmp_path, cache_dir):
    r = _mypy(tmp_path, cache_dir, GOOD)
    assert r.returncode == 0, f"mypy found errors in correct user code:\n{r.stdout}{r.stderr}"


def test_wrong_calls_are_type_errors(tmp_path, cache_dir):
    r = _mypy(tmp_path, cache_dir, BAD)
    found = set()
    for line in r.stdout.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[0].endswith("user_code.py") and " error: " in line:
            found.add((int(parts[1]), line.rsplit("[", 1)[-1].rstrip("]")))
    assert found == BAD_ERRORS, f"expected {sorted(BAD_ERRORS)}, mypy said:\n{r.stdout}{r.stderr}"


def test_py_typed_ships():
    import agnopt

    assert (Path(agnopt.__file__).parent / "py.typed").is_file()
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["agnopt"]
    assert project["tool"]["mypy"]["files"] == ["agnopt"]
