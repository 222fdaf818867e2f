"""numba fast path of the Levenberg-Marquardt step route, for ONE float64 NumPy problem.

The engine's step route (:class:`agnopt._least_squares.routes.InMemoryRoute`)
forms the scaled normal equations ``As = D^-1 J^T J D^-1``, ``gs = D^-1 J^T f``
and the inverse Cholesky factor of ``As`` (:func:`~agnopt._least_squares.routes.normal_equations`),
then Moré's ``lmpar`` (:func:`agnopt._least_squares.lmpar.lmpar` on a
:class:`~agnopt._least_squares.lmpar.CholeskyBasis`) for the LM parameter and
the scaled step ``z``; the geodesic acceleration solves the damped system
again and the predicted reduction needs ``||J p||^2 = p^T J^T J p``. Written
once against ``xp`` for ``k`` problems, for one problem (``k = 1``) these are
a few hundred NumPy calls on ``(1, n, n)`` arrays per iteration. Here the
same arithmetic, in the same order, runs as numba-compiled loops
(``fastmath=False``: IEEE double operations, a correctly rounded ``sqrt``):

* the entry-by-entry Cholesky recurrence of
  :func:`agnopt._least_squares.cholesky.chol_inv_entries` (``n <= ENTRYWISE_N``;
  larger ``n`` keeps the generic route);
* the small products :func:`~agnopt._least_squares.cholesky.small_mv` /
  ``small_mtv`` and every sum over ``n`` entries in NumPy's order (a pairwise
  sum along the last axis, :func:`_pw`; rows added in order along the
  second-last axis), so the numbers are the generic path's bit for bit.

``J^T J`` and ``J^T f`` (sums over the ``m`` residuals, BLAS on NumPy) stay
the evaluator's NumPy calls. A problem whose normal equations are not well
conditioned (the SVD route) gets the generic route. Switched with the numba
judge (:func:`agnopt._kernels.lm_cpu.enabled`, ``AGNOPT_FAST``);
``tests/test_lm_fast.py`` checks it against the generic path.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import numpy as np

# the Cholesky recurrence runs entry by entry for n <= ENTRYWISE_N
from .._least_squares.cholesky import ENTRYWISE_N
from . import lm_batched_cpu as K

# lmpar's smallest positive magnitude (finfo(float64).smallest_normal)
DWARF = float(np.finfo(np.float64).smallest_normal)


def _pw(a, n):
    """``numpy.add.reduce`` of ``a[:n]`` (contiguous, ``n <= 128``): ``0 +`` NumPy's
    pairwise sum (sequential below 8 entries, else 8 accumulators)."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res = res + a[i]
        return 0.0 + res
    r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    i = 8
    top = n - (n % 8)
    while i < top:
        r0 = r0 + a[i]
        r1 = r1 + a[i + 1]
        r2 = r2 + a[i + 2]
        r3 = r3 + a[i + 3]
        r4 = r4 + a[i + 4]
        r5 = r5 + a[i + 5]
        r6 = r6 + a[i + 6]
        r7 = r7 + a[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res = res + a[i]
        i += 1
    return 0.0 + res


def _mv(A, v, out, tmp):
    """``small_mv``: ``out_i = sum_j A_ij v_j`` (the products, then :func:`_pw`)."""
    n = v.shape[0]
    for i in range(n):
        for j in range(n):
            tmp[j] = A[i, j] * v[j]
        out[i] = _pw(tmp, n)


def _mtv(A, v, out):
    """``small_mtv``: ``out_j = sum_i A_ij v_i``, the rows added in order."""
    n = v.shape[0]
    for j in range(n):
        s = A[0, j] * v[0]
        for i in range(1, n):
            s = s + A[i, j] * v[i]
        out[j] = s


def _sumsq(v, tmp):
    """``sum(v * v)`` over the last axis, as NumPy (``vector_norm`` is its ``sqrt``)."""
    n = v.shape[0]
    for i in range(n):
        tmp[i] = v[i] * v[i]
    return _pw(tmp, n)


# the longest vector :func:`_norm` takes (NumPy's pairwise block: one level, :func:`_pw`)
NORM_MAX_M = 128


def _norm(v):
    """``vector_norm(v)`` of ``v`` (m,), ``m <= 128`` (:func:`_pw`'s range): NumPy's
    ``sqrt(add.reduce(v * v))``, the same operations (a Python float)."""
    return math.sqrt(_sumsq(v, np.empty(v.shape[0])))


def _chol_inv(a, eps, Li):
    """:func:`agnopt._least_squares.cholesky._entries` on the lower triangle of
    ``a`` (n, n): ``Li`` (n, n) gets ``L^-1`` (zero above the diagonal); returns ``ok``.
    The batched kernels' recurrence (:func:`.lm_batched_cpu._chol_inv`, one
    implementation), in float64."""
    n = a.shape[0]
    ok = K._chol_inv(a, n, eps, 1.0, np.empty((n, n)), np.empty(n), Li)
    K._zero_upper(Li, n, 0.0)
    return ok


def _normal(A0, g, D, eps, rcond_inv):
    """:func:`agnopt._least_squares.routes.normal_equations` for one problem with
    every variable free: ``(As, gs, Linv0, well)``."""
    n = g.shape[0]
    As = np.empty((n, n))
    gs = np.empty(n)
    for i in range(n):
        for j in range(n):
            As[i, j] = A0[i, j] / (D[i] * D[j])
        gs[i] = g[i] / D[i]
    Li = np.empty((n, n))
    ok = _chol_inv(As, eps, Li)
    tmp = np.empty(n * n)
    for i in range(n):
        for j in range(n):
            tmp[i * n + j] = As[i, j] * (1.0 if i == j else 0.0)
    tr = _pw(tmp, n * n)
    for i in range(n):
        for j in range(n):
            tmp[i * n + j] = Li[i, j] * Li[i, j]
    cond = tr * _pw(tmp, n * n)
    return As, gs, Li, ok and (cond < rcond_inv)


def _solve_norm(Li, b, q, tmp, y):
    """``q = chol_solve(Li, b)`` and ``||Li q||^2`` (the ``sqrt`` squared, as NumPy)."""
    _mv(Li, b, y, tmp)
    _mtv(Li, y, q)
    _mv(Li, q, y, tmp)
    s = math.sqrt(_sumsq(y, tmp))
    return s * s


def _lmpar(As, gs, Linv0, delta, par0, active, eps, dwarf, rtol):
    """:func:`agnopt._least_squares.lmpar.lmpar` on one problem's
    :class:`~agnopt._least_squares.lmpar.CholeskyBasis`: ``(par, q, factor)``."""
    n = gs.shape[0]
    tmp = np.empty(n)
    y = np.empty(n)
    qn = np.empty(n)
    # lmpar_gauss_newton
    delta_s = delta if delta > 0 else 1.0
    s3 = _solve_norm(Linv0, gs, qn, tmp, y)
    dxnorm = math.sqrt(_sumsq(qn, tmp))
    fp = dxnorm - delta
    gn_ok = fp <= rtol * delta
    if gn_ok:
        return 0.0, qn, Linv0
    # lmpar_bounds (a Cholesky basis: full rank)
    s3 = s3 if s3 > 0 else 1.0
    parl = (fp / delta_s) * dxnorm * dxnorm / s3
    parl = K._maximum(parl, 0.0)
    gnorm = math.sqrt(_sumsq(gs, tmp))
    paru = gnorm / delta_s
    if paru == 0:
        paru = dwarf / K._minimum(delta_s, 0.1)
    par = K._minimum(K._maximum(par0, parl), paru)
    dx_safe = dxnorm if dxnorm > 0 else 1.0
    if par == 0:
        par = gnorm / dx_safe
    q = qn
    factor = Linv0
    if not active:
        return par, q, factor
    # lmpar_iteration, at most 10 times
    a = np.empty((n, n))
    for it in range(10):
        if par == 0:
            par = K._maximum(dwarf, 0.001 * paru)
        for i in range(n):
            for j in range(n):
                a[i, j] = As[i, j] + par * (1.0 if i == j else 0.0)
        Li = np.empty((n, n))
        _chol_inv(a, eps, Li)
        qt = np.empty(n)
        s3 = _solve_norm(Li, gs, qt, tmp, y)
        dxn_t = math.sqrt(_sumsq(qt, tmp))
        temp = fp
        fp_t = dxn_t - delta
        q, factor, fp = qt, Li, fp_t
        stop = (abs(fp_t) <= rtol * delta) or ((parl == 0) and (fp_t <= temp < 0))
        done = stop or it == 9
        s3 = s3 if s3 > 0 else 1.0
        parc = (fp_t / delta_s) * dxn_t * dxn_t / s3
        if not done and fp_t > 0:
            parl = K._maximum(parl, par)
        if not done and fp_t < 0:
            paru = K._minimum(paru, par)
        if done:
            break
        par = K._maximum(parl, par + parc)
    return par, q, factor


def _chol_solve(Li, h):
    n = h.shape[0]
    tmp = np.empty(n)
    y = np.empty(n)
    out = np.empty(n)
    _mv(Li, h, y, tmp)
    _mtv(Li, y, out)
    return out


def _jp_norm2(A0, p):
    """``sum(p * small_mv(A0, p))``: ``||J p||^2`` of the Cholesky route."""
    n = p.shape[0]
    tmp = np.empty(n)
    y = np.empty(n)
    _mv(A0, p, y, tmp)
    for i in range(n):
        y[i] = p[i] * y[i]
    return _pw(y, n)


def _trial(X, p, D, lb, ub, bounded, active):
    """:func:`agnopt._least_squares.engine.trial_step`'s arithmetic for one problem:
    ``Xt = clip(X + p, lb, ub)`` (``X`` where not ``active``), the step ``Xt - X``,
    ``||D p||`` and whether the bounds moved ``X + p``: ``(Xt, p, pnorm, projected)``."""
    n = X.shape[0]
    Xt = np.empty(n)
    pt = np.empty(n)
    tmp = np.empty(n)
    projected = False
    for i in range(n):
        x1 = X[i] + p[i]
        x = x1
        if bounded:  # np.clip: minimum(maximum(x, lb), ub), NaN propagating
            x = K._minimum(K._maximum(x, lb[i]), ub[i])
        if not active:
            x = X[i]
        Xt[i] = x
        pt[i] = x - X[i]
        if x != x1:  # the bounds moved x + p (not a rounding of (x + p) - x)
            projected = True
        d = D[i] * pt[i]
        tmp[i] = d * d
    return Xt, pt, math.sqrt(_pw(tmp, n)), projected


def _cov_one(A, tol, eps):
    """:func:`agnopt._least_squares.covariance.covariance`'s Cholesky route for one
    problem, from ``A = J^T J`` (n, n): ``(Li, dd, well)``, ``Li`` the inverse
    Cholesky factor of the column-scaled ``A / dd`` (``dd_ij = d_i d_j``, ``d``
    the column norms, 1 where zero) and ``well`` its certificate (factored,
    condition bound below 1e8, ``J`` certified of full rank with the margin
    ``tol``, ``A`` finite); the same operations in the same order."""
    n = A.shape[0]
    d = np.empty(n)
    row = np.empty(n)
    finite = True
    for i in range(n):
        for j in range(n):
            row[j] = A[i, j] * (1.0 if i == j else 0.0)
            if not np.isfinite(A[i, j]):
                finite = False
        di = np.sqrt(_pw(row, n))
        d[i] = di if di > 0 else 1.0
    dd = np.empty((n, n))
    As = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            dd[i, j] = d[i] * d[j]
            As[i, j] = A[i, j] / dd[i, j]
    Li = np.empty((n, n))
    ok = _chol_inv(As, eps, Li)
    tmp = np.empty(n * n)
    for i in range(n):
        for j in range(n):
            tmp[i * n + j] = Li[i, j] * Li[i, j]
    tr_inv = _pw(tmp, n * n)
    for i in range(n):
        for j in range(n):
            tmp[i * n + j] = As[i, j] * (1.0 if i == j else 0.0)
    cond = _pw(tmp, n * n) * tr_inv
    d2 = np.empty(n)
    for i in range(n):
        d2[i] = d[i] * d[i]
    mn = d2[0]  # (d is positive: no NaN for the minimum to propagate)
    for i in range(1, n):
        mn = min(mn, d2[i])
    full_rank = mn > tol * _pw(d2, n) * tr_inv
    return Li, dd, ok and (cond < 1e8) and full_rank and finite


def _cs_points(x0, rel, rstep):
    """:func:`agnopt._derivatives.numdiff.cs_points` of one float64 point ``x0`` (n,)
    with a relative step ``rel`` that is a power of 2 (the complex step's ``eps``):
    ``(P, h)``, ``P`` (n, n) complex128 with row ``j`` the point ``x0 + i h_j e_j``.
    The same numbers: ``h = rel x0`` (``copysign(rstep, x0 + 0)`` where that is
    zero, :func:`~agnopt._derivatives.numdiff._absolute_step`), and each entry as
    NumPy forms ``x0 + (h_j + 0i) (i e_j)`` (products by 0 and 1, exact, with
    their signs of zero)."""
    n = x0.shape[0]
    h = np.empty(n)
    for j in range(n):
        hj = rel * x0[j]
        if hj == 0:
            hj = math.copysign(rstep, x0[j] + 0.0)
        h[j] = hj
    P = np.empty((n, n), dtype=np.complex128)
    for j in range(n):
        for k in range(n):
            e = 1.0 if j == k else 0.0
            re = x0[k] + (h[j] * 0.0 - 0.0 * e)
            im = 0.0 + (h[j] * e + 0.0 * 0.0)
            P[j, k] = complex(re, im)
    return P, h


def _fd_points(x0, rstep):
    """The forward-difference points of one float64 point ``x0`` (n,) without
    bounds (:func:`agnopt._derivatives.numdiff._columns`' ``"2-point"`` with the
    default step): ``(X1, dx)``, row ``j`` of ``X1`` (n, n) the point
    ``x0 + h_j e_j`` with scipy's step ``h_j = rstep sign(x0_j) max(1, |x0_j|)``,
    ``dx_j = (x0_j + h_j) - x0_j``; the same operations as NumPy's, in order."""
    n = x0.shape[0]
    h = np.empty(n)
    dx = np.empty(n)
    for j in range(n):
        x = x0[j]
        sign = 1.0 if x >= 0 else -1.0
        h[j] = (rstep * sign) * K._maximum(1.0, abs(x))
        dx[j] = (x + h[j]) - x
    X1 = np.empty((n, n))
    for j in range(n):
        for k in range(n):
            X1[j, k] = x0[k] + h[j] * (1.0 if j == k else 0.0)
    return X1, dx


def _cs_quotients(S, h):
    """:func:`agnopt._derivatives.numdiff.cs_quotients` of one point: ``S`` (n, m)
    complex, row ``j`` the residuals at the point ``j``; ``J[i, j] = imag(S[j, i]) /
    h[j]`` (m, n), C-ordered as NumPy's result (the same divisions)."""
    n, m = S.shape
    J = np.empty((m, n))
    for i in range(m):
        for j in range(n):
            J[i, j] = S[j, i].imag / h[j]
    return J


def _fd_quotients(S, f0, dx):
    """The ``"2-point"`` quotients of one point (:func:`agnopt._derivatives.numdiff._columns`'
    compiled path): ``S`` (n, m) real, row ``j`` the residuals at the point ``j``;
    ``J[i, j] = (S[j, i] - f0[i]) / dx[j]`` (m, n), C-ordered (the same operations)."""
    n, m = S.shape
    J = np.empty((m, n))
    for i in range(m):
        for j in range(n):
            J[i, j] = (S[j, i] - f0[i]) / dx[j]
    return J


def _cs_check_points(x, w, h3, h2):
    """:func:`agnopt._derivatives.cs_check.cs_check_points` of one float64 point ``x``
    (n,) without bounds, ``w`` (n,) the direction's weights: ``(P3, M3, P2)``, each
    (n,): ``x + h3 v``, ``x - h3 v``, ``x + h2 v`` with ``v = w max(1, |x|)`` (the
    same operations as NumPy's, entry by entry)."""
    n = x.shape[0]
    P3 = np.empty(n)
    M3 = np.empty(n)
    P2 = np.empty(n)
    for j in range(n):
        v = w[j] * K._maximum(1.0, abs(x[j]))
        P3[j] = x[j] + h3 * v
        M3[j] = x[j] - h3 * v
        P2[j] = x[j] + h2 * v
    return P3, M3, P2


def _cs_check_steps(x, P3, M3, P2, h3, h2):
    """The steps of :func:`agnopt._derivatives.cs_check.cs_check_verdict` for one point
    (n,): ``u3 = ((P3 - x) + (x - M3)) / (2 h3)``, ``u2 = (P2 - x) / h2``."""
    n = x.shape[0]
    u3 = np.empty(n)
    u2 = np.empty(n)
    for j in range(n):
        u3[j] = ((P3[j] - x[j]) + (x[j] - M3[j])) / (2.0 * h3)
        u2[j] = (P2[j] - x[j]) / h2
    return u3, u2


def _nanmax_abs(a, n):
    """``max(|a|)`` over ``a[:n]`` as NumPy's ``max`` (NaN propagates; exact otherwise)."""
    res = abs(a[0])
    for i in range(1, n):
        v = abs(a[i])
        if not math.isnan(res) and (v > res or math.isnan(v)):  # (a NaN, once there, stays)
            res = v
    return res


def _cs_check_rows(F, Fp3, Fm3, Fp2, Ju3, Ju2, Ju3f, h3, h2):
    """The verdict of :func:`agnopt._derivatives.cs_check.cs_check_verdict` for one
    problem (m,) each (``Ju3f = Jcs u3f``): ``r3 = (Fp3 - Fm3) / (2 h3) - Ju3``,
    ``r2 = (Fp2 - F) / h2 - Ju2``, ``r3f = (Fp3 - F) / h3 - Ju3f``; the whole
    problem's test on the maxima (NaN propagating) and each residual's, the same
    operations, entry by entry, as NumPy's there (the maxima are exact)."""
    m = F.shape[0]
    r3 = np.empty(m)
    dr = np.empty(m)
    for i in range(m):
        a = (Fp3[i] - Fm3[i]) / (2.0 * h3) - Ju3[i]
        b = (Fp2[i] - F[i]) / h2 - Ju2[i]
        r3[i] = a
        dr[i] = b - a
    d = _nanmax_abs(r3, m)
    if not (d <= 10.0 * _nanmax_abs(dr, m) + 1e-9 * _nanmax_abs(Ju3, m)) and math.isfinite(d):
        return False
    mj = 0.0
    for i in range(m):
        v = abs(Ju3[i])
        if math.isfinite(v) and v > mj:
            mj = v
    floor = 1e-9 * mj
    for i in range(m):
        c = (Fp3[i] - F[i]) / h3 - Ju3f[i]
        rnd = (h2 * h2) * (abs(Fp3[i]) + abs(Fm3[i])) / (2.0 * h3)
        if math.isfinite(r3[i]) and not (
                abs(r3[i]) <= 10.0 * ((abs(dr[i]) + abs(c - r3[i])) + rnd) + floor):
            return False
    return True


def on() -> bool:
    """Whether this process's numba blocks for one float64 NumPy problem are on
    (compiled, by the first fit that used them, and ``AGNOPT_FAST`` not ``0``/``numpy``)."""
    return _ready and os.environ.get("AGNOPT_FAST", "") not in ("0", "numpy")


normal: Any = None
lmpar: Any = None
chol_solve: Any = None
jp_norm2: Any = None
trial: Any = None
cov_one: Any = None
cs_points: Any = None
fd_points: Any = None
cs_check_points: Any = None
cs_quotients: Any = None
fd_quotients: Any = None
norm: Any = None
cs_check_steps: Any = None
cs_check_rows: Any = None


def _compile() -> None:
    """The numba versions of :func:`_normal`, :func:`_lmpar`, :func:`_chol_solve`
    and :func:`_jp_norm2` (made once per process; cached on disk)."""
    global _pw, _mv, _mtv, _sumsq, _chol_inv, _solve_norm
    global normal, lmpar, chol_solve, jp_norm2, trial, cov_one, cs_points, fd_points, _ready
    global cs_check_points, cs_check_steps, cs_check_rows, _nanmax_abs, cs_quotients
    global fd_quotients, norm
    if _ready:
        return
    with _compile_lock:  # threads may get here together (see lm_batched_cpu._compile)
        if _ready:
            return
        import numba

        K._compile()  # (its _chol_inv, _maximum and _minimum, which these call)

        opts: dict[str, Any] = {"error_model": "numpy", "fastmath": False, "nogil": True,
                                "cache": True}
        jit = numba.njit(**opts)
        _pw, _mv, _mtv, _sumsq = jit(_pw), jit(_mv), jit(_mtv), jit(_sumsq)
        _chol_inv = jit(_chol_inv)
        _solve_norm = jit(_solve_norm)
        normal, lmpar = jit(_normal), jit(_lmpar)
        chol_solve, jp_norm2, trial = jit(_chol_solve), jit(_jp_norm2), jit(_trial)
        cov_one, cs_points, fd_points = jit(_cov_one), jit(_cs_points), jit(_fd_points)
        cs_check_points, cs_check_steps = jit(_cs_check_points), jit(_cs_check_steps)
        _nanmax_abs = jit(_nanmax_abs)
        cs_check_rows = jit(_cs_check_rows)
        cs_quotients, fd_quotients = jit(_cs_quotients), jit(_fd_quotients)
        norm = jit(_norm)
        _ready = True


_compile_lock = threading.Lock()
_ready = False


class FastRoute:
    """The Cholesky step route of one float64 NumPy problem, with the
    :class:`~agnopt._least_squares.routes.InMemoryRoute` interface (``step``,
    ``solve``, ``jp_norm2``; arrays with the leading axis ``k = 1``)."""

    __slots__ = ("A0", "As", "Lf", "Linv0", "dwarf", "eps", "gs")

    def __init__(self, A0, As, gs, Linv0, eps, dwarf):
        self.A0, self.As, self.gs, self.Linv0 = A0, As, gs, Linv0
        self.Lf = Linv0
        self.eps, self.dwarf = eps, dwarf

    def step(self, delta, par, active):
        par_n, q, self.Lf = lmpar(self.As, self.gs, self.Linv0, float(delta[0]), float(par[0]),
                                  bool(active[0]), self.eps, self.dwarf, 0.1)
        return np.array([par_n]), -q[None, :]

    def solve(self, h, par):
        return chol_solve(self.Lf, h[0])[None, :]

    def jp_norm2(self, p):
        return np.array([jp_norm2(self.A0, p[0])])


def route_one(xp, ev, st, eps, rcond_inv):
    """The step route of ``ev`` (one float64 NumPy problem) at the state ``st``:
    a :class:`FastRoute` on the Cholesky route of a small, well-conditioned
    problem with every variable free, else ``ev.route(st)`` (the generic one)."""
    n = st.X.shape[1]
    if not (ev.use_chol and n <= ENTRYWISE_N
            and (not ev.bounded or bool(np.logical_and.reduce(st.free[0])))):
        return ev.route(st)
    if not _ready:
        _compile()
    A0 = st.A0[0]
    As, gs, Linv0, well = normal(A0, st.g[0], st.D[0], eps, rcond_inv)
    if not well:
        return ev.route(st)
    return FastRoute(A0, As, gs, Linv0, eps, DWARF)


def trial_step_one(xp, box, st, p, par):
    """The engine's :func:`~agnopt._least_squares.engine.trial_step` for one
    float64 NumPy problem (``box`` its bounds), the arithmetic in :func:`trial`:
    ``(Xt, p, pnorm, projected, st)``."""
    if not _ready:
        _compile()
    active = bool(st.active[0])
    bounded = bool(box.bounded)
    X = st.X
    if bounded:
        Xt, pt, pnorm, projected = trial(X[0], p[0], st.D[0], box.lb[0], box.ub[0], True, active)
    else:
        Xt, pt, pnorm, projected = trial(X[0], p[0], st.D[0], X[0], X[0], False, active)
    delta = st.delta
    if active and bool(st.first[0]):
        d = float(delta[0])  # np.minimum: NaN propagates
        delta = np.array([pnorm if not math.isnan(d) and (math.isnan(pnorm) or pnorm < d)
                          else d])
    st = st._replace(delta=delta, par=par, nfev=st.nfev + (1 if active else 0))
    return (Xt[None, :], pt[None, :], np.array([pnorm]),
            np.array([projected]) if bounded else None, st)
