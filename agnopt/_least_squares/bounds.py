r"""Bound constraints for the trust-region methods, batched over problems.

Shapes: ``X``, ``S``, ``G`` are ``(B, n)`` (one row per problem); ``lb``,
``ub`` are ``(B, n)`` or broadcast to it (``(n,)``); infinite entries mean no
bound. Every function works row by row with array expressions only, so a
batch of problems costs the same number of array operations as one.

The trust-region-reflective method (Branch, Coleman and Li, "A subspace,
interior, and conjugate gradient method for large-scale bound-constrained
minimization problems", SIAM J. Sci. Comput. 21(1), 1999) keeps iterates
strictly inside the box and scales the variables by the Coleman-Li vector
:math:`v` (:func:`coleman_li`): the distance to the bound that the
anti-gradient points to, so that variables near a bound they are pushed
against move little. A step that leaves the box is cut at the first bound
and, as an alternative, reflected there (:func:`select_reflective_step`);
the best of the cut step, the reflected step and the scaled anti-gradient
step under the quadratic model is taken. These are the rules of scipy's
``least_squares(method="trf")``, which this reproduces.
"""

from __future__ import annotations

from typing import Any

from .arrays import count_dtype

__all__ = [
    "active_constraints",
    "coleman_li",
    "dogleg_box_step",
    "evaluate_quadratic",
    "in_bounds",
    "line_quadratic",
    "minimize_line_quadratic",
    "select_reflective_step",
    "step_to_bound",
    "strictly_feasible",
    "to_trust_region",
]


def _dot(xp: Any, a: Any, b: Any) -> Any:
    """Row-wise dot products ``(B,)`` of ``(B, k)`` arrays."""
    return xp.sum(a * b, axis=-1)


def _mv(xp: Any, J: Any, s: Any) -> Any:
    """``J @ s`` row by row: ``(B, m, n) x (B, n) -> (B, m)``."""
    return xp.matmul(J, s[..., None])[..., 0]


def in_bounds(xp: Any, X: Any, lb: Any, ub: Any) -> Any:
    """``(B,)`` bool: the row lies in the closed box."""
    return xp.all((X >= lb) & (X <= ub), axis=-1)


def coleman_li(xp: Any, X: Any, G: Any, lb: Any, ub: Any) -> tuple[Any, Any]:
    """The Coleman-Li scaling vector ``v`` and its derivative ``dv`` (``(B, n)`` each).

    ``v_i = ub_i - x_i`` where the gradient is negative and ``ub_i`` finite
    (the anti-gradient points up, towards ``ub``), ``x_i - lb_i`` where it is
    positive and ``lb_i`` finite, else 1; ``dv_i`` is -1, 1 or 0 accordingly.
    """
    up = (G < 0) & xp.isfinite(ub)
    down = (G > 0) & xp.isfinite(lb)
    one = xp.ones_like(X)
    v = xp.where(up, ub - X, xp.where(down, X - lb, one))
    dv = xp.where(up, -one, xp.where(down, one, xp.zeros_like(X)))
    return v, dv


def step_to_bound(xp: Any, X: Any, S: Any, lb: Any, ub: Any) -> tuple[Any, Any]:
    """The step length ``t >= 0`` along ``S`` to the first bound, and which bounds it hits.

    Returns ``(t, hits)``: ``t`` ``(B,)`` (``inf`` where ``S`` is zero or points
    to no finite bound), ``hits`` ``(B, n)`` with -1 (lower), 1 (upper) or 0 for
    the components that reach their bound at ``t``.
    """
    nz = S != 0
    Ss = xp.where(nz, S, xp.ones_like(S))
    inf = xp.full_like(X, float("inf"))
    steps = xp.where(nz, xp.maximum((lb - X) / Ss, (ub - X) / Ss), inf)
    steps = xp.where(xp.isnan(steps), inf, steps)
    t = xp.min(steps, axis=-1)
    hits = xp.where((steps == t[..., None]) & nz, xp.sign(S), xp.zeros_like(S))
    return t, hits


