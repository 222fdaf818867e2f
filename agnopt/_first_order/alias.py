r"""The first-order optimizers, each a :func:`~agnopt.chain` of small transforms.

Defaults follow the seed's formulas: accumulators start at zero, eps is added
outside the square root, RMSProp's decay is 0.9, Adam is Kingma & Ba's with
bias correction. Every docstring gives the argument values that reproduce
``torch.optim`` and ``optax`` exactly (the test suite checks them).

``learning_rate`` is a float or a schedule ``step -> value`` (see
:mod:`agnopt.schedules`); step 0 is the first update.
"""

from __future__ import annotations

from typing import Any

from .._core.typing import ScalarOrSchedule
from .base import EmptyState, Transform, chain, identity
from .step import Slot, register_fast
from .transforms import (
    ScaleByAdamState,
    ScaleByRmsState,
    ScaleByRssState,
    ScaleByScheduleState,
    ScaleByStddevState,
    TraceState,
    add_decayed_weights,
    check_bool,
    check_learning_rate,
    check_nonnegative,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_rss,
    scale_by_sign,
    scale_by_stddev,
    trace,
)

__all__ = ["adagrad", "adam", "adamw", "rmsprop", "sgd", "sign_sgd"]


# Each alias is a list of (transform, Slot) pairs: the chain and, next to each
# element, the part of its state the fused kernels of ``step`` read (see
# :class:`~agnopt._first_order.step.Slot`). ``_fused`` builds both from the one
# list, so the layout follows any reordering of the chain.
_NONE = Slot(EmptyState)


def _fused(kind: str, parts: list, **hp: Any) -> Transform:
    t = chain(*[p[0] for p in parts])
    return register_fast(t, kind, tuple(p[1] for p in parts), **hp)


def _lr_part(learning_rate: Any) -> tuple:
    t = scale_by_learning_rate(learning_rate)
    if callable(learning_rate):
        return t, Slot(ScaleByScheduleState, (("sched_count", "count"),))
    return t, _NONE


def _trace_part(on: bool, momentum, nesterov, dampening, accumulator_dtype) -> tuple:
    if not on:
        return identity(), _NONE
    return (trace(momentum, nesterov, dampening, accumulator_dtype),
            Slot(TraceState, (("count", "count"), ("trace", "trace"))))


_ADAM_SLOT = Slot(ScaleByAdamState, (("count", "count"), ("mu", "mu"), ("nu", "nu"), ("vmax", "nu_max")))


_SGD_ORDER = ("; sgd's positional order is optax's, sgd(learning_rate, momentum, nesterov, "
              "dampening, weight_decay), not torch.optim.SGD's (lr, momentum, dampening, ...): "
              "pass dampening=... as a keyword")


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.0,
    nesterov: bool = False,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    *,
    accumulator_dtype: Any = None,
) -> Transform:
    r"""Stochastic gradient descent with optional heavy-ball or Nesterov momentum.

    .. math::
        g_t &\leftarrow g_t + \lambda\theta_{t-1} \\
        b_1 &= g_1,\quad b_t = \mu b_{t-1} + (1-\tau) g_t \\
        \theta_t &= \theta_{t-1} - \eta\,(g_t + \mu b_t \text{ if nesterov else } b_t)

    Reproduces ``torch.optim.SGD(lr, momentum, dampening, weight_decay,
    nesterov)`` with the same values, and ``optax.sgd(lr, momentum, nesterov)``
    (whose momentum buffer starts at zero, the same thing when dampening is 0).

    Parameters
    ----------
    learning_rate : float or schedule
        :math:`\eta`.
    momentum : float
        :math:`\mu \ge 0`; 0 disables momentum.
    nesterov : bool
        Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
    dampening : float
        :math:`\tau`, scales the new gradient in the buffer (not on the first step).
    weight_decay : float
        :math:`\lambda`, an L2 penalty added to the gradient.
    accumulator_dtype : dtype, optional
        dtype of the momentum buffer (default: the parameter's).
    """
    learning_rate = check_learning_rate(learning_rate)
    momentum = check_nonnegative("momentum", momentum)
    nesterov = check_bool("nesterov", nesterov, _SGD_ORDER)
    parts = [
        (add_decayed_weights(weight_decay), _NONE),
        _trace_part(momentum > 0 or nesterov, momentum, nesterov, dampening, accumulator_dtype),
        _lr_part(learning_rate),
    ]
    return _fused("sgd", parts, learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                  dampening=float(dampening), weight_decay=float(weight_decay))


