"""``curve_fit`` with scipy's semantics on any Array API backend, batched over many fits."""

from __future__ import annotations

import inspect
import math
import re
import warnings
from typing import Any, Callable

from .._core import lazy
from .._core.backend import resolve
from .._core.errors import OptimizeWarning
from .._core.status import Status
from .arrays import host_ints
from .chunked import chunked_curve_fit, is_chunked_batch
from .covariance import covariance
from .least_squares import least_squares
from .problem import as_array, check_backend, to_backend

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
    bounds: Any = (-math.inf, math.inf),
    method: str | None = None,
    jac: Any = None,
    full_output: bool = False,
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
        Passed to ``f`` unchanged (not differentiated).
    ydata : array
        ``(m,)``, or ``(B, m)`` when batched. Its backend, device and dtype
        are those of the computation. Must be finite.
    p0 : array, optional
        Initial parameters ``(n,)``; batched: ``(B, n)`` or ``(n,)`` (shared).
        Default: ones, with ``n`` read from ``f``'s signature (as scipy).
    sigma : array, optional
        Standard deviations of ``ydata``: ``(m,)`` (or ``(B, m)`` batched, or
        a scalar); residuals are divided by it. Unbatched, an ``(m, m)``
        array is the covariance matrix of ``ydata``: residuals are
        multiplied by ``L^{-1}`` with ``sigma = L L^T`` (Cholesky).
    absolute_sigma : bool
        ``False`` (default): ``pcov`` is scaled by the reduced chi-square
        ``sum(r**2) / (m - n)`` (only relative ``sigma`` matters). ``True``:
        ``pcov = (J^T J)^{-1}`` with ``sigma`` taken as absolute.
    bounds : (lb, ub)
        Parameter bounds (projected Levenberg-Marquardt, see
        :func:`agnopt.least_squares`).
    method : {None, "lm", "gauss-newton"}
        ``None`` means ``"lm"`` (which here also handles bounds; scipy would
        switch to "trf"). "trf"/"dogbox" are not implemented.
    jac : callable or str, optional
        ``jac(xdata, *params)`` returning ``(m, n)`` (``(B, m, n)``), or a
        string accepted by :func:`agnopt.least_squares` ("cs",
        "2-point", "3-point", "autodiff"). ``None``: least_squares' default
        (complex step, falling back to "3-point" if ``f`` rejects complex input).
    full_output : bool
        Also return ``infodict`` (``nfev``, ``fvec``, ``status``,
        ``success``, ``nit``), ``mesg`` and ``ier`` (MINPACK's code 1-4 on
        success, as scipy's lm).
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
        Bad shapes, non-finite ``ydata``, unknown ``method``.
    """
    method = _check_method(method, kwargs)
    if batched and is_chunked_batch(ydata):  # a Dask batch: one in-memory fit per row chunk
        return chunked_curve_fit(
            f, xdata, ydata, *_chunked_p0(f, p0, ydata), sigma, full_output,
            dict(kwargs, method=method, jac=jac, bounds=bounds, absolute_sigma=absolute_sigma))
    ydata = as_array(ydata, "ydata")
    xp, dev = resolve(ydata, "ydata")
    B, m = _check_ydata(xp, ydata, batched)
    p0a, n = _initial_params(xp, dev, f, p0, ydata, batched, B)
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
            "Covariance of the parameters could not be estimated", OptimizeWarning, stacklevel=2
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


def _check_method(method, kwargs):
    """``method`` (``None`` -> ``"lm"``); scipy's ``maxfev`` becomes ``max_nfev``."""
    if method is None:
        method = "lm"
    if method not in ("lm", "trf", "dogbox", "gauss-newton"):
        raise ValueError(
            f"method: expected None, 'lm', 'trf', 'dogbox' or 'gauss-newton', got {method!r}"
        )
    if "args" in kwargs:
        raise ValueError("'args' is not a supported keyword argument.")
    if "maxfev" in kwargs:
        mf = kwargs.pop("maxfev")
        kwargs.setdefault("max_nfev", mf)
    return method


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
    if not bool(xp.all(xp.isfinite(ydata))):
        raise ValueError("ydata: contains non-finite values (NaN or inf)")
    return B, m


def _initial_params(xp, dev, f, p0, ydata, batched, B):
    """``(p0, n)``: ``p0`` as (n,) or (B, n) in ``ydata``'s dtype (ones by default)."""
    dtype = ydata.dtype
    if p0 is None:
        n = _n_params(f)
        return xp.ones((B, n) if batched else (n,), dtype=dtype, device=dev), n
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
