"""Property-based tests (hypothesis) of determinism and the invariances of the optimizers.

Every property runs on every backend of the matrix with random shapes,
dtypes and seeds. Example counts are explicit (``settings``) and sized so
the whole file runs in well under two minutes on two CPU cores:

=======================================  ========  =====================
property                                  examples  backends
=======================================  ========  =====================
determinism, first order (bitwise)        12        all
determinism, second order (bitwise)       4         all (JAX 1, Dask 1)
update is pure                            12        all
chain of identities is the identity       12        all
Adam invariant to g -> c g (eps = 0)      10        all
sign_sgd == rmsprop(decay=0, eps=0)       15        all
Newton affine invariance                  6         all (JAX 2, Dask 1)
Gauss-Newton == Newton, linear LSQ        6         all (JAX 1, Dask 1)
LM: lambda -> 0 is Gauss-Newton,          10        all (JAX 4, Dask 3)
large lambda is -gradient
=======================================  ========  =====================
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agnopt as ao
from conftest import BackendCase, to_numpy

_HC = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def _settings(n):
    return settings(max_examples=n, deadline=None, suppress_health_check=_HC, derandomize=False)


def _bits(tree):
    out = []
    for leaf in ao.tree_leaves(tree):
        a = np.ascontiguousarray(to_numpy(leaf))
        out.append((a.dtype.str, a.shape, a.tobytes()))
    return out


shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)
dtypes = st.sampled_from(["float32", "float64"])
seeds = st.integers(0, 2**31 - 1)

OPTIMIZERS = {
    "sgd-nesterov-wd": lambda: ao.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adagrad": lambda: ao.adagrad(0.1),
    "rmsprop-centered": lambda: ao.rmsprop(0.01, centered=True, momentum=0.5),
    "adam-amsgrad": lambda: ao.adam(ao.cosine_decay(0.1, 10), amsgrad=True),
    "adamw-clip": lambda: ao.chain(ao.clip_by_global_norm(1.0), ao.adamw(0.1)),
    "guarded-adam": lambda: ao.apply_if_finite(ao.adam(0.1)),
    "sign_sgd": lambda: ao.sign_sgd(0.1),
}
names = st.sampled_from(sorted(OPTIMIZERS))


def _tree(xp, dev, rng, shape, dtype, lo=-2.0, hi=2.0, nonzero=False):
    def arr(shp):
        v = rng.uniform(lo, hi, size=shp)
        if nonzero:
            v = np.where(np.abs(v) < 0.1, 0.1 * np.sign(v) + (v == 0), v)
        return xp.asarray(v, dtype=getattr(xp, dtype), device=dev)

    return {"w": arr(shape), "b": [arr((2,)), arr(shape[:1])]}


def _dask(case):
    return case is BackendCase.DASK


_SEEN: dict = {}


def _over_budget(test, case, budget):
    """True once ``test`` has run ``budget[case]`` examples on this backend.

    JAX (eager dispatch, a compilation per new shape) and Dask (a graph per
    operation) cost 10-100x NumPy per example: they run fewer examples of
    the second-order properties.
    """
    key = (test, case)
    _SEEN[key] = _SEEN.get(key, 0) + 1
    return _SEEN[key] > budget.get(case, 10**9)


_SLOW = {BackendCase.DASK: 1, BackendCase.JAX: 2}
_SLOWEST = {BackendCase.DASK: 1, BackendCase.JAX: 1}


# --------------------------------------------------------------------------- determinism
@_settings(12)
@given(name=names, shape=shapes, dtype=dtypes, seed=seeds)
def test_first_order_is_deterministic(backend, name, shape, dtype, seed):
    """Same inputs -> bitwise-identical updates and states, run twice."""
    case, xp, dev = backend

    def run():
        rng = np.random.default_rng(seed)
        p = _tree(xp, dev, rng, shape, dtype)
        opt = OPTIMIZERS[name]()
        s = opt.init(p)
        for _ in range(3):
            g = _tree(xp, dev, rng, shape, dtype)
            u, s = opt.update(g, s, p)
            p = ao.apply_updates(p, u)
        return p, s

    assert _bits(run()) == _bits(run())


@_settings(4)
@given(seed=seeds, n=st.integers(2, 4))
def test_second_order_is_deterministic(backend, seed, n):
    """minimize and least_squares (batched) give bitwise-identical results, run twice."""
    case, xp, dev = backend
    if _over_budget("det2", case, _SLOWEST):
        return
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n + 3, n))
    y = rng.standard_normal(n + 3)
    x0 = rng.standard_normal((2, n))

    def run():
        Mx, yx = xp.asarray(M, device=dev), xp.asarray(y, device=dev)

        def res(x):  # (B, n) -> (B, m), mildly nonlinear
            xq = array_namespace(x)
            z = xq.matmul(x, xq.matrix_transpose(Mx)) - yx
            return z + 0.1 * xq.sin(z)

        def fun(x):
            xq = array_namespace(x)
            z = xq.matmul(Mx, x) - yx
            return xq.sum(z * z) + 0.1 * xq.sum(xq.cos(x))

        X0 = xp.asarray(x0, device=dev)
        r1 = ao.least_squares(res, X0, batched=True, jac="2-point", max_nfev=8)
        r2 = ao.minimize(fun, X0[0, :], method="newton-cg", maxiter=4)
        return r1.x, r1.cost, r2.x, r2.fun

    assert _bits(run()) == _bits(run())


# --------------------------------------------------------------------------- first-order properties
@_settings(12)
@given(name=names, shape=shapes, dtype=dtypes, seed=seeds)
def test_update_is_pure(backend, name, shape, dtype, seed):
    case, xp, dev = backend
    rng = np.random.default_rng(seed)
    p, g = _tree(xp, dev, rng, shape, dtype), _tree(xp, dev, rng, shape, dtype)
    opt = OPTIMIZERS[name]()
    s = opt.init(p)
    _, s = opt.update(g, s, p)
    before = _bits((p, g, s))
    u1, s1 = opt.update(g, s, p)
    ao.apply_updates(p, u1)
    assert _bits((p, g, s)) == before
    u2, s2 = opt.update(g, s, p)
    assert _bits((u1, s1)) == _bits((u2, s2))


@_settings(12)
@given(k=st.integers(0, 4), shape=shapes, dtype=dtypes, seed=seeds, wrap=st.booleans())
def test_chain_of_identities_is_identity(backend, k, shape, dtype, seed, wrap):
    """chain(identity()*k) returns its input; around Adam it changes nothing."""
    case, xp, dev = backend
    rng = np.random.default_rng(seed)
    p, g = _tree(xp, dev, rng, shape, dtype), _tree(xp, dev, rng, shape, dtype)
    ident = ao.chain(*[ao.identity() for _ in range(k)])
    u, _ = ident.update(g, ident.init(p), p)
    assert _bits(u) == _bits(g)
    if wrap:
        a = ao.adam(0.1)
        b = ao.chain(ao.identity(), ao.chain(*[ao.identity() for _ in range(k)]), ao.adam(0.1), ao.identity())
        ua, _ = a.update(g, a.init(p), p)
        ub, _ = b.update(g, b.init(p), p)
        assert _bits(ua) == _bits(ub)


@_settings(10)
@given(shape=shapes, dtype=dtypes, seed=seeds, log_c=st.floats(-3, 3), b1=st.floats(0, 0.99),
       b2=st.floats(0, 0.999))
def test_adam_invariant_to_gradient_scale(backend, shape, dtype, seed, log_c, b1, b2):
    """With eps = 0, Adam's updates for c * g equal those for g (up to rounding), c > 0."""
    case, xp, dev = backend
    c = 10.0 ** log_c
    rng = np.random.default_rng(seed)
    p = _tree(xp, dev, rng, shape, dtype)
    opt = ao.adam(0.1, b1=b1, b2=b2, eps=0.0)
    s1 = s2 = opt.init(p)
    tol = 1e-12 if dtype == "float64" else 2e-5
    for _ in range(3):
        g = _tree(xp, dev, rng, shape, dtype, nonzero=True)
        u1, s1 = opt.update(g, s1, p)
        u2, s2 = opt.update(ao.tree_map(lambda a: a * c, g), s2, p)
        for a, b in zip(ao.tree_leaves(u1), ao.tree_leaves(u2)):
            np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=tol, atol=0)


