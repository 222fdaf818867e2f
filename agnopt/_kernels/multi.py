"""Many small NumPy leaves in one numba call (the multi-leaf part of :mod:`agnopt._kernels.cpu`).

On a tree of many small leaves (biases, norms, small layers) the per-leaf
cost of the fast path is the dispatch of one numba call per leaf (about a
microsecond), not the arithmetic. Leaves of at most ``SMALL`` elements of
one dtype are therefore stepped by one call of :func:`multi_kernel`:

* the data addresses of each leaf's parameter and state buffers are taken
  once, when the cache entry (``cpu._Entry``) is built; the entry holds the
  arrays, and it is used only while the very same arrays come back;
* the gradients, new at every step, are checked (type, shape) and copied
  into one buffer by one ``numpy.concatenate`` (``casting="no"``: another
  dtype goes to the generic path), which the kernel reads;
* the same gradient arrays coming back (a model that writes its gradients
  into the same arrays at every step) are read where they lie instead, by
  data addresses taken once, at their second step (:func:`_take_addresses`:
  their dtype, layout, and that none overlaps a buffer the step writes, are
  checked then; an array's data address does not change), so that the
  kernel moves the bytes of a step on one array: the entry holds the
  gradients of the last step (of the small leaves) to tell them again;
* the kernel runs the per-leaf kernel of :func:`agnopt._kernels.cpu.numba_kernel`
  on each leaf in turn, so the results are those of one call per leaf bit
  for bit (tests/test_step_cache.py).

Larger leaves keep one call each: there the call is small against the
leaf's own memory traffic, and the copy of their gradients would not be.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import numpy as np

from . import alias

SMALL = 8192  # elements: leaves up to this size are stepped together
_SHAPE = operator.attrgetter("shape")
_ND_ONLY = {np.ndarray}
_is = operator.is_


@functools.lru_cache(maxsize=None)
def _voidptr_intrinsic():
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def voidptr(typingctx, addr):
        """The address ``addr`` (an int64) as a ``void*``, for ``numba.carray``."""
        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], cgutils.voidptr_t)

        return types.voidptr(types.int64), codegen

    return voidptr


@functools.lru_cache(maxsize=None)
def multi_kernel(k):
    """One call for many small leaves: the per-leaf kernel ``k`` on each leaf in turn.

    ``ptrs[i]`` holds the data addresses of leaf ``i``'s parameter and its
    three state buffers (the parameter's again where a buffer is absent), and
    ``gptrs[i]`` that of its gradient: C-contiguous arrays of the dtype of
    ``c`` (the kernel's constants) and of ``offs[i + 1] - offs[i]`` elements.
    About 20 ns per leaf instead of a microsecond's dispatch from Python.
    """
    import numba

    from .cpu import _jit

    vp = _voidptr_intrinsic()

    def multi(ptrs, gptrs, offs, c):
        dt = c.dtype
        for i in range(ptrs.shape[0]):
            sh = (offs[i + 1] - offs[i],)
            k(numba.carray(vp(ptrs[i, 0]), sh, dt), numba.carray(vp(gptrs[i]), sh, dt),
              numba.carray(vp(ptrs[i, 1]), sh, dt), numba.carray(vp(ptrs[i, 2]), sh, dt),
              numba.carray(vp(ptrs[i, 3]), sh, dt), c)

    return _jit(multi)


class Multi:
    """The small leaves of one dtype of a cache entry, stepped by one call of :func:`multi_kernel`."""

    __slots__ = ("gbuf", "gbuf_ptrs", "glast", "gptrs", "gstate", "idx", "kernel", "maxends", "offs",
                 "ptrs", "shapes", "starts", "vec")
    kernel: Any  # the compiled multi_kernel
    idx: list | None  # the leaves stepped here (None: all of them)
    ptrs: np.ndarray  # (leaves, 4) int64 data addresses
    offs: np.ndarray  # (leaves + 1,) int64 offsets into gbuf
    gbuf: np.ndarray | None  # the copied gradients (allocated at the first copy)
    gbuf_ptrs: np.ndarray | None  # (leaves,) int64 addresses of the leaves' parts of gbuf
    vec: np.ndarray  # the kernel's constants (shared with the entry, updated per step)
    shapes: list  # the leaves' shapes
    glast: list | None  # the gradients of the last step
    gstate: int  # glast was: COPIED once, read IN_PLACE (gptrs holds their addresses), or MUST_COPY
    gptrs: np.ndarray  # (leaves,) int64 data addresses of the gradients in glast (IN_PLACE)
    starts: list  # the byte ranges of every buffer the step writes (the entry's, all leaves):
    maxends: list  # sorted starts, running maximum of the ends (alias.written_intervals)


COPIED, IN_PLACE, MUST_COPY = 0, 1, 2


def group_small(e, kernel) -> None:
    """Split the entry's leaves into the small ones of one dtype (``e.multi``, a :class:`Multi`)
    and the rest (``e.single``, their indices); ``kernel``: the per-leaf numba kernel, or
    None (no numba: every leaf by itself)."""
    e.multi, e.single = None, None
    if kernel is None or len(e.calls) < 2:
        return
    dt0 = e.dts[0]
    idx = [i for i, (p, dt) in enumerate(zip(e.p_leaves, e.dts)) if dt is dt0 and p.size <= SMALL]
    if len(idx) < 2:
        return
    m = Multi()
    m.kernel = multi_kernel(kernel)
    # the data addresses of each leaf's parameter and state buffers (C-contiguous, checked
    # by cpu._prepare; e.p_leaves and e.bufs keep them alive while the entry is used)
    m.ptrs = np.array([[(v if v is not None else views[0]).ctypes.data for v in views]
                       for views in (e.calls[i][1] for i in idx)], dtype=np.int64)
    m.offs = np.zeros(len(idx) + 1, np.int64)
    np.cumsum([int(e.p_leaves[i].size) for i in idx], out=m.offs[1:])
    m.gbuf, m.gbuf_ptrs, m.glast, m.gstate = None, None, None, COPIED
    m.gptrs = np.zeros(len(idx), np.int64)
    m.vec = e.calls[idx[0]][2]
    m.shapes = [e.shapes[i] for i in idx]
    m.idx = None if len(idx) == len(e.calls) else idx
    m.starts, m.maxends = e.wstarts, e.wmaxends  # (cpu._prepare's, of all the entry's buffers)
    e.multi = m
    small = set(idx)
    e.single = [i for i in range(len(e.calls)) if i not in small]


def _take_addresses(m: Multi, mg: list) -> bool:
    """Write the data addresses of the gradients ``mg`` into ``m.gptrs`` if the kernel can read them
    where they lie: C-contiguous, aligned, of the kernel's dtype (their type and shapes are
    checked already), none overlapping a parameter or a state buffer the step writes."""
    dt = m.vec.dtype
    for j, g in enumerate(mg):
        fl = g.flags
        if g.dtype != dt or not (fl.c_contiguous and fl.aligned):
            return False
        m.gptrs[j] = g.ctypes.data
    return not any(alias.overlaps(alias.numpy_span(g), m.starts, m.maxends) for g in mg)


def gradient_addresses(m: Multi, g_leaves: list) -> np.ndarray | None:
    """The data addresses of the small leaves' gradients for :func:`multi_kernel`, or None (the
    generic path runs) for gradients that are not NumPy arrays of their parameters' shapes and
    dtype.

    Gradients are copied into ``m.gbuf`` (a copy makes a gradient that is, or overlaps, a
    parameter or a state buffer harmless: the kernel reads the copy, as the generic path reads
    the values before the step); the very arrays of the last step, coming back, are read where
    they lie where :func:`_take_addresses` accepts them.
    """
    mg = g_leaves if m.idx is None else [g_leaves[i] for i in m.idx]
    last = m.glast
    if last is not None and len(last) == len(mg) and all(map(_is, mg, last)):
        if m.gstate == IN_PLACE:
            return m.gptrs
        if m.gstate == COPIED:  # the second step with these arrays: read them in place from now on?
            if _take_addresses(m, mg):
                m.gstate = IN_PLACE
                return m.gptrs
            m.gstate = MUST_COPY
    else:
        m.glast = None
        if set(map(type, mg)) != _ND_ONLY or list(map(_SHAPE, mg)) != m.shapes:
            return None
    if m.gbuf is None:
        m.gbuf = np.empty(int(m.offs[-1]), m.vec.dtype)
        m.gbuf_ptrs = m.gbuf.ctypes.data + m.offs[:-1] * m.gbuf.itemsize
    try:
        np.concatenate(mg, axis=None, out=m.gbuf, casting="no")
    except TypeError:  # another dtype
        return None
    if m.glast is None:
        m.glast, m.gstate = list(mg), COPIED
    return m.gbuf_ptrs
