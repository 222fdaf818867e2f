"""``python -m agnopt tour`` explains itself: known minima, a convergence mark per row, JAX
compilation reported apart, Dask's step count stated, ``--plot`` without matplotlib fails at once."""

from __future__ import annotations

import math
import sys

import pytest

from agnopt import __main__ as cli
from agnopt._cli import tour


def test_converged_criterion():
    assert tour.converged(0.0, 24.2)
    assert tour.converged(2.4e-5, 24.2)  # below 1e-6 of the start gap (2.42e-5)
    assert not tour.converged(2.5e-5, 24.2)
    assert not tour.converged(math.nan, 24.2)
    assert not tour.converged(math.inf, 24.2)
    assert tour.converged(1.0 + 1e-7, 2.0, minimum=1.0)


def test_tour_prints_minima_criterion_and_marks():
    said: list[str] = []
    rows = tour.run_tour(steps=400, backends=["numpy"], out=said.append)
    text = "\n".join(said)
    # each problem's known minimum and start loss, and the criterion, before the table
    assert "rosenbrock" in text and "minimum 0 at (1, 1)" in text and "start loss 24.2" in text
    assert "minimum 0 at c = (1, -1, 1, ...)" in text
    assert f"converged: final loss - minimum <= {tour.CONVERGED_RATIO:g}" in text
    assert len(rows) == 2 * len(tour.OPTIMIZERS)
    table = [l for l in said if l.startswith("numpy")]
    assert len(table) == len(rows)
    for r, line in zip(rows, table):
        assert r["converged"] == tour.converged(r["final_loss"], r["start_loss"], r["minimum"])
        assert line.split()[4] == ("yes" if r["converged"] else "no")
        assert r["first_ms"] >= 0 and r["us_per_step"] > 0
    assert abs(rows[0]["start_loss"] - 24.2) < 1e-12
    # the marks are not all the same: momentum SGD converges on the quadratic, sign-SGD not on Rosenbrock
    by = {(r["optimizer"], r["problem"]): r["converged"] for r in rows}
    assert by[("sgd(momentum=0.9)", "quadratic")] is True
    assert by[("sign_sgd", "rosenbrock")] is False
    assert "Rosenbrock's curved valley" in text


def test_second_order_rows_marked():
    said: list[str] = []
    rows = tour.run_second_order_tour(backends=["numpy"], out=said.append)
    assert all(r["converged"] for r in rows), rows
    assert "upper bound of the minimum" in "\n".join(said)
    header = next(l for l in said if l.startswith("backend"))
    i = header.index("conv")  # the mark is right-aligned under its header
    assert all(l[i:i + 4].strip() == "yes" for l in said if l.startswith("numpy")), said


def test_jax_times_exclude_compilation():
    pytest.importorskip("jax")
    said: list[str] = []
    rows = tour.run_tour(steps=30, backends=["jax"], out=said.append)
    assert rows and all(r["backend"] == "jax" for r in rows)
    # the first step compiles; the others are far cheaper per step
    for r in rows:
        assert r["first_ms"] * 1e3 > 5 * r["us_per_step"], r
    assert "on JAX: the jit compilation" in "\n".join(said)


def test_dask_step_count_said():
    pytest.importorskip("dask")
    said: list[str] = []
    rows = tour.run_tour(steps=tour.DASK_STEPS + 10, backends=["numpy", "dask"], out=said.append)
    dask_rows = [r for r in rows if r["backend"] == "dask"]
    np_rows = [r for r in rows if r["backend"] == "numpy"]
    assert dask_rows and all(r["steps"] == tour.DASK_STEPS for r in dask_rows)
    assert all(r["steps"] == tour.DASK_STEPS + 10 for r in np_rows)
    assert f"dask ran {tour.DASK_STEPS} steps per run, not {tour.DASK_STEPS + 10}" in "\n".join(said)


def test_dask_same_steps_equal_numpy():
    pytest.importorskip("dask")
    rows = tour.run_tour(steps=10, backends=["numpy", "dask"], out=lambda s: None)
    by = {}
    for r in rows:
        by.setdefault((r["optimizer"], r["problem"]), {})[r["backend"]] = r
    for key, pair in by.items():
        assert pair["dask"]["steps"] == pair["numpy"]["steps"] == 10
        assert pair["dask"]["final_loss"] == pytest.approx(pair["numpy"]["final_loss"], rel=1e-12, abs=1e-300)


def test_plot_without_matplotlib_fails_before_the_tour(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails, find_spec says None
    ran = []
    monkeypatch.setattr(tour, "run_tour", lambda **kw: ran.append(kw) or [])
    assert cli.main(["tour", "--steps", "2", "--backends", "numpy", "--plot", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and "pip install matplotlib" in err
    assert ran == []  # the tour did not start
    assert not any(tmp_path.iterdir())


def test_missing_backends_are_said(monkeypatch):
    """A backend whose package is not installed is named above the table (a new
    user saw only numpy, torch and jax rows and no word about Dask or
    array-api-strict)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("dask", "cupy") else real(name, *a))
    assert tour.missing_backends() == ["dask (the test extra)", "cupy (a CUDA machine)"]
    said: list = []
    tour.run_tour(steps=5, backends=["numpy"], out=said.append)
    assert ("not installed here, so not in the table: dask (the test extra), "
            "cupy (a CUDA machine)") in said
