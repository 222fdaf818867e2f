r"""Is an ``xtol`` stop (status 3 or 4) a converged point? The check behind ``Status.NOT_STATIONARY``.

The ``xtol`` test of every method (lm, gauss-newton, trf, dogbox; scipy's
and MINPACK's) fires when a step is short. A step is short either because
the iterate is next to a minimizer, or because the trust region (the
damping) collapsed after trial steps kept failing: a wrong or inaccurate
Jacobian (finite differences of a badly scaled model), non-smooth or noisy
residuals, or a saturated model whose gradient underflows (a plateau:
``exp(-x b)`` with ``b`` large). scipy reports both as success (status 3).
:func:`xtol_not_stationary` tells them apart at the final point, for each
problem that stopped with status ``XTOL`` or ``FTOL_XTOL`` (the ``ftol``
test fired with it: on a collapsed radius the damped step predicts no
reduction either; lm from NIST BoxBOD's ``b = [1, 5]``, or from its start 1
with MINPACK's initial radius, factor 100, stops so on the plateau
``b2 -> inf``); a stop is kept as converged when one of the three holds:

1. **first-order**: the residual ``f`` is orthogonal to every Jacobian
   column ``J_j`` of a variable not held at a bound, to within
   ``100 sqrt(eps)``: ``|J_j^T f| <= tau ||J_j|| ||f||`` (MINPACK's scaled
   gradient, the cosine of the angle between ``f`` and ``J_j``; invariant
   under scaling of ``f`` and of each variable; a column that is exactly 0
   carries no direction and is skipped); ``tau = 100 sqrt(eps)`` leaves a
   factor 100 for the error of a forward-difference Jacobian;
2. **the model's own minimizer is within xtol**: the minimum-norm
   Gauss-Newton step ``p = -J_free^+ f`` on the free variables (solved
   with each column scaled to a largest entry of 1, so that a nearly
   vanishing column is not dropped as rank-deficient) satisfies
   ``||p|| <= 10 xg (xg + ||x||)`` with ``xg = max(xtol, sqrt(eps))`` (a
   zero-residual problem: there ``f ~ J (x - x*)`` is not orthogonal to
   ``J``, but ``x`` is within the tolerance of ``x*``; ``sqrt(eps)``, the
   accuracy to which a minimizer is determined in general, is the floor,
   as at the rounding level of ``f`` the step is rounding noise amplified
   by the Jacobian's condition number).

3. **a zero residual**: ``||f|| <= 10 eps ||J x||``, the residuals at the
   rounding level of the model's linear part: a global minimum whatever the
   Jacobian's rank (a Gaussian peak fitted to flat data: the amplitude goes
   to 0, the centre and width columns with it, and the Gauss-Newton step in
   them is rounding noise divided by those columns).

Otherwise the status becomes ``Status.NOT_STATIONARY`` (-6, ``success =
False``); ``x`` and the other fields are unchanged. With bounds, a variable
within ``max(xtol, sqrt(eps)) max(1, |bound|)`` of a bound that the
anti-gradient pushes against is held and left out of both tests. The robust
loss's model (``f``, ``J`` scaled by :func:`.losses.robust_model`) is used.
Not checked: ``ftol``-only (2) and ``gtol`` (1) stops. The test above
misjudges a large-residual minimum where a Jacobian column vanishes (``x^2
+ c`` at ``x = 0``: the cosine is 1 and the Gauss-Newton step unbounded,
though the cost's curvature ``c f''`` is positive); such minima end on
``ftol`` or ``gtol``, rarely on ``xtol``, and such an ``xtol`` stop is a false
alarm (``x^2 + 0.001`` from 0.5, trf or dogbox, ``x_scale="jac"``,
tolerances 1e-15: -6 at ``x = -2e-10``; telling it from a plateau needs the
curvature, i.e. second derivatives). What first-order information cannot see stays status 3: a column that is
exactly 0 in floating point (the residuals do not depend on that variable
at all there, e.g. dogbox with ``x_scale="jac"`` from MGH17's first start,
where both exponentials underflow to 0 at every data point but ``x = 0``),
and a stationary point of an inaccurate Jacobian (``jac="3-point"`` on
Kirby2's second start: scipy's relative step is too large for its small
parameters).

Columns and residuals are scaled by their largest entry before any product,
so nothing under- or overflows. The tall (Dask) path has only ``J^T J``,
``J^T f`` and ``||f||^2`` in memory: :func:`xtol_not_stationary_gram` makes
the same two tests from them (the Gauss-Newton step by the eigenvalues of
the column-scaled ``J^T J``, eigenvalues below ``eps`` of the largest
dropped, which drops more than the SVD and so flags less, never more).
"""

from __future__ import annotations

