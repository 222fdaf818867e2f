"""``curve_fit``'s data and parameters, set up with scipy's rules.

The conversions scipy applies to ``xdata`` / ``ydata`` (lists and integer arrays to
floating point, a scalar ``ydata`` broadcast), ``check_finite`` and ``nan_policy``,
the number of parameters read from ``f``'s signature, the default ``p0`` (ones, or
a feasible point with bounds) and the default method.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import array_api_compat

from .._core import lazy
from .._core.backend import namespace_name, native_namespace
from .._core.typing import Array
from .._derivatives.numdiff import prepare_bounds
from .options import METHODS, as_array, check_backend, to_backend
from .start import dtype_kind, half_message


def n_params(f: Callable) -> int:
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError) as e:
        raise ValueError("Unable to determine number of fit parameters; pass p0") from e
    params = [
        p for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) < 2:
        raise ValueError("Unable to determine number of fit parameters; pass p0")
    return len(params) - 1


def chunked_p0(f, p0, ydata) -> tuple[Any, int]:
    """``(p0, n)`` for a fit on Dask chunks: ``p0`` ``(n,)`` / ``(B, n)`` checked, default ones."""
    import array_api_compat.numpy as np_xp  # the chunks are NumPy (or CuPy) blocks

    B = ydata.shape[0]
    if p0 is None:
        n = n_params(f)
        return np_xp.ones(n, dtype=getattr(np_xp, str(ydata.dtype))), n
    if not (hasattr(p0, "shape") and hasattr(p0, "dtype")):
        p0 = as_array(p0, "p0")
    if p0.ndim == 1 or (p0.ndim == 2 and p0.shape[0] == B):
        return p0, p0.shape[-1]
    raise ValueError(f"p0: with batched=True expected shape (B, n) = ({B}, n) or (n,), got {tuple(p0.shape)}")


def has_finite_bound(bounds) -> bool:
    """Whether ``bounds`` (a pair of numbers / arrays) has a finite entry (host check)."""
    try:
        lb, ub = bounds
    except (TypeError, ValueError) as e:
        raise ValueError("bounds: expected a pair (lb, ub) or a Bounds object") from e
    if type(lb) is float and type(ub) is float:  # (the default (-inf, inf): two numbers)
        return math.isfinite(lb) or math.isfinite(ub)
    for b in (lb, ub):
        if hasattr(b, "shape") and hasattr(b, "dtype"):
            (b,) = lazy.compute(b)
            xb = array_api_compat.array_namespace(b)
            if bool(xb.any(xb.isfinite(xb.asarray(b)))):
                return True
            continue
        vals = b if isinstance(b, (list, tuple)) else [b]
        if any(math.isfinite(float(v)) for v in vals):
            return True
    return False


# scipy's curve_fit passes these to MINPACK's leastsq (method "lm"): agnopt's equivalent
_LEASTSQ_ONLY = {
    "epsfcn": "use diff_step (diff_step = sqrt(epsfcn) with jac='2-point' gives MINPACK's "
              "forward-difference step)",
    "factor": "no equivalent (the initial trust-region radius, factor * norm(diag * p0), is "
              "not offered)",
    "diag": "use x_scale (x_scale = 1 / diag: the variables' characteristic scales)",
    "col_deriv": "no equivalent (a callable jac returns the Jacobian as (m, n): one row per "
                 "data point; transpose a column-major one)",
}


def check_fit_method(method, kwargs, bounded):
    """``method``: ``None`` -> ``"trf"`` with finite bounds when available (scipy's
    default), else ``"lm"``; scipy's ``maxfev`` becomes ``max_nfev``. scipy's
    leastsq-only keywords (``epsfcn``, ``factor``, ``diag``, ``col_deriv``) are a
    ``TypeError`` naming agnopt's equivalent."""
    if method is None:
        method = "trf" if bounded and "trf" in METHODS else "lm"
    if method not in METHODS:
        raise ValueError(f"method: expected None or one of {METHODS}, got {method!r}")
    if "args" in kwargs:
        raise ValueError("'args' is not a supported keyword argument.")
    for k, equivalent in _LEASTSQ_ONLY.items():
        if k in kwargs:
            raise TypeError(f"curve_fit() got the keyword argument {k!r} of scipy's leastsq "
                            f"(method 'lm'), which agnopt does not take: {equivalent}")
    if "maxfev" in kwargs:
        mf = kwargs.pop("maxfev")
        kwargs.setdefault("max_nfev", mf)
    return method


