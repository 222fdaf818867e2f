r"""Shampoo (Gupta, Koren & Singer, 2018): a Kronecker-factored preconditioner.

For a matrix parameter :math:`W \in \mathbb{R}^{m\times n}` with gradient
:math:`G_t`, Shampoo (the paper's Algorithm 1) keeps

.. math::
    L_t = L_{t-1} + G_t G_t^\top, \qquad R_t = R_{t-1} + G_t^\top G_t,
    \qquad L_0 = \epsilon I_m,\ R_0 = \epsilon I_n,

and steps along :math:`L_t^{-1/4} G_t R_t^{-1/4}`: full-matrix Adagrad with the
Kronecker approximation :math:`(L \otimes R)^{1/2}`, at the cost of an
:math:`m \times m` and an :math:`n \times n` eigendecomposition instead of an
:math:`mn \times mn` one.

Reparameterization: with :math:`W = U W' V^\top` (:math:`U, V` orthogonal),
:math:`G = U G' V^\top`, :math:`L = U L' U^\top`, :math:`R = V R' V^\top`, so
the step in :math:`W` is :math:`U` times the step in :math:`W'` times
:math:`V^\top`: Shampoo's iterates do not depend on left and right rotations of
a matrix parameter. Grafting (on by default, as in practical Shampoo, Anil et
al. 2020, and Agarwal et al. 2020) takes each layer's step *length* from Adam,
whose per-coordinate scaling is not rotation invariant, so grafting breaks the
invariance; ``grafting=None`` restores it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._core.backend import resolve, resolve_dtype
from .._core.tree import tree_flatten, tree_unflatten
from .._core.typing import ScalarOrSchedule
from .base import Transform, chain, check_state, trusted, validated_backend
from .base import check_state_count, check_state_shape
from .full_matrix_adagrad import (
    check_float_accumulator,
    check_int,
    psd_power,
    refresh_flag,
    select,
)
from .transforms import (
    _count0,
    _safe_int_increment,
    add_decayed_weights,
    check_beta,
    check_learning_rate,
    check_nonnegative,
    scale_by_adam,
    scale_by_learning_rate,
)

__all__ = ["ScaleByShampooState", "matrix_shape", "scale_by_shampoo", "shampoo"]


def matrix_shape(shape: tuple, max_dim: int) -> tuple[int, int] | None:
    """The 2-D shape a leaf is preconditioned as, or None (diagonal fallback).

    A leaf of shape ``(d0, d1, ..., dk)`` with ``k >= 1`` is treated as the
    matrix ``(d0, d1 * ... * dk)`` (row-major reshape: for torch's
    ``(out, in, kh, kw)`` convolution kernels, output channels against the
    rest). Scalars, vectors, and leaves with a side above ``max_dim`` get
    None.
    """
    if len(shape) < 2:
        return None
    m, n = shape[0], math.prod(shape[1:])
    if m > max_dim or n > max_dim:
        return None
    return m, n


class ScaleByShampooState(NamedTuple):
    """Per leaf (tuples in leaf order): statistics and their inverse fourth roots. ``update``
    checks the leaf count and each statistic's shape against the gradients (``ValueError``
    otherwise); a leaf renamed with the same shape keeps its position's statistics.

    For a preconditioned leaf of matrix shape ``(m, n)``: ``stats_l[i]``
    :math:`\\sum G G^\\top` ``(m, m)``, ``stats_r[i]`` :math:`\\sum G^\\top G`
    ``(n, n)``, ``root_l[i]``, ``root_r[i]`` their ``(. + eps I)^(-1/4)`` as
    of the last refresh. For a diagonal-fallback leaf: ``stats_l[i]`` the sum
    of squared gradients (the leaf's shape) and None in the other three.
    ``graft``: the Adam state used for grafting, or None.
    """

    count: Any
    stats_l: Any
    stats_r: Any
    root_l: Any
    root_r: Any
    graft: Any


def _norm(xp: Any, x: Any) -> Any:
    return xp.sqrt(xp.sum(x * x))


def scale_by_shampoo(
    eps: float = 1e-12,
    precondition_frequency: int = 10,
    max_preconditioner_dim: int = 1024,
    grafting: str | None = "adam",
    *,
    graft_b1: float = 0.9,
    graft_b2: float = 0.999,
    graft_eps: float = 1e-8,
    accumulator_dtype: Any = None,
) -> Transform:
    r"""Shampoo's scaling (Gupta, Koren & Singer, 2018, Algorithm 1), with grafting.

    For each leaf of matrix shape :math:`(m, n)` (see :func:`matrix_shape`):

    .. math::
        L_t = L_{t-1} + G_t G_t^\top,\quad R_t = R_{t-1} + G_t^\top G_t,\quad
        D_t = \hat L^{-1/4} G_t \hat R^{-1/4},

    where :math:`\hat L^{-1/4} = (L_s + \epsilon I)^{-1/4}` is recomputed by
    ``eigh`` at the steps :math:`s` with ``s % precondition_frequency == 0``
    (step 0 first; the state keeps the roots in between, as practical
    Shampoo does; frequency 1 is the paper's algorithm). Leaves that are
    scalars or vectors, or have a side above ``max_preconditioner_dim``, fall
    back to diagonal Adagrad, :math:`D_t = G_t / \sqrt{\sum_s G_s^2 + \epsilon}`
    (Shampoo's own formula for a :math:`1\times 1` matrix).

    With ``grafting="adam"`` each leaf's step is rescaled to the Frobenius
    norm of Adam's step for that leaf, :math:`u = D_t\,\|A_t\| / \|D_t\|`
    (Adam with ``graft_b1``, ``graft_b2``, ``graft_eps``): Shampoo gives the
    direction, Adam the per-layer step size (Agarwal et al., 2020, "Disentangling
    adaptive gradient methods from learning rates"; Anil et al., 2020). This
    breaks the rotation invariance; ``grafting=None`` gives the paper's
    :math:`u = D_t`. Momentum is not part of the paper's algorithm: chain
    :func:`~agnopt.trace` after this transform for it.

    Parameters
    ----------
    eps : float
        :math:`\epsilon > 0`, the initial :math:`L_0 = \epsilon I`, :math:`R_0 = \epsilon I`.
    precondition_frequency : int
        Steps between recomputations of the inverse roots (>= 1).
    max_preconditioner_dim : int
        Largest side preconditioned with a full matrix.
    grafting : {"adam", None}
    accumulator_dtype : dtype, optional
        dtype of the statistics and roots (default: each leaf's dtype); must
        be float32 or float64.

    Raises
    ------
    ValueError
        Bad hyperparameters (named); a state of another transform.
    TypeError
        A 16-bit statistics dtype (pass ``accumulator_dtype="float32"``);
        gradients of another backend than the parameters.

    Notes
    -----
    Shapes and dtypes: Any tree of real floating arrays. The state holds ``m*m + n*n`` numbers
    twice per matrix leaf. Under ``jax.jit`` the refresh step cannot be read
    from the traced count: the roots are then computed every step and selected
    with ``where`` (correct, but each step pays the ``eigh``). On Dask, the
    ``eigh`` runs on the host (see :func:`agnopt._core.lazy.to_local`).
    """
    eps = check_nonnegative("eps", eps)
    if eps <= 0:
        raise ValueError("eps must be > 0 (it is the initial preconditioner L_0 = eps I)")
    precondition_frequency = check_int("precondition_frequency", precondition_frequency, 1)
    max_preconditioner_dim = check_int("max_preconditioner_dim", max_preconditioner_dim, 1)
    if grafting not in ("adam", None):
        raise ValueError(f"grafting must be 'adam' or None, got {grafting!r}")
    graft = scale_by_adam(check_beta("graft_b1", graft_b1), check_beta("graft_b2", graft_b2),
                          check_nonnegative("graft_eps", graft_eps)) if grafting else None

    def init(params):
        bk = resolve(params, "params")
        xp = bk.xp
        sl, sr, rl, rr = [], [], [], []
        for p in tree_flatten(params)[0]:
            dt = resolve_dtype(xp, accumulator_dtype, p.dtype, "accumulator_dtype")
            check_float_accumulator(xp, dt, "accumulator_dtype" if accumulator_dtype is not None else "params")
            ms = matrix_shape(tuple(p.shape), max_preconditioner_dim)
            if ms is None:
                sl.append(xp.zeros(p.shape, dtype=dt, device=bk.device))
                sr.append(None)
                rl.append(None)
                rr.append(None)
            else:
                m, n = ms
                sl.append(xp.zeros((m, m), dtype=dt, device=bk.device))
                sr.append(xp.zeros((n, n), dtype=dt, device=bk.device))
                rl.append(xp.eye(m, dtype=dt, device=bk.device))
                rr.append(xp.eye(n, dtype=dt, device=bk.device))
        return ScaleByShampooState(
            count=_count0(params), stats_l=tuple(sl), stats_r=tuple(sr), root_l=tuple(rl),
            root_r=tuple(rr), graft=graft.init(params) if graft else None,
        )

    @trusted
    def update(updates, state, params=None):
        check_state(state, ScaleByShampooState, "scale_by_shampoo")
        xp = validated_backend(updates, params).xp
        leaves, td = tree_flatten(updates)
        check_state_count("stats_l", len(state.stats_l), len(leaves))
        refresh = refresh_flag(xp, state.count, precondition_frequency)
        out, nsl, nsr, nrl, nrr = [], [], [], [], []
        for i, (g, sl, sr, rl, rr) in enumerate(
                zip(leaves, state.stats_l, state.stats_r, state.root_l, state.root_r)):
            dt = sl.dtype
            gc = g if g.dtype == dt else xp.astype(g, dt)
            if sr is None:  # diagonal fallback
                check_state_shape("stats_l", i, sl.shape, g.shape)
                s = sl + gc * gc
                d = gc / xp.sqrt(s + eps)
                nsl.append(s)
                nsr.append(None)
                nrl.append(None)
                nrr.append(None)
            else:
                m, n = sl.shape[0], sr.shape[0]
                ms = matrix_shape(tuple(g.shape), max_preconditioner_dim)
                check_state_shape("stats_l", i, sl.shape, (ms[0], ms[0]) if ms else g.shape)
                check_state_shape("stats_r", i, sr.shape, (ms[1], ms[1]) if ms else g.shape)
                G = xp.reshape(gc, (m, n))
                L = sl + xp.matmul(G, xp.matrix_transpose(G))
                R = sr + xp.matmul(xp.matrix_transpose(G), G)
                rl = select(xp, refresh, lambda L=L: psd_power(xp, L, -0.25, eps), rl)
                rr = select(xp, refresh, lambda R=R: psd_power(xp, R, -0.25, eps), rr)
                d = xp.reshape(xp.matmul(xp.matmul(rl, G), rr), g.shape)
                nsl.append(L)
                nsr.append(R)
                nrl.append(rl)
                nrr.append(rr)
            out.append(d)
        new_graft = None
        if graft is not None:
            a_updates, new_graft = graft.update(updates, state.graft, params)
            grafted = []
            for d, a in zip(out, tree_flatten(a_updates)[0]):
                a = a if a.dtype == d.dtype else xp.astype(a, d.dtype)
                nd = _norm(xp, d)
                ok = nd > 0
                ratio = xp.where(ok, _norm(xp, a) / xp.where(ok, nd, xp.ones_like(nd)), xp.zeros_like(nd))
                grafted.append(d * ratio)
            out = grafted
        out = [d if d.dtype == g.dtype else xp.astype(d, g.dtype) for d, g in zip(out, leaves)]
        new_state = ScaleByShampooState(
            count=_safe_int_increment(xp, state.count), stats_l=tuple(nsl), stats_r=tuple(nsr),
            root_l=tuple(nrl), root_r=tuple(nrr), graft=new_graft,
        )
        return tree_unflatten(td, out), new_state

    return Transform(init, update)


def shampoo(
    learning_rate: ScalarOrSchedule,
    eps: float = 1e-12,
    precondition_frequency: int = 10,
    max_preconditioner_dim: int = 1024,
    grafting: str | None = "adam",
    weight_decay: float = 0.0,
    *,
    graft_b1: float = 0.9,
    graft_b2: float = 0.999,
    graft_eps: float = 1e-8,
    accumulator_dtype: Any = None,
) -> Transform:
    r"""Shampoo (Gupta, Koren & Singer, 2018): :math:`W_t = W_{t-1} - \eta\, L_t^{-1/4} G_t R_t^{-1/4}`.

    ``chain(scale_by_shampoo(...), add_decayed_weights(weight_decay),
    scale_by_learning_rate(learning_rate))`` (decoupled weight decay). See
    :func:`scale_by_shampoo` for the math, grafting (on by default; it breaks
    the rotation invariance), the diagonal fallback, shapes, dtypes and
    errors. ``shampoo(lr, grafting=None, precondition_frequency=1)`` is the
    paper's Algorithm 1 for matrices. Neither ``torch.optim`` nor ``optax``
    ships Shampoo.
    """
    learning_rate = check_learning_rate(learning_rate)
    return chain(
        scale_by_shampoo(eps, precondition_frequency, max_preconditioner_dim, grafting,
                         graft_b1=graft_b1, graft_b2=graft_b2, graft_eps=graft_eps,
                         accumulator_dtype=accumulator_dtype),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(learning_rate),
    )