from .._core.backend import compiled
from .._core.status import Status
from .arrays import device, host_linalg
from .batched import compactable, positions, rows_where, scatter
from .losses import robust_model

__all__ = ["xtol_not_stationary", "xtol_not_stationary_gram"]


def _cosines(xp, Fh, Jl, free):
    """``(k,)`` the largest ``|J_j^T f| / (||J_j|| ||f||)`` over the free,
    nonzero columns (0 where ``f`` is 0)."""
    cmax = xp.max(xp.abs(Jl), axis=-2)  # (k, n)
    live = free & (cmax > 0)
    A = Jl / xp.where(live, cmax, xp.ones_like(cmax))[:, None, :]
    fmax = xp.max(xp.abs(Fh), axis=-1)  # (k,)
    f = Fh / xp.where(fmax > 0, fmax, xp.ones_like(fmax))[:, None]
    dot = xp.abs(xp.matmul(f[:, None, :], A)[:, 0, :])
    an = xp.linalg.vector_norm(A, axis=-2)
    fn = xp.linalg.vector_norm(f, axis=-1)[:, None]
    den = an * fn
    cos = xp.where(live & (den > 0), dot / xp.where(den > 0, den, xp.ones_like(den)),
                   xp.zeros_like(dot))
    return xp.max(cos, axis=-1)


def _gauss_newton_norm(xp, Fh, Jl, free):
    """``(k,)`` the length of the minimum-norm solution of ``J_free p = -f``,
    solved with the columns scaled to a largest entry of 1 (a variable's
    direction counts whatever its scale) and singular values below
    ``eps s_max`` dropped (as ``lstsq``); exactly zero columns stay 0."""
    cmax = xp.max(xp.abs(Jl), axis=-2)  # (k, n)
    live = free & (cmax > 0)
    cs = xp.where(live, cmax, xp.ones_like(cmax))
    A = xp.where(live[:, None, :], Jl / cs[:, None, :], xp.zeros_like(Jl))
    U, s, Vt = host_linalg(xp, "svd", A, full_matrices=False)
    eps = float(xp.finfo(A.dtype).eps)
    good = s > eps * s[:, 0:1]
    ur = xp.matmul(Fh[:, None, :], U)[:, 0, :]
    coef = xp.where(good, ur / xp.where(good, s, xp.ones_like(s)), xp.zeros_like(s))
    p = xp.matmul(coef[:, None, :], Vt)[:, 0, :] / cs
    return xp.linalg.vector_norm(p, axis=-1)


def xtol_not_stationary(xp, status, X, F, J, lb, ub, bounded, loss, f_scale, xtol,
                        model_jac=False):
    """``status`` (k,) with ``Status.NOT_STATIONARY`` where an ``XTOL`` or
    ``FTOL_XTOL`` stop is not a converged point (module notes). ``X`` (k, n), ``F`` (k, m) the true
    residuals, ``J`` (k, m, n) the Jacobian (the loss's model Jacobian when
    ``model_jac``), ``lb``, ``ub`` broadcast to ``X`` (used when ``bounded``).
    Two blocks (one compiled program each on JAX), with the host reads that
    skip them between. A batch checks its ``XTOL`` / ``FTOL_XTOL`` rows alone,
    gathered where the backend allows it (:func:`.batched.compactable`; each row's
    tests read that row only, so the verdicts are the same)."""
    # status 4 (ftol and xtol) is an xtol stop too: BoxBOD's saturated model
    # from NIST's start 1 with MINPACK's initial radius (factor 100)
    check = (status == int(Status.XTOL)) | (status == int(Status.FTOL_XTOL))
    if not bool(xp.any(check)):
        return status
    k = status.shape[0]
    if k > 1 and compactable(xp):
        # the xtol stops' rows alone (usually a few of a batch: most stop on ftol);
        # each row's tests use that row only, so its numbers do not change
        idx = rows_where(xp, check)
        if idx.shape[0] < k:
            def sub(a):
                return xp.take(a, idx, axis=0)
            if bounded:
                lb, ub = sub(xp.broadcast_to(lb, X.shape)), sub(xp.broadcast_to(ub, X.shape))
            s = xtol_not_stationary(xp, sub(status), sub(X), sub(F), sub(J), lb, ub, bounded,
                                    loss, f_scale, xtol, model_jac)
            mask, pos = positions(xp, idx, k, device(status))
            return scatter(xp, status, s, mask, pos)
    bad, Fh, Jl, free = _first_order_test(xp, check, X, F, J, lb, ub, bounded, loss, f_scale,
                                          xtol, model_jac)
    if bool(xp.any(bad)):
        bad = _near_test(xp, bad, X, Fh, Jl, free, xtol)
    return xp.where(bad, xp.full_like(status, int(Status.NOT_STATIONARY)), status)


