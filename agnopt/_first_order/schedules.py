"""Learning-rate schedules: callables ``step -> value``.

A schedule takes the step count (a Python int, or the 0-d integer array that
the optimizer keeps in its state, on the parameters' device) and returns the
value for that step: a Python float for an int, a 0-d floating array for an
array. Step 0 is the first update, as in optax.

Array steps are evaluated in float64 where the backend has it, so that a
schedule is as precise as its Python counterpart; the optimizer casts the
value to each parameter's dtype.
"""

from __future__ import annotations

import math
from typing import Any

from .._core.typing import Schedule
from .transforms import check_bool

__all__ = [
    "Schedule",
    "constant",
    "cosine_decay",
    "exponential_decay",
    "linear_schedule",
    "linear_warmup",
    "warmup_cosine_decay",
]


class _Ops:
    """``math`` for Python numbers, the array namespace for arrays."""

    def __init__(self, step: Any):
        if isinstance(step, (int, float)) and not isinstance(step, bool):
            self.xp = None
            self.t = float(step)
        else:
            from array_api_compat import array_namespace

            xp = array_namespace(step)
            dt = getattr(xp, "float64", None) or xp.float32
            self.xp = xp
            self.t = xp.astype(step, dt)

    def cos(self, x):
        return math.cos(x) if self.xp is None else self.xp.cos(x)

    def clip(self, x, lo, hi):
        if self.xp is None:
            return min(max(x, lo), hi)
        return self.xp.clip(x, lo, hi)

    def floor(self, x):
        return math.floor(x) if self.xp is None else self.xp.floor(x)

    def where(self, cond, a, b):
        if self.xp is None:
            return a if cond else b
        return self.xp.where(cond, a, b)


def _check_finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_steps(name: str, value: int, allow_zero: bool = False) -> int:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and int(value) == value
        and value >= (0 if allow_zero else 1)
    )
    if not ok:
        raise ValueError(
            f"{name} must be an integer >= {0 if allow_zero else 1}, got {value!r}"
        )
    return int(value)


def constant(value: float) -> Schedule:
    """The same value at every step."""
    value = _check_finite("value", value)

    def schedule(step):
        ops = _Ops(step)
        return value if ops.xp is None else ops.t * 0 + value

    return schedule


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    r"""``init_value * decay_rate ** ((step - transition_begin) / transition_steps)``.

    Constant ``init_value`` before ``transition_begin``; with ``staircase`` the
    exponent is floored; ``end_value`` bounds the value (a floor when decaying,
    a ceiling when growing). Same definition as ``optax.exponential_decay``.
    """
    init_value = _check_finite("init_value", init_value)
    decay_rate = _check_finite("decay_rate", decay_rate)
    transition_steps = _check_steps("transition_steps", transition_steps)
    transition_begin = _check_steps("transition_begin", transition_begin, allow_zero=True)
    staircase = check_bool("staircase", staircase)
    if decay_rate <= 0:
        raise ValueError(f"decay_rate must be > 0, got {decay_rate}")

    def schedule(step):
        ops = _Ops(step)
        p = ops.clip(ops.t - transition_begin, 0.0, math.inf) / transition_steps
        if staircase:
            p = ops.floor(p)
        v = init_value * decay_rate**p
        if end_value is not None:
            if decay_rate < 1:
                v = ops.clip(v, end_value, math.inf)
            else:
                v = ops.clip(v, -math.inf, end_value)
        return v

    return schedule


def cosine_decay(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> Schedule:
    r"""Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps``.

    .. math:: v(t) = v_0\left[(1-\alpha)\left(\tfrac12(1+\cos(\pi \min(t, T)/T))\right)^{p} + \alpha\right]

    As ``optax.cosine_decay_schedule`` (Loshchilov & Hutter, SGDR, 2017).
    """
    init_value = _check_finite("init_value", init_value)
    decay_steps = _check_steps("decay_steps", decay_steps)
    alpha = _check_finite("alpha", alpha)

    def schedule(step):
        ops = _Ops(step)
        t = ops.clip(ops.t, 0.0, float(decay_steps))
        c = 0.5 * (1.0 + ops.cos(math.pi * t / decay_steps))
        return init_value * ((1.0 - alpha) * c**exponent + alpha)

    return schedule


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """Linear interpolation from ``init_value`` to ``end_value``, then constant."""
    init_value = _check_finite("init_value", init_value)
    end_value = _check_finite("end_value", end_value)
    transition_steps = _check_steps("transition_steps", transition_steps)
    transition_begin = _check_steps("transition_begin", transition_begin, allow_zero=True)

    def schedule(step):
        ops = _Ops(step)
        frac = 1.0 - ops.clip(ops.t - transition_begin, 0.0, float(transition_steps)) / transition_steps
        # optax's arithmetic order, so that both give the same rounding
        return (init_value - end_value) * frac + end_value

    return schedule


def linear_warmup(init_value: float, peak_value: float, warmup_steps: int) -> Schedule:
    """Linear warm-up from ``init_value`` to ``peak_value`` in ``warmup_steps``, then constant."""
    return linear_schedule(init_value, peak_value, warmup_steps)


def warmup_cosine_decay(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    """Linear warm-up to ``peak_value``, then cosine decay to ``end_value``.

    ``decay_steps`` counts the warm-up too, as in ``optax.warmup_cosine_decay_schedule``.
    """
    warmup_steps = _check_steps("warmup_steps", warmup_steps, allow_zero=True)
    decay_steps = _check_steps("decay_steps", decay_steps)
    if decay_steps <= warmup_steps:
        raise ValueError(
            f"decay_steps ({decay_steps}) must be larger than warmup_steps ({warmup_steps})"
        )
    peak_value = _check_finite("peak_value", peak_value)
    end_value = _check_finite("end_value", end_value)
    warm = linear_schedule(init_value, peak_value, max(warmup_steps, 1))
    alpha = end_value / peak_value if peak_value != 0 else 0.0
    cos = cosine_decay(peak_value, decay_steps - warmup_steps, alpha=alpha, exponent=exponent)

    def schedule(step):
        ops = _Ops(step)
        if ops.xp is None:
            return warm(step) if step < warmup_steps else cos(step - warmup_steps)
        return ops.where(step < warmup_steps, warm(step), cos(step - warmup_steps))

    return schedule
