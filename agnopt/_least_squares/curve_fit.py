"""``curve_fit`` with scipy's semantics on any Array API backend, batched over many fits."""

from __future__ import annotations

import inspect
import math
import re
import sys
import warnings
from typing import Any, Callable

import array_api_compat

from .._core import lazy
from .._core.backend import resolve
from .._core.errors import OptimizeWarning
from .._core.status import Status
from .arrays import host_ints
from .chunked import chunked_curve_fit, is_chunked_batch
from .covariance import covariance
from .least_squares import least_squares
from .._derivatives.numdiff import prepare_bounds
from .options import METHODS, as_array, as_bounds_pair, check_backend, to_backend

__all__ = ["curve_fit", "OptimizeWarning"]


# common least_squares status -> MINPACK ``ier`` (what scipy's curve_fit returns for lm)
_TO_IER = {Status.GTOL: 4, Status.FTOL: 1, Status.XTOL: 2, Status.FTOL_XTOL: 3,
           Status.MAX_NFEV: 5, Status.CALLBACK: 0}


def _n_params(f: Callable) -> int:
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


def curve_fit(
    f: Callable[..., Any],
    xdata: Any,
    ydata: Any,
    p0: Any = None,
    sigma: Any = None,
    absolute_sigma: bool = False,
    check_finite: bool | None = None,
    bounds: Any = (-math.inf, math.inf),
    method: str | None = None,
    jac: Any = None,
    *,
    full_output: bool = False,
    nan_policy: str | None = None,
    batched: bool = False,
    **kwargs: Any,
) -> tuple:
    r"""Fit ``ydata ~ f(xdata, *params)`` by nonlinear least squares (scipy's semantics).

    Minimizes :math:`\sum_i ((f(x_i, p) - y_i)/\sigma_i)^2` with
    :func:`agnopt.least_squares` and returns the optimal parameters and
    their estimated covariance.

    Parameters
    ----------
    f : callable
        ``f(xdata, *params)``. Unbatched: each parameter is a 0-d array and
        the output has ``ydata``'s shape ``(m,)``. Batched: each parameter is
        ``(B, 1)``, so a model written with broadcasting for one problem
        returns ``(B, m)`` unchanged.
    xdata : array or anything ``f`` accepts
        Passed to ``f`` (not differentiated). As scipy converts it: a list or
        tuple becomes an array of ``ydata``'s backend and dtype, an integer
        array of that backend becomes ``ydata``'s dtype; anything else
        (e.g. ``None``, a float array) is passed unchanged.
    ydata : array or scalar
        ``(m,)``, or ``(B, m)`` when batched. Its backend, device and dtype
        are those of the computation (lists and integer arrays become
        float64, as scipy; float32 stays float32). Unbatched, a scalar is
        broadcast to the shape of ``f``'s output at ``p0`` (one extra call).
    p0 : array, optional
        Initial parameters ``(n,)``; batched: ``(B, n)`` or ``(n,)`` (shared).
        Default (``n`` read from ``f``'s signature), as scipy: ones, or with
        bounds a feasible point, the midpoint where both bounds are finite,
        ``lb + 1`` / ``ub - 1`` where one is. A ``p0`` outside the bounds is a
        ``ValueError`` ("Initial guess is outside of provided bounds").
    sigma : array, optional
        Standard deviations of ``ydata``: ``(m,)`` (or ``(B, m)`` batched, or
        a scalar); residuals are divided by it. Unbatched, an ``(m, m)``
        array is the covariance matrix of ``ydata``: residuals are
        multiplied by ``L^{-1}`` with ``sigma = L L^T`` (Cholesky).
    absolute_sigma : bool
        ``False`` (default): ``pcov`` is scaled by the reduced chi-square
        ``sum(r**2) / (m - n)`` (only relative ``sigma`` matters). ``True``:
        ``pcov = (J^T J)^{-1}`` with ``sigma`` taken as absolute.
    check_finite : bool, optional
        Raise ``ValueError`` when ``ydata`` or an array ``xdata`` holds NaN or
        inf. Default: ``True`` unless ``nan_policy`` is given (scipy's rule).
    bounds : (lb, ub) or Bounds
        Parameter bounds (projected Levenberg-Marquardt, see
        :func:`agnopt.least_squares`); any object with ``lb`` / ``ub``.
    method : {None, "lm", "gauss-newton"}
        ``None``: ``"lm"`` without bounds; with finite bounds scipy's
        ``"trf"`` once it is available, until then ``"lm"`` (which here
        handles bounds by projection; scipy's ``"lm"`` refuses them).
    jac : callable or str, optional
        ``jac(xdata, *params)`` returning ``(m, n)`` (``(B, m, n)``), or a
        string accepted by :func:`agnopt.least_squares` ("cs",
        "2-point", "3-point", "autodiff"). ``None``: least_squares' default
        (complex step, falling back to "3-point" if ``f`` rejects complex input).
    full_output : bool
        Also return ``infodict`` (``nfev``, ``fvec``, ``status``,
        ``success``, ``nit``, ``njev``), ``mesg`` and ``ier`` (MINPACK's code
        1-4 on success, as scipy's lm). Absent: scipy's lm-only ``fjac``,
        ``ipvt``, ``qtf`` (MINPACK's pivoted QR factors; the Jacobian is
        factorized by SVD / Cholesky here).
    nan_policy : {None, "raise", "omit"}
        ``"raise"``: ``ValueError`` when ``xdata`` or ``ydata`` holds NaN;
        ``"omit"``: drop the data points where ``ydata[i]`` or any
        ``xdata[..., i]`` is NaN (and their ``sigma`` rows / columns);
        ``None``: only ``check_finite``. ``"propagate"`` is refused, as
        scipy. Unbatched only.
    batched : bool
        ``B`` independent fits at once (see above). Failed fits do not raise
        in batched mode: check ``infodict["success"]`` (``full_output=True``);
        their ``pcov`` is NaN. When ``xdata`` is an array of at most one
        dimension (shared by all fits), ``f`` (and a callable ``jac``) may be
        called with the parameters of the fits still running only (``(k, 1)``
        each, ``k < B``), so finished fits cost nothing; this is checked once
        against the full evaluation, and a model that closes over
        per-problem data (and so cannot be evaluated on a subset) is simply
        evaluated on all ``B`` rows.
    **kwargs
        Passed to :func:`agnopt.least_squares` (``ftol``, ``xtol``,
        ``gtol``, ``max_nfev``, ``x_scale``, ...). scipy's ``maxfev`` is
        accepted as ``max_nfev``.

    Returns
    -------
    popt : array
        ``(n,)`` or ``(B, n)``.
    pcov : array
        ``(n, n)`` or ``(B, n, n)``: ``(J^T J)^{-1}`` at ``popt`` (``J`` of
        the weighted residuals), times ``sum(r**2) / (m - n)`` unless
        ``absolute_sigma``. Filled with ``inf`` (with an
        :class:`OptimizeWarning`) where ``J`` is rank deficient (singular
        values below ``eps * max(m, n) * s_max``) or ``m <= n`` without
        ``absolute_sigma``, as scipy's lm path (``leastsq``'s ``cov_x`` is
        None) does.

    Raises
    ------
    RuntimeError
        Unbatched: if the fit does not converge ("Optimal parameters not
        found", as scipy).
    ValueError
        Bad shapes (also found by calling ``f``: named), non-finite data
        (``check_finite``), NaN with ``nan_policy="raise"``, unknown
        ``method`` or ``nan_policy``, ``args`` in ``kwargs``.
    TypeError
        ``method="lm"`` with more parameters than data points (scipy's rule).

    Warns
    -----
    OptimizeWarning
        When ``pcov`` cannot be estimated. If ``scipy.optimize`` has been
        imported, the warning is also an instance of scipy's
        ``OptimizeWarning`` (filters written for scipy apply).
    """
    bounds = as_bounds_pair(bounds)
    method = _check_method(method, kwargs, _has_finite_bound(bounds))
    if nan_policy not in (None, "raise", "omit", "propagate"):
        raise ValueError("nan_policy must be one of {None, 'raise', 'omit'}")
    if nan_policy == "propagate":
        raise ValueError("`nan_policy='propagate'` is not supported by this function.")
    if check_finite is None:
        check_finite = nan_policy is None
    if batched and is_chunked_batch(ydata):  # a Dask batch: one in-memory fit per row chunk
        return chunked_curve_fit(
            f, xdata, ydata, *_chunked_p0(f, p0, ydata), sigma, full_output,
            dict(kwargs, method=method, jac=jac, bounds=bounds, absolute_sigma=absolute_sigma))
    ydata = _as_data(as_array(ydata, "ydata"))
    xp, dev = resolve(ydata, "ydata")
    xdata = _convert_xdata(xp, dev, xdata, ydata.dtype)
    if check_finite:
        _check_finite(xp, xdata, ydata)
    if nan_policy is not None:
        if batched:
            raise ValueError("nan_policy: not supported with batched=True (fits of different "
                             "lengths); remove the NaNs per fit")
        xdata, ydata, sigma = _nan_policy(xp, dev, nan_policy, xdata, ydata, sigma)
    if not batched and ydata.ndim == 0:
        ydata = _broadcast_scalar_y(xp, dev, f, xdata, ydata, p0)
    B, m = _check_ydata(xp, ydata, batched)
    p0a, n = _initial_params(xp, dev, f, p0, ydata, batched, B, bounds)
    if method == "lm" and not batched and m != 1 and n > m:
        raise TypeError(f"The number of func parameters={n} must not exceed the number "
                        f"of data points={m}")
    wfun, inv, L = _weights(xp, dev, sigma, ydata, batched, m)
    residual, ls_jac = _model(xp, dev, f, xdata, ydata, jac, n, batched, wfun, inv, L)
    try:
        res = least_squares(
            residual, p0a, jac=ls_jac, method=method, bounds=bounds, batched=batched, **kwargs
        )
    except (ValueError, RuntimeError, TypeError) as e:
        # name curve_fit's arguments (f, p0) instead of least_squares' (fun, x0)
        if type(e) not in (ValueError, RuntimeError, TypeError) or len(e.args) != 1:
            raise
        msg = str(e)
        new = re.sub(r"\bx0\b", "p0", re.sub(r"\bfun\b", "f", msg))
        if new == msg:
            raise
        raise type(e)(new) from (e.__cause__ or e)
    pcov, warn = _pcov(xp, res, batched, absolute_sigma, m, n)
    if not batched and not res.success:
        raise RuntimeError("Optimal parameters not found: " + res.message)
    if warn:
        warnings.warn(
            "Covariance of the parameters could not be estimated", _warning_class(), stacklevel=2
        )
    if full_output:
        if batched:
            ier = [_TO_IER.get(s, 0) for s in host_ints(res.status)]
        else:
            ier = _TO_IER.get(int(res.status), 0)
        infodict = {
            "nfev": res.nfev, "fvec": res.fun, "status": res.status,
            "success": res.success, "nit": res.nit, "njev": res.njev,
        }
        return res.x, pcov, infodict, res.message, ier
    return res.x, pcov


