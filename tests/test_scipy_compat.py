"""scipy compatibility of least_squares / curve_fit (issue 11): signatures, options, conversions,
and the silent wrong answers of issue 11 items 2, 4, 6, 7 and 8, each with its right value.

Right values: scipy 1.17 where it is right, or the math (stated at each test). These are our own
tests of the behaviours that scipy's test suite checks; none of scipy's tests is copied.
"""

from __future__ import annotations

import inspect
import math
import warnings

import array_api_compat
import numpy as np
import pytest
from conftest import to_numpy

import agnopt as ao

# JAX compiles each new shape and Dask builds a graph per operation: there only the tests of
# backend-specific behaviour run (the rest is the same Array API code as on numpy / torch).
_HEAVY_OK = {"test_overflowing_residuals_are_scaled", "test_default_jacobian_verified"}


@pytest.fixture(autouse=True)
def _subset(request):
    if "backend" not in request.fixturenames:
        return
    case = request.getfixturevalue("backend")[0].value
    if case in ("jax", "dask") and request.node.originalname not in _HEAVY_OK:
        pytest.skip(f"{case}: per-operation compilation / task graphs; same code as numpy/torch")


def arr(xp, device, v):
    return xp.asarray(np.asarray(v, dtype=float).tolist(), dtype=xp.float64, device=device)


def _ns(x):
    return array_api_compat.array_namespace(x)


def trivial(x, a=0.0):
    return (x - a) ** 2 + 5.0


def rosen(x):
    xp = _ns(x)
    return xp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def rosen_jac(x):
    xp = _ns(x)
    return xp.stack([xp.stack([-20.0 * x[0], xp.ones_like(x[0]) * 10.0]),
                     xp.stack([-xp.ones_like(x[0]), xp.zeros_like(x[0])])])


# --------------------------------------------------------------------------- signatures
def test_signatures_in_scipys_order():
    ls = list(inspect.signature(ao.least_squares).parameters.values())
    assert [p.name for p in ls[:21]] == [
        "fun", "x0", "jac", "bounds", "method", "ftol", "xtol", "gtol", "x_scale", "loss",
        "f_scale", "diff_step", "tr_solver", "tr_options", "jac_sparsity", "max_nfev",
        "verbose", "args", "kwargs", "callback", "workers"]
    assert all(p.kind == p.POSITIONAL_OR_KEYWORD for p in ls[:21])
    assert ls[4].default == "trf" and ls[2].default is None  # scipy's default method
    assert all(p.kind == p.KEYWORD_ONLY for p in ls[21:]) and {"batched", "history"} <= {
        p.name for p in ls[21:]}
    cf = inspect.signature(ao.curve_fit).parameters
    names = list(cf)
    assert names[:10] == ["f", "xdata", "ydata", "p0", "sigma", "absolute_sigma",
                          "check_finite", "bounds", "method", "jac"]
    assert cf["full_output"].kind == cf["nan_policy"].kind == inspect.Parameter.KEYWORD_ONLY
    assert cf["batched"].kind == inspect.Parameter.KEYWORD_ONLY


def test_positional_call(xp, device):
    # jac and bounds by position, as scipy code passes them
    res = ao.least_squares(rosen, arr(xp, device, [-2.0, 1.0]), rosen_jac, (-math.inf, math.inf))
    np.testing.assert_allclose(to_numpy(res.x), [1.0, 1.0], rtol=1e-7)


