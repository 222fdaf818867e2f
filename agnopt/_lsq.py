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

Well-conditioned small problems (``n <= 16``, no variable frozen at a bound,
and a certified bound ``trace(A) trace(A^{-1}) < 1e8`` on the condition
number of :math:`A = \tilde J^T\tilde J`, so :math:`\operatorname{cond}
(\tilde J) < 10^4`) take a cheaper route: the normal equations
:math:`(A + \lambda I) q = \tilde J^T f` are solved with a Cholesky factor
written as a few dozen vectorized operations over the batch (entry by entry
for ``n <= 6``), and ``lmpar``'s Newton correction uses
:math:`q^T (A+\lambda I)^{-1} q = \|L^{-1} q\|^2` as MINPACK does. Squaring a
condition number below 1e4 costs at most ~1e-8 relative accuracy in a step,
never in the fixed point (the gradient comes from :math:`J` itself). LAPACK's
batched SVD / ``eigh`` of many tiny matrices is dominated by per-matrix call
overhead (NumPy: ~4 us per 4x4 ``eigh``, ~12 us per 50x4 SVD), which this
route avoids. Every other problem takes the SVD route. The route is chosen
per problem from that problem's own Jacobian, so a batch computes what each
problem alone computes.

Batched solves drop finished problems: when at most 70% of the working set
is still running, the running rows are gathered (``xp.take``) into a smaller
working set, and the finished rows are set aside and put back in order at the
end. ``fun`` is then called with the running rows only if it offers a row
hook (``fun._agnopt_rows(idx)``, which ``curve_fit`` provides for a shared
``xdata``, checked once against the full evaluation); any other batched
``fun`` keeps receiving all ``B`` rows (the finished ones frozen). No
compaction on JAX (every new size would recompile each eager operation) or
Dask (``nonzero`` has no static size), nor when a callback, history or
``verbose=2`` needs the whole batch each iteration.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import array_api_compat

from ._core.backend import namespace_name, resolve
from ._derivatives.numdiff import approx_derivative, prepare_bounds
from ._core.result import OptimizeResult

__all__ = ["least_squares"]

EPS64 = 2.220446049250313e-16

