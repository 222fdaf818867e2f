"""The numba ``||J p||^2`` of a batched NumPy Levenberg-Marquardt solve
(agnopt._kernels.lm_gram_cpu) gives what the generic block gives, bit for bit
(principle 2: an optional accelerator, tested equal), and a batch on the kernels
equals its problems solved one by one, bit for bit. A deliberately broken kernel
is caught.
"""

from __future__ import annotations

import numpy as np
import pytest

import agnopt as ao
from agnopt._kernels import lm_gram_cpu as G
from agnopt._kernels.lm_batched_cpu import HAVE_NUMBA, MAX_N

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")


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
def test_batch_equals_solo_bit_for_bit(monkeypatch, dt, jac):
    f, fj, x, Y, p0 = _fit(40, dt)
    kw = {"jac": fj} if jac else {}
    calls = []
    real = G.jp_norm2
    monkeypatch.setattr(G, "jp_norm2", lambda *a: calls.append(1) or real(*a))
    pb, cb = ao.curve_fit(f, x, Y, p0=p0, batched=True, **kw)
    assert calls  # (the batch ran on the kernels)
    for i in range(Y.shape[0]):
        ps, cs = ao.curve_fit(f, x, Y[i], p0=p0, **kw)
        assert np.array_equal(pb[i], ps), i
        assert np.array_equal(cb[i], cs), i


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


def test_broken_kernel_is_caught(monkeypatch):
    from agnopt._least_squares.cholesky import small_mv

    rng = np.random.default_rng(1)
    A0 = rng.standard_normal((6, 4, 4))
    p = rng.standard_normal((6, 4))
    G._compile()
    good = G.jp_rows

    def broken(A0, p, out, buf, y):
        good(A0, p, out, buf, y)
        out[3] *= 1 + 1e-12

    monkeypatch.setattr(G, "jp_rows", broken)
    assert not np.array_equal(G.jp_norm2(A0, p), np.sum(p * small_mv(np, A0, p), axis=-1))
