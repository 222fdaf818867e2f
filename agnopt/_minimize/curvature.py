r"""Second-order test of a stationary point, and the step off a saddle.

The rule (every method): a point where a success test fired (the gradient
test, or the step test ``xtol``) is reported as a minimum only if the
curvature there is non-negative:

* ``method="newton"`` (the Hessian is at hand): the checked Cholesky
  factorization of :math:`H + \delta I` succeeds, :math:`\delta =
  \sqrt{\epsilon}\max_{ij}|H_{ij}|` (positive semidefinite to rounding); if
  it fails, the eigenvector :math:`d` of the smallest eigenvalue
  :math:`\lambda_{min}` (``xp.linalg.eigh``) is a direction of negative
  curvature when :math:`\lambda_{min} < -\delta`.
* ``method="newton-cg"`` (Hessian-vector products only): CG on :math:`H z =
  v` from a fixed irregular vector :math:`v_j = \cos(2.4\,j + 1)`, at most
  ``min(cg_maxiter, n)`` products (the dimension of the Krylov space),
  stopped on convergence; a CG direction with :math:`d^THd < -\sqrt{\epsilon}
  \max_k |d_k^THd_k| / \|d_k\|^2 \cdot \|d\|^2` is a direction of negative
  curvature. This sees negative curvature wherever the Krylov space of
  :math:`v` reaches it (an eigenvector exactly orthogonal to :math:`v` is
  missed).

Where negative curvature is found, the solver moves along :math:`\pm d`
(sign making :math:`g^Td \le 0`) as trust-region and curvilinear-search
methods do (Moré & Sorensen, "On the use of directions of negative curvature
in a modified Newton method", Math. Prog. 16 (1979) 1-20): from
:math:`\alpha_0 = \max(1, \|x\|_\infty) / \|d\|_\infty`, halving until
:math:`f(x + \alpha d) \le f(x) + c_1(\alpha g^Td + \tfrac12\alpha^2 d^THd)`
(a strict decrease, since :math:`d^THd < 0`); the step counts as an
iteration and the method goes on from the new point. If no such step is
found in ``max_backtracks`` trials the result is status 3 (not success).
The test costs one more Hessian (newton) or up to ``n`` products
(newton-cg) at the final point, counted in ``nhev``.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from .._core.linalg import cholesky
from .common import _after_step, _back, _cached_gnorm, _floats, _local, _persist

_NONFINITE = "nonfinite"


def _hessian_direction(P: Any, x: Any, g: Any) -> tuple[Any, float] | str | None:
    """``(d, d^T H d)`` of negative curvature from the dense Hessian, None, or 'nonfinite'."""
    xp = P.xp
    H = P.hessian(x, g)
    xl, Hl = _local(xp, H)
    if cholesky(xl, Hl) is not None:  # positive definite: the common case, one factorization
        return None  # (an accepted factor proves H finite: see agnopt._core.linalg)
    if not bool(xl.all(xl.isfinite(Hl))):
        return _NONFINITE
    n = Hl.shape[0]
    hmax = float(xl.max(xl.abs(Hl)))
    delta = float(xl.finfo(Hl.dtype).eps) ** 0.5 * max(hmax, 1e-300)
    eye = xl.eye(n, dtype=Hl.dtype, device=array_api_compat.device(Hl))
    if cholesky(xl, Hl + delta * eye) is not None:
        return None
    w, V = xl.linalg.eigh(Hl)
    lam = float(w[0])
    if not lam < -delta:
        return None
    return _back(xp, V[:, 0], P.dtype, P.device), lam * float(xl.sum(V[:, 0] * V[:, 0]))


def _cg_direction(P: Any, x: Any, g: Any, maxit: int) -> tuple[Any, float] | str | None:
    """``(d, d^T H d)`` of negative curvature met by CG on ``H z = v``, None, or 'nonfinite'."""
    xp = P.xp
    n = P.n
    v = xp.cos(2.4 * xp.arange(n, dtype=P.dtype, device=P.device) + 1.0)
    r = v
    d = v
    rr = float(xp.sum(r * r))
    stop = P.eps * rr  # ||r|| <= sqrt(eps) ||v||
    sqeps = P.eps ** 0.5
    scale = 0.0
    for _ in range(maxit):
        Hd = _persist(P.hvp(x, g, d))
        dHd, dd = _floats(xp.sum(d * Hd), xp.sum(d * d))
        if not (math.isfinite(dHd) and math.isfinite(dd)):
            return _NONFINITE
        if dd == 0.0:
            return None
        scale = max(scale, abs(dHd) / dd)
        if dHd < -sqeps * scale * dd:
            return d, dHd
        if dHd <= sqeps * scale * dd:
            return None  # (numerically) zero curvature: CG cannot go on
        a = rr / dHd
        r = _persist(r - a * Hd)
        rr_new = float(xp.sum(r * r))
        if rr_new <= stop:
            return None
        d = _persist(r + (rr_new / rr) * d)
        rr = rr_new
    return None


def _escape(P: Any, x: Any, f: Any, g: Any, d: Any, dHd: float, c1: float, max_bt: int):
    """Backtracking along the negative-curvature direction; ``(alpha, x, f)`` or None."""
    xp = P.xp
    gd, dmax, xmax, f0 = _floats(xp.sum(g * d), xp.max(xp.abs(d)), xp.max(xp.abs(x)), f)
    if gd > 0:
        d, gd = -d, -gd
    alpha = max(1.0, xmax) / dmax
    for _ in range(max_bt):
        xt = _persist(x + alpha * d)
        ft = P.value(xt)
        ftf = float(ft)
        if math.isfinite(ftf) and ftf <= f0 + c1 * (alpha * gd + 0.5 * alpha * alpha * dHd):
            return alpha, xt, ft
        alpha *= 0.5
    return None


def settle(P: Any, state: dict) -> bool:
    """Called when a success test fired (``state["status"]`` 0 or 2).

    Returns True when the solver stops (the point has non-negative curvature,
    or a final status 1, 3 or 4 was set), False after a step along a
    direction of negative curvature (the method's loop goes on).
    """
    ctx = state["ctx"]
    while True:
        x, f, g = state["x"], state["f"], state["g"]
        if ctx["mode"] == "hessian":
            found = _hessian_direction(P, x, g)
            extra = {"tau": math.nan}
        else:
            found = _cg_direction(P, x, g, min(ctx["cg_maxiter"], P.n))
            extra = {"cg_iter": 0}
        if found is None:
            return True
        if isinstance(found, str):  # _NONFINITE
            state["status"] = 4
            return True
        if state["nit"] >= ctx["maxiter"]:
            state["status"] = 1
            return True
        d, dHd = found
        ls = _escape(P, x, f, g, d, dHd, ctx["c1"], ctx["max_bt"])
        if ls is None:
            state["status"] = 3
            return True
        alpha, x_new, f_new = ls
        state["status"] = None
        if not _after_step(P, state, x_new, f_new, ctx["xtol"], ctx["history"], extra,
                           ctx["callback"], alpha):
            return False
        if state["status"] not in (0, 2):
            return True


def iteration_gate(P: Any, state: dict, gtol: float, maxiter: int) -> bool | None:
    """The tests every method makes before computing a step.

    Returns True when the solver stops here (the gradient test at a point of
    non-negative curvature, or ``maxiter``), False when :func:`settle` moved
    off a point of negative curvature (test again), None to go on with a step.
    """
    if _cached_gnorm(P.xp, state) <= gtol:
        state["status"] = 0
        return settle(P, state)
    if state["nit"] >= maxiter:
        state["status"] = 1
        return True
    return None


def iterations(P: Any, state: dict, gtol: float, maxiter: int):
    """The iterations of a method: yields ``(x, f, g)`` of the current point until
    :func:`iteration_gate` stops the solver (after :func:`settle` moved off a point of
    negative curvature, the gate is asked again)."""
    while True:
        gate = iteration_gate(P, state, gtol, maxiter)
        if gate:
            return
        if gate is None:
            yield state["x"], state["f"], state["g"]


def settled(P: Any, state: dict) -> bool:
    """After ``_after_step`` stopped the solver: True unless it stopped on a
    success test at a point of negative curvature and moved off it."""
    return state["status"] not in (0, 2) or settle(P, state)
