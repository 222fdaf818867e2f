r"""Truncated (line-search) Newton-CG (``method="newton-cg"``, the default
globalization): Nocedal & Wright Alg. 7.1, with scipy's ``Newton-CG``
termination and negative-curvature rules (see :mod:`agnopt._minimize.driver`).
"""

from __future__ import annotations

import math

from .certify import rounding_stall, stall
from .curvature import iterations, settled as _settled
from .common import _after_step, _floats, _persist
from .line_search import _line_search


def _cg_truncated(P, x, g, cg_maxiter):
    """Truncated CG on ``H p = -g`` (see module docstring). Returns ``(p, iters)``."""
    xp = P.xp
    rr = float(xp.sum(g * g))
    gn2 = rr ** 0.5
    tol = min(0.5, gn2 ** 0.5) * gn2
    z = xp.zeros_like(g)
    r = g
    d = -g
    it = 0
    for it in range(1, cg_maxiter + 1):
        if rr ** 0.5 <= tol:
            it -= 1
            break
        Hd = _persist(P.hvp(x, g, d))
        curv, dd = _floats(xp.sum(d * Hd), xp.sum(d * d))
        if not math.isfinite(curv):
            break
        if 0 <= curv <= 3 * P.eps * dd:
            break
        if curv < 0:
            if it == 1:
                z = (rr / -curv) * (-g)
            break
        a = rr / curv
        z = z + a * d
        r = r + a * Hd
        rr_new = float(xp.sum(r * r))
        d = -r + (rr_new / rr) * d
        rr = rr_new
        z, r, d = _persist(z), _persist(r), _persist(d)
    return z, it


def full_step(P, x, g, cg_maxiter):
    """The truncated-CG step at ``x`` before any line search or trust region
    (``-g`` where it is not a descent direction): the stationarity check of an
    ``xtol`` stop (:func:`agnopt._minimize.common._xtol_status`)."""
    xp = P.xp
    p, _ = _cg_truncated(P, x, g, cg_maxiter)
    gp = float(xp.sum(g * p))
    if not (gp < 0) or not math.isfinite(gp):
        return -g
    return p


def _run_newton_cg_ls(P, state, options, gtol, xtol, maxiter, c1, max_bt, history, callback):
    xp = P.xp
    cg_maxiter = int(options.get("cg_maxiter", 20 * P.n))
    state["gtol"] = gtol
    for x, f, g in iterations(P, state, gtol, maxiter):
        p, it = _cg_truncated(P, x, g, cg_maxiter)
        gp = float(xp.sum(g * p))
        if not (gp < 0) or not math.isfinite(gp):
            p, gp = -g, -float(xp.sum(g * g))
        ls = _line_search(P, x, f, p, gp, c1, max_bt)
        if ls is None:
            stall(P, state, 3)
            return
        alpha, x_new, f_new = ls
        stop = _after_step(P, state, x_new, f_new, xtol, history, {"cg_iter": it}, callback, alpha, p)
        if stop and _settled(P, state):
            return
        if not stop and rounding_stall(P, state, -gp, f, f_new):
            return
