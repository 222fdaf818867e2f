"""Tree utilities and the backend layer."""

from __future__ import annotations

import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest

import agnopt as ao
from agnopt._core.backend import resolve, resolve_dtype


class P(NamedTuple):
    a: object
    b: object


def test_flatten_roundtrip_and_order():
    tree = {"z": [np.zeros(1), (np.ones(2),)], "a": P(np.zeros(3), None), "m": np.ones(4)}
    leaves, td = ao.tree_flatten(tree)
    # dict keys in sorted order, None has no leaves
    assert [x.shape for x in leaves] == [(3,), (4,), (1,), (2,)]
    back = ao.tree_unflatten(td, leaves)
    assert isinstance(back["a"], P) and back["a"].b is None
    assert ao.tree_structure(back) == td
    assert td.num_leaves == 4
    assert ao.tree_paths(tree) == ["['a'].a", "['m']", "['z'][0]", "['z'][1][0]"]


def test_tree_map_multiple_trees():
    t1 = {"x": np.array([1.0]), "y": [np.array([2.0])]}
    t2 = {"x": np.array([10.0]), "y": [np.array([20.0])]}
    out = ao.tree_map(lambda a, b: a + b, t1, t2)
    assert float(out["y"][0][0]) == 22.0
    with pytest.raises(ValueError, match="missing keys"):
        ao.tree_map(lambda a, b: a, t1, {"x": np.array([1.0])})


def test_check_same_structure_messages():
    with pytest.raises(ValueError, match=r"grads\[0\]: a dict where a leaf of type ndarray was expected|grads\[0\]: a dict"):
        ao.check_same_structure([{"a": np.zeros(1)}], [np.zeros(1)])
    with pytest.raises(ValueError, match=r"grads\.b: shape \(2,\) != params shape \(3,\)"):
        ao.check_same_structure(P(np.zeros(1), np.zeros(2)), P(np.zeros(1), np.zeros(3)))


def test_resolve_reports_namespace_and_device(xp, device):
    bk = resolve({"a": xp.zeros((2,), device=device), "b": [xp.ones((3,), device=device)]})
    assert bk.xp is not None
    from array_api_compat import device as dev_of

    assert bk.device == dev_of(xp.zeros((2,), device=device))


def test_is_writeable():
    assert ao.is_writeable(np.zeros(2))
    ro = np.zeros(2)
    ro.flags.writeable = False
    assert not ao.is_writeable(ro)
    jnp = pytest.importorskip("jax.numpy")
    assert not ao.is_writeable(jnp.zeros(2))


def test_resolve_dtype_names():
    import array_api_compat.numpy as xp

    assert resolve_dtype(xp, "float32", None, "mu_dtype") == xp.float32
    assert resolve_dtype(xp, None, xp.float64, "mu_dtype") == xp.float64
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as txp

    # a NumPy dtype given for torch parameters is translated by name
    assert resolve_dtype(txp, np.float32, None, "mu_dtype") == torch.float32


