"""The whole lm solve as one JAX program (``agnopt._least_squares.jax_solve``).

When ``fun`` (and ``jac``) can be traced, ``least_squares(method="lm")`` on JAX
runs the engine's blocks inside one ``jax.lax.while_loop``. These tests check
that it gives the engine's results (the engine itself: ``jax.disable_jit()``,
and NumPy), that it is the program that ran (here a spy on the programs'
entry points and the engine says which ran; a later call of an unbatched fit
without bounds runs :mod:`agnopt._least_squares.jax_rerun`'s program, from
``x0`` to the result, and calls no Python of ``fun``),
and that everything it cannot do falls back to the engine with the same
results: a ``fun`` that cannot be traced, callbacks and reports, a rejected
complex step, a non-finite Jacobian.

Tolerances: same ``nfev``, ``njev``, ``nit``, ``status``; ``x`` and ``cost`` to
1e-10 relative with the complex step or an analytic Jacobian (the engine's
own blocks, compiled together: XLA may fuse and round differently, ~1e-16 per
operation), 1e-8 with finite differences (which divide fun's rounding by
their step).
"""

from __future__ import annotations

import contextlib
import warnings
import importlib

import numpy as np
import pytest

import agnopt as ao


@pytest.fixture(autouse=True)
def _fresh_unused_counts():
    """Each test starts with jax_solve's count of programs never reused at zero: that
    guard is per process and per code (curve_fit's: per model code), so one-off programs
    of a code made by earlier tests would leave these tests' later fits of it on the
    engine."""
    from agnopt._least_squares import jax_solve

    saved = dict(jax_solve._UNUSED)
    jax_solve._UNUSED.clear()
    yield
    jax_solve._UNUSED.clear()
    jax_solve._UNUSED.update(saved)


def _jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax


T = np.linspace(0.0, 4.0, 40)
Y = 2.5 * np.exp(-1.3 * T) + 0.5 + 0.02 * np.sin(7.0 * T)


def _res(jnp):
    """``fun`` on JAX arrays (pure: it reads only JAX arrays besides its argument)."""
    tj, yj = jnp.asarray(T), jnp.asarray(Y)

    def res(p):
        return p[0] * jnp.exp(-p[1] * tj) + p[2] - yj

    return res


@contextlib.contextmanager
def _program_runs():
    """Records, for each lm solve on JAX, whether a compiled whole-solve program
    gave its result (``True``: :mod:`jax_solve`'s, or :mod:`jax_rerun`'s from
    ``x0`` to the result) or the engine solved (``False``)."""
    from agnopt._least_squares import jax_rerun, jax_solve
    ls_mod = importlib.import_module("agnopt._least_squares.least_squares")

    runs: list = []
    saved = [(jax_solve, "run_lm_jax"), (jax_rerun, "rerun"), (jax_rerun, "run_full"),
             (ls_mod, "run_lm")]
    origs = [getattr(m, n) for m, n in saved]

    def spy(orig, name):
        def f(*a, **k):
            out = orig(*a, **k)
            if name == "run_lm":
                runs.append(False)
            elif (out[0] if name == "run_full" else out) is not None:
                runs.append(True)
            return out
        return f

    for (m, n), o in zip(saved, origs):
        setattr(m, n, spy(o, n))
    try:
        yield runs
    finally:
        for (m, n), o in zip(saved, origs):
            setattr(m, n, o)


def res_np(p):
    return p[0] * np.exp(-p[1] * T) + p[2] - Y


def _same(got, ref, rtol=1e-10):
    assert (got.nfev, got.njev, got.nit, got.status) == (ref.nfev, ref.njev, ref.nit, ref.status)
    np.testing.assert_allclose(np.asarray(got.x), np.asarray(ref.x), rtol=rtol)
    np.testing.assert_allclose(np.asarray(got.cost), np.asarray(ref.cost), rtol=rtol)
    np.testing.assert_allclose(np.asarray(got.jac), np.asarray(ref.jac), rtol=1e-6, atol=1e-12)


