"""The fast paths of ``ao.step`` give what the generic path gives, for every option.

For every optimizer option (momentum, nesterov, dampening, centered,
eps_in_sqrt, amsgrad, weight decay, schedules, accumulator dtypes), over
several steps, in float32 and float64, for one array and for a tree, each fast
path (blocked NumPy, numba, torch in place, CuPy [needs CUDA]) is compared
with the generic path (``update`` + ``apply_updates``, selected with
``AGNOPT_FAST=0``). Also: the fast paths really ran (and updated in place),
``AGNOPT_FAST=0`` really selects the generic path, JAX / array-api-strict /
Dask and user-built chains stay functional, and the stateful ``Optimizer``
follows the same trajectory.
"""

from __future__ import annotations

import numpy as np
import pytest

import agnopt as ao
from agnopt._kernels import cpu as _fast_cpu
from conftest import have, to_numpy

STEPS = 6


def _sched(lr):
    return ao.exponential_decay(lr, 2, 0.8)


CONFIGS = {
    "sgd": lambda: ao.sgd(1e-2),
    "sgd-momentum": lambda: ao.sgd(1e-2, momentum=0.9),
    "sgd-nesterov": lambda: ao.sgd(1e-2, momentum=0.9, nesterov=True),
    "sgd-dampening-wd": lambda: ao.sgd(1e-2, momentum=0.8, dampening=0.3, weight_decay=0.1),
    "sgd-wd": lambda: ao.sgd(1e-2, weight_decay=0.05),
    "sgd-schedule": lambda: ao.sgd(_sched(1e-2), momentum=0.9),
    "sign_sgd": lambda: ao.sign_sgd(1e-2),
    "sign_sgd-schedule": lambda: ao.sign_sgd(ao.cosine_decay(1e-2, 5)),
    "adagrad": lambda: ao.adagrad(0.1),
    "adagrad-init-wd": lambda: ao.adagrad(0.1, initial_accumulator_value=0.1, weight_decay=0.05),
    "adagrad-eps_in_sqrt": lambda: ao.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-7, eps_in_sqrt=True),
    "adagrad-schedule": lambda: ao.adagrad(_sched(0.1)),
    "rmsprop": lambda: ao.rmsprop(1e-2),
    "rmsprop-centered": lambda: ao.rmsprop(1e-2, centered=True),
    "rmsprop-momentum": lambda: ao.rmsprop(1e-2, momentum=0.7),
    "rmsprop-nesterov": lambda: ao.rmsprop(1e-2, momentum=0.7, nesterov=True),
    "rmsprop-eps_in_sqrt-initial_scale": lambda: ao.rmsprop(1e-2, eps_in_sqrt=True, initial_scale=0.1),
    "rmsprop-centered-momentum-wd": lambda: ao.rmsprop(1e-2, decay=0.99, centered=True, momentum=0.5,
                                                       weight_decay=0.01),
    "rmsprop-schedule": lambda: ao.rmsprop(_sched(1e-2), centered=True, eps_in_sqrt=True),
    "adam": lambda: ao.adam(1e-2),
    "adam-betas-eps": lambda: ao.adam(1e-2, b1=0.8, b2=0.99, eps=1e-6),
    "adam-amsgrad": lambda: ao.adam(1e-2, amsgrad=True),
    "adam-wd": lambda: ao.adam(1e-2, weight_decay=0.1),
    "adam-eps_root": lambda: ao.adam(1e-2, eps_root=1e-8),
    "adam-schedule": lambda: ao.adam(ao.warmup_cosine_decay(0.0, 1e-2, 2, 10)),
    "adam-amsgrad-wd-schedule": lambda: ao.adam(_sched(1e-2), amsgrad=True, weight_decay=0.1),
    "adamw": lambda: ao.adamw(1e-2),
    "adamw-wd": lambda: ao.adamw(1e-2, weight_decay=0.5),
    "adamw-amsgrad": lambda: ao.adamw(1e-2, amsgrad=True, weight_decay=0.1),
    "adamw-schedule": lambda: ao.adamw(_sched(1e-2)),
}
# options that the fast paths hand to the generic path (other state dtypes)
FALLBACK_CONFIGS = {
    "adam-mu_dtype": lambda dt: ao.adam(1e-2, mu_dtype="float64" if dt == "float32" else "float32"),
    "adam-nu_dtype": lambda dt: ao.adam(1e-2, nu_dtype="float64" if dt == "float32" else "float32"),
    "sgd-accumulator_dtype": lambda dt: ao.sgd(1e-2, momentum=0.9,
                                               accumulator_dtype="float64" if dt == "float32" else "float32"),
    "rmsprop-accumulator_dtype": lambda dt: ao.rmsprop(1e-2, centered=True,
                                                       accumulator_dtype="float64" if dt == "float32" else "float32"),
}
SAME_DTYPE_CONFIGS = {  # mu_dtype / nu_dtype equal to the parameters' dtype: the fast path runs
    "adam-mu_nu_dtype-same": lambda dt: ao.adam(1e-2, mu_dtype=dt, nu_dtype=dt),
    "adagrad-accumulator_dtype-same": lambda dt: ao.adagrad(0.1, accumulator_dtype=dt),
}

