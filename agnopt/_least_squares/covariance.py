"""Parameter covariance of ``curve_fit``: ``(J^T J)^{-1}`` for a stack of Jacobians."""

from __future__ import annotations

import math

import array_api_compat

from .. import _kernels
from .._core.backend import compiled
from .arrays import count_dtype, device, host_linalg, machine_eps
from .batched import compactable, positions, rows_where, scatter
from .cholesky import ENTRYWISE_N, chol_inv
from .routes import CHOL_MAX_N


def covariance(xp, J, m_fit=None, general=False):
    """``(J^T J)^{-1}`` for a stack ``J`` (B, m, n), inf where rank deficient.

    ``m_fit`` (B,) integer, optional: the number of data points of each
    problem when some rows of ``J`` are zero (omitted points); the threshold
    then uses ``max(m_fit, n)`` per problem, as the fit without those rows.

    Singular where a singular value of ``J`` is at most
    ``eps * max(m, n) * s_max`` (the threshold of scipy's trf/dogbox
    ``curve_fit``, which drops those values where agnopt reports inf). Two routes, chosen per
    problem: for ``n <= 16`` the Cholesky factor of the column-scaled
    ``J^T J`` gives the inverse when its certified condition bound
    ``trace * trace(inverse)`` is below 1e8 (so ``cond(J) < 1e4`` after
    column scaling, and the inverse is accurate to about 1e-8 relative) and
    the column norms certify that the unscaled ``J`` is far (a factor 100)
    above the singular threshold; all other problems get ``V diag(1/s^2) V^T`` from the SVD of
    ``J`` itself (gathered into a sub-batch where the backend allows it).
    ``general``: no host reads (inside a compiled program): both routes for
    every problem, merged by ``where`` (the same numbers).
    """
    B, m, n = J.shape
    if B == 1 and m >= n and n <= ENTRYWISE_N:
        fast = _covariance_one(xp, J)
        if fast is not None:
            return fast
    dev = device(J)
    if n <= CHOL_MAX_N and m >= n:
        eye = xp.eye(n, dtype=J.dtype, device=dev)
        A = xp.matmul(xp.matrix_transpose(J), J)
        d = xp.sqrt(xp.sum(A * eye, axis=-1))
        d = xp.where(d > 0, d, xp.ones_like(d))
        dd = d[:, :, None] * d[:, None, :]
        As = A / dd
        Li, ok = chol_inv(xp, As)
        tr_inv = xp.sum(Li * Li, axis=(-2, -1))  # trace(As^{-1}) >= 1 / lambda_min(As)
        cond = xp.sum(As * eye, axis=(-2, -1)) * tr_inv
        # scipy's rank rule is on J itself, not on the column-scaled J: with
        # d_j the column norms, s_min(J)^2 >= min(d^2) / trace(As^{-1}) and
        # s_max(J)^2 <= sum(d^2), so J is certified of full rank (with a margin
        # of 100 on the threshold) when the first exceeds (100 eps max(m, n))^2
        # times the second; otherwise the SVD decides. (Columns ~1e-17 of a
        # Gaussian of amplitude ~0 are well conditioned once scaled.)
        d2 = d * d
        tol = (100.0 * float(xp.finfo(J.dtype).eps) * max(m, n)) ** 2
        full_rank = xp.min(d2, axis=-1) > tol * xp.sum(d2, axis=-1) * tr_inv
        well = ok & (cond < 1e8) & full_rank & xp.all(xp.isfinite(A), axis=(-2, -1))
        all_well = not general and bool(xp.all(well))  # (then Li needs no masking)
        if not all_well:
            Li = xp.where(well[:, None, None], Li, eye)
        pcov = xp.matmul(xp.matrix_transpose(Li), Li) / dd
        singular = xp.zeros((B,), dtype=xp.bool, device=dev)
        if all_well:
            return pcov, singular
        if compactable(xp) and not general:
            idx = rows_where(xp, ~well)
            mask, pos = positions(xp, idx, B, dev)
            pc_s, sg_s = _covariance_svd(
                xp, xp.take(J, idx, axis=0), None if m_fit is None else xp.take(m_fit, idx, axis=0))
            return scatter(xp, pcov, pc_s, mask, pos), scatter(xp, singular, sg_s, mask, pos)
        pc_s, sg_s = _covariance_svd(xp, J, m_fit)
        return (xp.where(well[:, None, None], pcov, pc_s),
                xp.where(well, singular, sg_s))
    return _covariance_svd(xp, J, m_fit)


def unbatched_pcov(xp, J, cost, absolute_sigma, m, n):
    """``curve_fit``'s ``(pcov, warn)`` of one fit (``curve_fit._pcov``'s unbatched
    case) without host reads: ``J`` (m, n) and ``cost`` (0-d) at the solution;
    ``pcov`` (n, n) scaled by the reduced chi-square unless ``absolute_sigma``
    (inf where ``m <= n``), ``warn`` a 0-d bool (singular, or ``m <= n``). One
    compiled program on JAX (:data:`_unbatched_pcov`), where ``curve_fit`` takes
    it; the same rules and numbers as ``_pcov``, whose host reads only skip work."""
    Jf = xp.reshape(J, (1,) + tuple(J.shape))
    pcov, singular = covariance(xp, Jf, general=True)
    # (a non-finite Jacobian is not reported as singular)
    singular = singular & xp.all(xp.isfinite(xp.reshape(Jf, (1, -1))), axis=-1)
    if absolute_sigma:
        return pcov[0, ...], xp.any(singular)
    if m <= n:
        return xp.full_like(pcov[0, ...], math.inf), xp.asarray(True)
    s_sq = 2.0 * xp.reshape(cost, (1,)) / (m - n)
    s_sq = xp.where(singular, xp.ones_like(s_sq), s_sq)
    pcov = xp.where(singular[:, None, None], pcov, pcov * s_sq[:, None, None])
    return pcov[0, ...], xp.any(singular)