@_settings(15)
@given(shape=shapes, dtype=dtypes, seed=seeds, lr=st.floats(1e-4, 1.0))
def test_sign_sgd_equals_rmsprop_decay0_eps0(backend, shape, dtype, seed, lr):
    """sqrt(fl(g*g)) == |g| exactly in binary floating point, so the steps are equal bit for bit."""
    case, xp, dev = backend
    rng = np.random.default_rng(seed)
    p = _tree(xp, dev, rng, shape, dtype)
    a, b = ao.sign_sgd(lr), ao.rmsprop(lr, decay=0.0, eps=0.0)
    sa, sb = a.init(p), b.init(p)
    for _ in range(3):
        g = _tree(xp, dev, rng, shape, dtype, lo=-100.0, hi=100.0, nonzero=True)
        ua, sa = a.update(g, sa, p)
        ub, sb = b.update(g, sb, p)
        assert _bits(ua) == _bits(ub)
        p = ao.apply_updates(p, ua)


# --------------------------------------------------------------------------- second-order properties
def _second_order_examples(case, n):
    return 2 if _dask(case) else n


@_settings(6)
@given(seed=seeds, n=st.integers(2, 4))
def test_newton_affine_invariance(backend, seed, n):
    r"""Newton on f(x) and on g(y) = f(Ay + b): x_k = A y_k + b along the whole run.

    f(x) = sum softplus(Mx) + 0.5 ||x - c||^2 (Hessian positive definite
    everywhere, so no modification kicks in); the Armijo backtracking and its
    interpolation only see f values and g^T p, which are invariant.
    """
    case, xp, dev = backend
    if _over_budget("affine", case, _SLOW):
        return
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n + 2, n)) * 2.0
    cc = rng.standard_normal(n)
    A = np.eye(n) + 0.4 * rng.standard_normal((n, n))
    while np.linalg.cond(A) > 20:
        A = np.eye(n) + 0.4 * rng.standard_normal((n, n))
    bb = rng.standard_normal(n)
    x0 = 3.0 * rng.standard_normal(n)
    y0 = np.linalg.solve(A, x0 - bb)
    Mx, cx, Ax, bx = (xp.asarray(v, device=dev) for v in (M, cc, A, bb))

    def sig(z):
        xq = array_namespace(z)
        return 1.0 / (1.0 + xq.exp(-z))

    def f(x):
        xq = array_namespace(x)
        z = xq.matmul(Mx, x)
        return xq.sum(xq.logaddexp(xq.zeros_like(z), z)) + 0.5 * xq.sum((x - cx) ** 2)

    def fg(x):
        xq = array_namespace(x)
        return xq.matmul(xq.matrix_transpose(Mx), sig(xq.matmul(Mx, x))) + (x - cx)

    def fh(x):
        xq = array_namespace(x)
        s = sig(xq.matmul(Mx, x))
        return xq.matmul(xq.matrix_transpose(Mx) * (s * (1 - s)), Mx) + xq.eye(n, dtype=x.dtype, device=dev)

    def to_x(y):
        xq = array_namespace(y)
        return xq.matmul(Ax, y) + bx

    def g(y):
        return f(to_x(y))

    def gg(y):
        xq = array_namespace(y)
        return xq.matmul(xq.matrix_transpose(Ax), fg(to_x(y)))

    def gh(y):
        xq = array_namespace(y)
        return xq.matmul(xq.matmul(xq.matrix_transpose(Ax), fh(to_x(y))), Ax)

    rx = ao.minimize(f, xp.asarray(x0, device=dev), jac=fg, hess=fh, options={"history": True})
    ry = ao.minimize(g, xp.asarray(y0, device=dev), jac=gg, hess=gh, options={"history": True})
    assert rx.success and ry.success
    hx, hy = rx.history["x"], ry.history["x"]
    k = min(len(hx), len(hy))
    assert abs(len(hx) - len(hy)) <= 1  # only gtol (not invariant) may stop one a step earlier
    for i in range(k):
        np.testing.assert_allclose(to_numpy(to_x(hy[i])), to_numpy(hx[i]), rtol=1e-7, atol=1e-9,
                                   err_msg=f"iterate {i}")
    np.testing.assert_allclose(to_numpy(to_x(ry.x)), to_numpy(rx.x), atol=1e-7)


