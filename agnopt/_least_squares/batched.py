"""The working set of a batched solve: finished problems leave it, and come back at the end.

When at most ``COMPACT`` (70%) of the working set is still running, the
running rows of every per-problem array are gathered (:func:`take_rows`) into a
smaller working set, and the finished rows are set aside; at the end they are
put back in the original order (:meth:`WorkingSet.assemble`). The problem's
evaluations follow the working set (:meth:`.problem.Problem.set_rows`). No
compaction on JAX (every new size would recompile each eager operation) or
Dask (``nonzero`` has no static size): there finished problems stay in the
batch, frozen by ``where``.
"""

from __future__ import annotations

import array_api_compat

from .._core import lazy
from .._core.backend import namespace_name
from .arrays import call_checked, count_dtype

# gather the running problems into a smaller working set when at most this
# fraction of the current one is still running
COMPACT = 0.7
# ``RowSubsets.residual_where`` evaluates the masked rows alone when they are at
# most this fraction of the working set (gathering them costs a copy of each)
SUBSET_FRACTION = 0.5
# ``RowSubsets.assemble``: the final Jacobian at every row when at least this
# fraction of the problems needs it
FINAL_J_ALL = 0.9


def compactable(xp) -> bool:
    """Backends on which a batched solve drops its finished problems (row gathers).

    Not JAX (every new working-set size would compile every eager operation
    again) nor Dask (``nonzero`` has an unknown size; graphs per shape).
    """
    return not ("jax" in namespace_name(xp) or lazy.is_dask_namespace(xp))


_ROW_TAKE: dict = {}


def take_rows(xp, a, idx):
    """``xp.take(a, idx, axis=0)`` for row indices ``idx`` (k,) in ``[0, a.shape[0])`` (from
    ``nonzero``, ``searchsorted``, ``arange``, ``argsort``: never negative). On torch it
    is ``index_select`` itself: array-api-compat's ``take`` first maps negative indices
    (``where(idx < 0, idx + n, idx)``, three operations more per gather, a few hundred
    per batched solve); the same rows."""
    try:
        take = _ROW_TAKE[xp]
    except KeyError:
        take = _row_take(xp)
        _ROW_TAKE[xp] = take
    except TypeError:  # pragma: no cover - unhashable namespace
        take = _row_take(xp)
    return take(a, idx)


def _row_take(xp):
    if array_api_compat.is_torch_namespace(xp):
        import torch

        index_select = torch.index_select
        return lambda a, idx: index_select(a, 0, idx)
    return lambda a, idx: xp.take(a, idx, axis=0)


def rows_where(xp, mask):
    """Host-side ``nonzero``: the int indices (k,) of ``mask``'s (B,) true entries."""
    return xp.nonzero(mask)[0]


def positions(xp, idx, B, dev):
    """For a sorted index set ``idx`` (k,) of ``range(B)``: ``(in_idx, pos)``, both (B,)."""
    ar = xp.arange(B, dtype=idx.dtype, device=dev)
    k = idx.shape[0]
    pos = xp.clip(xp.searchsorted(idx, ar), 0, k - 1)
    return take_rows(xp, idx, pos) == ar, pos


def scatter(xp, full, work, mask, pos):
    """``full`` (B, ...) with the rows ``idx`` replaced by ``work`` (k, ...) (functional update)."""
    sel = take_rows(xp, work, pos)
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
        n_act = int(xp.sum(xp.astype(st.active, count_dtype(xp))))
        if not (0 < n_act <= COMPACT * self.k):
            return st, False
        if self.W is None:
            self.W = xp.arange(self.B, dtype=count_dtype(xp), device=self.dev)
            self.X_all = st.X
        done_sel = rows_where(xp, ~st.active)
        self.pieces.append((take_rows(xp, self.W, done_sel),
                            tuple(take_rows(xp, getattr(st, f), done_sel)
                                  for f in outcome_fields)))
        self.X_all = scatter(xp, self.X_all, *((st.X,) + positions(xp, self.W, self.B, self.dev)))
        sel = rows_where(xp, st.active)
        self.W = take_rows(xp, self.W, sel)
        st = st._make(None if a is None else take_rows(xp, a, sel) for a in st)
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
        return take_rows(xp, xp.concat([pc[1][i] for pc in self.pieces], axis=0), self._order)

    def field_where(self, i, mask, base):
        """``base`` (B, ...) with the rows where ``mask`` (B,) replaced by those of field
        ``i`` (after :meth:`assemble`): only these rows are gathered from the pieces (not
        the whole field, as :meth:`field`)."""
        xp = self.xp
        idxs, vals = [], []
        for W, rows in self.pieces:
            sel = rows_where(xp, take_rows(xp, mask, W))
            if sel.shape[0] > 0:
                idxs.append(take_rows(xp, W, sel))
                vals.append(take_rows(xp, rows[i], sel))
        if not idxs:
            return base
        idx, val = xp.concat(idxs), xp.concat(vals, axis=0)
        order = xp.argsort(idx)
        inside, pos = positions(xp, take_rows(xp, idx, order), self.B, self.dev)
        return scatter(xp, base, take_rows(xp, val, order), inside, pos)


