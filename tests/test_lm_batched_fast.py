"""The numba row kernels of a batched NumPy Levenberg-Marquardt solve
(agnopt._kernels.lm_batched_cpu) give what the generic blocks give (principle 2:
an optional accelerator, tested equal).

* the verdict on the trial points (:func:`judge_rows`): the same operations in the
  same order on per-problem values: equal bit for bit, float32 and float64;
* the normal equations (:func:`normal_rows`): bit for bit where the generic
  Cholesky factor is the entrywise recurrence (``n <= 6``), to rounding above;
* ``lmpar`` (:func:`lmpar_rows`): to rounding (the generic path's ``numpy.matmul``
  sums in BLAS's order, which depends on the machine, ``n`` and the dtype);
* whole solves (bounds, robust losses, frozen variables, compaction of the working
  set, float32): float64 to 1e-9 relative with the same statuses and counts;
  float32, whose fits end at rounding noise, as close to the float64 solution as
  the generic path's and with the same successes.

A deliberately broken kernel is caught by each comparison.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import agnopt as ao
from agnopt._kernels import lm_batched_cpu as K

pytestmark = pytest.mark.skipif(not K.HAVE_NUMBA, reason="numba not installed")


def _xp():
    import array_api_compat

    from agnopt._core.backend import native_namespace

    return native_namespace(array_api_compat.array_namespace(np.ones(1)))


# --------------------------------------------------------------------------- switches
def test_applies_follows_agnopt_fast(monkeypatch):
    X = np.zeros((100, 4))
    monkeypatch.setenv("AGNOPT_FAST", "0")
    assert not K.applies(X)
    monkeypatch.setenv("AGNOPT_FAST", "numpy")
    assert not K.applies(X)
    monkeypatch.delenv("AGNOPT_FAST")
    assert K.applies(X) and K.applies(X.astype(np.float32))
    assert not K.applies(X[:K.MIN_ROWS - 1])  # a small batch: not worth numba's first use
    assert not K.applies(np.zeros((100, K.MAX_N + 1)))
    assert not K.applies(X.astype(np.float16))
    assert K.applies(X[:3], batch=K.MIN_ROWS)  # a compacted working set of a batch
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    assert K.applies(X[:2]) and not K.applies(X[:1])  # (one problem: lm_cpu)


def test_kernels_are_used(monkeypatch):
    calls = []
    for name in ("normal_rows", "lmpar_rows", "judge_rows", "accel_rows"):
        K._compile()
        fn = getattr(K, name)
        monkeypatch.setattr(K, name, lambda *a, _fn=fn, _n=name: (calls.append(_n), _fn(*a))[1])
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    _fit(np.float64, 8)
    assert {"normal_rows", "lmpar_rows", "judge_rows", "accel_rows"} <= set(calls)
    calls.clear()
    monkeypatch.setenv("AGNOPT_FAST", "0")
    _fit(np.float64, 8)
    assert calls == []


# --------------------------------------------------------------------------- blocks
def _spd(rng, k, n, dt, cond=1e3):
    Q = np.linalg.qr(rng.standard_normal((k, n, n)))[0]
    w = np.exp(rng.uniform(0, np.log(cond), (k, n)))
    return ((Q * w[:, None, :]) @ np.swapaxes(Q, 1, 2)).astype(dt)


def _normal_generic(A0, g, D, free):
    from agnopt._least_squares import routes

    xp = _xp()
    eye = np.eye(g.shape[1], dtype=g.dtype)
    As, gs, L0, well = routes.normal_equations(xp, A0, g, D, free, eye)
    return (np.where(well[:, None, None], As, eye), np.where(well[:, None], gs, 0),
            np.where(well[:, None, None], L0, eye), well)


def _normal_inputs(seed, n, dt):
    rng = np.random.default_rng(seed)
    k = 200
    A0 = _spd(rng, k, n, dt, cond=float(rng.choice([10.0, 1e4, 1e12])))
    A0[::17] = 0  # zero matrices: not factored
    A0[5::31, 0, 0] = -1.0  # an indefinite one
    g = rng.standard_normal((k, n)).astype(dt)
    D = rng.uniform(0.5, 2.0, (k, n)).astype(dt)
    free = rng.random((k, n)) > 0.05
    return A0, g, D, free


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 2, 4, 6, 7, 12, 16])
def test_normal_equations_block(n, dt):
    for seed in range(4):
        args = _normal_inputs(seed, n, dt)
        want = _normal_generic(*args)
        got = K.normal_equations(*args)
        _same_normal(got, want, n)


def _same_normal(got, want, n):
    same = got[3] == want[3]
    for name, u, w in zip(("As", "gs", "Linv0", "well"), got, want):
        assert u.dtype == w.dtype, name
        if n <= 6:  # the entrywise recurrence: the same operations
            np.testing.assert_array_equal(u, w, err_msg=name)
        elif name in ("As", "gs"):
            np.testing.assert_array_equal(u[same], w[same], err_msg=name)
        elif name == "well":  # (a condition bound within rounding of 1e8 could flip)
            assert np.mean(u != w) < 0.02
        else:  # a backward-stable factor: forward errors of eps * cond(As)
            both = got[3] & want[3]
            A, Li = want[0][both], w[both]
            cond = (np.trace(A, axis1=1, axis2=2) * np.sum(Li * Li, axis=(1, 2)))[:, None, None]
            tol = 4 * n * np.finfo(u.dtype).eps * cond
            scale = np.max(np.abs(Li), axis=(-2, -1), keepdims=True)
            assert np.all(np.abs(u[both] - Li) <= tol * scale), name


def _lmpar_case(seed, n, dt):
    from agnopt._least_squares.lmpar import CholeskyBasis

    rng = np.random.default_rng(seed)
    k = 300
    A0 = _spd(rng, k, n, dt, cond=100.0)
    g = rng.standard_normal((k, n)).astype(dt)
    D = rng.uniform(0.5, 2.0, (k, n)).astype(dt)
    As, gs, L0, well = K.normal_equations(A0, g, D, np.ones((k, n), dtype=bool))
    gn = np.linalg.norm(np.linalg.solve(As.astype(np.float64), gs[..., None])[..., 0], axis=-1)
    delta = (gn * rng.choice([1e-3, 0.1, 0.5, 0.95, 1.05, 2.0], k)).astype(dt)
    delta[::13] = 0.0  # a finished problem's radius
    par0 = (rng.uniform(0, 10, k) * (rng.random(k) < 0.5)).astype(dt)
    active = (rng.random(k) < 0.9) & well
    return CholeskyBasis(As, gs, L0, np.eye(n, dtype=dt)), delta, par0, active


def _check_lmpar(got, want, dt):
    par, z, Lf = got
    wpar, wq, wLf = want
    tol = 1e-11 if dt == np.float64 else 3e-4
    assert par.dtype == z.dtype == Lf.dtype == np.dtype(dt)
    np.testing.assert_allclose(par, wpar, rtol=tol, atol=0)
    zn = np.linalg.norm(wq, axis=-1)
    assert np.all(np.linalg.norm(z + wq, axis=-1) <= tol * zn + 1e-30)
    ln = np.max(np.abs(wLf), axis=(-2, -1))
    assert np.all(np.max(np.abs(Lf - wLf), axis=(-2, -1)) <= tol * ln)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 3, 4, 8])
def test_lmpar_block(n, dt):
    from agnopt._least_squares.lmpar import lmpar

    for seed in range(3):
        basis, delta, par0, active = _lmpar_case(seed, n, dt)
        want = lmpar(_xp(), basis, delta, par0, active)
        _check_lmpar(K.lmpar(basis, delta, par0, active), want, dt)


def test_broken_lmpar_is_caught(monkeypatch):
    from agnopt._least_squares.lmpar import lmpar

    basis, delta, par0, active = _lmpar_case(0, 4, np.float64)
    want = lmpar(_xp(), basis, delta, par0, active)
    K._compile()
    fn = K.lmpar_rows

    def broken(As, gs, L0, delta, par0, active, c, par, z, Lf):
        fn(As, gs, L0, delta, par0, active, c, par, z, Lf)
        par *= 1.0 + 1e-9  # a slightly wrong LM parameter

    monkeypatch.setattr(K, "lmpar_rows", broken)
    with pytest.raises(AssertionError):
        _check_lmpar(K.lmpar(basis, delta, par0, active), want, np.float64)


def _judge_case(seed, dt, k=96):
    """A random batch state and trial (every regime of the single-problem test's
    generator, row by row), its route and tolerances."""
    from agnopt._least_squares import engine
    from agnopt._least_squares.problem import Box
    from agnopt._least_squares.state import Trial

    rng = np.random.default_rng(seed)
    xp = _xp()
    n, m = int(rng.integers(1, 5)), 5

    def pick(options, size=k):
        return np.asarray(options, dtype=object)[rng.integers(len(options), size=size)]

    X = rng.standard_normal((k, n)).astype(dt)
    F = rng.standard_normal((k, m)).astype(dt)
    fnorm = np.where(rng.random(k) < 0.1, 0.0, np.where(rng.random(k) < 0.2, 1.0,
                                                          rng.uniform(0.1, 10, k))).astype(dt)
    D = rng.uniform(0.5, 2.0, (k, n)).astype(dt)
    st = engine.initial_state(xp, X, F, fnorm, D)
    st = st._replace(
        g=rng.standard_normal((k, n)).astype(dt), free=np.ones((k, n), dtype=bool),
        delta=np.where(rng.random(k) < 0.1, 0.0, np.where(rng.random(k) < 0.1, 1e-17,
                                                            rng.uniform(0.01, 3, k))).astype(dt),
        par=np.where(rng.random(k) < 0.4, 0.0, rng.uniform(1e-3, 10, k)).astype(dt),
        gnorm=pick([1e-17, 1e-9, 0.3, 0.9]).astype(dt),
        xnorm=rng.uniform(0.1, 5, k).astype(dt), nfev=rng.integers(1, 30, k),
        first=rng.random(k) < 0.5, active=rng.random(k) < 0.85,
        info=np.where(rng.random(k) < 0.1, 1, 0).astype(np.int64))
    bounded = bool(seed % 2)
    if bounded:
        lb = np.where(rng.random(X.shape) < 0.4, X, X - 1).astype(dt)
        ub = np.where(rng.random(X.shape) < 0.4, X, X + 1).astype(dt)
        box = Box(xp, None, True, lb, ub)
    else:
        box = Box(xp, None, False, None, None)
    p = (rng.standard_normal((k, n)) * pick([1e-9, 1e-3, 0.03, 0.1, 1.0])[:, None]).astype(dt)
    fn1 = st.fnorm * pick([0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0, 1.001, 2.0, 20.0]).astype(dt)
    fn1 = np.where(rng.random(k) < 0.1, np.inf, np.where(rng.random(k) < 0.1, np.nan, fn1))
    fn1 = fn1.astype(dt)
    projected = (rng.random(k) < 0.5) if bounded else None
    Xt = st.X + p
    tr = Trial(Xt, rng.standard_normal(F.shape).astype(dt), p,
               xp.linalg.vector_norm(st.D * p, axis=-1), fn1, projected)
    A = rng.standard_normal((n, n))
    route = _Route(xp, (A @ A.T * rng.choice([1e-6, 1.0, 1e3])).astype(dt))
    ftol, xtol = (float(rng.choice([1e-300, 1e-15, 1e-8, 1e-2, 0.5])) for _ in range(2))
    if seed % 3 == 1:  # machine-precision tests
        ftol = xtol = 1e-300
    limited = st.par > 0
    max_nfev = int(rng.integers(1, 40))
    accel = [None, rng.random(k) < 0.5][seed % 2 if seed % 5 else 1]
    v = p if accel is None else (p * rng.uniform(0.5, 1.5, (k, 1))).astype(dt)
    return xp, box, st, tr, route, accel, v, limited, ftol, xtol, max_nfev


class _Route:
    def __init__(self, xp, A):
        self.xp, self.A = xp, A

    def jp_norm2(self, p):
        return self.xp.sum(p * (p @ self.A), axis=-1)


def _same_state(a, b):
    for name, u, w in zip(a._fields, a, b):
        if u is None or w is None:
            assert u is None and w is None, name
            continue
        u, w = np.asarray(u), np.asarray(w)
        assert u.shape == w.shape and u.dtype == w.dtype, name
        np.testing.assert_array_equal(u, w, err_msg=name)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(40))
def test_judge_block(seed, dt):
    from agnopt._least_squares import engine

    case = _judge_case(seed, dt)
    with np.errstate(all="ignore"):
        want = engine.judge(*case)
        got = K.judge(*case, engine.model_step)
    _same_state(got, want)


def test_broken_judge_is_caught(monkeypatch):
    from agnopt._least_squares import engine

    case = _judge_case(3, np.float64)
    with np.errstate(all="ignore"):
        want = engine.judge(*case)
    K._compile()
    c0 = K.constants

    def broken(dtype, ftol=0.0, xtol=0.0):
        c = c0(dtype, ftol, xtol)
        c[K.C_ACCEPT] = 0.26  # the acceptance threshold of the ratio
        return c

    monkeypatch.setattr(K, "constants", broken)
    with np.errstate(all="ignore"):
        got = K.judge(*case, engine.model_step)
    with pytest.raises(AssertionError):
        _same_state(got, want)


# --------------------------------------------------------------------------- whole solves
def _gauss(x, a, mu, s, c):
    d = x - mu
    return a * np.exp((d * d) * (-0.5 / (s * s))) + c


def _gauss_jac(x, a, mu, s, c):
    d = x - mu
    e = np.exp((d * d) * (-0.5 / (s * s)))
    j1 = (e * d) * (a / (s * s))
    return np.stack([e, j1, j1 * (d / s), np.ones_like(e)], axis=-1)


def _data(B, seed=0):
    rng = np.random.default_rng(seed)
    P = np.stack([rng.uniform(1, 3, B), rng.uniform(-1, 1, B), rng.uniform(0.6, 1.5, B),
                  rng.uniform(0, 1, B)], 1)
    x = np.linspace(-5, 5, 50)
    Y = _gauss(x, *(P[:, j:j + 1] for j in range(4))) + 0.05 * rng.standard_normal((B, 50))
    return x, Y


def _fit(dt, B, jac=_gauss_jac, **kw):
    x, Y = _data(B)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ao.curve_fit(_gauss, x.astype(dt), Y.astype(dt), p0=np.array([2.0, 0, 1, 0.5], dt),
                            batched=True, jac=jac, full_output=True, method="lm", **kw)


def _both(monkeypatch, fn):
    out = []
    for mode in ("0", "numba"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(fn())
    return out


def _check64(gen, fast):
    np.testing.assert_array_equal(fast.status, gen.status)
    np.testing.assert_array_equal(fast.nfev, gen.nfev)
    np.testing.assert_array_equal(fast.njev, gen.njev)
    np.testing.assert_allclose(fast.x, gen.x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.cost, gen.cost, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("jac", ["analytic", "default"])
def test_batched_curve_fit_float64(monkeypatch, jac):
    j = _gauss_jac if jac == "analytic" else None
    gen, fast = _both(monkeypatch, lambda: _fit(np.float64, 300, jac=j))
    np.testing.assert_array_equal(fast[2]["status"], gen[2]["status"])
    np.testing.assert_array_equal(fast[2]["nfev"], gen[2]["nfev"])
    np.testing.assert_allclose(fast[0], gen[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast[1], gen[1], rtol=1e-7, atol=1e-14)  # covariances


def _resid(X, Y=_data(200)[1], x=np.linspace(-5, 5, 50)):
    return _gauss(x, *(X[:, j:j + 1] for j in range(4))) - Y[:X.shape[0]]


def _resid_jac(X, x=np.linspace(-5, 5, 50)):
    return _gauss_jac(x, *(X[:, j:j + 1] for j in range(4)))


@pytest.mark.parametrize("case", ["bounds", "bounds_active", "soft_l1", "cauchy", "x_scale",
                                  "max_nfev"])
def test_batched_least_squares_float64(monkeypatch, case):
    B = 200
    X0 = np.tile([2.0, 0.0, 1.0, 0.5], (B, 1))
    kw: dict = {"method": "lm", "batched": True, "jac": _resid_jac}
    if case == "bounds":
        kw["bounds"] = ([0.5, -2, 0.3, -1], [5, 2, 3, 2])
    elif case == "bounds_active":  # variables held at a bound (frozen columns: the SVD route)
        kw["bounds"] = ([0.5, -2, 1.0, 0.6], [2.2, 0.1, 3, 2])
        X0[:, 3] = 0.6
        X0[:, 2] = 1.0
    elif case in ("soft_l1", "cauchy"):
        kw["loss"], kw["f_scale"] = case, 0.1
    elif case == "x_scale":
        kw["x_scale"] = "jac"
    else:
        kw["max_nfev"] = 4
    gen, fast = _both(monkeypatch, lambda: ao.least_squares(_resid, X0, **kw))
    _check64(gen, fast)


def test_compaction_and_stopped_rows(monkeypatch):
    # rows that stop at once (x0 at their solution: gtol), rows with non-finite
    # residuals at trial points, and many iterations of compaction of the working set
    B = 300
    rng = np.random.default_rng(5)
    X0 = np.tile([2.0, 0.0, 1.0, 0.5], (B, 1)) + rng.normal(0, 0.3, (B, 4))

    def fun(X):
        r = _resid(X, _data(B)[1])
        return np.where((X[:, 2:3] > 2.5), np.nan, r)

    gen, fast = _both(monkeypatch, lambda: ao.least_squares(fun, X0, method="lm", batched=True,
                                                            jac=_resid_jac))
    _check64(gen, fast)
    assert len(set(gen.nfev.tolist())) > 3  # problems stopped at different iterations


@pytest.mark.parametrize("jac", ["analytic", "default"])
def test_batched_float32(monkeypatch, jac):
    # float32 fits end at rounding noise, where the tests' verdicts (and so the last
    # iterates) follow the rounding of lmpar's products: the fast path must be as close
    # to the float64 solution as the generic path, with the same successes
    j = _gauss_jac if jac == "analytic" else None
    ref = _fit(np.float64, 300, jac=j)[0]
    gen, fast = _both(monkeypatch, lambda: _fit(np.float32, 300, jac=j))
    assert fast[0].dtype == gen[0].dtype == np.float32
    np.testing.assert_array_equal(fast[2]["status"] > 0, gen[2]["status"] > 0)
    scale = np.maximum(np.abs(ref), 1e-2)
    e_gen = np.max(np.abs(gen[0] - ref) / scale, axis=1)
    e_fast = np.max(np.abs(fast[0] - ref) / scale, axis=1)
    assert np.quantile(e_fast, 0.99) <= 1.5 * np.quantile(e_gen, 0.99)
    assert np.median(e_fast) <= 2.0 * np.median(e_gen)
    assert np.max(e_fast) <= 3.0 * np.max(e_gen)
    # as many evaluations
    assert abs(np.mean(fast[2]["nfev"]) - np.mean(gen[2]["nfev"])) <= 0.05 * np.mean(gen[2]["nfev"])


def test_broken_kernel_caught_in_a_solve(monkeypatch):
    K._compile()
    fn = K.judge_rows

    def broken(*a):
        acc = fn(*a)
        a[2][:] *= 1.5  # radius updated wrongly
        return acc

    gen = _both(monkeypatch, lambda: _fit(np.float64, 100))[0]
    monkeypatch.setattr(K, "judge_rows", broken)
    fast = _both(monkeypatch, lambda: _fit(np.float64, 100))[1]
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(fast[2]["nfev"], gen[2]["nfev"])
        np.testing.assert_allclose(fast[0], gen[0], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- geodesic acceleration
class _Ev:
    def __init__(self, Fh):
        self.Fh = Fh

    def project(self, X):
        return X

    def residual_where(self, mask, Xt, X, F):
        return np.where(mask[:, None], self.Fh, F)


class _CholRoute:
    """The Cholesky route's ``solve`` at its factor ``Lf``; ``fast``: the kernels or ``None``."""

    svd = None

    def __init__(self, Lf, fast):
        self.Lf, self.fast = Lf, fast

    def solve(self, h, par):
        from agnopt._least_squares.cholesky import chol_solve

        return chol_solve(_xp(), self.Lf, h)


