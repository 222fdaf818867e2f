"""``curve_fit``'s residuals: the model ``f(xdata, *p)`` minus ``ydata``, weighted
by ``1 / sigma`` or by ``L^{-1}`` for a covariance ``sigma = L L^T``, as the
``fun`` (and ``jac``) that :func:`.curve_fit.curve_fit` hands to
:func:`.least_squares.least_squares` (scipy's ``_wrap_func`` / ``_wrap_jac``).
"""

from __future__ import annotations

from .._core import lazy
from .._core.backend import native_namespace
from .._core.linalg import cholesky, linalg_errors
from . import jax_rerun, jax_solve
from .arrays import host_bools
from .fit_data import check_sigma_values, sigma_shape_message, xdata_hint
from .options import to_backend

__all__ = ["model", "weights"]


def weights(xp, dev, sigma, ydata, batched, m):
    """``(wfun, inv, L)``: the residual weighting ``r -> r / sigma`` (``inv``, shaped
    as ``ydata``) or ``r -> L^{-1} r`` for a covariance ``sigma = L L^T`` (m, m)."""
    if sigma is None:
        return None, None, None
    sig = to_backend(xp, sigma, ydata.dtype, dev)
    if not batched and sig.ndim == 2:
        if tuple(sig.shape) != (m, m):
            raise ValueError(sigma_shape_message(sig.shape, ydata.shape, batched))
        if lazy.is_dask_namespace(xp):
            try:
                L = xp.linalg.cholesky(sig)
                if not bool(xp.all(xp.triu(L, k=1) == 0)):
                    # array-api-compat's Dask cholesky returns the upper factor U
                    # (sigma = U^T U); the lower one is its transpose
                    L = xp.matrix_transpose(L)
                ok = bool(xp.all(xp.isfinite(L)))
            except linalg_errors():  # (Dask's own "Matrix is not positive definite")
                ok = False
        else:
            # the checked factor (agnopt._core.linalg): CuPy returns a partial factor of
            # an indefinite matrix without raising, JAX one of NaNs
            L = cholesky(xp, sig)
            ok = L is not None
        if not ok:
            err = (linalg_errors() or (ValueError,))[0]  # scipy's LinAlgError (a ValueError)
            raise err("`sigma` must be positive definite (a covariance matrix): its "
                      "Cholesky factorization failed")

        def wfun(r, L=L):
            return xp.linalg.solve(L, r[..., None])[..., 0]
        return wfun, None, L
    try:
        sig_b = xp.broadcast_to(sig, ydata.shape)
    except Exception as e:
        raise ValueError(sigma_shape_message(sig.shape, ydata.shape, batched)) from e
    check_sigma_values(xp, sig)
    inv = 1.0 / sig_b

    def wfun(r, inv=inv):
        return r * inv
    return wfun, inv, None


