"""numba fast path of the Levenberg-Marquardt engine's verdict on a step, for ONE float64 NumPy problem.

The engine (:mod:`agnopt._least_squares.engine`) judges each trial step with
:func:`~agnopt._least_squares.engine.judge`: :func:`reductions`,
:func:`update_radius`, :func:`accept` and :func:`stopping_tests`, written
once against ``xp`` for ``k`` problems. For one problem (``k = 1``, float64
NumPy, the unbatched solve) these are a few dozen operations on scalars,
each one a NumPy call on a ``(1,)`` array. Here the same arithmetic, in the
same order, runs as two numba-compiled scalar functions (``fastmath=False``:
IEEE double operations and a correctly rounded ``sqrt``, so the same
numbers). The vector pieces (``||J p||^2`` from the route, ``g . p`` of a
projected step, ``||D x||`` of the accepted point) stay NumPy calls, made
as the generic path makes them.

This is an optional accelerator (numba: ``pip install agnopt[numba]``);
``AGNOPT_FAST=0`` (or ``numpy``) turns it off, ``AGNOPT_FAST=numba``
requires it. ``tests/test_lm_fast.py`` checks it against the generic path.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from typing import Any

import numpy as np

from . import lm_batched_cpu as K
from . import lm_route

# numba is optional (agnopt[numba]) and imported only when the fast judge first runs
HAVE_NUMBA = importlib.util.find_spec("numba") is not None

# The numba functions (with the route's, agnopt._kernels.lm_route) cost about 0.3 s
# on their first use in a process (numba's import and its on-disk cache; about 4 s
# where the cache cannot be written) and save about 0.5 ms per fit (issue 14's
# 3-parameter exponential): by default they start with the WARMUP-th unbatched
# fit of a process, so a script with a few fits never pays for them.
# ``AGNOPT_FAST=numba`` uses them from the first fit.
WARMUP = 50
_solves = 0

# MINPACK's codes (agnopt._least_squares.state.MinpackInfo), as the engine's ints
_FTOL_MACHINE, _XTOL_MACHINE, _GTOL_MACHINE, _MAX_NFEV = 6, 7, 8, 5
_XTOL, _FTOL_XTOL, _GTOL, _NONFINITE_TRIAL = 2, 3, 4, -4
ACCEPT_RATIO = 1e-4


def enabled() -> bool:
    """Whether the fast judge runs: numba installed and ``AGNOPT_FAST`` not ``0``/``numpy``.
    ``AGNOPT_FAST=numba`` without numba raises ``ImportError``."""
    global _solves
    v = os.environ.get("AGNOPT_FAST", "")
    if v in ("0", "numpy") or not (HAVE_NUMBA or v == "numba"):
        return False
    if v == "numba":
        if not HAVE_NUMBA:
            raise ImportError("AGNOPT_FAST=numba but numba is not installed "
                              "(pip install agnopt[numba])")
    else:
        _solves += 1
        if _solves < WARMUP and not _ready:
            return False
    _compile()
    return True


def _verdict(fnorm, par, delta, active, fnorm1, jpn2, pmnorm, projected, gp):
    """:func:`reductions`, :func:`update_radius` and the test of :func:`accept`
    on one problem's scalars (``jpn2 = ||J pm||^2``, ``gp = g . p`` of a projected
    step). Returns ``(actred, prered, ratio, delta, par, acc, finite)``."""
    # reductions
    finite = math.isfinite(fnorm1)
    fn1s = fnorm1 if finite else fnorm * 1e10 + 1.0
    fn_safe = 1.0 if fnorm == 0 else fnorm
    if finite and 0.1 * fn1s < fnorm:
        q = fn1s / fn_safe
        actred = 1.0 - q * q
    else:
        actred = -1.0
    t1 = math.sqrt(jpn2) / fn_safe
    t2 = math.sqrt(par) * pmnorm / fn_safe
    prered = t1 * t1 + 2.0 * t2 * t2
    dirder = -(t1 * t1 + t2 * t2)
    if projected:
        fJp = gp / (fn_safe * fn_safe)
        prered = -(2.0 * fJp + t1 * t1)
        dirder = fJp
    ratio = actred / prered if prered > 0 else 0.0
    # update_radius
    small = ratio <= 0.25
    if actred >= 0:
        temp = 0.5
    else:
        den = dirder + 0.5 * actred
        temp = 0.5 * dirder / (1.0 if den == 0 else den)
    if (0.1 * fn1s >= fnorm) or (temp < 0.1) or not finite:
        temp = 0.1
    big = (not small) and ((par == 0) or (ratio >= 0.75))
    if small:
        delta_n = temp * K._minimum(delta, pmnorm / 0.1)  # np.minimum
        par_n = par / temp
    elif big:
        delta_n = pmnorm / 0.5
        par_n = 0.5 * par
    else:
        delta_n, par_n = delta, par
    if not active:
        delta_n, par_n = delta, par
    # accept's test
    acc = active and finite and (actred > 0) and (ratio >= ACCEPT_RATIO)
    return actred, prered, ratio, delta_n, par_n, acc, finite


def _stop(info, active, actred, prered, ratio, finite, limited, gnorm, delta, xnorm, nfev,
          ftol, xtol, max_nfev, eps):
    """:func:`stopping_tests` on one problem's scalars: ``(info, active)``."""
    aa = abs(actred)
    full = 0.5 * ratio <= 1.0
    grows = limited and (ratio >= 0.75)
    gn2 = gnorm * gnorm
    ft = (aa <= ftol) and (prered <= ftol) and full and not (grows and (gn2 > ftol))
    xt = delta <= xtol * xnorm
    new = (1 if ft else 0) + 2 * (1 if xt else 0)
    if new == 0:
        mach = _MAX_NFEV if nfev >= max_nfev else 0
        if (aa <= eps) and (prered <= eps) and full and not (grows and (gn2 > eps)):
            mach = max(mach, _FTOL_MACHINE)
        if delta <= eps * xnorm:
            mach = max(mach, _XTOL_MACHINE)
        if gnorm <= eps:
            mach = max(mach, _GTOL_MACHINE)
        new = mach
    if (not finite) and (new == _XTOL or new == _FTOL_XTOL or new == _XTOL_MACHINE):
        new = _NONFINITE_TRIAL
    if not active:
        new = 0
    return (new if new != 0 else info), active and new == 0


