r"""Step routes: how one iteration forms and solves the damped system.

Every route gives the Levenberg-Marquardt engine the same three things for
``k`` problems, from the Jacobian ``J`` at the current point, the scaling
``D`` (k, n) and the residuals ``f``:

* ``step(delta, par, active) -> (par, z)``: Moré's ``lmpar``
  (:func:`.lmpar.lmpar`) and the scaled step ``z = D p`` (k, n);
* ``solve(h, par)``: :math:`(\tilde J^T\tilde J + \lambda I)^{-1} h` at the
  last step's :math:`\lambda` (the geodesic acceleration);
* ``jp_norm2(p)``: :math:`\|J p\|^2` (k,), for the predicted reduction.

They differ only in how :math:`\tilde J^T \tilde J` (:math:`\tilde J = J
D^{-1}`) and :math:`\tilde J^T f` are formed and solved:

* **normal-equation Cholesky** (:class:`InMemoryRoute`, well-conditioned
  problems with ``n <= CHOL_MAX_N``): :math:`A = \tilde J^T\tilde J` and a
  Cholesky factor of :math:`A + \lambda I` (:class:`.lmpar.CholeskyBasis`);
* **SVD** (:class:`InMemoryRoute`, every other problem): the SVD of
  :math:`\tilde J` itself, never squaring the condition number
  (:func:`spectral`, :class:`.lmpar.SpectralBasis`);
* **host solve** for Dask: in-memory problems whose arrays are Dask
  (:class:`InMemoryRoute` computes its small inputs and solves on the
  chunks' namespace), and tall problems (:class:`GramRoute`: ``J^T J``,
  ``J^T f`` reduced blockwise over the row chunks of ``J`` and
  eigendecomposed in memory).
"""

from __future__ import annotations

import array_api_compat

from .._core import lazy
from .._core.backend import compiled, pytree_class
from .batched import positions, rows_where, scatter, take_rows
from .cholesky import chol_inv, chol_solve, mv, small_mv
from .lmpar import CholeskyBasis, SpectralBasis, lmpar
from .arrays import device, host_linalg

# eigh of Js^T Js instead of the SVD of Js when w_min > GRAM_RCOND * w_max
GRAM_RCOND = 1e-8
# normal equations + Cholesky (instead of the SVD) for n <= CHOL_MAX_N
CHOL_MAX_N = 16


def spectral(xp, J, D, F, free, force_svd=False):
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
    Js = xp.where(free[:, None, :], Js, 0.0)
    eps = float(xp.finfo(J.dtype).eps)
    JsT = xp.matrix_transpose(Js)
    well = None
    if m >= n and not force_svd:
        G = xp.matmul(JsT, Js)
        ev, Ve = host_linalg(xp, "eigh", G)  # ascending
        wmax = ev[:, n - 1]
        well = (wmax > 0) & (ev[:, 0] > GRAM_RCOND * wmax)
        need_svd = not lazy.known_all(xp, well)  # traced (jax_solve): both, merged below
    else:
        need_svd = True
    if need_svd:
        _, s, Vt = host_linalg(xp, "svd", Js, full_matrices=False)
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
        good = xp.ones(ev.shape, dtype=xp.bool, device=device(ev))
    if k == n:
        full_rank = xp.all(good, axis=-1) & xp.all(free, axis=-1)
    else:
        full_rank = xp.zeros((B,), dtype=xp.bool, device=device(J))
    gs = xp.matmul(F[:, None, :], Js)  # (B, 1, n): (Js^T f)^T
    c = xp.matmul(gs, V)[:, 0, :]
    return w, c, V, good, full_rank, Js



def normal_equations(xp, A0, g, D, free, eye):
    """The scaled normal equations of :class:`InMemoryRoute`'s Cholesky route.

    ``As = D^-1 A0 D^-1`` (k, n, n), ``gs = D^-1 g`` (k, n), ``Linv0`` the
    inverse Cholesky factor of ``As`` and ``well`` (k,): factored, no frozen
    column and ``trace(As) trace(As^-1) < 1 / GRAM_RCOND``.
    """
    As = A0 / (D[:, :, None] * D[:, None, :])
    gs = g / D
    Linv0, ok = chol_inv(xp, As)
    tr = xp.sum(As * eye, axis=(-2, -1))
    cond = tr * xp.sum(Linv0 * Linv0, axis=(-2, -1))
    well = ok & xp.all(free, axis=-1) & (cond < 1.0 / GRAM_RCOND)
    return As, gs, Linv0, well


