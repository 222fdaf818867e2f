r"""Nonlinear least squares: Levenberg-Marquardt (MINPACK ``lmder``) and damped Gauss-Newton.

One implementation, written against the Array API, that solves one problem or
``B`` independent problems at once (``batched=True``). Internally every
problem set is a batch: an unbatched call is a batch of one, so batched and
unbatched runs execute the same arithmetic, problem by problem.

The linear algebra of one iteration works on the scaled Jacobian
:math:`\tilde J = J D^{-1}` through its singular value decomposition
:math:`\tilde J = U S V^T` (batched ``xp.linalg.svd``). With
:math:`w = s^2` and :math:`c = S U^T f = V^T \tilde J^T f` the
Levenberg-Marquardt step for any damping :math:`\lambda` is

.. math:: D p(\lambda) = -V \,\frac{c}{w + \lambda},

so the search for :math:`\lambda` (Moré's ``lmpar``) costs only ``O(n)``
per trial value, and the decomposition never squares the condition number
(it is the SVD of :math:`\tilde J`, not an eigendecomposition of
:math:`\tilde J^T\tilde J`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ._backend import namespace_name, resolve
from ._numdiff import approx_derivative, prepare_bounds
from ._result import OptimizeResult

__all__ = ["least_squares"]

EPS64 = 2.220446049250313e-16

TERMINATION_MESSAGES = {
    -2: "Stopped because `callback` function raised `StopIteration` or returned `True`",
    0: "The maximum number of function evaluations is exceeded.",
    1: "`gtol` termination condition is satisfied.",
    2: "`ftol` termination condition is satisfied.",
    3: "`xtol` termination condition is satisfied.",
    4: "Both `ftol` and `xtol` termination conditions are satisfied.",
}
# MINPACK's info 6/7/8 ("tolerance too small, no further improvement possible")
# are reported with the matching common status and this message.
_MACHINE_MESSAGES = {
    6: "`ftol` termination condition is satisfied at machine precision "
    "(no further reduction in the sum of squares is possible).",
    7: "`xtol` termination condition is satisfied at machine precision "
    "(no further improvement in the approximate solution x is possible).",
    8: "`gtol` termination condition is satisfied at machine precision "
    "(the residuals are orthogonal to the Jacobian's columns to machine precision).",
}
# MINPACK info -> common status (as scipy's FROM_MINPACK_TO_COMMON, plus 6/7/8)
_FROM_MINPACK = {1: 2, 2: 3, 3: 4, 4: 1, 5: 0, 6: 2, 7: 3, 8: 1}

_JAC_STRINGS = ("2-point", "3-point", "cs", "autodiff")
DEFAULT_JAC = "cs"
# Initial trust-region radius factor: Delta_0 = _FACTOR * ||D x0|| (MINPACK's
# ``factor``; MINPACK recommends a value in [0.1, 100] and defaults to 100;
# 1 is scipy trf's choice and keeps the first steps from jumping to the
# spurious stationary regions of BoxBOD and MGH09 from NIST's start 1).
_FACTOR = 1.0
# Geodesic acceleration constants (finite-difference step along v, and the
# acceptance bound 2||a|| <= alpha ||v||; Transtrum & Sethna use 0.1 and 0.75,
# the smaller alpha here only accepts mild corrections).
_ACC_H = 0.1
_ACC_ALPHA = 0.25
# eigh of Js^T Js instead of the SVD of Js when w_min > _GRAM_RCOND * w_max
_GRAM_RCOND = 1e-8


# --------------------------------------------------------------------------- helpers
def _is_dask(xp: Any) -> bool:
    return "dask" in namespace_name(xp)


def _persist(xp: Any, *arrs: Any) -> tuple:
    """Dask: compute the state so the graph does not grow with the iterations."""
    if not _is_dask(xp):
        return arrs
    import dask

    return tuple(dask.persist(*arrs))


def _host_linalg(xp: Any, fname: str, A: Any, **kw: Any) -> tuple:
    """``xp.linalg.<fname>`` on a stack of small matrices.

    Dask's linalg has no batched (stacked) SVD / eigh, so for Dask the
    (small: B x m x n) stack is materialized, decomposed with the namespace
    of the computed chunk (NumPy or CuPy, found by ``array_namespace``) and
    wrapped back into Dask arrays. Every other backend calls ``xp.linalg``
    directly.
    """
    if _is_dask(xp):
        from array_api_compat import array_namespace

        An = A.compute()
        ns = array_namespace(An)
        res = getattr(ns.linalg, fname)(An, **kw)
        return tuple(xp.asarray(r) for r in res)
    return tuple(getattr(xp.linalg, fname)(A, **kw))


def _as_array(x: Any, what: str) -> Any:
    """Arrays pass through; lists / tuples / numbers become NumPy float64 arrays."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    import array_api_compat.numpy as np_xp  # default backend for plain Python input

    try:
        return np_xp.asarray(x, dtype=np_xp.float64)
    except Exception as e:
        raise TypeError(f"{what}: expected an array, got {type(x).__name__}") from e


def _call_checked(fun, X, what, where):
    try:
        return fun(X)
    except Exception as e:
        raise RuntimeError(f"{what} raised {type(e).__name__} {where}: {e}") from e