TERMINATION_MESSAGES = {
    -2: "Stopped because `callback` function raised `StopIteration` or returned `True`",
    0: "The maximum number of function evaluations is exceeded.",
    1: "`gtol` termination condition is satisfied.",
    2: "`ftol` termination condition is satisfied.",
    3: "`xtol` termination condition is satisfied.",
    4: "Both `ftol` and `xtol` termination conditions are satisfied.",
    -3: "`jac` returned a Jacobian with non-finite entries at the current point "
    "(this problem stopped there; batched solves only).",
    -4: "The residuals were not finite at the trial points: the step shrank to nothing "
    "without a finite trial point near x.",
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
_FROM_MINPACK = {1: 2, 2: 3, 3: 4, 4: 1, 5: 0, 6: 2, 7: 3, 8: 1, -3: -3, -4: -4}

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
# normal equations + Cholesky (instead of the SVD) for n <= _CHOL_MAX_N
_CHOL_MAX_N = 16
# ... factored entry by entry (scalar recurrences on (B,) vectors) for n <= this
_ENTRYWISE_N = 6
# a batched solve gathers its running problems into a smaller working set
# when at most this fraction of the current one is still running
_COMPACT = 0.7


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


def _check_max_nfev(max_nfev: Any, n: int) -> int:
    """``max_nfev`` as an int (default ``100 * n``, as scipy's lm)."""
    if max_nfev is None:
        return 100 * n
    if int(max_nfev) <= 0:
        raise ValueError(f"max_nfev: expected a positive integer or None, got {max_nfev!r}")
    return int(max_nfev)


def _resolve_x_scale(x_scale: Any, method: str) -> Any:
    """``None`` -> ``"jac"`` for lm and ``1.0`` otherwise; any other string must be ``"jac"``."""
    if x_scale is None:
        return "jac" if method == "lm" else 1.0
    if isinstance(x_scale, str) and x_scale != "jac":
        raise ValueError(f"x_scale: expected 'jac', None or positive array, got {x_scale!r}")
    return x_scale


def _as_array(x: Any, what: str) -> Any:
    """Arrays pass through; lists / tuples / numbers become NumPy float64 arrays."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    import array_api_compat.numpy as np_xp  # default backend for plain Python input

    try:
        return np_xp.asarray(x, dtype=np_xp.float64)
    except Exception as e:
        raise TypeError(f"{what}: expected an array, got {type(x).__name__}") from e


def _check_backend(a: Any, xp: Any, what: str, ref: str = "x0") -> None:
    """TypeError when ``a`` is an array of another backend than ``xp``."""
    if type(a) in (int, float, bool) or not array_api_compat.is_array_api_obj(a):
        return
    try:
        xa = array_api_compat.array_namespace(a)
    except TypeError:
        return
    if xa is not xp and namespace_name(xa) != namespace_name(xp):
        raise TypeError(
            f"{what}: got a {namespace_name(xa)} array but {ref} is a {namespace_name(xp)} "
            "array; convert it to x0's backend"
        )


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
        # row subsets (the working set of a compacted batched solve): ``rows``
        # holds the full indices of the rows that ``residual`` / ``jacobian``
        # receive; None means all B rows.
        self.lb_full, self.ub_full = lb, ub
        self.rows = None
        self._mask = self._pos = self._X_base = None
        self._sub = None  # (fun_rows, jac_rows) from the ``_agnopt_rows`` hook
        hook = getattr(fun, "_agnopt_rows", None) if batched else None
        self._hook = hook if callable(hook) else None
        self._hook_checked = False

    # ------------------------------------------------------------------ row subsets
    def set_rows(self, idx, X_full, F_rows=None):
        """Restrict evaluations to the rows ``idx`` (full indices, int array).

        ``X_full`` (B, n) gives the values of the other rows for a ``fun``
        without the ``_agnopt_rows`` hook: it is then evaluated on all B rows
        (with these rows substituted) and the rows taken from its output. A
        hook's row function is checked once against ``F_rows`` (the
        residuals of these rows at ``X_full``): if it raises, returns another
        shape or other values (a model that closes over per-problem data),
        the hook is dropped for good and the full evaluation is used.
        """
        xp = self.xp
        B = X_full.shape[0]
        self.rows = idx
        self.lb = xp.take(self.lb_full, idx, axis=0)
        self.ub = xp.take(self.ub_full, idx, axis=0)
        ar = xp.arange(B, dtype=idx.dtype, device=self.dev)
        pos = xp.searchsorted(idx, ar)
        k = idx.shape[0]
        pos = xp.clip(pos, 0, k - 1) if k > 0 else pos
        self._mask = xp.take(idx, pos, axis=0) == ar
        self._pos = pos
        self._X_base = X_full
        self._sub = None
        if self._hook is not None and self._hook_checked:
            self._sub = self._hook(idx)
        elif self._hook is not None:
            try:
                sub = self._hook(idx)
                fr = sub[0]
                Xr = xp.take(X_full, idx, axis=0)
                f = fr(Xr, *self.args, **self.kwargs)
                ok = (hasattr(f, "shape") and tuple(f.shape) == (k, self.m)
                      and F_rows is not None)
                if ok:
                    err = xp.max(xp.abs(f - F_rows)) if k > 0 else 0.0
                    scale = xp.max(xp.abs(F_rows)) if k > 0 else 0.0
                    ok = bool(err <= 1e-10 * scale + 1e-300)
            except Exception:
                ok = False
            if ok:
                self._sub = sub
                self._hook_checked = True
            else:
                self._hook = None

    def all_rows(self):
        self.rows = None
        self.lb, self.ub = self.lb_full, self.ub_full
        self._mask = self._pos = self._X_base = self._sub = None

    def _scatter_full(self, Z):
        xp = self.xp
        base = self._X_base
        if base.dtype != Z.dtype:
            base = xp.astype(base, Z.dtype)
        return xp.where(self._mask[:, None], xp.take(Z, self._pos, axis=0), base)

    def _fun_rows(self):
        """``fun`` for the current rows: ``(k, n) -> (k, m)``."""
        if self.rows is None:
            return self.fun
        if self._sub is not None:
            return self._sub[0]
        xp, fun, rows = self.xp, self.fun, self.rows

        def f(Z, *a, **kw):
            out = fun(self._scatter_full(Z), *a, **kw)
            if hasattr(out, "shape") and out.ndim >= 1:
                out = xp.take(out, rows, axis=0)
            return out

        return f

    def _jac_rows(self):
        if self.rows is None:
            return self.jac_arg
        if self._sub is not None and len(self._sub) > 1 and self._sub[1] is not None:
            return self._sub[1]
        xp, jac, rows = self.xp, self.jac_arg, self.rows

        def j(Z, *a, **kw):
            return xp.take(jac(self._scatter_full(Z), *a, **kw), rows, axis=0)

        return j

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

    def residual(self, X, where="at a trial point", f=None):
        """``X`` (B, n) -> ``F`` (B, m) (``f``: ``fun``'s output at ``X``, when known)."""
        if f is not None:
            pass
        elif self.batched:
            fun = self._fun_rows()
            f = _call_checked(lambda z: fun(z, *self.args, **self.kwargs), X, "fun", where)
        else:
            f = _call_checked(lambda z: self.fun(z[0, :], *self.args, **self.kwargs), X, "fun", where)
        if where == "at x0":
            _check_backend(f, self.xp, "fun (its residuals at x0)")
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
                jr = self._jac_rows()
                J = _call_checked(lambda z: jr(z, *self.args, **self.kwargs), X, "jac", "")
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
            from ._derivatives.autodiff import jacobian as ad_jacobian

            fr = self._fun_rows() if self.batched else self.fun
            f = lambda z: fr(z, *self.args, **self.kwargs)  # noqa: E731
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
                    self._fun_rows(), X, method=jac, f0=F, bounds=(lbx, ubx), rel_step=rel,
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
def _spectral(xp, J, D, F, free, force_svd=False):
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
    if m >= n and not force_svd:
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



# --------------------------------------------------------------------------- normal equations (small n)
def _mv(xp, A, v):
    return xp.matmul(A, v[..., None])[..., 0]


def _mtv(xp, A, v):
    return xp.matmul(xp.matrix_transpose(A), v[..., None])[..., 0]


def _chol_inv(xp, A):
    """Inverse Cholesky factor of a stack of symmetric matrices ``A`` (k, n, n).

    Returns ``Linv`` (k, n, n), lower triangular with ``A = L L^T`` and
    ``Linv = L^{-1}`` (so ``A^{-1} = Linv^T Linv``), and ``ok`` (k,): every
    pivot positive and above ``eps * A_jj`` (else the row is numerically
    singular, its pivots are replaced by 1 and ``Linv`` is meaningless).
    Written with ``O(n)`` stacked Array API operations (right-looking
    Cholesky by columns, then forward substitution by rows), so a batch of
    small matrices costs a few dozen vectorized operations, on any backend,
    and never raises (LAPACK's batched ``cholesky`` raises for the whole
    stack when one matrix is not positive definite).
    """
    k, n, _ = A.shape
    if n <= _ENTRYWISE_N:
        return _chol_inv_entries(xp, A)
    eps = float(xp.finfo(A.dtype).eps)
    dev = _device(A)
    eye = xp.eye(n, dtype=A.dtype, device=dev)
    cols, diag = [], []
    ok = None
    for j in range(n):
        v = A[:, :, j]
        if j > 0:
            Lj = xp.stack(cols, axis=-1)  # (k, n, j)
            v = v - _mv(xp, Lj, Lj[:, j, :])
        d = v[:, j]
        okj = d > eps * A[:, j, j]
        ok = okj if ok is None else ok & okj
        sj = xp.sqrt(xp.where(okj, d, xp.ones_like(d)))
        mask = xp.sum(eye[:, j:], axis=-1)  # rows >= j
        cols.append((v / sj[:, None]) * mask)
        diag.append(sj)
    L = xp.stack(cols, axis=-1)
    rows = []
    for i in range(n):
        r = xp.broadcast_to(eye[i, :], (k, n))
        if i > 0:
            R = xp.stack(rows, axis=1)  # (k, i, n)
            r = r - xp.matmul(L[:, i:i + 1, :i], R)[:, 0, :]
        rows.append(r / diag[i][:, None])
    return xp.stack(rows, axis=1), ok


def _chol_inv_entries(xp, A):
    """:func:`_chol_inv` entry by entry: ``O(n^3)`` operations on ``(k,)`` vectors.

    For very small ``n`` this beats the column-stacked form by a wide margin
    (no stacks of tiny matrices); the arithmetic is the textbook
    Cholesky-Banachiewicz recurrence and forward substitution.
    """
    k, n, _ = A.shape
    eps = float(xp.finfo(A.dtype).eps)
    a = [[A[:, i, j] for j in range(n)] for i in range(n)]
    L = [[None] * n for _ in range(n)]
    ok = None
    for j in range(n):
        d = a[j][j]
        for t in range(j):
            d = d - L[j][t] * L[j][t]
        okj = d > eps * a[j][j]
        ok = okj if ok is None else ok & okj
        ljj = xp.sqrt(xp.where(okj, d, xp.ones_like(d)))
        L[j][j] = ljj
        inv = 1.0 / ljj
        for i in range(j + 1, n):
            v = a[i][j]
            for t in range(j):
                v = v - L[i][t] * L[j][t]
            L[i][j] = v * inv
    # Linv (lower): Linv[i][i] = 1/L[i][i]; Linv[i][j] = -sum_t L[i][t] Linv[t][j] / L[i][i]
    Li = [[None] * n for _ in range(n)]
    for i in range(n):
        dinv = 1.0 / L[i][i]
        Li[i][i] = dinv
        for j in range(i):
            v = L[i][j] * Li[j][j]
            for t in range(j + 1, i):
                v = v + L[i][t] * Li[t][j]
            Li[i][j] = -v * dinv
    zero = xp.zeros_like(a[0][0])
    rows = [xp.stack([Li[i][j] if j <= i else zero for j in range(n)], axis=-1)
            for i in range(n)]
    return xp.stack(rows, axis=1), ok


def _chol_solve(xp, Linv, b):
    """``A^{-1} b`` from the inverse Cholesky factor."""
    return _mtv(xp, Linv, _mv(xp, Linv, b))


def _lmpar_chol(xp, delta, par0, As, gs, Linv0, active):
    r"""Moré's ``lmpar`` on the normal equations, for well-conditioned problems.

    The same iteration as :func:`_lmpar` (same safeguards, same stopping
    rule), with the step ``q(par) = (A + par I)^{-1} g`` (``A = Js^T Js``,
    ``g = Js^T f``) from a Cholesky factor of ``A + par I`` instead of the
    SVD basis; Moré's Newton correction uses
    ``q^T (A + par I)^{-1} q = ||L^{-1} q||^2`` (MINPACK's
    ``||R^{-T} D p||^2``). Returns ``par``, ``q`` (scaled step ``Dp = -q``)
    and the inverse factor at the final ``par`` (for the geodesic
    acceleration).
    """
    dwarf = float(xp.finfo(As.dtype).smallest_normal)
    n = As.shape[-1]
    eye = xp.eye(n, dtype=As.dtype, device=_device(As))
    qn = _chol_solve(xp, Linv0, gs)  # Gauss-Newton step
    dxnorm = xp.linalg.vector_norm(qn, axis=-1)
    fp = dxnorm - delta
    gn_ok = fp <= 0.1 * delta
    s3 = xp.linalg.vector_norm(_mv(xp, Linv0, qn), axis=-1) ** 2
    s3 = xp.where(s3 > 0, s3, xp.ones_like(s3))
    parl = xp.maximum((fp / delta) * dxnorm * dxnorm / s3, xp.zeros_like(fp))
    gnorm = xp.linalg.vector_norm(gs, axis=-1)
    paru = gnorm / delta
    paru = xp.where(paru == 0, dwarf / xp.minimum(delta, xp.full_like(delta, 0.1)), paru)
    par = xp.minimum(xp.maximum(par0, parl), paru)
    dx_safe = xp.where(dxnorm > 0, dxnorm, xp.ones_like(dxnorm))
    par = xp.where(par == 0, gnorm / dx_safe, par)
    done = gn_ok | ~active
    q, Lf = qn, Linv0
    if bool(xp.all(done)):
        return xp.where(gn_ok, xp.zeros_like(par), par), q, Lf
    for it in range(10):
        par_t = xp.where(par == 0, xp.maximum(xp.full_like(paru, dwarf), 0.001 * paru), par)
        par = xp.where(done, par, par_t)
        Li, _ = _chol_inv(xp, As + par[:, None, None] * eye)
        qt = _chol_solve(xp, Li, gs)
        dxn_t = xp.linalg.vector_norm(qt, axis=-1)
        temp = fp
        fp_t = dxn_t - delta
        q = xp.where(done[:, None], q, qt)
        Lf = xp.where(done[:, None, None], Lf, Li)
        fp = xp.where(done, fp, fp_t)
        stop = (xp.abs(fp_t) <= 0.1 * delta) | ((parl == 0) & (fp_t <= temp) & (temp < 0))
        if it == 9:
            stop = xp.ones_like(stop)
        done = done | stop
        s3 = xp.linalg.vector_norm(_mv(xp, Li, qt), axis=-1) ** 2
        s3 = xp.where(s3 > 0, s3, xp.ones_like(s3))
        parc = (fp_t / delta) * dxn_t * dxn_t / s3
        parl = xp.where(~done & (fp_t > 0), xp.maximum(parl, par), parl)
        paru = xp.where(~done & (fp_t < 0), xp.minimum(paru, par), paru)
        par = xp.where(done, par, xp.maximum(parl, par + parc))
        if bool(xp.all(done)):
            break
    par = xp.where(gn_ok, xp.zeros_like(par), par)
    return par, q, Lf


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
          initial radius ``||D x0||`` (MINPACK's ``factor = 1``). The step is
          computed from the SVD of :math:`J D^{-1}` (instead of MINPACK's
          pivoted QR: same step, batched, rank deficiency handled by
          truncation), or for well-conditioned problems with ``n <= 16`` from
          a Cholesky factor of the damped normal equations (see the module
          notes).
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
        problem alone (same iterates up to rounding). ``fun`` always
        receives all ``B`` rows (finished rows frozen), but the solver's
        own work shrinks to the running problems (see the module notes).
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
        1 gtol, 2 ftol, 3 xtol, 4 ftol and xtol, -2 callback; and -3: ``jac``
        returned non-finite entries at the current point, a batched problem
        then stops there while the others go on (unbatched: ``ValueError``);
        -4: the step shrank to nothing on non-finite residuals at the trial
        points, i.e. no finite trial point near ``x``),
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
    shrinks tenfold), as if the cost had increased; when the step tolerance
    is then met on a non-finite trial point the status is -4 (not 3).

    Unbatched, when ``x0`` is in memory (not Dask) and ``fun(x0)`` is a Dask
    array with more than one row chunk (a tall problem), the solve is handed to
    :func:`agnopt.tall_least_squares` (``jac`` ``None``/``"cs"`` become
    ``"2-point"``; finite ``bounds`` and ``history`` are not supported there
    and raise ``ValueError``).

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

    f0 = None
    if not batched:
        # tall problems: an in-memory x0 whose residuals are a Dask array chunked
        # by rows go to agnopt.tall_least_squares (blockwise J^T J, never
        # materialising J); a Dask x0 stays on the Array API path below
        f0 = _call_checked(lambda z: fun(z, *args, **kwargs), x0, "fun", "at x0")
        chunks = (getattr(f0, "chunks", None)
                  if array_api_compat.is_dask_array(f0) and not _is_dask(xp) else None)
        if chunks and f0.ndim >= 1 and len(chunks[0]) > 1:
            from ._tall import tall_least_squares

            lb0, ub0 = prepare_bounds(xp, bounds, x0)
            if bool(xp.any(xp.isfinite(lb0) | xp.isfinite(ub0))):
                raise ValueError(
                    "bounds: residuals chunked by rows (a tall Dask problem, solved by "
                    "tall_least_squares) do not support finite bounds"
                )
            if history:
                raise ValueError(
                    "history: not available for residuals chunked by rows (a tall Dask "
                    "problem, solved by tall_least_squares)"
                )
            return tall_least_squares(
                fun, x0, jac="2-point" if jac in (None, "cs", "2-point") else jac,
                method=method, ftol=ftol, xtol=xtol, gtol=gtol, x_scale=x_scale,
                max_nfev=max_nfev, args=tuple(args), kwargs=kwargs, verbose=verbose,
                callback=callback,
            )

    if isinstance(bounds, (tuple, list)):
        for b in bounds:
            _check_backend(b, xp, "bounds")
    lb, ub = prepare_bounds(xp, bounds, X if batched else x0)
    lb = xp.reshape(xp.broadcast_to(lb, X.shape), X.shape) if not batched else lb
    ub = xp.reshape(xp.broadcast_to(ub, X.shape), X.shape) if not batched else ub
    if bool(xp.any(lb >= ub)):
        raise ValueError("bounds: each lower bound must be strictly less than each upper bound")
    if bool(xp.any((X < lb) | (X > ub))):
        raise ValueError("x0 is infeasible: it violates the bounds")
    bounded = bool(xp.any(xp.isfinite(lb) | xp.isfinite(ub)))

    max_nfev = _check_max_nfev(max_nfev, n)

    # scaling
    x_scale = _resolve_x_scale(x_scale, method)
    jac_scale = isinstance(x_scale, str)
    if jac_scale:
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
    F = prob.residual(X, where="at x0", f=f0)
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


