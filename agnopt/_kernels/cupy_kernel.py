"""CuPy fast path of :func:`agnopt.step`: one fused ``cupy.ElementwiseKernel`` per leaf and step.

The kernel reads ``params``, ``grads`` and the state once and writes
``params`` and the state in place (buffer donation, see :func:`agnopt.step`):
the traffic of a perfectly fused step. It performs the generic transforms'
operations in their order, in the generic path's opmath dtype (float16 in
float32, rounded once on store; see :func:`kernel_source`); it is compiled
with ``--fmad=false`` so that no multiply-add is contracted into an FMA, which the generic path (one kernel
per operation) never does. Options that change the formula are compile-time
constants (one kernel per optimizer variant); bias corrections and
scheduled learning rates are 0-d device arrays computed as the generic path
computes them (no host synchronisation); Adam's step count and bias
corrections come from one small kernel (:func:`count_kernel`) instead of
eight launches of tiny array operations.

Not measured on this project's CPU-only machines; ``tests/test_fast_paths.py``
checks it against the generic path wherever CUDA is available.
"""

from __future__ import annotations

import functools

from .._core.tree import tree_flatten, tree_unflatten
from .._first_order.transforms import log_beta
from . import alias
from . import common as fc

STATS = {"cupy": 0}

_PRECOND = {
    False: "O d = sqrt(a) + eps;",
    True: "O d = sqrt(a + eps);",
}
_CTYPE = {"float32": "float", "float64": "double"}


def opmath_name(dtype_name: str) -> str:
    """The dtype a kernel computes in for storage ``dtype_name`` (the generic transforms' opmath rule)."""
    return "float64" if dtype_name == "float64" else "float32"


def kernel_source(kind: str, f: dict, op: str = "float32") -> tuple[str, str, str]:
    """``(in_params, out_params, body)`` of the fused kernel for ``kind`` with options ``f``.

    Storage (``T``: the parameters', gradients' and state's dtype) and
    arithmetic are separate: every value is read into a local of the opmath
    type ``O`` (``op``: float32 for float16/float32 storage, float64 for
    float64), every operation is done in ``O``, and each result is rounded
    once when stored (``(T)``), as the generic transforms do (float16 is
    computed in float32, never in half precision). Hyperparameters are passed
    as ``op`` scalars (a float16 ``eps = 1e-8`` would round to 0), the bias
    corrections and scheduled learning rates as 0-d ``op`` arrays.
    """
    sc = lambda names: ", ".join(f"{op} {n}" for n in names)  # noqa: E731
    if kind == "sgd":
        ins = "T g, " + sc(("wd", "mu", "omd", "neg_lr"))
        outs = "T p, T b" if f["mom"] else "T p"
        body = ["O pi = (O)p;", "O gi = (O)g;"]
        if f["wd"]:
            body.append("gi = gi + wd * pi;")
        if f["mom"]:
            if f["damp"]:
                body.append("O bi = gi;" if f["first"] else "O bi = mu * (O)b + omd * gi;")
            else:
                body.append("O bi = gi + mu * (O)b;")
            body.append("b = (T)bi;")
            body.append("O u = gi + mu * bi;" if f["nesterov"] else "O u = bi;")
        else:
            body.append("O u = gi;")
        body.append("p = (T)(pi + neg_lr * u);")
    elif kind == "sign_sgd":
        ins = "T g, " + sc(("neg_lr",))
        outs = "T p"
        body = ["O gi = (O)g;",
                "O s = (gi > (O)0) ? (O)1 : ((gi < (O)0) ? (O)(-1) : gi);",  # np.sign (0 stays 0, NaN stays NaN)
                "p = (T)((O)p + neg_lr * s);"]
    elif kind == "adagrad":
        ins = "T g, " + sc(("wd", "eps", "neg_lr"))
        outs = "T p, T acc"
        body = ["O pi = (O)p;", "O gi = (O)g;"]
        if f["wd"]:
            body.append("gi = gi + wd * pi;")
        body += ["O a = (O)acc + gi * gi;", "acc = (T)a;", _PRECOND[f["eps_in_sqrt"]],
                 "p = (T)(pi + neg_lr * (gi / d));"]
    elif kind == "rmsprop":
        ins = "T g, " + sc(("wd", "decay", "omd", "eps", "mom", "neg_lr"))
        outs = "T p" + (", T mu" if f["centered"] else "") + ", T nu" + (", T tr" if f["mom"] else "")
        body = ["O pi = (O)p;", "O gi = (O)g;"]
        if f["wd"]:
            body.append("gi = gi + wd * pi;")
        body += ["O v = decay * (O)nu + omd * (gi * gi);", "nu = (T)v;"]
        if f["centered"]:
            body += ["O m = decay * (O)mu + omd * gi;", "mu = (T)m;", "O a = v - m * m;",
                     "if (a < (O)0) a = (O)0;"]  # clamp the rounding residue (NaN stays NaN)
        else:
            body.append("O a = v;")
        body += [_PRECOND[f["eps_in_sqrt"]], "O u = gi / d;"]
        if f["mom"]:
            body += ["O bi = u + mom * (O)tr;", "tr = (T)bi;",
                     "u = u + mom * bi;" if f["nesterov"] else "u = bi;"]
        body.append("p = (T)(pi + neg_lr * u);")
    else:  # adam / adamw
        ins = "T g, " + sc(("wd", "b1", "omb1", "b2", "omb2", "bc1", "bc2", "eps", "eps_root", "neg_lr"))
        outs = "T p, T mu, T nu" + (", T vmax" if f["amsgrad"] else "")
        body = ["O pi = (O)p;", "O gi = (O)g;"]
        if f["wd_mode"] == 1:
            body.append("gi = gi + wd * pi;")
        body += ["O m = b1 * (O)mu + omb1 * gi;", "O v = b2 * (O)nu + omb2 * (gi * gi);",
                 "mu = (T)m;", "nu = (T)v;"]
        if f["amsgrad"]:
            body += ["O a = (O)vmax;", "if (a > v || a != a) v = a;", "vmax = (T)v;"]
        body.append("O u = m / bc1 / (sqrt(v / bc2 + eps_root) + eps);")
        if f["wd_mode"] == 2:
            body.append("u = u + wd * pi;")
        body.append("p = (T)(pi + neg_lr * u);")
    body.insert(0, f"typedef {_CTYPE[op]} O;")
    return ins, outs, "\n".join(body)


