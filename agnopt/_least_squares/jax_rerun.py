r"""Later calls of a small JAX lm fit: one compiled program from ``x0`` to the result.

:mod:`.jax_solve` runs the Levenberg-Marquardt iterations of a traceable
``fun`` as one ``jax.jit`` program, but around it ``least_squares`` checks
``x0`` and the bounds, evaluates ``fun`` at ``x0``, checks its residuals and
builds the result (:func:`.result.finish`): some fifty array operations,
each dispatched by JAX alone (tens of microseconds each on the CPU), which
took 4 times as long as the whole fit on NumPy for a 3-parameter model.

For an unbatched lm fit without bounds, with ``x_scale`` ``None`` / ``"jac"``,
no callback, history, progress display or report, and residuals at ``x0``
that need no power-of-2 scaling (:meth:`.problem.Problem.set_fscale`), the
first call (which runs every check eagerly, as always) solves with
:func:`full_program`: the same program as :mod:`.jax_solve`'s, with, in front,
``fun`` at ``x0`` and the checks of ``x0`` and of those residuals turned into a
flag, and behind, the fields of :func:`.result.finish` (the status from
MINPACK's ``info``, the ``NOT_STATIONARY`` check of an ``xtol`` stop,
:mod:`.stationarity`, cost, gradient, optimality, active mask), traced
from the same functions. It returns the result's arrays and six integers
(the flag, ``info``, ``status``, ``nfev``, ``njev``, ``nit``), read in one
transfer. A later call of the same kind (:func:`rerun`, before any eager
work) finds that program under the same cache key as :mod:`.jax_solve`'s
(the function's code, closure, globals, what they read; arguments' shapes
and options) and runs it alone. Where the flag is down (``x0`` or its
residuals not finite, residuals that need scaling, a non-finite Jacobian or
a complex step rejected at ``x0``: the cases the eager path reports or
solves otherwise) :func:`rerun` returns ``None`` and ``least_squares``
runs its eager path, which raises, scales or solves with the engine as
always: the program never reports what the eager path would not.

``curve_fit`` on JAX (unbatched, without a 2-D ``sigma`` or a callable
``jac``) passes :func:`curve_fit_residual`, the same code for every call over
its data, so that its fits take this program too, and computes ``pcov`` as
one compiled block (:func:`.covariance.unbatched_pcov`).
"""

from __future__ import annotations

import math
import sys
import types

from .._core.result import OptimizeResult
from .._core.status import Status
from .engine import OUTCOME_FIELDS
from .outcome import message, to_status
from .stationarity import first_order_test, near_test
from .trf import final_fields

__all__ = ["curve_fit_residual", "fits", "full_program", "rerun", "run_full"]


def fits(batched, bounded, jac_scale, verbose, prob=None) -> bool:
    """Whether the fit may run as :func:`full_program` (see the module notes)."""
    return (not batched and not bounded and bool(jac_scale) and verbose == 0
            and (prob is None or not prob.scaled))


def _spec(fun, jac, loss, f_scale, diff_step, args, kwargs):
    """The attributes of :class:`.problem.Problem` that :func:`.jax_keys._key`
    reads, as the eager path sets them for a fit that :func:`fits`."""
    return types.SimpleNamespace(
        fun=fun, args=args, kwargs=kwargs, jac_arg="cs" if jac is None else jac,
        auto_cs=jac is None, loss=loss, f_scale=float(f_scale), fscale=1.0,
        diff_step=diff_step, batched=False, bounded=False, row_scaled=False)


def _result(arrays, summary):
    """The ``OptimizeResult`` of :func:`.result.finish` (unbatched) from the program's
    output; ``None`` where its flag is down."""
    vals = [int(v) for v in summary.tolist()]  # one transfer
    if not vals[0]:
        return None
    info, status, nfev, njev, nit = vals[1:]
    x, cost, F, J, g, opt, am = arrays
    return OptimizeResult(
        x=x, cost=cost, fun=F, jac=J, grad=g, optimality=opt, active_mask=am, nfev=nfev,
        njev=njev, nit=nit, status=status, message=message(info, status),
        success=status > Status.MAX_NFEV)


