"""The Levenberg-Marquardt engine's loop for ONE float64 NumPy problem, with scalar state.

:func:`agnopt._least_squares.engine.run_lm` keeps its state in
:class:`~agnopt._least_squares.state.LMState` (arrays with a leading axis ``k``)
and, for one float64 NumPy problem with numba's blocks on, already runs each
block's arithmetic as a numba function (:mod:`.lm_cpu`, :mod:`.lm_route`). What
is left per iteration is the glue: building namedtuples, ``(1,)`` arrays and
their host reads. :func:`run_lm_one` is the same loop with the state as Python
scalars, calling the same numba functions in the same order:

1. ``lmder``'s outer loop: the evaluator's Jacobian, ``J^T J`` and ``g = J^T f``
   (NumPy's calls, as :func:`.lm_cpu.linearize_one`), the scaling and ``gtol``
   test (:func:`.lm_cpu.scale_gtol`), the initial radius;
2. the scaled normal equations (:func:`.lm_route.normal`) and Moré's ``lmpar``
   (:func:`.lm_route.lmpar`), as :class:`.lm_route.FastRoute`;
3. the geodesic acceleration (:func:`~agnopt._least_squares.engine.geodesic_acceleration`'s
   operations on the ``(1, ...)`` arrays, its solve :func:`.lm_route.chol_solve`);
4. the trial point (:func:`.lm_route.trial`), its residuals (``ev.trial``), the
   verdict (:func:`.lm_cpu.verdict`: reductions, radius update, acceptance) and
   MINPACK's stopping tests (:func:`.lm_cpu.stop`), as :func:`.lm_cpu.trial_judge_one`.

It applies where those blocks all apply (:func:`applies`: no bounds, no robust
loss, the Cholesky route with ``n <= ENTRYWISE_N``, in-memory, no working set,
callback, history, verbose output or progress report). When the normal
equations of some linearization are not well conditioned (the generic route's
SVD), the state so far goes back to ``run_lm`` as an ``LMState`` and the engine
goes on from there. ``tests/test_lm_fast.py`` checks that ``x``, ``cost``,
``nfev``, ``njev``, ``nit`` and the status are the generic path's, bit for bit.
"""

from __future__ import annotations

import math

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
    lm_route._compile()
    verdict, stop, scale_gtol = lm_cpu.verdict, lm_cpu.stop, lm_cpu.scale_gtol
    normal, lmpar, trial = lm_route.normal, lm_route.lmpar, lm_route.trial
    jp_norm2, chol_solve = lm_route.jp_norm2, lm_route.chol_solve
    dwarf = lm_route.DWARF
    n = X.shape[1]
    Dv = D[0]
    free = np.ones(n, dtype=bool)
    fn = float(fnorm[0])
    xnorm = delta = par = gnorm = 0.0
    info = 0
    nfev, njev, nit = 1, 0, 0
    active = need_jac = first = True
    J = A0 = g = As = gs = Linv0 = None
    ftol, xtol, max_nfev = float(ftol), float(xtol), float(max_nfev)
    accelerate = ev.accelerate
    while True:
        # -- outer loop of lmder: Jacobian, scaling, gtol test (lm_cpu.linearize_one)
        if need_jac:
            J = ev.jacobian(X, F)
            A0 = xp.matmul(xp.matrix_transpose(J), J)  # routes.gram
            dA = xp.reshape(A0, (1, n * n))[:, ::n + 1]
            if not bool(xp.all(xp.isfinite(dA))) and not bool(xp.all(xp.isfinite(J))):
                raise ValueError("jac: the Jacobian has non-finite entries at the current point")
            g = xp.matmul(F[:, None, :], J)[:, 0, :]  # J^T f  (1, n)
            cn = xp.sqrt(dA)
            Dv, gnorm = scale_gtol(g[0], cn[0], Dv, free, False, fn, first, bool(jac_scale))
            if first and delta == 0:
                xnorm = float(xp.linalg.vector_norm(Dv[None, :] * X, axis=-1)[0])
                delta = factor if xnorm == 0 else factor * xnorm
            njev += 1
            need_jac = False
            if gnorm <= gtol:
                info, active = _GTOL, False
                break
            # the step route (lm_route.route_one)
            As, gs, Linv0, well = normal(A0[0], g[0], Dv, eps, rcond_inv)
            if not well:  # the generic route (SVD): the engine goes on
                return None, _state(X, F, J, A0, g, Dv, fn, xnorm, delta, par, gnorm, info,
                                    nfev, njev, nit, first)
        # -- inner loop of lmder: LM parameter and step (FastRoute.step)
        par, q, Lf = lmpar(As, gs, Linv0, delta, par, True, eps, dwarf, 0.1)
        limited = par > 0
        z = -q
        p = z / Dv
        v = p
        accel = False
        if accelerate and par > 0 and not first:
            # engine.geodesic_acceleration on one eligible problem
            Xh = X + acc_h * p[None, :]
            Fh = ev.residual(Xh)
            nfev += 1
            Jv = xp.matmul(J, p[None, :, None])[:, :, 0]
            rvv = (2.0 / acc_h) * ((Fh - F) / acc_h - Jv)
            rvv = xp.where(xp.isfinite(rvv), rvv, 0.0)
            hv = xp.matmul(rvv[:, None, :], J)[:, 0, :] / Dv
            az = -chol_solve(Lf, hv[0])
            a = az / Dv
            vn = float(xp.linalg.vector_norm(z[None, :], axis=-1)[0])
            an = float(xp.linalg.vector_norm(az[None, :], axis=-1)[0])
            accel = (2.0 * an <= acc_alpha * vn) and bool(np.all(np.isfinite(a)))
            if accel:
                p = p + 0.5 * a
        # -- the trial point, its residuals and the verdict (lm_cpu.trial_judge_one)
        x0 = X[0]
        Xt1, pt1, pn, _ = trial(x0, p, Dv, x0, x0, False, True)
        if first:  # np.minimum(delta, pnorm): NaN propagates
            delta = pn if not math.isnan(delta) and (math.isnan(pn) or pn < delta) else delta
        nfev += 1
        Xt = Xt1[None, :]
        Ft, fnorm1 = ev.trial(Xt)
        if accel:  # an accelerated step is judged by the model of its LM step (model_step)
            pm = v
            pmn = float(xp.linalg.vector_norm(Dv[None, :] * v[None, :], axis=-1)[0])
        else:
            pm, pmn = pt1, pn
        jpn2 = jp_norm2(A0[0], pm)
        fn1 = float(fnorm1[0])
        actred, prered, ratio, delta, par, acc, finite = verdict(
            fn, par, delta, True, fn1, jpn2, pmn, False, 0.0)
        if acc:
            X, F, fn = Xt, Ft, fn1
            xnorm = float(xp.linalg.vector_norm(Dv[None, :] * Xt, axis=-1)[0])
            nit += 1
            first = False
        need_jac = acc
        info, active = stop(info, True, actred, prered, ratio, finite, limited, gnorm, delta,
                            xnorm, nfev, ftol, xtol, max_nfev, eps)
        if not active:
            break
    one = lambda v, dt: np.array([v], dtype=dt)
    i64 = np.int64
    return {"X": X, "F": F, "J": J, "info": one(info, i64), "nfev": one(nfev, i64),
            "njev": one(njev, i64), "nit": one(nit, i64), "need_jac": one(need_jac, bool),
            "active": one(active, bool), "cost": one(0.5 * (fn * fn), np.float64)}, None


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
