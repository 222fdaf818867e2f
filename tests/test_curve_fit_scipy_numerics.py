"""The behaviours behind three of scipy's own curve_fit tests that agnopt answers differently.

scipy 1.17's ``test_minpack.py::TestCurveFit`` has ``test_dtypes2``,
``test_gh4555`` and ``test_gh4555b``; agnopt fails them with answers that
are different, not wrong. These tests check agnopt's answers against
values no one here wrote (scipy on the same arithmetic, the reduced
problem, the float32 rounding bound):

* float32 data (gh-7117): agnopt computes in ``ydata``'s dtype (float32;
  scipy casts everything to float64), so the fit is the float32 one: within
  the rounding bound ``||J^+|| sqrt(m) eps32 max|y|`` of the float64 fit of
  the same (float32) data, and scipy's 2e-5 need not hold.
* gh-4555: from the default ``p0`` (ones) the model
  ``a log(x + 1 + b) + c log(x + 1 + d) + e`` is symmetric in ``(a, b)``
  and ``(c, d)``; lm stays on the symmetric manifold and stops at its
  stationary point (the 3-parameter problem ``2 A log(x + 1 + B) + e``),
  where the Jacobian has two pairs of equal columns: ``pcov`` is inf (as
  scipy's for a rank-deficient Jacobian). scipy's lm leaves the manifold by
  rounding only. trf reaches the lower valley, where ``pcov`` is finite and
  positive definite (what scipy's test checks).
* gh-4555b: scipy's reference ``pcov`` is taken where its lm stopped on the
  default tolerances; agnopt stops closer to the minimum and its ``pcov``
  is the one at the minimum (scipy with the exact Jacobian and tight
  tolerances), to 1e-10.
"""

from __future__ import annotations

import warnings

import array_api_compat
import numpy as np
import scipy.optimize as so
from conftest import to_numpy

import agnopt as ao


def _ns(x):
    return array_api_compat.array_namespace(x)


# --------------------------------------------------------------------------- float32 data
def hyperbola(x, s_1, s_2, o_x, o_y, c):
    xp = _ns(x)
    b_2 = (s_1 + s_2) / 2
    b_1 = (s_2 - s_1) / 2
    return o_y + b_1 * (x - o_x) + b_2 * xp.sqrt((x - o_x) ** 2 + c ** 2 / 4)


LO = [-3.0, 0.0, -2.0, -10.0, 0.0]
HI = [0.0, 3.0, 3.0, 0.0, 10.0]
GUESS = [-2.5 / 3.0, 4 / 3.0, 1.0, -4.0, 0.5]
TRUE = [-2.0, 0.4, -1.0, -5.0, 9.5]
XS = [-32, -16, -8, 4, 4, 8, 16, 32]