_SCIPY_COMPAT_WARNING: list = []


def _warning_class() -> type:
    """:class:`OptimizeWarning`, or, when the caller has imported ``scipy.optimize``,
    a subclass of it and of scipy's ``OptimizeWarning``, so that code ported from
    scipy (``warnings.filterwarnings(..., category=scipy.optimize.OptimizeWarning)``,
    ``pytest.warns``) sees the same warning. scipy is never imported here."""
    sp = sys.modules.get("scipy.optimize")
    spw = getattr(sp, "OptimizeWarning", None)
    if not isinstance(spw, type) or not issubclass(spw, Warning):
        return OptimizeWarning
    if not _SCIPY_COMPAT_WARNING:
        _SCIPY_COMPAT_WARNING.append(
            type("OptimizeWarning", (OptimizeWarning, spw), {"__module__": "agnopt"}))
    return _SCIPY_COMPAT_WARNING[0]


def _chunked_p0(f, p0, ydata) -> tuple:
    """``(p0, n)`` for a fit on Dask chunks: ``p0`` ``(n,)`` / ``(B, n)`` checked, default ones."""
    import array_api_compat.numpy as np_xp  # the chunks are NumPy (or CuPy) blocks

    B = ydata.shape[0]
    if p0 is None:
        n = _n_params(f)
        return np_xp.ones(n, dtype=getattr(np_xp, str(ydata.dtype))), n
    if not (hasattr(p0, "shape") and hasattr(p0, "dtype")):
        p0 = as_array(p0, "p0")
    if p0.ndim == 1 or (p0.ndim == 2 and p0.shape[0] == B):
        return p0, p0.shape[-1]
    raise ValueError(f"p0: with batched=True expected shape (B, n) = ({B}, n) or (n,), got {tuple(p0.shape)}")


