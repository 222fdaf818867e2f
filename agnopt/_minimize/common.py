"""Pieces shared by the minimize methods: Dask-aware scalar reads, the
gradient-norm test and the bookkeeping after an accepted step."""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import array_api_compat

from .._core.lazy import host_floats as _floats, persist
from .._core.lazy import is_dask as _is_dask, to_local as _local  # noqa: F401 (used by the methods)
from .._core.result import OptimizeResult


def _persist(a: Any) -> Any:
    """Dask: compute and keep ``a`` so graphs do not grow with iterations."""
    return persist(a)[0]


def _back(xp: Any, a: Any, dtype: Any, device: Any) -> Any:
    if array_api_compat.array_namespace(a) is xp:
        return a
    return xp.asarray(a, dtype=dtype, device=device)


def _wants_intermediate(callback: Callable) -> bool:
    try:
        params = inspect.signature(callback).parameters
    except (TypeError, ValueError):
        return False
    return "intermediate_result" in params


def _nonnegative(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a non-negative number, got {value!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return v


def _gnorm(xp: Any, g: Any) -> float:
    r""":math:`\|g\|_\infty` as a float (NaN passes: the callers report status 4).

    A negative value is impossible arithmetic: the device returned garbage (a
    CUDA context broken by an earlier error, e.g. out of memory, can leave a
    kernel's output buffer unwritten). Reporting success on it would be a
    silent wrong answer, so it raises ``RuntimeError``.
    """
    gn = float(xp.max(xp.abs(g)))
    if gn < 0:
        raise RuntimeError(
            f"max(|g|) came back negative ({gn}) from the {getattr(xp, '__name__', xp)} "
            "backend: the device returned an impossible value (check the device for "
            "earlier errors, e.g. out of memory)"
        )
    return gn


def _cached_gnorm(xp: Any, state: dict) -> float:
    gn = state.get("gnorm")
    if gn is None:
        gn = state["gnorm"] = _gnorm(xp, state["g"])
    return gn


def _after_step(P, state, x_new, f_new, xtol, history, extra, callback, alpha) -> bool:
    """Accept ``x_new``; return True when a stopping condition fired."""
    xp = P.xp
    x_old = state["x"]
    f_new, g_new = P.value_and_grad(x_new, f=f_new)  # f_new: fun(x_new), from the trial
    f_new, g_new = _persist(f_new), _persist(g_new)
    state.update(x=x_new, f=f_new, g=g_new)
    state["nit"] += 1
    ff, gn, step, xmax = _floats(
        f_new, xp.max(xp.abs(g_new)), xp.max(xp.abs(x_new - x_old)), xp.max(xp.abs(x_new))
    )
    finite = math.isfinite(gn)
    state["gnorm"] = gn
    if history is not None:
        history["x"].append(x_new)
        history["fun"].append(ff)
        history["grad_norm"].append(gn if finite else math.nan)
        history["alpha"].append(alpha)
        for k, v in extra.items():
            history[k].append(v)
    if not finite:
        state["status"] = 4
        return True
    if callback is not None:
        try:
            if _wants_intermediate(callback):
                callback(intermediate_result=OptimizeResult(x=x_new, fun=f_new, jac=g_new, nit=state["nit"]))
            else:
                callback(x_new)
        except StopIteration:
            state["status"] = 99
            return True
    if step <= xtol * max(1.0, xmax):
        state["status"] = 0 if gn <= state["gtol"] else 2
        return True
    return False
