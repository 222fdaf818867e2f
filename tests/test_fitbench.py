"""``python -m agnopt fitbench``: the batched table against its evaluation floor (a report, not a timed test)."""

import importlib.util

import pytest

from agnopt.__main__ import main
from agnopt._cli import fitbench


def test_floor_columns_and_ratio():
    out = fitbench.run_fit_benchmark(B=12, scipy_subset=3, repeat=1, floor_repeat=1,
                                     verbose=False, jac="analytic", dtype="float32")
    assert out["dtype"] == "float32" and out["n_success"] == 12
    # the floor: nfev model evaluations and nit + 1 Jacobians per problem
    assert out["t_floor"] == pytest.approx(out["nfev_mean"] * out["t_f"]
                                           + (out["nit_mean"] + 1) * out["t_J"])
    assert out["floor_ratio"] == pytest.approx(out["t_batched"] / out["t_floor"])
    # the user's functions timed inside the best run: a part of it
    assert 0 < out["t_evals"] < out["t_batched"]
    # every evaluation the run made was counted (rows / B): at least the counts
    ev = out["evals"]
    assert ev["fun_complex"] == 0 and ev["fun"] >= out["nfev_mean"] - 1e-9
    assert ev["jac"] >= out["nit_mean"] + 1 - 1e-9
    assert out["scipy_fits"] == 3 and out["extrapolated"]


def test_default_jacobian_counts_complex_evaluations():
    out = fitbench.run_fit_benchmark(B=8, scipy_subset=0, repeat=1, floor_repeat=1,
                                     verbose=False)
    ev = out["evals"]
    assert ev["jac"] == 0
    # the complex step: n = 4 complex evaluations of the model per Jacobian
    assert ev["fun_complex"] >= 4 * (out["nit_mean"] + 1) - 1e-9
    assert out["scipy_fits"] == 0 and out["t_scipy"] != out["t_scipy"]  # NaN: not run


def test_cli_prints_floor(capsys):
    assert main(["fitbench", "--B", "10", "--scipy-subset", "2", "--repeat", "1"]) == 0
    text = capsys.readouterr().out
    assert "evaluation floor" in text and "total / floor" in text
    assert "scipy.optimize.curve_fit loop" in text


def test_cli_sweep_table(capsys):
    backends = "numpy,torch" if importlib.util.find_spec("torch") else "numpy"
    assert main(["fitbench", "--sweep", "--Bs", "8", "--backends", backends, "--threads", "1",
                 "--repeat", "1", "--scipy-subset", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("| B |"))
    assert lines[head].split("|")[1:-1] == [
        " B ", " dtype ", " J ", " backend ", " agnopt ", " floor ", " total/floor ",
        " evals in solve / floor ", " scipy loop ", " optimistix ", " vs numpy ", " nfev ", " nit "]
    rows = [ln.split("|")[1:-1] for ln in lines[head + 2:] if ln.startswith("|")]
    # 2 dtypes x 2 Jacobians x backends (torch: one thread count)
    assert len(rows) == 4 * len(backends.split(","))
    for r in rows:
        assert r[6].strip().endswith("x") and float(r[6].strip()[:-1]) > 0
        assert r[7].strip().endswith("x") and float(r[7].strip()[:-1]) > 0
    numpy_rows = [r for r in rows if r[3].strip() == "numpy"]
    assert all(r[10].strip() == "1.00x" for r in numpy_rows)
    assert all(r[8].strip() != "-" for r in numpy_rows)  # scipy loop on the first backend


@pytest.mark.skipif(importlib.util.find_spec("optimistix") is not None,
                    reason="optimistix installed: the note does not apply")
def test_batched_peers_absent_says_so(capsys):
    assert main(["fitbench", "--B", "6", "--scipy-subset", "0", "--repeat", "1", "--peers"]) == 0
    assert "optimistix not installed" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("optimistix") is None, reason="optimistix not installed")
def test_batched_peers_optimistix():
    out = fitbench.run_fit_benchmark(B=6, scipy_subset=0, repeat=1, floor_repeat=1,
                                     verbose=False, peers=True)
    assert out["t_optimistix"] > 0 and out["optimistix_first"] > 0
