"""Messages for bad input found by a new-user trial (principle 5: the argument
named, what was expected, scipy's exception type; nothing the user passed changed).

References: scipy.optimize.curve_fit (installed scipy 1.17: ``transform = 1.0 /
sigma``, then least_squares' "Residuals are not finite in the initial point"
for trf, a silent fit for lm; "`sigma` has incorrect shape."), torch.optim
(``step()`` reads ``p.grad``).
"""

from __future__ import annotations

import math
import warnings

import array_api_compat
import numpy as np
import pytest
import scipy.optimize as so
from conftest import to_numpy

import agnopt as ao

M = 40
X = np.linspace(0.0, 1.0, M)
Y = 1.0 * X**2 + 2.0 * X + 3.0 + 0.01 * np.cos(7.0 * X)  # (not exact: pcov finite)
P0 = [1.0, 1.0, 0.0]


def model(x, a, b, c):
    return a * x**2 + b * x + c


def _arr(xp, dev, a):
    return xp.asarray(np.asarray(a, dtype=np.float64), device=dev)


# -- zero / NaN sigma: a ValueError naming sigma's entry, without a stray warning ---------------
@pytest.mark.parametrize("bad", [0.0, float("nan")])
def test_sigma_zero_or_nan_entry_is_named(xp, device, bad):
    s = np.ones(M)
    s[3] = bad
    x, y, sig = _arr(xp, device, X), _arr(xp, device, Y), _arr(xp, device, s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from agnopt's 1 / sigma
        with pytest.raises(ValueError, match=rf"^sigma: entry 3 is {bad!r}; expected nonzero, "
                                             "non-NaN standard deviations"):
            ao.curve_fit(model, x, y, p0=P0, sigma=sig)
    # the user's sigma is not changed
    np.testing.assert_array_equal(to_numpy(sig), s)


def test_sigma_zero_batched_and_scalar(xp, device):
    s = np.ones((2, M))
    s[1, 5] = 0.0
    Yb = np.stack([Y, 2.0 * Y])
    x, yb = _arr(xp, device, X), _arr(xp, device, Yb)
    with pytest.raises(ValueError, match=r"^sigma: entry \(1, 5\) is 0\.0"):
        ao.curve_fit(model, x, yb, p0=P0, sigma=_arr(xp, device, s), batched=True)
    with pytest.raises(ValueError, match=r"^sigma: its value is 0\.0"):
        ao.curve_fit(model, x, _arr(xp, device, Y), p0=P0, sigma=_arr(xp, device, 0.0))


def test_scipy_divides_by_a_zero_sigma():
    # the reference: scipy's trf stops on the infinite residuals (ValueError) after
    # a divide-by-zero RuntimeWarning; agnopt raises a ValueError naming sigma instead
    s = np.ones(M)
    s[3] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="Residuals are not finite"):
            so.curve_fit(model, X, Y, p0=P0, sigma=s, method="trf")


def test_negative_and_inf_sigma_as_scipy(xp, device):
    # only sigma**2 enters the fit: a negative entry fits as its absolute value, and
    # an inf entry gives its point zero weight (the fit without that point)
    s = np.linspace(0.5, 2.0, M)
    s_neg = s.copy()
    s_neg[::3] *= -1.0
    x, y = _arr(xp, device, X), _arr(xp, device, Y)
    p_abs, c_abs = ao.curve_fit(model, x, y, p0=P0, sigma=_arr(xp, device, s))
    p_neg, c_neg = ao.curve_fit(model, x, y, p0=P0, sigma=_arr(xp, device, s_neg))
    np.testing.assert_allclose(to_numpy(p_neg), to_numpy(p_abs), rtol=1e-10)
    np.testing.assert_allclose(to_numpy(c_neg), to_numpy(c_abs), rtol=1e-8)
    ref, _ = so.curve_fit(model, X, Y, p0=P0, sigma=s_neg)
    np.testing.assert_allclose(to_numpy(p_neg), ref, rtol=1e-7)
    s_inf = np.ones(M)
    s_inf[7] = np.inf
    p_inf, _ = ao.curve_fit(model, x, y, p0=P0, sigma=_arr(xp, device, s_inf))
    keep = np.arange(M) != 7
    p_drop, _ = ao.curve_fit(model, _arr(xp, device, X[keep]), _arr(xp, device, Y[keep]), p0=P0)
    np.testing.assert_allclose(to_numpy(p_inf), to_numpy(p_drop), rtol=1e-10)


