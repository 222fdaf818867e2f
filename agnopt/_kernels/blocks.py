"""The block programs of the fused steps: the generic transforms' operations, in their
order, with ``out=``, over blocks of ``BLOCK`` elements.

One program per optimizer family (sgd, sign_sgd, adagrad, rmsprop, adam) runs
on any backend whose operations ``O`` take an ``out`` argument:
:class:`NumpyOps` here (the blocked NumPy path of :mod:`.cpu`), torch's in
:mod:`.torch_kernel`. Two block-sized scratch buffers per dtype keep every
intermediate in cache; no temporary has the size of the parameters.
"""

from __future__ import annotations

import threading

import numpy as np

BLOCK = 1 << 16  # elements per block (256 KiB per float32 stream): fewer ufunc calls, blocks stay in L2/L3
_tls = threading.local()


# --------------------------------------------------------------------------
# block programs: the generic transforms' operations, in their order, with out=
# (``O`` supplies mul/add/sub/div/sqrt/maximum/sign/copy with an ``out`` argument)
# --------------------------------------------------------------------------


def prog_sgd(O, c, f, p, g, bufs, t1, t2):
    if f["wd"]:
        O.mul(p, c["wd"], t1)
        O.add(g, t1, t1)  # g + wd * p
        g = t1
    if f["mom"]:
        b = bufs[0]
        if f["damp"]:
            if c["first"]:
                O.copy(g, b)  # b_1 = g_1
            else:
                O.mul(b, c["mu"], b)
                O.mul(g, c["omd"], t2)
                O.add(b, t2, b)  # mu * b + (1 - tau) * g
        else:
            O.mul(b, c["mu"], b)
            O.add(g, b, b)  # g + mu * b
        if f["nesterov"]:
            O.mul(b, c["mu"], t2)
            O.add(g, t2, t2)  # g + mu * b
            u = t2
        else:
            u = b
    else:
        u = g
    O.mul(u, c["neg_lr"], t2)
    O.add(p, t2, p)


def prog_sign_sgd(O, c, f, p, g, bufs, t1, t2):
    O.sign(g, t1)
    O.mul(t1, c["neg_lr"], t1)
    O.add(p, t1, p)


def _precondition(O, c, f, g, a, t2):
    """t2 <- g / (sqrt(a) + eps)  or  g / sqrt(a + eps)."""
    if f["eps_in_sqrt"]:
        O.add(a, c["eps"], t2)
        O.sqrt(t2, t2)
    else:
        O.sqrt(a, t2)
        O.add(t2, c["eps"], t2)
    O.div(g, t2, t2)


def prog_adagrad(O, c, f, p, g, bufs, t1, t2):
    s = bufs[0]
    if f["wd"]:
        O.mul(p, c["wd"], t1)
        O.add(g, t1, t1)
        g = t1
    O.mul(g, g, t2)
    O.add(s, t2, s)  # s + g * g
    _precondition(O, c, f, g, s, t2)
    O.mul(t2, c["neg_lr"], t2)
    O.add(p, t2, p)


def prog_rmsprop(O, c, f, p, g, bufs, t1, t2):
    mu, nu, tr = bufs
    if f["wd"]:
        O.mul(p, c["wd"], t1)
        O.add(g, t1, t1)
        g = t1
    if f["centered"]:
        O.mul(mu, c["decay"], mu)
        O.mul(g, c["omd"], t2)
        O.add(mu, t2, mu)  # decay * mu + (1 - decay) * g
    O.mul(g, g, t2)
    O.mul(t2, c["omd"], t2)
    O.mul(nu, c["decay"], nu)
    O.add(nu, t2, nu)  # decay * nu + (1 - decay) * g^2
    if f["centered"]:
        O.mul(mu, mu, t2)
        O.sub(nu, t2, t2)  # nu - mu^2
        O.clamp0(t2, t2)  # max(nu - mu^2, 0): no rounding residue below 0 under the root
        a = t2
    else:
        a = nu
    _precondition(O, c, f, g, a, t2)  # t2 = u
    u = t2
    if f["mom"]:
        O.mul(tr, c["mom"], tr)
        O.add(t2, tr, tr)  # u + mom * b
        if f["nesterov"]:
            O.mul(tr, c["mom"], t1)
            O.add(t2, t1, t2)
            u = t2
        else:
            u = tr
    O.mul(u, c["neg_lr"], t2)
    O.add(p, t2, p)


