"""agnopt.fisher_scoring against maximum-likelihood solutions computed independently.

References: the IRLS fixed point of logistic and Poisson regression written
here in plain NumPy (McCullagh & Nelder's iteration: weighted least squares
on the working response until the coefficients stop changing), checked
against ``scipy.optimize.minimize`` on the negative log-likelihood; the
Gaussian family against ``agnopt.least_squares(method="gauss-newton")`` and
``scipy.optimize.least_squares``; the Gaussian of unknown variance against
the closed-form MLE (sample mean and biased variance).
"""

from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import array_namespace

import agnopt as ao
from conftest import have, to_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

RNG = np.random.default_rng(1)
N = 80
DESIGN = np.column_stack([np.ones(N), RNG.standard_normal(N), RNG.uniform(-1, 1, N)])
W_TRUE = np.array([-0.3, 1.2, -0.8])
Y_LOGIT = (RNG.uniform(size=N) < 1 / (1 + np.exp(-DESIGN @ W_TRUE))).astype(float)
Y_POIS = RNG.poisson(np.exp(DESIGN @ np.array([0.5, 0.4, -0.6]))).astype(float)


def irls(X, y, link, iters=100):
    """Plain IRLS for a canonical-link GLM ("logit" or "log")."""
    b = np.zeros(X.shape[1])
    for _ in range(iters):
        eta = X @ b
        if link == "logit":
            mu = 1 / (1 + np.exp(-eta))
            w = mu * (1 - mu)
        else:
            mu = np.exp(eta)
            w = mu
        z = eta + (y - mu) / w
        b_new = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (w * z))
        if np.max(np.abs(b_new - b)) < 1e-15 * max(1, np.max(np.abs(b))):
            return b_new
        b = b_new
    return b


B_LOGIT = irls(DESIGN, Y_LOGIT, "logit")
B_POIS = irls(DESIGN, Y_POIS, "log")


def _arr(xp, device, a):
    return xp.asarray(np.asarray(a, dtype=np.float64), device=device)


def _glm(xp, device, link, batched=False):
    X = _arr(xp, device, DESIGN)

    def mean(b):
        x = array_namespace(b)
        eta = x.matmul(b, x.matrix_transpose(X)) if batched else x.matmul(X, b)
        return 1.0 / (1.0 + x.exp(-eta)) if link == "logit" else x.exp(eta)

    return mean


