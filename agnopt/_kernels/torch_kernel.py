"""torch fast path of :func:`agnopt.step`: in-place ``out=`` operations over blocks.

The block programs of :mod:`agnopt._kernels.cpu` (the generic transforms'
operations, in their order) run on torch tensors with ``torch.mul(..., out=)``
and friends, under ``torch.no_grad()``: ``params`` and the state are
overwritten (buffer donation, see :func:`agnopt.step`), and the only scratch
memory is two block-sized buffers per dtype and device. Scalars are passed as
the generic path passes them (Python floats, 0-d tensors for the bias
corrections and scheduled learning rates), so the result is the generic
torch path's bit for bit on the CPU.

float16 and bfloat16 leaves are computed in float32 ("opmath", the generic
transforms' rule): each block of the parameters, gradients and state is
widened to float32, the same program runs on it, and the results are rounded
once when written back.

**torch's own fused kernels (CUDA).** The block programs make one pass over
memory per operation (about 45 array passes for an Adam step instead of the
7 a fused step needs: 4.1 ms at 1e8 float32 parameters on an H200 against
0.91 ms for ``torch.optim.Adam(fused=True)``). On devices listed in
``FUSED_DEVICES`` (CUDA), ``adam`` and ``adamw`` whose configuration is one
torch implements exactly (a constant float learning rate, ``eps_root == 0``,
no ``amsgrad``) call ``torch._fused_adam_`` / ``torch._fused_adamw_``, the
kernels behind ``torch.optim.Adam(fused=True)`` / ``AdamW(fused=True)``:
one pass, the same formula (Kingma & Ba's update with the bias corrections,
L2 weight decay added to the gradient for ``adam``, decoupled decay
``p <- p - lr * wd * p`` for ``adamw``) in float32 opmath for float16 /
bfloat16 / float32 storage, but a different rounding order
(``sqrt(v) / sqrt(1 - b2**t)`` instead of ``sqrt(v / (1 - b2**t))``,
``lr / (1 - b1**t)`` folded into one factor): equal to the generic path to
rounding, not bit for bit. On the CPU the block programs stay (bit-for-bit
equal to the generic path); ``tests/test_fast_paths.py`` runs the fused route
on the CPU (torch's CPU kernels of the same names) against the generic path.
Every other configuration, and any torch without these kernels, takes the
block programs.
"""

from __future__ import annotations

import threading

import torch

from .._core.tree import tree_flatten, tree_unflatten
from . import alias
from . import common as fc
from .blocks import PROGRAMS

BLOCK_CPU = 1 << 18
BLOCK_CUDA = 1 << 24
FUSED_DEVICES = ("cuda",)  # device types where torch's fused Adam/AdamW kernels replace the block programs
_tls = threading.local()
STATS = {"torch": 0, "torch_fused": 0}  # leaves updated: all fast paths / torch's fused kernels among them
FUSED_ERRORS: list = []  # errors torch's fused kernels raised (their checks run before any write)
_LOW = (torch.float16, torch.bfloat16)


class TorchOps:
    @staticmethod
    def mul(a, b, out):
        torch.mul(a, b, out=out)

    @staticmethod
    def add(a, b, out):
        torch.add(a, b, out=out)

    @staticmethod
    def sub(a, b, out):
        torch.sub(a, b, out=out)

    @staticmethod
    def div(a, b, out):
        torch.div(a, b, out=out)

    @staticmethod
    def sqrt(a, out):
        torch.sqrt(a, out=out)

    @staticmethod
    def maximum(a, b, out):
        torch.maximum(a, b, out=out)

    @staticmethod
    def sign(a, out):
        torch.sign(a, out=out)

    @staticmethod
    def clamp0(a, out):
        torch.clamp_min(a, 0.0, out=out)  # NaN propagates, as xp.maximum

    @staticmethod
    def copy(src, dst):
        dst.copy_(src)