def _compactable(xp) -> bool:
    """Backends on which a batched solve drops its finished problems (row gathers).

    Not JAX (every new working-set size would compile every eager operation
    again) nor Dask (``nonzero`` has an unknown size; graphs per shape):
    there the finished problems stay in the batch, frozen by ``where``.
    """
    name = namespace_name(xp)
    return not ("jax" in name or "dask" in name)


def _rows_where(xp, mask):
    """Host-side ``nonzero``: the int indices of ``mask``'s true entries."""
    return xp.nonzero(mask)[0]


def _positions(xp, idx, B, dev):
    """For a sorted index set ``idx`` of ``range(B)``: ``(in_idx, pos)`` (B,)."""
    ar = xp.arange(B, dtype=idx.dtype, device=dev)
    k = idx.shape[0]
    pos = xp.clip(xp.searchsorted(idx, ar), 0, k - 1)
    return xp.take(idx, pos, axis=0) == ar, pos


def _scatter(xp, full, work, mask, pos):
    """``full`` with the rows ``idx`` replaced by ``work`` (functional update)."""
    sel = xp.take(work, pos, axis=0)
    m = xp.reshape(mask, (mask.shape[0],) + (1,) * (full.ndim - 1))
    return xp.where(m, sel, full)


class _Routes:
    """Per-problem linear algebra of one Jacobian: normal equations or SVD.

    ``chol`` (k,): problems solved through the Cholesky factor of
    ``A = Js^T Js`` (``n <= _CHOL_MAX_N``, ``m >= n``, no frozen column and
    a certified condition bound ``trace(A) trace(A^{-1}) < 1/_GRAM_RCOND``,
    so ``cond(Js) < 1e4``); the others go through :func:`_spectral` (SVD
    of ``Js``), gathered into a sub-batch when the backend allows it.
    Which route a problem takes depends on that problem alone, so a batch
    gives the same iterates as each problem solved alone.
    """

    def __init__(self, xp, J, A0, g, D, F, free, active, compact):
        k, m, n = J.shape
        # Dask: the per-problem linear algebra (small: k x n x n) runs on the
        # computed chunks' namespace (NumPy / CuPy) and its results are
        # wrapped back, as _host_linalg does for the SVD: a few hundred tiny
        # graph operations per iteration would cost far more than the math.
        self.out_xp = xp
        self.host = _is_dask(xp)
        if self.host:
            import dask
            from array_api_compat import array_namespace

            J, A0, g, D, F, free, active = dask.compute(J, A0, g, D, F, free, active)
            xp = array_namespace(J)
            compact = True
        self.xp = xp
        self.J, self.A0 = J, A0
        self.chol_ok = A0 is not None
        dev = _device(J)
        if self.chol_ok:
            eye = xp.eye(n, dtype=J.dtype, device=dev)
            As = A0 / (D[:, :, None] * D[:, None, :])
            gs = g / D
            Linv0, ok = _chol_inv(xp, As)
            tr = xp.sum(As * eye, axis=(-2, -1))
            cond = tr * xp.sum(Linv0 * Linv0, axis=(-2, -1))
            well = ok & xp.all(free, axis=-1) & (cond < 1.0 / _GRAM_RCOND)
            self.well = well
            self.As = xp.where(well[:, None, None], As, eye)
            self.gs = xp.where(well[:, None], gs, xp.zeros_like(gs))
            self.Linv0 = xp.where(well[:, None, None], Linv0, eye)
            need = active & ~well
        else:
            self.well = xp.zeros((k,), dtype=xp.bool, device=dev)
            need = xp.ones_like(active)
        self.svd = None
        if bool(xp.any(need)):
            if compact:
                idx = _rows_where(xp, need)
                mask, pos = _positions(xp, idx, k, dev)
                sub = lambda a: xp.take(a, idx, axis=0)  # noqa: E731
                Js_in = (sub(J), sub(D), sub(F), sub(free))
            else:
                idx, mask, pos = None, need, None
                Js_in = (J, D, F, free)
            w, c, V, good, full_rank, _ = _spectral(xp, *Js_in, force_svd=self.chol_ok)
            self.svd = (idx, mask, pos, w, c, V, good, full_rank)

    def _sub(self, a):
        idx = self.svd[0]
        return a if idx is None else self.xp.take(a, idx, axis=0)

    def _merge(self, a, b):
        idx, mask, pos = self.svd[:3]
        xp = self.xp
        if idx is None:
            m = xp.reshape(mask, (mask.shape[0],) + (1,) * (a.ndim - 1))
            return xp.where(m, b, a)
        return _scatter(xp, a, b, mask, pos)

    def _in(self, *arrs):
        if not self.host:
            return arrs
        import dask

        return dask.compute(*arrs)

    def _out(self, *arrs):
        if not self.host:
            return arrs if len(arrs) > 1 else arrs[0]
        out = tuple(self.out_xp.asarray(a) for a in arrs)
        return out if len(out) > 1 else out[0]

    def step(self, delta, par, active):
        """LM parameter and scaled step ``z = D p`` for every problem."""
        delta, par, active = self._in(delta, par, active)
        return self._out(*self._step(delta, par, active))

    def solve(self, h, par):
        """``(Js^T Js + par I)^{-1} h`` at the parameters of the last ``step``."""
        h, par = self._in(h, par)
        return self._out(self._solve(h, par))

    def jp_norm2(self, p):
        """``||J p||^2`` per problem: ``p^T (J^T J) p`` on the Cholesky route
        (well-conditioned, so accurate to ~1e-8 relative), ``J p`` itself
        on the SVD route."""
        (p,) = self._in(p)
        return self._out(self._jp_norm2(p))

    def _step(self, delta, par, active):
        xp = self.xp
        if self.chol_ok:
            par_c, q, self.Lf = _lmpar_chol(xp, delta, par, self.As, self.gs, self.Linv0,
                                            active & self.well)
            z = -q
        else:
            par_c, z = par, None
        if self.svd is not None:
            _, _, _, w, c, V, good, full_rank = self.svd
            par_s, q_s = _lmpar(xp, self._sub(delta), self._sub(par), w, c, good, full_rank,
                                self._sub(active))
            z_s = -xp.matmul(V, q_s[:, :, None])[:, :, 0]
            self.par_s = par_s
            par_c = self._merge(par_c, par_s)
            z = z_s if z is None else self._merge(z, z_s)
        return par_c, z

    def _jp_norm2(self, p):
        xp = self.xp
        if not self.chol_ok:
            return xp.sum(_mv(xp, self.J, p) ** 2, axis=-1)
        out = xp.sum(p * _mv(xp, self.A0, p), axis=-1)
        if self.svd is not None:
            o_s = xp.sum(_mv(xp, self._sub(self.J), self._sub(p)) ** 2, axis=-1)
            out = self._merge(out, o_s)
        return out

    def _solve(self, h, par):
        xp = self.xp
        out = _chol_solve(xp, self.Lf, h) if self.chol_ok else None
        if self.svd is not None:
            _, _, _, w, c, V, good, full_rank = self.svd
            hv = xp.matmul(self._sub(h)[:, None, :], V)[:, 0, :]
            aq = hv / (w + self.par_s[:, None])
            o_s = xp.matmul(V, aq[:, :, None])[:, :, 0]
            out = o_s if out is None else self._merge(out, o_s)
        return out


