"""``curve_fit`` with scipy's semantics on any Array API backend, batched over many fits."""

from __future__ import annotations

import inspect
import math
import re
import warnings
from typing import Any, Callable

from ._core.backend import resolve
from ._core.errors import OptimizeWarning
from ._lsq import _as_array, _check_backend, _device, _host_linalg, least_squares

__all__ = ["curve_fit", "OptimizeWarning"]


# common least_squares status -> MINPACK ``ier`` (what scipy's curve_fit returns for lm)
_TO_IER = {1: 4, 2: 1, 3: 2, 4: 3, 0: 5, -2: 0}


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
    if method is None:
        method = "lm"
    if method not in ("lm", "gauss-newton"):
        raise ValueError(
            f"method: expected None, 'lm' or 'gauss-newton', got {method!r} "
            "(agnopt's 'lm' handles bounds by projection)"
        )
    if "args" in kwargs:
        raise ValueError("'args' is not a supported keyword argument.")
    if "maxfev" in kwargs:
        mf = kwargs.pop("maxfev")
        kwargs.setdefault("max_nfev", mf)
    ydata = _as_array(ydata, "ydata")
    xp, dev = resolve(ydata, "ydata")
    dtype = ydata.dtype
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

    # initial parameters
    if p0 is None:
        n = _n_params(f)
        p0a = xp.ones((B, n) if batched else (n,), dtype=dtype, device=dev)
    else:
        if hasattr(p0, "shape") and hasattr(p0, "dtype"):
            _check_backend(p0, xp, "p0", "ydata")
            try:
                p0a = xp.asarray(p0, dtype=dtype, device=dev)
            except Exception:
                p0a = xp.asarray(p0.tolist(), dtype=dtype, device=dev)
        else:
            p0a = xp.asarray(p0, dtype=dtype, device=dev)
        if p0a.ndim == 0:
            p0a = xp.reshape(p0a, (1,))
        n = p0a.shape[-1]
        if batched:
            if p0a.ndim == 1:
                p0a = xp.broadcast_to(p0a[None, :], (B, n))
                p0a = xp.asarray(p0a, copy=True) if not _is_lazy(xp) else p0a
            elif p0a.ndim != 2 or p0a.shape[0] != B:
                raise ValueError(f"p0: with batched=True expected shape (B, n) = ({B}, n) or (n,), got {tuple(p0a.shape)}")
        elif p0a.ndim != 1:
            raise ValueError(f"p0: expected shape (n,), got {tuple(p0a.shape)}")

    # weighting: residual transform
    if sigma is None:
        wfun = None
    else:
        if not (hasattr(sigma, "shape") and hasattr(sigma, "dtype")):
            sig = xp.asarray(sigma, dtype=dtype, device=dev)
        else:
            try:
                sig = xp.asarray(sigma, dtype=dtype, device=dev)
            except Exception:
                sig = xp.asarray(sigma.tolist(), dtype=dtype, device=dev)
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
        else:
            try:
                inv = 1.0 / xp.broadcast_to(sig, ydata.shape)
            except Exception as e:
                raise ValueError("`sigma` has incorrect shape.") from e

            def wfun(r, inv=inv):
                return r * inv

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
        nz = nz.compute() if hasattr(nz, "compute") else nz
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
            if not batched and sigma is not None and getattr(sig, "ndim", 1) == 2:
                return xp.linalg.solve(L, J)
            return J * inv[..., None]

        ls_jac = jac_w
    elif jac is None:
        ls_jac = None  # least_squares' default: complex step, 3-point fallback
    else:
        ls_jac = jac

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
    popt = res.x
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
    pcov, singular = _covariance(xp, Jf)
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
        pcov = xp.where(failed[:, None, None], xp.full_like(pcov, math.nan), pcov)
    else:
        pcov = pcov[0, ...]
        if not res.success:
            raise RuntimeError("Optimal parameters not found: " + res.message)
    if warn:
        warnings.warn(
            "Covariance of the parameters could not be estimated", OptimizeWarning, stacklevel=2
        )
    if full_output:
        if batched:
            ier = [_TO_IER.get(int(s), 0) for s in _host_list(res.status)]
            mesg = res.message
        else:
            ier = _TO_IER.get(int(res.status), 0)
            mesg = res.message
        infodict = {
            "nfev": res.nfev, "fvec": res.fun, "status": res.status,
            "success": res.success, "nit": res.nit, "njev": res.njev,
        }
        return popt, pcov, infodict, mesg, ier
    return popt, pcov


