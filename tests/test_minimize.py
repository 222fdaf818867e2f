"""Tests of agnopt.minimize (Newton, Newton-CG) on every backend of the matrix.

Every test takes the ``xp`` fixture (numpy, array_api_strict, torch, dask,
jax; cupy / torch-cuda where CUDA is present) unless it says otherwise.
Objectives are written once with ``array_api_compat.array_namespace``.
scipy.optimize.minimize (NumPy) is the reference.
"""

from __future__ import annotations

import math
import sys
import warnings

import array_api_compat
import numpy as np
import pytest
import scipy.optimize as so

import agnopt as ao
from agnopt import AutodiffUnavailableError

from conftest import to_numpy

# ---------------------------------------------------------------------------
# Objectives, written against the Array API


def _ns(x):
    return array_api_compat.array_namespace(x)


def rosen(x):
    xp = _ns(x)
    return xp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def rosen_der(x):
    xp = _ns(x)
    xm, xm_m1, xm_p1 = x[1:-1], x[:-2], x[2:]
    mid = 200 * (xm - xm_m1**2) - 400 * (xm_p1 - xm**2) * xm - 2 * (1 - xm)
    first = -400 * x[0:1] * (x[1:2] - x[0:1] ** 2) - 2 * (1 - x[0:1])
    last = 200 * (x[-1:] - x[-2:-1] ** 2)
    return xp.concat([first, mid, last])


def rosen_hess(x):
    xp = _ns(x)
    n = x.shape[0]
    dev = array_api_compat.device(x)
    zero1 = xp.zeros((1,), dtype=x.dtype, device=dev)
    idx = xp.arange(n, device=dev)
    x_next = xp.concat([x[1:], zero1])
    # diagonal: 1200 x_i^2 - 400 x_{i+1} + 2 (i < n-1), plus 200 (i > 0)
    zeros = xp.zeros_like(x)
    diag = xp.where(idx < n - 1, 1200 * x**2 - 400 * x_next + 2, zeros) + xp.where(
        idx > 0, zeros + 200.0, zeros
    )
    off = -400 * x  # H[i, i+1] = H[i+1, i] = -400 x_i
    eye = xp.eye(n, dtype=x.dtype, device=dev)
    up = xp.eye(n, k=1, dtype=x.dtype, device=dev)
    low = xp.eye(n, k=-1, dtype=x.dtype, device=dev)
    return eye * diag[:, None] + up * off[:, None] + low * off[None, :]


def rosen_hessp(x, p):
    xp = _ns(x)
    first = (1200 * x[0:1] ** 2 - 400 * x[1:2] + 2) * p[0:1] - 400 * x[0:1] * p[1:2]
    mid = (
        -400 * x[:-2] * p[:-2]
        + (202 + 1200 * x[1:-1] ** 2 - 400 * x[2:]) * p[1:-1]
        - 400 * x[1:-1] * p[2:]
    )
    last = -400 * x[-2:-1] * p[-2:-1] + 200 * p[-1:]
    return xp.concat([first, mid, last])


def asarr(xp, device, a, dtype=None):
    dtype = dtype or xp.float64
    return xp.asarray(np.asarray(a, dtype=np.float64).tolist(), dtype=dtype, device=device)


def is_backend(xp, *names):
    name = getattr(xp, "__name__", "")
    return any(n in name for n in names)


def skip_slow_on_dask(xp, what):
    """Dask builds and computes a task graph for every scalar the solver
    reads (several per CG iteration); on 2-vectors that costs ~20 ms each, so
    runs with thousands of them take minutes. Those runs are covered by the
    same code on the other backends and by the smaller Dask runs."""
    if is_backend(xp, "dask"):
        pytest.skip(f"dask: {what} takes minutes (one graph compute per scalar read); "
                    "covered on the other backends")


# ---------------------------------------------------------------------------
# Helper checks


def test_rosen_helpers_match_scipy(xp, device):
    rng = np.random.default_rng(0)
    x = rng.normal(size=7)
    p = rng.normal(size=7)
    X, Pv = asarr(xp, device, x), asarr(xp, device, p)
    np.testing.assert_allclose(float(rosen(X)), so.rosen(x), rtol=1e-14)
    np.testing.assert_allclose(to_numpy(rosen_der(X)), so.rosen_der(x), rtol=1e-13)
    np.testing.assert_allclose(to_numpy(rosen_hess(X)), so.rosen_hess(x), rtol=1e-13)
    np.testing.assert_allclose(to_numpy(rosen_hessp(X, Pv)), so.rosen_hess_prod(x, p), rtol=1e-13)


# ---------------------------------------------------------------------------
# Rosenbrock