def _scale_gtol(g, cn, D, free, bounded, fnorm, first, jac_scale):
    """The elementwise part of :func:`linearized` for one problem with a new
    Jacobian (``g``, ``cn``, ``D``, ``free`` (n,)): the column norms of the free
    variables, the new scaling (:func:`scale_and_radius`'s ``D = ||J_j||`` on
    the first Jacobian, :func:`gtol_test`'s ``max(D, ||J_j||)`` after it) and
    ``gnorm``, the largest ``|cos|`` between a column and ``f``."""
    n = g.shape[0]
    Dn = np.empty(n)
    fn_safe = 1.0 if fnorm == 0 else fnorm
    gn = 0.0
    nan = False
    for j in range(n):
        c = cn[j] if (not bounded or free[j]) else 0.0
        if jac_scale and first:
            Dn[j] = 1.0 if c == 0 else c
        elif jac_scale:  # np.maximum: NaN propagates
            d = D[j]
            Dn[j] = d if math.isnan(d) else (c if math.isnan(c) else max(d, c))
        else:
            Dn[j] = D[j]
        cs = 1.0 if c == 0 else c
        cosv = 0.0 if c == 0 else abs(g[j]) / (fn_safe * cs)
        if c == math.inf:  # an overflowed column norm: no angle (gtol_test)
            cosv = math.nan
        if math.isnan(cosv):  # np.max: NaN propagates
            nan = True
        elif j == 0 or cosv > gn:
            gn = cosv
    if nan:
        gn = math.nan
    if fnorm == 0:
        gn = 0.0
    return Dn, gn


verdict: Any = None
stop: Any = None
scale_gtol: Any = None


def _compile() -> None:
    """The numba versions of :func:`_verdict`, :func:`_stop` and :func:`_scale_gtol`
    (made once per process; compiled on first call, cached on disk)."""
    global verdict, stop, scale_gtol, _ready
    if _ready:
        return
    with _compile_lock:  # threads may get here together (see lm_batched_cpu._compile)
        if _ready:
            return
        import numba

        opts: dict[str, Any] = {"error_model": "numpy", "fastmath": False, "nogil": True,
                                "cache": True}
        K._compile()  # (its _minimum, which _verdict calls)
        verdict = numba.njit(**opts)(_verdict)
        stop = numba.njit(**opts)(_stop)
        scale_gtol = numba.njit(**opts)(_scale_gtol)
        _ready = True


