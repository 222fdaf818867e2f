r"""``step``: one optimizer step, ``update`` then ``apply_updates``, with fast paths.

``step(transform, params, grads, state) -> (params, state)`` always equals

.. code-block:: python

    updates, state = transform.update(grads, state, params)
    params = apply_updates(params, updates)

(to rounding; on the CPU the fast paths round exactly as the generic path
does). For the optimizers built by :mod:`agnopt`'s aliases (``sgd``,
``sign_sgd``, ``adagrad``, ``rmsprop``, ``adam``, ``adamw``) on *writeable*
backends (NumPy, torch, CuPy; see :func:`agnopt.is_writeable`) it runs one
fused, in-place update per parameter leaf instead of a chain of out-of-place
array operations:

* NumPy: a fused numba kernel when numba is installed (``pip install
  agnopt[numba]``), else a pure NumPy loop over cache-sized blocks with
  ``out=`` (no temporaries the size of the parameters);
* torch: in-place ``out=`` operations over blocks, under ``torch.no_grad()``;
  on CUDA, Adam/AdamW with a constant learning rate (no ``amsgrad``, no
  ``eps_root``) call torch's own fused kernels instead (equal to rounding;
  see :mod:`agnopt._kernels.torch_kernel`);
* CuPy: one ``cupy.ElementwiseKernel`` per leaf and step.

**Buffer donation.** On these backends ``step`` *reuses the buffers* of
``params`` and of the arrays in ``state``: they are overwritten with the new
values, and the returned ``params``/``state`` hold the same arrays. Treat the
``params`` and ``state`` you passed as consumed (as JAX's buffer donation
does); ``grads`` are never written. On NumPy the step counters are
incremented in place too, and the very ``state`` object passed is returned
(and ``params`` itself when it is one array, or when the tree of arrays
stepped last time comes back). ``update`` and
``apply_updates`` stay pure. JAX, Dask and array-api-strict arrays are never modified: ``step``
runs the generic path there, as it does for user-built chains, read-only or
non-contiguous arrays, mixed dtypes (e.g. ``mu_dtype`` other than the
parameters' dtype), and any input the checks would reject (the generic path
then raises its usual error).

**Numerics.** Every path follows the transforms' rules (see
:mod:`agnopt._first_order.transforms`): float16/bfloat16 parameters and
state are computed in float32 and rounded once when stored (NumPy: the
generic path; torch: the in-place path widens each block to float32; CuPy:
the fused kernel computes in a float local type), and centered RMSProp
clamps :math:`\nu - \mu^2` at 0 before its root.

The environment variable ``AGNOPT_FAST`` selects the path: ``0`` the generic
path everywhere; ``numpy`` the blocked NumPy path even when numba is
installed; ``numba`` requires numba; unset or ``1`` picks the fastest
available.

**Per-step overhead.** The NumPy path keeps, per optimizer, what it checked
at the last step (types, dtypes, layouts and aliasing of the leaves, the
compiled kernel and its flattened views; ``_Entry`` in
:mod:`agnopt._kernels.cpu`). When the same parameter leaves and the same
state come back (what donation produces), only the new gradients, the
containers inside the state (a dict may have been edited) and the
parameters' writeable flags are checked again, the trees are read by their
known keys instead of flattened, and ``params`` itself is returned. With
numba, the small leaves of a tree are stepped by one call for all of them
(:mod:`agnopt._kernels.multi`), bit for bit as one call per leaf: their
gradients gathered into one buffer, or, when the same gradient arrays come
back (a model writing its gradients into the same arrays at every step),
read where they lie (by data addresses taken once; gradients overlapping a
parameter or a state buffer are still copied). The entry (which holds the
last gradients of those small leaves) is dropped with the optimizer. Arrays
that come back are trusted to be what they were: an array reshaped,
retyped or resized *in place* (assigning ``.shape``, ``.dtype``,
``.strides``, or ``resize(refcheck=False)``) between two steps is outside
this contract.

The fast path recognises an optimizer through a small registry: each alias
registers its ``Transform.update`` function with its hyperparameters and the
layout of its state (:func:`register_fast`): one :class:`Slot` per element of
its chain, declared in :mod:`agnopt._first_order.alias` next to the chain
itself, naming the sub-state class and the fields the fused kernel reads
(so reordering a chain reorders its layout with it). A Transform that is not
registered (any user-built chain) takes the generic path.
"""

from __future__ import annotations