@pytest.mark.skipif(not have("scipy"), reason="scipy is not installed")
def test_irls_reference_is_the_mle():
    """The test's own IRLS agrees with scipy's minimizer of the NLL (to its tolerance)."""
    from scipy.optimize import minimize

    def nll_logit(b):
        eta = DESIGN @ b
        return np.sum(np.logaddexp(0, eta) - Y_LOGIT * eta), DESIGN.T @ (1 / (1 + np.exp(-eta)) - Y_LOGIT)

    def nll_pois(b):
        eta = DESIGN @ b
        return np.sum(np.exp(eta) - Y_POIS * eta), DESIGN.T @ (np.exp(eta) - Y_POIS)

    for f, ref in ((nll_logit, B_LOGIT), (nll_pois, B_POIS)):
        r = minimize(f, np.zeros(3), jac=True, method="BFGS", options={"gtol": 1e-10})
        np.testing.assert_allclose(r.x, ref, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("family, link, ref, y", [
    ("bernoulli", "logit", B_LOGIT, Y_LOGIT),
    ("poisson", "log", B_POIS, Y_POIS),
])
def test_glm_mle(xp, device, family, link, ref, y):
    res = ao.fisher_scoring(_glm(xp, device, link), _arr(xp, device, np.zeros(3)),
                            _arr(xp, device, y), family=family)
    assert res.success, res.message
    np.testing.assert_allclose(to_numpy(res.x), ref, rtol=1e-9, atol=1e-11)
    assert res.nit <= 10  # Newton's quadratic convergence (IRLS = Newton for canonical links)
    assert float(np.max(np.abs(to_numpy(res.jac)))) <= 1e-7
    # the Fisher matrix at the solution is X^T W X
    mu = 1 / (1 + np.exp(-DESIGN @ ref)) if link == "logit" else np.exp(DESIGN @ ref)
    w = mu * (1 - mu) if link == "logit" else mu
    np.testing.assert_allclose(to_numpy(res.fisher), DESIGN.T @ (w[:, None] * DESIGN), rtol=1e-7)


def test_gaussian_family_is_least_squares(xp, device):
    t = np.linspace(0, 3, 15)
    y = 2.0 * np.exp(-1.3 * t) + 0.5 + 0.02 * np.sin(7 * t)
    tx, yx = _arr(xp, device, t), _arr(xp, device, y)

    def mean(th):
        x = array_namespace(th)
        return th[0] * x.exp(-th[1] * tx) + th[2]

    x0 = _arr(xp, device, [1.0, 1.0, 0.0])
    ref = ao.least_squares(lambda th: mean(th) - yx, x0, method="gauss-newton", jac="3-point",
                           ftol=1e-15, xtol=1e-15, gtol=1e-15)
    res = ao.fisher_scoring(mean, x0, yx, family=ao.families.Gaussian(variance=0.04))
    assert res.success, res.message
    np.testing.assert_allclose(to_numpy(res.x), to_numpy(ref.x), rtol=1e-8)
    # fun is the least-squares cost over the variance
    np.testing.assert_allclose(float(to_numpy(res.fun)), float(to_numpy(ref.cost)) / 0.04, rtol=1e-8)
    if have("scipy") and type(x0).__module__.startswith("numpy"):
        from scipy.optimize import least_squares

        sp = least_squares(lambda th: th[0] * np.exp(-th[1] * t) + th[2] - y, [1.0, 1.0, 0.0],
                           xtol=1e-15, ftol=1e-15, gtol=1e-15)
        np.testing.assert_allclose(to_numpy(res.x), sp.x, rtol=1e-8)


def test_gaussian_mean_and_variance(xp, device):
    """Gaussian(variance=None): (mu, log v) -> closed-form MLE (mean, biased variance)."""
    y = 3.0 + 0.7 * RNG.standard_normal(40)
    yx = _arr(xp, device, y)

    def out(th):
        x = array_namespace(th)
        one = x.ones((40,), dtype=th.dtype, device=device)
        return x.stack([th[0] * one, x.exp(th[1]) * one], axis=1)

    res = ao.fisher_scoring(out, _arr(xp, device, [0.0, 0.0]), yx,
                            family=ao.families.Gaussian(variance=None))
    assert res.success, res.message
    np.testing.assert_allclose(to_numpy(res.x), [y.mean(), np.log(y.var())], rtol=1e-9)


def test_categorical_softmax_regression(xp, device):
    """Softmax regression (class 0 the baseline) against Newton with the exact Hessian."""
    K, p = 3, 3
    W = np.array([[0.0, 1.0, -0.5], [0.0, -0.7, 0.9], [0.0, 0.3, 0.4]])
    logits = DESIGN @ W
    P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cls = np.array([RNG.choice(K, p=pi) for pi in P])
    Y = np.eye(K)[cls]

    # reference: Newton on the free logits' parameters with the exact Hessian
    def probs(v):
        L = np.concatenate([np.zeros((N, 1)), DESIGN @ v.reshape(p, K - 1)], axis=1)
        E = np.exp(L - L.max(1, keepdims=True))
        return E / E.sum(1, keepdims=True)

    v = np.zeros(p * (K - 1))
    for _ in range(30):
        Pr = probs(v)[:, 1:]
        g = (DESIGN.T @ (Pr - Y[:, 1:])).ravel()
        H = sum(np.kron(np.outer(DESIGN[i], DESIGN[i]), np.diag(Pr[i]) - np.outer(Pr[i], Pr[i]))
                for i in range(N))
        v = v - np.linalg.solve(H, g)
    Dx = _arr(xp, device, DESIGN)

    def mean(th):
        x = array_namespace(th)
        L = x.matmul(Dx, x.reshape(th, (p, K - 1)))
        L = x.concat([x.zeros((N, 1), dtype=th.dtype, device=device), L], axis=1)
        E = x.exp(L - x.max(L, axis=1, keepdims=True))
        return E / x.sum(E, axis=1, keepdims=True)

    res = ao.fisher_scoring(mean, _arr(xp, device, np.zeros(p * (K - 1))), _arr(xp, device, Y),
                            family="categorical")
    assert res.success, res.message
    np.testing.assert_allclose(to_numpy(res.x), v, rtol=1e-8, atol=1e-10)


def test_weights_equal_repeated_observations(xp, device):
    """Integer weights give the fit of the data with those rows repeated."""
    wts = np.array([2.0 if i % 3 == 0 else 1.0 for i in range(N)])
    rep = np.repeat(np.arange(N), wts.astype(int))
    ref = irls(DESIGN[rep], Y_LOGIT[rep], "logit")
    res = ao.fisher_scoring(_glm(xp, device, "logit"), _arr(xp, device, np.zeros(3)),
                            _arr(xp, device, Y_LOGIT), family="bernoulli",
                            weights=_arr(xp, device, wts))
    assert res.success
    np.testing.assert_allclose(to_numpy(res.x), ref, rtol=1e-9, atol=1e-11)


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**31 - 1), family=st.sampled_from(["bernoulli", "poisson"]))
def test_linear_reparameterization_equivariance(xp, device, seed, family):
    """Fitting the design X A (theta = A phi) gives phi = A^{-1} theta_hat: Fisher
    scoring, like Newton, is invariant to linear reparameterizations."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((3, 3)) + 3.0 * np.eye(3)
    XA = _arr(xp, device, DESIGN @ A)
    link_logit = family == "bernoulli"

    def mean(b):
        x = array_namespace(b)
        eta = x.matmul(XA, b)
        return 1.0 / (1.0 + x.exp(-eta)) if link_logit else x.exp(eta)

    y, ref = (Y_LOGIT, B_LOGIT) if link_logit else (Y_POIS, B_POIS)
    res = ao.fisher_scoring(mean, _arr(xp, device, np.zeros(3)), _arr(xp, device, y),
                            family=family)
    assert res.success, res.message
    np.testing.assert_allclose(A @ to_numpy(res.x), ref, rtol=1e-8, atol=1e-10)


def test_float32(xp, device):
    """The solve runs in x0's dtype; float32 reaches the MLE to float32 accuracy."""
    X = xp.asarray(DESIGN.astype(np.float32), device=device)

    def mean(b):
        x = array_namespace(b)
        return 1.0 / (1.0 + x.exp(-x.matmul(X, b)))

    x0 = xp.zeros((3,), dtype=xp.float32, device=device)
    res = ao.fisher_scoring(mean, x0, xp.asarray(Y_LOGIT.astype(np.float32), device=device),
                            family="bernoulli")
    assert res.success, res.message
    assert res.x.dtype == xp.float32 and res.fisher.dtype == xp.float32
    np.testing.assert_allclose(to_numpy(res.x), B_LOGIT, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_far_start_needs_the_line_search(xp, device):
    """From a far start plain IRLS (full steps) diverges on this logistic regression
    (the weights mu(1 - mu) underflow and X^T W X becomes singular); with the
    line search the iteration reaches the MLE."""
    x0 = np.array([4.0, -6.0, 5.0])
    plain = x0.copy()
    with np.errstate(all="ignore"):
        for _ in range(30):
            mu = 1 / (1 + np.exp(-DESIGN @ plain))
            w = mu * (1 - mu)
            try:
                plain = plain + np.linalg.solve(DESIGN.T @ (w[:, None] * DESIGN),
                                                DESIGN.T @ (Y_LOGIT - mu))
            except np.linalg.LinAlgError:
                plain = np.full(3, np.nan)
                break
    assert not np.allclose(plain, B_LOGIT, rtol=1e-3)
    res = ao.fisher_scoring(_glm(xp, device, "logit"), _arr(xp, device, x0),
                            _arr(xp, device, Y_LOGIT), family="bernoulli")
    assert res.success, res.message
    np.testing.assert_allclose(to_numpy(res.x), B_LOGIT, rtol=1e-9, atol=1e-11)
    assert res.nfev > res.nit + 1  # some steps were shortened


def test_batched_equals_one_by_one(xp, device):
    ys = np.stack([Y_LOGIT, 1.0 - Y_LOGIT, np.roll(Y_LOGIT, 7)])
    refs = [irls(DESIGN, yb, "logit") for yb in ys]
    res = ao.fisher_scoring(_glm(xp, device, "logit", batched=True),
                            _arr(xp, device, np.zeros((3, 3))), _arr(xp, device, ys),
                            family="bernoulli", batched=True)
    assert bool(np.all(to_numpy(res.success)))
    assert to_numpy(res.x).shape == (3, 3) and to_numpy(res.fun).shape == (3,)
    assert to_numpy(res.fisher).shape == (3, 3, 3) and len(res.message) == 3
    np.testing.assert_allclose(to_numpy(res.x), np.stack(refs), rtol=1e-9, atol=1e-11)
    for b in range(3):
        one = ao.fisher_scoring(_glm(xp, device, "logit"), _arr(xp, device, np.zeros(3)),
                                _arr(xp, device, ys[b]), family="bernoulli")
        np.testing.assert_allclose(to_numpy(res.x)[b], to_numpy(one.x), rtol=1e-9, atol=1e-11)
        assert int(to_numpy(res.nit)[b]) == one.nit


def test_autodiff_and_callable_jac(xp, device):
    X = _arr(xp, device, DESIGN)
    mean = _glm(xp, device, "logit")

    def jac(b):
        m = mean(b)
        return X * (m * (1.0 - m))[:, None]

    options = [jac, "cs", "2-point"]
    if type(X).__module__.startswith(("torch", "jax")):
        options.append("autodiff")
    if type(X).__module__.startswith("dask"):
        options.remove("cs")
    for j in options:
        res = ao.fisher_scoring(mean, _arr(xp, device, np.zeros(3)), _arr(xp, device, Y_LOGIT),
                                family="bernoulli", jac=j)
        assert res.success, (j, res.message)
        tol = 1e-6 if j == "2-point" else 1e-10
        np.testing.assert_allclose(to_numpy(res.x), B_LOGIT, rtol=tol, err_msg=str(j))


def test_bad_input(xp, device):
    mean = _glm(xp, device, "logit")
    x0 = _arr(xp, device, np.zeros(3))
    y = _arr(xp, device, Y_LOGIT)
    with pytest.raises(ValueError, match="y: the bernoulli"):
        ao.fisher_scoring(mean, x0, 2.0 * y, family="bernoulli")
    with pytest.raises(ValueError, match="y: the poisson"):
        ao.fisher_scoring(_glm(xp, device, "log"), x0, y - 1.0, family="poisson")
    with pytest.raises(ValueError, match="mean_fn.*bernoulli"):
        ao.fisher_scoring(lambda b: mean(b) + 1.0, x0, y, family="bernoulli")
    with pytest.raises(ValueError, match="y: shape"):
        ao.fisher_scoring(mean, x0, y[:10], family="bernoulli")
    with pytest.raises(ValueError, match="family"):
        ao.fisher_scoring(mean, x0, y, family="gamma")
    with pytest.raises(ValueError, match="x0"):
        ao.fisher_scoring(mean, x0, y, family="bernoulli", batched=True)
    with pytest.raises(ValueError, match="weights"):
        ao.fisher_scoring(mean, x0, y, family="bernoulli", weights=_arr(xp, device, np.ones(3)))
    with pytest.raises(ValueError, match="weights"):
        ao.fisher_scoring(mean, x0, y, family="bernoulli", weights=-_arr(xp, device, np.ones(N)))
    with pytest.raises(ValueError, match="damping"):
        ao.fisher_scoring(mean, x0, y, family="bernoulli", damping=-1.0)
    with pytest.raises(ValueError, match="jac"):
        ao.fisher_scoring(mean, x0, y, family="bernoulli", jac="4-point")
    with pytest.raises(TypeError, match="x0"):
        ao.fisher_scoring(mean, [0.0, 0.0, 0.0], y, family="bernoulli")
    with pytest.raises(ZeroDivisionError):  # the model's own exception, with a note
        ao.fisher_scoring(lambda b: 1 / 0, x0, y, family="bernoulli")
    if not type(x0).__module__.startswith("numpy"):
        with pytest.raises(TypeError, match="y:"):
            ao.fisher_scoring(mean, x0, Y_LOGIT, family="bernoulli")
    if not type(x0).__module__.startswith(("torch", "jax")):
        with pytest.raises(ao.AutodiffUnavailableError):
            ao.fisher_scoring(mean, x0, y, family="bernoulli", jac="autodiff")


def test_maxiter_and_callback(xp, device):
    mean = _glm(xp, device, "logit")
    x0 = _arr(xp, device, np.zeros(3))
    y = _arr(xp, device, Y_LOGIT)
    res = ao.fisher_scoring(mean, x0, y, family="bernoulli", maxiter=1)
    assert res.status == 1 and not res.success and res.nit == 1
    seen = []

    def cb(r):
        seen.append(r.nit)
        if r.nit == 2:
            raise StopIteration

    res = ao.fisher_scoring(mean, x0, y, family="bernoulli", callback=cb)
    assert res.status == 99 and not res.success and seen == [1, 2]
    np.testing.assert_array_equal(to_numpy(x0), np.zeros(3))  # x0 not modified
