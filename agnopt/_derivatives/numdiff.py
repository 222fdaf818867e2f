"""Finite-difference and complex-step derivatives, written once against the Array API.

:func:`approx_derivative` reproduces the step rules of
``scipy.optimize._numdiff.approx_derivative`` (dense case) on any Array API
backend: the same relative steps, the same exactly-representable step
recomputation, and the same one-sided / shrunken steps near bounds.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

from .. import _kernels
from .._core import lazy
from .._core.backend import compiled, device_scope, namespace_name, resolve
from .._core.typing import Array, ArrayLike
from .._core.user_code import note
from .cs_check import cs_check_points, cs_check_verdict  # noqa: F401 (re-exported)

__all__ = ["approx_derivative"]

_METHODS = ("2-point", "3-point", "cs")


def _as_bound(xp: Any, b: Any, x0: Any, what: str) -> Any:
    """``b`` (scalar or array-like) as an array of ``x0``'s dtype/device broadcast to x0."""
    if hasattr(b, "shape") and hasattr(b, "dtype"):
        try:
            arr = xp.asarray(b, dtype=x0.dtype, device=_dev(x0))
        except Exception:
            # An array of another library (e.g. a NumPy bound for torch x0).
            arr = xp.asarray(_tolist(b), dtype=x0.dtype, device=_dev(x0))
    elif isinstance(b, (list, tuple)):
        arr = xp.asarray(b, dtype=x0.dtype, device=_dev(x0))
    else:
        arr = xp.asarray(float(b), dtype=x0.dtype, device=_dev(x0))
    try:
        arr = xp.broadcast_to(arr, x0.shape)
    except Exception as e:
        raise ValueError(
            f"bounds: {what} bound of shape {tuple(arr.shape)} does not broadcast to "
            f"x0's shape {tuple(x0.shape)}"
        ) from e
    return arr


def _tolist(b: Any) -> Any:
    t = getattr(b, "tolist", None)
    if t is not None:
        return t()
    return [float(v) for v in b]


def _dev(x: Any) -> Any:
    from array_api_compat import device

    return device(x)


def prepare_bounds(xp: Any, bounds: Any, x0: Any) -> tuple[Any, Any]:
    """``(lb, ub)`` as arrays broadcast to ``x0``'s shape, dtype and device."""
    try:
        lb, ub = bounds
    except (TypeError, ValueError) as e:
        raise ValueError("bounds: expected a pair (lb, ub)") from e
    return _as_bound(xp, lb, x0, "lower"), _as_bound(xp, ub, x0, "upper")


_EPS_CACHE: dict = {}


def _eps_for_method(xp: Any, x_dtype: Any, f_dtype: Any, method: str) -> float:
    """scipy's ``_eps_for_method``: eps of x's dtype, or of f's if f is narrower
    (remembered per namespace, dtypes and method: ``finfo`` / ``isdtype`` are
    slow next to one small Jacobian)."""
    try:
        key = (xp, x_dtype, f_dtype, method)
        return _EPS_CACHE[key]
    except KeyError:
        val = _EPS_CACHE[key] = _eps_uncached(xp, x_dtype, f_dtype, method)
        return val
    except TypeError:  # pragma: no cover - unhashable dtype objects
        return _eps_uncached(xp, x_dtype, f_dtype, method)


def _eps_uncached(xp: Any, x_dtype: Any, f_dtype: Any, method: str) -> float:
    eps = float(xp.finfo(x_dtype).eps)
    try:
        if xp.isdtype(f_dtype, "real floating"):
            eps = max(eps, float(xp.finfo(f_dtype).eps))
        elif xp.isdtype(f_dtype, "complex floating"):
            eps = max(eps, float(xp.finfo(f_dtype).eps))
    except Exception:  # pragma: no cover - exotic f dtype
        pass
    if method == "3-point":
        return eps ** (1.0 / 3.0)
    return eps**0.5