def run_full(xp, prob, x0, X, jac_scale, ftol, xtol, gtol, max_nfev):
    """The eager path's solve of a fit that :func:`fits`, as :func:`full_program`:
    ``(result, ran)``; ``result`` ``None`` where the program is not taken
    (``ran`` false: try :mod:`.jax_solve`'s) or its flag is down (``ran`` true:
    the engine solves). ``x0`` is the caller's array, as :func:`rerun` passes it."""
    from . import jax_solve

    found = jax_solve.program_for(xp, prob, X, None, jac_scale, ftol, xtol, gtol, max_nfev)
    if found is None:
        return None, False
    key, refs, entry, leaves = found
    out = jax_solve.run_program(key, refs, entry, x0, leaves)
    if out is None:
        return None, False
    res = _result(*out)
    entry[1]["down"] = res is None
    return res, True


def rerun(fun, x0, jac, loss, f_scale, diff_step, args, kwargs, ftol, xtol, gtol, max_nfev):
    """A later call of a fit whose :func:`full_program` the eager path made: the
    ``OptimizeResult``, or ``None`` (no such program, its flag down, JAX's
    ``jit`` disabled: the caller runs the eager path). Takes the arguments of
    ``least_squares`` as checked there, for an unbatched lm fit that
    :func:`fits` with the default bounds."""
    jax = sys.modules.get("jax")
    if jax is None or not isinstance(x0, jax.Array) or x0.ndim != 1 or x0.shape[0] == 0:
        return None
    if getattr(jax.config, "jax_disable_jit", False) or not getattr(
            fun, "_agnopt_whole_solve", True):
        return None
    if not (diff_step is None or isinstance(diff_step, (int, float))):
        return None
    from . import jax_solve
    from .options import check_max_nfev

    n = x0.shape[0]
    max_nfev = check_max_nfev(max_nfev, n)
    shape = types.SimpleNamespace(shape=(1, n), dtype=x0.dtype)
    spec = _spec(fun, jac, loss, f_scale, diff_step, args, kwargs)
    found = jax_solve.program_for(None, spec, shape, None, True, ftol, xtol, gtol, max_nfev,
                                  make=False)
    if found is None:
        return None
    _, _, entry, leaves = found
    # (its last run had its flag down: a complex step rejected for this fun, say; the
    # eager path runs it again, and a run with the flag up brings later calls back here)
    if not entry[1].get("ran") or entry[1].get("down"):
        return None
    try:  # (x0 a tracer: least_squares called inside a JAX transformation, say)
        res = _result(*entry[0](x0, leaves))
    except Exception:  # noqa: BLE001 - the eager path raises (or solves) as it does
        return None
    entry[1]["down"] = res is None
    return res