TOL = {"float32": 1e-6, "float64": 1e-14}


# ---------------------------------------------------------------- backends


class _Numpy:
    name = "numpy"

    def __init__(self, mode):
        self.mode = mode

    def array(self, a, dt):
        return np.array(a, dtype=dt)

    def stats(self):
        return _fast_cpu.STATS["numba" if self.mode == "numba" else "numpy"]


class _Torch:
    name = "torch"
    mode = "1"

    def __init__(self, device="cpu"):
        import torch

        self.torch = torch
        self.device = device

    def array(self, a, dt):
        return self.torch.tensor(np.asarray(a), dtype=getattr(self.torch, dt), device=self.device)

    def stats(self):
        from agnopt._kernels import torch_kernel as _fast_torch

        return _fast_torch.STATS["torch"]


class _Cupy:
    name = "cupy"
    mode = "1"

    def __init__(self):
        import cupy

        self.cp = cupy

    def array(self, a, dt):
        return self.cp.asarray(np.asarray(a, dtype=dt))

    def stats(self):
        from agnopt._kernels import cupy_kernel as _fast_cupy

        return _fast_cupy.STATS["cupy"]


def _cuda_torch():
    if not have("torch"):
        pytest.skip("torch is not installed")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device here")
    return _Torch("cuda")


def _cupy():
    if not have("cupy"):
        pytest.skip("cupy is not installed")
    import cupy

    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("cupy has no CUDA device here")
    except Exception as e:  # no driver
        pytest.skip(f"cupy has no CUDA device here ({type(e).__name__})")
    return _Cupy()


def _make_path(name):
    if name == "numpy-blocked":
        return _Numpy("numpy")
    if name == "numba":
        if not _fast_cpu.HAVE_NUMBA:
            pytest.skip("numba is not installed")
        return _Numpy("numba")
    if name == "torch":
        if not have("torch"):
            pytest.skip("torch is not installed")
        return _Torch()
    if name == "torch-cuda":
        return _cuda_torch()
    if name == "cupy":
        return _cupy()
    raise AssertionError(name)


PATHS = ["numpy-blocked", "numba", "torch", "torch-cuda", "cupy"]


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    """Small blocks so that the blocked paths really loop over several blocks."""
    monkeypatch.setattr(_fast_cpu, "BLOCK", 64)
    monkeypatch.setattr(_fast_cpu.run_blocked, "__defaults__", (64,))
    if have("torch"):
        from agnopt._kernels import torch_kernel as _fast_torch

        monkeypatch.setattr(_fast_torch, "BLOCK_CPU", 100)
        monkeypatch.setattr(_fast_torch, "BLOCK_CUDA", 100)


def _problem(be, dt, tree, seed=0):
    rng = np.random.default_rng(seed)
    if tree:
        return {
            "w": be.array(rng.standard_normal((13, 11)), dt),
            "b": be.array(rng.standard_normal(7), dt),
            "layers": [be.array(rng.standard_normal(300), dt), be.array(rng.standard_normal((2, 3, 4)), dt)],
            "s": be.array(rng.standard_normal(()), dt),
        }
    return be.array(rng.standard_normal(257), dt)


def _grads(be, params, dt, k):
    rng = np.random.default_rng(100 + k)

    def one(p):
        g = rng.standard_normal(tuple(p.shape))
        if k == 2:  # exact zeros (sign, first-step branches)
            g.reshape(-1)[::5] = 0.0
        return be.array(g, dt)

    return ao.tree_map(one, params)


