"""CuPy fast path of :func:`agnopt.step`: one fused ``cupy.ElementwiseKernel`` per leaf and step.

The kernel reads ``params``, ``grads`` and the state once and writes
``params`` and the state in place (buffer donation, see :func:`agnopt.step`):
the traffic of a perfectly fused step. It performs the generic transforms'
operations in their order; it is compiled with ``--fmad=false`` so that no
multiply-add is contracted into an FMA, which the generic path (one kernel
per operation) never does. Options that change the formula are compile-time
constants (one kernel per optimizer variant); bias corrections and
scheduled learning rates are 0-d device arrays computed as the generic path
computes them (no host synchronisation).

Not measured on this project's CPU-only machines; ``tests/test_fast_paths.py``
checks it against the generic path wherever CUDA is available.
"""

from __future__ import annotations

import functools

from . import common as fc
from .._core.tree import tree_flatten, tree_unflatten

STATS = {"cupy": 0}

_PRECOND = {
    False: "T d = sqrt(a) + eps;",
    True: "T d = sqrt(a + eps);",
}


def kernel_source(kind: str, f: dict) -> tuple[str, str, str]:
    """``(in_params, out_params, body)`` of the fused kernel for ``kind`` with options ``f``."""
    if kind == "sgd":
        ins = "T g, T wd, T mu, T omd, T neg_lr"
        outs = "T p, T b" if f["mom"] else "T p"
        body = ["T gi = g;"]
        if f["wd"]:
            body.append("gi = gi + wd * p;")
        if f["mom"]:
            if f["damp"]:
                body.append("T bi = gi;" if f["first"] else "T bi = mu * b + omd * gi;")
            else:
                body.append("T bi = gi + mu * b;")
            body.append("b = bi;")
            body.append("T u = gi + mu * bi;" if f["nesterov"] else "T u = bi;")
        else:
            body.append("T u = gi;")
        body.append("p = p + neg_lr * u;")
    elif kind == "sign_sgd":
        ins = "T g, T neg_lr"
        outs = "T p"
        body = ["T s = (g > (T)0) ? (T)1 : ((g < (T)0) ? (T)(-1) : g);",  # np.sign (0 stays 0, NaN stays NaN)
                "p = p + neg_lr * s;"]
    elif kind == "adagrad":
        ins = "T g, T wd, T eps, T neg_lr"
        outs = "T p, T acc"
        body = ["T gi = g;"]
        if f["wd"]:
            body.append("gi = gi + wd * p;")
        body += ["T a = acc + gi * gi;", "acc = a;", _PRECOND[f["eps_in_sqrt"]], "p = p + neg_lr * (gi / d);"]
    elif kind == "rmsprop":
        ins = "T g, T wd, T decay, T omd, T eps, T mom, T neg_lr"
        outs = "T p" + (", T mu" if f["centered"] else "") + ", T nu" + (", T tr" if f["mom"] else "")
        body = ["T gi = g;"]
        if f["wd"]:
            body.append("gi = gi + wd * p;")
        body += ["T v = decay * nu + omd * (gi * gi);", "nu = v;"]
        if f["centered"]:
            body += ["T m = decay * mu + omd * gi;", "mu = m;", "T a = v - m * m;"]
        else:
            body.append("T a = v;")
        body += [_PRECOND[f["eps_in_sqrt"]], "T u = gi / d;"]
        if f["mom"]:
            body += ["T bi = u + mom * tr;", "tr = bi;",
                     "u = u + mom * bi;" if f["nesterov"] else "u = bi;"]
        body.append("p = p + neg_lr * u;")
    else:  # adam / adamw
        ins = "T g, T wd, T b1, T omb1, T b2, T omb2, T bc1, T bc2, T eps, T eps_root, T neg_lr"
        outs = "T p, T mu, T nu" + (", T vmax" if f["amsgrad"] else "")
        body = ["T pi = p;", "T gi = g;"]
        if f["wd_mode"] == 1:
            body.append("gi = gi + wd * pi;")
        body += ["T m = b1 * mu + omb1 * gi;", "T v = b2 * nu + omb2 * (gi * gi);", "mu = m;", "nu = v;"]
        if f["amsgrad"]:
            body += ["T a = vmax;", "if (a > v || a != a) v = a;", "vmax = v;"]
        body.append("T u = m / bc1 / (sqrt(v / bc2 + eps_root) + eps);")
        if f["wd_mode"] == 2:
            body.append("u = u + wd * pi;")
        body.append("p = pi + neg_lr * u;")
    return ins, outs, "\n".join(body)