@_settings(6)
@given(seed=seeds, n=st.integers(1, 4), extra=st.integers(0, 4))
def test_gauss_newton_equals_newton_on_linear_least_squares(backend, seed, n, extra):
    """r(x) = Mx - y: Gauss-Newton's first step and Newton's first step both land on the solution."""
    case, xp, dev = backend
    if _over_budget("gn", case, _SLOWEST):
        return
    rng = np.random.default_rng(seed)
    m = n + extra
    M = rng.standard_normal((m, n))
    while np.linalg.cond(M) > 1e3:
        M = rng.standard_normal((m, n))
    y = rng.standard_normal(m)
    x0 = rng.standard_normal(n)
    xs = np.linalg.lstsq(M, y, rcond=None)[0]
    Mx, yx = xp.asarray(M, device=dev), xp.asarray(y, device=dev)
    first = []

    def cb(x):  # scipy's convention: any other parameter name gets a copy of x
        if not first:
            first.append(to_numpy(x).copy())

    ls = ao.least_squares(lambda x: xp.matmul(Mx, x) - yx, xp.asarray(x0, device=dev),
                          jac=lambda x: Mx, method="gauss-newton", callback=cb)

    def f(x):
        z = xp.matmul(Mx, x) - yx
        return 0.5 * xp.sum(z * z)

    nt = ao.minimize(f, xp.asarray(x0, device=dev), jac=lambda x: xp.matmul(xp.matrix_transpose(Mx), xp.matmul(Mx, x) - yx),
                     hess=lambda x: xp.matmul(xp.matrix_transpose(Mx), Mx), options={"history": True})
    scale = 1e-9 * max(1.0, float(np.max(np.abs(xs))))
    np.testing.assert_allclose(first[0], xs, rtol=0, atol=scale)
    np.testing.assert_allclose(to_numpy(nt.history["x"][1]), xs, rtol=0, atol=scale)
    np.testing.assert_allclose(first[0], to_numpy(nt.history["x"][1]), rtol=0, atol=scale)
    np.testing.assert_allclose(to_numpy(ls.x), xs, atol=scale)
    assert nt.nit == 1