def _has_finite_bound(bounds) -> bool:
    """Whether ``bounds`` (a pair of numbers / arrays) has a finite entry (host check)."""
    try:
        lb, ub = bounds
    except (TypeError, ValueError) as e:
        raise ValueError("bounds: expected a pair (lb, ub) or a Bounds object") from e
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


def _check_method(method, kwargs, bounded):
    """``method``: ``None`` -> ``"trf"`` with finite bounds when available (scipy's
    default), else ``"lm"``; scipy's ``maxfev`` becomes ``max_nfev``."""
    if method is None:
        method = "trf" if bounded and "trf" in METHODS else "lm"
    if method not in METHODS:
        raise ValueError(f"method: expected None or one of {METHODS}, got {method!r}")
    if "args" in kwargs:
        raise ValueError("'args' is not a supported keyword argument.")
    if "maxfev" in kwargs:
        mf = kwargs.pop("maxfev")
        kwargs.setdefault("max_nfev", mf)
    return method


def _as_data(y):
    """``ydata`` of an integer or boolean dtype as float64 of its backend (scipy casts)."""
    xy = array_api_compat.array_namespace(y)
    if not xy.isdtype(y.dtype, ("real floating", "complex floating")):
        return xy.astype(y, xy.float64)
    return y


def _convert_xdata(xp, dev, xdata, dtype):
    """``xdata`` as scipy converts it: lists / tuples become arrays of ``ydata``'s backend
    and dtype; an integer array of that backend becomes ``dtype``; anything else is
    passed to ``f`` unchanged."""
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


