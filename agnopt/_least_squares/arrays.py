"""Small array helpers of the least-squares package: devices, host transfers, Dask persistence.

Laziness and host transfers are decided by :mod:`agnopt._core.lazy`; these
helpers only apply its answers to the shapes used here.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from .._core import lazy
from .._core.backend import numpy_scalar_namespace
from .._core.user_code import call_user

# ``call_checked(fun, X, what, where)``: ``fun(X)``; an exception it raises
# propagates with its own type and message (as scipy), with a note naming
# ``what`` and ``where``
call_checked = call_user


def device(x):
    return array_api_compat.device(x)


def detach(a: Any) -> Any:
    """``a`` out of torch's autograd graph (``a.detach()``: the same data) when it is a
    tensor that requires grad, else ``a`` itself. ``curve_fit`` is not differentiable
    through agnopt: its data and ``p0`` are detached so that the fit neither records
    a graph nor converts graph tensors to Python numbers (torch's warning)."""
    return a.detach() if getattr(a, "requires_grad", False) is True else a


def host_linalg(xp: Any, fname: str, A: Any, **kw: Any) -> tuple:
    """``xp.linalg.<fname>`` on a stack of small matrices.

    Dask's linalg has no batched (stacked) SVD / eigh, so for Dask the
    (small: B x m x n) stack is materialized, decomposed with the namespace
    of the computed chunk (NumPy or CuPy) and wrapped back into Dask arrays
    (:func:`agnopt._core.lazy.to_local`). Every other backend calls
    ``xp.linalg`` directly.
    """
    if lazy.is_dask_namespace(xp):
        ns, An = lazy.to_local(xp, A)
        res = getattr(ns.linalg, fname)(An, **kw)
        return tuple(xp.asarray(r) for r in res)
    return tuple(getattr(xp.linalg, fname)(A, **kw))


def persist(xp: Any, *arrs: Any) -> tuple:
    """Dask: compute the state so the graph does not grow with the iterations."""
    if not lazy.is_dask_namespace(xp):
        return arrs
    return lazy.persist(*arrs)


def host_ints(a) -> list:
    """An integer array as a Python list (one transfer, not one per entry)."""
    (a,) = lazy.compute(a)
    tolist = getattr(a, "tolist", None)
    if tolist is not None:
        return [int(v) for v in tolist()]
    return [int(v) for v in a]


def host_bools(a) -> list:
    """A boolean array (1-D) as a list of Python bools (one transfer, not one per entry)."""
    tolist = getattr(a, "tolist", None)  # (Dask arrays have none: computed first)
    if tolist is None:
        (a,) = lazy.compute(a)
        tolist = getattr(a, "tolist", None)
    if tolist is not None:
        return [bool(v) for v in tolist()]
    return [bool(v) for v in a]


def indices(xp, mask) -> list:
    """The first ten indices where ``mask`` (B,) is true, as Python ints."""
    (vals,) = lazy.compute(mask)
    return [i for i in range(mask.shape[0]) if bool(vals[i])][:10]


def to_namespace(xp: Any, a: Any, dtype: Any, dev: Any) -> Any:
    """A small computed array ``a`` as an array of ``xp`` on ``dev``.

    ``xp.asarray`` when it takes ``a``; an array of another library or device
    (CuPy or CUDA-torch reductions for a NumPy ``x0``) is copied through
    DLPack (``xp.from_dlpack(a, device=dev, copy=True)``), never by an
    implicit ``numpy.asarray`` of a device array.
    """
    try:
        return xp.asarray(a, dtype=dtype, device=dev)
    except (TypeError, ValueError, RuntimeError, BufferError):
        pass
    try:
        b = xp.from_dlpack(a, device=dev, copy=True)
    except (TypeError, ValueError, RuntimeError, BufferError, AttributeError):
        b = xp.asarray(a.tolist(), device=dev)
    return xp.astype(b, dtype) if b.dtype != dtype else b


_EPS: dict = {}


_COUNT: dict = {}


def count_dtype(xp: Any) -> Any:
    """The integer dtype of the solvers' counters and codes (``nfev``, ``njev``,
    ``nit``, ``info``, statuses): int64, but int32 on JAX without
    ``jax_enable_x64`` (JAX's default), where an int64 request is truncated to
    int32 with a warning."""
    try:
        return _COUNT[xp]
    except (KeyError, TypeError):
        pass
    if array_api_compat.is_jax_namespace(xp):
        import jax

        x64 = bool(getattr(jax.config, "jax_enable_x64", True))
        return xp.int64 if x64 else xp.int32  # (not cached: a setting)
    dt = xp.int64
    try:
        _COUNT[xp] = dt
    except TypeError:  # pragma: no cover
        pass
    return dt


def machine_eps(xp: Any, dtype: Any) -> float:
    """``finfo(dtype).eps`` as a Python float, remembered per namespace and dtype
    (``finfo`` costs as much as several small array operations)."""
    try:
        return _EPS[(xp, dtype)]
    except KeyError:
        val = _EPS[(xp, dtype)] = float(xp.finfo(dtype).eps)
        return val
    except TypeError:  # pragma: no cover - unhashable dtype objects
        return float(xp.finfo(dtype).eps)


def scalar_namespace(xp: Any, X: Any) -> Any:
    """:func:`agnopt._core.backend.numpy_scalar_namespace` when ``X`` is one
    problem's ``(1, n)`` float64 NumPy point (the per-problem tests of the
    engine may then run on scalars, :func:`on_scalars`), else ``None``."""
    if X.shape[0] != 1 or not array_api_compat.is_numpy_array(X) or X.dtype != xp.float64:
        return None
    return numpy_scalar_namespace()


def _scalars_of(a: Any) -> Any:
    if getattr(a, "shape", None) == (1,):
        return a[0]
    if isinstance(a, tuple) and hasattr(a, "_fields"):  # a state NamedTuple
        cls: Any = type(a)
        return cls._make([v[0] if getattr(v, "shape", None) == (1,) else v for v in a])
    return a


def _array_of(xp: Any, v: Any) -> Any:
    if getattr(v, "shape", None) == ():  # a NumPy scalar
        return xp.asarray([v], dtype=v.dtype)
    if isinstance(v, (bool, int, float)):
        return xp.asarray([v])
    return v


def on_scalars(sx: Any, xp: Any, fn: Any, *args: Any) -> Any:
    """``fn(xp, *args)`` for one problem, computed on NumPy scalars.

    Every ``(1,)`` array among ``args`` (and among the fields of a state
    NamedTuple) is read as its scalar, ``fn`` runs with the scalar namespace
    ``sx`` (:func:`scalar_namespace`), and what it returns comes back as
    ``(1,)`` arrays: a tuple of values, or a state NamedTuple (fields it did
    not change are the caller's arrays). The same operations on the same
    IEEE doubles: the same numbers as ``fn(xp, *args)``, bit for bit, for a
    function of per-problem ``(k,)`` values only.
    """
    conv = [_scalars_of(a) for a in args]
    out = fn(sx, *conv)
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        cls: Any = type(out)
        for a, c in zip(args, conv):
            if type(a) is cls:
                return cls._make([ao if vo is vc else _array_of(xp, vo)
                                  for ao, vc, vo in zip(a, c, out)])
        return cls._make([_array_of(xp, v) for v in out])
    if isinstance(out, tuple):
        return tuple(_array_of(xp, v) for v in out)
    return _array_of(xp, out)


def shared_x0(fun: Any, x0: Any, args: tuple, kwargs: dict) -> Any:
    """A batched ``x0`` of shape ``(n,)``, shared by every problem, as ``(B, n)``.

    ``B`` is read from ``fun`` (``least_squares`` has no other input with a
    problem axis): ``fun`` is called once at ``x0[None, :]`` ``(1, n)``, and
    the number of rows of its residuals ``(B, m)`` is ``B`` (a ``fun`` that
    broadcasts its parameters against per-problem data returns all ``B``
    rows). Returns a new ``(B, n)`` array of ``x0``'s backend.
    """
    xp = array_api_compat.array_namespace(x0)
    n = x0.shape[0]
    X1 = xp.reshape(x0, (1, n))
    F1 = call_checked(lambda z: fun(z, *args, **kwargs), X1, "fun",
                      "at x0[None, :] (a shared x0 of shape (n,) with batched=True)")
    shape = tuple(getattr(F1, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"fun: with batched=True and x0 of shape (n,) = ({n},), fun(x0[None, :]) "
                         f"must return residuals (B, m), got shape {shape}")
    B = int(shape[0])
    return X1 + xp.zeros((B, n), dtype=x0.dtype, device=array_api_compat.device(x0))