_compile_lock = threading.Lock()
_ready = False


def linearized_one(xp, box, st, nj, cn, jac_scale, gtol, factor, generic):
    """The engine's :func:`linearized` for one float64 NumPy problem with a new
    Jacobian (``nj[0]`` true; else ``generic``, the engine's own), the
    elementwise arithmetic in :func:`scale_gtol`; ``||D x0||`` stays NumPy's."""
    if not bool(nj[0]):
        return generic(xp, box, st, nj, cn, jac_scale, gtol)
    # (no bounds: every variable stays free, the mask made at the first Jacobian)
    free = box.free_mask(st.X, st.g) if box.bounded or st.free is None else st.free
    first = bool(st.first[0])
    Dn, gn = scale_gtol(st.g[0], cn[0], st.D[0], free[0], bool(box.bounded), float(st.fnorm[0]),
                        first, bool(jac_scale))
    D = Dn[None, :]
    xnorm, delta = st.xnorm, st.delta
    if first and float(st.delta[0]) == 0:
        xnorm = xp.linalg.vector_norm(D * st.X, axis=-1)
        xn0 = float(xnorm[0])
        delta = np.array([factor if xn0 == 0 else factor * xn0], dtype=np.float64)
    conv = gn <= gtol
    active = bool(st.active[0]) and not conv
    return st._replace(free=free, njev=st.njev + 1, need_jac=np.zeros(1, dtype=bool), D=D,
                       xnorm=xnorm, delta=delta, gnorm=np.array([gn], dtype=np.float64),
                       info=np.array([_GTOL], dtype=np.int64) if conv else st.info,
                       active=np.array([active], dtype=bool))


def linearize_one(xp, ev, st, jac_scale, gtol, factor):
    """The engine's :func:`~agnopt._least_squares.engine.linearize` for one float64
    NumPy problem without bounds or robust loss, on the Cholesky route, whose last
    step was accepted: the Jacobian, ``J^T J`` and ``g = J^T f`` (the evaluator's
    :func:`~agnopt._least_squares.routes.normal_block` operations, NumPy's), then
    :func:`linearized_one`'s arithmetic, in one state update instead of the
    generic path's layers (the same numbers). ``None`` where it does not apply
    (the caller takes the generic path)."""
    if ev.bounded or ev.robust or not ev.use_chol or not (
            bool(st.need_jac[0]) and bool(st.active[0])):
        return None
    X, F = st.X, st.F
    J = ev.jacobian(X, F)
    n = X.shape[1]
    A0 = xp.matmul(xp.matrix_transpose(J), J)  # routes.gram
    dA = xp.reshape(A0, (1, n * n))[:, ::n + 1]
    if not bool(xp.all(xp.isfinite(dA))) and not bool(xp.all(xp.isfinite(J))):
        # (a finite J whose J^T J overflows goes on, as on the generic path)
        raise ValueError("jac: the Jacobian has non-finite entries at the current point")
    g = xp.matmul(F[:, None, :], J)[:, 0, :]  # J^T f  (1, n)
    cn = xp.sqrt(dA)
    free = xp.ones((1, n), dtype=xp.bool) if st.free is None else st.free
    first = bool(st.first[0])
    Dn, gn = scale_gtol(g[0], cn[0], st.D[0], free[0], False, float(st.fnorm[0]), first,
                        bool(jac_scale))
    D = Dn[None, :]
    xnorm, delta = st.xnorm, st.delta
    if first and float(delta[0]) == 0:
        xnorm = xp.linalg.vector_norm(D * X, axis=-1)
        xn0 = float(xnorm[0])
        delta = np.array([factor if xn0 == 0 else factor * xn0], dtype=np.float64)
    conv = gn <= gtol
    return st._replace(J=J, A0=A0, g=g, free=free, njev=st.njev + 1,
                       need_jac=np.zeros(1, dtype=bool), D=D, xnorm=xnorm, delta=delta,
                       gnorm=np.array([gn], dtype=np.float64),
                       info=np.array([_GTOL], dtype=np.int64) if conv else st.info,
                       active=np.array([not conv], dtype=bool))