# --------------------------------------------------------------------------- options
def test_tolerances_none_and_eps_rules():
    # lm: every tolerance must be >= eps (MINPACK cannot switch a test off)
    for tols in [(None, 1e-8, 1e-8), (1e-8, None, 1e-8), (1e-8, 1e-8, None), (1e-8, 1e-17, 1e-8)]:
        with pytest.raises(ValueError, match="machine epsilon"):
            ao.least_squares(trivial, 2.0, method="lm", ftol=tols[0], xtol=tols[1],
                             gtol=tols[2])
    # other methods: None switches a test off, but not all three
    with pytest.raises(ValueError, match="at least one"):
        ao.least_squares(trivial, 2.0, method="gauss-newton", ftol=None, xtol=None, gtol=None)
    # Rosenbrock with a constant third residual (cost 0.5 at x* = [1, 1], so that the relative
    # ftol test can hold): each test alone stops the solve, with its own status
    f3 = lambda x: np.array([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0], 1.0])
    for k, status in (("ftol", 2), ("xtol", 3), ("gtol", 1)):
        tols = {"ftol": None, "xtol": None, "gtol": None, k: 1e-10}
        res = ao.least_squares(f3, np.array([-2.0, 1.0]), method="gauss-newton", **tols)
        np.testing.assert_allclose(res.x, [1.0, 1.0], rtol=1e-4)
        assert res.success and res.status == status
    with pytest.warns(UserWarning, match="below the machine epsilon"):
        ao.least_squares(trivial, 2.0, method="gauss-newton", ftol=1e-20)
    with pytest.raises(ValueError, match="ftol"):
        ao.least_squares(trivial, 2.0, ftol=-1.0)


def test_diff_step_sets_the_relative_step(xp, device):
    # f(x) = x^2 - 4 with forward differences of relative step 0.1: J(x) = ((1.1x)^2 - x^2)/(0.1x)
    # = 2.1 x, so at the root x = 2 the reported Jacobian is 4.2 (exact: 4)
    f = lambda x: x**2 - 4.0
    res = ao.least_squares(f, arr(xp, device, [3.0]), jac="2-point", diff_step=0.1)
    np.testing.assert_allclose(to_numpy(res.x), [2.0], rtol=1e-8)
    np.testing.assert_allclose(to_numpy(res.jac), [[4.2]], rtol=1e-8)
    res = ao.least_squares(f, arr(xp, device, [3.0]), jac="2-point")
    np.testing.assert_allclose(to_numpy(res.jac), [[4.0]], rtol=1e-7)
    with pytest.raises(ValueError, match="diff_step"):
        ao.least_squares(f, arr(xp, device, [3.0]), diff_step=-1.0)


def test_x_scale_values():
    for good in (1.0, np.array([0.5, 2.0]), "jac"):
        res = ao.least_squares(rosen, np.array([-2.0, 1.0]), x_scale=good)
        assert res.success
        np.testing.assert_allclose(res.x, [1.0, 1.0], rtol=1e-7)
    for bad in ("auto", -1.0, 1.0 + 2.0j, np.array([1.0, 2.0])):
        with pytest.raises(ValueError, match="x_scale"):
            ao.least_squares(trivial, 2.0, x_scale=bad)


class _Box:
    """Any object with ``lb`` and ``ub`` (as scipy's Bounds) is a pair of bounds."""

    def __init__(self, lb=-np.inf, ub=np.inf):
        self.lb, self.ub = lb, ub


def test_bounds_objects():
    f = lambda x: np.array([x[0], x[1]])
    ref = ao.least_squares(f, [1.0, 1.0], bounds=([0.3, 0.2], 3.0))
    res = ao.least_squares(f, [1.0, 1.0], bounds=_Box([0.3, 0.2], 3.0))
    np.testing.assert_array_equal(res.x, ref.x)
    np.testing.assert_allclose(res.x, [0.3, 0.2])
    assert ao.least_squares(trivial, 3.0, bounds=_Box(lb=1.0)).x[0] == pytest.approx(1.0)
    assert ao.least_squares(trivial, 0.5, bounds=_Box()).x[0] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="2 elements"):
        ao.least_squares(trivial, 2.0, bounds=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="Initial guess is outside of provided bounds"):
        ao.least_squares(trivial, 2.0, bounds=(3.0, 4.0))