def _accel_case(seed, dt):
    from agnopt._least_squares import engine

    rng = np.random.default_rng(seed)
    xp = _xp()
    k, m, n = 200, 30, int(rng.integers(1, 6))
    X = rng.standard_normal((k, n)).astype(dt)
    F = rng.standard_normal((k, m)).astype(dt)
    st = engine.initial_state(xp, X, F, np.linalg.norm(F, axis=1), np.ones((k, n), dt))
    J = rng.standard_normal((k, m, n)).astype(dt)
    D = rng.uniform(0.5, 2, (k, n)).astype(dt)
    free = rng.random((k, n)) > 0.1
    st = st._replace(J=J, D=D, free=free, first=rng.random(k) < 0.2,
                     active=rng.random(k) < 0.9)
    Lf = np.linalg.inv(np.linalg.cholesky(_spd(rng, k, n, np.float64, 100.0))).astype(dt)
    z = rng.standard_normal((k, n)).astype(dt)
    p = (z / D).astype(dt)
    par = np.where(rng.random(k) < 0.3, 0, rng.uniform(0.1, 2, k)).astype(dt)
    # curvature of every size against the step (some accelerations pass the bound, some not)
    scale = rng.choice([1e-4, 1e-3, 0.01, 0.1, 1.0], k)[:, None]
    Fh = (F + 0.1 * np.einsum("kmn,kn->km", J, p) + scale * rng.standard_normal((k, m))).astype(dt)
    Fh[::23, 0] = np.nan
    return xp, _Ev(Fh), st, Lf, p, z, par