# --------------------------------------------------------------------------- problem set-up
class _Problem:
    """Residual and Jacobian of a (possibly batched) problem as ``(B, n) -> (B, m)``."""

    def __init__(self, fun, jac, x0, batched, args, kwargs, lb, ub, xp, dev):
        self.fun, self.jac_arg, self.batched = fun, jac, batched
        self.args, self.kwargs = args, kwargs
        self.xp, self.dev = xp, dev
        self.dtype = x0.dtype
        self.lb, self.ub = lb, ub  # (B, n)
        self.m = None
        self.auto_cs = jac is None
        if jac is None:
            self.jac_arg = "cs"

    def _fix_f(self, f, B, what="fun"):
        xp = self.xp
        if not (hasattr(f, "shape") and hasattr(f, "dtype")):
            f = xp.asarray(f, dtype=self.dtype, device=self.dev)
        if self.batched:
            if f.ndim == 1 and f.shape[0] == B:
                f = xp.reshape(f, (B, 1))
            if f.ndim != 2 or f.shape[0] != B:
                raise ValueError(
                    f"{what}: with batched=True expected residuals of shape (B, m) with "
                    f"B = {B}, got {tuple(f.shape)}"
                )
        else:
            if f.ndim == 0:
                f = xp.reshape(f, (1,))
            if f.ndim != 1:
                raise ValueError(
                    f"{what}: expected residuals of shape (m,) (at most 1-D), got "
                    f"{tuple(f.shape)}"
                )
            f = xp.reshape(f, (1, f.shape[0]))
        if f.dtype != self.dtype:
            if not xp.isdtype(f.dtype, ("real floating", "integral")):
                raise TypeError(f"{what}: expected real residuals, got dtype {f.dtype}")
            f = xp.astype(f, self.dtype)
        if self.m is not None and f.shape[1] != self.m:
            raise ValueError(
                f"{what}: the number of residuals changed from {self.m} to {f.shape[1]}"
            )
        return f

    def residual(self, X, where="at a trial point"):
        """``X`` (B, n) -> ``F`` (B, m)."""
        if self.batched:
            f = _call_checked(lambda z: self.fun(z, *self.args, **self.kwargs), X, "fun", where)
        else:
            f = _call_checked(lambda z: self.fun(z[0, :], *self.args, **self.kwargs), X, "fun", where)
        return self._fix_f(f, X.shape[0])

    def jacobian(self, X, F):
        """``J`` (B, m, n) at ``X`` with ``F = residual(X)``."""
        xp = self.xp
        B, n = X.shape
        m = F.shape[1]
        jac = self.jac_arg
        lbx, ubx = self.lb, self.ub
        if callable(jac):
            if self.batched:
                J = _call_checked(lambda z: jac(z, *self.args, **self.kwargs), X, "jac", "")
            else:
                J = _call_checked(lambda z: jac(z[0, :], *self.args, **self.kwargs), X, "jac", "")
            if not (hasattr(J, "shape") and hasattr(J, "dtype")):
                J = xp.asarray(J, dtype=self.dtype, device=self.dev)
            want = (B, m, n) if self.batched else (m, n)
            if not self.batched and J.ndim == 1 and m == 1 and J.shape[0] == n:
                J = xp.reshape(J, (1, n))
            if tuple(J.shape) != want:
                raise ValueError(
                    f"jac: expected an array of shape {want} (residuals x parameters), "
                    f"got {tuple(J.shape)}"
                )
            if not self.batched:
                J = xp.reshape(J, (1, m, n))
        elif jac == "autodiff":
            from ._autodiff import jacobian as ad_jacobian

            f = lambda z: self.fun(z, *self.args, **self.kwargs)  # noqa: E731
            if self.batched:
                J = ad_jacobian(f, X, batched=True)
            else:
                J = xp.reshape(ad_jacobian(f, X[0, :]), (1, m, n))
        else:
            # complex step: a tiny relative step h = eps * |x_j| (eps where x_j = 0).
            # It never cancels, and it keeps the truncation error O((h/x)^2)
            # negligible for parameters far from 1 (scipy's eps**0.5 * max(1, |x|)
            # would be larger than a parameter of size 1e-9, e.g. Hahn1's b7).
            rel = float(xp.finfo(self.dtype).eps) if jac == "cs" else None
            if jac == "cs" and self.auto_cs:
                # default Jacobian: the complex step, unless fun cannot take
                # complex input (raises, or returns real output); then central
                # differences for the rest of the solve.
                try:
                    return self._fd(X, F, "cs", rel)
                except (RuntimeError, ValueError, TypeError):
                    self.jac_arg = "3-point"
                    self.auto_cs = False
                    return self._fd(X, F, "3-point", None)
            return self._fd(X, F, jac, rel)
        if J.dtype != self.dtype:
            J = xp.astype(J, self.dtype)
        return J

    def _fd(self, X, F, jac, rel):
        xp = self.xp
        B, n = X.shape
        m = F.shape[1]
        lbx, ubx = self.lb, self.ub
        if True:
            if self.batched:
                J = approx_derivative(
                    self.fun, X, method=jac, f0=F, bounds=(lbx, ubx), rel_step=rel,
                    args=self.args, kwargs=self.kwargs, batched=True,
                )
                if J.ndim == 2:
                    J = xp.reshape(J, (B, 1, n))
            else:
                J = approx_derivative(
                    self.fun, X[0, :], method=jac, f0=F[0, :], bounds=(lbx[0, :], ubx[0, :]),
                    rel_step=rel,
                    args=self.args, kwargs=self.kwargs,
                )
                J = xp.reshape(J, (1, m, n))
        if J.dtype != self.dtype:
            J = xp.astype(J, self.dtype)
        return J


# --------------------------------------------------------------------------- linear algebra
def _spectral(xp, J, D, F, free):
    """Spectral decomposition of the scaled Jacobian ``Js = J D^{-1}`` (frozen columns zeroed).

    Returns ``w`` (B, k): the squared singular values of ``Js``; ``c = V^T Js^T f``
    (B, k); ``V`` (B, n, k): the right singular vectors; ``good`` (B, k):
    singular values above the rank threshold ``eps * max(m, n) * s_max`` (as
    scipy's ``solve_lsq_trust_region``); ``full_rank`` (B,); and ``Js``.

    Two routes give the same ``w, V`` (per problem, so batched = solo):

    * well-conditioned problems (``m >= n`` and ``w_min > 1e-8 w_max``, i.e.
      ``cond(Js) < 1e4``): the eigendecomposition of the small ``n x n``
      matrix ``Js^T Js`` (batched ``eigh``, cheap). Squaring the condition
      number costs at most ``eps * 1e8`` (~2e-8) relative accuracy in the
      smallest eigenvalue, which only perturbs the step of an iteration, not
      the fixed point (the gradient ``Js^T f`` is always formed from ``Js``);
    * all others (ill-conditioned, rank deficient, frozen bound columns,
      ``m < n``): the SVD of ``Js`` itself (batched ``svd``), which never
      squares the condition number.
    """
    B, m, n = J.shape
    Js = J / D[:, None, :]
    Js = xp.where(free[:, None, :], Js, xp.zeros_like(Js))
    eps = float(xp.finfo(J.dtype).eps)
    JsT = xp.matrix_transpose(Js)
    well = None
    if m >= n:
        G = xp.matmul(JsT, Js)
        ev, Ve = _host_linalg(xp, "eigh", G)  # ascending
        wmax = ev[:, n - 1]
        well = (wmax > 0) & (ev[:, 0] > _GRAM_RCOND * wmax)
        need_svd = not bool(xp.all(well))
    else:
        need_svd = True
    if need_svd:
        _, s, Vt = _host_linalg(xp, "svd", Js, full_matrices=False)
        k = s.shape[-1]
        thr = eps * max(m, n) * s[:, 0:1]
        w_s, V_s, good_s = s * s, xp.matrix_transpose(Vt), s > thr
        if well is not None:
            w = xp.where(well[:, None], ev, w_s)
            V = xp.where(well[:, None, None], Ve, V_s)
            good = xp.where(well[:, None], xp.ones_like(good_s), good_s)
        else:
            w, V, good = w_s, V_s, good_s
    else:
        k = n
        w, V = ev, Ve
        good = xp.ones(ev.shape, dtype=xp.bool, device=_device(ev))
    if k == n:
        full_rank = xp.all(good, axis=-1) & xp.all(free, axis=-1)
    else:
        full_rank = xp.zeros((B,), dtype=xp.bool, device=_device(J))
    gs = xp.matmul(F[:, None, :], Js)  # (B, 1, n): (Js^T f)^T
    c = xp.matmul(gs, V)[:, 0, :]
    return w, c, V, good, full_rank, Js


