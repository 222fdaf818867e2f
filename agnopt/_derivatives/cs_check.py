"""The check of the default complex step against finite differences.

The least-squares evaluator (``Problem._cs_disagrees``), its JAX whole-solve
program and ``minimize``'s certification of a stop verify a complex-step
Jacobian once, along one direction, before trusting it: :func:`cs_check_points`
makes the difference points, :func:`cs_check_verdict` compares. A ``fun`` that
drops the imaginary part of some terms (``abs``, ``float``, ``real``, a real
work array) returns a complex output with a silently wrong derivative; the
check finds it. The compiled variant for one float64 NumPy problem is
:func:`agnopt._derivatives.one_point.cs_check_verdict_one` (the same
operations).
"""

from __future__ import annotations

from .._core.backend import compiled


def _cs_check_points(xp, X, lb, ub, w, h3, h2, dev):
    """The points of the least-squares evaluator's check of its complex step: ``X + h3 V``, ``X - h3 V``,
    ``X + h2 V`` with ``V_j = w_j max(1, |X_j|)`` (``w`` a tuple of ``n``
    numbers), and whether all three lie inside the bounds (0-d bool; ``True``
    without bounds: ``lb``, ``ub`` ``None``); ``dev`` the device of ``X``."""
    V = xp.asarray(w, dtype=X.dtype, device=dev) * xp.maximum(xp.ones_like(X), xp.abs(X))
    P3, M3, P2 = X + h3 * V, X - h3 * V, X + h2 * V
    if lb is None:
        return P3, M3, P2, True
    inside = xp.all((xp.minimum(xp.minimum(P3, M3), P2) >= lb)
                    & (xp.maximum(xp.maximum(P3, M3), P2) <= ub))
    return P3, M3, P2, inside


def _cs_check_verdict(xp, X, F, Jcs, P3, M3, P2, Fp3, Fm3, Fp2, h3, h2):
    """0-d bool: the complex-step ``Jcs`` (k, m, n) agrees with the central (``Fp3``,
    ``Fm3``) and forward (``Fp2``, and ``Fp3`` with ``F``) differences along ``V``
    within their error, for every problem and in every residual (the
    least-squares evaluator's check of its default complex step; ``X`` (k, n),
    ``F`` and the ``F*`` (k, m)).

    ``r3 = D3 - Jcs u3``, ``r2 = D2 - Jcs u2``, ``r3f = D3f - Jcs u3f``: the
    central difference (step ``h3``), the forward ones (steps ``h2`` and
    ``h3``) minus the complex step's directional derivative, ``u`` the steps
    taken. Where ``Jcs`` is right these are the differences' errors
    (``O(h3^2)``, ``h2 a``, ``h3 a`` with ``a`` half the second directional
    derivative, plus rounding); a dropped term adds the same ``E u`` to all.
    Two tests, both must pass:

    * the whole problem: ``max|r3| <= 10 max|r2 - r3| + 1e-9 max|Jcs u3|``
      (maxima over the residuals; ``max|r3|`` not finite passes);
    * each residual ``i`` against its own error bound:
      ``|r3_i| <= 10 (|r2_i - r3_i| + |r3f_i - r3_i| + eps (|Fp3_i| + |Fm3_i|)
      / (2 h3)) + 1e-9 max|Jcs u3|`` (``eps = h2**2``; the last maximum over
      the finite entries; a residual whose ``r3`` is not finite does not
      count, one with a finite ``r3`` and a NaN bound disagrees).

    The first alone lets one residual with a large difference error (a kink
    at a data point: ``|r2 - r3|`` of the order of the derivative there)
    excuse a dropped term in all the others; so each residual is also judged
    on its own, as MINPACK's ``chkder`` judges the gradient of each function
    (Moré, Garbow, Hillstrom, *User Guide for MINPACK-1*, ANL-80-74, 1980,
    ch. 4: one measure ``err(i)`` per function). The per-residual bound adds
    the first-order term at the larger step (``|r3f - r3| = h3 |a_i|``):
    ``r2_i`` and ``r3_i`` are different error terms (``h2 a_i`` and ``O(h3^2)``)
    that cross from row to row of a smooth model, where ``|r2_i - r3_i|``
    alone would be near 0 (NIST Misra1c/d at their starts); a dropped term
    leaves ``r3f - r3`` at its true size. The rounding term is the central
    difference's own rounding (``chkder``'s ``epsf |fvec(i)|`` test); ``1e-9``
    of the largest directional derivative is the size below which a dropped
    part is immaterial.
    """
    u3 = ((P3 - X) + (X - M3)) / (2.0 * h3)
    u2 = (P2 - X) / h2
    u3f = (P3 - X) / h3
    Ju3 = xp.matmul(Jcs, u3[:, :, None])[:, :, 0]
    r3 = (Fp3 - Fm3) / (2.0 * h3) - Ju3
    r2 = (Fp2 - F) / h2 - xp.matmul(Jcs, u2[:, :, None])[:, :, 0]
    r3f = (Fp3 - F) / h3 - xp.matmul(Jcs, u3f[:, :, None])[:, :, 0]
    a3 = xp.abs(Ju3)
    # the whole problem
    d = xp.max(xp.abs(r3), axis=-1)
    est = xp.max(xp.abs(r2 - r3), axis=-1)
    whole = (d <= 10.0 * est + 1e-9 * xp.max(a3, axis=-1)) | ~xp.isfinite(d)
    # each residual
    mj = xp.max(xp.where(xp.isfinite(a3), a3, xp.zeros_like(a3)), axis=-1, keepdims=True)
    rnd = (h2 * h2) * (xp.abs(Fp3) + xp.abs(Fm3)) / (2.0 * h3)
    within = xp.abs(r3) <= 10.0 * ((xp.abs(r2 - r3) + xp.abs(r3f - r3)) + rnd) + 1e-9 * mj
    return xp.all(whole) & ~xp.any(xp.isfinite(r3) & ~within)


# one compiled program each on JAX (agnopt._core.backend.compiled)
cs_check_points = compiled(_cs_check_points, static=("w", "h3", "h2", "dev"))
cs_check_verdict = compiled(_cs_check_verdict, static=("h3", "h2"))