def active_constraints(xp: Any, X: Any, lb: Any, ub: Any, rtol: float = 1e-10) -> Any:
    """``(B, n)`` ints: -1 where the lower bound is active, 1 the upper, else 0.

    A bound is active when ``x`` is within ``rtol * max(1, |bound|)`` of it and
    no farther from it than from the other bound (scipy's ``active_mask``).
    """
    lower_dist = X - lb
    upper_dist = ub - X
    if rtol == 0:
        lower = lower_dist <= 0
        upper = upper_dist <= 0
    else:
        lower = xp.isfinite(lb) & (lower_dist <= xp.minimum(upper_dist, rtol * xp.maximum(xp.ones_like(X), xp.abs(lb))))
        upper = xp.isfinite(ub) & (upper_dist <= xp.minimum(lower_dist, rtol * xp.maximum(xp.ones_like(X), xp.abs(ub))))
    zeros = xp.zeros(X.shape, dtype=count_dtype(xp), device=getattr(X, "device", None))
    out = xp.where(lower, zeros - 1, zeros)
    return xp.where(upper & ~lower, zeros + 1, out)


def strictly_feasible(xp: Any, X: Any, lb: Any, ub: Any, rstep: float = 1e-10) -> Any:
    """``X`` moved inside the box: at least ``rstep * max(1, |bound|)`` from an active bound.

    ``rstep = 0`` moves to the next representable number inside. Where the
    box is too tight for that, the middle of the box. A new array.
    """
    active = active_constraints(xp, X, lb, ub, rstep)
    lower = active == -1
    upper = active == 1
    if rstep == 0:
        inf = xp.full_like(X, float("inf"))
        up_x = xp.nextafter(xp.broadcast_to(lb, X.shape), inf)
        down_x = xp.nextafter(xp.broadcast_to(ub, X.shape), -inf)
    else:
        one = xp.ones_like(X)
        # infinite bounds are never active: finite stand-ins keep inf - inf out
        lbf = xp.where(xp.isfinite(lb), lb, xp.zeros_like(X))
        ubf = xp.where(xp.isfinite(ub), ub, xp.zeros_like(X))
        up_x = lbf + rstep * xp.maximum(one, xp.abs(lbf))
        down_x = ubf - rstep * xp.maximum(one, xp.abs(ubf))
    Xn = xp.where(lower, up_x, xp.where(upper, down_x, X))
    tight = (Xn < lb) | (Xn > ub)
    both = xp.isfinite(lb) & xp.isfinite(ub)
    mid = 0.5 * (xp.where(both, lb, xp.zeros_like(X)) + xp.where(both, ub, xp.zeros_like(X)))
    return xp.where(tight & both, mid, Xn)


def to_trust_region(xp: Any, P: Any, S: Any, delta: Any) -> tuple[Any, Any]:
    """The roots ``t1 <= t2`` of ``||P + t S|| = delta`` (``(B,)`` each).

    ``P`` must lie inside the region; rows with ``S = 0`` give ``(-inf, inf)``.
    The smaller-magnitude root is formed as ``c / q`` to avoid cancellation.
    """
    a = _dot(xp, S, S)
    b = _dot(xp, P, S)
    c = _dot(xp, P, P) - delta * delta
    d = xp.sqrt(xp.maximum(b * b - a * c, xp.zeros_like(a)))
    q = -(b + xp.where(b >= 0, d, -d))
    ok = (a > 0) & (q != 0)
    a_s = xp.where(ok, a, xp.ones_like(a))
    q_s = xp.where(ok, q, xp.ones_like(q))
    r1, r2 = q_s / a_s, c / q_s
    inf = xp.full_like(a, float("inf"))
    t1 = xp.where(ok, xp.minimum(r1, r2), -inf)
    t2 = xp.where(ok, xp.maximum(r1, r2), inf)
    return t1, t2


def line_quadratic(xp: Any, J: Any, g: Any, s: Any, diag: Any = None, s0: Any = None) -> tuple[Any, Any, Any]:
    """``(a, b, c)`` with ``q(s0 + t s) = a t^2 + b t + c`` for
    ``q(p) = 0.5 ||J p||^2 + 0.5 p^T diag(d) p + g^T p`` (``(B,)`` each).
    """
    v = _mv(xp, J, s)
    a = _dot(xp, v, v)
    if diag is not None:
        a = a + _dot(xp, s * diag, s)
    a = 0.5 * a
    b = _dot(xp, g, s)
    c = xp.zeros_like(a)
    if s0 is not None:
        u = _mv(xp, J, s0)
        b = b + _dot(xp, u, v)
        c = 0.5 * _dot(xp, u, u) + _dot(xp, g, s0)
        if diag is not None:
            b = b + _dot(xp, s0 * diag, s)
            c = c + 0.5 * _dot(xp, s0 * diag, s0)
    return a, b, c