def _lmpar(xp, delta, par0, w, c, good, full_rank, active):
    r"""Moré's ``lmpar`` in the SVD basis, for every problem of the batch.

    Finds ``par >= 0`` such that the step ``q(par) = c / (w + par)`` (scaled
    step ``D p = -V q``) has ``| ||q|| - delta | <= 0.1 delta``, or
    ``par = 0`` when the Gauss-Newton step has ``||q|| <= 1.1 delta``; at most
    10 iterations of Moré's safeguarded Newton iteration on
    :math:`\phi(\lambda) = \|q(\lambda)\| - \Delta` (as MINPACK).
    """
    dwarf = float(xp.finfo(w.dtype).smallest_normal)
    zero = xp.zeros_like(w)
    wsafe = xp.where(good, w, xp.ones_like(w))
    qn = xp.where(good, c / wsafe, zero)  # (truncated) Gauss-Newton step
    dxnorm = xp.linalg.vector_norm(qn, axis=-1)
    fp = dxnorm - delta
    gn_ok = fp <= 0.1 * delta
    # lower bound parl (Newton step on phi at 0), 0 if rank deficient
    s3 = xp.sum(xp.where(good, c * c / (wsafe * wsafe * wsafe), zero), axis=-1)
    s3 = xp.where(s3 > 0, s3, xp.ones_like(s3))
    parl = xp.where(full_rank, (fp / delta) * dxnorm * dxnorm / s3, xp.zeros_like(fp))
    parl = xp.maximum(parl, xp.zeros_like(parl))
    gnorm = xp.linalg.vector_norm(c, axis=-1)
    paru = gnorm / delta
    paru = xp.where(paru == 0, dwarf / xp.minimum(delta, xp.full_like(delta, 0.1)), paru)
    par = xp.maximum(par0, parl)
    par = xp.minimum(par, paru)
    dx_safe = xp.where(dxnorm > 0, dxnorm, xp.ones_like(dxnorm))
    par = xp.where(par == 0, gnorm / dx_safe, par)
    done = gn_ok | ~active
    q = qn
    if bool(xp.all(done)):
        return xp.where(gn_ok, xp.zeros_like(par), par), q
    for it in range(10):
        par_t = xp.where(par == 0, xp.maximum(xp.full_like(paru, dwarf), 0.001 * paru), par)
        par = xp.where(done, par, par_t)
        den = w + par[:, None]
        qt = c / den
        dxn_t = xp.linalg.vector_norm(qt, axis=-1)
        temp = fp
        fp_t = dxn_t - delta
        q = xp.where(done[:, None], q, qt)
        fp = xp.where(done, fp, fp_t)
        stop = (xp.abs(fp_t) <= 0.1 * delta) | ((parl == 0) & (fp_t <= temp) & (temp < 0))
        if it == 9:
            stop = xp.ones_like(stop)
        newly = ~done & stop
        done = done | stop
        # Newton correction (Moré): parc = (fp/delta) * ||q||^2 / sum(c^2/(w+par)^3)
        s3 = xp.sum(c * c / (den * den * den), axis=-1)
        s3 = xp.where(s3 > 0, s3, xp.ones_like(s3))
        parc = (fp_t / delta) * dxn_t * dxn_t / s3
        parl = xp.where(~done & (fp_t > 0), xp.maximum(parl, par), parl)
        paru = xp.where(~done & (fp_t < 0), xp.minimum(paru, par), paru)
        par = xp.where(done, par, xp.maximum(parl, par + parc))
        del newly
        if bool(xp.all(done)):  # frozen problems do not change: exiting is exact
            break
    par = xp.where(gn_ok, xp.zeros_like(par), par)
    return par, q


