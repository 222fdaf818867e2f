"""``python -m agnopt fitbench --single``: the single-fit table (a report, not a timed test)."""

import importlib.util

import numpy as np
import pytest

from agnopt.__main__ import main
from agnopt._cli import single_fit


def test_single_fit_rows_and_ratios(monkeypatch):
    # JAX rows are slow to compile: leave them out here (they have their own path)
    monkeypatch.setattr(single_fit, "_jax_rows", lambda *a: ([], ["JAX rows skipped in this test"]))
    out = single_fit.run_single_fit_benchmark(repeats=2, verbose=False)
    assert [r["case"] for r in out["rows"]] == [
        "curve_fit, default Jacobian", "curve_fit, jac='2-point'",
        "least_squares lm, default Jacobian", "least_squares lm, jac='2-point'",
        "least_squares trf (default method)"]
    for r in out["rows"]:
        assert r["agnopt"] > 0 and r["reference"] > 0
        assert r["ratio"] == pytest.approx(r["agnopt"] / r["reference"])


def test_single_fit_same_problem_as_scipy():
    # the benchmark compares like with like: both libraries reach the same fit
    import scipy.optimize as so

    import agnopt as ao

    t, y, p0 = single_fit._data()
    def model(x, a, b, c):
        return a * np.exp(-b * x) + c
    np.testing.assert_allclose(ao.curve_fit(model, t, y, p0=p0)[0],
                               so.curve_fit(model, t, y, p0=p0)[0], rtol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("optimistix") is not None,
                    reason="optimistix installed: the note does not apply")
def test_peers_absent_says_so(monkeypatch, capsys):
    monkeypatch.setattr(single_fit, "best_pair", lambda a, b, r: (1e-3, 5e-4))
    monkeypatch.setattr(single_fit, "_first_and_best", lambda fn, r: (1.0, 1e-3))
    assert main(["fitbench", "--single", "--peers", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "optimistix not installed" in out
    assert "2.00x" in out
