r"""Line-search Newton with a Hessian modification (``method="newton"``).

Nocedal & Wright, *Numerical Optimization*, 2nd ed., Alg. 3.2 with Alg. 3.3
(Cholesky with added multiple of the identity); the optional Moore-Penrose
step :math:`-H^{\dagger} g` (``options={"solver": "pinv"}``). The rules are
in the docstring of :mod:`agnopt._minimize.driver`.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from .._core.linalg import cho_solve, cholesky
from .certify import rounding_stall, stall
from .curvature import iterations, settled as _settled
from .common import _after_step, _back, _local
from .line_search import _line_search


def _newton_step(
    xp: Any, H: Any, g: Any, solver: str, pinv_rtol: float | None, dtype: Any, device: Any
) -> tuple[Any, float, str]:
    """The Newton direction and the shift ``tau`` used (see module docstring).

    Returns ``(p, tau, how)`` where ``how`` is ``"cholesky"``, ``"damped"``,
    ``"pinv"``, ``"steepest"`` (the last only if every factorization
    failed), or ``"nonfinite"`` with ``p = None`` where ``H`` has a
    non-finite entry (checked only when the plain factorization fails: an
    accepted factor proves ``H`` finite).
    """
    xl, Hl = _local(xp, H)
    gl = _local(xp, g)[1]
    n = Hl.shape[0]
    if solver == "pinv":
        if not bool(xl.all(xl.isfinite(Hl))):
            return None, math.inf, "nonfinite"
        # The seed's step, used where H is positive semidefinite to within
        # sqrt(eps) max|H_ij| (tested by a Cholesky factorization of the
        # shifted matrix); on an indefinite H, -H^+ g heads for saddle
        # points, and the modified Cholesky below is used instead.
        hmax = float(xl.max(xl.abs(Hl)))
        eye = xl.eye(n, dtype=Hl.dtype, device=array_api_compat.device(Hl))
        delta = float(xl.finfo(Hl.dtype).eps) ** 0.5 * max(hmax, 1e-300)
        if cholesky(xl, Hl + delta * eye) is not None:
            if pinv_rtol is None:
                Hp = xl.linalg.pinv(Hl)
            else:
                Hp = xl.linalg.pinv(Hl, rtol=pinv_rtol)
            p = -(Hp @ gl)
            if bool(xl.all(xl.isfinite(p))) and float(xl.sum(p * gl)) < 0:
                return _back(xp, p, dtype, device), 0.0, "pinv"
    dmin = float(xl.min(xl.linalg.diagonal(Hl)))
    tau = 0.0
    if dmin > 0:  # the common case: no shift, no identity matrix, no max|H|
        # an accepted factor proves H finite (see agnopt._core.linalg): no scan of H first
        p = _cholesky_step(xl, Hl, gl)
        if p is not None:
            return _back(xp, p, dtype, device), 0.0, "cholesky"
    if solver != "pinv" and not bool(xl.all(xl.isfinite(Hl))):
        return None, math.inf, "nonfinite"
    hmax = float(xl.max(xl.abs(Hl)))
    eye = xl.eye(n, dtype=Hl.dtype, device=array_api_compat.device(Hl))
    tiny = float(xl.finfo(Hl.dtype).smallest_normal) ** 0.5
    beta = 1e-3 * max(hmax, tiny)
    tau = beta if dmin > 0 else beta - dmin
    for _ in range(200):
        p = _cholesky_step(xl, Hl + tau * eye, gl)
        if p is not None:
            return _back(xp, p, dtype, device), tau, "damped"
        tau = max(2.0 * tau, beta)
        if not math.isfinite(tau):
            break
    return -g, math.inf, "steepest"


def _cholesky_step(xl: Any, A: Any, g: Any) -> Any | None:
    """``-A^{-1} g`` by the checked Cholesky factorization, or None where ``A``
    is not positive definite or the step is not finite."""
    L = cholesky(xl, A)
    if L is None:
        return None
    p = cho_solve(xl, L, g)  # None: a singular triangular factor
    if p is None or not bool(xl.all(xl.isfinite(p))):
        return None
    return -p


def full_step(P, x, g, options) -> Any | None:
    """The full step the iteration would take at ``x`` (before any line
    search), or None where the Hessian there is not finite: the stationarity
    check of an ``xtol`` stop (:func:`agnopt._minimize.common._xtol_status`)."""
    xp = P.xp
    H = P.hessian(x, g)
    p, _, how = _newton_step(
        xp, H, g, options.get("solver", "cholesky"), options.get("pinv_rtol"), P.dtype, P.device
    )
    if how == "nonfinite":
        return None
    if not (float(xp.sum(g * p)) < 0):
        return -g
    return p


def _run_newton(P, state, options, gtol, xtol, maxiter, c1, max_bt, history, callback):
    xp = P.xp
    solver = options.get("solver", "cholesky")
    if solver not in ("cholesky", "pinv"):
        raise ValueError(f"options['solver'] must be 'cholesky' or 'pinv'; got {solver!r}")
    pinv_rtol = options.get("pinv_rtol")
    state["gtol"] = gtol
    for x, f, g in iterations(P, state, gtol, maxiter):
        H = P.hessian(x, g)
        p, tau, how = _newton_step(xp, H, g, solver, pinv_rtol, P.dtype, P.device)
        if how == "nonfinite":
            state["status"] = 4
            return
        gp = float(xp.sum(g * p))
        if not (gp < 0):
            p, gp, tau = -g, -float(xp.sum(g * g)), math.inf
        ls = _line_search(P, x, f, p, gp, c1, max_bt)
        if ls is None:
            stall(P, state, 3)
            return
        alpha, x_new, f_new = ls
        stop = _after_step(P, state, x_new, f_new, xtol, history, {"tau": tau}, callback, alpha, p)
        if stop and _settled(P, state):
            return
        if not stop and rounding_stall(P, state, -gp, f, f_new):
            return
