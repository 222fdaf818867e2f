"""The working set of a batched solve: finished problems leave it, and come back at the end.

When at most ``COMPACT`` (70%) of the working set is still running, the
running rows of every per-problem array are gathered (``xp.take``) into a
smaller working set, and the finished rows are set aside; at the end they are
put back in the original order (:meth:`WorkingSet.assemble`). The problem's
evaluations follow the working set (:meth:`.problem.Problem.set_rows`). No
compaction on JAX (every new size would recompile each eager operation) or
Dask (``nonzero`` has no static size): there finished problems stay in the
batch, frozen by ``where``.
"""

from __future__ import annotations

from .._core import lazy
from .._core.backend import namespace_name

# gather the running problems into a smaller working set when at most this
# fraction of the current one is still running
COMPACT = 0.7


def compactable(xp) -> bool:
    """Backends on which a batched solve drops its finished problems (row gathers).

    Not JAX (every new working-set size would compile every eager operation
    again) nor Dask (``nonzero`` has an unknown size; graphs per shape).
    """
    return not ("jax" in namespace_name(xp) or lazy.is_dask_namespace(xp))


def rows_where(xp, mask):
    """Host-side ``nonzero``: the int indices (k,) of ``mask``'s (B,) true entries."""
    return xp.nonzero(mask)[0]


def positions(xp, idx, B, dev):
    """For a sorted index set ``idx`` (k,) of ``range(B)``: ``(in_idx, pos)``, both (B,)."""
    ar = xp.arange(B, dtype=idx.dtype, device=dev)
    k = idx.shape[0]
    pos = xp.clip(xp.searchsorted(idx, ar), 0, k - 1)
    return xp.take(idx, pos, axis=0) == ar, pos


def scatter(xp, full, work, mask, pos):
    """``full`` (B, ...) with the rows ``idx`` replaced by ``work`` (k, ...) (functional update)."""
    sel = xp.take(work, pos, axis=0)
    m = xp.reshape(mask, (mask.shape[0],) + (1,) * (full.ndim - 1))
    return xp.where(m, sel, full)


class WorkingSet:
    """Which of the ``B`` problems the per-problem state arrays hold.

    ``W`` (k,): full indices of the working rows (``None``: all ``B``, in
    order); ``pieces``: ``(full indices, outcome rows)`` of the problems set
    aside; ``X_all`` (B, n): the latest ``x`` of every problem (what ``fun``
    sees for the rows outside the working set).
    """

    def __init__(self, xp, B, dev):
        self.xp, self.B, self.dev = xp, B, dev
        self.W = None
        self.pieces = []
        self.X_all = None
        self.k = B

    def compact(self, st, prob, outcome_fields):
        """Drop the finished problems from ``st`` (a NamedTuple of per-problem arrays).

        Returns ``(st, changed)``; ``outcome_fields`` names the fields set
        aside for the final assembly.
        """
        xp = self.xp
        if self.k <= 1:
            return st, False
        n_act = int(xp.sum(xp.astype(st.active, xp.int64)))
        if not (0 < n_act <= COMPACT * self.k):
            return st, False
        if self.W is None:
            self.W = xp.arange(self.B, dtype=xp.int64, device=self.dev)
            self.X_all = st.X
        done_sel = rows_where(xp, ~st.active)
        self.pieces.append((xp.take(self.W, done_sel, axis=0),
                            tuple(xp.take(getattr(st, f), done_sel, axis=0)
                                  for f in outcome_fields)))
        self.X_all = scatter(xp, self.X_all, *((st.X,) + positions(xp, self.W, self.B, self.dev)))
        sel = rows_where(xp, st.active)
        self.W = xp.take(self.W, sel, axis=0)
        st = st._make(None if a is None else xp.take(a, sel, axis=0) for a in st)
        prob.set_rows(self.W, self.X_all, st.F)
        self.k = n_act
        return st, True

    def assemble(self, rows, skip=()):
        """The full-batch arrays (B, ...) of ``rows`` (the working set's outcome fields).

        The fields whose positions are in ``skip`` come back as ``None`` (not
        gathered); :meth:`field` gathers one of them later (e.g. the Jacobian,
        a ``(B, m, n)`` copy, only when the caller needs the old one).
        """
        xp = self.xp
        if self.W is None:
            return rows
        self.pieces.append((self.W, rows))
        self._order = xp.argsort(xp.concat([pc[0] for pc in self.pieces]))
        return tuple(None if i in skip else self.field(i) for i in range(len(rows)))

    def field(self, i):
        """Field ``i`` of the outcome rows, full batch (B, ...), after :meth:`assemble`."""
        xp = self.xp
        return xp.take(xp.concat([pc[1][i] for pc in self.pieces], axis=0), self._order, axis=0)