import operator
import os
import weakref
from collections.abc import Iterator, ValuesView
from typing import Any, Generic, NamedTuple

import array_api_compat

from .._core.backend import is_writeable, namespace_name
from .._core.lazy import is_dask, persist
from .._core.tree import leaves_like, same_leaves, tree_flatten, tree_unflatten
from .._core.typing import ArrayTree, TreeT
from .base import Transform, apply_updates

__all__ = ["FastSpec", "Optimizer", "Slot", "fast_mode", "fast_spec", "register_fast", "step"]


class Slot(NamedTuple):
    """Where a fused kernel finds its buffers in one sub-state of a chain.

    ``cls`` is the sub-state's class (``EmptyState`` for a stateless
    transform); ``fields`` pairs a kernel buffer name (``"mu"``, ``"nu"``,
    ``"vmax"``, ``"acc"``, ``"trace"``, or ``"count"`` / ``"sched_count"``
    for the step counters) with the state field holding it.
    """

    cls: type
    fields: tuple = ()


class FastSpec(NamedTuple):
    """Which optimizer a registered Transform is: ``kind``, its hyperparameters, its state layout."""

    kind: str  # "sgd", "sign_sgd", "adagrad", "rmsprop", "adam", "adamw"
    hp: dict
    layout: tuple  # one Slot per chain element, in the chain's order


_REGISTRY: weakref.WeakKeyDictionary[Any, FastSpec] = weakref.WeakKeyDictionary()
_LAST: list = [None, None]  # (transform.update, its FastSpec) of the last registered step
KINDS = ("sgd", "sign_sgd", "adagrad", "rmsprop", "adam", "adamw")


def register_fast(transform: Transform, kind: str, layout: tuple, **hp: Any) -> Transform:
    """Record that ``transform`` is the alias ``kind`` with hyperparameters ``hp``.

    ``layout`` is a tuple of :class:`Slot`, one per element of the chain that
    ``transform`` is, in order: what its fused kernel reads from the state.
    Keyed by ``transform.update`` (weakly), so only the very Transform an alias
    returned is recognised. Returns ``transform`` unchanged.
    """
    if kind not in KINDS:
        raise ValueError(f"register_fast: unknown kind {kind!r}")
    if not isinstance(layout, tuple) or not all(isinstance(s, Slot) for s in layout):
        raise TypeError("register_fast: layout must be a tuple of Slot")
    _REGISTRY[transform.update] = FastSpec(kind, dict(hp), layout)
    _LAST[:] = [None, None]
    return transform


def fast_spec(transform: Any) -> FastSpec | None:
    """The registered :class:`FastSpec` of ``transform``, or None."""
    try:
        return _REGISTRY.get(transform.update)
    except (AttributeError, TypeError):
        return None


_ENV_DATA = getattr(os.environ, "_data", None)  # CPython's mapping behind os.environ
try:
    _ENV_KEY = os.environ.encodekey("AGNOPT_FAST")
except AttributeError:  # pragma: no cover - not CPython
    _ENV_DATA = None
_MODES: dict = {}
_SHAPE = operator.attrgetter("shape")
_CPU: list = [None]  # agnopt._kernels.cpu once a NumPy step imported it


def fast_mode() -> str:
    """``"0"`` (generic), ``"numpy"``, ``"numba"`` or ``"auto"``, from ``AGNOPT_FAST``.

    Read at every call (tests and benchmarks change it at run time), through
    the mapping ``os.environ`` keeps (a dictionary look-up, not a decode).
    """
    if _ENV_DATA is not None:
        raw = _ENV_DATA.get(_ENV_KEY)
        hit = _MODES.get(raw)
        if hit is not None:
            return hit
        v = "" if raw is None else os.environ.decodevalue(raw)
    else:  # pragma: no cover
        raw = None
        v = os.environ.get("AGNOPT_FAST", "")
    if v in ("", "1", "auto"):
        mode = "auto"
    elif v in ("0", "numpy", "numba"):
        mode = v
    else:
        raise ValueError(f"AGNOPT_FAST must be 0, 1, numpy or numba, got {v!r}")
    if _ENV_DATA is not None:
        _MODES[raw] = mode
    return mode


def _generic(transform, params, grads, state):
    updates, new_state = transform.update(grads, state, params)
    new_params = apply_updates(params, updates)
    leaves, td = tree_flatten((new_params, new_state))
    if any(is_dask(x) for x in leaves):
        # Dask: one dask.persist per step, so the graphs of params and state stay one
        # task per chunk instead of growing with every step (a loop of n steps costs
        # O(n), and computing after many steps cannot hit Python's recursion limit)
        new_params, new_state = tree_unflatten(td, list(persist(*leaves)))
    return new_params, new_state


