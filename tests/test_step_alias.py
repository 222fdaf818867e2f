"""Gradients that share memory with what the fused step writes give what the generic path gives.

The generic path (``AGNOPT_FAST=0``: ``update`` then ``apply_updates``) reads
every gradient before it writes a parameter or a state buffer; the fused
kernels of ``ao.step`` write ``params`` and the state in place while they read
the gradients. A gradient that is, or is a view of, a parameter or a state
buffer (of its own leaf or of another) must therefore be copied first
(agnopt/_kernels/alias.py). Each case here runs the same three steps (one
plain, then two with the aliasing gradients: the second one on the step cache
of the NumPy path) on the generic path and on each fast path, and compares
every parameter and state leaf bit for bit. User trial: a gradient
``params["a"][:]`` of 10000 elements gave an error of 0.02 on ``params["b"]``
(the generic path's: 4e-16).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import have, to_numpy

import agnopt as ao
from agnopt._kernels import alias as _alias
from agnopt._kernels import cpu as _cpu
from agnopt._kernels import cupy_kernel as _cupy_kernel

OPTS = {
    "adam": lambda: ao.adam(1e-2),
    "adam-amsgrad-wd": lambda: ao.adam(1e-2, amsgrad=True, weight_decay=0.1),
    "adamw": lambda: ao.adamw(1e-2, weight_decay=0.1),
    "rmsprop-centered-momentum": lambda: ao.rmsprop(1e-2, centered=True, momentum=0.5),
    "adagrad": lambda: ao.adagrad(0.1),
    "sgd-momentum": lambda: ao.sgd(1e-2, momentum=0.9),
}
PATHS = ["numpy", "numpy-blocked", "numba", "torch"]
SIZES = [100, 10_000]  # through multi.py (numba, many small leaves) / one kernel call per leaf (> multi.SMALL)
KINDS = ["view-of-other-param", "other-param", "own-param", "view-of-own-param", "straddling-view",
         "view-of-state-buffer", "state-buffer"]


def _backend(path):
    if path == "torch":
        if not have("torch"):
            pytest.skip("torch is not installed")
        import torch

        return "1", lambda a: torch.tensor(a), lambda x: x[:]
    if path == "numba" and not _cpu.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    mode = {"numpy": "1", "numpy-blocked": "numpy", "numba": "numba"}[path]
    return mode, np.array, lambda x: x[:]


def _stats():
    n = _cpu.STATS["numba"] + _cpu.STATS["numpy"]
    if have("torch"):
        from agnopt._kernels import torch_kernel

        n += torch_kernel.STATS["torch"]
    return n


def _run(path, name, kind, n, mode, monkeypatch):
    """Three steps (the last two with aliasing gradients) in ``mode``; params, state as NumPy."""
    _, arr, view = _backend(path)
    monkeypatch.setenv("AGNOPT_FAST", mode)
    rng = np.random.default_rng(1)
    base = arr(rng.standard_normal(2 * n + 7))
    if kind == "straddling-view":  # parameters: disjoint views of one array
        params = {"a": base[:n], "b": base[n:2 * n]}
    else:
        params = {"a": arr(rng.standard_normal(n)), "b": arr(rng.standard_normal(n))}
    opt = OPTS[name]()
    state = opt.init(params)
    params, state = ao.step(opt, params, {"a": arr(rng.standard_normal(n)), "b": arr(rng.standard_normal(n))},
                            state)
    before = _stats()
    for _ in range(2):
        bufs = [x for x in ao.tree_leaves(state) if tuple(x.shape) == (n,)]  # the state buffers, "a" first
        g = {"a": arr(rng.standard_normal(n)), "b": arr(rng.standard_normal(n))}
        if kind == "view-of-other-param":
            g["b"] = view(params["a"])
        elif kind == "other-param":
            g["b"] = params["a"]
        elif kind == "own-param":
            g["a"] = params["a"]
        elif kind == "view-of-own-param":
            g["a"] = view(params["a"])
        elif kind == "straddling-view":  # the generic path returns new arrays: back into base first
            base[:n], base[n:2 * n] = params["a"], params["b"]
            params = {"a": base[:n], "b": base[n:2 * n]}
            g["b"] = base[n // 2:n // 2 + n]
        elif kind == "view-of-state-buffer":
            g["b"] = view(bufs[0])
        elif kind == "state-buffer":
            g["a"], g["b"] = bufs[-1], bufs[0]
        params, state = ao.step(opt, params, g, state)
    ran = _stats() - before
    return {k: to_numpy(v).copy() for k, v in params.items()}, [to_numpy(x).copy() for x in ao.tree_leaves(state)], ran


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(OPTS))
@pytest.mark.parametrize("path", PATHS)
def test_aliasing_gradients_equal_generic_bitwise(path, name, kind, n, monkeypatch):
    mode, _, _ = _backend(path)
    want_p, want_s, _ = _run(path, name, kind, n, "0", monkeypatch)
    got_p, got_s, ran = _run(path, name, kind, n, mode, monkeypatch)
    for k in want_p:
        assert np.array_equal(got_p[k], want_p[k]), (k, np.abs(got_p[k] - want_p[k]).max())
    assert len(got_s) == len(want_s)
    for a, b in zip(got_s, want_s):
        assert np.array_equal(a, b)
    assert ran == 4  # the fast path ran both aliasing steps (the gradients copied, not the generic path)


@pytest.mark.parametrize("path", PATHS)
def test_overlapping_parameters_take_the_generic_path(path, monkeypatch):
    """Two parameters sharing memory: an in-place step would update the shared elements twice."""
    mode, arr, _ = _backend(path)
    res = []
    for m in ("0", mode):
        monkeypatch.setenv("AGNOPT_FAST", m)
        base = arr(np.linspace(-1.0, 1.0, 300))
        params = {"a": base[:200], "b": base[100:]}
        opt = ao.adam(1e-2)
        state = opt.init(params)
        g = {"a": arr(np.ones(200)), "b": arr(np.full(200, -0.5))}
        params, state = ao.step(opt, params, g, state)
        res.append({k: to_numpy(v).copy() for k, v in params.items()})
    for k in res[0]:
        assert np.array_equal(res[1][k], res[0][k])
    np.testing.assert_allclose(res[0]["a"][:100], np.linspace(-1.0, 1.0, 300)[:100] - 1e-2, rtol=0, atol=1e-9)


def test_user_trial_view_of_another_parameter():
    rng = np.random.default_rng(0)
    n = 10000
    params = {"a": rng.standard_normal(n), "b": rng.standard_normal(n)}
    tx = ao.adam(1e-2)
    state = tx.init(params)
    a0 = params["a"].copy()
    ref_b = params["b"] - 1e-2 * a0 / (np.abs(a0) + 1e-8)
    params, state = ao.step(tx, params, {"a": rng.standard_normal(n), "b": params["a"][:]}, state)
    assert np.abs(params["b"] - ref_b).max() < 1e-12  # was 0.02


def test_optimizer_step_with_a_view_of_a_parameter_as_gradient(monkeypatch):
    res = []
    for m in ("0", "1"):
        monkeypatch.setenv("AGNOPT_FAST", m)
        rng = np.random.default_rng(3)
        o = ao.Optimizer(ao.adam(1e-2), {"a": rng.standard_normal(9000), "b": rng.standard_normal(9000)})
        for _ in range(3):
            o.step({"a": rng.standard_normal(9000), "b": o.params["a"][::1]})
        res.append({k: v.copy() for k, v in o.params.items()})
    for k in res[0]:
        assert np.array_equal(res[1][k], res[0][k])


# ---------------------------------------------------------------- the address tests themselves


def test_overlaps_agrees_with_may_share_memory():
    """The range test equals NumPy's bounds test on views of every stride sign (both are bounds tests)."""
    rng = np.random.default_rng(0)
    x = np.zeros((40, 30))
    views = [x[:5], x[5:9, ::2], x[::-3, 4:7], x[10:20].T, x[39:, ::-1], x[:0], x[3:25:4, 1::5], x[20:22, :15]]
    for _ in range(200):
        w = [views[i] for i in rng.choice(len(views), size=3, replace=False)]
        starts, maxends, _ = _alias.written_intervals(map(_alias.numpy_span, w))
        for g in views:
            want = any(np.may_share_memory(g, a) for a in w)
            assert _alias.overlaps(_alias.numpy_span(g), starts, maxends) == want
    assert _alias.written_intervals(map(_alias.numpy_span, [x[:5], x[4:9]]))[2] is False
    assert _alias.written_intervals(map(_alias.numpy_span, [x[:5], x[5:9], x[:0]]))[2] is True


