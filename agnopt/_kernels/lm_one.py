"""The Levenberg-Marquardt engine's loop for ONE float64 NumPy problem, with scalar state.

:func:`agnopt._least_squares.engine.run_lm` keeps its state in
:class:`~agnopt._least_squares.state.LMState` (arrays with a leading axis ``k``)
and, for one float64 NumPy problem with numba's blocks on, already runs each
block's arithmetic as a numba function (:mod:`.lm_cpu`, :mod:`.lm_route`). What
is left per iteration is the glue: building namedtuples, ``(1,)`` arrays and
their host reads. :func:`run_lm_one` is the same loop with the state as Python
scalars and its per-iteration arithmetic in three numba functions that call the
same numba blocks in the same order:

1. :func:`linearized`, after ``lmder``'s outer loop evaluated the Jacobian and
   ``J^T J``, ``g = J^T f`` (NumPy's calls, as :func:`.lm_cpu.linearize_one`):
   the scaling and ``gtol`` test (:func:`.lm_cpu.scale_gtol`), the initial
   radius and the scaled normal equations (:func:`.lm_route.normal`); when these
   go on to a step, :func:`lin_step` makes it in the same call;
2. :func:`step` (after a rejected step): Moré's ``lmpar`` (:func:`.lm_route.lmpar`, as
   :class:`.lm_route.FastRoute`) and the trial point (:func:`.lm_route.trial`);
   a step eligible for the geodesic acceleration gets it between the two
   (:func:`~agnopt._least_squares.engine.geodesic_acceleration`'s operations
   on the ``(1, ...)`` arrays, its solve :func:`.lm_route.chol_solve`);
3. :func:`judge`, once ``ev.trial`` gave the residuals at the trial point: the
   verdict (:func:`.lm_cpu.verdict`: reductions, radius update, acceptance) and
   MINPACK's stopping tests (:func:`.lm_cpu.stop`), as
   :func:`.lm_cpu.trial_judge_one`.

Their arrays come back packed (the scaling with the normal equations in one,
an eligible step's ``z``, ``p`` and factor in one): each array numba boxes on
return costs about as much as the call.

It applies where those blocks all apply (:func:`applies`: no bounds, no robust
loss, the Cholesky route with ``n <= ENTRYWISE_N``, in-memory, no working set,
callback, history, verbose output or progress report). When the normal
equations of some linearization are not well conditioned (the generic route's
SVD), the state so far goes back to ``run_lm`` as an ``LMState`` and the engine
goes on from there. ``tests/test_lm_one.py`` checks that ``x``, ``cost``,
``fun``, ``jac``, ``nfev``, ``njev``, ``nit`` and the status are the engine's, bit for bit.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from .._least_squares.cholesky import ENTRYWISE_N
from . import lm_cpu, lm_route

_GTOL = lm_cpu._GTOL

# the driver's switch (on with the engine's numba blocks, :func:`.lm_cpu.enabled`); the
# tests turn it off to check those blocks inside the engine's loop
ON = True


def applies(ev, n, ws, callback, want_history, verbose) -> bool:
    """Whether :func:`run_lm_one` may run the solve of ``ev`` (the one float64 NumPy
    problem on which the engine's numba blocks run, see the module docstring), ``n``
    its number of variables."""
    return (ON and ws is None and callback is None and not want_history and verbose < 2
            and getattr(ev, "progress", None) is None and hasattr(ev, "block_view")
            and not ev.persist_all and not ev.bounded and not ev.robust and ev.use_chol
            and n <= ENTRYWISE_N)


def run_lm_one(xp, ev, X, F, fnorm, D, jac_scale, ftol, xtol, gtol, max_nfev, eps,
               rcond_inv, factor, acc_h, acc_alpha):
    """``run_lm`` for one problem: ``X`` (1, n), ``F`` (1, m), ``fnorm`` (1,), ``D``
    (1, n) as the engine takes them; ``eps``, ``rcond_inv``, ``factor``, ``acc_h``,
    ``acc_alpha`` the engine's constants. Returns ``(outcome_fields, None)`` (a dict
    of the :class:`~agnopt._least_squares.state.Outcome` fields with its ``cost``)
    or ``(None, st)`` with ``st`` the ``LMState`` for the engine's own loop to go on
    from (``run_lm``'s ``st0``) when the generic route is needed."""
    _compile()
    chol_solve = lm_route.chol_solve
    dwarf = lm_route.DWARF
    Dv = D[0]
    fn = float(fnorm[0])
    xnorm = delta = par = gnorm = 0.0
    info = 0
    nfev, njev, nit = 1, 0, 0
    active = need_jac = first = True
    J = A0 = g = lin = None
    n = Dv.shape[0]
    ftol, xtol, max_nfev = float(ftol), float(xtol), float(max_nfev)
    accelerate = bool(ev.accelerate)
    jac_scale = bool(jac_scale)
    matmul = np.matmul
    short = F.shape[1] <= lm_route.NORM_MAX_M  # (the residuals' norm compiled)
    # (Problem's: ev.residual of one row at its row; a batch of one calls fun with (1, n))
    one_res = hasattr(ev, "residual_one") and not getattr(ev, "batched", True)
    while True:
        # -- outer loop of lmder: Jacobian, scaling, gtol test (lm_cpu.linearize_one),
        # and with well-conditioned normal equations the step (lin_step)
        x0 = X[0]
        if need_jac:
            J = ev.jacobian(X, F)
            A0 = matmul(J.swapaxes(-1, -2), J)  # routes.gram
            g = matmul(F[:, None, :], J)[:, 0, :]  # J^T f  (1, n)
            (fin, gnorm, xnorm, delta, conv, well, stepped, par, eligible, pn, lin, Xt1,
             aux) = lin_step(A0[0], g[0], Dv, x0, fn, first, jac_scale, delta, xnorm, gtol,
                             eps, rcond_inv, factor, par, accelerate, dwarf)
            Dv = lin[:n]
            if not fin and not bool(np.all(np.isfinite(J))):
                # (a finite J whose J^T J overflows goes on, as on the generic path)
                raise ValueError("jac: the Jacobian has non-finite entries at the current point")
            njev += 1
            need_jac = False
            if conv:
                info, active = _GTOL, False
                break
            if not well:  # the generic route (SVD): the engine goes on
                return None, _state(X, F, J, A0, g, Dv, fn, xnorm, delta, par, gnorm, info,
                                    nfev, njev, nit, first)
        else:
            stepped = False
        # -- inner loop of lmder: LM parameter and step (FastRoute.step), and the
        # trial point unless the step is accelerated
        if not stepped:
            par, eligible, pn, delta, Xt1, aux = step(lin, delta, par, x0, first, accelerate,
                                                      eps, dwarf)
        limited = par > 0
        accel = False
        if eligible:
            # engine.geodesic_acceleration on one eligible problem (aux: z, p, Lf)
            z, p, Lf = aux[:n], aux[n:2 * n], aux[2 * n:].reshape(n, n)
            v = p
            Xh = X + acc_h * p[None, :]
            Fh = ev.residual(Xh)
            nfev += 1
            Jv = matmul(J, p[None, :, None])[:, :, 0]
            rvv = (2.0 / acc_h) * ((Fh - F) / acc_h - Jv)
            rvv = np.where(np.isfinite(rvv), rvv, 0.0)
            hv = matmul(rvv[:, None, :], J)[:, 0, :] / Dv
            az = -chol_solve(Lf, hv[0])
            a = az / Dv
            # (vector_norm: NumPy's, compiled; n <= ENTRYWISE_N)
            vn, an = lm_route.norm(z), lm_route.norm(az)
            accel = (2.0 * an <= acc_alpha * vn) and bool(np.all(np.isfinite(a)))
            if accel:
                p = p + 0.5 * a
            # the trial point (lm_cpu.trial_judge_one)
            Xt1, pt1, pn, _ = lm_route.trial(x0, p, Dv, x0, x0, False, True)
            if first:  # np.minimum(delta, pnorm): NaN propagates
                delta = pn if not math.isnan(delta) and (math.isnan(pn) or pn < delta) else delta
        else:
            pt1 = aux
        nfev += 1
        Xt = Xt1[None, :]
        if short:  # ev.trial: the residuals and their norm (NumPy's, compiled: a float)
            Ft = ev.residual_one(Xt1) if one_res else ev.residual(Xt)
            fn1 = lm_route.norm(Ft[0])
        else:
            Ft, fnorm1 = ev.trial(Xt)
            fn1 = float(fnorm1[0])
        if accel:  # an accelerated step is judged by the model of its LM step (model_step)
            pm = v
            pmn = lm_route.norm(Dv * v)
        else:
            pm, pmn = pt1, pn
        # -- the verdict and the stopping tests (lm_cpu.trial_judge_one)
        delta, par, acc, xnorm, info, active = judge(
            A0[0], pm, pmn, fn, par, delta, fn1, info, limited, gnorm, xnorm, Dv, Xt1, nfev,
            ftol, xtol, max_nfev, eps)
        if acc:
            X, F, fn = Xt, Ft, fn1
            nit += 1
            first = False
        need_jac = acc
        if not active:
            break
    one = lambda v, dt: np.array([v], dtype=dt)
    i64 = np.int64
    return {"X": X, "F": F, "J": J, "info": one(info, i64), "nfev": one(nfev, i64),
            "njev": one(njev, i64), "nit": one(nit, i64), "need_jac": one(need_jac, bool),
            "active": one(active, bool), "cost": one(0.5 * (fn * fn), np.float64),
            "host": (info, nfev, njev, nit, need_jac, active)}, None


def _state(X, F, J, A0, g, D, fn, xnorm, delta, par, gnorm, info, nfev, njev, nit, first):
    """The engine's ``LMState`` of this solve after a linearization (running, its
    Jacobian current)."""
    from .._least_squares.state import LMState

    f64, i64 = np.float64, np.int64
    one = lambda v, dt: np.array([v], dtype=dt)
    return LMState(X=X, F=F, J=J, A0=A0, g=g, D=D[None, :], free=np.ones((1, D.shape[0]), bool),
                   fnorm=one(fn, f64), xnorm=one(xnorm, f64), delta=one(delta, f64),
                   par=one(par, f64), gnorm=one(gnorm, f64), info=one(info, i64),
                   nfev=one(nfev, i64), njev=one(njev, i64), nit=one(nit, i64),
                   active=one(True, bool), need_jac=one(False, bool), first=one(first, bool))


def _linearized(A0, g, D, x, fnorm, first, jac_scale, delta, xnorm, gtol, eps, rcond_inv,
                factor):
    """After a new Jacobian (``A0 = J^T J`` (n, n), ``g = J^T f`` (n,)): whether
    ``diag(A0)`` is finite, :func:`.lm_cpu.linearize_one`'s column norms, scaling
    and ``gtol`` test (:func:`.lm_cpu._scale_gtol`), the initial ``||D x||`` and
    radius on the first Jacobian, and the normal equations of the step route
    (:func:`.lm_route._normal`) unless the ``gtol`` test stops the solve:
    ``(finite, D, gnorm, xnorm, delta, gtol_stop, As, gs, Linv0, well)``."""
    n = g.shape[0]
    cn = np.empty(n)
    finite = True
    for j in range(n):
        d = A0[j, j]
        if not np.isfinite(d):
            finite = False
        cn[j] = np.sqrt(d)
    free = np.ones(n, dtype=np.bool_)
    Dn, gn = lm_cpu.scale_gtol(g, cn, D, free, False, fnorm, first, jac_scale)
    if first and delta == 0:  # vector_norm(D * x): sqrt of NumPy's sum of squares
        dx = np.empty(n)
        for j in range(n):
            dx[j] = Dn[j] * x[j]
        xnorm = math.sqrt(lm_route._sumsq(dx, np.empty(n)))
        delta = factor if xnorm == 0 else factor * xnorm
    if gn <= gtol:
        e = np.empty((0, 0))
        return finite, Dn, gn, xnorm, delta, True, e, np.empty(0), e, True
    As, gs, Li, well = lm_route.normal(A0, g, Dn, eps, rcond_inv)
    return finite, Dn, gn, xnorm, delta, False, As, gs, Li, well


def _step(lin, delta, par, x, first, accelerate, eps, dwarf):
    """:class:`.lm_route.FastRoute`'s step (``lmpar``) on the scaled normal equations in
    ``lin`` (:func:`_lin_step`'s ``D``, ``As``, ``gs``, ``Linv0``): the LM parameter,
    the scaled step ``z = -q``, ``p = z / D`` and the factor ``Lf`` of the damped
    system; then, unless the step is eligible for the geodesic acceleration
    (``accelerate``, ``par > 0``, not ``first``), the trial point
    (:func:`.lm_route._trial`) and the first iteration's radius ``min(delta, ||D p||)``:
    ``(par, eligible, pnorm, delta, Xt, aux)`` with ``aux`` the trial step ``pt``
    (n,), or for an eligible step ``z``, ``p``, ``Lf`` in one array (2n + n^2,)
    (two arrays to box instead of five)."""
    n = x.shape[0]
    D = lin[:n]
    As = lin[n:n + n * n].reshape(n, n)
    gs = lin[n + n * n:2 * n + n * n]
    Linv0 = lin[2 * n + n * n:].reshape(n, n)
    par_n, q, Lf = lm_route.lmpar(As, gs, Linv0, delta, par, True, eps, dwarf, 0.1)
    eligible = accelerate and par_n > 0 and not first
    aux = np.empty(2 * n + n * n if eligible else 0)
    p = np.empty(n)
    for j in range(n):
        z = -q[j]
        p[j] = z / D[j]
        if eligible:
            aux[j] = z
            aux[n + j] = p[j]
    if eligible:
        for i in range(n):
            for j in range(n):
                aux[2 * n + i * n + j] = Lf[i, j]
        return par_n, True, math.nan, delta, np.empty(0), aux
    Xt, pt, pn, _ = lm_route.trial(x, p, D, x, x, False, True)
    # the first iteration: np.minimum(delta, pnorm) (NaN propagates)
    if first and not math.isnan(delta) and (math.isnan(pn) or pn < delta):
        delta = pn
    return par_n, False, pn, delta, Xt, pt


def _lin_step(A0, g, D, x, fnorm, first, jac_scale, delta, xnorm, gtol, eps, rcond_inv,
              factor, par, accelerate, dwarf):
    """:func:`_linearized` after a new Jacobian and, when it goes on to a step (a finite
    ``diag(J^T J)``, no ``gtol`` stop, well-conditioned normal equations), :func:`_step`
    in the same call: ``(finite, gnorm, xnorm, delta, gtol_stop, well, stepped, par,
    eligible, pnorm, lin, Xt, aux)``, ``lin`` (2n + 2n^2,) the new scaling ``D``
    followed by the scaled normal equations ``As``, ``gs``, ``Linv0`` (zeros after a
    ``gtol`` stop) for the steps from this point, the rest :func:`_step`'s (when
    ``stepped``)."""
    n = x.shape[0]
    finite, Dn, gn, xnorm, delta, conv, As, gs, Li, well = linearized(
        A0, g, D, x, fnorm, first, jac_scale, delta, xnorm, gtol, eps, rcond_inv, factor)
    lin = np.zeros(2 * n + 2 * n * n)
    for j in range(n):
        lin[j] = Dn[j]
    if not conv and well:
        for j in range(n):
            lin[n + n * n + j] = gs[j]
            for k in range(n):
                lin[n + j * n + k] = As[j, k]
                lin[2 * n + n * n + j * n + k] = Li[j, k]
    if finite and not conv and well:
        par, eligible, pn, delta, Xt, aux = step(lin, delta, par, x, first, accelerate, eps,
                                                 dwarf)
        return (finite, gn, xnorm, delta, conv, well, True, par, eligible, pn, lin, Xt, aux)
    e = np.empty(0)
    return finite, gn, xnorm, delta, conv, well, False, par, False, math.nan, lin, e, e


def _judge(A0, pm, pmn, fnorm, par, delta, fnorm1, info, limited, gnorm, xnorm, D, xt, nfev,
           ftol, xtol, max_nfev, eps):
    """:func:`.lm_cpu.trial_judge_one`'s verdict on a trial point ``xt`` (n,) with
    residual norm ``fnorm1``: ``||J pm||^2`` (:func:`.lm_route._jp_norm2`), the
    reductions, radius update and acceptance (:func:`.lm_cpu._verdict`), ``||D xt||``
    of an accepted point and MINPACK's stopping tests (:func:`.lm_cpu._stop`):
    ``(delta, par, accepted, xnorm, info, active)``."""
    jpn2 = lm_route.jp_norm2(A0, pm)
    actred, prered, ratio, delta_n, par_n, acc, finite = lm_cpu.verdict(
        fnorm, par, delta, True, fnorm1, jpn2, pmn, False, 0.0)
    if acc:
        n = xt.shape[0]
        dx = np.empty(n)
        for j in range(n):
            dx[j] = D[j] * xt[j]
        xnorm = math.sqrt(lm_route._sumsq(dx, np.empty(n)))
    info_n, active = lm_cpu.stop(info, True, actred, prered, ratio, finite, limited, gnorm,
                                 delta_n, xnorm, nfev, ftol, xtol, max_nfev, eps)
    return delta_n, par_n, acc, xnorm, info_n, active


linearized: Any = None
lin_step: Any = None
step: Any = None
judge: Any = None


def _compile() -> None:
    """The numba versions of :func:`_lin_step` (with :func:`_linearized`), :func:`_step` and
    :func:`_judge`
    (made once per process, after :mod:`.lm_cpu`'s and :mod:`.lm_route`'s, which
    they call; cached on disk)."""
    global linearized, lin_step, step, judge, _ready
    if _ready:
        return
    with _compile_lock:
        if _ready:
            return
        import numba

        lm_cpu._compile()
        lm_route._compile()
        # (numba's on-disk cache checks this file only, as for lm_route's calls of
        # lm_batched_cpu: an edit of a block in lm_cpu / lm_route needs this file touched
        # or the cache cleared)
        jit = numba.njit(error_model="numpy", fastmath=False, nogil=True, cache=True)
        linearized = jit(_linearized)
        step, judge = jit(_step), jit(_judge)
        lin_step = jit(_lin_step)
        _ready = True


_compile_lock = threading.Lock()
_ready = False
