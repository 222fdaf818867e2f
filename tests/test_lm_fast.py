"""The numba judge of one float64 NumPy Levenberg-Marquardt solve (agnopt._kernels.lm_cpu)
gives what the generic engine gives (principle 2: an optional accelerator, tested equal).

Each problem is solved twice in one process, with ``AGNOPT_FAST=0`` (the generic
path) and with the accelerator on; the points, costs, statuses and counts must agree
(the scalar arithmetic is the same IEEE operations in the same order).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import agnopt as ao
from agnopt._cli import nist as _nist
from agnopt._kernels import lm_cpu

pytestmark = pytest.mark.skipif(not lm_cpu.HAVE_NUMBA, reason="numba not installed")

T = np.linspace(0.0, 4.0, 50)
Y = 2.5 * np.exp(-1.3 * T) + 0.5 + 0.02 * np.random.default_rng(0).standard_normal(50)


def _exp(p):
    return p[0] * np.exp(-p[1] * T) + p[2] - Y


def _exp_jac(p):
    e = np.exp(-p[1] * T)
    return np.stack([e, -p[0] * T * e, np.ones_like(T)], axis=1)


def _rosen(x):
    return np.array([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def _solve_both(monkeypatch, fun, x0, **kw):
    out = []
    for mode in ("0", "numba"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out.append(ao.least_squares(fun, np.asarray(x0, dtype=np.float64), method="lm", **kw))
    return out


def _check(gen, fast, same_counts=True):
    assert fast.status == gen.status
    assert fast.success == gen.success
    np.testing.assert_allclose(fast.x, gen.x, rtol=1e-10, atol=0)
    np.testing.assert_allclose(fast.cost, gen.cost, rtol=1e-10, atol=0)
    if same_counts:
        assert (fast.nfev, fast.njev) == (gen.nfev, gen.njev)


def test_enabled_follows_agnopt_fast(monkeypatch):
    monkeypatch.setenv("AGNOPT_FAST", "0")
    assert not lm_cpu.enabled()
    monkeypatch.setenv("AGNOPT_FAST", "numpy")
    assert not lm_cpu.enabled()
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    assert lm_cpu.enabled()
    monkeypatch.delenv("AGNOPT_FAST")
    assert lm_cpu.enabled()


def test_fast_judge_is_used(monkeypatch):
    calls = []
    real = lm_cpu.judge_one
    monkeypatch.setattr(lm_cpu, "judge_one", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    ao.least_squares(_exp, np.ones(3), method="lm")
    assert calls
    calls.clear()
    monkeypatch.setenv("AGNOPT_FAST", "0")
    ao.least_squares(_exp, np.ones(3), method="lm")
    assert not calls


@pytest.mark.parametrize("x_scale", [1.0, "jac"])
@pytest.mark.parametrize("jac", ["cs", "2-point", _exp_jac])
def test_exponential_fit(monkeypatch, x_scale, jac):
    gen, fast = _solve_both(monkeypatch, _exp, [1.0, 1.0, 1.0], jac=jac, x_scale=x_scale)
    _check(gen, fast)
    assert gen.success


@pytest.mark.parametrize("x_scale", [1.0, "jac"])
def test_exponential_fit_bounded(monkeypatch, x_scale):
    # the bound on b is active at the solution: projected steps are judged too
    gen, fast = _solve_both(monkeypatch, _exp, [1.0, 0.5, 1.0], bounds=([0, 0, 0], [10, 1.0, 10]),
                            x_scale=x_scale)
    _check(gen, fast)
    assert gen.x[1] == pytest.approx(1.0)


@pytest.mark.parametrize("x_scale", [1.0, "jac"])
@pytest.mark.parametrize("bounds", [None, ([-2.0, -2.0], [0.5, 2.0])])
def test_rosenbrock(monkeypatch, x_scale, bounds):
    kw = {} if bounds is None else {"bounds": bounds}
    gen, fast = _solve_both(monkeypatch, _rosen, [-1.2, 1.0], x_scale=x_scale, **kw)
    _check(gen, fast)


def test_max_nfev_and_tolerances(monkeypatch):
    gen, fast = _solve_both(monkeypatch, _rosen, [-1.2, 1.0], max_nfev=7)
    _check(gen, fast)
    assert gen.status == 0
    gen, fast = _solve_both(monkeypatch, _exp, [1.0, 1.0, 1.0], ftol=1e-15, xtol=1e-15, gtol=1e-15)
    _check(gen, fast)


def test_curve_fit(monkeypatch):
    out = []
    for mode in ("0", "numba"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        out.append(ao.curve_fit(lambda t, a, b, c: a * np.exp(-b * t) + c, T, Y + T * 0,
                                p0=[1.0, 1.0, 1.0]))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-10, atol=0)
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-8, atol=0)


try:
    NIST = {p["name"]: p for p in _nist.load_nist()}
except FileNotFoundError:  # pragma: no cover
    NIST = {}


@pytest.mark.skipif(not NIST, reason="nist_strd.json not found")
@pytest.mark.parametrize("name", ["Misra1a", "Thurber", "MGH09", "BoxBOD", "Eckerle4"])
@pytest.mark.parametrize("start", ["start1", "start2"])
def test_nist(monkeypatch, name, start):
    p = NIST[name]
    fun, _, _, _ = _nist.nist_problem(p, np)
    gen, fast = _solve_both(monkeypatch, fun, p[start], ftol=1e-15, xtol=1e-15, gtol=1e-15)
    _check(gen, fast, same_counts=False)
