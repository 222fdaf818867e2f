"""The parameters a step updates are the ones in ``opt.params`` now; a state built for other
parameters is refused with a ``ValueError`` naming the state and the leaf.

Found in review: ``Optimizer.step`` on the generic path (any user chain, e.g.
``chain(clip_by_global_norm(10), sgd(0.1))``) wrote the new values into the arrays given at
construction and then reset ``opt.params`` to them, so after ``opt.params["w"] = new`` the step
was silently lost (``w`` stayed 5.0; right: 4.9). ``flat=True`` ignored a replaced entry the
same way. And a state paired leaf by leaf with gradients of another tree raised
``StopIteration`` (an extra leaf), a raw broadcast error, or for SOAP and Shampoo reshaped a
transposed gradient into the old preconditioners without a word.
"""

from __future__ import annotations

import numpy as np
import pytest

import agnopt as ao
from conftest import to_numpy

TRANSFORMS = {
    "clip+sgd": lambda: ao.chain(ao.clip_by_global_norm(10.0), ao.sgd(0.1)),  # generic path
    "adam": lambda: ao.adam(0.1),  # fused in-place path where there is one
    "clip+adamw": lambda: ao.chain(ao.clip_by_global_norm(1.0), ao.adamw(0.1, weight_decay=0.1)),
}


def _arr(xp, device, values):
    return xp.asarray(np.array(values, dtype=np.float64), device=device)  # a copy: never p0 itself


def _reference(tx, p0, new_w, grads, n):
    """The functional API from the state of ``p0``, then ``n`` steps from ``w = new_w``."""
    state = tx.init({k: np.array(v) for k, v in p0.items()})
    p = {"b": np.array(p0["b"]), "w": np.array(new_w)}
    for _ in range(n):
        p, state = ao.step(tx, p, {k: np.array(v) for k, v in grads.items()}, state)
    return p


@pytest.mark.parametrize("flat", [False, True], ids=["tree", "flat"])
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_replaced_entry_is_the_one_updated(xp, device, backend, name, flat):
    if flat and str(backend[0]) not in ("numpy", "torch", "cupy", "torch-cuda"):
        pytest.skip("flat=True is for NumPy, torch and CuPy leaves")
    tx = TRANSFORMS[name]()
    p0 = {"w": np.zeros(3), "b": np.ones(2)}
    grads_np = {"w": np.array([0.5, 1.0, 1.5]), "b": np.array([-1.0, 1.0])}
    opt = ao.Optimizer(tx, {k: _arr(xp, device, v) for k, v in p0.items()}, flat=flat)
    opt.params["w"] = new = _arr(xp, device, [5.0, 5.0, 5.0])
    grads = {k: _arr(xp, device, v) for k, v in grads_np.items()}
    for _ in range(3):
        opt.step(grads)
    ref = _reference(TRANSFORMS[name](), p0, [5.0, 5.0, 5.0], grads_np, 3)
    for k in ("w", "b"):
        np.testing.assert_allclose(to_numpy(opt.params[k]), ref[k], rtol=1e-12, atol=1e-14)
    if str(backend[0]) in ("numpy", "torch"):  # writeable arrays: the new one is the one written
        np.testing.assert_allclose(to_numpy(new), ref["w"], rtol=1e-12, atol=1e-14)
        if not flat:
            assert opt.params["w"] is new


def test_the_issue_figure_clip_then_sgd():
    opt = ao.Optimizer(ao.chain(ao.clip_by_global_norm(10.0), ao.sgd(0.1)), {"w": np.zeros(3)})
    opt.params["w"] = np.full(3, 5.0)
    opt.step({"w": np.ones(3)})
    np.testing.assert_array_equal(opt.params["w"], np.full(3, 4.9))


@pytest.mark.parametrize("flat", [False, True], ids=["tree", "flat"])
def test_a_whole_new_tree_is_adopted(flat):
    tx = ao.chain(ao.clip_by_global_norm(10.0), ao.sgd(0.1))
    opt = ao.Optimizer(tx, {"w": np.zeros(3)}, flat=flat)
    opt.step({"w": np.ones(3)})
    mine = np.full(3, 2.0)
    opt.params = {"w": mine}
    opt.step({"w": np.ones(3)})
    np.testing.assert_allclose(opt.params["w"], np.full(3, 1.9), rtol=0, atol=1e-15)
    np.testing.assert_allclose(mine, np.full(3, 1.9), rtol=0, atol=1e-15)


