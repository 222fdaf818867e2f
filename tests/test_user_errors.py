"""Exceptions of the user's functions, non-callable models, complex-step warnings
and scipy's positional signatures (least_squares, curve_fit, minimize).

Reference: scipy.optimize, which lets a model's exception through with its own
type, raises ``TypeError`` for a non-callable model, and takes its parameters
positionally in the order of its signatures.
"""

from __future__ import annotations

import inspect
import sys
import warnings

import array_api_compat
import numpy as np
import pytest
import scipy.optimize as so
from conftest import to_numpy

import agnopt as ao

NOTES = sys.version_info >= (3, 11)  # PEP 678 notes (add_note)


class MyErr(Exception):
    pass


X = np.linspace(0.0, 1.0, 10)
Y = 2.0 * np.exp(0.95 * X)


def _notes(e):
    return getattr(e, "__notes__", [])


# ---------------------------------------------------------------------------
# 1. the model's exception keeps its type (scipy), with a note saying where


def test_curve_fit_model_error_at_trial_point_keeps_its_type():
    """The trial's case: f raises MyErr once b > 0.9 (a trial point; at the
    default complex-step Jacobian's complex points it also raises: that only
    switches to central differences, whose real points raise it again)."""

    def g(x, a, b):
        if np.real(b) > 0.9:
            raise MyErr("b too big")
        return a * np.exp(b * x)

    with pytest.raises(MyErr, match="^b too big"):
        so.curve_fit(g, X, Y, p0=[0.5, 0.5])
    with pytest.raises(MyErr, match="^b too big") as ei:
        ao.curve_fit(g, X, Y, p0=[0.5, 0.5])
    if NOTES:
        assert len(_notes(ei.value)) == 1
        assert _notes(ei.value)[0].startswith("agnopt: raised while evaluating f at ")
    # not the "Optimal parameters not found" RuntimeError
    assert not isinstance(ei.value, RuntimeError)


@pytest.mark.parametrize("exc", [ZeroDivisionError, IndexError, KeyError, FloatingPointError,
                                 MyErr, TypeError, ValueError])
def test_model_error_at_p0_keeps_its_type(exc):
    def g(x, a, b):
        raise exc("model bug")

    def fun(p):
        raise exc("model bug")

    for call, where in (
        (lambda m: m.curve_fit(g, X, Y, p0=[0.5, 0.5]), "agnopt: raised while evaluating f at p0"),
        (lambda m: m.least_squares(fun, np.ones(2)), "agnopt: raised while evaluating fun at x0"),
    ):
        with pytest.raises(exc) as ref:
            call(so)
        with pytest.raises(exc) as ei:
            call(ao)
        assert type(ei.value) is type(ref.value) and str(ei.value) == str(ref.value)
        if NOTES:
            assert _notes(ei.value) == [where]


def test_least_squares_error_in_jac_and_at_trial_points(xp, device):
    x0 = xp.asarray([1.0, 1.0], dtype=xp.float64, device=device)

    def fun(p):
        return p - 3.0

    def jac(p):
        raise IndexError("jac bug")

    with pytest.raises(IndexError, match="^jac bug") as ei:
        ao.least_squares(fun, x0, jac=jac)
    if NOTES:
        assert _notes(ei.value) == ["agnopt: raised while evaluating jac"]

    calls = []

    def later(p):
        calls.append(1)
        if len(calls) > 1:  # x0 is fine; the first trial point is not
            raise ZeroDivisionError("later")
        return p - 3.0

    with pytest.raises(ZeroDivisionError, match="^later") as ei:
        ao.least_squares(later, x0, jac=lambda p: xp.eye(2, dtype=p.dtype, device=device))
    if NOTES:
        assert _notes(ei.value) == ["agnopt: raised while evaluating fun at a trial point"]


def test_batched_and_finite_difference_errors_keep_their_type(xp, device):
    X0 = xp.ones((3, 2), dtype=xp.float64, device=device)

    def fun(P):
        raise KeyError("batched bug")

    with pytest.raises(KeyError) as ei:
        ao.least_squares(fun, X0, batched=True)
    if NOTES:
        assert _notes(ei.value) == ["agnopt: raised while evaluating fun at x0"]

    # the first finite-difference point of a 2-point Jacobian raises
    def fd(p):
        xp_ = array_api_compat.array_namespace(p)
        if bool(xp_.any(p != 1.0)):
            raise FloatingPointError("off x0")
        return p - 3.0

    with pytest.raises(FloatingPointError, match="^off x0") as ei:
        ao.least_squares(fd, xp.ones(2, dtype=xp.float64, device=device), jac="2-point")
    if NOTES:
        assert _notes(ei.value) == [
            "agnopt: raised while evaluating fun at a finite-difference point (the Jacobian)"]


