"""numba fast path of the Levenberg-Marquardt normal-equations block on NumPy (small ``n``).

After each Jacobian the engine forms, for every problem of the working set,
``J^T J`` (k, n, n), ``g = J^T f`` (k, n) and the column norms
``sqrt(diag(J^T J))``, with the new Jacobians merged into the old ones where
a problem's last step was rejected
(:func:`agnopt._least_squares.routes.normal_block`, :func:`~.routes.gram`).
On NumPy that is a copy of the (k, m, n) stack for the merge and a stacked
``matmul`` that calls BLAS once per problem; here it is one pass over each
problem's Jacobian (:func:`_gram_rows`), which reads it once and writes the
merged stack only when some problem keeps its old Jacobian.

The products are plain loops (summation over the ``m`` residuals in order),
where ``numpy.matmul`` calls BLAS (whose order of summation depends on the
machine, ``m``, ``n`` and the dtype): the two agree to rounding, which
``tests/test_lm_batched_fast.py`` checks. Every NumPy solve with ``n <=
MAX_N`` takes this kernel when numba is on, whatever the size of its batch
(one problem too), so a problem's numbers do not depend on its batch; with
``AGNOPT_FAST=0`` every solve takes the generic blocks. An optional
accelerator (numba: ``pip install agnopt[numba]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import lm_batched_cpu as K
from .lm_batched_cpu import MAX_N, mode


def applies(J) -> bool:
    """Whether the kernel runs for the Jacobian stack ``J`` (k, m, n): a NumPy float32 /
    float64 array with ``m >= 1``, ``1 <= n <= MAX_N`` and numba on (``AGNOPT_FAST``)."""
    if type(J) is not np.ndarray or J.dtype not in (np.float32, np.float64) or J.ndim != 3:
        return False
    if not (1 <= J.shape[2] <= MAX_N and J.shape[1] >= 1) or mode() == "off":
        return False
    _compile()
    return True


def _gram_rows(Fm, Jn, Jold, nj, merge, with_g, J, A0, g):
    """Row ``r``: its Jacobian ``Jn[r]`` where ``nj[r]`` (else ``Jold[r]``; copied into
    ``J[r]`` when ``merge``), ``A0[r] = J^T J`` (both triangles, the same sums),
    ``g[r] = J^T Fm[r]`` (when ``with_g``); each entry a sum over the ``m`` residuals in
    order (up to four entries of a column of ``A0`` and one of ``g`` per pass: independent
    chains). Returns ``fine``: the diagonal of ``A0`` is finite at every row of ``nj``
    (a non-finite entry of ``J``, or an overflow, makes it non-finite)."""
    k, m, n = Jn.shape
    zero = A0.dtype.type(0)
    fine = True
    for r in range(k):
        Jr = Jn[r] if nj[r] else Jold[r]
        if merge:
            for i in range(m):
                for a in range(n):
                    J[r, i, a] = Jr[i, a]
        Fr = Fm[r]
        for a in range(n):
            for b0 in range(0, a + 1, 4):
                # (b1..b3 past the diagonal repeat it: the same sum again)
                b1, b2, b3 = min(b0 + 1, a), min(b0 + 2, a), min(b0 + 3, a)
                s0 = zero
                s1 = zero
                s2 = zero
                s3 = zero
                sg = zero
                for i in range(m):
                    va = Jr[i, a]
                    s0 += va * Jr[i, b0]
                    s1 += va * Jr[i, b1]
                    s2 += va * Jr[i, b2]
                    s3 += va * Jr[i, b3]
                    if with_g:
                        sg += Fr[i] * va
                A0[r, a, b0] = s0
                A0[r, b0, a] = s0
                A0[r, a, b1] = s1
                A0[r, b1, a] = s1
                A0[r, a, b2] = s2
                A0[r, b2, a] = s2
                A0[r, a, b3] = s3
                A0[r, b3, a] = s3
                if with_g and b0 == 0:
                    g[r, a] = sg
            if nj[r] and not np.isfinite(A0[r, a, a]):
                fine = False
    return fine


def _jp_rows(A0, p, out, buf, y):
    """``out[r] = sum(p[r] * small_mv(A0[r], p[r]))`` (``||J p||^2`` of the Cholesky
    route, :meth:`agnopt._least_squares.routes.InMemoryRoute.jp_norm2`): the same
    products and NumPy's pairwise sums (:func:`.lm_batched_cpu._psum`), so bit for bit."""
    k, n = p.shape
    for r in range(k):
        for i in range(n):
            for j in range(n):
                buf[j] = A0[r, i, j] * p[r, j]
            y[i] = p[r, i] * K._psum(buf, n)
        out[r] = K._psum(y, n)


gram_rows: Any = None
jp_rows: Any = None


def _compile() -> None:
    """The numba versions of the kernels (made once per process; compiled on first call for
    each dtype, cached on disk)."""
    global gram_rows, jp_rows
    if gram_rows is not None:
        return
    import numba

    K._compile()  # (its _psum, which jp_rows calls)
    jit = numba.njit(error_model="numpy", fastmath=False, nogil=True, cache=True)
    gram_rows, jp_rows = jit(_gram_rows), jit(_jp_rows)


def normal_block(Fm, Jn, J_old, nj):
    """:func:`agnopt._least_squares.routes.normal_block` (Cholesky route) by
    :func:`_gram_rows`: ``(J, A0, dA, g, cn, fine)``, ``fine`` a Python bool."""
    _compile()
    k, m, n = Jn.shape
    dt = Jn.dtype
    same = J_old is Jn  # (the first Jacobian merges into itself)
    Jn = np.ascontiguousarray(Jn)
    nj = np.ascontiguousarray(nj, dtype=np.bool_)
    merge = not same and not bool(nj.all())
    J = np.empty_like(Jn) if merge else Jn
    J_old = np.ascontiguousarray(J_old, dtype=dt) if merge else Jn
    A0 = np.empty((k, n, n), dtype=dt)
    g = np.empty((k, n), dtype=dt)
    fine = gram_rows(np.ascontiguousarray(Fm, dtype=dt), Jn, J_old, nj, merge, True, J, A0, g)
    dA = np.reshape(A0, (k, n * n))[:, ::n + 1]
    return J, A0, dA, g, np.sqrt(dA), bool(fine)


def gram(J):
    """:func:`agnopt._least_squares.routes.gram` by :func:`_gram_rows`: ``(A0, dA)``."""
    _compile()
    k, m, n = J.shape
    dt = J.dtype
    J = np.ascontiguousarray(J)
    A0 = np.empty((k, n, n), dtype=dt)
    g = np.empty((k, n), dtype=dt)
    nj = np.ones(k, dtype=np.bool_)
    gram_rows(np.empty((k, 0), dtype=dt), J, J, nj, False, False, J, A0, g)
    return A0, np.reshape(A0, (k, n * n))[:, ::n + 1]


def jp_norm2(A0, p):
    """``sum(p * small_mv(A0, p), axis=-1)`` (k,) by :func:`_jp_rows` (bit for bit)."""
    _compile()
    k, n = p.shape
    dt = A0.dtype
    out = np.empty(k, dtype=dt)
    jp_rows(np.ascontiguousarray(A0), np.ascontiguousarray(p, dtype=dt), out,
            np.empty(n, dtype=dt), np.empty(n, dtype=dt))
    return out
