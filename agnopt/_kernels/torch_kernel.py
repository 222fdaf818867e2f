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
"""

from __future__ import annotations

import threading

import torch

from . import common as fc
from .cpu import PROGRAMS
from .._core.tree import tree_flatten, tree_unflatten

BLOCK_CPU = 1 << 18
BLOCK_CUDA = 1 << 24
_tls = threading.local()
STATS = {"torch": 0}
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
                    or not b.is_contiguous() or b is p or b is g):
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

    import array_api_compat.torch as xp

    with torch.no_grad():
        new_count = None if plan.count is None else fc.increment(xp, plan.count)
        new_sched = None if plan.sched_count is None else fc.increment(xp, plan.sched_count)
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