def _trajectory(be, make, dt, tree, monkeypatch, mode):
    monkeypatch.setenv("AGNOPT_FAST", mode)
    opt = make()
    params = _problem(be, dt, tree)
    state = opt.init(params)
    traj = []
    for k in range(STEPS):
        params, state = ao.step(opt, params, _grads(be, params, dt, k), state)
        traj.append([to_numpy(x).copy() for x in ao.tree_leaves(params)])
    return traj, state


def _compare(ref, got, dt, loose=False):
    """Equal to the generic path: to the last bits (``loose=False``; the paths perform the generic
    operations in order), or to a few roundings of O(1) values (``loose``: torch's fused Adam
    kernels, which order the bias corrections differently)."""
    atol = 8 * float(np.finfo(dt).eps) if loose else TOL[dt] * 1e-3
    for a_step, b_step in zip(ref, got):
        for a, b in zip(a_step, b_step):
            np.testing.assert_allclose(b, a, rtol=TOL[dt], atol=atol)


FUSED_YES = ["adam", "adam-betas-eps", "adam-wd", "adamw", "adamw-wd", "adam-mu_nu_dtype-same"]
FUSED_NO = ["adam-amsgrad", "adam-eps_root", "adam-schedule", "adamw-amsgrad", "adamw-schedule", "rmsprop"]


def _torch_fused_route(path, name):
    """Whether ``path`` hands config ``name`` to torch's fused kernels (torch_kernel.FUSED_DEVICES)."""
    return path == "torch-cuda" and name in FUSED_YES


@pytest.mark.parametrize("tree", [False, True], ids=["array", "tree"])
@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("path", PATHS)
def test_fast_path_equals_generic(path, name, dt, tree, monkeypatch):
    be = _make_path(path)
    ref, ref_state = _trajectory(be, CONFIGS[name], dt, tree, monkeypatch, "0")
    before = be.stats()
    got, got_state = _trajectory(be, CONFIGS[name], dt, tree, monkeypatch, be.mode)
    n_leaves = len(ao.tree_leaves(_problem(be, dt, tree)))
    assert be.stats() - before == STEPS * n_leaves, "the fast path did not run"
    loose = _torch_fused_route(path, name)
    _compare(ref, got, dt, loose)
    # the state too: same structure, same values
    assert ao.tree_structure(ref_state) == ao.tree_structure(got_state)
    _compare([ao.tree_leaves(ref_state)], [ao.tree_leaves(got_state)], dt, loose)


@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("name", list(FALLBACK_CONFIGS) + list(SAME_DTYPE_CONFIGS))
@pytest.mark.parametrize("path", ["numpy-blocked", "numba", "torch"])
def test_state_dtype_options(path, name, dt, monkeypatch):
    """mu_dtype / nu_dtype / accumulator_dtype: the same steps as the generic path.

    A state dtype other than the parameters' goes the generic path; the same
    dtype takes the fast path.
    """
    be = _make_path(path)
    make = {**FALLBACK_CONFIGS, **SAME_DTYPE_CONFIGS}[name]
    ref, _ = _trajectory(be, lambda: make(dt), dt, True, monkeypatch, "0")
    before = be.stats()
    got, _ = _trajectory(be, lambda: make(dt), dt, True, monkeypatch, be.mode)
    ran = be.stats() - before
    assert (ran > 0) == (name in SAME_DTYPE_CONFIGS)
    _compare(ref, got, dt, _torch_fused_route(path, name))


@pytest.mark.parametrize("path", ["numpy-blocked", "numba", "torch"])
def test_step_donates_on_fast_path_and_not_on_generic(path, monkeypatch):
    be = _make_path(path)
    opt = ao.adam(1e-2)
    p = be.array(np.linspace(-1, 1, 50), "float64")
    g = be.array(np.full(50, 0.5), "float64")
    g0 = to_numpy(g).copy()
    monkeypatch.setenv("AGNOPT_FAST", "0")
    s = opt.init(p)
    before_stats = be.stats()
    p_copy = to_numpy(p).copy()
    p2, s2 = ao.step(opt, p, g, s)
    assert be.stats() == before_stats  # AGNOPT_FAST=0: the generic path
    assert p2 is not p
    np.testing.assert_array_equal(to_numpy(p), p_copy)  # nothing mutated
    monkeypatch.setenv("AGNOPT_FAST", be.mode)
    p3, s3 = ao.step(opt, p, g, s)
    assert p3 is p  # updated in place
    _compare([[to_numpy(p2)]], [[to_numpy(p3)]], "float64", _torch_fused_route(path, "adam"))
    np.testing.assert_array_equal(to_numpy(g), g0)  # grads never written
    assert int(s3[1].count) == 1


