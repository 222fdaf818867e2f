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
