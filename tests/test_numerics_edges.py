"""Numerics at the edges (issue 12): low precision, scaled norms, roots of rounding residues,
derivatives through the transforms, and state leaves that keep their type.

Every input of the issue is a test with its right value, on every backend of
the matrix where the dtype exists (float16 on NumPy, torch, JAX, Dask;
bfloat16 on torch and JAX), through ``update`` + ``apply_updates``, ``step``
and ``Optimizer(flat=True)`` (NumPy and torch only). The fast paths (numba,
blocked NumPy, torch in place) are the "step" rows.
"""

from __future__ import annotations

import numpy as np
import pytest

import agnopt as ao
from conftest import BackendCase, to_numpy

ALIASES = ["adam", "adamw", "amsgrad", "rmsprop", "adagrad"]


def _alias(name, lr=1e-3):
    if name == "amsgrad":
        return ao.adam(lr, amsgrad=True)
    return getattr(ao, name)(lr)


def _low_dtypes(case, xp):
    """(name, dtype) of the half-precision dtypes the backend has."""
    out = []
    if case in (BackendCase.NUMPY, BackendCase.TORCH, BackendCase.TORCH_CUDA, BackendCase.JAX,
                BackendCase.CUPY):
        out.append(("float16", xp.float16))
    elif case is BackendCase.DASK:
        out.append(("float16", np.float16))
    if case in (BackendCase.TORCH, BackendCase.TORCH_CUDA):
        import torch

        out.append(("bfloat16", torch.bfloat16))
    elif case is BackendCase.JAX:
        out.append(("bfloat16", xp.bfloat16))
    return out


def _arr(xp, values, dtype, device):
    if device is None:  # dask
        import dask.array as da

        return da.from_array(np.asarray(values, dtype=dtype), chunks=2)
    return xp.asarray(np.asarray(values, dtype=np.float32), device=device) if dtype is None else \
        xp.astype(xp.asarray(np.asarray(values, dtype=np.float64), device=device), dtype)


