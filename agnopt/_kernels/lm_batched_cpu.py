"""numba fast path of the batched Levenberg-Marquardt engine on NumPy (float32 / float64, small ``n``).

A batched solve (:func:`agnopt._least_squares.engine.run_lm`) on NumPy spends
most of an iteration outside the user's functions: the normal equations and
their Cholesky factor (:func:`agnopt._least_squares.routes.normal_equations`),
Moré's ``lmpar`` (:func:`agnopt._least_squares.lmpar.lmpar`: up to ten
Cholesky factorizations of ``As + par I``, each an ``O(n^3)`` recurrence on
``(k,)`` vectors, :func:`agnopt._least_squares.cholesky.chol_inv_entries`) and
the verdict on the trial points (:func:`agnopt._least_squares.engine.judge`).
Each is a few hundred NumPy calls on small arrays per iteration; with a
closed-form Jacobian they cost several times the evaluations themselves.

Here the same arithmetic runs as five numba-compiled loops over the rows
(problems) of the working set:

* :func:`linearized_rows`: the end of
  :func:`~agnopt._least_squares.engine.linearized` after a Jacobian (the
  scaling, the initial radius, ``gnorm`` and the ``gtol`` test);

* :func:`normal_rows`: ``As = D^-1 A0 D^-1``, ``gs = D^-1 g``, the inverse
  Cholesky factor ``Linv0`` of ``As`` and ``well`` (the rows whose step takes
  the Cholesky route; the others get the identity basis of the generic
  route, and the SVD route as before);
* :func:`lmpar_rows`: ``lmpar`` with the Cholesky basis, row by row (a row
  leaves the safeguarded Newton iteration when it is done, which is exact:
  the generic code freezes finished rows with ``where``);
* :func:`accel_rows`: the geodesic acceleration from ``r_vv`` on (its products
  with ``J``, the damped solve with the route's factor, the bound on ``||D a||``),
  when every running problem is on the Cholesky route;
* :func:`judge_rows`: :func:`~agnopt._least_squares.engine.reductions`,
  :func:`~agnopt._least_squares.engine.update_radius`, the test and state
  update of :func:`~agnopt._least_squares.engine.accept` (but ``F``) and
  :func:`~agnopt._least_squares.engine.stopping_tests`.

The arithmetic is the generic blocks', operation for operation, in the
working dtype (``fastmath=False``; constants are passed in that dtype, as
NumPy applies a Python float to a float32 array; reductions over ``n``
follow NumPy's pairwise summation, :func:`_psum`). The generic path's
matrix-vector products (``numpy.matmul``, which may call BLAS: its order of
summation depends on the machine, ``n`` and the dtype) are plain loops
here, so the two agree to rounding, not bit for bit:
``tests/test_lm_batched_fast.py`` compares them (the normal equations for
``n <= 6``, the end of ``linearized`` and the verdict bit for bit, ``lmpar`` and the acceleration to a
few ulps; whole float64 solves to 1e-9 with the same iterations and
statuses; float32 solves, which end at rounding noise, as accurate as the
generic path's). A consequence: a batch on these kernels agrees with the
same problems solved one by one to rounding (1e-7 at tight tolerances),
where the generic engine gives them bit for bit.

The same kernels serve a torch batch on the CPU: a float32 / float64 CPU tensor
that does not require grad shares its memory with its ``numpy()`` view
(:func:`host_view`), so the engine's calls below view their torch inputs as NumPy
arrays, run the kernels, and wrap the kernels' fresh outputs back with
``torch.from_numpy`` (:func:`_back`): no copies, and no kernel writes into a
tensor it was given (only into fresh arrays or copies). A tensor that requires
grad (a start, residuals or a Jacobian in an autograd graph) keeps the generic
path, which records the graph (the engine and the route check). The torch
solve's other blocks (evaluations, ``J^T J``, the trial point, compaction) stay
torch operations, so it agrees with the generic torch path to rounding
(``tests/test_lm_batched_torch_cpu.py``), as a NumPy batch does with NumPy's.

An optional accelerator (numba: ``pip install agnopt[numba]``) for NumPy
arrays (or torch CPU tensors) of float32 / float64 with ``n <= MAX_N`` on the Cholesky route,
batches of at least ``MIN_ROWS`` problems (a smaller batch does not repay
numba's first use in a process); ``AGNOPT_FAST=0`` (or ``numpy``) turns it
off, ``AGNOPT_FAST=numba`` uses it for every batch (and requires numba).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any

import numpy as np

HAVE_NUMBA = importlib.util.find_spec("numba") is not None

MAX_N = 16  # routes.CHOL_MAX_N
MIN_ROWS = 32  # problems in a batch before the kernels are used (unless AGNOPT_FAST=numba)
# lmpar's and the engine's constants (agnopt._least_squares.lmpar / .routes / .engine)
RTOL = 0.1
GRAM_RCOND = 1e-8
ACCEPT_RATIO = 1e-4
LOW_PRECISION_EPS = 1e-10
# MINPACK's codes (agnopt._least_squares.state.MinpackInfo), as the engine's ints
_FTOL_MACHINE, _XTOL_MACHINE, _GTOL_MACHINE, _MAX_NFEV = 6, 7, 8, 5
_XTOL, _FTOL_XTOL, _GTOL, _NONFINITE_TRIAL = 2, 3, 4, -4

# the constants vector ``c`` (in the working dtype): its entries
(C_ZERO, C_ONE, C_HALF, C_TWO, C_RTOL, C_P001, C_DWARF, C_EPS, C_RCOND_INV, C_TENTH,
 C_1E10, C_ACCEPT, C_FTOL, C_XTOL, C_LOWP, C_LEN) = range(16)


def mode() -> str:
    """``"off"``, ``"auto"`` or ``"numba"`` from ``AGNOPT_FAST``."""
    v = os.environ.get("AGNOPT_FAST", "")
    if v in ("0", "numpy"):
        return "off"
    if v == "numba":
        if not HAVE_NUMBA:
            raise ImportError("AGNOPT_FAST=numba but numba is not installed "
                              "(pip install agnopt[numba])")
        return "numba"
    return "auto" if HAVE_NUMBA else "off"


def applies(X, batch=None) -> bool:
    """Whether the kernels run for the point stack ``X`` (k, n): a NumPy float32 / float64
    array (or a torch CPU tensor of those dtypes that does not require grad,
    :func:`host_view`), ``n <= MAX_N``, numba on (``AGNOPT_FAST``) and a batch (``batch``
    problems, default ``k``; the working set of a compacted solve may be smaller) of at
    least ``MIN_ROWS`` problems (two under ``AGNOPT_FAST=numba``; one problem alone has
    :mod:`agnopt._kernels.lm_cpu`)."""
    if type(X) is not np.ndarray:
        if not _torch_cpu(X):
            return False
        X = X.numpy()
    if X.dtype not in (np.float32, np.float64) or X.ndim != 2:
        return False
    if X.shape[1] > MAX_N:
        return False
    m = mode()
    B = X.shape[0] if batch is None else batch
    if m == "off" or B < (MIN_ROWS if m == "auto" else 2):
        return False
    _compile()
    return True


def _torch_cpu(a) -> bool:
    """``a`` is a plain torch tensor on the CPU that does not require grad (its
    ``numpy()`` is a view of its memory; a tensor in an autograd graph keeps the
    generic path, which records it)."""
    if type(a).__module__ != "torch" or type(a).__name__ != "Tensor":
        return False
    return a.device.type == "cpu" and not a.requires_grad and not a.is_neg() \
        and not a.is_conj()


def host_view(a):
    """``a`` as a NumPy array: ``a`` itself, or a torch CPU tensor's ``numpy()`` (no
    copy: the kernels only read their inputs and write into fresh arrays or copies,
    never into a caller's tensor)."""
    return a if type(a) is np.ndarray else a.numpy()