def _is_xp_float_array(xp, a):
    if not (hasattr(a, "shape") and hasattr(a, "dtype") and array_api_compat.is_array_api_obj(a)):
        return False
    try:
        return array_api_compat.array_namespace(a) is xp and xp.isdtype(a.dtype, "real floating")
    except TypeError:
        return False


def _check_finite(xp, xdata, ydata):
    """``check_finite``: ``ydata`` and an array ``xdata`` free of NaN and inf (``ValueError``)."""
    if not bool(xp.all(xp.isfinite(ydata))):
        raise ValueError("ydata: contains non-finite values (NaN or inf); pass "
                         "nan_policy='omit' to drop NaN data points")
    if _is_xp_float_array(xp, xdata) and not bool(xp.all(xp.isfinite(xdata))):
        raise ValueError("xdata: contains non-finite values (NaN or inf); pass "
                         "nan_policy='omit' to drop NaN data points")


def _nan_policy(xp, dev, nan_policy, xdata, ydata, sigma):
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
    keep = xp.nonzero(~has_nan)[0]
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


def _broadcast_scalar_y(xp, dev, f, xdata, ydata, p0):
    """A 0-d ``ydata`` broadcast to the shape of ``f``'s output at ``p0`` (scipy
    subtracts the scalar from ``f``'s output)."""
    if p0 is None:
        n = _n_params(f)
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


def _check_ydata(xp, ydata, batched):
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


def _initial_params(xp, dev, f, p0, ydata, batched, B, bounds=(-math.inf, math.inf)):
    """``(p0, n)``: ``p0`` as (n,) or (B, n) in ``ydata``'s dtype (default: ones, or
    scipy's feasible start with bounds)."""
    dtype = ydata.dtype
    if p0 is None:
        n = _n_params(f)
        return _feasible_start(xp, dev, n, dtype, bounds, batched, B), n
    if hasattr(p0, "shape") and hasattr(p0, "dtype"):
        check_backend(p0, xp, "p0", "ydata")
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


def _weights(xp, dev, sigma, ydata, batched, m):
    """``(wfun, inv, L)``: the residual weighting ``r -> r / sigma`` (``inv``, shaped
    as ``ydata``) or ``r -> L^{-1} r`` for a covariance ``sigma = L L^T`` (m, m)."""
    if sigma is None:
        return None, None, None
    sig = to_backend(xp, sigma, ydata.dtype, dev)
    if not batched and sig.ndim == 2:
        if tuple(sig.shape) != (m, m):
            raise ValueError("`sigma` has incorrect shape.")
        L = xp.linalg.cholesky(sig)
        if not bool(xp.all(xp.triu(L, k=1) == 0)):
            # array-api-compat's Dask cholesky returns the upper factor U
            # (sigma = U^T U); the lower one is its transpose
            L = xp.matrix_transpose(L)
        if not bool(xp.all(xp.isfinite(L))):
            raise ValueError("`sigma` must be positive definite.")

        def wfun(r, L=L):
            return xp.linalg.solve(L, r[..., None])[..., 0]
        return wfun, None, L
    try:
        inv = 1.0 / xp.broadcast_to(sig, ydata.shape)
    except Exception as e:
        raise ValueError("`sigma` has incorrect shape.") from e

    def wfun(r, inv=inv):
        return r * inv
    return wfun, inv, None