def _f32(x):
    """A backend array (any float dtype) as float32 NumPy."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        return x.detach().float().cpu().numpy()
    if mod.startswith("jax"):
        import jax.numpy as jnp

        return np.asarray(x.astype(jnp.float32))
    return to_numpy(x).astype(np.float32)


def _paths(case):
    out = ["update", "step"]
    if case in (BackendCase.NUMPY, BackendCase.TORCH, BackendCase.TORCH_CUDA):
        out.append("flat")
    return out


def _one_step(path, opt, p, g):
    """New params after one step of ``opt`` from its init state."""
    if path == "update":
        u, _ = opt.update(g, opt.init(p), p)
        return ao.apply_updates(p, u)
    if path == "step":
        return ao.step(opt, p, g, opt.init(p))[0]
    o = ao.Optimizer(opt, {"w": p}, flat=True)
    return o.step({"w": g})["w"]


def _copy(xp, x):
    return x if not hasattr(x, "clone") else x.clone()


# ----------------------------------------------------------------------------
# 1. low precision: opmath, rounded once
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALIASES)
def test_half_precision_zero_gradient_leaves_params_unchanged(backend, name):
    """float16/bfloat16 params [1, -2, 0.5], zero gradient: unchanged (was NaN: eps rounded to 0)."""
    case, xp, device = backend
    lows = _low_dtypes(case, xp)
    if not lows:
        pytest.skip(f"{case}: no float16/bfloat16")
    for dname, dt in lows:
        for path in _paths(case):
            p = _arr(xp, [1.0, -2.0, 0.5], dt, device)
            g = _arr(xp, [0.0, 0.0, 0.0], dt, device)
            new = _one_step(path, _alias(name), _copy(xp, p), g)
            assert new.dtype == dt, (dname, path)
            np.testing.assert_array_equal(_f32(new), [1.0, -2.0, 0.5], err_msg=f"{dname} {path}")


@pytest.mark.parametrize("name", ALIASES)
def test_half_precision_tiny_gradient_first_step(backend, name):
    """g = [1e-4, -1e-4, 3e-4] (squares underflow in float16): a first step of about -lr * sign(g),
    equal to the float32 computation rounded once (was inf)."""
    case, xp, device = backend
    lows = _low_dtypes(case, xp)
    if not lows:
        pytest.skip(f"{case}: no float16/bfloat16")
    lr = 1e-3
    p0 = [1.0, -2.0, 0.5]
    gv = [1e-4, -1e-4, 3e-4]
    # the float32 computation
    p32 = _arr(xp, p0, xp.float32 if device is not None else np.float32, device)
    g32 = _arr(xp, gv, xp.float32 if device is not None else np.float32, device)
    u, _ = _alias(name, lr).update(g32, _alias(name, lr).init(p32), p32)
    ref32 = _f32(ao.apply_updates(p32, u))
    # first Adam/Adagrad step is lr * g/|g|; RMSProp's (decay 0.9) lr * g / (sqrt(0.1)|g|)
    k = 1 / np.sqrt(0.1) if name == "rmsprop" else 1.0
    np.testing.assert_allclose(ref32, np.array(p0) - lr * k * np.sign(gv), rtol=1e-5)
    for dname, dt in lows:
        for path in _paths(case):
            p = _arr(xp, p0, dt, device)
            g = _arr(xp, gv, dt, device)
            new = _one_step(path, _alias(name, lr), _copy(xp, p), g)
            assert new.dtype == dt
            got = _f32(new)
            assert np.all(np.isfinite(got)), (dname, path, got)
            # the float32 result rounded once to the storage dtype
            want = _f32(_arr(xp, ref32, dt, device))
            np.testing.assert_array_equal(got, want, err_msg=f"{dname} {path}")


def test_half_precision_state_rounded_once_on_store(backend):
    """State leaves keep the storage dtype; their values are the float32 ones rounded once."""
    case, xp, device = backend
    lows = _low_dtypes(case, xp)
    if not lows:
        pytest.skip(f"{case}: no float16/bfloat16")
    for dname, dt in lows:
        p = _arr(xp, [1.0, -2.0, 0.5], dt, device)
        g = _arr(xp, [0.3, -7.0, 1e-3], dt, device)
        opt = ao.adam(1e-3)
        _, s = opt.update(g, opt.init(p), p)
        assert s[1].mu.dtype == dt and s[1].nu.dtype == dt
        g32 = _f32(g).astype(np.float32)
        np.testing.assert_array_equal(_f32(s[1].nu), _f32(_arr(xp, np.float32(0.001) * (g32 * g32), dt, device)))


# ----------------------------------------------------------------------------
# 2. norms that neither overflow nor underflow
# ----------------------------------------------------------------------------


def _clip(xp, values, dt, device, max_norm):
    g = _arr(xp, values, dt, device)
    t = ao.clip_by_global_norm(max_norm)
    u, _ = t.update(g, t.init(g))
    return _f32(u) if not hasattr(u, "dtype") or "float64" not in str(u.dtype) else to_numpy(u)


def test_clip_by_global_norm_float16_no_overflow(backend):
    """float16 g = [300] clipped to 1 -> [1] (300^2 overflowed float16: was [0])."""
    case, xp, device = backend
    for dname, dt in _low_dtypes(case, xp):
        np.testing.assert_allclose(_clip(xp, [300.0], dt, device, 1.0), [1.0], rtol=1e-3, err_msg=dname)
    if not _low_dtypes(case, xp):
        pytest.skip(f"{case}: no float16/bfloat16")


def test_clip_by_global_norm_float32_huge(xp, device):
    """float32 g = [1e20] * 100 clipped to 1 -> 0.1 each (the squares overflowed: was zeros)."""
    dt = xp.float32 if device is not None else np.float32
    np.testing.assert_allclose(_clip(xp, [1e20] * 100, dt, device, 1.0), [0.1] * 100, rtol=1e-6)


def test_clip_by_global_norm_float16_tiny(backend):
    """float16 g = [1e-4] * 4 clipped to 1e-5 -> 5e-6 each (the squares underflowed: was not clipped)."""
    case, xp, device = backend
    lows = [d for d in _low_dtypes(case, xp) if d[0] == "float16"]
    if not lows:
        pytest.skip(f"{case}: no float16")
    for dname, dt in lows:
        # 1e-4 in float16 is 1.0002e-4; the right value is 1e-5 * g / |g| = 5e-6 (to float16's 1e-3)
        np.testing.assert_allclose(_clip(xp, [1e-4] * 4, dt, device, 1e-5), [5e-6] * 4, rtol=2e-3, err_msg=dname)


def test_scaled_norm_edges(xp, device):
    from agnopt._core.norms import scaled_norm

    f = xp.float32 if device is not None else np.float32
    cases = [([0.0, 0.0], 0.0), ([3e-30, 4e-30], 5e-30), ([3e30, 4e30], 5e30), ([np.inf, 1.0], np.inf)]
    for vals, want in cases:
        got = float(to_numpy(scaled_norm(xp, [_arr(xp, vals, f, device)])))
        np.testing.assert_allclose(got, want, rtol=1e-6)
    got = float(to_numpy(scaled_norm(xp, [_arr(xp, [np.nan, 1.0], f, device)])))
    assert np.isnan(got)


# ----------------------------------------------------------------------------
# 3. rounding below zero under a square root
# ----------------------------------------------------------------------------


def test_centered_rmsprop_constant_gradient_stays_finite(backend):
    """rmsprop(1e-3, centered=True), float32, param 0, gradient 8.9: nu - mu^2 rounds below 0 at
    step 134 (torch.optim: NaN at 135); clamped, every step stays finite (1000 steps; 200 on Dask)."""
    case, xp, device = backend
    steps = 200 if case is BackendCase.DASK else 1000
    dt = xp.float32 if device is not None else np.float32
    opt = ao.rmsprop(1e-3, centered=True)
    for path in ("update", "step"):
        p = _arr(xp, [0.0, 0.0], dt, device)
        g = _arr(xp, [8.9, 8.9], dt, device)
        s = opt.init(p)
        for i in range(steps):
            if path == "update":
                u, s = opt.update(g, s, p)
                p = ao.apply_updates(p, u)
            else:
                p, s = ao.step(opt, p, g, s)
            if case is BackendCase.DASK:
                p, s = ao.tree_unflatten(ao.tree_flatten((p, s))[1],
                                         list(__import__("dask").persist(*ao.tree_leaves((p, s)))))
        x = _f32(p)
        assert np.all(np.isfinite(x)), (path, x)
        # with sqrt(max(nu - mu^2, 0)) >= 0 each step moves by at most lr * g / eps-regularised std:
        # the parameter decreases monotonically, and stays far from overflow
        assert np.all(x < 0)


# ----------------------------------------------------------------------------
# 4. derivatives through every transform and alias, at zero and tiny inputs
# ----------------------------------------------------------------------------

TRANSFORMS = {
    "scale": lambda: ao.scale(0.5),
    "scale_by_schedule": lambda: ao.scale_by_schedule(ao.exponential_decay(1.0, 2, 0.5)),
    "scale_by_learning_rate": lambda: ao.scale_by_learning_rate(0.1),
    "scale_by_sign": lambda: ao.scale_by_sign(),
    "trace": lambda: ao.trace(0.9),
    "trace-nesterov": lambda: ao.trace(0.9, nesterov=True),
    "scale_by_rss": lambda: ao.scale_by_rss(),
    "scale_by_rss-eps_in_sqrt-0": lambda: ao.scale_by_rss(initial_accumulator_value=0.0, eps=1e-7,
                                                          eps_in_sqrt=True),
    "scale_by_rms": lambda: ao.scale_by_rms(),
    "scale_by_rms-eps_in_sqrt": lambda: ao.scale_by_rms(eps_in_sqrt=True),
    "scale_by_stddev": lambda: ao.scale_by_stddev(),
    "scale_by_stddev-eps_in_sqrt": lambda: ao.scale_by_stddev(eps_in_sqrt=True),
    "scale_by_adam": lambda: ao.scale_by_adam(),
    "scale_by_adam-amsgrad": lambda: ao.scale_by_adam(amsgrad=True),
    "scale_by_adam-eps_root": lambda: ao.scale_by_adam(eps_root=1e-8),
    "add_decayed_weights": lambda: ao.add_decayed_weights(0.1),
    "clip_by_global_norm": lambda: ao.clip_by_global_norm(1.0),
    "sgd": lambda: ao.sgd(0.1, momentum=0.9, weight_decay=0.01),
    "sign_sgd": lambda: ao.sign_sgd(0.1),
    "adagrad": lambda: ao.adagrad(0.1),
    "rmsprop": lambda: ao.rmsprop(0.1),
    "rmsprop-centered-momentum": lambda: ao.rmsprop(0.1, centered=True, momentum=0.5),
    "adam": lambda: ao.adam(0.1),
    "adam-amsgrad-wd": lambda: ao.adam(0.1, amsgrad=True, weight_decay=0.1),
    "adamw": lambda: ao.adamw(0.1),
    "apply_if_finite-adam": lambda: ao.apply_if_finite(ao.adam(0.1)),
}


def _two_updates(opt, p, g, xp):
    """sum of the second update's values, both updates fed with g (so the state from g is differentiated too)."""
    s = opt.init(p)
    u, s = opt.update(g, s, p)
    u2, _ = opt.update(g, s, p)
    return xp.sum(u2) + xp.sum(u)