def _accel_both(seed, dt):
    from agnopt._least_squares import engine

    xp, ev, st, Lf, p, z, par = _accel_case(seed, dt)
    with np.errstate(all="ignore"):
        pw, aw, _ = engine.geodesic_acceleration(xp, ev, st, _CholRoute(Lf, None), p, z, par)
        pg, ag, _ = engine.geodesic_acceleration(xp, ev, st, _CholRoute(Lf, K), p, z, par)
    return (pg, ag), (pw, aw)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(6))
def test_acceleration_block(seed, dt):
    (pg, ag), (pw, aw) = _accel_both(seed, dt)
    _check_accel(pg, ag, pw, aw, dt)


def _check_accel(pg, ag, pw, aw, dt):
    assert pg.dtype == pw.dtype == np.dtype(dt)
    # the bound 2 ||a|| <= alpha ||v|| may be decided differently within rounding of equality
    assert np.mean(ag != aw) < 0.01
    same = ag == aw
    assert 0.03 < np.mean(aw) < 0.97  # (both kinds of rows are tested)
    tol = 1e-12 if dt == np.float64 else 1e-4
    err = np.linalg.norm(pg - pw, axis=1)[same]
    assert np.all(err <= tol * np.linalg.norm(pw, axis=1)[same])


def test_broken_acceleration_is_caught(monkeypatch):
    (pw, aw) = _accel_both(0, np.float64)[1]
    K._compile()
    fn = K.accel_rows

    def broken(J, p, Fh, F, D, free, Lf, z, el, c, h, two_h, alpha, p_out, accel):
        fn(J, p, Fh, F, D, free, Lf, z, el, c, h, two_h * 1.001, alpha, p_out, accel)

    monkeypatch.setattr(K, "accel_rows", broken)
    pg, ag = _accel_both(0, np.float64)[0]
    with pytest.raises(AssertionError):
        _check_accel(pg, ag, pw, aw, np.float64)