def full_program(xp, snap, rebuild, solve, x0, leaves, xtol):
    """Traced: ``fun`` at ``x0`` (n,), :mod:`.jax_solve`'s ``solve`` and the fields of
    :func:`.result.finish`. Returns ``((x, cost, fun, jac, grad, optimality,
    active_mask), summary)`` with ``summary`` (6,) ints: the flag (``x0`` and its
    residuals finite, residuals needing no scaling, the Jacobians finite and the
    complex step accepted), ``info``, ``status``, ``nfev``, ``njev``, ``nit``."""
    from .jax_solve import _traced_problem

    n = x0.shape[0]
    X = xp.reshape(x0, (1, n))
    fun, args, kwargs = rebuild(leaves)
    ev = _traced_problem(snap, None, None, args, kwargs)
    F = ev._fix_f(fun(x0, *args, **kwargs), 1)  # as Problem.residual (checked shape, dtype)
    dt = X.dtype
    # Problem.set_fscale's range: residuals outside it are scaled, by the eager path
    e = int(math.frexp(float(xp.finfo(dt).max))[1]) // 4
    lo, hi = math.ldexp(1.0, -e), math.ldexp(1.0, e)
    amax = xp.max(xp.abs(F))
    ok = (xp.all(xp.isfinite(X)) & xp.all(xp.isfinite(F))
          & ((amax == 0.0) | ((amax >= lo) & (amax <= hi))))
    loss, f_scale = snap.get("loss", "linear"), snap.get("f_scale", 1.0)
    model_jac = bool(snap.get("robust", False))

    # where the flag is down the loop does not run (``fine`` starts false) and the
    # fields below are computed on zeros, then ignored (the eager path takes over)
    zero = xp.zeros_like(X)
    X = xp.where(ok, X, zero)
    F = xp.where(ok, F, xp.zeros_like(F))
    D = xp.ones_like(X)
    lb = xp.full(X.shape, -math.inf, dtype=dt)
    ub = xp.full(X.shape, math.inf, dtype=dt)
    out, fine = solve(X, F, D, lb, ub, leaves, ok)
    o = dict(zip(OUTCOME_FIELDS, out))
    Xf, Ff, J, info = o["X"], o["F"], o["J"], o["info"]
    # result.finish: statuses, the NOT_STATIONARY check of an xtol stop (both of
    # xtol_not_stationary's tests run: a test whose input rows are all false
    # changes nothing), the result's fields
    status = to_status(xp, info, o["active"], False)
    check = (status == int(Status.XTOL)) | (status == int(Status.FTOL_XTOL))
    bad, Fh, Jl, free = first_order_test(xp, check, Xf, Ff, J, lb, ub, False, loss,
                                         f_scale, xtol, model_jac)
    bad = near_test(xp, bad, Xf, Fh, Jl, free, xtol)
    status = xp.where(bad, xp.full_like(status, int(Status.NOT_STATIONARY)), status)
    cost, J, g, opt, am = final_fields(xp, None, Xf, Ff, J, "lm", loss, f_scale, False,
                                       xtol, model_jac)
    arrays = tuple(xp.reshape(a, tuple(a.shape[1:])) for a in (Xf, cost, Ff, J, g, opt, am))
    ints = xp.stack([xp.astype(v, xp.int32) for v in (
        ok & fine, info[0], status[0], o["nfev"][0], o["njev"][0], o["nit"][0])])
    return arrays, ints


def curve_fit_residual(xp, f, xdata, ydata, inv):
    """``curve_fit``'s residual ``(f(xdata, *p) - ydata) * inv`` (``inv`` ``None``: no
    weights) for an unbatched fit on JAX, written so that :mod:`.jax_solve` can
    trace it and reuse its program: the same code for every call, reading
    nothing but ``f``, the namespace and the arrays (inputs of the program).
    The same values as :func:`.curve_fit._model`'s residual, which passes the
    parameters whose imaginary part is zero as real numbers at the complex
    step's points and skips ``ydata`` there (both change only the cost:
    complex arithmetic with zero imaginary parts gives the same real values,
    and ``ydata`` is real); errors as there."""

    def residual(p):
        r = f(xdata, *[p[j] for j in range(p.shape[0])])
        if not (hasattr(r, "shape") and hasattr(r, "dtype")):  # as scipy, converted
            r = xp.asarray(r, dtype=ydata.dtype)
        if tuple(r.shape) != tuple(ydata.shape):
            try:
                r = xp.broadcast_to(r, ydata.shape)
            except Exception as e:
                from .fit_data import xdata_hint

                raise ValueError(f"f: returned shape {tuple(r.shape)}, expected ydata's shape "
                                 f"{tuple(ydata.shape)}" + xdata_hint(xdata, ydata.shape)) from e
        r = r - ydata
        return r if inv is None else r * inv

    return residual
