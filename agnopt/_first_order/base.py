"""The transform contract: ``Transform(init, update)``, ``chain``, ``apply_updates``.

This mirrors optax's ``GradientTransformation``: a transform is a pair of pure
functions. ``init(params) -> state`` builds the state (a NamedTuple of arrays);
``update(updates, state, params=None) -> (updates, new_state)`` maps gradients
(or the updates of the previous transform in a chain) to new updates. Nothing
passed in is modified.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, NamedTuple

from .._core.backend import on_device_of, resolve
from .._core.norms import opmath_dtype
from .._core.tree import check_same_structure, tree_flatten, tree_map, tree_unflatten
from .._core.typing import ArrayTree, TransformInitFn, TransformUpdateFn, TreeT

__all__ = [
    "check_state",
    "Transform",
    "EmptyState",
    "identity",
    "chain",
    "apply_updates",
    "check_updates",
    "validated_backend",
    "trusted",
]

# Validation once per chain update
# ------------------------------------------------------------------
# Every built-in transform validates its input (``check_updates``). Inside a
# chain, the updates a built-in transform returns from valid input are valid
# by construction (same structure and shapes, float leaves, same backend), so
# re-validating them in the next transform only costs time. ``chain`` keeps,
# for the duration of one ``update`` call, the identity of the pair
# ``(updates, params)`` it knows to be valid; ``validated_backend`` skips the
# checks for exactly that pair (object identity, never a cache across calls)
# and runs them in full otherwise. User transforms (not marked ``trusted``)
# break the chain of trust: the next built-in transform validates again.
_TLS = threading.local()


def trusted(update: Callable) -> Callable:
    """Mark a built-in ``update`` function: valid input gives valid output."""
    update._agnopt_trusted = True  # type: ignore[attr-defined]
    return update



class Transform(NamedTuple):
    """A gradient transformation: ``init(params)`` and ``update(updates, state, params)``."""

    init: TransformInitFn
    update: TransformUpdateFn


class EmptyState(NamedTuple):
    """The state of a stateless transform."""


def identity() -> Transform:
    """The transform that returns its input unchanged."""

    def init(params):
        return EmptyState()

    @trusted
    def update(updates, state, params=None):
        return updates, state

    return Transform(init, update)


def check_state(state: Any, cls: type, who: str) -> None:
    """Raise ``ValueError`` unless ``state`` is the ``cls`` that ``who``'s init returns."""
    if not isinstance(state, cls):
        raise ValueError(
            f"state: {who} expected the {cls.__name__} that its init() returns, "
            f"got {type(state).__name__}; pass the state from the same optimizer's init"
        )


_REINIT = ("; the parameters changed since init(): build the state with init(params) for the "
           "new tree (Optimizer: a new Optimizer for it)")


def state_leaves(part: Any, g_leaves: list, g_td: Any, updates: Any, what: str) -> list:
    """The leaves of ``part``, a per-parameter state tree such as ``state.mu``, checked against
    the gradients (``updates``, flattened to ``g_leaves``, ``g_td``): the same tree structure and
    each leaf's shape. Raises ``ValueError`` naming the first difference otherwise (the state was
    built for other parameters), where pairing the state with the gradients leaf by leaf would
    stop early or broadcast one into the other."""
    leaves, td = tree_flatten(part)
    if td == g_td and all(s.shape == g.shape for s, g in zip(leaves, g_leaves)):
        return leaves
    try:
        check_same_structure(part, updates, f"state.{what}", "grads")
    except ValueError as e:
        raise ValueError(str(e) + _REINIT) from None
    raise ValueError(f"state.{what}: does not match the gradients{_REINIT}")  # pragma: no cover


def check_state_shape(what: str, i: int, got: tuple, expected: tuple) -> None:
    """Raise ``ValueError`` unless the state ``what`` of leaf ``i`` has the shape init() gives
    that leaf's gradient (``expected``): used where the state is a tuple in leaf order."""
    if tuple(got) != tuple(expected):
        raise ValueError(
            f"state.{what}[{i}]: shape {tuple(got)}, but leaf {i} of the gradients needs "
            f"{tuple(expected)}{_REINIT}")


def check_state_count(what: str, n_state: int, n_leaves: int) -> None:
    """Raise ``ValueError`` unless the tuple-in-leaf-order state ``what`` has one entry per leaf."""
    if n_state != n_leaves:
        raise ValueError(
            f"state.{what}: built for a tree of {n_state} leaves, the gradients have "
            f"{n_leaves}{_REINIT}")