# one compiled program on JAX (agnopt._core.backend.compiled), as written elsewhere
_unbatched_pcov = compiled(unbatched_pcov, static=("absolute_sigma", "m", "n"))


def _covariance_one(xp, J):
    """:func:`covariance` of one float64 NumPy problem with the numba route on
    (:mod:`agnopt._kernels.lm_route`, whose blocks a process compiles for its unbatched
    fits): ``J^T J`` and the final product are NumPy's, as in :func:`covariance`, the
    certificate and the factor in between run compiled (the same numbers). ``None``
    where it does not apply or the certificate fails (then :func:`covariance`
    decides, as always)."""
    # (compiled, so imported, by the process's first fit that used them)
    lm_route = _kernels.loaded("lm_route")
    if not (lm_route is not None and lm_route.on() and array_api_compat.is_numpy_array(J)
            and J.dtype == xp.float64):
        return None
    m, n = J.shape[1], J.shape[2]
    A = xp.matmul(xp.matrix_transpose(J), J)
    tol = (100.0 * machine_eps(xp, J.dtype) * max(m, n)) ** 2
    Li, dd, well = lm_route.cov_one(A[0], tol, machine_eps(xp, J.dtype))
    if not well:
        return None
    Li = Li[None, ...]
    pcov = xp.matmul(xp.matrix_transpose(Li), Li) / dd[None, ...]
    return pcov, xp.zeros((1,), dtype=xp.bool)


def _covariance_svd(xp, J, m_fit=None):
    """``(J^T J)^{-1}`` (B, n, n) from the SVD of ``J`` (B, m, n); ``singular`` (B,) where rank deficient (pcov inf)."""
    B, m, n = J.shape
    _U, s, Vt = host_linalg(xp, "svd", J, full_matrices=False)
    eps = float(xp.finfo(J.dtype).eps)
    if m_fit is None:
        thr = eps * max(m, n) * s[:, 0:1]
    else:
        rows = xp.astype(xp.where(m_fit > n, m_fit, xp.full_like(m_fit, n)), J.dtype)
        thr = eps * rows[:, None] * s[:, 0:1]
    k = s.shape[-1]
    singular = xp.any(s <= thr, axis=-1) if k == n else xp.ones((B,), dtype=xp.bool, device=device(J))
    s_safe = xp.where(s > thr, s, xp.ones_like(s))
    Vs = xp.matrix_transpose(Vt) / (s_safe * s_safe)[:, None, :]
    pcov = xp.matmul(Vs, Vt)
    pcov = xp.where(singular[:, None, None], xp.full_like(pcov, math.inf), pcov)
    return pcov, singular


def minpack_factors(xp, J, f):
    """MINPACK's ``fjac``, ``ipvt``, ``qtf`` (scipy ``leastsq``'s ``full_output``) for one problem.

    ``J`` (m, n) the Jacobian at the solution, ``f`` (m,) the residuals there.
    The QR factorization with column pivoting ``J P = Q R`` (Businger and
    Golub: at step ``k`` the column of largest norm after removing the span
    of the columns already chosen), formed as a greedy pivot order followed
    by the unpivoted QR of ``J P``. Returns ``(fjac, ipvt, qtf)``: ``fjac``
    ``(n, m)`` as scipy returns MINPACK's array (``fjac.T[:n, :]`` is ``R``;
    the entries below it, where MINPACK keeps its Householder vectors, are
    zero here), ``ipvt`` ``(n,)`` int32 the column order, 0-based as scipy (>= 1.11)
    returns it (column ``j`` of ``P`` is column ``ipvt[j]`` of the identity),
    ``qtf = Q^T f`` ``(n,)``.
    """
    m, n = J.shape
    dev = device(J)
    ar = xp.arange(n, device=dev)
    chosen = xp.zeros((n,), dtype=xp.bool, device=dev)
    Rc, order = J, []
    for _ in range(n):
        norms = xp.where(chosen, -xp.ones((n,), dtype=J.dtype, device=dev),
                         xp.linalg.vector_norm(Rc, axis=0))
        p = int(xp.argmax(norms))
        order.append(p)
        chosen = chosen | (ar == p)
        c = Rc[:, p]
        nc = float(xp.linalg.vector_norm(c))
        if nc > 0.0:
            q = c / nc
            Rc = Rc - q[:, None] * xp.matmul(q[None, :], Rc)
    perm = xp.asarray(order, dtype=count_dtype(xp), device=dev)
    Q, R = xp.linalg.qr(xp.take(J, perm, axis=1))
    qtf = xp.matmul(xp.matrix_transpose(Q), f[:, None])[:, 0]
    full = xp.concat([R, xp.zeros((m - n, n), dtype=J.dtype, device=dev)], axis=0)
    return xp.matrix_transpose(full), xp.astype(perm, xp.int32), qtf  # ipvt int32, as scipy
