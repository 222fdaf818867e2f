"""A stall of a run with a finite-difference gradient (the line search or the
trust region fails, or the steps no longer decrease ``f`` beyond rounding) is
re-checked with an accurate gradient (agnopt._minimize.certify), as success
stops are.

A new-user trial with the default ``jac=None``: ``v[0]**2 + 3*v[1]**2`` from
``[1, 1]`` ended at ``x ~ 1e-19`` with status 3 ("Line search failed"), and
``v[0]**2 + v[1]**4/4 - v[1]**2/2`` from ``[1, 0]`` sat at its minimum
``[0, -1]`` for 400 iterations (status 1, nfev 7660): the forward-difference
gradient's error ``h_i |H_ii| / 2`` is above ``gtol`` there, and the
finite-difference Hessian's step ``delta^(1/3) |x_i|`` (without
``max(1, |x_i|)``) made an indefinite Hessian of noise where a component of
``x`` is near 0.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest

import agnopt as ao

from conftest import to_numpy
from test_minimize import asarr, skip_slow_on_dask

_RUNS = [("newton", {}), ("newton-cg", {"globalization": "line-search"}),
         ("newton-cg", {"globalization": "trust-region"})]
_IDS = ["newton", "newton-cg", "newton-cg-tr"]
_GTOL = 1.4901161193847656e-08


def _ns(x):
    return array_api_compat.array_namespace(x)


def _quad2(v):
    return v[0] ** 2 + 3 * v[1] ** 2


def _quad2_grad(x):
    return np.array([2 * x[0], 6 * x[1]])


def _sumsq(v):
    return _ns(v).sum(v ** 2)


def _sumsq_grad(x):
    return 2 * x


def _quartic(v):
    xp = _ns(v)
    return xp.sum(v ** 2) + xp.sum(v ** 4)


def _quartic_grad(x):
    return 2 * x + 4 * x ** 3


def _double_well(v):
    return v[0] ** 2 + v[1] ** 4 / 4 - v[1] ** 2 / 2


def _double_well_grad(x):
    return np.array([2 * x[0], x[1] ** 3 - x[1]])


def _real_only(f):
    def g(v):
        if _ns(v).isdtype(v.dtype, "complex floating"):
            raise TypeError("real input only")
        return f(v)
    return g


# (objective, its gradient in NumPy, x0, the minimizer; None: either of +-[0, 1])
_CASES = {
    "quad2": (_quad2, _quad2_grad, [1.0, 1.0], [0.0, 0.0]),
    "sumsq5": (_sumsq, _sumsq_grad, [1.0] * 5, [0.0] * 5),
    "quartic5": (_quartic, _quartic_grad, [1.0, 2.0, 3.0, 4.0, 5.0], [0.0] * 5),
    "double-well": (_double_well, _double_well_grad, [1.0, 0.0], None),
    "double-well-0.1": (_double_well, _double_well_grad, [1.0, 0.1], None),
}


def _check_minimum(res, grad, xstar, maxiter_cap):
    assert res.success and res.status in (0, 2), (res.status, res.message)
    assert res.nit < maxiter_cap, res.nit
    x = to_numpy(res.x).astype(np.float64)
    if xstar is None:  # the double well: a minimum at [0, +-1], f = -1/4
        xstar = [0.0, float(np.sign(x[1]))]
        np.testing.assert_allclose(float(res.fun), -0.25, rtol=1e-14)
    np.testing.assert_allclose(x, xstar, atol=1e-7)
    # a certified stationary point: the true gradient within gtol, or (status
    # 2) within what the step test allows (|H^-1 g| <= 10 sqrt(eps) here)
    assert np.max(np.abs(grad(x))) <= (_GTOL if res.status == 0 else 20 * 1.5e-7)


@pytest.mark.parametrize("case", list(_CASES))
@pytest.mark.parametrize("method,options", _RUNS, ids=_IDS)
def test_fd_gradient_stall_at_minimum(xp, device, method, options, case):
    """jac=None ended with status 3/5 at the minimizer, or status 1 after 400
    iterations sitting at it: now success there, certified by the complex step
    (these objectives take complex input) whose gradient is reported."""
    skip_slow_on_dask(xp, "minimize with finite differences")
    f, grad, x0, xstar = _CASES[case]
    res = ao.minimize(f, asarr(xp, device, x0), method=method, options=options)
    _check_minimum(res, grad, xstar, 60)
    x = to_numpy(res.x).astype(np.float64)
    if res.status == 0 and method == "newton":
        # the accurate gradient is reported, not the forward difference's
        # ~1.5e-8 |f''| floor
        np.testing.assert_allclose(to_numpy(res.jac), grad(x), atol=1e-12)


@pytest.mark.parametrize("case", ["quad2", "sumsq5", "double-well"])
@pytest.mark.parametrize("method,options", _RUNS, ids=_IDS)
def test_fd_gradient_stall_real_only(xp, device, method, options, case):
    """fun refuses complex input: central differences with the Richardson
    bound certify the stall (or the solve goes on with them and succeeds)."""
    skip_slow_on_dask(xp, "minimize with finite differences")
    f, grad, x0, xstar = _CASES[case]
    res = ao.minimize(_real_only(f), asarr(xp, device, x0), method=method, options=options)
    _check_minimum(res, grad, xstar, 60)


def _logreg_data():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((50, 3))
    y = (A @ np.array([1.0, -2.0, 0.5]) + rng.standard_normal(50) > 0).astype(np.float64)
    return A, y


def _logreg(A, y):
    def loss(w):
        xp = _ns(w)
        Ax = xp.asarray(A.tolist(), dtype=w.dtype, device=array_api_compat.device(w))
        yx = xp.asarray(y.tolist(), dtype=w.dtype, device=array_api_compat.device(w))
        z = Ax @ w
        return xp.sum(xp.logaddexp(xp.zeros_like(z), z) - yx * z)
    return loss


@pytest.mark.parametrize("method,options", _RUNS, ids=_IDS)
def test_fd_gradient_logistic_regression(xp, device, method, options):
    """The trial's logistic-regression loss: newton-cg with jac=None stopped at
    the right x with status 3; now success at the exact-gradient minimizer."""
    skip_slow_on_dask(xp, "minimize with finite differences")
    A, y = _logreg_data()

    def grad(w):
        return A.T @ (1.0 / (1.0 + np.exp(-(A @ w))) - y)

    def hess(w):
        s = 1.0 / (1.0 + np.exp(-(A @ w)))
        return A.T @ (A * (s * (1 - s))[:, None])

    ref = ao.minimize(_logreg(A, y), np.zeros(3), jac=grad, hess=hess)
    assert ref.success and np.max(np.abs(grad(ref.x))) <= _GTOL
    res = ao.minimize(_logreg(A, y), asarr(xp, device, [0.0, 0.0, 0.0]), method=method,
                      options=options)
    assert res.success, res.message
    x = to_numpy(res.x).astype(np.float64)
    np.testing.assert_allclose(x, ref.x, atol=1e-6)
    # these end with status 2 (step <= xtol, the curvature test passed), which
    # bounds the step, not the gradient: measured 4.6e-8 .. 1.4e-7 on NumPy and
    # up to 2.2e-7 on JAX (newton-cg-tr, whose eager logaddexp rounds differently);
    # the stall this file is about stopped with status 3 at the same x
    assert np.max(np.abs(grad(x))) <= 30 * _GTOL


def _ridge(v):
    # non-smooth along v0 = v1, where its minimizer lies: no stationary point
    xp = _ns(v)
    return 10 * xp.abs(v[0] - v[1]) + (v[0] + v[1] - 2.0) ** 2 + 0.01 * (v[0] - 3.0) ** 2


@pytest.mark.parametrize("x0", [[0.0, 1.0], [3.0, -1.0]])
@pytest.mark.parametrize("method,options", _RUNS, ids=_IDS)
def test_fd_gradient_genuine_stall_stays_failure(xp, device, method, options, x0):
    """A stall the accurate gradient does not certify (a kink: the gradient
    jumps by 20 across it) is not turned into success."""
    skip_slow_on_dask(xp, "minimize with finite differences")
    res = ao.minimize(_ridge, asarr(xp, device, x0), method=method, options=options)
    assert not res.success and res.status in (1, 3, 4, 5, 6), (res.status, res.message)


@pytest.mark.parametrize("jac", ["3-point", "cs"])
@pytest.mark.parametrize("method,options", _RUNS, ids=_IDS)
def test_accurate_gradient_same_minimum(xp, device, method, options, jac):
    """The references of the trial (3-point, complex step): success at the
    double well's minimum, as jac=None now."""
    skip_slow_on_dask(xp, "minimize with finite differences")
    res = ao.minimize(_double_well, asarr(xp, device, [1.0, 0.0]), method=method, jac=jac,
                      options=options)
    _check_minimum(res, _double_well_grad, None, 60)