def sign_sgd(learning_rate: ScalarOrSchedule) -> Transform:
    r"""Sign descent: :math:`\theta_t = \theta_{t-1} - \eta\,\operatorname{sign}(g_t)`.

    The limit the seed derives when Adagrad's or RMSProp's accumulator is
    replaced by the current squared gradient (decay 0, no cumulant) and
    :math:`\epsilon \to 0`: :math:`g/\sqrt{g^2} = \operatorname{sign}(g)`.
    ``rmsprop(lr, decay=0.0, eps=0.0)`` gives the same steps wherever no
    gradient is exactly zero. Equals
    ``optax.chain(optax.scale_by_sign(), optax.scale(-lr))``; ``torch.optim``
    has no sign descent.
    """
    learning_rate = check_learning_rate(learning_rate)
    parts = [(scale_by_sign(), _NONE), _lr_part(learning_rate)]
    return _fused("sign_sgd", parts, learning_rate=learning_rate)


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    eps_in_sqrt: bool = False,
    weight_decay: float = 0.0,
    *,
    accumulator_dtype: Any = None,
) -> Transform:
    r"""Adagrad (Duchi, Hazan & Singer, 2011).

    .. math::
        g_t \leftarrow g_t + \lambda\theta_{t-1},\quad
        s_t = s_{t-1} + g_t^2,\quad
        \theta_t = \theta_{t-1} - \eta\, g_t / (\sqrt{s_t} + \epsilon)

    (with ``eps_in_sqrt=True``: :math:`g_t/\sqrt{s_t + \epsilon}`). The defaults
    (eps outside the root, :math:`s_0 = 0`, eps = 1e-10) are the seed's
    pseudocode and ``torch.optim.Adagrad``'s: ``adagrad(lr)`` reproduces
    ``torch.optim.Adagrad(lr)``; set ``initial_accumulator_value`` and
    ``weight_decay`` to torch's values (``lr_decay`` is a schedule here:
    ``lambda t: lr / (1 + float(t) * lr_decay)``; ``float``, because the
    count ``t`` is an int32 array and ``t * lr_decay`` would be float32 on torch). ``optax.adagrad(lr)`` is
    ``adagrad(lr, initial_accumulator_value=0.1, eps=1e-7, eps_in_sqrt=True)``.
    """
    learning_rate = check_learning_rate(learning_rate)
    parts = [
        (add_decayed_weights(weight_decay), _NONE),
        (scale_by_rss(initial_accumulator_value, eps, eps_in_sqrt, accumulator_dtype),
         Slot(ScaleByRssState, (("acc", "sum_of_squares"),))),
        _lr_part(learning_rate),
    ]
    return _fused("adagrad", parts, learning_rate=learning_rate, eps=float(eps),
                  eps_in_sqrt=eps_in_sqrt, weight_decay=float(weight_decay))


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    eps_in_sqrt: bool = False,
    centered: bool = False,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    *,
    initial_scale: float = 0.0,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
) -> Transform:
    r"""RMSProp (Tieleman & Hinton, 2012), optionally centered (Graves, 2013) and with momentum.

    .. math::
        \nu_t &= \beta\nu_{t-1} + (1-\beta) g_t^2 \quad(\text{centered: also } \mu_t = \beta\mu_{t-1} + (1-\beta) g_t)\\
        d_t &= \sqrt{\nu_t} + \epsilon \quad(\text{centered: } \sqrt{\nu_t - \mu_t^2} + \epsilon) \\
        b_t &= \rho b_{t-1} + g_t / d_t, \qquad \theta_t = \theta_{t-1} - \eta b_t

    (no momentum: :math:`\theta_t = \theta_{t-1} - \eta g_t/d_t`).
    Default decay 0.9 is the seed's (and optax's). ``torch.optim.RMSprop(lr,
    alpha, eps, weight_decay, momentum, centered)`` is reproduced by
    ``rmsprop(lr, decay=alpha, eps=eps, weight_decay=..., momentum=...,
    centered=...)`` (torch's default alpha is 0.99). ``optax.rmsprop(lr,
    decay, eps)`` puts eps inside the root: ``rmsprop(lr, decay, eps,
    eps_in_sqrt=True)``; optax applies momentum after the learning rate, the
    same for a constant learning rate.
    """
    learning_rate = check_learning_rate(learning_rate)
    momentum = check_nonnegative("momentum", momentum)
    centered = check_bool("centered", centered, "; rmsprop's order is (learning_rate, decay, eps, "
                          "eps_in_sqrt, centered, momentum, weight_decay): pass the others by keyword")
    nesterov = check_bool("nesterov", nesterov)
    if centered:
        scaler = (scale_by_stddev(decay, eps, eps_in_sqrt, initial_scale, accumulator_dtype),
                  Slot(ScaleByStddevState, (("mu", "mu"), ("nu", "nu"))))
    else:
        scaler = (scale_by_rms(decay, eps, eps_in_sqrt, initial_scale, accumulator_dtype),
                  Slot(ScaleByRmsState, (("nu", "nu"),)))
    parts = [
        (add_decayed_weights(weight_decay), _NONE),
        scaler,
        _trace_part(momentum > 0 or nesterov, momentum, nesterov, 0.0, accumulator_dtype),
        _lr_part(learning_rate),
    ]
    return _fused("rmsprop", parts, learning_rate=learning_rate, decay=float(decay), eps=float(eps),
                  eps_in_sqrt=eps_in_sqrt, centered=centered, momentum=momentum,
                  nesterov=nesterov, weight_decay=float(weight_decay))