# -- sigma of the wrong shape: scipy's message with the shapes expected and given --------------
def test_sigma_shape_message_gives_the_shapes(xp, device):
    x, y = _arr(xp, device, X), _arr(xp, device, Y)
    for shape in ((30,), (30, 30), (1, M)):
        with pytest.raises(ValueError) as e:
            ao.curve_fit(model, x, y, p0=P0, sigma=_arr(xp, device, np.ones(shape)))
        assert str(e.value).startswith("`sigma` has incorrect shape")  # scipy's words
        assert "(M,) standard deviations or an (M, M) covariance matrix with M = 40" in str(e.value)
        assert str(e.value).endswith(f"got {shape}")
    yb = _arr(xp, device, np.stack([Y, Y, Y]))
    with pytest.raises(ValueError, match=r"^`sigma` has incorrect shape: with batched=True expected "
                                         r"a shape that broadcasts to ydata's \(B, m\) = \(3, 40\)"
                                         r".*got \(30,\)$"):
        ao.curve_fit(model, x, yb, p0=P0, sigma=_arr(xp, device, np.ones(30)), batched=True)


def test_sigma_shape_scipy_words():
    with pytest.raises(ValueError, match="`sigma` has incorrect shape"):
        so.curve_fit(model, X, Y, p0=P0, sigma=np.ones(30))


def test_indefinite_2d_sigma_still_named(xp, device):
    C = np.eye(M)
    C[0, 0] = -1.0
    with pytest.raises(ValueError, match="`sigma` must be positive definite"):
        ao.curve_fit(model, _arr(xp, device, X), _arr(xp, device, Y), p0=P0,
                     sigma=_arr(xp, device, C))


# -- xdata of another length than ydata: the shape error says so -------------------------------
def test_xdata_length_mismatch_is_named(xp, device):
    y = _arr(xp, device, Y)
    with pytest.raises(ValueError, match=r"^f: returned shape \(30,\), expected ydata's shape "
                                         r"\(40,\); xdata has length 30 on its last axis \(the "
                                         r"data points\), ydata 40"):
        ao.curve_fit(model, _arr(xp, device, X[:30]), y, p0=P0)
    # a model that returns a wrong shape with an xdata of the right length: no xdata hint
    with pytest.raises(ValueError) as e:
        ao.curve_fit(lambda x, a, b, c: model(x, a, b, c)[:30], _arr(xp, device, X), y, p0=P0)
    assert str(e.value) == "f: returned shape (30,), expected ydata's shape (40,)"


def test_multidimensional_xdata_still_fits(xp, device):
    # xdata (k, M) (scipy's multi-dimensional input) is valid: fitted, no error
    X2 = np.stack([X, np.sin(3.0 * X)])
    y = _arr(xp, device, 2.0 * X2[0] + 3.0 * X2[1] + 0.5)
    popt, _ = ao.curve_fit(lambda x, a, b, c: a * x[0, ...] + b * x[1, ...] + c,
                           _arr(xp, device, X2), y, p0=P0)
    np.testing.assert_allclose(to_numpy(popt), [2.0, 3.0, 0.5], rtol=1e-8, atol=1e-10)