def test_callback_conventions(xp, device):
    seen = []

    def by_x(x):  # any other parameter name: called with a copy of x
        seen.append(("x", to_numpy(x).copy()))

    def by_result(intermediate_result):  # scipy's name: called with the OptimizeResult
        seen.append(("r", intermediate_result.nit, float(intermediate_result.cost)))

    x0 = arr(xp, device, [-2.0, 1.0])
    res = ao.least_squares(rosen, x0, callback=by_x)
    assert seen and all(s[0] == "x" for s in seen) and res.status != -2
    np.testing.assert_allclose(seen[-1][1], to_numpy(res.x))
    seen.clear()
    res = ao.least_squares(rosen, x0, callback=by_result)
    assert seen and all(s[0] == "r" for s in seen) and seen[-1][1] == res.nit

    def stop(intermediate_result):
        seen.append(intermediate_result.nit)
        raise StopIteration

    seen.clear()
    res = ao.least_squares(rosen, x0, callback=stop)
    # lm calls the callback after every trial step (MINPACK's inner iteration, accepted or not)
    assert res.status == -2 and not res.success and seen == [res.nit]


def test_complex_and_integer_x0():
    for x0 in (2.0 + 0.0j, [1.0, 2.0 + 0.0j], np.array([1.0 + 0j, 2.0])):
        with pytest.raises(ValueError, match="x0: must be real"):
            ao.least_squares(lambda x: x - 1.0, x0)
    res = ao.least_squares(lambda x: x - 1.5, np.array([3, 4]))  # integers: float64, as scipy
    assert res.x.dtype == np.float64
    np.testing.assert_allclose(res.x, [1.5, 1.5])


def test_out_of_scope_options_are_clear_errors():
    import scipy.sparse as sps
    from scipy.sparse.linalg import aslinearoperator

    with pytest.raises(ValueError, match="tr_solver"):
        ao.least_squares(trivial, 2.0, tr_solver="best")
    with pytest.raises(ValueError, match="lsmr"):
        ao.least_squares(trivial, 2.0, method="gauss-newton", tr_solver="lsmr")
    # lm has no subproblem solver to choose: scipy ignores tr_solver / tr_options there
    x0 = np.array([-2.0, 1.0])
    assert ao.least_squares(rosen, x0, method="lm", tr_solver="lsmr",
                            tr_options={"btol": 1e-3}).success
    assert ao.least_squares(rosen, x0, method="lm", tr_solver="exact").success
    with pytest.raises(ValueError, match="lsmr"):
        ao.least_squares(rosen, x0, tr_solver="lsmr")  # the default method, trf
    assert ao.least_squares(rosen, x0, method="trf", tr_solver="exact").success
    with pytest.raises(ValueError, match="jac_sparsity"):
        ao.least_squares(trivial, 2.0, jac_sparsity=[1])
    with pytest.raises(ValueError, match="workers"):
        ao.least_squares(trivial, 2.0, workers=2)
    assert ao.least_squares(rosen, x0, workers=1).success
    J = np.array([[2.0]])
    with pytest.raises(ValueError, match="sparse"):
        ao.least_squares(trivial, 2.0, jac=lambda x: sps.csr_array(J))
    with pytest.raises(ValueError, match="LinearOperator"):
        ao.least_squares(trivial, 2.0, jac=lambda x: aslinearoperator(J))
    with pytest.raises(ValueError, match="loss"):
        ao.least_squares(trivial, 2.0, loss="hinge")
    with pytest.raises(ValueError, match="f_scale"):
        ao.least_squares(trivial, 2.0, f_scale=0.0)
    assert ao.least_squares(rosen, x0, loss="linear").success


def test_caller_errors_keep_their_type():
    # wrong args / kwargs: fun raises TypeError, and it stays a TypeError (as scipy)
    with pytest.raises(TypeError, match="positional argument"):
        ao.least_squares(trivial, 2.0, args=(3, 4))
    with pytest.raises(TypeError, match="kaboom"):
        ao.least_squares(trivial, 2.0, kwargs={"kaboom": 3})
    assert ao.least_squares(trivial, 2.0, args=(3.0,)).x[0] == pytest.approx(3.0, rel=1e-4)
    # curve_fit: a model of the wrong length is a ValueError naming f (issue 11 item 7)
    x = np.linspace(0, 1, 11)
    with pytest.raises(ValueError, match=r"\bf\b.*shape \(5,\)"):
        ao.curve_fit(lambda t, a: a * t[:5], x, 2.0 * x)
    with pytest.raises(ValueError, match="sigma"):
        ao.curve_fit(lambda t, a: a * t, x, 2.0 * x, sigma=np.ones(3))