def test_numba_used_when_importable(monkeypatch):
    if not _fast_cpu.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    monkeypatch.setenv("AGNOPT_FAST", "1")
    before = dict(_fast_cpu.STATS)
    opt = ao.rmsprop(1e-2)
    p = np.ones(10)
    ao.step(opt, p, np.ones(10), opt.init(p))
    assert _fast_cpu.STATS["numba"] == before["numba"] + 1
    assert _fast_cpu.STATS["numpy"] == before["numpy"]


def test_bad_agnopt_fast_value(monkeypatch):
    monkeypatch.setenv("AGNOPT_FAST", "fastest")
    opt = ao.sgd(0.1)
    p = np.ones(3)
    with pytest.raises(ValueError, match="AGNOPT_FAST"):
        ao.step(opt, p, p, opt.init(p))


def test_user_chain_goes_generic(monkeypatch):
    monkeypatch.setenv("AGNOPT_FAST", "1")
    opt = ao.chain(ao.scale_by_adam(), ao.scale(-1e-2))
    p = np.ones(5)
    before = dict(_fast_cpu.STATS)
    p2, _ = ao.step(opt, p, np.full(5, 0.3), opt.init(p))
    assert p2 is not p and np.all(p == 1.0)
    assert _fast_cpu.STATS == before


@pytest.mark.parametrize("name", ["adam-amsgrad-wd-schedule", "rmsprop-centered-momentum-wd",
                                  "sgd-dampening-wd", "adagrad-init-wd", "adamw"])
def test_step_on_every_backend(backend, name, monkeypatch):
    """``step`` equals the generic path on every backend; JAX, array-api-strict
    and Dask arrays are never mutated (and returned arrays are new)."""
    case, xp, device = backend
    monkeypatch.setenv("AGNOPT_FAST", "1")
    opt = CONFIGS[name]()
    rng = np.random.default_rng(0)
    p0 = {"a": rng.standard_normal(20), "b": rng.standard_normal(3)}

    def mk(d):
        return {k: xp.asarray(v.copy(), dtype=xp.float64, device=device) for k, v in d.items()}

    p_ref, p = mk(p0), mk(p0)
    s_ref, s = opt.init(p_ref), opt.init(p)
    functional = str(case) in ("array_api_strict", "dask", "jax")
    for _ in range(3):
        g0 = {"a": rng.standard_normal(20), "b": rng.standard_normal(3)}
        u, s_ref = opt.update(mk(g0), s_ref, p_ref)
        p_ref = ao.apply_updates(p_ref, u)
        before = {k: to_numpy(v).copy() for k, v in p.items()}
        p_new, s = ao.step(opt, p, mk(g0), s)
        if functional:
            for k in p:
                np.testing.assert_array_equal(to_numpy(p[k]), before[k])
                assert p_new[k] is not p[k]
        p = p_new
    for k in p:
        np.testing.assert_allclose(to_numpy(p[k]), to_numpy(p_ref[k]), rtol=1e-14)


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("path", ["numpy-blocked", "numba", "torch"])
def test_optimizer_object(path, flat, monkeypatch):
    be = _make_path(path)
    ref, _ = _trajectory(be, CONFIGS["adam-amsgrad"], "float64", True, monkeypatch, "0")
    monkeypatch.setenv("AGNOPT_FAST", be.mode)
    opt = ao.Optimizer(CONFIGS["adam-amsgrad"](), _problem(be, "float64", True), flat=flat)
    for k in range(STEPS):
        g = _grads(be, opt.params, "float64", k)
        if flat and k % 2:  # write into the flat gradient buffer: no copy
            for dst, src in zip(ao.tree_leaves(opt.grads), ao.tree_leaves(g)):
                dst[...] = src
            out = opt.step()
        else:
            out = opt.step(g)
        assert out is opt.params
        got = [to_numpy(x) for x in ao.tree_leaves(opt.params)]
        for a, b in zip(ref[k], got):
            np.testing.assert_allclose(b, a, rtol=1e-14, atol=1e-17)


def test_optimizer_flat_generic_path(monkeypatch):
    monkeypatch.setenv("AGNOPT_FAST", "0")
    be = _Numpy("numpy")
    ref, _ = _trajectory(be, CONFIGS["sgd-momentum"], "float64", True, monkeypatch, "0")
    opt = ao.Optimizer(CONFIGS["sgd-momentum"](), _problem(be, "float64", True), flat=True)
    views = ao.tree_leaves(opt.params)
    for k in range(STEPS):
        opt.step(_grads(be, opt.params, "float64", k))
    assert all(a is b for a, b in zip(views, ao.tree_leaves(opt.params)))
    for a, b in zip(ref[-1], ao.tree_leaves(opt.params)):
        np.testing.assert_allclose(b, a, rtol=1e-14)


