"""Property tests for the numerics of issue 12, one per kind (hypothesis).

(1) float16/bfloat16 parameters and gradients drawn over the whole finite
    range, 0 and subnormals included: one step of each alias (``update`` +
    ``apply_updates``, and ``step``: the fused kernels) is finite and equals
    the float32 computation rounded once to the storage dtype.
(2) ``clip_by_global_norm`` equals a float64 reference for values from 1e-30
    to 1e30 in every dtype that holds them.
(4) derivatives (``jax.grad``, ``torch.func.grad``) through every transform
    and alias, for drawn hyperparameters and parameters, are finite at a zero
    gradient.

Examples are few per test (``max_examples`` below) so the file runs in well
under a minute; the fixed inputs of the issue are in
``tests/test_numerics_edges.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import agnopt as ao  # noqa: E402
from conftest import BACKENDS, BackendCase, have  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

ALIASES = {
    "sgd": lambda: ao.sgd(1e-3),
    "sgd-momentum-wd": lambda: ao.sgd(1e-3, momentum=0.9, weight_decay=1e-2),
    "sign_sgd": lambda: ao.sign_sgd(1e-3),
    "adagrad": lambda: ao.adagrad(1e-3),
    "rmsprop": lambda: ao.rmsprop(1e-3),
    "rmsprop-centered-momentum": lambda: ao.rmsprop(1e-3, centered=True, momentum=0.5),
    "adam": lambda: ao.adam(1e-3),
    "adam-amsgrad-wd": lambda: ao.adam(1e-3, amsgrad=True, weight_decay=1e-2),
    "adamw": lambda: ao.adamw(1e-3),
}
ADAPTIVE = {"adagrad", "rmsprop", "rmsprop-centered-momentum", "adam", "adam-amsgrad-wd", "adamw", "sign_sgd"}


def _low_cases():
    out = []
    if BackendCase.NUMPY in BACKENDS:
        out.append(("numpy", "float16"))
    if BackendCase.TORCH in BACKENDS and have("torch"):
        out += [("torch", "float16"), ("torch", "bfloat16")]
    if BackendCase.JAX in BACKENDS and have("jax"):
        out += [("jax", "float16"), ("jax", "bfloat16")]
    return out


def _finite_low(dtype_name):
    """Every finite value of the dtype is reachable: draw the bit pattern."""
    if dtype_name == "float16":
        def from_bits(b):
            return float(np.array([b], dtype=np.uint16).view(np.float16)[0])
    else:  # bfloat16: the top 16 bits of a float32
        def from_bits(b):
            return float(np.array([b << 16], dtype=np.uint32).view(np.float32)[0])
    special = st.sampled_from([0.0, -0.0, 1.0, -1.0])
    return st.one_of(special, st.integers(0, 2**16 - 1).map(from_bits)).filter(np.isfinite)


def _module(lib, dtype_name):
    if lib == "numpy":
        import array_api_compat.numpy as xp

        return xp, getattr(xp, dtype_name), xp.float32
    if lib == "torch":
        import torch

        return torch, getattr(torch, dtype_name), torch.float32
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return jnp, getattr(jnp, dtype_name), jnp.float32


def _as_f32_numpy(x):
    mod = type(x).__module__
    if mod.startswith("torch"):
        return x.detach().float().numpy()
    if mod.startswith("jax"):
        import jax.numpy as jnp

        return np.asarray(x.astype(jnp.float32))
    return np.asarray(x, dtype=np.float32)


def _make(xp, lib, values, dt):
    a = np.asarray(values, dtype=np.float64)
    if lib == "torch":
        return xp.tensor(a, dtype=dt)
    if lib == "jax":
        return xp.asarray(a).astype(dt)
    return xp.asarray(a.astype(dt))


@pytest.mark.parametrize("lib,low", _low_cases())
@pytest.mark.parametrize("name", list(ALIASES))
@SETTINGS
@given(data=st.data())
def test_half_precision_step_is_float32_rounded_once(lib, low, name, data):
    n = data.draw(st.integers(1, 6))
    vals = st.lists(_finite_low(low), min_size=n, max_size=n)
    pv, gv = data.draw(vals), data.draw(vals)
    if name not in ADAPTIVE:  # p - lr * g may overflow the format itself (then both are inf)
        pv = [v / 2 for v in pv]
    xp, dt, f32 = _module(lib, low)
    p, g = _make(xp, lib, pv, dt), _make(xp, lib, gv, dt)
    # the float32 computation, rounded once
    p32 = xp.astype(p, f32) if lib != "torch" else p.to(f32)
    g32 = xp.astype(g, f32) if lib != "torch" else g.to(f32)
    opt = ALIASES[name]()
    u, _ = opt.update(g32, opt.init(p32), p32)
    r32 = ao.apply_updates(p32, u)
    want = _as_f32_numpy(xp.astype(r32, dt) if lib != "torch" else r32.to(dt))
    for path in ("update", "step"):
        opt = ALIASES[name]()
        if path == "update":
            u, _ = opt.update(g, opt.init(p), p)
            got = ao.apply_updates(p, u)
        else:
            q = p.clone() if lib == "torch" else (p.copy() if lib == "numpy" else p)
            got = ao.step(opt, q, g, opt.init(q))[0]
        assert got.dtype == dt
        got = _as_f32_numpy(got)
        # finite wherever g^2 fits the opmath dtype (float32): always for float16; bfloat16 shares
        # float32's exponent range, so |g| > sqrt(float32 max) ~ 1.8e19 overflows g^2 exactly as
        # float32 itself does (then only the equality with the float32 computation is asserted)
        if name in ADAPTIVE and max(abs(v) for v in gv) < 1.8e19:
            assert np.all(np.isfinite(got)), (path, pv, gv, got)
        np.testing.assert_array_equal(got, want, err_msg=f"{path}: p={pv} g={gv}")


# ---------------------------------------------------------------- (2) clip_by_global_norm vs float64


def _clip_cases():
    out = []
    for case in BACKENDS:
        if case in (BackendCase.NUMPY, BackendCase.ARRAY_API_STRICT):
            out += [(case.value, "float32"), (case.value, "float64")]
        if case is BackendCase.NUMPY:
            out.append((case.value, "float16"))
        if case is BackendCase.TORCH and have("torch"):
            out += [(case.value, d) for d in ("float16", "bfloat16", "float32", "float64")]
        if case is BackendCase.JAX and have("jax"):
            out += [(case.value, d) for d in ("float16", "bfloat16", "float32", "float64")]
    return out


def _clip_ns(lib):
    if lib == "numpy":
        import array_api_compat.numpy as xp
    elif lib == "array_api_strict":
        import array_api_strict as xp
    elif lib == "torch":
        import array_api_compat.torch as xp
    else:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as xp
    return xp


_RANGE = {"float16": (6e-8, 6e4), "bfloat16": (1e-30, 1e30), "float32": (1e-30, 1e30),
          "float64": (1e-30, 1e30)}


def _to_np64(x):
    mod = type(x).__module__
    if mod.startswith("torch"):
        return x.detach().double().numpy()
    if mod.startswith("array_api_strict"):
        return np.asarray(x._array, dtype=np.float64)
    return np.asarray(x).astype(np.float64)


@pytest.mark.parametrize("lib,dtype", _clip_cases())
@SETTINGS
@given(data=st.data())
def test_clip_by_global_norm_equals_float64_reference(lib, dtype, data):
    lo, hi = _RANGE[dtype]
    mag = st.floats(np.log10(lo), np.log10(hi)).map(lambda e: 10.0 ** e)
    signed = st.tuples(mag, st.sampled_from([-1.0, 1.0])).map(lambda t: t[0] * t[1])
    leaves = data.draw(st.lists(st.lists(signed, min_size=1, max_size=8), min_size=1, max_size=3))
    max_norm = data.draw(st.floats(-30, 30).map(lambda e: 10.0 ** e))
    xp = _clip_ns(lib)
    dt = getattr(xp, dtype)
    arrs = [xp.astype(xp.asarray(np.asarray(v, dtype=np.float64)), dt) for v in leaves]
    t = ao.clip_by_global_norm(max_norm)
    out, _ = t.update(arrs, t.init(arrs))
    # the float64 reference on the very values stored in dtype
    x64 = [_to_np64(a) for a in arrs]
    norm = np.sqrt(sum(float(np.sum(x * x)) for x in x64))
    factor = 1.0 if norm <= max_norm else max_norm / norm
    opmath = "float64" if dtype == "float64" else "float32"
    info = np.finfo(opmath)
    # a few ulps of the dtype computed in; results below its normal range lose relative accuracy,
    # and XLA on the CPU flushes subnormal results to zero
    floor = float(info.smallest_normal) if lib == "jax" else 4 * float(info.smallest_subnormal)
    for x, o in zip(x64, out):
        ref = x * factor
        got = _to_np64(o)
        np.testing.assert_allclose(got, ref, rtol=8 * info.eps,
                                   atol=floor + 8 * info.eps * float(info.smallest_normal),
                                   err_msg=f"max_norm={max_norm} norm={norm}")


# ---------------------------------------------------------------- (4) derivatives at 0


def _transforms(h):
    return {
        "scale": ao.scale(h["lr"]),
        "scale_by_sign": ao.scale_by_sign(),
        "trace": ao.trace(h["b1"], nesterov=h["b1"] > 0),
        "scale_by_rss": ao.scale_by_rss(h["init"], h["eps"], h["eps_in_sqrt"]),
        "scale_by_rms": ao.scale_by_rms(h["b2"], h["eps"], h["eps_in_sqrt"], h["init"]),
        "scale_by_stddev": ao.scale_by_stddev(h["b2"], h["eps"], h["eps_in_sqrt"], h["init"]),
        "scale_by_adam": ao.scale_by_adam(h["b1"], h["b2"], h["eps"], h["eps_root"], h["amsgrad"]),
        "add_decayed_weights": ao.add_decayed_weights(h["wd"]),
        "clip_by_global_norm": ao.clip_by_global_norm(h["max_norm"]),
        "sgd": ao.sgd(h["lr"], momentum=h["b1"], weight_decay=h["wd"]),
        "sign_sgd": ao.sign_sgd(h["lr"]),
        "adagrad": ao.adagrad(h["lr"], h["init"], h["eps"], h["eps_in_sqrt"], h["wd"]),
        "rmsprop": ao.rmsprop(h["lr"], h["b2"], h["eps"], h["eps_in_sqrt"], h["centered"], h["b1"], h["wd"]),
        "adam": ao.adam(h["lr"], h["b1"], h["b2"], h["eps"], h["eps_root"], h["amsgrad"], h["wd"]),
        "adamw": ao.adamw(h["lr"], h["b1"], h["b2"], h["eps"], h["eps_root"], h["amsgrad"], h["wd"]),
        "apply_if_finite": ao.apply_if_finite(ao.adam(h["lr"], h["b1"], h["b2"], h["eps"])),
        "clip-then-adam": ao.chain(ao.clip_by_global_norm(h["max_norm"]), ao.adam(h["lr"])),
    }


HPARAMS = st.fixed_dictionaries({
    "lr": st.floats(1e-6, 1.0), "b1": st.floats(0.0, 0.99), "b2": st.floats(0.0, 0.9999),
    "eps": st.sampled_from([1e-12, 1e-8, 1e-3]), "eps_root": st.sampled_from([0.0, 1e-16]),
    "eps_in_sqrt": st.booleans(), "amsgrad": st.booleans(), "centered": st.booleans(),
    "init": st.sampled_from([0.0, 0.1]), "wd": st.sampled_from([0.0, 1e-2]),
    "max_norm": st.floats(1e-3, 1e3),
})


def _objective(opt, p, g, xp):
    s = opt.init(p)
    u, s = opt.update(g, s, p)
    u2, _ = opt.update(g, s, p)
    return xp.sum(u) + xp.sum(u2)


@pytest.mark.parametrize("lib", [b for b in ("jax", "torch") if have(b)])
@settings(max_examples=10, deadline=None, derandomize=True)
@given(h=HPARAMS, pv=st.lists(st.floats(-10, 10), min_size=3, max_size=3))
def test_derivatives_through_every_transform_finite_at_zero(lib, h, pv):
    if lib == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        p = jnp.asarray(pv)
        g0 = jnp.zeros(3)
        for name, opt in _transforms(h).items():
            dg = np.asarray(jax.grad(lambda g: _objective(opt, p, g, jnp))(g0))
            dp = np.asarray(jax.grad(lambda q: _objective(opt, q, g0, jnp))(p))
            assert np.all(np.isfinite(dg)) and np.all(np.isfinite(dp)), (name, h, dg, dp)
    else:
        import torch
        from torch.func import grad

        p = torch.tensor(pv, dtype=torch.float64)
        g0 = torch.zeros(3, dtype=torch.float64)
        for name, opt in _transforms(h).items():
            dg = grad(lambda g: _objective(opt, p, g, torch))(g0)
            assert torch.all(torch.isfinite(dg)), (name, h, dg)
