"""The start of a solve: ``x0`` as a ``(B, n)`` array, the bounds and the ``x_scale``
scaling, checked with scipy's rules and messages (``least_squares``; the tall
path shares :func:`scale_from`)."""

from __future__ import annotations

import math

import array_api_compat

from .._core.backend import committed, native_namespace, resolve
from .._derivatives.numdiff import prepare_bounds
from .arrays import device
from .options import as_array, check_backend, to_backend

__all__ = ["checked_bounds", "dtype_kind", "half_message", "scale_from", "start_point"]


# (type(dtype), dtype) -> "complex", "int" (integer or bool), "half" or "" (str of a dtype is slow);
# the type first, so a lookup never compares two libraries' dtypes (array_api_strict warns)
_KIND: dict = {}


def dtype_kind(dt) -> str:
    """``"complex"``, ``"int"`` (integer or bool), ``"half"`` (float16, bfloat16) or ``""``
    for a dtype of any library (cached per dtype)."""
    try:
        return _KIND[type(dt), dt]
    except (KeyError, TypeError):
        pass
    sdt = "" if dt is None else str(dt)
    kind = ("complex" if "complex" in sdt
            else "int" if any(k in sdt for k in ("int", "bool"))
            else "half" if sdt.rsplit(".", 1)[-1] in ("float16", "bfloat16") else "")
    try:
        _KIND[type(dt), dt] = kind
    except TypeError:  # pragma: no cover - unhashable dtype objects
        pass
    return kind


def half_message(what, dt) -> str:
    """The ``TypeError`` message for a 16-bit float ``what`` (x0, ydata)."""
    name = str(dt).rsplit(".", 1)[-1]
    return (f"{what}: dtype {name} is not supported: the solve's linear algebra (QR, SVD, "
            "Cholesky) needs float32 or float64 (scipy computes in float64); convert it, "
            "e.g. astype(float32)")


def start_point(x0, batched):
    """``(xp, device, x0, X)``: ``x0`` as an array and ``X`` (B, n) (B = 1 unbatched)."""
    x0 = as_array(x0, "x0")
    kind = dtype_kind(getattr(x0, "dtype", None))
    if kind == "complex":
        raise ValueError("x0: must be real, got a complex array")
    if kind == "half":
        raise TypeError(half_message("x0", x0.dtype))
    if kind == "int":
        # scipy casts integer starting points to float64
        x0 = array_api_compat.array_namespace(x0).astype(
            x0, array_api_compat.array_namespace(x0).float64)
    xp, dev = resolve(x0, "x0")
    x0 = committed(x0, dev)  # JAX: one kind of input for the compiled blocks
    if batched:
        if x0.ndim != 2:
            raise ValueError(
                f"x0: with batched=True expected shape (B, n) or (n,), got shape {tuple(x0.shape)}"
            )
        X = x0
    else:
        if x0.ndim == 0:
            x0 = xp.reshape(x0, (1,))
        if x0.ndim != 1:
            raise ValueError(
                f"x0: expected a 1-D array of shape (n,), got shape {tuple(x0.shape)} "
                "(pass batched=True for a batch of problems)"
            )
        X = xp.reshape(x0, (1, x0.shape[0]))
    B, n = X.shape
    if n == 0 or B == 0:
        raise ValueError(f"x0: empty array of shape {tuple(x0.shape)}")
    nx = native_namespace(xp)
    if not bool(nx.all(nx.isfinite(X))):
        raise ValueError("x0: contains non-finite values")
    return xp, dev, x0, X


def checked_bounds(xp, bounds, X, x0, batched):
    """``(lb, ub, bounded)``: bounds (B, n) checked against ``X``."""
    lo, hi = bounds
    if (type(lo) is float and type(hi) is float and lo == -math.inf and hi == math.inf):
        # the default (-inf, inf): nothing to check (X is finite)
        dev = device(X)
        return (xp.full(X.shape, -math.inf, dtype=X.dtype, device=dev),
                xp.full(X.shape, math.inf, dtype=X.dtype, device=dev), False)
    if isinstance(bounds, (tuple, list)):
        for b in bounds:
            check_backend(b, xp, "bounds")
    if not batched:
        # scipy's rule: a bound is a scalar or has x0's shape (a (1,) bound is not
        # broadcast to n > 1 variables, nor an (n,) bound to a scalar x0)
        for name, b in zip(("lb", "ub"), bounds):
            shp = tuple(getattr(b, "shape", ())) if hasattr(b, "shape") else (
                (len(b),) if isinstance(b, (list, tuple)) else ())
            if len(shp) > 0 and shp != tuple(x0.shape):
                raise ValueError(f"bounds: Inconsistent shapes between bounds and `x0` "
                                 f"({name} {shp}, x0 {tuple(x0.shape)})")
    lb, ub = prepare_bounds(xp, bounds, X if batched else x0)
    lb = xp.reshape(xp.broadcast_to(lb, X.shape), X.shape) if not batched else lb
    ub = xp.reshape(xp.broadcast_to(ub, X.shape), X.shape) if not batched else ub
    if bool(xp.any(lb >= ub)):
        raise ValueError("bounds: each lower bound must be strictly less than each upper bound")
    if bool(xp.any((X < lb) | (X > ub))):
        raise ValueError("x0 is infeasible: Initial guess is outside of provided bounds")
    return lb, ub, bool(xp.any(xp.isfinite(lb) | xp.isfinite(ub)))


def scale_from(xp, x_scale, X, dev):
    """``D = 1 / x_scale`` (B, n) from a positive array (or number) ``x_scale``."""
    xs = x_scale if hasattr(x_scale, "shape") else as_array(x_scale, "x_scale")
    xs = to_backend(xp, xs, X.dtype, dev)
    try:
        xs = xp.broadcast_to(xs, X.shape)
    except Exception as e:
        raise ValueError(
            f"x_scale: shape {tuple(xs.shape)} does not broadcast to x0's shape"
        ) from e
    if not bool(xp.all(xp.isfinite(xs) & (xs > 0))):
        raise ValueError("x_scale: must be 'jac' or an array of positive finite numbers")
    return 1.0 / xs
