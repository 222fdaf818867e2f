r"""Newton-CG in a trust region (``options={"globalization": "trust-region"}``):
Steihaug-Toint CG (Nocedal & Wright Alg. 7.2; Steihaug 1983) inside the
trust-region method (Alg. 4.1). See :mod:`agnopt._minimize.driver`.
"""

from __future__ import annotations

import math

from .certify import rounding_stall, stall
from .curvature import iterations, settled as _settled
from .common import _after_step, _floats, _persist


def _to_boundary(xp, z, d, delta):
    """The ``tau >= 0`` with ``||z + tau d|| = delta``."""
    a, b, c = _floats(xp.sum(d * d), xp.sum(z * d), xp.sum(z * z))
    b, c = 2.0 * b, c - delta * delta
    disc = max(b * b - 4 * a * c, 0.0)
    # Numerically stable positive root.
    if b >= 0:
        return (2 * c) / (-b - disc ** 0.5) if (-b - disc ** 0.5) != 0 else 0.0
    return (-b + disc ** 0.5) / (2 * a)


def _steihaug(P, x, g, delta, cg_maxiter):
    """CG-Steihaug. Returns ``(p, iters, on_boundary)``."""
    xp = P.xp
    rr = float(xp.sum(g * g))
    gn = rr ** 0.5
    tol = min(0.5, gn ** 0.5) * gn
    z = xp.zeros_like(g)
    r = g
    d = -g
    for j in range(1, cg_maxiter + 1):
        Bd = _persist(P.hvp(x, g, d))
        dBd = float(xp.sum(d * Bd))
        if not math.isfinite(dBd) or dBd <= 0:
            tau = _to_boundary(xp, z, d, delta)
            return z + tau * d, j, True
        a = rr / dBd
        z_next = z + a * d
        r = r + a * Bd
        zz, rr_new = _floats(xp.sum(z_next * z_next), xp.sum(r * r))
        if zz ** 0.5 >= delta:
            tau = _to_boundary(xp, z, d, delta)
            return z + tau * d, j, True
        z = _persist(z_next)
        if rr_new ** 0.5 <= tol:
            return z, j, False
        d = _persist(-r + (rr_new / rr) * d)
        r = _persist(r)
        rr = rr_new
    return z, cg_maxiter, False


def _run_newton_cg_tr(P, state, options, gtol, xtol, maxiter, history, callback):
    xp = P.xp
    cg_maxiter = int(options.get("cg_maxiter", 20 * P.n))
    delta = float(options.get("initial_trust_radius", 1.0))
    dmax = float(options.get("max_trust_radius", 1000.0))
    eta = float(options.get("eta", 0.15))
    if not (0 < delta <= dmax):
        raise ValueError("options: need 0 < initial_trust_radius <= max_trust_radius")
    state["gtol"] = gtol
    for x, f, g in iterations(P, state, gtol, maxiter):
        p, it, boundary = _steihaug(P, x, g, delta, cg_maxiter)
        Hp = P.hvp(x, g, p)
        x_new = _persist(x + p)
        f_new = P.value(x_new)
        gp_, pHp, fn, f0 = _floats(xp.sum(g * p), xp.sum(p * Hp), f_new, f)
        pred = -(gp_ + 0.5 * pHp)
        actual = f0 - fn
        noise = 4.0 * P.eps * abs(f0)
        if not math.isfinite(fn):
            rho = -math.inf
        elif pred <= noise:
            # The model decrease is at the rounding level of f: rho cannot be
            # measured; accept if f did not increase beyond rounding.
            rho = 1.0 if -actual <= noise else -math.inf
        else:
            rho = actual / pred
        if rho < 0.25:
            delta = 0.25 * delta
        elif rho > 0.75 and boundary:
            delta = min(2.0 * delta, dmax)
        if rho > eta:
            # A step on the boundary was cut by the region: not the full step.
            stop = _after_step(P, state, x_new, f_new, xtol, history, {"cg_iter": it}, callback,
                               delta, None if boundary else p)
            if stop and _settled(P, state):
                return
            if not stop and rounding_stall(P, state, pred, f0, fn):
                return
        else:
            state["nit"] += 1
            if delta <= xtol * max(1.0, float(xp.max(xp.abs(x)))):
                stall(P, state, 5)
                return