# --------------------------------------------------------------------------- main entry
def least_squares(
    fun: Callable[..., Any],
    x0: Any,
    *,
    jac: Any = None,
    method: str = "lm",
    bounds: Any = (-math.inf, math.inf),
    ftol: float = 1e-8,
    xtol: float = 1e-8,
    gtol: float = 1e-8,
    x_scale: Any = None,
    max_nfev: int | None = None,
    args: tuple = (),
    kwargs: dict | None = None,
    batched: bool = False,
    verbose: int = 0,
    callback: Callable | None = None,
    history: bool = False,
) -> OptimizeResult:
    r"""Solve a nonlinear least-squares problem (or ``B`` of them at once).

    Minimizes :math:`F(x) = \tfrac12 \|f(x)\|^2` for residuals
    :math:`f: \mathbb R^n \to \mathbb R^m`, optionally subject to
    ``lb <= x <= ub``, on any Array API backend (the arrays never leave
    their backend or device).

    Parameters
    ----------
    fun : callable
        ``fun(x, *args, **kwargs)`` returning the residuals, shape ``(m,)``
        for ``x`` of shape ``(n,)``; with ``batched=True``, ``(B, m)`` for
        ``(B, n)`` (row ``b`` must depend on row ``b`` only).
    x0 : array
        Starting point, ``(n,)`` or ``(B, n)`` (``batched=True``), real
        floating dtype; the computation runs in this dtype on this device.
        Lists are converted to NumPy float64 arrays.
    jac : None, {"cs", "2-point", "3-point", "autodiff"} or callable
        How to get the Jacobian ``J = df/dx``, ``(m, n)`` (``(B, m, n)``):

        * ``None`` (default): ``"cs"``; if ``fun`` cannot take complex input
          (it raises, e.g. a torch ``matmul`` of a float64 matrix with a
          complex vector, or returns real output) the solve switches to
          ``"3-point"`` for good. A ``fun`` that silently loses the imaginary
          part (``abs``, ``maximum``...) is not detected: pass
          ``jac="3-point"`` for such functions.
        * ``"cs"``: complex step, ``Im f(x + i h e_j) / h`` with
          ``h = sqrt(eps) max(1, |x_j|)``. For residuals that are analytic
          in complex arithmetic (all usual model functions: polynomials,
          rationals, exp, log, powers, trigonometric functions) it is exact
          to rounding, because no difference of nearby values is taken. It is
          the default because it makes Levenberg-Marquardt reach the NIST
          StRD certified values on all 27 problems from both starts (LRE >= 6,
          see ``agnopt._nist``), where forward and central differences stop
          early on ill-conditioned problems (Kirby2, Hahn1, BoxBOD, Lanczos,
          Bennett5, ...) as scipy's defaults do. It needs ``fun`` to accept
          complex input and propagate the imaginary part: if ``fun`` uses
          ``abs``, comparisons, ``real``, ``maximum``... pass ``jac="3-point"``
          (a ``fun`` that fails on complex input or returns real output
          gives a clear error).
        * ``"2-point"``, ``"3-point"``: finite differences with scipy's steps
          (see :func:`agnopt.approx_derivative`), kept inside the bounds.
        * ``"autodiff"``: the backend's automatic differentiation (torch.func
          or JAX), :func:`agnopt._autodiff.jacobian`; other backends raise.
        * a callable ``jac(x, *args, **kwargs)`` returning ``(m, n)``
          (``(B, m, n)`` when batched).
    method : {"lm", "gauss-newton"}
        * ``"lm"``: Levenberg-Marquardt as MINPACK's ``lmder`` (Moré 1978):
          trust region of radius :math:`\Delta` in the scaled norm
          :math:`\|Dp\|`, the step :math:`p` minimizes
          :math:`\|f + Jp\|^2 + \lambda\|Dp\|^2` with :math:`\lambda` chosen by
          Moré's ``lmpar`` iteration so that :math:`\|Dp\| \approx \Delta`
          (within 10%), and MINPACK's rules for :math:`\Delta`,
          :math:`\lambda` and the step acceptance (ratio >= 1e-4),
          initial radius ``100 * ||D x0||``. The step is computed from the
          SVD of :math:`J D^{-1}` (instead of MINPACK's pivoted QR: same step,
          batched, rank deficiency handled by truncation).
          Requires ``m >= n`` (scipy's rule).
        * ``"gauss-newton"``: the seed's Gauss-Newton iteration with
          :math:`\lambda I` damping,
          :math:`p = -(J^TJ + \lambda D^2)^{+} J^T f` (``D = 1/x_scale``,
          default identity). :math:`\lambda` starts at 0 (the plain
          Gauss-Newton step through the pseudo-inverse, so a singular
          :math:`J^TJ` is harmless); a step that does not decrease the cost
          is rejected and :math:`\lambda \leftarrow \max(10\lambda,
          10^{-3}\max\operatorname{diag}(\tilde J^T\tilde J))`; an accepted step divides
          :math:`\lambda` by 10 (to 0 below ``1e-12`` times that scale).
          No ``m >= n`` requirement.
    bounds : (lb, ub)
        Scalars or arrays broadcastable to ``x0``; ``-inf``/``inf`` for no
        bound. Treatment: **projection with an active set**. Variables that
        sit on a bound with the gradient pointing out of the box are frozen
        for the step (their Jacobian columns are dropped), the step of the
        others is computed as without bounds, and the trial point is
        projected onto the box, ``clip(x + p, lb, ub)``. Every iterate (and
        every finite-difference point) is feasible. The model reduction of a
        projected step is evaluated for that step, so the trust-region
        control and the tests stay consistent. ``x0`` must be feasible.
    ftol, xtol, gtol : float
        Tolerances, with scipy's exact conditions. For ``"lm"`` (MINPACK):

        * ``ftol``: ``|actred| <= ftol and prered <= ftol and ratio <= 2``
          where ``actred = 1 - (||f_new|| / ||f||)**2`` and ``prered`` is the
          same relative reduction predicted by the linear model (scipy:
          "``dF < ftol * F`` and an adequate agreement between the local
          quadratic model and the true model");
        * ``xtol``: ``Delta <= xtol * ||D x||`` (trust-region radius against
          the scaled ``x``);
        * ``gtol``: ``max_j |J_j . f| / (||f|| ||J_j||) <= gtol`` (the largest
          cosine between a column of ``J`` and ``f``; also true when ``f = 0``).

        All three must be >= 2.22e-16 (scipy's rule for lm). When a test
        holds with ``eps`` of the working dtype in place of the tolerance
        (MINPACK's info 6/7/8, e.g. float32 with default tolerances) the
        same status is reported with a "machine precision" message.
        For ``"gauss-newton"`` (scipy's trf conditions):
        ``ftol``: ``dF < ftol * F`` and ``dF / predicted dF > 0.25`` on an
        accepted step; ``xtol``: ``||dx|| < xtol * (xtol + ||x||)``;
        ``gtol``: ``||J^T f||_inf < gtol``.
    x_scale : None, "jac" or array
        ``D = 1 / x_scale``. ``"jac"``: MINPACK's ``mode=1``,
        ``D_j = max`` over iterations of ``||J_j||`` (column norms). ``None``
        (default): ``"jac"`` for ``"lm"`` (scipy >= 1.16's default) and 1 for
        ``"gauss-newton"``.
    max_nfev : int, optional
        Maximum number of residual evaluations, not counting those of
        finite differences (scipy >= 1.16's rule). Default ``100 * n``.
        Reaching it gives ``status = 0``, ``success = False``.
    args, kwargs :
        Extra arguments of ``fun`` and ``jac``.
    batched : bool
        ``B`` independent problems: ``x0`` ``(B, n)``, ``fun`` maps
        ``(B, n) -> (B, m)``, ``jac`` gives ``(B, m, n)``. Each problem has its
        own scaling, damping, trust region, stopping test and status;
        finished problems keep their ``x``. Results equal solving each
        problem alone (same iterates up to rounding).
    verbose : {0, 1, 2}
        1: final report; 2: one line per iteration.
    callback : callable, optional
        ``callback(intermediate_result)`` after each iteration, with an
        :class:`OptimizeResult` holding ``x``, ``cost``, ``nit``. Raising
        ``StopIteration`` or returning ``True`` stops (``status = -2``).
    history : bool
        Record a short history (``nit``, ``nfev``, ``cost`` per iteration) in
        ``result.history``.

    Returns
    -------
    OptimizeResult
        ``x``, ``cost`` (``0.5 ||f||^2``), ``fun`` (residuals), ``jac`` (at
        ``x``), ``grad`` (``J^T f``), ``optimality`` (``||grad||_inf``),
        ``nfev``, ``njev``, ``nit``, ``status`` (scipy's codes: 0 max_nfev,
        1 gtol, 2 ftol, 3 xtol, 4 ftol and xtol, -2 callback),
        ``message``, ``success`` (``status > 0``), ``active_mask`` (-1/0/1
        per variable: at the lower bound / free / at the upper bound), and
        ``history`` when asked. Batched: every field has a leading ``B``
        axis (``message`` is a list).

    Raises
    ------
    ValueError
        Wrong shapes (``x0``, ``fun``'s or ``jac``'s output), ``m < n`` for
        ``"lm"``, infeasible ``x0``, ``lb >= ub``, non-finite residuals at
        ``x0``, bad tolerances, ``batched=True`` with a 1-D ``x0``.
    RuntimeError
        When ``fun`` or ``jac`` raises (the original exception is chained).

    Notes
    -----
    Non-finite residuals at a trial point reject the step (the trust region
    shrinks tenfold), as if the cost had increased.

    References
    ----------
    J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and
    theory", Numerical Analysis, LNM 630, Springer (1978).
    J. J. Moré, B. S. Garbow, K. E. Hillstrom, MINPACK-1 User Guide,
    ANL-80-74 (1980) (``lmder``, ``lmpar``).
    """
    if method not in ("lm", "gauss-newton"):
        raise ValueError(f"method: expected 'lm' or 'gauss-newton', got {method!r}")
    if not (jac is None or callable(jac) or jac in _JAC_STRINGS):
        raise ValueError(f"jac: expected a callable or one of {_JAC_STRINGS}, got {jac!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose: expected 0, 1 or 2, got {verbose!r}")
    kwargs = {} if kwargs is None else dict(kwargs)
    for name, tol in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        if tol is None or not (float(tol) >= 0):
            raise ValueError(f"{name}: expected a non-negative float, got {tol!r}")
        if method == "lm" and float(tol) < EPS64:
            raise ValueError(
                f"{name}: all tolerances must be higher than machine epsilon "
                f"({EPS64:.2e}) for method 'lm' (scipy's rule), got {tol!r}"
            )

    x0 = _as_array(x0, "x0")
    xp, dev = resolve(x0, "x0")
    if batched:
        if x0.ndim != 2:
            raise ValueError(
                f"x0: with batched=True expected shape (B, n), got shape {tuple(x0.shape)}"
            )
        X = x0
    else:
        if x0.ndim == 0:
            x0 = xp.reshape(x0, (1,))
        if x0.ndim != 1:
            raise ValueError(
                f"x0: expected a 1-D array of shape (n,), got shape {tuple(x0.shape)} "
                "(pass batched=True for a batch of problems)"
            )
        X = xp.reshape(x0, (1, x0.shape[0]))
    B, n = X.shape
    if n == 0 or B == 0:
        raise ValueError(f"x0: empty array of shape {tuple(x0.shape)}")
    dtype = X.dtype
    if not bool(xp.all(xp.isfinite(X))):
        raise ValueError("x0: contains non-finite values")

    lb, ub = prepare_bounds(xp, bounds, X if batched else x0)
    lb = xp.reshape(xp.broadcast_to(lb, X.shape), X.shape) if not batched else lb
    ub = xp.reshape(xp.broadcast_to(ub, X.shape), X.shape) if not batched else ub
    if bool(xp.any(lb >= ub)):
        raise ValueError("bounds: each lower bound must be strictly less than each upper bound")
    if bool(xp.any((X < lb) | (X > ub))):
        raise ValueError("x0 is infeasible: it violates the bounds")
    bounded = bool(xp.any(xp.isfinite(lb) | xp.isfinite(ub)))

    if max_nfev is None:
        max_nfev = 100 * n
    elif int(max_nfev) <= 0:
        raise ValueError(f"max_nfev: expected a positive integer or None, got {max_nfev!r}")
    max_nfev = int(max_nfev)

    # scaling
    if x_scale is None:
        x_scale = "jac" if method == "lm" else 1.0
    jac_scale = isinstance(x_scale, str)
    if jac_scale:
        if x_scale != "jac":
            raise ValueError(f"x_scale: expected 'jac', None or positive array, got {x_scale!r}")
        D = xp.ones_like(X)
    else:
        xs = x_scale if hasattr(x_scale, "shape") else _as_array(x_scale, "x_scale")
        try:
            xs = xp.asarray(xs, dtype=dtype, device=dev)
        except Exception:
            xs = xp.asarray(xs.tolist(), dtype=dtype, device=dev)
        try:
            xs = xp.broadcast_to(xs, X.shape)
        except Exception as e:
            raise ValueError(
                f"x_scale: shape {tuple(xs.shape)} does not broadcast to x0's shape"
            ) from e
        if not bool(xp.all(xp.isfinite(xs) & (xs > 0))):
            raise ValueError("x_scale: must be 'jac' or an array of positive finite numbers")
        D = 1.0 / xs

    prob = _Problem(fun, jac, X, batched, tuple(args), kwargs, lb, ub, xp, dev)
    F = prob.residual(X, where="at x0")
    m = F.shape[1]
    prob.m = m
    if method == "lm" and m < n:
        raise ValueError(
            f"Method 'lm' doesn't work when the number of residuals (m = {m}) is less "
            f"than the number of variables (n = {n}); use method='gauss-newton'"
        )
    fin0 = xp.all(xp.isfinite(F), axis=-1)
    if not bool(xp.all(fin0)):
        raise ValueError(
            "fun: residuals are not finite at the initial point x0"
            + ("" if not batched else f" (problems {_indices(xp, ~fin0)})")
        )

    if method == "lm":
        state = _run_lm(xp, prob, X, F, D, jac_scale, lb, ub, bounded, ftol, xtol, gtol,
                        max_nfev, verbose, callback, history)
    else:
        state = _run_gn(xp, prob, X, F, D, lb, ub, bounded, ftol, xtol, gtol,
                        max_nfev, verbose, callback, history)
    return _finish(xp, prob, state, batched, verbose, bounded)


