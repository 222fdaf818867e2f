"""The numba normal-equations block of a NumPy Levenberg-Marquardt solve
(agnopt._kernels.lm_gram_cpu) gives what the generic block gives (principle 2: an
optional accelerator, tested equal): ``J^T J``, ``J^T f``, the column norms and the
merge of new Jacobians into old ones, to rounding (the generic path's ``numpy.matmul``
sums in BLAS's order), the merged Jacobians and the finiteness flag exactly. Every
NumPy solve takes it whatever the size of its batch, so a problem's numbers do not
depend on its batch: a batch equals its problems solved one by one, bit for bit.

A deliberately broken kernel is caught.
"""

from __future__ import annotations

import numpy as np
import pytest

import agnopt as ao
from agnopt._kernels import lm_gram_cpu as G
from agnopt._kernels.lm_batched_cpu import HAVE_NUMBA, MAX_N
from agnopt._least_squares import routes

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")


def _generic(monkeypatch, *args):
    with monkeypatch.context() as mp:
        mp.setenv("AGNOPT_FAST", "0")
        return routes._normal_block(np, *args)


def test_applies_follows_agnopt_fast(monkeypatch):
    J = np.zeros((1, 5, 4))
    assert G.applies(J) and G.applies(J.astype(np.float32))  # one problem too
    assert not G.applies(np.zeros((3, 5, MAX_N + 1)))
    assert not G.applies(J.astype(np.float16))
    assert not G.applies(np.zeros((3, 0, 4)))
    monkeypatch.setenv("AGNOPT_FAST", "0")
    assert not G.applies(J)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 3, 4, 5, 9, MAX_N])
@pytest.mark.parametrize("merge", [False, True])
def test_normal_block(monkeypatch, dt, n, merge):
    rng = np.random.default_rng(n)
    k, m = 37, 23
    Jn = rng.standard_normal((k, m, n)).astype(dt) * rng.uniform(0.1, 10, (k, 1, n)).astype(dt)
    Jo = rng.standard_normal((k, m, n)).astype(dt)
    F = rng.standard_normal((k, m)).astype(dt)
    nj = rng.uniform(size=k) < 0.6 if merge else np.ones(k, bool)
    eye = np.eye(n, dtype=dt)
    J, A0, dA, g, cn, fine = G.normal_block(F, Jn, Jo, nj)
    Jr, A0r, dAr, gr, cnr, finer = _generic(monkeypatch, F, Jn, Jo, nj, eye)
    assert np.array_equal(J, Jr) and bool(fine) == bool(finer) and fine
    assert A0.dtype == g.dtype == cn.dtype == dt
    tol = 8 * np.finfo(dt).eps
    scale = np.sqrt(dAr[:, :, None] * dAr[:, None, :])
    assert np.all(np.abs(A0 - A0r) <= tol * m * scale)
    assert np.array_equal(A0, np.swapaxes(A0, 1, 2))
    assert np.array_equal(dA, np.diagonal(A0, axis1=1, axis2=2))
    assert np.all(np.abs(g - gr) <= tol * m * cnr * np.linalg.norm(F, axis=1)[:, None])
    assert np.all(np.abs(cn - cnr) <= tol * m * cnr)
    A1, d1 = G.gram(J)
    assert np.array_equal(A1, A0) and np.array_equal(d1, dA)


def test_nonfinite_jacobian_is_flagged(monkeypatch):
    rng = np.random.default_rng(0)
    Jn = rng.standard_normal((5, 7, 3))
    F = rng.standard_normal((5, 7))
    Jn[2, 4, 1] = np.nan
    nj = np.ones(5, bool)
    assert not G.normal_block(F, Jn, Jn, nj)[5]
    assert not bool(_generic(monkeypatch, F, Jn, Jn, nj, np.eye(3))[5])
    nj[2] = False  # a kept (old) Jacobian is not checked again
    Jo = rng.standard_normal((5, 7, 3))
    assert G.normal_block(F, Jn, Jo, nj)[5]
    Jn[3, 0, 0] = 1e300  # an overflow of J^T J
    assert not G.normal_block(F, Jn, Jo, nj)[5]


def _fit(B, dt, seed=3):
    rng = np.random.default_rng(seed)
    x = np.linspace(-3, 3, 50)
    P = np.column_stack([rng.uniform(1, 3, B), rng.uniform(-1, 1, B), rng.uniform(0.5, 1.5, B),
                         rng.uniform(0, 1, B)])
    f = lambda x, a, mu, s, c: a * np.exp(-(x - mu) ** 2 / (2 * s * s)) + c  # noqa: E731

    def jac(x, a, mu, s, c):
        e = np.exp(-(x - mu) ** 2 / (2 * s * s))
        j1 = a * e * (x - mu) / (s * s)
        return np.stack([e, j1, j1 * (x - mu) / s, np.ones_like(e)], axis=-1)

    Y = f(x[None, :], *[P[:, i:i + 1] for i in range(4)]) + 0.01 * rng.standard_normal((B, 50))
    return f, jac, x.astype(dt), Y.astype(dt), np.array([2, 0, 1, 0.5], dtype=dt)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("jac", ["analytic", None])
def test_batch_equals_solo_bit_for_bit(dt, jac):
    f, fj, x, Y, p0 = _fit(40, dt)
    kw = {"jac": fj} if jac else {}
    pb, cb = ao.curve_fit(f, x, Y, p0=p0, batched=True, **kw)
    for i in range(Y.shape[0]):
        ps, cs = ao.curve_fit(f, x, Y[i], p0=p0, **kw)
        assert np.array_equal(pb[i], ps), i
        assert np.array_equal(cb[i], cs), i


def test_broken_kernel_is_caught(monkeypatch):
    rng = np.random.default_rng(1)
    Jn = rng.standard_normal((6, 9, 4))
    F = rng.standard_normal((6, 9))
    nj = np.ones(6, bool)
    G._compile()
    good = G.gram_rows

    def broken(Fm, Jn, Jold, nj, merge, with_g, J, A0, g):
        out = good(Fm, Jn, Jold, nj, merge, with_g, J, A0, g)
        A0[3, 1, 2] *= 1 + 1e-6
        return out

    monkeypatch.setattr(G, "gram_rows", broken)
    A0 = G.normal_block(F, Jn, Jn, nj)[1]
    A0r = _generic(monkeypatch, F, Jn, Jn, nj, np.eye(4))[1]
    assert np.abs(A0 - A0r).max() > 1e-8


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 2, 4, 7, 8, 9, MAX_N])
def test_jp_norm2_bit_for_bit(dt, n):
    from agnopt._least_squares.cholesky import small_mv

    rng = np.random.default_rng(n)
    J = rng.standard_normal((50, 2 * n + 1, n)).astype(dt)
    A0 = np.matmul(np.swapaxes(J, 1, 2), J)
    p = (rng.standard_normal((50, n)) * 10.0 ** rng.uniform(-3, 3, (50, n))).astype(dt)
    ref = np.sum(p * small_mv(np, A0, p), axis=-1)
    out = G.jp_norm2(A0, p)
    assert out.dtype == dt and np.array_equal(out, ref)
