"""Build the backend support matrix of the documentation from the test suite's own results.

Usage (from the repository root)::

    python docs/support_matrix.py            # runs the tests below, writes docs/support_matrix.json
    python docs/support_matrix.py --from-junit results.xml   # reuse a JUnit XML of a pytest run

The matrix is not written by hand: each row is one backend-parametrized test
of ``tests/`` (split by its optimizer or method where the test is
parametrized over those), each column a backend of ``tests/conftest.py``
(``BackendCase``). A cell is the outcome of that test's cases on that backend
in the run: all passed, some failed, or skipped with pytest's reason (for
example "torch has no CUDA device here" on a machine without a GPU). The
JSON also records where it was made (date, git commit, Python, platform,
library versions, whether a CUDA device was present). The docs build reads
it (``docs/_ext/agnopt_docs.py``, directive ``agnopt-support-matrix``) and
does not run any test itself, so the build stays fast; regenerate the JSON
after changing backends, and on a CUDA machine to fill the CuPy and
torch-cuda columns.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "support_matrix.json"

# backends in column order (tests/conftest.py BackendCase values)
BACKENDS = ["numpy", "array_api_strict", "torch", "jax", "dask", "cupy", "torch-cuda"]

# A selection, kept small so that a run takes minutes: the trajectory-parity
# tests against torch.optim and optax (tests/test_parity.py, hundreds of cases)
# print their own table at the end of a pytest run and are not repeated here.
# (row label, pytest node id, split): split=True makes one row per value of the
# test's other parameter (the optimizer or method), e.g. test_converges[numpy-adam-float64]
ROWS = [
    ("first-order: {}", "tests/test_first_order.py::test_converges", True),
    ("first-order: state on the parameters' device and dtype",
     "tests/test_first_order.py::test_state_lives_on_param_device_and_dtype", False),
    ("first-order: parameter trees (dict/list/tuple/NamedTuple)",
     "tests/test_first_order.py::test_trees_of_every_kind", False),
    ("first-order: sign_sgd equals rmsprop without cumulant",
     "tests/test_parity.py::test_sign_sgd_is_rmsprop_without_cumulant", False),
    ("minimize: {} on Rosenbrock", "tests/test_minimize.py::test_rosenbrock_2d", True),
    ("minimize: jac='autodiff' (torch, JAX; elsewhere: the clear error is what passes)", "tests/test_minimize.py::test_autodiff", False),
    ("least_squares: matches scipy on Rosenbrock",
     "tests/test_least_squares.py::test_rosenbrock_matches_scipy", False),
    ("least_squares: batched equals one by one", "tests/test_least_squares.py::test_batched_equals_solo",
     False),
    ("least_squares: jac='autodiff' (torch, JAX; elsewhere: the clear error is what passes)", "tests/test_least_squares.py::test_autodiff_jacobian", False),
    ("curve_fit: matches scipy", "tests/test_curve_fit.py::test_gaussian_matches_scipy", False),
    ("approx_derivative: gradient and batched Jacobians",
     "tests/test_least_squares.py::test_approx_derivative_scalar_gradient_and_batched", False),
]


def split_id(param_id: str) -> tuple[str | None, str]:
    """``("torch", "adam-float64")`` from ``"torch-adam-float64"``; backend None if absent."""
    for b in sorted(BACKENDS, key=len, reverse=True):
        if param_id == b:
            return b, ""
        if param_id.startswith(b + "-"):
            return b, param_id[len(b) + 1:]
        if param_id.endswith("-" + b):
            return b, param_id[: -len(b) - 1]
        if f"-{b}-" in param_id:
            i = param_id.index(f"-{b}-")
            return b, param_id[:i] + param_id[i + len(b) + 1:]
    return None, param_id


def run_pytest(junit: Path) -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
           *sorted({r[1] for r in ROWS})]
    print("running:", " ".join(cmd), flush=True)
    env = dict(os.environ)
    env.pop("AGNOPT_BACKENDS", None)  # the whole matrix
    return subprocess.call(cmd, cwd=ROOT, env=env)


def parse(junit: Path) -> list[dict]:
    """One dict per test case: nodeid, outcome (passed/failed/skipped), message."""
    out = []
    for tc in ET.parse(junit).getroot().iter("testcase"):
        cls, name = tc.get("classname", ""), tc.get("name", "")
        path = cls.replace(".", "/") + ".py"
        outcome, msg = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error"):
                outcome, msg = "failed", (child.get("message") or "")[:200]
            elif child.tag == "skipped":
                outcome, msg = "skipped", child.get("message") or ""
        out.append(dict(nodeid=f"{path}::{name}", outcome=outcome, message=msg))
    return out


def build(cases: list[dict]) -> dict:
    cells: dict = defaultdict(lambda: defaultdict(list))
    order: list[str] = []
    for label, node, split in ROWS:
        for c in cases:
            base, _, pid = c["nodeid"].partition("[")
            if base != node:
                continue
            backend, rest = split_id(pid.rstrip("]"))
            if backend is None:
                continue
            if split:
                what = rest.split("-float")[0] if rest else ""
                row = label.format(what)
            else:
                row = label
            if row not in order:
                order.append(row)
            cells[row][backend].append(c)
    rows = []
    for row in order:
        out = {}
        for b in BACKENDS:
            cs = cells[row].get(b, [])
            if not cs:
                continue
            n_pass = sum(c["outcome"] == "passed" for c in cs)
            n_fail = sum(c["outcome"] == "failed" for c in cs)
            n_skip = sum(c["outcome"] == "skipped" for c in cs)
            if n_fail:
                status = "failed"
            elif n_pass and not n_skip:
                status = "passed"
            elif n_pass:
                status = "partial"
            else:
                status = "skipped"
            reasons = sorted({c["message"].removeprefix("Skipped: ") for c in cs if c["message"]})
            out[b] = dict(status=status, passed=n_pass, failed=n_fail, skipped=n_skip,
                          reasons=reasons[:3])
        rows.append(dict(row=row, cells=out))
    return dict(rows=rows)


def environment() -> dict:
    env = dict(python=platform.python_version(), platform=platform.platform(),
               date=datetime.date.today().isoformat())
    try:
        env["commit"] = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                text=True).strip()
    except Exception:
        env["commit"] = "unknown"
    versions = {}
    for mod in ("numpy", "array_api_strict", "torch", "jax", "dask", "cupy", "array_api_compat"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    env["versions"] = versions
    cuda = False
    try:
        import torch

        cuda = bool(torch.cuda.is_available())
    except Exception:
        pass
    env["cuda_device"] = cuda
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-junit", type=Path, help="read this JUnit XML instead of running pytest")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.from_junit:
        junit = args.from_junit
    else:
        junit = Path(tempfile.mkdtemp()) / "support.xml"
        run_pytest(junit)  # failures are data here, not an error
    data = dict(generated_by="python docs/support_matrix.py", backends=BACKENDS,
                environment=environment(), **build(parse(junit)))
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    n = sum(len(r["cells"]) for r in data["rows"])
    print(f"wrote {args.out} ({len(data['rows'])} rows, {n} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
