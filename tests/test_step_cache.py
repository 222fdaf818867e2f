"""The NumPy fast path of ``ao.step`` caches what it checked; edits between steps must be seen.

Under buffer donation the same parameter leaves and the same state come back
at the next step, so the fast path keeps its checks, kernel and flattened views
(agnopt/_kernels/cpu.py, ``_Entry``). Each test edits something the cache
holds between two steps and compares with the generic path (``AGNOPT_FAST=0``)
run on copies.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import agnopt as ao
from agnopt._kernels import cpu as _cpu

MODES = ["numpy"] + (["numba"] if _cpu.HAVE_NUMBA else [])


def _generic(opt, p, grads, monkeypatch):
    """Parameters after the generic steps on copies of ``p`` with each gradient of ``grads``."""
    monkeypatch.setenv("AGNOPT_FAST", "0")
    q = copy.deepcopy(p)
    s = opt.init(q)
    for g in grads:
        q, s = ao.step(opt, q, g, s)
    return q, s


def _adam_state(s):
    return next(sub for sub in s if hasattr(sub, "mu"))


def _grads(shape_or_tree, k, seed=0):
    rng = np.random.default_rng(seed)
    if isinstance(shape_or_tree, dict):
        return [{key: rng.standard_normal(v.shape) for key, v in shape_or_tree.items()} for _ in range(k)]
    return [rng.standard_normal(shape_or_tree) for _ in range(k)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["adam", "adam-amsgrad", "sgd-dampening", "rmsprop-schedule", "adagrad"])
def test_many_steps_equal_generic_and_state_is_reused(mode, name, monkeypatch):
    make = {
        "adam": lambda: ao.adam(1e-2),
        "adam-amsgrad": lambda: ao.adam(1e-2, amsgrad=True),
        "sgd-dampening": lambda: ao.sgd(1e-2, momentum=0.8, dampening=0.3),
        "rmsprop-schedule": lambda: ao.rmsprop(ao.exponential_decay(1e-2, 2, 0.8), centered=True),
        "adagrad": lambda: ao.adagrad(0.1),
    }[name]
    opt = make()
    p0 = np.linspace(-1, 1, 37)
    grads = _grads(37, 1100)  # past one block of the bias-correction table (1024 counts)
    want, want_s = _generic(opt, p0, grads, monkeypatch)
    monkeypatch.setenv("AGNOPT_FAST", mode)
    p = p0.copy()
    s = opt.init(p)
    states = []
    for g in grads:
        p, s = ao.step(opt, p, g, s)
        states.append(s)
    np.testing.assert_array_equal(p, want)
    for a, b in zip(ao.tree_leaves(s), ao.tree_leaves(want_s)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert states[-1] is states[-2]  # counters incremented in place: the state tuple comes back


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("t", [1, 2, 1023, 1024, 1025, 5000, 2**31 - 1])
def test_bias_correction_table_equals_the_generic_expression(dt, t):
    for beta in (0.9, 0.999, 0.95, 0.5):
        want = (1.0 - beta ** np.asarray(t, dtype=np.int32).astype(dt))[()]
        got = _cpu._bias_correction(np.dtype(dt), beta, t)
        assert got == want and got.dtype == np.dtype(dt)


@pytest.mark.parametrize("mode", MODES)
def test_state_leaf_replaced_between_steps(mode, monkeypatch):
    monkeypatch.setenv("AGNOPT_FAST", mode)
    opt = ao.adam(1e-2)
    p = {"a": np.ones(5), "b": np.ones(3)}
    g = {"a": np.full(5, 0.5), "b": np.full(3, -0.5)}
    s = opt.init(p)
    p, s = ao.step(opt, p, g, s)
    _adam_state(s).mu["a"] = np.full(5, 2.0)  # a user edit of the state dict: must be read again
    ref_p = copy.deepcopy(p)
    ref_s = copy.deepcopy(s)
    monkeypatch.setenv("AGNOPT_FAST", "0")
    want, _ = ao.step(opt, ref_p, g, ref_s)
    monkeypatch.setenv("AGNOPT_FAST", mode)
    got, _ = ao.step(opt, p, g, s)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("mode", MODES)
def test_param_made_read_only_between_steps_is_not_written(mode, monkeypatch):
    monkeypatch.setenv("AGNOPT_FAST", mode)
    opt = ao.adam(1e-2)
    p = np.ones(4)
    s = opt.init(p)
    p, s = ao.step(opt, p, np.ones(4), s)
    p.flags.writeable = False
    before = p.copy()
    p2, _ = ao.step(opt, p, np.ones(4), s)
    np.testing.assert_array_equal(p, before)  # generic path: the read-only array is left alone
    assert p2 is not p


@pytest.mark.parametrize("mode", MODES)
def test_same_array_twice_in_params_goes_generic(mode, monkeypatch):
    opt = ao.sgd(0.1)
    a = np.ones(3)
    g = [np.ones(3), np.ones(3)]
    monkeypatch.setenv("AGNOPT_FAST", "0")
    want, _ = ao.step(opt, [a.copy(), a.copy()], g, opt.init([a, a]))
    monkeypatch.setenv("AGNOPT_FAST", mode)
    got, _ = ao.step(opt, [a, a], g, opt.init([a, a]))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("mode", MODES)
def test_non_finite_schedule_on_a_cached_step_writes_nothing(mode, monkeypatch):
    monkeypatch.setenv("AGNOPT_FAST", mode)
    opt = ao.adam(lambda c: 1e-2 if int(c) < 2 else float("nan"))
    p = np.ones(4)
    s = opt.init(p)
    for _ in range(2):
        p, s = ao.step(opt, p, np.ones(4), s)
    before_p = p.copy()
    before = [np.array(x, copy=True) for x in ao.tree_leaves(s)]
    with pytest.raises(ValueError, match="non-finite"):
        ao.step(opt, p, np.ones(4), s)
    np.testing.assert_array_equal(p, before_p)
    for a, b in zip(ao.tree_leaves(s), before):
        np.testing.assert_array_equal(np.asarray(a), b)  # the counters too


@pytest.mark.parametrize("mode", MODES)
def test_grads_aliasing_a_state_buffer_go_generic(mode, monkeypatch):
    monkeypatch.setenv("AGNOPT_FAST", mode)
    opt = ao.adam(1e-2)
    p = np.ones(4)
    s = opt.init(p)
    p, s = ao.step(opt, p, np.ones(4), s)
    ref = copy.deepcopy((p, s))
    monkeypatch.setenv("AGNOPT_FAST", "0")
    want, _ = ao.step(opt, ref[0], _adam_state(ref[1]).mu, ref[1])
    monkeypatch.setenv("AGNOPT_FAST", mode)
    got, _ = ao.step(opt, p, _adam_state(s).mu, s)
    np.testing.assert_array_equal(got, want)


def test_cache_does_not_outlive_the_optimizer(monkeypatch):
    import gc
    import weakref

    monkeypatch.setenv("AGNOPT_FAST", "numpy")
    opt = ao.adam(1e-2)
    p = np.ones(1000)
    s = opt.init(p)
    p, s = ao.step(opt, p, np.ones(1000), s)
    ref = weakref.ref(p)
    n_before = len(_cpu._CACHE)
    del opt, p, s
    other = ao.sgd(0.1)
    ao.step(other, np.ones(2), np.ones(2), other.init(np.ones(2)))  # another one is the last one
    gc.collect()
    assert ref() is None  # the parameters are freed with the optimizer
    assert len(_cpu._CACHE) <= n_before