_FLOATING: dict = {}  # (array type, dtype) -> is the dtype floating (asked once)


def as_data(y: Array) -> Array:
    """``ydata`` of an integer or boolean dtype as float64 of its backend (scipy casts);
    ``TypeError`` for a 16-bit float dtype (float16, bfloat16)."""
    key = (type(y), y.dtype)
    try:
        floating = _FLOATING[key]
    except (KeyError, TypeError):
        xy = array_api_compat.array_namespace(y)
        floating = bool(xy.isdtype(y.dtype, ("real floating", "complex floating")))
        if floating and dtype_kind(y.dtype) == "half":
            floating = None
        try:
            _FLOATING[key] = floating
        except TypeError:  # pragma: no cover - unhashable dtype objects
            pass
    if floating is None:
        raise TypeError(half_message("ydata", y.dtype))
    if not floating:
        xy = array_api_compat.array_namespace(y)
        return xy.astype(y, xy.float64)
    return y


def convert_xdata(xp, dev, xdata, dtype, like=None):
    """``xdata`` as scipy converts it: lists / tuples become arrays of ``ydata``'s backend
    and dtype; an integer array of that backend becomes ``dtype``; anything else is
    passed to ``f`` unchanged. ``like``: ``ydata`` (an array of its type is of
    ``xp``, without asking array-api-compat)."""
    if like is not None and type(xdata) is type(like):
        if native_namespace(xp).isdtype(xdata.dtype, ("integral", "bool")):
            return xp.astype(xdata, dtype)
        return xdata
    if isinstance(xdata, (list, tuple)):
        try:
            return xp.asarray(xdata, dtype=dtype, device=dev)
        except (TypeError, ValueError) as e:
            raise ValueError(f"xdata: could not convert the sequence to an array: {e}") from e
    if (hasattr(xdata, "shape") and hasattr(xdata, "dtype")
            and array_api_compat.is_array_api_obj(xdata)):
        try:
            same = array_api_compat.array_namespace(xdata) is xp
        except TypeError:
            same = False
        if same and xp.isdtype(xdata.dtype, ("integral", "bool")):
            return xp.astype(xdata, dtype)
    return xdata


def _is_xp_float_array(xp, a, like=None):
    if like is not None and type(a) is type(like):  # ydata's array type: of xp
        return bool(native_namespace(xp).isdtype(a.dtype, "real floating"))
    if not (hasattr(a, "shape") and hasattr(a, "dtype") and array_api_compat.is_array_api_obj(a)):
        return False
    try:
        return array_api_compat.array_namespace(a) is xp and xp.isdtype(a.dtype, "real floating")
    except TypeError:
        return False


def check_finite_data(xp, xdata, ydata, nan_policy=None):
    """``check_finite``: ``ydata`` and an array ``xdata`` free of NaN and inf (``ValueError``)."""
    nx = native_namespace(xp)  # NumPy: its own functions (same answer, fewer wrappers)
    hint = ("pass nan_policy='omit' to drop NaN data points" if nan_policy is None else
            f"check_finite=True checks before nan_policy={nan_policy!r}: leave check_finite "
            "unset (None) or False to let nan_policy handle NaN")
    if not bool(nx.all(nx.isfinite(ydata))):
        raise ValueError(f"ydata: contains non-finite values (NaN or inf); {hint}")
    if _is_xp_float_array(xp, xdata, ydata) and not bool(nx.all(nx.isfinite(xdata))):
        raise ValueError(f"xdata: contains non-finite values (NaN or inf); {hint}")