def gram(xp, J, eye):
    """``J^T J`` (k, n, n) and its diagonal (k, n); ``eye`` the (n, n) identity."""
    A0 = xp.matmul(xp.matrix_transpose(J), J)
    k, n = A0.shape[0], A0.shape[-1]
    # the diagonal as a strided view of the flattened matrices: the values of
    # sum(A0 * eye, -1) without a (k, n, n) product and reduction
    return A0, xp.reshape(A0, (k, n * n))[:, ::n + 1]


def _normal_block(xp, Fm, Jn, J_old, nj, eye):
    """The new Jacobians ``Jn`` (k, m, n) merged into ``J_old`` where ``nj`` (k,),
    ``A0 = J^T J`` and its diagonal ``dA`` when ``eye`` (the (n, n) identity) is
    given (the Cholesky route; else both ``None``), ``g = J^T Fm`` (k, n), the column norms ``cn`` (k, n) and
    ``fine`` (0-d bool): no non-finite entry in the new Jacobians (tested
    through ``diag(J^T J)`` on the Cholesky route: non-finite entries, or an
    overflow of finite ones, make it non-finite). ``J_old`` is ``Jn`` itself
    when every problem has a new Jacobian (no merge, no copy)."""
    J = Jn if J_old is Jn else xp.where(nj[:, None, None], Jn, J_old)
    A0 = dA = None
    if eye is not None:
        A0, dA = gram(xp, J, eye)
        fine = xp.all(xp.isfinite(dA) | ~nj[:, None])
    else:
        fine = xp.all(xp.isfinite(Jn))
    g = xp.matmul(Fm[:, None, :], J)[:, 0, :]  # J^T f  (k, n)
    cn = xp.sqrt(dA) if eye is not None else xp.linalg.vector_norm(J, axis=-2)
    return J, A0, dA, g, cn, fine


# one compiled program each on JAX (see agnopt._core.backend.compiled), as written elsewhere
_normal_equations = compiled(normal_equations)
normal_block = compiled(_normal_block)


# a route passes into and out of the engine's compiled blocks (its step sets Lf, par_s)
@pytree_class(data=("J", "A0", "well", "chol", "svd", "Lf", "par_s"),
              meta=("xp", "out_xp", "host", "chol_ok", "fast"))