class RowSubsets:
    """The evaluations of a :class:`.problem.Problem` restricted to the working set.

    A mixin of ``Problem``: ``rows`` (k,) holds the full indices of the rows
    that ``residual`` / ``jacobian`` receive (``None``: all ``B``); a ``fun``
    with the ``_agnopt_rows`` hook (``curve_fit`` with a shared ``xdata``) is
    evaluated on those rows alone, any other on all ``B`` rows with the others
    held at their latest ``x``. Also the subset evaluation of the geodesic
    acceleration (:meth:`residual_where`) and the final full-batch outcome
    (:meth:`assemble`).
    """

    def set_rows(self, idx, X_full, F_rows=None):
        """Restrict evaluations to the rows ``idx`` (full indices, int array).

        ``X_full`` (B, n) gives the values of the other rows for a ``fun``
        without the ``_agnopt_rows`` hook: it is then evaluated on all B rows
        (with these rows substituted) and the rows taken from its output. A
        hook's row function is checked once against ``F_rows`` (the
        residuals of these rows at ``X_full``): if it raises, returns another
        shape or other values (a model that closes over per-problem data),
        the hook is dropped for good and the full evaluation is used.
        """
        xp = self.xp
        B = X_full.shape[0]
        self.rows = idx
        self.lb = take_rows(xp, self.lb_full, idx)
        self.ub = take_rows(xp, self.ub_full, idx)
        ar = xp.arange(B, dtype=idx.dtype, device=self.dev)
        pos = xp.searchsorted(idx, ar)
        k = idx.shape[0]
        pos = xp.clip(pos, 0, k - 1) if k > 0 else pos
        self._mask = take_rows(xp, idx, pos) == ar
        self._pos = pos
        self._X_base = X_full
        self._sub = None
        if self._hook is not None:
            self._sub = self._row_funcs(idx, X_full, F_rows, full=True)

    def _row_funcs(self, idx, X, F_rows, full=False):
        """The ``_agnopt_rows`` hook's ``(fun_rows, jac_rows)`` for the full row
        indices ``idx`` (k,), or ``None`` (no hook, or the hook failed its check).

        The first use checks the hook's residuals at ``X`` (the working rows,
        or all ``B`` rows when ``full``) against ``F_rows``, the residuals of
        these rows known from ``fun`` itself; a hook that raises, returns
        another shape or other values (a model that closes over per-problem
        data) is dropped for good.
        """
        if self._hook is None:
            return None
        if self._hook_checked:
            return self._hook(idx)
        xp = self.xp
        k = idx.shape[0]
        try:
            sub = self._hook(idx)
            Xr = take_rows(xp, X, idx) if full else X
            f = sub[0](Xr, *self.args, **self.kwargs)
            ok = (hasattr(f, "shape") and tuple(f.shape) == (k, self.m)
                  and F_rows is not None)
            if ok:
                err = xp.max(xp.abs(f - F_rows)) if k > 0 else 0.0
                scale = xp.max(xp.abs(F_rows)) if k > 0 else 0.0
                ok = bool(err <= 1e-10 * scale + 1e-300)
        except Exception:
            ok = False
        if ok:
            self._hook_checked = True
            return sub
        self._hook = None
        return None

    def all_rows(self):
        self.rows = None
        self.lb, self.ub = self.lb_full, self.ub_full
        self._mask = self._pos = self._X_base = self._sub = None

    def _scatter_full(self, Z):
        xp = self.xp
        base = self._X_base
        if base.dtype != Z.dtype:
            base = xp.astype(base, Z.dtype)
        return xp.where(self._mask[:, None], take_rows(xp, Z, self._pos), base)

    def _fun_rows(self):
        """``fun`` for the current rows: ``(k, n) -> (k, m)``."""
        if self.rows is None:
            return self.fun
        if self._sub is not None:
            return self._sub[0]
        xp, fun, rows = self.xp, self.fun, self.rows

        def f(Z, *a, **kw):
            out = fun(self._scatter_full(Z), *a, **kw)
            if hasattr(out, "shape") and out.ndim >= 1:
                out = take_rows(xp, out, rows)
            return out

        return f

    def _jac_rows(self):
        if self.rows is None:
            return self.jac_arg
        if self._sub is not None and len(self._sub) > 1 and self._sub[1] is not None:
            return self._sub[1]
        xp, jac, rows = self.xp, self.jac_arg, self.rows

        def j(Z, *a, **kw):
            return take_rows(xp, jac(self._scatter_full(Z), *a, **kw), rows)

        return j

    def residual_where(self, mask, Xt, X, F):
        """Residuals (k, m) at ``Xt`` (k, n) where ``mask`` (k,), ``F`` (the residuals
        at ``X``) elsewhere.

        Evaluates ``fun`` on the masked rows alone when the rows hook allows it
        (``curve_fit`` with a shared ``xdata``) and they are at most
        ``SUBSET_FRACTION`` of the working set (and the working set may shrink:
        not on JAX or Dask, see :func:`.batched.compactable`); else on every row, at ``Xt``
        where ``mask`` and at ``X`` elsewhere (which gives ``F`` there). Used
        by the geodesic acceleration, whose extra evaluation only a few
        problems of a batch need.
        """
        xp = self.xp
        k = X.shape[0]
        if self.compact and self._hook is not None and not self.scaled:
            idx = rows_where(xp, mask)
            nr = int(idx.shape[0])
            if 0 < nr <= SUBSET_FRACTION * k:
                full = idx if self.rows is None else take_rows(xp, self.rows, idx)
                Xr, Fr = take_rows(xp, X, idx), take_rows(xp, F, idx)
                sub = self._row_funcs(full, Xr, Fr)
                if sub is not None:
                    Xtr = take_rows(xp, Xt, idx)
                    fr = sub[0]
                    f = call_checked(lambda z: fr(z, *self.args, **self.kwargs), Xtr, "fun",
                                     "at a trial point")
                    inside, pos = positions(xp, idx, k, self.dev)
                    return scatter(xp, F, self._fix_f(f, nr), inside, pos)
        return self.residual(xp.where(mask[:, None], Xt, X))

    def assemble(self, ws, rows):
        """Full-batch outcome rows after a compacted solve, with the Jacobian at
        the final ``x`` of the problems whose last step was accepted.

        When at least ``FINAL_J_ALL`` of the problems need it (the usual case:
        most stop right after an accepted step), the Jacobian is evaluated at
        every final ``x`` (the others' ``x`` had their Jacobian evaluated there
        already, so this is the same evaluation again), instead of gathering
        those rows and scattering them back into the old Jacobian, which is
        then gathered only if some problem keeps it.
        """
        xp = self.xp
        X, F, J, info, nfev, njev, nit, need_jac, active = ws.assemble(rows, skip=(2,))
        B = X.shape[0]

        def old_J():
            return ws.field(2) if J is None else J

        n_nj = int(xp.sum(xp.astype(need_jac, count_dtype(xp))))
        self.all_rows()
        if n_nj > 0 and n_nj >= FINAL_J_ALL * B:
            Jn = self.model_residuals(F, self.jacobian(X, F))[1]
            if n_nj == B:
                Jf = Jn
            elif J is None:  # (the few rows that keep theirs, gathered alone)
                Jf = ws.field_where(2, ~need_jac, Jn)
            else:
                Jf = xp.where(need_jac[:, None, None], Jn, J)
        elif n_nj > 0:
            idx = rows_where(xp, need_jac)
            Xr, Fr = take_rows(xp, X, idx), take_rows(xp, F, idx)
            self.set_rows(idx, X, Fr)
            mask, pos = positions(xp, idx, B, self.dev)
            Jf = scatter(xp, old_J(), self.model_residuals(Fr, self.jacobian(Xr, Fr))[1], mask, pos)
            self.all_rows()
        else:
            Jf = old_J()
        return X, F, Jf, info, nfev, njev, nit, xp.zeros_like(need_jac), active
