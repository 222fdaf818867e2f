r"""Robust loss functions for nonlinear least squares (scipy's ``loss`` and ``f_scale``).

With residuals :math:`f_i`, a loss :math:`\rho` and a soft margin
:math:`C` (``f_scale``), the cost is

.. math:: F(x) = \tfrac12 \sum_i C^2 \rho\big((f_i / C)^2\big),

so ``loss="linear"`` (:math:`\rho(z) = z`) gives ordinary least squares and
the other losses grow slower than :math:`z` for large residuals, limiting the
pull of outliers. The losses, for :math:`z = (f/C)^2`:

============  ===============================================  ==============================
``loss``      :math:`\rho(z)`                                  behaviour for large residuals
============  ===============================================  ==============================
linear        :math:`z`                                        quadratic (plain least squares)
soft_l1       :math:`2(\sqrt{1+z} - 1)`                        linear (a smooth L1)
huber         :math:`z` if :math:`z \le 1`, else                linear
              :math:`2\sqrt z - 1`
cauchy        :math:`\ln(1+z)`                                 logarithmic
arctan        :math:`\arctan z`                                bounded by :math:`\pi/2`
============  ===============================================  ==============================

A callable ``loss(z)`` receives ``z`` as a 1-D array (all residuals, the
problems of a batch one after another) and returns an array ``(3, z.size)``:
:math:`\rho`, :math:`\rho'` and :math:`\rho''` evaluated elementwise at
``z`` (scipy's convention).

Solvers use the loss through its second-order model: at the current point
the residuals and Jacobian are replaced by

.. math:: \hat f_i = \frac{\rho'_i}{s_i} f_i, \qquad \hat J_i = s_i J_i, \qquad
          s_i = \sqrt{\rho'_i + 2 \rho''_i f_i^2} \;(\ge \sqrt{\varepsilon}),

(Triggs et al., "Bundle adjustment: a modern synthesis", 1999, section 4.3),
whose Gauss-Newton model has the gradient :math:`J^T \rho' f` of the robust
cost and a curvature that drops the negative part of :math:`\rho''`. This is
the scaling scipy's ``least_squares`` applies, so the same arguments give the
same fits. Every quantity is elementwise, so batches of problems ``(B, m)``
need nothing special. The square roots and divisions guard their arguments
(``where`` on both the input and the output), so that an exact zero residual
gives finite values (and finite derivatives under autodiff).
"""

from __future__ import annotations

import math
from typing import Any, Callable

__all__ = ["LOSSES", "check_loss", "loss_cost", "loss_rho", "robust_scale"]

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")

EPS64 = 2.220446049250313e-16


def check_loss(loss: Any, f_scale: Any) -> None:
    """ValueError for an unknown ``loss`` name or a non-positive ``f_scale``."""
    if not callable(loss) and loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES} or a callable, got {loss!r}")
    try:
        fs = float(f_scale)
    except (TypeError, ValueError):
        raise ValueError(f"f_scale: expected a positive number, got {f_scale!r}") from None
    if not (fs > 0 and math.isfinite(fs)):
        raise ValueError(f"f_scale: expected a positive number, got {f_scale!r}")


def _rho_named(xp: Any, loss: str, z: Any) -> tuple[Any, Any, Any]:
    """``(rho, rho', rho'')`` of a named loss at ``z >= 0`` (elementwise)."""
    one = xp.ones_like(z)
    zero = xp.zeros_like(z)
    if loss == "linear":
        return z, one, zero
    if loss == "soft_l1":
        t = 1.0 + z
        r = xp.sqrt(t)
        return 2.0 * (r - 1.0), 1.0 / r, -0.5 / (t * r)
    if loss == "huber":
        big = z > 1.0
        zs = xp.where(big, z, one)  # safe argument: only z > 1 reaches the roots
        r = xp.sqrt(zs)
        return (xp.where(big, 2.0 * r - 1.0, z), xp.where(big, 1.0 / r, one),
                xp.where(big, -0.5 / (zs * r), zero))
    if loss == "cauchy":
        t = 1.0 + z
        return xp.log1p(z), 1.0 / t, -1.0 / (t * t)
    if loss == "arctan":
        t = 1.0 + z * z
        return xp.atan(z), 1.0 / t, -2.0 * z / (t * t)
    raise ValueError(f"loss: expected one of {LOSSES} or a callable, got {loss!r}")  # pragma: no cover


def loss_rho(xp: Any, loss: str | Callable, f: Any, f_scale: float) -> tuple[Any, Any, Any]:
    """``(C^2 rho(z), rho'(z), rho''(z) / C^2)`` at ``z = (f / C)^2``, elementwise.

    ``f`` has any shape (``(m,)`` or ``(B, m)``); so have the three results.
    With that scaling, ``0.5 * sum(first)`` is the cost and
    :func:`robust_scale` needs no further ``C``.
    """
    c2 = float(f_scale) ** 2
    z = (f * f) / c2
    if callable(loss):
        # scipy's contract: a 1-D z of all residuals in, (3, z.size) out
        r = loss(xp.reshape(z, (-1,)))
        if not (hasattr(r, "shape") and hasattr(r, "dtype")):
            r = xp.asarray(r, dtype=f.dtype, device=getattr(f, "device", None))
        r0, r1, r2 = (xp.reshape(r[i, ...], z.shape) for i in range(3))
    else:
        r0, r1, r2 = _rho_named(xp, loss, z)
    return c2 * r0, r1, r2 / c2


def loss_cost(xp: Any, loss: str | Callable, f: Any, f_scale: float) -> Any:
    """The robust cost ``0.5 * sum(C^2 rho((f/C)^2))`` over the last axis (``()`` or ``(B,)``)."""
    if loss == "linear":
        return 0.5 * xp.sum(f * f, axis=-1)
    r0, _, _ = loss_rho(xp, loss, f, f_scale)
    return 0.5 * xp.sum(r0, axis=-1)


def robust_scale(xp: Any, f: Any, J: Any, rho1: Any, rho2: Any) -> tuple[Any, Any]:
    """The residuals and Jacobian of the robust loss's Gauss-Newton model.

    ``f``: ``(..., m)``; ``J``: ``(..., m, n)``; ``rho1``, ``rho2`` as from
    :func:`loss_rho`. Returns ``(f_hat, J_hat)`` (new arrays; the inputs are
    not changed) with ``s = sqrt(max(rho' + 2 rho'' f^2, eps))``,
    ``f_hat = rho' f / s`` and ``J_hat = s J``.
    """
    eps = EPS64 if f.dtype == xp.float64 else float(xp.finfo(f.dtype).eps)
    s2 = rho1 + 2.0 * rho2 * f * f
    s = xp.sqrt(xp.where(s2 < eps, eps, s2))
    return rho1 * f / s, J * s[..., None]


def robust_model(xp: Any, loss: str | Callable, f: Any, J: Any, f_scale: float) -> tuple[Any, Any]:
    """``(f_hat, J_hat)`` of :func:`robust_scale` at the residuals ``f`` (``(k, m)``)
    and Jacobian ``J`` (``(k, m, n)``, or ``None``: then ``J_hat`` is ``None``);
    ``loss="linear"`` returns ``(f, J)`` itself."""
    if isinstance(loss, str) and loss == "linear":
        return f, J
    _, r1, r2 = loss_rho(xp, loss, f, f_scale)
    if J is None:
        fh, _ = robust_scale(xp, f, f[..., None], r1, r2)
        return fh, None
    return robust_scale(xp, f, J, r1, r2)
