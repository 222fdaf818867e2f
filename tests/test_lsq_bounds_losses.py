"""Building blocks of the bounded and robust least-squares methods, one by one.

Each batched function is compared, row by row, with the same quantity
computed by scipy's least-squares internals (``scipy.optimize._lsq``: the
reference the trust-region-reflective method reproduces), on random inputs,
on every backend of the matrix.
"""

from __future__ import annotations

import numpy as np
import pytest

from agnopt._least_squares import bounds as bd
from agnopt._least_squares import losses as ls

from conftest import to_numpy

common = pytest.importorskip("scipy.optimize._lsq.common")
trf = pytest.importorskip("scipy.optimize._lsq.trf")
lsq_mod = pytest.importorskip("scipy.optimize._lsq.least_squares")

B, M, N = 12, 7, 4


def _arr(xp, device, a):
    return xp.asarray(np.asarray(a, dtype=np.float64), device=device)


def _box(rng):
    lb = rng.uniform(-2.0, -0.5, (B, N))
    ub = rng.uniform(0.5, 2.0, (B, N))
    lb[rng.random((B, N)) < 0.3] = -np.inf
    ub[rng.random((B, N)) < 0.3] = np.inf
    return lb, ub


def test_coleman_li_and_step_to_bound(xp, device):
    rng = np.random.default_rng(0)
    lb, ub = _box(rng)
    X = rng.uniform(-0.4, 0.4, (B, N))
    G = rng.standard_normal((B, N))
    G[0, 0] = 0.0
    S = rng.standard_normal((B, N))
    S[1] = 0.0
    v, dv = bd.coleman_li(xp, *(_arr(xp, device, a) for a in (X, G, lb, ub)))
    t, hits = bd.step_to_bound(xp, *(_arr(xp, device, a) for a in (X, S, lb, ub)))
    for i in range(B):
        rv, rdv = common.CL_scaling_vector(X[i], G[i], lb[i], ub[i])
        np.testing.assert_array_equal(to_numpy(v)[i], rv)
        np.testing.assert_array_equal(to_numpy(dv)[i], rdv)
        if i == 1:
            assert to_numpy(t)[i] == np.inf and not np.any(to_numpy(hits)[i])
            continue
        rt, rh = common.step_size_to_bound(X[i], S[i], lb[i], ub[i])
        np.testing.assert_allclose(to_numpy(t)[i], rt, rtol=1e-15)
        np.testing.assert_array_equal(to_numpy(hits)[i], rh)


def test_active_constraints_and_strictly_feasible(xp, device):
    rng = np.random.default_rng(1)
    lb, ub = _box(rng)
    lb[np.isinf(lb)] = -1.0
    X = np.where(rng.random((B, N)) < 0.5, lb, rng.uniform(-0.4, 0.4, (B, N)))
    X[2, 1] = ub[2, 1] if np.isfinite(ub[2, 1]) else X[2, 1]
    for rstep in (1e-10, 0.0):
        act = bd.active_constraints(xp, *(_arr(xp, device, a) for a in (X, lb, ub)), rtol=rstep)
        Xf = bd.strictly_feasible(xp, *(_arr(xp, device, a) for a in (X, lb, ub)), rstep=rstep)
        for i in range(B):
            np.testing.assert_array_equal(to_numpy(act)[i], common.find_active_constraints(X[i], lb[i], ub[i], rstep))
            np.testing.assert_array_equal(to_numpy(Xf)[i], common.make_strictly_feasible(X[i], lb[i], ub[i], rstep))