@functools.lru_cache(maxsize=None)
def cupy_kernel(kind: str, flag_items: tuple, op: str = "float32"):
    import cupy

    ins, outs, body = kernel_source(kind, dict(flag_items), op)
    return cupy.ElementwiseKernel(ins, outs, body, f"agnopt_{kind}_step_{op}",
                                  options=("--fmad=false",))


@functools.lru_cache(maxsize=None)
def count_kernel(op: str = "float32"):
    """One launch for Adam's per-step scalars (instead of eight tiny ones).

    ``(count, b1, b2) -> (count + 1 saturating at the int32 maximum,
    1 - b1**t, 1 - b2**t)`` with ``t`` the new count in the opmath type: the
    operations of :func:`.common.increment` and :func:`.common.bias_corrections`
    (``where(c < 2**31 - 1, c + 1, c)``, ``astype``, ``-expm1(t * log(b))``
    with ``log(b)`` from the host, ``-inf`` for ``b = 0``) on
    0-d arrays, in one kernel. The fused step is timed with the host work
    before its launch: eight separate launches cost about as much host time
    as a tenth of the step at 1e8 parameters (H200, 1.1 ms).
    """
    import cupy

    body = (f"typedef {_CTYPE[op]} O;\n"
            "nc = (c < (I)2147483647) ? (I)(c + 1) : c;\n"
            "O t = (O)nc;\n"
            "bc1 = -expm1(t * lb1);\n"
            "bc2 = -expm1(t * lb2);")
    return cupy.ElementwiseKernel(f"I c, {op} lb1, {op} lb2", f"I nc, {op} bc1, {op} bc2", body,
                                  f"agnopt_adam_count_{op}")


def _adam_constants(hp, plan, xp, dtype, dev, bcs):
    """:func:`.common.constants` of Adam/AdamW with the bias corrections ``bcs`` already made."""
    b1, b2 = hp["b1"], hp["b2"]
    return {"neg_lr": fc.lr_value(hp, xp, plan.sched_count, dtype, dev), "wd": hp["weight_decay"],
            "b1": b1, "omb1": 1.0 - b1, "b2": b2, "omb2": 1.0 - b2, "eps": hp["eps"],
            "eps_root": hp["eps_root"], "bc1": bcs[0], "bc2": bcs[1]}


