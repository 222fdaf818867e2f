"""Several GPUs: the public entry points run in the CuPy device context of their arrays.

array-api-compat's CuPy creation functions ignore ``device=`` and CuPy
kernels run on the *current* device, so a solve on arrays of GPU 1 while GPU
0 is current must run inside ``cupy.cuda.Device(1)`` (issue 14). No second GPU
here: a stand-in ``cupy`` module records which device each entry point made
current, and a stand-in CuPy array (a class from a ``cupy`` module) is passed
where the entry point takes its arrays. The entry point then fails on the
stand-in (it is no array), after entering the scope; on NumPy and torch no
scope is entered at all. The real several-GPU runs are
``tests/test_fast_paths.py::test_cuda_second_device`` (skipped with fewer
than two GPUs).
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import agnopt as ao
from agnopt._core.backend import on_device_of, tree_device_scope

ENTERED: list = []


class _Device:
    def __init__(self, i):
        self.id = i

    def __enter__(self):
        ENTERED.append(self.id)
        return self

    def __exit__(self, *exc):
        return False


_Device.__module__ = "cupy.cuda.device"


class _FakeCupyArray:
    """Only what tree_device_scope reads: the type's module and ``.device``."""

    def __init__(self, i):
        self.device = _Device(i)


_FakeCupyArray.__module__ = "cupy._core.core"


@pytest.fixture(autouse=True)
def fake_cupy(monkeypatch):
    mod = types.ModuleType("cupy")
    mod.cuda = types.SimpleNamespace(Device=_Device)
    monkeypatch.setitem(sys.modules, "cupy", mod)
    ENTERED.clear()
    yield


def test_tree_device_scope_finds_a_leaf_in_nested_trees():
    a = _FakeCupyArray(1)
    for tree in (a, [a], {"w": (a, a)}, ({"b": [a]},)):
        with tree_device_scope(tree):
            pass
    assert ENTERED == [1, 1, 1, 1]
    for other in (np.zeros(3), {"w": np.zeros(2)}, [], {}, None, 3.0):
        with tree_device_scope(other):
            pass
    assert ENTERED == [1, 1, 1, 1]  # nothing entered for non-CuPy trees


def test_on_device_of_positional_and_keyword():
    seen = []

    @on_device_of(1, "x0")
    def f(fun, x0=None):
        seen.append(list(ENTERED))
        return x0

    a = _FakeCupyArray(3)
    assert f(None, a) is a and f(None, x0=a) is a
    assert seen == [[3], [3, 3]]
    f(None, np.ones(2))
    assert ENTERED == [3, 3]


def _enters(call):
    """The device ids entered while ``call`` ran (its error on the stand-in is expected)."""
    ENTERED.clear()
    try:
        call()
    except Exception:
        pass
    return list(ENTERED)


@pytest.mark.parametrize("entry", [
    "least_squares", "curve_fit", "tall_least_squares", "minimize", "fisher_scoring",
    "apply_updates", "chain.init", "chain.update", "apply_if_finite.update", "load_state_dict",
])
def test_entry_points_enter_the_arrays_device(entry):
    a = _FakeCupyArray(1)
    opt = ao.adam(1e-3)
    calls = {
        "least_squares": lambda x: ao.least_squares(lambda v: v, x),
        "curve_fit": lambda x: ao.curve_fit(lambda t, p: t * p, np.ones(3), x),
        "tall_least_squares": lambda x: ao.tall_least_squares(lambda v: v, x),
        "minimize": lambda x: ao.minimize(lambda v: v, x),
        "fisher_scoring": lambda x: ao.fisher_scoring(lambda v: v, x, np.ones(3)),
        "apply_updates": lambda x: ao.apply_updates(x, x),
        "chain.init": lambda x: opt.init({"w": x}),
        "chain.update": lambda x: opt.update({"w": x}, (), {"w": x}),
        "apply_if_finite.update": lambda x: ao.apply_if_finite(opt).update([x], (), [x]),
        "load_state_dict": lambda x: ao.load_state_dict((x,), {}),
    }
    assert _enters(lambda: calls[entry](a)) == [1]
    # NumPy arrays: no device context
    assert _enters(lambda: calls[entry](np.ones(3))) == []


def test_numpy_results_unchanged_through_the_wrappers():
    p = {"w": np.linspace(-1.0, 1.0, 5)}
    opt = ao.adam(1e-2)
    s = opt.init(p)
    u, s = opt.update({"w": np.ones(5)}, s, p)
    np.testing.assert_allclose(ao.apply_updates(p, u)["w"], p["w"] - 1e-2 / (1 + 1e-8), rtol=1e-14)
    assert ENTERED == []


def test_warnings_still_point_at_the_caller():
    """The wrappers add a frame: the entry points' warnings are issued one level higher."""
    with pytest.warns(ao.OptimizeWarning, match="Covariance") as rec:
        ao.curve_fit(lambda t, a, b: a * t + b * t, np.arange(5.0), 2.0 * np.arange(5.0), p0=[1.0, 1.0])
    assert [r.filename for r in rec if issubclass(r.category, ao.OptimizeWarning)] == [__file__]
    with pytest.warns(ao.OptimizeWarning, match="Unknown solver options") as rec:
        ao.minimize(lambda v: (v * v).sum(), np.ones(2), options={"nope": 1})
    assert [r.filename for r in rec if issubclass(r.category, ao.OptimizeWarning)] == [__file__]
