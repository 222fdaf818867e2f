r"""Moré's ``lmpar``: the Levenberg-Marquardt parameter for a trust region, for ``k`` problems.

Given the scaled problem :math:`\min \|\tilde J q - f\|` with
:math:`\tilde J = J D^{-1}` (so the step is :math:`Dp = -q`), ``lmpar``
finds :math:`\lambda \ge 0` such that

.. math:: q(\lambda) = (\tilde J^T\tilde J + \lambda I)^{-1} \tilde J^T f

has :math:`|\,\|q\| - \Delta\,| \le 0.1\,\Delta`, or :math:`\lambda = 0`
when the Gauss-Newton step already has :math:`\|q(0)\| \le 1.1\,\Delta`.
It is Moré's safeguarded Newton iteration on
:math:`\phi(\lambda) = \|q(\lambda)\| - \Delta` (MINPACK ``lmpar``, at most
10 iterations), with the bounds ``parl``/``paru`` and Newton correction

.. math:: \lambda_+ = \lambda + \frac{\phi}{\Delta}
          \frac{\|q\|^2}{q^T (\tilde J^T\tilde J + \lambda I)^{-1} q}.

The iteration is written once; a *basis* supplies :math:`q(\lambda)` and
:math:`q^T(\tilde J^T\tilde J+\lambda I)^{-1}q`:

* :class:`SpectralBasis`: from :math:`\tilde J^T\tilde J = V \operatorname{diag}(w) V^T`
  (SVD of :math:`\tilde J` or eigendecomposition of the Gram matrix),
  :math:`V^T q = c / (w + \lambda)` with :math:`c = V^T \tilde J^T f`, and
  :math:`q^T(\cdot)^{-1}q = \sum c^2/(w+\lambda)^3`; directions below the rank
  threshold (``good`` false) are dropped from the Gauss-Newton step
  (truncation), and ``parl = 0`` for rank-deficient problems (as MINPACK);
* :class:`CholeskyBasis`: from the inverse Cholesky factor
  :math:`L^{-1}` of :math:`\tilde J^T\tilde J + \lambda I`,
  :math:`q = L^{-T}L^{-1}\tilde J^T f` and :math:`q^T(\cdot)^{-1}q =
  \|L^{-1} q\|^2` (MINPACK's :math:`\|R^{-T} D p\|^2`).

Every problem of the batch runs the iteration on its own numbers; a problem
that has stopped is frozen by ``where``, so a batch gives what each problem
alone gives.

Reference: J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and
theory", LNM 630 (1978); MINPACK-1 ``lmpar``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._core import lazy
from .._core.backend import compiled
from .cholesky import chol_inv, chol_solve, small_mv


class SpectralBasis(NamedTuple):
    """:math:`\\tilde J^T \\tilde J = V \\operatorname{diag}(w) V^T` in the basis ``V``.

    ``w`` (k, r): squared singular values (eigenvalues), ``c`` (k, r):
    ``V^T Js^T f``, ``good`` (k, r): above the rank threshold, ``full_rank``
    (k,): all ``n`` directions good.
    """

    w: Any
    c: Any
    good: Any
    full_rank: Any

    def gauss_newton(self, xp):
        """``q(0)`` (truncated pseudo-inverse step), its ``q^T A^+ q`` and ``rhs = c``."""
        w, c, good = self.w, self.c, self.good
        wsafe = xp.where(good, w, 1.0)
        qn = xp.where(good, c / wsafe, 0.0)
        s3 = xp.sum(xp.where(good, c * c / (wsafe * wsafe * wsafe), 0.0), axis=-1)
        return qn, s3, self.full_rank, c, None

    def solve(self, xp, par):
        """``q(par)`` (k, r), ``q^T (A + par I)^{-1} q`` (k,), no factor."""
        den = self.w + par[:, None]
        q = self.c / den
        return q, xp.sum(self.c * self.c / (den * den * den), axis=-1), None


class CholeskyBasis(NamedTuple):
    """The normal equations ``As = Js^T Js`` (k, n, n), ``gs = Js^T f`` (k, n),
    ``Linv0`` (k, n, n), the inverse Cholesky factor of ``As`` (all well
    conditioned), and the identity ``eye`` (n, n)."""

    As: Any
    gs: Any
    Linv0: Any
    eye: Any

    def gauss_newton(self, xp):
        qn = chol_solve(xp, self.Linv0, self.gs)
        s3 = xp.linalg.vector_norm(small_mv(xp, self.Linv0, qn), axis=-1) ** 2
        return qn, s3, None, self.gs, self.Linv0

    def solve(self, xp, par):
        Li, _ = chol_inv(xp, self.As + par[:, None, None] * self.eye)
        q = chol_solve(xp, Li, self.gs)
        return q, xp.linalg.vector_norm(small_mv(xp, Li, q), axis=-1) ** 2, Li


def lmpar(xp, basis, delta, par0, active, rtol=0.1):
    """Moré's ``lmpar`` for every problem: ``(par, q, factor)``.

    Parameters: ``basis`` a :class:`SpectralBasis` or :class:`CholeskyBasis`
    of ``k`` problems; ``delta`` (k,) trust radii (> 0); ``par0`` (k,) the
    previous parameters (the starting guess); ``active`` (k,) the problems
    to solve (the others keep ``par0`` and the Gauss-Newton ``q``).

    Returns ``par`` (k,) (0 where the Gauss-Newton step is inside
    ``1.1 delta``), ``q`` (k, r) with the scaled step ``D p = -V q``
    (spectral) or ``-q`` (Cholesky), and the basis' factor at the final
    ``par`` (the Cholesky route's ``L^{-1}``, for the geodesic acceleration;
    ``None`` for a spectral basis).

    ``rtol``: the accepted relative error of ``||q||`` against ``delta``
    (MINPACK's 0.1). (trf solves its subproblem as scipy does instead:
    :func:`.trf.lsq_trust_region`.)

    The early exits (every Gauss-Newton step inside, every search done) are
    exact shortcuts: where the values cannot be read (inside a bigger
    compiled block, :func:`agnopt._core.backend.compiled`) all 10 iterations
    run with the finished problems frozen, which gives the same numbers.
    """
    # three blocks (one compiled program each on JAX: the Gauss-Newton step,
    # the starting bounds, one safeguarded Newton iteration), with the host
    # reads of the early exits between them
    qn, s3, rhs, factor, dxnorm, fp, gn_ok, delta_s = _lmpar_gauss_newton(
        xp, basis, delta, rtol)
    if lazy.known_all(xp, gn_ok):
        # every Gauss-Newton step lies within the region (the usual case near
        # a solution): par = 0 and q = q(0), exactly what the end of the
        # search below returns for them; the bounds parl / paru are not needed
        return xp.zeros_like(fp), qn, factor
    par, parl, paru, done = _lmpar_bounds(xp, basis, s3, rhs, dxnorm, fp, gn_ok, delta,
                                          delta_s, par0, active)
    q = qn
    if lazy.known_all(xp, done):
        return xp.where(gn_ok, 0.0, par), q, factor

    def iteration(it, s):
        return _lmpar_iteration(xp, basis, *s, delta, delta_s, it == 9, rtol)

    # at most 10 iterations; frozen problems do not change, so exiting when all are
    # done is exact (one loop program inside a compiled solve: lazy.bounded_loop)
    par, parl, paru, fp, q, factor, done = lazy.bounded_loop(
        xp, iteration, (par, parl, paru, fp, q, factor, done), 10, lambda s: s[-1])
    par = xp.where(gn_ok, 0.0, par)
    return par, q, factor


def lmpar_gauss_newton(xp, basis, delta, rtol):
    """``lmpar``'s Gauss-Newton step ``qn`` (k, r), its ``q^T A^+ q`` ``s3``, the
    right-hand side, the factor, ``||qn||``, ``fp = ||qn|| - delta``, ``gn_ok``
    (inside ``(1 + rtol) delta``) and the safe radius ``delta_s`` (k,)."""
    # a finished problem of a batch may carry delta = 0: divide by 1 there (its
    # values are not used) instead of raising floating-point warnings
    delta_s = xp.where(delta > 0, delta, 1.0)
    qn, s3, _, rhs, factor = basis.gauss_newton(xp)
    dxnorm = xp.linalg.vector_norm(qn, axis=-1)
    fp = dxnorm - delta
    gn_ok = fp <= rtol * delta
    return qn, s3, rhs, factor, dxnorm, fp, gn_ok, delta_s


def lmpar_bounds(xp, basis, s3, rhs, dxnorm, fp, gn_ok, delta, delta_s, par0, active):
    """``lmpar``'s starting ``par`` and bounds ``parl``, ``paru`` (k,), and ``done``
    (k,): the problems whose search is over before it starts."""
    dwarf = float(xp.finfo(delta.dtype).smallest_normal)
    full_rank = getattr(basis, "full_rank", None)
    # lower bound parl: the Newton step on phi at 0 (0 where rank deficient)
    s3 = xp.where(s3 > 0, s3, 1.0)
    parl = (fp / delta_s) * dxnorm * dxnorm / s3
    if full_rank is not None:
        parl = xp.where(full_rank, parl, 0.0)
    parl = xp.maximum(parl, xp.zeros_like(parl))
    # upper bound paru = ||Js^T f|| / delta
    gnorm = xp.linalg.vector_norm(rhs, axis=-1)
    paru = gnorm / delta_s
    paru = xp.where(paru == 0, dwarf / xp.minimum(delta_s, xp.full_like(delta, 0.1)), paru)
    par = xp.minimum(xp.maximum(par0, parl), paru)
    dx_safe = xp.where(dxnorm > 0, dxnorm, 1.0)
    par = xp.where(par == 0, gnorm / dx_safe, par)
    return par, parl, paru, gn_ok | ~active


def lmpar_iteration(xp, basis, par, parl, paru, fp, q, factor, done, delta, delta_s, last,
                    rtol):
    """One safeguarded Newton iteration of ``lmpar`` on the problems not ``done``
    (the others frozen); ``last`` (the 10th): every problem is done after it.
    Returns ``(par, parl, paru, fp, q, factor, done)``."""
    dwarf = float(xp.finfo(delta.dtype).smallest_normal)
    par_t = xp.where(par == 0, xp.maximum(xp.full_like(paru, dwarf), 0.001 * paru), par)
    par = xp.where(done, par, par_t)
    qt, s3, fac_t = basis.solve(xp, par)
    dxn_t = xp.linalg.vector_norm(qt, axis=-1)
    temp = fp
    fp_t = dxn_t - delta
    q = xp.where(done[:, None], q, qt)
    if factor is not None:
        factor = xp.where(done[:, None, None], factor, fac_t)
    fp = xp.where(done, fp, fp_t)
    stop = (xp.abs(fp_t) <= rtol * delta) | ((parl == 0) & (fp_t <= temp) & (temp < 0))
    done = done | stop | last
    # Newton correction, then the safeguards
    s3 = xp.where(s3 > 0, s3, 1.0)
    parc = (fp_t / delta_s) * dxn_t * dxn_t / s3
    parl = xp.where(~done & (fp_t > 0), xp.maximum(parl, par), parl)
    paru = xp.where(~done & (fp_t < 0), xp.minimum(paru, par), paru)
    par = xp.where(done, par, xp.maximum(parl, par + parc))
    return par, parl, paru, fp, q, factor, done


# one compiled program each on JAX (agnopt._core.backend.compiled), as written elsewhere
_lmpar_gauss_newton = compiled(lmpar_gauss_newton, static=("rtol",))
_lmpar_bounds = compiled(lmpar_bounds)
_lmpar_iteration = compiled(lmpar_iteration, static=("rtol",))
