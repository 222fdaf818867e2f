"""Pieces shared by the minimize methods: Dask-aware scalar reads, the
gradient-norm test and the bookkeeping after an accepted step, with the
stationarity check of an ``xtol`` stop (status 6)."""

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


def _after_step(P, state, x_new, f_new, xtol, history, extra, callback, alpha, p_full=None) -> bool:
    """Accept ``x_new``; return True when a stopping condition fired.

    ``p_full``: the method's full step at the previous point, before the
    line search shortened it (``None`` where there is none: a trust-region
    step on the boundary, a step along negative curvature); see
    :func:`_xtol_status`.
    """
    xp = P.xp
    x_old = state["x"]
    f_new, g_new = P.value_and_grad(x_new, f=f_new)  # f_new: fun(x_new), from the trial
    f_new, g_new = _persist(f_new), _persist(g_new)
    state.update(x=x_new, f=f_new, g=g_new)
    state["nit"] += 1
    reads = [f_new, xp.max(xp.abs(g_new)), xp.max(xp.abs(x_new - x_old)), xp.max(xp.abs(x_new))]
    if p_full is not None:
        reads.append(xp.max(xp.abs(p_full)))  # read with the others: no extra device sync
    ff, gn, step, xmax, *pn = _floats(*reads)
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
        state["status"] = _xtol_status(P, state, gn, xmax, xtol, pn[0] if pn else math.inf)
        return True
    return False


def stationary_step_tol(P, xtol: float, xmax: float) -> float:
    r"""The tolerance of the stationarity check of an ``xtol`` stop:
    :math:`10\,x_g\max(1, \|x\|_\infty)` with :math:`x_g = \max(\text{xtol},
    \sqrt\epsilon, \sqrt\delta)`, :math:`\delta` the relative error of the
    gradient (``P.grad_noise``: :math:`\epsilon` for an exact gradient,
    :math:`\sqrt\epsilon` for ``"2-point"``, :math:`\epsilon^{2/3}` for
    ``"3-point"``).

    A minimizer is located only to about the square root of the relative
    accuracy of the information used (:math:`\sqrt\epsilon` from ``f``
    values; ``least_squares``' check uses the same floor), so a Newton step
    shorter than that is noise, not evidence of a distant minimizer; the
    factor 10 leaves room for a truncated CG step (residual up to half the
    gradient) and for rounding in the step itself.
    """
    xg = max(xtol, P.eps ** 0.5, P.grad_noise ** 0.5)
    return 10.0 * xg * max(1.0, xmax)


def _xtol_status(P, state, gn: float, xmax: float, xtol: float, pn: float) -> int:
    r"""The status of a stop on the step test (``xtol``) at ``state["x"]``.

    0 where the gradient test holds too; 2 (success) where the point is
    stationary to the tolerance :func:`stationary_step_tol`: the full
    (unshortened) step of the last iteration, of norm ``pn``, or else the
    method's full step computed at the point itself (``ctx["full_step"]``:
    the modified Newton step, or the truncated-CG step without a trust
    region), is within it; 4 where that step is not finite; otherwise 6
    (not success): the step was short only because the line search or the
    trust region shortened it, as scipy's ``Newton-CG`` reports "precision
    loss" there.
    """
    if gn <= state["gtol"]:
        return 0
    tol = stationary_step_tol(P, xtol, xmax)
    if pn <= tol:
        return 2
    full_step = state.get("ctx", {}).get("full_step")
    if full_step is None:
        return 6
    p = full_step(P, state["x"], state["g"])
    if p is None:
        return 4
    pn = _floats(P.xp.max(P.xp.abs(p)))[0]
    if not math.isfinite(pn):
        return 4
    return 2 if pn <= tol else 6
