"""Test functions written against an Array API namespace ``xp``.

Each problem gives ``loss(xp, x)`` and an analytic ``grad(xp, x)``, so the
same formulas run on every backend and, through NumPy, in the reference
loops of torch.optim and optax.
"""

from __future__ import annotations

import numpy as np


def rosenbrock_loss(xp, x):
    a, b = x[:-1], x[1:]
    return xp.sum(100.0 * (b - a * a) ** 2 + (1.0 - a) ** 2)


def rosenbrock_grad(xp, x):
    a, b = x[:-1], x[1:]
    r = b - a * a
    ga = -400.0 * a * r - 2.0 * (1.0 - a)
    gb = 200.0 * r
    z = xp.zeros((1,), dtype=x.dtype, device=_device(x))
    return xp.concat([ga, z]) + xp.concat([z, gb])


def _device(x):
    from array_api_compat import device

    return device(x)


def quadratic_matrix(n: int = 6, cond: float = 100.0, seed: int = 0) -> np.ndarray:
    """A symmetric positive definite matrix with condition number ``cond``."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eig = np.geomspace(1.0, cond, n)
    return (q * eig) @ q.T


class Quadratic:
    """f(x) = 1/2 (x - c)^T A (x - c), ill-conditioned."""

    def __init__(self, n=6, cond=100.0, seed=0):
        self.A = quadratic_matrix(n, cond, seed)
        self.c = np.linspace(-1.0, 1.0, n)

    def arrays(self, xp, dtype, device):
        return (
            xp.asarray(self.A, dtype=dtype, device=device),
            xp.asarray(self.c, dtype=dtype, device=device),
        )

    def loss(self, xp, x, A, c):
        d = x - c
        return 0.5 * xp.sum(d * xp.matmul(A, d))

    def grad(self, xp, x, A, c):
        return xp.matmul(A, x - c)