def test_minimize_and_fisher_scoring_errors_keep_their_type():
    with pytest.raises(ZeroDivisionError) as ei:
        ao.minimize(lambda p: 1 / 0, np.ones(2))
    if NOTES:
        assert _notes(ei.value) == ["agnopt: raised while evaluating fun (and its gradient) at x0"]
    t = np.linspace(0.0, 1.0, 6)
    y = np.array([1.0, 2.0, 2.0, 4.0, 5.0, 9.0])
    with pytest.raises(MyErr) as ei:
        ao.fisher_scoring(lambda th: (_ for _ in ()).throw(MyErr("mean bug")), np.zeros(2), y,
                          family="poisson")
    if NOTES:
        assert _notes(ei.value) == ["agnopt: raised while evaluating mean_fn at x0"]
    assert ao.fisher_scoring(lambda th: np.exp(th[0] + th[1] * t), np.zeros(2), y,
                             family="poisson").success


def test_curve_fit_keeps_a_user_message_naming_fun_and_x0():
    """curve_fit renames least_squares' fun/x0 in its own messages, never in the model's."""

    def g(x, a, b):
        raise ValueError("fun of x0 is undefined")

    with pytest.raises(ValueError, match="^fun of x0 is undefined"):
        ao.curve_fit(g, X, Y, p0=[1.0, 1.0])


@pytest.mark.parametrize("method", ["trf", "lm"])
@pytest.mark.parametrize("exc", [TypeError, MyErr, ZeroDivisionError])
def test_default_jac_falls_back_when_model_rejects_complex(xp, device, exc, method):
    """Any exception at the complex points of the default Jacobian: central
    differences for the rest of the solve (scipy's 2-point answer)."""

    def fun(p):
        xp_ = array_api_compat.array_namespace(p)
        if xp_.isdtype(p.dtype, "complex floating"):
            raise exc("real input only")
        t = xp_.asarray(X, dtype=p.dtype, device=array_api_compat.device(p))
        return p[0] * xp_.exp(p[1] * t) - xp_.asarray(Y, dtype=p.dtype,
                                                       device=array_api_compat.device(p))

    res = ao.least_squares(fun, xp.asarray([1.0, 1.0], dtype=xp.float64, device=device),
                           method=method)
    ref = so.least_squares(lambda p: p[0] * np.exp(p[1] * X) - Y, [1.0, 1.0], method=method)
    assert res.success
    np.testing.assert_allclose(to_numpy(res.x), ref.x, rtol=1e-7)
    np.testing.assert_allclose(to_numpy(res.x), [2.0, 0.95], rtol=1e-7)


# ---------------------------------------------------------------------------
# 2. a model that is not callable


def test_not_callable_names_the_argument():
    with pytest.raises(TypeError, match=r"^f: expected a callable \(the model\), got str"):
        ao.curve_fit("model", X, Y, p0=[1.0, 1.0])
    with pytest.raises(TypeError, match=r"^fun: expected a callable, got int"):
        ao.least_squares(5, np.ones(2))
    with pytest.raises(TypeError, match=r"^fun: expected a callable, got NoneType"):
        ao.minimize(None, np.ones(2))
    with pytest.raises(TypeError, match=r"^mean_fn: expected a callable"):
        ao.fisher_scoring(3.0, np.zeros(2), np.ones(4), family="poisson")
    # jac: neither callable nor one of the strings: scipy's least_squares ValueError
    with pytest.raises(ValueError, match="jac"):
        so.least_squares(lambda p: p, np.ones(2), jac=5)
    with pytest.raises(ValueError, match=r"^jac: expected a callable or one of"):
        ao.least_squares(lambda p: p, np.ones(2), jac=5)


# ---------------------------------------------------------------------------
# 3. no ComplexWarning from the default complex-step Jacobian


def _casting_warnings(record):
    return [w for w in record if "Casting complex values to real" in str(w.message)]


@pytest.mark.parametrize("kind", ["float", "astype"])
def test_default_jac_does_not_warn_about_complex_casts(kind):
    """A model calling float(a) or .astype(float) drops the complex step: agnopt
    finds it (falls back to differences) and says nothing about complex numbers."""

    def g(x, a, b):
        if kind == "float":
            return float(a) * np.exp(b * x)
        return a * np.exp(np.asarray(b).astype(float) * x)

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        popt, _ = ao.curve_fit(g, X, Y, p0=[1.0, 1.0])
    assert _casting_warnings(rec) == []
    ref, _ = so.curve_fit(g, X, Y, p0=[1.0, 1.0])
    np.testing.assert_allclose(popt, ref, rtol=1e-7)
    np.testing.assert_allclose(popt, [2.0, 0.95], rtol=1e-7)

    def fun(p):
        return float(p[0]) * np.exp(p[1] * X) - Y

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = ao.least_squares(fun, np.ones(2))
        resb = ao.least_squares(lambda P: P[:, :1].astype(float) * np.exp(P[:, 1:] * X) - Y,
                                np.ones((3, 2)), batched=True)
    assert _casting_warnings(rec) == []
    np.testing.assert_allclose(res.x, so.least_squares(fun, np.ones(2)).x, rtol=1e-7)
    np.testing.assert_allclose(resb.x, np.tile([2.0, 0.95], (3, 1)), rtol=1e-7)
    assert res.success and bool(np.all(resb.success))
    # the warning filters are restored after the solve
    with pytest.warns(np.exceptions.ComplexWarning):
        float(np.complex128(1 + 1j))