CASES = {
    "newton": dict(method="newton", jac=rosen_der, hess=rosen_hess),
    "newton-pinv": dict(method="newton", jac=rosen_der, hess=rosen_hess, options={"solver": "pinv"}),
    "newton-cg": dict(method="newton-cg", jac=rosen_der, hessp=rosen_hessp),
    "newton-cg-tr": dict(
        method="newton-cg", jac=rosen_der, hessp=rosen_hessp, options={"globalization": "trust-region"}
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rosenbrock_2d(xp, device, case):
    kw = CASES[case]
    x0 = asarr(xp, device, [-1.2, 1.0])
    res = ao.minimize(rosen, x0, **kw)
    x = to_numpy(res.x)
    assert res.success, res.message
    assert res.status == 0
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-9)
    # |g|_inf <= gtol = 1.5e-8 and the Hessian's smallest eigenvalue near
    # (1, 1) is 0.4 bound f <= gtol^2 / 0.4 < 1e-15 on every platform (the
    # value actually reached depends on where the last step lands).
    assert float(res.fun) < 1e-15
    ref = so.minimize(
        so.rosen, [-1.2, 1.0], jac=so.rosen_der, hessp=so.rosen_hess_prod, method="trust-ncg",
        options={"gtol": 1e-10},
    )
    assert np.max(np.abs(x - ref.x)) < 1e-8
    assert res.x.dtype == x0.dtype
    assert res.jac.shape == (2,)
    assert res.nit > 0 and res.nfev > 0 and res.njev > 0 and res.nhev > 0
    assert 1 <= res.nit <= 100


# The extended Rosenbrock function (Moré, Garbow & Hillstrom 1981, problem
# 21): n/2 uncoupled 2-D Rosenbrock functions of the pairs (x_2i, x_2i+1).
def ext_rosen(x):
    xp = _ns(x)
    a, b = x[0::2], x[1::2]
    return xp.sum(100.0 * (b - a**2) ** 2 + (1.0 - a) ** 2)
def ext_rosen_der(x):
    xp = _ns(x)
    a, b = x[0::2], x[1::2]
    ga = -400.0 * a * (b - a**2) - 2.0 * (1.0 - a)
    gb = 200.0 * (b - a**2)
    return xp.reshape(xp.stack([ga, gb], axis=1), (-1,))
def ext_rosen_hessp(x, p):
    xp = _ns(x)
    a, b = x[0::2], x[1::2]
    pa, pb = p[0::2], p[1::2]
    haa = 1200.0 * a**2 - 400.0 * b + 2.0
    hab = -400.0 * a
    return xp.reshape(xp.stack([haa * pa + hab * pb, hab * pa + 200.0 * pb], axis=1), (-1,))
def ext_rosen_hess(x):
    xp = _ns(x)
    n = x.shape[0]
    dev = array_api_compat.device(x)
    a, b = x[0::2], x[1::2]
    diag = xp.reshape(xp.stack([1200.0 * a**2 - 400.0 * b + 2.0, 200.0 + 0.0 * b], axis=1), (-1,))
    off = xp.reshape(xp.stack([-400.0 * a, 0.0 * a], axis=1), (-1,))  # H[2i, 2i+1]
    eye = xp.eye(n, dtype=x.dtype, device=dev)
    up = xp.eye(n, k=1, dtype=x.dtype, device=dev)
    low = xp.eye(n, k=-1, dtype=x.dtype, device=dev)
    return eye * diag[:, None] + up * off[:, None] + low * off[None, :]


RUNS_100D = {
    "newton": dict(method="newton"),
    "newton-cg": dict(method="newton-cg"),
    "newton-cg-tr": dict(method="newton-cg", options={"globalization": "trust-region"}),
}


@pytest.mark.parametrize("case", list(RUNS_100D))
@pytest.mark.parametrize("problem", ["extended", "chained"])
def test_rosenbrock_100d(xp, device, problem, case):
    """n = 100: the extended Rosenbrock function from its standard start
    (-1.2, 1, ..., -1.2, 1), and scipy's chained ``rosen`` from the tiled
    tutorial start (1.3, 0.7, 0.8, 1.9, 1.2); both end at (1, ..., 1).
    Reference: scipy's trust-exact (with trust-ncg and Newton-CG as cross
    checks); agreement to 1e-8 in x."""
    n = 100
    skip_slow_on_dask(xp, "100-D Rosenbrock (the dense and CG paths run on dask at n = 2, 6, 10)")
    if problem == "extended":
        f, d, h, hp = ext_rosen, ext_rosen_der, ext_rosen_hess, ext_rosen_hessp
        start = np.tile([-1.2, 1.0], n // 2)
    else:
        f, d, h, hp = rosen, rosen_der, rosen_hess, rosen_hessp
        start = np.tile([1.3, 0.7, 0.8, 1.9, 1.2], n // 5)
    kw = dict(RUNS_100D[case])
    kw["options"] = {**kw.get("options", {}), "gtol": 1e-10}
    if case == "newton":
        kw.update(jac=d, hess=h)
    else:
        kw.update(jac=d, hessp=hp)
    x0 = asarr(xp, device, start)
    res = ao.minimize(f, x0, **kw)
    assert res.success, res.message
    x = to_numpy(res.x)
    ref = so.minimize(f, start, jac=d, hess=h, method="trust-exact", options={"gtol": 1e-10})
    assert ref.success
    np.testing.assert_allclose(ref.x, 1.0, atol=1e-10)
    assert np.max(np.abs(x - ref.x)) < 1e-8
    assert float(res.fun) < 1e-14
    assert res.nit <= 200


def test_rosenbrock_default_finite_differences(xp, device):
    """jac=None: 2-point gradient, Hessian by central differences of it.

    The 2-point gradient has error O(sqrt(eps) |f''|) ~ 1e-5 near the
    minimizer, so the solution is accurate to about 1e-5 (as scipy's BFGS
    with a 2-point gradient); "3-point" reaches ~1e-8.
    """
    skip_slow_on_dask(xp, "nested finite differences (approx_derivative on dask is tested in test_numdiff)")
    x0 = asarr(xp, device, [-1.2, 1.0])
    res = ao.minimize(rosen, x0)
    assert res.success, res.message
    np.testing.assert_allclose(to_numpy(res.x), [1.0, 1.0], atol=5e-5)
    ref = so.minimize(so.rosen, [-1.2, 1.0], method="BFGS")  # 2-point gradient
    assert np.max(np.abs(to_numpy(res.x) - ref.x)) < 5e-5
    res3 = ao.minimize(rosen, x0, jac="3-point")
    assert res3.success, res3.message
    np.testing.assert_allclose(to_numpy(res3.x), [1.0, 1.0], atol=1e-7)
    # newton-cg with directional differences of the finite-difference gradient
    rcg = ao.minimize(rosen, x0, method="newton-cg", jac="3-point")
    assert rcg.success, rcg.message
    np.testing.assert_allclose(to_numpy(rcg.x), [1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        dict(jac=True),
        dict(jac=rosen_der, hessp=rosen_hessp),  # Newton from n products
        dict(jac=rosen_der),  # 2-point differences of the gradient
        dict(jac=rosen_der, hess="3-point"),
        dict(jac=rosen_der, hess=rosen_hess, method="newton-cg"),
        dict(jac=rosen_der, method="newton-cg"),  # directional differences
        dict(jac="cs", hess="2-point"),
    ],
    ids=["jac=True", "hessp", "fd-hess", "3-point-hess", "cg-dense-hess", "cg-fd-hvp", "cs"],
)
def test_derivative_sources(xp, device, kw):
    kw = dict(kw)
    f = rosen
    if kw.get("jac") is True:
        f = lambda x: (rosen(x), rosen_der(x))  # noqa: E731
    if kw.get("method") == "newton-cg" or kw.get("jac") == "cs":
        skip_slow_on_dask(xp, "this derivative source (covered by rosenbrock_2d on dask)")
    x0 = asarr(xp, device, [-1.2, 1.0])
    res = ao.minimize(f, x0, **kw)
    assert res.success, res.message
    tol = 1e-6
    np.testing.assert_allclose(to_numpy(res.x), [1.0, 1.0], atol=tol)


def test_float32(xp, device):
    """float32 in, float32 out; tolerance 1e-3.

    The default gtol is sqrt(eps32) = 3.5e-4; near (1, 1) the smallest
    Hessian eigenvalue is 0.4 and rounding of f ~ 1e-7 relative, so about
    three correct digits is what float32 allows.
    """
    x0 = asarr(xp, device, [-1.2, 1.0], dtype=xp.float32)
    runs = [dict(jac=rosen_der, hess=rosen_hess), dict(method="newton-cg", jac=rosen_der, hessp=rosen_hessp)]
    if is_backend(xp, "dask"):
        runs = runs[:1]  # Newton-CG float32 on dask: see skip_slow_on_dask
    for kw in runs:
        res = ao.minimize(rosen, x0, **kw)
        assert res.x.dtype == xp.float32
        assert res.jac.dtype == xp.float32
        assert res.success, res.message
        np.testing.assert_allclose(to_numpy(res.x), [1.0, 1.0], atol=1e-3)


# ---------------------------------------------------------------------------
# Quadratic: one Newton step


def _ill_quadratic(n=10, cond=1e6, seed=1):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    A = Q @ np.diag(np.logspace(0, math.log10(cond), n)) @ Q.T
    A = 0.5 * (A + A.T)
    b = rng.normal(size=n)
    return A, b


def test_ill_conditioned_quadratic_one_newton_step(xp, device):
    A, b = _ill_quadratic()
    Ax, bx = asarr(xp, device, A), asarr(xp, device, b)

    def f(x):
        return 0.5 * _ns(x).sum(x * (Ax @ x)) - _ns(x).sum(bx * x)

    x0 = asarr(xp, device, np.ones(10))
    res = ao.minimize(f, x0, jac=lambda x: Ax @ x - bx, hess=lambda x: Ax)
    xs = np.linalg.solve(A, b)
    assert res.success, res.message
    # One exact Newton step: the gradient left is rounding, ~eps cond |x| ~ 1e-10,
    # far below the default gtol 1.5e-8, whatever the platform's BLAS.
    assert res.nit == 1
    assert res.nhev == 2  # the step's Hessian, and the curvature test at the answer
    assert np.max(np.abs(to_numpy(res.x) - xs)) / np.max(np.abs(xs)) < 1e-9
    # Newton-CG reaches it too (CG needs more products on cond 1e6). gtol=1e-10
    # is at the rounding level of this problem's gradient (eps * cond * |x| ~
    # 1e-10), so whether the gradient test fires or the line search stops on
    # precision loss (status 3, documented) depends on the last bits of a BLAS
    # reduction: assert the answer, and one of those two statuses.
    rcg = ao.minimize(
        f, x0, method="newton-cg", jac=lambda x: Ax @ x - bx, hessp=lambda x, p: Ax @ p,
        options={"gtol": 1e-10},
    )
    assert rcg.status in (0, 2, 3), rcg.message
    assert rcg.success == (rcg.status in (0, 2))
    assert np.max(np.abs(to_numpy(rcg.x) - xs)) / np.max(np.abs(xs)) < 1e-8


# ---------------------------------------------------------------------------
# Nonconvex: indefinite Hessians


def double_well(x):
    xp = _ns(x)
    return xp.sum(0.25 * x**4 - 0.5 * x**2) + 0.1 * xp.sum((x[1:] - x[:-1]) ** 2)


def double_well_der(x):
    xp = _ns(x)
    g = x**3 - x
    dx = x[1:] - x[:-1]
    zero = xp.zeros((1,), dtype=x.dtype, device=array_api_compat.device(x))
    return g + 0.2 * (xp.concat([zero, dx]) - xp.concat([dx, zero]))


def double_well_hessp(x, p):
    xp = _ns(x)
    dp = p[1:] - p[:-1]
    zero = xp.zeros((1,), dtype=x.dtype, device=array_api_compat.device(x))
    return (3 * x**2 - 1) * p + 0.2 * (xp.concat([zero, dp]) - xp.concat([dp, zero]))


def double_well_hess(x):
    xp = _ns(x)
    n = x.shape[0]
    dev = array_api_compat.device(x)
    eye = xp.eye(n, dtype=x.dtype, device=dev)
    L = 2 * eye - xp.eye(n, k=1, dtype=x.dtype, device=dev) - xp.eye(n, k=-1, dtype=x.dtype, device=dev)
    idx = xp.arange(n, device=dev)
    ends = xp.astype((idx == 0) | (idx == n - 1), x.dtype)
    return eye * (3 * x**2 - 1)[:, None] + 0.2 * (L - eye * ends[:, None])


@pytest.mark.parametrize("case", ["newton", "newton-pinv", "newton-cg", "newton-cg-tr"])
def test_nonconvex_indefinite(xp, device, case):
    """Start at a saddle region: the Hessian at x0 is indefinite.

    Pure Newton would go to the stationary point x = 0 (a saddle / maximum);
    the modified Newton / Newton-CG methods must reach a local minimizer
    (gradient ~ 0, positive definite Hessian) with a lower value than x0's.
    """
    n = 6
    start = np.array([0.05, -0.02, 0.1, 0.0, -0.08, 0.03])
    x0 = asarr(xp, device, start)
    kw = dict(jac=double_well_der, options={"history": True, "gtol": 1e-10})
    if case.startswith("newton-cg"):
        kw.update(method="newton-cg", hessp=double_well_hessp)
        if case == "newton-cg-tr":
            kw["options"]["globalization"] = "trust-region"
    else:
        kw.update(hess=double_well_hess)
        if case == "newton-pinv":
            kw["options"]["solver"] = "pinv"
    H0 = to_numpy(double_well_hess(x0))
    assert np.min(np.linalg.eigvalsh(H0)) < 0  # indefinite at x0
    res = ao.minimize(double_well, x0, **kw)
    assert res.success, res.message
    x = to_numpy(res.x)
    assert np.max(np.abs(to_numpy(double_well_der(res.x)))) < 1e-8
    assert np.min(np.linalg.eigvalsh(to_numpy(double_well_hess(res.x)))) > 0
    assert float(res.fun) < float(double_well(x0)) - 0.1
    if case.startswith("newton") and not case.startswith("newton-cg"):
        assert res.history["tau"][0] > 0  # the Hessian was modified
    # Agreement with scipy where it lands in the same minimum (trust-ncg
    # follows negative curvature as our trust-region variant does).
    ref = so.minimize(
        lambda z: float(double_well(z)), start, jac=lambda z: double_well_der(z),
        hessp=lambda z, p: double_well_hessp(z, p), method="trust-ncg", options={"gtol": 1e-10},
    )
    if np.max(np.abs(np.sign(ref.x) - np.sign(x))) == 0:
        np.testing.assert_allclose(x, ref.x, atol=1e-7)
    else:  # another local minimum: both must be local minima
        assert ref.fun < float(double_well(x0)) - 0.1


# ---------------------------------------------------------------------------
# Affine invariance


def _softplus_problem(n=4, m=7, seed=3):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(m, n))
    c = rng.normal(size=m)
    A = rng.normal(size=(n, n)) + 2 * np.eye(n)
    b = rng.normal(size=n)
    return M, c, A, b


def test_affine_invariance(xp, device):
    """For g(y) = f(Ay + b), Newton's iterates satisfy x_k = A y_k + b.

    f is strictly convex (softplus terms plus 0.05 |x|^2), so every Hessian
    met is positive definite and no modification enters; the backtracking
    line search only sees invariant quantities (f values and g^T p). Plain
    gradient descent with the same step does not satisfy the relation.
    """
    M, c, A, b = _softplus_problem()
    Mx, cx, Ax, bx = (asarr(xp, device, a) for a in (M, c, A, b))
    mu = 0.05

    def sig(z):
        return 1.0 / (1.0 + _ns(z).exp(-z))

    def f(x):
        xp_ = _ns(x)
        return xp_.sum(xp_.logaddexp(xp_.zeros_like(cx), Mx @ x - cx)) + 0.5 * mu * xp_.sum(x * x)

    def fg(x):
        return Mx.T @ sig(Mx @ x - cx) + mu * x

    def fh(x):
        s = sig(Mx @ x - cx)
        eye = _ns(x).eye(x.shape[0], dtype=x.dtype, device=array_api_compat.device(x))
        return Mx.T @ (Mx * (s * (1 - s))[:, None]) + mu * eye

    def g(y):
        return f(Ax @ y + bx)

    def gg(y):
        return Ax.T @ fg(Ax @ y + bx)

    def gh(y):
        return Ax.T @ fh(Ax @ y + bx) @ Ax

    y0_np = np.full(4, 3.0)
    x0_np = A @ y0_np + b
    y0 = asarr(xp, device, y0_np)
    x0 = asarr(xp, device, x0_np)
    opts = {"history": True}
    rx = ao.minimize(f, x0, jac=fg, hess=fh, options=opts)
    ry = ao.minimize(g, y0, jac=gg, hess=gh, options=opts)
    assert rx.success and ry.success, (rx.message, ry.message)
    hx, hy = rx.history, ry.history
    k = min(len(hx["x"]), len(hy["x"]))
    assert k >= 5
    assert min(hx["alpha"]) < 1  # the line search did backtrack
    assert all(t == 0 for t in hx["tau"])  # pure Newton steps
    np.testing.assert_allclose(hx["alpha"][: k - 1], hy["alpha"][: k - 1], rtol=1e-8)
    scale = max(1.0, np.max(np.abs(x0_np)))
    for i in range(k):
        xi = to_numpy(hx["x"][i])
        yi = A @ to_numpy(hy["x"][i]) + b
        assert np.max(np.abs(xi - yi)) <= 1e-10 * scale * np.linalg.cond(A), i

    # Gradient descent: x_{k+1} = x_k - eta grad f(x_k) is not invariant.
    eta = 0.1
    xk, yk = x0, y0
    for _ in range(10):
        xk = xk - eta * fg(xk)
        yk = yk - eta * gg(yk)
    viol = np.max(np.abs(to_numpy(xk) - (A @ to_numpy(yk) + b)))
    assert viol > 1e-2, viol


# ---------------------------------------------------------------------------
# Singular Hessian: the seed's pseudo-inverse


def test_pinv_singular_hessian(xp, device):
    """f = (x0 + x1 - 1)^2 + x2^2 has a singular Hessian everywhere.

    The Moore-Penrose step -H^+ g is the minimum-norm Newton step: from
    (0.3, -0.5, 2) it reaches the minimizer (0.9, 0.1, 0) closest to x0 in
    ONE iteration. The default (modified Cholesky) also converges.
    """

    def f(x):
        return (x[0] + x[1] - 1.0) ** 2 + x[2] ** 2

    def jac(x):
        xp_ = _ns(x)
        s = 2 * (x[0:1] + x[1:2] - 1.0)
        return xp_.concat([s, s, 2 * x[2:3]])

    H = asarr(xp, device, [[2, 2, 0], [2, 2, 0], [0, 0, 2]])
    x0 = asarr(xp, device, [0.3, -0.5, 2.0])
    res = ao.minimize(f, x0, jac=jac, hess=lambda x: H, options={"solver": "pinv"})
    assert res.success, res.message
    assert res.nit == 1
    np.testing.assert_allclose(to_numpy(res.x), [0.9, 0.1, 0.0], atol=1e-12)  # 1e-12: SVD-based pinv differs by backend in the last bits
    res2 = ao.minimize(f, x0, jac=jac, hess=lambda x: H)
    assert res2.success, res2.message
    assert abs(float(res2.fun)) < 1e-14
    # the null-space component of x0 (x0 - x1 = 0.8) is untouched
    x2 = to_numpy(res2.x)
    assert abs((x2[0] - x2[1]) - 0.8) < 1e-10


# ---------------------------------------------------------------------------
# Autodiff


def test_autodiff(xp, device):
    x0 = asarr(xp, device, [-1.2, 1.0])
    if not (is_backend(xp, "torch") or is_backend(xp, "jax")):
        with pytest.raises(AutodiffUnavailableError, match="torch or JAX") as ei:
            ao.minimize(rosen, x0, jac="autodiff")
        assert isinstance(ei.value, TypeError) and isinstance(ei.value, ValueError)
        name = getattr(xp, "__name__", "").removeprefix("array_api_compat.").split(".")[0]
        assert name in str(ei.value)
        with pytest.raises(TypeError, match="autodiff"):
            ao.minimize(rosen, x0, jac=rosen_der, hess="autodiff")
        return
    r1 = ao.minimize(rosen, x0, jac="autodiff")  # Hessian by autodiff too
    r2 = ao.minimize(rosen, x0, method="newton-cg", jac="autodiff")  # autodiff hvp
    r3 = ao.minimize(rosen, x0, method="newton-cg", jac=rosen_der, hessp="autodiff")
    for r in (r1, r2, r3):
        assert r.success, r.message
        np.testing.assert_allclose(to_numpy(r.x), [1.0, 1.0], atol=1e-9)
    assert r1.nhev > 0 and r2.nhev > 0
    # same iterates as the analytic derivatives (autodiff and the hand-written
    # formulas differ in the last bits, so the iterate that first passes gtol
    # may differ by one: compare the common iterates, not the count exactly)
    ra = ao.minimize(rosen, x0, jac=rosen_der, hess=rosen_hess, options={"history": True})
    rh = ao.minimize(rosen, x0, jac="autodiff", options={"history": True})
    assert abs(rh.nit - ra.nit) <= 1
    for xa, xb in zip(ra.history["x"], rh.history["x"]):
        np.testing.assert_allclose(to_numpy(xb), to_numpy(xa), rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------
# Results, history, callback


def test_history_callback_maxiter(xp, device):
    x0 = asarr(xp, device, [-1.2, 1.0])
    x0_before = to_numpy(x0).copy()
    seen = []
    res = ao.minimize(
        rosen, x0, jac=rosen_der, hess=rosen_hess, maxiter=3,
        callback=lambda xk: seen.append(to_numpy(xk)), options={"history": True},
    )
    assert res.status == 1 and res.success is False
    assert "Maximum number of iterations" in res.message
    assert res.nit == 3 and len(seen) == 3
    h = res.history
    assert len(h["x"]) == 4 and len(h["fun"]) == 4 and len(h["alpha"]) == 3
    assert h["fun"] == sorted(h["fun"], reverse=True)  # monotone decrease
    np.testing.assert_array_equal(to_numpy(x0), x0_before)  # input untouched

    def stop(intermediate_result):
        assert set(intermediate_result) >= {"x", "fun", "jac", "nit"}
        if intermediate_result.nit == 2:
            raise StopIteration

    r = ao.minimize(rosen, x0, jac=rosen_der, hess=rosen_hess, callback=stop)
    assert r.status == 99 and not r.success and r.nit == 2

    # stationary start: 0 iterations
    r0 = ao.minimize(rosen, asarr(xp, device, [1.0, 1.0]), jac=rosen_der, hess=rosen_hess)
    assert r0.success and r0.nit == 0


def test_args(xp, device):
    def f(x, a, b):
        return _ns(x).sum((x - a) ** 2) * b

    def jac(x, a, b):
        return 2 * b * (x - a)

    x0 = asarr(xp, device, [0.0, 0.0, 0.0])
    a = asarr(xp, device, [1.0, -2.0, 3.0])
    for m in ("newton", "newton-cg"):
        res = ao.minimize(f, x0, method=m, jac=jac, args=(a, 3.0))
        assert res.success, res.message
        np.testing.assert_allclose(to_numpy(res.x), [1.0, -2.0, 3.0], atol=1e-7)


# ---------------------------------------------------------------------------
# Bad input


def test_bad_input(xp, device):
    x0 = asarr(xp, device, [-1.2, 1.0])
    with pytest.raises(ValueError, match="1-D"):
        ao.minimize(rosen, asarr(xp, device, [[-1.2, 1.0]]), jac=rosen_der)
    with pytest.raises(ValueError, match="method"):
        ao.minimize(rosen, x0, method="bfgs")
    with pytest.raises(ValueError, match=r"jac must return .*shape \(n,\)"):
        ao.minimize(rosen, x0, jac=lambda x: rosen_der(x)[:1])
    with pytest.raises(ValueError, match=r"hess must return .*\(n, n\)"):
        ao.minimize(rosen, x0, jac=rosen_der, hess=lambda x: rosen_hess(x)[:1, :])
    with pytest.raises(ValueError, match="hessp must return"):
        ao.minimize(rosen, x0, method="newton-cg", jac=rosen_der, hessp=lambda x, p: p[:1])
    with pytest.raises(ValueError, match="scalar"):
        ao.minimize(lambda x: x * 2.0, x0, jac=rosen_der)
    with pytest.raises(ValueError, match="jac must be"):
        ao.minimize(rosen, x0, jac="4-point")
    with pytest.raises(ValueError, match="solver"):
        ao.minimize(rosen, x0, jac=rosen_der, options={"solver": "lu"})
    with pytest.raises(TypeError, match="complex"):
        ao.minimize(rosen, asarr(xp, device, [1, 2], dtype=xp.complex128), jac=rosen_der)
    # non-finite objective at x0
    with pytest.raises(ValueError, match=r"fun\(x0\) is not finite"):
        ao.minimize(lambda x: _ns(x).sum(x) * math.nan, x0, jac=rosen_der)
    with pytest.raises(ValueError, match=r"fun\(x0\) is not finite"):
        ao.minimize(lambda x: _ns(x).sum(x) + math.inf, x0)

    # fun raising at x0: a RuntimeError naming fun, the original as its cause;
    # at later points the exception propagates unchanged
    class Boom(KeyError):
        pass

    def bad(x):
        raise Boom("from user code")

    with pytest.raises(Boom, match="from user code") as ei:
        ao.minimize(bad, x0, jac=rosen_der)
    if sys.version_info >= (3, 11):
        assert ei.value.__notes__ == ["agnopt: raised while evaluating fun (and its gradient) at x0"]

    calls = []

    def bad_later(x):
        calls.append(1)
        if len(calls) > 2:
            raise Boom("later")
        return rosen(x)

    with pytest.raises(Boom, match="later"):
        ao.minimize(bad_later, x0, jac=rosen_der, hess=rosen_hess)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("method", ["newton", "newton-cg", "newton-cg-tr"])
def test_nonfinite_trial_point_is_rejected(xp, device, method):
    """f(x) = x - log(x) from x = 3: the full Newton step lands at x = -3
    where f is NaN; the step is rejected and shortened (alpha = 1/4 lands at
    1.5), and the solver goes on to x = 1."""

    def f(x):
        xp_ = _ns(x)
        return xp_.sum(x - xp_.log(x))

    def jac(x):
        return 1.0 - 1.0 / x

    def hess(x):
        return _ns(x).reshape(1.0 / x**2, (1, 1))

    x0 = asarr(xp, device, [3.0])
    opts = {"history": True}
    if method == "newton":
        kw = dict(hess=hess)
    else:
        kw = dict(method="newton-cg", hessp=lambda x, p: p / x**2)
        if method == "newton-cg-tr":
            opts.update(globalization="trust-region", initial_trust_radius=10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = ao.minimize(f, x0, jac=jac, options=opts, **kw)
    assert res.success, res.message
    np.testing.assert_allclose(to_numpy(res.x), [1.0], atol=1e-8)
    if method != "newton-cg-tr":
        assert res.history["alpha"][0] == 0.25
        np.testing.assert_allclose(to_numpy(res.history["x"][1]), [1.5])


# ---------------------------------------------------------------------------
# The checked Cholesky (agnopt._core.linalg) and the faults seen on GPUs.
# These inject each backend behaviour on the CPU, through the namespace that
# minimize uses (array_api_compat.numpy / .torch), so no GPU is needed.


def _partial_cholesky(A, variant):
    """What cuSOLVER's potrf leaves when CuPy ignores its ``info``: the leading
    block factorized up to the first failing pivot k, then (variant)
    "negative": the non-positive pivot stored at L[k, k] (LAPACK's rule);
    "nan": sqrt of it (NaN); "untouched": the trailing block left as A's lower
    triangle (positive diagonal; only the residual check can see it)."""
    A = np.array(A, dtype=np.float64)
    n = A.shape[0]
    L = np.tril(A).copy()
    for k in range(n):
        piv = A[k, k] - np.sum(L[k, :k] ** 2)
        if piv <= 0:
            if variant == "negative":
                L[k, k] = piv
            elif variant == "nan":
                L[k, k] = np.nan  # sqrt of a non-positive pivot
            return L
        L[k, k] = np.sqrt(piv)
        for i in range(k + 1, n):
            L[i, k] = (A[i, k] - np.sum(L[i, :k] * L[k, :k])) / L[k, k]
    return L


def _generic_path(monkeypatch):
    """The fault-injection tests model a backend without a fast path: the
    checked Cholesky goes through ``xl.linalg`` (patched by the test)."""
    from agnopt._core import linalg as la

    monkeypatch.setattr(la, "_fast_kind", lambda xl: None)


def _cpu_namespace(name):
    if name == "torch":
        torch = pytest.importorskip("torch")
        import array_api_compat.torch as xt

        return xt, (lambda a: torch.asarray(a)), (lambda t: t.numpy())
    import array_api_compat.numpy as xn

    from agnopt._core.backend import native_namespace

    # the namespace minimize computes with on NumPy (its own, not the wrapper)
    return native_namespace(xn), np.asarray, np.asarray


@pytest.mark.parametrize("variant", ["negative", "nan", "untouched"])
@pytest.mark.parametrize("ns", ["numpy", "torch"])
def test_checked_cholesky_rejects_a_partial_factor(monkeypatch, ns, variant):
    """CuPy's cholesky returns a partial factor for an indefinite matrix; the
    old check (finite, diag(L)**2 not tiny) accepted the negative-pivot one,
    so Newton skipped its Hessian modification."""
    _generic_path(monkeypatch)
    from agnopt._core.linalg import cholesky

    xl, to, back = _cpu_namespace(ns)
    A = np.array([[4.0, 2.0, 0.0], [2.0, -3.0, 1.0], [0.0, 1.0, 5.0]])  # indefinite
    monkeypatch.setattr(xl.linalg, "cholesky", lambda M: to(_partial_cholesky(back(M), variant)))
    assert cholesky(xl, to(A)) is None
    # a positive definite matrix still factorizes through the same fake
    B = A + 5.0 * np.eye(3)
    L = cholesky(xl, to(B))
    assert L is not None
    np.testing.assert_allclose(back(L) @ back(L).T, B, rtol=1e-14, atol=1e-14)


def coupled(x):
    """0.5 |x|^2 + 2 x0 x1 + (x0^4 + x1^4) / 4: the Hessian at 0, [[1, 2], [2, 1]],
    is indefinite with a positive diagonal (so only a factorization can tell);
    minima at +-(1, -1) with f = -0.5, a saddle at 0."""
    xp = _ns(x)
    return 0.5 * xp.sum(x * x) + 2.0 * x[0] * x[1] + 0.25 * xp.sum(x**4)


def coupled_der(x):
    xp = _ns(x)
    return x + 2.0 * xp.flip(x) + x**3


def coupled_hess(x):
    xp = _ns(x)
    dev = array_api_compat.device(x)
    anti = xp.asarray([[0.0, 2.0], [2.0, 0.0]], dtype=x.dtype, device=dev)
    eye = xp.eye(2, dtype=x.dtype, device=dev)
    return eye * (1.0 + 3.0 * x**2)[:, None] + anti


@pytest.mark.parametrize("variant", ["negative", "nan", "untouched"])
@pytest.mark.parametrize("ns", ["numpy", "torch"])
def test_newton_modifies_the_hessian_under_cupy_cholesky(monkeypatch, ns, variant):
    """Newton with a non-raising (CuPy-like) cholesky still sees that the
    Hessian is indefinite, adds the shift and ends at a minimum."""
    _generic_path(monkeypatch)
    xl, to, back = _cpu_namespace(ns)
    monkeypatch.setattr(xl.linalg, "cholesky", lambda M: to(_partial_cholesky(back(M), variant)))
    x0 = to(np.array([0.1, 0.05]))
    assert np.min(np.linalg.eigvalsh(back(coupled_hess(x0)))) < 0
    res = ao.minimize(coupled, x0, jac=coupled_der, hess=coupled_hess, options={"history": True})
    assert res.success, res.message
    assert res.history["tau"][0] > 0  # the first Hessian was modified
    np.testing.assert_allclose(np.abs(back(res.x)), [1.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(float(res.fun), -0.5, atol=1e-12)


@pytest.mark.parametrize("where", ["cholesky", "solve"])
@pytest.mark.parametrize("ns", ["numpy", "torch"])
def test_device_errors_in_linear_algebra_propagate(monkeypatch, ns, where):
    """On the GPU run, cuSOLVER/cuBLAS handle creation failed for lack of memory;
    the Newton step caught every exception as 'not positive definite' and
    fell back to steepest descent (Rosenbrock stuck at maxiter near
    (1.037, 1.075), the singular-Hessian case in 18 steps instead of 1, the
    n = 100 case past its timeout). Only the backend's LinAlgError means
    'not positive definite'; anything else propagates."""
    _generic_path(monkeypatch)
    xl, to, back = _cpu_namespace(ns)

    class DeviceError(RuntimeError):
        pass

    def boom(*a, **k):
        raise DeviceError("CUDA error: out of memory")

    monkeypatch.setattr(xl.linalg, where, boom)
    x0 = to(np.array([-1.2, 1.0]))
    with pytest.raises(DeviceError, match="out of memory"):
        ao.minimize(rosen, x0, jac=rosen_der, hess=rosen_hess)


@pytest.mark.parametrize("ns", ["numpy", "torch"])
def test_device_errors_in_fast_paths_propagate(monkeypatch, ns):
    """The same on the fast paths (scipy.linalg for NumPy, torch.cholesky_solve)."""
    xl, to, back = _cpu_namespace(ns)

    class DeviceError(RuntimeError):
        pass

    def boom(*a, **k):
        raise DeviceError("CUDA error: out of memory")

    if ns == "numpy":
        sl = pytest.importorskip("scipy.linalg")
        targets = [(sl, "cholesky"), (sl, "cho_solve")]
    else:
        import torch

        targets = [(xl.linalg, "cholesky"), (torch, "cholesky_solve")]
    for mod, name in targets:
        with monkeypatch.context() as m:
            m.setattr(mod, name, boom)
            with pytest.raises(DeviceError, match="out of memory"):
                ao.minimize(rosen, to(np.array([-1.2, 1.0])), jac=rosen_der, hess=rosen_hess)


@pytest.mark.parametrize("ns", ["numpy", "torch"])
def test_linalg_error_still_means_not_positive_definite(monkeypatch, ns):
    """The backend's own LinAlgError (numpy's, torch's) is what the checked
    Cholesky catches: the modified-Cholesky path then shifts the Hessian."""
    _generic_path(monkeypatch)
    from agnopt._core.linalg import cholesky, linalg_errors

    xl, to, back = _cpu_namespace(ns)
    real = xl.linalg.cholesky
    err = [e for e in linalg_errors() if ns in e.__module__] or list(linalg_errors())
    calls = []

    def flaky(M):  # the first call fails as the backend does for an indefinite matrix
        calls.append(1)
        if len(calls) == 1:
            raise err[0]("not positive definite")
        return real(M)

    monkeypatch.setattr(xl.linalg, "cholesky", flaky)
    assert cholesky(xl, to(np.eye(2))) is None
    assert cholesky(xl, to(np.eye(2))) is not None


def test_checked_cholesky_raises_on_cupy(monkeypatch):
    """On CuPy the factorization runs under cupyx.errstate(linalg="raise")."""
    import sys
    import types

    import array_api_compat.numpy as xn

    from agnopt._core import linalg as la

    entered = []

    class _State:
        def __init__(self, **kw):
            self.kw = kw

        def __enter__(self):
            entered.append(self.kw)

        def __exit__(self, *exc):
            return False

    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(errstate=_State))
    monkeypatch.setattr(la.array_api_compat, "is_cupy_namespace", lambda xp: xp is xn)
    assert la.cholesky(xn, np.eye(3)) is not None
    assert entered == [{"linalg": "raise"}]


def test_negative_gradient_norm_from_the_device_raises():
    """A broken CUDA context returned max(|g|) = -88 (the buffer of g, abs never
    ran): gtol was 'met' at x0 and minimize reported success. Impossible values
    raise instead."""
    from agnopt._minimize.common import _gnorm

    class Garbage:  # abs() that leaves its output unwritten: returns g itself
        abs = staticmethod(lambda g: g)
        max = staticmethod(np.max)

    with pytest.raises(RuntimeError, match="negative"):
        _gnorm(Garbage, np.array([-215.6, -88.0]))
    import array_api_compat.numpy as xn

    assert _gnorm(xn, np.array([-215.6, -88.0])) == 215.6


# ---------------------------------------------------------------------------
# Saddle points and maxima (issue 12, item 5)


def saddle(x):
    """x0^2 - x1^2 + x1^4 / 4: a saddle at 0 (f = 0), minima at (0, +-sqrt(2)), f = -1."""
    xp = _ns(x)
    return x[0] ** 2 - x[1] ** 2 + 0.25 * x[1] ** 4 + 0.0 * xp.sum(x)


def saddle_der(x):
    xp = _ns(x)
    return xp.stack([2.0 * x[0], -2.0 * x[1] + x[1] ** 3])


def saddle_hess(x):
    xp = _ns(x)
    z = 0.0 * x[0]
    return xp.stack([xp.stack([z + 2.0, z]), xp.stack([z, -2.0 + 3.0 * x[1] ** 2])])


def saddle_hessp(x, p):
    return saddle_der_lin(x) * p


def saddle_der_lin(x):
    xp = _ns(x)
    return xp.stack([2.0 + 0.0 * x[0], -2.0 + 3.0 * x[1] ** 2])


SADDLE_RUNS = {
    "newton": dict(hess=saddle_hess),
    "newton-pinv": dict(hess=saddle_hess, options={"solver": "pinv"}),
    "newton-fd-hess": dict(),
    "newton-cg": dict(method="newton-cg", hessp=saddle_hessp),
    "newton-cg-dense-hess": dict(method="newton-cg", hess=saddle_hess),
    "newton-cg-fd-hvp": dict(method="newton-cg"),
    "newton-cg-tr": dict(method="newton-cg", hessp=saddle_hessp, options={"globalization": "trust-region"}),
}


@pytest.mark.parametrize("case", list(SADDLE_RUNS))
def test_saddle_is_not_a_minimum(xp, device, case):
    """From the saddle x0 = 0 (gradient exactly 0), every method must leave it
    along the negative curvature and end at a minimum, (0, +-sqrt(2)), f = -1
    (scipy's methods report success at the saddle after 0 iterations)."""
    kw = dict(SADDLE_RUNS[case])
    x0 = asarr(xp, device, [0.0, 0.0])
    res = ao.minimize(saddle, x0, jac=saddle_der, **kw)
    assert res.success, res.message
    assert res.nit >= 1
    x = to_numpy(res.x)
    np.testing.assert_allclose(np.abs(x), [0.0, math.sqrt(2.0)], atol=1e-6)
    np.testing.assert_allclose(float(res.fun), -1.0, atol=1e-10)
    # and from a point near the saddle on its stable manifold (x1 = 0 exactly)
    res2 = ao.minimize(saddle, asarr(xp, device, [0.3, 0.0]), jac=saddle_der, **kw)
    assert res2.success, res2.message
    np.testing.assert_allclose(np.abs(to_numpy(res2.x)), [0.0, math.sqrt(2.0)], atol=1e-6)


@pytest.mark.parametrize("case", ["newton", "newton-cg", "newton-cg-tr"])
def test_maximum_is_not_a_minimum(xp, device, case):
    """f = -|x|^2 + |x|^4 / 4 from its local maximum 0: leave it; minima on |x| = sqrt(2)."""

    def f(x):
        s = _ns(x).sum(x * x)
        return -s + 0.25 * s * s

    def jac(x):
        return (-2.0 + _ns(x).sum(x * x)) * x

    def hessp(x, p):
        xp_ = _ns(x)
        return (-2.0 + xp_.sum(x * x)) * p + 2.0 * x * xp_.sum(x * p)

    def hess(x):
        xp_ = _ns(x)
        n = x.shape[0]
        eye = xp_.eye(n, dtype=x.dtype, device=array_api_compat.device(x))
        return (-2.0 + xp_.sum(x * x)) * eye + 2.0 * x[:, None] * x[None, :]

    x0 = asarr(xp, device, [0.0, 0.0, 0.0])
    if case == "newton":
        kw = dict(hess=hess)
    else:
        kw = dict(method="newton-cg", hessp=hessp)
        if case == "newton-cg-tr":
            kw["options"] = {"globalization": "trust-region"}
    res = ao.minimize(f, x0, jac=jac, **kw)
    assert res.success, res.message
    np.testing.assert_allclose(np.linalg.norm(to_numpy(res.x)), math.sqrt(2.0), atol=1e-6)
    np.testing.assert_allclose(float(res.fun), -1.0, atol=1e-10)


def test_weak_minimum_is_a_minimum(xp, device):
    """f = x^4 at 0: Hessian 0 (semidefinite), a true minimum: success at 0 iterations."""
    x0 = asarr(xp, device, [0.0])
    for kw in (dict(hess=lambda x: _ns(x).reshape(12.0 * x**2, (1, 1))),
               dict(method="newton-cg", hessp=lambda x, p: 12.0 * x**2 * p)):
        res = ao.minimize(lambda x: _ns(x).sum(x**4), x0, jac=lambda x: 4.0 * x**3, **kw)
        assert res.success and res.nit == 0, res.message


# ---------------------------------------------------------------------------
# Inputs scipy accepts, disp, unknown options (issue 15, item 4)


@pytest.mark.parametrize("x0", [[-1.2, 1.0], (-1.2, 1.0), [-1, 1]], ids=["list", "tuple", "int-list"])
def test_list_x0_as_scipy(x0):
    """Lists and tuples become float64 NumPy arrays, as in scipy."""
    res = ao.minimize(rosen, x0, jac=rosen_der, hess=rosen_hess)
    ref = so.minimize(so.rosen, x0, jac=so.rosen_der, hess=so.rosen_hess, method="trust-exact")
    assert isinstance(res.x, np.ndarray) and res.x.dtype == np.float64
    assert res.success, res.message
    np.testing.assert_allclose(res.x, ref.x, atol=1e-7)
    np.testing.assert_allclose(res.x, [1.0, 1.0], atol=1e-9)
    assert x0 == type(x0)(x0)  # not modified


def test_scalar_x0_as_scipy():
    res = ao.minimize(lambda x: np.sum((x - 3.0) ** 2), 1, jac=lambda x: 2.0 * (x - 3.0),
                      hess=lambda x: np.full((1, 1), 2.0))
    assert res.x.shape == (1,) and res.x.dtype == np.float64
    np.testing.assert_allclose(res.x, [3.0])


def test_integer_x0_becomes_float64(xp, device):
    """An integer array becomes float64 of its own backend and device."""
    x0 = xp.asarray([-1, 1], dtype=xp.int64, device=device)
    before = to_numpy(x0).copy()
    res = ao.minimize(rosen, x0, jac=rosen_der, hess=rosen_hess)
    assert res.success, res.message
    assert res.x.dtype == xp.float64
    assert array_api_compat.array_namespace(res.x) is array_api_compat.array_namespace(x0)
    assert array_api_compat.device(res.x) == array_api_compat.device(x0)
    np.testing.assert_allclose(to_numpy(res.x), [1.0, 1.0], atol=1e-9)
    np.testing.assert_array_equal(to_numpy(x0), before)
    assert x0.dtype == xp.int64


@pytest.mark.parametrize("bad", [[[1.0, 2.0], [3.0]], ["a", "b"]], ids=["ragged", "strings"])
def test_bad_list_x0(bad):
    with pytest.raises((TypeError, ValueError), match="x0"):
        ao.minimize(rosen, bad)


def test_unknown_options_warn_as_scipy():
    """scipy warns OptimizeWarning "Unknown solver options: ..." and ignores them."""
    with pytest.warns(so.OptimizeWarning, match="Unknown solver options: gtool"):
        so.minimize(so.rosen, [-1.2, 1.0], method="Newton-CG", jac=so.rosen_der, options={"gtool": 1})
    with pytest.warns(ao.OptimizeWarning, match="Unknown solver options: gtool") as rec:
        res = ao.minimize(rosen, [-1.2, 1.0], jac=rosen_der, hess=rosen_hess, options={"gtool": 1e-3})
    assert res.success
    assert rec[0].filename == __file__  # the warning points at the caller
    base = ao.minimize(rosen, [-1.2, 1.0], jac=rosen_der, hess=rosen_hess)
    np.testing.assert_array_equal(res.x, base.x)  # the unknown key changed nothing


@pytest.mark.parametrize("method", ["newton", "newton-cg"])
def test_disp_prints_the_final_report(capsys, method):
    kw = dict(hess=rosen_hess) if method == "newton" else dict(hessp=rosen_hessp)
    res = ao.minimize(rosen, [-1.2, 1.0], method=method, jac=rosen_der, options={"disp": True}, **kw)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == res.message
    assert out[1:] == [
        f"         Current function value: {float(res.fun):f}",
        f"         Iterations: {res.nit:d}",
        f"         Function evaluations: {res.nfev:d}",
        f"         Gradient evaluations: {res.njev:d}",
        f"         Hessian evaluations: {res.nhev:d}",
    ]
    # scipy's report has the same lines
    so.minimize(so.rosen, [-1.2, 1.0], method="Newton-CG", jac=so.rosen_der,
                hessp=so.rosen_hess_prod, options={"disp": True})
    ref = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in ref[1:]] == [line.split(":")[0] for line in out[1:]]
    # quiet by default
    ao.minimize(rosen, [-1.2, 1.0], method=method, jac=rosen_der, **kw)
    assert capsys.readouterr().out == ""


def test_disp_warns_on_failure(capsys):
    with pytest.warns(ao.OptimizeWarning, match="Maximum number of iterations"):
        res = ao.minimize(rosen, [-1.2, 1.0], jac=rosen_der, hess=rosen_hess, maxiter=2,
                          options={"disp": True})
    assert res.status == 1
    assert capsys.readouterr().out.splitlines()[0].strip().startswith("Current function value")


@pytest.mark.parametrize("n", [1, 5, 60])
def test_cholesky_fast_path_equals_generic(xp, device, n):
    """The backend fast paths of the checked Cholesky and its solve (SciPy for
    NumPy, torch.cholesky_solve, jax.scipy, cupyx) equal the Array API path to
    rounding, and agree on rejection."""
    from agnopt._core.linalg import cho_solve, cholesky

    if is_backend(xp, "dask"):
        pytest.skip("dask: minimize factorizes in-memory chunks (the numpy path)")
    rng = np.random.default_rng(n)
    M = rng.standard_normal((n, n))
    A = M @ M.T / n + 0.1 * np.eye(n)
    b = rng.standard_normal(n)
    Ax, bx = asarr(xp, device, A), asarr(xp, device, b)
    L1, L0 = cholesky(xp, Ax), cholesky(xp, Ax, fast=False)
    assert L1 is not None and L0 is not None
    np.testing.assert_allclose(to_numpy(L1), to_numpy(L0), rtol=1e-12, atol=1e-14)
    x1, x0 = cho_solve(xp, L1, bx), cho_solve(xp, L0, bx, fast=False)
    np.testing.assert_allclose(to_numpy(x1), np.linalg.solve(A, b), rtol=1e-9)
    np.testing.assert_allclose(to_numpy(x1), to_numpy(x0), rtol=1e-10, atol=1e-12)
    if n > 1:
        S = asarr(xp, device, A - 2.0 * np.max(np.linalg.eigvalsh(A)) * np.eye(n) * (np.arange(n) == 0))
        assert cholesky(xp, S) is None and cholesky(xp, S, fast=False) is None


@pytest.mark.parametrize("method,jac", [("newton", "callable"), ("newton", "2-point"),
                                        ("newton-cg", "callable")])
def test_accepted_point_is_not_evaluated_twice(method, jac):
    """The line search's accepted trial value is the new f: fun is called once
    per point (the gradient comes from jac or from differences around that f),
    and nfev counts exactly the calls."""
    calls = []

    def fun(x):
        calls.append(np.array(x, copy=True))
        return rosen(x)

    res = ao.minimize(fun, np.array([-1.2, 1.0]), method=method,
                      jac=rosen_der if jac == "callable" else jac,
                      hess=rosen_hess if method == "newton" else None)
    assert res.success and np.allclose(res.x, 1.0, atol=1e-5)
    assert res.nfev == len(calls)
    if jac == "callable":  # (differences evaluate nearby points, not the same one)
        assert all(not np.array_equal(a, b) for a, b in zip(calls, calls[1:]))


# ---------------------------------------------------------------- per-iteration checks folded
# The Newton iteration no longer scans H for non-finite entries before factorizing
# it (an accepted checked factor proves H finite), the checked Cholesky no longer
# scans L (the residual test rejects any non-finite entry of L or A), and the
# symmetry test of H has a compiled NumPy path. Each must keep the old verdicts.


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_is_symmetric_equals_the_elementwise_comparison(xp, device, dtype):
    from agnopt._core.linalg import is_symmetric

    rng = np.random.default_rng(0)
    M = rng.standard_normal((6, 6))
    S = M + M.T
    cases = {"symmetric": S, "zero": np.zeros((6, 6))}
    a = S.copy(); a[1, 4] += 1e-3; cases["one entry off"] = a
    a = S.copy(); a[5, 0] = -a[0, 5]; cases["sign off"] = a
    a = S.copy(); a[2, 2] = np.nan; cases["nan on the diagonal"] = a
    a = S.copy(); a[1, 3] = a[3, 1] = np.nan; cases["nan pair"] = a
    a = S.copy(); a[1, 3] = a[3, 1] = np.inf; a[0, 0] = -np.inf; cases["inf pair"] = a
    a = S.copy(); a[1, 3], a[3, 1] = 0.0, -0.0; cases["signed zeros"] = a
    a = S.copy(); a[4, 1] = np.inf; cases["inf one side"] = a
    dt = getattr(xp, dtype)
    for name, A in cases.items():
        Ax = asarr(xp, device, A, dt)
        want = bool(np.all(A.astype(dtype) == A.astype(dtype).T))
        assert is_symmetric(xp, Ax) is want, name
    assert is_symmetric(xp, asarr(xp, device, [[1.0]], dt))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("where", ["L off-diagonal inf", "L off-diagonal nan", "A upper inf", "A upper nan",
                                   "A lower inf"])
def test_checked_cholesky_rejects_non_finite_without_a_scan(monkeypatch, fast, where):
    """A factor with a non-finite entry (finite positive pivots), or a matrix with a
    non-finite entry anywhere (the factorization reads one triangle), is rejected."""
    from agnopt._core import linalg as la
    import array_api_compat.numpy as xn

    A = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])
    bad = np.inf if "inf" in where else np.nan
    if where.startswith("L"):
        _generic_path(monkeypatch)

        def fake(M):
            L = np.linalg.cholesky(M)
            L[2, 0] = bad
            return L

        monkeypatch.setattr(xn.linalg, "cholesky", fake)
    elif "upper" in where:
        A[0, 2] = bad
    else:
        A[2, 0] = bad
    assert la.cholesky(xn, A, fast=fast) is None


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("solver", ["cholesky", "pinv"])
def test_newton_non_finite_hessian_is_status_4(xp, device, bad, solver):
    """A Hessian with one non-finite entry (positive diagonal, so the plain factorization
    is tried first) ends the solve with status 4, as before the scan was folded."""

    def f(x):
        return xp.sum(x * x)

    def hess(x):
        H = np.diag([2.0, 2.0, 2.0])
        H[0, 2] = H[2, 0] = bad
        return asarr(xp, device, H)

    res = ao.minimize(f, asarr(xp, device, [1.0, 2.0, 3.0]), jac=lambda x: 2.0 * x, hess=hess,
                      method="newton", options={"solver": solver})
    assert res.status == 4 and not res.success, res.message
    np.testing.assert_array_equal(to_numpy(res.x), [1.0, 2.0, 3.0])