def _backend_module(leaf: Any) -> str | None:
    mod = type(leaf).__module__
    if mod == "numpy":
        return "numpy"
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("cupy"):
        return "cupy"
    return None


def step(transform: Transform, params: TreeT, grads: ArrayTree, state: Any) -> tuple[TreeT, Any]:
    """One optimizer step: ``update`` followed by ``apply_updates``.

    Returns ``(new_params, new_state)``, equal (to rounding) to::

        updates, new_state = transform.update(grads, state, params)
        new_params = apply_updates(params, updates)

    **Donates ``params`` and ``state`` on writeable backends.** For the
    optimizers of :mod:`agnopt` (``sgd``, ``sign_sgd``, ``adagrad``,
    ``rmsprop``, ``adam``, ``adamw``) on NumPy, torch and CuPy arrays, the
    step is computed in place: the arrays of ``params`` and ``state`` are
    overwritten and returned; do not use the old ``params``/``state``
    afterwards (keep a copy if you need them). ``grads`` are only read, and
    read as the generic path reads them, before any write: a gradient that
    shares memory with a parameter or a state buffer (the same array or a
    view of one) is copied first, and parameters or state buffers that share
    memory with each other send the step to the generic path. JAX, Dask and
    array-api-strict arrays are never modified (generic path).
    ``AGNOPT_FAST=0`` forces the generic path. See :mod:`agnopt._first_order.step`.

    **Dask: params and state are persisted.** On Dask arrays ``step`` ends
    with one ``dask.persist`` of the new parameters and state (computed
    chunk by chunk, in memory on the local scheduler or on the workers of a
    ``dask.distributed`` cluster), so their graphs do not grow with the
    number of steps: a loop of ``n`` steps costs time linear in ``n``, and
    the result can be computed after any number of steps. ``grads`` may be
    lazy (their graph is computed within the step). ``update`` and
    ``apply_updates`` stay lazy (persist their results yourself in a loop).
    """
    try:
        return _step(transform, params, grads, state)
    except (TypeError, ValueError, RuntimeError) as e:
        msg = _backend_mismatch(params, grads, state)
        if msg is None:
            raise
        raise TypeError(msg) from e


def _backend_mismatch(params, grads, state) -> str | None:
    """Error path of :func:`step`: a message where ``state`` holds arrays of another
    library than ``params`` and ``grads`` (a state built for other parameters, or a leaf
    of ``Optimizer.params`` replaced by another library's array), else ``None``."""
    def names(tree):
        out = []
        for x in tree_flatten(tree)[0]:
            if hasattr(x, "shape") and hasattr(x, "dtype"):
                try:
                    out.append(namespace_name(array_api_compat.array_namespace(x)))
                except TypeError:
                    continue
        return out

    p, g = set(names(params)), set(names(grads))
    if len(p) != 1 or g != p:
        return None  # (the error of mixed parameters or gradients names them already)
    other = set(names(state)) - p
    if not other:
        return None
    return (f"state: holds {', '.join(sorted(other))} arrays, but params are {next(iter(p))} "
            "arrays; build the state with init(params) for these parameters (or move a "
            "checkpoint across backends with load_state_dict)")


def _step(transform, params, grads, state):
    update = getattr(transform, "update", None)
    if update is _LAST[0]:  # the same optimizer as the last call: skip the weak-dict look-up
        spec = _LAST[1]
    else:
        spec = _REGISTRY.get(update) if callable(update) else None
        _LAST[:] = [update, spec] if spec is not None else [None, None]
    if spec is not None:
        mode = fast_mode()
        if mode != "0":
            cpu = _CPU[0]
            # the very parameters the NumPy path stepped last time: no full flatten
            hit = None if cpu is None else cpu.cached_leaves(update, params)
            if hit is not None:
                res = cpu.try_step(spec, params, hit[0], hit[1], grads, state, mode, owner=update)
                if res is not None:
                    return res
                return _generic(transform, params, grads, state)
            p_leaves, td = tree_flatten(params)
            if p_leaves:
                which = _backend_module(p_leaves[0])
                res = None
                if which == "numpy":
                    from .._kernels import cpu

                    _CPU[0] = cpu
                    res = cpu.try_step(spec, params, p_leaves, td, grads, state, mode, owner=update)
                elif which == "torch":
                    from .._kernels.torch_kernel import try_step as torch_try_step

                    res = torch_try_step(spec, params, p_leaves, td, grads, state)
                elif which == "cupy":
                    from .._kernels.cupy_kernel import try_step as cupy_try_step

                    res = cupy_try_step(spec, params, p_leaves, td, grads, state)
                if res is not None:
                    return res
    return _generic(transform, params, grads, state)


