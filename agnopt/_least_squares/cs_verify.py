"""The check of the default complex-step Jacobian against finite differences, for
:class:`.problem.Problem` (its methods :meth:`ComplexStepCheck._cs_disagrees` and
helpers; the points and verdicts: :mod:`agnopt._derivatives.cs_check`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .._derivatives.cs_check import cs_check_points, cs_check_verdict
from .._derivatives.one_point import cs_check_points_one, cs_check_verdict_one
from .arrays import machine_eps

__all__ = ["ComplexStepCheck"]

# n -> the weights w of the complex step's check direction (_cs_check_points), and
# (n, "one") -> them as a float64 NumPy array (the one-point check's, read only)
_CS_W: dict = {}


class ComplexStepCheck:
    """The complex-step check of :class:`.problem.Problem` (a mixin: it uses the
    problem's ``xp``, ``dtype``, ``lb``, ``ub``, ``bounded``, ``batched``, ``dev``,
    ``_fd_cache``, ``_fd`` and ``_raw``)."""

    xp: Any
    dev: Any
    dtype: Any
    lb: Any
    ub: Any
    batched: bool
    _fd_cache: dict
    _cs_h: tuple
    _cs_one: bool
    _fd: Callable[..., Any]
    _raw: Callable[..., Any]

    def _cs_disagrees(self, X, F, Jcs):
        """The central-difference Jacobian where the complex-step ``Jcs`` (k, m, n)
        disagrees with finite differences beyond their error, else ``None``.

        A ``fun`` that drops the imaginary part of some terms (writes ``x``
        into a real work array, calls ``float``, ``real``, ``abs``...) while
        others stay complex returns a complex output with a silently wrong
        derivative. The check compares directional derivatives along a fixed
        direction ``v`` with irregular entries and signs (``v_j = w_j
        max(1, |x_j|)``, ``|w_j|`` in [0.5, 1.5)): ``r3 = D3 - Jcs u3`` with
        ``D3`` the central difference (step ``eps^(1/3)``) and ``r2 = D2 -
        Jcs u2`` with ``D2`` the forward difference (step ``eps^(1/2)``),
        ``u`` the exactly representable steps taken. Where ``Jcs`` is right,
        ``r2`` and ``r3`` are the differences' errors and ``|r2 - r3|``
        estimates them; a dropped term adds the same ``E u`` to both. The
        complex step is rejected when ``max|r3| > 10 max|r2 - r3| + 1e-9
        max|Jcs u3|``, or when some residual disagrees beyond its own error
        bound (one residual's large error, a kink at a data point, must not
        excuse the others: :func:`agnopt._derivatives.cs_check.cs_check_verdict`
        gives the bounds and the source): a dropped part larger than about ``1e-8`` of the
        directional derivative is found. Costs 3 evaluations of ``fun`` once
        per solve (not counted in ``nfev``, as scipy does not count finite
        differences); where a difference point would leave the bounds, the
        columns are checked one by one instead (:meth:`_cs_columns`, ``4n``
        evaluations).
        """
        P3, M3, P2, inside = self._cs_check_points(X)
        if not bool(inside):
            ok, J3 = self._cs_columns(X, F, Jcs)
            return None if ok is None or bool(ok) else J3
        ok = self._cs_directional(X, F, Jcs, P3, M3, P2)
        return None if ok is None or bool(ok) else self._fd(X, F, "3-point", None)

    def _cs_check_points(self, X):
        """The points ``X + h3 V``, ``X - h3 V``, ``X + h2 V`` of :meth:`_cs_disagrees`
        and whether they lie inside the bounds (0-d bool)."""
        n = X.shape[1]
        eps = machine_eps(self.xp, self.dtype)
        w = _CS_W.get(n)
        if w is None:
            w = _CS_W[n] = tuple((-1.0) ** j * (0.5 + math.modf(0.6180339887498949 * (j + 1))[0])
                                 for j in range(n))
        self._cs_h = h3, h2 = eps ** (1.0 / 3.0), eps**0.5
        bounded = getattr(self, "bounded", True)
        # one float64 NumPy problem whose Jacobians take numdiff's one-point layer
        # (fd_jacobian's verdict in the solve's cache): the same points, compiled
        self._cs_one = not bounded and bool(self._fd_cache.get("one")) and not self.batched
        if self._cs_one:  # (float64 NumPy: w as an array made once per n, read only)
            wa = _CS_W.get((n, "one"))
            if wa is None:
                wa = _CS_W[n, "one"] = self.xp.asarray(w, dtype=X.dtype)
            return cs_check_points_one(X, wa, h3, h2)
        return cs_check_points(self.xp, X, self.lb if bounded else None,
                               self.ub if bounded else None, w, h3, h2, self.dev)

    def _cs_directional(self, X, F, Jcs, P3, M3, P2):
        """The directional check of :meth:`_cs_disagrees`: 0-d bool (the complex step
        agrees), or ``None`` where the differences cannot be formed (keep it)."""
        h3, h2 = self._cs_h
        try:
            Fp3, Fm3, Fp2 = (self._raw(P) for P in (P3, M3, P2))
        except Exception:  # noqa: BLE001 - fun's, at points the solve never visits
            # the differences cannot be formed (fun raises at these check
            # points, which the solve itself never visits): keep the complex step
            return None
        return (cs_check_verdict_one if self._cs_one else cs_check_verdict)(
            self.xp, X, F, Jcs, P3, M3, P2, Fp3, Fm3, Fp2, h3, h2)

    def _cs_columns(self, X, F, Jcs):
        """:meth:`_cs_disagrees` column by column (bounded problems near a bound),
        ``J3`` / ``J2`` / ``J2c`` the central and the forward differences (steps
        ``eps^(1/2)`` and, ``J2c``, the central one's ``eps^(1/3)``) kept inside the
        bounds. Two tests, both must pass (as
        :func:`agnopt._derivatives.cs_check.cs_check_verdict`, which gives the
        reasons and the source):

        * each column: ``max|Jcs_j - J3_j| <= 10 max|J2_j - J3_j| + 1e-6 s_j``
          (maxima over the rows; not finite passes), ``s_j`` the largest
          ``|J3_.j|``, ``|Jcs_.j|``;
        * each entry against its own error bound: ``|Jcs_ij - J3_ij| <= 10
          (|J2_ij - J3_ij| + |J2c_ij - J3_ij|) + 1e-6 s_j`` (``s_j`` over the
          finite entries; an entry with ``Jcs - J3`` not finite does not count,
          one with a NaN bound does).

        ``4n`` evaluations. Returns ``(ok, J3)``: ``ok`` a 0-d bool (``None``, with ``J3``,
        where the differences cannot be formed: keep the complex step)."""
        xp = self.xp
        try:
            J3 = self._fd(X, F, "3-point", None)
            J2 = self._fd(X, F, "2-point", None)
            J2c = self._fd(X, F, "2-point", machine_eps(xp, self.dtype) ** (1.0 / 3.0))
        except Exception:  # noqa: BLE001 - as in _cs_directional: keep the complex step
            return None, None
        d = Jcs - J3
        # each column
        dmax = xp.max(xp.abs(d), axis=-2)
        est = xp.max(xp.abs(J2 - J3), axis=-2)
        scale = xp.maximum(xp.max(xp.abs(J3), axis=-2), xp.max(xp.abs(Jcs), axis=-2))
        whole = (dmax <= 10.0 * est + 1e-6 * scale) | ~xp.isfinite(dmax)
        # each entry
        a = xp.maximum(xp.abs(J3), xp.abs(Jcs))
        s = xp.max(xp.where(xp.isfinite(a), a, xp.zeros_like(a)), axis=-2, keepdims=True)
        within = xp.abs(d) <= 10.0 * (xp.abs(J2 - J3) + xp.abs(J2c - J3)) + 1e-6 * s
        return xp.all(whole) & ~xp.any(xp.isfinite(d) & ~within), J3