def test_jax_grad_clip_by_global_norm_at_zero():
    """jax.grad of sum(clip_by_global_norm(1).update(g)) at g = 0 is [1, 1, 1] (was NaN)."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    t = ao.clip_by_global_norm(1.0)
    grad = jax.grad(lambda g: jnp.sum(t.update(g, t.init(g))[0]))(jnp.zeros(3))
    np.testing.assert_array_equal(np.asarray(grad), [1.0, 1.0, 1.0])
    # outside the region: d/dg sum(g / |g|) at g = (3, 4) = (1 - g g^T/|g|^2) 1 / |g|
    g = jnp.asarray([3.0, 4.0])
    want = (np.eye(2) - np.outer([3, 4], [3, 4]) / 25.0).sum(axis=0) / 5.0
    np.testing.assert_allclose(np.asarray(jax.grad(lambda g: jnp.sum(t.update(g, ())[0]))(g)), want, rtol=1e-12)


def test_torch_func_grad_clip_by_global_norm_at_zero():
    torch = pytest.importorskip("torch")
    from torch.func import grad

    t = ao.clip_by_global_norm(1.0)
    out = grad(lambda g: torch.sum(t.update(g, t.init(g))[0]))(torch.zeros(3, dtype=torch.float64))
    np.testing.assert_array_equal(out.numpy(), [1.0, 1.0, 1.0])


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("value", [0.0, 1e-30, 1e-200])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_jax_grad_through_transforms_finite(name, value, dtype):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    if dtype == "float32" and value == 1e-200:
        pytest.skip("1e-200 is 0 in float32 (the 0 case)")
    dt = getattr(jnp, dtype)
    p = jnp.asarray([1.0, -2.0, 0.0], dtype=dt)
    g0 = jnp.full((3,), value, dtype=dt)
    opt = TRANSFORMS[name]()
    out_g = np.asarray(jax.grad(lambda g: _two_updates(opt, p, g, jnp))(g0))
    out_p = np.asarray(jax.grad(lambda q: _two_updates(opt, q, g0, jnp))(p))
    assert np.all(np.isfinite(out_g)) and np.all(np.isfinite(out_p)), (name, value, out_g, out_p)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("value", [0.0, 1e-30, 1e-200])
def test_torch_func_grad_through_transforms_finite(name, value):
    torch = pytest.importorskip("torch")
    from torch.func import grad

    p = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)
    g0 = torch.full((3,), value, dtype=torch.float64)
    opt = TRANSFORMS[name]()
    out = grad(lambda g: _two_updates(opt, p, g, torch))(g0)
    assert torch.all(torch.isfinite(out)), (name, value, out)


# ----------------------------------------------------------------------------
# also: state leaves keep their type, shape and dtype
# ----------------------------------------------------------------------------


def _sig(tree):
    return [(type(x), tuple(x.shape), x.dtype) for x in ao.tree_leaves(tree)]


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_state_leaves_keep_type_shape_dtype(backend, name):
    """Every state leaf after two updates (one finite, one not) is what init returned:
    same array type, shape and dtype (ApplyIfFiniteState.last_finite became a NumPy bool)."""
    case, xp, device = backend
    dt = xp.float32 if device is not None else np.float32
    if device is None:
        import dask.array as da

        params = {"a": da.from_array(np.asarray(1.5, dtype=np.float32)),
                  "b": da.from_array(np.asarray([1.0, -2.0, 0.5], dtype=np.float32), chunks=2)}
    else:
        params = {"a": xp.asarray(1.5, dtype=dt, device=device), "b": _arr(xp, [1.0, -2.0, 0.5], dt, device)}
    grads = {"a": params["a"] * 0 + 0.25, "b": params["b"] * 0.5}
    opt = TRANSFORMS[name]()
    s0 = opt.init(params)
    want = _sig(s0)
    _, s1 = opt.update(grads, s0, params)
    assert _sig(s1) == want
    if name.startswith("apply_if_finite"):
        bad = {"a": grads["a"] * float("nan"), "b": grads["b"]}
        _, s2 = opt.update(bad, s1, params)
        assert _sig(s2) == want
    p1, s3 = ao.step(opt, params, grads, opt.init(params))
    assert _sig(s3) == want
    assert _sig(p1) == _sig(params)


# ----------------------------------------------------------------------------
# issue 14, fix now 2: step() rejects a non-finite schedule value before writing in place
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "sgd-momentum", "sign_sgd", "adagrad", "rmsprop", "adam", "adamw"])
def test_step_rejects_nonfinite_schedule_array_before_writing(backend, name):
    """A schedule returning a NaN 0-d array: step() raises ValueError as update() does, and the
    parameters and state are untouched (torch/NumPy fast paths overwrote them with NaN)."""
    case, xp, device = backend
    if case is BackendCase.DASK:
        pytest.skip("dask: schedule values are not checked (documented: that would compute every step)")
    dt = xp.float64

    def sched(count):
        return xp.asarray(float("nan"), dtype=dt, device=device)

    opt = {"sgd": lambda: ao.sgd(sched), "sgd-momentum": lambda: ao.sgd(sched, momentum=0.9),
           "sign_sgd": lambda: ao.sign_sgd(sched), "adagrad": lambda: ao.adagrad(sched),
           "rmsprop": lambda: ao.rmsprop(sched), "adam": lambda: ao.adam(sched),
           "adamw": lambda: ao.adamw(sched)}[name]()
    p = xp.asarray([1.0, -2.0, 0.5], dtype=dt, device=device)
    g = xp.asarray([0.1, 0.2, 0.3], dtype=dt, device=device)
    s = opt.init(p)
    before = [to_numpy(x).copy() for x in ao.tree_leaves((p, s))]
    with pytest.raises(ValueError, match="non-finite"):
        opt.update(g, s, p)
    with pytest.raises(ValueError, match="non-finite"):
        ao.step(opt, p, g, s)
    after = [to_numpy(x) for x in ao.tree_leaves((p, s))]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
