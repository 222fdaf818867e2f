"""Residual scaling per problem: one huge row of a batch leaves the others' fits as they are alone.

Residuals whose squares would overflow (or underflow) are scaled by a power of
2 for the solve (``Problem.set_fscale``). That scale was one for the whole
batch, taken from the largest residual: one row in other units (float32
residuals above ~4e9 at ``x0``) shrank every other row's residuals to
rounding noise, and those fits stopped at ``x0`` with ``success=True``
(found by a fresh-user trial). Each problem now gets the scale it gets when
solved alone; the right values are the problems' own solutions (noise-free
data) and their solo fits.
"""

import warnings

import numpy as np
import pytest
from conftest import to_numpy

import agnopt as ao

T = np.linspace(0.0, 4.0, 20)
TRUE = np.array([[2.0, 1.0, 0.5], [1.5, 0.7, 0.2], [1.1, 1.6, 0.6], [2.5, 0.9, 0.1]])


def _data(dtype, big):
    """Noise-free decays; row 0 in units ``big`` times larger (its solution is ``TRUE[0]``
    with ``a`` and ``c`` times ``big``)."""
    Y = TRUE[:, :1] * np.exp(-TRUE[:, 1:2] * T) + TRUE[:, 2:]
    Y[0] *= big
    x_true = TRUE.copy()
    x_true[0, 0] *= big
    x_true[0, 2] *= big
    return Y.astype(dtype), x_true


def _fun(xp):
    def fun(X, t, Y):
        return X[:, 0:1] * xp.exp(-X[:, 1:2] * t) + X[:, 2:3] - Y
    return fun


@pytest.mark.parametrize("method", ["lm", "trf", "dogbox"])
@pytest.mark.parametrize("dtype,big", [("float64", 1e90), ("float32", 1e10)])
def test_one_huge_row_leaves_the_others_alone(backend, method, dtype, big):
    case, xp, dev = backend
    if str(case) == "dask" and (method, dtype) != ("lm", "float64"):
        pytest.skip("dask: one case (each solve is a chain of graph computations, ~40 s)")
    Y, x_true = _data(dtype, big)
    rtol = 1e-8 if dtype == "float64" else 2e-3
    t = xp.asarray(T.astype(dtype), device=dev)
    Yx = xp.asarray(Y, device=dev)
    x0 = np.tile(np.array([1.0, 1.0, 0.0]), (4, 1))
    x0[0, 0] = big  # (a start in its units: finite differences at 1 see no change of ~big)
    x0 = xp.asarray(x0.astype(dtype), device=dev)
    fun = _fun(xp)
    warnings.simplefilter("ignore", RuntimeWarning)  # exp overflows at trf's far trial points
    r = ao.least_squares(fun, x0, method=method, batched=True, args=(t, Yx))
    ok = to_numpy(r.success)
    X = to_numpy(r.x)
    # the huge row is a hard start for trf and dogbox (steps of ~big overflow exp): its
    # status is its solo status (below); lm solves it
    rows = slice(0, 4) if method == "lm" else slice(1, 4)
    assert ok[rows].all(), to_numpy(r.status)
    np.testing.assert_allclose(X[rows], x_true[rows], rtol=rtol,
                               atol=1e-6 if dtype == "float64" else 1e-3)
    # every row as it is alone, and the reported fun / cost are fun's own
    for b in range(4):
        s = ao.least_squares(fun, x0[b:b + 1, :], method=method, batched=True,
                             args=(t, Yx[b:b + 1, :]))
        assert int(to_numpy(s.status)[0]) == int(to_numpy(r.status)[b])
        np.testing.assert_allclose(X[b], to_numpy(s.x)[0], rtol=1e-6 if dtype == "float64" else 1e-4)
    with np.errstate(over="ignore"):
        F = to_numpy(fun(r.x, t, Yx)).astype("float64")[rows]
    ymax = np.abs(Y).astype("float64").max(axis=1)[rows]
    assert (np.abs(to_numpy(r.fun)[rows] - F).max(axis=1) <= 1e-6 * ymax).all()
    cost = 0.5 * (F**2).sum(axis=1)
    assert (np.abs(to_numpy(r.cost)[rows] - cost) <= 1e-3 * cost + 1e-10 * ymax**2).all()


