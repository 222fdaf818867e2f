"""curve_fit: regressions of a fresh-user trial (rank-deficient pcov, batched NaN, messages)."""

from __future__ import annotations

import warnings

import array_api_compat
import numpy as np
import pytest

import agnopt as ao
from agnopt import OptimizeWarning
from agnopt._least_squares.covariance import covariance

from conftest import to_numpy

X = np.linspace(-3.0, 3.0, 50)


def gauss(x, a, mu, s, c):
    xp = array_api_compat.array_namespace(x, a)
    return a * xp.exp(-((x - mu) ** 2) / (2 * s * s)) + c


def arr(xp, device, v):
    return xp.asarray(np.asarray(v, dtype=float).tolist(), dtype=xp.float64, device=device)


@pytest.fixture(autouse=True)
def _fast_backends_only(request):
    if "backend" in request.fixturenames:
        case = request.getfixturevalue("backend")[0].value
        if case in ("jax", "dask") and request.node.originalname not in _HEAVY_OK:
            pytest.skip(f"{case}: per-operation compilation / task graphs; same code as numpy")


_HEAVY_OK = {"test_covariance_rank_rule_is_on_the_unscaled_jacobian",
             "test_batched_nan_policy_omit_equals_solo_fits"}


# -- 1: a zero-residual fit with unidentifiable parameters --------------------------------
@pytest.mark.parametrize("sigma", [0.5, 0.1])
@pytest.mark.parametrize("method", ["lm", "trf", "dogbox"])
@pytest.mark.parametrize("absolute_sigma", [False, True])
def test_plateau_fit_unidentifiable_pcov_is_inf(xp, device, method, absolute_sigma, sigma):
    # y = 1 everywhere: the amplitude ends at ~0, so the columns of mu and s are
    # ~1e-17 (J numerically rank 2 of 4). scipy's lm: inf and the warning. The
    # column-scaled Cholesky route once returned 0 (relative) / 1e32 (absolute).
    with pytest.warns(OptimizeWarning, match="could not be estimated"):
        popt, pcov = ao.curve_fit(gauss, arr(xp, device, X), arr(xp, device, np.ones(50)),
                                  p0=arr(xp, device, [2.0, 0.0, 1.0, 0.5]), method=method,
                                  absolute_sigma=absolute_sigma,
                                  sigma=arr(xp, device, np.full(50, sigma)))
    # sigma = 0.1 on torch: the residuals end at ~1e-15, not 0, and the xtol stop was
    # called not stationary (curve_fit raised) until the zero-residual test (stationarity)
    np.testing.assert_allclose(to_numpy(popt)[[0, 3]], [0.0, 1.0], atol=1e-8)
    assert np.all(np.isinf(to_numpy(pcov)))


@pytest.mark.parametrize("method", ["lm", "trf"])
def test_plateau_fit_batched_pcov_is_inf_only_there(xp, device, method):
    p_true = np.array([[2.0, 0.3, 1.1, 0.5], [0.0, 0.0, 1.0, 1.0], [1.0, -0.5, 0.7, 0.2]])
    rng = np.random.default_rng(3)
    Y = np.stack([p[0] * np.exp(-(X - p[1]) ** 2 / (2 * p[2] ** 2)) + p[3] for p in p_true])
    Y[[0, 2]] += 0.01 * rng.standard_normal((2, X.size))
    p0 = np.array([[1.5, 0.0, 1.0, 0.3], [2.0, 0.0, 1.0, 0.5], [1.5, 0.0, 1.0, 0.3]])
    with pytest.warns(OptimizeWarning):
        popt, pcov, info, _, _ = ao.curve_fit(gauss, arr(xp, device, X), arr(xp, device, Y),
                                              p0=arr(xp, device, p0), method=method,
                                              batched=True, full_output=True)
    pcov = to_numpy(pcov)
    assert bool(np.all(to_numpy(info["success"])))
    assert np.all(np.isinf(pcov[1]))
    for b in (0, 2):
        _, solo = ao.curve_fit(gauss, arr(xp, device, X), arr(xp, device, Y[b]),
                               p0=arr(xp, device, p0[b]), method=method)
        np.testing.assert_allclose(pcov[b], to_numpy(solo), rtol=1e-5)
        assert np.all(np.isfinite(pcov[b]))