CASES = {
    "near": ([1.0, 1.0, 1.0], {}),
    "far": ([10.0, 0.05, -3.0], {}),  # radius-limited steps, geodesic acceleration
    "bounded": ([1.0, 2.0, 1.0], {"bounds": ([0.0, 1.4, 0.0], [10.0, 10.0, 10.0])}),
    "loss": ([1.0, 1.0, 1.0], {"loss": "soft_l1", "f_scale": 0.05}),
    "x_scale": ([1.0, 1.0, 1.0], {"x_scale": np.array([1.0, 0.5, 2.0])}),
    "max_nfev": ([10.0, 0.05, -3.0], {"max_nfev": 5}),
    "3-point": ([1.0, 1.0, 1.0], {"jac": "3-point"}),
    "autodiff": ([1.0, 1.0, 1.0], {"jac": "autodiff"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_whole_solve_equals_engine_and_numpy(case):
    jax = _jax()
    import jax.numpy as jnp

    p0, kw = CASES[case]
    res = _res(jnp)
    kw_np = {k: v for k, v in kw.items() if not (isinstance(v, str) and v == "autodiff")}  # NumPy: the complex step
    ref = ao.least_squares(res_np, np.asarray(p0), method="lm", **kw_np)
    with jax.disable_jit():  # the engine, op by op
        eager = ao.least_squares(res, jnp.asarray(p0), method="lm", **kw)
    got = ao.least_squares(res, jnp.asarray(p0), method="lm", **kw)
    with _program_runs() as runs:
        again = ao.least_squares(res, jnp.asarray(p0), method="lm", **kw)
    assert runs == [True]  # the solve is the compiled program
    # finite differences amplify fun's rounding; a solve stopped far from the
    # solution (max_nfev) carries the rounding of steps through ill-conditioned
    # Jacobians (cond ~1e6 at that start)
    rtol = 1e-8 if kw.get("jac") == "3-point" or case == "max_nfev" else 1e-10
    for r in (got, again):
        _same(r, eager, rtol)
        _same(r, ref, max(rtol, 1e-9))
    if case == "max_nfev":
        assert got.status == 0 and got.nfev >= 5  # (an acceleration's evaluation counts)
    if case == "bounded":
        assert np.asarray(got.x)[1] == 1.4
    if case == "far":
        assert got.nfev > got.njev + 3  # rejected steps and accelerations happened


def test_analytic_jacobian_and_array_args_are_inputs():
    """A callable ``jac`` traced too; arrays in ``args`` are the program's inputs
    (new data, same program, right answer)."""
    _jax()
    import jax.numpy as jnp

    from agnopt._least_squares import jax_solve

    def res(p, t, y):
        return p[0] * jnp.exp(-p[1] * t) + p[2] - y

    def jac(p, t, y):
        e = jnp.exp(-p[1] * t)
        return jnp.stack([e, -p[0] * t * e, jnp.ones_like(t)], axis=-1)

    p0 = jnp.asarray([1.0, 1.0, 1.0])
    for scale in (1.0, 3.0):
        y = scale * Y
        ref = ao.least_squares(lambda p: p[0] * np.exp(-p[1] * T) + p[2] - y, np.asarray(p0),
                               method="lm", jac=lambda p: np.stack(
                                   [np.exp(-p[1] * T), -p[0] * T * np.exp(-p[1] * T),
                                    np.ones_like(T)], axis=-1))
        n0 = len(jax_solve._CACHE)
        with _program_runs() as runs:
            got = ao.least_squares(res, p0, jac=jac, method="lm", args=(jnp.asarray(T),
                                                                        jnp.asarray(y)))
        assert runs == [True]
        if scale == 3.0:
            assert len(jax_solve._CACHE) == n0  # the same program, new data
        _same(got, ref, 1e-9)


def test_batched_whole_solve_equals_engine():
    jax = _jax()
    import jax.numpy as jnp

    tj = jnp.asarray(T[:30])
    Yb = np.array([1.0, 2.0, 0.5])[:, None] * Y[None, :30]
    Yj = jnp.asarray(Yb)
    P0 = np.array([[1.0, 1.0, 1.0], [5.0, 0.1, 0.0], [0.2, 3.0, 0.3]])

    def res(P):
        return P[:, 0:1] * jnp.exp(-P[:, 1:2] * tj) + P[:, 2:3] - Yj

    got = ao.least_squares(res, jnp.asarray(P0), method="lm", batched=True)
    with jax.disable_jit():
        eager = ao.least_squares(res, jnp.asarray(P0), method="lm", batched=True)
    for f in ("nfev", "njev", "nit", "status"):
        np.testing.assert_array_equal(np.asarray(getattr(got, f)), np.asarray(getattr(eager, f)))
    np.testing.assert_allclose(np.asarray(got.x), np.asarray(eager.x), rtol=1e-10)


def test_untraceable_fun_falls_back_to_the_engine():
    """``float()`` of an element: the tracing fails, the engine solves (same
    result as op by op), and the next call goes straight to the engine."""
    jax = _jax()
    import jax.numpy as jnp

    from agnopt._least_squares import jax_solve

    tj, yj = jnp.asarray(T), jnp.asarray(Y)
    def res(p):
        a = float(p[0])  # needs a concrete value
        return a * jnp.exp(-p[1] * tj) + p[2] - yj

    p0 = jnp.asarray([1.0, 1.0, 1.0])
    got = ao.least_squares(res, p0, method="lm", jac="3-point")
    with jax.disable_jit():
        eager = ao.least_squares(res, p0, method="lm", jac="3-point")
    _same(got, eager)
    assert any(v[1] is None for v in jax_solve._CACHE.values())  # remembered
    with _program_runs() as runs:
        ao.least_squares(res, p0, method="lm", jac="3-point")
    assert runs == [False]  # the engine, evaluation by evaluation


@pytest.mark.parametrize("opt", ["callback", "verbose", "history", "progress"])
def test_reports_take_the_engine(opt, capsys):
    _jax()
    import jax.numpy as jnp

    res = _res(jnp)
    p0 = jnp.asarray([1.0, 1.0, 1.0])
    seen = []
    kw = {"callback": lambda *a, **k: seen.append(1), "verbose": 2, "history": True,
          "progress": lambda info: seen.append(info)}[opt]
    kw = {opt: kw}
    with _program_runs() as runs:
        ref = ao.least_squares(res, p0, method="lm")  # the program
    assert runs == [True]
    got = ao.least_squares(res, p0, method="lm", **kw)  # the engine, with its reports
    _same(got, ref)
    if opt in ("callback", "progress"):
        assert seen
    if opt == "history":
        assert len(got.history) > 0
    if opt == "verbose":
        assert "Function evaluations" in capsys.readouterr().out


def test_rejected_complex_step_takes_the_engine():
    """``fun`` drops the imaginary part of one term (``jnp.real``): the check at
    ``x0`` rejects the complex step inside the program, and the engine solves
    with central differences, as without the program."""
    jax = _jax()
    import jax.numpy as jnp

    tj, yj = jnp.asarray(T), jnp.asarray(Y)

    def res(p):
        return p[0] * jnp.exp(-jnp.real(p[1]) * tj) + p[2] - yj

    p0 = jnp.asarray([1.0, 1.0, 1.0])
    got = ao.least_squares(res, p0, method="lm")
    with jax.disable_jit():
        eager = ao.least_squares(res, p0, method="lm")
    ref = ao.least_squares(res_np, np.asarray(p0), method="lm", jac="3-point")
    _same(got, eager)
    assert got.success and (got.nfev, got.status) == (ref.nfev, ref.status)


def test_nonfinite_jacobian_raises_as_the_engine():
    _jax()
    import jax.numpy as jnp

    tj, yj = jnp.asarray(T), jnp.asarray(Y)

    def res(p):
        return p[0] * jnp.exp(-p[1] * tj) + p[2] - yj

    def jac(p):
        return jnp.full((T.shape[0], 3), jnp.nan)

    with pytest.raises(ValueError, match="non-finite"):
        ao.least_squares(res, jnp.asarray([1.0, 1.0, 1.0]), jac=jac, method="lm")


def test_rebound_closure_array_is_seen():
    """A program bakes in the arrays ``fun`` closes over: rebinding one (a new
    data set in the same variable) makes a new program, not a stale answer."""
    _jax()
    import jax.numpy as jnp

    tj = jnp.asarray(T)
    yj = jnp.asarray(Y)

    def res(p):
        return p[0] * jnp.exp(-p[1] * tj) + p[2] - yj

    p0 = jnp.asarray([1.0, 1.0, 1.0])
    a = ao.least_squares(res, p0, method="lm")
    yj = jnp.asarray(2.0 * Y)
    b = ao.least_squares(res, p0, method="lm")
    ref = ao.least_squares(lambda p: p[0] * np.exp(-p[1] * T) + p[2] - 2.0 * Y,
                           np.asarray(p0), method="lm")
    np.testing.assert_allclose(np.asarray(b.x), ref.x, rtol=1e-9)
    assert abs(float(b.x[0]) - float(a.x[0])) > 1.0


def test_fresh_lambda_over_new_data_reuses_the_program():
    """``least_squares(lambda p: model(p) - y, ...)`` in a loop over data sets: the
    JAX arrays a closure holds are inputs of the program, so every fit after the
    first runs the same program (fun's Python body: once, the set-up's call)."""
    _jax()
    import jax.numpy as jnp

    from agnopt._least_squares import jax_solve

    tj = jnp.asarray(T)

    def model(p):
        return p[0] * jnp.exp(-p[1] * tj) + p[2]

    p0 = jnp.asarray([1.0, 1.0, 1.0])
    for i, scale in enumerate((1.0, 2.0, 0.5)):
        y = jnp.asarray(scale * Y)
        n0 = len(jax_solve._CACHE)
        with _program_runs() as runs:
            got = ao.least_squares(lambda p: model(p) - y, p0, method="lm")
        assert runs == [True]
        if i > 0:
            assert len(jax_solve._CACHE) == n0  # the same program
        ref = ao.least_squares(lambda p: p[0] * np.exp(-p[1] * T) + p[2] - scale * Y,
                               np.asarray(p0), method="lm")
        np.testing.assert_allclose(np.asarray(got.x), ref.x, rtol=1e-9)
        assert (got.nfev, got.status) == (ref.nfev, ref.status)


def test_a_fun_made_anew_around_new_objects_stops_compiling():
    """A closure over a new Python object each fit cannot reuse a program: after
    a few, the engine solves (right answers throughout)."""
    _jax()
    import jax.numpy as jnp

    from agnopt._least_squares import jax_solve

    tj, yj = jnp.asarray(T), jnp.asarray(Y)
    p0 = jnp.asarray([1.0, 1.0, 1.0])
    ref = ao.least_squares(res_np, np.asarray(p0), method="lm")

    def make(opts):
        def res(p):
            return opts[0] * p[0] * jnp.exp(-p[1] * tj) + p[2] - yj
        return res

    n0 = len(jax_solve._CACHE)
    for _ in range(jax_solve._MAX_UNUSED + 3):
        got = ao.least_squares(make(tuple([1.0])), p0, method="lm")  # a new tuple each time
        np.testing.assert_allclose(np.asarray(got.x), ref.x, rtol=1e-9)
    assert len(jax_solve._CACHE) - n0 <= jax_solve._MAX_UNUSED


def test_one_off_curve_fits_of_one_model_leave_other_models_compiled():
    """curve_fit's residual is one code for every model: the guard on programs never
    reused counts per model code (it counted per residual code, so four one-off fits
    of any model, e.g. four data lengths, left every later curve_fit of the process on
    the engine: right answers, but the compiled path lost)."""
    _jax()
    import jax.numpy as jnp

    from agnopt._least_squares import jax_solve

    def one_off(x, a, b, c):
        return a * jnp.exp(-b * x) + c

    p0 = jnp.asarray([1.0, 1.0, 1.0])
    for m in range(5, 5 + jax_solve._MAX_UNUSED + 1):  # a new shape each time: never reused
        ao.curve_fit(one_off, jnp.asarray(T[:m]), jnp.asarray(Y[:m]), p0=p0)

    def model(x, a, b, c):
        return a * jnp.exp(-b * x) + c + 0.0

    tj, yj = jnp.asarray(T), jnp.asarray(Y)
    ao.curve_fit(model, tj, yj, p0=p0)
    with _program_runs() as runs:
        got = ao.curve_fit(model, tj, yj, p0=p0)
    assert runs == [True]
    ref = ao.curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c, T, Y, p0=np.asarray(p0))
    np.testing.assert_allclose(np.asarray(got[0]), ref[0], rtol=1e-9)
    with _program_runs() as runs:  # the one-off model itself stays on the engine
        ao.curve_fit(one_off, jnp.asarray(T[:4]), jnp.asarray(Y[:4]), p0=p0)
    assert runs == [False]


def test_mutable_objects_read_by_fun_take_the_engine():
    """A program compiled around a dict, a list or an object would keep their old
    contents: a ``fun`` that reads one is solved by the engine, so changing the
    data between two fits gives the new answer (right values: the linear fits)."""
    _jax()
    import jax.numpy as jnp

    t = jnp.linspace(0.0, 1.0, 20)
    p0 = jnp.asarray([0.0, 0.0])

    d = {"y": 2.0 * t + 1.0}
    np.testing.assert_allclose(np.asarray(ao.least_squares(
        lambda p: p[0] * t + p[1] - d["y"], p0, method="lm").x), [2.0, 1.0], atol=1e-10)
    f = lambda p: p[0] * t + p[1] - d["y"]  # noqa: E731
    ao.least_squares(f, p0, method="lm")
    d["y"] = -t
    np.testing.assert_allclose(np.asarray(ao.least_squares(f, p0, method="lm").x), [-1.0, 0.0],
                               atol=1e-10)

    class Data:
        pass

    m = Data()
    m.y = 2.0 * t + 1.0
    g = lambda p: p[0] * t + p[1] - m.y  # noqa: E731
    ao.least_squares(g, p0, method="lm")
    m.y = 5.0 * t
    np.testing.assert_allclose(np.asarray(ao.least_squares(g, p0, method="lm").x), [5.0, 0.0],
                               atol=1e-10)

    s = [1.0]
    h = lambda p: p[0] * t + p[1] - s[0] * t  # noqa: E731
    ao.least_squares(h, p0, method="lm")
    s[0] = 7.0
    np.testing.assert_allclose(np.asarray(ao.least_squares(h, p0, method="lm").x), [7.0, 0.0],
                               atol=1e-10)

    # a NumPy array changed in place: its content is part of the program's key
    yn = np.array(2.0 * t + 1.0)
    k = lambda p: p[0] * t + p[1] - yn  # noqa: E731
    ao.least_squares(k, p0, method="lm")
    yn[:] = np.asarray(3.0 * t)
    np.testing.assert_allclose(np.asarray(ao.least_squares(k, p0, method="lm").x), [3.0, 0.0],
                               atol=1e-10)


def test_pure_references():
    from agnopt._least_squares import jax_solve

    _jax()
    import jax
    import jax.numpy as jnp

    assert jax_solve._pure_ref(jnp.ones(3)) and jax_solve._pure_ref((1.0, "a", jnp))
    assert jax_solve._pure_ref(jax.jit(lambda p: p))
    assert not jax_solve._pure_ref({"a": 1.0}) and not jax_solve._pure_ref([1.0])
    assert not jax_solve._pure_ref((1.0, [2.0]))
    box = {"y": 1.0}
    assert not jax_solve._pure_ref(lambda p: p * box["y"])  # a function reading a dict
    assert not jax_solve._pure_ref(jax.jit(lambda p: p * box["y"]))


_DATA_Y = None  # a module global read by a helper function (test below)
_DMOD = __import__("types").ModuleType("dmod")  # a module whose attribute holds the data


def _helper_data():
    return _DATA_Y


def test_what_helpers_and_modules_read_is_part_of_the_key():
    """Rebinding a global that a function called by ``fun`` reads, a closure cell
    of an inner function, a module attribute, or changing the array a read-only
    NumPy view shows: the next fit sees the new data (right values: y = a exp(-b t))."""
    global _DATA_Y
    _jax()
    import jax.numpy as jnp

    t = jnp.linspace(0.0, 4.0, 25)
    p0 = jnp.asarray([1.0, 1.0])

    def check(fun, new_data, want):
        ao.least_squares(fun, p0, method="lm")
        new_data()
        r = ao.least_squares(fun, p0, method="lm")
        np.testing.assert_allclose(np.asarray(r.x), want, rtol=1e-8)

    _DATA_Y = jnp.exp(-t)

    def rebind_global():
        global _DATA_Y
        _DATA_Y = 3.0 * jnp.exp(-2.0 * t)

    check(lambda p: p[0] * jnp.exp(-p[1] * t) - _helper_data(), rebind_global, [3.0, 2.0])

    def outer():
        y = jnp.exp(-t)

        def data():
            return y

        def fun(p):
            return p[0] * jnp.exp(-p[1] * t) - data()

        def change():
            nonlocal y
            y = 2.0 * jnp.exp(-0.5 * t)

        return fun, change

    fun, change = outer()
    check(fun, change, [2.0, 0.5])

    _DMOD.y = jnp.exp(-t)

    def set_attr():
        _DMOD.y = 4.0 * jnp.exp(-3.0 * t)

    check(lambda p: p[0] * jnp.exp(-p[1] * t) - _DMOD.y, set_attr, [4.0, 3.0])

    buf = np.exp(-np.asarray(t))
    view = np.broadcast_to(buf, buf.shape)  # read-only, but its base may change

    def refill():
        buf[:] = 5.0 * np.exp(-1.5 * np.asarray(t))

    check(lambda p: p[0] * jnp.exp(-p[1] * t) - view, refill, [5.0, 1.5])


def test_float32_without_x64_warns_nothing():
    """JAX's default (``jax_enable_x64`` off): the counters are int32, so no
    "Explicitly requested dtype int64 ... truncated" warnings (eleven of them
    before), whole-solve program and engine alike; the right values."""
    import warnings

    jax = _jax()
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", False)
    try:
        t = jnp.linspace(0.0, 4.0, 50, dtype=jnp.float32)
        y = 2.5 * jnp.exp(-1.3 * t) + 0.5
        p0 = jnp.asarray([1.0, 1.0, 1.0], dtype=jnp.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for method in ("lm", "trf"):
                r = ao.least_squares(lambda p: p[0] * jnp.exp(-p[1] * t) + p[2] - y, p0,
                                     method=method)
                np.testing.assert_allclose(np.asarray(r.x), [2.5, 1.3, 0.5], rtol=1e-4)
                assert r.success
    finally:
        jax.config.update("jax_enable_x64", True)


# -- later calls: the program from x0 to the result (agnopt._least_squares.jax_rerun) ----------
def _maker(jnp):
    """``make(y)``: a fresh ``fun`` over new data (the same code: one program)."""
    tj = jnp.asarray(T)

    def make(y):
        yj = jnp.asarray(y)
        return lambda p: p[0] * jnp.exp(-p[1] * tj) + p[2] - yj

    return make


def test_later_call_checks_x0_and_its_residuals():
    """A later call's program checks what the first call's eager set-up checks:
    non-finite ``x0`` or residuals at ``x0`` raise the same ``ValueError``."""
    _jax()
    import jax.numpy as jnp

    make = _maker(jnp)
    p0 = jnp.asarray([1.0, 1.0, 1.0])
    ok = ao.least_squares(make(Y), p0, method="lm")
    assert ok.success
    with pytest.raises(ValueError, match="x0: contains non-finite values"):
        ao.least_squares(make(Y), jnp.asarray([1.0, jnp.nan, 1.0]), method="lm")
    with pytest.raises(ValueError, match="residuals are not finite at the initial point"):
        ao.least_squares(make(np.where(T > 2.0, np.nan, Y)), p0, method="lm")
    with pytest.raises(ValueError, match="residuals are not finite at the initial point"):
        ao.least_squares(make(np.where(T > 2.0, np.inf, Y)), p0, method="lm")
    with _program_runs() as runs:  # and the program is still taken for good data
        again = ao.least_squares(make(Y), p0, method="lm")
    assert runs == [True]
    _same(again, ok, rtol=0.0)


def test_later_call_whose_residuals_need_scaling_equals_the_engine():
    """Residuals too large to square (set_fscale's power-of-2 scaling, which the
    program for unscaled residuals does not do): the eager path scales and
    solves; the result is the engine's, reported unscaled."""
    jax = _jax()
    import jax.numpy as jnp

    make = _maker(jnp)
    p0 = jnp.asarray([1.0, 1.0, 1.0])
    ao.least_squares(make(Y), p0, method="lm")  # the program of this fit
    big = 1e80 * Y
    p_big = jnp.asarray([1e80, 1.0, 1e80])
    got = ao.least_squares(make(big), p_big, method="lm")
    with jax.disable_jit():
        eager = ao.least_squares(make(big), p_big, method="lm")
    _same(got, eager)
    np.testing.assert_allclose(float(got.cost), float(eager.cost), rtol=1e-10)
    assert float(got.cost) > 1e150  # fun's own cost, not the scaled one


def test_later_call_keeps_the_not_stationary_status():
    """A wrong ``jac`` collapses the trust region (an ``xtol`` stop at a point that
    is not stationary): status -6 (``success=False``) on the first and the later
    calls, as the engine."""
    jax = _jax()
    import jax.numpy as jnp

    from agnopt._core.status import Status

    tj = jnp.asarray(T)
    yj = jnp.asarray(2.0 * np.exp(-1.5 * T))

    def fun(x):
        return x[0] * jnp.exp(-x[1] * tj) - yj

    def wrong_jac(x):
        e = jnp.exp(-x[1] * tj)
        return jnp.stack([e, x[0] * tj * e], axis=1)  # the second column's sign is wrong

    x0 = jnp.asarray([1.0, 1.0])
    with jax.disable_jit():
        eager = ao.least_squares(fun, x0, jac=wrong_jac, method="lm")
    assert int(eager.status) == Status.NOT_STATIONARY and not eager.success
    first = ao.least_squares(fun, x0, jac=wrong_jac, method="lm")
    with _program_runs() as runs:
        later = ao.least_squares(fun, x0, jac=wrong_jac, method="lm")
    assert runs == [True]
    for r in (first, later):
        _same(r, eager)
        assert not r.success and r.message == eager.message


@pytest.mark.parametrize("kw", [{}, {"sigma": "1d"}, {"jac": "3-point"}, {"abs": True}])
def test_curve_fit_takes_the_program_and_equals_the_engine(kw):
    """``curve_fit`` on JAX (unbatched, no 2-D sigma): its residual is traceable and
    the same for every call, so the whole-solve program runs and later calls
    reuse it; ``popt``, ``pcov`` and the counts are the engine's (the per-call
    residual under ``jax.disable_jit()``). A model that drops the imaginary
    part (``abs``) is caught by the complex step's check in both."""
    jax = _jax()
    import jax.numpy as jnp

    kw = dict(kw)
    if kw.pop("sigma", None):
        kw["sigma"] = jnp.asarray(0.5 + T / 4.0)
    drops = kw.pop("abs", False)  # the complex step is rejected: the engine solves
    fold = jnp.abs if drops else (lambda v: v)

    def model(x, a, b, c):
        return a * jnp.exp(-fold(b) * x) + c

    tj, yj = jnp.asarray(T), jnp.asarray(Y)

    def fit():
        return ao.curve_fit(model, tj, yj, p0=jnp.asarray([1.0, 1.0, 1.0]), full_output=True,
                            **kw)

    with jax.disable_jit():
        eager = fit()
    first = fit()
    with _program_runs() as runs:
        later = fit()
    assert runs == [not drops]
    rtol = 1e-8 if kw.get("jac") == "3-point" or drops else 1e-10
    for got in (first, later):
        np.testing.assert_allclose(np.asarray(got[0]), np.asarray(eager[0]), rtol=rtol)
        np.testing.assert_allclose(np.asarray(got[1]), np.asarray(eager[1]), rtol=1e-6)
        for k in ("nfev", "njev", "nit", "status"):
            assert int(got[2][k]) == int(eager[2][k]), k
        assert got[3] == eager[3] and got[4] == eager[4]


def test_curve_fit_inline_lambda_reuses_the_program():
    """``curve_fit(lambda x, a, b, c: ..., ...)`` in a loop (a new model function
    each call, as a user writes it inline): the model in the residual's closure
    is split like the residual itself (code, globals, statics; its JAX arrays
    inputs), so later calls run the first call's program (it recompiled every
    call, ~1.6 s each). A model over another static, or over a new JAX array,
    gives its own right answer."""
    _jax()
    import jax.numpy as jnp

    from agnopt._least_squares import jax_solve

    tj = jnp.asarray(T)
    p0 = jnp.asarray([1.0, 1.0, 1.0])
    made: list = []
    orig = jax_solve._make_program

    def spy(*a, **k):
        made.append(1)
        return orig(*a, **k)

    for i, scale in enumerate((1.0, 2.0, 0.5)):
        y = jnp.asarray(scale * Y)
        made.clear()
        jax_solve._make_program = spy
        try:
            with _program_runs() as runs:
                got = ao.curve_fit(lambda x, a, b, c: a * jnp.exp(-b * x) + c, tj, y, p0=p0)
        finally:
            jax_solve._make_program = orig
        if i > 0:
            assert runs == [True] and not made  # the first call's program, not a new one
        ref = ao.curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c, T, scale * Y,
                           p0=np.asarray(p0))
        np.testing.assert_allclose(np.asarray(got[0]), ref[0], rtol=1e-9)
        np.testing.assert_allclose(np.asarray(got[1]), ref[1], rtol=1e-6)

    def shifted(k, w):  # a model closing over a float (static) and a JAX array (input)
        return lambda x, a, b, c: a * jnp.exp(-b * x) + c + k * w

    for k, wv in ((0.0, 0.0), (0.3, 0.0), (0.3, 1.0)):
        w = jnp.asarray(wv)
        got = ao.curve_fit(shifted(k, w), tj, jnp.asarray(Y), p0=p0)
        ref = ao.curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c + k * wv, T, Y,
                           p0=np.asarray(p0))
        np.testing.assert_allclose(np.asarray(got[0]), ref[0], rtol=1e-9)


def test_curve_fit_wrong_model_shape_raises_on_every_call():
    _jax()
    import jax.numpy as jnp

    def model(x, a, b, c):
        return a * jnp.exp(-b * x[1:]) + c  # one point short

    for _ in range(2):
        with pytest.raises(ValueError, match="f: returned shape"):
            ao.curve_fit(model, jnp.asarray(T), jnp.asarray(Y), p0=jnp.asarray([1.0, 1.0, 1.0]))


@pytest.mark.parametrize("case", ["singular", "absolute_sigma", "m_equals_n"])
def test_curve_fit_pcov_program_equals_the_eager_rules(case):
    """``curve_fit``'s covariance on JAX (one program: both of covariance's routes,
    merged) follows ``_pcov``'s eager rules: a rank-deficient Jacobian gives
    ``inf`` and the warning, ``absolute_sigma`` no chi-square scaling,
    ``m == n`` ``inf`` and the warning."""
    jax = _jax()
    import jax.numpy as jnp

    from agnopt import OptimizeWarning

    if case == "singular":
        def model(x, a, b, c):
            return a * b * jnp.exp(-1.3 * x) + c  # a and b only through a b
    else:
        def model(x, a, b, c):
            return a * jnp.exp(-b * x) + c
    k = 3 if case == "m_equals_n" else T.shape[0]
    tj, yj = jnp.asarray(T[:k]), jnp.asarray(Y[:k])
    kw = {"sigma": jnp.asarray(0.5 + T[:k] / 4.0), "absolute_sigma": True} \
        if case == "absolute_sigma" else {}
    warns = case != "absolute_sigma"

    def fit():
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            out = ao.curve_fit(model, tj, yj, p0=jnp.asarray([1.0, 1.0, 1.0]), **kw)
        assert any(issubclass(x.category, OptimizeWarning) for x in w) == warns
        return out

    with jax.disable_jit():
        eager = fit()
    for _ in range(2):
        got = fit()
        np.testing.assert_allclose(np.asarray(got[0]), np.asarray(eager[0]), rtol=1e-9)
        np.testing.assert_allclose(np.asarray(got[1]), np.asarray(eager[1]), rtol=1e-6)
        if warns:
            assert np.all(np.isinf(np.asarray(got[1])))
