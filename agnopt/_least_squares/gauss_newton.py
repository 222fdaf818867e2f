r"""Damped Gauss-Newton (``method="gauss-newton"``), for ``k`` problems at once.

The step is :math:`p = -(J^TJ + \lambda D^2)^{+} J^T f`, computed in the
spectral basis of :math:`\tilde J = J D^{-1}` (:math:`\tilde J^T\tilde J = V
\operatorname{diag}(w) V^T`, :math:`c = V^T \tilde J^T f`):
:math:`D p = -V c / (w + \lambda)`, where :math:`\lambda = 0` gives the
truncated pseudo-inverse (Moore-Penrose) Gauss-Newton step. A step that does
not decrease the cost is rejected and :math:`\lambda \leftarrow
\max(10\lambda, 10^{-3} w_{max})`; an accepted step divides :math:`\lambda`
by 10 (to 0 below ``1e-12 w_max``). Tests: scipy trf's conditions.

:func:`run_gn` is the in-memory driver; the blocks (:func:`gn_step`,
:func:`gn_ratio`, :func:`gn_damping`, :func:`gn_tests`) are shared with the
tall (Dask) driver (:mod:`.tall`), which forms the spectral basis from the
reduced :math:`J^TJ` instead.
"""

from __future__ import annotations

from .arrays import count_dtype, device
from .outcome import call_callback, history_entry, print_iter, report_progress
from .routes import gram_spectral, spectral
from .state import MinpackInfo, Outcome

# MINPACK's codes as plain ints (array-api-strict takes no IntEnum operands;
# an int is also cheaper per iteration than the enum lookup)
_FTOL = int(MinpackInfo.FTOL)
_FTOL_XTOL = int(MinpackInfo.FTOL_XTOL)
_GTOL = int(MinpackInfo.GTOL)
_MAX_NFEV = int(MinpackInfo.MAX_NFEV)
_NONFINITE_JAC = int(MinpackInfo.NONFINITE_JAC)
_NONFINITE_TRIAL = int(MinpackInfo.NONFINITE_TRIAL)
_RUNNING = int(MinpackInfo.RUNNING)
_XTOL = int(MinpackInfo.XTOL)


def gn_step(xp, w, c, V, good, lam, D, free=None):
    """Scaled step ``z = D p`` and the step ``p`` (k, n) for the damping ``lam`` (k,).

    ``w``, ``c``, ``good`` (k, r) and ``V`` (k, n, r) the spectral basis;
    directions below the rank threshold are dropped while ``lam = 0``;
    ``free`` (k, n) zeroes the frozen variables (``None``: all free).
    """
    lam2 = lam[:, None]
    den = w + lam2
    use = good | (lam2 > 0)
    q = xp.where(use, c / xp.where(use & (den > 0), den, xp.ones_like(den)), xp.zeros_like(w))
    z = -xp.matmul(V, q[:, :, None])[:, :, 0]
    p = z / D if free is None else xp.where(free, z / D, xp.zeros_like(z))
    return z, p


def gn_ratio(xp, cost, cost_t, pred, active):
    """``(actual, acc, ratio, finite)`` (k,): actual reduction (-1 when the trial
    cost is not finite), accepted steps (the cost decreased), actual / predicted."""
    ones = xp.ones_like(cost)
    finite = xp.isfinite(cost_t)
    actual = xp.where(finite, cost - cost_t, -ones)
    acc = active & finite & (cost_t < cost)
    ratio = xp.where(pred > 0, actual / xp.where(pred > 0, pred, ones), xp.zeros_like(cost))
    return actual, acc, ratio, finite


def gn_damping(xp, lam, scale, acc, active):
    """``lam`` (k,): divided by 10 after an accepted step (0 below ``1e-12 scale``),
    else ``max(10 lam, 1e-3 scale)`` (``scale`` = the largest ``w``)."""
    lam_up = xp.maximum(10.0 * lam, 1e-3 * scale)
    lam_dn = xp.where(lam / 10.0 < 1e-12 * scale, xp.zeros_like(lam), lam / 10.0)
    return xp.where(active, xp.where(acc, lam_dn, lam_up), lam)


def gn_tests(xp, info, active, acc, actual, cost, ratio, dx_norm, x_norm, finite, nfev,
             ftol, xtol, max_nfev, growing=None):
    """scipy trf's tests, as MINPACK codes: ``ftol`` (``dF < ftol F`` and ratio
    > 0.25 on an accepted step), ``xtol`` (``||dx|| < xtol (xtol + ||x||)``),
    both, -4 (``xtol`` on a non-finite trial point), then ``max_nfev``.
    ``growing`` (k,) or ``None``: steps the trust radius cut short whose
    radius now grows (a good model); no ``ftol`` test on them, as their
    reduction is small because the step was (issue 11: ``a t`` fitted to
    ``1e9 t`` from ``a = 1`` stopped at ``a = 2``, as scipy's trf does).
    Returns ``(info, active)``."""
    ft = acc & (actual < ftol * cost) & (ratio > 0.25)
    if growing is not None:
        ft = ft & ~growing
    xt = active & (dx_norm < xtol * (xtol + x_norm))
    run = xp.full_like(info, _RUNNING)
    new = xp.where(ft, xp.full_like(info, _FTOL), run)
    new = xp.where(xt, xp.full_like(info, _XTOL), new)
    new = xp.where(ft & xt, xp.full_like(info, _FTOL_XTOL), new)
    # the step collapsed on a non-finite trial point: say so (status -4)
    new = xp.where(xt & ~finite, xp.full_like(info, _NONFINITE_TRIAL), new)
    new = xp.where((new == _RUNNING) & (nfev >= max_nfev),
                   xp.full_like(info, _MAX_NFEV), new)
    new = xp.where(active, new, run)
    return (xp.where(new != _RUNNING, new, info),
            active & (new == _RUNNING))


