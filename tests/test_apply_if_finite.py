"""apply_if_finite: skipped steps leave params and state bit for bit, counting, raising, jit."""

from __future__ import annotations

import math

import numpy as np
import pytest

import agnopt as ao
from conftest import BackendCase, to_numpy


def _bits(tree):
    """Leaves as NumPy arrays, for bitwise comparison (NaN == NaN, -0.0 != 0.0)."""
    out = []
    for leaf in ao.tree_leaves(tree):
        a = np.ascontiguousarray(to_numpy(leaf))
        out.append((a.dtype.str, a.shape, a.tobytes()))
    return out


def _params(xp, device, dtype=None):
    dt = dtype or xp.float64
    return {"w": xp.asarray([[1.0, -0.0], [0.5, 3.0]], dtype=dt, device=device),
            "b": xp.asarray([0.1, -0.2], dtype=dt, device=device)}


def _grads(xp, device, bad=None, dtype=None):
    dt = dtype or xp.float64
    g = {"w": [[0.3, -0.1], [2.0, 0.25]], "b": [-1.0, 0.5]}
    if bad is not None:
        g["b"][1] = bad
    return {k: xp.asarray(v, dtype=dt, device=device) for k, v in g.items()}


INNER = {
    "adam-amsgrad": lambda: ao.adam(0.1, amsgrad=True),
    "sgd-momentum": lambda: ao.sgd(0.1, momentum=0.9),
    "rmsprop-centered": lambda: ao.rmsprop(0.1, centered=True),
}


@pytest.mark.parametrize("name", list(INNER))
def test_finite_steps_equal_inner(backend, name):
    """With finite gradients the wrapper is invisible: updates and inner state bit for bit."""
    case, xp, device = backend
    inner = INNER[name]()
    opt = ao.apply_if_finite(INNER[name](), max_consecutive_errors=2)
    p = _params(xp, device)
    s_in, s = inner.init(p), opt.init(p)
    for _ in range(3):
        g = _grads(xp, device)
        u1, s_in = inner.update(g, s_in, p)
        u2, s = opt.update(g, s, p)
        assert _bits(u1) == _bits(u2)
        assert _bits(s_in) == _bits(s.inner_state)
        p = ao.apply_updates(p, u1)
    assert int(s.notfinite_count) == 0 and bool(s.last_finite) and int(s.total_notfinite) == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", list(INNER))
def test_non_finite_step_is_skipped(backend, name, bad):
    """NaN/inf in one leaf: params (incl. -0.0) and inner state unchanged bit for bit; counted."""
    case, xp, device = backend
    opt = ao.apply_if_finite(INNER[name](), max_consecutive_errors=3)
    p = _params(xp, device)
    s = opt.init(p)
    u, s = opt.update(_grads(xp, device), s, p)  # a real step first: non-trivial state
    p = ao.apply_updates(p, u)
    p = {"w": xp.asarray([[1.0, -0.0], [0.0, 3.0]], dtype=xp.float64, device=device), "b": p["b"]}
    before_p, before_s = _bits(p), _bits(s.inner_state)
    u, s2 = opt.update(_grads(xp, device, bad=bad), s, p)
    new_p = ao.apply_updates(p, u)
    assert _bits(new_p) == before_p
    assert _bits(s2.inner_state) == before_s
    assert _bits(s.inner_state) == before_s  # the input state is untouched
    assert int(s2.notfinite_count) == 1 and not bool(s2.last_finite) and int(s2.total_notfinite) == 1
    assert s2.notfinite_count.dtype == xp.int32 and s2.last_finite.dtype == xp.bool
    # a finite step afterwards resets the run but not the total
    u, s3 = opt.update(_grads(xp, device), s2, new_p)
    assert int(s3.notfinite_count) == 0 and bool(s3.last_finite) and int(s3.total_notfinite) == 1
    assert not np.array_equal(to_numpy(ao.apply_updates(new_p, u)["b"]), to_numpy(new_p["b"]))


def test_raises_after_too_many_in_a_row(backend):
    case, xp, device = backend
    opt = ao.apply_if_finite(ao.adam(0.1), max_consecutive_errors=2)
    p = _params(xp, device)
    s = opt.init(p)
    bad = _grads(xp, device, bad=math.nan)
    for i in range(2):
        u, s = opt.update(bad, s, p)
        assert int(s.notfinite_count) == i + 1
    snapshot = _bits(s)
    if case is BackendCase.DASK:
        # lazy: no host read, so optax's semantics (documented): the third bad
        # step is applied and the NaN becomes visible
        u, s2 = opt.update(bad, s, p)
        assert np.isnan(to_numpy(ao.apply_updates(p, u)["b"])).any()
        assert _bits(s) == snapshot
        return
    with pytest.raises(FloatingPointError, match=r"not finite.*3 times in a row.*max_consecutive_errors=2"):
        opt.update(bad, s, p)
    assert _bits(s) == snapshot


