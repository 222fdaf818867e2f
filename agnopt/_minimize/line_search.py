r"""Backtracking line search (Nocedal & Wright Alg. 3.1 with the quadratic
interpolation of §3.5), shared by Newton and line-search Newton-CG.

Backtracking from :math:`\alpha = 1` until the Armijo condition
:math:`f(x_k + \alpha p_k) \le f(x_k) + c_1 \alpha g_k^T p_k` holds, the
next trial from the minimizer of the quadratic interpolant, safeguarded to
:math:`[0.1\alpha, 0.5\alpha]`. A trial point where ``fun`` is not finite is
rejected and :math:`\alpha \leftarrow \alpha/4`. At the rounding level of
``f`` (predicted decrease :math:`-g_k^Tp_k \le 4\epsilon|f(x_k)|`) the full
step is accepted if :math:`f(x_k + p_k) \le f(x_k) + 4\epsilon|f(x_k)|`.
"""

from __future__ import annotations

import math
from typing import Any

from .common import _floats, _persist
from .problem import _Problem


def _line_search(P: _Problem, x: Any, f: Any, p: Any, gp: float, c1: float, max_bt: int):
    """Backtracking Armijo search (Nocedal & Wright Alg. 3.1, §3.5 interpolation).

    Returns ``(alpha, x_new, f_new)`` or ``None`` when no trial is accepted.
    """
    xp = P.xp
    f0, pn, xn = _floats(f, xp.max(xp.abs(p)), xp.max(xp.abs(x)))
    alpha = 1.0
    # At the rounding level of f (predicted decrease -g^T p <= 4 eps |f|),
    # Armijo cannot be decided from f values; the full step is then accepted
    # when f does not increase beyond rounding.
    noise = 4.0 * P.eps * abs(f0)
    for _ in range(max_bt):
        xt = _persist(x + alpha * p)
        ft = P.value(xt)
        ftf = float(ft)
        if math.isfinite(ftf) and (
            ftf <= f0 + c1 * alpha * gp or (alpha == 1.0 and -gp <= noise and ftf <= f0 + noise)
        ):
            return alpha, xt, ft
        if not math.isfinite(ftf):
            alpha *= 0.25  # rejected: fun not finite here
        else:
            denom = 2.0 * (ftf - f0 - gp * alpha)
            a_new = -gp * alpha * alpha / denom if denom > 0 else 0.5 * alpha
            alpha = min(max(a_new, 0.1 * alpha), 0.5 * alpha)
        if alpha * pn <= P.eps * max(1.0, xn):
            break
    return None
