r"""The small transforms that the first-order optimizers are chained from.

Each function returns a :class:`~agnopt.Transform` ``(init, update)``. States
are NamedTuples of arrays created on the parameters' device; ``update`` is
pure (nothing passed in is modified) and works on every Array API backend.

Read as second-order methods, the adaptive transforms precondition the
gradient with a diagonal approximation of the Hessian: ``scale_by_rss``
(Adagrad) accumulates the squared gradients, a crude estimate of
:math:`\operatorname{diag}(J^\top J)`; ``scale_by_rms`` (RMSProp) discounts
them; ``scale_by_adam`` also averages the gradient and corrects both averages
for their zero initialisation.

Numerics (the same rule in every fused kernel of :func:`agnopt.step`):

* **opmath**: every transform computes in at least float32, whatever the
  storage dtype of the updates and of its state (float16 and bfloat16 are
  computed in float32, as torch's fused kernels do). State leaves are rounded
  once to their own dtype when stored; the updates a transform returns stay in
  the opmath dtype, so :func:`~agnopt.apply_updates` rounds the new parameters
  once. For float32/float64 nothing changes.
* roots see no negative rounding residue (centered RMSProp's
  :math:`\nu - \mu^2` is clamped at 0), and on JAX/torch every root that can
  see an exact 0 is taken in the double-``where`` form, so derivatives through
  an update are finite at zero gradients.
* state leaves keep their type, shape and dtype across updates.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._core.backend import is_concrete, resolve, resolve_dtype, scalar
from .._core.norms import opmath_dtype, safe_sqrt, scaled_norm
from .._core.tree import tree_flatten, tree_map, tree_unflatten
from .._core.typing import ScalarOrSchedule, Schedule
from .base import (
    EmptyState,
    Transform,
    check_state,
    state_leaves,
    trusted,
    validated_backend,
)

__all__ = [
    "ScaleByAdamState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "ScaleByStddevState",
    "TraceState",
    "add_decayed_weights",
    "clip_by_global_norm",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_sign",
    "scale_by_stddev",
    "trace",
]


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name} must not be NaN")
    return v


def check_bool(name: str, value: Any, hint: str = "") -> bool:
    """``value`` if it is a bool (or a NumPy bool), else ``TypeError`` naming ``name``.

    A flag given positionally where a number was meant (``sgd(0.1, 0.9, 0.1)``,
    torch's ``SGD(params, lr, momentum, dampening)`` order) must not be read
    as True. ``hint`` is appended to the message.
    """
    if isinstance(value, bool):
        return value
    if type(value).__name__ in ("bool_", "bool") and type(value).__module__ == "numpy":
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}{hint}")


def check_nonnegative(name: str, value: Any) -> float:
    v = _number(name, value)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_beta(name: str, value: Any) -> float:
    v = _number(name, value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def check_learning_rate(learning_rate: Any) -> Any:
    """A non-negative finite float, or a callable schedule (kept as is)."""
    if callable(learning_rate):
        return learning_rate
    return check_nonnegative("learning_rate", learning_rate)


def _float_leaf_dtype(xp: Any, leaf: Any, dtype: Any, what: str) -> Any:
    return resolve_dtype(xp, dtype, leaf.dtype, what)


def _zeros_like_tree(params: Any, dtype: Any, what: str, fill: float = 0.0):
    bk = resolve(params, "params")
    xp = bk.xp

    def make(p):
        dt = _float_leaf_dtype(xp, p, dtype, what)
        # full_like keeps the parameter's device and, on Dask, its chunks
        return xp.full_like(p, fill, dtype=dt)

    return tree_map(make, params)


def _count0(params: Any):
    bk = resolve(params, "params")
    return bk.xp.zeros((), dtype=bk.xp.int32, device=bk.device)


def _cast(xp: Any, x: Any, dtype: Any) -> Any:
    return x if x.dtype == dtype else xp.astype(x, dtype)


def _op(xp: Any, x: Any) -> Any:
    """The opmath dtype of array ``x`` (float32 for float16/bfloat16)."""
    return opmath_dtype(xp, x.dtype)


def _store(xp: Any, x: Any, like: Any) -> Any:
    """``x`` as a state leaf like ``like``: its dtype (one rounding), an array even when 0-d.

    NumPy returns scalars from arithmetic on 0-d arrays; the state keeps arrays.
    """
    if x.dtype != like.dtype:
        x = xp.astype(x, like.dtype)
    if x.ndim == 0 and type(x) is not type(like):
        x = xp.asarray(x)
    return x


def _all_finite(value: Any) -> bool:
    from array_api_compat import array_namespace

    vxp = array_namespace(value)
    return bool(vxp.all(vxp.isfinite(value)))


def _safe_int_increment(xp: Any, count: Any) -> Any:
    """``count + 1``, saturating at the int32 maximum (as optax does)."""
    big = 2**31 - 1
    return xp.where(count < big, count + 1, count)


# --------------------------------------------------------------------------
# scaling
# --------------------------------------------------------------------------


def scale(step_size: float) -> Transform:
    """Multiply updates by a constant ``step_size``."""
    step_size = _number("step_size", step_size)

    def init(params):
        return EmptyState()

    @trusted
    def update(updates, state, params=None):
        xp = validated_backend(updates, params).xp
        return tree_map(lambda g: step_size * _cast(xp, g, _op(xp, g)), updates), state

    return Transform(init, update)


class ScaleByScheduleState(NamedTuple):
    count: Any


def scale_by_schedule(step_size_fn: Schedule) -> Transform:
    """Multiply updates by ``step_size_fn(count)``; ``count`` starts at 0.

    ``count`` is a 0-d int32 array on the parameters' backend and device (as
    optax's), so arithmetic on it follows the backend's promotion: on torch
    ``count * 0.05`` is float32. Write ``float(count)`` (eager backends) or
    cast it (``count.astype(jnp.float64)`` under ``jax.jit``) for float64
    arithmetic; the schedules of :mod:`agnopt.schedules` cast it to float64
    themselves.

    ``step_size_fn`` returns a Python float or a 0-d array. A non-finite
    value raises ``ValueError`` where it can be read without a computation:
    Python numbers and eager arrays (NumPy, torch, CuPy, array-api-strict,
    JAX outside ``jit``). Under ``jax.jit`` and on Dask the value is not
    checked (that would need a device-to-host read or a ``compute()`` every
    step); a NaN there propagates into the parameters, as in optax.
    """
    if not callable(step_size_fn):
        raise TypeError("step_size_fn must be callable (step -> value)")

    def init(params):
        return ScaleByScheduleState(count=_count0(params))

    @trusted
    def update(updates, state, params=None):
        check_state(state, ScaleByScheduleState, "scale_by_schedule")
        bk = validated_backend(updates, params)
        xp = bk.xp
        value = step_size_fn(state.count)
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ValueError(f"learning-rate schedule returned a non-finite value {value}")
        elif is_concrete(value) and not _all_finite(value):
            raise ValueError(f"learning-rate schedule returned a non-finite value {value}")
        count = _safe_int_increment(xp, state.count)

        def one(g):
            op = _op(xp, g)
            return scalar(xp, value, op, bk.device) * _cast(xp, g, op)

        new = tree_map(one, updates)
        return new, ScaleByScheduleState(count=_store(xp, count, state.count))

    return Transform(init, update)


def scale_by_learning_rate(learning_rate: ScalarOrSchedule, *, flip_sign: bool = True) -> Transform:
    """Multiply updates by ``-learning_rate`` (a float or a schedule)."""
    lr = check_learning_rate(learning_rate)  # a checked float, or the schedule
    flip_sign = check_bool("flip_sign", flip_sign)
    sign = -1.0 if flip_sign else 1.0
    if callable(lr):
        return scale_by_schedule(lambda count: sign * lr(count))
    return scale(sign * lr)


def scale_by_sign() -> Transform:
    r"""Replace each update by its sign: :math:`u = \operatorname{sign}(g)`.

    The limit of Adagrad/RMSProp when the accumulator is the current squared
    gradient alone and :math:`\epsilon \to 0`: :math:`g / \sqrt{g^2} = \operatorname{sign}(g)`.
    """

    def init(params):
        return EmptyState()

    @trusted
    def update(updates, state, params=None):
        xp = validated_backend(updates, params).xp
        return tree_map(xp.sign, updates), state

    return Transform(init, update)


# --------------------------------------------------------------------------
# momentum
# --------------------------------------------------------------------------


class TraceState(NamedTuple):
    count: Any
    trace: Any


def trace(
    decay: float, nesterov: bool = False, dampening: float = 0.0, accumulator_dtype: Any = None
) -> Transform:
    r"""Heavy-ball momentum, as ``torch.optim.SGD``.

    .. math::
        b_1 = g_1, \qquad b_t = \mu\, b_{t-1} + (1 - \tau)\, g_t, \qquad
        u_t = g_t + \mu b_t \ \text{(nesterov)} \ \text{or}\ b_t.

    With ``dampening`` :math:`\tau = 0` (the default) this equals
    ``optax.trace(decay, nesterov)``, whose buffer starts at zero.
    """
    decay = check_nonnegative("momentum", decay)
    nesterov = check_bool("nesterov", nesterov)
    dampening = check_nonnegative("dampening", dampening)
    if nesterov and (decay <= 0 or dampening != 0):
        raise ValueError("nesterov momentum requires momentum > 0 and dampening == 0 (as torch.optim.SGD)")

    def init(params):
        return TraceState(count=_count0(params), trace=_zeros_like_tree(params, accumulator_dtype, "accumulator_dtype"))

    @trusted
    def update(updates, state, params=None):
        check_state(state, TraceState, "trace")
        xp = validated_backend(updates, params).xp
        first = state.count == 0

        def one(g, t):
            op = _op(xp, t)
            g = _cast(xp, g, op)
            t_op = _cast(xp, t, op)
            if dampening == 0.0:
                new_t = g + decay * t_op
            else:
                new_t = xp.where(first, g, decay * t_op + (1.0 - dampening) * g)
            u = g + decay * new_t if nesterov else new_t
            return u, _store(xp, new_t, t)

        g_leaves, td = tree_flatten(updates)
        t_leaves = state_leaves(state.trace, g_leaves, td, updates, "trace")
        pairs = [one(g, t) for g, t in zip(g_leaves, t_leaves)]
        new_u = tree_unflatten(td, [p[0] for p in pairs])
        new_t = tree_unflatten(td, [p[1] for p in pairs])
        count = _store(xp, _safe_int_increment(xp, state.count), state.count)
        return new_u, TraceState(count=count, trace=new_t)

    return Transform(init, update)


# --------------------------------------------------------------------------
# diagonal preconditioners
# --------------------------------------------------------------------------


def _precondition(xp: Any, g: Any, acc: Any, eps: float, eps_in_sqrt: bool) -> Any:
    if eps_in_sqrt:
        return g / safe_sqrt(xp, acc + eps)
    return g / (safe_sqrt(xp, acc) + eps)


class ScaleByRssState(NamedTuple):
    sum_of_squares: Any


def scale_by_rss(
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    eps_in_sqrt: bool = False,
    accumulator_dtype: Any = None,
) -> Transform:
    r"""Adagrad's scaling (Duchi, Hazan & Singer, 2011).

    .. math::
        s_t = s_{t-1} + g_t^2, \qquad
        u_t = g_t / (\sqrt{s_t} + \epsilon) \quad\text{or, with eps_in_sqrt,}\quad
        g_t / \sqrt{s_t + \epsilon}.
    """
    initial_accumulator_value = check_nonnegative("initial_accumulator_value", initial_accumulator_value)
    eps = check_nonnegative("eps", eps)
    eps_in_sqrt = check_bool("eps_in_sqrt", eps_in_sqrt)

    def init(params):
        return ScaleByRssState(
            sum_of_squares=_zeros_like_tree(
                params, accumulator_dtype, "accumulator_dtype", fill=initial_accumulator_value
            )
        )

    @trusted
    def update(updates, state, params=None):
        check_state(state, ScaleByRssState, "scale_by_rss")
        xp = validated_backend(updates, params).xp

        g_leaves, td = tree_flatten(updates)
        out_u, out_s = [], []
        for g, s in zip(g_leaves, state_leaves(state.sum_of_squares, g_leaves, td, updates, "sum_of_squares")):
            op = _op(xp, s)
            g = _cast(xp, g, op)
            new_s = _cast(xp, s, op) + g * g
            out_u.append(_precondition(xp, g, new_s, eps, eps_in_sqrt))
            out_s.append(_store(xp, new_s, s))
        return tree_unflatten(td, out_u), ScaleByRssState(sum_of_squares=tree_unflatten(td, out_s))

    return Transform(init, update)


class ScaleByRmsState(NamedTuple):
    nu: Any


def scale_by_rms(
    decay: float = 0.9,
    eps: float = 1e-8,
    eps_in_sqrt: bool = False,
    initial_scale: float = 0.0,
    accumulator_dtype: Any = None,
) -> Transform:
    r"""RMSProp's scaling (Tieleman & Hinton, 2012).

    .. math::
        \nu_t = \beta \nu_{t-1} + (1-\beta) g_t^2, \qquad
        u_t = g_t / (\sqrt{\nu_t} + \epsilon) \quad\text{or}\quad g_t / \sqrt{\nu_t + \epsilon}.
    """
    decay = check_beta("decay", decay)
    eps = check_nonnegative("eps", eps)
    initial_scale = check_nonnegative("initial_scale", initial_scale)
    eps_in_sqrt = check_bool("eps_in_sqrt", eps_in_sqrt)

    def init(params):
        return ScaleByRmsState(nu=_zeros_like_tree(params, accumulator_dtype, "accumulator_dtype", fill=initial_scale))

    @trusted
    def update(updates, state, params=None):
        check_state(state, ScaleByRmsState, "scale_by_rms")
        xp = validated_backend(updates, params).xp

        g_leaves, td = tree_flatten(updates)
        out_u, out_nu = [], []
        for g, nu in zip(g_leaves, state_leaves(state.nu, g_leaves, td, updates, "nu")):
            op = _op(xp, nu)
            g = _cast(xp, g, op)
            new_nu = decay * _cast(xp, nu, op) + (1.0 - decay) * (g * g)
            out_u.append(_precondition(xp, g, new_nu, eps, eps_in_sqrt))
            out_nu.append(_store(xp, new_nu, nu))
        return tree_unflatten(td, out_u), ScaleByRmsState(nu=tree_unflatten(td, out_nu))

    return Transform(init, update)


class ScaleByStddevState(NamedTuple):
    mu: Any
    nu: Any


def scale_by_stddev(
    decay: float = 0.9,
    eps: float = 1e-8,
    eps_in_sqrt: bool = False,
    initial_scale: float = 0.0,
    accumulator_dtype: Any = None,
) -> Transform:
    r"""Centered RMSProp's scaling (Graves, 2013): divide by a running standard deviation.

    .. math::
        \mu_t = \beta\mu_{t-1} + (1-\beta) g_t,\quad
        \nu_t = \beta\nu_{t-1} + (1-\beta) g_t^2,\quad
        u_t = g_t / (\sqrt{\nu_t - \mu_t^2} + \epsilon).
    """
    decay = check_beta("decay", decay)
    eps = check_nonnegative("eps", eps)
    initial_scale = check_nonnegative("initial_scale", initial_scale)
    eps_in_sqrt = check_bool("eps_in_sqrt", eps_in_sqrt)

    def init(params):
        return ScaleByStddevState(
            mu=_zeros_like_tree(params, accumulator_dtype, "accumulator_dtype"),
            nu=_zeros_like_tree(params, accumulator_dtype, "accumulator_dtype", fill=initial_scale),
        )

    @trusted
    def update(updates, state, params=None):
        check_state(state, ScaleByStddevState, "scale_by_stddev")
        xp = validated_backend(updates, params).xp
        g_leaves, td = tree_flatten(updates)
        mus = state_leaves(state.mu, g_leaves, td, updates, "mu")
        nus = state_leaves(state.nu, g_leaves, td, updates, "nu")
        out_u, out_mu, out_nu = [], [], []
        for g, mu, nu in zip(g_leaves, mus, nus):
            op = _op(xp, nu)
            g = _cast(xp, g, op)
            new_mu = decay * _cast(xp, mu, op) + (1.0 - decay) * g
            new_nu = decay * _cast(xp, nu, op) + (1.0 - decay) * (g * g)
            # nu - mu^2 >= 0 in exact arithmetic, not after rounding: clamp before the root
            var = xp.maximum(new_nu - new_mu * new_mu, xp.zeros_like(new_nu))
            out_u.append(_precondition(xp, g, var, eps, eps_in_sqrt))
            out_mu.append(_store(xp, new_mu, mu))
            out_nu.append(_store(xp, new_nu, nu))
        return tree_unflatten(td, out_u), ScaleByStddevState(
            mu=tree_unflatten(td, out_mu), nu=tree_unflatten(td, out_nu)
        )

    return Transform(init, update)


class ScaleByAdamState(NamedTuple):
    count: Any
    mu: Any
    nu: Any
    nu_max: Any  # None unless amsgrad


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    amsgrad: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> Transform:
    r"""Adam's scaling (Kingma & Ba, 2015, Algorithm 1), with bias correction.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \\
        \hat m_t &= m_t / (1-\beta_1^t), \qquad \hat v_t = v_t / (1-\beta_2^t), \qquad
        u_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon).

    The running moments :math:`m_t, v_t` are kept; only copies are corrected
    (the seed's pseudocode overwrote them). With ``amsgrad`` the denominator
    uses :math:`\max_{s \le t} v_s` (the raw second moment, then corrected), as
    ``torch.optim.Adam(amsgrad=True)``; ``optax.amsgrad`` takes the maximum of
    the corrected moments instead, which differs in the first steps.
    """
    b1 = check_beta("b1", b1)
    b2 = check_beta("b2", b2)
    eps = check_nonnegative("eps", eps)
    eps_root = check_nonnegative("eps_root", eps_root)
    amsgrad = check_bool("amsgrad", amsgrad)

    def init(params):
        nu = _zeros_like_tree(params, nu_dtype, "nu_dtype")
        return ScaleByAdamState(
            count=_count0(params),
            mu=_zeros_like_tree(params, mu_dtype, "mu_dtype"),
            nu=nu,
            nu_max=nu if amsgrad else None,
        )

    @trusted
    def update(updates, state, params=None):
        check_state(state, ScaleByAdamState, "scale_by_adam")
        xp = validated_backend(updates, params).xp
        count = _safe_int_increment(xp, state.count)
        g_leaves, td = tree_flatten(updates)
        mus = state_leaves(state.mu, g_leaves, td, updates, "mu")
        nus = state_leaves(state.nu, g_leaves, td, updates, "nu")
        nu_maxs = (state_leaves(state.nu_max, g_leaves, td, updates, "nu_max") if amsgrad
                   else [None] * len(g_leaves))
        out_u, out_mu, out_nu, out_max = [], [], [], []
        bias = {}
        for g, mu, nu, nu_max in zip(g_leaves, mus, nus, nu_maxs):
            opm, opn = _op(xp, mu), _op(xp, nu)
            gm = _cast(xp, g, opm)
            gn = _cast(xp, g, opn)
            new_mu = b1 * _cast(xp, mu, opm) + (1.0 - b1) * gm
            new_nu = b2 * _cast(xp, nu, opn) + (1.0 - b2) * (gn * gn)
            if opn not in bias:
                t = xp.astype(count, opn)
                bias[opn] = (one_minus_pow(xp, t, b1), one_minus_pow(xp, t, b2))
            bc1, bc2 = bias[opn]
            if amsgrad:
                v = xp.maximum(_cast(xp, nu_max, opn), new_nu)
                out_max.append(_store(xp, v, nu_max))
            else:
                v = new_nu
            denom = safe_sqrt(xp, v / bc2 + eps_root) + eps
            u = _cast(xp, new_mu, opn) / bc1 / denom
            out_u.append(u)
            out_mu.append(_store(xp, new_mu, mu))
            out_nu.append(_store(xp, new_nu, nu))
        new_state = ScaleByAdamState(
            count=_store(xp, count, state.count),
            mu=tree_unflatten(td, out_mu),
            nu=tree_unflatten(td, out_nu),
            nu_max=tree_unflatten(td, out_max) if amsgrad else None,
        )
        return tree_unflatten(td, out_u), new_state

    return Transform(init, update)


def log_beta(beta: float) -> float:
    """``log(beta)`` in Python float64, ``-inf`` for ``beta == 0`` (so ``0**t`` is 0 for ``t >= 1``)."""
    return math.log(beta) if beta > 0 else -math.inf


def one_minus_pow(xp: Any, t: Any, beta: float) -> Any:
    r"""Adam's bias correction :math:`1 - \beta^t` as ``-expm1(t * log(beta))``.

    ``t`` is the step count (``>= 1``) as an array of the dtype computed in;
    the result has that dtype. The direct ``1 - beta**t`` cancels: in float32,
    ``beta = 0.999`` is stored as ``0.99900001``, so ``1 - beta**t`` is
    ``1.3e-5`` relative off for small ``t`` (about 200 ulp; optax computes it
    so). Here ``log(beta)`` is taken in float64 on the host and rounded once,
    and ``expm1`` does not cancel: a few ulp in any dtype. Every path (generic,
    NumPy table, blocked NumPy, numba, torch, CuPy) uses this expression.
    """
    return -xp.expm1(t * log_beta(beta))


# --------------------------------------------------------------------------
# weight decay and clipping
# --------------------------------------------------------------------------


def add_decayed_weights(weight_decay: float = 0.0) -> Transform:
    r"""Add ``weight_decay * params`` to the updates: :math:`u = g + \lambda\theta`.

    Before a preconditioner this is an L2 penalty (``torch.optim.Adam``'s
    ``weight_decay``); after it, scaled by the learning rate, it is decoupled
    weight decay (``torch.optim.AdamW``, Loshchilov & Hutter, 2019).
    """
    weight_decay = check_nonnegative("weight_decay", weight_decay)

    def init(params):
        return EmptyState()

    @trusted
    def update(updates, state, params=None):
        if weight_decay == 0.0:
            return updates, state
        if params is None:
            raise ValueError("add_decayed_weights: update() needs params (weight_decay != 0)")
        xp = validated_backend(updates, params).xp
        def one(g, p):
            op = _op(xp, g)
            return _cast(xp, g, op) + weight_decay * _cast(xp, p, op)

        return tree_map(one, updates, params), state

    return Transform(init, update)


def clip_by_global_norm(max_norm: float) -> Transform:
    r"""Rescale all updates together so that their global L2 norm is at most ``max_norm``.

    .. math:: u \leftarrow u \cdot \min(1, c / \|u\|_2), \quad \|u\|_2^2 = \textstyle\sum_{\text{leaves}} \sum u_i^2

    As ``optax.clip_by_global_norm``; ``torch.nn.utils.clip_grad_norm_`` adds
    1e-6 to the norm in the ratio. The norm is computed scaled
    (:func:`agnopt._core.norms.scaled_norm`: ``s * sqrt(sum((u / s)**2))``,
    ``s`` a power of two near ``max |u|``) in at least float32, so it neither overflows (float32
    ``[1e20] * 100`` clipped to 1 gives 0.1 each) nor underflows (float16
    ``[1e-4] * 4`` clipped to ``1e-5`` gives ``5e-6`` each). The updates are
    returned in that opmath dtype (float32 for float16/bfloat16 leaves).
    Inside the clipping region the transform is the identity, also for
    derivatives (``jax.grad`` at ``u = 0`` is 1).
    """
    max_norm = check_nonnegative("max_norm", max_norm)
    if max_norm == 0:
        raise ValueError("max_norm must be > 0")

    def init(params):
        return EmptyState()

    @trusted
    def update(updates, state, params=None):
        xp = validated_backend(updates, params).xp
        leaves, td = tree_flatten(updates)
        acc_dtype = xp.result_type(*[g.dtype for g in leaves]) if len(leaves) > 1 else leaves[0].dtype
        op = opmath_dtype(xp, acc_dtype)
        norm = scaled_norm(xp, leaves, op)  # max|g| * sqrt(sum((g / max|g|)^2)): no overflow/underflow
        inside = norm <= max_norm
        # double where: no division by norm = 0 (finite derivatives at g = 0); inside the
        # region the updates are returned as they are (the identity, also for derivatives)
        one = xp.ones_like(norm)
        safe_norm = xp.where(inside, one, norm)
        factor = xp.where(inside, one, max_norm / safe_norm)  # 1 inside: u = g exactly
        # a factor below the normal range (norm > max_norm / tiny) would lose digits:
        # there divide by the norm first, then multiply by max_norm
        normal = factor >= xp.finfo(op).smallest_normal
        pre = xp.where(normal, one, safe_norm)
        post = xp.where(normal, factor, max_norm * one)
        return tree_unflatten(td, [(_cast(xp, g, op) / pre) * post for g in leaves]), state

    return Transform(init, update)