def test_batch_with_kernels_equals_solo_to_rounding(monkeypatch):
    # the generic engine gives a batch what each problem alone gets, bit for bit; the
    # kernels round lmpar's and J^T J's sums in their own order, so a batch on them
    # agrees with the solo solves to rounding (at tight tolerances the last stopping
    # test may move by an evaluation)
    B = 40
    x, Y = _data(B, seed=3)
    X0 = np.tile([2.0, 0.0, 1.0, 0.5], (B, 1))
    kw = {"method": "lm", "xtol": 1e-12, "ftol": 1e-12, "gtol": 1e-12}
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    res = ao.least_squares(lambda X: _gauss(x, *(X[:, j:j + 1] for j in range(4))) - Y, X0,
                           batched=True, jac=lambda X: _gauss_jac(x, *(X[:, j:j + 1] for j in range(4))),
                           **kw)
    monkeypatch.setenv("AGNOPT_FAST", "0")
    for i in range(B):
        r = ao.least_squares(lambda p: _gauss(x, *p) - Y[i], X0[i],
                             jac=lambda p: _gauss_jac(x, *p), **kw)
        np.testing.assert_allclose(res.x[i], r.x, rtol=1e-7, atol=1e-10)
        assert res.status[i] == r.status or (res.success[i] and r.success)
        assert abs(int(res.nfev[i]) - r.nfev) <= 2