def apply_nan_policy(xp, dev, nan_policy, xdata, ydata, sigma) -> tuple[Any, Array, Any]:
    """``nan_policy`` "raise" / "omit" (scipy's rules): a data point is dropped when
    ``ydata`` or any entry of ``xdata[..., i]`` is NaN, with its ``sigma`` entries."""
    y_nan = xp.isnan(ydata)
    x_arr = _is_xp_float_array(xp, xdata)
    has_nan = y_nan
    if x_arr:
        xn = xp.isnan(xdata)
        if xn.ndim > 1:
            xn = xp.any(xn, axis=tuple(range(xn.ndim - 1)))
        if ydata.ndim == 1 and tuple(xn.shape) == tuple(ydata.shape):
            has_nan = has_nan | xn
        elif bool(xp.any(xn)):
            raise ValueError("xdata: with nan_policy='omit' the last axis of xdata must match "
                             "ydata's length")
    if not bool(xp.any(has_nan)):
        return xdata, ydata, sigma
    if nan_policy == "raise":
        raise ValueError("The input contains nan values")
    if ydata.ndim != 1:
        raise ValueError("nan_policy='omit': expected a 1-D ydata")
    if bool(xp.all(has_nan)):
        raise ValueError(f"ydata: no data point is left after omitting the NaN ones "
                         f"(nan_policy='omit': ydata[i] or xdata[..., i] is NaN at all "
                         f"{ydata.shape[0]} points)")
    # (Dask: the index in memory, so the arrays kept have known sizes)
    xk, kept = lazy.to_local(xp, ~has_nan)
    keep = xk.nonzero(kept)[0]
    ydata = xp.take(ydata, keep, axis=0)
    if x_arr:
        xdata = xp.take(xdata, keep, axis=xdata.ndim - 1)
    if sigma is not None:
        sig = to_backend(xp, sigma, ydata.dtype, dev)
        if sig.ndim == 1:
            sigma = xp.take(sig, keep, axis=0)
        elif sig.ndim == 2:
            sigma = xp.take(xp.take(sig, keep, axis=0), keep, axis=1)
    return xdata, ydata, sigma


def broadcast_scalar_y(xp, dev, f, xdata, ydata, p0):
    """A 0-d ``ydata`` broadcast to the shape of ``f``'s output at ``p0`` (scipy
    subtracts the scalar from ``f``'s output)."""
    if p0 is None:
        n = n_params(f)
        pars = [xp.asarray(1.0, dtype=ydata.dtype, device=dev)] * n
    else:
        pa = to_backend(xp, p0, ydata.dtype, dev)
        pa = xp.reshape(pa, (-1,))
        pars = [pa[j] for j in range(pa.shape[0])]
    r = f(xdata, *pars)
    shape = tuple(getattr(r, "shape", ()))
    if len(shape) != 1:
        raise ValueError(f"ydata: a scalar ydata needs f to return a 1-D array, got shape {shape}")
    return xp.asarray(xp.broadcast_to(ydata, shape), copy=True)


def check_ydata(xp, ydata, batched):
    """``(B, m)`` of ``ydata`` ((m,) or batched (B, m); ``B = None`` unbatched)."""
    B = None
    if batched:
        if ydata.ndim != 2:
            raise ValueError(f"ydata: with batched=True expected shape (B, m), got {tuple(ydata.shape)}")
        B, m = ydata.shape
    else:
        if ydata.ndim != 1:
            raise ValueError(f"ydata: expected a 1-D array (m,), got shape {tuple(ydata.shape)}")
        m = ydata.shape[0]
    if m == 0:
        raise ValueError("`ydata` must not be empty!")
    return B, m


def _feasible_start(xp, dev, n, dtype, bounds, batched, B):
    """scipy's default ``p0`` with bounds: the midpoint where both bounds are finite,
    ``lb + 1`` / ``ub - 1`` where one is, 1 elsewhere."""
    shape = (B, n) if batched else (n,)
    ones = xp.ones(shape, dtype=dtype, device=dev)
    lb, ub = prepare_bounds(xp, bounds, ones)
    flb, fub = xp.isfinite(lb), xp.isfinite(ub)
    p = xp.where(flb & fub, 0.5 * (xp.where(flb, lb, ones) + xp.where(fub, ub, ones)), ones)
    p = xp.where(flb & ~fub, lb + 1.0, p)
    p = xp.where(~flb & fub, ub - 1.0, p)
    return p


