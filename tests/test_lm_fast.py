"""The numba judge of one float64 NumPy Levenberg-Marquardt solve (agnopt._kernels.lm_cpu)
gives what the generic engine gives (principle 2: an optional accelerator, tested equal).

Each problem is solved twice in one process, with ``AGNOPT_FAST=0`` (the generic
path) and with the accelerator on; the points, costs, statuses and counts must agree
(the scalar arithmetic is the same IEEE operations in the same order).
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


def _exp_jac(p):
    e = np.exp(-p[1] * T)
    return np.stack([e, -p[0] * T * e, np.ones_like(T)], axis=1)


def _rosen(x):
    return np.array([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def _solve_both(monkeypatch, fun, x0, **kw):
    out = []
    for mode in ("0", "numba"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out.append(ao.least_squares(fun, np.asarray(x0, dtype=np.float64), method="lm", **kw))
    return out


def _check(gen, fast, same_counts=True):
    assert fast.status == gen.status
    assert fast.success == gen.success
    np.testing.assert_allclose(fast.x, gen.x, rtol=1e-10, atol=0)
    np.testing.assert_allclose(fast.cost, gen.cost, rtol=1e-10, atol=0)
    if same_counts:  # the same IEEE operations in the same order: the same numbers
        assert (fast.nfev, fast.njev) == (gen.nfev, gen.njev)
        np.testing.assert_array_equal(fast.x, gen.x)


def test_enabled_follows_agnopt_fast(monkeypatch):
    monkeypatch.setenv("AGNOPT_FAST", "0")
    assert not lm_cpu.enabled()
    monkeypatch.setenv("AGNOPT_FAST", "numpy")
    assert not lm_cpu.enabled()
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    assert lm_cpu.enabled()
    monkeypatch.delenv("AGNOPT_FAST")
    assert lm_cpu.enabled()


def test_default_starts_after_warmup(monkeypatch):
    # unset AGNOPT_FAST: a process's first WARMUP - 1 fits stay on the generic path (no
    # numba import or compile for a script of a few fits), later ones are compiled
    monkeypatch.delenv("AGNOPT_FAST", raising=False)
    compiled = []
    monkeypatch.setattr(lm_cpu, "_compile", lambda: compiled.append(1))
    monkeypatch.setattr(lm_cpu, "_ready", False)
    monkeypatch.setattr(lm_cpu, "_solves", 0)
    seen = [lm_cpu.enabled() for _ in range(lm_cpu.WARMUP)]
    assert not any(seen[:-1]) and seen[-1] and compiled == [1]


@pytest.mark.parametrize("bounded", [False, True])
def test_fast_judge_is_used(monkeypatch, bounded):
    # the verdict: judge_one, or with the trial point in one update without bounds
    # (the engine's loop: lm_one's driver off, tests/test_lm_one.py)
    monkeypatch.setattr(lm_one, "ON", False)
    calls = []
    for name in ("judge_one", "trial_judge_one"):
        real = getattr(lm_cpu, name)
        monkeypatch.setattr(lm_cpu, name,
                            lambda *a, real=real, name=name: calls.append(name) or real(*a))
    kw = {"bounds": ([0.0, 0.0, 0.0], [10.0, 10.0, 10.0])} if bounded else {}
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    ao.least_squares(_exp, np.ones(3), method="lm", **kw)
    assert set(calls) == {"judge_one" if bounded else "trial_judge_one"}
    calls.clear()
    monkeypatch.setenv("AGNOPT_FAST", "0")
    ao.least_squares(_exp, np.ones(3), method="lm", **kw)
    assert not calls


@pytest.mark.parametrize("x_scale", [1.0, "jac"])
@pytest.mark.parametrize("jac", ["cs", "2-point", _exp_jac])
def test_exponential_fit(monkeypatch, x_scale, jac):
    gen, fast = _solve_both(monkeypatch, _exp, [1.0, 1.0, 1.0], jac=jac, x_scale=x_scale)
    _check(gen, fast)
    assert gen.success


@pytest.mark.parametrize("x_scale", [1.0, "jac"])
def test_exponential_fit_bounded(monkeypatch, x_scale):
    # the bound on b is active at the solution: projected steps are judged too
    gen, fast = _solve_both(monkeypatch, _exp, [1.0, 0.5, 1.0], bounds=([0, 0, 0], [10, 1.0, 10]),
                            x_scale=x_scale)
    _check(gen, fast)
    assert gen.x[1] == pytest.approx(1.0)


@pytest.mark.parametrize("x_scale", [1.0, "jac"])
@pytest.mark.parametrize("bounds", [None, ([-2.0, -2.0], [0.5, 2.0])])
def test_rosenbrock(monkeypatch, x_scale, bounds):
    kw = {} if bounds is None else {"bounds": bounds}
    gen, fast = _solve_both(monkeypatch, _rosen, [-1.2, 1.0], x_scale=x_scale, **kw)
    _check(gen, fast)


@pytest.mark.parametrize("loss", ["soft_l1", "cauchy"])
def test_robust_loss(monkeypatch, loss):
    y = Y.copy()
    y[5] += 3.0  # an outlier

    def fun(p):
        return p[0] * np.exp(-p[1] * T) + p[2] - y

    gen, fast = _solve_both(monkeypatch, fun, [1.0, 1.0, 1.0], loss=loss)
    _check(gen, fast)


def test_max_nfev_and_tolerances(monkeypatch):
    gen, fast = _solve_both(monkeypatch, _rosen, [-1.2, 1.0], max_nfev=7)
    _check(gen, fast)
    assert gen.status == 0
    gen, fast = _solve_both(monkeypatch, _exp, [1.0, 1.0, 1.0], ftol=1e-15, xtol=1e-15, gtol=1e-15)
    _check(gen, fast)


@pytest.mark.parametrize("gtol", [1e-2, 1e-3, 1e-5])
@pytest.mark.parametrize("x_scale", [1.0, "jac"])
def test_gtol_stops(monkeypatch, gtol, x_scale):
    # the gradient test decides these stops (status 1): gnorm must match
    for fun, x0 in ((_exp, [1.0, 1.0, 1.0]), (_rosen, [-1.2, 1.0])):
        gen, fast = _solve_both(monkeypatch, fun, x0, gtol=gtol, ftol=1e-15, xtol=1e-15,
                                x_scale=x_scale)
        _check(gen, fast)
        # Rosenbrock has a zero residual: xtol (3), or gtol (1) where an iterate hits
        # f = 0 exactly (gnorm = 0)
        assert gen.status in ((1,) if fun is _exp else (1, 3))


def test_curve_fit(monkeypatch):
    out = []
    for mode in ("0", "numba"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        out.append(ao.curve_fit(lambda t, a, b, c: a * np.exp(-b * t) + c, T, Y + T * 0,
                                p0=[1.0, 1.0, 1.0]))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-10, atol=0)
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-8, atol=0)


try:
    NIST = {p["name"]: p for p in _nist.load_nist()}
except FileNotFoundError:  # pragma: no cover
    NIST = {}


@pytest.mark.skipif(not NIST, reason="nist_strd.json not found")
@pytest.mark.parametrize("name", ["Misra1a", "Thurber", "MGH09", "BoxBOD", "Eckerle4"])
@pytest.mark.parametrize("start", ["start1", "start2"])
def test_nist(monkeypatch, name, start):
    p = NIST[name]
    fun, _, _, _ = _nist.nist_problem(p, np)
    gen, fast = _solve_both(monkeypatch, fun, p[start], ftol=1e-15, xtol=1e-15, gtol=1e-15)
    _check(gen, fast, same_counts=False)


# -- block level: the numba blocks against the engine's generic blocks on random one-problem states,
# every field compared exactly (NaN where both are NaN), over the branches of each block


def _xp():
    import array_api_compat

    from agnopt._core.backend import native_namespace

    return native_namespace(array_api_compat.array_namespace(np.ones(1)))


def _state(rng, n, m=5):
    from agnopt._least_squares import engine

    xp = _xp()
    X = rng.standard_normal((1, n))
    F = rng.standard_normal((1, m))
    fnorm = np.array([rng.choice([0.0, 1.0, rng.uniform(0.1, 10)])])
    D = rng.uniform(0.5, 2.0, (1, n))
    st = engine.initial_state(xp, X, F, fnorm, D)
    return xp, st._replace(
        g=rng.standard_normal((1, n)), J=np.zeros((1, m, n)),
        free=np.ones((1, n), dtype=bool),
        delta=np.array([rng.choice([0.0, 1e-17, rng.uniform(0.01, 3)])]),
        par=np.array([rng.choice([0.0, rng.uniform(1e-3, 10)])]),
        gnorm=np.array([rng.choice([1e-17, 1e-9, rng.uniform(0, 1)])]),
        xnorm=np.array([rng.uniform(0.1, 5)]), nfev=np.array([int(rng.integers(1, 30))]),
        first=np.array([bool(rng.integers(2))]))


def _box(xp, rng, st, bounded):
    from agnopt._least_squares.problem import Box

    if not bounded:
        return Box(xp, None, False, None, None)
    X = st.X
    lb = np.where(rng.random(X.shape) < 0.4, X, X - 1.0)
    ub = np.where(rng.random(X.shape) < 0.4, X, X + 1.0)
    return Box(xp, None, True, lb, ub)


def _same_state(a, b):
    for name, u, w in zip(a._fields, a, b):
        if u is None or w is None:
            assert u is None and w is None, name
            continue
        u, w = np.asarray(u), np.asarray(w)
        assert u.shape == w.shape and u.dtype == w.dtype, name
        np.testing.assert_array_equal(u, w, err_msg=name)


@pytest.mark.parametrize("seed", range(60))
def test_linearized_block(seed):
    from agnopt._least_squares import engine

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5))
    xp, st = _state(rng, n)
    box = _box(xp, rng, st, bool(rng.integers(2)))
    cn = np.abs(rng.standard_normal((1, n))) * (rng.random((1, n)) > 0.2)
    if seed % 7 == 0:
        cn[0, 0] = np.nan
    nj = np.array([True])
    jac_scale, gtol = bool(rng.integers(2)), float(rng.choice([1e-8, 0.1, 0.5, 2.0]))
    want = engine.linearized(xp, box, st, nj, cn, jac_scale, gtol)
    got = lm_cpu.linearized_one(xp, box, st, nj, cn, jac_scale, gtol, engine.FACTOR, None)
    _same_state(got, want)


class _Route:
    def __init__(self, xp, A):
        self.xp, self.A = xp, A

    def jp_norm2(self, p):
        return self.xp.sum(p * (p @ self.A), axis=-1)


@pytest.mark.parametrize("seed", range(800))
def test_judge_block(seed):
    from agnopt._core.backend import numpy_scalar_namespace
    from agnopt._least_squares import engine
    from agnopt._least_squares.state import Trial

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 4))
    xp, st = _state(rng, n)
    box = _box(xp, rng, st, bool(rng.integers(2)))
    p = rng.standard_normal((1, n)) * rng.choice([1e-9, 1e-3, 0.03, 0.1, 1.0])
    fn1 = float(st.fnorm[0]) * rng.choice([0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0, 1.001, 2.0,
                                           20.0])
    fn1 = float(rng.choice([fn1, fn1, fn1, np.inf, np.nan]))
    projected = None if not box.bounded else np.array([bool(rng.integers(2))])
    tr = Trial(st.X + p, rng.standard_normal(st.F.shape), p,
               xp.linalg.vector_norm(st.D * p, axis=-1), np.array([fn1]), projected)
    A = rng.standard_normal((n, n))
    route = _Route(xp, A @ A.T * rng.choice([1e-6, 1.0, 1e3]))
    ftol, xtol = (float(rng.choice([1e-300, 1e-15, 1e-8, 1e-2, 0.5])) for _ in range(2))
    kind = seed % 4
    if kind == 1:  # the tests at machine precision (info 6, 7, 8)
        p = p * 1e-9 / np.max(np.abs(p))
        st = st._replace(fnorm=np.array([1.0]), gnorm=np.array([rng.choice([1e-17, 0.5])]),
                         delta=np.array([rng.choice([1e-17, 1.0])]))
        ftol = xtol = 1e-300
        tr = tr._replace(p=p, Xt=st.X + p, pnorm=xp.linalg.vector_norm(st.D * p, axis=-1),
                         fnorm1=np.array([1.0]))
    elif kind == 2:  # a limited step with a good ratio and a small reduction (the ftol exception)
        st = st._replace(fnorm=np.array([1.0]), par=np.array([rng.uniform(0.01, 1.0)]),
                         gnorm=np.array([rng.choice([0.1, 0.9])]))
        tr = tr._replace(projected=None)
        ftol = 0.5
        pred = float(engine.reductions(xp, st, tr, route, p, tr.pnorm)[1][0])
        if 0 < pred < 1:
            r = rng.uniform(0.5, 1.5)
            tr = tr._replace(fnorm1=np.array([np.sqrt(max(1.0 - r * pred, 0.0))]))
    limited = st.par > 0
    max_nfev = int(rng.integers(1, 40))
    # an accelerated step is judged by the model of its LM step v (engine.model_step)
    accel = [None, None, np.array([True]), np.array([False])][int(rng.integers(4))]
    v = p if accel is None else p * rng.uniform(0.5, 1.5)
    want = engine.judge(xp, box, st, tr, route, accel, v, limited, ftol, xtol, max_nfev,
                        numpy_scalar_namespace())
    got = lm_cpu.judge_one(xp, box, st, tr, route, accel, v, limited, ftol, xtol, max_nfev,
                           engine.machine_eps(xp, xp.float64), engine.model_step)
    _same_state(got, want)


# -- the numba route (agnopt._kernels.lm_route) against the generic InMemoryRoute on random
# one-problem normal equations: which route, the LM parameter, the step, the factor of the
# last lmpar iteration, the damped solve and ||J p||^2, every value exactly


class _Ev:
    """What lm_route.route_one asks of the evaluator: the Cholesky route, and the
    generic route (the fall-back)."""

    use_chol = True

    def __init__(self, xp, eye, bounded=False):
        self.xp, self.eye, self.bounded = xp, eye, bounded

    def route(self, st):
        from agnopt._least_squares.routes import InMemoryRoute

        return InMemoryRoute(self.xp, st.J, st.A0, st.g, st.D, st.F, st.free, st.active, False,
                             eye=self.eye)


def _route_case(seed):
    from agnopt._least_squares import engine
    from agnopt._least_squares.routes import gram

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    m = n + int(rng.integers(0, 8))
    xp = _xp()
    J = rng.standard_normal((1, m, n))
    kind = seed % 5
    if kind == 1:  # badly scaled columns: cond near the SVD threshold, either side
        J = J * np.logspace(0, float(rng.uniform(0, 5)), n)
    elif kind == 2 and n > 1:  # nearly dependent columns
        J[0, :, -1] = J[0, :, 0] * (1 + float(rng.choice([1e-3, 1e-6, 1e-9])))
    F = rng.standard_normal((1, m)) * rng.choice([1e-6, 1.0, 1e3])
    D = rng.uniform(0.1, 10.0, (1, n))
    eye = xp.eye(n, dtype=xp.float64)
    A0, _ = gram(xp, J, eye)
    g = xp.matmul(F[:, None, :], J)[:, 0, :]
    st = engine.initial_state(xp, rng.standard_normal((1, n)), F, np.array([1.0]), D)
    bounded = bool(rng.integers(2))
    free = np.ones((1, n), dtype=bool)
    if kind == 3 and bounded:  # a variable frozen at a bound: the generic (SVD) route
        free[0, -1] = False
    st = st._replace(J=J, A0=A0, g=g, free=free,
                     active=np.array([kind != 4 or bool(rng.integers(2))]))
    # radii from far inside to far outside the Gauss-Newton step; previous parameters 0 or not
    delta = np.array([float(rng.choice([1e-8, 1e-3, 0.1, 1.0, 10.0, 1e6]))])
    par = np.array([float(rng.choice([0.0, 0.0, 1e-6, 0.3, 10.0, 1e4]))])
    return xp, _Ev(xp, eye, bounded), st, delta, par, rng


@pytest.mark.parametrize("seed", range(400))
def test_route_block(seed):
    from agnopt._kernels import lm_route
    from agnopt._least_squares import engine
    from agnopt._least_squares.routes import GRAM_RCOND, InMemoryRoute

    xp, ev, st, delta, par, rng = _route_case(seed)
    want = ev.route(st)
    got = lm_route.route_one(xp, ev, st, engine.machine_eps(xp, xp.float64), 1.0 / GRAM_RCOND)
    assert isinstance(got, lm_route.FastRoute) == bool(want.well[0])
    if not isinstance(got, lm_route.FastRoute):
        assert isinstance(got, InMemoryRoute)
        return
    np.testing.assert_array_equal(got.As, want.chol.As[0])
    np.testing.assert_array_equal(got.gs, want.chol.gs[0])
    np.testing.assert_array_equal(got.Linv0, want.chol.Linv0[0])
    for _ in range(2):  # a rejected step: the same route, a smaller radius
        pw, zw = want.step(delta, par, st.active)
        pg, zg = got.step(delta, par, st.active)
        np.testing.assert_array_equal(pg, pw)
        np.testing.assert_array_equal(zg, zw)
        assert pg.shape == pw.shape == (1,) and zg.shape == zw.shape == st.X.shape
        np.testing.assert_array_equal(got.Lf, want.Lf[0])
        h = rng.standard_normal(st.X.shape)
        np.testing.assert_array_equal(got.solve(h, pw), want.solve(h, pw))
        p = zw / st.D
        np.testing.assert_array_equal(got.jp_norm2(p), want.jp_norm2(p))
        delta, par = delta * 0.25, pw


def test_route_block_covers_lmpar():
    # the cases above reach every exit of lmpar: the Gauss-Newton step, the bounds' exit
    # (inactive), the Newton iterations, and a route that is not well conditioned
    from agnopt._least_squares import lmpar as lmpar_mod

    seen = {"gn": 0, "iter": 0, "svd": 0}
    real = lmpar_mod._lmpar_iteration
    calls = []
    lmpar_mod._lmpar_iteration = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        for seed in range(400):
            _, ev, st, delta, par, _ = _route_case(seed)
            route = ev.route(st)
            if not bool(route.well[0]):
                seen["svd"] += 1
                continue
            calls.clear()
            route.step(delta, par, st.active)
            seen["iter" if calls else "gn"] += 1
    finally:
        lmpar_mod._lmpar_iteration = real
    assert min(seen.values()) >= 20, seen


@pytest.mark.parametrize("seed", range(200))
def test_trial_step_block(seed):
    from agnopt._kernels import lm_route
    from agnopt._least_squares import engine

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5))
    xp, st = _state(rng, n)
    st = st._replace(active=np.array([seed % 5 != 0]))
    box = _box(xp, rng, st, bool(rng.integers(2)))
    p = rng.standard_normal((1, n)) * rng.choice([1e-9, 0.1, 1.0, 3.0])
    if seed % 7 == 0:
        p[0, 0] = np.nan
    par = np.array([rng.uniform(0, 1)])
    want = engine.trial_step(xp, box, st, p, par)
    got = lm_route.trial_step_one(xp, box, st, p, par)
    for a, b in zip(got[:4], want[:4]):
        if a is None or b is None:
            assert a is None and b is None
        else:
            np.testing.assert_array_equal(a, b)
            assert a.shape == b.shape and a.dtype == b.dtype
    _same_state(got[4], want[4])


def test_fast_route_is_used(monkeypatch):
    from agnopt._kernels import lm_route

    monkeypatch.setattr(lm_one, "ON", False)  # (the engine's loop)
    made = []
    real = lm_route.FastRoute.__init__
    monkeypatch.setattr(lm_route.FastRoute, "__init__",
                        lambda self, *a: made.append(1) or real(self, *a))
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    ao.least_squares(_exp, np.ones(3), method="lm")
    assert made
    made.clear()
    monkeypatch.setenv("AGNOPT_FAST", "0")
    ao.least_squares(_exp, np.ones(3), method="lm")
    assert not made


@pytest.mark.parametrize("rtol", [-1.0, 0.01, 0.5])
@pytest.mark.parametrize("seed", range(40))
def test_lmpar_block(seed, rtol):
    # lmpar itself at other tolerances (rtol = -1: never met, all 10 Newton iterations run)
    from agnopt._kernels import lm_route
    from agnopt._least_squares import engine
    from agnopt._least_squares.lmpar import lmpar

    xp, ev, st, delta, par, _ = _route_case(seed)
    route = ev.route(st)
    if not bool(route.well[0]):
        return
    eps = engine.machine_eps(xp, xp.float64)
    lm_route.route_one(xp, ev, st, eps, 1e8)  # compiles
    pw, qw, fw = lmpar(xp, route.chol, delta, par, st.active, rtol=rtol)
    pg, qg, fg = lm_route.lmpar(route.chol.As[0], route.chol.gs[0], route.chol.Linv0[0],
                                float(delta[0]), float(par[0]), bool(st.active[0]), eps,
                                lm_route.DWARF, rtol)
    assert pg == float(pw[0])
    np.testing.assert_array_equal(qg, qw[0])
    np.testing.assert_array_equal(fg, fw[0])


@pytest.mark.parametrize("side", [-1, 1])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_route_condition_threshold(side, n):
    # trace(As) trace(As^-1) a hair below / above 1 / GRAM_RCOND: both routes choose alike
    from agnopt._kernels import lm_route
    from agnopt._least_squares import engine
    from agnopt._least_squares.routes import GRAM_RCOND, gram

    xp = _xp()
    target = (1.0 / GRAM_RCOND) * (1.0 + side * 1e-9)
    # orthogonal columns of norms 1 (n - 1 of them) and s: (n - 1 + s^2)(n - 1 + 1/s^2)
    lo, hi = 1e-12, 1.0
    for _ in range(200):
        s = 0.5 * (lo + hi)
        val = (n - 1 + s * s) * (n - 1 + 1 / (s * s))
        lo, hi = (s, hi) if val > target else (lo, s)
    Q, _ = np.linalg.qr(np.random.default_rng(n).standard_normal((n + 3, n)))
    J = (Q * np.r_[np.ones(n - 1), s])[None]
    F = np.ones((1, n + 3))
    eye = xp.eye(n, dtype=xp.float64)
    A0, _ = gram(xp, J, eye)
    st = engine.initial_state(xp, np.zeros((1, n)), F, np.array([1.0]), np.ones((1, n)))
    st = st._replace(J=J, A0=A0, g=xp.matmul(F[:, None, :], J)[:, 0, :],
                     free=np.ones((1, n), dtype=bool))
    ev = _Ev(xp, eye)
    want = bool(ev.route(st).well[0])
    assert want == (side < 0)
    got = lm_route.route_one(xp, ev, st, engine.machine_eps(xp, xp.float64), 1.0 / GRAM_RCOND)
    assert isinstance(got, lm_route.FastRoute) == want


@pytest.mark.parametrize("x_scale", [1.0, "jac"])
def test_far_start_accelerated_steps(monkeypatch, x_scale):
    # from far away the radius limits the steps: lmpar's Newton iterations and geodesic
    # acceleration (FastRoute.solve) run on the numba route, with the generic numbers
    from agnopt._kernels import lm_route

    monkeypatch.setattr(lm_one, "ON", False)  # (the engine's loop)
    solves = []
    real = lm_route.FastRoute.solve
    monkeypatch.setattr(lm_route.FastRoute, "solve",
                        lambda self, h, par: solves.append(1) or real(self, h, par))
    gen, fast = _solve_both(monkeypatch, _exp, [10.0, 0.05, -3.0], x_scale=x_scale)
    _check(gen, fast)
    assert gen.success and solves


@pytest.mark.parametrize("name", ["linearize_one", "trial_judge_one"])
def test_one_update_blocks_are_used(monkeypatch, name):
    # one float64 NumPy problem without bounds: its linearization and its trial step
    # with the verdict, each in one update (lm_cpu), the same numbers as the generic layers
    monkeypatch.setattr(lm_one, "ON", False)  # (the engine's loop)
    calls = []
    real = getattr(lm_cpu, name)
    monkeypatch.setattr(lm_cpu, name, lambda *a: calls.append(1) or real(*a))
    gen, fast = _solve_both(monkeypatch, _exp, [1.0, 1.0, 1.0])
    assert calls
    _check(gen, fast)
    np.testing.assert_array_equal(fast.jac, gen.jac)


def test_linearize_one_nonfinite_jacobian(monkeypatch):
    def jac(p):
        J = _exp_jac(p)
        J[3, 1] = np.nan
        return J

    for mode in ("0", "numba"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        with pytest.raises(ValueError, match="non-finite entries"):
            ao.least_squares(_exp, np.ones(3), jac=jac, method="lm")


def test_linearize_one_gram_overflow(monkeypatch):
    # a finite Jacobian whose J^T J overflows is not a non-finite Jacobian: both paths
    # go on with it (and agree)
    def jac(p):
        return 1e160 * _exp_jac(p)

    gen, fast = _solve_both(monkeypatch, _exp, [1.0, 1.0, 1.0], jac=jac)
    assert fast.status == gen.status and (fast.nfev, fast.njev) == (gen.nfev, gen.njev)
    np.testing.assert_array_equal(fast.x, gen.x)


@pytest.mark.parametrize("seed", range(200))
def test_covariance_one(monkeypatch, seed):
    # curve_fit's covariance of one float64 NumPy problem on the numba route equals the
    # generic one bit for bit (well conditioned, scaled badly, near rank deficient, with
    # a zero column or an overflowing J^T J: the certificate's failures go to the generic
    # routes)
    from agnopt._kernels import lm_route
    from agnopt._least_squares.covariance import covariance

    lm_route._compile()
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    m = n + int(rng.integers(0, 30))
    J = rng.standard_normal((1, m, n)) * 10.0 ** rng.integers(-8, 9, size=n)
    kind = seed % 5
    if kind == 1 and n > 1:
        J[0, :, -1] = J[0, :, 0] * 3.0 + 1e-12 * rng.standard_normal(m)
    elif kind == 2:
        J[0, :, int(rng.integers(n))] = 0.0
    elif kind == 3:  # J^T J overflows (J finite)
        J[0, int(rng.integers(m)), int(rng.integers(n))] = 1e160
    monkeypatch.setenv("AGNOPT_FAST", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = covariance(np, J)
        monkeypatch.setenv("AGNOPT_FAST", "numba")
        got = covariance(np, J)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_covariance_one_is_used(monkeypatch):
    from agnopt._kernels import lm_route
    from agnopt._least_squares import covariance as cov

    lm_route._compile()
    calls = []
    real = lm_route.cov_one
    monkeypatch.setattr(lm_route, "cov_one", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    J = np.random.default_rng(0).standard_normal((1, 20, 3))
    pcov, singular = cov.covariance(np, J)
    assert calls and not singular[0]
    np.testing.assert_allclose(pcov[0], np.linalg.inv(J[0].T @ J[0]), rtol=1e-12)


@pytest.mark.parametrize("seed", range(100))
def test_cs_points_one(seed):
    # the compiled complex-step points of one float64 point are numdiff.cs_points' bit
    # for bit, signs of zero included (zeros, negative zeros, tiny and huge entries)
    from agnopt._derivatives import numdiff
    from agnopt._kernels import lm_route

    lm_route._compile()
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 8))
    x0 = rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, size=n)
    x0[rng.random(n) < 0.3] = 0.0
    x0[rng.random(n) < 0.2] = -0.0
    eps = float(np.finfo(np.float64).eps)
    rstep = numdiff._eps_for_method(np, np.float64, np.float64, "cs")
    want_pts, want_h = numdiff.cs_points(np, x0, None, eps, rstep, np.complex128, None)
    P, h = lm_route.cs_points(x0, eps, rstep)
    assert h.view(np.int64).tolist() == want_h.view(np.int64).tolist()
    for j in range(n):
        assert P[j].view(np.int64).tolist() == want_pts[j].view(np.int64).tolist()


def test_cs_points_one_is_used(monkeypatch):
    from agnopt._kernels import lm_route

    lm_route._compile()
    calls = []
    real = lm_route.cs_points
    monkeypatch.setattr(lm_route, "cs_points", lambda *a: calls.append(1) or real(*a))
    gen, fast = _solve_both(monkeypatch, _exp, [1.0, 1.0, 1.0], jac="cs")
    assert calls
    _check(gen, fast)
    np.testing.assert_array_equal(fast.jac, gen.jac)


def _random_point(seed):
    """``(x0, fun)``: a random float64 point (zeros, negative zeros, entries from
    1e-30 to 1e30) and a smooth residual of it (5 rows)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 8))
    x0 = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, size=n)
    x0[rng.random(n) < 0.3] = 0.0
    x0[rng.random(n) < 0.2] = -0.0
    w = rng.standard_normal((5, n))

    def fun(x):
        return np.sin(w @ x) + (w @ x) ** 2

    return x0, fun



