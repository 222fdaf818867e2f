"""The transform contract: ``Transform(init, update)``, ``chain``, ``apply_updates``.

This mirrors optax's ``GradientTransformation``: a transform is a pair of pure
functions. ``init(params) -> state`` builds the state (a NamedTuple of arrays);
``update(updates, state, params=None) -> (updates, new_state)`` maps gradients
(or the updates of the previous transform in a chain) to new updates. Nothing
passed in is modified.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ._backend import resolve
from ._tree import check_same_structure, tree_flatten, tree_map, tree_unflatten

__all__ = [
    "check_state",
    "Transform",
    "EmptyState",
    "identity",
    "chain",
    "apply_updates",
    "check_updates",
]


class Transform(NamedTuple):
    """A gradient transformation: ``init(params)`` and ``update(updates, state, params)``."""

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]


class EmptyState(NamedTuple):
    """The state of a stateless transform."""


def identity() -> Transform:
    """The transform that returns its input unchanged."""

    def init(params):
        return EmptyState()

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


def check_updates(updates: Any, params: Any | None, name: str = "grads") -> None:
    """Check ``updates`` against ``params``: same structure and leaf shapes, float leaves.

    Raises ``ValueError`` naming the first differing path
    (``grads['w']: shape (3, 4) != params shape (4, 3)``) and ``TypeError`` for
    non-array leaves, non-float dtypes, or a backend/device other than the
    parameters'.
    """
    bk = resolve(updates, name)
    if params is not None:
        check_same_structure(updates, params, name, "params")
        leaves_u, _ = tree_flatten(updates)
        leaves_p, _ = tree_flatten(params)
        if type(leaves_u[0]) is not type(leaves_p[0]):
            pk = resolve(params, "params", check_dtype=False)
            if pk.xp is not bk.xp:
                from ._backend import namespace_name

                raise TypeError(
                    f"{name} are {namespace_name(bk.xp)} arrays but params are "
                    f"{namespace_name(pk.xp)} arrays; use one backend for both"
                )


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
        for t, s in zip(transforms, state):
            updates, s = t.update(updates, s, params)
            new_states.append(s)
        return updates, tuple(new_states)

    return Transform(init, update)


def apply_updates(params: Any, updates: Any) -> Any:
    """``params + updates`` leaf by leaf; each result keeps the dtype of its parameter.

    Pure: neither argument is modified.
    """
    check_same_structure(updates, params, "updates", "params")
    p_leaves, td = tree_flatten(params)
    u_leaves, _ = tree_flatten(updates)
    if not p_leaves:
        raise ValueError("params: the tree is empty; expected at least one array")
    xp = resolve(params, "params").xp
    out = []
    for p, u in zip(p_leaves, u_leaves):
        if u.dtype != p.dtype:
            u = xp.astype(u, p.dtype)
        out.append(p + u)
    return tree_unflatten(td, out)
