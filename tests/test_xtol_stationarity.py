"""An ``xtol`` stop is a success only at a converged point (status -6 otherwise).

Issue 11: ``least_squares(method="dogbox")`` from NIST's first starts of
MGH17 and Rat43 stopped on the ``xtol`` test with status 3 (success) and
LRE -4.1 / -2.7, as scipy's dogbox does. There the model saturated: the
exponentials of the variables that scale ``x`` underflow next to 1 for
every data point but the first (MGH17) or all (Rat43), so the model is a
constant and the trust region collapsed; the residual is not orthogonal to
the (tiny) columns of those variables, so the point is not stationary. A
wrong Jacobian makes every method (and scipy) collapse the same way. The
rule (``least_squares``' Notes, :mod:`agnopt._least_squares.stationarity`)
must leave real convergence alone: zero-residual solutions (also with a
singular Jacobian), solutions on a bound, NIST with lm, trf and dogbox from
every other start.
"""

from __future__ import annotations

import warnings

import array_api_compat
import numpy as np
import pytest
import scipy.optimize as so
from conftest import to_numpy

import agnopt as ao
from agnopt._cli import nist as _nist
from agnopt._core.status import Status

PROBLEMS = {p["name"]: p for p in _nist.load_nist()}
TOL = {"xtol": 1e-15, "ftol": 1e-15, "gtol": 1e-15}  # the NIST runs' tolerances


def _plateau_values(name):
    """The right values at the saturated model, from the data alone:
    ``(b1, cost, b1 + b2 + b3 or None)``. Rat43's model is the constant ``b1``
    (``mean(y)``); MGH17's is ``b1`` for ``x >= 10`` and ``b1 + b2 + b3`` at
    ``x = 0``, the first data point."""
    y = np.asarray(PROBLEMS[name]["y"], dtype=np.float64)
    if name == "Rat43":
        return y.mean(), 0.5 * np.sum((y - y.mean()) ** 2), None
    rest = y[1:]
    return rest.mean(), 0.5 * np.sum((rest - rest.mean()) ** 2), y[0]


