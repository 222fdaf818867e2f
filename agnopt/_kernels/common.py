"""What the fast paths of :func:`agnopt.step` share: reading a registered
optimizer's state, the per-step constants, and the new state.

Nothing here touches array data; the constants are computed with the same
Array API expressions as the generic transforms (so they round identically),
then handed to a backend kernel.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .._core.backend import is_concrete, scalar
from .._first_order.base import EmptyState
from .._first_order.transforms import _all_finite
from .._first_order.transforms import (
    ScaleByAdamState,
    ScaleByRmsState,
    ScaleByRssState,
    ScaleByScheduleState,
    ScaleByStddevState,
    TraceState,
)
from .._core.tree import tree_flatten

_BIG = 2**31 - 1


class Plan(NamedTuple):
    """A registered optimizer's state, read for the fast path."""

    kind: str
    flags: dict  # static options (compile-time for kernels)
    bufs: dict  # name -> list of leaves (same order as the params' leaves)
    subs: tuple  # the state's sub-states
    count: Any  # the scale_by_adam / trace count array, or None
    sched_count: Any  # the scale_by_schedule count array, or None


def _has_mom(hp):
    return hp.get("momentum", 0.0) > 0 or hp.get("nesterov", False)


def read_state(spec, state, td, n: int) -> Plan | None:
    """The buffers of ``state`` as lists of leaves, or None if it is not the expected layout."""
    hp = spec.hp
    kind = spec.kind
    sched = callable(hp["learning_rate"])
    if not isinstance(state, tuple) or type(state) is not tuple:
        return None
    lr_cls = ScaleByScheduleState if sched else EmptyState
    flags: dict = {}
    bufs: dict = {}
    count = None
    if kind == "sgd":
        mom = _has_mom(hp)
        layout = (EmptyState, TraceState if mom else EmptyState, lr_cls)
        flags = dict(wd=hp["weight_decay"] != 0.0, mom=mom, nesterov=bool(hp["nesterov"]),
                     damp=hp["dampening"] != 0.0)
    elif kind == "sign_sgd":
        layout = (EmptyState, lr_cls)
    elif kind == "adagrad":
        layout = (EmptyState, ScaleByRssState, lr_cls)
        flags = dict(wd=hp["weight_decay"] != 0.0, eps_in_sqrt=bool(hp["eps_in_sqrt"]))
    elif kind == "rmsprop":
        mom = _has_mom(hp)
        centered = bool(hp["centered"])
        layout = (EmptyState, ScaleByStddevState if centered else ScaleByRmsState,
                  TraceState if mom else EmptyState, lr_cls)
        flags = dict(wd=hp["weight_decay"] != 0.0, centered=centered, mom=mom,
                     nesterov=bool(hp["nesterov"]), eps_in_sqrt=bool(hp["eps_in_sqrt"]))
    elif kind in ("adam", "adamw"):
        layout = ((EmptyState, ScaleByAdamState, lr_cls) if kind == "adam"
                  else (ScaleByAdamState, EmptyState, lr_cls))
        flags = dict(amsgrad=bool(hp["amsgrad"]),
                     wd_mode=(0 if hp["weight_decay"] == 0.0 else (1 if kind == "adam" else 2)))
    else:  # pragma: no cover
        return None
    if len(state) != len(layout):
        return None
    for s, cls in zip(state, layout):
        if type(s) is not cls:
            return None

    def leaves_of(tree):
        lv, t = tree_flatten(tree)
        if t != td or len(lv) != n:
            return None
        return lv

    if kind == "sgd" and flags["mom"]:
        tr = state[1]
        bufs["trace"] = leaves_of(tr.trace)
        count = tr.count
    elif kind == "adagrad":
        bufs["acc"] = leaves_of(state[1].sum_of_squares)
    elif kind == "rmsprop":
        sc = state[1]
        bufs["nu"] = leaves_of(sc.nu)
        if flags["centered"]:
            bufs["mu"] = leaves_of(sc.mu)
        if flags["mom"]:
            bufs["trace"] = leaves_of(state[2].trace)
            count = state[2].count
    elif kind in ("adam", "adamw"):
        ad = state[1] if kind == "adam" else state[0]
        bufs["mu"] = leaves_of(ad.mu)
        bufs["nu"] = leaves_of(ad.nu)
        if flags["amsgrad"]:
            if ad.nu_max is None:
                return None
            bufs["vmax"] = leaves_of(ad.nu_max)
        elif ad.nu_max is not None:
            return None
        count = ad.count
    for v in bufs.values():
        if v is None:
            return None
    sched_count = state[-1].count if sched else None
    return Plan(kind, flags, bufs, tuple(state), count, sched_count)


def check_count(c: Any, is_array) -> bool:
    return c is None or (is_array(c) and tuple(c.shape) == () and "int" in str(c.dtype))


