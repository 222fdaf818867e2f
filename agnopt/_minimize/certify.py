r"""Certifying a success stop made with a finite-difference gradient.

A forward-difference gradient (``jac=None`` / ``"2-point"``) has the error
:math:`\tfrac12 h_i |H_{ii}| + O(\epsilon |f| / h_i)`, :math:`h_i =
\sqrt\epsilon\max(1, |x_i|)`; a central one (``"3-point"``) :math:`O(h^2
|f'''|)` with :math:`h_i = \epsilon^{1/3}\max(1, |x_i|)`. In float32 these
are far above the default ``gtol`` (:math:`\sqrt\epsilon`): the gradient
test (status 0) and the step test (status 2) can then fire at a point that
is not stationary (Rosenbrock from ``[-1.2, 1]`` in float32 stopped at
``[0.911, 0.830]`` with a true gradient of 0.115, 330 times ``gtol``).

So, where a method stopped with status 0 or 2 on such a gradient, the
gradient at the final ``x`` is estimated again, accurately:

* by the complex step (``imag f(x + i h e_j) / h_j``, :math:`h_j =
  \epsilon |x_j|`), where ``fun`` accepts complex input (it neither raises
  nor returns real output) and the complex-step gradient agrees with
  finite differences along a fixed direction within their error (the
  check least_squares makes of its default complex step:
  :func:`agnopt._derivatives.numdiff.cs_check_verdict`);
* else by central differences :math:`g(h)` with the error bound
  :math:`e = |g(2h) - g(h)| / 3 + \epsilon |f| / h` (Richardson's estimate of
  the :math:`O(h^2)` term, plus rounding), :math:`h_i = \epsilon^{1/3}
  \max(1, |x_i|)`.

The stop is certified when the accurate gradient ``ga`` (plus ``e``)
satisfies :math:`\|g_a\|_\infty \le` ``gtol`` (status 0), or when the
method's full step computed with ``ga`` (the modified Newton step, or the
truncated-CG step) is within what ``ga``'s relative error :math:`\delta_a`
(:math:`\epsilon` for the complex step, :math:`\epsilon^{2/3}` for central
differences) can locate: :math:`\|p\|_\infty \le 10 \max(\text{xtol},
\sqrt\epsilon, \delta_a) \max(1, \|x\|_\infty)` (status 2); for central
differences :math:`\|p\|_\infty` plus the norm of the step computed with
``e`` in place of the gradient (the step's uncertainty) must be within it.

Otherwise the method goes on from ``x`` with the better gradient for the
rest of the solve: the complex step (``jac="cs"``: its stops are then
certified by that gradient) where ``fun`` takes it, else central
differences (``"3-point"``, from a ``"2-point"`` start). A ``"3-point"``
stop that central differences cannot certify and no complex step can
check is status 7 (not success).

The same check is made where a run on such a gradient stalls (:func:`stall`,
:func:`rounding_stall`): the line search finds no decrease (status 3), the
trust region collapses (status 5), or, with ``"2-point"``, an accepted step
changes ``f`` only at its rounding level. Near a minimizer the forward
difference's error (about ``gtol`` :math:`|H_{ii}|` in float64) keeps the
gradient test from firing while ``f`` can no longer rank the steps: a
quadratic from ``[1, 1]`` ended at ``x ~ 1e-19`` with status 3, a double
well sat at its minimum for ``maxiter`` iterations. A certified stall ends
with status 0 or 2 (the caller then runs the curvature test of
:mod:`agnopt._minimize.curvature`); an uncertified one goes on with the
better gradient as above, and a ``"3-point"`` one that nothing better can
follow keeps its failure status.
"""

from __future__ import annotations

import math
from typing import Any

from .._core.user_code import quiet_complex_casts
from .._derivatives.numdiff import approx_derivative, cs_check_points, cs_check_verdict
from .common import _floats

_FD_KINDS = ("2-point", "3-point")


def _cs_gradient(P: Any, x: Any, f: Any) -> Any | None:
    """The complex-step gradient at ``x``, verified; None where ``fun`` cannot
    give it (raises at complex points, returns real output, or a gradient that
    disagrees with finite differences)."""
    xp = P.xp
    try:
        with quiet_complex_casts():
            g = approx_derivative(P._counted_fun, x, method="cs")
        g = P._as_vector(g, "the complex-step gradient")
    except Exception:  # noqa: BLE001 - any error of fun at complex points: no complex step
        return None
    if not bool(xp.all(xp.isfinite(g))):
        return None
    n = P.n
    w = tuple((-1.0) ** j * (0.5 + math.modf(0.6180339887498949 * (j + 1))[0]) for j in range(n))
    h3, h2 = P.eps ** (1.0 / 3.0), P.eps ** 0.5
    X = xp.reshape(x, (1, n))
    P3, M3, P2, _ = cs_check_points(xp, X, None, None, w, h3, h2, P.device)
    try:
        F3p, F3m, F2p = (xp.reshape(P.value(xp.reshape(Pt, (n,)), "a check point"), (1, 1))
                         for Pt in (P3, M3, P2))
    except Exception:  # noqa: BLE001 - fun's, at points the solve never visits: keep it
        return g
    ok = cs_check_verdict(xp, X, xp.reshape(f, (1, 1)), xp.reshape(g, (1, 1, n)),
                          P3, M3, P2, F3p, F3m, F2p, h3, h2)
    return g if bool(ok) else None


