r"""Checked dense linear algebra shared by the solvers.

The backends disagree on how a Cholesky factorization reports failure:

* NumPy, array-api-strict (and Dask computed into NumPy) raise
  ``numpy.linalg.LinAlgError``; torch raises ``torch.linalg.LinAlgError`` (a
  ``RuntimeError``), on the CPU and on CUDA.
* JAX returns a factor full of NaNs.
* CuPy, by default, raises nothing: ``cupy.linalg.cholesky`` runs cuSOLVER's
  ``potrf`` and, unless ``cupyx.errstate(linalg="raise")`` is in effect,
  ignores its ``info`` and returns the lower triangle of a *partial* factor,
  whose failing pivot is non-positive or NaN and whose trailing block is not
  factorized at all.

:func:`cholesky` turns all of these into one answer, the lower factor or
``None``, and it catches only the linear-algebra errors above: an
out-of-memory or driver error of the device propagates (treating it as "not
positive definite" turned Newton into steepest descent on a busy GPU).

A factor is accepted only if every pivot :math:`L_{ii}` is positive
(checked on :math:`L_{ii}` itself, before any squaring, which would hide the
sign; a NaN pivot fails it), the pivots are not at rounding level (an
infinite pivot fails this) (:math:`\min_i L_{ii}^2
> 10\,n\,\epsilon \max_i L_{ii}^2`), and the factor reproduces the matrix on
one vector: :math:`\|L(L^Tv) - Av\|_\infty \le 8 (n+1)\,n\,\epsilon
\max_i A_{ii} \|v\|_\infty` with :math:`v_j = 1 + j/n` (a correct Cholesky
factor has backward error :math:`|LL^T - A| \le (n+1)\epsilon |L||L^T|`
elementwise, and :math:`(|L||L^T|)_{ij} \le \sqrt{A_{ii}A_{jj}}`; Higham,
*Accuracy and Stability of Numerical Algorithms*, 2nd ed., Thm. 10.3). The
last test costs two matrix-vector products and rejects a partial factor
whatever the backend left in its unfactorized block. It also rejects any
non-finite entry of :math:`L` or of :math:`A` (the entries of :math:`v` are
positive, so a non-finite entry makes the residual non-finite): an accepted
factor proves both finite, with no separate scan of either.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import array_api_compat

__all__ = ["cholesky", "cho_solve", "linalg_errors", "is_symmetric"]


def linalg_errors() -> tuple[type[BaseException], ...]:
    """The exception types by which backends report a singular or indefinite
    matrix: ``numpy.linalg.LinAlgError`` (NumPy, array-api-strict, CuPy,
    Dask) and ``torch.linalg.LinAlgError``, for the libraries imported."""
    errs: list[type[BaseException]] = []
    np = sys.modules.get("numpy")
    if np is not None:
        errs.append(np.linalg.LinAlgError)
    torch = sys.modules.get("torch")
    err = getattr(getattr(torch, "linalg", None), "LinAlgError", None)
    if isinstance(err, type) and issubclass(err, BaseException):
        errs.append(err)
    return tuple(errs)


def _raising(xl: Any) -> Any:
    """A context in which the backend raises on a failed factorization
    (CuPy: ``cupyx.errstate(linalg="raise")``; others raise already)."""
    if array_api_compat.is_cupy_namespace(xl):
        try:
            import cupyx

            return cupyx.errstate(linalg="raise")
        except (ImportError, AttributeError, TypeError):  # pragma: no cover - old CuPy
            pass
    return contextlib.nullcontext()


def cholesky(xl: Any, A: Any, *, fast: bool = True) -> Any | None:
    r"""Lower Cholesky factor of a symmetric ``A``, or ``None`` where ``A`` is not
    (numerically) positive definite.

    Parameters
    ----------
    xl : namespace
        The Array API namespace of ``A`` (an eager backend: compute Dask arrays
        first).
    A : array, shape (n, n), real floating
        Symmetric; only its lower triangle is read by the factorization.
    fast : bool
        Use the backend's fast path where there is one (NumPy with SciPy
        installed: ``scipy.linalg.cholesky``, LAPACK ``potrf`` without NumPy's
        gufunc copies, about 2.5x faster at n = 500); ``False`` forces the
        Array API path (tests compare the two).

    Returns
    -------
    array, shape (n, n), or None
        ``L`` with ``L @ L.T == A`` (to rounding), or ``None`` when the backend
        reports failure (raises, NaNs) or the factor fails the checks in the
        module docstring.

    Raises
    ------
    Any exception of the backend other than its linear-algebra error (device
    out of memory, driver errors) propagates unchanged.
    """
    errors = linalg_errors()
    kind = _fast_kind(xl) if fast else None
    try:
        with _raising(xl):
            if kind == "scipy":
                import scipy.linalg

                L = scipy.linalg.cholesky(A, lower=True, check_finite=False)
            else:
                L = xl.linalg.cholesky(A)
    except errors:
        return None
    d = xl.linalg.diagonal(L)
    n = A.shape[0]
    # (no isfinite(L) scan: a non-finite entry fails the residual test below)
    if not float(xl.min(d)) > 0.0:
        return None
    d = d ** 2
    eps = float(xl.finfo(A.dtype).eps)
    if not float(xl.min(d)) > 10.0 * n * eps * float(xl.max(d)):
        return None
    dev = array_api_compat.device(A)
    v = 1.0 + xl.arange(n, dtype=A.dtype, device=dev) / n
    r = L @ (xl.linalg.matrix_transpose(L) @ v) - A @ v
    bound = 8.0 * (n + 1) * n * eps * float(xl.max(xl.linalg.diagonal(A))) * 2.0
    if not float(xl.max(xl.abs(r))) <= bound:
        return None
    return L


def cho_solve(xl: Any, L: Any, b: Any, *, fast: bool = True) -> Any | None:
    """Solve ``L L^T x = b`` for ``b`` of shape ``(n,)``; ``None`` where the
    backend reports a singular triangular factor.

    The Array API has no triangular solve, so the generic path makes two
    general ``solve`` calls (LU, :math:`\\tfrac43 n^3` flops). Fast paths
    (``fast=True``), all :math:`2n^2`: NumPy with SciPy ``scipy.linalg.cho_solve``
    (LAPACK ``potrs``), torch ``torch.cholesky_solve``, JAX
    ``jax.scipy.linalg.cho_solve``, CuPy ``cupyx.scipy.linalg.solve_triangular``.
    A zero pivot gives non-finite entries there instead of an error; callers
    check finiteness.
    """
    kind = _fast_kind(xl) if fast else None
    try:
        if kind == "scipy":
            import scipy.linalg

            return scipy.linalg.cho_solve((L, True), b, check_finite=False)
        if kind == "torch":
            import torch

            return torch.cholesky_solve(b[:, None], L)[:, 0]
        if kind == "jax":
            import jax.scipy.linalg

            return jax.scipy.linalg.cho_solve((L, True), b)
        if kind == "cupy":
            import cupyx.scipy.linalg as cl

            y = cl.solve_triangular(L, b, lower=True)
            return cl.solve_triangular(L.T, y, lower=False)
        y = xl.linalg.solve(L, b[:, None])
        return xl.linalg.solve(xl.linalg.matrix_transpose(L), y)[:, 0]
    except linalg_errors():
        return None


def is_symmetric(xl: Any, A: Any) -> bool:
    """``all(A == A^T)`` for a square ``A``: exactly, NaN unequal to itself.

    NumPy with SciPy: ``scipy.linalg.issymmetric`` (compiled, stops at the
    first difference, no boolean temporary; about 2x faster at n = 500), plus
    a look at the diagonal for NaN, which that function does not compare.
    """
    if (_fast_kind(xl) == "scipy" and getattr(A, "ndim", 0) == 2
            and A.dtype in (xl.float32, xl.float64)):
        import scipy.linalg

        d = xl.linalg.diagonal(A)
        return bool(scipy.linalg.issymmetric(A)) and not bool(xl.any(xl.isnan(d)))
    return bool(xl.all(A == xl.linalg.matrix_transpose(A)))


def _fast_kind(xl: Any) -> str | None:
    """Which backend fast path applies to namespace ``xl`` (None: generic)."""
    if array_api_compat.is_numpy_namespace(xl):
        return "scipy" if _has("scipy.linalg") else None
    if array_api_compat.is_torch_namespace(xl):
        return "torch"
    if array_api_compat.is_jax_namespace(xl):
        return "jax" if _has("jax.scipy.linalg") else None
    if array_api_compat.is_cupy_namespace(xl):
        return "cupy" if _has("cupyx.scipy.linalg") else None
    return None


_HAS: dict[str, bool] = {}


def _has(module: str) -> bool:
    if module not in _HAS:
        try:
            __import__(module)
            _HAS[module] = True
        except ImportError:
            _HAS[module] = False
    return _HAS[module]