def _indices(xp, mask) -> list:
    vals = mask.compute() if hasattr(mask, "compute") else mask
    return [i for i in range(mask.shape[0]) if bool(vals[i])][:10]


def _col_norms(xp, J):
    return xp.linalg.vector_norm(J, axis=-2)


def _free_mask(xp, X, lb, ub, g, bounded):
    """Variables not frozen at a bound: frozen where on a bound and ``-g`` points outward."""
    if not bounded:
        return xp.ones(X.shape, dtype=xp.bool, device=X.device if hasattr(X, "device") else None)
    at_lb = (X <= lb) & (g > 0)
    at_ub = (X >= ub) & (g < 0)
    return ~(at_lb | at_ub)


def _int_zeros(xp, B, like):
    return xp.zeros((B,), dtype=xp.int64, device=_device(like))


def _device(x):
    from array_api_compat import device

    return device(x)


def _run_lm(xp, prob, X, F, D, jac_scale, lb, ub, bounded, ftol, xtol, gtol,
            max_nfev, verbose, callback, want_history):
    B, n = X.shape
    dtype = X.dtype
    dev = _device(X)
    eps = float(xp.finfo(dtype).eps)
    factor = _FACTOR
    zeros_b = xp.zeros((B,), dtype=dtype, device=dev)
    ones_b = xp.ones((B,), dtype=dtype, device=dev)
    fnorm = xp.linalg.vector_norm(F, axis=-1)
    nfev = _int_zeros(xp, B, X) + 1
    njev = _int_zeros(xp, B, X)
    nit = _int_zeros(xp, B, X)
    info = _int_zeros(xp, B, X)  # MINPACK info; 0 = running
    active = xp.ones((B,), dtype=xp.bool, device=dev)
    need_jac = xp.ones((B,), dtype=xp.bool, device=dev)
    first = xp.ones((B,), dtype=xp.bool, device=dev)
    par = zeros_b
    delta = zeros_b
    xnorm = zeros_b
    gnorm = zeros_b
    J = None
    w = c = V = good = full_rank = free = None
    hist = []
    cb_stop = False
    it = 0
    while True:
        it += 1
        if bool(xp.any(need_jac & active)):
            nj = need_jac & active
            Jn = prob.jacobian(X, F)
            if not bool(xp.all(xp.isfinite(Jn))):
                bad = nj & ~xp.all(xp.isfinite(xp.reshape(Jn, (B, -1))), axis=-1)
                if bool(xp.any(bad)):
                    raise ValueError(
                        "jac: the Jacobian has non-finite entries at the current point"
                        + (f" (problems {_indices(xp, bad)})" if prob.batched else "")
                    )
            njev = njev + xp.astype(nj, xp.int64)
            J = Jn if J is None else xp.where(nj[:, None, None], Jn, J)
            g = xp.matmul(F[:, None, :], J)[:, 0, :]  # J^T f  (B, n)
            free_n = _free_mask(xp, X, lb, ub, g, bounded)
            free = free_n if free is None else xp.where(nj[:, None], free_n, free)
            cn = xp.where(free, _col_norms(xp, J), xp.zeros_like(X))
            # first iteration: scaling and initial step bound
            if jac_scale:
                D0 = xp.where(cn == 0, xp.ones_like(cn), cn)
                D = xp.where((first & nj)[:, None], D0, D)
            xn0 = xp.linalg.vector_norm(D * X, axis=-1)
            d0 = xp.where(xn0 == 0, xp.full_like(xn0, factor), factor * xn0)
            init = first & nj & (delta == 0)
            xnorm = xp.where(init, xn0, xnorm)
            delta = xp.where(init, d0, delta)
            # gnorm: largest |cos| between columns of J and f (MINPACK)
            cn_safe = xp.where(cn == 0, xp.ones_like(cn), cn)
            fn_safe = xp.where(fnorm == 0, ones_b, fnorm)
            cosv = xp.where(cn == 0, xp.zeros_like(cn), xp.abs(g) / (fn_safe[:, None] * cn_safe))
            gn_new = xp.where(fnorm == 0, zeros_b, xp.max(cosv, axis=-1))
            gnorm = xp.where(nj, gn_new, gnorm)
            conv_g = nj & (gnorm <= gtol)
            info = xp.where(conv_g, xp.full_like(info, 4), info)
            active = active & ~conv_g
            if jac_scale:
                D = xp.where((nj & ~first)[:, None], xp.maximum(D, cn), D)
            if not bool(xp.any(active)):
                break
            w, c, V, good, full_rank, Js = _spectral(xp, J, D, F, free)
            J, D, w, c, V, good, full_rank, free, gnorm, delta, xnorm, Js = _persist(
                xp, J, D, w, c, V, good, full_rank, free, gnorm, delta, xnorm, Js)
        # --- the Levenberg-Marquardt parameter and step
        par, q = _lmpar(xp, delta, par, w, c, good, full_rank, active)
        z = -xp.matmul(V, q[:, :, None])[:, :, 0]
        p = xp.where(free, z / D, xp.zeros_like(z))
        # geodesic acceleration (Transtrum & Sethna 2012) for steps limited by
        # the trust region (par > 0) after the first accepted step: the second
        # directional derivative r_vv of f along the LM step v is estimated by
        # a finite difference with step _ACC_H, the acceleration a solves the
        # same damped system with r_vv in place of f, and the step becomes
        # v + a/2 when ||D a|| <= _ACC_ALPHA * ||D v|| / 2 (else v alone).
        # The evaluation f(x + h v) counts in nfev.
        eligible = active & (par > 0) & ~first
        accel = None
        if bool(xp.any(eligible)):
            Xh = X + _ACC_H * p
            if bounded:
                Xh = xp.clip(Xh, lb, ub)
            Fh = prob.residual(xp.where(eligible[:, None], Xh, X))
            nfev = nfev + xp.astype(eligible, xp.int64)
            Jv = xp.matmul(J, p[:, :, None])[:, :, 0]
            rvv = (2.0 / _ACC_H) * ((Fh - F) / _ACC_H - Jv)
            rvv = xp.where(xp.isfinite(rvv), rvv, xp.zeros_like(rvv))
            cvv = xp.matmul(xp.matmul(rvv[:, None, :], Js), V)[:, 0, :]  # V^T Js^T r_vv
            aq = cvv / (w + par[:, None])
            az = -xp.matmul(V, aq[:, :, None])[:, :, 0]
            a = xp.where(free, az / D, xp.zeros_like(az))
            vn = xp.linalg.vector_norm(z, axis=-1)
            an = xp.linalg.vector_norm(xp.where(free, az, xp.zeros_like(az)), axis=-1)
            accel = eligible & (2.0 * an <= _ACC_ALPHA * vn) & xp.all(xp.isfinite(a), axis=-1)
            p = xp.where(accel[:, None], p - 0.5 * a, p)
        p_unc = p
        Xt = X + p
        if bounded:
            Xt = xp.clip(Xt, lb, ub)
        Xt = xp.where(active[:, None], Xt, X)
        p = Xt - X
        clipped = xp.any(p != p_unc, axis=-1) if bounded else xp.zeros_like(active)
        if accel is not None:
            clipped = clipped | accel
            bounded_or_acc = True
        else:
            bounded_or_acc = bounded
        pnorm = xp.linalg.vector_norm(D * p, axis=-1)
        delta = xp.where(first & active, xp.minimum(delta, pnorm), delta)
        Ft = prob.residual(Xt)
        nfev = nfev + xp.astype(active, xp.int64)
        fnorm1 = xp.linalg.vector_norm(Ft, axis=-1)
        finite = xp.isfinite(fnorm1)
        fn1s = xp.where(finite, fnorm1, fnorm * 1e10 + 1.0)
        # reductions, relative to ||f||^2 (MINPACK's scaled forms)
        fn_safe = xp.where(fnorm == 0, ones_b, fnorm)
        actred = xp.where(finite & (0.1 * fn1s < fnorm), 1.0 - (fn1s / fn_safe) ** 2, -ones_b)
        Jp = xp.matmul(J, p[:, :, None])[:, :, 0]
        t1 = xp.linalg.vector_norm(Jp, axis=-1) / fn_safe
        t2 = xp.sqrt(par) * pnorm / fn_safe
        prered = t1 * t1 + 2.0 * t2 * t2
        dirder = -(t1 * t1 + t2 * t2)
        if bounded_or_acc:
            fJp = xp.sum(F * Jp, axis=-1) / (fn_safe * fn_safe)
            prered = xp.where(clipped, -(2.0 * fJp + t1 * t1), prered)
            dirder = xp.where(clipped, fJp, dirder)
        ratio = xp.where(prered != 0, actred / xp.where(prered != 0, prered, ones_b), zeros_b)
        # update the step bound and the LM parameter
        small = ratio <= 0.25
        den = dirder + 0.5 * actred
        temp = xp.where(actred >= 0, 0.5 * ones_b,
                        0.5 * dirder / xp.where(den == 0, ones_b, den))
        temp = xp.where((0.1 * fn1s >= fnorm) | (temp < 0.1) | ~finite, 0.1 * ones_b, temp)
        big = ~small & ((par == 0) | (ratio >= 0.75))
        delta_n = xp.where(small, temp * xp.minimum(delta, pnorm / 0.1),
                           xp.where(big, pnorm / 0.5, delta))
        par_n = xp.where(small, par / temp, xp.where(big, 0.5 * par, par))
        delta = xp.where(active, delta_n, delta)
        par = xp.where(active, par_n, par)
        # accept
        acc = active & (ratio >= 1e-4)
        X = xp.where(acc[:, None], Xt, X)
        F = xp.where(acc[:, None], Ft, F)
        fnorm = xp.where(acc, fnorm1, fnorm)
        xnorm = xp.where(acc, xp.linalg.vector_norm(D * X, axis=-1), xnorm)
        nit = nit + xp.astype(acc, xp.int64)
        need_jac = xp.where(active, acc, need_jac)  # finished problems keep theirs
        first = first & ~acc
        # convergence tests (MINPACK order)
        ft = (xp.abs(actred) <= ftol) & (prered <= ftol) & (0.5 * ratio <= 1.0)
        xt = delta <= xtol * xnorm
        new = xp.where(ft, xp.full_like(info, 1), xp.zeros_like(info))
        new = xp.where(xt, xp.full_like(info, 2), new)
        new = xp.where(ft & xt, xp.full_like(info, 3), new)
        mach = xp.zeros_like(info)
        mach = xp.where(nfev >= max_nfev, xp.full_like(info, 5), mach)
        mach = xp.where((xp.abs(actred) <= eps) & (prered <= eps) & (0.5 * ratio <= 1.0),
                        xp.full_like(info, 6), mach)
        mach = xp.where(delta <= eps * xnorm, xp.full_like(info, 7), mach)
        mach = xp.where(gnorm <= eps, xp.full_like(info, 8), mach)
        new = xp.where(new == 0, mach, new)
        new = xp.where(active, new, xp.zeros_like(new))
        info = xp.where(new != 0, new, info)
        active = active & (new == 0)
        X, F, fnorm, xnorm, delta, par, info, active, need_jac, first, nfev, nit = _persist(
            xp, X, F, fnorm, xnorm, delta, par, info, active, need_jac, first, nfev, nit)
        if want_history:
            hist.append(_hist_entry(prob, X, fnorm, nit, nfev))
        if verbose >= 2:
            _print_iter(xp, prob, it, fnorm, nfev, pnorm)
        if callback is not None and _call_callback(callback, prob, X, fnorm, nit):
            cb_stop = True
            break
        if not bool(xp.any(active)):
            break
    return dict(X=X, F=F, J=J, need_jac=need_jac, nfev=nfev, njev=njev, nit=nit, info=info,
                active=active, cb_stop=cb_stop, history=hist, minpack=True)