def increment(xp, count):
    """``count + 1`` saturating at the int32 maximum, as the generic transforms."""
    return xp.where(count < _BIG, count + 1, count)


def lr_value(hp, xp, sched_count, dtype, device):
    """The step's ``-learning_rate`` as the generic path forms it: a float or a 0-d array of ``dtype``."""
    lr = hp["learning_rate"]
    if not callable(lr):
        return -1.0 * lr  # scale(-lr): a Python float (weakly typed)
    value = -1.0 * lr(sched_count)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"learning-rate schedule returned a non-finite value {value}")
    elif is_concrete(value) and not _all_finite(value):
        # as scale_by_schedule: raise before any parameter is overwritten in place
        raise ValueError(f"learning-rate schedule returned a non-finite value {value}")
    return scalar(xp, value, dtype, device)


def bias_corrections(xp, new_count, dtype, b1, b2):
    """Adam's ``(1 - b1**t, 1 - b2**t)`` as 0-d arrays of ``dtype`` (the generic expressions)."""
    t = xp.astype(new_count, dtype)
    return 1.0 - b1**t, 1.0 - b2**t


def new_state(plan: Plan, new_count, new_sched_count, bufs: dict):
    """The state tuple after the step, holding the (updated) buffers ``bufs`` (lists of leaves)."""
    from .._core.tree import tree_unflatten

    kind = plan.kind
    subs = list(plan.subs)

    def tree(name, like):
        _, td = tree_flatten(like)
        return tree_unflatten(td, bufs[name])

    if kind == "sgd" and plan.flags["mom"]:
        tr = subs[1]
        subs[1] = TraceState(count=new_count, trace=tree("trace", tr.trace))
    elif kind == "adagrad":
        subs[1] = ScaleByRssState(sum_of_squares=tree("acc", subs[1].sum_of_squares))
    elif kind == "rmsprop":
        sc = subs[1]
        if plan.flags["centered"]:
            subs[1] = ScaleByStddevState(mu=tree("mu", sc.mu), nu=tree("nu", sc.nu))
        else:
            subs[1] = ScaleByRmsState(nu=tree("nu", sc.nu))
        if plan.flags["mom"]:
            subs[2] = TraceState(count=new_count, trace=tree("trace", subs[2].trace))
    elif kind in ("adam", "adamw"):
        i = 1 if kind == "adam" else 0
        ad = subs[i]
        subs[i] = ScaleByAdamState(
            count=new_count, mu=tree("mu", ad.mu), nu=tree("nu", ad.nu),
            nu_max=tree("vmax", ad.nu_max) if plan.flags["amsgrad"] else None,
        )
    if new_sched_count is not None:
        subs[-1] = ScaleByScheduleState(count=new_sched_count)
    return tuple(subs)


BUF_ORDER = {
    "sgd": ("trace",),
    "sign_sgd": (),
    "adagrad": ("acc",),
    "rmsprop": ("mu", "nu", "trace"),
    "adam": ("mu", "nu", "vmax"),
    "adamw": ("mu", "nu", "vmax"),
}


def constants(spec, plan: Plan, xp, dtype, device, new_count):
    """Per-dtype constants of the step, as the generic path computes them.

    ``dtype`` is the opmath dtype the kernel computes in (float32 for
    float16/bfloat16 storage, as the generic transforms). Returns a dict of Python floats (hyperparameters, cast to ``dtype`` by the
    kernel exactly as NumPy/torch cast a weak Python scalar) and 0-d arrays of
    ``dtype`` (bias corrections, scheduled learning rate).
    """
    hp = spec.hp
    c: dict = {"neg_lr": lr_value(hp, xp, plan.sched_count, dtype, device)}
    kind = spec.kind
    if kind == "sgd":
        c["wd"] = hp["weight_decay"]
        c["mu"] = hp["momentum"]
        c["omd"] = 1.0 - hp["dampening"]
        c["first"] = plan.flags["mom"] and plan.flags["damp"] and bool(plan.count == 0)
    elif kind == "adagrad":
        c["wd"] = hp["weight_decay"]
        c["eps"] = hp["eps"]
    elif kind == "rmsprop":
        c["wd"] = hp["weight_decay"]
        c["decay"] = hp["decay"]
        c["omd"] = 1.0 - hp["decay"]
        c["eps"] = hp["eps"]
        c["mom"] = hp["momentum"]
    elif kind in ("adam", "adamw"):
        b1, b2 = hp["b1"], hp["b2"]
        c["wd"] = hp["weight_decay"]
        c["b1"], c["omb1"] = b1, 1.0 - b1
        c["b2"], c["omb2"] = b2, 1.0 - b2
        c["eps"], c["eps_root"] = hp["eps"], hp["eps_root"]
        c["bc1"], c["bc2"] = bias_corrections(xp, new_count, dtype, b1, b2)
    return c
