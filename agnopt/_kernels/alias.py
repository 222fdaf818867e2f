"""Memory overlap tests of the fused steps: which gradients must be copied before a step writes.

The generic path of :func:`agnopt.step` reads every gradient before it writes
any parameter or state buffer (``update`` then ``apply_updates``); the fused
kernels write ``params`` and the state in place while they read the gradients.
A gradient whose memory overlaps a buffer the step writes (a parameter or a
state buffer, the same array or a view of it, of this leaf or of another) is
therefore copied first, so the kernel reads the values the generic path reads.

The tests here use data addresses only (as ``numpy.may_share_memory`` does):
an array is taken as the byte range ``[lo, hi)`` from its lowest to one past its
highest element (:func:`strided_span`: pointer, shape, strides in bytes and
item size, which NumPy, torch and CuPy all provide), and the buffers a step
writes as one sorted list of such ranges (:func:`written_intervals`), against
which one range is tested by a binary search (:func:`overlaps`). A range test
may find an overlap where two strided arrays interleave without sharing an
element; such a gradient is copied needlessly, never read wrongly.
"""

from __future__ import annotations

from bisect import bisect_left


def strided_span(ptr: int, shape, strides, itemsize: int) -> tuple[int, int] | None:
    """The byte range ``(lo, hi)`` that an array of ``shape`` and ``strides`` (in bytes, any
    sign) at data address ``ptr`` spans, or None when it has no element."""
    lo = hi = ptr
    for n, s in zip(shape, strides):
        if n == 0:
            return None
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + itemsize


def written_intervals(spans) -> tuple[list, list, bool]:
    """``(starts, maxends, disjoint)`` of the byte ranges ``spans`` (None entries skipped): the
    starts sorted, the running maximum of the ends in that order, and whether no two ranges
    overlap (two buffers a step writes that overlap make the in-place step wrong: the fast
    paths leave such a tree to the generic path)."""
    iv = sorted(s for s in spans if s is not None)
    starts = [a for a, _ in iv]
    maxends: list = []
    disjoint = True
    m = None
    for a, b in iv:
        if m is not None and a < m:
            disjoint = False
        m = b if m is None or b > m else m
        maxends.append(m)
    return starts, maxends, disjoint


def overlaps(span: tuple[int, int] | None, starts: list, maxends: list) -> bool:
    """Whether the byte range ``span`` overlaps one of the ranges of :func:`written_intervals`."""
    if span is None:
        return False
    lo, hi = span
    n = bisect_left(starts, hi)  # the ranges starting before hi
    return n > 0 and maxends[n - 1] > lo


def numpy_span(a) -> tuple[int, int] | None:
    """The byte range of a NumPy array's elements."""
    return strided_span(a.ctypes.data, a.shape, a.strides, a.itemsize)


def cupy_span(a) -> tuple[int, int] | None:
    """The byte range of a CuPy array's elements (``a.data.ptr``: its device address)."""
    return strided_span(a.data.ptr, a.shape, a.strides, a.itemsize)


def torch_span(t) -> tuple[int, int] | None:
    """The byte range of a torch tensor's elements (``data_ptr()``, strides in elements)."""
    es = t.element_size()
    return strided_span(t.data_ptr(), t.shape, [s * es for s in t.stride()], es)


def copies_of_overlapping(written, g_leaves, span, copy):
    """``g_leaves`` with each gradient whose memory overlaps one of the arrays ``written`` (the
    parameters and state buffers a step writes) replaced by ``copy(g)``, as the generic path
    reads every gradient before it writes; None (the generic path) when two of the arrays
    written overlap each other. ``span``: :func:`torch_span` or :func:`cupy_span`."""
    starts, maxends, disjoint = written_intervals(map(span, written))
    if not disjoint:
        return None
    return [copy(g) if overlaps(span(g), starts, maxends) else g for g in g_leaves]
