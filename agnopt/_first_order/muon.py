r"""Muon (Jordan et al., 2024): momentum orthogonalized by a Newton-Schulz iteration.

For a matrix parameter, Muon replaces the momentum :math:`B` by the nearest
semi-orthogonal matrix, approximately :math:`U V^\top` for :math:`B = U S
V^\top`, computed by five steps of the quintic iteration
:math:`X \leftarrow a X + (b A + c A^2) X`, :math:`A = X X^\top`, with
:math:`(a, b, c) = (3.4445, -4.7750, 2.0315)` after scaling :math:`X` to unit
Frobenius norm. These coefficients push the singular values into roughly
:math:`[0.7, 1.2]` rather than exactly 1 (K. Jordan, "Muon: An optimizer for
hidden layers in neural networks", 2024). Muon is steepest descent in the
spectral norm; Shampoo without accumulation is the same step
(:math:`(GG^\top)^{-1/4} G (G^\top G)^{-1/4} = UV^\top`).

Reparameterization: the iteration is an odd polynomial in :math:`X` built
from :math:`X X^\top X`, and the Frobenius norm is orthogonally invariant, so
:math:`NS(U X V^\top) = U\, NS(X)\, V^\top` for orthogonal :math:`U, V`:
Muon's iterates do not depend on left and right rotations of a matrix
parameter (tested; the shape scaling depends only on the shape).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._core.backend import resolve, resolve_dtype
from .._core.tree import tree_flatten, tree_paths, tree_unflatten
from .._core.typing import ScalarOrSchedule
from .base import Transform, chain, check_state, trusted, validated_backend
from .base import check_state_count, check_state_shape
from .full_matrix_adagrad import check_int
from .transforms import (
    _count0,
    _number,
    _safe_int_increment,
    add_decayed_weights,
    check_beta,
    check_bool,
    check_learning_rate,
    check_nonnegative,
    scale_by_adam,
    scale_by_learning_rate,
)

__all__ = [
    "MuonState",
    "ScaleByMuonState",
    "muon",
    "newton_schulz",
    "scale_by_muon",
]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(
    xp: Any,
    x: Any,
    coefficients: tuple = NS_COEFFICIENTS,
    steps: int = 5,
    eps: float = 1e-7,
    eps_mode: str = "clamp",
    dtype: Any = None,
) -> Any:
    r"""Approximately orthogonalize the matrix ``x`` (shape ``(m, n)``) by the quintic Newton-Schulz iteration.

    :math:`X_0 = x / \max(\|x\|_F, \epsilon)` (``eps_mode="clamp"``, torch) or
    :math:`x / (\|x\|_F + \epsilon)` (``"add"``, optax and Jordan's code); then
    ``steps`` times :math:`A = X X^\top`, :math:`X \leftarrow a X + (bA + cA^2) X`,
    on the wide orientation (``x`` transposed when ``m > n``, so :math:`A` is
    the smaller Gram matrix). Computed in ``dtype`` (default ``x.dtype``;
    torch uses bfloat16); returned in ``dtype``. For a 16-bit ``dtype`` the
    matrix products run in it and the linear combinations in float32,
    rounded once (as torch's fused ``addmm``).
    """
    a, b, c = coefficients
    X = x if dtype is None or x.dtype == dtype else xp.astype(x, dtype)
    T = xp.matrix_transpose
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = T(X)
    # 16-bit iterations: products in the 16-bit dtype, the linear combinations
    # in float32 and rounded once, as a fused multiply-add (torch's addmm) does.
    low = xp.finfo(X.dtype).bits < 32
    work = X.dtype

    def up(v):
        return xp.astype(v, xp.float32) if low else v

    def down(v):
        return xp.astype(v, work) if low else v

    Xu = up(X)
    norm = xp.sqrt(xp.sum(Xu * Xu))
    if eps_mode == "clamp":
        norm = xp.where(norm > eps, norm, xp.full_like(norm, eps))
    else:
        norm = norm + eps
    X = down(Xu / norm)
    for _ in range(steps):
        A = xp.matmul(X, T(X))
        B = down(b * up(A) + c * up(xp.matmul(A, A)))
        X = down(a * up(X) + up(xp.matmul(B, X)))
    return T(X) if tall else X


def _shape_scale(shape: tuple, adjust_lr: str | None, layout: str, consistent_rms: float) -> float:
    if adjust_lr is None:
        return 1.0
    rows, cols = shape
    fan_out, fan_in = (rows, cols) if layout == "out_in" else (cols, rows)
    if adjust_lr == "original":
        return math.sqrt(max(1.0, fan_out / fan_in))
    return consistent_rms * math.sqrt(max(rows, cols))


class ScaleByMuonState(NamedTuple):
    """``count`` (int32, 0-d) and ``mu``: the momentum buffers, a tuple in leaf order (one per
    matrix leaf). ``update`` checks the leaf count and each buffer's shape against the
    gradients (``ValueError`` otherwise); a leaf renamed with the same shape keeps its
    position's buffer."""

    count: Any
    mu: Any


def _ema_momentum(xp, g, mu, beta, nesterov, bias_correction, count_inc):
    """New buffer and the direction, torch's (no correction) or optax's (corrected) convention."""
    mu = beta * mu + (1.0 - beta) * g
    if not bias_correction:
        return mu, ((1.0 - beta) * g + beta * mu if nesterov else mu)
    t = xp.astype(count_inc, mu.dtype)
    if nesterov:
        return mu, beta * mu / (1.0 - beta ** (t + 1.0)) + (1.0 - beta) * g / (1.0 - beta**t)
    return mu, mu / (1.0 - beta**t)


def scale_by_muon(
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple = NS_COEFFICIENTS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    *,
    eps_mode: str = "clamp",
    bias_correction: bool = False,
    adjust_lr: str | None = "original",
    layout: str = "out_in",
    consistent_rms: float = 0.2,
    ns_dtype: Any = None,
    mu_dtype: Any = None,
) -> Transform:
    r"""Muon's scaling for a tree of matrices (every leaf must be 2-D).

    .. math::
        B_t &= \beta B_{t-1} + (1-\beta) G_t, \qquad
        \tilde B_t = (1-\beta) G_t + \beta B_t \ \text{(nesterov) or } B_t \\
        u_t &= s \cdot \mathrm{NS}_k^{(a,b,c)}(\tilde B_t;\ \epsilon)

    (:func:`newton_schulz`). With ``bias_correction`` (optax's convention)
    :math:`\tilde B_t = \beta B_t / (1-\beta^{t+1}) + (1-\beta) G_t / (1-\beta^t)`
    (nesterov) or :math:`B_t / (1-\beta^t)`. The shape factor :math:`s`:
    ``adjust_lr="original"`` :math:`\sqrt{\max(1, \text{fan\_out}/\text{fan\_in})}`
    (Jordan), ``"match_rms_adamw"`` :math:`c\sqrt{\max(m, n)}` with
    :math:`c` = ``consistent_rms`` (Liu et al., 2025, "Muon is scalable for
    LLM training"), None: 1. ``layout="out_in"``: a weight of shape
    ``(fan_out, fan_in)`` (torch's ``nn.Linear``); ``"in_out"``: ``(fan_in,
    fan_out)`` (``x @ W``, optax's convention).

    Parameters
    ----------
    momentum : float
        :math:`\beta \in [0, 1)`.
    nesterov : bool
    ns_coefficients : (a, b, c)
    ns_steps : int
        :math:`k \ge 1`.
    eps : float
        Guard of the Frobenius normalization (see ``eps_mode``).
    eps_mode : {"clamp", "add"}
        :math:`\max(\|X\|, \epsilon)` (torch) or :math:`\|X\| + \epsilon` (optax).
    ns_dtype : dtype, optional
        dtype of the iteration (default: the momentum's). ``"bfloat16"``
        reproduces torch (where the backend has bfloat16).
    mu_dtype : dtype, optional
        dtype of the momentum buffer (default: the parameter's).

    Raises
    ------
    ValueError
        A leaf that is not 2-D (the message names it; :func:`muon` has an
        AdamW fallback for those), or bad hyperparameters (named).
    TypeError
        A non-floating ``ns_dtype``/``mu_dtype``; gradients of another
        backend than the parameters.

    Notes
    -----
    Shapes and dtypes: Leaves of shape ``(m, n)``; the updates have the leaves' shapes and the
    momentum dtype. State: one ``(m, n)`` buffer per leaf.
    """
    momentum = check_beta("momentum", momentum)
    nesterov = check_bool("nesterov", nesterov)
    bias_correction = check_bool("bias_correction", bias_correction)
    if not (isinstance(ns_coefficients, (tuple, list)) and len(ns_coefficients) == 3):
        raise ValueError(f"ns_coefficients must be three numbers (a, b, c), got {ns_coefficients!r}")
    coeffs = tuple(_number("ns_coefficients", v) for v in ns_coefficients)
    ns_steps = check_int("ns_steps", ns_steps, 1)
    eps = check_nonnegative("eps", eps)
    if eps_mode not in ("clamp", "add"):
        raise ValueError(f"eps_mode must be 'clamp' (torch) or 'add' (optax), got {eps_mode!r}")
    if adjust_lr not in ("original", "match_rms_adamw", None):
        raise ValueError(f"adjust_lr must be 'original', 'match_rms_adamw' or None, got {adjust_lr!r}")
    if layout not in ("out_in", "in_out"):
        raise ValueError(f"layout must be 'out_in' (torch) or 'in_out' (optax), got {layout!r}")
    consistent_rms = check_nonnegative("consistent_rms", consistent_rms)

    def _check_matrices(tree, name):
        leaves = tree_flatten(tree)[0]
        for i, leaf in enumerate(leaves):
            if len(leaf.shape) != 2:
                path = tree_paths(tree)[i]
                raise ValueError(
                    f"{name}{path}: Muon orthogonalizes matrices, got shape {tuple(leaf.shape)}; "
                    "use muon(...) with its AdamW fallback (adam_fallback=True) for other leaves"
                )
        return leaves

    def init(params):
        bk = resolve(params, "params")
        xp = bk.xp
        leaves = _check_matrices(params, "params")
        resolve_dtype(xp, ns_dtype, leaves[0].dtype, "ns_dtype")
        mu = [xp.zeros(p.shape, dtype=resolve_dtype(xp, mu_dtype, p.dtype, "mu_dtype"), device=bk.device)
              for p in leaves]
        return ScaleByMuonState(count=_count0(params), mu=tuple(mu))

    @trusted
    def update(updates, state, params=None):
        check_state(state, ScaleByMuonState, "scale_by_muon")
        xp = validated_backend(updates, params).xp
        leaves = _check_matrices(updates, "grads")
        td = tree_flatten(updates)[1]
        check_state_count("mu", len(state.mu), len(leaves))
        count = _safe_int_increment(xp, state.count)
        out, new_mu = [], []
        for i, (g, mu) in enumerate(zip(leaves, state.mu)):
            check_state_shape("mu", i, mu.shape, g.shape)
            gc = g if g.dtype == mu.dtype else xp.astype(g, mu.dtype)
            mu, direction = _ema_momentum(xp, gc, mu, momentum, nesterov, bias_correction, count)
            nd = resolve_dtype(xp, ns_dtype, mu.dtype, "ns_dtype")
            o = newton_schulz(xp, direction, coeffs, ns_steps, eps, eps_mode, nd)
            if o.dtype != mu.dtype:
                o = xp.astype(o, mu.dtype)
            s = _shape_scale(tuple(g.shape), adjust_lr, layout, consistent_rms)
            out.append(o * s if s != 1.0 else o)
            new_mu.append(mu)
        return tree_unflatten(td, out), ScaleByMuonState(count=count, mu=tuple(new_mu))

    return Transform(init, update)


# --------------------------------------------------------------------------
# the fallback for non-matrix leaves: Adam, optionally with optax's Nesterov form
# --------------------------------------------------------------------------


class _NesterovAdamState(NamedTuple):
    count: Any
    mu: Any
    nu: Any


def _scale_by_nesterov_adam(b1: float, b2: float, eps: float, eps_root: float) -> Transform:
    r"""Adam with optax's Nesterov first moment (``optax.scale_by_adam(nesterov=True)``, after Dozat 2016):
    :math:`\hat m = \beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1) g_t/(1-\beta_1^t)`."""

    def init(params):
        bk = resolve(params, "params")
        z = tuple(bk.xp.zeros_like(p) for p in tree_flatten(params)[0])
        return _NesterovAdamState(count=_count0(params), mu=z, nu=z)

    @trusted
    def update(updates, state, params=None):
        xp = validated_backend(updates, params).xp
        leaves, td = tree_flatten(updates)
        count = _safe_int_increment(xp, state.count)
        out, mus, nus = [], [], []
        check_state_count("mu", len(state.mu), len(leaves))
        for i, (g, mu, nu) in enumerate(zip(leaves, state.mu, state.nu)):
            check_state_shape("mu", i, mu.shape, g.shape)
            g = g if g.dtype == mu.dtype else xp.astype(g, mu.dtype)
            mu, m_hat = _ema_momentum(xp, g, mu, b1, True, True, count)
            nu = b2 * nu + (1.0 - b2) * (g * g)
            t = xp.astype(count, nu.dtype)
            out.append(m_hat / (xp.sqrt(nu / (1.0 - b2**t) + eps_root) + eps))
            mus.append(mu)
            nus.append(nu)
        return tree_unflatten(td, out), _NesterovAdamState(count=count, mu=tuple(mus), nu=tuple(nus))

    return Transform(init, update)


class MuonState(NamedTuple):
    """``muon``: the state of the chain on the 2-D leaves (None if there are none);
    ``adam``: the state of the AdamW chain on the other leaves (None if none)."""

    muon: Any
    adam: Any


def _split(tree: Any) -> tuple[list, list, list[bool]]:
    leaves = tree_flatten(tree)[0]
    is_mat = [len(x.shape) == 2 for x in leaves]
    return [x for x, m in zip(leaves, is_mat) if m], [x for x, m in zip(leaves, is_mat) if not m], is_mat


def muon(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.95,
    nesterov: bool = True,
    weight_decay: float = 0.1,
    ns_coefficients: tuple = NS_COEFFICIENTS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    *,
    eps_mode: str = "clamp",
    bias_correction: bool = False,
    adjust_lr: str | None = "original",
    layout: str = "out_in",
    consistent_rms: float = 0.2,
    ns_dtype: Any = None,
    mu_dtype: Any = None,
    adam_fallback: bool = True,
    adam_learning_rate: ScalarOrSchedule | None = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps: float = 1e-8,
    adam_eps_root: float = 0.0,
    adam_weight_decay: float = 0.0,
    adam_nesterov: bool = False,
) -> Transform:
    r"""Muon (Jordan et al., 2024) for the 2-D leaves, AdamW for the others.

    .. math::
        W_t = W_{t-1} - \eta\,\big(s\,\mathrm{NS}(\tilde B_t) + \lambda W_{t-1}\big)

    with :math:`\tilde B_t`, :math:`\mathrm{NS}` and :math:`s` as in
    :func:`scale_by_muon` (decoupled weight decay :math:`\lambda`, scaled by
    the learning rate, as both references do). Leaves that are not 2-D go to
    ``chain(scale_by_adam(adam_b1, adam_b2, adam_eps, adam_eps_root),
    add_decayed_weights(adam_weight_decay), scale_by_learning_rate(adam_learning_rate))``
    (``adam_learning_rate`` defaults to ``learning_rate``); with
    ``adam_fallback=False`` they raise ``ValueError`` naming the leaf.

    The defaults reproduce ``torch.optim.Muon(params, lr)`` (torch 2.13:
    momentum 0.95, nesterov, weight_decay 0.1, eps 1e-7 clamped, no bias
    correction, lr scaled by :math:`\sqrt{\max(1, A/B)}` for a weight of
    shape ``(A, B)``, ``adjust_lr_fn="match_rms_adamw"`` is
    ``adjust_lr="match_rms_adamw"``), except that torch runs the iteration in
    bfloat16: add ``ns_dtype="bfloat16"`` for that (torch has no fallback; it
    rejects non-2-D parameters).

    ``optax.contrib.muon(lr, beta=b, eps=e, weight_decay=w, nesterov=n,
    adam_b1=..., adam_b2=..., adam_eps_root=..., adam_weight_decay=...)`` is
    ``muon(lr, momentum=b, nesterov=n, weight_decay=w, eps=e, eps_mode="add",
    bias_correction=True, layout="in_out", adam_eps=e, adam_nesterov=n, ...)``
    (optax's defaults: ``eps=1e-8``, ``weight_decay=0``; its Adam uses the
    Muon ``eps`` and, with ``nesterov=True``, a Nesterov first moment);
    ``consistent_rms=c`` there is ``adjust_lr="match_rms_adamw",
    consistent_rms=c`` here. Both iterate in the parameters' dtype.

    Parameters
    ----------
    learning_rate : float or schedule
        :math:`\eta` for the matrices.
    adam_fallback : bool
        Optimize non-2-D leaves with AdamW (default) or reject them.
    adam_nesterov : bool
        optax's Nesterov form of Adam's first moment in the fallback.

    Other parameters as :func:`scale_by_muon`. Raises as it does, and
    ``ValueError`` for a tree with no 2-D leaf and no fallback.
    """
    learning_rate = check_learning_rate(learning_rate)
    adam_learning_rate = learning_rate if adam_learning_rate is None else check_learning_rate(adam_learning_rate)
    mat = chain(
        scale_by_muon(momentum, nesterov, ns_coefficients, ns_steps, eps, eps_mode=eps_mode,
                      bias_correction=bias_correction, adjust_lr=adjust_lr, layout=layout,
                      consistent_rms=consistent_rms, ns_dtype=ns_dtype, mu_dtype=mu_dtype),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(learning_rate),
    )
    adam_b1 = check_beta("adam_b1", adam_b1)
    adam_b2 = check_beta("adam_b2", adam_b2)
    adam_eps = check_nonnegative("adam_eps", adam_eps)
    adam_eps_root = check_nonnegative("adam_eps_root", adam_eps_root)
    adam_fallback = check_bool("adam_fallback", adam_fallback)
    adam_nesterov = check_bool("adam_nesterov", adam_nesterov)
    if adam_nesterov:
        scaler = _scale_by_nesterov_adam(adam_b1, adam_b2, adam_eps, adam_eps_root)
    else:
        scaler = scale_by_adam(adam_b1, adam_b2, adam_eps, adam_eps_root)
    other = chain(scaler, add_decayed_weights(adam_weight_decay), scale_by_learning_rate(adam_learning_rate))

    def _reject(tree, name):
        leaves = tree_flatten(tree)[0]
        for i, leaf in enumerate(leaves):
            if len(leaf.shape) != 2:
                raise ValueError(
                    f"{name}{tree_paths(tree)[i]}: Muon orthogonalizes matrices, got shape "
                    f"{tuple(leaf.shape)}; pass adam_fallback=True to optimize it with AdamW"
                )

    def init(params):
        resolve(params, "params")
        if not adam_fallback:
            _reject(params, "params")
        m, o, _ = _split(params)
        return MuonState(muon=mat.init(m) if m else None, adam=other.init(o) if o else None)

    @trusted
    def update(updates, state, params=None):
        check_state(state, MuonState, "muon")
        validated_backend(updates, params)
        if not adam_fallback:
            _reject(updates, "grads")
        td = tree_flatten(updates)[1]
        gm, go, is_mat = _split(updates)
        pm, po = (None, None) if params is None else _split(params)[:2]
        if (state.muon is None) != (not gm) or (state.adam is None) != (not go):
            raise ValueError("state: built for another parameter tree (matrix/other leaves differ)")
        um, sm = mat.update(gm, state.muon, pm) if gm else ([], None)
        uo, so = other.update(go, state.adam, po) if go else ([], None)
        im, io = iter(um), iter(uo)
        out = [next(im) if m else next(io) for m in is_mat]
        return tree_unflatten(td, out), MuonState(muon=sm, adam=so)

    return Transform(init, update)

