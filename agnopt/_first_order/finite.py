r"""Skipping non-finite gradients: :func:`apply_if_finite`.

Without this wrapper agnopt does what ``torch.optim`` and ``optax`` do: a NaN
or an infinity in a gradient flows into the optimizer state (Adam's moments,
a momentum buffer...) and from there into the parameters, which then stay
NaN for good. ``apply_if_finite(inner, max_consecutive_errors)`` guards any
transform (usually a whole optimizer):

* When every gradient leaf is finite, the result is exactly ``inner``'s
  (same updates, same state, bit for bit).
* When any gradient leaf holds a NaN or an infinity, the step is skipped:
  the updates are zeros (negative zeros, so that ``apply_updates`` returns
  every parameter bit for bit, ``-0.0`` included) and ``inner``'s state is
  returned unchanged. The event is counted in :class:`ApplyIfFiniteState`.
* On an eager backend (NumPy, CuPy, torch, array-api-strict, JAX outside
  ``jit``), the ``max_consecutive_errors + 1``-th non-finite gradient in a
  row raises :class:`FloatingPointError` (nothing is changed: the caller
  still holds the last good state and parameters).
* Inside ``jax.jit`` (traced arrays) no Python exception can depend on the
  data, and on Dask reading the flag would compute the whole step's graph
  every step; there the behaviour is optax's ``apply_if_finite``: after more than
  ``max_consecutive_errors`` non-finite steps in a row, the updates and the
  inner state are applied anyway, so that the NaN reaches the parameters and
  the failure is visible. All selection is done with ``xp.where`` on the
  state leaves, so the update traces to a single branch-free program.

The check costs one reduction per leaf and, on eager backends, one
device-to-host transfer of a boolean per step (to decide whether to raise).
Only the gradients are checked, not the parameters.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

from .._core.backend import is_concrete, on_device_of, resolve
from .base import Transform, check_state, check_updates
from .._core.tree import tree_flatten, tree_map, tree_unflatten

__all__ = ["ApplyIfFiniteState", "apply_if_finite"]

_INT32_MAX = 2**31 - 1


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite`.

    notfinite_count : int32 0-d array
        Non-finite gradients in a row (0 after a finite one).
    last_finite : bool 0-d array
        Whether the last gradient was finite.
    total_notfinite : int32 0-d array
        Non-finite gradients since ``init`` (saturates at 2**31 - 1).
    inner_state : Any
        The wrapped transform's state.
    """

    notfinite_count: Any
    last_finite: Any
    total_notfinite: Any
    inner_state: Any


def _host_bool(x: Any) -> bool | None:
    """``bool(x)`` for a concrete 0-d array; ``None`` for a traced one (jit)
    or a lazy one (Dask: reading it would compute the gradients every step)."""
    if not is_concrete(x):
        return None
    try:
        return bool(x)
    except Exception:  # other tracing frameworks (torch.func, ...)
        return None


def _all_finite(xp: Any, leaves: list) -> Any:
    ok = None
    for g in leaves:
        f = xp.all(xp.isfinite(g))
        ok = f if ok is None else ok & f
    return ok


def _neg_zeros(xp: Any, tree: Any) -> Any:
    # x + (-0.0) == x bit for bit for every x (also x = -0.0), unlike x + 0.0.
    return tree_map(lambda g: xp.full_like(g, -0.0), tree)


