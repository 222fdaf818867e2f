"""The natural-gradient transform (agnopt.natural_gradient, scale_by_natural_gradient).

References computed here, independently of agnopt: the Gauss-Newton step by
``numpy.linalg.lstsq`` on the analytic Jacobian, the IRLS step of logistic
regression by ``numpy.linalg.solve`` on ``X^T W X``. Invariance: the Fisher
metric makes the step independent of the coordinates to first order in the
step size (the difference between two parameterizations' paths halves when
the step halves), where gradient descent's paths stay apart.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from array_api_compat import array_namespace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agnopt as ao
from conftest import have, materialize, to_numpy

GAUSS_MV = ao.families.Gaussian(variance=None)


def _arr(xp, device, a):
    return xp.asarray(np.asarray(a, dtype=np.float64), device=device)


# --------------------------------------------------------------------------
# one step against independent references
# --------------------------------------------------------------------------

T = np.linspace(0.0, 2.0, 9)
Y_EXP = np.array([3.1, 2.4, 1.9, 1.6, 1.2, 1.1, 0.9, 0.8, 0.75])


def _exp_model(xp, device):
    t = _arr(xp, device, T)

    def model(th):
        x = array_namespace(th)
        return th[0] * x.exp(-th[1] * t) + th[2]

    return model


def test_gaussian_step_is_gauss_newton(xp, device):
    """family='gaussian', damping 0, lr 1: the step is -J^+ r (Gauss-Newton)."""
    th0 = np.array([2.5, 0.7, 0.4])
    model = _exp_model(xp, device)
    y = _arr(xp, device, Y_EXP)
    r = lambda th: model(th) - y  # noqa: E731
    # gradient of 0.5 ||y - model||^2 (analytic)
    e = np.exp(-th0[1] * T)
    Jn = np.stack([e, -th0[0] * T * e, np.ones_like(T)], axis=1)
    rn = th0[0] * e + th0[2] - Y_EXP
    ref = -np.linalg.lstsq(Jn, rn, rcond=None)[0]
    th = _arr(xp, device, th0)
    grad = _arr(xp, device, Jn.T @ rn)
    opt = ao.natural_gradient(1.0, model=model, family="gaussian", damping=0.0)
    u, _ = opt.update(grad, opt.init(th), th)
    np.testing.assert_allclose(to_numpy(u), ref, rtol=1e-8, atol=1e-10)
    assert to_numpy(r(th)).shape == (9,)


def test_gaussian_run_reaches_least_squares(xp, device):
    """20 undamped natural-gradient steps = Gauss-Newton's solution (least_squares)."""
    model = _exp_model(xp, device)
    y = _arr(xp, device, Y_EXP)
    th = _arr(xp, device, [2.5, 0.7, 0.4])
    ref = ao.least_squares(lambda z: model(z) - y, th, method="gauss-newton", jac="3-point",
                           xtol=1e-14, ftol=1e-14, gtol=1e-14)
    opt = ao.natural_gradient(1.0, model=model, family=ao.families.Gaussian(variance=0.3),
                              damping=0.0)
    s = opt.init(th)
    x = th
    for _ in range(20):
        e = xp.exp(-x[1] * _arr(xp, device, T))
        J = xp.stack([e, -x[0] * _arr(xp, device, T) * e, xp.ones_like(e)], axis=1)
        g = xp.matmul(xp.matrix_transpose(J), model(x) - y) / 0.3
        u, s = opt.update(g, s, x)
        x = materialize(ao.apply_updates(x, u))
    np.testing.assert_allclose(to_numpy(x), to_numpy(ref.x), rtol=1e-8)


LOGIT_X = np.array([[1.0, -1.0, 0.3], [1.0, 0.5, -0.2], [1.0, 2.0, 0.1], [1.0, 0.0, 1.0],
                    [1.0, -0.4, -1.1], [1.0, 1.3, 0.8]])
LOGIT_Y = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 1.0])


def _logistic(xp, device):
    X = _arr(xp, device, LOGIT_X)

    def model(w):
        x = array_namespace(w)
        return 1.0 / (1.0 + x.exp(-x.matmul(X, w)))

    return X, model


