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
"""

from __future__ import annotations

import math
from typing import Any, Callable

from array_api_compat import array_namespace

from ._lsq import (
    _FROM_MINPACK,
    _MACHINE_MESSAGES,
    EPS64,
    TERMINATION_MESSAGES,
    _check_max_nfev,
    _resolve_x_scale,
)
from ._core.result import OptimizeResult

__all__ = ["tall_least_squares"]

# MINPACK's initial trust-region factor as used by agnopt's least_squares
# (Delta_0 = _FACTOR * ||D x0||).
_FACTOR = 1.0
_JAC_STRINGS = ("2-point", "3-point")


# --------------------------------------------------------------------------- helpers
def _is_dask(a: Any) -> bool:
    return type(a).__module__.startswith("dask")


def _compute(*arrs: Any) -> tuple:
    """One ``dask.compute`` call for all of ``arrs`` (identity for eager arrays)."""
    if any(_is_dask(a) for a in arrs):
        import dask

        return tuple(dask.compute(*arrs))
    return arrs


def _host_x0(x0: Any) -> Any:
    """``x0`` as a small in-memory array (computed when it is a Dask array)."""
    if _is_dask(x0):
        (x0,) = _compute(x0)
    if hasattr(x0, "shape") and hasattr(x0, "dtype"):
        return x0
    import array_api_compat.numpy as np_xp  # plain Python input: NumPy float64 (as least_squares)

    try:
        return np_xp.asarray(x0, dtype=np_xp.float64)
    except Exception as e:
        raise TypeError(f"x0: expected an array, got {type(x0).__name__}") from e


def _call(f: Callable, x: Any, what: str, where: str) -> Any:
    try:
        return f(x)
    except Exception as e:
        raise RuntimeError(f"{what} raised {type(e).__name__} {where}: {e}") from e


class _Tall:
    """Residuals, Jacobian and the blockwise reductions of one pass."""

    def __init__(self, fun, jac, hxp, dtype, args, kwargs):
        self.fun, self.jac = fun, jac
        self.hxp, self.dtype = hxp, dtype
        self.args, self.kwargs = args, kwargs
        self.m = None
        self.n_fd = 0  # residual evaluations spent on finite differences

    def residual(self, x, where="at a trial point"):
        f = _call(lambda z: self.fun(z, *self.args, **self.kwargs), x, "fun", where)
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
        if f.dtype != self.dtype:
            if not xp.isdtype(f.dtype, ("real floating", "integral")):
                raise TypeError(f"fun: expected real residuals, got dtype {f.dtype}")
            f = xp.astype(f, self.dtype)
        return f

    def jacobian(self, x, f):
        """``J`` (m, n) at ``x``, lazily; row chunks aligned with ``f``'s, one column chunk."""
        n = x.shape[0]
        m = f.shape[0]
        xp = array_namespace(f)
        if callable(self.jac):
            J = _call(lambda z: self.jac(z, *self.args, **self.kwargs), x, "jac", "")
            if not (hasattr(J, "shape") and hasattr(J, "dtype")):
                raise TypeError(f"jac: expected an array of shape ({m}, {n}), got {type(J).__name__}")
            if tuple(J.shape) != (m, n):
                raise ValueError(
                    f"jac: expected an array of shape {(m, n)} (residuals x parameters), "
                    f"got {tuple(J.shape)}"
                )
            if J.dtype != self.dtype:
                J = array_namespace(J).astype(J, self.dtype)
        else:
            J = self._fd(x, f, xp)
        if _is_dask(J):
            want = {1: -1}
            if _is_dask(f) and J.chunks[0] != f.chunks[0]:
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
        idx = hxp.arange(n)
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
        vals = _compute(*parts)
        ff = float(vals[0])
        hxp = self.hxp
        A = g = None
        if gram and not grad_only:
            A = hxp.asarray(vals[1], dtype=self.dtype)
            A = 0.5 * (A + A.T)  # exact symmetry for eigh (block sums may differ in rounding)
            g = hxp.asarray(vals[2], dtype=self.dtype)
        elif grad_only:
            g = hxp.asarray(vals[1], dtype=self.dtype)
        return f, J, ff, A, g


