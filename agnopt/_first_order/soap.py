r"""SOAP (Vyas et al., 2024, "SOAP: Improving and Stabilizing Shampoo using Adam"):
Adam run in the eigenbasis of Shampoo's preconditioner.

For a matrix parameter with gradient :math:`G_t` (:math:`m \times n`), SOAP
keeps Shampoo's statistics as exponential averages,
:math:`L_t = \beta_s L_{t-1} + (1-\beta_s) G_t G_t^\top` and
:math:`R_t = \beta_s R_{t-1} + (1-\beta_s) G_t^\top G_t`, their eigenvectors
:math:`Q_L, Q_R` (refreshed every ``precondition_frequency`` steps), and runs
Adam on the rotated gradient :math:`Q_L^\top G_t Q_R`, rotating the step back.
The first moment is kept in the original coordinates (so it is rotated
exactly into each new basis, as the paper's Algorithm 3 projects it every
step); the second moment lives in the rotated coordinates and is carried over
a refresh, each entry matched to the eigenvector of the same eigenvalue rank
(``eigh`` orders eigenvalues the same way at every refresh; the authors'
code sorts its eigenvalue estimates for the same reason).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._core.backend import resolve, resolve_dtype
from .._core.tree import tree_flatten, tree_unflatten
from .._core.typing import ScalarOrSchedule
from .base import Transform, chain, check_state, trusted, validated_backend
from .base import check_state_count, check_state_shape
from .full_matrix_adagrad import (
    check_float_accumulator,
    check_int,
    refresh_flag,
    select,
    sym_eigh,
)
from .transforms import (
    _count0,
    _safe_int_increment,
    add_decayed_weights,
    check_beta,
    check_learning_rate,
    check_nonnegative,
    scale_by_learning_rate,
)

__all__ = ["ScaleBySoapState", "scale_by_soap", "soap"]


class ScaleBySoapState(NamedTuple):
    """Per leaf (tuples in leaf order: ``update`` checks the leaf count and each ``mu``'s shape
    against the gradients, ``ValueError`` otherwise; a leaf renamed with the same shape keeps
    its position's state).

    ``mu[i]``: Adam's first moment in the original coordinates, shaped as the
    matrix ``(m, n)`` the leaf is viewed as (vectors and scalars: the leaf's
    shape); ``nu[i]``: the second moment in the rotated coordinates (same
    shape); ``stats_l[i]``, ``q_l[i]``: :math:`L` ``(m, m)`` and its
    eigenvectors, None when the left side is not rotated (``m == 1`` or
    ``m > max_preconditioner_dim``, or a scalar/vector leaf); likewise
    ``stats_r``, ``q_r`` for the right side ``(n, n)``.
    """

    count: Any
    mu: Any
    nu: Any
    stats_l: Any
    stats_r: Any
    q_l: Any
    q_r: Any


def _sides(shape: tuple, max_dim: int) -> tuple[tuple, bool, bool]:
    """``(matrix shape, rotate left, rotate right)`` of a leaf."""
    if len(shape) < 2:
        return tuple(shape), False, False
    m = shape[0]
    n = 1
    for d in shape[1:]:
        n *= d
    return (m, n), 1 < m <= max_dim, 1 < n <= max_dim


def scale_by_soap(
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    shampoo_beta: float | None = None,
    precondition_frequency: int = 10,
    max_preconditioner_dim: int = 10000,
    *,
    accumulator_dtype: Any = None,
) -> Transform:
    r"""SOAP's scaling (Vyas et al., 2024, Algorithm 3), with eigenvectors by ``eigh``.

    Step :math:`t = 1, 2, \dots` for a leaf viewed as an :math:`m \times n`
    matrix (higher-rank leaves reshaped to ``(d0, d1*...*dk)``):

    .. math::
        L_t &= \beta_s L_{t-1} + (1-\beta_s) G_t G_t^\top, \quad
        R_t = \beta_s R_{t-1} + (1-\beta_s) G_t^\top G_t \\
        Q_L, Q_R &\leftarrow \operatorname{eigvecs}(L_t), \operatorname{eigvecs}(R_t)
            \quad \text{if } (t-1) \bmod f = 0 \\
        M_t &= \beta_1 M_{t-1} + (1-\beta_1) G_t, \quad
        G' = Q_L^\top G_t Q_R, \quad M' = Q_L^\top M_t Q_R \\
        V_t &= \beta_2 V_{t-1} + (1-\beta_2)\, G' \odot G' \\
        u_t &= Q_L \left[\frac{M'/(1-\beta_1^t)}{\sqrt{V_t/(1-\beta_2^t)} + \epsilon}\right] Q_R^\top

    (:math:`\beta_s` = ``shampoo_beta``, default :math:`\beta_2`, as in the
    authors' code). A side of size 1 or above ``max_preconditioner_dim`` is
    not rotated (identity, as the authors' code does for large sides);
    scalars and vectors get plain Adam. Differences from the paper, both
    documented choices: the eigenvectors come from a full ``eigh`` (the
    paper's Algorithm 4 refines the previous basis with one power iteration
    and a QR step, an approximation of it), and the statistics are updated
    with :math:`G_t` and refreshed *before* the step, so the first step
    already runs in the eigenbasis of :math:`G_1` (the authors' code spends
    its first step computing that basis without moving the parameters).

    Parameters
    ----------
    b1, b2 : float
        Adam's decay rates in the rotated space (authors' defaults 0.95, 0.95).
    eps : float
        Added to Adam's denominator.
    shampoo_beta : float, optional
        Decay of :math:`L, R`; None means ``b2``.
    precondition_frequency : int
        :math:`f`, steps between eigenbasis refreshes (authors' default 10).
    max_preconditioner_dim : int
        Largest side rotated (authors' default 10000).
    accumulator_dtype : dtype, optional
        dtype of all the state (default: each leaf's); float32 or float64.

    Raises
    ------
    ValueError
        Bad hyperparameters (named); a state of another transform.
    TypeError
        A 16-bit statistics dtype; gradients of another backend than the
        parameters.

    Notes
    -----
    Shapes and dtypes: Any tree of real floating arrays; per matrix leaf the state holds two
    ``(m, n)`` moments and two ``(m, m)`` and two ``(n, n)`` matrices. Under
    ``jax.jit`` the eigenbasis is computed every step and selected with
    ``where``; on Dask ``eigh`` runs on the host.
    """
    b1 = check_beta("b1", b1)
    b2 = check_beta("b2", b2)
    eps = check_nonnegative("eps", eps)
    beta_s = b2 if shampoo_beta is None else check_beta("shampoo_beta", shampoo_beta)
    precondition_frequency = check_int("precondition_frequency", precondition_frequency, 1)
    max_preconditioner_dim = check_int("max_preconditioner_dim", max_preconditioner_dim, 1)

    def init(params):
        bk = resolve(params, "params")
        xp = bk.xp
        mu, nu, sl, sr, ql, qr = [], [], [], [], [], []
        for p in tree_flatten(params)[0]:
            dt = resolve_dtype(xp, accumulator_dtype, p.dtype, "accumulator_dtype")
            check_float_accumulator(xp, dt, "accumulator_dtype" if accumulator_dtype is not None else "params")
            shape, left, right = _sides(tuple(p.shape), max_preconditioner_dim)
            mu.append(xp.zeros(shape, dtype=dt, device=bk.device))
            nu.append(xp.zeros(shape, dtype=dt, device=bk.device))
            for flag, k, s_list, q_list in ((left, shape[0] if shape else 0, sl, ql),
                                            (right, shape[-1] if shape else 0, sr, qr)):
                if flag:
                    s_list.append(xp.zeros((k, k), dtype=dt, device=bk.device))
                    q_list.append(xp.eye(k, dtype=dt, device=bk.device))
                else:
                    s_list.append(None)
                    q_list.append(None)
        return ScaleBySoapState(count=_count0(params), mu=tuple(mu), nu=tuple(nu), stats_l=tuple(sl),
                                stats_r=tuple(sr), q_l=tuple(ql), q_r=tuple(qr))

    @trusted
    def update(updates, state, params=None):
        check_state(state, ScaleBySoapState, "scale_by_soap")
        xp = validated_backend(updates, params).xp
        leaves, td = tree_flatten(updates)
        check_state_count("mu", len(state.mu), len(leaves))
        refresh = refresh_flag(xp, state.count, precondition_frequency)
        count = _safe_int_increment(xp, state.count)
        bias = {}
        out = []
        new = {k: [] for k in ("mu", "nu", "sl", "sr", "ql", "qr")}
        T = xp.matrix_transpose
        for i, (g, mu, nu, sl, sr, ql, qr) in enumerate(zip(
                leaves, state.mu, state.nu, state.stats_l, state.stats_r, state.q_l, state.q_r)):
            check_state_shape("mu", i, mu.shape, _sides(tuple(g.shape), max_preconditioner_dim)[0])
            dt = mu.dtype
            G = g if g.dtype == dt else xp.astype(g, dt)
            if tuple(G.shape) != tuple(mu.shape):
                G = xp.reshape(G, mu.shape)
            if sl is not None:
                sl = beta_s * sl + (1.0 - beta_s) * xp.matmul(G, T(G))
                ql = select(xp, refresh, lambda sl=sl: sym_eigh(xp, sl)[1], ql)
            if sr is not None:
                sr = beta_s * sr + (1.0 - beta_s) * xp.matmul(T(G), G)
                qr = select(xp, refresh, lambda sr=sr: sym_eigh(xp, sr)[1], qr)

            def rotate(x, ql=ql, qr=qr):
                if ql is not None:
                    x = xp.matmul(T(ql), x)
                if qr is not None:
                    x = xp.matmul(x, qr)
                return x

            def back(x, ql=ql, qr=qr):
                if ql is not None:
                    x = xp.matmul(ql, x)
                if qr is not None:
                    x = xp.matmul(x, T(qr))
                return x

            mu = b1 * mu + (1.0 - b1) * G
            g_rot = rotate(G)
            nu = b2 * nu + (1.0 - b2) * (g_rot * g_rot)
            if dt not in bias:
                t = xp.astype(count, dt)
                bias[dt] = (1.0 - b1**t, 1.0 - b2**t)
            bc1, bc2 = bias[dt]
            step = back((rotate(mu) / bc1) / (xp.sqrt(nu / bc2) + eps))
            step = xp.reshape(step, g.shape) if tuple(step.shape) != tuple(g.shape) else step
            out.append(step if step.dtype == g.dtype else xp.astype(step, g.dtype))
            for k, v in (("mu", mu), ("nu", nu), ("sl", sl), ("sr", sr), ("ql", ql), ("qr", qr)):
                new[k].append(v)
        new_state = ScaleBySoapState(count=count, mu=tuple(new["mu"]), nu=tuple(new["nu"]),
                                     stats_l=tuple(new["sl"]), stats_r=tuple(new["sr"]),
                                     q_l=tuple(new["ql"]), q_r=tuple(new["qr"]))
        return tree_unflatten(td, out), new_state

    return Transform(init, update)


def soap(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    precondition_frequency: int = 10,
    *,
    shampoo_beta: float | None = None,
    max_preconditioner_dim: int = 10000,
    accumulator_dtype: Any = None,
) -> Transform:
    r"""SOAP (Vyas et al., 2024): Adam in Shampoo's eigenbasis, refreshed every ``precondition_frequency`` steps.

    ``chain(scale_by_soap(...), add_decayed_weights(weight_decay),
    scale_by_learning_rate(learning_rate))``: decoupled weight decay, as the
    authors' code (whose default weight_decay is 0.01). See
    :func:`scale_by_soap` for the math, shapes, dtypes, errors and the two
    documented differences from the paper. With
    ``precondition_frequency=1`` and a :math:`1 \times 1` parameter this is
    Adam. Neither ``torch.optim`` nor ``optax`` ships SOAP.
    """
    learning_rate = check_learning_rate(learning_rate)
    return chain(
        scale_by_soap(b1, b2, eps, shampoo_beta, precondition_frequency, max_preconditioner_dim,
                      accumulator_dtype=accumulator_dtype),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(learning_rate),
    )