def _run_lm(xp, prob, X, F, D, jac_scale, lb, ub, bounded, ftol, xtol, gtol,
            max_nfev, verbose, callback, want_history):
    B, n = X.shape
    m = F.shape[1]
    dtype = X.dtype
    dev = _device(X)
    eps = float(xp.finfo(dtype).eps)
    factor = _FACTOR
    use_chol = n <= _CHOL_MAX_N and m >= n
    # drop finished problems from the working set (batched, row gathers allowed,
    # no per-iteration report that needs the whole batch)
    compact = (prob.batched and B > 1 and _compactable(xp) and not want_history
               and callback is None and verbose < 2)
    zeros_b = xp.zeros((B,), dtype=dtype, device=dev)
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
    J = A0 = g = None
    routes = free = None
    refactor = False
    # full-batch copies of the outputs while the working set is a subset
    W = None  # full indices of the working rows (None: all B, in order)
    pieces = []  # (full indices, outputs) of problems set aside
    k = B
    hist = []
    cb_stop = False
    it = 0

    def outputs():
        return (X, F, J, info, nfev, njev, nit, need_jac, active)

    while True:
        it += 1
        if compact and it > 1 and k > 1:
            n_act = int(xp.sum(xp.astype(active, xp.int64)))
            if 0 < n_act <= _COMPACT * k:
                # set the finished rows aside (assembled once at the end)
                if W is None:
                    W = xp.arange(B, dtype=xp.int64, device=dev)
                    X_all = X
                done_sel = _rows_where(xp, ~active)
                pieces.append((xp.take(W, done_sel, axis=0),
                               tuple(xp.take(a, done_sel, axis=0) for a in outputs())))
                X_all = _scatter(xp, X_all, *((X,) + _positions(xp, W, B, dev)))
                sel = _rows_where(xp, active)
                W = xp.take(W, sel, axis=0)
                take = lambda a: xp.take(a, sel, axis=0)  # noqa: E731
                (X, F, J, D, fnorm, xnorm, delta, par, gnorm, free, info, nfev, njev, nit,
                 active, need_jac, first) = (
                    take(X), take(F), take(J), take(D), take(fnorm), take(xnorm), take(delta),
                    take(par), take(gnorm), take(free), take(info), take(nfev), take(njev),
                    take(nit), take(active), take(need_jac), take(first))
                if A0 is not None:
                    A0 = take(A0)
                g = take(g)
                prob.set_rows(W, X_all, F)
                k = n_act
                refactor = True
        ones_b = xp.ones((k,), dtype=dtype, device=dev)
        zeros_k = xp.zeros((k,), dtype=dtype, device=dev)
        if bool(xp.any(need_jac & active)):
            nj = need_jac & active
            Jn = prob.jacobian(X, F)
            J = Jn if J is None else xp.where(nj[:, None, None], Jn, J)
            if use_chol:
                A0 = xp.matmul(xp.matrix_transpose(J), J)
                eye = xp.eye(n, dtype=dtype, device=dev)
                dA = xp.sum(A0 * eye, axis=-1)
                # non-finite J entries make diag(J^T J) non-finite (so does
                # overflow of a finite J: then the entries are checked)
                check = not bool(xp.all(xp.isfinite(dA) | ~nj[:, None]))
            else:
                check = not bool(xp.all(xp.isfinite(Jn)))
            if check:
                bad = nj & ~xp.all(xp.isfinite(xp.reshape(Jn, (k, -1))), axis=-1)
                if bool(xp.any(bad)) and not prob.batched:
                    raise ValueError(
                        "jac: the Jacobian has non-finite entries at the current point"
                    )
                if bool(xp.any(bad)):
                    # batched: these problems stop here (status -3), the others go on
                    njev = njev + xp.astype(bad, xp.int64)
                    info = xp.where(bad, xp.full_like(info, -3), info)
                    active = active & ~bad
                    nj = nj & ~bad
                    Jn = xp.where(bad[:, None, None], xp.zeros_like(Jn), Jn)
                    J = xp.where(nj[:, None, None], Jn, J)
                    if use_chol:
                        A0 = xp.matmul(xp.matrix_transpose(J), J)
                        dA = xp.sum(A0 * eye, axis=-1)
            njev = njev + xp.astype(nj, xp.int64)
            g = xp.matmul(F[:, None, :], J)[:, 0, :]  # J^T f  (k, n)
            free_n = _free_mask(xp, X, prob.lb, prob.ub, g, bounded)
            free = free_n if free is None else xp.where(nj[:, None], free_n, free)
            if use_chol:
                cn_all = xp.sqrt(dA)
            else:
                cn_all = _col_norms(xp, J)
            cn = xp.where(free, cn_all, xp.zeros_like(X))
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
            gn_new = xp.where(fnorm == 0, zeros_k, xp.max(cosv, axis=-1))
            gnorm = xp.where(nj, gn_new, gnorm)
            conv_g = nj & (gnorm <= gtol)
            info = xp.where(conv_g, xp.full_like(info, 4), info)
            active = active & ~conv_g
            if jac_scale:
                D = xp.where((nj & ~first)[:, None], xp.maximum(D, cn), D)
            if not bool(xp.any(active)):
                break
            refactor = True
        if refactor:
            routes = _Routes(xp, J, A0 if use_chol else None, g, D, F, free, active, compact)
            refactor = False
            J, D, free, gnorm, delta, xnorm = _persist(xp, J, D, free, gnorm, delta, xnorm)
        # --- the Levenberg-Marquardt parameter and step
        par, z = routes.step(delta, par, active)
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
                Xh = xp.clip(Xh, prob.lb, prob.ub)
            Fh = prob.residual(xp.where(eligible[:, None], Xh, X))
            nfev = nfev + xp.astype(eligible, xp.int64)
            Jv = xp.matmul(J, p[:, :, None])[:, :, 0]
            rvv = (2.0 / _ACC_H) * ((Fh - F) / _ACC_H - Jv)
            rvv = xp.where(xp.isfinite(rvv), rvv, xp.zeros_like(rvv))
            hv = xp.matmul(rvv[:, None, :], J)[:, 0, :] / D  # Js^T r_vv
            hv = xp.where(free, hv, xp.zeros_like(hv))
            az = -routes.solve(hv, par)
            a = xp.where(free, az / D, xp.zeros_like(az))
            vn = xp.linalg.vector_norm(z, axis=-1)
            an = xp.linalg.vector_norm(xp.where(free, az, xp.zeros_like(az)), axis=-1)
            accel = eligible & (2.0 * an <= _ACC_ALPHA * vn) & xp.all(xp.isfinite(a), axis=-1)
            p = xp.where(accel[:, None], p - 0.5 * a, p)
        p_unc = p
        Xt = X + p
        if bounded:
            Xt = xp.clip(Xt, prob.lb, prob.ub)
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
        t1 = xp.sqrt(routes.jp_norm2(p)) / fn_safe
        t2 = xp.sqrt(par) * pnorm / fn_safe
        prered = t1 * t1 + 2.0 * t2 * t2
        dirder = -(t1 * t1 + t2 * t2)
        if bounded_or_acc:
            fJp = xp.sum(g * p, axis=-1) / (fn_safe * fn_safe)  # f . Jp = (J^T f) . p
            prered = xp.where(clipped, -(2.0 * fJp + t1 * t1), prered)
            dirder = xp.where(clipped, fJp, dirder)
        ratio = xp.where(prered != 0, actred / xp.where(prered != 0, prered, ones_b), zeros_k)
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
        # the step bound collapsed on a non-finite trial point: say so (status -4)
        collapsed = ~finite & ((new == 2) | (new == 3) | (new == 7))
        new = xp.where(collapsed, xp.full_like(info, -4), new)
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
    if W is not None:
        pieces.append((W, outputs()))
        order = xp.argsort(xp.concat([pc[0] for pc in pieces]))
        X, F, J, info, nfev, njev, nit, need_jac, active = tuple(
            xp.take(xp.concat([pc[1][i] for pc in pieces], axis=0), order, axis=0)
            for i in range(9))
        # the Jacobian at the final x of the problems whose last step was accepted
        n_nj = int(xp.sum(xp.astype(need_jac, xp.int64)))
        prob.all_rows()
        if n_nj == B:
            J = prob.jacobian(X, F)
        elif n_nj > 0:
            idx = _rows_where(xp, need_jac)
            Xr, Fr = xp.take(X, idx, axis=0), xp.take(F, idx, axis=0)
            prob.set_rows(idx, X, Fr)
            mask, pos = _positions(xp, idx, B, dev)
            J = _scatter(xp, J, prob.jacobian(Xr, Fr), mask, pos)
            prob.all_rows()
        need_jac = xp.zeros_like(need_jac)
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
                if not prob.batched:
                    raise ValueError("jac: the Jacobian has non-finite entries at the current point")
                # batched: these problems stop here (status -3), the others go on
                bad = nj & ~xp.all(xp.isfinite(xp.reshape(Jn, (B, -1))), axis=-1)
                njev = njev + xp.astype(bad, xp.int64)
                status = xp.where(bad, xp.full_like(status, -3), status)
                active = active & ~bad
                nj = nj & ~bad
                Jn = xp.where(bad[:, None, None], xp.zeros_like(Jn), Jn)
                if J is None:
                    J = Jn
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
        # the step collapsed on a non-finite trial point: say so (status -4)
        new = xp.where(xt & ~finite, xp.full_like(status, -4), new)
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


def _host_ints(a) -> list:
    """An integer array as a Python list (one transfer, not one per entry)."""
    a = a.compute() if hasattr(a, "compute") else a
    tolist = getattr(a, "tolist", None)
    if tolist is not None:
        return [int(v) for v in tolist()]
    return [int(v) for v in a]


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
    info_host = _host_ints(info) if st["minpack"] else None
    st_host = _host_ints(status)
    if info_host is None:
        msgs = [TERMINATION_MESSAGES.get(v, "unknown status") for v in st_host]
    else:
        table = {}
        for i, v in set(zip(info_host, st_host)):
            table[(i, v)] = (_MACHINE_MESSAGES[i] if i in _MACHINE_MESSAGES
                             else TERMINATION_MESSAGES.get(v, "unknown status"))
        msgs = [table[iv] for iv in zip(info_host, st_host)]
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