# --------------------------------------------------------------------------- silent wrong answers
def _work_array_model(x):
    # writes x into a real work array (the complex part is lost there) while 0.5 x^3 keeps it
    xp = _ns(x)
    u = xp.zeros(6, dtype=xp.float64, device=array_api_compat.device(x))
    u[1:-1] = x
    return u[:-2] - 2.0 * u[1:-1] + u[2:] + 0.5 * x**3 - xp.asarray(
        [1.0, 0.5, -0.5, 2.0], dtype=xp.float64, device=array_api_compat.device(x))


def test_default_jacobian_verified(xp, device):
    # issue 11 item 2: the complex-step default silently lost the derivative of u (cost 0.6283,
    # success); the least-squares minimum has cost 0.53742196 (scipy's 2-point: 0.5374219626)
    if array_api_compat.is_jax_namespace(xp) or array_api_compat.is_dask_namespace(xp):
        pytest.skip("immutable / lazy arrays: no work array to write into")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NumPy's ComplexWarning on the assignment
        res = ao.least_squares(_work_array_model, arr(xp, device, [0.0, 0.0, 0.0, 0.0]))
    assert res.success
    np.testing.assert_allclose(float(res.cost), 0.5374219626, rtol=1e-8)
    # x0 on the lower bound: the check goes column by column (differences inside the box);
    # scipy's trf: cost 0.11869359488 at [0, 0.712102, 1.665475, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ao.least_squares(_work_array_model, arr(xp, device, [0.0, 0.0, 0.0, 0.0]),
                               bounds=(0.0, 10.0))
    assert res.success
    np.testing.assert_allclose(float(res.cost), 0.11869359488, rtol=1e-8)
    np.testing.assert_allclose(to_numpy(res.x), [0.0, 0.712102, 1.665475, 0.0], atol=1e-5)


