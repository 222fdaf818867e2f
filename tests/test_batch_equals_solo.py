"""A problem's numbers do not depend on its batch: a NumPy batch of Gaussian-peak fits
(on the numba row kernels, agnopt._kernels.lm_batched_cpu, as a batch of at least
MIN_ROWS problems) equals its problems fitted one by one, bit for bit (parameters and
covariance), float64 and float32, closed-form and default Jacobians; and so on the
generic blocks alone (AGNOPT_FAST=0)."""

from __future__ import annotations

import numpy as np
import pytest

import agnopt as ao
from agnopt._kernels import lm_batched_cpu as K
from agnopt._kernels.lm_batched_cpu import HAVE_NUMBA


def _fit(B, dt, seed=3):
    rng = np.random.default_rng(seed)
    x = np.linspace(-3, 3, 50)
    P = np.column_stack([rng.uniform(1, 3, B), rng.uniform(-1, 1, B), rng.uniform(0.5, 1.5, B),
                         rng.uniform(0, 1, B)])
    f = lambda x, a, mu, s, c: a * np.exp(-(x - mu) ** 2 / (2 * s * s)) + c

    def jac(x, a, mu, s, c):
        e = np.exp(-(x - mu) ** 2 / (2 * s * s))
        j1 = a * e * (x - mu) / (s * s)
        return np.stack([e, j1, j1 * (x - mu) / s, np.ones_like(e)], axis=-1)

    Y = f(x[None, :], *[P[:, i:i + 1] for i in range(4)]) + 0.01 * rng.standard_normal((B, 50))
    return f, jac, x.astype(dt), Y.astype(dt), np.array([2, 0, 1, 0.5], dtype=dt)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("jac", ["analytic", None])
@pytest.mark.parametrize("fast", ["auto", "0"])
def test_batch_equals_solo_bit_for_bit(monkeypatch, dt, jac, fast):
    if fast == "0":
        monkeypatch.setenv("AGNOPT_FAST", "0")  # the generic blocks alone
    f, fj, x, Y, p0 = _fit(40, dt)
    kw = {"jac": fj} if jac else {}
    calls = []
    real = K.judge
    monkeypatch.setattr(K, "judge", lambda *a: calls.append(1) or real(*a))
    pb, cb = ao.curve_fit(f, x, Y, p0=p0, batched=True, **kw)
    assert bool(calls) == (HAVE_NUMBA and fast == "auto")  # (which blocks the batch ran on)
    for i in range(Y.shape[0]):
        ps, cs = ao.curve_fit(f, x, Y[i], p0=p0, **kw)
        assert np.array_equal(pb[i], ps), i
        assert np.array_equal(cb[i], cs), i