# -- xdata and ydata of two backends: the message names them (not p0) --------------------------
def test_mixed_backends_name_xdata_and_ydata():
    torch = pytest.importorskip("torch")
    tx = torch.tensor(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 0-d * torch in the model
        with pytest.raises(TypeError) as e:
            ao.curve_fit(model, tx, Y, p0=P0)
    assert str(e.value) == ("f: returned a torch array at p0: xdata is a torch array but ydata "
                            "is a numpy array; pass xdata and ydata of one backend (convert "
                            "xdata to numpy, or ydata to torch)")
    # f itself converts to torch (xdata and ydata NumPy): the message names ydata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch - numpy in the residual
        with pytest.raises(TypeError, match=r"^f: returned a torch array at p0 but ydata is a "
                                            r"numpy array \(p0 is converted to ydata's backend\)"):
            ao.curve_fit(lambda x, a, b, c: torch.as_tensor(model(x, a, b, c)), X, Y, p0=P0)


# -- torch data that requires grad: detached, no graph, no warning -----------------------------
def test_requires_grad_data_is_detached():
    torch = pytest.importorskip("torch")
    old = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # torch warns once per process otherwise
    try:
        tx = torch.tensor(X)
        ty = torch.tensor(Y)
        p0g = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
        sg = torch.full((M,), 0.5, dtype=torch.float64, requires_grad=True)
        cases = {
            "ydata": {"xdata": tx, "ydata": ty.clone().requires_grad_(True)},
            "xdata": {"xdata": tx.clone().requires_grad_(True), "ydata": ty},
            "p0": {"xdata": tx, "ydata": ty, "p0": p0g},
            "sigma": {"xdata": tx, "ydata": ty, "sigma": sg},
        }
        ref, _ = so.curve_fit(model, X, Y, p0=P0)
        for name, kw in cases.items():
            kw.setdefault("p0", P0)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                popt, pcov, info, _, _ = ao.curve_fit(model, full_output=True, **kw)
            assert not popt.requires_grad and not pcov.requires_grad, name
            assert not info["fvec"].requires_grad, name
            np.testing.assert_allclose(popt.numpy(), ref, rtol=1e-7, err_msg=name)
        assert cases["ydata"]["ydata"].requires_grad  # the user's tensor is unchanged
    finally:
        torch.set_warn_always(old)


def test_least_squares_graph_x0_without_warning():
    # least_squares keeps the graph of an x0 that requires grad (documented: not a
    # derivative of the solution), without torch's float()-of-a-graph warning
    torch = pytest.importorskip("torch")
    old = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        t = torch.tensor(X)
        y = 2.0 * torch.exp(-t)
        x0 = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
        X0 = torch.stack([x0, 1.2 * x0])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r = ao.least_squares(lambda p: p[0] * torch.exp(-p[1] * t) - y, x0)
            rb = ao.least_squares(lambda P: P[:, :1] * torch.exp(-P[:, 1:] * t) - y, X0,
                                  batched=True)
        assert r.x.requires_grad and r.success
        np.testing.assert_allclose(r.x.detach().numpy(), [2.0, 1.0], rtol=1e-8)
        np.testing.assert_allclose(rb.x.detach().numpy(), [[2.0, 1.0]] * 2, rtol=1e-8)
    finally:
        torch.set_warn_always(old)


# -- Optimizer.step() without grads: how to pass them ------------------------------------------
def test_optimizer_step_without_grads_says_how(xp, device):
    opt = ao.Optimizer(ao.adam(1e-3), [_arr(xp, device, np.ones(3))], flat=False)
    with pytest.raises(ValueError, match=r"grads are required \(flat=False\): pass the gradients "
                                         r"in params' structure, e\.g\. opt\.step\(\[p\.grad for "
                                         r"p in opt\.params\]\)"):
        opt.step()


# -- non-finite ydata with check_finite=False / inf with nan_policy="omit": ydata named, not f --
def _expo(x, a, k, c):
    xp = array_api_compat.array_namespace(x)
    return a * xp.exp(-k * x) + c


@pytest.mark.parametrize("bad, kw, hint", [
    (math.inf, {"nan_policy": "omit"},
     "nan_policy='omit' drops NaN data points only: remove the infinite ones"),
    (math.nan, {"check_finite": False},
     "check_finite=False skipped the check; nan_policy='omit' drops NaN data points"),
    (-math.inf, {"check_finite": False},
     "check_finite=False skipped the check: remove the infinite data points"),
], ids=["inf-omit", "nan-unchecked", "-inf-unchecked"])
@pytest.mark.parametrize("bounds", [None, (-10.0, 10.0)], ids=["lm", "trf"])
def test_nonfinite_ydata_is_named(xp, device, bad, kw, hint, bounds):
    y = Y.copy()
    y[7] = bad
    if kw.get("nan_policy") == "omit":
        y[2] = math.nan  # omitted: the index named is still the user's
    if bounds is not None:
        kw = dict(kw, bounds=bounds)
    with pytest.raises(ValueError) as e:
        ao.curve_fit(model, _arr(xp, device, X), _arr(xp, device, y), p0=P0, **kw)
    assert str(e.value) == (f"ydata: entry 7 is {bad!r}, so the residuals are not finite at the "
                            f"initial point p0; {hint}")
    # batched: the entry (row, point), and the fits
    yb = np.stack([Y, y, Y])
    with pytest.raises(ValueError, match=rf"^ydata: entry \(1, 7\) is {bad!r}, so the residuals "
                                         r"are not finite at the initial point p0 \(problems "
                                         r"\[1\]\); "):
        ao.curve_fit(model, _arr(xp, device, X), _arr(xp, device, yb), p0=P0, batched=True, **kw)


@pytest.mark.parametrize("bad, kw, hint", [
    (math.nan, {"check_finite": False},
     "check_finite=False skipped the check; nan_policy='omit' drops NaN data points"),
    (math.inf, {"check_finite": False},
     "remove the infinite data points (nan_policy='omit' drops NaN ones only)"),
    (-math.inf, {"nan_policy": "omit"},
     "remove the infinite data points (nan_policy='omit' drops NaN ones only)"),
], ids=["nan-unchecked", "inf-unchecked", "-inf-omit"])
def test_nonfinite_xdata_is_named(xp, device, bad, kw, hint):
    # finite ydata, an xdata entry that makes the model non-finite: xdata's entry is named
    # (it said "f: residuals are not finite at the initial point p0")
    x = X.copy()
    x[7] = bad
    if kw.get("nan_policy") == "omit":
        x[2] = math.nan  # omitted: the index named is still the user's

    def model_xy(t, a, k, c):  # not finite wherever t is (a * t * 0 is NaN for inf t)
        return _expo(t, a, k, c) + t * 0.0

    with pytest.raises(ValueError) as e:
        ao.curve_fit(model_xy, _arr(xp, device, x), _arr(xp, device, Y), p0=P0, **kw)
    assert str(e.value) == (f"xdata: entry 7 is {bad!r}, and the residuals are not finite at "
                            f"the initial point p0; {hint}")
    with pytest.raises(ValueError, match=rf"^xdata: entry 7 is {bad!r}, and the residuals are "
                                         r"not finite at the initial point p0 \(problems "
                                         r"\[0, 1\]\); "):
        ao.curve_fit(model_xy, _arr(xp, device, x), _arr(xp, device, np.stack([Y, Y])),
                     p0=P0, batched=True, **kw)


def test_nonfinite_model_still_blames_f(xp, device):
    # finite ydata: the model's own inf is f's (the message is unchanged)
    with pytest.raises(ValueError, match=r"^f: residuals are not finite at the initial point p0$"):
        ao.curve_fit(lambda x, a, b, c: model(x, a, b, c) + math.inf, _arr(xp, device, X),
                     _arr(xp, device, Y), p0=P0, check_finite=False)


# -- nan_policy="omit" that leaves nothing: says so (not "must not be empty") -------------------
def test_omit_all_nan_says_nothing_is_left(xp, device):
    y = _arr(xp, device, np.full(M, np.nan))
    with pytest.raises(ValueError) as e:
        ao.curve_fit(model, _arr(xp, device, X), y, p0=P0, nan_policy="omit")
    assert str(e.value) == ("ydata: no data point is left after omitting the NaN ones "
                            f"(nan_policy='omit': ydata[i] or xdata[..., i] is NaN at all {M} "
                            "points)")
    # NaN in xdata everywhere: the same
    with pytest.raises(ValueError, match=r"^ydata: no data point is left after omitting"):
        ao.curve_fit(model, _arr(xp, device, np.full(M, np.nan)), _arr(xp, device, Y), p0=P0,
                     nan_policy="omit")


def test_omit_fits_the_kept_points(xp, device):
    # unbatched "omit" drops the NaN points (Dask too: the arrays kept have known sizes)
    y, s = Y.copy(), np.linspace(1.0, 2.0, M)
    y[[2, 9]] = math.nan
    popt, pcov = ao.curve_fit(model, _arr(xp, device, X), _arr(xp, device, y), p0=P0,
                              sigma=_arr(xp, device, s), nan_policy="omit")
    k = ~np.isnan(y)
    ref, rcov = ao.curve_fit(model, X[k], y[k], p0=P0, sigma=s[k])  # (NumPy)
    np.testing.assert_allclose(to_numpy(popt), ref, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(pcov), rcov, rtol=1e-9)
    np.testing.assert_allclose(ref, so.curve_fit(model, X[k], y[k], p0=P0, sigma=s[k])[0],
                               rtol=1e-7)


# -- scipy's leastsq-only keywords: curve_fit named, with agnopt's equivalent -------------------
@pytest.mark.parametrize("key, value, equiv", [
    ("epsfcn", 1e-10, r"use diff_step \(diff_step = sqrt\(epsfcn\) with jac='2-point'"),
    ("factor", 10.0, r"no equivalent \(the initial trust-region radius"),
    ("diag", [1.0, 1.0, 1.0], r"use x_scale \(x_scale = 1 / diag"),
    ("col_deriv", True, r"no equivalent \(a callable jac returns the Jacobian as \(m, n\)"),
])
@pytest.mark.parametrize("method", [None, "trf"])
def test_leastsq_keywords_name_curve_fit(key, value, equiv, method):
    with pytest.raises(TypeError, match=rf"^curve_fit\(\) got the keyword argument '{key}' of "
                                        rf"scipy's leastsq \(method 'lm'\), which agnopt does "
                                        rf"not take: {equiv}"):
        ao.curve_fit(model, X, Y, p0=P0, method=method, **{key: value})
    so.curve_fit(model, X, Y, p0=P0, **{key: value})  # (scipy's lm takes them)


def test_epsfcn_equivalent_is_diff_step():
    # the suggested equivalent reproduces scipy's forward-difference fit
    ref, _ = so.curve_fit(model, X, Y, p0=P0, epsfcn=1e-10)
    popt, _ = ao.curve_fit(model, X, Y, p0=P0, jac="2-point", diff_step=1e-5)
    np.testing.assert_allclose(popt, ref, rtol=1e-7)


# -- a float32 model for float64 data: the failure says the model's rounding limits the fit ----
def _expo32(x, a, k, c):
    xp = array_api_compat.array_namespace(x)
    return xp.astype(a * xp.exp(-k * x) + c, xp.float32)


T = np.linspace(0.0, 4.0, 50)
YN = 2.5 * np.exp(-1.3 * T) + 0.5 + 0.2 * np.random.default_rng(0).normal(size=T.size)
NOTE = (" f returned float32 values for float64 ydata: their rounding limits the fit (a "
        "finite-difference jac too); return ydata's dtype.")


@pytest.mark.parametrize("jac", [None, "2-point"])
def test_low_precision_model_is_named_in_the_failure(xp, device, jac):
    t, y, p0 = _arr(xp, device, T), _arr(xp, device, YN), _arr(xp, device, [1.0, 1.0, 1.0])
    with pytest.raises(RuntimeError) as e:
        ao.curve_fit(_expo32, t, y, p0=p0, jac=jac)
    assert str(e.value).startswith("Optimal parameters not found: ")
    assert str(e.value).endswith(NOTE)
    # the float64 model: fits; a failure of it (the budget) has no such sentence
    popt, _ = ao.curve_fit(_expo, t, y, p0=p0, jac=jac)
    ref, _ = so.curve_fit(_expo, T, YN, p0=[1.0, 1.0, 1.0])
    np.testing.assert_allclose(to_numpy(popt), ref, rtol=1e-6)
    with pytest.raises(RuntimeError) as e:
        ao.curve_fit(_expo, t, y, p0=p0, jac=jac, max_nfev=2)
    assert "f returned" not in str(e.value)
    # float32 data with the float32 model: no sentence either (same precision)
    y32 = xp.astype(y, xp.float32)
    with pytest.raises(RuntimeError) as e:
        ao.curve_fit(_expo32, t, y32, p0=p0, jac=jac, max_nfev=2)
    assert "f returned" not in str(e.value)


# -- NaN bounds: a ValueError naming the bound (a NaN bound fails every comparison, so it
#    was taken as no bound by trf, as a bound by dogbox and lm, which then failed with
#    "residuals were not finite" or max_nfev; scipy: "`x0` is infeasible") --------------------
@pytest.mark.parametrize("method", ["trf", "dogbox", "lm"])
def test_nan_bound_is_named(xp, device, method):
    x, y = _arr(xp, device, X), _arr(xp, device, Y)
    lb, ub = _arr(xp, device, [0.0, math.nan, -5.0]), _arr(xp, device, [5.0, 5.0, 5.0])
    with pytest.raises(ValueError, match=r"^bounds: lb entry 1 is nan; a bound is a number"):
        ao.curve_fit(model, x, y, p0=[1.0, 1.0, 1.0], bounds=(lb, ub), method=method)
    with pytest.raises(ValueError, match=r"^bounds: ub is nan"):
        ao.curve_fit(model, x, y, p0=[1.0, 1.0, 1.0], bounds=(-1.0, math.nan), method=method)
    with pytest.raises(ValueError, match=r"^bounds: lb is nan"):
        ao.curve_fit(model, x, y, p0=[1.0, 1.0, 1.0], bounds=(_arr(xp, device, math.nan), 5.0),
                     method=method)

    def res(p):
        return model(x, p[0], p[1], p[2]) - y

    with pytest.raises(ValueError, match=r"^bounds: ub entry 2 is nan"):
        ao.least_squares(res, _arr(xp, device, [1.0, 1.0, 1.0]), method=method,
                         bounds=so.Bounds([0.0, 0.0, 0.0], [5.0, 5.0, math.nan]))
    np.testing.assert_array_equal(to_numpy(lb)[[0, 2]], [0.0, -5.0])  # not changed


# -- batched: a model that drops the batch axis is refused (it was broadcast: every fit got
#    fit 0's values and fits 1.. were reported as failures, or all as successes) ------------
def test_batched_model_without_batch_axis_is_refused(xp, device):
    x = _arr(xp, device, X)
    yb = _arr(xp, device, np.stack([Y, 2.0 * Y, 3.0 * Y]))
    with pytest.raises(ValueError, match=r"^f: with batched=True returned shape \(40,\), "
                                         r"expected ydata's shape \(3, 40\) \(or \(B, 1\)\): "
                                         "one row per fit"):
        ao.curve_fit(lambda t, a, b, c: model(t, a[0, 0], b[0, 0], c[0, 0]), x, yb, p0=P0,
                     batched=True)
    # a (B, 1) model (one value per fit) is broadcast over the data points, as before
    popt, _ = ao.curve_fit(lambda t, a, b, c: c + 0.0 * a, x, yb, p0=P0, batched=True)
    np.testing.assert_allclose(to_numpy(popt)[:, 2], np.mean(np.stack([Y, 2 * Y, 3 * Y]), 1),
                               rtol=1e-10)


# -- batched least_squares: fun returning (B,) (one residual per problem) is (B, 1) for every
#    Jacobian (the difference quotients broadcast it to (B, B, n): a matmul error) -----------
@pytest.mark.parametrize("jac", [None, "2-point", "3-point", "cs"])
def test_batched_fun_of_shape_B_is_one_residual_per_problem(xp, device, jac):
    X0 = _arr(xp, device, [[3.0], [1.0], [0.5]])
    target = _arr(xp, device, [4.0, 9.0, 2.0])
    flat = ao.least_squares(lambda P: P[:, 0] ** 2 - target, X0, jac=jac, batched=True,
                            method="lm")
    col = ao.least_squares(lambda P: (P[:, 0] ** 2 - target)[:, None], X0, jac=jac,
                           batched=True, method="lm")
    np.testing.assert_allclose(to_numpy(flat.x)[:, 0], [2.0, 3.0, math.sqrt(2.0)], rtol=1e-8)
    np.testing.assert_array_equal(to_numpy(flat.x), to_numpy(col.x))
    assert tuple(flat.fun.shape) == (3, 1) and tuple(flat.jac.shape) == (3, 1, 1)


# -- 16-bit floats: a TypeError naming the argument (it was NumPy's "array type float16 is
#    unsupported in linalg", or torch's "Got unsupported ScalarType BFloat16") --------------
@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_precision_is_named(xp, device, name):
    dt = getattr(xp, name, None)
    if dt is None:
        pytest.skip(f"{name} is not a dtype of this backend")
    y = xp.astype(_arr(xp, device, Y), dt)
    msg = rf"^ydata: dtype {name} is not supported: .* needs float32 or float64"
    with pytest.raises(TypeError, match=msg):
        ao.curve_fit(model, _arr(xp, device, X), y, p0=P0)
    with pytest.raises(TypeError, match=msg):
        ao.curve_fit(model, _arr(xp, device, X), xp.stack([y, y]), p0=P0, batched=True)
    x = _arr(xp, device, X)
    with pytest.raises(TypeError, match=rf"^x0: dtype {name} is not supported"):
        ao.least_squares(lambda p: model(x, p[0], p[1], p[2]) - _arr(xp, device, Y),
                         xp.astype(_arr(xp, device, P0), dt))


# -- step with a state (or a replaced parameter) of another library: a TypeError naming it
#    (it was NumPy's "Cannot interpret 'torch.float64' as a data type", or torch.where's
#    argument list) --------------------------------------------------------------------------
def test_step_state_of_another_backend_is_named(xp, device):
    torch = pytest.importorskip("torch")
    if array_api_compat.is_torch_namespace(xp):
        pytest.skip("needs parameters of a library other than torch")
    tx = ao.adam(0.1)
    p = {"w": _arr(xp, device, [1.0, 2.0, 3.0])}
    g = {"w": _arr(xp, device, [0.1, 0.2, 0.3])}
    state_t = tx.init({"w": torch.ones(3, dtype=torch.float64)})
    before = to_numpy(p["w"]).copy()
    with pytest.raises(TypeError, match=r"^state: holds torch arrays, but params are \S+ arrays; "
                                        r"build the state with init\(params\)"):
        ao.step(tx, p, g, state_t)
    np.testing.assert_array_equal(to_numpy(p["w"]), before)  # nothing written
    opt = ao.Optimizer(tx, {"w": _arr(xp, device, [1.0, 2.0, 3.0])})
    opt.params["w"] = torch.ones(3, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"^state: holds \S+ arrays, but params are torch arrays"):
        opt.step({"w": torch.ones(3, dtype=torch.float64)})


def test_save_and_load_state_name_swapped_arguments(tmp_path):
    state = ao.adam(0.1).init(np.ones(3))
    path = str(tmp_path / "s.npz")
    with pytest.raises(TypeError, match=r"^path: expected a str or os.PathLike, got \w+; "
                                        r"the path comes first: save_state\(path, state\)$"):
        ao.save_state(state, path)
    ao.save_state(path, state)
    with pytest.raises(TypeError, match=r"the path comes first: load_state\(path, template\)$"):
        ao.load_state(state, path)
    assert int(ao.load_state(path, state)[1].count) == 0


# -- curve_fit: a complex p0 (its imaginary part was dropped without a word; scipy: TypeError)
#    and fewer data points than parameters with lm (least_squares' ValueError; scipy's
#    curve_fit / leastsq: TypeError), batched too ----------------------------------------
def test_complex_p0_and_too_few_points(xp, device):
    x, y = _arr(xp, device, X), _arr(xp, device, Y)
    with pytest.raises(TypeError, match=r"^p0: must be real, got complex numbers$"):
        ao.curve_fit(model, x, y, p0=[1.0 + 5.0j, 1.0, 0.0])
    if hasattr(xp, "complex128"):
        with pytest.raises(TypeError, match=r"^p0: must be real, got dtype \S*complex128"):
            ao.curve_fit(model, x, y, p0=xp.asarray([1.0 + 5.0j, 1.0, 0.0], dtype=xp.complex128,
                                                   device=device))
    with pytest.raises(TypeError, match=r"^Improper input: func input vector length N=3 must "
                                        r"not exceed func output vector length M=1$"):
        ao.curve_fit(model, x[:1], y[:1], p0=P0)
    with pytest.raises(TypeError, match=r"^The number of func parameters=3 must not exceed "
                                        r"the number of data points=2$"):
        ao.curve_fit(model, x[:2], y[:2], p0=P0)
    with pytest.raises(TypeError, match=r"^The number of func parameters=3 must not exceed "
                                        r"the number of data points=1 of each fit$"):
        ao.curve_fit(model, x[:1], xp.stack([y[:1], y[:1]]), p0=P0, batched=True)
    for bad in ([1.0 + 5.0j, 1.0, 0.0], P0):  # scipy's checks are the same (the reference)
        with pytest.raises(TypeError):
            so.curve_fit(model, X[:1] if bad is P0 else X, Y[:1] if bad is P0 else Y, p0=bad)