def test_bernoulli_step_is_irls_step(xp, device):
    X, model = _logistic(xp, device)
    w0 = np.array([0.2, -0.3, 0.5])
    mu = 1.0 / (1.0 + np.exp(-LOGIT_X @ w0))
    g = LOGIT_X.T @ (mu - LOGIT_Y)
    ref = -np.linalg.solve(LOGIT_X.T @ ((mu * (1 - mu))[:, None] * LOGIT_X), g)
    w = _arr(xp, device, w0)
    for solver in ("cholesky", "cg"):
        opt = ao.natural_gradient(1.0, model=model, family="bernoulli", damping=0.0,
                                  solver=solver, cg_tol=1e-13)
        u, _ = opt.update(_arr(xp, device, g), opt.init(w), w)
        np.testing.assert_allclose(to_numpy(u), ref, rtol=1e-7, err_msg=solver)


def test_damping_and_weights(xp, device):
    """(F + lambda I) d = g with observation weights, against NumPy."""
    X, model = _logistic(xp, device)
    w0 = np.array([0.1, 0.4, -0.2])
    wts = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 0.0])
    mu = 1.0 / (1.0 + np.exp(-LOGIT_X @ w0))
    F = LOGIT_X.T @ ((wts * mu * (1 - mu))[:, None] * LOGIT_X)
    g = np.array([0.3, -1.0, 0.25])
    ref = np.linalg.solve(F + 0.05 * np.eye(3), g)
    t = ao.scale_by_natural_gradient(model, family="bernoulli", damping=0.05,
                                     weights=_arr(xp, device, wts))
    w = _arr(xp, device, w0)
    d, _ = t.update(_arr(xp, device, g), t.init(w), w)
    np.testing.assert_allclose(to_numpy(d), ref, rtol=1e-7)


def test_poisson_and_categorical_fisher(xp, device):
    """The Fisher matrices of the Poisson and categorical families, against NumPy."""
    A = np.array([[1.0, 0.2], [1.0, -0.5], [1.0, 1.5], [1.0, 0.7]])
    th0 = np.array([0.3, -0.4])
    Ax = _arr(xp, device, A)
    pois = lambda th: array_namespace(th).exp(array_namespace(th).matmul(Ax, th))  # noqa: E731
    mu = np.exp(A @ th0)
    g = np.array([1.0, -2.0])
    ref = np.linalg.solve(A.T @ (mu[:, None] * A), g)
    t = ao.scale_by_natural_gradient(pois, family="poisson", damping=0.0)
    th = _arr(xp, device, th0)
    d, _ = t.update(_arr(xp, device, g), t.init(th), th)
    np.testing.assert_allclose(to_numpy(d), ref, rtol=1e-7)

    # softmax regression, 3 classes, class 0 the baseline: params (2 features x 2 classes)
    def soft(v):
        x = array_namespace(v)
        logits = x.matmul(Ax, x.reshape(v, (2, 2)))
        logits = x.concat([x.zeros((4, 1), dtype=v.dtype, device=device), logits], axis=1)
        e = x.exp(logits - x.max(logits, axis=1, keepdims=True))
        return e / x.sum(e, axis=1, keepdims=True)

    v0 = np.array([0.2, -0.1, 0.4, 0.3])
    L = np.concatenate([np.zeros((4, 1)), A @ v0.reshape(2, 2)], axis=1)
    P = np.exp(L) / np.exp(L).sum(1, keepdims=True)
    Fref = np.zeros((4, 4))
    for i in range(4):
        p = P[i, 1:]
        C = np.diag(p) - np.outer(p, p)  # Fisher of the free logits
        Fref += np.kron(np.outer(A[i], A[i]), C)  # parameter order: (feature, class)
    g = np.array([0.5, -0.2, 0.1, 0.3])
    t = ao.scale_by_natural_gradient(soft, family="categorical", damping=0.0)
    v = _arr(xp, device, v0)
    d, _ = t.update(_arr(xp, device, g), t.init(v), v)
    np.testing.assert_allclose(to_numpy(d), np.linalg.solve(Fref, g), rtol=1e-6)