def _spectral(hxp, A, g, D, eps):
    """Eigendecomposition of the scaled Gram matrix ``D^-1 A D^-1``.

    Returns ``w`` (ascending eigenvalues, clipped at 0), ``V``, ``c = V^T D^-1 g``,
    ``good`` (``w > n eps w_max``: the numerical rank of the Gram matrix) and
    ``full_rank``.
    """
    n = A.shape[0]
    As = A / (D[:, None] * D[None, :])
    w, V = hxp.linalg.eigh(As)
    w = hxp.maximum(w, hxp.zeros_like(w))
    wmax = float(w[n - 1])
    good = w > n * eps * wmax if wmax > 0 else hxp.zeros(w.shape, dtype=hxp.bool)
    c = hxp.matmul(V.T, g / D)
    return w, V, c, good, bool(hxp.all(good))


def _lmpar(hxp, delta, par0, w, c, good, full_rank):
    """Moré's ``lmpar`` in the eigenbasis (one problem, as ``agnopt._lsq._lmpar``)."""
    dwarf = float(hxp.finfo(w.dtype).smallest_normal)
    zero = hxp.zeros_like(w)
    wsafe = hxp.where(good, w, hxp.ones_like(w))
    qn = hxp.where(good, c / wsafe, zero)
    dxnorm = float(hxp.linalg.vector_norm(qn))
    fp = dxnorm - delta
    if fp <= 0.1 * delta:
        return 0.0, qn
    s3 = float(hxp.sum(hxp.where(good, c * c / (wsafe * wsafe * wsafe), zero)))
    s3 = s3 if s3 > 0 else 1.0
    parl = (fp / delta) * dxnorm * dxnorm / s3 if full_rank else 0.0
    parl = max(parl, 0.0)
    gnorm = float(hxp.linalg.vector_norm(c))
    paru = gnorm / delta
    if paru == 0:
        paru = dwarf / min(delta, 0.1)
    par = min(max(par0, parl), paru)
    if par == 0:
        par = gnorm / dxnorm if dxnorm > 0 else gnorm
    q = qn
    for it in range(10):
        if par == 0:
            par = max(dwarf, 0.001 * paru)
        den = w + par
        q = c / den
        dxn = float(hxp.linalg.vector_norm(q))
        temp = fp
        fp = dxn - delta
        if abs(fp) <= 0.1 * delta or (parl == 0 and fp <= temp and temp < 0) or it == 9:
            break
        s3 = float(hxp.sum(c * c / (den * den * den)))
        s3 = s3 if s3 > 0 else 1.0
        parc = (fp / delta) * dxn * dxn / s3
        if fp > 0:
            parl = max(parl, par)
        if fp < 0:
            paru = min(paru, par)
        par = max(parl, par + parc)
    return par, q