def _absolute_step(
    xp: Any, rel_step: Any, abs_step: Any, x0: Any, rstep: float, cs: bool = False,
    dev: Any = None,
) -> Any:
    """scipy's ``_compute_absolute_step`` (and its ``abs_step`` branch)."""
    if (cs and abs_step is None and type(rel_step) is float
            and math.frexp(rel_step)[0] == 0.5):
        # The complex step's relative step, a power of 2 (eps): the same numbers
        # in fewer operations. ``r * sign(x) * |x|`` is ``r * x`` (a product by a
        # power of 2, and rounding is symmetric in the sign) except for the sign
        # of a zero, and a zero step gets the default step, which there is
        # ``rstep * sign(x)``: ``r |x| == 0`` needs ``|x| < 1``, where
        # ``max(1, |x|) = 1``. ``sign(x)`` is +1 where ``x >= 0`` (-0 included)
        # and -1 elsewhere: the sign bit of ``x + 0`` (``-0 + 0`` is ``+0``;
        # a NaN ``x`` gives a NaN ``h``, kept), so ``rstep * sign(x)`` is
        # ``copysign(rstep, x + 0)``, ``rstep`` rounded to ``x``'s dtype either way.
        h = rel_step * x0
        return xp.where(h == 0, xp.copysign(xp.full_like(x0, rstep), x0 + 0.0), h)
    one = xp.ones_like(x0)
    sign_x0 = xp.where(x0 >= 0, one, -one)
    ax = xp.abs(x0)
    default = rstep * sign_x0 * xp.maximum(one, ax)
    if abs_step is not None:
        h = _as_step(xp, abs_step, x0, "abs_step", dev)
    elif rel_step is None:
        return default
    else:
        # a power of 2 (the complex step's eps) is exact in every float dtype: as a
        # Python float (weak scalar) it multiplies as its 0-d array would, one
        # array creation fewer per Jacobian
        exact = type(rel_step) is float and math.frexp(rel_step)[0] == 0.5
        r = rel_step if exact else _as_step(xp, rel_step, x0, "rel_step", dev)
        h = r * sign_x0 * ax
    if cs:
        # the complex step is not added to the real part: only h == 0 is unusable
        return xp.where(h == 0, default, h)
    dx = (x0 + h) - x0
    return xp.where(dx == 0, default, h)


def _as_step(xp: Any, s: Any, x0: Any, what: str, dev: Any = None) -> Any:
    dev = _dev(x0) if dev is None else dev
    if hasattr(s, "shape") and hasattr(s, "dtype"):
        try:
            arr = xp.asarray(s, dtype=x0.dtype, device=dev)
        except Exception:
            arr = xp.asarray(_tolist(s), dtype=x0.dtype, device=dev)
    elif isinstance(s, (list, tuple)):
        arr = xp.asarray(s, dtype=x0.dtype, device=dev)
    else:
        # a number: a 0-d array broadcasts against x0 in the arithmetic
        return xp.asarray(float(s), dtype=x0.dtype, device=dev)
    try:
        return xp.broadcast_to(arr, x0.shape)
    except Exception as e:
        raise ValueError(f"{what}: shape {tuple(arr.shape)} does not broadcast to x0's shape {tuple(x0.shape)}") from e


def _adjust_scheme_to_bounds(xp, x0, h, num_steps, scheme, lb, ub):
    """scipy's ``_adjust_scheme_to_bounds`` with ``where`` instead of masked assignment.

    Returns ``(h_adjusted, use_one_sided)`` (a boolean array).
    """
    lower_dist = x0 - lb
    upper_dist = ub - x0
    if scheme == "1-sided":
        use_one_sided = xp.ones(x0.shape, dtype=xp.bool, device=_dev(x0))
        h_total = h * num_steps
        x = x0 + h_total
        violated = (x < lb) | (x > ub)
        fitting = xp.abs(h_total) <= xp.maximum(lower_dist, upper_dist)
        h_adj = xp.where(violated & fitting, -h, h)
        forward = (upper_dist >= lower_dist) & ~fitting
        h_adj = xp.where(forward, upper_dist / num_steps, h_adj)
        backward = (upper_dist < lower_dist) & ~fitting
        h_adj = xp.where(backward, -lower_dist / num_steps, h_adj)
        return h_adj, use_one_sided
    # 2-sided
    h = xp.abs(h)
    h_total = h * num_steps
    central = (lower_dist >= h_total) & (upper_dist >= h_total)
    forward = (upper_dist >= lower_dist) & ~central
    h_adj = xp.where(forward, xp.minimum(h, 0.5 * upper_dist / num_steps), h)
    backward = (upper_dist < lower_dist) & ~central
    h_adj = xp.where(backward, -xp.minimum(h, 0.5 * lower_dist / num_steps), h_adj)
    use_one_sided = forward | backward
    min_dist = xp.minimum(upper_dist, lower_dist) / num_steps
    adjusted_central = ~central & (xp.abs(h_adj) <= min_dist)
    h_adj = xp.where(adjusted_central, min_dist, h_adj)
    use_one_sided = use_one_sided & ~adjusted_central
    return h_adj, use_one_sided


