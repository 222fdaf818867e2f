"""The in-memory ``Problem`` of the least-squares solvers (argument checks: :mod:`.options`).

``Problem`` evaluates the residuals and the Jacobian of ``B`` problems at once
as ``(B, n) -> (B, m)`` and ``(B, n) -> (B, m, n)`` (an unbatched problem is a
batch of one), restricted to a working set of rows when a batched solve has
dropped its finished problems (see :mod:`.batched`).
"""

from __future__ import annotations

import math
from typing import Any

from .._core import lazy
from .._core.backend import compiled, pytree_class
from .._core.user_code import note, quiet_complex_casts
from .._derivatives.numdiff import _cs_points_one, fd_jacobian, point_caller
from .._derivatives.one_point import one_point_jacobian_fn
from .arrays import call_checked, detach, machine_eps, persist
from .batched import RowSubsets
from .cs_verify import ComplexStepCheck
from .losses import loss_cost, robust_model
from .options import (  # noqa: F401  (re-exported: the drivers import them from here)
    DEFAULT_JAC,
    EPS64,
    JAC_STRINGS,
    METHODS,
    as_array,
    as_bounds_pair,
    check_backend,
    check_jacobian_kind,
    check_m_ge_n,
    check_max_nfev,
    check_method,
    check_scipy_options,
    check_tolerances,
    check_verbose,
    resolve_x_scale,
    to_backend,
    wrap_callback,
)
from .outcome import call_callback, history_entry, print_iter
from .routes import CHOL_MAX_N, InMemoryRoute, gram, normal_block
from .state import Linearization

# dtype -> a quarter of its exponent range (set_fscale; finfo is slow next to a small solve)
_FSCALE_EXP: dict = {}


def _pow2_scales(xp, rmax, lo, hi):
    """Per-row powers of 2 ``s`` (B, 1) of ``rmax``'s dtype: ``2^-k`` with ``rmax s`` in
    [0.5, 1) (``math.frexp``'s exponent ``k``, what a problem solved alone gets) where
    ``rmax`` lies outside ``[lo, hi]``; 1 elsewhere (``rmax`` 0 included)."""
    one = xp.ones_like(rmax)
    out = (rmax > 0) & ((rmax < lo) | (rmax > hi))
    r = xp.where(out, rmax, one)
    s = xp.pow(xp.full_like(r, 2.0), -(xp.floor(xp.log2(r)) + 1.0))  # exact powers of 2
    # log2 rounds: one halving or doubling puts r s into [0.5, 1)
    s = xp.where(r * s >= 1.0, s * 0.5, s)
    s = xp.where(r * s < 0.5, s * 2.0, s)
    return xp.where(out, s, one)


def fnorm(xp, F, loss, f_scale):
    """:meth:`Problem.fnorm` (``loss`` ``None``: no robust loss)."""
    if loss is None:
        return xp.linalg.vector_norm(F, axis=-1)
    fin = xp.all(xp.isfinite(F), axis=-1)
    c = loss_cost(xp, loss, xp.where(fin[:, None], F, xp.zeros_like(F)), f_scale)
    return xp.where(fin, xp.sqrt(2.0 * c), xp.full_like(c, float("inf")))


# one compiled program on JAX (agnopt._core.backend.compiled), as written elsewhere
_fnorm = compiled(fnorm, static=("loss", "f_scale"))


def _row0(xp, a):
    """``a[0]`` of a one-problem stack (k = 1) as a reshape: one operation on every
    backend (JAX's indexing dispatches several)."""
    return xp.reshape(a, tuple(a.shape[1:]))