def _run_gn(xp, prob, X, F, D, lb, ub, bounded, ftol, xtol, gtol,
            max_nfev, verbose, callback, want_history):
    """Damped Gauss-Newton (the seed's J^T J + lambda I), see ``least_squares``."""
    B, n = X.shape
    dtype = X.dtype
    dev = _device(X)
    zeros_b = xp.zeros((B,), dtype=dtype, device=dev)
    ones_b = xp.ones((B,), dtype=dtype, device=dev)
    cost = 0.5 * xp.sum(F * F, axis=-1)
    nfev = _int_zeros(xp, B, X) + 1
    njev = _int_zeros(xp, B, X)
    nit = _int_zeros(xp, B, X)
    status = _int_zeros(xp, B, X) - 99  # -99 running
    active = xp.ones((B,), dtype=xp.bool, device=dev)
    need_jac = xp.ones((B,), dtype=xp.bool, device=dev)
    lam = zeros_b
    scale = ones_b
    J = w = c = V = good = free = None
    hist = []
    cb_stop = False
    it = 0
    while True:
        it += 1
        if bool(xp.any(need_jac & active)):
            nj = need_jac & active
            Jn = prob.jacobian(X, F)
            if not bool(xp.all(xp.isfinite(xp.where(nj[:, None, None], Jn, xp.zeros_like(Jn))))):
                raise ValueError("jac: the Jacobian has non-finite entries at the current point")
            njev = njev + xp.astype(nj, xp.int64)
            J = Jn if J is None else xp.where(nj[:, None, None], Jn, J)
            g = xp.matmul(F[:, None, :], J)[:, 0, :]
            free_n = _free_mask(xp, X, lb, ub, g, bounded)
            free = free_n if free is None else xp.where(nj[:, None], free_n, free)
            gfree = xp.where(free, g, xp.zeros_like(g))
            conv_g = nj & (xp.max(xp.abs(gfree), axis=-1) < gtol)
            status = xp.where(conv_g, xp.full_like(status, 1), status)
            active = active & ~conv_g
            if not bool(xp.any(active)):
                break
            w, c, V, good, _, _ = _spectral(xp, J, D, F, free)
            scale = xp.where(nj, xp.max(w, axis=-1), scale)
            J, w, c, V, good, free, scale = _persist(xp, J, w, c, V, good, free, scale)
        # step: lam == 0 -> truncated pseudo-inverse (Moore-Penrose) Gauss-Newton step
        lam2 = lam[:, None]
        den = w + lam2
        use = good | (lam2 > 0)
        q = xp.where(use, c / xp.where(use & (den > 0), den, xp.ones_like(den)), xp.zeros_like(w))
        z = -xp.matmul(V, q[:, :, None])[:, :, 0]
        p = xp.where(free, z / D, xp.zeros_like(z))
        Xt = X + p
        if bounded:
            Xt = xp.clip(Xt, lb, ub)
        Xt = xp.where(active[:, None], Xt, X)
        p = Xt - X
        Ft = prob.residual(Xt)
        nfev = nfev + xp.astype(active, xp.int64)
        cost_t = 0.5 * xp.sum(Ft * Ft, axis=-1)
        finite = xp.isfinite(cost_t)
        Jp = xp.matmul(J, p[:, :, None])[:, :, 0]
        pred = -(xp.sum(F * Jp, axis=-1) + 0.5 * xp.sum(Jp * Jp, axis=-1))
        actual = xp.where(finite, cost - cost_t, -ones_b)
        acc = active & finite & (cost_t < cost)
        dx_norm = xp.linalg.vector_norm(p, axis=-1)
        x_norm = xp.linalg.vector_norm(X, axis=-1)
        ratio = xp.where(pred > 0, actual / xp.where(pred > 0, pred, ones_b), zeros_b)
        ft = acc & (actual < ftol * cost) & (ratio > 0.25)
        xt = active & (dx_norm < xtol * (xtol + x_norm))
        # damping update
        lam_up = xp.maximum(10.0 * lam, 1e-3 * scale)
        lam_dn = xp.where(lam / 10.0 < 1e-12 * scale, zeros_b, lam / 10.0)
        lam = xp.where(active, xp.where(acc, lam_dn, lam_up), lam)
        X = xp.where(acc[:, None], Xt, X)
        F = xp.where(acc[:, None], Ft, F)
        cost = xp.where(acc, cost_t, cost)
        nit = nit + xp.astype(acc, xp.int64)
        need_jac = xp.where(active, acc, need_jac)  # finished problems keep theirs
        new = xp.where(ft, xp.full_like(status, 2), xp.full_like(status, -99))
        new = xp.where(xt, xp.full_like(status, 3), new)
        new = xp.where(ft & xt, xp.full_like(status, 4), new)
        new = xp.where((new == -99) & (nfev >= max_nfev), xp.full_like(status, 0), new)
        new = xp.where(active, new, xp.full_like(status, -99))
        status = xp.where(new != -99, new, status)
        active = active & (new == -99)
        X, F, cost, lam, status, active, need_jac, nfev, nit = _persist(
            xp, X, F, cost, lam, status, active, need_jac, nfev, nit)
        fnorm = xp.sqrt(2.0 * cost)
        if want_history:
            hist.append(_hist_entry(prob, X, fnorm, nit, nfev))
        if verbose >= 2:
            _print_iter(xp, prob, it, fnorm, nfev, dx_norm)
        if callback is not None and _call_callback(callback, prob, X, fnorm, nit):
            cb_stop = True
            break
        if not bool(xp.any(active)):
            break
    return dict(X=X, F=F, J=J, need_jac=need_jac, nfev=nfev, njev=njev, nit=nit, info=status,
                active=active, cb_stop=cb_stop, history=hist, minpack=False)


