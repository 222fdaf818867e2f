"""NumPy fast paths of :func:`agnopt.step`: a fused numba kernel, or blocked NumPy.

Both update ``params`` and the optimizer state in place (buffer donation,
documented on :func:`agnopt.step`) and perform, element by element, exactly
the floating-point operations of the generic transforms in the same order,
so the results are the generic path's bit for bit (no FMA contraction:
numba runs with ``fastmath=False``; ``error_model="numpy"`` lets LLVM
vectorise divisions and square roots).

* numba (``pip install agnopt[numba]``): one loop per leaf and step that
  reads ``params``, ``grads`` and the state once and writes ``params`` and
  the state once: the memory traffic of a perfectly fused step (7 arrays for
  Adam, 5 for RMSProp/Adagrad). One kernel is compiled per optimizer variant
  (options that change the formula are compile-time constants) and dtype.
* blocked NumPy: the same operations as ufuncs with ``out=`` over blocks of
  ``BLOCK`` elements (two block-sized scratch buffers per dtype), so the
  intermediate values stay in cache and no temporary has the size of the
  parameters. The same block programs run on torch tensors
  (:mod:`agnopt._kernels.torch_kernel`).

With numba, the leaves of a tree that are small (at most
``multi.SMALL`` elements, one dtype) are stepped by one call for all of
them (:mod:`agnopt._kernels.multi`), bit for bit as one call per leaf.
"""

from __future__ import annotations

import functools
import operator
import threading
import weakref
from typing import Any

import numpy as np

from .._core.tree import _LEAF, leaves_like, same_leaves, tree_flatten, tree_unflatten
from .._first_order.transforms import log_beta
from . import alias, multi
from . import common as fc
from .blocks import BLOCK, PROGRAMS, run_blocked  # noqa: F401 (PROGRAMS, BLOCK: also used via this module)

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_tls = threading.local()


# --------------------------------------------------------------------------
# numba kernels: one fused loop per optimizer variant
# --------------------------------------------------------------------------

try:  # numba is optional (agnopt[numba])
    import numba as _numba  # noqa: F401

    HAVE_NUMBA = True
except Exception:  # pragma: no cover - depends on the environment
    HAVE_NUMBA = False

CONST_ORDER = {
    "sgd": ("wd", "mu", "omd", "neg_lr"),
    "sign_sgd": ("neg_lr",),
    "adagrad": ("wd", "eps", "neg_lr"),
    "rmsprop": ("wd", "decay", "omd", "eps", "mom", "neg_lr"),
    "adam": ("wd", "b1", "omb1", "b2", "omb2", "bc1", "bc2", "eps", "eps_root", "neg_lr"),
    "adamw": ("wd", "b1", "omb1", "b2", "omb2", "bc1", "bc2", "eps", "eps_root", "neg_lr"),
}


def _jit(fn):
    import numba

    return numba.njit(error_model="numpy", fastmath=False, nogil=True, boundscheck=False)(fn)


