"""The ``OptimizeResult`` of an in-memory solve (lm, gauss-newton, trf, dogbox).

:func:`finish` turns the engine's :class:`.state.Outcome` into scipy's result
fields: the Jacobian at the final point where the last accepted step made it
stale (one evaluation, counted), the statuses and messages (with agnopt's
``STUCK_ON_BOUND`` check for projected methods and the ``NOT_STATIONARY``
check of ``xtol`` stops, :mod:`.stationarity`), the robust cost, gradient,
optimality and active mask, and the residuals unscaled where the solver
scaled them.
"""

from __future__ import annotations

from .._core.result import OptimizeResult
from .._core.status import Status
from .._core.backend import compiled
from .arrays import count_dtype, device, host_ints
from .outcome import message, messages, status_one, stuck_on_bound, to_status
from .stationarity import xtol_not_stationary
from .trf import final_fields

__all__ = ["finish"]

_XTOL_STOPS = (int(Status.XTOL), int(Status.FTOL_XTOL))  # the stops xtol_not_stationary checks

def rows0(xp, arrays, counts):
    """The one problem's rows of a one-problem result's ``arrays`` (reshapes: one
    operation each on every backend) and its ``counts`` (each (1,)) as one (c,)
    array (one transfer); one program for all on JAX."""
    return tuple(xp.reshape(a, tuple(a.shape[1:])) for a in arrays), xp.concat(counts)


# one compiled program each on JAX (agnopt._core.backend.compiled), as written elsewhere
_rows0 = compiled(rows0)
_to_status = compiled(to_status, static=("cb_stop",))
_final_fields = compiled(final_fields, static=("method", "loss", "f_scale", "bounded", "xtol",
                                               "model_jac"))


def finish(xp, prob, out, batched, verbose, bounded, method="lm", loss="linear", f_scale=1.0,
            xtol=None) -> OptimizeResult:
    """The ``OptimizeResult`` of a solve from the engine's :class:`.state.Outcome`."""
    if getattr(prob, "progress", None) is not None:
        prob.progress.close()
    X, F, J = out.X, out.F, out.J
    B, n = X.shape
    # Jacobian at the final x where the last accepted step made it stale
    # (the lm engine keeps the loss's model Jacobian, the others the true one)
    model_jac = method == "lm" and prob.robust
    nj = out.need_jac
    njev = out.njev
    host = None if batched else out.host  # (one problem's counts as Python values)
    if host is not None:
        if host[4]:  # need_jac: the Jacobian at the final x, counted
            J = prob.jacobian(X, F)
            J = prob.model_residuals(F, J)[1] if model_jac else J
            host = host[:2] + (host[2] + 1,) + host[3:]
    elif bool(xp.any(nj)):
        Jn = prob.jacobian(X, F)
        Jn = prob.model_residuals(F, Jn)[1] if model_jac else Jn
        # (one problem: nj is its one entry, true here)
        J = Jn if J is None or not batched else xp.where(nj[:, None, None], Jn, J)
        njev = njev + xp.astype(nj, njev.dtype)  # an evaluation like any other
    projected = bounded and method in ("lm", "gauss-newton")
    if batched:
        status = _to_status(xp, out.info, out.active, out.cb_stop)
        info_h, s_one = [], 0
    else:
        # one problem: its status from the host value of info (one transfer, which the
        # messages need anyway); an array only where a check below reads it
        info_h = [host[0]] if host is not None else host_ints(out.info)
        s_one = status_one(info_h[0], out.cb_stop and bool(out.active[0] if host is None
                                                           else host[5]), out.cb_stop)
        status = None
        if s_one in _XTOL_STOPS or projected:
            status = xp.asarray([s_one], dtype=out.info.dtype, device=device(out.info))
    # an xtol stop is success only at a first-order stationary point (-6 otherwise)
    if status is not None:
        status = xtol_not_stationary(xp, status, X, F, J, prob.lb, prob.ub, bounded, loss,
                                     f_scale, xtol, model_jac)
    cost, J, g, opt, am = _final_fields(xp, prob.block_view(), X, F, J, method, loss, f_scale,
                                        bounded, xtol,
                                       model_jac)
    # the solver's residuals were scaled by a power of 2 (set_fscale): report fun's own
    # (divided twice: its square may be subnormal, flushed to 0 by XLA)
    if prob.scaled:
        fs = prob.fscale  # a float, or (B, 1) per-row scales
        fr = fs[:, 0] if prob.row_scaled else fs
        cost, g, opt = cost / fr / fr, g / fs / fs, opt / fr / fr
        F, J = prob.unscale(F, J)
    if projected:
        status = stuck_on_bound(xp, J, am, status)
    if status is None:  # one problem, its status unchanged by the checks above
        st_host = [s_one]
        msgs = [message(info_h[0], s_one)]
    else:
        msgs, st_host = messages(out.info, status)
    if batched:
        success = status > 0
        res = OptimizeResult(
            x=X, cost=cost, fun=F, jac=J, grad=g, optimality=opt, active_mask=am,
            nfev=out.nfev, njev=njev, nit=out.nit, status=status,
            message=msgs, success=success,
        )
    else:
        if host is not None:
            x, cost, F, J, g, opt, am = (xp.reshape(a, tuple(a.shape[1:]))
                                         for a in (X, cost, F, J, g, opt, am))
            nfev, njev_, nit = host[1:4]
        else:
            (x, cost, F, J, g, opt, am), counts = _rows0(xp, (X, cost, F, J, g, opt, am),
                                                         (out.nfev, njev, out.nit))
            nfev, njev_, nit = host_ints(counts)
        res = OptimizeResult(
            x=x, cost=cost, fun=F, jac=J, grad=g,
            optimality=opt, active_mask=am, nfev=nfev,
            njev=njev_, nit=nit, status=st_host[0],
            message=msgs[0], success=st_host[0] > Status.MAX_NFEV,
        )
    if out.history:
        res["history"] = out.history
    if verbose >= 1:
        if batched:
            ns = int(xp.sum(xp.astype(success, count_dtype(xp))))
            print(f"{ns} of {B} problems converged; total nfev {int(xp.sum(out.nfev))}")
        else:
            print(res.message)
            print(f"Function evaluations {res.nfev}, final cost {float(res.cost):.4e}, "
                  f"first-order optimality {float(res.optimality):.2e}.")
    return res