class InMemoryRoute:
    """Per-problem linear algebra of one Jacobian: normal equations or SVD.

    ``J`` (k, m, n), ``A0`` (k, n, n) ``= J^T J`` or ``None`` (no Cholesky
    route: ``n > CHOL_MAX_N`` or ``m < n``), ``g`` (k, n) ``= J^T f``, ``D``
    (k, n), ``F`` (k, m), ``free`` (k, n) (variables not frozen at a bound),
    ``active`` (k,); ``batch``: the number of problems of the solve (default ``k``).

    ``well`` (k,): problems solved through the Cholesky factor of
    ``A = Js^T Js`` (no frozen column and a certified condition bound
    ``trace(A) trace(A^{-1}) < 1/GRAM_RCOND``, so ``cond(Js) < 1e4``); the
    others go through :func:`spectral` (SVD of ``Js``), gathered into a
    sub-batch when ``compact``. Which route a problem takes depends on that
    problem alone, so a batch gives the same iterates as each problem alone.

    Dask: the per-problem linear algebra (small: k x n x n) runs on the
    computed chunks' namespace (NumPy / CuPy) and its results are wrapped
    back (the host solve): a few hundred tiny graph operations per
    iteration would cost far more than the math.
    """

    def __init__(self, xp, J, A0, g, D, F, free, active, compact, eye=None, batch=None):
        k, m, n = J.shape
        self.out_xp = xp
        self.host = lazy.is_dask_namespace(xp)
        if self.host:
            J, A0, g, D, F, free, active = lazy.compute(J, A0, g, D, F, free, active)
            xp = array_api_compat.array_namespace(J)  # the computed chunks' (NumPy / CuPy)
            compact = True
        self.xp = xp
        self.J, self.A0 = J, A0
        self.chol_ok = A0 is not None
        dev = None if eye is not None and not self.host else device(J)
        # a NumPy (or torch CPU) batch: the normal equations and lmpar as numba loops over the rows
        # (the same arithmetic; agnopt._kernels.lm_batched_cpu, AGNOPT_FAST=0 turns it off)
        self.fast = _fast_rows(J, batch) if self.chol_ok and not self.host \
            and not getattr(g, "requires_grad", False) else None  # (torch: in a graph)
        if self.chol_ok:
            if eye is None or self.host:
                eye = xp.eye(n, dtype=J.dtype, device=dev)
            if self.fast is not None:  # (the rows not well already carry the identity basis)
                As, gs, Linv0, well = self.fast.normal_equations(A0, g, D, free)
            else:
                As, gs, Linv0, well = _normal_equations(xp, A0, g, D, free, eye)
            self.well = well
            all_well = lazy.known_all(xp, well)  # traced (jax_solve): both routes, merged
            if all_well or self.fast is not None:  # every problem on this route (the where's
                # below would keep all)
                self.chol = CholeskyBasis(As, gs, Linv0, eye)
            else:
                self.chol = CholeskyBasis(xp.where(well[:, None, None], As, eye),
                                          xp.where(well[:, None], gs, 0.0),
                                          xp.where(well[:, None, None], Linv0, eye), eye)
        else:
            all_well = False
            self.well = xp.zeros_like(active)
        self.svd = None
        if all_well:
            return
        need = active & ~self.well if self.chol_ok else xp.ones_like(active)
        if not lazy.known_none(xp, need):
            if compact:
                idx = rows_where(xp, need)
                mask, pos = positions(xp, idx, k, device(J))
                sub = lambda a: take_rows(xp, a, idx)  # noqa: E731
                Js_in = (sub(J), sub(D), sub(F), sub(free))
            else:
                idx, mask, pos = None, need, None
                Js_in = (J, D, F, free)
            w, c, V, good, full_rank, _ = spectral(xp, *Js_in, force_svd=self.chol_ok)
            self.svd = (idx, mask, pos, SpectralBasis(w, c, good, full_rank), V)

    def _sub(self, a):
        idx = self.svd[0]
        return a if idx is None else take_rows(self.xp, a, idx)

    def _merge(self, a, b):
        idx, mask, pos = self.svd[:3]
        xp = self.xp
        if idx is None:
            m = xp.reshape(mask, (mask.shape[0],) + (1,) * (a.ndim - 1))
            return xp.where(m, b, a)
        return scatter(xp, a, b, mask, pos)

    def _in(self, *arrs):
        return lazy.compute(*arrs) if self.host else arrs

    def _out(self, *arrs):
        if self.host:
            arrs = tuple(self.out_xp.asarray(a) for a in arrs)
        return arrs if len(arrs) > 1 else arrs[0]

    def step(self, delta, par, active):
        """LM parameter (k,) and scaled step ``z = D p`` (k, n) for every problem."""
        delta, par, active = self._in(delta, par, active)
        return self._out(*self._step(delta, par, active))

    def solve(self, h, par):
        """``(Js^T Js + par I)^{-1} h`` (k, n) at the parameters of the last ``step``."""
        h, par = self._in(h, par)
        return self._out(self._solve(h, par))

    def jp_norm2(self, p):
        """``||J p||^2`` (k,): ``p^T (J^T J) p`` on the Cholesky route
        (well-conditioned, so accurate to ~1e-8 relative), ``J p`` itself
        on the SVD route."""
        (p,) = self._in(p)
        return self._out(self._jp_norm2(p))

    def _step(self, delta, par, active):
        xp = self.xp
        if self.fast is not None:
            par_c, z, self.Lf = self.fast.lmpar(self.chol, delta, par, active & self.well)
        elif self.chol_ok:
            par_c, q, self.Lf = lmpar(xp, self.chol, delta, par, active & self.well)
            z = -q
        else:
            par_c, z = par, None
        if self.svd is not None:
            basis, V = self.svd[3], self.svd[4]
            par_s, q_s, _ = lmpar(xp, basis, self._sub(delta), self._sub(par), self._sub(active))
            z_s = -xp.matmul(V, q_s[:, :, None])[:, :, 0]
            self.par_s = par_s
            par_c = self._merge(par_c, par_s)
            z = z_s if z is None else self._merge(z, z_s)
        return par_c, z

    def _jp_norm2(self, p):
        xp = self.xp
        if not self.chol_ok:
            return xp.sum(mv(xp, self.J, p) ** 2, axis=-1)
        out = xp.sum(p * small_mv(xp, self.A0, p), axis=-1)
        if self.svd is not None:
            o_s = xp.sum(mv(xp, self._sub(self.J), self._sub(p)) ** 2, axis=-1)
            out = self._merge(out, o_s)
        return out

    def _solve(self, h, par):
        xp = self.xp
        out = chol_solve(xp, self.Lf, h) if self.chol_ok else None
        if self.svd is not None:
            basis, V = self.svd[3], self.svd[4]
            hv = xp.matmul(self._sub(h)[:, None, :], V)[:, 0, :]
            den = basis.w + self.par_s[:, None]
            # (w = 0 with par = 0 only in rows whose result is not used: the acceleration
            # takes par > 0; a safe 1 there keeps 0/0 and its warning out)
            aq = hv / xp.where(den == 0, xp.ones_like(den), den)
            o_s = xp.matmul(V, aq[:, :, None])[:, :, 0]
            out = o_s if out is None else self._merge(out, o_s)
        return out