@functools.lru_cache(maxsize=None)
def numba_kernel(kind: str, flag_items: tuple):
    """The compiled fused kernel for ``kind`` with static options ``flag_items``."""
    f = dict(flag_items)
    k: Any  # one kernel per optimizer, each with its own arguments
    if kind == "sgd":
        wd, mom, damp, nesterov, first = f["wd"], f["mom"], f["damp"], f["nesterov"], f["first"]

        def k(p, g, b, _b2, _b3, c):
            c_wd, c_mu, c_omd, c_lr = c[0], c[1], c[2], c[3]
            for i in range(p.shape[0]):
                gi = g[i]
                if wd:
                    gi = gi + c_wd * p[i]
                if mom:
                    if damp:
                        if first:
                            bi = gi
                        else:
                            bi = c_mu * b[i] + c_omd * gi
                    else:
                        bi = gi + c_mu * b[i]
                    b[i] = bi
                    if nesterov:
                        u = gi + c_mu * bi
                    else:
                        u = bi
                else:
                    u = gi
                p[i] = p[i] + c_lr * u

    elif kind == "sign_sgd":

        def k(p, g, _b1, _b2, _b3, c):
            c_lr = c[0]
            for i in range(p.shape[0]):
                p[i] = p[i] + c_lr * np.sign(g[i])

    elif kind == "adagrad":
        wd, eps_in_sqrt = f["wd"], f["eps_in_sqrt"]

        def k(p, g, acc, _b2, _b3, c):
            c_wd, c_eps, c_lr = c[0], c[1], c[2]
            for i in range(p.shape[0]):
                gi = g[i]
                if wd:
                    gi = gi + c_wd * p[i]
                s = acc[i] + gi * gi
                acc[i] = s
                if eps_in_sqrt:
                    d = np.sqrt(s + c_eps)
                else:
                    d = np.sqrt(s) + c_eps
                p[i] = p[i] + c_lr * (gi / d)

    elif kind == "rmsprop":
        wd, centered, mom, nesterov, eps_in_sqrt = (
            f["wd"], f["centered"], f["mom"], f["nesterov"], f["eps_in_sqrt"])

        def k(p, g, mu, nu, tr, c):
            c_wd, c_decay, c_omd, c_eps, c_mom, c_lr = c[0], c[1], c[2], c[3], c[4], c[5]
            for i in range(p.shape[0]):
                gi = g[i]
                if wd:
                    gi = gi + c_wd * p[i]
                v = c_decay * nu[i] + c_omd * (gi * gi)
                nu[i] = v
                if centered:
                    m = c_decay * mu[i] + c_omd * gi
                    mu[i] = m
                    a = v - m * m
                    if a < 0.0:  # xp.maximum(a, 0): NaN stays NaN
                        a = c_decay - c_decay  # +0 of the leaf's dtype (a literal 0.0 would widen to float64)
                else:
                    a = v
                if eps_in_sqrt:
                    d = np.sqrt(a + c_eps)
                else:
                    d = np.sqrt(a) + c_eps
                u = gi / d
                if mom:
                    bi = u + c_mom * tr[i]
                    tr[i] = bi
                    if nesterov:
                        u = u + c_mom * bi
                    else:
                        u = bi
                p[i] = p[i] + c_lr * u

    else:  # adam / adamw
        amsgrad, wd_mode = f["amsgrad"], f["wd_mode"]

        def k(p, g, mu, nu, vmax, c):
            c_wd, c_b1, c_omb1, c_b2, c_omb2 = c[0], c[1], c[2], c[3], c[4]
            c_bc1, c_bc2, c_eps, c_eps_root, c_lr = c[5], c[6], c[7], c[8], c[9]
            for i in range(p.shape[0]):
                pi = p[i]
                gi = g[i]
                if wd_mode == 1:
                    gi = gi + c_wd * pi
                m = c_b1 * mu[i] + c_omb1 * gi
                v = c_b2 * nu[i] + c_omb2 * (gi * gi)
                mu[i] = m
                nu[i] = v
                if amsgrad:
                    a = vmax[i]
                    if a > v or a != a:  # np.maximum: NaN propagates
                        v = a
                    vmax[i] = v
                u = m / c_bc1 / (np.sqrt(v / c_bc2 + c_eps_root) + c_eps)
                if wd_mode == 2:
                    u = u + c_wd * pi
                p[i] = pi + c_lr * u

    return _jit(k)


def numba_available() -> bool:
    return HAVE_NUMBA


# --------------------------------------------------------------------------
# the NumPy fast path
# --------------------------------------------------------------------------


def _np_scalar(dt, v):
    if isinstance(v, np.ndarray):
        return v[()] if v.dtype == dt else dt.type(v[()])
    return dt.type(v)


_F32, _F64 = _FLOATS
_STATIC: dict = {}  # (spec id, dtype) -> {name: numpy scalar} for the step-independent constants