def test_tree_params_and_chain(xp, device):
    """A dict of parameters gives the step of the flat vector; chain composes."""
    X, model = _logistic(xp, device)

    def model_tree(p):
        x = array_namespace(p["w"])
        z = x.matmul(X[:, 1:], p["w"]) + p["b"]
        return 1.0 / (1.0 + x.exp(-z))

    w0 = np.array([0.2, -0.3, 0.5])
    g0 = np.array([0.4, 1.0, -0.6])
    flat = ao.natural_gradient(0.5, model=model, family="bernoulli", damping=1e-3)
    w = _arr(xp, device, w0)
    u_flat, _ = flat.update(_arr(xp, device, g0), flat.init(w), w)
    params = {"b": _arr(xp, device, w0[0]), "w": _arr(xp, device, w0[1:])}
    grads = {"b": _arr(xp, device, g0[0]), "w": _arr(xp, device, g0[1:])}
    opt = ao.chain(ao.scale_by_natural_gradient(model_tree, family="bernoulli", damping=1e-3),
                   ao.clip_by_global_norm(1e6), ao.scale_by_learning_rate(0.5))
    u, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(to_numpy(u["b"]), to_numpy(u_flat)[0], rtol=1e-8)
    np.testing.assert_allclose(to_numpy(u["w"]), to_numpy(u_flat)[1:], rtol=1e-8)


def test_jac_options_agree(xp, device):
    """2-point, 3-point, a callable, and (torch, JAX) autodiff with the matrix-free CG."""
    X, model = _logistic(xp, device)
    w0 = np.array([0.2, -0.3, 0.5])
    mu = 1.0 / (1.0 + np.exp(-LOGIT_X @ w0))
    g = np.array([0.4, 1.0, -0.6])
    ref = np.linalg.solve(LOGIT_X.T @ ((mu * (1 - mu))[:, None] * LOGIT_X), g)
    w = _arr(xp, device, w0)

    def jac(p):
        m = model(p)
        return X * (m * (1.0 - m))[:, None]

    cases = [("2-point", "auto", 1e-6), ("3-point", "cg", 1e-8), (jac, "auto", 1e-10)]
    mod = type(w).__module__
    if mod.startswith(("torch", "jax")):
        cases += [("autodiff", "cholesky", 1e-10), ("autodiff", "cg", 1e-10)]
    for jac_opt, solver, tol in cases:
        t = ao.scale_by_natural_gradient(model, family="bernoulli", damping=0.0, jac=jac_opt,
                                         solver=solver, cg_tol=1e-14)
        d, _ = t.update(_arr(xp, device, g), t.init(w), w)
        np.testing.assert_allclose(to_numpy(d), ref, rtol=tol, err_msg=f"{jac_opt} {solver}")


# --------------------------------------------------------------------------
# invariance
# --------------------------------------------------------------------------

_RNG = np.random.default_rng(0)
Y_GAUSS = 1.0 + 2.0 * _RNG.standard_normal(50)


def _gauss_problem(xp, device):
    """Mean NLL of N(mu, sigma^2) on Y_GAUSS in (mu, sigma) and in (mu, log sigma)."""
    y = _arr(xp, device, Y_GAUSS)

    def s2(mu):
        return xp.mean((y - mu) ** 2)

    def model_a(th):
        x = array_namespace(th)
        return x.reshape(x.stack([th[0], th[1] ** 2]), (1, 2))

    def grad_a(th):
        mu, sig = th[0], th[1]
        return xp.stack([-(xp.mean(y) - mu) / sig**2, 1.0 / sig - s2(mu) / sig**3])

    def model_b(ph):
        x = array_namespace(ph)
        return x.reshape(x.stack([ph[0], x.exp(2.0 * ph[1])]), (1, 2))

    def grad_b(ph):
        mu, v = ph[0], xp.exp(2.0 * ph[1])
        return xp.stack([-(xp.mean(y) - mu) / v, 1.0 - s2(mu) / v])

    return model_a, grad_a, model_b, grad_b