def model(xp, dev, f, xdata, ydata, jac, n, batched, wfun, inv, L, omit=None):
    """``(residual, jac)`` for ``least_squares``: weighted residuals ``(f(xdata, *p) - y)``
    of ``p`` (n,) or (B, n), with the row hook of a shared ``xdata`` (batched).
    ``omit`` (B, m) bool: points whose residual (and Jacobian row) is exactly 0
    (batched ``nan_policy="omit"``), so each fit is its fit on the other points."""
    if not batched and L is None and omit is None and not callable(jac) and jax_solve._is_jax(xp):
        # JAX: a residual the whole-solve program traces, and later calls reuse
        return jax_rerun.curve_fit_residual(native_namespace(xp), f, xdata, ydata, inv), jac
    dtype = ydata.dtype
    yshape = tuple(ydata.shape)
    xp = native_namespace(xp)  # the per-call arithmetic below: NumPy's own functions
    complex_kind: dict = {}  # dtype -> is it complex (isdtype once per dtype)

    cols = range(n)

    def _is_complex(pd):
        try:
            return complex_kind[pd]
        except KeyError:
            is_c = complex_kind[pd] = bool(xp.isdtype(pd, "complex floating"))
            return is_c
        except TypeError:  # pragma: no cover - unhashable dtype objects
            return bool(xp.isdtype(pd, "complex floating"))

    # Complex-step Jacobians perturb one parameter at a time: the others are
    # passed to f as real arrays (their imaginary parts are exactly zero), so
    # only the part of the model that depends on the perturbed parameter runs
    # in complex arithmetic (e.g. an additive offset costs one complex add).
    # Complex arithmetic with zero imaginary parts gives the same real values,
    # so this changes nothing but the cost.
    def split(p, cplx=None):
        """``f``'s parameters: ``p[j]`` ((B, 1) columns batched), real where ``p``'s
        imaginary part is zero (``cplx``: whether ``p`` is complex, when known)."""
        if cplx is None:
            pd = p.dtype
            cplx = pd != dtype and _is_complex(pd)
        if not cplx:  # real parameters: the common case
            return [p[:, j : j + 1] for j in cols] if batched else [p[j] for j in cols]
        re = xp.real(p)
        if batched:
            nz = host_bools(xp.any(xp.imag(p) != 0, axis=0))  # one transfer
            return [p[:, j : j + 1] if nz[j] else re[:, j : j + 1] for j in cols]
        # one transfer of the n entries (their imaginary parts compared on the host: the
        # same truth values as ``imag(p) != 0``, two array operations fewer)
        tolist = getattr(p, "tolist", None)
        if tolist is None:
            nz = host_bools(xp.imag(p) != 0)
            return [p[j] if nz[j] else re[j] for j in cols]
        pv = tolist()
        return [p[j] if pv[j].imag != 0 else re[j] for j in cols]

    def _complex_step_point(p):
        return L is None and p.dtype != dtype and _is_complex(p.dtype)

    # A complex p is the complex-step Jacobian's point, which reads only the
    # imaginary part of the residuals: subtracting the real ydata changes the
    # real part alone (bit for bit; so does the 1-D sigma's real scaling after
    # it), so it is skipped there (a full-size complex subtraction per column
    # of the Jacobian). (Not with a 2-D sigma: its solve mixes the real and
    # imaginary parts' arithmetic in the library's complex division.)
    def residual(p):
        pd = p.dtype
        cplx = pd is not dtype and pd != dtype and _is_complex(pd)
        # (real parameters of one fit, the common case: split's list without its call)
        return checked(f(xdata, *(split(p, cplx) if cplx or batched else [p[j] for j in cols])),
                       cplx)

    def checked(r, cplx):
        """:func:`residual` from ``f``'s output ``r`` (``cplx``: at complex parameters)."""
        try:
            shape, rdt = r.shape, r.dtype
        except AttributeError:  # not an array: as scipy, converted
            r = xp.asarray(r, dtype=dtype, device=dev)
            shape, rdt = r.shape, r.dtype
        if shape != yshape and tuple(shape) != yshape:
            # (ydata has at least one axis: a 0-d r lands here)
            if batched and yshape[0] != 1 and (len(shape) != 2 or shape[0] != yshape[0]):
                # broadcast along the batch axis, every fit would get one fit's values
                raise ValueError(
                    f"f: with batched=True returned shape {tuple(shape)}, expected ydata's "
                    f"shape {yshape} (or (B, 1)): one row per fit. Each parameter is passed "
                    "as a (B, 1) column; indexing it (a[0]) or reducing over it drops the "
                    "batch axis")
            try:
                r = xp.broadcast_to(r, ydata.shape)
            except Exception as e:
                raise ValueError(
                    f"f: returned shape {tuple(shape)}, expected ydata's shape {yshape}"
                    + xdata_hint(xdata, yshape)) from e
        if not (cplx and L is None) or rdt == dtype:  # (real parameters: no dtype compare)
            r = r - ydata
        r = r if wfun is None else wfun(r)
        return r if omit is None else xp.where(omit, xp.zeros_like(r), r)

    if not batched:
        def point_rows(P):
            """``[residual(p) for p in P]`` of the difference points ``P`` (k, n) of one fit
            (a NumPy array: the one-point layer's, which calls it); for the complex step's,
            which parameters of each point are complex (its imaginary part nonzero, as
            :func:`split`) read for all of them at once."""
            pd = P.dtype
            if not (pd is not dtype and pd != dtype and _is_complex(pd)):  # (as residual)
                return [checked(f(xdata, *[p[j] for j in cols]), False) for p in P]
            # (the entries as Python complex numbers: their imaginary parts compared on
            # the host, as split does; f's parameters P[r, j] or its real part, NumPy
            # scalars as split's)
            re = xp.real(P)
            return [checked(f(xdata, *[P[r, j] if v.imag != 0 else re[r, j]
                                       for j, v in zip(cols, row)]), True)
                    for r, row in enumerate(P.tolist())]

        residual._agnopt_point_rows = point_rows

    # rows hook: least_squares may evaluate a subset of the problems (those
    # still running) when xdata is shared by all of them (not an array with
    # a problem axis); it checks the subset model against the full one once
    # and falls back to evaluating all rows if they disagree.
    shared_x = hasattr(xdata, "shape") and getattr(xdata, "ndim", 2) <= 1
    if batched and shared_x:
        def rows_hook(idx):
            y_r = xp.take(ydata, idx, axis=0)
            inv_r = None if wfun is None else xp.take(inv, idx, axis=0)
            omit_r = None if omit is None else xp.take(omit, idx, axis=0)

            def res_r(p):
                r = f(xdata, *split(p))
                if not (hasattr(r, "shape") and hasattr(r, "dtype")):
                    r = xp.asarray(r, dtype=dtype, device=dev)
                if (r.dtype == dtype or not _complex_step_point(p)
                        or tuple(r.shape) != tuple(y_r.shape)):
                    r = r - y_r
                r = r if inv_r is None else r * inv_r
                return r if omit_r is None else xp.where(omit_r, xp.zeros_like(r), r)

            jac_r = None
            if callable(jac):
                def jac_r(p):
                    J = jac(xdata, *split(p))
                    if not (hasattr(J, "shape") and hasattr(J, "dtype")):
                        J = xp.asarray(J, dtype=dtype, device=dev)
                    J = J if inv_r is None else J * inv_r[..., None]
                    return J if omit_r is None else xp.where(omit_r[..., None], xp.zeros_like(J), J)
            return res_r, jac_r

        residual._agnopt_rows = rows_hook

    # made anew for each call (around its data and weights): no whole-solve
    # program on JAX (agnopt._least_squares.jax_solve could not reuse it)
    residual._agnopt_whole_solve = False

    if callable(jac):
        user_jac = jac

        def jac_w(p):
            J = user_jac(xdata, *split(p))
            if not (hasattr(J, "shape") and hasattr(J, "dtype")):
                J = xp.asarray(J, dtype=dtype, device=dev)
            if wfun is not None:
                J = xp.linalg.solve(L, J) if L is not None else J * inv[..., None]
            return J if omit is None else xp.where(omit[..., None], xp.zeros_like(J), J)

        ls_jac = jac_w
    elif jac is None:
        ls_jac = None  # least_squares' default: complex step, 3-point fallback
    else:
        ls_jac = jac

    return residual, ls_jac