@pytest.mark.filterwarnings("ignore::agnopt.OptimizeWarning")
def test_curve_fit_float32_one_row_in_other_units():
    """The trial's case: 100 float32 decays with bounds, one row times 1e10."""
    rng = np.random.default_rng(0)
    B, m = 100, 30
    x = np.linspace(0, 4, m, dtype=np.float32)
    true = np.stack([rng.uniform(1, 3, B), rng.uniform(0.5, 2, B), rng.uniform(0, 1, B)], 1)

    def decay(x, a, k, c):
        return a * np.exp(-k * x) + c

    Y = decay(x, *(true[:, i:i + 1] for i in range(3))).astype(np.float32)
    Y[0] *= 1e10
    p0 = np.array([1.0, 1.0, 0.0], np.float32)
    popt, _, info, _, _ = ao.curve_fit(decay, x, Y, p0=p0, bounds=(0, np.inf), batched=True,
                                       full_output=True)
    assert info["success"].all()
    np.testing.assert_allclose(popt[1:], true[1:], rtol=2e-3, atol=2e-3)
    alone = ao.curve_fit(decay, x, Y[1:], p0=p0, bounds=(0, np.inf), batched=True)[0]
    np.testing.assert_allclose(popt[1:], alone, rtol=1e-4, atol=1e-5)


def test_same_scale_for_every_row_is_one_scale():
    """Every row beyond the range by the same power of 2: one scale, as before."""
    Y, _ = _data("float64", 1.0)
    Y = Y * 1e100
    fun = _fun(np)
    r = ao.least_squares(fun, np.tile([1e100, 1.0, 0.0], (4, 1)), method="lm", batched=True,
                         args=(T, Y))
    assert r.success.all()
    np.testing.assert_allclose(r.x[:, 1], TRUE[:, 1], rtol=1e-8)


def test_robust_loss_with_rows_of_different_scales_raises():
    Y, _ = _data("float64", 1e90)
    with pytest.raises(ValueError, match="robust loss"):
        ao.least_squares(_fun(np), np.tile([1.0, 1.0, 0.0], (4, 1)), method="trf", batched=True,
                         args=(T, Y), loss="soft_l1")


@pytest.mark.parametrize("fast", ["0", "numba"])
@pytest.mark.parametrize("batched", [False, True])
def test_overflowing_normal_equations_are_not_a_gtol_success(monkeypatch, fast, batched):
    """A finite Jacobian whose J^T J overflows (entries ~1e160): its column norms are inf,
    the cosines g / inf were 0 and lm stopped at x0 on gtol with success=True (scipy's lm
    says success too). The angle is unknown there: no gtol stop, no success."""
    if fast == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv("AGNOPT_FAST", fast)
    y = 2.0 * np.exp(-T) + 0.5
    x0 = np.array([1.0, 0.5, 0.0])

    def fun(X):
        return X[..., :1] * np.exp(-X[..., 1:2] * T) + X[..., 2:] - y

    def jac(X):
        e = np.exp(-X[..., 1:2] * T)
        return 1e160 * np.stack([e, -X[..., :1] * T * e, np.ones_like(e)], -1)

    if batched:
        r = ao.least_squares(fun, np.tile(x0, (40, 1)), jac=jac, method="lm", batched=True,
                             max_nfev=50)
        assert not r.success.any() and (r.status != 1).all()
    else:
        for _ in range(3):  # (the one-problem numba path starts after a warm-up)
            r = ao.least_squares(lambda x: fun(x[None, :])[0], x0,
                                 jac=lambda x: jac(x[None, :])[0], method="lm", max_nfev=50)
        assert not r.success and r.status != 1