def test_flat_replaced_torch_tensor_follows_the_buffer():
    torch = pytest.importorskip("torch")
    opt = ao.Optimizer(ao.adam(0.1), {"w": torch.zeros(3, dtype=torch.float64)}, flat=True)
    opt.params["w"] = new = torch.full((3,), 5.0, dtype=torch.float64)
    opt.step({"w": torch.ones(3, dtype=torch.float64)})
    expected = 5.0 - 0.1 / (1.0 + 1e-8)  # Adam's first step: lr * g / (|g| + eps)
    np.testing.assert_allclose(new.numpy(), np.full(3, expected), rtol=1e-15)
    np.testing.assert_allclose(opt.params["w"].numpy(), np.full(3, expected), rtol=1e-15)


def test_flat_rejects_a_new_shape_and_a_new_tree_and_keeps_state():
    opt = ao.Optimizer(ao.adam(0.1), {"w": np.zeros(3)}, flat=True)
    opt.step({"w": np.ones(3)})
    before = np.array(opt.params["w"])
    opt.params["w"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"opt.params: leaf 0 was replaced by an array of shape \(4,\)"):
        opt.step({"w": np.ones(3)})
    opt.params = {"w": np.zeros(3), "v": np.zeros(2)}
    with pytest.raises(ValueError, match="opt.params: its tree structure changed"):
        opt.step({"w": np.ones(3)})
    np.testing.assert_array_equal(opt._views[0], before)


# --- a state built for other parameters ------------------------------------------------------

STATEFUL = {
    "adam": lambda: ao.adam(0.1),
    "amsgrad": lambda: ao.adam(0.1, amsgrad=True),
    "adamw": lambda: ao.adamw(0.1),
    "sgd-momentum": lambda: ao.sgd(0.1, momentum=0.9),
    "adagrad": lambda: ao.adagrad(0.1),
    "rmsprop": lambda: ao.rmsprop(0.1),
    "clip+adam": lambda: ao.chain(ao.clip_by_global_norm(1.0), ao.adam(0.1)),
    "muon": lambda: ao.muon(0.1),
    "shampoo": lambda: ao.shampoo(0.1),
    "soap": lambda: ao.soap(0.1),
}
ELEMENTWISE = ["adam", "amsgrad", "adamw", "sgd-momentum", "adagrad", "rmsprop", "clip+adam"]
# Muon and SOAP keep their state as tuples in leaf order (documented): a leaf renamed with the
# same shape keeps its position's state, so they are checked by leaf count and shape only.
BY_POSITION = {"muon", "soap"}

CHANGES = {  # the tree the state is built for is {"w": (m, 2)}
    "transposed": lambda m: {"w": (2, m)},
    "extra leaf": lambda m: {"w": (m, 2), "a": (m, 2)},
    "renamed": lambda m: {"a": (m, 2)},
    "broadcastable": lambda m: {"w": (m, 1)},
}


def _zeros_tree(xp, device, shapes):
    return {k: xp.zeros(s, dtype=xp.float64, device=device) for k, s in shapes.items()}


def _check_refused(xp, device, tx, m, change):
    state = tx.init(_zeros_tree(xp, device, {"w": (m, 2)}))
    shapes = CHANGES[change](m)
    params = {k: xp.asarray(np.full(s, 0.25), device=device) for k, s in shapes.items()}
    grads = {k: xp.ones(s, dtype=xp.float64, device=device) for k, s in shapes.items()}
    with pytest.raises(ValueError, match=r"^state\.") as info:
        ao.step(tx, params, grads, state)
    assert "init(params)" in str(info.value)
    for v in params.values():  # a refused step writes nothing
        np.testing.assert_array_equal(to_numpy(v), 0.25)
    with pytest.raises(ValueError, match=r"^state\."):
        tx.update(grads, state, params)


@pytest.mark.parametrize(("name", "change"), [
    (n, c) for n in STATEFUL for c in CHANGES if not (n in BY_POSITION and c == "renamed")])
def test_state_for_other_parameters_is_refused(xp, device, name, change):
    _check_refused(xp, device, STATEFUL[name](), 3, change)


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_state_for_other_parameters_is_refused_on_the_fused_paths(xp, device, backend, name, change):
    if str(backend[0]) not in ("numpy", "torch", "cupy", "torch-cuda"):
        pytest.skip("the fused in-place kernels are for NumPy, torch and CuPy")
    _check_refused(xp, device, STATEFUL[name](), 20_000, change)  # above the blocked path's size


def test_optimizer_with_a_reshaped_entry_names_the_state():
    opt = ao.Optimizer(ao.adam(0.1), {"w": np.zeros((3, 2))})
    opt.params["w"] = np.zeros((3, 1))
    with pytest.raises(ValueError, match=r"state\.mu\['w'\]: shape \(3, 2\) != grads shape \(3, 1\)"):
        opt.step({"w": np.ones((3, 1))})
