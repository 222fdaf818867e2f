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
from .._core.tree import tree_flatten
from .._first_order.transforms import _all_finite, one_minus_pow

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


def _flags(kind: str, hp: dict) -> tuple[dict, tuple]:
    """The kernel's static options and the buffers it needs, from the hyperparameters."""
    if kind == "sgd":
        mom = _has_mom(hp)
        return (dict(wd=hp["weight_decay"] != 0.0, mom=mom, nesterov=bool(hp["nesterov"]),
                     damp=hp["dampening"] != 0.0), ("trace",) if mom else ())
    if kind == "sign_sgd":
        return {}, ()
    if kind == "adagrad":
        return dict(wd=hp["weight_decay"] != 0.0, eps_in_sqrt=bool(hp["eps_in_sqrt"])), ("acc",)
    if kind == "rmsprop":
        mom = _has_mom(hp)
        centered = bool(hp["centered"])
        return (dict(wd=hp["weight_decay"] != 0.0, centered=centered, mom=mom,
                     nesterov=bool(hp["nesterov"]), eps_in_sqrt=bool(hp["eps_in_sqrt"])),
                (("mu",) if centered else ()) + ("nu",) + (("trace",) if mom else ()))
    # adam / adamw
    amsgrad = bool(hp["amsgrad"])
    return (dict(amsgrad=amsgrad,
                 wd_mode=(0 if hp["weight_decay"] == 0.0 else (1 if kind == "adam" else 2))),
            ("mu", "nu") + (("vmax",) if amsgrad else ()))


def read_state(spec, state, td, n: int) -> Plan | None:
    """The buffers of ``state`` as lists of leaves, or None if it is not the expected layout.

    The layout is the alias's own declaration (``spec.layout``: one
    :class:`~agnopt._first_order.step.Slot` per chain element, written next to
    its chain in :mod:`agnopt._first_order.alias`); nothing here knows how a
    chain is ordered.
    """
    layout = spec.layout
    if type(state) is not tuple or len(state) != len(layout):
        return None
    flags, needed = _flags(spec.kind, spec.hp)
    bufs: dict = {}
    counts: dict = {}
    for sub, slot in zip(state, layout):
        if type(sub) is not slot.cls:
            return None
        for name, field in slot.fields:
            value = getattr(sub, field)
            if name in ("count", "sched_count"):
                counts[name] = value
            elif value is not None:
                lv, t = tree_flatten(value)
                if t != td or len(lv) != n:
                    return None
                bufs[name] = lv
    if set(bufs) != set(needed):  # e.g. nu_max set without amsgrad
        return None
    if callable(spec.hp["learning_rate"]) != ("sched_count" in counts):
        return None
    return Plan(spec.kind, flags, bufs, tuple(state), counts.get("count"), counts.get("sched_count"))


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
    """Adam's ``(1 - b1**t, 1 - b2**t)`` as 0-d arrays of ``dtype`` (the generic expressions,
    :func:`~agnopt._first_order.transforms.one_minus_pow`)."""
    t = xp.astype(new_count, dtype)
    return one_minus_pow(xp, t, b1), one_minus_pow(xp, t, b2)


def new_state(plan: Plan, new_count, new_sched_count, bufs: dict, layout: tuple):
    """The state tuple after the step, holding the (updated) buffers ``bufs`` (lists of leaves)."""
    from .._core.tree import tree_unflatten

    subs = list(plan.subs)
    for i, (sub, slot) in enumerate(zip(subs, layout)):
        repl = {}
        for name, field in slot.fields:
            if name == "count":
                repl[field] = new_count
            elif name == "sched_count":
                repl[field] = new_sched_count
            elif name in bufs:
                repl[field] = tree_unflatten(tree_flatten(getattr(sub, field))[1], bufs[name])
        if repl:
            subs[i] = sub._replace(**repl)
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
