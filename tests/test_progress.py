"""Progress display of long solves (``progress=``): a tqdm bar or a callable.

The figures reach a callable after every iteration (iteration, evaluations,
the largest cost among running problems, how many of the batch still run);
``progress=True`` draws a tqdm bar on stderr, and asks for tqdm clearly when
it is missing; other values are refused.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import agnopt as ao

T = np.linspace(0.0, 1.0, 30)


def _batch(B=200, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(1.0, 2.0, (B, 1))
    b = rng.uniform(0.5, 3.0, (B, 1))
    y = a * np.exp(-b * T)

    def fun(X):
        return X[:, :1] * np.exp(-X[:, 1:] * T) - y

    return fun, np.ones((B, 2))


@pytest.mark.parametrize("method", ["lm", "gauss-newton"])
def test_callable_receives_the_figures_of_every_iteration(method):
    fun, X0 = _batch()
    seen = []
    res = ao.least_squares(fun, X0, batched=True, method=method, progress=seen.append)
    assert len(seen) >= 3
    assert [s["nit"] for s in seen] == list(range(1, len(seen) + 1))
    assert all(s["problems"] == X0.shape[0] for s in seen)
    running = [s["active"] for s in seen]
    assert running[0] == X0.shape[0] and running == sorted(running, reverse=True)
    assert seen[-1]["nfev"] == int(np.max(res.nfev))
    costs = [s["cost"] for s in seen]
    assert costs[-1] <= costs[0]
    assert np.all(res.success)


def test_bar_is_drawn_on_stderr(capsys):
    pytest.importorskip("tqdm")
    fun, X0 = _batch(50)
    ao.least_squares(fun, X0, batched=True, progress=True)
    err = capsys.readouterr().err
    assert "least_squares" in err and "running=0/50" in err and "nfev=" in err


def test_curve_fit_bar_names_curve_fit(capsys):
    pytest.importorskip("tqdm")
    y = 2.0 * np.exp(-1.5 * T)
    popt, _ = ao.curve_fit(lambda t, a, b: a * np.exp(-b * t), T, y, p0=[1.0, 1.0], progress=True)
    err = capsys.readouterr().err
    assert "curve_fit" in err and "least_squares" not in err
    assert "running=" not in err  # one problem: no count of running problems
    np.testing.assert_allclose(popt, [2.0, 1.5], rtol=1e-8)


def test_curve_fit_and_tall_take_progress(capsys):
    da = pytest.importorskip("dask.array")
    seen = []
    y = 2.0 * np.exp(-1.5 * T)
    ao.curve_fit(lambda t, a, b: a * np.exp(-b * t), T, y, p0=[1.0, 1.0], progress=seen.append)
    assert seen and seen[-1]["problems"] == 1
    td = da.from_array(np.linspace(0.0, 1.0, 400), chunks=100)
    yd = 2.0 * da.exp(-1.5 * td)
    tall = []
    res = ao.tall_least_squares(lambda x: x[0] * da.exp(-x[1] * td) - yd, np.ones(2),
                                method="lm", progress=tall.append)
    assert res.success and tall and tall[-1]["nit"] == len(tall)


def test_missing_tqdm_and_bad_values(monkeypatch):
    fun, X0 = _batch(5)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match="pip install tqdm"):
        ao.least_squares(fun, X0, batched=True, progress=True)
    with pytest.raises(TypeError, match="progress"):
        ao.least_squares(fun, X0, batched=True, progress="yes")
