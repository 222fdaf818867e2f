"""``curve_fit`` with scipy's semantics on any Array API backend, batched over many fits."""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any, Literal, overload

from .._core.backend import native_namespace, on_device_of, resolve
from .._core.errors import OptimizeWarning
from .._core.progress import make_progress
from .._core.status import Status
from .._core.typing import Array, ArrayLike, BoundsLike
from .._core.user_code import has_note, renote
from . import jax_solve
from .arrays import count_dtype, detach, host_ints
from .cholesky import ENTRYWISE_N
from .chunked import chunked_curve_fit, is_chunked_batch
from .covariance import _covariance_one, _unbatched_pcov, covariance, minpack_factors
from .fit_data import (
    apply_nan_policy,
    as_data,
    backend_note,
    batched_nan_mask,
    broadcast_scalar_y,
    check_finite_data,
    check_fit_method,
    check_ydata,
    chunked_p0,
    convert_xdata,
    has_finite_bound,
    initial_params,
    mixed_backend_message,
    nonfinite_xdata_message,
    nonfinite_ydata_message,
    too_few_points_message,
)
from .fit_model import model, weights
from .least_squares import DEFAULT_TOL, least_squares, solve
from .options import JAC_STRINGS, as_array, as_bounds_pair

__all__ = ["OptimizeWarning", "curve_fit"]


# common least_squares status -> MINPACK ``ier`` (what scipy's curve_fit returns for lm)
_TO_IER: dict[int, int] = {Status.GTOL: 4, Status.FTOL: 1, Status.XTOL: 2, Status.FTOL_XTOL: 3,
           Status.MAX_NFEV: 5, Status.CALLBACK: 0}