def _back(like, *arrs):
    """The kernels' NumPy results as arrays of the kind of ``like`` (a torch CPU
    tensor: ``torch.from_numpy``, no copy; fresh arrays nobody else holds)."""
    if type(like) is not np.ndarray:
        import torch

        arrs = tuple(torch.from_numpy(a) for a in arrs)
    return arrs


def constants(dtype, ftol=0.0, xtol=0.0):
    """The constants vector ``c`` in ``dtype`` (what NumPy makes of each Python float)."""
    fi = np.finfo(dtype)
    c = np.zeros(C_LEN, dtype=dtype)
    c[C_ONE], c[C_HALF], c[C_TWO], c[C_RTOL], c[C_P001] = 1.0, 0.5, 2.0, RTOL, 0.001
    c[C_DWARF], c[C_EPS], c[C_RCOND_INV], c[C_TENTH] = fi.smallest_normal, fi.eps, 1.0 / GRAM_RCOND, 0.1
    c[C_1E10], c[C_ACCEPT], c[C_FTOL], c[C_XTOL] = 1e10, ACCEPT_RATIO, ftol, xtol
    c[C_LOWP] = 1.0 if fi.eps > LOW_PRECISION_EPS else 0.0
    return c


# --------------------------------------------------------------------------- scalar helpers
def _maximum(a, b):
    # numpy.maximum: NaN propagates
    if a != a:
        return a
    if b != b:
        return b
    return a if a >= b else b