def minimize_line_quadratic(xp: Any, a: Any, b: Any, lo: Any, hi: Any, c: Any = 0.0) -> tuple[Any, Any]:
    """Minimum of ``a t^2 + b t + c`` over ``lo <= t <= hi`` (finite): ``(t, value)``, ``(B,)`` each.

    The candidates are the two ends and, where it lies strictly inside, the
    stationary point ``-b / (2a)``; ties go to ``lo``, then ``hi``.
    """
    lo = lo + xp.zeros_like(a)
    hi = hi + xp.zeros_like(a)
    nz = a != 0
    ext = -b / (2.0 * xp.where(nz, a, xp.ones_like(a)))
    inside = nz & (ext > lo) & (ext < hi)

    def val(t):
        return t * (a * t + b) + c

    y_lo, y_hi = val(lo), val(hi)
    y_ext = xp.where(inside, val(ext), xp.full_like(a, float("inf")))
    t = xp.where(y_hi < y_lo, hi, lo)
    y = xp.minimum(y_lo, y_hi)
    t = xp.where(y_ext < y, ext, t)
    return t, xp.minimum(y, y_ext)


def evaluate_quadratic(xp: Any, J: Any, g: Any, s: Any, diag: Any = None) -> Any:
    """``0.5 ||J s||^2 + 0.5 s^T diag(d) s + g^T s`` per row (``(B,)``)."""
    v = _mv(xp, J, s)
    q = _dot(xp, v, v)
    if diag is not None:
        q = q + _dot(xp, s * diag, s)
    return 0.5 * q + _dot(xp, g, s)


def select_reflective_step(xp: Any, X: Any, J_h: Any, diag_h: Any, g_h: Any, P: Any, P_h: Any,
                           d: Any, delta: Any, lb: Any, ub: Any, theta: Any) -> tuple[Any, Any, Any]:
    """The trust-region-reflective step: ``(step, step_h, predicted_reduction)``.

    ``P`` is the trust-region step in the original variables and ``P_h = P / d``
    in the scaled ones (``d`` the scaling, ``(B, n)``), ``J_h = J diag(d)``,
    ``g_h = d * g``, ``diag_h`` the Coleman-Li diagonal; ``delta`` and
    ``theta`` (the step-back factor, close to 1) are ``(B,)``. Rows whose
    step stays in the box take it. Other rows compare, under the quadratic
    model, (1) the step cut at the first bound and pulled back by ``theta``,
    (2) the cut step continued along its reflection at that bound, and (3)
    the scaled anti-gradient step kept inside the box and the trust region,
    and take the best. The predicted reduction is minus the model value, so
    it is positive for any step that the model says is downhill.
    """
    inside = in_bounds(xp, X + P, lb, ub)
    value_p_full = evaluate_quadratic(xp, J_h, g_h, P_h, diag_h)

    # (1) and (2): cut at the first bound, reflect there
    p_stride, hits = step_to_bound(xp, X, P, lb, ub)
    p_stride = xp.where(xp.isfinite(p_stride), p_stride, xp.ones_like(p_stride))
    R_h = xp.where(hits != 0, -P_h, P_h)
    R = d * R_h
    Pc = P * p_stride[..., None]
    Pc_h = P_h * p_stride[..., None]
    _, to_tr = to_trust_region(xp, Pc_h, R_h, delta)
    to_bound, _ = step_to_bound(xp, X + Pc, R, lb, ub)
    r_stride = xp.minimum(to_bound, to_tr)
    pos = r_stride > 0
    r_safe = xp.where(pos, r_stride, xp.ones_like(r_stride))
    r_lo = xp.where(pos, (1.0 - theta) * p_stride / r_safe, xp.zeros_like(r_stride))
    r_hi = xp.where(pos, xp.where(r_stride == to_bound, theta * to_bound, to_tr), -xp.ones_like(r_stride))
    has_r = r_lo <= r_hi
    a, b, c = line_quadratic(xp, J_h, g_h, R_h, diag_h, s0=Pc_h)
    lo_s = xp.where(has_r, r_lo, xp.zeros_like(r_lo))
    hi_s = xp.where(has_r & xp.isfinite(r_hi), r_hi, lo_s)
    t_r, value_r = minimize_line_quadratic(xp, a, b, lo_s, hi_s, c)
    value_r = xp.where(has_r, value_r, xp.full_like(value_r, float("inf")))
    Rs_h = R_h * t_r[..., None] + Pc_h
    Rs = Rs_h * d
    Pc = Pc * theta[..., None]
    Pc_h = Pc_h * theta[..., None]
    value_p = evaluate_quadratic(xp, J_h, g_h, Pc_h, diag_h)

    # (3): the scaled anti-gradient, inside the box and the region
    ag_h = -g_h
    ag = d * ag_h
    gn = xp.sqrt(_dot(xp, ag_h, ag_h))
    to_tr_g = delta / xp.where(gn > 0, gn, xp.ones_like(gn))
    to_bound_g, _ = step_to_bound(xp, X, ag, lb, ub)
    ag_max = xp.where(to_bound_g < to_tr_g, theta * to_bound_g, to_tr_g)
    a, b, _ = line_quadratic(xp, J_h, g_h, ag_h, diag_h)
    t_g, value_g = minimize_line_quadratic(xp, a, b, xp.zeros_like(ag_max), ag_max)
    ag_h = ag_h * t_g[..., None]
    ag = ag * t_g[..., None]

    take_p = (value_p < value_r) & (value_p < value_g)
    take_r = ~take_p & (value_r < value_p) & (value_r < value_g)
    col = lambda m: m[..., None]  # noqa: E731
    step = xp.where(col(take_p), Pc, xp.where(col(take_r), Rs, ag))
    step_h = xp.where(col(take_p), Pc_h, xp.where(col(take_r), Rs_h, ag_h))
    value = xp.where(take_p, value_p, xp.where(take_r, value_r, value_g))
    # rows whose full step stays in the box
    step = xp.where(col(inside), P, step)
    step_h = xp.where(col(inside), P_h, step_h)
    value = xp.where(inside, value_p_full, value)
    return step, step_h, -value


