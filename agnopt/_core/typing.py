"""Types of agnopt's public API (for annotations; nothing here is checked at run time).

Reached as ``agnopt.typing`` (``from agnopt.typing import Array, ArrayTree``).

``Array``
    An array of any supported backend: NumPy, CuPy, torch, JAX, Dask or
    array-api-strict. Described structurally (``shape``, ``dtype``, ``ndim``,
    indexing, arithmetic and ``float()`` of one element, as in the Array API
    standard), because the backends share no base class.
``ArrayLike``
    What the scipy-style solvers accept as ``x0`` / ``ydata``: an ``Array``,
    or Python numbers and (nested) lists of them (converted to float64 NumPy).
``ArrayTree``
    Parameters, gradients and updates: an ``Array`` or a nested ``dict`` /
    ``list`` / ``tuple`` / NamedTuple of them.
``Schedule``
    A learning-rate (or other hyperparameter) schedule: the step count (0 for
    the first update; a Python ``int``, or the 0-d integer array an optimizer
    keeps in its state) -> the value (a ``float`` for an ``int``, a 0-d array
    for an array), as ``optax.Schedule``.
``ScalarOrSchedule``
    A constant or a ``Schedule``.
``TransformInitFn``, ``TransformUpdateFn``
    The two functions of a :class:`~agnopt.Transform` (as optax's).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence, TypeAlias, TypeVar, Union, runtime_checkable

__all__ = [
    "Array", "ArrayLike", "ArrayTree", "Schedule", "ScalarOrSchedule", "TransformInitFn",
    "TransformUpdateFn",
]


@runtime_checkable
class Array(Protocol):
    """An array of any supported backend: the attributes and operators of the Array API standard.

    Structural (NumPy, CuPy, torch, JAX, Dask and array-api-strict arrays all
    match); the results of indexing and arithmetic are ``Any`` (their type is
    the backend's).
    """

    @property
    def shape(self) -> Any: ...

    @property
    def dtype(self) -> Any: ...

    @property
    def ndim(self) -> int: ...

    def __float__(self) -> float: ...
    def __int__(self) -> int: ...
    def __bool__(self) -> bool: ...
    def __getitem__(self, key: Any, /) -> Any: ...
    def __neg__(self) -> Any: ...
    def __pos__(self) -> Any: ...
    def __abs__(self) -> Any: ...
    def __add__(self, other: Any, /) -> Any: ...
    def __radd__(self, other: Any, /) -> Any: ...
    def __sub__(self, other: Any, /) -> Any: ...
    def __rsub__(self, other: Any, /) -> Any: ...
    def __mul__(self, other: Any, /) -> Any: ...
    def __rmul__(self, other: Any, /) -> Any: ...
    def __truediv__(self, other: Any, /) -> Any: ...
    def __rtruediv__(self, other: Any, /) -> Any: ...
    def __pow__(self, other: Any, /) -> Any: ...
    def __rpow__(self, other: Any, /) -> Any: ...
    def __matmul__(self, other: Any, /) -> Any: ...
    def __rmatmul__(self, other: Any, /) -> Any: ...
    def __lt__(self, other: Any, /) -> Any: ...
    def __le__(self, other: Any, /) -> Any: ...
    def __gt__(self, other: Any, /) -> Any: ...
    def __ge__(self, other: Any, /) -> Any: ...


ArrayLike: TypeAlias = Union[Array, float, int, Sequence[float], Sequence[Sequence[float]]]
ArrayTree: TypeAlias = Union[Array, Mapping[Any, "ArrayTree"], Sequence["ArrayTree"]]
Schedule: TypeAlias = Callable[[Union[int, Array]], Union[float, Array]]
ScalarOrSchedule: TypeAlias = Union[float, Schedule]



class HasBounds(Protocol):
    """An object with ``lb`` and ``ub`` (``scipy.optimize.Bounds``)."""

    @property
    def lb(self) -> Any: ...

    @property
    def ub(self) -> Any: ...


# ``bounds=`` of the scipy-style solvers: ``(lb, ub)`` (scalars or arrays) or a Bounds object
BoundsLike: TypeAlias = Union[tuple[ArrayLike, ArrayLike], HasBounds]

# a tree of the caller's own type, handed back with that type (apply_updates, step)
TreeT = TypeVar("TreeT", bound=ArrayTree)


class TransformInitFn(Protocol):
    """``init(params) -> state`` of a :class:`~agnopt.Transform`."""

    def __call__(self, params: ArrayTree) -> Any: ...


class TransformUpdateFn(Protocol):
    """``update(updates, state, params=None) -> (new_updates, new_state)`` of a
    :class:`~agnopt.Transform`; the new updates have the structure (and array
    type) of ``updates``.

    A typed ``update`` of one's own says so with a type variable,
    ``T = TypeVar("T", bound=ArrayTree)``:
    ``def update(updates: T, state: Any, params: ArrayTree | None = None) -> tuple[T, Any]``
    (unannotated functions and lambdas fit as they are).
    """

    def __call__(self, updates: TreeT, state: Any, params: ArrayTree | None = None) -> tuple[TreeT, Any]: ...
