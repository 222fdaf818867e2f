"""Typed per-problem state of the least-squares engines (NamedTuples of arrays) and MINPACK's codes.

Every array field has a leading axis ``k``: the problems of the working set.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, NamedTuple


class MinpackInfo(IntEnum):
    """MINPACK ``lmder``'s ``info`` (0: still running), and agnopt's two extra stops."""

    NONFINITE_TRIAL = -4
    NONFINITE_JAC = -3
    RUNNING = 0
    FTOL = 1
    XTOL = 2
    FTOL_XTOL = 3
    GTOL = 4
    MAX_NFEV = 5
    FTOL_MACHINE = 6
    XTOL_MACHINE = 7
    GTOL_MACHINE = 8


class LMState(NamedTuple):
    """Per-problem state of the iteration; every field has a leading axis ``k``.

    ``X`` (k, n) current point; ``F`` the residuals at ``X`` ((k, m) in
    memory; the evaluator's own object for tall problems); ``J`` (k, m, n)
    the Jacobian (stale where ``need_jac``); ``A0`` (k, n, n) ``J^T J`` when
    the route uses it, else ``None``; ``g`` (k, n) ``J^T f``; ``D`` (k, n) the
    scaling; ``free`` (k, n) variables not frozen at a bound; ``fnorm``,
    ``xnorm`` (``||D x||``), ``delta`` (radius), ``par`` (LM parameter),
    ``gnorm`` (MINPACK's scaled gradient norm) (k,); ``info`` (k,) MINPACK's
    code (0 running); ``nfev``, ``njev``, ``nit`` (k,) int64 counters;
    ``active`` (still running), ``need_jac`` (last step accepted: the
    Jacobian is stale), ``first`` (no step accepted yet) (k,) bool.
    """

    X: Any
    F: Any
    J: Any
    A0: Any
    g: Any
    D: Any
    free: Any
    fnorm: Any
    xnorm: Any
    delta: Any
    par: Any
    gnorm: Any
    info: Any
    nfev: Any
    njev: Any
    nit: Any
    active: Any
    need_jac: Any
    first: Any


class Trial(NamedTuple):
    """One trial step of every problem: ``Xt``, ``Ft``, ``p`` (k, n) the step
    taken, ``pnorm`` ``||D p||``, ``fnorm1`` ``||f(Xt)||``, ``projected``
    (the bounds cut the step) (k,) or None when unbounded."""

    Xt: Any
    Ft: Any
    p: Any
    pnorm: Any
    fnorm1: Any
    projected: Any = None


class Linearization(NamedTuple):
    """The evaluator's Jacobian block at the current point.

    ``F`` residuals (unchanged in memory; the new lazy residuals of a tall
    pass), ``J`` (k, m, n) merged with the previous Jacobian where not
    ``nj``, ``A0`` (k, n, n) ``J^T J`` or ``None``, ``g`` (k, n) ``J^T f``,
    ``cn`` (k, n) column norms of ``J``, ``nj`` (k,) the problems with a new
    Jacobian, ``bad`` (k,) those whose Jacobian was not finite (batched
    only; ``None`` when there are none).
    """

    F: Any
    J: Any
    A0: Any
    g: Any
    cn: Any
    nj: Any
    bad: Any


class Outcome(NamedTuple):
    """What an engine hands back, full batch (B, ...): ``X``, ``F``, ``J`` (stale
    where ``need_jac``), ``info`` (MINPACK codes), ``nfev``, ``njev``, ``nit``,
    ``need_jac``, ``active`` (still running: only after a callback stop),
    ``cb_stop`` (the callback stopped the solve), ``history`` (list), ``cost``
    (B,) ``0.5 ||f||^2`` as the engine tracked it (``None`` after a compacted
    solve; the in-memory result recomputes it from ``F``), ``host`` (one problem
    whose engine kept them on the host, :mod:`agnopt._kernels.lm_one`; else ``None``)
    ``(info, nfev, njev, nit, need_jac, active)`` as Python ints and bools, the
    values of those fields' one entries."""

    X: Any
    F: Any
    J: Any
    info: Any
    nfev: Any
    njev: Any
    nit: Any
    need_jac: Any
    active: Any
    cb_stop: bool = False
    history: list = []
    cost: Any = None
    host: Any = None  # one problem's (info, nfev, njev, nit, need_jac, active) as Python values


class TRState(NamedTuple):
    """Per-problem state of the bounded trust-region methods (``trf``, ``dogbox``).

    ``X`` (k, n) current point (strictly feasible for trf); ``F`` (k, m) the
    true residuals at ``X``; ``J`` (k, m, n) the true Jacobian (stale where
    ``need_jac``); ``cost`` (k,) the (robust) cost at ``X``; ``scale_inv``
    (k, n) ``1 / x_scale`` (the column norms for ``x_scale="jac"``);
    ``delta`` (k,) the trust radius; ``alpha`` (k,) the LM parameter of the
    last subproblem (trf); ``info`` MINPACK-style codes (0 running);
    ``nfev``, ``njev``, ``nit`` (k,) int64; ``active``, ``need_jac`` (k,)
    bool; ``on_bound`` (k, n) int64 -1/0/1 (dogbox; ``None`` for trf).
    """

    X: Any
    F: Any
    J: Any
    cost: Any
    scale_inv: Any
    delta: Any
    alpha: Any
    info: Any
    nfev: Any
    njev: Any
    nit: Any
    active: Any
    need_jac: Any
    on_bound: Any