def _fast_rows(J, batch=None):
    """:mod:`agnopt._kernels.lm_batched_cpu` when its kernels apply to the NumPy (or torch
    CPU) Jacobians ``J`` (k, m, n) of a batch of ``batch`` problems (default ``k``), else
    ``None``."""
    if not (array_api_compat.is_numpy_array(J) or array_api_compat.is_torch_array(J)) \
            or J.shape[1] == 0:
        return None
    from .._kernels import lm_batched_cpu

    return lm_batched_cpu if lm_batched_cpu.applies(J[:, 0, :], batch) else None


def gram_spectral(xp, A, g, D):
    """Eigendecomposition of the scaled Gram matrices ``D^-1 A D^-1``.

    ``A`` (k, n, n) ``= J^T J``, ``g`` (k, n) ``= J^T f``, ``D`` (k, n).
    Returns ``w`` (k, n) (ascending eigenvalues, clipped at 0), ``V`` (k, n, n),
    ``c = V^T D^-1 g`` (k, n), ``good`` (k, n) (``w > n eps w_max``: the
    numerical rank of the Gram matrix) and ``full_rank`` (k,).
    """
    n = A.shape[-1]
    eps = float(xp.finfo(A.dtype).eps)
    As = A / (D[:, :, None] * D[:, None, :])
    w, V = xp.linalg.eigh(As)
    w = xp.maximum(w, xp.zeros_like(w))
    wmax = w[:, n - 1:n]
    good = (w > n * eps * wmax) & (wmax > 0)
    c = xp.matmul(xp.matrix_transpose(V), (g / D)[:, :, None])[:, :, 0]
    return w, V, c, good, xp.all(good, axis=-1)


class GramRoute:
    """Host solve of a tall problem from its reduced ``A = J^T J`` (k, n, n) and ``g = J^T f`` (k, n).

    ``J`` itself (``m x n``, row chunks over a cluster) is never formed in
    memory: the eigendecomposition of ``D^-1 A D^-1`` gives the
    :class:`.lmpar.SpectralBasis` of ``lmpar``, and ``||J p||^2 = p^T A p``.
    Forming ``A`` squares the condition number: directions with eigenvalue
    below ``n eps`` times the largest are dropped (truncation).
    """

    def __init__(self, xp, A, g, D):
        self.xp, self.A = xp, A
        w, self.V, c, good, full_rank = gram_spectral(xp, A, g, D)
        self.basis = SpectralBasis(w, c, good, full_rank)

    def step(self, delta, par, active):
        xp = self.xp
        par, q, _ = lmpar(xp, self.basis, delta, par, active)
        return par, -xp.matmul(self.V, q[:, :, None])[:, :, 0]

    def jp_norm2(self, p):
        xp = self.xp
        Jp2 = xp.sum(p * mv(xp, self.A, p), axis=-1)
        return xp.maximum(Jp2, xp.zeros_like(Jp2))

    def solve(self, h, par):  # pragma: no cover - tall problems take no acceleration
        raise NotImplementedError("tall problems take no geodesic acceleration")
