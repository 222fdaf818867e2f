"""The check of the default complex step where one residual sits on a kink.

``a |x - b|`` with ``abs`` of a complex number its modulus: the complex step
gives an all-zero column for ``b``. When a data point sits exactly where the
check is made (``x_i = b0``), that one residual's finite differences have an
error of the order of the derivative; a check whose error bound is a maximum
over the residuals let it excuse the dropped term in all the other residuals
(``success=True`` at ``x = [2.01, 0.0]``, cost 55, where scipy finds
``[2.0, 0.7]``, cost 1.6e-5). Each residual is now judged against its own
bound (:func:`agnopt._derivatives.cs_check.cs_check_verdict`).

The right values are scipy's (``scipy.optimize.least_squares`` /
``curve_fit`` with their default finite differences) on the same data.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np
import pytest
import scipy.optimize as so
from conftest import to_numpy

import agnopt as ao

XD = np.linspace(-3.0, 3.0, 61)  # contains 0.0 and 0.3 (the starts' b0) up to rounding


def _a(xp, device, v):
    return xp.asarray(v, dtype=xp.float64, device=device)


def _y(b_true):
    return 2.0 * np.abs(XD - b_true) + 0.001 * np.sin(5.0 * XD)


def _fun(xp, device, y):
    xd = _a(xp, device, XD)
    yd = _a(xp, device, y)

    def fun(p):
        ns = array_api_compat.array_namespace(p)
        return p[0] * ns.abs(xd - p[1]) - yd

    return fun


def _scipy(y, p0, method):
    return so.least_squares(lambda p: p[0] * np.abs(XD - p[1]) - y, np.asarray(p0), method=method)


@pytest.mark.parametrize("method", ["trf", "lm", "dogbox"])
@pytest.mark.parametrize("b0", [0.0, 0.3])
def test_kink_off_the_solution(xp, device, method, b0):
    # the solution b = 0.73 is not a data point: the fit is smooth there and must
    # succeed at scipy's answer (before: success at b = b0, cost 60 / 21)
    y = _y(0.73)
    ref = _scipy(y, [1.0, b0], method)
    assert ref.success and abs(ref.x[1] - 0.73) < 1e-5
    res = ao.least_squares(_fun(xp, device, y), _a(xp, device, [1.0, b0]),
                           method=method)
    assert res.success
    np.testing.assert_allclose(to_numpy(res.x), ref.x, rtol=0, atol=1e-8)
    assert math.isclose(float(res.cost), ref.cost, rel_tol=1e-6)


@pytest.mark.parametrize("method", ["trf", "lm", "dogbox"])
@pytest.mark.parametrize("b0", [0.0, 0.3])
def test_kink_users_case(xp, device, method, b0):
    # the new user's case: the solution b = 0.7 is itself a data point (a kink
    # of the sum of squares there). The answer must be scipy's; agnopt may call
    # it not first-order stationary (status -6) but never success elsewhere
    y = _y(0.7)
    ref = _scipy(y, [1.0, b0], method)
    res = ao.least_squares(_fun(xp, device, y), _a(xp, device, [1.0, b0]),
                           method=method)
    np.testing.assert_allclose(to_numpy(res.x), ref.x, rtol=0, atol=1e-6)
    assert float(res.cost) < 1.001 * ref.cost


def test_kink_batched(xp, device):
    # one batched solve, all starts on grid points (the check is made once
    # for all the problems, each residual of each problem on its own)
    y = _y(0.73)
    xd = _a(xp, device, XD)
    yd = _a(xp, device, y)

    def fun(P):
        ns = array_api_compat.array_namespace(P)
        return P[:, 0:1] * ns.abs(xd[None, :] - P[:, 1:2]) - yd[None, :]

    starts = [[1.0, 0.0], [1.0, 0.3], [1.5, -1.0], [0.5, 1.2]]
    res = ao.least_squares(fun, _a(xp, device, starts), batched=True)
    x = to_numpy(res.x)
    for i, s in enumerate(starts):
        ref = _scipy(y, s, "trf")
        assert bool(to_numpy(res.success)[i])
        np.testing.assert_allclose(x[i], ref.x, rtol=0, atol=1e-8)


@pytest.mark.parametrize("method", ["trf", "dogbox"])
def test_kink_bounded_columns(xp, device, method):
    # x0 within 1e-7 of a bound: the check's points would leave the box, so the
    # complex step is checked column by column (Problem._cs_columns)
    y = _y(0.73)
    lb, ub = [1.0 - 1e-7, -5.0], [10.0, 5.0]
    ref = so.least_squares(lambda p: p[0] * np.abs(XD - p[1]) - y, np.array([1.0, 0.0]),
                           bounds=(lb, ub), method=method)
    assert ref.success and abs(ref.x[1] - 0.73) < 1e-5
    res = ao.least_squares(_fun(xp, device, y), _a(xp, device, [1.0, 0.0]),
                           bounds=(_a(xp, device, lb), _a(xp, device, ub)),
                           method=method)
    assert res.success
    np.testing.assert_allclose(to_numpy(res.x), ref.x, rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", ["lm", "trf"])
@pytest.mark.parametrize("b0", [0.0, 0.3])
def test_kink_curve_fit(xp, device, method, b0):
    # with ``+ 0.5 b`` the complex step's column for b stays complex (curve_fit
    # passes the unperturbed parameters as real numbers: ``a |x - b|`` alone gives
    # a real output for b's column, which switches to differences at once), so
    # only the check can find the dropped part (before: lm stopped at
    # [0.72, 2.95], trf at [2.01, 0.71])
    def model(x, a, b):
        ns = array_api_compat.array_namespace(x)
        return a * ns.abs(x - b) + 0.5 * b

    y = 2.0 * np.abs(XD - 0.73) + 0.5 * 0.73 + 0.001 * np.sin(5.0 * XD)
    ref, _ = so.curve_fit(lambda x, a, b: a * np.abs(x - b) + 0.5 * b, XD, y, p0=[1.0, b0],
                          method=method)
    popt, _ = ao.curve_fit(model, _a(xp, device, XD), _a(xp, device, y),
                              p0=[1.0, b0], method=method)
    np.testing.assert_allclose(to_numpy(popt), ref, rtol=0, atol=1e-8)
    # and the user's model itself
    popt, _ = ao.curve_fit(lambda x, a, b: a * array_api_compat.array_namespace(x).abs(x - b),
                           _a(xp, device, XD), _a(xp, device, _y(0.73)),
                           p0=[1.0, b0], method=method)
    np.testing.assert_allclose(to_numpy(popt), _scipy(_y(0.73), [1.0, b0], method).x,
                               rtol=0, atol=1e-8)


def _check_inputs(fun, x0):
    """The arguments of ``cs_check_verdict`` for one NumPy float64 problem at ``x0``."""
    from agnopt._derivatives import numdiff

    n = x0.shape[0]
    w = tuple((-1.0) ** j * (0.5 + math.modf(0.6180339887498949 * (j + 1))[0]) for j in range(n))
    eps = float(np.finfo(np.float64).eps)
    h3, h2 = eps ** (1.0 / 3.0), eps**0.5
    X = x0[None, :]
    P3, M3, P2, _ = numdiff.cs_check_points(np, X, None, None, w, h3, h2, None)
    Jcs = ao.approx_derivative(fun, x0, method="cs")[None]
    F = fun(x0)[None]
    Fp3, Fm3, Fp2 = (fun(P[0])[None] for P in (P3, M3, P2))
    return X, F, Jcs, P3, M3, P2, Fp3, Fm3, Fp2, h3, h2


def _verdicts(args):
    """The generic verdict and the compiled one-point one (where numba is here)."""
    from agnopt._derivatives import numdiff

    out = [bool(numdiff.cs_check_verdict(np, *args))]
    try:
        from agnopt._kernels import lm_route

        lm_route._compile()
    except ImportError:  # pragma: no cover - numba not installed
        return out
    from agnopt._derivatives import one_point

    out.append(one_point.cs_check_verdict_one(np, *args))
    return out


@pytest.mark.parametrize("b0", [0.0, 0.3, 0.25])
def test_verdict_rejects_the_kink(b0):
    # the verdict itself, generic and compiled: the complex step (b's column all
    # zero) disagrees, whether or not a data point sits on the kink
    y = _y(0.7)
    args = _check_inputs(lambda p: p[0] * np.abs(XD - p[1]) - y, np.array([1.0, b0]))
    assert not args[2][0, :, 1].any()  # the complex step's column for b
    assert _verdicts(args) in ([False], [False, False])


@pytest.mark.parametrize("name", ["Misra1c", "Misra1d", "Eckerle4", "MGH09", "Thurber"])
def test_verdict_keeps_smooth_nist_models(name):
    # right complex-step Jacobians whose differences' errors r2 (forward) and r3
    # (central) cross from residual to residual (Misra1c/d at their starts, where
    # a step of eps^(1/3) is 6% of b2 = 1e-4): each residual's own bound must
    # still pass them (the complex step is kept: NIST's counts are unchanged)
    from agnopt._cli.nist import load_nist, nist_problem

    p = {q["name"]: q for q in load_nist()}[name]
    fun = nist_problem(p, np)[0]
    for start in ("start1", "start2"):
        args = _check_inputs(fun, np.asarray(p[start], dtype=np.float64))
        assert _verdicts(args) in ([True], [True, True]), start


def test_kink_jax_program():
    # the JAX whole-solve program runs the same verdict traced (jax_solve's
    # _cs_ok): it must reject the complex step there too
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    y = _y(0.73)
    xd, yd = jnp.asarray(XD), jnp.asarray(y)

    def res(p):
        return p[0] * jnp.abs(xd - p[1]) - yd

    ref = _scipy(y, [1.0, 0.0], "lm")
    got = ao.least_squares(res, jnp.asarray([1.0, 0.0]), method="lm")
    assert got.success
    np.testing.assert_allclose(np.asarray(got.x), ref.x, rtol=0, atol=1e-8)