@pytest.mark.parametrize("path", ["numpy-blocked", "numba", "torch"])
def test_fast_path_rejects_what_generic_rejects(path, monkeypatch):
    be = _make_path(path)
    monkeypatch.setenv("AGNOPT_FAST", be.mode)
    opt = ao.adam(1e-2)
    p = {"w": be.array(np.ones((3, 4)), "float64")}
    s = opt.init(p)
    with pytest.raises(ValueError, match=r"grads\['w'\]: shape \(4, 3\) != params shape \(3, 4\)"):
        ao.step(opt, p, {"w": be.array(np.ones((4, 3)), "float64")}, s)
    with pytest.raises(ValueError, match="tree structure"):
        ao.step(opt, p, {"v": be.array(np.ones((3, 4)), "float64")}, s)
    with pytest.raises(ValueError, match="state"):
        ao.step(opt, p, p, (s[0],))


def test_chain_validates_after_untrusted_transform():
    """Validation once per chain must not skip the check after a user transform."""

    def bad_update(updates, state, params=None):
        return {"w": np.ones((5,))}, state

    user = ao.Transform(lambda p: ao.EmptyState(), bad_update)
    opt = ao.chain(ao.scale(1.0), user, ao.scale(2.0))
    p = {"w": np.ones((3,))}
    with pytest.raises(ValueError, match=r"shape \(5,\) != params shape \(3,\)"):
        opt.update({"w": np.ones(3)}, opt.init(p), p)
    nested = ao.chain(ao.chain(ao.scale(1.0)), user, ao.adam(1e-3))
    with pytest.raises(ValueError, match=r"shape \(5,\) != params shape \(3,\)"):
        nested.update({"w": np.ones(3)}, nested.init(p), p)
    with pytest.raises(TypeError, match="dtype"):
        ao.adam(1e-3).update({"w": np.ones(3, dtype=np.int64)}, ao.adam(1e-3).init(p), p)


# ---------------------------------------------------------------- CUDA fast paths (issue 14, item 5)
# The CuPy kernel and the torch CUDA path under the checks above that were
# written for the CPU paths only: donation, state dtypes, the Optimizer object,
# the device of every returned array. Skipped (never failed) without CUDA.

CUDA_PATHS = ["torch-cuda", "cupy"]


@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("name", list(FALLBACK_CONFIGS) + list(SAME_DTYPE_CONFIGS))
@pytest.mark.parametrize("path", CUDA_PATHS)
def test_state_dtype_options_cuda(path, name, dt, monkeypatch):
    test_state_dtype_options(path, name, dt, monkeypatch)


@pytest.mark.parametrize("path", CUDA_PATHS)
def test_step_donates_on_fast_path_and_not_on_generic_cuda(path, monkeypatch):
    test_step_donates_on_fast_path_and_not_on_generic(path, monkeypatch)


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("path", CUDA_PATHS)
def test_optimizer_object_cuda(path, flat, monkeypatch):
    test_optimizer_object(path, flat, monkeypatch)


@pytest.mark.parametrize("path", CUDA_PATHS)
def test_fast_path_rejects_what_generic_rejects_cuda(path, monkeypatch):
    test_fast_path_rejects_what_generic_rejects(path, monkeypatch)


def _device_of(x):
    from array_api_compat import device

    return device(x)


@pytest.mark.parametrize("name", ["adam-amsgrad-wd-schedule", "rmsprop-centered-momentum-wd",
                                  "sgd-dampening-wd", "adagrad-init-wd", "sign_sgd-schedule"])
@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("path", CUDA_PATHS)
def test_cuda_fast_path_keeps_device_and_dtypes(path, dt, name, monkeypatch):
    """Every returned parameter and state array stays on the parameters' device,
    with the generic path's dtype; the fast path really ran."""
    be = _make_path(path)
    ref, ref_state = _trajectory(be, CONFIGS[name], dt, True, monkeypatch, "0")
    before = be.stats()
    got, got_state = _trajectory(be, CONFIGS[name], dt, True, monkeypatch, be.mode)
    assert be.stats() > before, "the fast path did not run"
    dev = _device_of(ao.tree_leaves(_problem(be, dt, True))[0])
    for a, b in zip(ao.tree_leaves(ref_state), ao.tree_leaves(got_state)):
        assert _device_of(b) == dev and _device_of(a) == dev
        assert str(b.dtype) == str(a.dtype)
    _compare(ref, got, dt)