def test_float32_fit_is_the_float32_solution(xp, device):
    x32 = xp.asarray(XS, dtype=xp.float32, device=device)
    y32 = hyperbola(x32, *TRUE)
    p0 = xp.asarray(GUESS, dtype=xp.float64, device=device)  # float64 p0, as scipy's test
    p32, _ = ao.curve_fit(hyperbola, x32, y32, p0=p0, bounds=(LO, HI))
    assert p32.dtype == xp.float32
    # the float64 fit of the same float32 data, by scipy (NumPy float64)
    x64 = to_numpy(x32).astype(np.float64)
    y64 = to_numpy(y32).astype(np.float64)
    p64, _ = so.curve_fit(lambda x, *p: hyperbola(x, *p), x64, y64, p0=GUESS, bounds=(LO, HI))
    # rounding bound: residuals carry eps32 * |y| each; parameters move by at most ||J^+|| that
    h = 1e-6
    J = np.stack([(hyperbola(x64, *(p64 + h * e)) - hyperbola(x64, *(p64 - h * e))) / (2 * h)
                  for e in np.eye(5)], axis=1)
    eps32 = float(np.finfo(np.float32).eps)
    bound = np.linalg.norm(np.linalg.pinv(J), 2) * np.sqrt(len(XS)) * eps32 * np.abs(y64).max()
    err = np.abs(to_numpy(p32).astype(np.float64) - p64)
    assert err.max() <= bound, (err, bound)
    # and the float64 fit itself agrees with scipy's
    p64a, _ = ao.curve_fit(hyperbola, x64, y64, p0=np.array(GUESS), bounds=(LO, HI))
    np.testing.assert_allclose(p64a, p64, rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- gh-4555
def two_logs(x, a, b, c, d, e):
    return a * np.log(x + 1 + b) + c * np.log(x + 1 + d) + e


def _gh4555_data():
    rng = np.random.default_rng(408113519974467917)
    x = np.arange(100)
    return x, np.linspace(2, 7, 100) + rng.random(100)


def test_symmetric_start_stops_on_the_symmetric_stationary_point():
    x, y = _gh4555_data()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        p, pcov = ao.curve_fit(two_logs, x, y, maxfev=100000)
    assert any(issubclass(i.category, ao.OptimizeWarning) for i in w)
    assert np.all(np.isinf(pcov))  # two pairs of (nearly) equal Jacobian columns
    np.testing.assert_allclose(p[0], p[2], rtol=1e-6)
    np.testing.assert_allclose(p[1], p[3], rtol=1e-6)
    # the right value: the minimum of the problem restricted to a = c, b = d (by scipy)
    q, _ = so.curve_fit(lambda x, A, B, e: 2 * A * np.log(x + 1 + B) + e, x, y, p0=[1, 1, 1],
                        ftol=1e-14, xtol=1e-14, gtol=1e-14, maxfev=100000)
    np.testing.assert_allclose([p[0], p[1], p[4]], q, rtol=1e-6)
    cost = 0.5 * np.sum((y - two_logs(x, *p)) ** 2)
    cost_q = 0.5 * np.sum((y - 2 * q[0] * np.log(x + 1 + q[1]) - q[2]) ** 2)
    np.testing.assert_allclose(cost, cost_q, rtol=1e-10)


def test_trf_leaves_the_symmetric_start_with_a_positive_definite_pcov():
    x, y = _gh4555_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # log of negatives at rejected trials
        p, pcov = ao.curve_fit(two_logs, x, y, method="trf", max_nfev=100000)
    cost = 0.5 * np.sum((y - two_logs(x, *p)) ** 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p_sp, _ = so.curve_fit(two_logs, x, y, maxfev=100000)  # scipy's lm: cost 3.7166144
    assert cost <= 0.5 * np.sum((y - two_logs(x, *p_sp)) ** 2) * (1 + 1e-9)
    assert np.all(np.diag(pcov) > 0)
    assert np.all(np.linalg.eigvalsh(pcov) > 0)
    np.testing.assert_allclose(pcov, pcov.T)


# --------------------------------------------------------------------------- gh-4555b
def decay(x, a, b, c):
    return a * _ns(x).exp(-b * x) + c


def test_pcov_is_the_one_at_the_minimum(xp, device):
    rng = np.random.default_rng(408113519974467917)
    xd = np.linspace(0, 4, 50)
    yd = 2.5 * np.exp(-1.3 * xd) + 0.5 + 0.2 * rng.normal(size=50)
    p, pcov = ao.curve_fit(decay, xp.asarray(xd, device=device), xp.asarray(yd, device=device))

    def jac(x, a, b, c):
        e = np.exp(-b * x)
        return np.stack([e, -a * x * e, np.ones_like(x)], axis=1)

    p_ref, pcov_ref = so.curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c, xd, yd, jac=jac,
                                   ftol=1e-15, xtol=1e-15, gtol=1e-15)
    np.testing.assert_allclose(to_numpy(p), p_ref, rtol=1e-10)
    np.testing.assert_allclose(to_numpy(pcov), pcov_ref, rtol=1e-9)