class Optimizer(Generic[TreeT]):
    """A stateful convenience around :func:`step` for training loops.

    ``opt = Optimizer(adam(1e-3), params)``; then ``opt.step(grads)`` updates
    ``opt.params`` and ``opt.state``, and returns ``opt.params``. The
    functional API (``init``/``update``/``apply_updates``/``step``) stays the
    reference.

    **The arrays you pass are updated in place** (like ``torch.optim``) when
    every leaf of ``params`` is a writeable NumPy, torch or CuPy array:
    whichever path computed the step (a fused in-place kernel, or the generic
    path taken for user-built chains such as ``chain(clip_by_global_norm(c),
    adamw(lr))``, ``apply_if_finite``, ``mu_dtype`` other than the
    parameters' dtype, non-contiguous leaves (transposed, strided,
    Fortran-order, channels_last), ``flat=True`` or ``AGNOPT_FAST=0``), the
    new values are written into your arrays, keeping their strides and dtype
    (torch: under ``torch.no_grad()``, so ``nn.Parameter`` leaves work), and
    ``opt.params`` is your tree of your arrays (flat mode: see below). JAX
    arrays are immutable, and Dask, array-api-strict and read-only NumPy
    arrays are never written: there the result is in ``opt.params`` (a new
    tree each step) and the arrays you passed keep their values.

    ``params`` is an array, a tree of arrays (dict, list, tuple,
    NamedTuple), or any iterator of arrays such as ``model.parameters()``
    (a generator, read once into a list: ``opt.params`` is then that list,
    and ``grads`` must be a list in the same order, e.g.
    ``[p.grad for p in opt.params]``).

    With ``flat=True`` (NumPy, torch or CuPy trees whose leaves share one
    array type, dtype and device), the parameters are copied into one contiguous buffer and
    ``opt.params`` becomes a tree of *views* into it; the optimizer state is
    kept flat too, so one fused kernel updates every leaf (no per-leaf
    Python overhead). Write gradients into ``opt.grads`` (views into a flat
    gradient buffer) and call ``opt.step()`` to avoid copying them; any other
    gradient tree passed to ``step(grads)`` is copied into the buffer first.
    In flat mode ``opt.state`` is the state of the flat parameter vector.
    The arrays you passed follow the buffer: a contiguous torch tensor that
    is not a view of another (an ``nn.Parameter``, say) is made a view into
    the buffer at construction (``tensor.data = view``: same tensor object,
    its values now live in the buffer, no copy per step); any other writeable
    leaf (NumPy, CuPy, non-contiguous or view torch tensors) receives the new
    values by a copy after each step (one per leaf; ``torch._foreach_copy_``
    on torch).

    ``opt.params`` may be changed between steps: an entry replaced
    (``opt.params["w"] = new``) or a whole new tree assigned is what the next
    step updates (and, where writeable, writes into), with the state built so
    far; flat mode copies a replaced leaf's values into its place in the
    buffer (the same shape is required) and keeps ``opt.params`` its views. A
    state that does not fit the new tree (other leaves or shapes) is refused
    with a ``ValueError`` naming the state entry, and nothing is written.

    On Dask arrays each ``opt.step`` persists ``opt.params`` and
    ``opt.state`` (see :func:`step`): the loop runs in time linear in the
    number of steps.
    """

    def __init__(self, transform: Transform, params: TreeT, *, flat: bool = False) -> None:
        self.transform = transform
        self.flat = bool(flat)
        if isinstance(params, (Iterator, ValuesView)):  # model.parameters(), dict.values()
            params = list(params)
        self._user_leaves, self._user_td = tree_flatten(params)
        # write the new values back into the caller's arrays wherever they can be written
        self._write_back = bool(self._user_leaves) and all(
            _backend_module(x) is not None and is_writeable(x) for x in self._user_leaves)
        self._user_params = params
        if self.flat:
            leaves, self._td = self._user_leaves, self._user_td
            if not leaves:
                raise ValueError("params: the tree is empty; expected at least one array")
            self._flat_p, views = _flat_buffer(leaves, copy=True)
            self._flat_g, gviews = _flat_buffer(leaves, copy=False)
            self._gviews = gviews
            self._gshapes = [v.shape for v in gviews]
            # the caller's leaves that are not made views of the buffer get a copy per step
            self._pviews: list = []
            self._copy_to: list = []
            if self._write_back:
                for x, v in zip(leaves, views):
                    if not _rebind(x, v):
                        self._copy_to.append(x)
                        self._pviews.append(v)
            self._views = views
            self.params: TreeT = tree_unflatten(self._td, views)
            self.grads: TreeT | None = tree_unflatten(self._td, gviews)
            self.state = transform.init(self._flat_p)
        else:
            self.params = params
            self.grads = None
            self.state = transform.init(params)

    def _adopt(self) -> None:
        """Take ``opt.params`` as it is now: the caller replaced an entry (``opt.params["w"] =
        new``) or the whole tree since the last step. The new leaves are the ones updated (and
        written back into) from now on, as if they had been passed at construction."""
        params = self.params
        self._user_leaves, self._user_td = tree_flatten(params)
        self._write_back = bool(self._user_leaves) and all(
            _backend_module(x) is not None and is_writeable(x) for x in self._user_leaves)
        self._user_params = params

    def _adopt_flat(self) -> None:
        """Flat mode's :meth:`_adopt`: a replaced leaf's values are copied into its place in the
        buffer, ``opt.params`` is the tree of buffer views again, and the new array follows the
        buffer as the arrays passed at construction do (a torch tensor is made a view of it,
        any other writeable array gets a copy after each step)."""
        leaves, td = tree_flatten(self.params)
        if td != self._td:
            raise ValueError(
                "opt.params: its tree structure changed since construction; flat=True lays "
                "one buffer out for the tree it was given, so build a new Optimizer for a new "
                "tree (or assign values in place: opt.params[k][...] = value)")
        new = [(x, v) for x, v in zip(leaves, self._views) if x is not v]
        for i, (x, v) in enumerate(zip(leaves, self._views)):  # all checked before any is copied
            if x is not v and tuple(getattr(x, "shape", ())) != tuple(v.shape):
                raise ValueError(
                    f"opt.params: leaf {i} was replaced by an array of shape "
                    f"{tuple(getattr(x, 'shape', ()))}; expected shape {tuple(v.shape)} "
                    "(flat=True keeps one buffer laid out at construction)")
        for x, v in new:
            _copy_into(v, x)
            if (_backend_module(x) is not None and is_writeable(x)
                    and not any(x is c for c in self._copy_to) and not _rebind(x, v)):
                self._copy_to.append(x)
                self._pviews.append(v)
        self.params = tree_unflatten(self._td, self._views)

    def step(self, grads: ArrayTree | None = None) -> TreeT:
        """Apply one step with ``grads`` (flat mode: default ``opt.grads``); returns ``opt.params``."""
        if not self.flat:
            if grads is None:
                raise ValueError(
                    "Optimizer.step: grads are required (flat=False): pass the gradients in "
                    "params' structure, e.g. opt.step([p.grad for p in opt.params]) for a list "
                    "of torch tensors (NumPy, torch or CuPy leaves: or Optimizer(..., flat=True), "
                    "then write them into opt.grads)")
            if self.params is not self._user_params or (
                    self._write_back and not same_leaves(self.params, self._user_td, self._user_leaves)):
                self._adopt()
            new_p, self.state = step(self.transform, self.params, grads, self.state)
            if not self._write_back:
                self._user_params = new_p
                self.params = new_p
            elif new_p is not self._user_params:  # else the fast path returned the very tree
                new_leaves = leaves_like(new_p, self._user_td)
                if new_leaves is None:
                    new_leaves = tree_flatten(new_p)[0]
                for dst, src in zip(self._user_leaves, new_leaves):
                    if src is not dst:  # computed out of place (generic path): write it back
                        _copy_into(dst, src)
                self.params = self._user_params
            return self.params
        if not same_leaves(self.params, self._td, self._views):
            self._adopt_flat()
        if grads is not None and grads is not self.grads:
            fast = leaves_like(grads, self._td)
            if fast is None or not _gather_numpy(self._flat_g, self._gshapes, fast):
                g_leaves, td = tree_flatten(grads)
                if td != self._td:
                    from .._core.tree import check_same_structure

                    check_same_structure(grads, self.params, "grads", "params")
                for dst, src in zip(self._gviews, g_leaves):
                    if src is not dst:
                        _copy_into(dst, src)
        new_p, self.state = step(self.transform, self._flat_p, self._flat_g, self.state)
        if new_p is not self._flat_p:  # generic path (e.g. AGNOPT_FAST=0): copy back into the buffer
            _copy_into(self._flat_p, new_p)
        if self._copy_to:  # and from the buffer into the caller's arrays that are not views of it
            _copy_leaves(self._copy_to, self._pviews)
        return self.params