def test_covariance_rank_rule_is_on_the_unscaled_jacobian(xp, device):
    # scipy's rule: singular where s_min(J) <= eps * max(m, n) * s_max(J), judged
    # on J itself. A column ~1e-15 of the others is below it (inf), one ~1e-8
    # is far above it (the exact inverse, whatever route computes it).
    rng = np.random.default_rng(1)
    J0 = rng.standard_normal((30, 4))
    for scale, singular in ((1e-15, True), (1e-16, True), (1e-8, False), (1e-3, False)):
        J = J0 * np.array([1.0, scale, 1.0, 1.0])
        s = np.linalg.svd(J, compute_uv=False)
        assert (s[-1] <= np.finfo(float).eps * 30 * s[0]) == singular  # the reference rule
        pcov, sing = covariance(xp, arr(xp, device, J[None]))
        assert bool(to_numpy(sing)[0]) == singular
        if singular:
            assert np.all(np.isinf(to_numpy(pcov)))
        else:
            np.testing.assert_allclose(to_numpy(pcov)[0], np.linalg.inv(J.T @ J), rtol=1e-7)


# -- 7: no "invalid value encountered in multiply" from inf * (zero chi-square) -----------
@pytest.mark.parametrize("method", ["lm", "trf", "dogbox"])
@pytest.mark.parametrize("batched", [False, True])
def test_plateau_fit_leaks_no_runtime_warning(xp, device, method, batched):
    y = np.ones(50) if not batched else np.stack([np.ones(50), 2.0 * np.ones(50)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", OptimizeWarning)
        _, pcov = ao.curve_fit(gauss, arr(xp, device, X), arr(xp, device, y),
                               p0=arr(xp, device, [2.0, 0.0, 1.0, 0.5]), method=method,
                               batched=batched)
    assert np.all(np.isinf(to_numpy(pcov)))  # inf, not NaN


# -- 2: batched nan_policy="omit": NaN points get zero weight ------------------------------
def _nan_batch():
    rng = np.random.default_rng(0)
    P = np.array([[2.0, 0.3, 1.1, 0.5], [1.0, -0.5, 0.7, 0.2], [1.5, 0.0, 1.0, 0.0]])
    Y = np.stack([p[0] * np.exp(-(X - p[1]) ** 2 / (2 * p[2] ** 2)) + p[3] for p in P])
    Y += 0.02 * rng.standard_normal(Y.shape)
    Y[2, 4] = np.nan
    Y[1, [0, 10, 20]] = np.nan
    sig = 0.02 + 0.01 * np.abs(X)[None, :] * np.array([[1.0], [2.0], [0.5]])
    return Y, sig


def test_batched_nan_policy_omit_equals_solo_fits(xp, device):
    Y, sig = _nan_batch()
    p0 = [1.0, 0.0, 1.0, 0.3]
    popt, pcov, info, _, _ = ao.curve_fit(gauss, arr(xp, device, X), arr(xp, device, Y),
                                          p0=arr(xp, device, p0), sigma=arr(xp, device, sig),
                                          batched=True, nan_policy="omit", full_output=True)
    popt, pcov = to_numpy(popt), to_numpy(pcov)
    assert bool(np.all(to_numpy(info["success"])))
    for b in range(3):
        k = ~np.isnan(Y[b])
        p1, c1 = ao.curve_fit(gauss, arr(xp, device, X[k]), arr(xp, device, Y[b, k]),
                              p0=arr(xp, device, p0), sigma=arr(xp, device, sig[b, k]))
        np.testing.assert_allclose(popt[b], to_numpy(p1), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(pcov[b], to_numpy(c1), rtol=1e-8, atol=1e-18)


@pytest.mark.parametrize("method", ["lm", "trf", "dogbox"])
@pytest.mark.parametrize("absolute_sigma", [False, True])
def test_batched_nan_policy_omit_methods(xp, device, method, absolute_sigma):
    Y, _ = _nan_batch()
    Xb = np.broadcast_to(X, Y.shape).copy()  # per-fit xdata, one NaN x
    Xb[0, 7] = np.nan
    p0 = [1.0, 0.0, 1.0, 0.3]
    popt, pcov = ao.curve_fit(gauss, arr(xp, device, Xb), arr(xp, device, Y),
                              p0=arr(xp, device, p0), batched=True, nan_policy="omit",
                              method=method, absolute_sigma=absolute_sigma)
    for b in range(3):
        k = ~(np.isnan(Y[b]) | np.isnan(Xb[b]))
        p1, c1 = ao.curve_fit(gauss, arr(xp, device, X[k]), arr(xp, device, Y[b, k]),
                              p0=arr(xp, device, p0), method=method,
                              absolute_sigma=absolute_sigma)
        np.testing.assert_allclose(to_numpy(popt)[b], to_numpy(p1), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(to_numpy(pcov)[b], to_numpy(c1), rtol=1e-8, atol=1e-18)


def test_batched_nan_policy_shared_x_and_errors(xp, device):
    Y, _ = _nan_batch()
    x = X.copy()
    x[5] = np.nan  # shared xdata: point 5 of every fit is omitted
    p0 = [1.0, 0.0, 1.0, 0.3]
    popt, _ = ao.curve_fit(gauss, arr(xp, device, x), arr(xp, device, Y), p0=arr(xp, device, p0),
                           batched=True, nan_policy="omit")
    k = ~(np.isnan(Y[1]) | np.isnan(x))
    p1, _ = ao.curve_fit(gauss, arr(xp, device, X[k]), arr(xp, device, Y[1, k]),
                         p0=arr(xp, device, p0))
    np.testing.assert_allclose(to_numpy(popt)[1], to_numpy(p1), rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="nan values"):
        ao.curve_fit(gauss, arr(xp, device, X), arr(xp, device, Y), p0=arr(xp, device, p0),
                     batched=True, nan_policy="raise")
    with pytest.raises(ValueError, match="ydata: contains non-finite"):  # check_finite default
        ao.curve_fit(gauss, arr(xp, device, X), arr(xp, device, Y), p0=arr(xp, device, p0),
                     batched=True)
    with pytest.raises(ValueError, match=r"at the initial point p0 \(problems \[1, 2\]\)"):
        ao.curve_fit(gauss, arr(xp, device, X), arr(xp, device, Y), p0=arr(xp, device, p0),
                     batched=True, check_finite=False)
    Ye = Y.copy()
    Ye[0] = np.nan
    with pytest.raises(ValueError, match=r"fits \(rows\) \[0\] have no data point"):
        ao.curve_fit(gauss, arr(xp, device, X), arr(xp, device, Ye), p0=arr(xp, device, p0),
                     batched=True, nan_policy="omit")


def test_batched_nan_policy_too_few_points_pcov_inf(xp, device):
    Y, _ = _nan_batch()
    Y[0, 4:] = np.nan  # fit 0: 4 points for 4 parameters (m_b - n = 0)
    with pytest.warns(OptimizeWarning):
        popt, pcov = ao.curve_fit(gauss, arr(xp, device, X), arr(xp, device, Y),
                                  p0=arr(xp, device, [1.0, 0.0, 1.0, 0.3]), batched=True,
                                  nan_policy="omit")
    pcov = to_numpy(pcov)
    assert np.all(np.isinf(pcov[0]))
    assert np.all(np.isfinite(pcov[1:]))


# -- 4: nfev / maxfev count evaluations of f that are not Jacobian evaluations ------------
@pytest.mark.parametrize("method", ["lm", "trf"])
def test_nfev_and_maxfev_leave_out_jacobian_evaluations(method):
    import scipy.optimize as so

    calls = {"f": 0, "jac": 0}

    def g(x, a, mu, s, c):
        calls["f"] += 1
        return a * np.exp(-(x - mu) ** 2 / (2 * s * s)) + c

    def jac(x, a, mu, s, c):
        calls["jac"] += 1
        e = np.exp(-(x - mu) ** 2 / (2 * s * s))
        return np.stack([e, a * e * (x - mu) / s**2, a * e * (x - mu) ** 2 / s**3,
                         np.ones_like(x)], axis=1)

    y = 2 * np.exp(-(X - 0.3) ** 2 / (2 * 1.21)) + 0.5 \
        + 0.05 * np.random.default_rng(0).standard_normal(X.size)
    p0 = [1.5, 0.0, 1.0, 0.3]
    info = ao.curve_fit(g, X, y, p0=p0, jac=jac, method=method, full_output=True)[2]
    assert (calls["f"], calls["jac"]) == (info["nfev"], info["njev"])
    calls.update(f=0, jac=0)
    info = ao.curve_fit(g, X, y, p0=p0, method=method, full_output=True)[2]
    # complex step: n calls per Jacobian, and 3 once to check it (least_squares' doc)
    assert calls["f"] == info["nfev"] + 4 * info["njev"] + 3
    nfev = int(info["nfev"])
    ao.curve_fit(g, X, y, p0=p0, method=method, maxfev=nfev)
    with pytest.raises(RuntimeError, match="Optimal parameters not found"):
        ao.curve_fit(g, X, y, p0=p0, method=method, maxfev=nfev - 1)
    if method == "lm":  # scipy's lm counts its forward-difference Jacobians too
        ref = so.curve_fit(lambda x, *p: g(x, *p), X, y, p0=p0, full_output=True)[2]
        assert ref["nfev"] > nfev


# -- 5: a p0 of another backend: the message names curve_fit's arguments --------------------
def test_p0_of_another_backend_names_p0_and_ydata():
    torch = pytest.importorskip("torch")
    x = torch.linspace(0.0, 1.0, 20, dtype=torch.float64)
    for y, batched in ((2 * x + 1, False), (torch.stack([2 * x + 1, 3 * x]), True)):
        with pytest.raises(TypeError) as e:
            ao.curve_fit(lambda x, a, b: a * x + b, x, y, p0=np.array([1.0, 1.0]), batched=batched)
        assert str(e.value) == ("p0: got a numpy array but ydata is a torch array; "
                                "convert it to ydata's backend")
    with pytest.raises(TypeError, match="convert it to x0's backend"):  # least_squares: x0
        ao.least_squares(lambda p: p - 1.0, torch.ones(2, dtype=torch.float64),
                         bounds=(np.zeros(2), np.full(2, 3.0)))


# -- 6: batched least_squares takes a shared x0 (n,) --------------------------------------
def test_batched_least_squares_shared_x0(xp, device):
    rng = np.random.default_rng(2)
    P = np.array([[2.0, 0.7], [1.0, 1.5], [0.5, 0.3]])
    Y = P[:, :1] * np.exp(-P[:, 1:] * X[None, :]) + 0.01 * rng.standard_normal((3, X.size))
    x, y = arr(xp, device, X), arr(xp, device, Y)

    def fun(p):
        return p[:, 0:1] * xp.exp(-p[:, 1:2] * x) - y

    shared = ao.least_squares(fun, arr(xp, device, [1.0, 1.0]), batched=True, method="lm")
    full = ao.least_squares(fun, arr(xp, device, [[1.0, 1.0]] * 3), batched=True, method="lm")
    assert tuple(shared.x.shape) == (3, 2)
    np.testing.assert_array_equal(to_numpy(shared.x), to_numpy(full.x))
    np.testing.assert_array_equal(to_numpy(shared.nfev), to_numpy(full.nfev))
    assert bool(np.all(to_numpy(shared.success)))
    for b in range(3):
        solo = ao.least_squares(lambda p: p[0] * xp.exp(-p[1] * x) - y[b, :],
                                arr(xp, device, [1.0, 1.0]), method="lm")
        np.testing.assert_allclose(to_numpy(shared.x)[b], to_numpy(solo.x), rtol=1e-10)
    with pytest.raises(ValueError, match=r"must return residuals \(B, m\)"):
        ao.least_squares(lambda p: xp.reshape(fun(p), (-1,)), arr(xp, device, [1.0, 1.0]),
                         batched=True)


def test_batched_omit_lm_fit_with_fewer_points_than_parameters_raises(xp, device):
    # scipy's curve_fit (lm) raises TypeError for a fit with fewer points than
    # parameters; a batched fit left so by nan_policy='omit' was reported converged
    t = np.linspace(0.0, 4.0, 20)
    Y = np.stack([2.0 * np.exp(-t) + 0.5, 3.0 * np.exp(-2.0 * t), np.exp(-0.5 * t) + 1.0])
    Y[1, 2:] = np.nan
    f = (lambda x, a, b, c: a * xp.exp(-b * x) + c)
    with pytest.raises(TypeError, match=r"rows\) \[1\] keep fewer \(\[2\]\)"):
        ao.curve_fit(f, arr(xp, device, t), arr(xp, device, Y), p0=arr(xp, device, [1.0, 1, 1]),
                     batched=True, nan_policy="omit")


def test_batched_rank_deficient_fit_raises_no_runtime_warning(xp, device):
    # the geodesic acceleration's SVD-route solve divided 0/0 in rows it does not use
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 3.0, 30)
    Y = np.stack([2.0 * np.exp(-0.7 * t) + 0.02 * rng.standard_normal(30),
                  2.0 * np.exp(-0.7 * t) + 0.1 * t + 0.02 * rng.standard_normal(30)])
    f = (lambda x, a, b, c: a * xp.exp(-b * x) + 0.0 * c)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", OptimizeWarning)  # pcov inf: c is not identifiable
        popt, _ = ao.curve_fit(f, arr(xp, device, t), arr(xp, device, Y),
                               p0=arr(xp, device, [1.0, 1, 1]), batched=True)
    assert np.all(np.isfinite(to_numpy(popt)))


def test_check_finite_with_nan_policy_message_says_how():
    t = np.linspace(0.0, 1.0, 10)
    y = t.copy()
    y[3] = np.nan
    with pytest.raises(ValueError, match="leave check_finite unset"):
        ao.curve_fit(lambda x, a: a * x, t, y, p0=[1.0], check_finite=True, nan_policy="omit")
    np.testing.assert_allclose(ao.curve_fit(lambda x, a: a * x, t, y, p0=[1.0],
                                            nan_policy="omit")[0], [1.0])


def test_indefinite_2d_sigma_is_refused_on_every_backend(xp, device):
    # the covariance is factorized by agnopt._core.linalg.cholesky (checked pivots and
    # backward error), not the backend's raw one: CuPy's returns a partial factor of an
    # indefinite matrix without raising; scipy raises ValueError here
    t = np.linspace(0.0, 1.0, 5)
    S = np.eye(5)
    S[0, 1] = S[1, 0] = 2.0  # symmetric, eigenvalue -1
    with pytest.raises(ValueError, match="positive definite"):
        ao.curve_fit(lambda x, a, b: a * x + b, arr(xp, device, t), arr(xp, device, 2 * t + 1),
                     p0=arr(xp, device, [1.0, 1.0]), sigma=arr(xp, device, S))
    popt, _ = ao.curve_fit(lambda x, a, b: a * x + b, arr(xp, device, t),
                           arr(xp, device, 2 * t + 1), p0=arr(xp, device, [1.0, 1.0]),
                           sigma=arr(xp, device, np.diag([1.0, 2, 3, 4, 5])))
    np.testing.assert_allclose(to_numpy(popt), [2.0, 1.0], rtol=1e-10)