# --------------------------------------------------------------------------- the in-memory problem
@pytree_class(data=("lb", "ub"), meta=("xp", "dev", "bounded"))
class Box:
    """The array operations the engine asks of an in-memory evaluator between
    evaluations: bounds ``lb``, ``ub`` (k, n), ``bounded``, namespace and device.

    :class:`Problem` inherits them (one implementation); a ``Box`` of its own
    (:meth:`Problem.block_view`) passes into the engine's compiled blocks,
    where only these attributes exist.
    """

    def __init__(self, xp, dev, bounded, lb, ub):
        self.xp, self.dev, self.bounded, self.lb, self.ub = xp, dev, bounded, lb, ub

    def free_mask(self, X, g):
        """Variables (k, n) not frozen at a bound: frozen where on a bound and ``-g`` points outward."""
        xp = self.xp
        if not self.bounded:
            return xp.ones(X.shape, dtype=xp.bool, device=self.dev)
        at_lb = (X <= self.lb) & (g > 0)
        at_ub = (X >= self.ub) & (g < 0)
        return ~(at_lb | at_ub)

    def project(self, X):
        """``clip(X, lb, ub)`` (X itself without bounds)."""
        return self.xp.clip(X, self.lb, self.ub) if self.bounded else X

    def select(self, acc, Ft, F):
        return self.xp.where(acc[:, None], Ft, F)