def _central_gradient(P: Any, x: Any, f: Any) -> tuple[Any, Any]:
    """Central differences ``g(h)`` and the error bound ``e`` (see module docstring)."""
    xp = P.xp
    h = P.eps ** (1.0 / 3.0) * xp.maximum(xp.ones_like(x), xp.abs(x))
    g1 = P._as_vector(approx_derivative(P._counted_fun, x, method="3-point", abs_step=h),
                      "the central-difference gradient")
    g2 = P._as_vector(approx_derivative(P._counted_fun, x, method="3-point", abs_step=2.0 * h),
                      "the central-difference gradient")
    e = xp.abs(g2 - g1) / 3.0 + P.eps * xp.abs(f) / h
    return g1, e


def _step_norm(P: Any, state: dict, x: Any, g: Any) -> float:
    """``max|p|`` of the method's full step at ``x`` for the gradient ``g`` (inf
    where the Hessian is not finite)."""
    p = state["ctx"]["full_step"](P, x, g)
    if p is None:
        return math.inf
    pn = _floats(P.xp.max(P.xp.abs(p)))[0]
    return pn if math.isfinite(pn) else math.inf


def certify(P: Any, state: dict, gtol: float, xtol: float) -> bool:
    """Check a success stop (``state["status"]`` 0 or 2), or a stall (see
    :func:`stall`), made with a finite-difference gradient (see module
    docstring).

    Sets status 0 or 2 where the accurate gradient certifies the point and
    returns False (after a stall the caller still runs the curvature test);
    where it does not and no better gradient is left (``"3-point"`` and no
    complex step), sets status 7 after a success stop and keeps the stall's
    status (3 or 5), returning False; otherwise returns True after switching
    ``P`` to the complex-step gradient, else central differences (``state``
    then holds that gradient and no status): the method goes on from
    ``state["x"]``.
    """
    stalled = state.pop("stall", False)
    xp = P.xp
    x, f = state["x"], state["f"]
    ga = _cs_gradient(P, x, f)
    e = None
    if ga is not None:
        bound, noise = xp.abs(ga), P.eps
    else:
        ga, e = _central_gradient(P, x, f)
        bound, noise = xp.abs(ga) + e, P.eps ** (2.0 / 3.0)
    gn, xmax = _floats(xp.max(bound), xp.max(xp.abs(x)))
    certified = 0 if gn <= gtol else None
    if certified is None and math.isfinite(gn):
        tol = 10.0 * max(xtol, P.eps ** 0.5, noise) * max(1.0, xmax)
        pn = _step_norm(P, state, x, ga)
        if e is not None and pn <= tol:
            pn += _step_norm(P, state, x, e)  # what the gradient's error moves the step
        if pn <= tol:
            certified = 2
    if certified is not None:
        state["status"] = certified
        if noise == P.eps:
            state["g"] = ga  # report the accurate gradient
            state["gnorm"] = None
        return False
    if noise != P.eps and P.jac_kind == "3-point":
        if not stalled:
            state["status"] = 7
        return False
    # go on with the better gradient: the complex step, else central differences
    P.jac_kind = "cs" if noise == P.eps else "3-point"
    P._hcache = None
    state.update(g=ga, status=None, gnorm=None)
    return True


def needs_certificate(P: Any, state: dict) -> bool:
    """Whether a finished run's stop must go through :func:`certify`: a
    success stop, or a stall (:func:`stall`), on a finite-difference gradient."""
    return P.jac_kind in _FD_KINDS and (state["status"] in (0, 2) or bool(state.get("stall")))


def stall(P: Any, state: dict, status: int) -> None:
    """A failure stop of a method: the line search found no decrease (status
    3) or the trust region collapsed (status 5). On a finite-difference
    gradient it is marked a stall, for :func:`certify`: the gradient's error
    may be what stopped the method at a minimizer."""
    state["status"] = status
    if P.jac_kind in _FD_KINDS:
        state["stall"] = True


def rounding_stall(P: Any, state: dict, pred: float, f0: Any, f1: Any) -> bool:
    r"""After an accepted step from ``f0`` to ``f1`` with a forward-difference
    gradient (``"2-point"``) whose predicted decrease ``pred`` or actual
    decrease ``f0 - f1`` was at the rounding level of ``f`` (:math:`\le
    4\epsilon|f_0|`): marks a stall (status 3 until :func:`certify` replaces
    it) and returns True. ``f`` then no longer tells the iterates apart,
    while the gradient's error (:math:`\tfrac12 h_i|H_{ii}|`) keeps the
    gradient test from firing: without this check the method moved about
    the minimizer until ``maxiter``."""
    if P.jac_kind != "2-point":
        return False
    a, b = _floats(f0, f1)
    if min(pred, a - b) <= 4.0 * P.eps * abs(a):
        state["status"] = 3
        state["stall"] = True
        return True
    return False
