r"""Trust-region-reflective least squares (``method="trf"``), for ``k`` problems at once.

The method of Branch, Coleman and Li ("A subspace, interior, and conjugate
gradient method for large-scale bound-constrained minimization problems",
SIAM J. Sci. Comput. 21(1), 1999) as scipy's ``least_squares(method="trf",
tr_solver="exact")`` runs it; without bounds it is scipy's ``trf_no_bounds``
(a plain trust-region Gauss-Newton method). One driver,
:func:`run_trust_region`, is shared with ``dogbox`` (:mod:`.dogbox`); an
*algorithm* object supplies the blocks that differ. Read top to bottom:

1. :func:`linearize` -- the Jacobian where the last step was accepted
   (non-finite ones stop their problem, batched), the ``x_scale="jac"``
   column norms (scipy's ``compute_jac_scale``);
2. the *model* (:func:`trf_model`): the robust-loss scaling of ``(f, J)``
   (:func:`.losses.robust_model`), the gradient ``g = J^T f``, the
   Coleman-Li vector ``v`` (:func:`.bounds.coleman_li`), the scaling
   ``d = sqrt(v) * x_scale``, ``diag_h = g dv x_scale`` and the spectral
   decomposition of the augmented scaled Jacobian
   ``[J diag(d); diag(sqrt(diag_h))]`` (:func:`.routes.spectral`);
   the first-order measure ``||g v||_inf`` and the ``gtol`` test
   (:func:`first_order_test`); the initial radius ``||x0 / (x_scale sqrt(v))||``;
3. the step (:func:`trf_step`): the trust-region subproblem in the scaled
   variables, solved in the SVD basis as scipy's ``solve_lsq_trust_region``
   solves it (:func:`lsq_trust_region`: Newton's iteration on
   ``||p(alpha)|| - Delta`` with its safeguards, the step then set to the
   radius), the reflective step choice
   (:func:`.bounds.select_reflective_step`) and the strictly feasible trial
   point (:func:`.bounds.strictly_feasible` with ``rstep = 0``);
4. the trial (:func:`evaluate_trial`): residuals, robust cost, actual over
   predicted reduction;
5. :func:`update_radius` -- scipy's ``update_tr_radius`` (a non-finite trial
   point quarters the radius to the step's length);
6. :func:`accept` -- a step is taken only when its residuals are finite
   and the cost went down;
7. the stopping tests of scipy (:func:`.gauss_newton.gn_tests`: ``ftol``
   only with ``ratio > 0.25``, and not on a step the radius cut short whose
   radius doubles while the Gauss-Newton step would remove more than
   ``ftol`` of the cost (:func:`column_share`), ``xtol`` on the step length,
   ``max_nfev``);
   a problem that stops on an accepted step gets its Jacobian there and
   ``gtol``'s status if it holds there (:func:`final_gtol_test`, scipy's
   order of tests);
8. compaction of the working set (:class:`.batched.WorkingSet`).

Every problem has its own state (:class:`.state.TRState`) and stops on its
own; a stopped problem is frozen by ``where``, so a batch computes what each
problem alone computes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._core import lazy
from .arrays import count_dtype, device
from .bounds import (
    active_constraints,
    coleman_li,
    evaluate_quadratic,
    select_reflective_step,
    strictly_feasible,
)
from .cholesky import mv
from .gauss_newton import checked_jacobian, gn_ratio, gn_tests
from .lmpar import SpectralBasis
from .losses import loss_cost, robust_model
from .outcome import call_callback, history_entry, print_iter, report_progress
from .routes import spectral
from .state import MinpackInfo, Outcome, TRState

# state fields handed back (and set aside by a compaction) for the result
OUTCOME_FIELDS = ("X", "F", "J", "info", "nfev", "njev", "nit", "need_jac", "active")


class Trial(NamedTuple):
    """One trial step of every problem: ``Xt`` (k, n) the trial point, ``step``
    (k, n) ``Xt - X``, ``sh_norm`` (k,) the step's length in the radius' norm,
    ``pred`` (k,) the predicted reduction of the model, ``hit`` (k,) the step
    reached the trust region's boundary, ``par`` (k,) the LM parameter (trf),
    ``bound_hits`` (k, n) the bounds the step ends on (dogbox; else ``None``)."""

    Xt: Any
    step: Any
    sh_norm: Any
    pred: Any
    hit: Any
    par: Any
    bound_hits: Any


# --------------------------------------------------------------------------- the driver
def run_trust_region(xp, ev, algo, X, F, scale_inv, jac_scale, loss, f_scale, ftol, xtol,
                     gtol, max_nfev, verbose, callback, want_history, ws=None) -> Outcome:
    """The bounded trust-region iteration of ``algo`` (:data:`TRF` or ``dogbox.DOGBOX``).

    ``X`` (k, n) the start (strictly feasible for trf), ``F`` (k, m) its
    residuals, ``scale_inv`` (k, n) ``1 / x_scale`` (ones for
    ``jac_scale``); ``loss``, ``f_scale`` as :func:`agnopt.least_squares`;
    tolerances ``None`` switch their test off. Returns an
    :class:`.state.Outcome` (full batch; ``F`` the true residuals, ``J``
    the true Jacobian, stale where ``need_jac``).
    """
    ftol, xtol, gtol = (0.0 if t is None else float(t) for t in (ftol, xtol, gtol))
    st = initial_state(xp, ev, algo, X, F, scale_inv, loss, f_scale)
    model, hist, cb_stop, it = None, [], False, 0
    while True:
        it += 1
        # -- compaction: finished problems leave the working set
        if ws is not None and it > 1:
            st, changed = ws.compact(st, ev, OUTCOME_FIELDS)
            model = None if changed else model
        # -- linearization where the last step was accepted, the model, gtol
        nj = st.need_jac & st.active
        if bool(xp.any(nj)):
            st, nj = linearize(xp, ev, st, nj, jac_scale, loss, f_scale)
            model = None
        if model is None:
            model = algo.model(xp, ev, st, loss, f_scale)
            model = type(model)(*ev.persist(*model))
            st = first_order_test(xp, ev, algo, st, nj, model, gtol, max_nfev)
            if not bool(xp.any(st.active)):
                break
        # -- the step, the trial point and its quality
        tr = algo.step(xp, ev, st, model)
        st, Ft, cost_t, actual, acc, ratio, finite = evaluate_trial(xp, ev, st, tr, loss, f_scale)
        st = update_radius(xp, st, tr, actual, ratio, finite)
        dx_norm = xp.linalg.vector_norm(tr.step, axis=-1)
        x_norm = xp.linalg.vector_norm(st.X, axis=-1)
        info, active = gn_tests(xp, st.info, st.active, acc, actual, st.cost, ratio, dx_norm,
                                x_norm, finite, st.nfev, ftol, xtol, max_nfev,
                                growing=(ratio > 0.75) & tr.hit & (model.gn_share > ftol))
        st = accept(xp, ev, algo, st, tr, Ft, cost_t, acc)._replace(info=info, active=active)
        st = final_gtol_test(xp, ev, algo, st, acc & ~active, loss, f_scale, gtol)
        st = TRState._make(ev.persist(*st)) if ev.persist_all else st
        # -- reports
        fnorm = xp.sqrt(2.0 * st.cost)
        if want_history:
            hist.append(history_entry(ev.batched, fnorm, st.nit, st.nfev))
        if verbose >= 2:
            print_iter(xp, ev.batched, it, fnorm, st.nfev, dx_norm)
        report_progress(xp, ev, it, fnorm, st.nfev, st.active)
        if callback is not None and call_callback(callback, ev.batched, st.X, fnorm, st.nit):
            cb_stop = True
            break
        if not bool(xp.any(st.active)):
            break
    rows = tuple(getattr(st, f) for f in OUTCOME_FIELDS)
    if ws is not None and ws.W is not None:
        return Outcome(**dict(zip(OUTCOME_FIELDS, ev.assemble(ws, rows))), cb_stop=cb_stop, history=hist)
    return Outcome(**dict(zip(OUTCOME_FIELDS, rows)), cb_stop=cb_stop, history=hist)


def initial_state(xp, ev, algo, X, F, scale_inv, loss, f_scale) -> TRState:
    """The state at ``x0`` (radius 0: set by the first linearization)."""
    k = X.shape[0]
    dev = device(X)
    zeros = xp.zeros((k,), dtype=X.dtype, device=dev)
    izeros = xp.zeros((k,), dtype=count_dtype(xp), device=dev)
    true_k = xp.ones((k,), dtype=xp.bool, device=dev)
    return TRState(X=X, F=F, J=None, cost=loss_cost(xp, loss, F, f_scale),
                   scale_inv=scale_inv, delta=zeros, alpha=zeros, info=izeros,
                   nfev=izeros + 1, njev=izeros, nit=izeros, active=true_k, need_jac=true_k,
                   on_bound=algo.initial_on_bound(xp, ev, X))


def linearize(xp, ev, st: TRState, nj, jac_scale, loss, f_scale):
    """The Jacobian where ``nj`` and, for ``x_scale="jac"``, the scale: the
    column norms of the (loss-scaled) Jacobian, 1 for a zero column at the
    first one, then the largest so far (scipy's ``compute_jac_scale``).
    Returns ``(st, nj)`` (``nj`` without the problems whose Jacobian was
    not finite: they stop with status -3, batched)."""
    J, nj, info, active, njev = checked_jacobian(xp, ev, st.X, st.F, st.J, nj, st.info, st.active,
                                          st.njev)
    scale_inv = st.scale_inv
    if jac_scale:
        _, Jl = robust_model(xp, loss, st.F, J, f_scale)
        cn = xp.linalg.vector_norm(Jl, axis=-2)
        first = (st.nit == 0)[:, None]
        new = xp.where(first, xp.where(cn == 0, xp.ones_like(cn), cn), xp.maximum(scale_inv, cn))
        scale_inv = xp.where(nj[:, None], new, scale_inv)
    # the Jacobian of these problems is current now: not evaluated again for the result
    return st._replace(J=J, info=info, active=active, njev=njev, scale_inv=scale_inv,
                       need_jac=st.need_jac & ~nj), nj


def first_order_test(xp, ev, algo, st: TRState, nj, model, gtol, max_nfev) -> TRState:
    """The initial radius (first linearization), the ``gtol`` test
    (``optimality < gtol``, scipy's strict test) and the evaluation budget,
    for the problems linearized now."""
    init = nj & (st.nit == 0)
    if bool(xp.any(init)):
        d0 = algo.initial_radius(xp, ev, st, model)
        d0 = xp.where(d0 == 0, xp.ones_like(d0), d0)
        st = st._replace(delta=xp.where(init, d0, st.delta))
    conv = nj & st.active & (model.gnorm < gtol)
    out = st.active & ~conv & (st.nfev >= max_nfev)
    info = xp.where(conv, xp.full_like(st.info, int(MinpackInfo.GTOL)), st.info)
    info = xp.where(out, xp.full_like(info, int(MinpackInfo.MAX_NFEV)), info)
    return st._replace(info=info, active=st.active & ~conv & ~out)


def final_gtol_test(xp, ev, algo, st: TRState, stopped, loss, f_scale, gtol) -> TRState:
    """Problems that stopped on an accepted step (``ftol``, ``xtol``,
    ``max_nfev``): the Jacobian at the new point (as scipy, which forms it
    before its loop ends), and ``gtol``'s status where the first-order
    measure there is below ``gtol`` (scipy tests ``gtol`` last). A
    non-finite Jacobian there leaves the status as it is."""
    if not bool(xp.any(stopped)):
        return st
    Jn = ev.jacobian(st.X, st.F)
    fin = xp.all(xp.isfinite(xp.reshape(Jn, (Jn.shape[0], -1))), axis=-1)
    nj = stopped & fin
    J = xp.where(nj[:, None, None], Jn, st.J)
    opt = final_fields(xp, ev, st.X, st.F, J, algo.name, loss, f_scale, ev.bounded, None)[3]
    info = xp.where(nj & (opt < gtol), xp.full_like(st.info, int(MinpackInfo.GTOL)), st.info)
    return st._replace(J=J, info=info, njev=st.njev + xp.astype(nj, count_dtype(xp)),
                       need_jac=st.need_jac & ~nj)


def evaluate_trial(xp, ev, st: TRState, tr: Trial, loss, f_scale):
    """Residuals at the trial points (running problems), the robust cost and
    the reductions. A trial point with a non-finite residual is not finite
    (whatever the loss makes of it). Returns ``(st, Ft, cost_t, actual,
    acc, ratio, finite)``: ``ratio`` is actual over predicted reduction (0
    for a non-positive prediction, 1 when both are 0, as scipy)."""
    Ft = ev.residual(tr.Xt)
    st = st._replace(nfev=st.nfev + xp.astype(st.active, count_dtype(xp)))
    fin_f = xp.all(xp.isfinite(Ft), axis=-1)
    Fs = xp.where(fin_f[:, None], Ft, xp.zeros_like(Ft))
    cost_t = xp.where(fin_f, loss_cost(xp, loss, Fs, f_scale),
                      xp.full_like(st.cost, float("inf")))
    actual, acc, ratio, finite = gn_ratio(xp, st.cost, cost_t, tr.pred, st.active)
    ratio = xp.where((tr.pred == 0) & (actual == 0), xp.ones_like(ratio), ratio)
    return st, Ft, cost_t, actual, acc, ratio, finite


def update_radius(xp, st: TRState, tr: Trial, actual, ratio, finite) -> TRState:
    """scipy's ``update_tr_radius``: ``ratio < 0.25`` -> a quarter of the step's
    length, ``ratio > 0.75`` on the region's boundary -> doubled; a non-finite
    trial point -> a quarter of the step's length. The LM parameter follows
    the radius (``alpha * Delta / Delta_new``) for the next subproblem."""
    delta = st.delta
    quarter = 0.25 * tr.sh_norm
    new = xp.where(ratio < 0.25, quarter, xp.where((ratio > 0.75) & tr.hit, 2.0 * delta, delta))
    new = xp.where(finite, new, quarter)
    alpha = st.alpha
    if tr.par is not None:
        pos = new > 0
        alpha = xp.where(finite & pos, tr.par * delta / xp.where(pos, new, xp.ones_like(new)),
                         tr.par)
        alpha = xp.where(st.active, alpha, st.alpha)
    return st._replace(delta=xp.where(st.active, new, delta), alpha=alpha)


def accept(xp, ev, algo, st: TRState, tr: Trial, Ft, cost_t, acc) -> TRState:
    """Take the step where ``acc`` (finite residuals, lower cost); the Jacobian
    of those problems is then stale (``need_jac``)."""
    X, on_bound = algo.accepted_point(xp, ev, st, tr, acc)
    return st._replace(
        X=X, F=xp.where(acc[:, None], Ft, st.F), cost=xp.where(acc, cost_t, st.cost),
        nit=st.nit + xp.astype(acc, count_dtype(xp)), on_bound=on_bound,
        need_jac=xp.where(st.active, acc, st.need_jac))


# --------------------------------------------------------------------------- trf's blocks
class TRFModel(NamedTuple):
    """trf's quadratic model at the current point, in the scaled variables
    ``p = d * p_h``: ``J_h`` (k, m, n) ``= J diag(d)``, ``diag_h`` (k, n),
    ``g_h`` (k, n) ``= d g``, ``d`` (k, n), the SVD basis of the augmented
    ``J_h`` (``w``, ``c``, ``good``, ``full_rank``, ``V``), ``theta`` (k,)
    the step-back factor, ``gnorm`` (k,) the first-order measure, ``v`` (k, n)
    Coleman-Li's vector, ``gn_share`` (k,) :func:`column_share` of ``J_h``."""

    J_h: Any
    diag_h: Any
    g_h: Any
    d: Any
    w: Any
    c: Any
    good: Any
    full_rank: Any
    V: Any
    theta: Any
    gnorm: Any
    v: Any
    gn_share: Any


def gradient(xp, F, J):
    """``J^T f`` (k, n) of ``F`` (k, m), ``J`` (k, m, n)."""
    return xp.matmul(F[:, None, :], J)[:, 0, :]


def column_share(xp, J, g, F):
    """``max_j cos^2(J_j, f)`` (k,): ``J`` (k, m, n), ``g = J^T f`` (k, n), ``F`` (k, m).

    The share of ``||f||^2`` that the best single column of ``J`` removes, a
    lower bound of the share the Gauss-Newton step removes (the projection
    of ``f`` onto the span of all columns); 0 for zero columns or ``f = 0``.
    Column scalings cancel, so a scaled ``J`` with its ``g`` gives the same.
    """
    cn = xp.linalg.vector_norm(J, axis=-2)
    den = cn * xp.linalg.vector_norm(F, axis=-1)[:, None]
    ok = den > 0
    cos = xp.where(ok, xp.abs(g) / xp.where(ok, den, xp.ones_like(den)), xp.zeros_like(den))
    return xp.max(cos, axis=-1) ** 2


def trf_model(xp, ev, st: TRState, loss, f_scale) -> TRFModel:
    """The scaled model of trf (scipy's "hat" space, ``x_scale`` applied first,
    then Coleman-Li's scaling): see the module notes, block 2."""
    Fh, Jl = robust_model(xp, loss, st.F, st.J, f_scale)
    g = gradient(xp, Fh, Jl)
    X, si = st.X, st.scale_inv
    n = Jl.shape[-1]
    if ev.bounded:
        v, dv = coleman_li(xp, X, g, ev.lb, ev.ub)
    else:
        v, dv = xp.ones_like(X), xp.zeros_like(X)
    gnorm = xp.max(xp.abs(g * v), axis=-1)
    v = xp.where(dv != 0, v * si, v)
    d = xp.sqrt(v) / si
    diag_h = g * dv / si
    g_h = d * g
    J_h = Jl * d[:, None, :]
    dev = device(X)
    ones = xp.ones_like(X)
    all_free = xp.ones(X.shape, dtype=xp.bool, device=dev)
    if ev.bounded:
        eye = xp.eye(n, dtype=X.dtype, device=dev)
        Ja = xp.concat([J_h, xp.sqrt(diag_h)[:, :, None] * eye], axis=1)
        Fa = xp.concat([Fh, xp.zeros_like(X)], axis=1)
        w, c, V, good, full_rank, _ = spectral(xp, Ja, ones, Fa, all_free)
    else:
        w, c, V, good, full_rank, _ = spectral(xp, J_h, ones, Fh, all_free)
    theta = xp.maximum(xp.full_like(gnorm, 0.995), 1.0 - gnorm)
    return TRFModel(J_h, diag_h, g_h, d, w, c, good, full_rank, V, theta, gnorm, v,
                    column_share(xp, J_h, g_h, Fh))


def lsq_trust_region(xp, basis: SpectralBasis, delta, alpha0, active, rtol=0.01, max_iter=10):
    r"""The trust-region subproblem :math:`\min ||J_h p + f_h||` subject to
    :math:`||p|| \le \Delta` of ``k`` problems, in the SVD basis, as scipy's
    ``solve_lsq_trust_region`` (``scipy/optimize/_lsq/common.py``; Moré and
    Sorensen's iteration, "Computing a trust region step", SIAM J. Sci. Stat.
    Comput. 4(3), 1983, with scipy's safeguards) solves it, so that ``trf``
    takes scipy's steps.

    ``basis``: ``w`` (k, r) squared singular values, ``c = V^T J_h^T f_h``;
    ``delta`` (k,) the radii; ``alpha0`` (k,) the previous LM parameter;
    ``active`` (k,) the problems to solve (the others' values are not used).

    With :math:`q(\alpha) = c / (w + \alpha)` and :math:`\phi(\alpha) =
    ||q(\alpha)|| - \Delta`: a full-rank problem whose Gauss-Newton step
    :math:`q(0)` lies inside the region takes it (``alpha = 0``). Otherwise
    :math:`\alpha` starts at ``alpha0`` within the bounds
    :math:`[-\phi(0)/\phi'(0)` (full rank, else 0), :math:`||c|| / \Delta]`
    (else at :math:`\max(10^{-3} u, \sqrt{l u})`), and each of at most
    ``max_iter`` Newton steps :math:`\alpha \leftarrow \alpha - (\phi +
    \Delta) \phi / (\Delta \phi')` narrows the bounds, until
    :math:`|\phi| < \mathrm{rtol}\, \Delta`; the step is taken at the
    last updated :math:`\alpha` and then scaled to the radius by the caller.

    Returns ``alpha`` (k,), ``q`` (k, r) (the scaled step is ``-V q``) and
    ``gn`` (k,): the Gauss-Newton step was taken (not to be scaled).
    """
    delta_s = xp.where(delta > 0, delta, 1.0)
    full = basis.full_rank
    qn, s3n, _, c, _ = basis.gauss_newton(xp)
    qn_norm = xp.linalg.vector_norm(qn, axis=-1)
    gn = full & (qn_norm <= delta)
    upper = xp.linalg.vector_norm(c, axis=-1) / delta_s
    # -phi(0) / phi'(0) with phi'(a) = -sum(c^2 / (w + a)^3) / ||q(a)||
    lower = xp.where(full & (s3n > 0),
                     (qn_norm - delta) * qn_norm / xp.where(s3n > 0, s3n, 1.0), 0.0)

    def restart(lo, up):
        return xp.maximum(0.001 * up, xp.sqrt(xp.maximum(lo * up, 0.0)))

    alpha = xp.where(~full & (alpha0 == 0), restart(lower, upper), alpha0)
    done = gn | ~active

    def iteration(it, s):
        alpha, lower, upper, done = s
        a = xp.where((alpha < lower) | (alpha > upper), restart(lower, upper), alpha)
        q, s3, _ = basis.solve(xp, xp.where(done, 1.0, a))
        pn = xp.linalg.vector_norm(q, axis=-1)
        phi = pn - delta
        ratio = -phi * pn / xp.where(s3 > 0, s3, 1.0)  # phi / phi'
        lower = xp.where(done, lower, xp.maximum(lower, a - ratio))
        upper = xp.where(done | ~(phi < 0), upper, a)
        alpha = xp.where(done, alpha, a - (phi + delta) * ratio / delta_s)
        return alpha, lower, upper, done | (xp.abs(phi) < rtol * delta) | (it == max_iter - 1)

    if not lazy.known_all(xp, done):
        alpha, lower, upper, done = lazy.bounded_loop(
            xp, iteration, (alpha, lower, upper, done), max_iter, lambda s: s[-1])
    q, _, _ = basis.solve(xp, xp.where(gn, 1.0, alpha))
    return xp.where(gn, 0.0, alpha), xp.where(gn[:, None], qn, q), gn


def trf_step(xp, ev, st: TRState, md: TRFModel) -> Trial:
    """The trust-region step in the scaled variables (:func:`lsq_trust_region`,
    then set to the radius unless it is the Gauss-Newton step, as scipy), the
    reflective step choice and the strictly feasible trial point."""
    delta, X = st.delta, st.X
    basis = SpectralBasis(md.w, md.c, md.good, md.full_rank)
    par, q, gn = lsq_trust_region(xp, basis, delta, st.alpha, st.active)
    p_h = -mv(xp, md.V, q)
    pn = xp.linalg.vector_norm(p_h, axis=-1)
    fit = ~gn & (pn > 0)
    p_h = p_h * xp.where(fit, delta / xp.where(fit, pn, xp.ones_like(pn)), xp.ones_like(pn))[:, None]
    p = md.d * p_h
    if ev.bounded:
        step, step_h, pred = select_reflective_step(xp, X, md.J_h, md.diag_h, md.g_h, p, p_h,
                                                    md.d, delta, ev.lb, ev.ub, md.theta)
        Xt = strictly_feasible(xp, X + step, ev.lb, ev.ub, 0.0)
    else:
        step, step_h = p, p_h
        pred = -evaluate_quadratic(xp, md.J_h, md.g_h, p_h)
        Xt = X + step
    act = st.active[:, None]
    Xt = xp.where(act, Xt, X)
    sh_norm = xp.linalg.vector_norm(step_h, axis=-1)
    return Trial(Xt=Xt, step=Xt - X, sh_norm=sh_norm, pred=pred, hit=sh_norm > 0.95 * delta,
                 par=par, bound_hits=None)


class _TRF:
    """trf's blocks for :func:`run_trust_region`."""

    name = "trf"
    model = staticmethod(trf_model)
    step = staticmethod(trf_step)

    @staticmethod
    def initial_on_bound(xp, ev, X):
        return None

    @staticmethod
    def initial_radius(xp, ev, st, md):
        """``||x0 * scale_inv / sqrt(v)||`` (``v`` with ``x_scale`` applied)."""
        return xp.linalg.vector_norm(st.X * st.scale_inv / xp.sqrt(md.v), axis=-1)

    @staticmethod
    def accepted_point(xp, ev, st, tr, acc):
        return xp.where(acc[:, None], tr.Xt, st.X), None


TRF = _TRF()


# --------------------------------------------------------------------------- result fields
def final_fields(xp, ev, X, F, J, method, loss, f_scale, bounded, xtol, model_jac=False):
    """``(cost, jac, grad, optimality, active_mask)`` of the result, as scipy.

    ``cost`` the robust cost of the true residuals ``F`` (B, m); ``jac`` and
    ``grad`` of the loss's model (``J`` scaled by :func:`.losses.robust_model`,
    ``g = J^T f``); ``optimality``: trf with bounds ``||g v||_inf``
    (Coleman-Li's ``v``), dogbox ``||g||_inf`` over the variables not held
    at a bound, otherwise ``||g||_inf``; ``active_mask`` -1/0/1 (trf: within
    ``xtol`` relative of a bound, scipy's ``find_active_constraints``; the
    others: on the bound). ``model_jac``: ``J`` is already the loss's model
    Jacobian (the lm engine's).
    """
    Fh, Jl = robust_model(xp, loss, F, None if model_jac else J, f_scale)
    Jl = J if model_jac else Jl
    cost = loss_cost(xp, loss, F, f_scale)
    g = gradient(xp, Fh, Jl)
    opt = xp.max(xp.abs(g), axis=-1)
    if not bounded:
        return cost, Jl, g, opt, xp.zeros(X.shape, dtype=count_dtype(xp), device=device(X))
    lb, ub = ev.lb, ev.ub
    if method == "trf":
        v, _ = coleman_li(xp, X, g, lb, ub)
        opt = xp.max(xp.abs(g * v), axis=-1)
        return cost, Jl, g, opt, active_constraints(xp, X, lb, ub, 0.0 if xtol is None else xtol)
    one = xp.ones_like(X)
    am = xp.astype(xp.where(X <= lb, -one, xp.where(X >= ub, one, xp.zeros_like(X))), count_dtype(xp))
    if method == "dogbox":
        held = (xp.astype(am, X.dtype) * g) < 0
        opt = xp.max(xp.abs(xp.where(held, xp.zeros_like(g), g)), axis=-1)
    return cost, Jl, g, opt, am