def _hist_entry(prob, X, fnorm, nit, nfev):
    cost = 0.5 * fnorm * fnorm
    if prob.batched:
        return {"nit": nit, "nfev": nfev, "cost": cost}
    return {"nit": int(nit[0]), "nfev": int(nfev[0]), "cost": float(cost[0])}


def _print_iter(xp, prob, it, fnorm, nfev, pnorm):
    cost = 0.5 * fnorm * fnorm
    if prob.batched:
        print(f"iteration {it:5d}  max cost {float(xp.max(cost)):.6e}  "
              f"max nfev {int(xp.max(nfev))}")
    else:
        print(f"iteration {it:5d}  cost {float(cost[0]):.6e}  step {float(pnorm[0]):.3e}  "
              f"nfev {int(nfev[0])}")


def _call_callback(callback, prob, X, fnorm, nit) -> bool:
    cost = 0.5 * fnorm * fnorm
    if prob.batched:
        r = OptimizeResult(x=X, cost=cost, nit=nit)
    else:
        r = OptimizeResult(x=X[0, :], cost=cost[0], nit=int(nit[0]))
    try:
        out = callback(r)
    except StopIteration:
        return True
    return out is True


def _finish(xp, prob, st, batched, verbose, bounded):
    X, F, J = st["X"], st["F"], st["J"]
    B, n = X.shape
    # Jacobian at the final x where the last accepted step made it stale
    nj = st["need_jac"]
    if bool(xp.any(nj)):
        Jn = prob.jacobian(X, F)
        J = Jn if J is None else xp.where(nj[:, None, None], Jn, J)
    info = st["info"]
    if st["minpack"]:
        status = xp.zeros_like(info) - 99
        mach = {}
        for k, v in _FROM_MINPACK.items():
            status = xp.where(info == k, xp.full_like(status, v), status)
    else:
        status = info
    if st["cb_stop"]:
        status = xp.where(st["active"], xp.full_like(status, -2), status)
    # anything still marked running (cannot happen except callback) -> -2
    status = xp.where(status == -99, xp.full_like(status, -2), status)
    cost = 0.5 * xp.sum(F * F, axis=-1)
    g = xp.matmul(F[:, None, :], J)[:, 0, :]
    opt = xp.max(xp.abs(g), axis=-1)
    success = status > 0
    if bounded:
        lb, ub = prob.lb, prob.ub
        am = xp.where(X <= lb, -xp.ones_like(X), xp.where(X >= ub, xp.ones_like(X), xp.zeros_like(X)))
        am = xp.astype(am, xp.int64)
    else:
        am = xp.zeros(X.shape, dtype=xp.int64, device=_device(X))
    info_host = [int(v) for v in (info.compute() if hasattr(info, "compute") else info)] if st["minpack"] else None
    st_host = [int(v) for v in (status.compute() if hasattr(status, "compute") else status)]
    msgs = []
    for b in range(B):
        if info_host is not None and info_host[b] in _MACHINE_MESSAGES:
            msgs.append(_MACHINE_MESSAGES[info_host[b]])
        else:
            msgs.append(TERMINATION_MESSAGES.get(st_host[b], "unknown status"))
    if batched:
        res = OptimizeResult(
            x=X, cost=cost, fun=F, jac=J, grad=g, optimality=opt, active_mask=am,
            nfev=st["nfev"], njev=st["njev"], nit=st["nit"], status=status,
            message=msgs, success=success,
        )
    else:
        res = OptimizeResult(
            x=X[0, :], cost=cost[0], fun=F[0, :], jac=J[0, ...], grad=g[0, :],
            optimality=opt[0], active_mask=am[0, :], nfev=int(st["nfev"][0]),
            njev=int(st["njev"][0]), nit=int(st["nit"][0]), status=st_host[0],
            message=msgs[0], success=st_host[0] > 0,
        )
    if st["history"]:
        res["history"] = st["history"]
    if verbose >= 1:
        if batched:
            ns = int(xp.sum(xp.astype(success, xp.int64)))
            print(f"{ns} of {B} problems converged; total nfev {int(xp.sum(st['nfev']))}")
        else:
            print(res.message)
            print(f"Function evaluations {res.nfev}, final cost {float(res.cost):.4e}, "
                  f"first-order optimality {float(res.optimality):.2e}.")
    return res