def judge_one(xp, ev, st, tr, route, accel, v, limited, ftol, xtol, max_nfev, eps, model_step):
    """The engine's :func:`judge` for one float64 NumPy problem, with the scalar
    arithmetic in :func:`verdict` and :func:`stop`; ``model_step`` the engine's."""
    pm, pmnorm = model_step(xp, st, tr, accel, v)
    jpn2 = route.jp_norm2(pm)
    projected = tr.projected is not None and bool(tr.projected[0])
    gp = float(xp.sum(st.g * tr.p, axis=-1)[0]) if projected else 0.0
    active = bool(st.active[0])
    actred, prered, ratio, delta, par, acc, finite = verdict(
        float(st.fnorm[0]), float(st.par[0]), float(st.delta[0]), active, float(tr.fnorm1[0]),
        float(jpn2[0]), float(pmnorm[0]), projected, gp)
    f64 = np.float64
    xnorm = st.xnorm
    new: dict[str, Any] = {}
    if acc:  # accept's step: one _replace with the verdict's fields below
        X = tr.Xt
        xnorm = xp.linalg.vector_norm(st.D * X, axis=-1)
        new = {"X": X, "F": tr.Ft, "fnorm": tr.fnorm1, "xnorm": xnorm, "nit": st.nit + 1,
               "first": np.zeros(1, dtype=bool)}
    need_jac = np.array([acc], dtype=bool) if active else st.need_jac
    info, active_n = stop(int(st.info[0]), active, actred, prered, ratio, finite,
                          bool(limited[0]), float(st.gnorm[0]), delta, float(xnorm[0]),
                          int(st.nfev[0]), float(ftol), float(xtol), float(max_nfev), eps)
    return st._replace(delta=np.array([delta], dtype=f64), par=np.array([par], dtype=f64),
                       need_jac=need_jac, info=np.array([info], dtype=np.int64),
                       active=np.array([active_n], dtype=bool), **new)


def trial_judge_one(xp, ev, st, p, par, route, accel, v, limited, ftol, xtol, max_nfev, eps,
                    model_step):
    """The engine's :func:`~agnopt._least_squares.engine.trial_point` and
    :func:`judge_one` for one float64 NumPy problem without bounds, in one state
    update: the trial point (:func:`agnopt._kernels.lm_route.trial`), its residuals
    (``ev.trial``) and the verdict (the same numbers). Returns ``(st, pnorm)``,
    ``pnorm`` (1,) the step's ``||D p||``."""
    if not lm_route._ready:
        lm_route._compile()
    X = st.X
    x0 = X[0]
    active = bool(st.active[0])
    Xt1, pt1, pn, _ = lm_route.trial(x0, p[0], st.D[0], x0, x0, False, active)
    d = float(st.delta[0])
    if active and bool(st.first[0]):  # np.minimum(delta, pnorm): NaN propagates
        d = pn if not math.isnan(d) and (math.isnan(pn) or pn < d) else d
    nfev = st.nfev + 1 if active else st.nfev
    Xt = Xt1[None, :]
    Ft, fnorm1 = ev.trial(Xt)
    pnorm = np.array([pn])
    if accel is None:
        pm, pmn = pt1[None, :], pn
    else:  # (model_step's reading of an accelerated step)
        from .._least_squares.state import Trial

        pm, pmnorm = model_step(xp, st, Trial(Xt, Ft, pt1[None, :], pnorm, fnorm1, None),
                                accel, v)
        pmn = float(pmnorm[0])
    jpn2 = route.jp_norm2(pm)
    actred, prered, ratio, delta, par_n, acc, finite = verdict(
        float(st.fnorm[0]), float(par[0]), d, active, float(fnorm1[0]), float(jpn2[0]), pmn,
        False, 0.0)
    xnorm = st.xnorm
    new: dict[str, Any] = {}
    if acc:
        xnorm = xp.linalg.vector_norm(st.D * Xt, axis=-1)
        new = {"X": Xt, "F": Ft, "fnorm": fnorm1, "xnorm": xnorm, "nit": st.nit + 1,
               "first": np.zeros(1, dtype=bool)}
    need_jac = np.array([acc], dtype=bool) if active else st.need_jac
    info, active_n = stop(int(st.info[0]), active, actred, prered, ratio, finite,
                          bool(limited[0]), float(st.gnorm[0]), delta, float(xnorm[0]),
                          int(nfev[0]), float(ftol), float(xtol), float(max_nfev), eps)
    return st._replace(nfev=nfev, delta=np.array([delta], dtype=np.float64),
                       par=np.array([par_n], dtype=np.float64), need_jac=need_jac,
                       info=np.array([info], dtype=np.int64),
                       active=np.array([active_n], dtype=bool), **new), pnorm