# --------------------------------------------------------------------------- float32 stopping
def _stop_case(dt, prered, limited, projected, finite=True):
    from agnopt._least_squares import engine

    xp = _xp()
    k = 1
    st = engine.initial_state(xp, np.ones((k, 2), dt), np.ones((k, 3), dt), np.ones(k, dt),
                              np.ones((k, 2), dt))
    st = st._replace(delta=np.ones(k, dt), xnorm=np.ones(k, dt), gnorm=np.full(k, 0.5, dt),
                     nfev=np.full(k, 3))
    a = np.full(k, -3e-7, dt)  # a rounding-noise "increase" of the cost
    return engine.stopping_tests(xp, st, a, np.full(k, prered, dt), a / prered,
                                 np.array([finite]), np.array([limited]), 1e-8, 1e-8, 100,
                                 np.array([projected]))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_low_precision_stationary_stop(dt):
    eps = float(np.finfo(dt).eps)
    st = _stop_case(dt, 0.9 * eps, False, False)
    # float32: a full Gauss-Newton step predicting less than one rounding stops (info 6);
    # float64 keeps MINPACK's tests (|actred| <= eps too)
    assert int(st.info[0]) == (6 if dt == np.float32 else 0)
    assert bool(st.active[0]) == (dt == np.float64)
    for kw in ({"limited": True, "projected": False}, {"limited": False, "projected": True},
               {"limited": False, "projected": False, "finite": False}):
        st = _stop_case(dt, 0.9 * eps, **kw)  # no statement on the Gauss-Newton step
        assert int(st.info[0]) == 0 and bool(st.active[0])
    st = _stop_case(dt, 4 * eps, False, False)  # a reduction above rounding is still possible
    assert int(st.info[0]) == 0