def test_python_m_agnopt_tour_runs():
    r = subprocess.run([sys.executable, "-m", "agnopt", "tour", "--steps", "20", "--backends", "numpy"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("numpy")]
    # 6 optimizers x 2 problems, then Newton, Newton-CG, LM, then 5 optimizers on the
    # rotated quadratic and fisher_scoring / natural_gradient
    assert len(lines) == 12 + 3 + 7
    for l in lines:
        v = float(l.split()[-2])
        assert np.isfinite(v)
    invariant = {l.split()[2]: l.split()[3] for l in lines[15:]}
    assert invariant["full_matrix_adagrad"] == "yes"  # rotation invariant: the rotation costs nothing
    assert invariant["fisher_scoring"] == "yes" and invariant["natural_gradient"] == "yes"
    # the second-order rows converge: Newton's Rosenbrock value is ~0
    newton = [l for l in lines if "minimize newton rosenbrock" in l]
    assert float(newton[0].split()[-2]) < 1e-20


def test_device_scope_makes_the_arrays_device_current(xp, device):
    """Arrays created under ``device_scope(device)`` without ``device=`` land on ``device``."""
    from array_api_compat import device as dev_of

    from agnopt._core.backend import device_scope

    x = xp.ones((3,), device=device)
    with device_scope(dev_of(x)):
        made = [xp.asarray([1.0, 2.0], device=dev_of(x)), xp.zeros_like(x)]
    for y in made:
        assert dev_of(y) == dev_of(x)
    if type(x).__module__.startswith("cupy"):
        import cupy

        cur = cupy.cuda.Device().id
        with device_scope(dev_of(x)):
            assert cupy.cuda.Device().id == dev_of(x).id
        assert cupy.cuda.Device().id == cur  # restored


def test_native_numpy_namespace_is_numpy_bit_for_bit():
    """native_namespace's NumPy namespace calls the ufunc / method NumPy's own
    functions end in: same values, dtypes, shapes and errors (every axis form,
    keepdims, scalars, bool / int / float inputs)."""
    import array_api_compat
    import array_api_compat.numpy as cnp

    from agnopt._core.backend import native_namespace

    nx = native_namespace(cnp)
    assert array_api_compat.is_numpy_namespace(nx) and nx.__name__ == "numpy"
    rng = np.random.default_rng(0)

    def same(a, b):
        assert type(a) is type(b)
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")

    def outcome(fn, *a, **k):
        try:
            return fn(*a, **k)
        except Exception as e:  # the same error type as NumPy's
            return type(e)

    for shape in [(), (1,), (3,), (2, 5), (4, 3, 2), (0,), (2, 0)]:
        x = rng.standard_normal(shape)
        if x.size:
            x.flat[0] = np.nan if len(shape) > 1 else x.flat[0]
        arrays = [x, x > 0, np.nan_to_num(10 * x).astype(np.int8), x.astype(np.float32),
                  np.float64(1.5), np.True_]
        axes = [None] + list(range(-len(shape), len(shape))) + ([(0,)] if shape else [])
        for a in arrays:
            for ax in axes if getattr(a, "ndim", 0) == len(shape) else [None]:
                for kd in (False, True):
                    for name in ("sum", "any", "all", "max", "min"):
                        r1 = outcome(getattr(np, name), a, axis=ax, keepdims=kd)
                        r2 = outcome(getattr(nx, name), a, axis=ax, keepdims=kd)
                        if isinstance(r1, type) or isinstance(r2, type):
                            assert r1 is r2, (name, shape, ax)
                        else:
                            same(r1, r2)
            if getattr(a, "ndim", 0) >= 1 and a.dtype.kind == "f":
                for ax in [None, -1, 0]:
                    same(np.linalg.vector_norm(a, axis=ax), nx.linalg.vector_norm(a, axis=ax))
            same(np.astype(a, np.float32), nx.astype(a, np.float32))
    for dt in (np.float64, np.complex128, np.int32, np.bool_):
        for kind in ("real floating", "complex floating", ("integral", "bool")):
            assert nx.isdtype(np.dtype(dt), kind) == np.isdtype(np.dtype(dt), kind)
    parts = [rng.standard_normal((2, 3)) for _ in range(3)]
    for ax in range(-3, 3):
        s1, s2 = np.stack(parts, axis=ax), nx.stack(parts, axis=ax)
        same(s1, s2)
        assert s1.strides == s2.strides
    with pytest.raises(ValueError):
        nx.stack([np.ones(3), np.ones(2)])
    x = rng.standard_normal((2, 3, 4))
    same(nx.reshape(x, (6, 4)), np.reshape(x, (6, 4)))
    same(nx.matrix_transpose(x), np.matrix_transpose(x))
    # a list holding a NumPy scalar goes to numpy.stack (not the ndarray-only path)
    same(nx.stack([np.ones(()), np.float64(2.0)]), np.stack([np.ones(()), np.float64(2.0)]))
    z = rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3))
    for a in (z, z.astype(np.complex64), x, np.complex128(1 + 2j), 3.0):
        same(nx.real(a), np.real(a))
        same(nx.imag(a), np.imag(a))
    same(nx.linalg.matrix_transpose(x), np.linalg.matrix_transpose(x))