def _complex_dtype(xp: Any, dtype: Any) -> Any:
    name = None
    if dtype == getattr(xp, "float64", None):
        name = "complex128"
    elif dtype == getattr(xp, "float32", None):
        name = "complex64"
    cdt = getattr(xp, name, None) if name else None
    if cdt is None:
        raise TypeError(
            f"method='cs' (complex step) needs a complex dtype matching {dtype}, which "
            f"the backend {namespace_name(xp)} does not provide; use '2-point' or "
            "'3-point' instead"
        )
    return cdt


_FD_NOTE = "agnopt: raised while evaluating fun at a finite-difference point (the Jacobian)"


def _call(fun, x, args, kwargs, xp, dtype, dev):
    try:
        f = fun(x, *args, **kwargs)
    except Exception as e:  # propagates with its own type (as scipy), with a note
        note(e, _FD_NOTE)
        raise
    if not (hasattr(f, "shape") and hasattr(f, "dtype")):
        f = xp.asarray(f, dtype=dtype, device=dev)
    return f


def point_caller(fun, args, kwargs, xp, dtype, dev):
    """``call(x)``: :func:`_call` of ``fun`` with these arguments, as one closure (made
    once per solve by a caller that forms many Jacobians: one Python call per
    evaluation fewer)."""
    if args or kwargs:
        def call(x):
            return _call(fun, x, args, kwargs, xp, dtype, dev)
        return call

    def call0(x):
        try:
            f = fun(x)
        except Exception as e:  # as _call
            note(e, _FD_NOTE)
            raise
        if not (hasattr(f, "shape") and hasattr(f, "dtype")):
            f = xp.asarray(f, dtype=dtype, device=dev)
        return f
    return call0