def first_order_test(xp, check, X, F, J, lb, ub, bounded, loss, f_scale, xtol, model_jac):
    """The first test of :func:`xtol_not_stationary`: ``bad`` (k,), the ``XTOL``
    stops (``check``) whose residual is not orthogonal to the free columns, and
    the loss's model ``Fh``, ``Jl`` and the free variables for the second."""
    Fh, Jl = robust_model(xp, loss, F, None if model_jac else J, f_scale)
    Jl = J if model_jac else Jl
    eps = float(xp.finfo(X.dtype).eps)
    xt = max(0.0 if xtol is None else float(xtol), eps)
    free = xp.ones(X.shape, dtype=xp.bool, device=getattr(X, "device", None))
    if bounded:
        g = xp.matmul(Fh[:, None, :], Jl)[:, 0, :]
        rt = max(xt, eps ** 0.5)
        one = xp.ones_like(X)
        lbf = xp.where(xp.isfinite(lb), lb, xp.zeros_like(X))
        ubf = xp.where(xp.isfinite(ub), ub, xp.zeros_like(X))
        at_lb = xp.isfinite(lb) & (X - lbf <= rt * xp.maximum(one, xp.abs(lbf))) & (g > 0)
        at_ub = xp.isfinite(ub) & (ubf - X <= rt * xp.maximum(one, xp.abs(ubf))) & (g < 0)
        free = ~(at_lb | at_ub)
    first_order = _cosines(xp, Fh, Jl, free) <= 100.0 * eps ** 0.5
    return check & ~first_order, Fh, Jl, free


def near_test(xp, bad, X, Fh, Jl, free, xtol):
    """The second test of :func:`xtol_not_stationary`: ``bad`` (k,) without the
    stops within ``10 t (t + ||x||)`` of the Gauss-Newton point."""
    eps = float(xp.finfo(X.dtype).eps)
    xnorm = xp.linalg.vector_norm(X, axis=-1)
    xg = max(0.0 if xtol is None else float(xtol), eps, eps ** 0.5)
    near = _gauss_newton_norm(xp, Fh, Jl, free) <= 10.0 * xg * (xg + xnorm)
    # a zero residual to working precision, ||f|| <= 10 eps ||J x|| (the residuals at
    # the rounding level of the model's linear part): a global minimum, whatever the
    # Jacobian's rank (there the Gauss-Newton step is rounding noise divided by a
    # nearly vanishing column: a Gaussian whose amplitude fitted to 0)
    jx = xp.linalg.vector_norm(xp.matmul(Jl, X[:, :, None])[:, :, 0], axis=-1)
    zero = xp.linalg.vector_norm(Fh, axis=-1) <= 10.0 * eps * jx
    return bad & ~(near | zero)


# one compiled program each on JAX (agnopt._core.backend.compiled), as written elsewhere
_first_order_test = compiled(first_order_test, static=("bounded", "loss", "f_scale", "xtol",
                                                       "model_jac"))
_near_test = compiled(near_test, static=("xtol",))


def xtol_not_stationary_gram(xp, status: int, x, A, g, ff: float, xtol) -> int:
    """The check of :func:`xtol_not_stationary` for one problem from its
    normal equations: ``x`` (n,), ``A = J^T J`` (n, n), ``g = J^T f`` (n,),
    ``ff = ||f||^2``; no bounds, no loss (the tall path). Returns the status."""
    if status not in (int(Status.XTOL), int(Status.FTOL_XTOL)) or ff <= 0.0:
        return status
    eps = float(xp.finfo(x.dtype).eps)
    cn2 = xp.linalg.diagonal(A) if hasattr(xp.linalg, "diagonal") else xp.diagonal(A)
    live = cn2 > 0
    cn = xp.sqrt(xp.where(live, cn2, xp.ones_like(cn2)))
    cos = xp.where(live, xp.abs(g) / (cn * ff ** 0.5), xp.zeros_like(g))
    if float(xp.max(cos)) <= 100.0 * eps ** 0.5:
        return status
    if ff <= (10.0 * eps) ** 2 * float(xp.sum(x * xp.matmul(A, x))):  # zero residual (near_test)
        return status
    sc = xp.where(live, 1.0 / cn, xp.zeros_like(cn))
    w, V = xp.linalg.eigh(A * sc[:, None] * sc[None, :])
    good = w > eps * xp.max(w)
    c = xp.matmul(g * sc, V)
    q = xp.where(good, c / xp.where(good, w, xp.ones_like(w)), xp.zeros_like(w))
    pn = float(xp.linalg.vector_norm(sc * xp.matmul(V, q)))
    xt = max(0.0 if xtol is None else float(xtol), eps ** 0.5)
    if pn <= 10.0 * xt * (xt + float(xp.linalg.vector_norm(x))):
        return status
    return int(Status.NOT_STATIONARY)