def test_default_jacobian_keeps_complex_step_when_right():
    # an analytic model passes the check: the complex step is kept (exact J at the solution)
    t = np.linspace(0, 2, 20)
    f = lambda p: p[0] * np.exp(-p[1] * t) - 3.0 * np.exp(-0.7 * t)
    res = ao.least_squares(f, np.array([1.0, 1.0]), xtol=1e-14, ftol=1e-14)
    e = np.exp(-0.7 * t)
    np.testing.assert_allclose(res.jac, np.stack([e, -3.0 * t * e], 1), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("method", ["lm", "gauss-newton"])
def test_overflowing_residuals_are_scaled(xp, device, method):
    # issue 11 item 4: f = 1e160 (x - 1) from [0, 3] stayed at x0 (squares overflow); x* = [1, 1]
    f = lambda x: 1e160 * (x - 1.0)
    res = ao.least_squares(f, arr(xp, device, [0.0, 3.0]), method=method)
    assert res.success
    np.testing.assert_allclose(to_numpy(res.x), [1.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(to_numpy(res.jac), 1e160 * np.eye(2), rtol=1e-6)
    # x within a few ulps of 1: the true cost there is at most 0.5 * 2 * (1e160 * 4 eps)^2
    assert float(res.cost) <= (1e160 * 4 * 2.3e-16) ** 2
    tiny = ao.least_squares(lambda x: 1e-170 * (x - 1.0), arr(xp, device, [0.0, 3.0]),
                            method=method)
    assert tiny.success
    np.testing.assert_allclose(to_numpy(tiny.x), [1.0, 1.0], rtol=1e-12)
    B = ao.least_squares(lambda X: 1e160 * (X - 1.0), arr(xp, device, [[0.0, 3.0], [1.0, 2.0]]),
                         method=method, batched=True)
    np.testing.assert_allclose(to_numpy(B.x), np.ones((2, 2)), rtol=1e-12)


def test_jacobian_not_evaluated_twice_at_the_final_point():
    # issue 11 item 8: a linear fit converges in one step; the Jacobian at the solution was
    # evaluated twice (once for the gtol test, once more for the result)
    rng = np.random.default_rng(0)
    x = np.linspace(0, 3, 101)
    y = 2 * x + 1 + 0.5 * rng.normal(size=101)
    calls = []

    def line(t, a, b):
        return a * t + b

    def jac(t, a, b):
        calls.append((float(a), float(b)))
        return np.stack([t, np.ones_like(t)], 1)

    out = ao.curve_fit(line, x, y, [1.0, 5.0], jac=jac, full_output=True)
    assert len(calls) == len(set(calls)) == out[2]["njev"] == 2
    pts = []

    def rj(z):
        pts.append(np.asarray(z).copy())
        return rosen_jac(z)

    res = ao.least_squares(rosen, np.array([-1.2, 1.0]), jac=rj)
    assert len(pts) == res.njev
    assert not any(np.array_equal(a, b) for a, b in zip(pts[:-1], pts[1:]))


# --------------------------------------------------------------------------- curve_fit
def _exp(t, a, b):
    return a * np.exp(-b * t)


def test_curve_fit_feasible_default_p0():
    # issue 11 item 6: without p0, bounds ([0, 0], [0.6, inf]) start from scipy's feasible point
    # (midpoint / lb + 1); the bounded optimum is a = 0.6 and b = 0.0810665 (1-D minimization over
    # b at a = 0.6); ftol = 1e-8 on the cost leaves ~1e-4 relative in b (scipy: 0.0810472)
    t = np.linspace(0, 1, 11)
    popt, _ = ao.curve_fit(_exp, t, _exp(t, 2.0, 2.0), bounds=([0, 0], [0.6, np.inf]))
    assert popt[0] == pytest.approx(0.6, abs=1e-12)
    assert popt[1] == pytest.approx(0.0810665, rel=1e-3)
    with pytest.raises(ValueError, match="p0.*Initial guess is outside of provided bounds"):
        ao.curve_fit(lambda t, a: t**a, t, t, p0=[1.0], bounds=(1000, 1001))


def test_curve_fit_conversions():
    # integer ydata, list xdata: float64 as scipy; the fit equals the float one
    x, y = [1, 2, 3, 4], [3, 5, 7, 9]
    lin = lambda t, a, b: a * t + b
    p_int, _ = ao.curve_fit(lin, x, y)
    p_flt, _ = ao.curve_fit(lin, np.array(x, float), np.array(y, float))
    assert p_int.dtype == np.float64
    np.testing.assert_allclose(p_int, [2.0, 1.0], atol=1e-10)
    np.testing.assert_array_equal(p_int, p_flt)
    # a scalar ydata is broadcast to f's output (scipy subtracts it)
    t = np.arange(10.0)
    target = 4.7 * t**2 + 3.5 * t + np.sin(t)
    g = lambda s, a, b: a * s**2 + b * s - target
    p0_, c0_ = ao.curve_fit(g, t, np.zeros(10))
    p1_, c1_ = ao.curve_fit(g, t, 0)
    np.testing.assert_allclose(p1_, p0_, rtol=1e-12)
    np.testing.assert_allclose(c1_, c0_, rtol=1e-10)
    # lm needs at least as many data points as parameters (scipy's TypeError)
    with pytest.raises(TypeError, match="The number of func parameters=3"):
        ao.curve_fit(lambda t, a, b, c: a * t + b + c, [1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="'args'"):
        ao.curve_fit(lin, x, y, args=(1,))


def test_curve_fit_check_finite_and_nan_policy():
    lin = lambda t, a, b: a * t + b
    x_nan = np.array([2.0, 3.0, np.nan, 4.0, 4.0, np.nan])
    y_nan = np.array([1.0, 2.0, 5.0, 3.0, np.nan, 7.0])
    with pytest.raises(ValueError, match="xdata: contains non-finite"):
        ao.curve_fit(lin, x_nan, np.arange(6.0))
    with pytest.raises(ValueError, match="ydata: contains non-finite"):
        ao.curve_fit(lin, np.arange(6.0), y_nan)
    with pytest.raises(ValueError, match="The input contains nan"):
        ao.curve_fit(lin, x_nan, y_nan, nan_policy="raise")
    with pytest.raises(ValueError, match="propagate"):
        ao.curve_fit(lin, x_nan, y_nan, nan_policy="propagate")
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        ao.curve_fit(lin, x_nan, y_nan, nan_policy="hi")
    p_omit, c_omit = ao.curve_fit(lin, x_nan, y_nan, nan_policy="omit")
    p_ref, c_ref = ao.curve_fit(lin, np.array([2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(p_omit, p_ref, rtol=1e-12)
    np.testing.assert_allclose(c_omit, c_ref, rtol=1e-10)
    # 2-D xdata (k, m): a point is dropped where any of its k coordinates is NaN; sigma with it
    X = np.array([[2, 3, np.nan, 4, 4, np.nan, 5], [2, 3, np.nan, np.nan, 4, np.nan, 7]])
    Y = np.array([1, 2, 5, 3, np.nan, 7, 10.0])
    S = np.arange(1.0, 8.0)
    f2 = lambda x, a, b: a * x[0] + b + x[1]
    p2, c2 = ao.curve_fit(f2, X, Y, sigma=S, nan_policy="omit")
    keep = [0, 1, 6]
    p2r, c2r = ao.curve_fit(f2, X[:, keep], Y[keep], sigma=S[keep])
    np.testing.assert_allclose(p2, p2r, rtol=1e-12)
    np.testing.assert_allclose(c2, c2r, rtol=1e-10)
    Sig = np.diag(S**2)
    p3, _ = ao.curve_fit(f2, X, Y, sigma=Sig, nan_policy="omit")
    np.testing.assert_allclose(p3, p2r, rtol=1e-10)


def test_covariance_warning_is_scipys_too():
    import scipy.optimize as so

    x = np.arange(1.0, 7.0)
    y = np.array([1, 2, 3, 4, 5.5, 6])
    for cls in (so.OptimizeWarning, ao.OptimizeWarning):
        with pytest.warns(cls, match="Covariance of the parameters could not be estimated"):
            _, pcov = ao.curve_fit(lambda t, a, b: a * t, x, y)
        assert np.all(np.isinf(pcov))


@pytest.mark.parametrize("method", ["lm", "gauss-newton"])
@pytest.mark.parametrize("scale", [1e160, 1e-170])
def test_tall_residuals_are_scaled_too(method, scale):
    # issue 11 item 4 on the tall (Dask row chunks) path: ||f||^2 overflowed (1e160: "residuals
    # are not finite at x0") or underflowed to 0 (1e-170: gtol "success" at x0); the line
    # 1 + 2 t is fitted exactly: x* = [1, 2]
    da = pytest.importorskip("dask.array")
    t = da.from_array(np.linspace(0.0, 1.0, 1000), chunks=250)
    res = ao.least_squares(lambda p: scale * (p[0] + p[1] * t - (1.0 + 2.0 * t)),
                           np.array([0.0, 3.0]), method=method)
    assert res.success
    np.testing.assert_allclose(res.x, [1.0, 2.0], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(res.jac[-1, :].compute()), [scale, scale], rtol=1e-6)


def test_curve_fit_full_output_minpack_factors(xp, device):
    # lm's fjac / ipvt / qtf: J P = Q R at popt; scipy's recipe for the covariance from them
    # (invert R, permute rows by ipvt) gives pcov / s^2; ipvt [2, 0, 1] as scipy's leastsq
    def f(t, a, b, c):
        return a * _ns(t).exp(-b * t) + c

    t = np.linspace(0, 4, 30)
    y = 2.5 * np.exp(-1.3 * t) + 0.5 + 0.01 * np.sin(7 * t)
    popt, pcov, info, mesg, ier = ao.curve_fit(f, arr(xp, device, t), arr(xp, device, y),
                                               full_output=True)
    assert ier in (1, 2, 3, 4) and isinstance(mesg, str)
    fjac, ipvt, qtf = (to_numpy(info[k]) for k in ("fjac", "ipvt", "qtf"))
    assert fjac.shape == (3, 30) and qtf.shape == (3,)
    assert ipvt.tolist() == [2, 0, 1] and str(ipvt.dtype) == "int32"  # as scipy's leastsq
    r = np.triu(fjac.T[:3, :])
    assert np.all(fjac.T[3:, :] == 0)
    inv_r = np.linalg.inv(r)
    inv_r[ipvt] = inv_r.copy()
    s2 = np.sum(to_numpy(info["fvec"]) ** 2) / (30 - 3)
    np.testing.assert_allclose(inv_r @ inv_r.T * s2, to_numpy(pcov), rtol=1e-10)
    # J P = Q R: |R| has non-increasing diagonal (the pivoting rule)
    d = np.abs(np.diag(r))
    assert d[0] >= d[1] >= d[2] > 0
    np.testing.assert_allclose(qtf, 0.0, atol=1e-8)  # f is orthogonal to J's columns at popt


def test_tall_tolerances_and_methods():
    # tall_least_squares: None switches a test off there too; a method without a tall
    # evaluator is refused (never run as another one)
    da = pytest.importorskip("dask.array")
    t = da.from_array(np.linspace(0.0, 1.0, 400), chunks=100)
    res = ao.tall_least_squares(lambda p: p[0] + p[1] * t - (1.0 + 2.0 * t) + 0.1 * da.sin(9 * t),
                                np.array([0.0, 3.0]), ftol=None, xtol=None, gtol=1e-6)
    assert res.success and res.status == 1  # only gtol could stop it
    with pytest.raises(ValueError, match="tall problems take 'lm' or 'gauss-newton'"):
        ao.tall_least_squares(lambda p: p[0] * t, np.array([1.0]), method="trf")


def test_bounds_shapes_as_scipy():
    # unbatched: a bound is a scalar or has x0's shape; (1,) is not broadcast to n = 2
    with pytest.raises(ValueError, match="Inconsistent shapes"):
        ao.least_squares(trivial, 2.0, bounds=(1.0, [2.0, 3.0]))
    with pytest.raises(ValueError, match="Inconsistent shapes"):
        ao.least_squares(rosen, [1.0, 2.0], bounds=([0.0], [3.0, 4.0]))
    res = ao.least_squares(lambda x: x, [1.0, 1.0], bounds=(0.5, [2.0, 2.0]))
    np.testing.assert_allclose(res.x, [0.5, 0.5], atol=1e-8)


@pytest.mark.parametrize("method", ["trf", "dogbox", "lm", "gauss-newton"])
def test_one_jacobian_per_point(method):
    # issue 11 item 8 for every method: max_nfev=1 stops at x0 with one Jacobian there;
    # a full solve evaluates jac exactly njev times and never twice at one point in a row
    pts = []

    def jac(x):
        pts.append(np.array(x, copy=True))
        return np.array([2.0 * x])

    res = ao.least_squares(trivial, np.array([2.0]), jac, method=method, max_nfev=1)
    if method in ("trf", "dogbox"):  # lm / gauss-newton test max_nfev after an iteration
        assert res.nfev == 1 and res.njev == 1 == len(pts) and res.x[0] == 2.0
        assert res.jac[0, 0] == 4.0 and res.status == 0
    pts.clear()
    res = ao.least_squares(rosen, np.array([-1.2, 1.0]), lambda z: (pts.append(z.copy()),
                                                                     rosen_jac(z))[1],
                           method=method)
    assert len(pts) == res.njev
    assert not any(np.array_equal(a, b) for a, b in zip(pts[:-1], pts[1:]))
