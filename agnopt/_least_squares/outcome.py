"""How a least-squares solve ends: MINPACK's ``info`` codes, statuses and messages.

The engines record MINPACK's ``info`` per problem (:class:`MinpackInfo`);
:func:`to_status` maps it to scipy's common status (:class:`agnopt._core.status.Status`)
and :func:`messages` gives scipy's message for each problem (with a "machine
precision" wording for MINPACK's info 6/7/8).
"""

from __future__ import annotations

from .._core.result import OptimizeResult
from .._core.status import Status
from .arrays import count_dtype, device, host_ints
from .state import MinpackInfo


# MINPACK info -> common status (as scipy's FROM_MINPACK_TO_COMMON, plus 6/7/8, -3, -4)
FROM_MINPACK = {
    MinpackInfo.FTOL: Status.FTOL,
    MinpackInfo.XTOL: Status.XTOL,
    MinpackInfo.FTOL_XTOL: Status.FTOL_XTOL,
    MinpackInfo.GTOL: Status.GTOL,
    MinpackInfo.MAX_NFEV: Status.MAX_NFEV,
    MinpackInfo.FTOL_MACHINE: Status.FTOL,
    MinpackInfo.XTOL_MACHINE: Status.XTOL,
    MinpackInfo.GTOL_MACHINE: Status.GTOL,
    MinpackInfo.NONFINITE_JAC: Status.NONFINITE_JAC,
    MinpackInfo.NONFINITE_TRIAL: Status.NONFINITE_TRIAL,
}

# the same table as plain ints (no enum conversions or constant arrays per call)
_FROM_MINPACK_INT = tuple((int(k), int(v)) for k, v in FROM_MINPACK.items())
_CALLBACK = int(Status.CALLBACK)

TERMINATION_MESSAGES: dict[int, str] = {
    Status.CALLBACK: "Stopped because `callback` function raised `StopIteration` or returned `True`",
    Status.MAX_NFEV: "The maximum number of function evaluations is exceeded.",
    Status.GTOL: "`gtol` termination condition is satisfied.",
    Status.FTOL: "`ftol` termination condition is satisfied.",
    Status.XTOL: "`xtol` termination condition is satisfied.",
    Status.FTOL_XTOL: "Both `ftol` and `xtol` termination conditions are satisfied.",
    Status.NONFINITE_JAC: "`jac` returned a Jacobian with non-finite entries at the current point "
    "(this problem stopped there; batched solves only).",
    Status.NONFINITE_TRIAL: "The residuals were not finite at the trial points: the step shrank to "
    "nothing without a finite trial point near x.",
    Status.STUCK_ON_BOUND: "Stopped with a variable on a bound where its Jacobian column vanishes: "
    "possibly a stationary point of the projection, not of the problem (use method='trf', which "
    "keeps iterates strictly inside the bounds).",
    Status.NOT_STATIONARY: "The `xtol` test (alone or with `ftol`) stopped the solve at a point "
    "that is not first-order "
    "stationary (the residuals are not orthogonal to the Jacobian's columns and the Gauss-Newton "
    "step is longer than `xtol` allows): the Jacobian may be wrong or inaccurate, the residuals "
    "non-smooth or noisy, or the model saturated (a parameter whose Jacobian column nearly "
    "vanishes). To check a `jac` callable, compare it with `agnopt.approx_derivative(fun, x)` "
    "or solve again with jac='2-point'.",
}
# MINPACK's info 6/7/8 ("tolerance too small, no further improvement possible")
# are reported with the matching common status and this message.
MACHINE_MESSAGES = {
    MinpackInfo.FTOL_MACHINE: "`ftol` termination condition is satisfied at machine precision "
    "(no further reduction in the sum of squares is possible).",
    MinpackInfo.XTOL_MACHINE: "`xtol` termination condition is satisfied at machine precision "
    "(no further improvement in the approximate solution x is possible).",
    MinpackInfo.GTOL_MACHINE: "`gtol` termination condition is satisfied at machine precision "
    "(the residuals are orthogonal to the Jacobian's columns to machine precision).",
}


# the same table indexed by ``info - _INFO_LO`` (codes without a status: CALLBACK)
_INFO_LO = min(k for k, _ in _FROM_MINPACK_INT)
_INFO_HI = max(k for k, _ in _FROM_MINPACK_INT)
_STATUS_OF = [dict(_FROM_MINPACK_INT).get(k, _CALLBACK) for k in range(_INFO_LO, _INFO_HI + 1)]