def approx_derivative(
    fun: Callable[..., Array],
    x0: Array,
    method: str = "2-point",
    rel_step: float | Array | None = None,
    abs_step: float | Array | None = None,
    f0: Array | None = None,
    bounds: tuple[ArrayLike, ArrayLike] = (-math.inf, math.inf),
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    batched: bool = False,
) -> Array:
    r"""Finite-difference (or complex-step) Jacobian of ``fun`` at ``x0``, on any backend.

    Reproduces ``scipy.optimize._numdiff.approx_derivative`` (dense Jacobians),
    written once against the Array API so the arrays stay on their backend
    and device.

    Parameters
    ----------
    fun : callable
        ``fun(x, *args, **kwargs)``. Unbatched: ``x`` of shape ``(n,)`` (a 0-d
        ``x0`` is treated as ``(1,)``), returning ``(m,)`` or a 0-d array
        (a scalar function). Batched: ``x`` of shape ``(B, n)`` returning
        ``(B, m)`` or ``(B,)``; row ``b`` of the output must depend on row
        ``b`` of the input only. An exception it raises propagates with its
        own type and message (as scipy), with a note naming the
        finite-difference point.
    x0 : array
        The point, of a real floating dtype.
    method : {"2-point", "3-point", "cs"}
        * ``"2-point"``: forward differences :math:`(f(x+h e_j) - f(x))/h`,
          error :math:`O(h)`.
        * ``"3-point"``: central differences :math:`(f(x+h e_j)-f(x-h e_j))/(2h)`,
          or the one-sided second-order formula
          :math:`(-3f(x) + 4f(x+h e_j) - f(x+2h e_j))/(2h)` next to a bound,
          error :math:`O(h^2)`.
        * ``"cs"``: complex step :math:`\operatorname{Im} f(x + i h e_j)/h`.
          Exact to rounding for functions that are analytic in complex
          arithmetic (no subtractive cancellation); ``fun`` must accept complex
          input (no ``abs``, comparisons or ``real``-only functions in the path).
          Raises ``TypeError`` if the backend has no matching complex dtype.
          Bounds are not needed: only the imaginary part is perturbed.
          The result is only as exact as the backend's complex functions:
          CuPy and torch on CUDA compute ``z ** p`` as ``exp(p * log(z))``,
          which gives a negative real ``z`` a spurious imaginary part of
          order ``eps * |z ** p|`` (``(-2 + 0j) ** 3`` has imaginary part
          ``8 sin(3 fl(pi)) = 2.9e-15``); divided by the step ``h ~ 1.5e-8``
          that is a relative error ~1e-7 in every column. Write integer
          powers as products (``z * z * z``) for complex-step-exact results
          there (NumPy and torch on the CPU multiply for small integer
          exponents).
    rel_step : float or array, optional
        Relative step. The absolute step is
        ``h = rel_step * sign(x0) * |x0|`` (with ``sign(0) = 1``). Default
        (scipy's): ``h = r * sign(x0) * max(1, |x0|)`` with ``r = eps**(1/2)``
        for "2-point" and "cs" and ``r = eps**(1/3)`` for "3-point", where
        ``eps`` is the machine epsilon of ``x0``'s dtype (of ``f0``'s dtype if
        that is wider-eps, as scipy does). Where ``(x0 + h) - x0 == 0`` the
        default step is used instead (for "cs" only where ``h == 0``: the
        imaginary step never cancels against ``x0``, so any nonzero step is
        usable; tiny steps such as ``rel_step=eps`` make it exact to rounding
        even for parameters far smaller than 1).
    abs_step : float or array, optional
        Absolute step (sign as given); falls back to the default rule where it
        vanishes against ``x0``.
    f0 : array, optional
        ``fun(x0)`` if already known (saves one evaluation).
    bounds : (lb, ub)
        Scalars or arrays broadcastable to ``x0``. ``x0`` must satisfy them.
        Finite-difference points stay inside: as in scipy, a forward step
        that leaves the box is flipped when it fits on the other side or
        else shrunk to the distance to the farther bound ("2-point"); a
        central step that does not fit becomes a one-sided second-order
        step, shrunk if needed ("3-point").
    args, kwargs :
        Extra arguments for ``fun``.
    batched : bool
        ``x0`` has shape ``(B, n)``; ``fun`` maps ``(B, n) -> (B, m)``
        (or ``(B,)``). Every problem gets its own steps; ``fun`` is called
        once per column (``n`` or ``2n`` times), not ``B`` times.

    Returns
    -------
    J : array
        Unbatched: ``(m, n)``, or the gradient ``(n,)`` when ``fun`` returns a
        0-d array. Batched: ``(B, m, n)``, or ``(B, n)`` when ``fun`` returns
        ``(B,)``. Same backend, device and (real) dtype as ``fun``'s output.
    """
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    kwargs = {} if kwargs is None else kwargs
    xp, dev = resolve(x0, "x0")
    # CuPy: array-api-compat ignores device= in eye/ones_like/...: work in x0's device context
    with device_scope(dev):
        return _approx_derivative(fun, x0, method, rel_step, abs_step, f0, bounds, args, kwargs,
                                  batched, xp, dev)


def _approx_derivative(fun, x0, method, rel_step, abs_step, f0, bounds, args, kwargs, batched, xp, dev):
    """The body of :func:`approx_derivative` (arguments checked, ``xp`` and ``dev`` resolved)."""
    scalar_x = False
    if batched:
        if x0.ndim != 2:
            raise ValueError(
                f"x0: with batched=True expected shape (B, n), got {tuple(x0.shape)}"
            )
    else:
        if x0.ndim == 0:
            scalar_x = True
            x0 = xp.reshape(x0, (1,))
        elif x0.ndim != 1:
            raise ValueError(
                f"x0: expected a 1-D array of shape (n,), got shape {tuple(x0.shape)} "
                "(use batched=True for a batch of problems)"
            )
    dtype = x0.dtype

    def call(x):
        xx = xp.reshape(x, ()) if scalar_x else x
        return _call(fun, xx, args, kwargs, xp, dtype, dev)

    if f0 is None:
        f0 = call(x0)
    elif not (hasattr(f0, "shape") and hasattr(f0, "dtype")):
        f0 = xp.asarray(f0, dtype=dtype, device=dev)
    if batched:
        if f0.ndim not in (1, 2) or f0.shape[0] != x0.shape[0]:
            raise ValueError(
                f"fun: with batched=True expected output of shape (B,) or (B, m) with "
                f"B = {x0.shape[0]}, got {tuple(f0.shape)}"
            )
    elif f0.ndim > 1:
        raise ValueError(
            f"fun: expected a 0-d or 1-D output, got shape {tuple(f0.shape)}"
        )
    scalar_f = f0.ndim == (1 if batched else 0)

    lb, ub = prepare_bounds(xp, bounds, x0)
    if bool(xp.any((x0 < lb) | (x0 > ub))):
        raise ValueError("x0 violates bound constraints (bounds)")
    return _columns(call, x0, f0, scalar_f, method, rel_step, abs_step, lb, ub, batched, xp, dev)