def _static_consts(spec, plan, dt):
    key = (id(spec), dt)
    hit = _STATIC.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    hp = spec.hp
    out = {}
    for name, v in (("wd", hp.get("weight_decay", 0.0)), ("mu", hp.get("momentum", 0.0)),
                    ("omd", 1.0 - hp.get("dampening", 0.0)), ("eps", hp.get("eps", 0.0)),
                    ("decay", hp.get("decay", 0.0)), ("mom", hp.get("momentum", 0.0)),
                    ("b1", hp.get("b1", 0.0)), ("omb1", 1.0 - hp.get("b1", 0.0)),
                    ("b2", hp.get("b2", 0.0)), ("omb2", 1.0 - hp.get("b2", 0.0)),
                    ("eps_root", hp.get("eps_root", 0.0))):
        out[name] = dt.type(v)
    if spec.kind == "rmsprop":
        out["omd"] = dt.type(1.0 - hp["decay"])
    if not callable(hp["learning_rate"]):
        out["neg_lr"] = dt.type(-1.0 * hp["learning_rate"])
    if len(_STATIC) > 256:
        _STATIC.clear()
    _STATIC[key] = (spec, out)
    return out


def _next_count(c):
    c0 = int(c)
    return np.asarray(c0 + 1 if c0 < fc._BIG else c0, dtype=c.dtype)


STATS = {"numba": 0, "numpy": 0}  # leaves updated by each path (for tests)

# ---- bias corrections: a table per (dtype, beta), computed by the generic expression
_BC_CHUNK = 1024
_BC: dict = {}