def test_float32_success_is_right(monkeypatch):
    # every float32 fit reported successful is the float64 solution to float32 accuracy
    # (on the kernels and on the generic path), bounded fits (projected steps) included,
    # and a fit stopped by max_nfev before it converged is not reported successful
    B = 300
    x, Y = _data(B, seed=7)
    X0 = np.tile([2.0, 0.0, 1.0, 0.5], (B, 1))

    def fun(X):
        return _gauss(x, *(X[:, j:j + 1] for j in range(4))) - Y.astype(X.dtype)

    def jac(X):
        return _gauss_jac(x.astype(X.dtype), *(X[:, j:j + 1] for j in range(4)))

    for bounds in ((-np.inf, np.inf), ([0.5, -2, 0.3, 0.45], [5, 2, 1.0, 2])):
        ref = ao.least_squares(fun, X0, jac=jac, bounds=bounds, method="lm", batched=True)
        assert np.all(ref.success)
        for mode in ("0", "numba"):
            monkeypatch.setenv("AGNOPT_FAST", mode)
            r = ao.least_squares(fun, X0.astype(np.float32), jac=jac, bounds=bounds,
                                 method="lm", batched=True)
            assert r.x.dtype == np.float32 and np.all(r.success)
            err = np.abs(r.x - ref.x) / np.maximum(np.abs(ref.x), 1e-2)
            assert np.max(err) < 1e-2 and np.quantile(err, 0.99) < 2e-3
            assert np.all(np.abs(r.cost - ref.cost) <= 1e-4 * ref.cost)
            short = ao.least_squares(fun, X0.astype(np.float32), jac=jac, bounds=bounds,
                                     method="lm", batched=True, max_nfev=3)
            far = np.max(np.abs(short.x - ref.x) / np.maximum(np.abs(ref.x), 1e-2), axis=1) > 1e-2
            assert np.any(far) and not np.any(short.success[far])