def check_updates(updates: Any, params: Any | None, name: str = "grads") -> Any:
    """Check ``updates`` against ``params``: same structure and leaf shapes, float leaves.

    Raises ``ValueError`` naming the first differing path
    (``grads['w']: shape (3, 4) != params shape (4, 3)``) and ``TypeError`` for
    non-array leaves, non-float dtypes, or a backend/device other than the
    parameters'. Returns the :class:`~agnopt.Backend` of ``updates``.
    """
    bk = resolve(updates, name)
    if params is not None:
        check_same_structure(updates, params, name, "params")
        leaves_u, _ = tree_flatten(updates)
        leaves_p, _ = tree_flatten(params)
        if type(leaves_u[0]) is not type(leaves_p[0]):
            pk = resolve(params, "params", check_dtype=False)
            if pk.xp is not bk.xp:
                from .._core.backend import namespace_name

                raise TypeError(
                    f"{name} are {namespace_name(bk.xp)} arrays but params are "
                    f"{namespace_name(pk.xp)} arrays; use one backend for both"
                )
    return bk


def validated_backend(updates: Any, params: Any | None, name: str = "grads") -> Any:
    """``check_updates(updates, params)`` and the updates' Backend.

    Within one ``chain`` update, the exact pair ``(updates, params)`` that the
    chain knows to be valid is not checked again (identity test); every other
    call runs the full checks and reports the validated pair to the chain.
    """
    ctx = getattr(_TLS, "ctx", None)
    if ctx is not None and ctx[0] is updates and ctx[1] is params:
        return ctx[2]
    bk = check_updates(updates, params, name)
    if getattr(_TLS, "depth", 0):  # inside a chain: tell it (no reference kept otherwise)
        _TLS.last = (updates, params, bk)
    return bk


def chain(*transforms: Transform) -> Transform:
    """Compose transforms: the updates of each feed the next.

    The state is the tuple of the states of ``transforms``, as in
    ``optax.chain``.
    """
    for i, t in enumerate(transforms):
        if not (isinstance(t, tuple) and len(t) == 2 and callable(t[0]) and callable(t[1])):
            raise TypeError(
                f"chain: argument {i} must be a Transform(init, update), got {type(t).__name__}"
            )

    all_trusted = all(getattr(t.update, "_agnopt_trusted", False) for t in transforms)

    def init(params):
        resolve(params, "params")  # one clear error for bad trees, even if no state is kept
        return tuple(t.init(params) for t in transforms)

    def update(updates, state, params=None):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            raise ValueError(
                f"state: expected the tuple of {len(transforms)} states that this "
                f"chain's init returns, got {type(state).__name__}"
                + (f" of length {len(state)}" if isinstance(state, tuple) else "")
            )
        new_states = []
        original = updates
        outer = getattr(_TLS, "ctx", None)
        # valid: the Backend once the current ``updates`` are known valid
        valid = outer[2] if outer is not None and outer[0] is updates and outer[1] is params else None
        input_valid = None  # the Backend if ``original`` itself was validated here
        depth = getattr(_TLS, "depth", 0)
        _TLS.depth = depth + 1
        try:
            for t, s in zip(transforms, state):
                given = updates
                _TLS.ctx = None if valid is None else (given, params, valid)
                _TLS.last = None
                updates, s = t.update(given, s, params)
                new_states.append(s)
                if getattr(t.update, "_agnopt_trusted", False):
                    last = getattr(_TLS, "last", None)
                    if valid is None and last is not None and last[0] is given and last[1] is params:
                        valid = last[2]
                        if given is original:
                            input_valid = valid
                else:
                    valid = None
        finally:
            _TLS.ctx = outer
            _TLS.last = None
            _TLS.depth = depth
        if input_valid is not None and depth:
            # tell an enclosing chain that this chain's input was checked in full
            _TLS.last = (original, params, input_valid)
        return updates, tuple(new_states)

    if all_trusted:
        trusted(update)
    # CuPy arrays on another GPU than the current one: state creation and kernels on theirs
    return Transform(on_device_of(0, "params")(init), on_device_of(0, "updates")(update))


@on_device_of(0, "params")
def apply_updates(params: TreeT, updates: ArrayTree) -> TreeT:
    """``params + updates`` leaf by leaf; each result keeps the dtype (and array type) of its parameter.

    float16/bfloat16 parameters are added in float32 (opmath; the updates'
    dtype if wider) and rounded once to their dtype. Pure: neither argument
    is modified.
    """
    check_same_structure(updates, params, "updates", "params")
    p_leaves, td = tree_flatten(params)
    u_leaves, _ = tree_flatten(updates)
    if not p_leaves:
        raise ValueError("params: the tree is empty; expected at least one array")
    xp = resolve(params, "params").xp
    out = []
    for p, u in zip(p_leaves, u_leaves):
        op = opmath_dtype(xp, p.dtype)
        if op != p.dtype:
            # float16/bfloat16: add in float32 (or the updates' wider dtype), round once
            op = xp.result_type(op, u.dtype) if u.dtype != op else op
            new = xp.astype(xp.astype(p, op) + (u if u.dtype == op else xp.astype(u, op)), p.dtype)
        else:
            new = p + (u if u.dtype == p.dtype else xp.astype(u, p.dtype))
        if new.ndim == 0 and type(new) is not type(p):
            new = xp.asarray(new)  # NumPy: 0-d arithmetic returns a scalar
        out.append(new)
    return tree_unflatten(td, out)