def test_leaves_like_matches_tree_flatten_or_says_none():
    from typing import NamedTuple

    from agnopt._core.tree import leaves_like, tree_flatten

    class Pair(NamedTuple):
        a: object
        b: object

    base = {"b": 2, "a": 1, "c": 3}
    trees = [base, {"a": 1, "b": 2, "c": 3}, [1, 2, 3], (1, [2, {"z": 3, "y": 4}]), Pair(1, {"k": 2}), 7,
             {"w": {"x": 1}, "v": [2, 3]}]
    for t in trees:
        leaves, td = tree_flatten(t)
        assert leaves_like(t, td) == leaves
    leaves, td = tree_flatten(base)
    assert leaves_like({"c": 3, "a": 1, "b": 2}, td) == leaves  # insertion order does not matter
    for other in ({"a": 1, "b": 2}, {"a": 1, "b": 2, "d": 3}, [1, 2, 3], 5, None):
        assert leaves_like(other, td) is None
    # the same keys: the objects at the leaf positions, not checked to be leaves (documented)
    assert leaves_like({"a": 1, "b": 2, "c": None}, td) == [1, 2, None]
    assert leaves_like([1, 2], tree_flatten([1, 2, 3])[1]) is None
    assert leaves_like({"a": 1}, tree_flatten([1])[1]) is None
    assert leaves_like(Pair(1, 2), tree_flatten((1, 2))[1]) is None
    assert leaves_like([1, 2], tree_flatten(7)[1]) is None


def test_same_leaves_is_leaves_like_then_identity(monkeypatch):
    """``same_leaves`` (the step cache's test that the same tree of the same arrays came back)
    says True exactly when ``leaves_like`` finds the very objects in order; shared TreeDefs of
    dicts/lists of leaves keep working after their table is cleared."""
    from agnopt._core import tree as T

    a, b, c = object(), object(), object()
    base = {"b": b, "a": a, "c": c}
    leaves, td = T.tree_flatten(base)
    assert leaves == [a, b, c]
    assert T.same_leaves(base, td, leaves) and T.same_leaves({"a": a, "b": b, "c": c}, td, leaves)
    for other in ({"a": a, "b": c, "c": b}, {"a": a, "b": b, "c": [c]}, {"a": a, "b": b}, {"a": a, "b": b, "d": c},
                  [a, b, c], (a, b, c), a, None, {"a": a, "b": b, "c": object()}):
        assert not T.same_leaves(other, td, leaves), other
    assert not T.same_leaves(base, td, [a, b])
    lt = T.tree_flatten([a, b, c])[1]
    assert T.same_leaves([a, b, c], lt, [a, b, c]) and not T.same_leaves([a, c, b], lt, [a, b, c])
    assert not T.same_leaves({"a": a, "b": b, "c": c}, lt, [a, b, c])
    nested = {"x": [a, {"y": b}], "z": c}
    assert T.same_leaves(nested, T.tree_flatten(nested)[1], [a, b, c])
    assert not T.same_leaves({"x": [a, {"y": c}], "z": b}, T.tree_flatten(nested)[1], [a, b, c])
    # a TreeDef equal to a shared one but not it, and the shared one after the table is cleared
    twin = T.TreeDef("dict", dict, ("a", "b", "c"), (T._LEAF,) * 3)
    assert twin == td and twin is not td and not T._is_flat(twin)
    assert T.leaves_like(base, twin) == leaves and T.same_leaves(base, twin, leaves)
    assert T.tree_unflatten(twin, leaves) == {"a": a, "b": b, "c": c}
    monkeypatch.setattr(T, "_FLAT_DEFS", {})
    monkeypatch.setattr(T, "_FLAT_IDS", {})
    assert not T._is_flat(td)
    assert T.leaves_like(base, td) == leaves and T.same_leaves(base, td, leaves)
    assert not T.same_leaves({"a": a, "b": c, "c": b}, td, leaves)
    assert T.tree_unflatten(td, leaves) == {"a": a, "b": b, "c": c}
    assert T.tree_flatten(base)[1] == td and T._is_flat(T.tree_flatten(base)[1])