def _is_lazy(xp) -> bool:
    return "dask" in getattr(xp, "__name__", "")


def _host_list(a) -> list:
    a = a.compute() if hasattr(a, "compute") else a
    return [a[i] for i in range(a.shape[0])]


def _covariance(xp, J):
    """``(J^T J)^{-1}`` for a stack ``J`` (B, m, n), inf where rank deficient.

    scipy's rule (``leastsq``'s ``cov_x``): singular where a singular value
    of ``J`` is at most ``eps * max(m, n) * s_max``. Two routes, chosen per
    problem: for ``n <= 16`` the Cholesky factor of the column-scaled
    ``J^T J`` gives the inverse when its certified condition bound
    ``trace * trace(inverse)`` is below 1e8 (so ``cond(J) < 1e4``, far from
    the singular threshold, and the inverse is accurate to about 1e-8
    relative); all other problems get ``V diag(1/s^2) V^T`` from the SVD of
    ``J`` itself (gathered into a sub-batch where the backend allows it).
    """
    from ._lsq import _CHOL_MAX_N, _chol_inv, _compactable, _positions, _rows_where, _scatter

    B, m, n = J.shape
    dev = _device(J)
    if n <= _CHOL_MAX_N and m >= n:
        eye = xp.eye(n, dtype=J.dtype, device=dev)
        A = xp.matmul(xp.matrix_transpose(J), J)
        d = xp.sqrt(xp.sum(A * eye, axis=-1))
        d = xp.where(d > 0, d, xp.ones_like(d))
        As = A / (d[:, :, None] * d[:, None, :])
        Li, ok = _chol_inv(xp, As)
        cond = xp.sum(As * eye, axis=(-2, -1)) * xp.sum(Li * Li, axis=(-2, -1))
        well = ok & (cond < 1e8) & xp.all(xp.isfinite(A), axis=(-2, -1))
        Li = xp.where(well[:, None, None], Li, eye)
        pcov = xp.matmul(xp.matrix_transpose(Li), Li) / (d[:, :, None] * d[:, None, :])
        singular = xp.zeros((B,), dtype=xp.bool, device=dev)
        if bool(xp.all(well)):
            return pcov, singular
        if _compactable(xp):
            idx = _rows_where(xp, ~well)
            mask, pos = _positions(xp, idx, B, dev)
            pc_s, sg_s = _covariance_svd(xp, xp.take(J, idx, axis=0))
            return _scatter(xp, pcov, pc_s, mask, pos), _scatter(xp, singular, sg_s, mask, pos)
        pc_s, sg_s = _covariance_svd(xp, J)
        return (xp.where(well[:, None, None], pcov, pc_s),
                xp.where(well, singular, sg_s))
    return _covariance_svd(xp, J)


def _covariance_svd(xp, J):
    B, m, n = J.shape
    U, s, Vt = _host_linalg(xp, "svd", J, full_matrices=False)
    eps = float(xp.finfo(J.dtype).eps)
    thr = eps * max(m, n) * s[:, 0:1]
    k = s.shape[-1]
    singular = xp.any(s <= thr, axis=-1) if k == n else xp.ones((B,), dtype=xp.bool, device=_device(J))
    s_safe = xp.where(s > thr, s, xp.ones_like(s))
    Vs = xp.matrix_transpose(Vt) / (s_safe * s_safe)[:, None, :]
    pcov = xp.matmul(Vs, Vt)
    pcov = xp.where(singular[:, None, None], xp.full_like(pcov, math.inf), pcov)
    return pcov, singular