def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    amsgrad: bool = False,
    weight_decay: float = 0.0,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> Transform:
    r"""Adam (Kingma & Ba, 2015) with bias correction.

    .. math::
        g_t &\leftarrow g_t + \lambda\theta_{t-1} \quad (\text{L2 penalty}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \theta_t &= \theta_{t-1} - \eta\, \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    Defaults are the paper's. Reproduces ``torch.optim.Adam(lr, betas=(b1,
    b2), eps, weight_decay, amsgrad)`` with the same values, and
    ``optax.adam(lr, b1, b2, eps, eps_root)`` (optax has no L2 term; its
    ``amsgrad`` differs, see :func:`scale_by_adam`). ``mu_dtype``/``nu_dtype``
    set the moments' dtypes (e.g. float32 moments for float16 parameters).
    """
    learning_rate = check_learning_rate(learning_rate)
    parts = [
        (add_decayed_weights(weight_decay), _NONE),
        (scale_by_adam(b1, b2, eps, eps_root, amsgrad, mu_dtype, nu_dtype), _ADAM_SLOT),
        _lr_part(learning_rate),
    ]
    return _fused("adam", parts, learning_rate=learning_rate, b1=float(b1), b2=float(b2),
                  eps=float(eps), eps_root=float(eps_root), amsgrad=amsgrad,
                  weight_decay=float(weight_decay))


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    amsgrad: bool = False,
    weight_decay: float = 1e-2,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> Transform:
    r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    .. math:: \theta_t = \theta_{t-1} - \eta\,(\hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon) + \lambda\theta_{t-1})

    Reproduces ``torch.optim.AdamW(lr, betas=(b1, b2), eps, weight_decay,
    amsgrad)`` (default weight_decay 1e-2, torch's) and ``optax.adamw(lr, b1,
    b2, eps, eps_root, weight_decay)`` (optax's default weight_decay is 1e-4).
    """
    learning_rate = check_learning_rate(learning_rate)
    parts = [
        (scale_by_adam(b1, b2, eps, eps_root, amsgrad, mu_dtype, nu_dtype), _ADAM_SLOT),
        (add_decayed_weights(weight_decay), _NONE),
        _lr_part(learning_rate),
    ]
    return _fused("adamw", parts, learning_rate=learning_rate, b1=float(b1), b2=float(b2),
                  eps=float(eps), eps_root=float(eps_root), amsgrad=amsgrad,
                  weight_decay=float(weight_decay))