def _second_device(path):
    """Arrays on CUDA device 1 (skip with fewer than two GPUs)."""
    be = _make_path(path)
    if path == "cupy":
        if be.cp.cuda.runtime.getDeviceCount() < 2:
            pytest.skip("one CUDA device: the several-GPU case needs two")
        cp = be.cp

        class _Dev1(_Cupy):
            def array(self, a, dt):
                with cp.cuda.Device(1):
                    return cp.asarray(np.asarray(a, dtype=dt))

        return _Dev1()
    if be.torch.cuda.device_count() < 2:
        pytest.skip("one CUDA device: the several-GPU case needs two")
    return _Torch("cuda:1")


@pytest.mark.parametrize("mode", ["0", "1"], ids=["generic", "fast"])
@pytest.mark.parametrize("path", CUDA_PATHS)
def test_cuda_second_device(path, mode, monkeypatch):
    """Parameters on device 1 while device 0 is current: state, updates and
    results stay on device 1 and equal the device-0 trajectory (array-api-compat's
    CuPy creation functions ignore ``device=``: arrays must be made in the
    parameters' device context)."""
    be = _second_device(path)
    ref, _ = _trajectory(_make_path(path), CONFIGS["adam-amsgrad-wd-schedule"], "float64", True,
                         monkeypatch, "0")
    got, state = _trajectory(be, CONFIGS["adam-amsgrad-wd-schedule"], "float64", True, monkeypatch, mode)
    dev = _device_of(ao.tree_leaves(_problem(be, "float64", True))[0])
    for leaf in ao.tree_leaves(state):
        assert _device_of(leaf) == dev
    _compare(ref, got, "float64")

# ---------------------------------------------------------------- state layouts (issue 10)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_alias_declares_the_layout_its_kernel_reads(name):
    """Each alias registers, next to its chain, the state layout its fused kernel reads;
    that layout matches what its init() returns (else the fast path would silently switch off)."""
    from agnopt._first_order.step import fast_spec
    from agnopt._kernels import common

    opt = CONFIGS[name]()
    spec = fast_spec(opt)
    assert spec is not None
    params = {"w": np.ones((3, 2)), "b": np.zeros(4)}
    state = opt.init(params)
    leaves, td = ao.tree_flatten(params)
    assert len(spec.layout) == len(state)
    plan = common.read_state(spec, state, td, len(leaves))
    assert plan is not None, f"{name}: the declared layout does not match init()"
    assert set(plan.bufs) == set(common._flags(spec.kind, spec.hp)[1])


def test_layout_follows_a_reordered_chain(monkeypatch):
    """The layout is built from the same list as the chain: put the learning-rate scaling first
    and the state is still read (positions move together)."""
    from agnopt._first_order import alias
    from agnopt._kernels import common

    parts = [alias._lr_part(_sched(1e-2)),
             (ao.add_decayed_weights(0.0), alias._NONE),
             (ao.scale_by_adam(), alias._ADAM_SLOT)]
    opt = alias._fused("adam", parts, learning_rate=_sched(1e-2), b1=0.9, b2=0.999, eps=1e-8,
                       eps_root=0.0, amsgrad=False, weight_decay=0.0)
    from agnopt._first_order.step import fast_spec

    p = np.ones(5)
    state = opt.init(p)
    leaves, td = ao.tree_flatten(p)
    plan = common.read_state(fast_spec(opt), state, td, 1)
    assert plan is not None and set(plan.bufs) == {"mu", "nu"}
    assert plan.sched_count is state[0].count and plan.count is state[2].count
    # and a state of another layout is refused (generic path), never misread
    assert common.read_state(fast_spec(ao.adam(1e-2)), state, td, 1) is None


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["sgd-momentum", "sign_sgd", "adagrad", "rmsprop-centered-momentum-wd",
                                  "adam-amsgrad-wd-schedule", "adamw"])