def _model(xp, dev, f, xdata, ydata, jac, n, batched, wfun, inv, L):
    """``(residual, jac)`` for ``least_squares``: weighted residuals ``(f(xdata, *p) - y)``
    of ``p`` (n,) or (B, n), with the row hook of a shared ``xdata`` (batched)."""
    dtype = ydata.dtype

    # Complex-step Jacobians perturb one parameter at a time: the others are
    # passed to f as real arrays (their imaginary parts are exactly zero), so
    # only the part of the model that depends on the perturbed parameter runs
    # in complex arithmetic (e.g. an additive offset costs one complex add).
    # Complex arithmetic with zero imaginary parts gives the same real values,
    # so this changes nothing but the cost.
    def _real_where_possible(p, cols):
        if not xp.isdtype(p.dtype, "complex floating"):
            return cols
        im = xp.imag(p)
        nz = xp.any(im != 0, axis=0) if batched else im != 0
        (nz,) = lazy.compute(nz)
        return [c if bool(nz[j]) else xp.real(c) for j, c in enumerate(cols)]

    if batched:
        def split(p):
            return _real_where_possible(p, [p[:, j : j + 1] for j in range(n)])
    else:
        def split(p):
            return _real_where_possible(p, [p[j] for j in range(n)])


    def residual(p):
        r = f(xdata, *split(p))
        if not (hasattr(r, "shape") and hasattr(r, "dtype")):
            r = xp.asarray(r, dtype=dtype, device=dev)
        if r.ndim == 0 or tuple(r.shape) != tuple(ydata.shape):
            try:
                r = xp.broadcast_to(r, ydata.shape)
            except Exception as e:
                raise ValueError(
                    f"f: returned shape {tuple(r.shape)}, expected ydata's shape {tuple(ydata.shape)}"
                ) from e
        r = r - ydata
        return r if wfun is None else wfun(r)

    # rows hook: least_squares may evaluate a subset of the problems (those
    # still running) when xdata is shared by all of them (not an array with
    # a problem axis); it checks the subset model against the full one once
    # and falls back to evaluating all rows if they disagree.
    shared_x = hasattr(xdata, "shape") and getattr(xdata, "ndim", 2) <= 1
    if batched and shared_x:
        def rows_hook(idx):
            y_r = xp.take(ydata, idx, axis=0)
            inv_r = None if wfun is None else xp.take(inv, idx, axis=0)

            def res_r(p):
                r = f(xdata, *split(p))
                if not (hasattr(r, "shape") and hasattr(r, "dtype")):
                    r = xp.asarray(r, dtype=dtype, device=dev)
                r = r - y_r
                return r if inv_r is None else r * inv_r

            jac_r = None
            if callable(jac):
                def jac_r(p):
                    J = jac(xdata, *split(p))
                    if not (hasattr(J, "shape") and hasattr(J, "dtype")):
                        J = xp.asarray(J, dtype=dtype, device=dev)
                    return J if inv_r is None else J * inv_r[..., None]
            return res_r, jac_r

        residual._agnopt_rows = rows_hook

    if callable(jac):
        user_jac = jac

        def jac_w(p):
            J = user_jac(xdata, *split(p))
            if not (hasattr(J, "shape") and hasattr(J, "dtype")):
                J = xp.asarray(J, dtype=dtype, device=dev)
            if wfun is None:
                return J
            if L is not None:
                return xp.linalg.solve(L, J)
            return J * inv[..., None]

        ls_jac = jac_w
    elif jac is None:
        ls_jac = None  # least_squares' default: complex step, 3-point fallback
    else:
        ls_jac = jac

    return residual, ls_jac


def _pcov(xp, res, batched, absolute_sigma, m, n):
    """``(pcov, warn)``: ``(J^T J)^{-1}`` at the solution, scaled by the reduced
    chi-square unless ``absolute_sigma``; NaN for failed batched fits."""
    Jf = res.jac
    if not batched:
        Jf = xp.reshape(Jf, (1,) + tuple(Jf.shape))
        cost = xp.reshape(res.cost, (1,))
    else:
        cost = res.cost
    # a batched fit stopped on a non-finite Jacobian (status -3): covariance of
    # the others only (that fit's pcov is NaN below, as for any failed fit)
    jfin = xp.all(xp.isfinite(xp.reshape(Jf, (Jf.shape[0], -1))), axis=-1)
    if batched and not bool(xp.all(jfin)):
        Jf = xp.where(jfin[:, None, None], Jf, xp.zeros_like(Jf))
    pcov, singular = covariance(xp, Jf)
    singular = singular & jfin
    warn = bool(xp.any(singular))
    if not absolute_sigma:
        if m > n:
            s_sq = 2.0 * cost / (m - n)
            pcov = xp.where(singular[:, None, None], pcov, pcov * s_sq[:, None, None])
        else:
            pcov = xp.full_like(pcov, math.inf)
            warn = True
    if batched:
        failed = ~res.success
        return xp.where(failed[:, None, None], xp.full_like(pcov, math.nan), pcov), warn
    return pcov[0, ...], warn