def test_default_jac_complex_cast_is_silent_on_every_backend(xp, device):
    """``xp.astype(p, float64)`` of the complex point: NumPy's ComplexWarning,
    torch's UserWarning (array_api_strict refuses the cast): none reaches the
    user, and the fit is scipy's."""
    if "dask" in xp.__name__:
        pytest.skip("dask: the cast runs when the graph is computed, after agnopt's evaluation "
                    "returned (its warning is not silenced there)")

    def fun(p):
        xp_ = array_api_compat.array_namespace(p)
        dev = array_api_compat.device(p)
        a = p[0] if not xp_.isdtype(p.dtype, "complex floating") else xp_.astype(p[0], xp_.float64)
        t = xp_.asarray(X, dtype=xp_.float64, device=dev)
        return a * xp_.exp(p[1] * t) - xp_.asarray(Y, dtype=xp_.float64, device=dev)

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = ao.least_squares(fun, xp.asarray([1.0, 1.0], dtype=xp.float64, device=device))
    assert _casting_warnings(rec) == []
    assert res.success
    ref = so.least_squares(lambda p: p[0] * np.exp(p[1] * X) - Y, [1.0, 1.0])
    np.testing.assert_allclose(to_numpy(res.x), ref.x, rtol=1e-7)


def test_quiet_complex_casts_is_thread_safe():
    """Fits in threads (a Dask batch's scheduler): the filter is added once and
    removed by the last fit to finish; the user's filters are left as they were."""
    import threading

    def g(x, a, b):
        return float(a) * np.exp(b * x)

    before = list(warnings.filters)
    out: list = []

    def work():
        for _ in range(3):
            out.append(ao.curve_fit(g, X, Y, p0=[1.0, 1.0])[0])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.filters == before
    assert len(out) == 12
    for p in out:
        np.testing.assert_allclose(p, [2.0, 0.95], rtol=1e-7)


def test_explicit_cs_keeps_the_complex_cast_warning():
    """jac="cs" asked for the complex step, which nothing checks: the backend's
    warning that the model dropped the imaginary part is the user's to see."""

    def fun(p):
        return float(p[0]) * np.exp(p[1] * X) - Y

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ao.least_squares(fun, np.ones(2), jac="cs", max_nfev=3)
    assert _casting_warnings(rec) != []


# ---------------------------------------------------------------------------
# 4. scipy's positional order


def _order(f):
    return [p.name for p in inspect.signature(f).parameters.values()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]


@pytest.mark.parametrize("name", ["minimize", "least_squares", "curve_fit"])
def test_positional_order_is_scipys(name):
    ours, theirs = _order(getattr(ao, name)), _order(getattr(so, name))
    assert ours == theirs[: len(ours)], (ours, theirs)
    if name == "minimize":
        assert ours == theirs  # every one of scipy's parameters, in its order


def test_minimize_positional_arguments_as_scipy():
    def f(x, a):
        return np.sum((x - a) ** 2) + np.sum(x**4)

    def jac(x, a):
        return 2.0 * (x - a) + 4.0 * x**3

    ours = ao.minimize(f, np.zeros(2), (2.0,), "newton-cg", jac)
    ref = so.minimize(f, np.zeros(2), (2.0,), "newton-cg", jac)
    assert ours.success and ref.success
    np.testing.assert_allclose(ours.x, ref.x, rtol=1e-6)
    ours = ao.minimize(f, np.zeros(2), (2.0,), None, jac, None, None, None, (), 1e-10)
    assert ours.success
    np.testing.assert_allclose(ours.x, ref.x, rtol=1e-6)


@pytest.mark.parametrize("given", [
    {"bounds": [(-1.0, 1.0), (-1.0, 1.0)]},
    {"constraints": {"type": "eq", "fun": lambda x: x[0]}},
    {"constraints": [{"type": "eq", "fun": lambda x: x[0]}], "bounds": [(0, 1), (0, 1)]},
    {"constraints": [], "bounds": None},
])
def test_minimize_bounds_constraints_warn_and_are_ignored_as_scipy(given):
    def f(x):
        return np.sum((x - 2.0) ** 2)

    def jac(x):
        return 2.0 * (x - 2.0)

    def run(mod):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            res = mod.minimize(f, np.zeros(2), method="Newton-CG", jac=jac, **given)
        return res, [(w.category, str(w.message), w.filename) for w in rec
                     if issubclass(w.category, RuntimeWarning)]

    ours, wo = run(ao)
    ref, wr = run(so)
    assert [w[:2] for w in wo] == [w[:2] for w in wr]
    assert all(w[2] == __file__ for w in wo)  # issued at the caller's line
    np.testing.assert_allclose(ours.x, ref.x, rtol=1e-6)
    np.testing.assert_allclose(ours.x, [2.0, 2.0], rtol=1e-6)  # ignored: unconstrained minimum