def test_kernel_rows_do_not_depend_on_the_other_rows(monkeypatch):
    # each problem of a batch gets the same numbers whatever the other problems are: here
    # the extra problems start on a very wide peak (amplitude and offset columns nearly
    # equal: the SVD route), which must not move the others off the kernels (the geodesic
    # acceleration of the rows on the Cholesky route included; a far start limits steps)
    from agnopt._least_squares import routes

    monkeypatch.setenv("AGNOPT_FAST", "numba")
    B, extra = 40, 4
    x, Y = _data(B + extra, seed=11)

    def fun(X, Yr):
        return _gauss(x, *(X[:, j:j + 1] for j in range(4))) - Yr

    def jac(X, Yr):
        return _gauss_jac(x, *(X[:, j:j + 1] for j in range(4)))

    X0 = np.tile([1.0, 0.8, 2.5, 0.0], (B + extra, 1))
    X0[B:, 2] = 300.0
    svd = []
    spectral = routes.spectral
    monkeypatch.setattr(routes, "spectral", lambda *a, **k: (svd.append(1), spectral(*a, **k))[1])
    kw = {"method": "lm", "batched": True, "jac": jac}
    alone = ao.least_squares(fun, X0[:B], args=(Y[:B],), **kw)
    assert not svd
    mixed = ao.least_squares(fun, X0, args=(Y,), **kw)
    assert svd  # (the extra problems did take the SVD route)
    np.testing.assert_array_equal(mixed.x[:B], alone.x)
    np.testing.assert_array_equal(mixed.nfev[:B], alone.nfev)
    np.testing.assert_array_equal(mixed.status[:B], alone.status)