def fd_jacobian(fun, x0, f0, method, rel_step, lb, ub, args, kwargs, batched, xp, dev,
                cache=None):
    """:func:`approx_derivative` for a caller that has checked its arguments already.

    The least-squares evaluator calls this once per Jacobian: ``x0`` is
    ``(n,)`` (``(B, n)`` batched) inside the bounds ``lb``, ``ub`` (arrays of
    ``x0``'s shape, dtype and device; not read for ``"cs"``; both ``None``
    when every bound is infinite, which skips the steps' bound rules), ``f0 =
    fun(x0)`` is an array of shape ``(m,)`` (``(B, m)``), and ``xp``,
    ``dev`` are ``x0``'s namespace and device. Same arithmetic as
    :func:`approx_derivative`, without re-resolving the backend, re-building
    the bounds and re-checking feasibility on every call (per-call
    overhead that dominates small problems). ``cache``: a dict the caller
    keeps for one solve (same ``n``, dtype and device), in which the
    identity and the complex unit are made once.
    """
    dtype = x0.dtype
    call = point_caller(fun, args, kwargs, xp, dtype, dev)
    if cache is not None and not batched:
        # one point: whether it is one float64 NumPy point with numba's blocks on
        # (_cs_points_one), asked once per solve (the caller's cache) instead of per Jacobian
        one = cache.get("one")
        if one is None:
            one = cache["one"] = _cs_points_one(x0) and f0.dtype == dtype
        if one:
            J = _one_point.one_point_jacobian(call, x0, f0, method, rel_step, lb, xp, cache)
            if J is not None:
                return J
    with device_scope(dev):
        return _columns(call, x0, f0, False, method, rel_step, None, lb, ub, batched, xp, dev,
                        cache)


def _columns(call, x0, f0, scalar_f, method, rel_step, abs_step, lb, ub, batched, xp, dev,
             cache=None):
    """The steps and the ``n`` difference quotients of :func:`approx_derivative`."""
    dtype = x0.dtype
    n = x0.shape[-1]
    cache = {} if cache is None else cache
    rstep = _eps_for_method(xp, dtype, f0.dtype, method)
    if method == "cs":
        if "cdt" not in cache:
            cache["cdt"] = _complex_dtype(xp, dtype)
        return _cs_columns(call, x0, scalar_f, rel_step, abs_step, rstep, batched, xp, dev,
                           cache["cdt"], cache)
    if (method == "2-point" and lb is None and x0.ndim == 1 and rel_step is None
            and abs_step is None and not scalar_f and _cs_points_one(x0)):
        # one float64 NumPy point without bounds, numba on: the same points and
        # steps, compiled (agnopt._kernels.lm_route.fd_points)
        X1, dx = sys.modules["agnopt._kernels.lm_route"].fd_points(x0, rstep)
        J = xp.concat([call(X1[j, ...])[..., None] for j in range(n)], axis=-1) - f0[..., None]
        return J / dx
    h = _absolute_step(xp, rel_step, abs_step, x0, rstep, dev=dev)
    one_sided = None
    if lb is None:
        # no bounds (the caller's word): what _adjust_scheme_to_bounds returns for
        # infinite bounds, without its dozen operations: the forward step as it
        # is, the central step |h|, no one-sided step
        if method != "2-point":
            h = xp.abs(h)
    elif method == "2-point":
        h, one_sided = _adjust_scheme_to_bounds(xp, x0, h, 1, "1-sided", lb, ub)
    else:
        h, one_sided = _adjust_scheme_to_bounds(xp, x0, h, 1, "2-sided", lb, ub)
    eye = cache.get("eye")
    if eye is None:
        eye = cache["eye"] = xp.eye(n, dtype=dtype, device=dev)
    if method == "2-point":
        return _forward_columns(call, x0, f0, h, eye, batched, scalar_f, xp)

    cols = []  # 3-point (2-point: _forward_columns)
    for j in range(n):
        ej = eye[j, :]
        if batched:
            hj = h[:, j : j + 1] * ej  # (B, n), zero off column j
        else:
            hj = h[j] * ej
        xm = x0 - hj
        x1 = x0 + hj
        x2 = x0 + 2.0 * hj
        oj = None if one_sided is None else one_sided[..., j]
        # central: (f(x+h) - f(x-h)) / (x+h - (x-h)); one-sided: (-3f0+4f1-f2)/(x+2h - x)
        # (traced, agnopt._least_squares.jax_solve: the mixed branch, same numbers)
        if oj is None or lazy.known_all(xp, ~oj):
            dx = x1[..., j] - xm[..., j]
            df = call(x1) - call(xm)
        elif lazy.known_all(xp, oj):
            f1 = call(x1)
            f2 = call(x2)
            dx = x2[..., j] - x0[..., j]
            df = -3.0 * f0 + 4.0 * f1 - f2
        else:  # batched, mixed: evaluate both schemes and pick per problem
            fm = call(xm)
            f1 = call(x1)
            f2 = call(x2)
            dx = xp.where(oj, x2[..., j] - x0[..., j], x1[..., j] - xm[..., j])
            sel = oj if (scalar_f or oj.ndim == 0) else oj[:, None]
            df = xp.where(sel, -3.0 * f0 + 4.0 * f1 - f2, f1 - fm)
        if batched and not scalar_f:
            dx = dx[:, None]
        cols.append(df / dx)
    return xp.stack(cols, axis=-1)  # (m, n) or (B, m, n); scalar f: (n,) or (B, n)