@_settings(10)
@given(seed=seeds, n=st.integers(1, 4), extra=st.integers(0, 3), dtype=dtypes)
def test_levenberg_marquardt_limits(backend, seed, n, extra, dtype):
    r"""The LM step :math:`D p(\lambda) = -V c / (w + \lambda)` of least_squares' linear algebra.

    lambda -> 0: the Gauss-Newton step :math:`-J^+ f`; lambda -> inf:
    :math:`\lambda p \to -J^T f`, the negative gradient (D = I). Uses the
    private hook ``agnopt._least_squares.routes.spectral`` (the decomposition the solver's
    ``lmpar`` works on); least_squares exposes no lambda of its own.
    """
    from agnopt._least_squares.routes import spectral as _spectral

    case, xp, dev = backend
    if _over_budget("lm", case, {BackendCase.DASK: 3, BackendCase.JAX: 4}):
        return
    rng = np.random.default_rng(seed)
    m = n + extra
    J = rng.standard_normal((m, n))
    while np.linalg.cond(J) > 1e2:
        J = rng.standard_normal((m, n))
    F = rng.standard_normal(m)
    dt = getattr(xp, dtype)
    Jx = xp.asarray(J[None], dtype=dt, device=dev)
    Fx = xp.asarray(F[None], dtype=dt, device=dev)
    D = xp.ones((1, n), dtype=dt, device=dev)
    free = xp.ones((1, n), dtype=xp.bool, device=dev)
    w, c, V, good, full_rank, _ = _spectral(xp, Jx, D, Fx, free)

    def step(lam):
        q = c / (w + lam)
        return to_numpy(-xp.matmul(V, q[:, :, None])[0, :, 0])

    wmax = float(xp.max(w))
    tol = 1e-10 if dtype == "float64" else 2e-4
    gn = -np.linalg.lstsq(J, F, rcond=None)[0]
    np.testing.assert_allclose(step(0.0), gn, rtol=tol, atol=tol * np.abs(gn).max())
    small = step(1e-9 * wmax)
    np.testing.assert_allclose(small, gn, rtol=1e-6 if dtype == "float64" else 2e-4, atol=1e-6 * np.abs(gn).max())
    lam = 1e8 * wmax
    big = step(lam) * lam
    grad = J.T @ F
    np.testing.assert_allclose(big, -grad, rtol=1e-6 if dtype == "float64" else 2e-3, atol=1e-6 * np.abs(grad).max())
    assert bool(to_numpy(full_rank)[0])
