"""A torch CPU batch on the numba row kernels (agnopt._kernels.lm_batched_cpu, through
NumPy views of its tensors) gives what the generic torch blocks give (AGNOPT_FAST=0)
and what a NumPy batch on the same kernels gives (principle 2: an optional
accelerator, tested equal).

* whole solves, float64: the same statuses, counts and iterates to 1e-9 relative
  (generic torch path and NumPy's fast path), closed-form and default Jacobians, in a
  batch whose problems stop at different iterations (some at ``x0``, some on
  non-finite residuals, the others converging: compaction of the working set);
* float32, whose fits end at rounding noise: the same successes, as close to the
  float64 solution as the generic torch path and with as many evaluations;
* the kernels never write into the caller's tensors; tensors that require grad (the
  start, or residuals in an autograd graph) keep the generic path, which records the
  graph; a non-contiguous start gives what a contiguous one gives.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import BACKENDS, BackendCase

import agnopt as ao
from agnopt._kernels import lm_batched_cpu as K

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.skipif(not K.HAVE_NUMBA, reason="numba not installed"),
              pytest.mark.skipif(BackendCase.TORCH not in BACKENDS,
                                 reason="torch not in AGNOPT_BACKENDS")]

_X = np.linspace(-5, 5, 50)


def _data(B, seed=0):
    rng = np.random.default_rng(seed)
    P = np.stack([rng.uniform(1, 3, B), rng.uniform(-1, 1, B), rng.uniform(0.6, 1.5, B),
                  rng.uniform(0, 1, B)], 1)
    d = _X - P[:, 1:2]
    Y = P[:, 0:1] * np.exp(-d * d / (2 * P[:, 2:3] ** 2)) + P[:, 3:4]
    return P, Y + 0.05 * rng.standard_normal((B, 50))


def _problem(xp, dt, B=240, seed=5, torch_model=False):
    """``(fun, jac, X0)`` on namespace ``xp`` (``torch`` or ``np``): Gaussian peaks whose
    problems stop at different iterations: rows 0-9 start at their noise-free solution
    with exact data (they stop at once), rows 10-14 have finite residuals at ``x0``
    ``(2, 0, 1, 10)`` alone (every trial point non-finite: they fail, status -4), rows
    whose width passes 2.5 get NaN residuals (non-finite trial points), the others
    converge from a perturbed start. ``torch_model``: NumPy arrays in and out, the model
    evaluated by torch (the same ``exp`` rounding as the torch problem's)."""
    if xp is np and torch_model:
        tfun, tjac, X0 = _problem(torch, getattr(torch, np.dtype(dt).name), B, seed)

        def on_torch(f):
            return lambda X: f(torch.from_numpy(np.ascontiguousarray(X))).numpy()

        return on_torch(tfun), on_torch(tjac), X0.numpy()
    P, Y = _data(B, seed)
    rng = np.random.default_rng(seed + 1)
    X0 = np.tile([2.0, 0.0, 1.0, 0.5], (B, 1)) + rng.normal(0, 0.3, (B, 4))
    X0[:10] = P[:10]
    d = _X - P[:10, 1:2]
    Y[:10] = P[:10, 0:1] * np.exp(-d * d / (2 * P[:10, 2:3] ** 2)) + P[:10, 3:4]
    X0[10:15] = [2.0, 0.0, 1.0, 10.0]
    bad = np.zeros((B, 1), dtype=bool)
    bad[10:15] = True
    if xp is np:
        x, Yd, X0 = _X.astype(dt), Y.astype(dt), X0.astype(dt)
    else:
        x, Yd, X0 = (torch.tensor(a, dtype=dt) for a in (_X, Y, X0))
        bad = torch.tensor(bad)

    def fun(X):
        a, mu, s, c = (X[:, j:j + 1] for j in range(4))
        dd = x - mu
        r = a * xp.exp(dd * dd * (-0.5 / (s * s))) + c - Yd
        # (real parts: the default Jacobian's complex steps are at x0)
        a, mu, s, c = (xp.real(v) for v in (a, mu, s, c))
        at_x0 = (a == 2.0) & (mu == 0.0) & (s == 1.0) & (c == 10.0)
        return xp.where((s > 2.5) | (bad & ~at_x0), float("nan"), r)

    def jac(X):
        a, mu, s = (X[:, j:j + 1] for j in range(3))
        dd = x - mu
        e = xp.exp(dd * dd * (-0.5 / (s * s)))
        j1 = (e * dd) * (a / (s * s))
        return xp.stack([e, j1, j1 * (dd / s), xp.ones_like(e)], axis=-1)

    return fun, jac, X0


def _solve(monkeypatch, mode, xp, dt, jac, torch_model=False, **kw):
    """The batched LM solve on ``xp`` under ``AGNOPT_FAST=mode`` and whether the kernels
    judged its steps."""
    monkeypatch.setenv("AGNOPT_FAST", mode)
    calls = []
    real = K.judge
    monkeypatch.setattr(K, "judge", lambda *a: calls.append(1) or real(*a))
    fun, fj, X0 = _problem(xp, dt, torch_model=torch_model)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = ao.least_squares(fun, X0, jac=fj if jac == "analytic" else None, method="lm",
                             batched=True, **kw)
    monkeypatch.setattr(K, "judge", real)
    return r, bool(calls)


def _np(a):
    return a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _same64(a, b):
    np.testing.assert_array_equal(_np(a.status), _np(b.status))
    np.testing.assert_array_equal(_np(a.nfev), _np(b.nfev))
    np.testing.assert_array_equal(_np(a.njev), _np(b.njev))
    np.testing.assert_allclose(_np(a.x), _np(b.x), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_np(a.cost), _np(b.cost), rtol=1e-9, atol=1e-300)


# --------------------------------------------------------------------------- switches
def test_applies_to_torch_cpu_tensors(monkeypatch):
    monkeypatch.delenv("AGNOPT_FAST", raising=False)
    X = torch.zeros((100, 4), dtype=torch.float64)
    assert K.applies(X) and K.applies(X.to(torch.float32))
    assert K.applies(torch.zeros((4, 100), dtype=torch.float64).T)  # a non-contiguous view
    assert not K.applies(X.to(torch.float16))
    assert not K.applies(X.clone().requires_grad_(True))  # in an autograd graph
    assert not K.applies(torch.zeros((100, 4), dtype=torch.float64, device="meta"))  # not the CPU
    assert not K.applies(X[:K.MIN_ROWS - 1])
    assert not K.applies(torch.zeros((100, K.MAX_N + 1), dtype=torch.float64))
    monkeypatch.setenv("AGNOPT_FAST", "0")
    assert not K.applies(X)


# --------------------------------------------------------------------------- whole solves
@pytest.mark.parametrize("jac", ["analytic", "default"])
def test_torch_cpu_float64_equals_generic_and_numpy(monkeypatch, jac):
    j = jac if jac == "analytic" else None
    gen, used_gen = _solve(monkeypatch, "0", torch, torch.float64, j)
    fast, used_fast = _solve(monkeypatch, "numba", torch, torch.float64, j)
    # NumPy's batch on the same kernels, its model evaluated by torch: torch's and
    # NumPy's exp round differently in the last bit on some CPUs, and rows 0-9 start at
    # their exact solution, where the verdict (gtol or ftol/xtol) follows that rounding
    ref, used_ref = _solve(monkeypatch, "numba", np, np.float64, j, torch_model=True)
    assert not used_gen and used_fast and used_ref  # (which blocks each solve ran on)
    assert isinstance(fast.x, torch.Tensor) and fast.x.dtype == torch.float64
    st = _np(gen.status)
    assert np.all(st[:10] > 0) and np.any(st[10:] < 0) and np.sum(st > 0) > 150
    assert len(set(_np(gen.nfev).tolist())) > 3  # problems stopped at different iterations
    _same64(fast, gen)
    _same64(fast, ref)


@pytest.mark.parametrize("jac", ["analytic", "default"])
def test_torch_cpu_float32_as_accurate_as_generic(monkeypatch, jac):
    # float32 fits end at rounding noise, where the verdicts follow the rounding of each
    # path's products: the kernels must give the successes of the generic torch path and
    # of NumPy's kernels, as close to the float64 solution, with as many evaluations
    j = jac if jac == "analytic" else None
    ref64 = _np(_solve(monkeypatch, "numba", np, np.float64, j)[0].x)
    gen, _ = _solve(monkeypatch, "0", torch, torch.float32, j)
    fast, used = _solve(monkeypatch, "numba", torch, torch.float32, j)
    npf, _ = _solve(monkeypatch, "numba", np, np.float32, j)
    assert used and fast.x.dtype == torch.float32
    for other in (gen, npf):
        np.testing.assert_array_equal(_np(fast.success), _np(other.success))
        np.testing.assert_array_equal(_np(fast.status) < 0, _np(other.status) < 0)
    ok = _np(gen.success)
    scale = np.maximum(np.abs(ref64[ok]), 1e-2)
    e_gen = np.max(np.abs(_np(gen.x)[ok] - ref64[ok]) / scale, axis=1)
    e_fast = np.max(np.abs(_np(fast.x)[ok] - ref64[ok]) / scale, axis=1)
    assert np.quantile(e_fast, 0.99) <= 1.5 * np.quantile(e_gen, 0.99)
    assert np.median(e_fast) <= 2.0 * np.median(e_gen)
    assert np.max(e_fast) <= 3.0 * np.max(e_gen)
    n_gen, n_fast = np.mean(_np(gen.nfev)), np.mean(_np(fast.nfev))
    assert abs(n_fast - n_gen) <= 0.05 * n_gen


def test_torch_cpu_curve_fit_bounds(monkeypatch):
    # curve_fit's batched path (shared xdata: the row subsets of the working set) with
    # bounds (projected steps, frozen columns on the SVD route beside the kernels)
    Y = _data(200, seed=3)[1]
    x, Yt = torch.tensor(_X), torch.tensor(Y)

    def f(x, a, mu, s, c):
        return a * torch.exp(-(x - mu) ** 2 / (2 * s * s)) + c

    out = []
    for mode in ("0", "numba"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        out.append(ao.curve_fit(f, x, Yt, p0=torch.tensor([2.0, 0.0, 1.0, 0.5]), batched=True,
                                bounds=([0.5, -2, 0.3, 0.45], [5, 2, 3, 2]), full_output=True,
                                method="lm"))
    gen, fast = out
    np.testing.assert_array_equal(_np(fast[2]["status"]), _np(gen[2]["status"]))
    np.testing.assert_array_equal(_np(fast[2]["nfev"]), _np(gen[2]["nfev"]))
    np.testing.assert_allclose(_np(fast[0]), _np(gen[0]), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_np(fast[1]), _np(gen[1]), rtol=1e-7, atol=1e-14)


def test_broken_kernel_caught_on_torch(monkeypatch):
    K._compile()
    fn = K.judge_rows

    def broken(*a):
        acc = fn(*a)
        a[2][:] *= 1.5  # radius updated wrongly
        return acc

    gen, _ = _solve(monkeypatch, "0", torch, torch.float64, "analytic")
    monkeypatch.setattr(K, "judge_rows", broken)
    fast, used = _solve(monkeypatch, "numba", torch, torch.float64, "analytic")
    assert used
    with pytest.raises(AssertionError):
        _same64(fast, gen)


# --------------------------------------------------------------------------- tensors
def test_callers_tensors_are_not_written(monkeypatch):
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    fun, jac, X0 = _problem(torch, torch.float64)
    keep = X0.clone()
    r = ao.least_squares(fun, X0, jac=jac, method="lm", batched=True)
    assert torch.equal(X0, keep)
    assert not np.shares_memory(_np(r.x), _np(X0))
    Y = _data(64)[1]
    x, Yt, p0 = torch.tensor(_X), torch.tensor(Y), torch.tensor([2.0, 0.0, 1.0, 0.5])
    kx, kY, kp = x.clone(), Yt.clone(), p0.clone()

    def f(x, a, mu, s, c):
        return a * torch.exp(-(x - mu) ** 2 / (2 * s * s)) + c

    ao.curve_fit(f, x, Yt, p0=p0, batched=True)
    assert torch.equal(x, kx) and torch.equal(Yt, kY) and torch.equal(p0, kp)


def test_non_contiguous_start(monkeypatch):
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    fun, jac, X0 = _problem(torch, torch.float64)
    Xt = X0.T.contiguous().T  # the same values, column-major
    assert not Xt.is_contiguous()
    a = ao.least_squares(fun, X0, jac=jac, method="lm", batched=True)
    b = ao.least_squares(fun, Xt, jac=jac, method="lm", batched=True)
    _same64(a, b)


@pytest.mark.parametrize("where", ["x0", "fun", "jac"])
def test_autograd_keeps_the_generic_path(monkeypatch, where):
    # a start that requires grad, or residuals or a Jacobian in an autograd graph (a
    # weight that requires grad): the kernels (NumPy views) are not used, the result
    # records the graph as the generic path does, with the same values
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    fun, jac, X0 = _problem(torch, torch.float64)
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=where in ("fun", "jac"))
    wf = w if where == "fun" else w.detach()
    x0 = X0.clone().requires_grad_(where == "x0")
    ref, used_ref = _solve(monkeypatch, "numba", torch, torch.float64, "analytic")
    calls = []
    real = K.judge
    monkeypatch.setattr(K, "judge", lambda *a: calls.append(1) or real(*a))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = ao.least_squares(lambda X: wf * fun(X), x0, jac=lambda X: w * jac(X), method="lm",
                             batched=True)
    assert used_ref and not calls
    assert r.x.requires_grad
    _same64(r, ref)


def test_take_rows_is_take():
    # the working set's row gathers (torch: index_select, without array-api-compat's
    # mapping of negative indices) give xp.take's rows
    import array_api_compat.torch as tx

    from agnopt._least_squares.batched import take_rows

    g = torch.Generator().manual_seed(0)
    idx = torch.sort(torch.randperm(50, generator=g)[:17]).values
    for shape in ((50,), (50, 4), (50, 7, 4)):
        a = torch.randn(shape, generator=g, dtype=torch.float64)
        assert torch.equal(take_rows(tx, a, idx), tx.take(a, idx, axis=0))
    assert torch.equal(take_rows(tx, a > 0, idx), tx.take(a > 0, idx, axis=0))
    an = a.numpy()
    np.testing.assert_array_equal(take_rows(np, an, idx.numpy()), np.take(an, idx.numpy(), axis=0))