def _forward_columns(call, x0, f0, h, eye, batched, scalar_f, xp):
    """The ``"2-point"`` quotients ``(f(x0 + h_j e_j) - f0) / ((x0 + h_j e_j)_j - x0_j)``
    of :func:`_columns`: the ``n`` points as one array (``(n, n)``, ``(n, B, n)``
    batched) whose slice ``j`` is ``x0 + h_j e_j``, and one division of the
    stacked differences (the same sums and quotients, entry by entry, as one
    column at a time)."""
    n = x0.shape[-1]
    if batched:
        X1 = x0 + xp.matrix_transpose(h)[:, :, None] * eye[:, None, :]  # X1[j] = x0 + h[:, j:j+1] e_j
    else:
        X1 = x0 + h[:, None] * eye  # X1[j] = x0 + h_j e_j
    pts = [X1[j, ...] for j in range(n)]
    # entry j of point j is x0_j + h_j (h_j * 1 is exact): the steps taken are
    # (x0 + h) - x0, the same numbers as read from the points, in two operations
    dx = (x0 + h) - x0
    # one subtraction of f0 from the concatenated columns: the same differences
    J = xp.concat([call(pt)[..., None] for pt in pts], axis=-1) - f0[..., None]
    return J / (dx[:, None, :] if batched and not scalar_f else dx)


def _cs_columns(call, x0, scalar_f, rel_step, abs_step, rstep, batched, xp, dev, cdt, cache):
    """The complex-step Jacobian: ``imag(f(x0 + i h_j e_j)) / h_j`` for the ``n`` columns.

    The points (and the steps ``h``, unless given as arrays) come from one
    block and the quotients from another (:func:`cs_points`,
    :func:`cs_quotients`: one compiled program each on JAX), around the ``n``
    evaluations of ``fun``. ``cache``: the caller's dict of constants (the
    identity and the complex unit are made once there).
    """
    if cache.get("ieye") is None:
        cache["ieye"] = imaginary_identity(xp, x0.shape[-1], x0.dtype, cdt, dev)
    ieye = cache["ieye"]
    if (x0.ndim == 1 and abs_step is None and type(rel_step) is float
            and math.frexp(rel_step)[0] == 0.5 and _cs_points_one(x0)):
        # one float64 NumPy point with numba on: the same points, compiled
        # (agnopt._kernels.lm_route.cs_points)
        P, h = sys.modules["agnopt._kernels.lm_route"].cs_points(x0, rel_step, rstep)
        pts = tuple(P[j, ...] for j in range(x0.shape[0]))
    elif abs_step is None and (rel_step is None or isinstance(rel_step, (int, float))):
        # the steps follow from x0 and Python numbers: inside the points' block
        pts, h = _cs_points(xp, x0, None, rel_step, rstep, cdt, dev, ieye)
    else:
        h = _absolute_step(xp, rel_step, abs_step, x0, rstep, cs=True, dev=dev)
        pts, h = _cs_points(xp, x0, h, None, rstep, cdt, dev, ieye)
    fcs = []
    for pt in pts:
        fc = call(pt)
        if fc.dtype != cdt and not xp.isdtype(fc.dtype, "complex floating"):
            raise ValueError(_REAL_OUTPUT)
        fcs.append(fc)
    return _cs_quotients(xp, tuple(fcs), h, batched and not scalar_f)