def prog_adam(O, c, f, p, g, bufs, t1, t2):
    mu, nu, vmax = bufs
    if f["wd_mode"] == 1:  # L2 penalty (adam's weight_decay)
        O.mul(p, c["wd"], t1)
        O.add(g, t1, t1)
        g = t1
    O.mul(mu, c["b1"], mu)
    O.mul(g, c["omb1"], t2)
    O.add(mu, t2, mu)  # b1 * mu + (1 - b1) * g
    O.mul(g, g, t2)
    O.mul(t2, c["omb2"], t2)
    O.mul(nu, c["b2"], nu)
    O.add(nu, t2, nu)  # b2 * nu + (1 - b2) * g^2
    if f["amsgrad"]:
        O.maximum(vmax, nu, vmax)
        v = vmax
    else:
        v = nu
    O.div(v, c["bc2"], t2)
    O.add(t2, c["eps_root"], t2)
    O.sqrt(t2, t2)
    O.add(t2, c["eps"], t2)  # sqrt(v / bc2 + eps_root) + eps
    O.div(mu, c["bc1"], t1)
    O.div(t1, t2, t1)  # mu / bc1 / denom
    if f["wd_mode"] == 2:  # decoupled (adamw)
        O.mul(p, c["wd"], t2)
        O.add(t1, t2, t1)
    O.mul(t1, c["neg_lr"], t1)
    O.add(p, t1, p)


PROGRAMS = {
    "sgd": prog_sgd, "sign_sgd": prog_sign_sgd, "adagrad": prog_adagrad,
    "rmsprop": prog_rmsprop, "adam": prog_adam, "adamw": prog_adam,
}


class NumpyOps:
    @staticmethod
    def mul(a, b, out):
        np.multiply(a, b, out=out)

    @staticmethod
    def add(a, b, out):
        np.add(a, b, out=out)

    @staticmethod
    def sub(a, b, out):
        np.subtract(a, b, out=out)

    @staticmethod
    def div(a, b, out):
        np.divide(a, b, out=out)

    @staticmethod
    def sqrt(a, out):
        np.sqrt(a, out=out)

    @staticmethod
    def maximum(a, b, out):
        np.maximum(a, b, out=out)

    @staticmethod
    def sign(a, out):
        np.sign(a, out=out)

    @staticmethod
    def clamp0(a, out):
        np.maximum(a, 0.0, out=out)  # NaN propagates, as xp.maximum

    @staticmethod
    def copy(src, dst):
        np.copyto(dst, src)


def _scratch(dtype, n):
    cache = getattr(_tls, "scratch", None)
    if cache is None:
        cache = _tls.scratch = {}
    key = dtype
    bufs = cache.get(key)
    if bufs is None or bufs[0].shape[0] < n:
        bufs = cache[key] = (np.empty(max(n, 1), dtype), np.empty(max(n, 1), dtype))
    return bufs


def run_blocked(kind, flags, c, p, g, bufs, block=BLOCK):
    """Run the block program over 1-D arrays ``p``, ``g``, ``bufs`` (None where unused)."""
    prog = PROGRAMS[kind]
    n = p.shape[0]
    s1, s2 = _scratch(p.dtype, min(n, block))
    if n <= block:
        prog(NumpyOps, c, flags, p, g, bufs, s1[:n], s2[:n])
        return
    for i in range(0, n, block):
        j = min(i + block, n)
        bb = [None if b is None else b[i:j] for b in bufs]
        m = j - i
        prog(NumpyOps, c, flags, p[i:j], g[i:j], bb, s1[:m], s2[:m])