@functools.lru_cache(maxsize=None)
def cupy_kernel(kind: str, flag_items: tuple):
    import cupy

    ins, outs, body = kernel_source(kind, dict(flag_items))
    return cupy.ElementwiseKernel(ins, outs, body, f"agnopt_{kind}_step",
                                  options=("--fmad=false",))


_ARGS = {
    "sgd": ("wd", "mu", "omd", "neg_lr"),
    "sign_sgd": ("neg_lr",),
    "adagrad": ("wd", "eps", "neg_lr"),
    "rmsprop": ("wd", "decay", "omd", "eps", "mom", "neg_lr"),
    "adam": ("wd", "b1", "omb1", "b2", "omb2", "bc1", "bc2", "eps", "eps_root", "neg_lr"),
    "adamw": ("wd", "b1", "omb1", "b2", "omb2", "bc1", "bc2", "eps", "eps_root", "neg_lr"),
}
_OUTS = {"sgd": ("trace",), "sign_sgd": (), "adagrad": ("acc",), "rmsprop": ("mu", "nu", "trace"),
         "adam": ("mu", "nu", "vmax"), "adamw": ("mu", "nu", "vmax")}


def try_step(spec, params, p_leaves, td, grads, state):
    """The fast step on CuPy arrays, or None when the generic path must run."""
    import cupy

    g_leaves, gtd = tree_flatten(grads)
    if gtd != td:
        return None
    nd = cupy.ndarray
    dev0 = p_leaves[0].device
    for p, g in zip(p_leaves, g_leaves):
        if (type(p) is not nd or type(g) is not nd or p.dtype.kind != "f" or g.dtype != p.dtype
                or p.shape != g.shape or p.device != dev0 or g.device != dev0
                or not p.flags.c_contiguous):
            return None
    n = len(p_leaves)
    plan = fc.read_state(spec, state, td, n)
    if plan is None:
        return None
    for cnt in (plan.count, plan.sched_count):
        if cnt is not None and not (type(cnt) is nd and cnt.shape == () and cnt.dtype.kind == "i"):
            return None
    kind = spec.kind
    bufs = {}
    for name in fc.BUF_ORDER[kind]:
        lv = plan.bufs.get(name)
        if lv is None:
            continue
        for b, p, g in zip(lv, p_leaves, g_leaves):
            if (type(b) is not nd or b.dtype != p.dtype or b.shape != p.shape or b.device != dev0
                    or not b.flags.c_contiguous or b is p or b is g):
                return None
        bufs[name] = lv
    if "vmax" in bufs:
        bufs["vmax"] = [v.copy() if v is m or v.data.ptr == m.data.ptr else v
                        for v, m in zip(bufs["vmax"], bufs["nu"])]
    names = list(bufs)
    for i, a in enumerate(names):
        for b in names[:i]:
            if any(x is y for x, y in zip(bufs[a], bufs[b])):
                return None

    import array_api_compat.cupy as xp

    new_count = None if plan.count is None else fc.increment(xp, plan.count)
    new_sched = None if plan.sched_count is None else fc.increment(xp, plan.sched_count)
    flags = dict(plan.flags)
    if kind == "sgd":
        flags["first"] = bool(flags["mom"] and flags["damp"] and int(plan.count) == 0)
    kern = cupy_kernel(kind, tuple(sorted(flags.items())))
    per_dtype: dict = {}
    for li in range(n):
        p = p_leaves[li]
        g = g_leaves[li]
        c = per_dtype.get(p.dtype)
        if c is None:
            c = per_dtype[p.dtype] = fc.constants(spec, plan, xp, p.dtype, dev0, new_count)
        outs = [bufs[name][li] for name in _OUTS[kind] if name in bufs]
        kern(g, *[c[k] for k in _ARGS[kind]], p, *outs)
    STATS["cupy"] += n
    st = fc.new_state(plan, new_count, new_sched, bufs)
    return tree_unflatten(td, p_leaves), st