def too_few_points_message(n: int, m: int, batched: bool) -> str:
    """scipy's ``TypeError`` message for lm with ``n`` parameters and ``m < n`` data points
    (its ``leastsq``'s for one point, its ``curve_fit``'s otherwise); ``batched``: of each fit."""
    if m == 1 and not batched:
        return (f"Improper input: func input vector length N={n} must not exceed func output "
                f"vector length M={m}")
    return (f"The number of func parameters={n} must not exceed the number of data "
            f"points={m}" + (" of each fit" if batched else ""))


def _has_complex(v) -> bool:
    """Whether a number or (nested) list / tuple ``v`` holds a complex number."""
    if isinstance(v, (list, tuple)):
        return any(_has_complex(e) for e in v)
    return isinstance(v, complex)


def initial_params(xp, dev, f, p0, ydata, batched, B, bounds=(-math.inf, math.inf)):
    """``(p0, n)``: ``p0`` as (n,) or (B, n) in ``ydata``'s dtype (default: ones, or
    scipy's feasible start with bounds)."""
    dtype = ydata.dtype
    if p0 is None:
        n = n_params(f)
        return _feasible_start(xp, dev, n, dtype, bounds, batched, B), n
    if hasattr(p0, "shape") and hasattr(p0, "dtype"):
        check_backend(p0, xp, "p0", "ydata")
        if dtype_kind(p0.dtype) == "complex":  # (converting would drop the imaginary part)
            raise TypeError(f"p0: must be real, got dtype {p0.dtype} (scipy: cannot cast "
                            "complex to float64)")
    elif _has_complex(p0):
        raise TypeError("p0: must be real, got complex numbers")
    p0a = to_backend(xp, p0, dtype, dev)
    if p0a.ndim == 0:
        p0a = xp.reshape(p0a, (1,))
    n = p0a.shape[-1]
    if batched:
        if p0a.ndim == 1:
            p0a = xp.broadcast_to(p0a[None, :], (B, n))
            p0a = xp.asarray(p0a, copy=True) if not lazy.is_dask_namespace(xp) else p0a
        elif p0a.ndim != 2 or p0a.shape[0] != B:
            raise ValueError(f"p0: with batched=True expected shape (B, n) = ({B}, n) or (n,), got {tuple(p0a.shape)}")
    elif p0a.ndim != 1:
        raise ValueError(f"p0: expected shape (n,), got {tuple(p0a.shape)}")
    return p0a, n


def batched_nan_mask(xp, nan_policy, xdata, ydata) -> tuple[Any, Array, Any]:
    """``nan_policy`` for a batch ``ydata`` (B, m): ``(xdata, ydata, omit)``.

    A data point ``(b, i)`` is omitted where ``ydata[b, i]`` is NaN, or where
    ``xdata`` is NaN at it: an array ``xdata`` of ``ydata``'s shape is per fit
    (entry ``(b, i)``), any other floating array of ``xdata``'s backend is
    shared (point ``i`` of every fit when any ``xdata[..., i]`` is NaN).
    ``"raise"``: ``ValueError`` if any point would be omitted. ``"omit"``:
    the NaN entries of ``ydata`` and of ``xdata`` are replaced by 0 (new
    arrays) and ``omit`` (B, m) bool, or ``None`` when nothing is omitted,
    says which points get zero weight; a fit left with no point is a
    ``ValueError`` (scipy's "`ydata` must not be empty!" for one fit).
    """
    omit = xp.isnan(ydata)
    x_nan = None
    if _is_xp_float_array(xp, xdata):
        x_nan = xp.isnan(xdata)
        if tuple(x_nan.shape) == tuple(ydata.shape):
            omit = omit | x_nan
        elif x_nan.ndim >= 1 and x_nan.shape[-1] == ydata.shape[-1]:
            cols = xp.any(x_nan, axis=tuple(range(x_nan.ndim - 1))) if x_nan.ndim > 1 else x_nan
            omit = omit | cols[None, :]
        elif bool(xp.any(x_nan)):
            raise ValueError("xdata: with nan_policy and batched=True the last axis of xdata "
                             "must match ydata's length m")
    if not bool(xp.any(omit)):
        return xdata, ydata, None
    if nan_policy == "raise":
        raise ValueError("The input contains nan values")
    empty = xp.all(omit, axis=-1)
    if bool(xp.any(empty)):
        rows = [int(i) for i in xp.nonzero(empty)[0]]
        raise ValueError(f"ydata: with nan_policy='omit' the fits (rows) {rows} have no data "
                         "point left; `ydata` must not be empty!")
    ydata = xp.where(omit, xp.zeros_like(ydata), ydata)
    if x_nan is not None and bool(xp.any(x_nan)):
        xdata = xp.where(x_nan, xp.zeros_like(xdata), xdata)
    return xdata, ydata, omit


