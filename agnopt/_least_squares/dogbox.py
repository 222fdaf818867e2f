r"""Rectangular trust-region dogleg (``method="dogbox"``), for ``k`` problems at once.

The method of Voglis and Lagaris ("A rectangular trust region dogleg
approach for unconstrained and bound constrained nonlinear optimization",
WSEAS 2004) as scipy's ``least_squares(method="dogbox", tr_solver="exact")``
runs it. The trust region is a box ``|p_i| <= Delta * x_scale_i``
intersected with the bounds; variables on a bound that the anti-gradient
pushes against are held there (the active set). It runs in the driver of
:mod:`.trf` (:func:`.trf.run_trust_region`) with these blocks:

1. :func:`dogbox_model` -- the robust-loss scaling of ``(f, J)``, the
   gradient, the active set ``on_bound * g < 0`` and the first-order
   measure ``||g||_inf`` over the free variables; the Gauss-Newton step
   by least squares on the free variables: the active columns of ``J`` are
   zeroed and the minimum-norm solution of ``J p = -f`` is taken from the
   SVD (singular values up to ``eps / 2 * s_max`` dropped, as ``lstsq`` with
   ``rcond=-1``); the model along the anti-gradient
   (:func:`.bounds.line_quadratic`);
2. :func:`dogbox_step` -- the dogleg in the box
   (:func:`.bounds.dogleg_box_step`), the trial point ``clip(x + p)``, the
   step's length ``||p / x_scale||_inf``;
3. an accepted step records the bounds it ends on (``on_bound``) and puts
   those variables exactly on them.

The radius starts at ``||x0 / x_scale||_inf`` (1 when it is 0).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .arrays import count_dtype, device, host_linalg
from .bounds import dogleg_box_step, evaluate_quadratic, line_quadratic
from .losses import robust_model
from .trf import Trial, column_share, gradient

__all__ = ["DOGBOX"]


class DogboxModel(NamedTuple):
    """dogbox's model: ``J_f`` (k, m, n) the (loss-scaled) Jacobian with the
    held columns zeroed, ``g_f`` (k, n) the gradient there, ``free`` (k, n),
    ``newton`` (k, n) the Gauss-Newton step, ``a``, ``b`` (k,) the model
    ``a t^2 + b t`` along ``-g_f``, ``gnorm`` (k,) the first-order measure,
    ``gn_share`` (k,) :func:`.trf.column_share` of ``J_f``."""

    J_f: Any
    g_f: Any
    free: Any
    newton: Any
    a: Any
    b: Any
    gnorm: Any
    gn_share: Any


def min_norm_solution(xp, A, r):
    """The minimum-norm least-squares solution of ``A x = r`` per problem:
    ``A`` (k, m, n), ``r`` (k, m) -> (k, n), by the SVD with singular values
    up to ``(eps / 2) * s_max`` dropped, as ``numpy.linalg.lstsq(rcond=-1)``
    (scipy's dogbox) drops them: LAPACK's ``gelsd`` takes a negative
    ``rcond`` as its machine precision, ``dlamch('E')``, the unit roundoff
    ``eps / 2``."""
    U, s, Vt = host_linalg(xp, "svd", A, full_matrices=False)
    eps = float(xp.finfo(A.dtype).eps)
    good = s > (0.5 * eps) * s[:, 0:1]
    ur = xp.matmul(r[:, None, :], U)[:, 0, :]
    coef = xp.where(good, ur / xp.where(good, s, xp.ones_like(s)), xp.zeros_like(s))
    return xp.matmul(coef[:, None, :], Vt)[:, 0, :]


def dogbox_model(xp, ev, st, loss, f_scale) -> DogboxModel:
    """The active set, the Gauss-Newton step on the free variables and the
    model along the anti-gradient (module notes, block 1)."""
    Fh, Jl = robust_model(xp, loss, st.F, st.J, f_scale)
    g = gradient(xp, Fh, Jl)
    held = (xp.astype(st.on_bound, g.dtype) * g) < 0
    free = ~held
    g_f = xp.where(free, g, xp.zeros_like(g))
    gnorm = xp.max(xp.abs(g_f), axis=-1)
    J_f = xp.where(free[:, None, :], Jl, xp.zeros_like(Jl))
    newton = xp.where(free, min_norm_solution(xp, J_f, -Fh), xp.zeros_like(g))
    a, b, _ = line_quadratic(xp, J_f, g_f, -g_f)
    return DogboxModel(J_f, g_f, free, newton, a, b, gnorm, column_share(xp, J_f, g_f, Fh))


def dogbox_step(xp, ev, st, md: DogboxModel) -> Trial:
    """The dogleg step in the box trust region ``Delta * x_scale`` and the bounds,
    its predicted reduction and the trial point ``clip(x + p, lb, ub)``."""
    X = st.X
    tr_bounds = st.delta[:, None] / st.scale_inv
    step, bound_hits, tr_hit = dogleg_box_step(xp, X, md.newton, md.g_f, md.a, md.b, tr_bounds,
                                               ev.lb, ev.ub, md.free)
    act = st.active[:, None]
    step = xp.where(act, step, xp.zeros_like(step))
    pred = -evaluate_quadratic(xp, md.J_f, md.g_f, step)
    Xt = xp.where(act, xp.clip(X + step, ev.lb, ev.ub), X)
    sh_norm = xp.max(xp.abs(step * st.scale_inv), axis=-1)
    return Trial(Xt=Xt, step=step, sh_norm=sh_norm, pred=pred, hit=tr_hit, par=None,
                 bound_hits=xp.where(md.free, bound_hits, st.on_bound))


class _Dogbox:
    """dogbox's blocks for :func:`.trf.run_trust_region`."""

    name = "dogbox"
    model = staticmethod(dogbox_model)
    step = staticmethod(dogbox_step)

    @staticmethod
    def initial_on_bound(xp, ev, X):
        """-1 / 1 where ``x0`` equals its lower / upper bound."""
        z = xp.zeros(X.shape, dtype=count_dtype(xp), device=device(X))
        return xp.where(X == ev.lb, z - 1, xp.where(X == ev.ub, z + 1, z))

    @staticmethod
    def initial_radius(xp, ev, st, md):
        return xp.max(xp.abs(st.X * st.scale_inv), axis=-1)

    @staticmethod
    def accepted_point(xp, ev, st, tr, acc):
        """The trial point, with the variables that ended on a bound put on it."""
        ob = xp.where(acc[:, None], tr.bound_hits, st.on_bound)
        X = xp.where(acc[:, None], tr.Xt, st.X)
        X = xp.where(ob == -1, ev.lb, xp.where(ob == 1, ev.ub, X))
        return X, ob


DOGBOX = _Dogbox()