@pytest.mark.parametrize("mode", ["0", "numba"])
def test_bounds_that_never_bind_change_nothing(monkeypatch, mode):
    # a step the bounds do not cut is the LM step, whether the problem has bounds or not:
    # only a step whose x + p the bounds moved is "projected" (before, any step whose
    # (x + p) - x rounded differently from p was judged as a projected step, so a batch
    # with one bounded problem gave the others other iterates than they get alone)
    monkeypatch.setenv("AGNOPT_FAST", mode)
    B = 40
    x, Y = _data(B, seed=11)

    def fun(X):
        return _gauss(x, *(X[:, j:j + 1] for j in range(4))) - Y

    def jac(X):
        return _gauss_jac(x, *(X[:, j:j + 1] for j in range(4)))

    X0 = np.tile([1.0, 0.8, 2.5, 0.0], (B, 1))
    kw = {"method": "lm", "batched": True, "jac": jac}
    free = ao.least_squares(fun, X0, **kw)
    far = ao.least_squares(fun, X0, bounds=([-50, -50, -50, -50], [50, 50, 50, 50]), **kw)
    np.testing.assert_array_equal(far.x, free.x)
    np.testing.assert_array_equal(far.nfev, free.nfev)
    np.testing.assert_array_equal(far.status, free.status)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(30))
def test_linearized_block(seed, dt):
    from agnopt._least_squares import engine

    case = _judge_case(seed, dt)
    xp, box, st = case[0], case[1], case[2]
    rng = np.random.default_rng(seed + 1000)
    k, n = st.X.shape
    cn = (np.abs(rng.standard_normal((k, n))) * (rng.random((k, n)) > 0.2)).astype(dt)
    cn[::11, 0] = np.nan
    nj = rng.random(k) < 0.7
    st = st._replace(free=None if seed % 3 == 0 else rng.random((k, n)) > 0.2,
                     D=np.where(rng.random((k, n)) < 0.1, np.nan, st.D).astype(dt))
    jac_scale, gtol = bool(seed % 2), float(rng.choice([1e-8, 0.1, 0.5, 2.0]))
    with np.errstate(all="ignore"):
        want = engine.linearized(xp, box, st, nj, cn, jac_scale, gtol)
        got = K.linearized_rows(xp, box, st, nj, cn, jac_scale, gtol, engine.FACTOR, None)
    _same_state(got, want)