@pytest.mark.parametrize("seed", range(60))
def test_fd_points_one(monkeypatch, seed):
    # the compiled forward-difference points of one float64 point give numdiff's
    # "2-point" Jacobian bit for bit (zeros, negative zeros, tiny and huge entries)
    from agnopt._derivatives import numdiff
    from agnopt._kernels import lm_route

    lm_route._compile()
    x0, fun = _random_point(seed)

    out = []
    for mode in ("0", "numba"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        out.append(numdiff.fd_jacobian(fun, x0, fun(x0), "2-point", None, None, None, (), {},
                                       False, np, None))
    assert out[1].view(np.int64).tolist() == out[0].view(np.int64).tolist()


def test_fd_points_one_is_used(monkeypatch):
    from agnopt._kernels import lm_route

    lm_route._compile()
    calls = []
    real = lm_route.fd_points
    monkeypatch.setattr(lm_route, "fd_points", lambda *a: calls.append(1) or real(*a))
    gen, fast = _solve_both(monkeypatch, _exp, [1.0, 1.0, 1.0], jac="2-point")
    assert calls
    _check(gen, fast)
    np.testing.assert_array_equal(fast.jac, gen.jac)


@pytest.mark.parametrize("method", ["cs", "2-point"])
@pytest.mark.parametrize("seed", range(40))
def test_one_point_jacobian(monkeypatch, method, seed):
    # fd_jacobian with a solve's cache (its one-point layer, one_point_jacobian: the
    # one float64 NumPy point asked once per solve) gives the generic path's Jacobian
    # bit for bit (zeros, negative zeros, tiny and huge entries)
    from agnopt._derivatives import numdiff, one_point
    from agnopt._kernels import lm_route

    lm_route._compile()
    x0, fun = _random_point(seed)

    rel = float(np.finfo(np.float64).eps) if method == "cs" else None
    calls = []
    real = one_point.one_point_jacobian
    monkeypatch.setattr(one_point, "one_point_jacobian", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("AGNOPT_FAST", "0")
    want = numdiff.fd_jacobian(fun, x0, fun(x0), method, rel, None, None, (), {}, False, np,
                               None, {})
    assert not calls  # (the generic path)
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    cache: dict = {}
    for _ in range(2):  # the second call reads the cached verdict
        got = numdiff.fd_jacobian(fun, x0, fun(x0), method, rel, None, None, (), {}, False, np,
                                  None, cache)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.view(np.int64).tolist() == want.view(np.int64).tolist()
    assert len(calls) == 2 and cache["one"] is True


@pytest.mark.parametrize("sigma", [None, "1d", "2d"])
def test_curve_fit_point_rows(sigma):
    # curve_fit's residual at all the difference points at once (point_rows, which the
    # one-point layer calls) is its residual at each point: the same parameters (NumPy
    # scalars, complex only where the imaginary part is nonzero, NaN included, real parts
    # with their signs of zero) and the same arrays bit for bit
    from agnopt._least_squares.fit_data import as_data
    from agnopt._least_squares.fit_model import model, weights

    t = np.linspace(0.0, 2.0, 7)
    y = as_data(np.cos(t))
    seen = []

    def f(x, a, b, c):
        seen.append(tuple((type(v), v) for v in (a, b, c)))
        return a * np.exp(-b * x) + c / (1.0 + x)

    sig = {None: None, "1d": 0.5 + t, "2d": np.diag(0.5 + t) + 0.1}[sigma]
    wfun, inv, L = weights(np, None, sig, y, False, 7)
    residual, _ = model(np, None, f, t, y, None, 3, False, wfun, inv, L)
    P = np.array([[1.5 + 1e-17j, -0.0 + 0.0j, 2.0 - 0.0j],
                  [0.25 + 0.0j, -3.0 + 1e-20j, np.nan + 0.0j],
                  [1.0 + np.nan * 1j, 0.5 + 0.0j, -0.0 + 2e-300j]])
    X1 = np.array([[1.5, -0.0, 2.0], [0.25, -3.0, np.nan]])  # (real points: 2-point's)
    got = residual._agnopt_point_rows(P) + residual._agnopt_point_rows(X1)
    params_got = seen[:]
    seen.clear()
    want = [residual(p) for p in P] + [residual(p) for p in X1]
    # (repr: the NumPy scalar types, values and signs of zero; NaN equal to NaN)
    assert len(params_got) == 5 and repr(params_got) == repr(seen)
    assert [tp for tp, _ in params_got[1]] == [np.float64, np.complex128, np.float64]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert g.view(np.int64).tolist() == w.view(np.int64).tolist()


def test_one_point_cs_real_output(monkeypatch):
    # the one-point layer refuses a fun that returns real output for complex input, as
    # the generic path does (the same message)
    from agnopt._derivatives import numdiff
    from agnopt._kernels import lm_route

    lm_route._compile()
    x0 = np.array([1.0, 2.0])
    fun = lambda x: np.real(x) ** 2
    msgs = []
    for mode, cache in (("0", None), ("numba", {})):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        with pytest.raises(ValueError, match="complex step") as e:
            numdiff.fd_jacobian(fun, x0, fun(x0), "cs", 2.0**-52, None, None, (), {}, False,
                                np, None, cache)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]


def test_status_one():
    # finish's host status of one problem is to_status' (the same table), every code
    from agnopt._least_squares.outcome import status_one, to_status

    for info in range(-8, 12):
        for active in (False, True):
            for cb_stop in (False, True):
                want = to_status(np, np.array([info]), np.array([active]), cb_stop)
                assert status_one(info, active, cb_stop) == int(want[0]), (info, active, cb_stop)


@pytest.mark.parametrize("seed", range(40))
def test_cs_check_one(seed):
    # the check of the default complex step on one float64 NumPy problem (compiled points,
    # steps and residuals' test) gives the generic check's points bit for bit and its
    # verdict, on agreeing and disagreeing Jacobians, with NaN and inf residuals, and
    # with one residual whose differences' error is large (a kink: it must not excuse
    # a dropped term in the others)
    from agnopt._derivatives import numdiff, one_point
    from agnopt._kernels import lm_route

    lm_route._compile()
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 7)), int(rng.integers(1, 40))
    X = rng.standard_normal((1, n)) * 10.0 ** rng.integers(-5, 5, size=n)
    X[0, rng.random(n) < 0.2] = 0.0
    w = tuple((-1.0) ** j * (0.5 + math.modf(0.6180339887498949 * (j + 1))[0]) for j in range(n))
    eps = float(np.finfo(np.float64).eps)
    h3, h2 = eps ** (1.0 / 3.0), eps**0.5
    want = numdiff.cs_check_points(np, X, None, None, w, h3, h2, None)
    got = one_point.cs_check_points_one(X, np.asarray(w), h3, h2)
    for a, b in zip(want[:3], got[:3]):
        assert b.shape == a.shape and b.view(np.int64).tolist() == a.view(np.int64).tolist()
    assert bool(want[3]) and got[3] is True
    P3, M3, P2 = want[:3]
    A = rng.standard_normal((m, n))
    F = rng.standard_normal((1, m))

    def f(P):
        return F + (P - X) @ A.T + 0.3 * ((P - X) ** 2) @ A.T

    verdicts = set()
    for case in range(8):
        Jcs = A[None].copy()
        Fp3, Fm3, Fp2 = f(P3), f(M3), f(P2)
        if case == 1:  # a dropped term
            Jcs[0, :, 0] *= 1.0 + 10.0 ** rng.uniform(-9, -2)
        elif case == 2:
            Fp3[0, rng.integers(m)] = np.nan
        elif case == 3:
            Fp2[0, rng.integers(m)] = np.nan
        elif case == 4:
            Fm3[0, rng.integers(m)] = np.inf
        elif case == 5:
            Jcs[0, rng.integers(m), 0] = np.nan
        elif case in (6, 7):  # a kink at one residual (its forward difference off by ~1)
            Fp2[0, rng.integers(m)] += 1.0 + rng.random()
            if case == 7:  # and a dropped term (the kink itself: tests/test_cs_check_kink.py)
                Jcs[0, :, 0] *= 1.0 + 10.0 ** rng.uniform(-5, -2)
        with np.errstate(all="ignore"):
            a = bool(numdiff.cs_check_verdict(np, X, F, Jcs, P3, M3, P2, Fp3, Fm3, Fp2, h3, h2))
            b = one_point.cs_check_verdict_one(np, X, F, Jcs, P3, M3, P2, Fp3, Fm3, Fp2, h3, h2)
        assert type(b) is bool and a == b, case
        verdicts.add(a)
    assert verdicts == {True, False}