def _flat_buffer(leaves: list, copy: bool):
    """One contiguous 1-D buffer for ``leaves`` (one dtype/device) and a view per leaf."""
    first = leaves[0]
    which = _backend_module(first)
    if which not in ("numpy", "torch", "cupy"):
        raise TypeError("Optimizer(flat=True) needs NumPy, torch or CuPy parameters")
    sizes = [int(_numel(x)) for x in leaves]
    total = sum(sizes)
    for x in leaves:
        if x.dtype != first.dtype or type(x) is not type(first):
            raise TypeError("Optimizer(flat=True): every leaf must have the same array type and dtype")
    if which != "numpy":
        for x in leaves:
            if x.device != first.device:
                raise TypeError("Optimizer(flat=True): every leaf must be on the same device")
    buf: Any  # a NumPy or a torch buffer
    if which == "numpy":
        import numpy as np

        buf = np.zeros(total, dtype=first.dtype)
    elif which == "torch":
        import torch

        buf = torch.zeros(total, dtype=first.dtype, device=first.device)
    else:
        import cupy

        with cupy.cuda.Device(first.device.id):  # cupy.zeros allocates on the current device
            buf = cupy.zeros(total, dtype=first.dtype)
    views, off = [], 0
    for x, n in zip(leaves, sizes):
        v = buf[off:off + n].reshape(tuple(x.shape))
        if copy:
            _copy_into(v, x)
        views.append(v)
        off += n
    return buf, views


