r"""Full-matrix Adagrad (Duchi, Hazan & Singer, 2011), and the symmetric
matrix functions that Shampoo and SOAP share with it.

Full-matrix Adagrad preconditions the gradient with a power of the sum of the
gradients' outer products,

.. math::
    H_t = H_0 + \sum_{s \le t} g_s g_s^\top, \qquad
    u_t = (H_t + \epsilon I)^{p}\, g_t,

with :math:`p = -1/2` in the paper (the regret-optimal choice) and
:math:`p = -1` the Gauss-Newton-like limit (the outer products estimate
:math:`J^\top J`). The whole parameter tree is flattened into one vector of
:math:`n` entries, so the state is :math:`n \times n` and each step costs one
symmetric eigendecomposition, :math:`O(n^3)`: this is for small parameter
vectors (``max_size``, default 4096). :func:`~agnopt.shampoo` is the
Kronecker-factored version for matrices.

Invariances (tested in ``tests/test_invariant_optimizers.py``): with
:math:`p = -1/2` the iterates do not depend on an orthogonal change of
coordinates :math:`\theta = Q\phi` (the eps term :math:`\epsilon I` is
rotation invariant); with :math:`p = -1` and :math:`\epsilon = 0` they do not
depend on any invertible linear map :math:`\theta = A\phi` once the
accumulated matrix has full rank (the state mapped as
:math:`H_\phi = A^\top H_\theta A`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._core.backend import resolve, resolve_dtype
from .._core.lazy import is_dask, to_local
from .._core.tree import tree_flatten, tree_unflatten
from .base import Transform, chain, check_state, trusted, validated_backend
from .transforms import (
    _number,
    add_decayed_weights,
    check_learning_rate,
    check_nonnegative,
    scale_by_learning_rate,
)

__all__ = [
    "ScaleByFullMatrixAdagradState",
    "full_matrix_adagrad",
    "psd_power",
    "scale_by_full_matrix_adagrad",
    "sym_eigh",
]


# --------------------------------------------------------------------------
# symmetric eigendecomposition and matrix powers (shared with shampoo, soap)
# --------------------------------------------------------------------------


def sym_eigh(xp: Any, a: Any) -> tuple[Any, Any]:
    """``(w, Q)`` with ``a = Q diag(w) Q^T``, eigenvalues ascending.

    ``xp.linalg.eigh`` on every backend that has it. Dask has no ``eigh``:
    the (small, preconditioner-sized) matrix is computed to the host with
    :func:`agnopt._core.lazy.to_local`, decomposed there with its own
    namespace, and the results are wrapped back into Dask arrays.
    """
    if is_dask(a):
        lxp, loc = to_local(xp, a)
        w, q = lxp.linalg.eigh(loc)
        return xp.asarray(w), xp.asarray(q)
    w, q = xp.linalg.eigh(a)
    return w, q


def psd_power(xp: Any, a: Any, power: float, eps: float = 0.0) -> Any:
    r"""``(a + eps I)^power`` of a symmetric positive semi-definite matrix, by ``eigh``.

    Eigenvalues :math:`|\lambda| \le n\, u\, \lambda_{max}` (:math:`u` the
    unit roundoff of the dtype, :math:`n` the size) are rounding noise of a
    zero eigenvalue (``eigh`` is backward stable to about that level): they
    are set to exactly 0 before ``eps`` is added, so the result does not
    depend on that noise (which differs between backends and between rotated
    copies of the same problem). For a negative ``power``, an eigenvalue
    whose :math:`\lambda + \epsilon` is still at or below that level maps to
    0, as a pseudo-inverse does, instead of amplifying noise. An all-zero
    matrix with ``eps = 0`` gives the zero matrix, never NaN.
    """
    w, q = sym_eigh(xp, a)
    n = a.shape[-1]
    zero = xp.zeros_like(w)
    level = xp.max(xp.abs(w)) * (n * xp.finfo(w.dtype).eps)
    wc = xp.where(w > level, w, zero) + eps
    if power < 0:
        ok = wc > level
        safe = xp.where(ok, wc, xp.ones_like(wc))
        f = xp.where(ok, safe**power, zero)
    else:
        f = wc**power
    return xp.matmul(q * f[None, :], xp.matrix_transpose(q))


def check_float_accumulator(xp: Any, dtype: Any, what: str) -> None:
    """``TypeError`` for a 16-bit dtype: eigendecompositions need float32 or wider."""
    if xp.finfo(dtype).bits < 32:
        raise TypeError(
            f"{what}: the preconditioner statistics need float32 or float64 for the "
            f"eigendecomposition, got {dtype}; pass {what}='float32'"
        )


def refresh_flag(xp: Any, count: Any, frequency: int) -> Any:
    """Whether step ``count`` (0-based) recomputes the preconditioner.

    A Python bool where the count can be read (eager backends; Dask computes
    the 0-d count), else (a JAX tracer under ``jit``) a 0-d boolean array:
    the caller then computes the new value every step and selects it with
    ``where``, the price of tracing a data-dependent branch without a
    backend-specific ``cond``.
    """
    if frequency == 1:
        return True
    from .._core.backend import is_concrete
    from .._core.lazy import compute

    if is_dask(count):
        (count,) = compute(count)
    if is_concrete(count):
        return int(count) % frequency == 0
    return (count % frequency) == 0


def select(xp: Any, flag: Any, new_fn: Any, old: Any) -> Any:
    """``new_fn()`` if ``flag`` else ``old``; ``flag`` a Python bool or a 0-d array."""
    if flag is True:
        return new_fn()
    if flag is False:
        return old
    return xp.where(flag, new_fn(), old)


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


# --------------------------------------------------------------------------
# full-matrix Adagrad
# --------------------------------------------------------------------------


class ScaleByFullMatrixAdagradState(NamedTuple):
    """``sum_outer``: :math:`H_t`, shape ``(n, n)`` for ``n`` parameters in all."""

    sum_outer: Any


def _flat_size(params: Any) -> int:
    return sum(math.prod(p.shape) for p in tree_flatten(params)[0])


def scale_by_full_matrix_adagrad(
    power: float = -0.5,
    eps: float = 1e-10,
    initial_accumulator_value: float = 0.0,
    *,
    max_size: int = 4096,
    accumulator_dtype: Any = None,
) -> Transform:
    r"""Full-matrix Adagrad's scaling (Duchi, Hazan & Singer, 2011, JMLR 12, Sec. 1).

    .. math::
        H_t = H_{t-1} + g_t g_t^\top,\quad H_0 = h_0 I, \qquad
        u_t = (H_t + \epsilon I)^{p}\, g_t

    where :math:`g_t` is the whole gradient tree flattened (leaf order of
    :func:`~agnopt.tree_flatten`, each leaf row-major) into one vector of
    :math:`n` entries. The power is computed by a symmetric eigendecomposition
    every step (see :func:`psd_power` for the treatment of zero eigenvalues).
    The paper adds :math:`\delta I` after the square root,
    :math:`(\delta I + H_t^{1/2})^{-1}`; here :math:`\epsilon I` is added to
    :math:`H_t` so that any ``power`` has one meaning.

    Parameters
    ----------
    power : float
        :math:`p < 0`: ``-0.5`` (the paper's Adagrad), ``-1`` (the
        Gauss-Newton-like limit, invariant to invertible linear maps).
    eps : float
        :math:`\epsilon \ge 0` added to the diagonal of :math:`H_t`.
    initial_accumulator_value : float
        :math:`h_0 \ge 0`.
    max_size : int
        Largest total parameter count :math:`n` accepted (the state holds
        :math:`n^2` numbers; each step is :math:`O(n^3)`).
    accumulator_dtype : dtype, optional
        dtype of :math:`H`; default: the result type of the leaves' dtypes.
        Must be float32 or float64.

    Raises
    ------
    ValueError
        ``power >= 0``, ``eps < 0``, or more than ``max_size`` parameters
        (at ``init``; the message suggests :func:`~agnopt.shampoo`).
    TypeError
        A 16-bit ``accumulator_dtype``; gradients of another backend or
        device than the parameters (from :func:`check_updates`).

    Notes
    -----
    Shapes and dtypes: Any tree of real floating arrays, ``n`` entries in all; the state is one
    ``(n, n)`` array on the parameters' device. Updates have the leaves'
    shapes and dtypes.
    """
    power = _number("power", power)
    if not power < 0:
        raise ValueError(f"power must be < 0 (-0.5: Adagrad, -1: Gauss-Newton-like), got {power}")
    eps = check_nonnegative("eps", eps)
    initial_accumulator_value = check_nonnegative("initial_accumulator_value", initial_accumulator_value)
    max_size = check_int("max_size", max_size, 1)

    def init(params):
        bk = resolve(params, "params")
        xp = bk.xp
        leaves = tree_flatten(params)[0]
        n = _flat_size(params)
        if n > max_size:
            raise ValueError(
                f"params: full_matrix_adagrad keeps an n x n matrix for the n = {n} parameters, "
                f"more than max_size = {max_size}; raise max_size or use shampoo for matrix parameters"
            )
        default = xp.result_type(*[p.dtype for p in leaves]) if len(leaves) > 1 else leaves[0].dtype
        dt = resolve_dtype(xp, accumulator_dtype, default, "accumulator_dtype")
        check_float_accumulator(xp, dt, "accumulator_dtype")
        h = xp.eye(n, dtype=dt, device=bk.device) * initial_accumulator_value
        return ScaleByFullMatrixAdagradState(sum_outer=h)

    @trusted
    def update(updates, state, params=None):
        check_state(state, ScaleByFullMatrixAdagradState, "scale_by_full_matrix_adagrad")
        xp = validated_backend(updates, params).xp
        leaves, td = tree_flatten(updates)
        h = state.sum_outer
        n = sum(math.prod(g.shape) for g in leaves)
        if h.shape != (n, n):
            raise ValueError(f"state: sum_outer has shape {tuple(h.shape)}, expected ({n}, {n}) for these grads")
        dt = h.dtype
        flat = [xp.reshape(g if g.dtype == dt else xp.astype(g, dt), (-1,)) for g in leaves]
        g = flat[0] if len(flat) == 1 else xp.concat(flat)
        h = h + g[:, None] * g[None, :]
        u = xp.matmul(psd_power(xp, h, power, eps), g)
        out, start = [], 0
        for leaf in leaves:
            k = math.prod(leaf.shape)
            piece = xp.reshape(u[start:start + k], leaf.shape)
            out.append(piece if piece.dtype == leaf.dtype else xp.astype(piece, leaf.dtype))
            start += k
        return tree_unflatten(td, out), ScaleByFullMatrixAdagradState(sum_outer=h)

    return Transform(init, update)


def full_matrix_adagrad(
    learning_rate: Any,
    power: float = -0.5,
    eps: float = 1e-10,
    initial_accumulator_value: float = 0.0,
    weight_decay: float = 0.0,
    *,
    max_size: int = 4096,
    accumulator_dtype: Any = None,
) -> Transform:
    r"""Full-matrix Adagrad (Duchi, Hazan & Singer, 2011): :math:`\theta_t = \theta_{t-1} - \eta (H_t + \epsilon I)^p g_t`.

    ``chain(add_decayed_weights(weight_decay),
    scale_by_full_matrix_adagrad(power, eps, ...), scale_by_learning_rate(learning_rate))``;
    see :func:`scale_by_full_matrix_adagrad` for the math, shapes, dtypes and
    errors. For small parameter vectors only (``max_size``). Neither
    ``torch.optim`` nor ``optax`` ships a full-matrix Adagrad; with a single
    scalar parameter and ``power=-0.5`` it is :func:`~agnopt.adagrad` with
    ``eps_in_sqrt=True``.

    Parameters
    ----------
    learning_rate : float or schedule
        :math:`\eta`.
    weight_decay : float
        L2 penalty :math:`\lambda\theta` added to the gradient first.
    """
    learning_rate = check_learning_rate(learning_rate)
    return chain(
        add_decayed_weights(weight_decay),
        scale_by_full_matrix_adagrad(power, eps, initial_accumulator_value, max_size=max_size,
                                     accumulator_dtype=accumulator_dtype),
        scale_by_learning_rate(learning_rate),
    )
