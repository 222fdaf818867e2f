"""Batched Cholesky factors of small symmetric matrices, written with Array API operations.

Used by the normal-equation step route (:mod:`.routes`) and by the covariance
of ``curve_fit`` (:mod:`.covariance`). Shapes: ``A`` (k, n, n), vectors (k, n).
"""

from __future__ import annotations

import math

import array_api_compat

from .arrays import device, machine_eps

# factored entry by entry (scalar recurrences on (k,) vectors) for n <= this
ENTRYWISE_N = 6


def mv(xp, A, v):
    """``A v`` for stacks: (k, p, q) x (k, q) -> (k, p)."""
    return xp.matmul(A, v[..., None])[..., 0]


def small_mv(xp, A, v):
    """``A v`` for stacks of small matrices (k, n, n) x (k, n) -> (k, n), as a
    product and a sum over the last axis, not a matrix product: on NumPy that
    is a pairwise sum in a fixed order (a BLAS ``gemv`` may fuse and reorder),
    so the numba route of one problem (:mod:`agnopt._kernels.lm_route`)
    repeats it bit for bit. Used for the ``n x n`` factors of the Cholesky
    route (``n <= CHOL_MAX_N``)."""
    return xp.sum(A * v[..., None, :], axis=-1)


def small_mtv(xp, A, v):
    """``A^T v`` for stacks of small matrices, as :func:`small_mv` (a sum over
    the second-last axis: NumPy adds the rows in order)."""
    return xp.sum(A * v[..., :, None], axis=-2)


def chol_inv(xp, A):
    """Inverse Cholesky factor of a stack of symmetric matrices ``A`` (k, n, n).

    Returns ``Linv`` (k, n, n), lower triangular with ``A = L L^T`` and
    ``Linv = L^{-1}`` (so ``A^{-1} = Linv^T Linv``), and ``ok`` (k,): every
    pivot positive and above ``eps * A_jj`` (else the row is numerically
    singular, its pivots are replaced by 1 and ``Linv`` is meaningless).
    Written with ``O(n)`` stacked Array API operations (right-looking
    Cholesky by columns, then forward substitution by rows), so a batch of
    small matrices costs a few dozen vectorized operations, on any backend,
    and never raises (LAPACK's batched ``cholesky`` raises for the whole
    stack when one matrix is not positive definite).
    """
    k, n, _ = A.shape
    if n <= ENTRYWISE_N:
        return chol_inv_entries(xp, A)
    eps = machine_eps(xp, A.dtype)
    dev = device(A)
    eye = xp.eye(n, dtype=A.dtype, device=dev)
    cols, diag = [], []
    ok = None
    for j in range(n):
        v = A[:, :, j]
        if j > 0:
            Lj = xp.stack(cols, axis=-1)  # (k, n, j)
            v = v - mv(xp, Lj, Lj[:, j, :])
        d = v[:, j]
        okj = d > eps * A[:, j, j]
        ok = okj if ok is None else ok & okj
        sj = xp.sqrt(xp.where(okj, d, 1.0))
        mask = xp.sum(eye[:, j:], axis=-1)  # rows >= j
        cols.append((v / sj[:, None]) * mask)
        diag.append(sj)
    L = xp.stack(cols, axis=-1)
    rows = []
    for i in range(n):
        r = xp.broadcast_to(eye[i, :], (k, n))
        if i > 0:
            R = xp.stack(rows, axis=1)  # (k, i, n)
            r = r - xp.matmul(L[:, i:i + 1, :i], R)[:, 0, :]
        rows.append(r / diag[i][:, None])
    return xp.stack(rows, axis=1), ok


def chol_inv_entries(xp, A):
    """:func:`chol_inv` entry by entry: ``O(n^3)`` operations on ``(k,)`` vectors.

    For very small ``n`` this beats the column-stacked form by a wide margin
    (no stacks of tiny matrices); the arithmetic is the textbook
    Cholesky-Banachiewicz recurrence and forward substitution
    (:func:`_entries`).

    One float64 NumPy matrix (``k = 1``, every small unbatched solve) runs
    the same recurrence on Python floats (:class:`_FloatOps`): IEEE double
    arithmetic and a correctly rounded ``sqrt``, so the same numbers bit for
    bit, at a few dozen nanoseconds per operation instead of a NumPy call's
    few hundred.
    """
    k, n, _ = A.shape
    eps = machine_eps(xp, A.dtype)
    if k == 1 and array_api_compat.is_numpy_array(A) and A.dtype == xp.float64:
        rows = A[0].tolist()
        a = [[rows[i][j] for j in range(i + 1)] for i in range(n)]
        Li, ok = _entries(_FloatOps, a, n, eps)
        zero = 0.0
        full = [[Li[i][j] if j <= i else zero for j in range(n)] for i in range(n)]
        return (xp.asarray([full], dtype=A.dtype),
                xp.asarray([ok], dtype=xp.bool))
    # the lower triangle only (A is symmetric): n (n + 1) / 2 column reads
    a = [[A[:, i, j] for j in range(i + 1)] for i in range(n)]
    Li, ok = _entries(xp, a, n, eps)
    zero = xp.zeros_like(Li[0][0])
    # one stack of the n * n entries (row-major), not one per row
    flat = [Li[i][j] if j <= i else zero for i in range(n) for j in range(n)]
    return xp.reshape(xp.stack(flat, axis=-1), (k, n, n)), ok


class _FloatOps:
    """``sqrt`` and ``where`` of :func:`_entries` for Python floats (one matrix)."""

    sqrt = staticmethod(math.sqrt)

    @staticmethod
    def where(c, a, b):
        return a if c else b


def _entries(ops, a, n, eps):
    """The recurrence of :func:`chol_inv_entries` on the entries ``a[i][j]``
    (``j <= i``) of the lower triangle: ``(Linv[i][j] for j <= i, ok)``.
    ``ops`` supplies ``sqrt`` and ``where``; the entries are ``(k,)`` arrays
    (``ops`` their namespace) or Python floats (:class:`_FloatOps`)."""
    L = [[None] * n for _ in range(n)]
    invd = [None] * n  # 1 / L[j][j], used by both loops
    ok = None
    for j in range(n):
        d = a[j][j]
        for t in range(j):
            d = d - L[j][t] * L[j][t]
        okj = d > eps * a[j][j]
        ok = okj if ok is None else ok & okj
        ljj = ops.sqrt(ops.where(okj, d, 1.0))
        L[j][j] = ljj
        # (a zero pivot -- a matrix with a negative diagonal entry -- gives inf,
        # as an array division does, not a Python ZeroDivisionError)
        inv = invd[j] = (1.0 / ljj if ops is not _FloatOps or ljj != 0.0
                         else math.copysign(math.inf, ljj))
        for i in range(j + 1, n):
            v = a[i][j]
            for t in range(j):
                v = v - L[i][t] * L[j][t]
            L[i][j] = v * inv
    # Linv (lower): Linv[i][i] = 1/L[i][i]; Linv[i][j] = -sum_t L[i][t] Linv[t][j] / L[i][i]
    Li = [[None] * n for _ in range(n)]
    for i in range(n):
        dinv = invd[i]
        Li[i][i] = dinv
        for j in range(i):
            v = L[i][j] * Li[j][j]
            for t in range(j + 1, i):
                v = v + L[i][t] * Li[t][j]
            Li[i][j] = -v * dinv
    return Li, ok


def chol_solve(xp, Linv, b):
    """``A^{-1} b`` from the inverse Cholesky factor (:func:`small_mv`, :func:`small_mtv`)."""
    return small_mtv(xp, Linv, small_mv(xp, Linv, b))

