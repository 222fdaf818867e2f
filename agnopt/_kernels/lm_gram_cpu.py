"""numba fast path of ``||J p||^2`` on the Cholesky route of a batched NumPy solve.

The predicted reduction of each trial step needs ``||J p||^2 = p^T (J^T J) p``
per problem (:meth:`agnopt._least_squares.routes.InMemoryRoute.jp_norm2`,
``sum(p * small_mv(A0, p))``): two products and two sums over a (k, n, n)
stack, a few NumPy calls with (k, n, n) temporaries per iteration. Here
(:func:`_jp_rows`) it is one loop over the rows with the same products and
NumPy's pairwise sums (:func:`.lm_batched_cpu._psum`), so the numbers are the
same bit for bit (``tests/test_lm_gram_fast.py``). Used where the batched row
kernels are (:func:`.lm_batched_cpu.applies`); an optional accelerator (numba:
``pip install agnopt[numba]``).

(``J^T J`` itself stays ``numpy.matmul``: a loop summing in order is no faster
than BLAS here, and could not give BLAS's numbers, which the one-problem
kernels of :mod:`.lm_cpu` / :mod:`.lm_route` reproduce bit for bit.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import lm_batched_cpu as K


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


jp_rows: Any = None


def _compile() -> None:
    """The numba version of the kernel (made once per process; compiled on first call for
    each dtype, cached on disk)."""
    global jp_rows
    if jp_rows is not None:
        return
    import numba

    K._compile()  # (its _psum, which jp_rows calls)
    jit = numba.njit(error_model="numpy", fastmath=False, nogil=True, cache=True)
    jp_rows = jit(_jp_rows)


def jp_norm2(A0, p):
    """``sum(p * small_mv(A0, p), axis=-1)`` (k,) by :func:`_jp_rows` (bit for bit)."""
    _compile()
    k, n = p.shape
    dt = A0.dtype
    out = np.empty(k, dtype=dt)
    jp_rows(np.ascontiguousarray(A0), np.ascontiguousarray(p, dtype=dt), out,
            np.empty(n, dtype=dt), np.empty(n, dtype=dt))
    return out
