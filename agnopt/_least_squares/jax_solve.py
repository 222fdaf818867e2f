r"""The whole Levenberg-Marquardt solve as one compiled JAX program.

On JAX the engine (:func:`.engine.run_lm`) runs its blocks between two
evaluations of ``fun`` as compiled programs (:func:`agnopt._core.backend.compiled`),
but ``fun`` itself, the host reads that steer the loop and the dispatch of a
dozen programs per iteration stay in Python: about 10 ms for a 3-parameter
fit that NumPy solves in 1 ms. When ``fun`` (and ``jac``) can be traced by
JAX, :func:`run_lm_jax` instead runs the whole solve as one ``jax.jit``
program: ``jax.lax.while_loop`` over the *same* block functions of the
engine (:func:`.engine.linearize`, :func:`.engine.geodesic_acceleration`,
:func:`.engine.trial_point`, :func:`.engine.judge`, the route of
:mod:`.routes` with Moré's ``lmpar``), traced rather than rewritten:

* the shortcuts that read values on the host (``lmpar``'s early exits, "every
  problem well conditioned", "no accelerated problem", a finite-difference
  scheme that is one-sided everywhere) are exact, so under tracing the
  general path runs (``lmpar``'s iterations as one loop, :func:`agnopt._core.lazy.bounded_loop`,
  with the finished problems frozen; both routes merged by ``where``), which
  gives the same numbers;
* the Jacobian is evaluated where the engine would, at one site of the loop
  (``jax.lax.cond``): for the running problems whose last step was
  accepted (:func:`.engine.linearize`, then the route), and once none runs,
  at the final point of those whose last step was accepted (what
  :func:`.result.finish` evaluates); the default complex step is verified
  at ``x0`` as in :class:`.problem.Problem`.

The program is made once per ``fun``, shapes, dtype and options and reused
by later calls (:data:`_CACHE`): a plain function is identified by its code,
its globals, the globals its code names and its closure (compared by
identity; writeable NumPy arrays also by content), and the JAX arrays of its
closure and of ``args`` / ``kwargs`` are inputs of the program, not
constants, so a new ``lambda`` over a new data array reuses it. Everything
else ``fun`` (``jac``, ``loss``) reads besides its arguments must be
immutable (numbers, strings, tuples, JAX arrays, modules, functions reading
only such; NumPy arrays, by content): a program compiled around a dict, a
list or an object (``self`` of a bound method) would keep their old contents
after ``d["y"] = new_data``, so such a ``fun`` is solved by the engine
(:func:`.jax_keys._pure_ref`; the key's functions are in :mod:`.jax_keys`).
What the functions ``fun`` calls read (recursively), and the data attributes
of modules its code names (``data.y``), are part of the key as well:
rebinding any of them makes a new program. A ``jax.jit`` function keeps what
it read when JAX first traced it (JAX's own rule, the same when you call it
yourself): pass changing data as arguments. A code that
made :data:`_MAX_UNUSED` programs never reused (a function made anew around
new objects for each fit) gets no more (counted per code together with the
codes of the functions in its closure: ``curve_fit``'s residual per model). On the CPU the program is compiled
with XLA's cheaper settings (:data:`agnopt._core.backend.CPU_COMPILER_OPTIONS`).

Not taken (the engine runs as before, same results): a ``fun`` or ``jac``
that cannot be traced (``float(x)``, Python branches on values, NumPy calls
on ``x``: any error while tracing; remembered per cache key), a callback,
``history``, ``verbose=2``, a progress display, an array ``diff_step``,
``jax.disable_jit()``, ``curve_fit`` batched, with a 2-D ``sigma`` or a
callable ``jac`` (its residual is then made anew per call; otherwise it is
:func:`.jax_rerun.curve_fit_residual`),
and, found while running, a non-finite Jacobian or a complex step that the
check at ``x0`` rejects (the program stops and the engine solves the
problem again: it raises, flags the problem (batched) or switches to
central differences, as it always does).

An unbatched fit without bounds (``x_scale`` ``None`` / ``"jac"``, no
report) runs, from its first call on, the program of :mod:`.jax_rerun`
(this one with ``fun`` at ``x0`` in front and the result's fields behind,
same key but for the residuals' shape); a later call of the same kind runs
it before any eager work.

Results equal the engine's to rounding: the same iterations, evaluations
and statuses; the point to ~1e-10 relative with the complex step or an
analytic Jacobian (XLA fuses and rounds the operations differently, ~1 ulp
each), to ~1e-8 with finite differences (which divide fun's rounding by
their step). ``method="trf"`` / ``"dogbox"`` are not compiled this way.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import array_api_compat

from .._core.backend import cheap_jit, inlined_blocks
from .._core.user_code import quiet_complex_casts
from .engine import (
    OUTCOME_FIELDS,
    geodesic_acceleration,
    initial_state,
    judge,
    linearize,
    trial_point,
)
from .jax_keys import _content, _key, _pure_ref, _same_refs
from .problem import Problem
from .routes import normal_block
from .state import Linearization, Outcome

__all__ = ["eligible", "program_for", "run_lm_jax", "run_program"]

_CACHE: OrderedDict = OrderedDict()  # key -> (refs, program or None: not traceable)
_CACHE_SIZE = 64
_UNUSED: dict = {}  # fun's code (and its closure's functions' codes) -> programs never reused
_MAX_UNUSED = 4


class _Untraceable(Exception):
    """``fun`` or ``jac`` cannot be traced: the engine runs eagerly."""


def eligible(xp, prob, ws, callback, history, verbose) -> bool:
    """Whether the whole-solve program may be tried for this lm solve."""
    return (ws is None and callback is None and not history and verbose < 2
            and getattr(prob.fun, "_agnopt_whole_solve", True)
            and getattr(prob, "progress", None) is None and _is_jax(xp) and (prob.diff_step is None
                                 or isinstance(prob.diff_step, (int, float))))


def _is_jax(xp) -> bool:
    """A JAX namespace, with ``jax.jit`` on (under ``jax.disable_jit()`` the
    engine runs as written)."""
    try:
        if not array_api_compat.is_jax_namespace(xp):
            return False
        import jax

        return not getattr(jax.config, "jax_disable_jit", False)
    except Exception:  # pragma: no cover
        return False


# ----------------------------------------------------------------------------- the program
def run_lm_jax(xp, prob, X, F, D, jac_scale, ftol, xtol, gtol, max_nfev):
    """The lm solve of :func:`.engine.run_lm` as one compiled program, or ``None``
    (not traceable, or a non-finite Jacobian: the caller runs the engine).

    Returns an :class:`.state.Outcome` whose Jacobian is current at the final
    point (``need_jac`` all false), with the state of ``prob`` (the complex
    step's verdict) as the engine leaves it.
    """
    found = program_for(xp, prob, X, F, jac_scale, ftol, xtol, gtol, max_nfev)
    if found is None:
        return None
    key, refs, entry, leaves = found
    res = run_program(key, refs, entry, X, F, D, prob.lb, prob.ub, leaves)
    if res is None:
        return None
    out, fine = res
    if not bool(fine):  # a non-finite Jacobian or a rejected complex step: the engine
        return None
    if prob.auto_cs and entry[1]["cs_lost"]:  # as the engine leaves the problem
        prob.jac_arg, prob.auto_cs = "3-point", False
    return Outcome(**dict(zip(OUTCOME_FIELDS, out)), cb_stop=False, history=[])


def program_for(xp, prob, X, F, jac_scale, ftol, xtol, gtol, max_nfev, make=True):
    """``(key, refs, entry, leaves)``: the cached program of this solve kind (made
    when ``make`` and not cached), or ``None`` (no key, a mutable object read by
    ``fun``, a code that makes programs never reused, or not cached and not
    ``make``). ``F`` ``None``: the program of :mod:`.jax_rerun`, which evaluates
    ``fun`` at ``x0`` and builds the result itself. ``prob`` may be any object
    with the attributes :func:`_key` reads."""
    k = _key(prob, X, F, jac_scale, ftol, xtol, gtol, max_nfev)
    if k is None:
        return None
    key, refs, leaves, rebuild = k
    # what fun (jac, loss) reads besides its arguments must not be mutable: a
    # program compiled around a dict or an object would keep its old contents
    # (and everything the functions it calls read, recursively: compared by identity
    # with the cached program's, so a rebound global read by a helper makes a new one)
    seen: list = []
    if not all(_pure_ref(r, top=True, seen=seen) for r in refs[0]):
        return None
    refs = (list(refs[0]) + seen, tuple(refs[1]) + tuple(_content(r) for r in seen))
    hit = _CACHE.get(key)
    kind = _kind(key[0])
    if hit is not None and _same_refs(hit[0], refs):
        _CACHE.move_to_end(key)
        entry = hit[1]
        if entry is None:
            return None
        if not entry[1].get("reused"):
            entry[1]["reused"] = True
            _UNUSED[kind] -= 1
    else:
        # a fun made anew for each fit around new objects (other than JAX arrays)
        # would compile a program per fit: after a few programs never reused, the
        # engine solves for that code
        if not make or _UNUSED.get(kind, 0) >= _MAX_UNUSED:
            return None
        _UNUSED[kind] = _UNUSED.get(kind, 0) + 1
        entry = _make_program(xp, prob, rebuild, jac_scale, ftol, xtol, gtol, max_nfev,
                              full=F is None)
        _CACHE[key] = (refs, entry)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return key, refs, entry, leaves


def _kind(fun_id):
    """What the guard on programs never reused counts by: ``fun``'s code, with the codes
    of the plain functions in its closure (:func:`.jax_keys._split_fun`'s identity), or
    ``fun`` itself. ``curve_fit``'s residual is one code for every model: its model's
    code tells them apart, so one-off fits of one model leave the others compiled."""
    if not isinstance(fun_id, tuple):
        return fun_id
    nested = tuple(_kind(k[1]) for k in fun_id[2] if isinstance(k, tuple))
    return (fun_id[0],) + nested if nested else fun_id[0]


def run_program(key, refs, entry, *inputs):
    """``entry``'s program on ``inputs``; ``None`` where it cannot be traced (then
    remembered: the engine solves this kind from now on)."""
    try:
        out = entry[0](*inputs)
    except _Untraceable:
        _CACHE[key] = (refs, None)
        return None
    except Exception as e:
        # a tracer error inside fun (wrapped by the evaluator), or anything else
        # while tracing: the engine solves (and raises what it raises)
        if _is_trace_error(e) or not entry[1].get("ran"):
            _CACHE[key] = (refs, None)
            return None
        raise
    entry[1]["ran"] = True
    return out


def _is_trace_error(e) -> bool:
    import jax

    kinds = tuple(getattr(jax.errors, n) for n in (
        "ConcretizationTypeError", "TracerArrayConversionError", "TracerBoolConversionError",
        "TracerIntegerConversionError", "UnexpectedTracerError") if hasattr(jax.errors, n))
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, kinds):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def _make_program(xp, prob, rebuild, jac_scale, ftol, xtol, gtol, max_nfev, full=False):
    """The ``jax.jit`` program of one solve kind (traced at its first call); ``full``:
    the program of :func:`.jax_rerun.full_program` (``fun`` at ``x0``, the solve
    and the result's fields)."""
    import jax
    from jax import lax

    snap = dict(prob.__dict__)  # the problem as set up (not as a solve leaves it)
    traced: dict = {}  # what tracing found out (the default complex step lost: cs_lost)

    def program(X, F, D, lb, ub, leaves):
        with inlined_blocks():
            return solve(X, F, D, lb, ub, leaves)

    def solve(X, F, D, lb, ub, leaves, fine0=None):
        fun, args, kwargs = rebuild(leaves)
        ev = _traced_problem(snap, lb, ub, args, kwargs)
        ev.fun = fun
        k, n = X.shape
        m = F.shape[1]
        dev, dt = snap["dev"], X.dtype
        # the constants the evaluator makes once per solve, made here (outside the
        # loop's and the branches' scopes, which must not keep their values)
        ev._eye = xp.eye(n, dtype=dt, device=dev)
        ev._fd_cache["eye"] = ev._eye
        ev.zeros_J = xp.zeros((k, m, n), dtype=dt, device=dev)
        st = initial_state(xp, X, F, ev.fnorm(F), D)
        # the fields the first Jacobian sets, as placeholders of their shapes (it
        # overwrites them all: every problem needs it), and a placeholder route
        st = st._replace(J=ev.zeros_J, g=xp.zeros((k, n), dtype=dt, device=dev),
                         A0=xp.zeros((k, n, n), dtype=dt, device=dev) if ev.use_chol else None,
                         free=xp.ones((k, n), dtype=xp.bool, device=dev))
        route = jax.tree_util.tree_map(lambda a: xp.zeros(a.shape, dtype=a.dtype),
                                       jax.eval_shape(ev.route, st))
        carry = (st, route, xp.asarray(True) if fine0 is None else fine0, xp.asarray(False))

        def cond(c):
            st, fine = c[0], c[2]
            return (xp.any(st.active) | xp.any(st.need_jac)) & fine

        def body(c):
            st, route, fine, checked = c
            # one evaluation site of the Jacobian: for the running problems whose
            # last step was accepted (engine.linearize), or, once none runs, at the
            # final point of those whose last step was accepted (result.finish)
            lin = xp.any(st.need_jac & st.active)
            fin = ~xp.any(st.active) & xp.any(st.need_jac)

            def evaluate(op):
                st, ev.checked = op
                ev.cs_ok = xp.asarray(True)
                Fm, Jm = ev.model_residuals(st.F, ev.jacobian(st.X, st.F))
                return Fm, Jm, ev.checked, ev.cs_ok

            def skip(op):
                st, checked = op
                return st.F, st.J, checked, xp.asarray(True)

            Fm, Jm, checked, cs_ok = lax.cond(lin | fin, evaluate, skip, (st, checked))
            ev.model_lin = (Fm, Jm)
            fine = fine & cs_ok  # a rejected complex step: the engine takes over

            def relin(st):
                return _linearize(xp, ev, st, jac_scale, gtol)

            st, route, fine_j = lax.cond(lin, relin, lambda st: (st, route, fine), st)
            fine = fine & fine_j

            def final(st):
                nj = st.need_jac
                return st._replace(J=xp.where(nj[:, None, None], Jm, st.J),
                                   njev=st.njev + xp.astype(nj, st.njev.dtype),
                                   need_jac=xp.zeros_like(nj))

            st = lax.cond(fin, final, lambda st: st, st)

            def step(st):
                return _iteration(xp, ev, st, route, ftol, xtol, max_nfev)

            st = lax.cond(xp.any(st.active) & fine, step, lambda st: st, st)
            return _like(c, (st, route, fine, checked))

        st, _, fine, _ = lax.while_loop(cond, body, _like(carry, carry))
        out = tuple(getattr(st, f) for f in OUTCOME_FIELDS)
        traced["cs_lost"] = not ev.auto and bool(snap["auto_cs"])
        return out, fine

    if full:
        from .jax_rerun import full_program

        def whole(x0, leaves):
            with inlined_blocks():
                return full_program(xp, snap, rebuild, solve, x0, leaves, xtol)

        return cheap_jit(whole), traced
    # (on the CPU with XLA's cheaper settings: backend.CPU_COMPILER_OPTIONS)
    return cheap_jit(program), traced


def _like(ref, new):
    """``new`` with the dtypes of ``ref`` (a loop's carry keeps its types)."""
    import jax

    return jax.tree_util.tree_map(
        lambda r, v: v if getattr(v, "dtype", None) == r.dtype else v.astype(r.dtype), ref, new)


def _iteration(xp, ev, st, route, ftol, xtol, max_nfev):
    """The inner loop of ``lmder`` (:func:`.engine.run_lm`): the step, its trial point
    and the verdict on it (the engine's blocks, traced)."""
    box = ev.block_view()
    route = copy.copy(route)  # its step keeps the factor for the acceleration
    par, z = route.step(st.delta, st.par, st.active)
    limited = par > 0
    p = xp.where(st.free, z / st.D, 0.0) if ev.bounded else z / st.D
    v, accel = p, None
    if ev.accelerate:
        p, accel, st = geodesic_acceleration(xp, ev, st, route, p, z, par)
    tr, st = trial_point(xp, ev, st, p, par, box)
    return judge(xp, box, st, tr, route, accel, v, limited, ftol, xtol, max_nfev)


def _linearize(xp, ev, st, jac_scale, gtol):
    """:func:`.engine.linearize` (the Jacobian: ``ev.model_lin``) and the new route;
    ``fine``: the Jacobian is finite."""
    st = linearize(xp, ev, st, jac_scale, gtol, ev.block_view(), None)
    return st, ev.route(st), ev.fine


def _traced_problem(snap, lb, ub, args, kwargs):
    ev: Any = object.__new__(_TracedProblem)
    ev.__dict__.update(snap)
    ev.lb = ev.lb_full = lb
    ev.ub = ev.ub_full = ub
    ev.args, ev.kwargs = args, kwargs
    ev._fd_cache, ev._eye = {}, None
    ev.auto = bool(snap["auto_cs"])
    ev.checked = ev.cs_ok = ev.fine = ev.model_lin = None
    return ev


class _TracedProblem(Problem):
    """:class:`.problem.Problem` inside the program: the same evaluations, with
    the host reads that steer the default complex step turned into flags
    (``use3``: central differences from now on; ``checked``: the complex step
    was verified) and the Jacobian of :meth:`linearize` evaluated by the
    program's one evaluation site (``model_lin``)."""

    auto = False  # the default complex step, verified (not an explicit jac)
    model_lin: Any = None  # (F, J) of the loss's model at the current point
    fine: Any = None  # 0-d bool: the last Jacobian is finite
    checked: Any = None  # 0-d bool: the complex step was verified
    cs_ok: Any = None  # 0-d bool: the complex step passed its check
    zeros_J: Any = None  # (k, m, n) zeros

    def linearize(self, st, nj) -> Linearization:
        xp = self.xp
        Fm, Jn = self.model_lin
        eye = self.eye(st.X.shape[1]) if self.use_chol else None
        J, A0, _, g, cn, fine = normal_block(xp, Fm, Jn, st.J, nj, eye)
        self.fine = fine
        return Linearization(F=st.F, J=J, A0=st.A0 if A0 is None else A0, g=g, cn=cn, nj=nj,
                             bad=None)

    def _jacobian(self, X, F):
        if not self.auto:
            return _trace_guard(Problem._jacobian, self, X, F)
        from jax import lax

        xp = self.xp
        rel = self.diff_step
        if rel is None:
            from .arrays import machine_eps
            rel = machine_eps(xp, self.dtype)
        # the default complex step (Problem._jacobian), verified the first time;
        # where the check rejects it the program stops (``cs_ok`` false) and the
        # engine solves the problem (central differences from there): the
        # program holds one way of forming the Jacobian
        try:
            with quiet_complex_casts():
                Jcs = self._fd(X, F, "cs", rel)
        except Exception as e:  # (see Problem._jacobian)
            if _is_trace_error(e):
                raise _Untraceable() from e
            # fun takes no complex input: central differences for good
            self.auto, self.jac_arg, self.auto_cs = False, "3-point", False
            return self._fd(X, F, "3-point", self.diff_step)
        true = xp.asarray(True)

        def check():
            ok = self._cs_ok(X, F, Jcs)
            return true if ok is None else ok

        self.cs_ok = lax.cond(self.checked, lambda: true, check)
        self.checked = true
        return Jcs

    def _cs_ok(self, X, F, Jcs):
        """:meth:`Problem._cs_disagrees` as a traced 0-d bool (``None``: keep ``Jcs``);
        false also where a difference point would leave the bounds (the engine
        then checks column by column)."""
        P3, M3, P2, inside = self._cs_check_points(X)
        ok = self._cs_directional(X, F, Jcs, P3, M3, P2)
        if not self.bounded:  # the points cannot leave an infinite box
            return ok
        return inside if ok is None else inside & ok


def _trace_guard(fn, *a):
    try:
        return fn(*a)
    except Exception as e:
        if _is_trace_error(e):
            raise _Untraceable() from e
        raise