def _gather_numpy(buf: Any, shapes: list, leaves: list) -> bool:
    """Copy NumPy ``leaves`` into the flat ``buf`` at once (one ``numpy.concatenate``), where
    each has exactly the shape of its view (``shapes``); False (nothing written) otherwise.

    The same values as one ``numpy.copyto(view, leaf, casting="same_kind")`` per
    leaf, without a Python call per leaf (a leaf to broadcast goes that way).
    """
    if _backend_module(buf) != "numpy":
        return False
    import numpy as np

    if set(map(type, leaves)) != {np.ndarray} or list(map(_SHAPE, leaves)) != shapes:
        return False
    try:
        np.concatenate(leaves, axis=None, out=buf, casting="same_kind")
    except TypeError:  # a cast copyto would refuse too: let it raise its own error
        return False
    return True


def _numel(x: Any) -> int:
    n = 1
    for s in x.shape:
        n *= int(s)
    return n


def _rebind(x: Any, view: Any) -> bool:
    """Make the torch tensor ``x`` a view of ``view``'s storage (``x.data = view``) where that
    keeps its layout and aliasing: a contiguous tensor, not itself a view of another, of
    ``view``'s shape, dtype and device. True if done (``x`` holds ``view``'s values)."""
    if _backend_module(x) != "torch" or _backend_module(view) != "torch":
        return False
    if (x._base is not None or not x.is_contiguous() or x.shape != view.shape
            or x.dtype != view.dtype or x.device != view.device):
        return False
    x.data = view
    return True


def _copy_leaves(dsts: list, srcs: list) -> None:
    """``_copy_into(d, s)`` for each pair (torch: one ``torch._foreach_copy_`` where it exists)."""
    if _backend_module(dsts[0]) == "torch":
        import torch

        fe = getattr(torch, "_foreach_copy_", None)
        if fe is not None:
            with torch.no_grad():
                fe(dsts, srcs)
            return
    for d, s in zip(dsts, srcs):
        _copy_into(d, s)


def _copy_into(dst: Any, src: Any) -> None:
    which = _backend_module(dst)
    if which == "torch":
        import torch

        with torch.no_grad():
            dst.copy_(src)
    elif which == "cupy":
        import cupy

        with cupy.cuda.Device(dst.device.id):
            cupy.copyto(dst, src, casting="same_kind")
    else:
        import numpy as np

        np.copyto(dst, src, casting="same_kind")