def _solve(name, xp, start, method, **kw):
    fun, _, _, _ = _nist.nist_problem(PROBLEMS[name], xp)
    x0 = xp.asarray(PROBLEMS[name][start], dtype=xp.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # exp overflow at rejected trials
        return ao.least_squares(fun, x0, method=method, **TOL, **kw)


@pytest.mark.parametrize("name", ["MGH17", "Rat43"])
def test_dogbox_stop_on_a_saturated_model_is_not_success(backend, name):
    case, xp, _ = backend
    if case.value in ("jax", "dask") and name != "MGH17":
        pytest.skip(f"{case.value}: one NIST problem (per-operation compile / task graphs)")
    r = _solve(name, xp, "start1", "dogbox")
    assert int(r.status) == Status.NOT_STATIONARY and not r.success, r.message
    assert "not first-order stationary" in r.message
    x = to_numpy(r.x)
    b1, cost, at0 = _plateau_values(name)
    np.testing.assert_allclose(x[0], b1, rtol=1e-9)
    np.testing.assert_allclose(float(r.cost), cost, rtol=1e-9)
    if at0 is not None:
        np.testing.assert_allclose(x[0] + x[1] + x[2], at0, rtol=1e-9)
    # the certified minimum exists and is far below (lm reaches it from the same start)
    r_lm = _solve(name, np, "start1", "lm")
    assert r_lm.success and _nist.lre(list(r_lm.x), PROBLEMS[name]["certified_values"]) >= 6
    assert float(r_lm.cost) < 1e-2 * cost
    # scipy's dogbox stops at the same plateau and calls it success
    fun_np, _, _, _ = _nist.nist_problem(PROBLEMS[name], np)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r_sp = so.least_squares(fun_np, np.array(PROBLEMS[name]["start1"]), method="dogbox",
                                jac="3-point", **TOL)
    assert r_sp.success and r_sp.cost > 0.99 * cost


def test_batched_dogbox_flags_only_the_stuck_problem():
    """Batched: the stuck start is -6, the other start converges (as alone)."""
    fun, _, _, _ = _nist.nist_problem(PROBLEMS["MGH17"], np)
    X0 = np.array([PROBLEMS["MGH17"]["start1"], PROBLEMS["MGH17"]["start2"]])

    def fun_b(X):
        return np.stack([fun(x) for x in X])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rb = ao.least_squares(fun_b, X0, method="dogbox", batched=True, **TOL)
    solo = [_solve("MGH17", np, s, "dogbox") for s in ("start1", "start2")]
    assert [int(s) for s in to_numpy(rb.status)] == [int(r.status) for r in solo]
    assert int(solo[0].status) == Status.NOT_STATIONARY and solo[1].success
    assert list(to_numpy(rb.success)) == [False, True]
    assert _nist.lre(list(to_numpy(rb.x)[1]), PROBLEMS["MGH17"]["certified_values"]) >= 6


def _ns(x):
    return array_api_compat.array_namespace(x)


def rosen(x):
    xp = _ns(x)
    return xp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def rosen_wrong_jac(x):
    """d f0 / d x0 with the wrong sign (the right one is -20 x0)."""
    xp = _ns(x)
    one, zero = xp.ones_like(x[0]), xp.zeros_like(x[0])
    return xp.stack([xp.stack([20.0 * x[0], 10.0 * one]), xp.stack([-one, zero])])


@pytest.mark.parametrize("method", ["trf", "dogbox", "lm"])
def test_wrong_jacobian_stop_is_not_success(xp, device, method):
    """scipy returns status 3 (success) far from the minimum [1, 1] (cost 0)."""
    x0 = xp.asarray([-1.2, 1.0], dtype=xp.float64, device=device)
    r = ao.least_squares(rosen, x0, jac=rosen_wrong_jac, method=method)
    assert int(r.status) == Status.NOT_STATIONARY and not r.success, r.message
    assert float(r.cost) > 1.0
    r_sp = so.least_squares(lambda x: to_numpy(rosen(np.asarray(x))), [-1.2, 1.0],
                            jac=lambda x: rosen_wrong_jac(np.asarray(x)), method=method)
    assert r_sp.status == 3 and r_sp.cost > 1.0  # scipy's silent wrong answer
    good = ao.least_squares(rosen, x0, method=method)
    assert good.success
    np.testing.assert_allclose(to_numpy(good.x), [1.0, 1.0], rtol=1e-7)


@pytest.mark.parametrize("method", ["trf", "dogbox", "lm"])
def test_stop_at_a_kink_is_not_success(method):
    """Non-smooth residual ``|x0 - 1| + 0.1``: the steps shrink onto the kink
    (x is right) but no first-order condition holds there: -6, not 3."""
    def f(x):
        return np.array([abs(x[0] - 1.0) + 0.1, x[1] - 2.0])

    r = ao.least_squares(f, np.array([3.0, 0.0]), jac="2-point", method=method)
    assert int(r.status) == Status.NOT_STATIONARY and not r.success
    np.testing.assert_allclose(r.x, [1.0, 2.0], atol=1e-6)


def powell_singular(x):
    """Moré-Garbow-Hillstrom's Powell singular function: zero residual at 0,
    where the Jacobian is singular (convergence is linear)."""
    return np.array([x[0] + 10 * x[1], 5 ** 0.5 * (x[2] - x[3]), (x[1] - 2 * x[2]) ** 2,
                     10 ** 0.5 * (x[0] - x[3]) ** 2])


@pytest.mark.parametrize("method", ["trf", "dogbox", "lm"])
def test_converged_xtol_stops_stay_success(method):
    """Only the ``xtol`` test can stop these (the others at eps or off): zero
    residual with a singular Jacobian, and a minimum on a bound."""
    tol = {"ftol": None, "gtol": None} if method != "lm" else {"ftol": 2.3e-16, "gtol": 2.3e-16}
    r = ao.least_squares(powell_singular, np.array([3.0, -1.0, 0.0, 1.0]), method=method,
                         xtol=1e-8, **tol)
    assert int(r.status) == Status.XTOL and r.success, r.message
    assert np.max(np.abs(r.x)) < 1e-12
    rb = ao.least_squares(lambda x: to_numpy(rosen(np.asarray(x))), np.array([2.0, 2.0]),
                          method=method, bounds=([-np.inf, 1.5], np.inf), xtol=1e-8, **tol)
    assert int(rb.status) == Status.XTOL and rb.success, rb.message
    np.testing.assert_allclose(rb.x, [1.22437075, 1.5], rtol=1e-7)
    np.testing.assert_allclose(rb.cost, 0.0252130939468, rtol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["trf", "dogbox"])
def test_nist_xtol_stops_are_right_or_flagged(method):
    """Every NIST run of trf and dogbox (default Jacobian) that says success
    has LRE >= 4; the two that do not converge say so (status <= 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = _nist.nist_report(method=method, verbose=False)
    wrong = [(r["name"], r["start"], r["lre"], r["status"]) for r in rows
             if r["success"] and r["lre"] < 4]
    assert not wrong, wrong
    solved = sum(r["lre"] >= 6 for r in rows)
    assert solved >= {"trf": 52, "dogbox": 50}[method]


@pytest.mark.parametrize("method", ["lm", "gauss-newton"])
def test_tall_path_flags_the_same_stops(method):
    """tall_least_squares (Dask rows; only J^T J, J^T f in memory): a wrong
    Jacobian and a kink are -6, a zero-residual xtol stop stays 3."""
    da = pytest.importorskip("dask.array")
    t = da.from_array(np.linspace(0.0, 1.0, 40), chunks=10)
    y = 2.0 * da.exp(-1.5 * t)

    def fun(x):
        return x[0] * da.exp(-x[1] * t) - y

    def wrong_jac(x):
        e = da.exp(-x[1] * t)
        return da.stack([e, x[0] * t * e], axis=1)  # the second column's sign is wrong

    def kink(x):
        return da.abs(fun(x)) + 0.01

    x0 = np.array([1.0, 1.0])
    r = ao.tall_least_squares(fun, x0, jac=wrong_jac, method=method)
    assert int(r.status) == Status.NOT_STATIONARY and not r.success and r.cost > 0.1
    r = ao.tall_least_squares(kink, x0, jac="2-point", method=method)
    assert int(r.status) == Status.NOT_STATIONARY and not r.success
    np.testing.assert_allclose(np.asarray(r.x), [2.0, 1.5], rtol=1e-6)
    r = ao.tall_least_squares(fun, x0, method=method, ftol=1e-15, gtol=1e-15, xtol=1e-12)
    assert int(r.status) == Status.XTOL and r.success
    np.testing.assert_allclose(np.asarray(r.x), [2.0, 1.5], rtol=1e-12)


# -- status 4 (ftol and xtol): an xtol stop too, with the same check -------------------
# BoxBOD (NIST): y = b1 (1 - exp(-b2 x)); from b = [1, 5] lm's first steps take b2 to
# ~100, where exp(-b2 x) underflows next to 0 for every x: the model is the constant b1,
# b1 goes to mean(y) = 172.5 and the damped step in b2 (its column ~1e-40, its scale
# D = max ||J_2|| seen) predicts no reduction: ftol and xtol fire together (status 4).
# The certified minimum is b = [213.80940889, 0.54723748542], cost 584.0044 (start 2).
BOXBOD_PLATEAU = (172.5, 4885.75)  # mean(y) and 0.5 sum((y - mean(y))^2)


def _boxbod(xp):
    fun, _, _, _ = _nist.nist_problem(PROBLEMS["BoxBOD"], xp)
    return fun


def test_ftol_xtol_stop_on_a_saturated_model_is_not_success(backend):
    case, xp, dev = backend
    y = np.asarray(PROBLEMS["BoxBOD"]["y"], dtype=np.float64)
    np.testing.assert_allclose(BOXBOD_PLATEAU, (y.mean(), 0.5 * np.sum((y - y.mean()) ** 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = ao.least_squares(_boxbod(xp), xp.asarray([1.0, 5.0], dtype=xp.float64), method="lm")
    assert int(r.status) == Status.NOT_STATIONARY and not r.success, r.message
    x = to_numpy(r.x)
    np.testing.assert_allclose(x[0], BOXBOD_PLATEAU[0], rtol=1e-9)
    np.testing.assert_allclose(float(r.cost), BOXBOD_PLATEAU[1], rtol=1e-9)
    assert x[1] > 50.0  # exp(-b2 x) < 1e-21 at every data point
    # scipy's lm stops on the same plateau and calls it success (gtol there)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r_sp = so.least_squares(_boxbod(np), np.array([1.0, 5.0]), method="lm")
    assert r_sp.success and r_sp.cost == pytest.approx(BOXBOD_PLATEAU[1], rel=1e-9)
    # the minimum is far below: lm reaches it from NIST's start 1
    r1 = ao.least_squares(_boxbod(np), np.array([1.0, 1.0]), method="lm")
    assert r1.success and float(r1.cost) == pytest.approx(584.0044, rel=1e-6)


def test_batched_and_tall_ftol_xtol_plateau_stops_are_flagged():
    """A batch flags only its stuck problem (as alone); the tall path (Dask
    rows, analytic Jacobian) flags the same stop from J^T J and J^T f."""
    da = pytest.importorskip("dask.array")
    p = PROBLEMS["BoxBOD"]
    t = np.asarray(p["x"], dtype=np.float64).reshape(-1)
    y = np.asarray(p["y"], dtype=np.float64)

    def fb(X):
        return X[:, :1] * (1.0 - np.exp(-X[:, 1:] * t)) - y

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rb = ao.least_squares(fb, np.array([[1.0, 5.0], [1.0, 1.0]]), method="lm", batched=True)
    assert [int(s) for s in to_numpy(rb.status)] == [Status.NOT_STATIONARY, Status.FTOL]
    np.testing.assert_allclose(to_numpy(rb.x)[0, 0], BOXBOD_PLATEAU[0], rtol=1e-9)
    assert _nist.lre(list(to_numpy(rb.x)[1]), p["certified_values"]) >= 5
    td, yd = da.from_array(t, chunks=3), da.from_array(y, chunks=3)

    def fun(b):
        return b[0] * (1.0 - da.exp(-b[1] * td)) - yd

    def jac(b):
        e = da.exp(-b[1] * td)
        return da.stack([1.0 - e, b[0] * td * e], axis=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = ao.tall_least_squares(fun, np.array([1.0, 5.0]), jac=jac, method="lm")
    assert int(r.status) == Status.NOT_STATIONARY and not r.success
    np.testing.assert_allclose(float(r.cost), BOXBOD_PLATEAU[1], rtol=1e-9)


def test_minpack_initial_radius_on_boxbod_start1_is_not_success(monkeypatch):
    """With MINPACK's initial radius (factor 100; agnopt uses 1, engine.FACTOR)
    lm's first step from NIST's BoxBOD start 1 lands on the plateau (b2 ~ 111)
    and stops there with status 4 (scipy's lm: status 1 or 2, LRE -2.2): the
    check says -6, on the generic and the numba paths alike."""
    from agnopt._least_squares import engine

    monkeypatch.setattr(engine, "FACTOR", 100.0)
    for fast in ("0", "numba"):
        if fast == "numba":
            pytest.importorskip("numba")
        monkeypatch.setenv("AGNOPT_FAST", fast)
        r = _solve("BoxBOD", np, "start1", "lm")
        assert int(r.status) == Status.NOT_STATIONARY and not r.success, (fast, r.message)
        np.testing.assert_allclose(r.x[0], BOXBOD_PLATEAU[0], rtol=1e-9)
        np.testing.assert_allclose(float(r.cost), BOXBOD_PLATEAU[1], rtol=1e-9)
    monkeypatch.setattr(engine, "FACTOR", 1.0)
    r = _solve("BoxBOD", np, "start1", "lm")  # agnopt's radius: the certified values
    assert r.success and _nist.lre(list(r.x), PROBLEMS["BoxBOD"]["certified_values"]) >= 6


@pytest.mark.parametrize("bounded", [False, True])
def test_batched_check_runs_on_the_xtol_rows_alone(xp, device, bounded):
    """A batch checks only its xtol stops' rows (gathered where the backend allows):
    each row's verdict is what that row alone gets, the other statuses unchanged."""
    from agnopt._least_squares.stationarity import xtol_not_stationary

    rng = np.random.default_rng(5)
    k, m, n = 9, 6, 3
    X = rng.standard_normal((k, n))
    J = rng.standard_normal((k, m, n))
    F = rng.standard_normal((k, m))
    # rows 1 and 6: stationary (f orthogonal to J's columns); row 4: a zero residual
    for r in (1, 6):
        q, _ = np.linalg.qr(J[r], mode="complete")
        F[r] = q[:, n:] @ rng.standard_normal(m - n)
    F[4] = 0.0
    status = np.array([3, 3, 2, 4, 3, 1, 4, 2, 3])
    lb, ub = np.full((k, n), -np.inf), np.full((k, n), np.inf)
    lb[0, 1] = X[0, 1]  # row 0: held at its lower bound
    ub[8, :] = X[8, :] + 1.0
    a = lambda v, dt=xp.float64: xp.asarray(v, dtype=dt, device=device)
    args = (bounded, "linear", 1.0, 1e-8)
    out = to_numpy(xtol_not_stationary(xp, a(status, xp.int64), a(X), a(F), a(J), a(lb), a(ub),
                                       *args))
    alone = [int(to_numpy(xtol_not_stationary(
        xp, a(status[r:r + 1], xp.int64), a(X[r:r + 1]), a(F[r:r + 1]), a(J[r:r + 1]),
        a(lb[r:r + 1]), a(ub[r:r + 1]), *args))[0]) for r in range(k)]
    assert out.tolist() == alone
    not_checked = ~np.isin(status, (3, 4))
    assert np.array_equal(out[not_checked], status[not_checked])
    assert out[1] == 3 and out[4] == 3 and out[6] == 4 and out[8] == Status.NOT_STATIONARY