class Problem(ComplexStepCheck, RowSubsets, Box):
    """Residuals ``(B, n) -> (B, m)`` and Jacobian ``(B, n) -> (B, m, n)`` of ``B`` problems.

    ``lb``, ``ub`` (B, n) are the bounds of the rows currently evaluated;
    ``m`` is set from the residuals at ``x0``. ``jac`` ``None`` means the
    complex step with a fall-back to central differences (``auto_cs``).
    """

    # the robust loss of the engine's model (:mod:`.losses`; ``set_loss``)
    loss = "linear"
    f_scale = 1.0
    progress: Any  # the progress display (``make_progress``), set by the solver
    n_problems: int

    def __init__(self, fun, jac, x0, batched, args, kwargs, lb, ub, xp, dev):
        self.fun, self.jac_arg, self.batched = fun, jac, batched
        self.args, self.kwargs = args, kwargs
        self.xp, self.dev = xp, dev
        self.dtype = x0.dtype
        self.lb, self.ub = lb, ub  # (B, n)
        self.m = None
        self.auto_cs = jac is None
        self.diff_step = None  # scipy's diff_step (relative step of the differences)
        self._cs_checked = False  # the default complex step verified once (_cs_disagrees)
        self._cs_one = False  # that check on one float64 NumPy problem, compiled
        # powers of 2 applied to residuals and Jacobian (set_fscale): one float for
        # every row, or (row_scaled) one per row, a (B, 1) array
        self.fscale: Any = 1.0
        self.scaled = self.row_scaled = False
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
        self._fd_cache: dict = {}  # numdiff's constants (identity, complex unit) for this solve
        self._fd_call: Any = None  # fun at a difference point (numdiff.point_caller), unbatched
        self._eye = None  # the (n, n) identity of J^T J's diagonal
        self._fast_jac: Any = None  # (X, F) -> J once it is the one-point layer's (_set_fast_jac)

    def _fix_f(self, f, B, what="fun"):
        xp = self.xp
        if not self.batched:
            # the common case once m is known: (m,) residuals of the working dtype
            try:
                if f.ndim == 1 and f.shape[0] == self.m and f.dtype == self.dtype:
                    return xp.reshape(f, (1, self.m))
            except AttributeError:  # not an array: converted below
                pass
        if not (hasattr(f, "shape") and hasattr(f, "dtype")):
            f = xp.asarray(f, dtype=self.dtype, device=self.dev)
        if self.batched:
            if f.ndim == 1 and f.shape[0] == B:
                f = xp.reshape(f, (B, 1))
                self._column_fun()
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

    def _column_fun(self):
        """A batched ``fun`` that returns one residual per problem as ``(B,)``: ``fun`` is
        replaced by one returning ``(B, 1)``, so that every caller (the difference
        quotients, the complex-step check, autodiff) sees what :meth:`_fix_f` gives."""
        fun = self.fun
        if getattr(fun, "_agnopt_column", False):
            return
        reshape = self.xp.reshape

        def column(X, *args, **kwargs):
            out = fun(X, *args, **kwargs)
            return reshape(out, (out.shape[0], 1)) if getattr(out, "ndim", 2) == 1 else out

        column._agnopt_column = True
        self.fun = column

    def residual(self, X, where="at a trial point", f=None):
        """``X`` (B, n) -> ``F`` (B, m) (``f``: ``fun``'s output at ``X``, when known)."""
        if f is not None:
            pass
        elif self.batched:
            fun = self._fun_rows()
            f = call_checked(lambda z: fun(z, *self.args, **self.kwargs), X, "fun", where)
        else:
            f = self._call(_row0(self.xp, X), where)
        if where == "at x0":
            check_backend(f, self.xp, "fun (its residuals at x0)")
        F = self._fix_f(f, X.shape[0])
        return F * self._row_fscale() if self.scaled else F

    def _call(self, x, where):
        """``fun(x, *args, **kwargs)`` of one problem; an exception it raises keeps its type
        and message, with a note naming ``where`` (:func:`.arrays.call_checked`'s note,
        without its two Python calls per evaluation)."""
        try:
            return self.fun(x, *self.args, **self.kwargs)
        except Exception as e:
            note(e, "agnopt: raised while evaluating fun " + where)
            raise

    def residual_one(self, x):
        """:meth:`residual` of one problem (not batched) at its trial point ``x`` (n,) (the
        row of ``X`` (1, n)): ``F`` (1, m), without the other cases' branches."""
        F = self._fix_f(self._call(x, "at a trial point"), 1)
        return F * self._row_fscale() if self.scaled else F

    def _row_fscale(self):
        """``fscale`` of the rows evaluated now (the working set's, in a compacted solve)."""
        if self.row_scaled and self.rows is not None:
            return self.xp.take(self.fscale, self.rows, axis=0)
        return self.fscale

    def max_abs(self, F):
        """``max |F|`` as a Python float (NaN or inf where a residual is not finite)."""
        # torch: the scale is a constant (float() of a graph warns)
        return float(detach(self.xp.max(self.xp.abs(F))))

    def set_fscale(self, F, amax=None):
        """Residuals too large or too small to square: scale them (and ``J``) by a power of 2.

        ``F`` (B, m) are the residuals at ``x0``. When ``max |F|`` of a
        problem (a row) lies outside ``[2^-e, 2^e]`` with ``e`` a quarter of
        the dtype's exponent range (float64: about 1e-77 .. 1e77; float32:
        2e-10 .. 4e9), squares and ``J^T J`` would overflow or underflow; the
        solver then works on ``s f`` and ``s J`` with ``s = 2^-k`` bringing
        that row's ``max |F|`` to [0.5, 1). Each problem of a batch gets its
        own ``s`` (1 for the rows in the range), the one it gets when solved
        alone: one scale for the whole batch made the other problems'
        residuals underflow to rounding noise, and they stopped at ``x0``
        with ``success=True``. The scaling is exact (a power of 2) and
        Levenberg-Marquardt is invariant under it (every test is relative:
        ratio, cosine, radius); :meth:`unscale` restores the reported
        ``fun``, ``jac``. Returns the scaled ``F``. ``amax``: :meth:`max_abs` of a
        one-problem ``F``, when known.
        """
        xp = self.xp
        try:
            e = _FSCALE_EXP[type(F.dtype), F.dtype]  # type first: no cross-library dtype compare
        except (KeyError, TypeError):
            e = int(math.frexp(float(xp.finfo(F.dtype).max))[1]) // 4
            try:
                _FSCALE_EXP[type(F.dtype), F.dtype] = e
            except TypeError:  # pragma: no cover - unhashable dtype objects
                pass
        lo, hi = math.ldexp(1.0, -e), math.ldexp(1.0, e)
        if F.shape[0] == 1:  # one problem: its max |f| (one reduction)
            if amax is None:
                amax = self.max_abs(F)
            if not math.isfinite(amax) or amax == 0.0 or lo <= amax <= hi:
                return F
            self.fscale, self.scaled = math.ldexp(1.0, -math.frexp(amax)[1]), True
            return F * self.fscale
        # a batch: each row by its own max |f|
        rmax = detach(xp.max(xp.abs(F), axis=1, keepdims=True))  # (B, 1): each row's max |f|, a constant
        amax = float(xp.max(rmax))
        if not math.isfinite(amax) or amax == 0.0:
            return F
        pos = rmax > 0
        rmin = float(xp.min(xp.where(pos, rmax, xp.full_like(rmax, amax))))
        if lo <= rmin and amax <= hi:
            return F
        s = _pow2_scales(xp, rmax, lo, hi)
        if bool(xp.all(s == s[0, 0])):  # one scale for every row
            self.fscale, self.scaled = float(s[0, 0]), True
            return F * self.fscale
        self.fscale, self.scaled, self.row_scaled = s, True, True
        return F * s

    def _jac_fscale(self, fs):
        return fs[:, :, None] if self.row_scaled else fs

    def unscale(self, F, J):
        """``(F, J)`` of the user's ``fun`` from the solver's scaled ones (every row)."""
        if not self.scaled:
            return F, J
        fs = self.fscale
        return F / fs, (None if J is None else J / self._jac_fscale(fs))

    def jacobian(self, X, F):
        """``J`` (B, m, n) at ``X`` with ``F = residual(X)`` (both scaled by ``fscale``)."""
        fast = self._fast_jac
        if fast is not None:
            return fast(X, F)
        if not self.scaled:
            return self._jacobian(X, F)
        fs = self._row_fscale()
        return self._jacobian(X, F / fs) * self._jac_fscale(fs)

    def _jacobian(self, X, F):
        """``J`` (B, m, n) of ``fun`` at ``X`` with ``F = fun(X)`` (unscaled)."""
        xp = self.xp
        B, n = X.shape
        m = F.shape[1]
        jac = self.jac_arg
        if callable(jac):
            if self.batched:
                jr = self._jac_rows()
                J = call_checked(lambda z: jr(z, *self.args, **self.kwargs), X, "jac", "")
            else:
                J = call_checked(lambda z: jac(_row0(self.xp, z), *self.args, **self.kwargs), X, "jac", "")
            check_jacobian_kind(J, "lm")
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
            f = lambda z: fr(z, *self.args, **self.kwargs)
            if self.batched:
                J = ad_jacobian(f, X, batched=True)
            else:
                J = xp.reshape(ad_jacobian(f, _row0(xp, X)), (1, m, n))
        else:
            # complex step: a tiny relative step h = eps * |x_j| (eps where x_j = 0).
            # It never cancels, and it keeps the truncation error O((h/x)^2)
            # negligible for parameters far from 1 (scipy's eps**0.5 * max(1, |x|)
            # would be larger than a parameter of size 1e-9, e.g. Hahn1's b7).
            rel = machine_eps(xp, self.dtype) if jac == "cs" else None
            if self.diff_step is not None:
                rel = self.diff_step  # scipy's diff_step: relative step of every scheme
            if jac == "cs" and self.auto_cs:
                # default Jacobian: the complex step, unless fun cannot take
                # complex input (raises, or returns real output); then central
                # differences for the rest of the solve.
                # (any exception at the complex points: the model cannot take
                # them; at real points the 3-point scheme lets a real error through)
                try:
                    with quiet_complex_casts():
                        J = self._fd(X, F, "cs", rel)
                except Exception:  # noqa: BLE001 - any error of fun at complex points
                    self.jac_arg = "3-point"
                    self.auto_cs = False
                    return self._fd(X, F, "3-point", self.diff_step)
                if self._cs_checked:
                    self._set_fast_jac("cs", rel, True)
                    return J
                # first complex-step Jacobian: verified against differences
                self._cs_checked = True
                J3 = self._cs_disagrees(X, F, J)
                if J3 is None:
                    return J
                self.jac_arg = "3-point"
                self.auto_cs = False
                return J3 if self.diff_step is None else self._fd(X, F, "3-point", self.diff_step)
            J = self._fd(X, F, jac, rel)
            self._set_fast_jac(jac, rel, False)
            return J
        if J.dtype != self.dtype:
            J = xp.astype(J, self.dtype)
        return J

    def _raw(self, X):
        """``fun`` at ``X`` (k, n) -> (k, m), unscaled (finite-difference points)."""
        where = "at a finite-difference point"
        if self.batched:
            fun = self._fun_rows()
            f = call_checked(lambda z: fun(z, *self.args, **self.kwargs), X, "fun", where)
        else:
            f = self._call(_row0(self.xp, X), where)
        return self._fix_f(f, X.shape[0])

    def _fd(self, X, F, jac, rel):
        xp = self.xp
        B, n = X.shape
        m = F.shape[1]
        # the engine's points are feasible and F is fun's (checked) output at X:
        # the trusted entry skips approx_derivative's per-call checks (and, with
        # no finite bound, the steps' bound rules: lb = ub = None)
        bounded = getattr(self, "bounded", True)
        lbx, ubx = (self.lb, self.ub) if bounded else (None, None)
        if self.batched:
            J = fd_jacobian(self._fun_rows(), X, F, jac, rel, lbx, ubx, self.args, self.kwargs,
                            True, xp, self.dev, self._fd_cache)
            if J.ndim == 2:
                J = xp.reshape(J, (B, 1, n))
        else:
            one = self._fd_cache.get("one") if lbx is None else False
            if one is None:  # fd_jacobian's verdict, asked once per solve: on its first Jacobian
                x0 = _row0(xp, X)
                one = self._fd_cache["one"] = _cs_points_one(x0) and F.dtype == x0.dtype
            if one:
                # one float64 NumPy point: its one-point layer straight away, with this
                # solve's caller
                fn = self._one_point_fn(jac, rel, X.dtype, F.dtype)
                J = None if fn is None else fn(_row0(xp, X), _row0(xp, F))
            else:
                J = None
            if J is None:
                J = fd_jacobian(self.fun, _row0(xp, X), _row0(xp, F), jac, rel,
                                None if lbx is None else _row0(xp, lbx),
                                None if ubx is None else _row0(xp, ubx),
                                self.args, self.kwargs, False, xp, self.dev, self._fd_cache)
            J = xp.reshape(J, (1, m, n))
        if J.dtype != self.dtype:
            J = xp.astype(J, self.dtype)
        return J


    def _one_point_fn(self, jac, rel, xdtype, fdtype):
        """The one-point layer's Jacobian ``(x, f) -> J`` (m, n) of this solve for ``jac`` and
        ``rel`` (:func:`.one_point.one_point_jacobian_fn`, with this solve's caller), made
        once; ``None`` where it does not apply."""
        key = ("fn", jac, rel)
        cache = self._fd_cache
        if key not in cache:
            call = self._fd_call
            if call is None:
                call = self._fd_call = point_caller(self.fun, self.args, self.kwargs, self.xp,
                                                    self.dtype, self.dev)
            rows = (getattr(self.fun, "_agnopt_point_rows", None)
                    if not (self.args or self.kwargs) else None)
            cache[key] = one_point_jacobian_fn(call, jac, rel, None, self.xp, cache, xdtype,
                                               fdtype, rows)
        return cache[key]

    def _set_fast_jac(self, jac, rel, auto):
        """After a Jacobian by :meth:`_fd` with ``jac`` and ``rel`` that the next ones repeat
        (``auto``: the default complex step, verified): where that was the one-point layer
        (one unscaled float64 NumPy problem without bounds), :meth:`jacobian` calls it
        directly from now on, with :meth:`_fd`'s reshape and dtype check and, for the
        default complex step, :meth:`_jacobian`'s fallback to ``"3-point"``."""
        if (self.scaled or self.batched or getattr(self, "bounded", True)
                or not self._fd_cache.get("one")):
            return
        fn = self._fd_cache.get(("fn", jac, rel))
        if fn is None:
            return
        dtype, astype = self.dtype, self.xp.astype

        def fast(X, F):
            # (NumPy: X[0], F[0] are _row0's views)
            if auto:
                try:
                    with quiet_complex_casts():
                        J = fn(X[0], F[0])
                except Exception:  # noqa: BLE001 - as _jacobian's default complex step
                    self.jac_arg = "3-point"
                    self.auto_cs = False
                    self._fast_jac = None
                    return self._fd(X, F, "3-point", self.diff_step)
            else:
                J = fn(X[0], F[0])
            J = J.reshape((1, F.shape[1], X.shape[1]))
            return J if J.dtype == dtype else astype(J, dtype)
        self._fast_jac = fast

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
        return _fnorm(self.xp, F, self.loss if self.robust else None, self.f_scale)

    def block_view(self):
        """This problem's :class:`Box` (the bounds of the rows now solved), for the
        engine's compiled blocks."""
        return Box(self.xp, self.dev, self.bounded, self.lb, self.ub)

    def trial(self, Xt):
        """Residuals (k, m) at the trial points and their norms (k,)."""
        Ft = self.residual(Xt)
        return Ft, self.fnorm(Ft)

    def persist(self, *arrs):
        return persist(self.xp, *arrs)

    def route(self, st):
        return InMemoryRoute(self.xp, st.J, st.A0 if self.use_chol else None, st.g, st.D,
                             self.model_residuals(st.F)[0], st.free, st.active, self.compact,
                             eye=self.eye(st.X.shape[1]) if self.use_chol else None,
                             batch=getattr(self, "n_problems", None))

    def linearize(self, st, nj) -> Linearization:
        """``J`` (k, m, n) where ``nj`` (merged with ``st.J`` elsewhere), ``J^T J``
        (Cholesky route), ``g = J^T f``, column norms; non-finite Jacobians raise
        (unbatched) or are flagged in ``bad`` (batched)."""
        xp = self.xp
        X, F = st.X, st.F
        k = X.shape[0]
        Fm, Jn = self.model_residuals(F, self.jacobian(X, F))
        eye = self.eye(X.shape[1]) if self.use_chol else None
        # the first Jacobian, or a new one for every problem: no merge (one program for
        # every iteration)
        new_all = st.J is None or (not lazy.is_dask_namespace(xp) and lazy.known_all(xp, nj))
        J, A0, dA, g, cn, fine = normal_block(xp, Fm, Jn, Jn if new_all else st.J, nj, eye)
        A0 = st.A0 if A0 is None else A0
        bad = None
        if not bool(fine):
            bad = nj & ~xp.all(xp.isfinite(xp.reshape(Jn, (k, -1))), axis=-1)
            if not bool(xp.any(bad)):
                bad = None
            elif not self.batched:
                raise ValueError("jac: the Jacobian has non-finite entries at the current point")
            else:
                nj = nj & ~bad
                Jn = xp.where(bad[:, None, None], 0.0, Jn)
                J = xp.where(nj[:, None, None], Jn, J)
                if self.use_chol:
                    A0, dA = self._gram(J)
                g = xp.matmul(Fm[:, None, :], J)[:, 0, :]  # J^T f  (k, n)
                cn = xp.sqrt(dA) if self.use_chol else xp.linalg.vector_norm(J, axis=-2)
        return Linearization(F=F, J=J, A0=A0, g=g, cn=cn, nj=nj, bad=bad)

    def _gram(self, J):
        """``J^T J`` (k, n, n) and its diagonal (k, n)."""
        return gram(self.xp, J, self.eye(J.shape[-1]))

    def eye(self, n):
        """The ``(n, n)`` identity in the working dtype on the device, made once per solve."""
        if self._eye is None:
            self._eye = self.xp.eye(n, dtype=self.dtype, device=self.dev)
        return self._eye

    def history_entry(self, fnorm, nit, nfev):
        return history_entry(self.batched, fnorm, nit, nfev)

    def print_iter(self, it, fnorm, nfev, pnorm):
        print_iter(self.xp, self.batched, it, fnorm, nfev, pnorm)

    def call_callback(self, callback, X, fnorm, nit) -> bool:
        return call_callback(callback, self.batched, X, fnorm, nit)