def check_sigma_values(xp, sig) -> None:
    """``ValueError`` naming ``sigma``'s first zero or NaN entry (1-D / batched
    ``sigma``: standard deviations, which the residuals are divided by; scipy
    divides too, and then stops on infinite residuals). Negative and infinite
    entries are accepted as by scipy: only ``sigma**2`` enters the fit, and an
    infinite ``sigma`` gives its data point zero weight."""
    bad = (sig == 0) | xp.isnan(sig)
    if not bool(xp.any(bad)):
        return
    where, value = _first_bad(bad, sig)
    raise ValueError(
        f"sigma: {where} is {value!r}; expected nonzero, non-NaN standard deviations "
        "(the residuals are divided by sigma; an inf entry gives its point zero weight)")


def nonfinite_ydata_message(xp, y_user, y_fit, nan_policy, what) -> str | None:
    """Error path only (``what``: "residuals are not finite at the initial point p0",
    batched with the problems): a message naming
    ``ydata``'s first non-finite entry (``y_user``: the user's ``ydata``) when the fit
    kept one (``y_fit``: the ``ydata`` fitted, after ``nan_policy``), else ``None``
    (``ydata`` is finite there: the model is to blame). With ``nan_policy="omit"``
    only ``inf`` entries count (NaN ones were omitted)."""
    if bool(xp.all(xp.isfinite(y_fit))):
        return None
    bad = xp.isinf(y_user) if nan_policy == "omit" else ~xp.isfinite(y_user)
    if not bool(xp.any(bad)):  # (a 0-d ydata broadcast: y_user is that value)
        return None
    where, value = _first_bad(bad, y_user)
    if math.isnan(value):
        hint = "check_finite=False skipped the check; nan_policy='omit' drops NaN data points"
    elif nan_policy == "omit":
        hint = "nan_policy='omit' drops NaN data points only: remove the infinite ones"
    else:
        hint = "check_finite=False skipped the check: remove the infinite data points"
    return f"ydata: {where} is {value!r}, so the {what}; {hint}"


def nonfinite_xdata_message(xp, x_user, like, nan_policy, what) -> str | None:
    """Error path only, where ``ydata`` is finite (:func:`nonfinite_ydata_message` gave
    ``None``): a message naming the first non-finite entry of ``x_user`` (the user's
    ``xdata`` as converted, before ``nan_policy``; ``like``: ``ydata``) when it is an
    array of floats holding one, else ``None`` (the model is to blame). With
    ``nan_policy="omit"`` only ``inf`` entries count (NaN points were omitted)."""
    if not _is_xp_float_array(xp, x_user, like):
        return None
    bad = xp.isinf(x_user) if nan_policy == "omit" else ~xp.isfinite(x_user)
    if not bool(xp.any(bad)):
        return None
    where, value = _first_bad(bad, x_user)
    if math.isnan(value):
        hint = "check_finite=False skipped the check; nan_policy='omit' drops NaN data points"
    else:
        hint = "remove the infinite data points (nan_policy='omit' drops NaN ones only)"
    return f"xdata: {where} is {value!r}, and the {what}; {hint}"


