r"""Numerics at the edges, shared by every algorithm: opmath dtypes, safe roots, scaled norms.

* :func:`opmath_dtype`: the dtype arithmetic is done in. Half-precision
  storage (float16, bfloat16) is computed in float32 and rounded once when
  stored, as torch's fused optimizer kernels do ("opmath"); float32 and
  float64 are computed in their own dtype.
* :func:`safe_sqrt`: ``sqrt(a)`` whose derivative stays finite at ``a = 0``
  on backends that differentiate (JAX, torch): the "double ``where``" form
  (the root is taken of ``where(a > 0, a, 1)``, so its infinite derivative
  at 0 is never formed). Forward values are ``sqrt``'s for every
  ``a >= 0``, ``-0.0``, ``inf`` and NaN.
* :func:`scaled_norm`: the L2 norm of a list of arrays, computed as
  ``s * sqrt(sum((x / s)**2))`` with ``s`` the power of two at or below
  ``max |x|``, in opmath, so neither
  the squares nor their sum overflow or underflow (LAPACK's ``xNRM2`` idea;
  Blue, 1978). Safe to differentiate at ``x = 0``.

No ``import numpy``: everything goes through the namespace ``xp``.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

__all__ = ["opmath_dtype", "is_low_precision", "differentiable", "safe_sqrt", "scaled_norm"]

_OPMATH: dict = {}


def is_low_precision(xp: Any, dtype: Any) -> bool:
    """True for floating dtypes narrower than 32 bits (float16, bfloat16)."""
    return opmath_dtype(xp, dtype) != dtype


def opmath_dtype(xp: Any, dtype: Any) -> Any:
    """``xp.float32`` for float16/bfloat16, else ``dtype`` itself."""
    key = (id(xp), dtype)
    hit = _OPMATH.get(key)
    if hit is None:
        try:
            low = xp.finfo(dtype).bits < 32
        except Exception:  # not a floating dtype: leave it alone
            low = False
        hit = _OPMATH[key] = (xp.float32 if low else dtype,)
    return hit[0]


def differentiable(xp: Any) -> bool:
    """True for namespaces whose arrays can carry derivatives (JAX, torch)."""
    return bool(array_api_compat.is_jax_namespace(xp) or array_api_compat.is_torch_namespace(xp))


def safe_sqrt(xp: Any, a: Any) -> Any:
    """``sqrt(a)`` with a finite derivative at ``a = 0`` (double ``where``).

    On NumPy, CuPy, Dask and array-api-strict (no derivatives) this is
    ``xp.sqrt(a)``. On JAX and torch the root is taken of ``where(a > 0, a,
    1)`` and ``a * 0`` is returned elsewhere (``0`` for ``0``, ``-0.0`` for
    ``-0.0``, NaN for NaN: the values of ``sqrt``), so the derivative at 0 is
    0 instead of ``inf * 0 = NaN``.
    """
    if not differentiable(xp):
        return xp.sqrt(a)
    pos = a > 0
    return xp.where(pos, xp.sqrt(xp.where(pos, a, xp.ones_like(a))), a * 0.0)


def scaled_norm(xp: Any, leaves: list, dtype: Any = None) -> Any:
    """The L2 norm of all elements of ``leaves`` as a 0-d array, without overflow or underflow.

    Parameters
    ----------
    xp : namespace
        The Array API namespace of ``leaves``.
    leaves : list of arrays
        Any shapes, one backend and device; floating dtypes.
    dtype : dtype, optional
        The dtype to compute in; default: the opmath dtype of the leaves'
        common dtype (float32 for float16/bfloat16 leaves).

    Returns
    -------
    0-d array of ``dtype``
        ``s * sqrt(sum_i sum((x_i / s)**2))`` with ``s`` the power of two at
        or below ``max_i max |x_i|``
        (0 when every element is 0 or ``leaves`` holds no element; inf when
        some element is infinite; NaN when some element is NaN). Exact to a
        few ulps of ``dtype`` wherever the norm itself is representable (the
        squares never leave the range of ``dtype``). Derivatives (JAX, torch)
        are finite at 0 (see :func:`safe_sqrt`).

    References
    ----------
    J. L. Blue, "A portable Fortran program to find the Euclidean norm of a
    vector", ACM TOMS 4 (1978); LAPACK ``dnrm2``.
    """
    leaves = [x for x in leaves if _size(x) > 0]
    if dtype is None:
        if not leaves:
            raise ValueError("scaled_norm: give a dtype when no leaf has an element")
        dt = leaves[0].dtype
        for x in leaves[1:]:
            if x.dtype != dt:
                dt = xp.result_type(dt, x.dtype)
        dtype = opmath_dtype(xp, dt)
    xs = [x if x.dtype == dtype else xp.astype(x, dtype) for x in leaves]
    if not xs:
        return xp.zeros((), dtype=dtype)
    scale: Any = None
    for x in xs:
        m = xp.max(xp.abs(x))
        scale = m if scale is None else xp.maximum(scale, m)
    # s = the power of two at or below max|x| where that is a usable scale (x / s is then
    # exact, and floor() gives s a zero derivative, so no 1/s^2 term that could
    # overflow appears in derivatives); 1 for 0 (all zero), inf and NaN, so that
    # sqrt(sum(x*x)) gives 0, inf and NaN themselves
    usable = (scale > 0) & (scale < xp.inf)
    one = xp.ones_like(scale)
    s = xp.where(usable, 2.0 ** xp.floor(xp.log2(xp.where(usable, scale, one))), one)
    total = None
    for x in xs:
        y = x / s
        t = xp.sum(y * y)
        total = t if total is None else total + t
    return s * safe_sqrt(xp, total)


def _size(x: Any) -> int:
    n = 1
    for d in x.shape:
        n *= int(d) if d is not None else 1
    return n
