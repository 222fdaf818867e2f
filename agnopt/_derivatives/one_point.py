"""The one-point layer of :mod:`.numdiff` for ONE float64 NumPy point (numba's blocks on).

A least-squares solve of one small problem forms a Jacobian per iteration; on
:func:`.numdiff.fd_jacobian`'s generic path each one goes through the
argument-free steps of :func:`.numdiff._columns` and a dozen NumPy calls on
tiny arrays. For one float64 NumPy point with numba's blocks on (asked once per
solve: the caller's cache) :func:`one_point_jacobian` takes the compiled points
and quotients of :mod:`agnopt._kernels.lm_route` in one layer, and
:func:`cs_check_points_one` / :func:`cs_check_verdict_one` the check of the
default complex step (``Problem._cs_disagrees``). The same operations in the
same order: ``tests/test_lm_fast.py`` checks the Jacobians and the check's
points bit for bit and its verdict against the generic path.
"""

from __future__ import annotations

import math
import sys

from .._core.user_code import note
from .numdiff import (
    _FD_NOTE,
    _REAL_OUTPUT,
    _complex_dtype,
    _eps_for_method,
    cs_quotients,
)

__all__ = ["cs_check_points_one", "cs_check_verdict_one", "one_point_jacobian",
           "one_point_jacobian_fn"]


def one_point_jacobian(call, x0, f0, method, rel_step, lb, xp, cache):
    """:func:`.numdiff._columns`' compiled paths for one float64 NumPy point ``x0`` (n,) whose
    ``f0`` is float64 (:func:`.numdiff.fd_jacobian`, per solve: the constants in ``cache``): the
    complex step with a power-of-2 relative step and ``"2-point"`` without bounds and
    with the default step, the same points (:func:`.lm_route.cs_points`,
    :func:`.lm_route.fd_points`), evaluations and quotients in one layer; ``None``
    for every other case (the generic path)."""
    jac = one_point_jacobian_fn(call, method, rel_step, lb, xp, cache, x0.dtype, f0.dtype)
    return None if jac is None else jac(x0, f0)


def one_point_jacobian_fn(call, method, rel_step, lb, xp, cache, xdtype, fdtype, rows=None):
    """:func:`one_point_jacobian` of this ``call``, ``method`` and ``rel_step`` as a function
    ``jac(x0, f0)`` of the point (its constants found once: a solve that forms many
    Jacobians keeps it), or ``None`` where :func:`one_point_jacobian` is ``None``.
    ``rows``: ``call`` at each row of the points (n, n), as a list of arrays, where
    ``fun`` offers it (curve_fit's residual, which returns arrays and, for the complex
    step, finds which parameters are complex once for all the points:
    :func:`agnopt._least_squares.fit_model.model`'s ``point_rows``)."""
    if method == "cs":
        if not (type(rel_step) is float and math.frexp(rel_step)[0] == 0.5):
            return None
    elif not (method == "2-point" and lb is None and rel_step is None):
        return None
    key = ("rstep", method)
    rstep = cache.get(key)
    if rstep is None:
        rstep = cache[key] = _eps_for_method(xp, xdtype, fdtype, method)
    lm_route = sys.modules["agnopt._kernels.lm_route"]
    asarray, concat, isdtype = xp.asarray, xp.concat, xp.isdtype
    if method == "2-point":
        fd_points, fd_quotients = lm_route.fd_points, lm_route.fd_quotients

        def jac_fd(x0, f0):
            X1, dx = fd_points(x0, rstep)
            if rows is None:
                fs = [call(x) for x in X1]
            else:  # (as for the complex step below)
                try:
                    fs = rows(X1)
                except Exception as e:
                    note(e, _FD_NOTE)
                    raise
            dt, shape = f0.dtype, f0.shape
            for f in fs:
                if not ((f.dtype is dt or f.dtype == dt) and f.shape == shape):
                    J = concat([f[..., None] for f in fs], axis=-1) - f0[..., None]
                    return J / dx
            # (the quotients compiled: the same differences and divisions)
            return fd_quotients(asarray(fs), f0, dx)
        return jac_fd
    cdt = cache.get("cdt")
    if cdt is None:
        cdt = cache["cdt"] = _complex_dtype(xp, xdtype)
    cs_points, cs_quotients_c = lm_route.cs_points, lm_route.cs_quotients

    def jac_cs(x0, f0):
        P, h = cs_points(x0, rel_step, rstep)
        if rows is None:
            evals = [call(x) for x in P]
        else:  # (arrays, as call's; an error noted as call notes it)
            try:
                evals = rows(P)
            except Exception as e:
                note(e, _FD_NOTE)
                raise
        fcs = []
        same = True  # every column of dtype cdt and of f0's shape
        shape = f0.shape
        for fc in evals:
            fdt = fc.dtype
            if not (fdt is cdt or fdt == cdt):
                if not isdtype(fdt, "complex floating"):
                    raise ValueError(_REAL_OUTPUT)
                same = False
            elif fc.shape != shape:
                same = False
            fcs.append(fc)
        if same:
            # (the quotients compiled: the same divisions)
            return cs_quotients_c(asarray(fcs), h)
        return cs_quotients(xp, fcs, h, False)
    return jac_cs


def cs_check_points_one(X, w, h3, h2):
    """:func:`.cs_check.cs_check_points` of one float64 NumPy problem ``X`` (1, n) without bounds
    (the least-squares evaluator's check, where its Jacobians take :func:`one_point_jacobian`;
    ``w`` (n,) the weights as an array): the same numbers, compiled
    (:func:`agnopt._kernels.lm_route.cs_check_points`)."""
    P3, M3, P2 = sys.modules["agnopt._kernels.lm_route"].cs_check_points(X[0], w, h3, h2)
    return P3[None, :], M3[None, :], P2[None, :], True


def cs_check_verdict_one(xp, X, F, Jcs, P3, M3, P2, Fp3, Fm3, Fp2, h3, h2):
    """:func:`.cs_check.cs_check_verdict` of one float64 NumPy problem (arrays with the leading
    axis 1) as a Python bool: the steps and the residuals' test compiled
    (:func:`agnopt._kernels.lm_route.cs_check_steps`, ``cs_check_rows``: the same
    operations entry by entry; the maxima are exact), the products ``Jcs u`` (and the
    forward step ``u3f``) NumPy's as there."""
    lm_route = sys.modules["agnopt._kernels.lm_route"]
    u3, u2 = lm_route.cs_check_steps(X[0], P3[0], M3[0], P2[0], h3, h2)
    Ju3 = xp.matmul(Jcs, u3[None, :, None])[:, :, 0]
    Ju2 = xp.matmul(Jcs, u2[None, :, None])[:, :, 0]
    Ju3f = xp.matmul(Jcs, ((P3 - X) / h3)[:, :, None])[:, :, 0]
    return bool(lm_route.cs_check_rows(F[0], Fp3[0], Fm3[0], Fp2[0], Ju3[0], Ju2[0], Ju3f[0],
                                       h3, h2))