def _minimum(a, b):
    # numpy.minimum: NaN propagates
    if a != a:
        return a
    if b != b:
        return b
    return a if a <= b else b


def _psum(a, n):
    """NumPy's pairwise sum (``add.reduce`` of a contiguous run) of ``a[:n]``, ``n <= 256``."""
    if n > 128:
        n2 = n // 2
        n2 -= n2 % 8
        return _pw(a, 0, n2) + _pw(a, n2, n - n2)
    return _pw(a, 0, n)


def _pw(a, lo, n):
    # numpy's pairwise_sum for n <= 128 (PW_BLOCKSIZE): 8 accumulators
    if n < 8:
        res = a[lo]  # (numpy starts from -0.0: the same sum)
        for i in range(1, n):
            res += a[lo + i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - (n % 8):
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


def _norm(v, n, buf):
    """``sqrt(add.reduce(v * v))`` (the backend's ``vector_norm``) of ``v[:n]``."""
    for j in range(n):
        buf[j] = v[j] * v[j]
    return np.sqrt(_psum(buf, n))


def _chol_inv(A, n, eps, one, L, invd, Li):
    """:func:`agnopt._least_squares.cholesky._entries` on one matrix ``A`` (n, n) (its
    lower triangle): ``Li`` (n, n) the inverse factor (upper triangle zero); returns ``ok``."""
    ok = True
    for j in range(n):
        d = A[j, j]
        for t in range(j):
            d = d - L[j, t] * L[j, t]
        okj = d > eps * A[j, j]
        ok = ok and okj
        ljj = np.sqrt(d if okj else one)
        L[j, j] = ljj
        inv = one / ljj
        invd[j] = inv
        for i in range(j + 1, n):
            v = A[i, j]
            for t in range(j):
                v = v - L[i, t] * L[j, t]
            L[i, j] = v * inv
    for i in range(n):
        dinv = invd[i]
        Li[i, i] = dinv
        for j in range(i):
            v = L[i, j] * Li[j, j]
            for t in range(j + 1, i):
                v = v + L[i, t] * Li[t, j]
            Li[i, j] = -v * dinv
    return ok


def _zero_upper(Li, n, zero):
    for i in range(n):
        for j in range(i + 1, n):
            Li[i, j] = zero


def _mv(A, x, n, out, zero):
    """``out = A x`` (a plain loop: ``numpy.matmul`` of a stack)."""
    for i in range(n):
        s = zero
        for j in range(n):
            s += A[i, j] * x[j]
        out[i] = s


def _mtv(A, x, n, out, zero):
    """``out = A^T x``."""
    for i in range(n):
        s = zero
        for j in range(n):
            s += A[j, i] * x[j]
        out[i] = s


# --------------------------------------------------------------------------- the row kernels
def _normal_rows(A0, g, D, free, c, As, gs, Linv0, well):
    """:func:`agnopt._least_squares.routes.normal_equations` row by row, with the
    generic route's substitution for the rows not ``well`` (identity ``As``,
    zero ``gs``, identity ``Linv0``). Outputs ``As``, ``gs``, ``Linv0``, ``well``."""
    k, n = g.shape
    zero, one = c[C_ZERO], c[C_ONE]
    eps, lim = c[C_EPS], c[C_RCOND_INV]
    L = np.empty((n, n), dtype=g.dtype)
    invd = np.empty(n, dtype=g.dtype)
    buf = np.empty(n * n, dtype=g.dtype)
    for r in range(k):
        A = As[r]
        for i in range(n):
            for j in range(n):
                A[i, j] = A0[r, i, j] / (D[r, i] * D[r, j])
            gs[r, i] = g[r, i] / D[r, i]
        Li = Linv0[r]
        ok = _chol_inv(A, n, eps, one, L, invd, Li)
        _zero_upper(Li, n, zero)
        # trace(As) and ||Linv0||_F^2 as sum(As * eye) and sum(Linv0 * Linv0) over both axes
        for i in range(n):
            for j in range(n):
                buf[i * n + j] = A[i, j] * (one if i == j else zero)
        tr = _psum(buf, n * n)
        for i in range(n):
            for j in range(n):
                buf[i * n + j] = Li[i, j] * Li[i, j]
        cond = tr * _psum(buf, n * n)
        allfree = True
        for j in range(n):
            allfree = allfree and free[r, j]
        w = ok and allfree and (cond < lim)
        well[r] = w
        if not w:
            for i in range(n):
                for j in range(n):
                    A[i, j] = one if i == j else zero
                    Li[i, j] = one if i == j else zero
                gs[r, i] = zero


def _lmpar_rows(As, gs, Linv0, delta, par0, active, c, par_out, z_out, Lf):
    """:func:`agnopt._least_squares.lmpar.lmpar` with a :class:`~.lmpar.CholeskyBasis`
    (``rtol`` 0.1), row by row: ``par_out`` (k,), the scaled step ``z_out = -q``
    (k, n) and ``Lf`` (k, n, n), the inverse factor at the final ``par``."""
    k, n = gs.shape
    zero, one, rtol = c[C_ZERO], c[C_ONE], c[C_RTOL]
    dwarf, p001, tenth, eps = c[C_DWARF], c[C_P001], c[C_TENTH], c[C_EPS]
    y = np.empty(n, dtype=gs.dtype)
    qt = np.empty(n, dtype=gs.dtype)
    buf = np.empty(n, dtype=gs.dtype)
    M = np.empty((n, n), dtype=gs.dtype)
    L = np.empty((n, n), dtype=gs.dtype)
    invd = np.empty(n, dtype=gs.dtype)
    Li = np.empty((n, n), dtype=gs.dtype)
    for r in range(k):
        L0 = Linv0[r]
        b = gs[r]
        q = z_out[r]
        F = Lf[r]
        dl = delta[r]
        delta_s = dl if dl > 0 else one
        # the Gauss-Newton step (lmpar_gauss_newton)
        _mv(L0, b, n, y, zero)
        _mtv(L0, y, n, q, zero)
        _mv(L0, q, n, y, zero)
        s = _norm(y, n, buf)
        s3 = s * s
        dxnorm = _norm(q, n, buf)
        fp = dxnorm - dl
        gn_ok = fp <= rtol * dl
        for i in range(n):
            for j in range(n):
                F[i, j] = L0[i, j]
        if gn_ok:
            par_out[r] = zero
        else:
            # the starting bounds (lmpar_bounds)
            s3 = s3 if s3 > 0 else one
            parl = (fp / delta_s) * dxnorm * dxnorm / s3
            parl = _maximum(parl, zero)
            gnorm = _norm(b, n, buf)
            paru = gnorm / delta_s
            if paru == 0:
                paru = dwarf / _minimum(delta_s, tenth)
            par = _minimum(_maximum(par0[r], parl), paru)
            dx_safe = dxnorm if dxnorm > 0 else one
            if par == 0:
                par = gnorm / dx_safe
            if active[r]:
                # the safeguarded Newton iterations (lmpar_iteration), until done
                for it in range(10):
                    if par == 0:
                        par = _maximum(dwarf, p001 * paru)
                    for i in range(n):
                        for j in range(n):
                            M[i, j] = As[r, i, j] + par * (one if i == j else zero)
                    _chol_inv(M, n, eps, one, L, invd, Li)
                    _zero_upper(Li, n, zero)
                    _mv(Li, b, n, y, zero)
                    _mtv(Li, y, n, qt, zero)
                    _mv(Li, qt, n, y, zero)
                    s = _norm(y, n, buf)
                    s3 = s * s
                    dxn_t = _norm(qt, n, buf)
                    temp = fp
                    fp_t = dxn_t - dl
                    for i in range(n):
                        q[i] = qt[i]
                        for j in range(n):
                            F[i, j] = Li[i, j]
                    fp = fp_t
                    done = (abs(fp_t) <= rtol * dl) or ((parl == 0) and (fp_t <= temp)
                                                        and (temp < 0)) or it == 9
                    s3 = s3 if s3 > 0 else one
                    parc = (fp_t / delta_s) * dxn_t * dxn_t / s3
                    if done:
                        break
                    if fp_t > 0:
                        parl = _maximum(parl, par)
                    if fp_t < 0:
                        paru = _minimum(paru, par)
                    par = _maximum(parl, par + parc)
            par_out[r] = par
        for i in range(n):
            q[i] = -q[i]


def _judge_rows(fnorm, par, delta, active, first, gnorm, xnorm, info, nfev, nit, need_jac,
                fnorm1, jpn2, pmnorm, projected, has_proj, gp, limited, D, Xt, X, c, max_nfev):
    """:func:`~agnopt._least_squares.engine.reductions`, :func:`~.engine.update_radius`,
    :func:`~.engine.accept` (all but ``F``) and :func:`~.engine.stopping_tests` row by
    row. Updates ``X``, ``fnorm``, ``xnorm``, ``delta``, ``par``, ``nit``, ``need_jac``,
    ``first``, ``info``, ``active`` (fresh arrays, the caller's copies) in place and
    returns ``acc`` (k,) bool, the rows whose step was taken."""
    k, n = X.shape
    zero, one, half, two = c[C_ZERO], c[C_ONE], c[C_HALF], c[C_TWO]
    tenth, e10, acc_r, eps = c[C_TENTH], c[C_1E10], c[C_ACCEPT], c[C_EPS]
    ftol, xtol = c[C_FTOL], c[C_XTOL]
    lowp = c[C_LOWP] != 0
    q075, q025 = half + half * half, half * half
    acc = np.zeros(k, dtype=np.bool_)
    buf = np.empty(n, dtype=X.dtype)
    for r in range(k):
        fn = fnorm[r]
        pa = par[r]
        dl = delta[r]
        act = active[r]
        f1 = fnorm1[r]
        pmn = pmnorm[r]
        # reductions
        finite = np.isfinite(f1)
        fn1s = f1 if finite else fn * e10 + one
        fn_safe = one if fn == 0 else fn
        if finite and tenth * fn1s < fn:
            qq = fn1s / fn_safe
            actred = one - qq * qq
        else:
            actred = -one
        t1 = np.sqrt(jpn2[r]) / fn_safe
        t2 = np.sqrt(pa) * pmn / fn_safe
        prered = t1 * t1 + two * t2 * t2
        dirder = -(t1 * t1 + t2 * t2)
        if has_proj and projected[r]:
            fJp = gp[r] / (fn_safe * fn_safe)
            prered = -(two * fJp + t1 * t1)
            dirder = fJp
        ratio = actred / prered if prered > 0 else zero
        # update_radius
        small = ratio <= q025
        if actred >= 0:
            temp = half
        else:
            den = dirder + half * actred
            temp = half * dirder / (one if den == 0 else den)
        if (tenth * fn1s >= fn) or (temp < tenth) or not finite:
            temp = tenth
        big = (not small) and ((pa == 0) or (ratio >= q075))
        if small:
            delta_n = temp * _minimum(dl, pmn / tenth)
            par_n = pa / temp
        elif big:
            delta_n = pmn / half
            par_n = half * pa
        else:
            delta_n, par_n = dl, pa
        if act:
            delta[r] = delta_n
            par[r] = par_n
        # accept
        a = act and finite and (actred > 0) and (ratio >= acc_r)
        acc[r] = a
        if a:
            for j in range(n):
                X[r, j] = Xt[r, j]
                t = D[r, j] * X[r, j]
                buf[j] = t * t
            xnorm[r] = np.sqrt(_psum(buf, n))
            fnorm[r] = f1
            nit[r] += 1
            first[r] = False
        if act:
            need_jac[r] = a
        # stopping_tests
        dn = delta[r]
        xn = xnorm[r]
        aa = abs(actred)
        full = half * ratio <= one
        grows = limited[r] and (ratio >= q075)
        gn = gnorm[r]
        gn2 = gn * gn
        ft = (aa <= ftol) and (prered <= ftol) and full and not (grows and (gn2 > ftol))
        xt = dn <= xtol * xn
        new = (1 if ft else 0) + 2 * (1 if xt else 0)
        if new == 0:
            mach = _MAX_NFEV if nfev[r] >= max_nfev else 0
            if (aa <= eps) and (prered <= eps) and full and not (grows and (gn2 > eps)):
                mach = max(mach, _FTOL_MACHINE)
            if dn <= eps * xn:
                mach = max(mach, _XTOL_MACHINE)
            if gn <= eps:
                mach = max(mach, _GTOL_MACHINE)
            if (lowp and not limited[r] and finite and prered <= eps
                    and not (has_proj and projected[r])):
                mach = max(mach, _FTOL_MACHINE)  # low precision: stationary to rounding
            new = mach
        if (not finite) and (new == _XTOL or new == _FTOL_XTOL or new == _XTOL_MACHINE):
            new = _NONFINITE_TRIAL
        if not act:
            new = 0
        if new != 0:
            info[r] = new
        active[r] = act and new == 0
    return acc


def _accel_rows(J, p, Fh, F, D, free, Lf, z, eligible, c, h, two_h, alpha, p_out, accel):
    """The end of :func:`~agnopt._least_squares.engine.geodesic_acceleration` (from
    ``r_vv``) on the Cholesky route, row by row: ``p_out`` (k, n) the step (``v + a/2``
    where ``accel``), ``accel`` (k,) bool. ``Fh`` the residuals at ``x + h v``
    (``F`` on the rows not ``eligible``), ``Lf`` the route's factor at ``par``,
    ``z`` the scaled LM step; ``h``, ``2 / h``, ``alpha`` in the working dtype."""
    k, m, n = J.shape
    zero, half, two = c[C_ZERO], c[C_HALF], c[C_TWO]
    rvv = np.empty(m, dtype=J.dtype)
    hv = np.empty(n, dtype=J.dtype)
    y = np.empty(n, dtype=J.dtype)
    az = np.empty(n, dtype=J.dtype)
    buf = np.empty(n, dtype=J.dtype)
    for r in range(k):
        for j in range(n):
            p_out[r, j] = p[r, j]
        accel[r] = False
        if not eligible[r]:
            continue
        for t in range(m):
            jv = zero
            for j in range(n):
                jv += J[r, t, j] * p[r, j]
            v = two_h * ((Fh[r, t] - F[r, t]) / h - jv)
            rvv[t] = v if np.isfinite(v) else zero
        for j in range(n):
            s = zero
            for t in range(m):
                s += rvv[t] * J[r, t, j]
            hv[j] = s / D[r, j] if free[r, j] else zero
        _mv(Lf[r], hv, n, y, zero)
        _mtv(Lf[r], y, n, az, zero)
        fin = True
        for j in range(n):
            az[j] = -az[j]
            if free[r, j]:
                a = az[j] / D[r, j]
                fin = fin and np.isfinite(a)
            else:
                az[j] = zero
        vn = _norm(z[r], n, buf)
        an = _norm(az, n, buf)
        if (two * an <= alpha * vn) and fin:
            accel[r] = True
            for j in range(n):
                a = az[j] / D[r, j] if free[r, j] else zero
                p_out[r, j] = p[r, j] + half * a


def _linearized_rows(g, cn, X, fnorm, first, nj, bounded, jac_scale, gtol, factor, c, free,
                     D, xnorm, delta, gnorm, info, active):
    """The elementwise part of :func:`~agnopt._least_squares.engine.linearized` row by row
    (rows with a new Jacobian, ``nj``): the column norms of the free variables, the
    scaling (:func:`~.engine.scale_and_radius`'s ``D = ||J_j||`` and initial radius on the
    first Jacobian, :func:`~.engine.gtol_test`'s ``max(D, ||J_j||)`` after it), ``gnorm``
    and the ``gtol`` test. Updates ``D``, ``xnorm``, ``delta``, ``gnorm``, ``info``,
    ``active`` (the caller's copies) in place; ``free`` (k, n) the merged free mask."""
    k, n = g.shape
    zero, one = c[C_ZERO], c[C_ONE]
    buf = np.empty(n, dtype=g.dtype)
    for r in range(k):
        if not nj[r]:
            continue
        fn = fnorm[r]
        fn_safe = one if fn == 0 else fn
        gn = zero
        nan = False
        fr = first[r]
        for j in range(n):
            c = cn[r, j] if (not bounded or free[r, j]) else zero
            if jac_scale and fr:
                D[r, j] = one if c == 0 else c
            cs = one if c == 0 else c
            cosv = zero if c == 0 else abs(g[r, j]) / (fn_safe * cs)
            if c == np.inf:  # an overflowed column norm: no angle (gtol_test)
                cosv = zero / zero
            if cosv != cosv:  # np.max: NaN propagates
                nan = True
            elif j == 0 or cosv > gn:
                gn = cosv
        if fr and delta[r] == 0:  # the initial radius FACTOR * ||D x0||
            for j in range(n):
                t = D[r, j] * X[r, j]
                buf[j] = t * t
            xn0 = np.sqrt(_psum(buf, n))
            xnorm[r] = xn0
            delta[r] = factor if xn0 == 0 else factor * xn0
        if nan:
            gn = zero / zero
        if fn == 0:
            gn = zero
        gnorm[r] = gn
        if gn <= gtol:
            info[r] = _GTOL
            active[r] = False
        if jac_scale and not fr:
            for j in range(n):
                c = cn[r, j] if (not bounded or free[r, j]) else zero
                D[r, j] = _maximum(D[r, j], c)


normal_rows: Any = None
lmpar_rows: Any = None
judge_rows: Any = None
accel_rows: Any = None
lin_rows: Any = None


def _compile() -> None:
    """The numba versions of the row kernels (made once per process; compiled on first
    call for each dtype, cached on disk)."""
    global _maximum, _minimum, _psum, _pw, _norm, _chol_inv, _zero_upper, _mv, _mtv
    global normal_rows, lmpar_rows, judge_rows, accel_rows, lin_rows, _ready
    if _ready:
        return
    with _compile_lock:  # threads (a Dask scheduler's) may get here together
        if _ready:
            return
        import numba

        opts: dict[str, Any] = {"error_model": "numpy", "fastmath": False, "nogil": True,
                                "cache": True}
        jit = numba.njit(**opts)
        _maximum, _minimum, _pw = jit(_maximum), jit(_minimum), jit(_pw)
        _psum = jit(_psum)
        _norm, _chol_inv, _zero_upper = jit(_norm), jit(_chol_inv), jit(_zero_upper)
        _mv, _mtv = jit(_mv), jit(_mtv)
        normal_rows, lmpar_rows, judge_rows = jit(_normal_rows), jit(_lmpar_rows), jit(_judge_rows)
        accel_rows, lin_rows = jit(_accel_rows), jit(_linearized_rows)
        _ready = True  # last: a thread that sees it sees every kernel


# _compile's guard: its body runs once per process, in one thread at a time
_compile_lock = threading.Lock()
_ready = False


# --------------------------------------------------------------------------- the engine's calls
def normal_equations(A0, g, D, free):
    """:func:`agnopt._least_squares.routes.normal_equations` and the route's substitution
    for the rows not ``well``: ``(As, gs, Linv0, well)``."""
    _compile()
    like = g
    A0, g, D, free = host_view(A0), host_view(g), host_view(D), host_view(free)
    k, n = g.shape
    dt = g.dtype
    As = np.empty((k, n, n), dtype=dt)
    gs = np.empty((k, n), dtype=dt)
    Linv0 = np.empty((k, n, n), dtype=dt)
    well = np.empty(k, dtype=np.bool_)
    normal_rows(np.ascontiguousarray(A0), np.ascontiguousarray(g), np.ascontiguousarray(D),
                np.ascontiguousarray(free), constants(dt), As, gs, Linv0, well)
    return _back(like, As, gs, Linv0, well)


def lmpar(basis, delta, par0, active):
    """:func:`agnopt._least_squares.lmpar.lmpar` of a Cholesky basis (from
    :func:`normal_equations`): ``(par, z, Lf)`` with ``z = -q`` the scaled step."""
    _compile()
    like = basis.gs
    gs = host_view(basis.gs)
    k, n = gs.shape
    dt = gs.dtype
    par = np.empty(k, dtype=dt)
    z = np.empty((k, n), dtype=dt)
    Lf = np.empty((k, n, n), dtype=dt)
    lmpar_rows(host_view(basis.As), gs, host_view(basis.Linv0),
               np.ascontiguousarray(host_view(delta), dtype=dt),
               np.ascontiguousarray(host_view(par0), dtype=dt),
               np.ascontiguousarray(host_view(active)), constants(dt), par, z, Lf)
    return _back(like, par, z, Lf)


def judge(xp, ev, st, tr, route, accel, v, limited, ftol, xtol, max_nfev, model_step):
    """The engine's :func:`~agnopt._least_squares.engine.judge` for a NumPy (or torch CPU)
    batch: ``model_step``, ``||J pm||^2`` (the route's) and ``g . p`` of projected steps as
    the generic path forms them, the rest in :func:`judge_rows`."""
    _compile()
    pm, pmnorm = model_step(xp, st, tr, accel, v)
    jpn2 = route.jp_norm2(pm)
    has_proj = tr.projected is not None
    gp = xp.sum(st.g * tr.p, axis=-1) if has_proj else pmnorm
    h = host_view
    proj = h(tr.projected if has_proj else st.active)
    X0 = h(st.X)
    dt = X0.dtype
    X, fnorm, xnorm = X0.copy(), h(st.fnorm).copy(), h(st.xnorm).copy()
    delta, par = h(st.delta).astype(dt, copy=True), h(st.par).astype(dt, copy=True)
    nit, need_jac, first = h(st.nit).copy(), h(st.need_jac).copy(), h(st.first).copy()
    info, active = h(st.info).copy(), h(st.active).copy()
    acc = judge_rows(fnorm, par, delta, active, first, h(st.gnorm), xnorm, info, h(st.nfev), nit,
                     need_jac, np.ascontiguousarray(h(tr.fnorm1), dtype=dt),
                     np.ascontiguousarray(h(jpn2), dtype=dt),
                     np.ascontiguousarray(h(pmnorm), dtype=dt), proj, has_proj,
                     np.ascontiguousarray(h(gp), dtype=dt), h(limited), h(st.D), h(tr.Xt), X,
                     constants(dt, ftol, xtol), float(max_nfev))
    acc, X, fnorm, xnorm, delta, par, nit, need_jac, first, info, active = _back(
        st.X, acc, X, fnorm, xnorm, delta, par, nit, need_jac, first, info, active)
    return st._replace(X=X, F=ev.select(acc, tr.Ft, st.F), fnorm=fnorm, xnorm=xnorm, delta=delta,
                       par=par, nit=nit, need_jac=need_jac, first=first, info=info,
                       active=active)


def acceleration(J, p, Fh, F, D, free, Lf, z, eligible, h, alpha):
    """The end of the engine's :func:`~agnopt._least_squares.engine.geodesic_acceleration`
    (:func:`_accel_rows`), for a route whose every running problem is on the Cholesky
    route: ``(p, accel)``, (k, n) and (k,), arrays of the kind of ``p`` (NumPy or torch
    CPU)."""
    _compile()
    like = p
    J, p, Fh, F, D = host_view(J), host_view(p), host_view(Fh), host_view(F), host_view(D)
    free, Lf, z, eligible = host_view(free), host_view(Lf), host_view(z), host_view(eligible)
    k, n = p.shape
    dt = p.dtype
    p_out = np.empty((k, n), dtype=dt)
    accel = np.empty(k, dtype=np.bool_)
    c = constants(dt)
    accel_rows(np.ascontiguousarray(J), np.ascontiguousarray(p), np.ascontiguousarray(Fh),
               np.ascontiguousarray(F), np.ascontiguousarray(D), np.ascontiguousarray(free),
               np.ascontiguousarray(Lf), np.ascontiguousarray(z),
               np.ascontiguousarray(eligible), c, dt.type(h), dt.type(2.0 / h), dt.type(alpha),
               p_out, accel)
    return _back(like, p_out, accel)


def linearized_rows(xp, box, st, nj, cn, jac_scale, gtol, factor, generic):
    """The engine's :func:`~agnopt._least_squares.engine.linearized` for a NumPy (or torch
    CPU) batch: the free variables (``box.free_mask``) and the count of Jacobians as the
    generic path forms them, the rest in :func:`_linearized_rows`. ``generic``: unused (the
    signature of :func:`agnopt._kernels.lm_cpu.linearized_one`)."""
    _compile()
    free_n = box.free_mask(st.X, st.g)
    free = free_n if st.free is None else xp.where(nj[:, None], free_n, st.free)
    h = host_view
    X = h(st.X)
    dt = X.dtype
    D, xnorm, delta = h(st.D).copy(), h(st.xnorm).copy(), h(st.delta).copy()
    gnorm, info, active = h(st.gnorm).copy(), h(st.info).copy(), h(st.active).copy()
    lin_rows(np.ascontiguousarray(h(st.g)), np.ascontiguousarray(h(cn), dtype=dt), X,
             h(st.fnorm), h(st.first), h(nj), bool(box.bounded), bool(jac_scale), dt.type(gtol),
             dt.type(factor), constants(dt), np.ascontiguousarray(h(free)), D, xnorm, delta,
             gnorm, info, active)
    D, xnorm, delta, gnorm, info, active = _back(st.X, D, xnorm, delta, gnorm, info, active)
    return st._replace(free=free, njev=st.njev + xp.astype(nj, st.njev.dtype),
                       need_jac=st.need_jac & ~nj, D=D, xnorm=xnorm, delta=delta, gnorm=gnorm,
                       info=info, active=active)