def _scratch(dtype, device, n):
    cache = getattr(_tls, "scratch", None)
    if cache is None:
        cache = _tls.scratch = {}
    key = (dtype, device)
    bufs = cache.get(key)
    if bufs is None or bufs[0].shape[0] < n:
        bufs = cache[key] = (torch.empty(max(n, 1), dtype=dtype, device=device),
                             torch.empty(max(n, 1), dtype=dtype, device=device))
    return bufs


def _is_count(c):
    return c is None or (isinstance(c, torch.Tensor) and c.ndim == 0 and not c.dtype.is_floating_point
                         and not c.dtype.is_complex and c.dtype != torch.bool)


def try_step(spec, params, p_leaves, td, grads, state):
    """The fast step on torch tensors, or None when the generic path must run."""
    g_leaves, gtd = tree_flatten(grads)
    if gtd != td:
        return None
    T = torch.Tensor
    dev0 = p_leaves[0].device
    for p, g in zip(p_leaves, g_leaves):
        if (not isinstance(p, T) or not isinstance(g, T) or not p.dtype.is_floating_point
                or g.dtype != p.dtype or p.shape != g.shape or p.device != dev0 or g.device != dev0
                or not p.is_contiguous() or p.is_complex()):
            return None
    n = len(p_leaves)
    plan = fc.read_state(spec, state, td, n)
    if plan is None or not _is_count(plan.count) or not _is_count(plan.sched_count):
        return None
    for cnt in (plan.count, plan.sched_count):
        if cnt is not None and cnt.device != dev0:
            return None
    kind = spec.kind
    order = fc.BUF_ORDER[kind]
    bufs = {}
    for name in order:
        lv = plan.bufs.get(name)
        if lv is None:
            continue
        for b, p, g in zip(lv, p_leaves, g_leaves):
            if (not isinstance(b, T) or b.dtype != p.dtype or b.shape != p.shape or b.device != dev0
                    or not b.is_contiguous() or b is p):
                return None
        bufs[name] = lv
    if "vmax" in bufs:  # init() returns nu_max is nu: the first step needs its own buffer
        bufs["vmax"] = [v.clone() if v is m or v.data_ptr() == m.data_ptr() else v
                        for v, m in zip(bufs["vmax"], bufs["nu"])]
    names = list(bufs)
    for i, a in enumerate(names):
        for b in names[:i]:
            if any(x is y for x, y in zip(bufs[a], bufs[b])):
                return None
    g_leaves = _unaliased(p_leaves, bufs, g_leaves)
    if g_leaves is None:
        return None

    import array_api_compat.torch as xp

    with torch.no_grad():
        new_count = None if plan.count is None else fc.increment(xp, plan.count)
        new_sched = None if plan.sched_count is None else fc.increment(xp, plan.sched_count)
        if dev0.type in FUSED_DEVICES and _torch_fused(spec, plan, p_leaves, g_leaves, bufs, new_count):
            STATS["torch"] += n
            STATS["torch_fused"] += n
            return tree_unflatten(td, p_leaves), fc.new_state(plan, new_count, new_sched, bufs, spec.layout)
        flags = plan.flags
        block = BLOCK_CUDA if dev0.type == "cuda" else BLOCK_CPU
        prog = PROGRAMS[kind]
        per_dtype: dict = {}
        for li in range(n):
            p = p_leaves[li]
            g = g_leaves[li]
            dt = p.dtype
            op = torch.float32 if dt in _LOW else dt  # opmath
            c = per_dtype.get(dt)
            if c is None:
                c = per_dtype[dt] = fc.constants(spec, plan, xp, op, dev0, new_count)
            pf = p.view(-1)
            gf = g.reshape(-1)
            bf = [bufs[name][li].view(-1) if name in bufs else None for name in order]
            while len(bf) < 3:
                bf.append(None)
            m = pf.shape[0]
            s1, s2 = _scratch(op, dev0, min(m, block))
            for i in range(0, max(m, 1), block):
                j = min(i + block, m)
                k = j - i
                if op is dt:
                    prog(TorchOps, c, flags, pf[i:j], gf[i:j],
                         [None if b is None else b[i:j] for b in bf], s1[:k], s2[:k])
                    continue
                # half precision: widen the block, run the program in float32, round once on store
                pw = pf[i:j].to(op)
                bw = [None if b is None else b[i:j].to(op) for b in bf]
                prog(TorchOps, c, flags, pw, gf[i:j].to(op), bw, s1[:k], s2[:k])
                pf[i:j].copy_(pw)
                for b, w in zip(bf, bw):
                    if b is not None:
                        b[i:j].copy_(w)
        STATS["torch"] += n
        st = fc.new_state(plan, new_count, new_sched, bufs, spec.layout)
    return tree_unflatten(td, p_leaves), st