def test_torch_half_precision_fast_path_equals_generic(name, low, monkeypatch):
    """torch float16/bfloat16: the in-place path computes in float32 and rounds once, as generic."""
    torch = pytest.importorskip("torch")
    from agnopt._kernels import torch_kernel as _fast_torch

    dt = getattr(torch, low)
    rng = np.random.default_rng(3)
    p0 = torch.tensor(rng.standard_normal(300), dtype=dt)
    grads = [torch.tensor(rng.standard_normal(300), dtype=dt) for _ in range(STEPS)]
    cfg = CONFIGS.get(name) or (lambda: ao.sgd(1e-2, momentum=0.9))
    out = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        opt = cfg()
        p = p0.clone()
        s = opt.init(p)
        before = _fast_torch.STATS["torch"]
        for g in grads:
            p, s = ao.step(opt, p, g, s)
        ran = _fast_torch.STATS["torch"] - before
        assert ran == (STEPS if mode == "1" else 0)
        out[mode] = (p, s)
    assert out["1"][0].dtype == dt
    torch.testing.assert_close(out["1"][0], out["0"][0], rtol=0, atol=0)
    for a, b in zip(ao.tree_leaves(out["0"][1]), ao.tree_leaves(out["1"][1])):
        assert a.dtype == b.dtype
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cupy_kernel_source_computes_in_opmath(name):
    """Read without a GPU (issue 14, fix now 4): the CuPy kernel declares every local in the opmath
    type ``O`` (float for float16/float32 storage, double for float64), takes its scalars in that
    type (a float16 eps = 1e-8 would be 0), rounds once per stored value, and clamps centered
    RMSProp's variance, as the generic path does."""
    import re

    from agnopt._first_order.step import fast_spec
    from agnopt._kernels import common, cupy_kernel

    spec = fast_spec(CONFIGS[name]())
    flags, _ = common._flags(spec.kind, spec.hp)
    if spec.kind == "sgd":
        flags = dict(flags, first=False)
    for op, ctype in (("float32", "float"), ("float64", "double")):
        ins, outs, body = cupy_kernel.kernel_source(spec.kind, flags, op)
        lines = body.split("\n")
        assert lines[0] == f"typedef {ctype} O;"
        assert not any(re.match(r"\s*T\s+\w+\s*=", ln) for ln in lines), body  # no storage-type locals
        scalars = [a.strip() for a in ins.split(",")][1:]
        assert scalars and all(a.startswith(op + " ") for a in scalars), ins
        for out in [o.strip().split()[1] for o in outs.split(",")]:
            stores = [ln for ln in lines if re.match(rf"\s*{out}\s*=", ln)]
            assert len(stores) == 1 and "(T)" in stores[0], (out, stores)  # one rounding per output
        if spec.kind == "rmsprop" and spec.hp["centered"]:
            assert "if (a < (O)0) a = (O)0;" in body
    assert cupy_kernel.opmath_name("float16") == "float32"


@pytest.mark.parametrize("name", ["sgd-momentum", "sign_sgd", "adagrad", "rmsprop-centered-momentum-wd",
                                  "adam-amsgrad-wd-schedule", "adamw"])
def test_cupy_float16_fast_path_equals_generic(name, monkeypatch):
    """CuPy float16 (issue 14, fix now 4): the fused kernel computes in float32 and rounds once,
    as the generic CuPy path; equal to within one float16 ulp (a last-bit float32 difference
    between one fused kernel and per-operation kernels can move a float16 rounding at a tie)."""
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("cupy has no CUDA device here")
    except Exception as e:  # no driver
        pytest.skip(f"cupy has no CUDA device here ({type(e).__name__})")
    from agnopt._kernels import cupy_kernel as _fast_cupy

    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(300).astype(np.float16)
    grads = [rng.standard_normal(300).astype(np.float16) for _ in range(STEPS)]
    out = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        opt = CONFIGS[name]()
        p = cp.asarray(p0)
        s = opt.init(p)
        before = _fast_cupy.STATS["cupy"]
        for g in grads:
            p, s = ao.step(opt, p, cp.asarray(g), s)
        assert _fast_cupy.STATS["cupy"] - before == (STEPS if mode == "1" else 0)
        out[mode] = cp.asnumpy(p)
    assert out["1"].dtype == np.float16
    ulp = np.spacing(np.abs(out["0"]).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(out["1"].astype(np.float32) - out["0"].astype(np.float32)) <= ulp)


# ---------------------------------------------------------------- torch's own fused Adam/AdamW kernels
# On CUDA the torch fast path hands Adam/AdamW to torch._fused_adam_ / _fused_adamw_ where the
# configuration is one torch implements (constant lr, eps_root == 0, no amsgrad). torch 2.x ships the
# same kernels for the CPU, so enabling the route on the CPU checks it against the generic path here.