_COUNT_KERNEL = {"ok": True, "error": None}  # off for good if it fails to compile (generic expressions)


def _adam_scalars(xp, hp, count, op):
    """``(new_count, bc1, bc2)`` of an Adam step: one kernel, or the generic expressions."""
    if _COUNT_KERNEL["ok"]:
        try:
            return count_kernel(op)(count, log_beta(hp["b1"]), log_beta(hp["b2"]))
        except Exception as e:  # compilation: raised before anything is written
            _COUNT_KERNEL.update(ok=False, error=f"{type(e).__name__}: {str(e)[:300]}")
    nc = fc.increment(xp, count)
    bc1, bc2 = fc.bias_corrections(xp, nc, getattr(xp, op), hp["b1"], hp["b2"])
    return nc, bc1, bc2


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


def unaliased(p_leaves, bufs, g_leaves):
    """``g_leaves`` with each gradient whose memory overlaps a parameter or a state buffer the step
    writes (the same array, a view of one, of this leaf or of another) replaced by a copy, as
    the generic path reads every gradient before it writes; None (the generic path) when two of
    the buffers written overlap each other. Address ranges (:mod:`agnopt._kernels.alias`) of
    ``.data.ptr`` and the strides: this function does not import CuPy (tests run it on
    stand-ins with ``.data.ptr``)."""
    written = list(p_leaves) + [b for lv in bufs.values() for b in lv]
    return alias.copies_of_overlapping(written, g_leaves, alias.cupy_span, lambda g: g.copy())


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
                    or not b.flags.c_contiguous or b is p):
                return None
        bufs[name] = lv
    if "vmax" in bufs:
        with cupy.cuda.Device(dev0.id):  # the copy on the parameters' GPU
            bufs["vmax"] = [v.copy() if v is m or v.data.ptr == m.data.ptr else v
                            for v, m in zip(bufs["vmax"], bufs["nu"])]
    names = list(bufs)
    for i, a in enumerate(names):
        for b in names[:i]:
            if any(x is y for x, y in zip(bufs[a], bufs[b])):
                return None
    with cupy.cuda.Device(dev0.id):  # copies on the parameters' GPU
        g_leaves = unaliased(p_leaves, bufs, g_leaves)
    if g_leaves is None:
        return None

    import array_api_compat.cupy as xp

    with cupy.cuda.Device(dev0.id):  # kernels and 0-d constants on the parameters' GPU
        adam = kind in ("adam", "adamw") and plan.count is not None
        if adam:  # count, bias corrections: one launch (per opmath dtype), not eight
            scal = {}
            for p in p_leaves:
                op = opmath_name(p.dtype.name)
                if op not in scal:
                    scal[op] = _adam_scalars(xp, spec.hp, plan.count, op)
            new_count = next(iter(scal.values()))[0]
        else:
            new_count = None if plan.count is None else fc.increment(xp, plan.count)
        new_sched = None if plan.sched_count is None else fc.increment(xp, plan.sched_count)
        flags = dict(plan.flags)
        if kind == "sgd":
            flags["first"] = bool(flags["mom"] and flags["damp"] and int(plan.count) == 0)
        fkey = tuple(sorted(flags.items()))
        per_dtype: dict = {}
        for li in range(n):
            p = p_leaves[li]
            g = g_leaves[li]
            hit = per_dtype.get(p.dtype)
            if hit is None:
                op = opmath_name(p.dtype.name)
                if adam:
                    c = _adam_constants(spec.hp, plan, xp, getattr(xp, op), dev0, scal[op][1:])
                else:
                    c = fc.constants(spec, plan, xp, getattr(xp, op), dev0, new_count)
                args = [c[k] for k in _ARGS[kind]]  # Python floats are cast to the declared ``op`` type
                hit = per_dtype[p.dtype] = (cupy_kernel(kind, fkey, op), args)
            kern, args = hit
            outs = [bufs[name][li] for name in _OUTS[kind] if name in bufs]
            kern(g, *args, p, *outs)
    STATS["cupy"] += n
    st = fc.new_state(plan, new_count, new_sched, bufs, spec.layout)
    return tree_unflatten(td, p_leaves), st