def apply_if_finite(inner: Transform, max_consecutive_errors: int | None = 5) -> Transform:
    r"""Wrap ``inner`` so that a step whose gradients are not all finite is skipped.

    Parameters
    ----------
    inner : Transform
        The transform (optimizer) to guard.
    max_consecutive_errors : int >= 0 or None
        How many non-finite gradients in a row are skipped. The next one
        raises :class:`FloatingPointError` on eager backends; under
        ``jax.jit`` and on Dask it is applied (optax's behaviour, so the NaN
        becomes visible in the parameters). ``None``: skip forever, never raise.

    Returns
    -------
    Transform
        ``init(params)`` returns an :class:`ApplyIfFiniteState`;
        ``update(grads, state, params)`` returns ``inner``'s updates and state
        when the gradients are finite, else negative-zero updates (in the
        gradients' dtype on eager backends) and ``inner``'s state as it was.

    Notes
    -----
    Without this wrapper non-finite gradients propagate into the state and
    the parameters (the default of torch.optim and optax): a single NaN
    gradient makes Adam's moments NaN forever.

    Examples
    --------
    >>> import numpy as np, agnopt as ao
    >>> opt = ao.apply_if_finite(ao.adam(0.1), max_consecutive_errors=3)
    >>> p = np.zeros(2); s = opt.init(p)
    >>> u, s = opt.update(np.array([np.nan, 1.0]), s, p)
    >>> ao.apply_updates(p, u).tolist(), int(s.notfinite_count)
    ([0.0, 0.0], 1)
    """
    if not (isinstance(inner, tuple) and len(inner) == 2 and callable(inner[0]) and callable(inner[1])):
        raise TypeError(
            f"inner: expected a Transform(init, update), got {type(inner).__name__}"
        )
    if max_consecutive_errors is not None:
        if isinstance(max_consecutive_errors, bool):
            raise TypeError("max_consecutive_errors must be an integer >= 0 or None, got bool")
        try:
            mce = operator.index(max_consecutive_errors)
        except TypeError:
            raise TypeError(
                "max_consecutive_errors must be an integer >= 0 or None, got "
                f"{type(max_consecutive_errors).__name__}"
            ) from None
        if mce < 0:
            raise ValueError(f"max_consecutive_errors must be >= 0, got {max_consecutive_errors!r}")
        max_consecutive_errors = mce

    def init(params):
        bk = resolve(params, "params")
        xp, dev = bk.xp, bk.device
        zero = xp.zeros((), dtype=xp.int32, device=dev)
        return ApplyIfFiniteState(
            notfinite_count=zero,
            last_finite=xp.ones((), dtype=xp.bool, device=dev),
            total_notfinite=zero,
            inner_state=inner.init(params),
        )

    def update(updates, state, params=None):
        check_state(state, ApplyIfFiniteState, "apply_if_finite")
        check_updates(updates, params)
        xp = resolve(updates, "grads").xp
        leaves, _ = tree_flatten(updates)
        finite = _all_finite(xp, leaves)
        if type(finite) is not type(state.last_finite):
            finite = xp.asarray(finite)  # NumPy reductions return a bool scalar: keep a 0-d array
        one = xp.ones_like(state.notfinite_count)
        count = xp.where(finite, xp.zeros_like(state.notfinite_count), state.notfinite_count + one)
        total = xp.where(
            finite | (state.total_notfinite >= _INT32_MAX),
            state.total_notfinite,
            state.total_notfinite + one,
        )

        host = _host_bool(finite)
        if host is not None:
            # Eager: decide on the host; the skipped step never runs inner.
            if host:
                new_u, new_inner = inner.update(updates, state.inner_state, params)
                return new_u, ApplyIfFiniteState(count, finite, total, new_inner)
            n_bad = int(count)
            if max_consecutive_errors is not None and n_bad > max_consecutive_errors:
                raise FloatingPointError(
                    f"apply_if_finite: the gradients were not finite (NaN or inf) "
                    f"{n_bad} times in a row, more than max_consecutive_errors="
                    f"{max_consecutive_errors}; the last finite state and parameters "
                    "are unchanged (check the loss, the learning rate, or the data)"
                )
            return _neg_zeros(xp, updates), ApplyIfFiniteState(count, finite, total, state.inner_state)

        # Traced (jax.jit): branch-free selection, optax's semantics.
        new_u, new_inner = inner.update(updates, state.inner_state, params)
        if max_consecutive_errors is None:
            apply = finite
        else:
            apply = finite | (count > max_consecutive_errors)
        u_leaves, td = tree_flatten(new_u)
        u_out = [xp.where(apply, u, xp.full_like(u, -0.0)) for u in u_leaves]
        inner_out = tree_map(lambda new, old: xp.where(apply, new, old), new_inner, state.inner_state)
        return tree_unflatten(td, u_out), ApplyIfFiniteState(count, finite, total, inner_out)

    return Transform(on_device_of(0, "params")(init), on_device_of(0, "updates")(update))