def _fused_on_cpu(monkeypatch):
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "_fused_adam_"):
        pytest.skip("this torch has no _fused_adam_")
    from agnopt._kernels import torch_kernel as _fast_torch

    monkeypatch.setattr(_fast_torch, "FUSED_DEVICES", ("cuda", "cpu"))
    return _fast_torch


@pytest.mark.parametrize("tree", [False, True], ids=["array", "tree"])
@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("name", FUSED_YES[:-1] + FUSED_NO)
def test_torch_fused_kernels_equal_generic(name, dt, tree, monkeypatch):
    fk = _fused_on_cpu(monkeypatch)
    be = _Torch()
    ref, ref_state = _trajectory(be, CONFIGS[name], dt, tree, monkeypatch, "0")
    before = dict(fk.STATS)
    got, got_state = _trajectory(be, CONFIGS[name], dt, tree, monkeypatch, "1")
    n_leaves = len(ao.tree_leaves(_problem(be, dt, tree)))
    assert fk.STATS["torch"] - before["torch"] == STEPS * n_leaves
    fused = fk.STATS["torch_fused"] - before["torch_fused"]
    assert fused == (STEPS * n_leaves if name in FUSED_YES else 0), fk.FUSED_ERRORS
    _compare(ref, got, dt, name in FUSED_YES)  # to rounding: torch orders the bias corrections differently
    assert ao.tree_structure(ref_state) == ao.tree_structure(got_state)
    assert [a.dtype for a in ao.tree_leaves(ref_state)] == [b.dtype for b in ao.tree_leaves(got_state)]
    _compare([ao.tree_leaves(ref_state)], [ao.tree_leaves(got_state)], dt, name in FUSED_YES)


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["adam-wd", "adamw"])
def test_torch_fused_kernels_half_precision(name, low, monkeypatch):
    """float16/bfloat16 through torch's fused kernels: computed in float32, stored once, as generic
    (to one rounding of the storage type)."""
    fk = _fused_on_cpu(monkeypatch)
    torch = fk.torch
    dt = getattr(torch, low)
    rng = np.random.default_rng(3)
    p0 = torch.tensor(rng.standard_normal(300), dtype=dt)
    grads = [torch.tensor(rng.standard_normal(300), dtype=dt) for _ in range(STEPS)]
    out = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        opt = CONFIGS[name]()
        p = p0.clone()
        s = opt.init(p)
        before = fk.STATS["torch_fused"]
        for g in grads:
            p, s = ao.step(opt, p, g, s)
        assert fk.STATS["torch_fused"] - before == (STEPS if mode == "1" else 0)
        out[mode] = p
    assert out["1"].dtype == dt
    ulp = torch.finfo(dt).eps
    torch.testing.assert_close(out["1"].float(), out["0"].float(), rtol=4 * ulp, atol=4 * ulp)


def test_torch_fused_kernels_not_on_cpu_by_default():
    """On the CPU the block programs (bit for bit the generic path) run unless asked otherwise."""
    torch = pytest.importorskip("torch")
    from agnopt._kernels import torch_kernel as _fast_torch

    assert "cpu" not in _fast_torch.FUSED_DEVICES and "cuda" in _fast_torch.FUSED_DEVICES
    opt = ao.adam(1e-2)
    p = torch.ones(10, dtype=torch.float64)
    before = _fast_torch.STATS["torch_fused"]
    ao.step(opt, p, torch.full((10,), 0.5, dtype=torch.float64), opt.init(p))
    assert _fast_torch.STATS["torch_fused"] == before


def test_torch_fused_kernels_not_on_strided_grads(monkeypatch):
    """A transposed (non-contiguous) gradient: the block programs run (torch's kernels read flat memory)."""
    fk = _fused_on_cpu(monkeypatch)
    torch = fk.torch
    rng = np.random.default_rng(5)
    p0 = torch.tensor(rng.standard_normal((6, 4)))
    gT = torch.tensor(rng.standard_normal((4, 6))).T  # (6, 4), not contiguous
    out = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        opt = ao.adam(1e-2)
        p = p0.clone()
        s = opt.init(p)
        before = fk.STATS["torch_fused"]
        p, s = ao.step(opt, p, gT, s)
        assert fk.STATS["torch_fused"] == before
        out[mode] = p
    torch.testing.assert_close(out["1"], out["0"], rtol=0, atol=0)
