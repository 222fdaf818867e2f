"""Argument checks of ``least_squares`` / ``curve_fit`` with scipy's rules and messages.

Tolerances (``None`` switches a test off), the options agnopt accepts only at
scipy's default (``tr_solver``, ``tr_options``, ``jac_sparsity``, ``workers``),
losses, ``Bounds``-like objects, scipy's two callback conventions, and the
conversion of user input to arrays.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import array_api_compat

from .._core.backend import namespace_name
from .._core.typing import Array

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


def check_tolerances(method: str, ftol: Any, xtol: Any, gtol: Any) -> tuple:
    """``(ftol, xtol, gtol)`` as floats, with scipy's rules.

    ``None`` switches a test off (it becomes 0: the strict tests
    ``dF < ftol F``, ``||dx|| < xtol (xtol + ||x||)``, ``||g|| < gtol`` never
    hold then). For ``"lm"`` every tolerance must be at least float64's eps
    (MINPACK has no way to switch a test off); for the other methods a
    tolerance below eps draws scipy's warning, and at least one must be
    at least eps. Negative, NaN or non-real tolerances are a ``ValueError``.
    """
    out = []
    for name, tol in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        if tol is None:
            out.append(0.0)
            continue
        try:
            t = float(tol)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: expected a non-negative float or None, got {tol!r}") from e
        if not t >= 0:
            raise ValueError(f"{name}: expected a non-negative float or None, got {tol!r}")
        if t < EPS64 and method != "lm":
            warnings.warn(
                f"Setting `{name}` below the machine epsilon ({EPS64:.2e}) effectively "
                "disables the corresponding termination condition.", UserWarning, stacklevel=3)
        out.append(t)
    if method == "lm" and min(out) < EPS64:
        raise ValueError(
            f"ftol, xtol, gtol: all tolerances must be at least machine epsilon ({EPS64:.2e}) "
            f"for method 'lm' (scipy's rule; None is not allowed), got "
            f"ftol={ftol!r}, xtol={xtol!r}, gtol={gtol!r}")
    if max(out) < EPS64:
        raise ValueError(
            f"ftol, xtol, gtol: at least one of the tolerances must be at least machine "
            f"epsilon ({EPS64:.2e}), got ftol={ftol!r}, xtol={xtol!r}, gtol={gtol!r}")
    return tuple(out)


def check_scipy_options(method: str, tr_solver: Any, tr_options: Any, jac_sparsity: Any,
                        workers: Any, diff_step: Any) -> None:
    """scipy's ``least_squares`` arguments that agnopt accepts only at their default.

    ``tr_solver``: ``None`` or ``"exact"`` (the dense SVD subproblem); for
    ``"lm"``, which has no choice of subproblem solver, scipy ignores it and so
    does agnopt. ``tr_options``: ignored as scipy does for ``"exact"`` and
    ``"lm"``. ``jac_sparsity`` (sparse finite differences) and ``workers``
    (parallel finite differences) are not supported: a ``ValueError`` naming
    the feature. ``diff_step``: ``None`` or a positive number / array.
    """
    if tr_solver not in (None, "exact", "lsmr"):
        raise ValueError(f"tr_solver: must be None, 'exact' or 'lsmr', got {tr_solver!r}")
    if tr_solver == "lsmr" and method != "lm":
        raise ValueError(
            "tr_solver='lsmr' (the iterative LSMR subproblem solver for sparse or operator "
            "Jacobians) is not supported by agnopt; use tr_solver=None or 'exact'")
    if tr_options is not None and not isinstance(tr_options, dict):
        raise TypeError(f"tr_options: expected a dict, got {type(tr_options).__name__}")
    if jac_sparsity is not None:
        raise ValueError(
            "jac_sparsity: sparse finite-difference Jacobians are not supported by agnopt "
            "(dense Jacobians only); pass jac_sparsity=None")
    if workers is not None and not (isinstance(workers, int) and workers == 1):
        raise ValueError(
            "workers: parallel evaluation of finite differences is not supported by agnopt; "
            "pass workers=None (batch many problems with batched=True instead)")
    if isinstance(diff_step, (int, float)) and not diff_step > 0:
        raise ValueError(f"diff_step: expected None or positive numbers, got {diff_step!r}")


def check_jacobian_kind(J: Any, method: str) -> None:
    """Sparse matrices and linear operators returned by ``jac`` are not supported."""
    mod = type(J).__module__ or ""
    if mod.startswith("scipy.sparse") and not hasattr(J, "matvec"):
        raise ValueError(
            "jac: returned a sparse matrix; sparse Jacobians are not supported by agnopt "
            f"(method {method!r} needs a dense array): return a dense array")
    if hasattr(J, "matvec") and hasattr(J, "rmatvec") and not hasattr(J, "__array_namespace__"):
        raise ValueError(
            "jac: returned a LinearOperator; operator Jacobians are not supported by agnopt "
            f"(method {method!r} needs a dense array): return a dense array")


def as_bounds_pair(bounds: Any) -> tuple:
    """``(lb, ub)`` from a pair or from a ``Bounds``-like object (``.lb`` / ``.ub``)."""
    if hasattr(bounds, "lb") and hasattr(bounds, "ub") and not isinstance(bounds, (tuple, list)):
        bounds = (bounds.lb, bounds.ub)
    elif isinstance(bounds, (tuple, list)) and len(bounds) != 2:
        raise ValueError(f"bounds: expected 2 elements (lb, ub) or a Bounds object, got {len(bounds)}")
    if isinstance(bounds, (tuple, list)):
        for name, b in zip(("lb", "ub"), bounds):
            check_no_nan_bound(b, name)
    return bounds


def check_no_nan_bound(b: Any, name: str) -> None:
    """Raise ``ValueError`` naming the first NaN entry of the bound ``b`` (``lb`` or
    ``ub``: a number, a nested list or an array of any backend). A NaN bound fails
    every comparison, so without this check it would be taken as no bound by some
    tests and as a bound by others."""
    if isinstance(b, (int, float)):
        if b != b:
            raise ValueError(f"bounds: {name} is nan; a bound is a number (-inf / inf: none)")
        return
    if not (hasattr(b, "shape") and hasattr(b, "dtype")):
        if not isinstance(b, (list, tuple)):
            return  # not a bound at all: as_array's errors name it later
        try:
            b = as_array(b, f"bounds ({name})")
        except (TypeError, ValueError):
            return
    xp = array_api_compat.array_namespace(b)
    if not xp.isdtype(b.dtype, "real floating"):
        return
    nan = xp.reshape(xp.isnan(b), (-1,))
    if bool(xp.any(nan)):
        i = int(xp.argmax(xp.astype(nan, xp.int8)))
        where = "" if b.ndim == 0 else f" entry {i}" + (
            "" if b.ndim == 1 else f" (flattened, shape {tuple(b.shape)})")
        raise ValueError(f"bounds: {name}{where} is nan; a bound is a number "
                         "(-inf / inf: none)")


def wrap_callback(callback: Any) -> Any:
    """scipy's calling convention: ``callback(intermediate_result=res)`` when its only
    parameter is named ``intermediate_result``, else ``callback(x)`` with a copy of
    ``x``. The engines call the result with an :class:`OptimizeResult`."""
    if callback is None:
        return None
    try:
        params = set(inspect.signature(callback).parameters)
    except (TypeError, ValueError):
        params = set()
    if params == {"intermediate_result"}:
        def wrapped(res):
            return callback(intermediate_result=res)
    else:
        def wrapped(res):
            x = res.x
            try:
                x = array_api_compat.array_namespace(x).asarray(x, copy=True)
            except (TypeError, ValueError, NotImplementedError):
                pass  # a backend that cannot copy here (immutable arrays need no copy)
            return callback(x)
    return wrapped


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


def as_array(x: Any, what: str) -> Array:
    """Arrays pass through; lists / tuples / numbers become NumPy float64 arrays.

    Complex values are a ``ValueError`` (``x must be real``, as scipy).
    """
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    import array_api_compat.numpy as np_xp  # default backend for plain Python input

    try:
        a = np_xp.asarray(x)
    except Exception as e:
        raise TypeError(f"{what}: expected an array, got {type(x).__name__}") from e
    if np_xp.isdtype(a.dtype, "complex floating"):
        raise ValueError(f"{what}: must be real, got complex values")
    try:
        return np_xp.asarray(a, dtype=np_xp.float64)
    except Exception as e:
        raise TypeError(f"{what}: expected an array of numbers, got {type(x).__name__}") from e


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


_NS_NAME: dict = {}  # array type -> its namespace's name (array_namespace is slow)


def check_backend(a: Any, xp: Any, what: str, ref: str = "x0") -> None:
    """TypeError when ``a`` is an array of another backend than ``xp``."""
    ta = type(a)
    name = _NS_NAME.get(ta)
    if name is not None and name == namespace_name(xp):
        return
    if ta in (int, float, bool) or not array_api_compat.is_array_api_obj(a):
        return
    try:
        xa = array_api_compat.array_namespace(a)
    except TypeError:
        return
    _NS_NAME[ta] = namespace_name(xa)
    if xa is not xp and namespace_name(xa) != namespace_name(xp):
        raise TypeError(
            f"{what}: got a {namespace_name(xa)} array but {ref} is a {namespace_name(xp)} "
            f"array; convert it to {ref}'s backend"
        )
