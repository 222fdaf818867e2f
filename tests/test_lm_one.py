"""The one-problem Levenberg-Marquardt driver (agnopt._kernels.lm_one) gives what the engine gives.

For one float64 NumPy problem with the numba blocks on, ``run_lm`` hands the whole
loop to :func:`agnopt._kernels.lm_one.run_lm_one` (scalar state, the same numba
functions in the same order). Each problem here is solved three ways in one
process: the generic path (``AGNOPT_FAST=0``), the engine's loop with the numba
blocks (``lm_one.ON = False``) and the driver; ``x``, ``cost``, ``fun``, ``jac``,
``nfev``, ``njev``, ``nit`` and the status must be the same numbers (principle 2).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import agnopt as ao
from agnopt._cli import nist as _nist
from agnopt._kernels import lm_cpu, lm_one

pytestmark = pytest.mark.skipif(not lm_cpu.HAVE_NUMBA, reason="numba not installed")

T = np.linspace(0.0, 4.0, 50)
Y = 2.5 * np.exp(-1.3 * T) + 0.5 + 0.02 * np.random.default_rng(0).standard_normal(50)


def _exp(p):
    return p[0] * np.exp(-p[1] * T) + p[2] - Y


def _solve3(monkeypatch, fun, x0, **kw):
    """(generic, engine with numba blocks, driver) results, and how often the driver ran."""
    out = []
    runs = []
    real = lm_one.run_lm_one
    monkeypatch.setattr(lm_one, "run_lm_one", lambda *a: runs.append(1) or real(*a))
    for mode, on in (("0", True), ("numba", False), ("numba", True)):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        monkeypatch.setattr(lm_one, "ON", on)
        runs.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out.append(ao.least_squares(fun, np.asarray(x0, dtype=np.float64), method="lm", **kw))
    return out, len(runs)


def _same(a, b):
    assert (a.status, a.success, a.nfev, a.njev, a.nit) == (b.status, b.success, b.nfev, b.njev,
                                                            b.nit)
    for name in ("x", "cost", "fun", "jac", "grad", "optimality"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_driver_runs_where_it_applies(monkeypatch):
    (gen, blocks, drv), runs = _solve3(monkeypatch, _exp, [1.0, 1.0, 1.0])
    assert runs == 1
    _same(drv, blocks)
    _same(drv, gen)
    # ... and nowhere else: bounds, a robust loss, a callback, verbose output, n > 6
    for kw in ({"bounds": ([0, 0, 0], [10, 10, 10])}, {"loss": "soft_l1"},
               {"callback": lambda intermediate_result: None}, {"verbose": 2}):
        (gen, blocks, drv), runs = _solve3(monkeypatch, _exp, [1.0, 1.0, 1.0], **kw)
        assert runs == 0, kw
    _, runs = _solve3(monkeypatch, lambda p: np.concatenate([p - 1.0, p * p]), np.zeros(7))
    assert runs == 0


def _random_problem(rng):
    """A small random curve fit: a sum of exponentials, a rational function or a
    Gaussian peak, noisy data, a start near or far from the fit."""
    m = int(rng.integers(8, 60))
    t = np.sort(rng.uniform(0.0, 5.0, m))
    kind = int(rng.integers(3))
    if kind == 0:
        n = int(rng.choice([2, 4, 6]))

        def model(p):
            return sum(p[2 * i] * np.exp(-p[2 * i + 1] * t) for i in range(n // 2))
    elif kind == 1:
        n = 3

        def model(p):
            return (p[0] + p[1] * t) / (1.0 + p[2] * t)
    else:
        n = 4

        def model(p):
            return p[0] * np.exp(-((t - p[1]) / p[2]) ** 2) + p[3]
    truth = rng.uniform(0.5, 2.0, n)
    y = model(truth) + rng.choice([0.0, 1e-3, 0.1]) * rng.standard_normal(m)
    x0 = truth * rng.uniform(0.3, 3.0, n) if rng.random() < 0.7 else rng.uniform(-3, 3, n)
    return (lambda p: model(p) - y), x0


@pytest.mark.parametrize("seed", range(60))
def test_random_fits(monkeypatch, seed):
    rng = np.random.default_rng(seed)
    fun, x0 = _random_problem(rng)
    kw = {"x_scale": [1.0, "jac"][seed % 2], "jac": ["cs", "2-point", "3-point"][seed % 3]}
    if rng.random() < 0.3:
        kw.update(ftol=1e-15, xtol=1e-15, gtol=1e-15)
    if rng.random() < 0.2:
        kw["max_nfev"] = int(rng.integers(2, 12))
    (gen, blocks, drv), runs = _solve3(monkeypatch, fun, x0, **kw)
    assert runs == 1
    _same(drv, blocks)
    _same(drv, gen)


def test_norm_is_numpys():
    # the driver's norm of the trial residuals (and of its accelerated steps): NumPy's
    # vector_norm bit for bit up to NORM_MAX_M entries (longer ones take NumPy's)
    from agnopt._core.backend import native_namespace
    from agnopt._kernels import lm_route

    lm_route._compile()
    xp = native_namespace(np)
    rng = np.random.default_rng(7)
    for m in range(1, lm_route.NORM_MAX_M + 1):
        for k in range(30):
            v = rng.standard_normal(m) * 10.0 ** rng.uniform(-150, 150, m)
            if k < 4:
                v[rng.integers(m)] = (np.inf, -np.inf, np.nan, 0.0)[k]
            with np.errstate(over="ignore", under="ignore", invalid="ignore"):
                want = float(xp.linalg.vector_norm(v[None, :], axis=-1)[0])
            got = lm_route.norm(v)
            assert got == want or (math.isnan(got) and math.isnan(want)), (m, k, got, want)


@pytest.mark.parametrize("m", [127, 128, 129, 300])
def test_long_residuals(monkeypatch, m):
    # the trial norm compiled (m <= NORM_MAX_M) or NumPy's (longer): the engine's numbers
    t = np.linspace(0.0, 4.0, m)
    y = 2.5 * np.exp(-1.3 * t) + 0.5 + 0.02 * np.random.default_rng(m).standard_normal(m)
    for jac in ("cs", "2-point"):
        (gen, blocks, drv), runs = _solve3(
            monkeypatch, lambda p: p[0] * np.exp(-p[1] * t) + p[2] - y, [1.0, 1.0, 1.0],
            jac=jac)
        assert runs == 1
        _same(drv, blocks)
        _same(drv, gen)


def test_gtol_at_x0_and_max_nfev(monkeypatch):
    # an exact fit at x0 stops on its first gradient test; max_nfev stops mid-way
    y = 2.0 * np.exp(-0.5 * T)
    (gen, blocks, drv), _ = _solve3(monkeypatch, lambda p: p[0] * np.exp(-p[1] * T) - y,
                                    [2.0, 0.5])
    _same(drv, blocks)
    _same(drv, gen)
    for max_nfev in (1, 2, 3, 5):
        (gen, blocks, drv), _ = _solve3(monkeypatch, _exp, [10.0, 0.05, -3.0], max_nfev=max_nfev)
        _same(drv, blocks)
        _same(drv, gen)
        assert drv.status == 0


def test_hands_back_to_the_engine(monkeypatch):
    # nearly collinear columns: the normal equations are not well conditioned, the
    # route is the generic one (SVD) and the engine's loop goes on from the driver's state
    handed = []
    real = lm_one._state
    monkeypatch.setattr(lm_one, "_state", lambda *a: handed.append(1) or real(*a))
    y = 1.0 + 2.0 * T

    def fun(p):
        return p[0] + p[1] * T + p[2] * (T + 1e-6 * T * T) - y

    (gen, blocks, drv), runs = _solve3(monkeypatch, fun, [0.0, 0.0, 0.0])
    assert runs == 1 and handed
    _same(drv, blocks)
    _same(drv, gen)


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_scaled_residuals_and_options(monkeypatch, scale):
    # residuals beyond the safe range for squares (scaled by a power of 2 inside), an
    # x_scale array, args and diff_step: the driver takes them as the engine does
    def fun(p, s):
        return s * _exp(p)

    (gen, blocks, drv), runs = _solve3(monkeypatch, fun, [1.0, 1.0, 1.0], args=(scale,),
                                       x_scale=np.array([1.0, 0.5, 2.0]), diff_step=1e-7,
                                       jac="3-point")
    assert runs == 1
    _same(drv, blocks)
    _same(drv, gen)
    assert drv.success


def test_nonfinite_jacobian(monkeypatch):
    def jac(p):
        e = np.exp(-p[1] * T)
        J = np.stack([e, -p[0] * T * e, np.ones_like(T)], axis=1)
        J[3, 1] = np.inf
        return J

    monkeypatch.setenv("AGNOPT_FAST", "numba")
    with pytest.raises(ValueError, match="non-finite entries"):
        ao.least_squares(_exp, np.ones(3), jac=jac, method="lm")


try:
    NIST = [p for p in _nist.load_nist() if len(p["start1"]) <= 6]
except FileNotFoundError:  # pragma: no cover
    NIST = []


@pytest.mark.skipif(not NIST, reason="nist_strd.json not found")
@pytest.mark.parametrize("tol", [None, 1e-15])
def test_nist(monkeypatch, tol):
    # every NIST problem the driver takes (n <= 6), both starts: the driver gives the
    # engine's numbers (the engine's own numba blocks match the generic path to rounding,
    # tests/test_lm_fast.py)
    kw = {} if tol is None else {"ftol": tol, "xtol": tol, "gtol": tol}
    for p in NIST:
        fun, _, _, _ = _nist.nist_problem(p, np)
        for start in ("start1", "start2"):
            (gen, blocks, drv), runs = _solve3(monkeypatch, fun, p[start], **kw)
            assert runs == 1, p["name"]
            _same(drv, blocks)
            assert drv.status == gen.status, p["name"]
            np.testing.assert_allclose(drv.x, gen.x, rtol=1e-6, err_msg=p["name"])