_REAL_OUTPUT = ("fun returned a real array for complex input, so the complex step cannot see "
                "the derivative; method='cs' needs fun to be written in complex-safe "
                "arithmetic (or use '2-point' / '3-point')")


def _cs_points_one(x0) -> bool:
    """Whether :func:`_columns` takes the compiled points of one float64 NumPy
    point ``x0`` (n,): numba's blocks for one problem are on in this process
    (they are compiled, so imported, by the process's first fit that used them)."""
    if type(x0).__module__ != "numpy" or x0.dtype.char != "d":
        return False
    lm_route = _kernels.loaded("lm_route")
    return lm_route is not None and lm_route.on()


def imaginary_identity(xp, n, dtype, cdt, dev):
    """``i I``: the ``(n, n)`` identity of the real ``dtype`` as complex ``cdt``, times
    ``1j`` (entries ``+0 + 1j`` on the diagonal, ``+0 + 0j`` elsewhere)."""
    return (xp.astype(xp.eye(n, dtype=dtype, device=dev), cdt)
            * xp.asarray(1j, dtype=cdt, device=dev))


def cs_points(xp, x0, h, rel_step, rstep, cdt, dev, ieye=None):
    """The complex-step points ``x0 + i h_j e_j`` (a tuple of ``n``, each of ``x0``'s
    shape: ``(n,)`` or ``(B, n)``, complex dtype ``cdt``) and the steps ``h``
    (``x0``'s shape); ``h`` ``None``: scipy's absolute step from ``rel_step``
    (a number or ``None``) and ``rstep``. ``dev``: ``x0``'s device; ``ieye``
    (:func:`imaginary_identity`, ``(n, n)`` of ``cdt``): made here when not
    given.

    All ``n`` points come from one array ``(n, n)`` (``(n, B, n)``) whose
    slice ``j`` is ``x0 + (h_j + 0i) (i e_j)``: the same numbers, entry by
    entry, as forming each point on its own (every product in the complex
    multiplication is by 0 or 1, so exact, with the signs of zero of
    ``(h_j e_j + 0i) (0 + 1i)``), in a few operations for all columns."""
    if h is None:
        h = _absolute_step(xp, rel_step, None, x0, rstep, cs=True, dev=dev)
    n = x0.shape[-1]
    if ieye is None:
        ieye = imaginary_identity(xp, n, x0.dtype, cdt, dev)
    hc = xp.astype(h, cdt)
    if x0.ndim == 2:
        IH = xp.matrix_transpose(hc)[:, :, None] * ieye[:, None, :]  # IH[j] = i h[:, j:j+1] e_j
    else:
        IH = hc[:, None] * ieye  # IH[j] = i h_j e_j
    P = xp.astype(x0, cdt) + IH
    return tuple(P[j, ...] for j in range(n)), h


def cs_quotients(xp, fcs, h, per_row):
    """``J[..., j] = imag(fcs[j]) / h[..., j]``, stacked on the last axis (``per_row``:
    batched vector outputs, ``h`` (B, n) divides rows). One stack and one division
    (the same quotients, entry by entry, as one column at a time)."""
    # (a concatenation of the columns: the same array as their stack, made faster)
    im = xp.concat([xp.imag(fc)[..., None] for fc in fcs], axis=-1)
    return im / (h[:, None, :] if per_row else h)


# one compiled program each on JAX (agnopt._core.backend.compiled), as written elsewhere
_cs_points = compiled(cs_points, static=("rel_step", "rstep", "cdt", "dev"))
_cs_quotients = compiled(cs_quotients, static=("per_row",))

# fd_jacobian's one-point layer (it uses the functions above; read at call time)
from . import one_point as _one_point