def checked_jacobian(xp, prob, X, F, J, nj, info, active, njev):
    """The Jacobian where ``nj``; non-finite ones raise (unbatched) or stop
    their problem with status -3 (batched). Returns ``(J, nj, info, active, njev)``."""
    B = X.shape[0]
    Jn = prob.jacobian(X, F)
    if not bool(xp.all(xp.isfinite(xp.where(nj[:, None, None], Jn, xp.zeros_like(Jn))))):
        if not prob.batched:
            raise ValueError("jac: the Jacobian has non-finite entries at the current point")
        # batched: these problems stop here (status -3), the others go on
        bad = nj & ~xp.all(xp.isfinite(xp.reshape(Jn, (B, -1))), axis=-1)
        njev = njev + xp.astype(bad, count_dtype(xp))
        info = xp.where(bad, xp.full_like(info, _NONFINITE_JAC), info)
        active = active & ~bad
        nj = nj & ~bad
        Jn = xp.where(bad[:, None, None], xp.zeros_like(Jn), Jn)
        if J is None:
            J = Jn
    njev = njev + xp.astype(nj, count_dtype(xp))
    J = Jn if J is None else xp.where(nj[:, None, None], Jn, J)
    return J, nj, info, active, njev


def run_gn(xp, prob, X, F, D, ftol, xtol, gtol, max_nfev, verbose, callback,
           want_history) -> Outcome:
    """Damped Gauss-Newton on the in-memory problem ``prob`` from ``X`` (B, n),
    ``F`` (B, m), scaling ``D`` (B, n); see the module notes."""
    B, n = X.shape
    dev = device(X)
    cost = prob.cost(F)
    izeros = xp.zeros((B,), dtype=count_dtype(xp), device=dev)
    nfev, njev, nit, info = izeros + 1, izeros, izeros, izeros
    active = xp.ones((B,), dtype=xp.bool, device=dev)
    need_jac = xp.ones((B,), dtype=xp.bool, device=dev)
    lam = xp.zeros((B,), dtype=X.dtype, device=dev)
    scale = xp.ones((B,), dtype=X.dtype, device=dev)
    J = Jm = Fm = w = c = V = good = free = None
    hist = []
    cb_stop = False
    it = 0
    while True:
        it += 1
        if bool(xp.any(need_jac & active)):
            J, nj, info, active, njev = checked_jacobian(xp, prob, X, F, J, need_jac & active,
                                                         info, active, njev)
            need_jac = need_jac & ~nj  # current now (not evaluated again for the result)
            Fm, Jm = prob.model_residuals(F, J)  # the robust loss's model (F, J without one)
            g = xp.matmul(Fm[:, None, :], Jm)[:, 0, :]
            free_n = prob.free_mask(X, g)
            free = free_n if free is None else xp.where(nj[:, None], free_n, free)
            gfree = xp.where(free, g, xp.zeros_like(g))
            conv_g = nj & (xp.max(xp.abs(gfree), axis=-1) < gtol)
            info = xp.where(conv_g, xp.full_like(info, _GTOL), info)
            active = active & ~conv_g
            if not bool(xp.any(active)):
                break
            w, c, V, good, _, _ = spectral(xp, Jm, D, Fm, free)
            scale = xp.where(nj, xp.max(w, axis=-1), scale)
            J, Jm, Fm, w, c, V, good, free, scale = prob.persist(J, Jm, Fm, w, c, V, good, free,
                                                                 scale)
        z, p = gn_step(xp, w, c, V, good, lam, D, free)
        Xt = xp.where(active[:, None], prob.project(X + p), X)
        p = Xt - X
        Ft = prob.residual(Xt)
        nfev = nfev + xp.astype(active, count_dtype(xp))
        cost_t = prob.cost(Ft)
        Jp = xp.matmul(Jm, p[:, :, None])[:, :, 0]
        pred = -(xp.sum(Fm * Jp, axis=-1) + 0.5 * xp.sum(Jp * Jp, axis=-1))
        actual, acc, ratio, finite = gn_ratio(xp, cost, cost_t, pred, active)
        dx_norm = xp.linalg.vector_norm(p, axis=-1)
        x_norm = xp.linalg.vector_norm(X, axis=-1)
        lam = gn_damping(xp, lam, scale, acc, active)
        X = xp.where(acc[:, None], Xt, X)
        F = xp.where(acc[:, None], Ft, F)
        info, active_n = gn_tests(xp, info, active, acc, actual, cost, ratio, dx_norm, x_norm,
                                  finite, nfev, ftol, xtol, max_nfev)
        cost = xp.where(acc, cost_t, cost)
        nit = nit + xp.astype(acc, count_dtype(xp))
        need_jac = xp.where(active, acc, need_jac)  # finished problems keep theirs
        active = active_n
        X, F, cost, lam, info, active, need_jac, nfev, nit = prob.persist(
            X, F, cost, lam, info, active, need_jac, nfev, nit)
        fnorm = xp.sqrt(2.0 * cost)
        if want_history:
            hist.append(history_entry(prob.batched, fnorm, nit, nfev))
        if verbose >= 2:
            print_iter(xp, prob.batched, it, fnorm, nfev, dx_norm)
        report_progress(xp, prob, it, fnorm, nfev, active)
        if callback is not None and call_callback(callback, prob.batched, X, fnorm, nit):
            cb_stop = True
            break
        if not bool(xp.any(active)):
            break
    return Outcome(X, F, J, info, nfev, njev, nit, need_jac, active, cb_stop, hist)