def dogleg_box_step(xp: Any, X: Any, newton: Any, G: Any, a: Any, b: Any, tr_bounds: Any,
                    lb: Any, ub: Any, free: Any) -> tuple[Any, Any, Any]:
    """The dogleg step in the intersection of a box trust region and the bounds (dogbox).

    Voglis and Lagaris, "A rectangular trust region dogleg approach for
    unconstrained and bound constrained nonlinear optimization" (2004), as
    scipy's ``method="dogbox"``. Per row: the Gauss-Newton step ``newton`` if
    it lies in the region ``[max(lb - x, -tr), min(ub - x, tr)]``, else the
    Cauchy point (the minimum of the model ``a t^2 + b t`` along ``-g`` inside
    the region) continued towards ``newton`` up to the region's boundary.
    Variables outside ``free`` (``(B, n)`` bool; the active set) do not move:
    their ``newton`` and ``G`` entries must be 0.

    Returns ``(step, bound_hits, tr_hit)``: ``bound_hits`` ``(B, n)`` -1/1
    where the step ends on an original lower/upper bound, 0 elsewhere (and
    for fixed variables); ``tr_hit`` ``(B,)`` whether it ends on the trust
    region's boundary.
    """
    lb_c, ub_c = lb - X, ub - X
    lo = xp.maximum(lb_c, -tr_bounds)
    hi = xp.minimum(ub_c, tr_bounds)
    orig_l, orig_u = lo == lb_c, hi == ub_c
    tr_l, tr_u = lo == -tr_bounds, hi == tr_bounds
    zeros = xp.zeros_like(X)
    izeros = xp.zeros(X.shape, dtype=count_dtype(xp), device=getattr(X, "device", None))
    inside = in_bounds(xp, newton, lo, hi)
    to_b, _ = step_to_bound(xp, zeros, -G, lo, hi)
    to_b = xp.where(xp.isfinite(to_b), to_b, xp.zeros_like(to_b))
    t, _ = minimize_line_quadratic(xp, a, b, xp.zeros_like(to_b), to_b)
    cauchy = -t[..., None] * G
    diff = newton - cauchy
    size, hits = step_to_bound(xp, cauchy, diff, lo, hi)
    size = xp.where(xp.isfinite(size), size, xp.zeros_like(size))
    dog = cauchy + size[..., None] * diff
    hits_f = xp.where(free, hits, xp.zeros_like(hits))
    bh = xp.where((hits_f < 0) & orig_l, izeros - 1, xp.where((hits_f > 0) & orig_u, izeros + 1, izeros))
    tr_hit = xp.any(((hits_f < 0) & tr_l) | ((hits_f > 0) & tr_u), axis=-1)
    col = inside[..., None]
    return (xp.where(col, newton, dog), xp.where(col, izeros, bh), xp.where(inside, False, tr_hit))