# --------------------------------------------------------------------------- main entry
def tall_least_squares(
    fun: Callable[..., Any],
    x0: Any,
    *,
    jac: Any = None,
    method: str = "gauss-newton",
    ftol: float = 1e-8,
    xtol: float = 1e-8,
    gtol: float = 1e-8,
    x_scale: Any = None,
    max_nfev: int | None = None,
    args: tuple = (),
    kwargs: dict | None = None,
    verbose: int = 0,
    callback: Callable | None = None,
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
          quadratic model and the true model");
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
        ``callback(intermediate_result)`` after each iteration, with an
        :class:`~agnopt.OptimizeResult` holding ``x``, ``cost``, ``nit``.
        Raising ``StopIteration`` or returning ``True`` stops (``status = -2``).

    Returns
    -------
    OptimizeResult
        ``x`` (in-memory, namespace of ``x0``), ``cost``, ``grad``
        (``J^T f``), ``optimality`` (``||grad||_inf``), ``nfev`` (points where
        ``f`` was evaluated), ``njev`` (Jacobian passes, speculative ones of
        Gauss-Newton included), ``nit``, ``status`` (0 max_nfev, 1 gtol,
        2 ftol, 3 xtol, 4 ftol and xtol, -2 callback), ``message``,
        ``success``, ``active_mask`` (zeros: no bounds), and ``fun`` and
        ``jac`` at ``x`` as **lazy** Dask arrays (not computed: ``jac`` is
        ``m x n``). The number of passes over the data is ``njev`` for
        Gauss-Newton and ``nfev + njev - 1`` for LM.

    Raises
    ------
    ValueError
        Wrong shapes, ``m < n`` for ``"lm"``, non-finite residuals at ``x0``,
        a non-finite Jacobian at an accepted point, bad tolerances.
    RuntimeError
        When ``fun`` or ``jac`` raises (the original exception is chained).

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
    if method not in ("lm", "gauss-newton"):
        raise ValueError(f"method: expected 'lm' or 'gauss-newton', got {method!r}")
    if jac is None:
        jac = "2-point"
    if not (callable(jac) or jac in _JAC_STRINGS):
        raise ValueError(
            f"jac: expected a callable, '2-point' or '3-point', got {jac!r} (complex-step "
            "and autodiff Jacobians are not offered for tall problems)"
        )
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
    x = _host_x0(x0)
    hxp = array_namespace(x)
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
    max_nfev = _check_max_nfev(max_nfev, n)
    x_scale = _resolve_x_scale(x_scale, method)
    jac_scale = isinstance(x_scale, str)
    if jac_scale:
        D = hxp.ones_like(x)
    else:
        try:
            xs = hxp.asarray(x_scale, dtype=dtype)
            xs = hxp.broadcast_to(xs, x.shape)
        except Exception as e:
            raise ValueError(f"x_scale: does not broadcast to x0's shape {tuple(x.shape)}") from e
        if not bool(hxp.all(hxp.isfinite(xs) & (xs > 0))):
            raise ValueError("x_scale: must be 'jac' or an array of positive finite numbers")
        D = 1.0 / xs

    prob = _Tall(fun, jac, hxp, dtype, tuple(args), kwargs)
    f, J, ff, A, g = prob.one_pass(x, gram=True, where="at x0")
    if method == "lm" and prob.m < n:
        raise ValueError(
            f"Method 'lm' doesn't work when the number of residuals (m = {prob.m}) is less "
            f"than the number of variables (n = {n}); use method='gauss-newton'"
        )
    if not math.isfinite(ff):
        raise ValueError("fun: residuals are not finite at the initial point x0")
    if not bool(hxp.all(hxp.isfinite(A))):
        raise ValueError("jac: the Jacobian has non-finite entries at the current point")
    run = _run_lm if method == "lm" else _run_gn
    st = run(hxp, prob, x, f, J, ff, A, g, D, jac_scale, ftol, xtol, gtol, max_nfev,
             verbose, callback)
    return _finish(hxp, prob, st, verbose)


def _col_norms(hxp, A):
    """``||J_j||`` from the diagonal of ``J^T J``."""
    d = hxp.linalg.diagonal(A)
    return hxp.sqrt(hxp.maximum(d, hxp.zeros_like(d)))


def _report(verbose, callback, it, x, ff, nit, nfev, step):
    cost = 0.5 * ff
    if verbose >= 2:
        print(f"iteration {it:5d}  cost {cost:.6e}  step {step:.3e}  nfev {nfev}")
    if callback is None:
        return False
    try:
        out = callback(OptimizeResult(x=x, cost=cost, nit=nit))
    except StopIteration:
        return True
    return out is True


def _run_lm(hxp, prob, x, f, J, ff, A, g, D, jac_scale, ftol, xtol, gtol, max_nfev,
            verbose, callback):
    n = x.shape[0]
    eps = float(hxp.finfo(x.dtype).eps)
    fnorm = math.sqrt(ff)
    nfev = njev = 1
    nit = 0
    info = 0
    first = True
    new_jac = True
    par = delta = xnorm = gnorm = 0.0
    w = V = c = good = None
    full_rank = False
    it = 0
    need_jac = False
    while True:
        it += 1
        if need_jac:
            # the accepted point's pass (f is evaluated there again: counted in njev)
            f, J, _, A, g = prob.one_pass(x, gram=True, where="at the current point")
            njev += 1
            if not bool(hxp.all(hxp.isfinite(A))):
                raise ValueError("jac: the Jacobian has non-finite entries at the current point")
            need_jac = False
            new_jac = True
        if new_jac:
            cn = _col_norms(hxp, A)
            if jac_scale and first:
                D = hxp.where(cn == 0, hxp.ones_like(cn), cn)
            if first and delta == 0:
                xnorm = float(hxp.linalg.vector_norm(D * x))
                delta = _FACTOR * xnorm if xnorm != 0 else _FACTOR
            if fnorm == 0:
                gnorm = 0.0
            else:
                cn_safe = hxp.where(cn == 0, hxp.ones_like(cn), cn)
                cosv = hxp.where(cn == 0, hxp.zeros_like(cn), hxp.abs(g) / (fnorm * cn_safe))
                gnorm = float(hxp.max(cosv))
            if gnorm <= gtol:
                info = 4
                break
            if jac_scale and not first:
                D = hxp.maximum(D, cn)
            w, V, c, good, full_rank = _spectral(hxp, A, g, D, eps)
            new_jac = False
        par, q = _lmpar(hxp, delta, par, w, c, good, full_rank)
        z = -hxp.matmul(V, q)
        p = z / D
        xt = x + p
        p = xt - x
        pnorm = float(hxp.linalg.vector_norm(D * p))
        if first:
            delta = min(delta, pnorm)
        ft_, _, ff1, _, _ = prob.one_pass(xt, gram=False)
        nfev += 1
        fnorm1 = math.sqrt(ff1) if ff1 >= 0 else math.nan
        finite = math.isfinite(fnorm1)
        fn1s = fnorm1 if finite else fnorm * 1e10 + 1.0
        fn_safe = fnorm if fnorm != 0 else 1.0
        actred = 1.0 - (fn1s / fn_safe) ** 2 if (finite and 0.1 * fn1s < fnorm) else -1.0
        Jp2 = max(float(hxp.sum(p * hxp.matmul(A, p))), 0.0)  # ||J p||^2 = p^T J^T J p
        t1 = math.sqrt(Jp2) / fn_safe
        t2 = math.sqrt(par) * pnorm / fn_safe
        prered = t1 * t1 + 2.0 * t2 * t2
        dirder = -(t1 * t1 + t2 * t2)
        ratio = actred / prered if prered != 0 else 0.0
        # update the step bound and the LM parameter (MINPACK)
        if ratio <= 0.25:
            den = dirder + 0.5 * actred
            temp = 0.5 if actred >= 0 else 0.5 * dirder / (den if den != 0 else 1.0)
            if 0.1 * fn1s >= fnorm or temp < 0.1 or not finite:
                temp = 0.1
            delta = temp * min(delta, pnorm / 0.1)
            par = par / temp
        elif par == 0 or ratio >= 0.75:
            delta = pnorm / 0.5
            par = 0.5 * par
        if ratio >= 1e-4:
            x, f, fnorm = xt, ft_, fnorm1
            J = A = g = None  # stale until the accepted point's Jacobian pass
            xnorm = float(hxp.linalg.vector_norm(D * x))
            nit += 1
            first = False
            need_jac = True
        # convergence tests (MINPACK order)
        ft = abs(actred) <= ftol and prered <= ftol and 0.5 * ratio <= 1.0
        xt_ok = delta <= xtol * xnorm
        new = 3 if (ft and xt_ok) else 2 if xt_ok else 1 if ft else 0
        if new == 0:
            if nfev >= max_nfev:
                new = 5
            if abs(actred) <= eps and prered <= eps and 0.5 * ratio <= 1.0:
                new = 6
            if delta <= eps * xnorm:
                new = 7
            if gnorm <= eps:
                new = 8
        info = new
        if _report(verbose, callback, it, x, fnorm * fnorm, nit, nfev, pnorm):
            break
        if info != 0:
            break
    return dict(x=x, f=f, J=J, A=A, g=g, ff=fnorm * fnorm, nfev=nfev, njev=njev, nit=nit,
                info=info, minpack=True)


def _run_gn(hxp, prob, x, f, J, ff, A, g, D, jac_scale, ftol, xtol, gtol, max_nfev,
            verbose, callback):
    """Damped Gauss-Newton (``least_squares(method="gauss-newton")``), one pass per iteration."""
    eps = float(hxp.finfo(x.dtype).eps)
    cost = 0.5 * ff
    nfev = njev = 1
    nit = 0
    status = -99
    lam = 0.0
    scale = 1.0
    new_jac = True
    w = V = c = good = None
    it = 0
    while True:
        it += 1
        if new_jac:
            if jac_scale:
                cn = _col_norms(hxp, A)
                cn = hxp.where(cn == 0, hxp.ones_like(cn), cn)
                D = cn if it == 1 else hxp.maximum(D, cn)
            if float(hxp.max(hxp.abs(g))) < gtol:
                status = 1
                break
            w, V, c, good, _ = _spectral(hxp, A, g, D, eps)
            scale = float(hxp.max(w))
            new_jac = False
        den = w + lam
        use = good | (lam > 0)
        q = hxp.where(use, c / hxp.where(use & (den > 0), den, hxp.ones_like(den)),
                      hxp.zeros_like(w))
        p = -hxp.matmul(V, q) / D
        xt = x + p
        p = xt - x
        ft_, Jt, ff_t, At, gt = prob.one_pass(xt, gram=True)
        nfev += 1
        njev += 1
        cost_t = 0.5 * ff_t
        finite = math.isfinite(cost_t)
        pred = -(float(hxp.sum(g * p)) + 0.5 * float(hxp.sum(p * hxp.matmul(A, p))))
        actual = cost - cost_t if finite else -1.0
        acc = finite and cost_t < cost
        dx_norm = float(hxp.linalg.vector_norm(p))
        x_norm = float(hxp.linalg.vector_norm(x))
        ratio = actual / pred if pred > 0 else 0.0
        ft = acc and actual < ftol * cost and ratio > 0.25
        xt_ok = dx_norm < xtol * (xtol + x_norm)
        if acc:
            lam = 0.0 if lam / 10.0 < 1e-12 * scale else lam / 10.0
        else:
            lam = max(10.0 * lam, 1e-3 * scale)
        if acc:
            if not bool(hxp.all(hxp.isfinite(At))):
                raise ValueError("jac: the Jacobian has non-finite entries at the current point")
            x, f, J, A, g, cost = xt, ft_, Jt, At, gt, cost_t
            nit += 1
            new_jac = True
        new = 4 if (ft and xt_ok) else 3 if xt_ok else 2 if ft else -99
        if new == -99 and nfev >= max_nfev:
            new = 0
        status = new
        if _report(verbose, callback, it, x, 2.0 * cost, nit, nfev, dx_norm):
            break
        if status != -99:
            break
    return dict(x=x, f=f, J=J, A=A, g=g, ff=2.0 * cost, nfev=nfev, njev=njev, nit=nit,
                info=status, minpack=False)


def _finish(hxp, prob, st, verbose):
    x, f, J, g = st["x"], st["f"], st["J"], st["g"]
    njev = st["njev"]
    if g is None:
        # gradient at the final point (LM after an accepted, final step): one pass
        f, J, _, _, g = prob.one_pass(x, gram=False, grad_only=True, where="at the solution")
        njev += 1
    info = st["info"]  # still "running" (MINPACK 0, -99) only when the callback stopped
    if st["minpack"]:
        status = _FROM_MINPACK.get(info, -2)
    else:
        status = info if info != -99 else -2
    if st["minpack"] and info in _MACHINE_MESSAGES:
        msg = _MACHINE_MESSAGES[info]
    else:
        msg = TERMINATION_MESSAGES.get(status, "unknown status")
    cost = 0.5 * st["ff"]
    res = OptimizeResult(
        x=x, cost=cost, fun=f, jac=J, grad=g, optimality=float(hxp.max(hxp.abs(g))),
        active_mask=hxp.zeros(x.shape, dtype=hxp.int64), nfev=st["nfev"], njev=njev,
        nit=st["nit"], status=status, message=msg, success=status > 0,
    )
    if verbose >= 1:
        print(res.message)
        print(f"Function evaluations {res.nfev}, final cost {cost:.4e}, "
              f"first-order optimality {res.optimality:.2e}.")
    return res