def test_zero_max_raises_on_first_and_none_never_raises():
    p = np.zeros(2)
    bad = np.array([np.nan, 1.0])
    opt = ao.apply_if_finite(ao.sgd(0.1), max_consecutive_errors=0)
    with pytest.raises(FloatingPointError, match="1 times in a row"):
        opt.update(bad, opt.init(p), p)
    opt = ao.apply_if_finite(ao.sgd(0.1), max_consecutive_errors=None)
    s = opt.init(p)
    for _ in range(50):
        u, s = opt.update(bad, s, p)
    assert int(s.notfinite_count) == 50 and int(s.total_notfinite) == 50
    np.testing.assert_array_equal(ao.apply_updates(p, u), p)


def test_without_wrapper_nan_propagates():
    """The documented default (as torch.optim and optax): one NaN gradient poisons Adam for good."""
    opt = ao.adam(0.1)
    p = np.zeros(2)
    s = opt.init(p)
    u, s = opt.update(np.array([np.nan, 1.0]), s, p)
    p = ao.apply_updates(p, u)
    for _ in range(3):
        u, s = opt.update(np.ones(2), s, p)
        p = ao.apply_updates(p, u)
    assert np.isnan(p[0]) and np.isnan(s[1].mu[0])


def test_occasional_nan_still_converges(backend):
    """A quadratic with a NaN gradient every 7th step: the guarded Adam converges anyway."""
    case, xp, device = backend
    if case is BackendCase.DASK:
        pytest.skip("dask: 300 eager steps build a graph per op; covered by the other dask cases")
    opt = ao.apply_if_finite(ao.adam(0.05), max_consecutive_errors=1)
    c = xp.asarray([1.0, -2.0, 0.5], dtype=xp.float32, device=device)
    x = xp.zeros((3,), dtype=xp.float32, device=device)
    s = opt.init(x)
    nan = xp.full((3,), math.nan, dtype=xp.float32, device=device)
    for t in range(300):
        g = nan if t % 7 == 3 else 2.0 * (x - c)
        u, s = opt.update(g, s, x)
        x = ao.apply_updates(x, u)
    assert int(s.total_notfinite) == len([t for t in range(300) if t % 7 == 3])
    assert float(xp.max(xp.abs(x - c))) < 1e-2


def test_jit_matches_eager_and_follows_optax_after_max():
    """Under jax.jit: branch-free; skipped steps equal eager; after > max in a row, applied (no raise)."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    opt = ao.apply_if_finite(ao.adam(0.1), max_consecutive_errors=2)
    p = {"w": jnp.asarray([1.0, -0.0, 3.0]), "b": jnp.asarray([0.5])}
    good = {"w": jnp.asarray([0.15, 0.25, -0.35]), "b": jnp.asarray([1.0])}
    bad = {"w": jnp.asarray([0.15, jnp.inf, -0.35]), "b": jnp.asarray([jnp.nan])}
    step = jax.jit(opt.update)
    s_e = s_j = opt.init(p)
    for g in (good, bad, good, bad):
        u_e, s_e = opt.update(g, s_e, p)
        u_j, s_j = step(g, s_j, p)
        for a, b in zip(ao.tree_leaves((u_e, s_e)), ao.tree_leaves((u_j, s_j))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=0)
        if g is bad:
            assert _bits(ao.apply_updates(p, u_j)) == _bits(p)
    # (one bad step in a row so far) a second is skipped; the third in a row:
    # eager raises, jit applies it (optax's semantics)
    u_j, s_j = step(bad, s_j, p)
    assert _bits(ao.apply_updates(p, u_j)) == _bits(p)
    u_j, s_j = step(bad, s_j, p)
    assert int(s_j.notfinite_count) == 3 and int(s_j.total_notfinite) == 4
    assert bool(jnp.isnan(ao.apply_updates(p, u_j)["b"][0]))


def test_state_on_param_device(backend):
    case, xp, device = backend
    from array_api_compat import device as dev_of

    p = _params(xp, device, xp.float32)
    s = ao.apply_if_finite(ao.adam(0.1)).init(p)
    for leaf in ao.tree_leaves(s):
        assert dev_of(leaf) == dev_of(p["w"])
    assert s.total_notfinite.dtype == xp.int32


def test_bad_arguments():
    with pytest.raises(TypeError, match="inner: expected a Transform"):
        ao.apply_if_finite(lambda g: g)
    with pytest.raises(ValueError, match="max_consecutive_errors must be >= 0"):
        ao.apply_if_finite(ao.sgd(0.1), max_consecutive_errors=-1)
    with pytest.raises(TypeError, match="max_consecutive_errors must be an integer"):
        ao.apply_if_finite(ao.sgd(0.1), max_consecutive_errors=2.5)
    opt = ao.apply_if_finite(ao.sgd(0.1))
    with pytest.raises(ValueError, match="state: apply_if_finite expected the ApplyIfFiniteState"):
        opt.update(np.zeros(2), ao.sgd(0.1).init(np.zeros(2)), np.zeros(2))