def test_trust_region_intersection_and_line_quadratics(xp, device):
    rng = np.random.default_rng(2)
    J = rng.standard_normal((B, M, N))
    g = rng.standard_normal((B, N))
    s = rng.standard_normal((B, N))
    s0 = 0.1 * rng.standard_normal((B, N))
    diag = rng.uniform(0.0, 1.0, (B, N))
    delta = rng.uniform(1.0, 2.0, B)
    x_, J_, g_, s_, s0_, d_, de_ = (_arr(xp, device, a) for a in (s0, J, g, s, s0, diag, delta))
    t1, t2 = bd.to_trust_region(xp, x_, s_, de_)
    a, b, c = bd.line_quadratic(xp, J_, g_, s_, d_, s0=s0_)
    a2, b2, _ = bd.line_quadratic(xp, J_, g_, s_)
    q = bd.evaluate_quadratic(xp, J_, g_, s_, d_)
    lo, hi = -rng.uniform(0, 1, B), rng.uniform(0, 1, B)
    tm, ym = bd.minimize_line_quadratic(xp, a, b, _arr(xp, device, lo), _arr(xp, device, hi), c)
    for i in range(B):
        r1, r2 = common.intersect_trust_region(s0[i], s[i], delta[i])
        np.testing.assert_allclose([to_numpy(t1)[i], to_numpy(t2)[i]], [r1, r2], rtol=1e-13)
        ra, rb, rc = common.build_quadratic_1d(J[i], g[i], s[i], diag=diag[i], s0=s0[i])
        np.testing.assert_allclose([to_numpy(a)[i], to_numpy(b)[i], to_numpy(c)[i]], [ra, rb, rc], rtol=1e-13)
        ra, rb = common.build_quadratic_1d(J[i], g[i], s[i])
        np.testing.assert_allclose([to_numpy(a2)[i], to_numpy(b2)[i]], [ra, rb], rtol=1e-13)
        np.testing.assert_allclose(to_numpy(q)[i], common.evaluate_quadratic(J[i], g[i], s[i], diag=diag[i]),
                                   rtol=1e-13)
        rt, ry = common.minimize_quadratic_1d(*common.build_quadratic_1d(J[i], g[i], s[i], diag=diag[i], s0=s0[i])[:2],
                                              lo[i], hi[i], c=rc)
        np.testing.assert_allclose([to_numpy(tm)[i], to_numpy(ym)[i]], [rt, ry], rtol=1e-12, atol=1e-15)