def to_status(xp, info, active, cb_stop):
    """Common statuses (B,) from MINPACK's ``info`` (B,); problems still running
    when the callback stopped the solve get ``Status.CALLBACK``."""
    table = xp.asarray(_STATUS_OF, dtype=info.dtype, device=device(info))
    inside = (info >= _INFO_LO) & (info <= _INFO_HI)
    status = xp.where(inside, xp.take(table, xp.where(inside, info - _INFO_LO, 0), axis=0),
                      _CALLBACK)
    if cb_stop:
        status = xp.where(active, _CALLBACK, status)
    return status


def status_one(info: int, active: bool, cb_stop: bool) -> int:
    """:func:`to_status` of one problem from host values (the same table):
    ``info`` MINPACK's code, ``active`` whether it was still running."""
    if cb_stop and active:
        return _CALLBACK
    return _STATUS_OF[info - _INFO_LO] if _INFO_LO <= info <= _INFO_HI else _CALLBACK


def message(info: int, status: int) -> str:
    """scipy's message for one problem (the machine-precision wording for info 6/7/8)."""
    if status in (Status.STUCK_ON_BOUND, Status.NOT_STATIONARY):
        return TERMINATION_MESSAGES[status]
    if info in MACHINE_MESSAGES:
        return MACHINE_MESSAGES[MinpackInfo(info)]
    return TERMINATION_MESSAGES.get(status, "unknown status")


def messages(info, status) -> tuple[list, list]:
    """``(messages, host statuses)`` of every problem (one transfer each of ``info`` and ``status``)."""
    info_host, st_host = host_ints(info), host_ints(status)
    table = {iv: message(*iv) for iv in set(zip(info_host, st_host))}
    return [table[iv] for iv in zip(info_host, st_host)], st_host


# --------------------------------------------------------------------------- per-iteration reports
def history_entry(batched, fnorm, nit, nfev) -> dict:
    """One ``result.history`` entry: ``nit``, ``nfev``, ``cost`` ((B,) arrays when batched)."""
    cost = 0.5 * fnorm * fnorm
    if batched:
        return {"nit": nit, "nfev": nfev, "cost": cost}
    return {"nit": int(nit[0]), "nfev": int(nfev[0]), "cost": float(cost[0])}


def print_iter(xp, batched, it, fnorm, nfev, pnorm) -> None:
    """``verbose=2``: one line per iteration."""
    cost = 0.5 * fnorm * fnorm
    if batched:
        print(f"iteration {it:5d}  max cost {float(xp.max(cost)):.6e}  "
              f"max nfev {int(xp.max(nfev))}")
    else:
        print(f"iteration {it:5d}  cost {float(cost[0]):.6e}  step {float(pnorm[0]):.3e}  "
              f"nfev {int(nfev[0])}")


def call_callback(callback, batched, X, fnorm, nit) -> bool:
    """``callback(OptimizeResult(x, cost, nit))``; True when it asks to stop
    (returns ``True`` or raises ``StopIteration``)."""
    cost = 0.5 * fnorm * fnorm
    if batched:
        r = OptimizeResult(x=X, cost=cost, nit=nit)
    else:
        r = OptimizeResult(x=X[0, :], cost=cost[0], nit=int(nit[0]))
    try:
        out = callback(r)
    except StopIteration:
        return True
    return out is True


def report_progress(xp, ev, it, fnorm, nfev, active) -> None:
    """``progress=``: iteration ``it``, total evaluations, the largest cost among the
    running problems and how many run (one host read of each; only when asked)."""
    prog = getattr(ev, "progress", None)
    if prog is None:
        return
    running = int(xp.sum(xp.astype(active, count_dtype(xp))))
    # the largest cost among the running problems; once none runs, among all
    cost = 0.5 * (xp.where(active, fnorm, xp.zeros_like(fnorm)) if running else fnorm) ** 2
    prog.update(it, int(xp.max(nfev)), float(xp.max(cost)),
                running, getattr(ev, "n_problems", active.shape[0]))


def stuck_on_bound(xp, J, active_mask, status):
    """``status`` with ``Status.STUCK_ON_BOUND`` where a converged problem of a projected
    method (lm, gauss-newton with bounds) ends with a variable on a bound whose
    Jacobian column is zero to ``sqrt(eps)`` of the largest column (k,).

    There the projected gradient vanishes because the column does, not because
    the bound holds the variable against a descent direction: the iteration
    cannot leave, and the point need not be a minimizer (issue input: ``a exp(-c^2 x)``
    with ``c >= 0`` stopped at ``c = 0``).
    """
    cn = xp.sqrt(xp.sum(J * J, axis=-2))  # (k, n) column norms
    big = xp.max(cn, axis=-1, keepdims=True)
    eps = float(xp.finfo(J.dtype).eps)
    dead = (active_mask != 0) & (cn <= eps ** 0.5 * big)
    flag = xp.any(dead, axis=-1) & (status > 0)
    return xp.where(flag, xp.full_like(status, int(Status.STUCK_ON_BOUND)), status)
