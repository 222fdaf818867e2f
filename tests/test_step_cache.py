"""The NumPy fast path of ``ao.step`` caches what it checked; edits between steps must be seen.

Under buffer donation the same parameter leaves and the same state come back
at the next step, so the fast path keeps its checks, kernel and flattened views
(agnopt/_kernels/cpu.py, ``_Entry``). Each test edits something the cache
holds between two steps and compares with the generic path (``AGNOPT_FAST=0``)
run on copies.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import agnopt as ao
from agnopt._kernels import cpu as _cpu
from agnopt._kernels import multi as _multi
from conftest import to_numpy

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
    for beta in (0.9, 0.999, 0.95, 0.5, 0.0):
        lb = math.log(beta) if beta else -math.inf
        want = -np.expm1(np.asarray(t, dtype=np.int32).astype(dt) * lb)[()]
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


# ---------------------------------------------------------------- many small leaves
# numba: the leaves of at most multi.SMALL elements are stepped by one call of the
# multi-leaf kernel (gradients read in place by address, or copied into one buffer);
# the results must be those of one kernel call per leaf and of the generic path, bit
# for bit.

NUMBA = pytest.mark.skipif(not _cpu.HAVE_NUMBA, reason="numba is not installed")
MANY = {
    "adam": lambda: ao.adam(1e-2),
    "adamw-amsgrad-schedule": lambda: ao.adamw(ao.exponential_decay(1e-2, 2, 0.8), amsgrad=True,
                                               weight_decay=0.1),
    "adam-eps_root-wd": lambda: ao.adam(1e-2, eps_root=1e-8, weight_decay=0.1),
    "rmsprop-centered-momentum": lambda: ao.rmsprop(1e-2, centered=True, momentum=0.5, weight_decay=0.01),
    "rmsprop-nesterov-eps_in_sqrt": lambda: ao.rmsprop(1e-2, momentum=0.5, nesterov=True, eps_in_sqrt=True),
    "adagrad": lambda: ao.adagrad(0.1, initial_accumulator_value=0.1, weight_decay=0.05),
    "sgd-dampening": lambda: ao.sgd(1e-2, momentum=0.8, dampening=0.3, weight_decay=0.1),
    "sgd-nesterov": lambda: ao.sgd(1e-2, momentum=0.9, nesterov=True),
    "sgd": lambda: ao.sgd(1e-2),
    "sign_sgd": lambda: ao.sign_sgd(1e-2),
}


def _many_leaves(dt, rng, big=True, other_dtype=False):
    """A tree of ~60 leaves: 0-d, 1-D, 2-D, 3-D, empty, and (``big``) one leaf over multi.SMALL."""
    shapes = [(), (0,), (1,), (7,), (3, 5), (2, 3, 4), (100,), (17, 9)] * 7 + [(31,), (1, 1)]
    tree = {f"k{i:02d}": rng.standard_normal(s).astype(dt) for i, s in enumerate(shapes)}
    tree["nested"] = [rng.standard_normal(5).astype(dt), {"x": rng.standard_normal((4, 4)).astype(dt)}]
    if big:
        tree["big"] = rng.standard_normal(_multi.SMALL + 3).astype(dt)
    if other_dtype:
        tree["f64"] = rng.standard_normal(9)
    return tree


def _run_many(opt, p, grads, s, mode, monkeypatch):
    monkeypatch.setenv("AGNOPT_FAST", mode)
    for g in grads:
        p, s = ao.step(opt, p, g, s)
    return p, s


@NUMBA
@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("name", list(MANY))
def test_many_small_leaves_equal_per_leaf_and_generic_bitwise(name, dt, monkeypatch):
    rng = np.random.default_rng(1)
    p0 = _many_leaves(dt, rng, other_dtype=(dt == "float32"))
    grads = [ao.tree_map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), p0) for _ in range(5)]
    for g in grads[1:3]:  # exact zeros: sign and first-step branches
        g["k07"][...] = 0.0
    opt = MANY[name]()
    want, want_s = _run_many(opt, copy.deepcopy(p0), grads, opt.init(copy.deepcopy(p0)), "0", monkeypatch)
    before = dict(_cpu.STATS)
    got, got_s = _run_many(opt, copy.deepcopy(p0), grads, opt.init(copy.deepcopy(p0)), "numba", monkeypatch)
    assert _cpu.STATS["numba"] - before["numba"] == 5 * len(ao.tree_leaves(p0))  # the fast path ran
    e = _cpu._CACHE[id(opt.update)]
    assert e.multi is not None and e.single  # small leaves grouped, the big one (and float64) apart
    monkeypatch.setattr(_multi, "SMALL", -1)  # one kernel call per leaf
    per_leaf, per_leaf_s = _run_many(opt, copy.deepcopy(p0), grads, opt.init(copy.deepcopy(p0)), "numba",
                                     monkeypatch)
    assert _cpu._CACHE[id(opt.update)].multi is None
    for ref in (want, per_leaf):
        for a, b in zip(ao.tree_leaves(got), ao.tree_leaves(ref)):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    for ref_s in (want_s, per_leaf_s):
        assert ao.tree_structure(got_s) == ao.tree_structure(ref_s)
        for a, b in zip(ao.tree_leaves(got_s), ao.tree_leaves(ref_s)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@NUMBA
def test_many_small_leaves_odd_grads(monkeypatch):
    """Gradients the multi-leaf path must take as the generic path does: strided, read-only,
    a parameter itself, another dtype, a wrong shape (the generic path's error)."""
    rng = np.random.default_rng(2)
    p0 = {f"k{i}": rng.standard_normal((4, 6)) for i in range(10)}
    opt = ao.adam(1e-2)

    def grads(kind):
        g = {k: rng.standard_normal(v.shape) for k, v in p0.items()}
        if kind == "strided":
            g["k3"] = rng.standard_normal((6, 4)).T
        elif kind == "read-only":
            g["k4"].flags.writeable = False
        elif kind == "float32":
            g["k5"] = g["k5"].astype(np.float32)
        return g

    gs = [grads(k) for k in ("plain", "strided", "read-only", "float32", "plain")]
    monkeypatch.setenv("AGNOPT_FAST", "0")
    q, s = copy.deepcopy(p0), opt.init(copy.deepcopy(p0))
    for g in gs:
        q, s = ao.step(opt, q, g, s)
    q, s = ao.step(opt, q, {**gs[0], "k6": q["k6"]}, s)  # a gradient that is a parameter
    monkeypatch.setenv("AGNOPT_FAST", "numba")
    p, t = copy.deepcopy(p0), opt.init(copy.deepcopy(p0))
    for g in gs:
        p, t = ao.step(opt, p, g, t)
    p, t = ao.step(opt, p, {**gs[0], "k6": p["k6"]}, t)
    for k in p0:
        np.testing.assert_array_equal(p[k], q[k])
    with pytest.raises(ValueError, match="shape"):
        ao.step(opt, p, {**gs[0], "k2": np.ones((6, 4))}, t)


@NUMBA
def test_many_small_leaves_state_edited_between_steps(monkeypatch):
    """A state buffer replaced inside the state's dict between steps is seen (the kernel
    reads the buffers by address: the cache must be rebuilt)."""
    rng = np.random.default_rng(3)
    p0 = {f"k{i}": rng.standard_normal(5) for i in range(8)}
    g = {k: rng.standard_normal(5) for k in p0}
    opt = ao.adam(1e-2)
    out = []
    for mode in ("0", "numba"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        p, s = copy.deepcopy(p0), opt.init(copy.deepcopy(p0))
        p, s = ao.step(opt, p, g, s)
        _adam_state(s).mu["k2"] = np.full(5, 0.25)
        p, s = ao.step(opt, p, g, s)
        out.append(p)
    for k in p0:
        np.testing.assert_array_equal(out[1][k], out[0][k])


def test_tree_step_equals_flat_array_step(backend, monkeypatch):
    """An elementwise optimizer on a tree of many leaves gives, leaf by leaf, what it gives on
    the same values as one flat array (every backend; the fast path where there is one)."""
    case, xp, device = backend
    monkeypatch.setenv("AGNOPT_FAST", "1")
    rng = np.random.default_rng(4)
    sizes = [1, 3, 10, 37, 100] * 6
    flat0 = rng.standard_normal(sum(sizes))
    gflat = [rng.standard_normal(flat0.size) for _ in range(4)]

    def split(a):
        parts = np.split(a, np.cumsum(sizes)[:-1])
        return {f"l{i:02d}": xp.asarray(x.copy(), dtype=xp.float64, device=device) for i, x in enumerate(parts)}

    for make in (lambda: ao.adam(1e-2, amsgrad=True), lambda: ao.rmsprop(1e-2, centered=True, momentum=0.5)):
        opt = make()
        f = xp.asarray(flat0.copy(), dtype=xp.float64, device=device)
        t = split(flat0)
        sf, st = opt.init(f), opt.init(t)
        for g in gflat:
            f, sf = ao.step(opt, f, xp.asarray(g.copy(), dtype=xp.float64, device=device), sf)
            t, st = ao.step(opt, t, split(g), st)
        got = np.concatenate([to_numpy(t[k]).reshape(-1) for k in sorted(t)])
        np.testing.assert_array_equal(got, to_numpy(f))


def test_optimizer_flat_gathers_grad_trees_like_copyto(monkeypatch):
    """Optimizer(flat=True).step(grad tree) copies the gradients into its flat buffer in one
    numpy.concatenate where it can; the same values as the per-leaf copyto (float64 grads
    into float32 parameters, a broadcast leaf, a strided leaf, another key order)."""
    monkeypatch.setenv("AGNOPT_FAST", "1")
    rng = np.random.default_rng(5)
    p0 = {f"k{i}": rng.standard_normal((3, 4)).astype(np.float32) for i in range(6)}
    cases = [
        {k: rng.standard_normal((3, 4)).astype(np.float32) for k in p0},
        {k: rng.standard_normal((3, 4)) for k in reversed(list(p0))},  # float64, another key order
        {**{k: rng.standard_normal((3, 4)).astype(np.float32) for k in p0}, "k2": np.float32(0.5)},
        {**{k: rng.standard_normal((3, 4)).astype(np.float32) for k in p0},
         "k3": rng.standard_normal((4, 3)).astype(np.float32).T},
    ]
    o = ao.Optimizer(ao.adam(1e-2), copy.deepcopy(p0), flat=True)
    want = ao.Optimizer(ao.adam(1e-2), copy.deepcopy(p0), flat=True)
    for g in cases:
        o.step(g)
        for k in p0:  # the reference: one copyto per leaf, then the step on opt.grads
            np.copyto(want.grads[k], g[k], casting="same_kind")
        want.step()
        np.testing.assert_array_equal(o._flat_g, want._flat_g)
        for k in p0:
            np.testing.assert_array_equal(o.params[k], want.params[k])
    with pytest.raises(ValueError):
        o.step({**cases[0], "k1": np.ones((4, 3), np.float32)})


def _state_buffer(s, name):
    return next(sub for sub in s if hasattr(sub, name))


def _compare_runs(runs):
    for k, (want, got) in enumerate(zip(runs["0"], runs["numba"])):
        assert ao.tree_structure(got) == ao.tree_structure(want)
        for a, b in zip(ao.tree_leaves(got), ao.tree_leaves(want)):
            assert np.asarray(a).dtype == np.asarray(b).dtype, k
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"step {k}")


@NUMBA
@pytest.mark.parametrize("name", ["adam", "rmsprop-centered-momentum"])
def test_many_small_leaves_same_grad_arrays_read_in_place_and_the_addresses_invalidated(name, monkeypatch):
    """The same gradient arrays coming back are read where they lie (their addresses taken at
    their second step). New values in the same arrays, arrays swapped between keys or
    replaced, views of a parameter, strided, another dtype, another key order: all give the
    generic path's values bit for bit, step after step."""
    rng = np.random.default_rng(6)
    shapes = [(), (1,), (7,), (3, 5), (2, 3, 4), (7,), (100,), (5, 3)]
    p0 = {f"k{i}": rng.standard_normal(s) for i, s in enumerate(shapes)}
    p0["big"] = rng.standard_normal(_multi.SMALL + 5)
    vals = [ao.tree_map(lambda x: rng.standard_normal(x.shape), p0) for _ in range(13)]

    def grads(k, G, p):
        for key in G:  # new values in the same arrays
            G[key][...] = vals[k][key]
        if k == 3:  # two arrays of one shape swapped between keys (for good)
            G["k2"], G["k5"] = G["k5"], G["k2"]
        elif k == 5:  # an array replaced (for good)
            G["k3"] = vals[5]["k3"].copy()
        elif k == 7:  # a view of the big leaf's parameter (stepped by its own call)
            return {**G, "k6": p["big"][:100]}
        elif k == 8:  # strided
            return {**G, "k3": vals[8]["k7"].T}
        elif k == 9:  # another dtype: the generic path
            return {**G, "k4": vals[9]["k4"].astype(np.float32)}
        elif k == 10:  # another insertion order
            return dict(reversed(list(G.items())))
        return G

    runs: dict = {}
    for mode in ("0", "numba"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        opt = MANY[name]()
        p, s = copy.deepcopy(p0), opt.init(copy.deepcopy(p0))
        G = {key: np.empty_like(v) for key, v in p0.items()}
        runs[mode] = out = []
        for k in range(len(vals)):
            p, s = ao.step(opt, p, grads(k, G, p), s)
            out.append(copy.deepcopy((p, s)))
            if mode == "numba" and k != 9:
                m = _cpu._CACHE[id(opt.update)].multi
                if k in (1, 2, 4, 6, 11, 12):  # read in place
                    small = [ao.tree_leaves(G)[i] for i in m.idx]  # all but "big"
                    assert m.gstate == _multi.IN_PLACE and len(small) == len(m.glast) == 8
                    assert all(a is b for a, b in zip(m.glast, small))
                else:  # the first step with these arrays: copied
                    assert m.gstate == _multi.COPIED and m.gbuf is not None
    _compare_runs(runs)


@NUMBA
def test_many_small_leaves_same_grad_arrays_overlapping_the_step_are_copied(monkeypatch):
    """The same gradient arrays coming back, views of a parameter and of a state buffer of leaves
    stepped before theirs (and one is a parameter itself), are copied at every step: read where
    they lie, they would be read after those leaves were written."""
    rng = np.random.default_rng(8)
    p0 = {f"k{i}": rng.standard_normal(7) for i in range(6)}
    vals = [{k: rng.standard_normal(7) for k in p0} for _ in range(5)]
    runs: dict = {}
    for mode in ("0", "numba"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        opt = ao.adam(1e-2)
        p, s = copy.deepcopy(p0), opt.init(copy.deepcopy(p0))
        G = {k: np.empty(7) for k in p0}
        runs[mode] = out = []
        for k in range(len(vals)):
            for key in ("k0", "k1", "k2"):
                G[key][...] = vals[k][key]
            if mode == "0" or k == 0:  # the same objects at every step of the fast run (live views)
                G["k3"] = p["k0"][:]
                G["k4"] = _state_buffer(s, "nu").nu["k1"][:]
                G["k5"] = p["k2"]
            p, s = ao.step(opt, p, G, s)
            out.append(copy.deepcopy((p, s)))
            if mode == "numba":
                m = _cpu._CACHE[id(opt.update)].multi
                assert m.gstate == (_multi.COPIED if k == 0 else _multi.MUST_COPY)
    _compare_runs(runs)


@NUMBA
def test_many_small_leaves_cached_grads_of_another_structure_raise_as_generic(monkeypatch):
    """After the gradient addresses are cached, gradients of other keys, a list instead of a
    dict, or a leaf of another shape raise the generic path's error (nothing written), as do
    parameters and gradients passed as lists of the same arrays (the state is the dict's: it
    names ``state.mu``); then the dict steps on as the generic path does."""
    rng = np.random.default_rng(7)
    p0 = {f"k{i}": rng.standard_normal(6) for i in range(5)}
    G = {k: rng.standard_normal(6) for k in p0}
    bad = [{**{k: v for k, v in G.items() if k != "k0"}, "z": G["k0"]}, list(G.values()),
           {**G, "k1": np.ones((2, 3))}]
    errors, results = [], []
    for mode in ("0", "numba"):
        monkeypatch.setenv("AGNOPT_FAST", mode)
        opt = ao.adam(1e-2)
        p, s = copy.deepcopy(p0), opt.init(copy.deepcopy(p0))
        for _ in range(2):
            p, s = ao.step(opt, p, G, s)
        before = copy.deepcopy((p, s))
        for g in bad:
            with pytest.raises(ValueError) as info:
                ao.step(opt, p, g, s)
            errors.append(type(info.value))
        for a, b in zip(ao.tree_leaves((p, s)), ao.tree_leaves(before)):  # nothing was written
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        with pytest.raises(ValueError, match=r"^state\.mu must have the same tree structure"):
            ao.step(opt, list(p.values()), list(G.values()), s)
        results.append(ao.step(opt, p, G, s))
    assert errors[:3] == errors[3:]
    assert ao.tree_structure(results[0]) == ao.tree_structure(results[1])
    for a, b in zip(ao.tree_leaves(results[0]), ao.tree_leaves(results[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