def test_reflective_step_equals_scipy(xp, device):
    rng = np.random.default_rng(3)
    lb, ub = _box(rng)
    X = rng.uniform(-0.4, 0.4, (B, N))
    J = rng.standard_normal((B, M, N))
    f = rng.standard_normal((B, M))
    g = np.einsum("bmn,bm->bn", J, f)
    d = rng.uniform(0.5, 1.5, (B, N))
    diag_h = rng.uniform(0.0, 0.5, (B, N))
    P_h = rng.standard_normal((B, N)) * rng.uniform(0.1, 3.0, (B, 1))
    P = d * P_h
    delta = np.sqrt(np.sum(P_h**2, axis=1)) * rng.uniform(1.0, 1.5, B)
    theta = rng.uniform(0.995, 0.9999, B)
    J_h, g_h = J * d[:, None, :], d * g
    out = bd.select_reflective_step(xp, *(_arr(xp, device, a) for a in
                                          (X, J_h, diag_h, g_h, P, P_h, d, delta, lb, ub, theta)))
    step, step_h, pred = (to_numpy(o) for o in out)
    n_cut = 0
    for i in range(B):
        rs, rsh, rp = trf.select_step(X[i], J_h[i], diag_h[i], g_h[i], P[i].copy(), P_h[i].copy(), d[i],
                                      delta[i], lb[i], ub[i], theta[i])
        n_cut += not common.in_bounds(X[i] + P[i], lb[i], ub[i])
        np.testing.assert_allclose(step[i], rs, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(step_h[i], rsh, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(pred[i], rp, rtol=1e-11, atol=1e-14)
    assert n_cut >= B // 2  # the test exercises the reflective branch


@pytest.mark.parametrize("loss", ["linear", "soft_l1", "huber", "cauchy", "arctan"])
def test_losses_and_robust_scaling_equal_scipy(xp, device, loss):
    rng = np.random.default_rng(4)
    f = rng.standard_normal((3, M)) * 3.0
    f[0, 0] = 0.0  # an exact zero residual
    J = rng.standard_normal((3, M, N))
    f_scale = 1.7
    ref_fun = lsq_mod.construct_loss_function(M, loss, f_scale)
    r0, r1, r2 = ls.loss_rho(xp, loss, _arr(xp, device, f), f_scale)
    cost = ls.loss_cost(xp, loss, _arr(xp, device, f), f_scale)
    fh, Jh = ls.robust_scale(xp, _arr(xp, device, f), _arr(xp, device, J), r1, r2)
    for i in range(3):
        if ref_fun is None:  # linear: scipy skips the loss
            np.testing.assert_allclose(to_numpy(cost)[i], 0.5 * f[i] @ f[i], rtol=1e-14)
            np.testing.assert_allclose(to_numpy(fh)[i], f[i], rtol=1e-14)
            continue
        rho = ref_fun(f[i].copy())
        np.testing.assert_allclose(np.stack([to_numpy(r)[i] for r in (r0, r1, r2)]), rho, rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(to_numpy(cost)[i], ref_fun(f[i].copy(), cost_only=True), rtol=1e-13)
        rJ, rf = common.scale_for_robust_loss_function(J[i].copy(), f[i].copy(), rho)
        np.testing.assert_allclose(to_numpy(fh)[i], rf, rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(to_numpy(Jh)[i], rJ, rtol=1e-13, atol=1e-300)


def test_callable_loss_and_bad_arguments(xp, device):
    def my_cauchy(z):
        return np.stack([np.log1p(z), 1 / (1 + z), -1 / (1 + z) ** 2])

    f = np.linspace(-3, 3, M)[None, :]
    ref = ls.loss_rho(np, "cauchy", f, 2.0)
    got = ls.loss_rho(np, my_cauchy, f, 2.0)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(a, b, rtol=1e-15)
    with pytest.raises(ValueError, match="loss"):
        ls.check_loss("l1", 1.0)
    for bad in (0.0, -1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="f_scale"):
            ls.check_loss("huber", bad)


def test_dogleg_box_step_equals_scipy(xp, device):
    dogbox = pytest.importorskip("scipy.optimize._lsq.dogbox")
    rng = np.random.default_rng(5)
    lb, ub = _box(rng)
    X = rng.uniform(-0.4, 0.4, (B, N))
    free = rng.random((B, N)) > 0.25
    J = rng.standard_normal((B, M, N)) * free[:, None, :]
    f = rng.standard_normal((B, M))
    g = np.einsum("bmn,bm->bn", J, f)
    newton = np.stack([np.linalg.lstsq(J[i], -f[i], rcond=-1)[0] for i in range(B)]) * free
    tr = rng.uniform(0.05, 1.0, (B, 1)) * np.ones((B, N))
    a = np.empty(B)
    b = np.empty(B)
    for i in range(B):
        a[i], b[i] = common.build_quadratic_1d(J[i][:, free[i]], g[i][free[i]], -g[i][free[i]])
    step, hits, tr_hit = bd.dogleg_box_step(xp, *(_arr(xp, device, v) for v in (X, newton, g, a, b, tr, lb, ub)),
                                            xp.asarray(free, device=device))
    n_dog = 0
    for i in range(B):
        fr = free[i]
        rs, rh, rt = dogbox.dogleg_step(X[i][fr], newton[i][fr], g[i][fr], a[i], b[i], tr[i][fr], lb[i][fr], ub[i][fr])
        n_dog += bool(np.any(rs != newton[i][fr]))
        np.testing.assert_allclose(to_numpy(step)[i][fr], rs, rtol=1e-12, atol=1e-15)
        assert np.all(to_numpy(step)[i][~fr] == 0)
        np.testing.assert_array_equal(to_numpy(hits)[i][fr], rh)
        assert bool(to_numpy(tr_hit)[i]) == bool(rt)
    assert n_dog >= B // 3