def run_gn_gram(hxp, prob, X, f, ff, D, jac_scale, ftol, xtol, gtol, max_nfev, verbose, callback,
                call_cb):
    """Damped Gauss-Newton of a tall problem (:class:`.tall.TallProblem`), one pass per iteration.

    ``call_cb(callback, x, cost, nit)`` reports to the user's callback (True stops).

    The trial point's pass also forms ``J^T J``, ``J^T f`` there (a
    speculative Jacobian: an accepted step needs nothing more). The step,
    ratio, damping and tests are :mod:`.gauss_newton`'s blocks on (1,) arrays.
    """
    dev = prob.dev
    f, J, A, g = prob._pending
    prob._pending = None

    def vec(v, dtype=None):
        return hxp.asarray([v], dtype=X.dtype if dtype is None else dtype, device=dev)

    cost = vec(0.5 * ff)
    one_i = hxp.ones((1,), dtype=hxp.int64, device=dev)
    nfev, njev, nit, info = one_i, one_i, one_i - 1, one_i - 1
    active = hxp.ones((1,), dtype=hxp.bool, device=dev)
    lam, scale = vec(0.0), vec(1.0)
    new_jac = True
    cb_stop = False
    it = 0
    while True:
        it += 1
        if new_jac:
            if jac_scale:
                d = hxp.linalg.diagonal(A)
                cn = hxp.sqrt(hxp.maximum(d, hxp.zeros_like(d)))[None, :]
                cn = hxp.where(cn == 0, hxp.ones_like(cn), cn)
                D = cn if it == 1 else hxp.maximum(D, cn)
            if float(hxp.max(hxp.abs(g))) < gtol:
                info = hxp.full_like(info, int(MinpackInfo.GTOL))
                break
            w, V, c, good, _ = gram_spectral(hxp, A[None, ...], g[None, :], D)
            scale = hxp.max(w, axis=-1)
            new_jac = False
        x = X[0, :]
        _, p = gn_step(hxp, w, c, V, good, lam, D)
        xt = x + p[0, :]
        p = (xt - x)[None, :]
        ft_, Jt, ff_t, At, gt = prob.one_pass(xt, gram=True)
        nfev, njev = nfev + 1, njev + 1
        cost_t = vec(0.5 * ff_t)
        pred = -(hxp.sum(g * p[0, :]) + 0.5 * hxp.sum(p[0, :] * hxp.matmul(A, p[0, :])))
        actual, acc, ratio, finite = gn_ratio(hxp, cost, cost_t, vec(float(pred)), active)
        dx_norm = hxp.linalg.vector_norm(p, axis=-1)
        x_norm = hxp.linalg.vector_norm(X, axis=-1)
        lam = gn_damping(hxp, lam, scale, acc, active)
        info, active = gn_tests(hxp, info, active, acc, actual, cost, ratio, dx_norm, x_norm,
                                finite, nfev, ftol, xtol, max_nfev)
        if bool(acc[0]):
            if not bool(hxp.all(hxp.isfinite(At))):
                raise ValueError("jac: the Jacobian has non-finite entries at the current point")
            X, f, J, A, g, cost = xt[None, :], ft_, Jt, At, gt, cost_t
            nit = nit + 1
            new_jac = True
        if verbose >= 2:
            prob.print_iter(it, hxp.sqrt(2.0 * cost), nfev, dx_norm)
        report_progress(hxp, prob, it, hxp.sqrt(2.0 * cost), nfev, active)
        if callback is not None and call_cb(callback, X[0, :], float(cost[0]), int(nit[0])):
            cb_stop = True
            break
        if not bool(active[0]):
            break
    prob.last_g = g
    need = hxp.zeros((1,), dtype=hxp.bool, device=dev)
    return Outcome(X, f, J, info, nfev, njev, nit, need, active, cb_stop, [], cost)
