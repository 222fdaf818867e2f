r"""Tall nonlinear least squares (``m >> n``) on Dask: one pass over the data per iteration.

For residuals that are Dask arrays chunked by rows (``m`` up to ~1e8 spread
over a cluster, ``n`` up to a few hundred parameters), every iteration needs
only small quantities of the Jacobian :math:`J` (``m x n``):

.. math:: A = J^T J \ (n \times n), \qquad g = J^T f \ (n), \qquad \|f\|^2 .

They are reduced blockwise (each row chunk contributes
:math:`J_i^T J_i`, :math:`J_i^T f_i`, :math:`f_i^T f_i`; the partial results
are summed by Dask's tree reduction) and fetched together by **one**
``dask.compute`` call, so ``J`` is never materialised on one worker (nor on
the client): a worker holds one row chunk of ``J`` at a time. The damped
system is then solved in memory (``n x n``, once per iteration) and the
parameters ``x`` stay a small in-memory array of the namespace of ``x0``.

Passes over the data:

* ``"gauss-newton"``: **one pass per iteration**. The trial point is
  evaluated together with ``J^T J``, ``J^T f`` there (a speculative Jacobian:
  accepted steps, the usual case, need nothing more; a rejected step wastes
  that Jacobian work).
* ``"lm"``: one pass for the trial point (``||f(x + p)||^2`` only), and one
  pass for ``J^T J, J^T f`` at each accepted point.

The same code runs on eager backends (NumPy, torch, ...), where "one pass" is
plain eager arithmetic; that is how the tests compare it with in-memory fits.
The algorithm code never imports NumPy: the small solve runs in the namespace
of ``x0`` (after ``x0`` is computed when it is a Dask array).

Levenberg-Marquardt runs the same engine as the in-memory solver
(:func:`.engine.run_lm`) with the host-solve route (:class:`.routes.GramRoute`);
Gauss-Newton shares the blocks of :mod:`.gauss_newton`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from array_api_compat import array_namespace

from .._core import lazy
from .._derivatives.numdiff import prepare_bounds
from .._core.backend import on_device_of
from .._core.result import OptimizeResult
from .._core.status import Status
from .._core.typing import Array, ArrayLike
from .arrays import call_checked, device, to_namespace
from .._core.progress import make_progress
from .engine import run_lm
from .gauss_newton import run_gn_gram
from .outcome import message, to_status
from .options import (
    as_array,
    check_m_ge_n,
    check_max_nfev,
    check_method,
    check_tolerances,
    check_verbose,
    resolve_x_scale,
    wrap_callback,
)
from .routes import GramRoute
from .start import scale_from
from .stationarity import xtol_not_stationary_gram
from .state import Linearization

__all__ = ["is_tall", "solve_tall", "tall_least_squares"]

_JAC_STRINGS = ("2-point", "3-point")


def _dtype_in(xp: Any, dtype: Any) -> Any:
    """``dtype`` (of ``x0``'s namespace) as the same dtype of the namespace ``xp``
    (the residuals may live in another library, e.g. CUDA torch for a NumPy ``x0``)."""
    name = str(dtype).rsplit(".", 1)[-1]
    alt = getattr(xp, name, None) if name in ("float16", "float32", "float64") else None
    return dtype if alt is None else alt


def _host_x0(x0: Any) -> Any:
    """``x0`` as a small in-memory array (computed when it is a Dask array)."""
    if lazy.is_dask(x0):
        (x0,) = lazy.compute(x0)
    return as_array(x0, "x0")


class TallProblem:
    """Residuals ``f`` (m,), Jacobian ``J`` (m, n) (both lazy, row chunks) and the
    blockwise reductions of one pass; the engine's evaluator for one tall problem
    (``k = 1``: the engine's arrays are (1,) and (1, n) in the namespace of ``x``)."""

    accelerate = False  # geodesic acceleration would cost a third pass
    bounded = False
    persist_all = False
    progress: Any  # the progress display (``make_progress``), set by the solver
    n_problems: int

    def __init__(self, fun, jac, hxp, dtype, dev, args, kwargs):
        self.fun, self.jac = fun, jac
        self.hxp, self.dtype, self.dev = hxp, dtype, dev
        self.args, self.kwargs = args, kwargs
        self.m = None
        self.n_fd = 0  # residual evaluations spent on finite differences
        self.fscale = 1.0  # power of 2 applied to f and J (see start)

    def residual(self, x, where="at a trial point"):
        f = call_checked(lambda z: self.fun(z, *self.args, **self.kwargs), x, "fun", where)
        if not (hasattr(f, "shape") and hasattr(f, "dtype")):
            raise TypeError(
                f"fun: expected an array of residuals (a Dask array chunked by rows), "
                f"got {type(f).__name__}"
            )
        if f.ndim != 1:
            raise ValueError(
                f"fun: expected residuals of shape (m,), got {tuple(f.shape)}"
            )
        m = f.shape[0]
        if m is None or (isinstance(m, float) and math.isnan(m)):
            raise ValueError(
                "fun: the number of residuals is unknown (Dask chunks of unknown size); "
                "call compute_chunk_sizes() on the data first"
            )
        if self.m is not None and m != self.m:
            raise ValueError(f"fun: the number of residuals changed from {self.m} to {m}")
        xp = array_namespace(f)
        want = _dtype_in(xp, self.dtype)
        if f.dtype != want:
            if not xp.isdtype(f.dtype, ("real floating", "integral")):
                raise TypeError(f"fun: expected real residuals, got dtype {f.dtype}")
            f = xp.astype(f, want)
        return f if self.fscale == 1.0 else f * self.fscale

    def jacobian(self, x, f):
        """``J`` (m, n) at ``x``, lazily; row chunks aligned with ``f``'s, one column chunk."""
        n = x.shape[0]
        m = f.shape[0]
        xp = array_namespace(f)
        if callable(self.jac):
            J = call_checked(lambda z: self.jac(z, *self.args, **self.kwargs), x, "jac", "")
            if not (hasattr(J, "shape") and hasattr(J, "dtype")):
                raise TypeError(f"jac: expected an array of shape ({m}, {n}), got {type(J).__name__}")
            if tuple(J.shape) != (m, n):
                raise ValueError(
                    f"jac: expected an array of shape {(m, n)} (residuals x parameters), "
                    f"got {tuple(J.shape)}"
                )
            jxp = array_namespace(J)
            if J.dtype != _dtype_in(jxp, self.dtype):
                J = jxp.astype(J, _dtype_in(jxp, self.dtype))
            if self.fscale != 1.0:
                J = J * self.fscale
        else:
            J = self._fd(x, f, xp)
        if lazy.is_dask(J):
            want = {1: -1}
            if lazy.is_dask(f) and J.chunks[0] != f.chunks[0]:
                want[0] = f.chunks[0]
            if J.numblocks[1] != 1 or 0 in want:
                J = J.rechunk(want)
        return J

    def _fd(self, x, f, xp):
        """scipy's forward (``2-point``) or central (``3-point``) differences, lazily.

        ``h_j = r * sign(x_j) * max(1, |x_j|)`` with ``r = eps**(1/2)``
        (``eps**(1/3)`` for central differences), rounded so that ``x + h``
        is exact. Costs ``n`` (``2n``) residual evaluations per row chunk
        inside the same pass, and an ``(m, n)`` Jacobian chunk per row chunk.
        """
        hxp = self.hxp
        n = x.shape[0]
        eps = float(hxp.finfo(self.dtype).eps)
        central = self.jac == "3-point"
        r = eps ** (1.0 / 3.0) if central else eps**0.5
        ones = hxp.ones_like(x)
        sign = hxp.where(x >= 0, ones, -ones)
        h = r * sign * hxp.maximum(ones, hxp.abs(x))
        h = (x + h) - x
        idx = hxp.arange(n, device=self.dev)
        cols = []
        for j in range(n):
            hj = hxp.where(idx == j, h, hxp.zeros_like(h))
            fp = self.residual(x + hj, where="at a finite-difference point")
            if central:
                fm = self.residual(x - hj, where="at a finite-difference point")
                cols.append((fp - fm) / (2.0 * float(h[j])))
            else:
                cols.append((fp - f) / float(h[j]))
            self.n_fd += 2 if central else 1
        return xp.stack(cols, axis=1)

    def one_pass(self, x, *, gram: bool, where: str = "at a trial point", grad_only: bool = False):
        """One pass over the data at ``x``.

        Returns ``(f, J, ff, A, g)`` with ``ff = ||f||^2`` (a Python float) and,
        when asked, ``A = J^T J``, ``g = J^T f`` as in-memory arrays of the
        namespace of ``x`` (``A`` is ``None`` with ``grad_only``). ``f`` and
        ``J`` are the lazy arrays. All reductions are fetched by one
        ``dask.compute``.
        """
        f = self.residual(x, where=where)
        if self.m is None:
            self.m = f.shape[0]
        xp = array_namespace(f)
        parts = [xp.sum(f * f)]
        J = None
        if gram or grad_only:
            J = self.jacobian(x, f)
            JT = J.T
            if not grad_only:
                parts.append(xp.matmul(JT, J))
            parts.append(xp.matmul(JT, f))
        vals = lazy.compute(*parts)
        ff = float(vals[0])
        hxp = self.hxp
        A = g = None
        if gram and not grad_only:
            A = to_namespace(hxp, vals[1], self.dtype, self.dev)
            A = 0.5 * (A + A.T)  # exact symmetry for eigh (block sums may differ in rounding)
            g = to_namespace(hxp, vals[2], self.dtype, self.dev)
        elif grad_only:
            g = to_namespace(hxp, vals[1], self.dtype, self.dev)
        return f, J, ff, A, g

    # ------------------------------------------------------------------ the engine's evaluator
    def start(self, x):
        """The pass at ``x0`` (kept for the engine's first Jacobian): ``(f, ff, A)``."""
        f, J, ff, A, g = self.one_pass(x, gram=True, where="at x0")
        if self._rescale(f, ff):
            f, J, ff, A, g = self.one_pass(x, gram=True, where="at x0")
        self._pending = (f, J, A, g)
        self.last_g = g
        return f, ff, A

    def _rescale(self, f, ff) -> bool:
        """Residuals whose squares overflow or underflow: set ``fscale`` (a power of 2
        bringing ``max |f|`` to [0.5, 1); the rule of the in-memory ``Problem.set_fscale``)
        and say so (the pass at ``x0`` is then repeated, scaled)."""
        big = float(self.hxp.finfo(self.dtype).max)
        e = int(math.frexp(big)[1]) // 4
        if math.isfinite(ff) and math.ldexp(1.0, -2 * e) <= ff <= math.ldexp(1.0, 2 * e):
            return False
        xp = array_namespace(f)
        (amax,) = lazy.compute(xp.max(xp.abs(f)))
        amax = float(amax)
        if not math.isfinite(amax) or amax == 0.0 or math.ldexp(1.0, -e) <= amax <= math.ldexp(1.0, e):
            return False
        self.fscale = math.ldexp(1.0, -math.frexp(amax)[1])
        return True

    def linearize(self, st, nj) -> Linearization:
        """The accepted point's pass (``J^T J``, ``J^T f``; ``f`` is evaluated there
        again, counted in ``njev``), or the pass at ``x0`` on the first call."""
        hxp = self.hxp
        if self._pending is not None:
            f, J, A, g = self._pending
            self._pending = None
        else:
            f, J, _, A, g = self.one_pass(st.X[0, :], gram=True, where="at the current point")
            if not bool(hxp.all(hxp.isfinite(A))):
                raise ValueError("jac: the Jacobian has non-finite entries at the current point")
        self.last_g = g
        d = hxp.linalg.diagonal(A)
        cn = hxp.sqrt(hxp.maximum(d, hxp.zeros_like(d)))  # ||J_j|| from diag(J^T J)
        return Linearization(F=f, J=J, A0=A[None, ...], g=g[None, :], cn=cn[None, :], nj=nj,
                             bad=None)

    def free_mask(self, X, g):
        return self.hxp.ones(X.shape, dtype=self.hxp.bool, device=self.dev)

    def project(self, X):
        return X

    def trial(self, Xt):
        """``||f||`` (1,) at the trial point: one pass computing ``||f||^2`` only."""
        ft, _, ff1, _, _ = self.one_pass(Xt[0, :], gram=False)
        fnorm1 = math.sqrt(ff1) if ff1 >= 0 else math.nan
        return ft, self.hxp.asarray([fnorm1], dtype=self.dtype, device=self.dev)

    def select(self, acc, Ft, F):
        return Ft if bool(acc[0]) else F

    def persist(self, *arrs):
        return arrs

    def route(self, st):
        return GramRoute(self.hxp, st.A0, st.g, st.D)

    def history_entry(self, fnorm, nit, nfev):  # pragma: no cover - no history for tall problems
        raise NotImplementedError

    def print_iter(self, it, fnorm, nfev, pnorm):
        cost = 0.5 * float(fnorm[0]) ** 2
        print(f"iteration {it:5d}  cost {cost:.6e}  step {float(pnorm[0]):.3e}  "
              f"nfev {int(nfev[0])}")

    def call_callback(self, callback, X, fnorm, nit) -> bool:
        return _callback(callback, X[0, :], 0.5 * float(fnorm[0] * fnorm[0]), int(nit[0]))


def _callback(callback, x, cost, nit) -> bool:
    try:
        out = callback(OptimizeResult(x=x, cost=cost, nit=nit))
    except StopIteration:
        return True
    return out is True


# --------------------------------------------------------------------------- main entry
@on_device_of(1, "x0")  # CuPy x0: run on its GPU
def tall_least_squares(
    fun: Callable[..., Array],
    x0: ArrayLike,
    *,
    jac: str | Callable[..., Array] | None = None,
    method: str = "gauss-newton",
    ftol: float = 1e-8,
    xtol: float = 1e-8,
    gtol: float = 1e-8,
    x_scale: str | ArrayLike | None = None,
    max_nfev: int | None = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    verbose: int = 0,
    callback: Callable[..., Any] | None = None,
    progress: bool | Callable[[dict[str, Any]], Any] = False,
) -> OptimizeResult:
    r"""Nonlinear least squares for tall problems whose residuals are Dask arrays.

    Minimizes :math:`F(x) = \tfrac12 \|f(x)\|^2` for
    :math:`f: \mathbb R^n \to \mathbb R^m` with ``m`` huge (rows of a
    dataset chunked over a Dask cluster) and ``n`` small (up to a few
    hundred). Each iteration reduces :math:`J^TJ`, :math:`J^Tf` and
    :math:`\|f\|^2` blockwise in one ``dask.compute`` pass (never
    materialising ``J``), then solves the small damped system in memory.
    Same iterations, tolerances, status codes and result fields as
    :func:`agnopt.least_squares` (unbounded, unbatched).

    Parameters
    ----------
    fun : callable
        ``fun(x, *args, **kwargs)`` returning the residuals, shape ``(m,)``:
        a Dask array chunked by rows (any Array API array also works, eagerly).
        ``x`` is the small in-memory parameter array (namespace of ``x0``).
    x0 : array
        Starting point, shape ``(n,)``, real floating dtype (NumPy array,
        list, or a Dask array, which is computed once).
    jac : callable, "2-point" or "3-point"
        * a callable ``jac(x, *args, **kwargs)`` returning ``J``, a Dask array
          of shape ``(m, n)`` chunked by rows (rechunked to one column chunk
          and to the row chunks of ``f`` if needed);
        * ``"2-point"`` (also ``None``): forward differences of the Dask
          residuals with scipy's step ``sqrt(eps) * max(1, |x_j|)``, formed
          lazily (``J`` is an ``m x n`` stack of differenced residuals, one
          row chunk at a time). **Cost**: ``n`` extra residual evaluations per
          row chunk in every Jacobian pass (``2n`` for ``"3-point"``, central
          differences with step ``eps**(1/3) * max(1, |x_j|)``); they are not
          counted in ``nfev`` (scipy's rule). Pass an analytic ``jac`` when
          the model is expensive.
    method : {"gauss-newton", "lm"}
        * ``"gauss-newton"``: :math:`p = -(J^TJ + \lambda D^2)^{+} J^T f`,
          :math:`\lambda` starting at 0, times 10 (at least ``1e-3 *
          max eig``) after a rejected step, divided by 10 after an accepted
          one, as :func:`agnopt.least_squares`. One pass per iteration: the
          trial point's pass also forms :math:`J^TJ, J^Tf` there.
        * ``"lm"``: Levenberg-Marquardt as MINPACK's ``lmder`` (trust region in
          the scaled norm :math:`\|Dp\|`, Moré's ``lmpar`` for
          :math:`\lambda`, MINPACK's radius and acceptance rules), computed
          from the eigendecomposition of :math:`D^{-1}J^TJD^{-1}` instead of
          the SVD of :math:`JD^{-1}`. Trial points cost a pass computing
          :math:`\|f(x+p)\|^2` only; accepted points a pass for
          :math:`J^TJ, J^Tf`. No geodesic acceleration (it would cost a
          third pass). Requires ``m >= n``.
    ftol, xtol, gtol : float
        Tolerances, with scipy's exact conditions (the same as
        :func:`agnopt.least_squares`). For ``"lm"`` (MINPACK):

        * ``ftol``: ``|actred| <= ftol and prered <= ftol and ratio <= 2``
          where ``actred = 1 - (||f_new|| / ||f||)**2`` and ``prered`` is the
          same relative reduction predicted by the linear model (scipy:
          "``dF < ftol * F`` and an adequate agreement between the local
          quadratic model and the true model"), tested only on steps the
          trust radius did not cut short (``lambda = 0``): a short step's small
          relative reduction says nothing about the reduction still possible;
        * ``xtol``: ``Delta <= xtol * ||D x||`` (trust-region radius against
          the scaled ``x``);
        * ``gtol``: ``max_j |J_j . f| / (||f|| ||J_j||) <= gtol`` (the largest
          cosine between a column of ``J`` and ``f``; also true when ``f = 0``).

        All three must be >= 2.22e-16 (scipy's rule for lm). When a test
        holds with ``eps`` of the working dtype in place of the tolerance
        (MINPACK's info 6/7/8) the same status is reported with a "machine
        precision" message. For ``"gauss-newton"`` (scipy's trf conditions):
        ``ftol``: ``dF < ftol * F`` and ``dF / predicted dF > 0.25`` on an
        accepted step; ``xtol``: ``||dx|| < xtol * (xtol + ||x||)``;
        ``gtol``: ``||J^T f||_inf < gtol``.
    x_scale : None, "jac" or array
        ``D = 1 / x_scale``. ``"jac"``: MINPACK's ``mode=1``,
        ``D_j = max`` over iterations of ``||J_j||`` (from ``diag(J^T J)``).
        ``None`` (default): ``"jac"`` for ``"lm"`` and 1 for ``"gauss-newton"``.
    max_nfev : int, optional
        Maximum number of residual evaluations (points), not counting finite
        differences. Default ``100 * n``. Reaching it gives ``status = 0``.
    args, kwargs :
        Extra arguments of ``fun`` and ``jac``.
    verbose : {0, 1, 2}
        1: final report; 2: one line per iteration.
    callback : callable, optional
        After each iteration, as scipy decides from its signature:
        ``callback(intermediate_result)`` with an
        :class:`~agnopt.OptimizeResult` holding ``x``, ``cost``, ``nit`` when
        its only parameter is named ``intermediate_result``, else
        ``callback(x)``. ``StopIteration`` (or returning ``True``) stops the
        solve (status -2).
    progress : bool or callable
        ``True``: a ``tqdm`` progress bar of the passes over the data
        (iteration, evaluations, cost); a callable receives them as a ``dict``
        after every iteration (see :func:`agnopt.least_squares`).
        Raising ``StopIteration`` or returning ``True`` stops (``status = -2``).

    Returns
    -------
    OptimizeResult
        ``x`` (in-memory, namespace of ``x0``), ``cost``, ``grad``
        (``J^T f``), ``optimality`` (``||grad||_inf``), ``nfev`` (points where
        ``f`` was evaluated), ``njev`` (Jacobian passes, speculative ones of
        Gauss-Newton included), ``nit``, ``status`` (0 max_nfev, 1 gtol,
        2 ftol, 3 xtol, 4 ftol and xtol, -2 callback, -6 an ``xtol`` stop
        at a point that is not first-order stationary, as
        :func:`agnopt.least_squares`; that check takes one more pass, with
        ``J^T J``, counted in ``njev``), ``message``,
        ``success``, ``active_mask`` (zeros: no bounds), and ``fun`` and
        ``jac`` at ``x`` as **lazy** Dask arrays (not computed: ``jac`` is
        ``m x n``). The number of passes over the data is ``njev`` for
        Gauss-Newton and ``nfev + njev - 1`` for LM.

    Raises
    ------
    ValueError
        Wrong shapes, ``m < n`` for ``"lm"``, non-finite residuals at ``x0``,
        a non-finite Jacobian at an accepted point, bad tolerances.
    Exception
        Whatever ``fun`` or ``jac`` raises propagates with its own type and
        message (as scipy), with a note (Python >= 3.11) saying where agnopt
        evaluated it.

    Notes
    -----
    **Precision.** Forming :math:`J^TJ` squares the condition number:
    directions with eigenvalue below ``n * eps * max eig`` (singular values
    of :math:`JD^{-1}` below ``sqrt(n eps)`` times the largest, ~1e-7 in
    float64) are treated as rank deficient (truncated), where
    :func:`agnopt.least_squares` would use the SVD of ``J``. The fixed point
    (:math:`J^Tf = 0`) is not affected, since :math:`J^Tf` is recomputed
    from ``J`` and ``f`` at every iteration; for well-conditioned problems the
    solution agrees with an in-memory QR/SVD solve to ~``cond(J)^2 * eps``.

    **The pattern** (a model computed chunk by chunk over a row-chunked
    dataset; each worker sees one chunk of rows and the small ``x``)::

        import dask.array as da
        import numpy as np
        import agnopt as ao

        t = da.from_zarr("data.zarr/t")       # (m,) chunked by rows
        y = da.from_zarr("data.zarr/y")

        def f_chunk(t, y, x):                 # NumPy, one row chunk
            return x[0] * np.exp(-x[1] * t) + x[2] - y

        def j_chunk(t, x):                    # (rows, 3) for that chunk
            e = np.exp(-x[1] * t)
            return np.stack([e, -x[0] * t * e, np.ones_like(t)], axis=1)

        def fun(x):
            return da.map_blocks(f_chunk, t, y, x, dtype=t.dtype)

        def jac(x):
            return da.map_blocks(j_chunk, t, x, dtype=t.dtype,
                                 chunks=(t.chunks[0], (3,)), new_axis=1)

        res = ao.tall_least_squares(fun, np.array([1.0, 0.1, 0.0]), jac=jac,
                                    method="lm")

    With a ``dask.distributed.Client`` active, every pass runs on the
    cluster; persist ``t`` and ``y`` (``client.persist``) when they fit in
    the cluster's memory, so that each pass does not read them again.
    """
    check_method(method)
    if method not in ("lm", "gauss-newton"):  # the methods with a tall (Gram) evaluator
        raise ValueError(f"method: tall problems take 'lm' or 'gauss-newton', got {method!r}")
    if jac is None:
        jac = "2-point"
    if not (callable(jac) or jac in _JAC_STRINGS):
        raise ValueError(
            f"jac: expected a callable, '2-point' or '3-point', got {jac!r} (complex-step "
            "and autodiff Jacobians are not offered for tall problems)"
        )
    check_verbose(verbose)
    kwargs = {} if kwargs is None else dict(kwargs)
    ftol, xtol, gtol = check_tolerances(method, ftol, xtol, gtol)  # None: test off
    callback = wrap_callback(callback)  # scipy's callback(x) / callback(intermediate_result)
    x = _host_x0(x0)
    hxp = array_namespace(x)
    dev = device(x)
    if x.ndim == 0:
        x = hxp.reshape(x, (1,))
    if x.ndim != 1:
        raise ValueError(f"x0: expected a 1-D array of shape (n,), got shape {tuple(x.shape)}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("x0: empty array")
    if not hxp.isdtype(x.dtype, "real floating"):
        x = hxp.astype(x, hxp.float64)
    dtype = x.dtype
    if not bool(hxp.all(hxp.isfinite(x))):
        raise ValueError("x0: contains non-finite values")
    max_nfev = check_max_nfev(max_nfev, n)
    x_scale = resolve_x_scale(x_scale, method)
    jac_scale = isinstance(x_scale, str)
    D = hxp.ones_like(x) if jac_scale else scale_from(hxp, x_scale, x, dev)

    prob = TallProblem(fun, jac, hxp, dtype, dev, tuple(args), kwargs)
    f, ff, A = prob.start(x)
    check_m_ge_n(method, prob.m, n)
    if not math.isfinite(ff):
        raise ValueError("fun: residuals are not finite at the initial point x0")
    if not bool(hxp.all(hxp.isfinite(A))):
        raise ValueError("jac: the Jacobian has non-finite entries at the current point")
    X, D = hxp.reshape(x, (1, n)), hxp.reshape(D, (1, n))
    prob.progress, prob.n_problems = make_progress(progress, "tall_least_squares"), 1
    if method == "lm":
        fnorm = hxp.asarray([math.sqrt(ff)], dtype=dtype, device=dev)
        out = run_lm(hxp, prob, X, f, fnorm, D, jac_scale, ftol, xtol, gtol, max_nfev,
                     verbose, callback, False)
    else:
        out = run_gn_gram(hxp, prob, X, f, ff, D, jac_scale, ftol, xtol, gtol, max_nfev,
                          verbose, callback, _callback)
    return _finish(hxp, prob, out, verbose, xtol)


def _finish(hxp, prob, out, verbose, xtol=None):
    """The result: ``x`` (n,) in memory, ``fun`` / ``jac`` lazy, scalars as Python numbers."""
    if prob.progress is not None:
        prob.progress.close()
    x, f, J, g = out.X[0, :], out.F, out.J, prob.last_g
    njev = int(out.njev[0])
    status = int(to_status(hxp, out.info, out.active, out.cb_stop)[0])
    xtol_stop = status in (int(Status.XTOL), int(Status.FTOL_XTOL))
    if bool(out.need_jac[0]) or xtol_stop:
        # gradient at the final point (LM after an accepted, final step), with J^T J
        # after an xtol stop (is it stationary? stationarity.py): one pass
        f, J, ff, A, g = prob.one_pass(x, gram=xtol_stop, grad_only=not xtol_stop,
                                       where="at the solution")
        njev += 1
        if xtol_stop:
            status = xtol_not_stationary_gram(hxp, status, x, A, g, ff, xtol)
    fs = prob.fscale  # residuals scaled by a power of 2 for the solve: report fun's own
    cost = float(out.cost[0]) / fs / fs
    if fs != 1.0:
        f, J, g = f / fs, (None if J is None else J / fs), g / fs / fs
    res = OptimizeResult(
        x=x, cost=cost, fun=f, jac=J, grad=g, optimality=float(hxp.max(hxp.abs(g))),
        active_mask=hxp.zeros(x.shape, dtype=hxp.int64, device=prob.dev),
        nfev=int(out.nfev[0]), njev=njev, nit=int(out.nit[0]), status=status,
        message=message(int(out.info[0]), status), success=status > 0,
    )
    if verbose >= 1:
        print(res.message)
        print(f"Function evaluations {res.nfev}, final cost {cost:.4e}, "
              f"first-order optimality {res.optimality:.2e}.")
    return res


def is_tall(xp, f0) -> bool:
    """An in-memory ``x0`` whose residuals are a Dask array of several row chunks."""
    if not lazy.is_dask(f0) or lazy.is_dask_namespace(xp):
        return False
    chunks: Any = getattr(f0, "chunks", None)
    return bool(chunks) and f0.ndim >= 1 and len(chunks[0]) > 1


def solve_tall(fun, x0, xp, bounds, history, *, jac, **kw):
    """Hand a tall problem to :func:`agnopt.tall_least_squares` (no bounds, no history)."""
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
    return tall_least_squares(fun, x0, jac="2-point" if jac in (None, "cs", "2-point") else jac,
                              **kw)