# (popt, pcov), or with full_output=True (popt, pcov, infodict, mesg, ier), as scipy's
@overload
def curve_fit(
    f: Callable[..., Array],
    xdata: Any,
    ydata: ArrayLike,
    p0: ArrayLike | None = None,
    sigma: ArrayLike | None = None,
    absolute_sigma: bool = False,
    check_finite: bool | None = None,
    bounds: BoundsLike = (-math.inf, math.inf),
    method: str | None = None,
    jac: str | Callable[..., Array] | None = None,
    *,
    full_output: Literal[False] = False,
    nan_policy: str | None = None,
    batched: bool = False,
    **kwargs: Any,
) -> tuple[Array, Array]: ...
@overload
def curve_fit(
    f: Callable[..., Array],
    xdata: Any,
    ydata: ArrayLike,
    p0: ArrayLike | None = None,
    sigma: ArrayLike | None = None,
    absolute_sigma: bool = False,
    check_finite: bool | None = None,
    bounds: BoundsLike = (-math.inf, math.inf),
    method: str | None = None,
    jac: str | Callable[..., Array] | None = None,
    *,
    full_output: Literal[True],
    nan_policy: str | None = None,
    batched: bool = False,
    **kwargs: Any,
) -> tuple[Array, Array, dict[str, Any], str, int | list[int]]: ...
@overload
def curve_fit(
    f: Callable[..., Array],
    xdata: Any,
    ydata: ArrayLike,
    p0: ArrayLike | None = None,
    sigma: ArrayLike | None = None,
    absolute_sigma: bool = False,
    check_finite: bool | None = None,
    bounds: BoundsLike = (-math.inf, math.inf),
    method: str | None = None,
    jac: str | Callable[..., Array] | None = None,
    *,
    full_output: bool = False,
    nan_policy: str | None = None,
    batched: bool = False,
    **kwargs: Any,
) -> tuple[Any, ...]: ...
@on_device_of(2, "ydata")  # CuPy: run on the GPU of the arrays
def curve_fit(
    f: Callable[..., Array],
    xdata: Any,
    ydata: ArrayLike,
    p0: ArrayLike | None = None,
    sigma: ArrayLike | None = None,
    absolute_sigma: bool = False,
    check_finite: bool | None = None,
    bounds: BoundsLike = (-math.inf, math.inf),
    method: str | None = None,
    jac: str | Callable[..., Array] | None = None,
    *,
    full_output: bool = False,
    nan_policy: str | None = None,
    batched: bool = False,
    **kwargs: Any,
) -> tuple[Any, ...]:
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
        multiplied by ``L^{-1}`` with ``sigma = L L^T`` (Cholesky). A zero or
        NaN entry of a 1-D (batched) ``sigma`` is a ``ValueError`` naming it
        (scipy divides by it and stops on infinite residuals); negative and
        ``inf`` entries are accepted as by scipy (only ``sigma**2`` enters
        the fit; ``inf`` gives a point zero weight). A 2-D ``sigma`` that is
        not positive definite is a ``ValueError`` (``LinAlgError``).
    absolute_sigma : bool
        ``False`` (default): ``pcov`` is scaled by the reduced chi-square
        ``sum(r**2) / (m - n)`` (only relative ``sigma`` matters). ``True``:
        ``pcov = (J^T J)^{-1}`` with ``sigma`` taken as absolute.
    check_finite : bool, optional
        Raise ``ValueError`` when ``ydata`` or an array ``xdata`` holds NaN or
        inf. Default: ``True`` unless ``nan_policy`` is given (scipy's rule).
        ``False`` skips the check; a fit whose residuals at ``p0`` are then
        non-finite raises ``ValueError`` (batched too: the whole call, not a
        failed fit): naming ``ydata``'s first non-finite entry where ``ydata``
        holds one ("ydata: entry 3 is nan, ..."), else an array ``xdata``'s
        ("xdata: entry 3 is nan, ..."), else ``f`` ("residuals are
        not finite at the initial point p0", batched "(problems [...])");
        use ``nan_policy="omit"``.
    bounds : (lb, ub) or Bounds
        Parameter bounds; any object with ``lb`` / ``ub``. A deliberate
        difference from scipy, whose ``curve_fit`` raises ``ValueError`` for
        ``method="lm"`` with bounds: agnopt's ``"lm"`` accepts them and keeps
        every iterate in the box by projecting its steps onto it (an active
        set; see ``bounds`` of :func:`agnopt.least_squares`). To get scipy's
        error, check ``method="lm"`` and ``bounds`` before calling.
    method : {None, "lm", "trf", "dogbox", "gauss-newton"}
        ``None``: ``"lm"`` without bounds and ``"trf"`` (trust-region
        reflective, iterates strictly inside the bounds) with finite bounds,
        as scipy. ``"lm"`` with bounds projects its steps (scipy's refuses
        bounds); a fit that stops on a bound where the Jacobian column of
        that parameter vanishes is reported as not converged (status -5).
    jac : callable or str, optional
        ``jac(xdata, *params)`` returning ``(m, n)`` (``(B, m, n)``), or a
        string accepted by :func:`agnopt.least_squares` ("cs",
        "2-point", "3-point", "autodiff"). ``None``: least_squares' default
        (the complex step, checked once against finite differences and
        replaced by "3-point" where they disagree or ``f`` rejects complex
        input).
    full_output : bool
        Also return ``infodict`` (``nfev``: evaluations of ``f`` not
        counting Jacobian ones, see ``**kwargs``; ``fvec``, ``status``,
        ``success``, ``nit``, ``njev``), ``mesg`` and ``ier`` (as scipy: with
        ``"lm"`` MINPACK's code, 1-4 on success; with ``"trf"`` and
        ``"dogbox"`` the ``least_squares`` status, 1-4 on success); unbatched with ``"lm"`` also
        MINPACK's ``fjac`` ``(n, m)``, ``ipvt`` ``(n,)`` and ``qtf`` ``(n,)``
        of the Jacobian at ``popt`` (see
        :func:`agnopt._least_squares.covariance.minpack_factors`; below ``R``
        ``fjac`` holds zeros, not MINPACK's Householder vectors).
    nan_policy : {None, "raise", "omit"}
        ``"raise"``: ``ValueError`` when ``xdata`` or ``ydata`` holds NaN;
        ``"omit"``: drop the data points where ``ydata[i]`` or any
        ``xdata[..., i]`` is NaN (and their ``sigma`` rows / columns);
        ``None``: only ``check_finite``. ``"propagate"`` is refused, as
        scipy. Batched, ``"omit"`` masks instead of dropping (the fits keep
        the rectangular ``(B, m)`` shape): point ``(b, i)`` is omitted where
        ``ydata[b, i]`` is NaN or ``xdata`` is NaN there (an ``xdata`` of
        ``ydata``'s shape per fit, any other array ``xdata[..., i]`` for
        every fit); its residual and Jacobian row are exactly 0 (``f`` is
        still called there, with NaN ``xdata`` entries replaced by 0, and its
        value ignored; ``infodict["fvec"]`` holds 0), and ``pcov`` uses
        ``m_b - n`` degrees of freedom, ``m_b`` the points left to fit ``b``
        (``inf`` with an :class:`OptimizeWarning` where ``m_b <= n``). Each
        fit then equals its own fit on its finite points. A fit left with
        no point is a ``ValueError``. ``inf`` data are not omitted: a
        ``ValueError`` names the first ``inf`` entry of ``ydata``.
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
        accepted as ``max_nfev``: a budget of evaluations of ``f`` that are
        not Jacobian evaluations (those of the complex step or finite
        differences are not counted; ``njev`` counts the Jacobians). scipy's ``"lm"`` (MINPACK's ``leastsq``) also counts the
        ``n`` evaluations of each forward-difference Jacobian in ``maxfev``
        and ``nfev``, so the same fit reports fewer evaluations here (e.g.
        6 vs scipy's 26 for a 4-parameter Gaussian) and a ``maxfev`` that
        stops scipy's ``"lm"`` may be enough here; scipy's ``"trf"`` and
        ``"dogbox"`` count as agnopt does.

    torch tensors that require grad (``xdata``, ``ydata``, ``p0``,
    ``sigma``) are detached (``tensor.detach()``: the same data, no copy):
    the fit is not differentiable through agnopt, so ``popt`` and ``pcov``
    never record an autograd graph (nor does torch warn about converting a
    graph tensor to a number). ``f`` receives the detached ``xdata``.

    Returns
    -------
    popt : array
        ``(n,)`` or ``(B, n)``.
    pcov : array
        ``(n, n)`` or ``(B, n, n)``: ``(J^T J)^{-1}`` at ``popt`` (``J`` of
        the weighted residuals), times ``sum(r**2) / (m - n)`` unless
        ``absolute_sigma``. Filled with ``inf`` (with an
        :class:`OptimizeWarning`) where ``m <= n`` without ``absolute_sigma``
        (as scipy), and where ``J`` is rank deficient: a singular value at
        most ``eps * max(m, n) * s_max``, the threshold below which scipy's
        trf/dogbox path drops singular values. This differs from scipy on
        purpose: scipy returns the pseudo-inverse there (trf/dogbox), or,
        on its lm path, ``leastsq``'s ``cov_x`` from the QR factor, which is
        inf only when that factor is exactly singular; such a covariance is
        not determined by the data, so agnopt says so (scipy's
        ``test_gh4555`` expects finite variances there and fails).

    Raises
    ------
    RuntimeError
        Unbatched: if the fit does not converge ("Optimal parameters not
        found", as scipy, followed by the solver's message), i.e. any status
        <= 0: the evaluation budget ran out, or a status of agnopt's that
        scipy reports as success, such as -6 (the ``xtol`` test fired away
        from a stationary point: most often a wrong ``jac``) or -5 (stuck on
        a bound); see :func:`agnopt.least_squares` and :class:`agnopt.Status`.
        When ``f`` returns a lower-precision dtype than ``ydata``'s (float32
        values for float64 data), the message says so (its rounding limits
        the fit; ``f`` is called once more, at the last point, to see it).
        Batched fits do not raise: ``infodict["status"]`` says which failed.
    ValueError
        Bad shapes (also found by calling ``f``: named), non-finite data
        (``check_finite``), NaN with ``nan_policy="raise"``, unknown
        ``method`` or ``nan_policy``, ``args`` in ``kwargs``, ``jac``
        neither callable nor one of its strings, a zero or NaN ``sigma``
        entry; a wrong ``sigma`` shape ("`sigma` has incorrect shape", as
        scipy, with the shapes expected). Batched, these input errors name
        the rows and are raised before any fit is solved.
    TypeError
        ``f`` not callable; scipy's leastsq-only keywords ``epsfcn``,
        ``factor``, ``diag``, ``col_deriv`` (the message names agnopt's
        equivalent: ``diff_step``, ``x_scale``); ``method="lm"`` (or any method, batched) with
        more parameters than data points (scipy's rule); ``p0`` of another
        backend than ``ydata``, or ``f`` returning one (e.g. ``xdata`` and
        ``ydata`` of two backends: the message names them).
    Exception
        Whatever ``f`` or ``jac`` raises propagates with its own type and
        message, as in scipy (``except RuntimeError`` does not catch a bug
        in the model), with a note (Python >= 3.11) saying where agnopt
        evaluated it: at ``p0``, at a trial point, at a finite-difference
        point of the Jacobian, or in ``jac``. An error at the complex points
        of the default complex-step Jacobian only switches the fit to
        central differences (at real points, which raise what ``f`` raises
        there).

    Warns
    -----
    OptimizeWarning
        When ``pcov`` cannot be estimated. If ``scipy.optimize`` has been
        imported, the warning is also an instance of scipy's
        ``OptimizeWarning`` (filters written for scipy apply).
    """
    if not callable(f):
        raise TypeError(f"f: expected a callable (the model), got {type(f).__name__} {f!r:.40}")
    bounds = as_bounds_pair(bounds)
    method = check_fit_method(method, kwargs, has_finite_bound(bounds))
    if nan_policy not in (None, "raise", "omit", "propagate"):
        raise ValueError("nan_policy must be one of {None, 'raise', 'omit'}")
    if nan_policy == "propagate":
        raise ValueError("`nan_policy='propagate'` is not supported by this function.")
    if check_finite is None:
        check_finite = nan_policy is None
    if batched and is_chunked_batch(ydata):  # a Dask batch: one in-memory fit per row chunk
        p0c, n_c = chunked_p0(f, p0, ydata)
        m_c = int(getattr(ydata, "shape")[1])
        if method == "lm" and nan_policy != "omit" and n_c > m_c:  # (as below, eagerly)
            raise TypeError(too_few_points_message(n_c, m_c, True))
        return chunked_curve_fit(
            f, xdata, ydata, p0c, n_c, sigma, full_output,
            dict(kwargs, method=method, jac=jac, bounds=bounds, absolute_sigma=absolute_sigma,
                 check_finite=check_finite, nan_policy=nan_policy))
    ydata = as_data(detach(as_array(ydata, "ydata")))
    xp, dev = resolve(ydata, "ydata")
    xdata = convert_xdata(xp, dev, detach(xdata), ydata.dtype, like=ydata)
    p0, sigma = detach(p0), detach(sigma)
    if check_finite:
        check_finite_data(xp, xdata, ydata, nan_policy)
    omit = None  # batched nan_policy="omit": (B, m) points of zero weight
    y_user, x_user = ydata, xdata  # (named by the messages of the error paths)
    if nan_policy is not None:
        if batched and ydata.ndim == 2:
            xdata, ydata, omit = batched_nan_mask(xp, nan_policy, xdata, ydata)
        elif not batched:
            xdata, ydata, sigma = apply_nan_policy(xp, dev, nan_policy, xdata, ydata, sigma)
    if not batched and ydata.ndim == 0:
        ydata = broadcast_scalar_y(xp, dev, f, xdata, ydata, p0)
    B, m = check_ydata(xp, ydata, batched)
    p0a, n = initial_params(xp, dev, f, p0, ydata, batched, B, bounds)
    if method == "lm" and omit is None and n > m:  # scipy's rule, every fit of a batch
        raise TypeError(too_few_points_message(n, m, batched))
    if method == "lm" and omit is not None:  # scipy's rule, fit by fit, on the points kept
        m_b = m - xp.sum(xp.astype(omit, xp.int32), axis=-1)
        few = m_b < n
        if bool(xp.any(few)):
            rows = [int(i) for i in xp.nonzero(few)[0]]
            raise TypeError(f"The number of func parameters={n} must not exceed the number "
                            f"of data points of a fit: with nan_policy='omit' the fits (rows) "
                            f"{rows} keep fewer ({[int(m_b[i]) for i in rows]})")
    wfun, inv, L = weights(xp, dev, sigma, ydata, batched, m)
    residual, ls_jac = model(xp, dev, f, xdata, ydata, jac, n, batched, wfun, inv, L, omit)
    try:
        if kwargs.get("progress") not in (None, False):
            # the display names the function the user called
            kwargs["progress"] = make_progress(kwargs["progress"], "curve_fit")
        if not kwargs and not batched and (ls_jac is None or callable(ls_jac)
                                           or ls_jac in JAC_STRINGS):
            # least_squares' default options, which need no check: its driver directly
            tol = DEFAULT_TOL
            res = solve(residual, p0a, jac=ls_jac, bounds=bounds, method=method, ftol=tol,
                        xtol=tol, gtol=tol, x_scale=None, loss="linear", f_scale=1.0,
                        diff_step=None, max_nfev=None, verbose=0, args=(), kwargs={},
                        callback=None, user_callback=None, batched=False, history=False,
                        progress=False)
        else:
            res = least_squares(
                residual, p0a, jac=ls_jac, method=method, bounds=bounds, batched=batched,
                **kwargs)
    except Exception as e:
        # name curve_fit's arguments (f, p0) instead of least_squares' (fun, x0)
        if has_note(e):  # raised while evaluating f: its own type and message (as scipy)
            hint = backend_note(xdata, ydata)
            renote(e, lambda s: _curve_fit_names(s) + hint)
            raise
        if type(e) not in (ValueError, RuntimeError, TypeError) or len(e.args) != 1:
            raise
        msg = str(e)
        at_p0 = msg.startswith("fun: residuals are not finite at the initial point")
        what = _curve_fit_names(msg[len("fun: "):])
        new = ((at_p0 and (nonfinite_ydata_message(xp, y_user, ydata, nan_policy, what)
                           or nonfinite_xdata_message(xp, x_user, y_user, nan_policy, what)))
               or mixed_backend_message(msg, xdata, ydata) or _curve_fit_names(msg))
        if new == msg:
            raise
        raise type(e)(new) from (e.__cause__ or e)
    m_fit = None if omit is None else xp.sum(xp.astype(~omit, count_dtype(xp)), axis=-1)
    pcov, warn = _pcov(xp, res, batched, absolute_sigma, m, n, m_fit)
    if not batched and not res.success:
        raise RuntimeError("Optimal parameters not found: " + res.message
                           + _low_precision_note(xp, f, xdata, res.x, n, y_user.dtype))
    if warn:
        warnings.warn(
            "Covariance of the parameters could not be estimated", _warning_class(), stacklevel=3
        )
    if full_output:
        # scipy: lm returns MINPACK's info, trf and dogbox their least_squares status
        to_ier = (lambda s: _TO_IER.get(s, 0)) if method == "lm" else (lambda s: s)
        if batched:
            sts = host_ints(res.status)
            codes = {s: to_ier(s) for s in set(sts)}  # (a few distinct statuses)
            ier: list[int] | int = [codes[s] for s in sts]
        else:
            ier = to_ier(int(res.status))
        infodict = {
            "nfev": res.nfev, "fvec": res.fun, "status": res.status,
            "success": res.success, "nit": res.nit, "njev": res.njev,
        }
        if method == "lm" and not batched and res.jac.shape[0] >= res.jac.shape[1]:
            infodict["fjac"], infodict["ipvt"], infodict["qtf"] = minpack_factors(
                xp, res.jac, res.fun)
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


def _low_precision_note(xp, f, xdata, p, n, dtype) -> str:
    """Failure path only: a sentence when ``f`` returns a real floating dtype of
    fewer bits than ``ydata``'s (e.g. float32 values for float64 data), whose
    rounding makes the residuals noisy at the fit's tolerances. ``f`` is called once
    more, at ``p`` (its output dtype is not kept by the fit); ``""`` otherwise."""
    try:
        rdt = f(xdata, *[p[j] for j in range(n)]).dtype
        low = xp.isdtype(rdt, "real floating") and xp.finfo(rdt).bits < xp.finfo(dtype).bits
    except Exception:  # noqa: BLE001 - f's, at the failed fit's point: no sentence
        return ""
    if not low:
        return ""
    names = [str(d).rsplit(".", 1)[-1] for d in (rdt, dtype)]
    return (f" f returned {names[0]} values for {names[1]} ydata: their rounding limits "
            "the fit (a finite-difference jac too); return ydata's dtype.")


def _curve_fit_names(msg: str) -> str:
    """A message of ``least_squares`` with ``curve_fit``'s names: ``f``, ``p0``."""
    return re.sub(r"\bx0\b", "p0", re.sub(r"\bfun\b", "f", msg))


def _pcov(xp, res, batched, absolute_sigma, m, n, m_fit=None):
    """``(pcov, warn)``: ``(J^T J)^{-1}`` at the solution, scaled by the reduced
    chi-square unless ``absolute_sigma``; NaN for failed batched fits. ``m_fit``
    (B,): the number of data points of each fit (batched ``nan_policy="omit"``)."""
    xp = native_namespace(xp)  # NumPy's own functions (a few dozen small operations)
    Jf = res.jac
    if not batched and m_fit is None and jax_solve._is_jax(xp):  # JAX: one program
        pcov, warn = _unbatched_pcov(xp, Jf, res.cost, bool(absolute_sigma), m, n)
        return pcov, bool(warn)
    if not batched:
        Jf = xp.reshape(Jf, (1,) + tuple(Jf.shape))
        m_, n_ = Jf.shape[1], Jf.shape[2]
        # one float64 NumPy fit, well conditioned: covariance's compiled route, never
        # singular there (its pcov, (1, n, n)), scaled by the reduced chi-square as below
        one = (_covariance_one(xp, Jf) if m_ >= n_ and n_ <= ENTRYWISE_N and m_fit is None
               else None)
        if one is not None:
            if absolute_sigma:
                return one[0][0, ...], False
            if m > n:  # (a Python float: the same double arithmetic as the array's)
                return one[0][0, ...] * (2.0 * float(res.cost) / (m - n)), False
            return xp.full_like(one[0][0, ...], math.inf), True
        cost = xp.reshape(res.cost, (1,))
        pcov, singular = covariance(xp, Jf)
        warn = bool(xp.any(singular))
        if warn:  # (a non-finite Jacobian is not reported as singular)
            singular = singular & xp.all(xp.isfinite(xp.reshape(Jf, (1, -1))), axis=-1)
            warn = bool(xp.any(singular))
    else:
        cost = res.cost
        # a batched fit stopped on a non-finite Jacobian (status -3): covariance of
        # the others only (that fit's pcov is NaN below, as for any failed fit)
        jfin = xp.all(xp.isfinite(xp.reshape(Jf, (Jf.shape[0], -1))), axis=-1)
        if not bool(xp.all(jfin)):
            Jf = xp.where(jfin[:, None, None], Jf, xp.zeros_like(Jf))
        pcov, singular = covariance(xp, Jf, m_fit)
        singular = singular & jfin
        warn = bool(xp.any(singular))
    if not absolute_sigma and m_fit is not None:  # per-fit degrees of freedom m_b - n
        few = m_fit <= n
        singular = singular | few
        warn = bool(xp.any(singular))
        dof = xp.astype(xp.where(few, xp.ones_like(m_fit), m_fit - n), pcov.dtype)
        s_sq = xp.where(singular, xp.ones_like(dof), 2.0 * cost / dof)
        pcov = xp.where(singular[:, None, None], xp.full_like(pcov, math.inf),
                        pcov * s_sq[:, None, None])
    elif not absolute_sigma:
        if m > n:
            s_sq = 2.0 * cost / (m - n)
            if warn:  # (inf * a zero cost is NaN, with a RuntimeWarning: those rows are kept)
                s_sq = xp.where(singular, xp.ones_like(s_sq), s_sq)
            scaled = pcov * s_sq[:, None, None]
            # (where no fit is singular the selection below would keep every entry)
            pcov = xp.where(singular[:, None, None], pcov, scaled) if warn else scaled
        else:
            pcov = xp.full_like(pcov, math.inf)
            warn = True
    if batched:
        failed = ~res.success
        return xp.where(failed[:, None, None], xp.full_like(pcov, math.nan), pcov), warn
    return pcov[0, ...], warn