def _unaliased(p_leaves, bufs, g_leaves):
    """``g_leaves``, a gradient overlapping a parameter or a state buffer the step writes (the
    same tensor, a view of one, of this leaf or another) cloned; None when two of the buffers
    written overlap each other (:func:`agnopt._kernels.alias.copies_of_overlapping`)."""
    written = list(p_leaves) + [b for lv in bufs.values() for b in lv]
    return alias.copies_of_overlapping(written, g_leaves, alias.torch_span,
                                       lambda g: g.detach().clone())


_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FUSED_OFF: set = set()  # (device type, dtype) where torch rejected the fused call


def fused_applies(spec, plan) -> bool:
    """True when torch's fused Adam/AdamW kernel computes this optimizer's update (to rounding).

    Adam/AdamW with a constant (Python number) learning rate, ``eps_root == 0``
    (torch has no ``eps_root``) and no ``amsgrad`` (torch's ``max`` keeps the
    old maximum where the second moment is NaN; the generic path propagates
    the NaN).
    """
    if spec.kind not in ("adam", "adamw") or plan.flags["amsgrad"]:
        return False
    hp = spec.hp
    lr = hp["learning_rate"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        return False
    return hp["eps_root"] == 0.0


def _torch_fused(spec, plan, p_leaves, g_leaves, bufs, new_count) -> bool:
    """Run ``torch._fused_adam_`` / ``torch._fused_adamw_`` on the leaves; False when it does not apply.

    The kernels read the step count from float32 tensors (one per leaf, the
    same 0-d tensor here: torch.optim keeps ``state["step"]`` as float32 for
    its fused path) and bias-correct with it; ``new_count`` is the count after
    this step, as torch increments its step tensors before the call. One call
    for all leaves, so only trees of one dtype (the CUDA kernel requires one
    dtype per call; a tree mixing dtypes takes the block programs). If torch
    rejects the call (its argument checks run before it writes anything),
    the error is recorded in ``FUSED_ERRORS``, this device type and dtype are
    not tried again, and the block programs run.
    """
    if not fused_applies(spec, plan):
        return False
    dt = p_leaves[0].dtype
    key = (p_leaves[0].device.type, dt)
    fn = getattr(torch, "_fused_adam_" if spec.kind == "adam" else "_fused_adamw_", None)
    if fn is None or dt not in _FUSED_DTYPES or key in _FUSED_OFF or any(p.dtype != dt for p in p_leaves):
        return False
    # torch's kernels walk every tensor as flat memory: the element order must be the parameters'
    # (a transposed gradient takes the block programs, which index it properly)
    if not all(t.is_contiguous() for lv in (g_leaves, bufs["mu"], bufs["nu"]) for t in lv):
        return False
    hp = spec.hp
    n = len(p_leaves)
    try:
        fn(list(p_leaves), list(g_leaves), list(bufs["mu"]), list(bufs["nu"]), [],
           [new_count.to(torch.float32)] * n, amsgrad=False, lr=float(hp["learning_rate"]),
           beta1=hp["b1"], beta2=hp["b2"], weight_decay=hp["weight_decay"], eps=hp["eps"],
           maximize=False)
    except (RuntimeError, TypeError, NotImplementedError) as e:
        _FUSED_OFF.add(key)
        FUSED_ERRORS.append(f"{key}: {type(e).__name__}: {str(e)[:200]}")
        return False
    return True
