"""Problem set-up of the least-squares solvers: argument checks and the in-memory ``Problem``.

``Problem`` evaluates the residuals and the Jacobian of ``B`` problems at once
as ``(B, n) -> (B, m)`` and ``(B, n) -> (B, m, n)`` (an unbatched problem is a
batch of one), restricted to a working set of rows when a batched solve has
dropped its finished problems (see :mod:`.batched`).
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from .._core.backend import namespace_name
from .._derivatives.numdiff import approx_derivative
from .._core import lazy
from .arrays import call_checked, device, persist
from .batched import positions, rows_where, scatter
from .outcome import call_callback, history_entry, print_iter
from .losses import loss_cost, robust_model
from .routes import CHOL_MAX_N, InMemoryRoute
from .state import Linearization

EPS64 = 2.220446049250313e-16
JAC_STRINGS = ("2-point", "3-point", "cs", "autodiff")
DEFAULT_JAC = "cs"


# --------------------------------------------------------------------------- argument checks
METHODS = ("trf", "dogbox", "lm", "gauss-newton")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


def check_verbose(verbose: Any) -> None:
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose: expected 0, 1 or 2, got {verbose!r}")


def check_tolerances(method: str, ftol: Any, xtol: Any, gtol: Any) -> None:
    """Non-negative tolerances; for ``"lm"`` all above float64's eps (scipy's rule)."""
    for name, tol in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        if tol is None or not (float(tol) >= 0):
            raise ValueError(f"{name}: expected a non-negative float, got {tol!r}")
        if method == "lm" and float(tol) < EPS64:
            raise ValueError(
                f"{name}: all tolerances must be higher than machine epsilon "
                f"({EPS64:.2e}) for method 'lm' (scipy's rule), got {tol!r}"
            )


def check_max_nfev(max_nfev: Any, n: int) -> int:
    """``max_nfev`` as an int (default ``100 * n``, as scipy's lm)."""
    if max_nfev is None:
        return 100 * n
    if int(max_nfev) <= 0:
        raise ValueError(f"max_nfev: expected a positive integer or None, got {max_nfev!r}")
    return int(max_nfev)


def resolve_x_scale(x_scale: Any, method: str) -> Any:
    """``None`` -> ``"jac"`` for lm and ``1.0`` otherwise; any other string must be ``"jac"``."""
    if x_scale is None:
        return "jac" if method == "lm" else 1.0
    if isinstance(x_scale, str) and x_scale != "jac":
        raise ValueError(f"x_scale: expected 'jac', None or positive array, got {x_scale!r}")
    return x_scale


def check_m_ge_n(method: str, m: int, n: int) -> None:
    if method == "lm" and m < n:
        raise ValueError(
            f"Method 'lm' doesn't work when the number of residuals (m = {m}) is less "
            f"than the number of variables (n = {n}); use method='gauss-newton'"
        )


def as_array(x: Any, what: str) -> Any:
    """Arrays pass through; lists / tuples / numbers become NumPy float64 arrays."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    import array_api_compat.numpy as np_xp  # default backend for plain Python input

    try:
        return np_xp.asarray(x, dtype=np_xp.float64)
    except Exception as e:
        raise TypeError(f"{what}: expected an array, got {type(x).__name__}") from e


def to_backend(xp: Any, a: Any, dtype: Any, dev: Any) -> Any:
    """``a`` (array, list or number) as an array of ``xp`` with ``dtype`` on ``dev``.

    An array of another library that ``xp.asarray`` does not take is copied
    through a Python list (``tolist``).
    """
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        return xp.asarray(a, dtype=dtype, device=dev)
    try:
        return xp.asarray(a, dtype=dtype, device=dev)
    except Exception:
        return xp.asarray(a.tolist(), dtype=dtype, device=dev)


def check_backend(a: Any, xp: Any, what: str, ref: str = "x0") -> None:
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


# --------------------------------------------------------------------------- the in-memory problem
class Problem:
    """Residuals ``(B, n) -> (B, m)`` and Jacobian ``(B, n) -> (B, m, n)`` of ``B`` problems.

    ``lb``, ``ub`` (B, n) are the bounds of the rows currently evaluated;
    ``m`` is set from the residuals at ``x0``. ``jac`` ``None`` means the
    complex step with a fall-back to central differences (``auto_cs``).
    """

    # the robust loss of the engine's model (:mod:`.losses`; ``set_loss``)
    loss = "linear"
    f_scale = 1.0

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
            f = call_checked(lambda z: fun(z, *self.args, **self.kwargs), X, "fun", where)
        else:
            f = call_checked(lambda z: self.fun(z[0, :], *self.args, **self.kwargs), X, "fun", where)
        if where == "at x0":
            check_backend(f, self.xp, "fun (its residuals at x0)")
        return self._fix_f(f, X.shape[0])

    def jacobian(self, X, F):
        """``J`` (B, m, n) at ``X`` with ``F = residual(X)``."""
        xp = self.xp
        B, n = X.shape
        m = F.shape[1]
        jac = self.jac_arg
        if callable(jac):
            if self.batched:
                jr = self._jac_rows()
                J = call_checked(lambda z: jr(z, *self.args, **self.kwargs), X, "jac", "")
            else:
                J = call_checked(lambda z: jac(z[0, :], *self.args, **self.kwargs), X, "jac", "")
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
            from .._derivatives.autodiff import jacobian as ad_jacobian

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


    # ------------------------------------------------------------------ the engine's evaluator
    def configure(self, n, m, bounded, compact):
        """Fix what the engine asks of this problem: the route (Cholesky possible
        when ``n <= CHOL_MAX_N`` and ``m >= n``), bounds, compaction."""
        self.m = m
        self.bounded = bounded
        self.compact = compact
        self.use_chol = n <= CHOL_MAX_N and m >= n
        # geodesic acceleration needs the true residuals in the model
        self.accelerate = self.robust is False
        self.persist_all = lazy.is_dask_namespace(self.xp)

    robust = False

    def set_loss(self, loss, f_scale):
        """A robust loss for the Levenberg-Marquardt engine: its Jacobian, gradient
        and route are those of :func:`.losses.robust_model` at each linearization,
        and ``fnorm`` is ``sqrt(2 cost)`` of the robust cost."""
        self.loss, self.f_scale = loss, float(f_scale)
        self.robust = not (isinstance(loss, str) and loss == "linear")

    def model_residuals(self, F, J=None):
        """``(F_hat, J_hat)`` of the loss's model (``F, J`` without a loss)."""
        if not self.robust:
            return F, J
        return robust_model(self.xp, self.loss, F, J, self.f_scale)

    def cost(self, F):
        """The (robust) cost (k,) of residuals ``F`` (k, m); ``inf`` where a
        residual is not finite (with a loss)."""
        xp = self.xp
        if not self.robust:
            return 0.5 * xp.sum(F * F, axis=-1)
        f = self.fnorm(F)
        return 0.5 * f * f

    def fnorm(self, F):
        """``sqrt(2 cost)`` (k,) of residuals ``F`` (k, m): ``||F||`` without a loss;
        ``inf`` where a residual is not finite."""
        xp = self.xp
        if not self.robust:
            return xp.linalg.vector_norm(F, axis=-1)
        fin = xp.all(xp.isfinite(F), axis=-1)
        c = loss_cost(xp, self.loss, xp.where(fin[:, None], F, xp.zeros_like(F)), self.f_scale)
        return xp.where(fin, xp.sqrt(2.0 * c), xp.full_like(c, float("inf")))

    def free_mask(self, X, g):
        """Variables (k, n) not frozen at a bound: frozen where on a bound and ``-g`` points outward."""
        xp = self.xp
        if not self.bounded:
            return xp.ones(X.shape, dtype=xp.bool, device=device(X))
        at_lb = (X <= self.lb) & (g > 0)
        at_ub = (X >= self.ub) & (g < 0)
        return ~(at_lb | at_ub)

    def project(self, X):
        """``clip(X, lb, ub)`` (X itself without bounds)."""
        return self.xp.clip(X, self.lb, self.ub) if self.bounded else X

    def trial(self, Xt):
        """Residuals (k, m) at the trial points and their norms (k,)."""
        Ft = self.residual(Xt)
        return Ft, self.fnorm(Ft)

    def select(self, acc, Ft, F):
        return self.xp.where(acc[:, None], Ft, F)

    def persist(self, *arrs):
        return persist(self.xp, *arrs)

    def route(self, st):
        return InMemoryRoute(self.xp, st.J, st.A0 if self.use_chol else None, st.g, st.D,
                             self.model_residuals(st.F)[0], st.free, st.active, self.compact)

    def linearize(self, st, nj) -> Linearization:
        """``J`` (k, m, n) where ``nj`` (merged with ``st.J`` elsewhere), ``J^T J``
        (Cholesky route), ``g = J^T f``, column norms; non-finite Jacobians raise
        (unbatched) or are flagged in ``bad`` (batched)."""
        xp = self.xp
        X, F = st.X, st.F
        k = X.shape[0]
        Fm, Jn = self.model_residuals(F, self.jacobian(X, F))
        J = Jn if st.J is None else xp.where(nj[:, None, None], Jn, st.J)
        A0, dA = st.A0, None
        if self.use_chol:
            A0, dA = self._gram(J)
            # non-finite J entries make diag(J^T J) non-finite (so does
            # overflow of a finite J: then the entries are checked)
            check = not bool(xp.all(xp.isfinite(dA) | ~nj[:, None]))
        else:
            check = not bool(xp.all(xp.isfinite(Jn)))
        bad = None
        if check:
            bad = nj & ~xp.all(xp.isfinite(xp.reshape(Jn, (k, -1))), axis=-1)
            if not bool(xp.any(bad)):
                bad = None
            elif not self.batched:
                raise ValueError("jac: the Jacobian has non-finite entries at the current point")
            else:
                nj = nj & ~bad
                Jn = xp.where(bad[:, None, None], xp.zeros_like(Jn), Jn)
                J = xp.where(nj[:, None, None], Jn, J)
                if self.use_chol:
                    A0, dA = self._gram(J)
        g = xp.matmul(Fm[:, None, :], J)[:, 0, :]  # J^T f  (k, n)
        cn = xp.sqrt(dA) if self.use_chol else xp.linalg.vector_norm(J, axis=-2)
        return Linearization(F=F, J=J, A0=A0, g=g, cn=cn, nj=nj, bad=bad)

    def _gram(self, J):
        """``J^T J`` (k, n, n) and its diagonal (k, n)."""
        xp = self.xp
        n = J.shape[-1]
        A0 = xp.matmul(xp.matrix_transpose(J), J)
        eye = xp.eye(n, dtype=J.dtype, device=device(J))
        return A0, xp.sum(A0 * eye, axis=-1)

    def history_entry(self, fnorm, nit, nfev):
        return history_entry(self.batched, fnorm, nit, nfev)

    def print_iter(self, it, fnorm, nfev, pnorm):
        print_iter(self.xp, self.batched, it, fnorm, nfev, pnorm)

    def call_callback(self, callback, X, fnorm, nit) -> bool:
        return call_callback(callback, self.batched, X, fnorm, nit)

    def assemble(self, ws, rows):
        """Full-batch outcome rows after a compacted solve, with the Jacobian at
        the final ``x`` of the problems whose last step was accepted."""
        xp = self.xp
        X, F, J, info, nfev, njev, nit, need_jac, active = ws.assemble(rows)
        B = X.shape[0]
        n_nj = int(xp.sum(xp.astype(need_jac, xp.int64)))
        self.all_rows()
        if n_nj == B:
            J = self.model_residuals(F, self.jacobian(X, F))[1]
        elif n_nj > 0:
            idx = rows_where(xp, need_jac)
            Xr, Fr = xp.take(X, idx, axis=0), xp.take(F, idx, axis=0)
            self.set_rows(idx, X, Fr)
            mask, pos = positions(xp, idx, B, self.dev)
            J = scatter(xp, J, self.model_residuals(Fr, self.jacobian(Xr, Fr))[1], mask, pos)
            self.all_rows()
        return X, F, J, info, nfev, njev, nit, xp.zeros_like(need_jac), active
