"""Long runs: 10 000 Adam steps stay finite and converge (float32; float16 params with float32 state)."""

from __future__ import annotations

import numpy as np
import pytest

import agnopt as ao
from conftest import BACKENDS, BackendCase, load_backend, to_numpy
from problems import Quadratic

STEPS = 10_000
LONG_RUN_BACKENDS = [c for c in (BackendCase.NUMPY, BackendCase.TORCH) if c in BACKENDS]


@pytest.fixture(params=LONG_RUN_BACKENDS, ids=str)
def long_backend(request):
    xp, dev = load_backend(request.param)
    return request.param, xp, dev


@pytest.mark.parametrize("mode", ["float32", "float16-params-float32-state"])
def test_ten_thousand_adam_steps(long_backend, mode):
    """A quadratic of condition 1e3 in 20 variables; the learning rate decays (cosine) to 1 %.

    float32: the iterate reaches the minimizer to float32 resolution of the
    problem (relative error < 1e-4) and the state stays finite and bounded.
    float16 params with float32 moments: every step is computed in float32
    and rounded into the float16 parameters; the error is at float16's
    resolution (< 5e-3 of |x*|, float16's eps is 9.8e-4), and nothing overflows
    (squared gradients ~1e6 would overflow float16's 65504 if the second
    moment were kept in float16).
    """
    case, xp, dev = long_backend
    q = Quadratic(n=20, cond=1e3, seed=7)
    # float32: |x*| up to 40 (gradients ~4e4, squared ~1e9 in nu). float16: |x*| <= 1,
    # final rate 1e-3, about float16's spacing at 1: smaller updates would be rounded
    # away (no stochastic rounding), so the rate must not decay below it.
    scale, alpha = (40.0, 0.01) if mode == "float32" else (1.0, 0.002)
    c_scaled = scale * q.c
    A = xp.asarray(q.A, dtype=xp.float32, device=dev)
    c = xp.asarray(c_scaled, dtype=xp.float32, device=dev)
    sched = ao.cosine_decay(0.5, STEPS, alpha=alpha)
    if mode == "float32":
        x = xp.zeros((20,), dtype=xp.float32, device=dev)
        opt = ao.adam(sched)
    else:
        x = xp.zeros((20,), dtype=xp.float16, device=dev)
        opt = ao.adam(sched, mu_dtype=xp.float32, nu_dtype=xp.float32)
    s = opt.init(x)
    for leaf in ao.tree_leaves(s):
        assert leaf.dtype in (xp.float32, xp.int32)
    f0 = None
    for t in range(STEPS):
        g32 = xp.matmul(A, xp.astype(x, xp.float32) - c)
        g = g32 if x.dtype == xp.float32 else xp.astype(g32, x.dtype)
        u, s = opt.update(g, s, x)
        x = ao.apply_updates(x, u)
        if t == 0:
            f0 = float(q.loss(xp, xp.astype(x, xp.float32), A, c))
    assert x.dtype == (xp.float32 if mode == "float32" else xp.float16)
    xn = to_numpy(x).astype(np.float64)
    assert np.all(np.isfinite(xn))
    for leaf in ao.tree_leaves(s):
        assert np.all(np.isfinite(to_numpy(leaf)))
    err = np.max(np.abs(xn - c_scaled)) / np.max(np.abs(c_scaled))
    bound = 1e-4 if mode == "float32" else 5e-3
    assert err < bound, f"{mode} on {case}: relative error {err:.3g}"
    f = float(q.loss(xp, xp.astype(x, xp.float32), A, c))
    assert f < (1e-6 if mode == "float32" else 1e-4) * f0, f"{mode} on {case}: loss {f:.3g} from {f0:.3g}"


def test_dask_step_loop_is_linear_and_computes_after_200_steps():
    """Issue 15, item 7: ao.step / ao.Optimizer on Dask persist params and state, so the graph of
    the parameters stays one layer of tasks (200 steps cost what 4 x 50 cost), and computing after
    200 steps does not raise RecursionError; the values are NumPy's."""
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(64)
    target = rng.standard_normal(64)
    for use_optimizer in (False, True):
        opt = ao.adam(1e-2)
        p = da.from_array(x0, chunks=16)
        ref = x0.copy()
        if use_optimizer:
            o = ao.Optimizer(opt, p)
        else:
            s = opt.init(p)
        ref_opt = ao.adam(1e-2)
        rs = ref_opt.init(ref)
        sizes = {}
        for k in range(1, 201):
            if use_optimizer:
                p = o.step(o.params - target)
            else:
                p, s = ao.step(opt, p, p - target, s)
            ref, rs = ao.step(ref_opt, ref, ref - target, rs)
            if k in (50, 200):
                sizes[k] = len(p.__dask_graph__())
                state_sizes = [len(x.__dask_graph__()) for x in ao.tree_leaves(o.state if use_optimizer else s)
                               if hasattr(x, "__dask_graph__")]
                assert max(state_sizes) <= 4 * p.npartitions, state_sizes
        # the graph does not grow with the number of steps: a step costs the same at 200 as at 50
        assert sizes[200] == sizes[50] <= 4 * p.npartitions, sizes
        np.testing.assert_allclose(np.asarray(p.compute()), ref, rtol=1e-12, atol=1e-14)