def _run(xp, opt, grad, x, K):
    s = opt.init(x)
    for _ in range(K):
        u, s = opt.update(grad(x), s, x)
        x = materialize(ao.apply_updates(x, u))
    return x


def _gap(xp, device, make_opt, eta, horizon=1.0):
    """Max distance, in (mu, sigma), after time ``horizon`` of the two parameterizations."""
    model_a, grad_a, model_b, grad_b = _gauss_problem(xp, device)
    K = int(round(horizon / eta))
    a = to_numpy(_run(xp, make_opt(eta, model_a), grad_a, _arr(xp, device, [0.0, 1.5]), K))
    b = to_numpy(_run(xp, make_opt(eta, model_b), grad_b, _arr(xp, device, [0.0, math.log(1.5)]), K))
    return float(np.max(np.abs(a - np.array([b[0], np.exp(b[1])])))), a


def test_natural_gradient_reparameterization_invariant_to_first_order(xp, device):
    """(mu, sigma) vs (mu, log sigma): the paths agree up to O(eta), gradient descent's do not.

    Both natural-gradient runs discretize the same flow in distribution space
    (the Fisher metric is coordinate-free), so after a fixed time their gap is
    the difference of two Euler errors, O(eta): halving eta halves it (ratio
    0.5 +- 0.1). Gradient descent follows two different flows (the Euclidean
    metric of each coordinate system), so its gap does not shrink.
    """
    ng = lambda eta, m: ao.natural_gradient(eta, model=m, family=GAUSS_MV, damping=0.0)  # noqa: E731
    gd = lambda eta, m: ao.sgd(eta)  # noqa: E731
    # Dask computes a graph per step: a shorter horizon with larger steps (30 steps, not 150)
    lazy = type(xp.asarray(0.0)).__module__.startswith("dask")
    horizon, eta = (0.5, 0.05) if lazy else (1.0, 0.02)
    d1, a1 = _gap(xp, device, ng, eta, horizon)
    d2, _ = _gap(xp, device, ng, eta / 2, horizon)
    g1, _ = _gap(xp, device, gd, eta, horizon)
    g2, _ = _gap(xp, device, gd, eta / 2, horizon)
    assert d2 < 1e-3 and 0.4 < d2 / d1 < 0.6, (d1, d2)
    assert g2 > 0.1 and g2 / g1 > 0.9, (g1, g2)
    assert g2 > 100 * d2
    # and the natural gradient is moving towards the maximum-likelihood fit
    assert abs(a1[0] - Y_GAUSS.mean()) < abs(0.0 - Y_GAUSS.mean())


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**31 - 1), damping=st.sampled_from([0.0]))
def test_exact_invariance_to_linear_reparameterization(xp, device, seed, damping):
    """theta = A phi, A invertible: the undamped step in phi maps to the step in theta.

    The Fisher matrix transforms as A^T F A and the gradient as A^T g, so
    d_phi = A^{-1} d_theta exactly (up to rounding and the finite-difference
    Jacobian, relative error ~1e-9 for well-conditioned A).
    """
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((3, 3)) + 3.0 * np.eye(3)
    if np.linalg.cond(A) > 50:
        A = A + 5.0 * np.eye(3)
    X, model = _logistic(xp, device)
    Ax = _arr(xp, device, A)
    model_phi = lambda phi: model(xp.matmul(Ax, phi))  # noqa: E731
    th0 = rng.standard_normal(3) * 0.5
    phi0 = np.linalg.solve(A, th0)
    mu = 1.0 / (1.0 + np.exp(-LOGIT_X @ th0))
    g_th = LOGIT_X.T @ (mu - LOGIT_Y)
    g_phi = A.T @ g_th
    t1 = ao.natural_gradient(1.0, model=model, family="bernoulli", damping=damping)
    t2 = ao.natural_gradient(1.0, model=model_phi, family="bernoulli", damping=damping)
    th, phi = _arr(xp, device, th0), _arr(xp, device, phi0)
    u1, _ = t1.update(_arr(xp, device, g_th), t1.init(th), th)
    u2, _ = t2.update(_arr(xp, device, g_phi), t2.init(phi), phi)
    np.testing.assert_allclose(A @ to_numpy(u2), to_numpy(u1), rtol=1e-6, atol=1e-9)