def _bias_correction(dt, beta, t: int):
    """``1 - beta ** t`` in ``dt``: the generic path's ``one_minus_pow(xp, xp.astype(count, dt), beta)``.

    Evaluated by the same ufunc on a block of ``_BC_CHUNK`` consecutive counts
    (an elementwise loop: each element rounds as the 0-d expression does; the
    equality is tested in tests/test_fast_paths.py) and looked up afterwards.
    """
    key = (dt, beta, t // _BC_CHUNK)
    tab = _BC.get(key)
    if tab is None:
        if len(_BC) > 512:
            _BC.clear()
        start = (t // _BC_CHUNK) * _BC_CHUNK
        ts = np.arange(start, start + _BC_CHUNK, dtype=np.int64)
        ts = np.minimum(ts, fc._BIG).astype(np.int32).astype(dt)
        with np.errstate(invalid="ignore"):  # beta = 0: 0 * -inf at t = 0, an entry never read
            tab = _BC[key] = -np.expm1(ts * log_beta(beta))  # one_minus_pow, elementwise
    return tab[t % _BC_CHUNK]


class _Entry:
    """What a fast step on one registered optimizer checked and built last time.

    With buffer donation the same ``params`` leaves and the same ``state`` come
    back at the next step (the step counters are incremented in place, so the
    state tuple itself is returned): the checks of their types, dtypes,
    layouts and aliasing, the kernel, the flattened views and the
    step-independent constants are kept here and reused while they do.
    """

    __slots__ = ("spec", "mode", "td", "p_leaves", "state", "containers", "counts", "plan",
                 "flags", "use_numba", "calls", "dts", "shapes", "strides", "wstarts", "wmaxends", "owners", "exact",
                 "bufs", "owner", "cvecs", "sched",
                 "multi", "single")


_CACHE: dict = {}  # id(spec) -> _Entry: the last state each optimizer stepped
_is = operator.is_
_WRITEABLE = operator.attrgetter("flags.writeable")


def _same(a, b) -> bool:
    return a is b or (len(a) == len(b) and all(map(_is, a, b)))


def _hit(e, spec, p_leaves, td, state, mode) -> bool:
    if e.spec is not spec or e.state is not state or e.mode != mode or (e.td is not td and e.td != td):
        return False
    if not _same(p_leaves, e.p_leaves):
        return False
    for cont, leaves, ctd in e.containers:  # dicts/lists inside the state may have been edited
        if not same_leaves(cont, ctd, leaves):
            return False
    if not all(map(_WRITEABLE, p_leaves)):  # a parameter may have been made read-only since
        return False
    if e.spec.kind == "sgd" and e.flags["mom"] and e.flags["damp"]:
        if (int(e.plan.count) == 0) != e.flags["first"]:
            return False
    return True


def _prepare(spec, p_leaves, td, g_leaves, state, mode):
    """Check params and state for the fast path; an :class:`_Entry`, or None (generic path)."""
    nd = np.ndarray
    for p, g in zip(p_leaves, g_leaves):
        dt = p.dtype
        if (type(p) is not nd or type(g) is not nd or (dt is not _F32 and dt is not _F64)
                or g.dtype is not dt or p.shape != g.shape):
            return None
        fl = p.flags
        if not (fl.c_contiguous and fl.writeable):
            return None
    n = len(p_leaves)
    if len(set(map(id, p_leaves))) != n:  # one array twice in params: not updatable in place
        return None
    plan = fc.read_state(spec, state, td, n)
    if plan is None:
        return None
    for cnt in (plan.count, plan.sched_count):
        if cnt is not None and not (type(cnt) is nd and cnt.shape == () and cnt.dtype.kind == "i"):
            return None
    kind = spec.kind
    order = fc.BUF_ORDER[kind]
    bufs = {}
    for name in order:
        lv = plan.bufs.get(name)
        if lv is None:
            continue
        for b, p in zip(lv, p_leaves):
            if type(b) is not nd or b.dtype is not p.dtype or b.shape != p.shape or b is p:
                return None
            fl = b.flags
            if not (fl.c_contiguous and fl.writeable):
                return None
        bufs[name] = lv
    replaced = False
    if "vmax" in bufs:  # init() returns nu_max is nu: the first step needs its own buffer
        vm = [v.copy() if v is m or np.may_share_memory(v, m) else v
              for v, m in zip(bufs["vmax"], bufs["nu"])]
        replaced = not _same(vm, bufs["vmax"])
        bufs["vmax"] = vm
    names = list(bufs)
    for i, a in enumerate(names):  # no two state buffers may be the same array
        for b in names[:i]:
            if any(x is y for x, y in zip(bufs[a], bufs[b])):
                return None
    if mode == "numba" and not HAVE_NUMBA:
        raise ImportError("AGNOPT_FAST=numba but numba is not installed (pip install agnopt[numba])")
    e = _Entry()
    e.spec, e.mode, e.td, e.state, e.plan = spec, mode, td, state, plan
    e.p_leaves = list(p_leaves)
    e.use_numba = HAVE_NUMBA and mode != "numpy"
    flags = plan.flags
    if kind == "sgd":
        flags = dict(flags, first=bool(flags["mom"] and flags["damp"] and int(plan.count) == 0))
    e.flags = flags
    e.sched = callable(spec.hp["learning_rate"])
    kernel = numba_kernel(kind, tuple(sorted(flags.items()))) if e.use_numba else None
    # the counters are incremented in place (they are state arrays, donated like the
    # buffers) when that is possible; else a new state is built as before
    cnts = [c for c in (plan.count, plan.sched_count) if c is not None]
    in_place = (not replaced and len(set(map(id, cnts))) == len(cnts)
                and all(c.flags.writeable for c in cnts))
    e.counts = cnts if in_place else None
    e.containers = []
    for sub, slot in zip(state, spec.layout):
        for name, field in slot.fields:
            v = getattr(sub, field)
            if name not in ("count", "sched_count") and v is not None and type(v) is not nd:
                lv, t = tree_flatten(v)
                e.containers.append((v, lv, t))
    e.bufs = bufs
    written = e.p_leaves + [b for lv in bufs.values() for b in lv]
    e.wstarts, e.wmaxends, disjoint = alias.written_intervals(map(alias.numpy_span, written))
    if not disjoint:  # two buffers the step writes share memory (views of one array): generic path
        return None
    e.owners, e.exact = _owners(written)
    e.dts = [p.dtype for p in p_leaves]
    e.shapes = [p.shape for p in p_leaves]
    e.strides = [p.strides for p in p_leaves]
    cnames = CONST_ORDER[kind]
    e.cvecs = {}  # dtype -> the kernel's constants (CONST_ORDER); the step-dependent ones filled per step
    e.calls = []
    for li, p in enumerate(p_leaves):
        dt = p.dtype
        vec = e.cvecs.get(dt)
        if vec is None:
            sc = _static_consts(spec, plan, dt)
            vec = e.cvecs[dt] = np.zeros(len(cnames), dt)
            for i, k in enumerate(cnames):
                if sc.get(k) is not None:
                    vec[i] = sc[k]
        views = [p.reshape(-1)] + [bufs[name][li].reshape(-1) if name in bufs else None
                                   for name in order]
        while len(views) < 4:
            views.append(None)
        e.calls.append((kernel, tuple(views), vec, dt))
    multi.group_small(e, kernel)  # the small leaves of one dtype: one call for all of them
    return e


def _owners(arrays) -> tuple[frozenset, bool]:
    """``(ids, exact)``: the ids of the arrays owning the memory of ``arrays`` (each one's last
    NumPy ``base``), and whether the memory of some is not owned by a NumPy array (a buffer
    of another kind, or foreign memory): then only the address test tells an overlap."""
    ids, exact = set(), False
    for a in arrays:
        b = a.base
        while isinstance(b, np.ndarray):
            a, b = b, b.base
        if b is not None or not a.flags.owndata:
            exact = True
        ids.add(id(a))
    return frozenset(ids), exact


def cached_leaves(owner, params):
    """``(leaves, treedef)`` of ``params`` when they are the very leaves the cache of
    ``owner`` (a registered ``transform.update``) holds, else None.

    The leaves returned are the cache's own list: :func:`_run` then returns
    ``params`` itself (its containers and leaves were just checked to be the
    ones stepped last time) instead of a new tree of the same arrays.
    """
    e = _CACHE.get(id(owner))
    if e is None:
        return None
    if not same_leaves(params, e.td, e.p_leaves):
        return None
    return e.p_leaves, e.td


def _xp():
    import array_api_compat.numpy as xp

    return xp


def _forget(key):
    return lambda _ref: _CACHE.pop(key, None)


def try_step(spec, params, p_leaves, td, grads, state, mode, owner=None):
    """The fast step on NumPy arrays, or None when the generic path must run.

    ``owner`` (the registered ``transform.update``) keys the cache: its entry
    (which holds the last state and parameters stepped) is dropped when the
    optimizer is garbage-collected, so the cache never outlives the optimizer.
    """
    nd = np.ndarray
    key = id(spec) if owner is None else id(owner)
    e = _CACHE.get(key)
    if type(grads) is nd:  # one array: nothing to flatten
        g_leaves, gtd = [grads], _LEAF
    else:
        # the structure cached for these parameters: read the grads by its keys (their
        # types are checked in _run), else flatten them in full
        g_leaves = leaves_like(grads, td) if e is not None and e.td is td else None
        if g_leaves is not None:
            gtd = td
        else:
            g_leaves, gtd = tree_flatten(grads)
    if gtd != td:
        return None
    if e is None or not _hit(e, spec, p_leaves, td, state, mode):
        e = _prepare(spec, p_leaves, td, g_leaves, state, mode)
        if e is None:
            _CACHE.pop(key, None)
            return None
        if len(_CACHE) > 64:
            _CACHE.clear()
        if owner is not None:
            try:
                e.owner = weakref.ref(owner, _forget(key))
            except TypeError:  # not weak-referenceable: no cache
                return _run(e, spec, params, p_leaves, td, g_leaves, state, None)
        _CACHE[key] = e
    return _run(e, spec, params, p_leaves, td, g_leaves, state, key)


def _run(e, spec, params, p_leaves, td, g_leaves, state, key):
    """Check the grads, compute the constants, run the kernel per leaf; (params, state) or None."""
    nd = np.ndarray
    # the grads are new at every step: check each against its parameter
    m = e.multi
    if m is not None:  # the small leaves: their gradients' addresses (or a copy), checked
        gptrs = multi.gradient_addresses(m, g_leaves)
        if gptrs is None:
            return None
        single = e.single
        calls = [e.calls[i] for i in single]
        rest = [g_leaves[i] for i in single]
        dts = [e.dts[i] for i in single]
        shapes = [e.shapes[i] for i in single]
        strides = [e.strides[i] for i in single]
    else:
        calls, rest, dts, shapes, strides = e.calls, g_leaves, e.dts, e.shapes, e.strides
    gflat = []
    owners, exact = e.owners, e.exact
    for g, dt, shape, st in zip(rest, dts, shapes, strides):
        if type(g) is not nd or g.dtype is not dt or g.shape != shape:
            return None
        fl = g.flags
        if g.strides != st and not fl.c_contiguous:
            return None
        # a gradient overlapping a parameter or a state buffer (the same array, a view of one,
        # of this leaf or another) is copied: the kernel writes them while it reads the
        # gradients, the generic path reads every gradient first. An array owning its memory
        # overlaps only the buffers that are views of it; any other, by its addresses.
        if (id(g) in owners if g.base is None and fl.owndata and not exact
                else alias.overlaps(alias.numpy_span(g), e.wstarts, e.wmaxends)):
            g = g.copy()
        gflat.append(g if g.ndim == 1 else g.reshape(-1))
    plan = e.plan
    kind = spec.kind
    hp = spec.hp
    t_new = None
    if plan.count is not None:
        c0 = int(plan.count)
        t_new = c0 + 1 if c0 < fc._BIG else c0
    for dt, vec in e.cvecs.items():  # every constant (and the schedule) before any write
        if kind in ("adam", "adamw"):
            vec[5] = _bias_correction(dt, hp["b1"], t_new)
            vec[6] = _bias_correction(dt, hp["b2"], t_new)
        if e.sched:
            vec[-1] = _np_scalar(dt, fc.lr_value(hp, _xp(), plan.sched_count, dt, "cpu"))
    if e.use_numba:
        if m is not None:
            m.kernel(m.ptrs, gptrs, m.offs, m.vec)
        for (kernel, (pf, b1, b2, b3), vec, _d), g in zip(calls, gflat):
            kernel(pf, g, g if b1 is None else b1, g if b2 is None else b2, g if b3 is None else b3, vec)
    else:
        cnames = CONST_ORDER[kind]
        for (_k, (pf, b1, b2, b3), vec, _d), g in zip(e.calls, gflat):
            c = dict(zip(cnames, vec))  # NumPy scalars of the leaf's dtype
            c["first"] = e.flags.get("first", False)
            run_blocked(kind, e.flags, c, pf, g, [b1, b2, b3])
    STATS["numba" if e.use_numba else "numpy"] += len(g_leaves)
    new_params = params if type(params) is nd or p_leaves is e.p_leaves else tree_unflatten(td, p_leaves)
    if e.counts is not None:
        for c in e.counts:
            c0 = int(c)
            if c0 < fc._BIG:
                c[()] = c0 + 1
        if kind == "sgd" and e.flags["first"]:
            _CACHE.pop(key, None)  # the next step has another kernel (first is a static flag)
        return new_params, state
    _CACHE.pop(key, None)  # a new state object: the next step checks it again
    new_count = None if plan.count is None else _next_count(plan.count)
    new_sched = None if plan.sched_count is None else _next_count(plan.sched_count)
    return new_params, fc.new_state(plan, new_count, new_sched, e.bufs, spec.layout)