def _first_bad(bad, a) -> tuple[str, float]:
    """``("entry i", a[i])`` of the first true entry of ``bad`` (``a``'s shape):
    ``"entry (b, i)"`` for 2-D ``a``, ``"its value"`` for 0-d."""
    (bad, a) = lazy.compute(bad, a)
    xb = array_api_compat.array_namespace(bad)
    i = int(xb.nonzero(xb.reshape(bad, (-1,)))[0][0])
    value = float(xb.reshape(a, (-1,))[i])
    where = "its value" if a.ndim == 0 else "entry " + (
        str(i) if a.ndim == 1 else str(_unravel(i, tuple(a.shape))))
    return where, value


def _unravel(i: int, shape: tuple) -> tuple:
    out = []
    for s in reversed(shape):
        out.append(i % s)
        i //= s
    return tuple(reversed(out))


def sigma_shape_message(sig_shape, yshape, batched) -> str:
    """scipy's "`sigma` has incorrect shape." with the shapes expected and given."""
    got = tuple(sig_shape)
    if batched:
        return ("`sigma` has incorrect shape: with batched=True expected a shape that "
                f"broadcasts to ydata's (B, m) = {tuple(yshape)}, e.g. (B, m), (m,), (B, 1) "
                f"or a scalar; got {got}")
    m = int(math.prod(yshape))
    return ("`sigma` has incorrect shape: expected (M,) standard deviations or an (M, M) "
            f"covariance matrix with M = {m} (ydata's size), or a scalar; got {got}")


def xdata_hint(xdata, yshape) -> str:
    """For "f: returned shape ..., expected ydata's shape ...": where ``xdata`` is an
    array whose last axis (scipy's data-point axis) differs from ``ydata``'s, say so."""
    shape = getattr(xdata, "shape", None)
    try:
        last = int(shape[-1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return ""
    m = int(yshape[-1]) if len(yshape) else 1
    if last == m:
        return ""
    return (f"; xdata has length {last} on its last axis (the data points), ydata {m}: "
            "pass xdata and ydata for the same data points")


def mixed_backend_message(msg: str, xdata, ydata) -> str | None:
    """curve_fit's message for least_squares' "fun (its residuals at x0): got a <A>
    array but x0 is a <B> array" (``f`` returned an array of another backend than
    ``ydata``'s, which ``p0`` was converted to): the arguments that differ."""
    head = "fun (its residuals at x0): got a "
    if not msg.startswith(head):
        return None
    got = msg[len(head):].split(" array", 1)[0]
    ref = msg.split("but x0 is a ", 1)[-1].split(" array", 1)[0]
    try:
        xname = namespace_name(array_namespace_of(xdata))
    except TypeError:
        xname = None
    if xname == got:
        return (f"f: returned a {got} array at p0: xdata is a {got} array but ydata is a "
                f"{ref} array; pass xdata and ydata of one backend (convert xdata to {ref}, "
                f"or ydata to {got})")
    return (f"f: returned a {got} array at p0 but ydata is a {ref} array (p0 is converted to "
            f"ydata's backend); return arrays of ydata's backend from f, or pass ydata as a "
            f"{got} array")


def backend_note(xdata, ydata) -> str:
    """For the note on an exception of ``f``: ``xdata`` and ``ydata`` of two backends
    (a likely cause: ``f`` mixes their arrays), else ``""``."""
    try:
        xname = namespace_name(array_namespace_of(xdata))
        yname = namespace_name(array_namespace_of(ydata))
    except TypeError:
        return ""
    if xname == yname:
        return ""
    return (f" (xdata is a {xname} array but ydata is a {yname} array: pass xdata and ydata "
            "of one backend)")


def array_namespace_of(a):
    """``a``'s array namespace (``TypeError`` when ``a`` is not an array)."""
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        raise TypeError("not an array")
    return array_api_compat.array_namespace(a)