def test_step_scales_with_the_loss(xp, device):
    """F comes from the model, not the loss: f -> a f scales the step by a (no
    loss-scale invariance, unlike Adam's)."""
    X, model = _logistic(xp, device)
    w = _arr(xp, device, [0.2, -0.3, 0.5])
    g = _arr(xp, device, [0.4, 1.0, -0.6])
    t = ao.natural_gradient(0.1, model=model, family="bernoulli", damping=0.0)
    u1, _ = t.update(g, t.init(w), w)
    u2, _ = t.update(1000.0 * g, t.init(w), w)
    np.testing.assert_allclose(to_numpy(u2), 1000.0 * to_numpy(u1), rtol=1e-10)


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------


def test_zero_damping_singular_fisher_raises(xp, device):
    """A redundant parameter (only a + b matters) makes F singular."""
    X = _arr(xp, device, LOGIT_X[:, 1])

    def model(p):
        x = array_namespace(p)
        return 1.0 / (1.0 + x.exp(-(p[0] + p[1]) * X))

    p = _arr(xp, device, [0.3, 0.2])
    g = _arr(xp, device, [1.0, -1.0])  # a direction F cannot see
    for solver in ("cholesky", "cg"):
        t = ao.scale_by_natural_gradient(model, family="bernoulli", damping=0.0, solver=solver)
        with pytest.raises(ValueError, match="damping"):
            t.update(g, t.init(p), p)
    t = ao.scale_by_natural_gradient(model, family="bernoulli", damping=1e-3)
    d, _ = t.update(g, t.init(p), p)
    np.testing.assert_allclose(to_numpy(d), [1e3, -1e3], rtol=1e-6)  # null direction: g / damping


def test_bad_input_errors(xp, device):
    p = _arr(xp, device, [0.3, 0.2])
    g = _arr(xp, device, [1.0, -1.0])
    bad = lambda q: q + 1.0  # noqa: E731  - a Bernoulli mean above 1
    t = ao.scale_by_natural_gradient(bad, family="bernoulli")
    with pytest.raises(ValueError, match="model.*bernoulli"):
        t.update(g, t.init(p), p)
    with pytest.raises(ValueError, match="params"):
        t.update(g, t.init(p), None)
    with pytest.raises(ValueError, match="family"):
        ao.natural_gradient(0.1, model=bad, family="gamma")
    with pytest.raises(ValueError, match="solver"):
        ao.natural_gradient(0.1, model=bad, family="poisson", solver="qr")
    with pytest.raises(ValueError, match="jac"):
        ao.natural_gradient(0.1, model=bad, family="poisson", jac="5-point")
    with pytest.raises(ValueError, match="damping"):
        ao.natural_gradient(0.1, model=bad, family="poisson", damping=-1.0)
    with pytest.raises(TypeError, match="model"):
        ao.natural_gradient(0.1, model=None, family="poisson")
    with pytest.raises(ValueError, match="variance"):
        ao.families.Gaussian(variance=0.0)
    if not type(p).__module__.startswith("numpy"):
        t = ao.natural_gradient(0.1, model=lambda z: z, family="gaussian")
        with pytest.raises(TypeError, match="grads"):
            t.update(np.array([1.0, -1.0]), t.init(p), p)
    q = {"a": _arr(xp, device, [0.1]), "b": xp.asarray([0.2], dtype=xp.float32, device=device)}
    t = ao.scale_by_natural_gradient(lambda z: z["a"] + z["b"], family="gaussian")
    with pytest.raises(TypeError, match="dtype"):
        t.update(q, t.init(q), q)


@pytest.mark.skipif(not have("torch"), reason="torch is not installed")
def test_autodiff_on_numpy_raises():
    t = ao.scale_by_natural_gradient(lambda z: z, family="gaussian", jac="autodiff")
    p = np.array([0.1, 0.2])
    with pytest.raises(ao.AutodiffUnavailableError, match="autodiff"):
        t.update(p, t.init(p), p)