class _FakeCupy:
    """What ``cupy_kernel.unaliased`` reads of a CuPy array (``.data.ptr``, shape, strides), on NumPy."""

    def __init__(self, a):
        self.a = a
        self.data = SimpleNamespace(ptr=a.ctypes.data)
        self.shape, self.strides, self.itemsize = a.shape, a.strides, a.itemsize

    def copy(self):
        return _FakeCupy(self.a.copy())


def test_cupy_check_copies_exactly_the_overlapping_gradients():
    x = np.zeros(100)
    p = [_FakeCupy(x[:40]), _FakeCupy(x[40:80])]
    bufs = {"mu": [_FakeCupy(np.zeros(40)), _FakeCupy(np.zeros(40))]}
    g = [_FakeCupy(x[60:100]), _FakeCupy(bufs["mu"][0].a[::-1]), _FakeCupy(x[80:]), _FakeCupy(np.ones(40))]
    out = _cupy_kernel.unaliased(p, bufs, g)
    assert [o is not h for o, h in zip(out, g)] == [True, True, False, False]
    assert not np.may_share_memory(out[0].a, x) and np.array_equal(out[0].a, x[60:100])
    assert _cupy_kernel.unaliased([_FakeCupy(x[:40]), _FakeCupy(x[39:79])], {}, g[:2]) is None
