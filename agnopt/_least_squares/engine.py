r"""The Levenberg-Marquardt engine: MINPACK's ``lmder``, for ``k`` problems at once.

One driver, :func:`run_lm`, read top to bottom as ``lmder``'s outer and inner
loops (Moré 1978; MINPACK-1 User Guide, ANL-80-74), with one function per
block:

1. :func:`linearize` -- the Jacobian at the current point (``evaluator``),
   the free variables, the scaling ``D`` and the initial radius
   (:func:`scale_and_radius`), and the ``gtol`` test (:func:`gtol_test`);
2. the step: Moré's ``lmpar`` through the evaluator's step *route*
   (:mod:`.routes`), :func:`geodesic_acceleration` (in-memory problems) and
   the projected trial point (:func:`trial_point`);
3. :func:`reductions` -- actual and predicted relative reductions and their
   ratio (MINPACK's scaled forms; an accelerated step is judged by the model
   of its LM step, :func:`model_step`);
4. :func:`update_radius` -- the radius and LM parameter rules;
5. :func:`accept` -- the step is taken when its residuals are finite, the
   cost went down and ``ratio >= 1e-4``, whatever the kind of step;
6. :func:`stopping_tests` -- MINPACK's ``info`` 1-8 (and agnopt's -4);
7. compaction of the working set (:class:`.batched.WorkingSet`).

Between two evaluations of the user's functions the blocks are pure
functions of arrays; groups of them run as one compiled program each on
JAX (:func:`agnopt._core.backend.compiled`: ``jax.jit``, one program per
problem shape, reused by later solves) and as written on every other
backend: the end of :func:`linearize` (:func:`linearized`: free variables,
:func:`scale_and_radius` and :func:`gtol_test`), the trial point
(:func:`trial_step`), the verdict on it (:func:`judge`: :func:`model_step`,
:func:`reductions`, :func:`update_radius`, :func:`accept`,
:func:`stopping_tests`), and inside the evaluator and the route the
normal equations and ``lmpar``'s Gauss-Newton step, bounds and iteration.
The host reads that decide the flow (``bool(xp.any(active))``, ``lmpar``'s
early exits) stay between the blocks. For one float64 NumPy problem with
numba installed, :func:`judge` and :func:`linearized` run as numba-compiled
scalar functions instead (:mod:`agnopt._kernels.lm_cpu`), and so do the
Cholesky step route and :func:`trial_step` (:mod:`agnopt._kernels.lm_route`):
the same arithmetic, tested equal; ``AGNOPT_FAST=0`` turns it off. Where all of
these apply (no bounds, loss, callback or reports), :func:`run_lm` hands the whole
loop to :mod:`agnopt._kernels.lm_one` (scalar state, the same blocks). For a
NumPy batch, or a torch batch on the CPU through NumPy views of its tensors
(float32 or float64, ``n <= 16``, the Cholesky route, no tensor in an autograd
graph) the normal equations, ``lmpar``, the geodesic acceleration, the end of
:func:`linearized` and :func:`judge` run as numba loops over the rows
(:mod:`agnopt._kernels.lm_batched_cpu`, tested equal to rounding). On JAX,
when ``fun`` can be traced, the whole loop runs as one compiled program over
these same blocks (:mod:`.jax_solve`).

Every problem has its own state (:class:`LMState`, arrays with a leading
axis ``k``) and stops on its own; a stopped problem is frozen by ``where``.
The *evaluator* (:class:`.problem.Problem` in memory, :class:`.tall.TallProblem`
for Dask row chunks) provides the residuals, the Jacobian, the route and the
reports; the engine never looks at how they are formed.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from .. import _kernels
from .._core import lazy
from .._core.backend import compiled
from .arrays import count_dtype, device, machine_eps, on_scalars, scalar_namespace
from .outcome import report_progress
from .routes import GRAM_RCOND
from .state import LMState, MinpackInfo, Outcome, Trial

# MINPACK's codes as plain ints (array-api-strict takes no IntEnum operands;
# an int is also cheaper per iteration than the enum lookup)
_FTOL = int(MinpackInfo.FTOL)
_FTOL_MACHINE = int(MinpackInfo.FTOL_MACHINE)
_FTOL_XTOL = int(MinpackInfo.FTOL_XTOL)
_GTOL = int(MinpackInfo.GTOL)
_GTOL_MACHINE = int(MinpackInfo.GTOL_MACHINE)
_MAX_NFEV = int(MinpackInfo.MAX_NFEV)
_NONFINITE_JAC = int(MinpackInfo.NONFINITE_JAC)
_NONFINITE_TRIAL = int(MinpackInfo.NONFINITE_TRIAL)
_RUNNING = int(MinpackInfo.RUNNING)
_XTOL = int(MinpackInfo.XTOL)
_XTOL_MACHINE = int(MinpackInfo.XTOL_MACHINE)

# Initial trust-region radius factor: Delta_0 = FACTOR * ||D x0|| (MINPACK's
# ``factor``; MINPACK recommends a value in [0.1, 100] and defaults to 100;
# 1 is scipy trf's choice and keeps the first steps from jumping to the
# spurious stationary regions of BoxBOD and MGH09 from NIST's start 1).
# Measured (NIST, 54 runs, tolerances 1e-15, default Jacobian): factor 1 2363
# evaluations, 54 with LRE >= 6; 10: 2618, 54; 100: 2608, 53 (BoxBOD start 1
# ends on the plateau b2 -> inf after 4 evaluations, status -6; MGH09 start 1
# takes 387 evaluations instead of 147). The single-fit benchmark (a exp(-b t)
# + c) takes 6 evaluations with every factor, as scipy's lm.
FACTOR = 1.0
# Geodesic acceleration constants: the finite-difference step along v and the
# bound 2||a|| <= alpha ||v|| on the acceleration (Transtrum & Sethna 2012's
# values; alpha 0.25 and 0.5 took more evaluations on NIST's hard problems).
ACC_H = 0.1
ACC_ALPHA = 0.75
# MINPACK: a step is accepted when actual / predicted reduction >= 1e-4
ACCEPT_RATIO = 1e-4
# dtypes with a larger machine epsilon (float32, float16) also stop on a full
# Gauss-Newton step that predicts less than one rounding (stopping_tests)
LOW_PRECISION_EPS = 1e-10

# the numba route's well-conditioned bound (routes.normal_equations)
_RCOND_INV = 1.0 / GRAM_RCOND

# state fields handed back (and set aside by a compaction) for the result
OUTCOME_FIELDS = ("X", "F", "J", "info", "nfev", "njev", "nit", "need_jac", "active")


def initial_state(xp, X, F, fnorm, D) -> LMState:
    """The state at ``x0``: ``X`` (k, n), residuals ``F`` with norms ``fnorm`` (k,), scaling ``D``."""
    B = X.shape[0]
    dev = device(X)
    zeros_b = xp.zeros((B,), dtype=X.dtype, device=dev)
    izeros = xp.zeros((B,), dtype=count_dtype(xp), device=dev)
    true_b = xp.ones((B,), dtype=xp.bool, device=dev)
    return LMState(X=X, F=F, J=None, A0=None, g=None, D=D, free=None, fnorm=fnorm,
                   xnorm=zeros_b, delta=zeros_b, par=zeros_b, gnorm=zeros_b,
                   info=izeros, nfev=izeros + 1, njev=izeros, nit=izeros,
                   active=true_b, need_jac=true_b, first=true_b)


def run_lm(xp, ev, X, F, fnorm, D, jac_scale, ftol, xtol, gtol, max_nfev,
           verbose, callback, want_history, ws=None, st0=None) -> Outcome:
    """Levenberg-Marquardt (``lmder``) for the ``k`` problems of ``ev``.

    ``X`` (k, n) start, ``F`` its residuals, ``fnorm`` (k,) their norms,
    ``D`` (k, n) the scaling (``jac_scale``: MINPACK's ``mode=1``, column
    norms of ``J``); tolerances and ``max_nfev`` as :func:`agnopt.least_squares`;
    ``ws`` a :class:`.batched.WorkingSet` when finished problems may leave
    the working set; ``st0`` a state to go on from (the one-problem driver's,
    after a linearization). Returns an :class:`.state.Outcome` (full batch).
    """
    # one float64 NumPy problem: its per-problem tests on NumPy scalars (same numbers)
    sx = scalar_namespace(xp, X) if ws is None else None
    # ... and its verdict on each step compiled by numba when installed (the same numbers;
    # AGNOPT_FAST=0 turns it off): agnopt._kernels.lm_cpu
    fast = _fast_judge() if sx is not None and hasattr(ev, "block_view") and not ev.persist_all \
        else None
    # ... and its Cholesky step route and trial point too: agnopt._kernels.lm_route
    fast_route: Any = None
    fast_trial: Any = None
    if fast is not None:
        fast_route, fast_trial = _fast_route()
        if st0 is None:
            # ... and the whole loop with scalar state where every block above applies
            # (the same numbers): agnopt._kernels.lm_one
            lm_one = _kernels.module("lm_one")
            if lm_one.applies(ev, X.shape[1], ws, callback, want_history, verbose):
                out, st1 = lm_one.run_lm_one(
                    xp, ev, X, F, fnorm, D, jac_scale, ftol, xtol, gtol, max_nfev,
                    machine_eps(xp, xp.float64), _RCOND_INV, FACTOR, ACC_H, ACC_ALPHA)
                if out is not None:
                    return Outcome(**out)
                return run_lm(xp, ev, X, F, fnorm, D, jac_scale, ftol, xtol, gtol, max_nfev,
                              verbose, callback, want_history, ws, st1)
    # (after the one-problem driver, which keeps its state as scalars)
    st = _initial_state(xp, X, F, fnorm, D) if st0 is None else st0
    # a NumPy (or torch CPU) batch: its verdict on each step as a numba loop over the rows
    # (the same arithmetic; AGNOPT_FAST=0 turns it off): agnopt._kernels.lm_batched_cpu
    fast_rows = _fast_rows(X, F) if sx is None and not ev.persist_all else None
    route: Any = None
    refactor = st0 is not None  # (a state after a linearization: its route first)
    hist = []
    cb_stop = False
    it = 0
    while True:
        it += 1
        # -- compaction: finished problems leave the working set
        if ws is not None and it > 1:
            st, changed = ws.compact(st, ev, OUTCOME_FIELDS)
            refactor = refactor or changed
        # what the compiled blocks take of the evaluator (in memory: its bounds, now)
        box = ev.block_view() if hasattr(ev, "block_view") else ev
        # -- outer loop of lmder: Jacobian, scaling, gtol test
        if _any(xp, st.need_jac & st.active, fast):
            st = linearize(xp, ev, st, jac_scale, gtol, box, fast or fast_rows)
            if fast_rows is not None and _in_graph(st.g):  # (a Jacobian that requires grad)
                fast_rows = None
            if not _any(xp, st.active, fast):
                break
            refactor = True
        if refactor:
            route = ev.route(st) if fast is None else fast_route(xp, ev, st, machine_eps(xp, xp.float64),
                                                               _RCOND_INV)
            refactor = False
            if ev.persist_all:  # Dask: keep the graph from growing
                st = st._replace(**dict(zip(("J", "D", "free", "gnorm", "delta", "xnorm"), ev.persist(
                    st.J, st.D, st.free, st.gnorm, st.delta, st.xnorm))))
        # -- inner loop of lmder: LM parameter and step, trial point
        par, z = route.step(st.delta, st.par, st.active)
        limited = par > 0  # the trust radius cut the Gauss-Newton step short
        p = xp.where(st.free, z / st.D, 0.0) if ev.bounded else z / st.D
        v, accel = p, None
        # (one problem on the numba path: its eligibility read first, as three scalars)
        if ev.accelerate and (fast is None or (bool(st.active[0]) and bool(par[0] > 0)
                                               and not bool(st.first[0]))):
            p, accel, st = geodesic_acceleration(xp, ev, st, route, p, z, par)
        if fast is not None and not ev.bounded:
            # numba, one problem without bounds: trial point and verdict in one update
            st, pnorm = fast.trial_judge_one(xp, ev, st, p, par, route, accel, v, limited, ftol,
                                             xtol, max_nfev, machine_eps(xp, xp.float64),
                                             model_step)
        else:
            tr, st = trial_point(xp, ev, st, p, par, box, fast_trial)
            pnorm = tr.pnorm
            if fast is not None:
                st = fast.judge_one(xp, box, st, tr, route, accel, v, limited, ftol, xtol,
                                    max_nfev, machine_eps(xp, xp.float64), model_step)
            elif fast_rows is not None:
                st = fast_rows.judge(xp, box, st, tr, route, accel, v, limited, ftol, xtol,
                                     max_nfev, model_step)
            elif sx is None:
                st = _judge(xp, box, st, tr, route, accel, v, limited, ftol, xtol, max_nfev)
            else:
                st = judge(xp, box, st, tr, route, accel, v, limited, ftol, xtol, max_nfev, sx)
        st = LMState._make(ev.persist(*st)) if ev.persist_all else st
        # -- reports
        if want_history:
            hist.append(ev.history_entry(st.fnorm, st.nit, st.nfev))
        if verbose >= 2:
            ev.print_iter(it, st.fnorm, st.nfev, pnorm)
        report_progress(xp, ev, it, st.fnorm, st.nfev, st.active)
        if callback is not None and ev.call_callback(callback, st.X, st.fnorm, st.nit):
            cb_stop = True
            break
        if not _any(xp, st.active, fast):
            break
    rows = tuple(getattr(st, f) for f in OUTCOME_FIELDS)
    if ws is not None and ws.W is not None:
        return Outcome(**dict(zip(OUTCOME_FIELDS, ev.assemble(ws, rows))), cb_stop=cb_stop, history=hist)
    return Outcome(**dict(zip(OUTCOME_FIELDS, rows)), cb_stop=cb_stop, history=hist,
                   cost=0.5 * (st.fnorm * st.fnorm))


def _any(xp, a, one):
    """``bool(xp.any(a))``; ``a[0]`` for one problem (``one``: the numba path is on)."""
    return bool(a[0]) if one is not None else bool(xp.any(a))


def _in_graph(a) -> bool:
    """``a`` is a torch tensor that requires grad (left to the generic path)."""
    return bool(getattr(a, "requires_grad", False))


def _fast_judge():
    """:mod:`agnopt._kernels.lm_cpu` when its numba judge is on, else ``None``."""
    lm_cpu = _kernels.module("lm_cpu")
    return lm_cpu if lm_cpu.enabled() else None


def _fast_rows(X, F):
    """:mod:`agnopt._kernels.lm_batched_cpu` when its kernels apply to the NumPy (or torch
    CPU) batch ``X`` (k, n) with residuals ``F`` (k, m) not in an autograd graph."""
    if not (array_api_compat.is_numpy_array(X) or array_api_compat.is_torch_array(X)):
        return None
    from .._kernels import lm_batched_cpu

    if _in_graph(F):
        return None
    return lm_batched_cpu if lm_batched_cpu.applies(X) else None


def _fast_route():
    """For one float64 NumPy problem with the numba judge on: ``(route_one,
    trial_step_one)`` of :mod:`agnopt._kernels.lm_route`, its Cholesky route
    compiled by numba where it applies (else ``ev.route(st)``) and its trial
    step (the same numbers)."""
    lm_route = _kernels.module("lm_route")
    return lm_route.route_one, lm_route.trial_step_one


def linearize(xp, ev, st: LMState, jac_scale, gtol, box=None, fast=None) -> LMState:
    """``lmder``'s outer loop for the problems whose last step was accepted.

    The evaluator forms ``J``, ``J^T J`` (route permitting) and ``g = J^T f``
    where ``need_jac`` (and flags the non-finite Jacobians: status -3,
    batched only), then the free variables, scaling, initial radius and the
    ``gtol`` test follow (one block: ``box``, the evaluator's
    ``block_view()`` or the evaluator, gives the free variables).
    """
    if fast is not None and getattr(fast, "linearize_one", None) is not None:
        # numba: one float64 NumPy problem (agnopt._kernels.lm_cpu), in one update
        out = fast.linearize_one(xp, ev, st, jac_scale, gtol, FACTOR)
        if out is not None:
            return out
    nj = st.need_jac & st.active
    lin = ev.linearize(st, nj)
    info, active, njev = st.info, st.active, st.njev
    nj = lin.nj
    if lin.bad is not None:
        # batched: these problems stop here (status -3), the others go on
        njev = njev + xp.astype(lin.bad, count_dtype(xp))
        info = xp.where(lin.bad, _NONFINITE_JAC, info)
        active = active & ~lin.bad
    st = st._replace(F=lin.F, J=lin.J, A0=lin.A0, g=lin.g, info=info, active=active,
                     njev=njev)
    box = ev if box is None else box
    if st.free is None:  # the first Jacobian: every problem's free variables are new
        st = st._replace(free=box.free_mask(st.X, st.g))  # (one program for every call)
    if fast is not None and not _in_graph(lin.g):  # numba: one float64 NumPy problem
        # (agnopt._kernels.lm_cpu) or a NumPy / torch CPU batch (.lm_batched_cpu)
        one = getattr(fast, "linearized_rows", None) or fast.linearized_one
        return one(xp, box, st, nj, lin.cn, jac_scale, gtol, FACTOR, _linearized)
    return _linearized(xp, box, st, nj, lin.cn, jac_scale, gtol)


def linearized(xp, ev, st: LMState, nj, cn, jac_scale, gtol) -> LMState:
    """The end of :func:`linearize` (one block), once ``st`` holds the new ``J``,
    ``A0``, ``g``: the count of Jacobians, the free variables (``ev.free_mask``),
    :func:`scale_and_radius` and :func:`gtol_test`. ``nj`` (k,) the problems
    with a new Jacobian, ``cn`` (k, n) its column norms."""
    njev = st.njev + xp.astype(nj, count_dtype(xp))
    free_n = ev.free_mask(st.X, st.g)
    free = free_n if st.free is None else xp.where(nj[:, None], free_n, st.free)
    cn = xp.where(free, cn, 0.0) if ev.bounded else cn  # free: all true unbounded
    # the Jacobian of these problems is now current (a problem that stops here on
    # gtol must not have it evaluated again for the result)
    st = st._replace(free=free, njev=njev, need_jac=st.need_jac & ~nj)
    st = scale_and_radius(xp, st, nj, cn, jac_scale)
    return gtol_test(xp, st, nj, cn, jac_scale, gtol)


def scale_and_radius(xp, st: LMState, nj, cn, jac_scale) -> LMState:
    """First Jacobian of a problem: ``D = ||J_j||`` (``jac_scale``; 1 for a zero
    column) and the initial radius ``Delta = FACTOR * ||D x0||`` (``FACTOR``
    where ``x0 = 0``). ``cn`` (k, n): column norms (zero for frozen ones)."""
    D = st.D
    if jac_scale:
        D0 = xp.where(cn == 0, 1.0, cn)
        D = xp.where((st.first & nj)[:, None], D0, D)
    init = st.first & nj & (st.delta == 0)
    if lazy.known_none(xp, init):  # no first Jacobian here: radius and ||D x|| stay
        return st._replace(D=D)
    xn0 = xp.linalg.vector_norm(D * st.X, axis=-1)
    d0 = xp.where(xn0 == 0, float(FACTOR), FACTOR * xn0)
    return st._replace(D=D, xnorm=xp.where(init, xn0, st.xnorm),
                       delta=xp.where(init, d0, st.delta))


def gtol_test(xp, st: LMState, nj, cn, jac_scale, gtol) -> LMState:
    """MINPACK's gradient test and the scaling update ``D = max(D, ||J_j||)``.

    ``gnorm`` is the largest ``|cos|`` between a column of ``J`` and ``f``
    (0 when ``f = 0``); ``gnorm <= gtol`` stops the problem (info 4).
    """
    cn_safe = xp.where(cn == 0, 1.0, cn)
    fn_safe = xp.where(st.fnorm == 0, 1.0, st.fnorm)
    cosv = xp.where(cn == 0, 0.0, xp.abs(st.g) / (fn_safe[:, None] * cn_safe))
    # an overflowed column norm (J^T J beyond the dtype, J finite) says nothing about the
    # angle: NaN (no gtol stop), not the 0 of g / inf
    cosv = xp.where(xp.isinf(cn), xp.full_like(cosv, float("nan")), cosv)
    gn_new = xp.where(st.fnorm == 0, 0.0, xp.max(cosv, axis=-1))
    gnorm = xp.where(nj, gn_new, st.gnorm)
    conv_g = nj & (gnorm <= gtol)
    info = xp.where(conv_g, _GTOL, st.info)
    D = st.D
    if jac_scale:
        D = xp.where((nj & ~st.first)[:, None], xp.maximum(D, cn), D)
    return st._replace(gnorm=gnorm, info=info, active=st.active & ~conv_g, D=D)


def judge(xp, ev, st: LMState, tr: Trial, route, accel, v, limited, ftol, xtol,
          max_nfev, scalars=None) -> LMState:
    """The verdict on the trial points: :func:`model_step`, :func:`reductions`,
    :func:`update_radius`, :func:`accept` and :func:`stopping_tests`, in this
    order (``accel``, ``v``: as :func:`model_step`; ``limited``: as
    :func:`stopping_tests`). ``scalars``: one float64 NumPy problem's scalar
    namespace (:func:`.arrays.scalar_namespace`): the two functions of
    per-problem values only run on its NumPy scalars (:func:`.arrays.on_scalars`,
    the same numbers)."""
    pm, pmnorm = model_step(xp, st, tr, accel, v)
    actred, prered, dirder, ratio, fn1s, finite = reductions(xp, st, tr, route, pm, pmnorm)
    if scalars is None:
        delta, par = update_radius(xp, st, tr, actred, dirder, ratio, fn1s, finite, pmnorm)
    else:
        delta, par = on_scalars(scalars, xp, update_radius, st, tr, actred, dirder, ratio, fn1s,
                                finite, pmnorm)
    st = accept(xp, ev, st, tr, ratio, delta, par, actred, finite)
    if scalars is None:
        return stopping_tests(xp, st, actred, prered, ratio, finite, limited, ftol, xtol,
                              max_nfev, tr.projected)
    return on_scalars(scalars, xp, stopping_tests, st, actred, prered, ratio, finite, limited,
                      ftol, xtol, max_nfev, tr.projected)


def geodesic_acceleration(xp, ev, st: LMState, route, p, z, par):
    """Geodesic acceleration (Transtrum & Sethna 2012) of the LM step ``p`` (k, n).

    For steps limited by the trust region (``par > 0``) after the first
    accepted step: the second directional derivative ``r_vv`` of ``f`` along
    ``v = p`` is estimated by a finite difference with step ``ACC_H``, the
    acceleration ``a = -(J^T J + par D^2)^{-1} J^T r_vv`` solves the same
    damped system with ``r_vv`` in place of ``f``, and the step becomes
    ``v + a/2`` (the second-order point of the geodesic ``x + v t + a t^2/2``
    at ``t = 1``) when ``||D a|| <= ACC_ALPHA * ||D v|| / 2`` (else ``v``
    alone). The evaluation ``f(x + h v)`` counts in ``nfev``. ``par`` (k,)
    is the LM parameter of ``v``. Returns ``(p, accel, st)`` with ``accel``
    (k,) the accelerated problems (``None`` when none was eligible).

    The step is judged like any other (:func:`accept`: finite residuals, a
    lower cost), against the model reduction of ``v`` (:func:`model_step`).
    """
    X, F, J, D, free = st.X, st.F, st.J, st.D, st.free
    eligible = st.active & (par > 0) & ~st.first
    if lazy.known_none(xp, eligible):  # (traced, :mod:`.jax_solve`: no accelerated problem is exact)
        return p, None, st
    Xh = ev.project(X + ACC_H * p)
    Fh = ev.residual_where(eligible, Xh, X, F)  # only the eligible rows where it can
    st = st._replace(nfev=st.nfev + xp.astype(eligible, count_dtype(xp)))
    fast = getattr(route, "fast", None)
    if fast is not None:  # a NumPy batch: the rest as a numba loop over the rows on the
        # Cholesky route (agnopt._kernels.lm_batched_cpu); those on the SVD route below
        p_f, acc_f = fast.acceleration(J, p, Fh, F, D, free, route.Lf, z, eligible, ACC_H,
                                       ACC_ALPHA)
        if route.svd is None:
            return p_f, acc_f, st
        on_chol = ~route.svd[1]
    Jv = xp.matmul(J, p[:, :, None])[:, :, 0]
    rvv = (2.0 / ACC_H) * ((Fh - F) / ACC_H - Jv)
    rvv = xp.where(xp.isfinite(rvv), rvv, 0.0)
    hv = xp.matmul(rvv[:, None, :], J)[:, 0, :] / D  # Js^T r_vv
    hv = xp.where(free, hv, 0.0)
    az = -route.solve(hv, par)
    a = xp.where(free, az / D, 0.0)
    vn = xp.linalg.vector_norm(z, axis=-1)
    an = xp.linalg.vector_norm(xp.where(free, az, 0.0), axis=-1)
    accel = eligible & (2.0 * an <= ACC_ALPHA * vn) & xp.all(xp.isfinite(a), axis=-1)
    p = xp.where(accel[:, None], p + 0.5 * a, p)
    if fast is not None:
        return xp.where(on_chol[:, None], p_f, p), xp.where(on_chol, acc_f, accel), st
    return p, accel, st


def trial_point(xp, ev, st: LMState, p, par, box=None, step=None):
    """The trial point ``clip(x + p)`` (running problems only) and its residuals.

    On the first iteration the radius is cut to the step length
    (``Delta = min(Delta, ||D p||)``, MINPACK). Returns ``(Trial, st)`` with
    ``st.par`` the step's LM parameter ``par`` (k,). The point comes from one
    block (:func:`trial_step`; ``box``: the evaluator's ``block_view()``, or
    the evaluator), its residuals from ``ev.trial``. ``step``: that block
    (:func:`trial_step` when ``None``; one float64 NumPy problem with the numba
    judge on passes :func:`agnopt._kernels.lm_route.trial_step_one`, the same numbers).
    """
    step = _trial_step if step is None else step
    Xt, p, pnorm, projected, st = step(xp, ev if box is None else box, st, p, par)
    Ft, fnorm1 = ev.trial(Xt)
    return Trial(Xt, Ft, p, pnorm, fnorm1, projected), st


def trial_step(xp, ev, st: LMState, p, par):
    """The trial point of :func:`trial_point` without its residuals:
    ``(Xt, p, pnorm, projected, st)``."""
    X = st.X
    X1 = X + p
    Xt = ev.project(X1)
    Xt = xp.where(st.active[:, None], Xt, X)
    p = Xt - X
    # the steps the bounds cut (not those whose (x + p) - x merely rounds differently from p:
    # they are LM steps, judged as on an unbounded problem, so a problem with bounds that
    # never bind takes the iterates it takes without bounds)
    projected = xp.any(Xt != X1, axis=-1) if ev.bounded else None
    pnorm = xp.linalg.vector_norm(st.D * p, axis=-1)
    delta = xp.where(st.first & st.active, xp.minimum(st.delta, pnorm), st.delta)
    st = st._replace(delta=delta, par=par, nfev=st.nfev + xp.astype(st.active, count_dtype(xp)))
    return Xt, p, pnorm, projected, st


def model_step(xp, st: LMState, tr: Trial, accel, v):
    """The step whose model reduction judges the trial step, and its ``||D p||``.

    An accelerated step ``v + a/2`` (``accel`` (k,); ``v`` (k, n) the LM
    step) is judged by the model of ``v``: the acceleration follows the
    curvature of ``f`` along ``v``, which the linear model does not see, and
    the model reduction of ``v`` is positive by construction (Transtrum &
    Sethna 2012); the radius update measures ``||D v||`` too, the step the
    radius bounds. Every other step (an LM step, or a step the bounds
    projected) is judged by its own model. Returns ``(p, pnorm)``, (k, n) and (k,).
    """
    if accel is None:
        return tr.p, tr.pnorm
    lm = accel if tr.projected is None else accel & ~tr.projected
    vnorm = xp.linalg.vector_norm(st.D * v, axis=-1)
    return xp.where(lm[:, None], v, tr.p), xp.where(lm, vnorm, tr.pnorm)


def reductions(xp, st: LMState, tr: Trial, route, pm, pmnorm):
    """MINPACK's relative reductions, with respect to ``||f||^2``.

    ``actred = 1 - (||f(x+p)|| / ||f||)^2`` (-1 when the trial residuals are
    not finite or grew tenfold) of the trial step; the model of ``pm`` (k, n)
    (:func:`model_step`; ``pmnorm`` (k,) its ``||D pm||``) predicts
    ``prered = (||J pm||^2 + 2 par ||D pm||^2) / ||f||^2``, positive by
    construction for an LM step, with ``dirder`` the directional
    derivative; ``ratio = actred / prered``. A projected step (not an LM
    step of the current ``par``) has the model reduction of ``p`` itself,
    ``prered = -(2 f.Jp + ||Jp||^2) / ||f||^2``, ``dirder = f.Jp / ||f||^2``,
    and where that is not positive the ratio is 0: the step is not taken.
    Returns ``(actred, prered, dirder, ratio, fn1s, finite)`` (k,) each.
    """
    fnorm, par = st.fnorm, st.par
    finite = xp.isfinite(tr.fnorm1)
    fn1s = xp.where(finite, tr.fnorm1, fnorm * 1e10 + 1.0)
    fn_safe = xp.where(fnorm == 0, 1.0, fnorm)
    actred = xp.where(finite & (0.1 * fn1s < fnorm), 1.0 - (fn1s / fn_safe) ** 2, -1.0)
    t1 = xp.sqrt(route.jp_norm2(pm)) / fn_safe
    t2 = xp.sqrt(par) * pmnorm / fn_safe
    prered = t1 * t1 + 2.0 * t2 * t2
    dirder = -(t1 * t1 + t2 * t2)
    if tr.projected is not None:
        fJp = xp.sum(st.g * tr.p, axis=-1) / (fn_safe * fn_safe)  # f . Jp = (J^T f) . p
        prered = xp.where(tr.projected, -(2.0 * fJp + t1 * t1), prered)
        dirder = xp.where(tr.projected, fJp, dirder)
    ratio = xp.where(prered > 0, actred / xp.where(prered > 0, prered, 1.0), 0.0)
    return actred, prered, dirder, ratio, fn1s, finite


def update_radius(xp, st: LMState, tr: Trial, actred, dirder, ratio, fn1s, finite, pnorm):
    """MINPACK's radius and LM-parameter update.

    ``ratio <= 0.25``: ``Delta = temp * min(Delta, ||D p|| / 0.1)``, ``par /= temp``
    with ``temp`` from a quadratic interpolation clipped to [0.1, 0.5]
    (0.1 for non-finite or tenfold-grown residuals); ``ratio >= 0.75`` or
    ``par = 0``: ``Delta = 2 ||D p||``, ``par /= 2``; else unchanged.
    ``pnorm`` (k,): ``||D p||`` of the step the model judged
    (:func:`model_step`). Returns the new ``(delta, par)`` (k,).
    """
    fnorm, par, delta = st.fnorm, st.par, st.delta
    small = ratio <= 0.25
    den = dirder + 0.5 * actred
    temp = xp.where(actred >= 0, 0.5, 0.5 * dirder / xp.where(den == 0, 1.0, den))
    temp = xp.where((0.1 * fn1s >= fnorm) | (temp < 0.1) | ~finite, 0.1, temp)
    big = ~small & ((par == 0) | (ratio >= 0.75))
    delta_n = xp.where(small, temp * xp.minimum(delta, pnorm / 0.1),
                       xp.where(big, pnorm / 0.5, delta))
    par_n = xp.where(small, par / temp, xp.where(big, 0.5 * par, par))
    return xp.where(st.active, delta_n, delta), xp.where(st.active, par_n, par)


def accept(xp, ev, st: LMState, tr: Trial, ratio, delta, par, actred, finite) -> LMState:
    """Take the step where its residuals are finite, the cost went down
    (``actred > 0``) and ``ratio >= ACCEPT_RATIO`` (MINPACK's 1e-4), for
    every kind of step (LM, projected, accelerated); the Jacobian of those
    problems is then stale (``need_jac``). ``delta``, ``par`` (k,): the
    updated radius and LM parameter, stored with the step.

    The ratio alone does not suffice: a ratio of two negative reductions is
    positive (a projected step: a bounded Rosenbrock fit cycled between two
    costs), and an accelerated step is judged against the model of its LM
    step, not its own.
    """
    acc = st.active & finite & (actred > 0) & (ratio >= ACCEPT_RATIO)
    X = xp.where(acc[:, None], tr.Xt, st.X)
    return st._replace(
        X=X, delta=delta, par=par, F=ev.select(acc, tr.Ft, st.F), fnorm=xp.where(acc, tr.fnorm1, st.fnorm),
        xnorm=xp.where(acc, xp.linalg.vector_norm(st.D * X, axis=-1), st.xnorm),
        nit=st.nit + xp.astype(acc, count_dtype(xp)),
        need_jac=xp.where(st.active, acc, st.need_jac),  # finished problems keep theirs
        first=st.first & ~acc)


def stopping_tests(xp, st: LMState, actred, prered, ratio, finite, limited, ftol, xtol,
                   max_nfev, projected=None) -> LMState:
    """MINPACK's convergence tests, in its order.

    info 1 (``ftol``: ``|actred| <= ftol``, ``prered <= ftol``, ``ratio <= 2``,
    except on a step the trust radius cut short, ``limited`` (k,), whose
    ``ratio >= 0.75`` while ``gnorm^2 > ftol``), 2 (``xtol``:
    ``Delta <= xtol ||D x||``), 3 (both);
    else 5 (``max_nfev``), then 6/7/8 (the same tests with ``eps`` in place
    of the tolerance). A step bound that collapsed on a non-finite trial
    point gives -4.

    The ``ftol`` exception: such a step's reduction is small because the
    step was, the model that predicted it was good, the radius doubles
    (:func:`update_radius`) and the Gauss-Newton step would reduce
    ``||f||^2`` by more than ``ftol`` (at least ``gnorm^2`` of it, the share
    of ``f`` along the best column of ``J``), so it says nothing about the
    reduction still possible (issue 11: ``a t`` fitted to ``1e9 t`` from
    ``a = 1`` stopped at ``a = 2``). It holds at most ``log2`` (Gauss-Newton
    step / radius) times in a row. A limited step with a poorer ratio, or
    near a stationary point (``gnorm^2 <= ftol``), is judged as MINPACK does
    (``x^2 + 5`` from ``x = 2`` ends on ``ftol`` at its minimum ``x = 0``,
    where every step is limited).

    Low precision (float32: ``eps > LOW_PRECISION_EPS``): info 6 also when a
    full Gauss-Newton step (not ``limited``, not ``projected`` (k,) by the
    bounds, finite trial residuals) predicts ``prered <= eps``, whatever
    ``actred``. There ``prered = ||J p||^2 / ||f||^2`` is the share of
    ``||f||^2`` in the range of ``J`` (the first-order optimality condition,
    scaled) and it is below one rounding of the cost: the point is stationary
    to the working precision. MINPACK also asks ``|actred| <= eps``, which
    float32 residuals rarely give (``||f||^2`` of ``m`` rounded residuals is
    itself uncertain by several ``eps``), so such fits rejected steps of
    rounding noise until the radius collapsed on info 7 (about 4 more
    evaluations per fit). A limited or projected step, whose small model
    reduction says nothing about the Gauss-Newton step, is judged as before;
    float64 keeps MINPACK's tests exactly.
    """
    info, delta, xnorm = st.info, st.delta, st.xnorm
    eps = machine_eps(xp, delta.dtype)
    i64 = info.dtype
    # no relative-reduction test on a limited step whose radius now doubles
    # while the Gauss-Newton model predicts more than the tolerance (gnorm^2)
    aa = xp.abs(actred)
    full = 0.5 * ratio <= 1.0
    grows = limited & (ratio >= 0.75)
    gn2 = st.gnorm * st.gnorm
    ft = (aa <= ftol) & (prered <= ftol) & full & ~(grows & (gn2 > ftol))
    xt = delta <= xtol * xnorm
    # info 1 (ftol), 2 (xtol), 3 (both) = ft + 2 xt (MINPACK's numbering), as
    # integer arithmetic instead of a chain of ``where`` over constant arrays
    new = xp.astype(ft, i64) + 2 * xp.astype(xt, i64)
    # 5 (max_nfev) < 6 < 7 < 8 (the tests at machine precision): MINPACK checks
    # them in this order and the last one that holds wins, i.e. the largest code
    mach = _MAX_NFEV * xp.astype(st.nfev >= max_nfev, i64)
    mach = xp.maximum(mach, _FTOL_MACHINE * xp.astype(
        (aa <= eps) & (prered <= eps) & full & ~(grows & (gn2 > eps)), i64))
    mach = xp.maximum(mach, _XTOL_MACHINE * xp.astype(delta <= eps * xnorm, i64))
    mach = xp.maximum(mach, _GTOL_MACHINE * xp.astype(st.gnorm <= eps, i64))
    if eps > LOW_PRECISION_EPS:  # float32: a stationary point to rounding (see above)
        flat = ~limited & finite & (prered <= eps)
        flat = flat if projected is None else flat & ~projected
        mach = xp.maximum(mach, _FTOL_MACHINE * xp.astype(flat, i64))
    new = xp.where(new == _RUNNING, mach, new)
    # the step bound collapsed on a non-finite trial point: say so (status -4)
    collapsed = ~finite & ((new == _XTOL) | (new == _FTOL_XTOL) | (new == _XTOL_MACHINE))
    new = xp.where(collapsed, _NONFINITE_TRIAL, new)
    new = xp.where(st.active, new, 0)
    return st._replace(info=xp.where(new != _RUNNING, new, info),
                       active=st.active & (new == _RUNNING))


# the blocks as compiled programs on JAX (as written on every other backend)
_initial_state = compiled(initial_state)
_linearized = compiled(linearized, static=("jac_scale",))
_trial_step = compiled(trial_step)
_judge = compiled(judge)
