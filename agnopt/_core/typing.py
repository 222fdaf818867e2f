"""Types of agnopt's public API (for annotations; nothing here is checked at run time).

``Array``
    An array of any supported backend: NumPy, CuPy, torch, JAX, Dask or
    array-api-strict. Described structurally (it has a ``shape``, a ``dtype``
    and an ``ndim``), because the backends share no base class.
``ArrayLike``
    What the scipy-style solvers accept as ``x0`` / ``ydata``: an ``Array``,
    or Python numbers and (nested) lists of them (converted to float64 NumPy).
``ArrayTree``
    Parameters, gradients and updates: an ``Array`` or a nested ``dict`` /
    ``list`` / ``tuple`` / NamedTuple of them.
``Schedule``
    A learning-rate (or other hyperparameter) schedule: the step count
    (0 for the first update) -> the value.
``ScalarOrSchedule``
    A constant or a ``Schedule``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence, TypeAlias, Union, runtime_checkable

__all__ = ["Array", "ArrayLike", "ArrayTree", "Schedule", "ScalarOrSchedule"]


@runtime_checkable
class Array(Protocol):
    """An array of any supported backend (structural: ``shape``, ``dtype``, ``ndim``)."""

    @property
    def shape(self) -> Any: ...

    @property
    def dtype(self) -> Any: ...

    @property
    def ndim(self) -> int: ...


ArrayLike: TypeAlias = Union[Array, float, int, Sequence[float], Sequence[Sequence[float]]]
ArrayTree: TypeAlias = Union[Array, Mapping[str, "ArrayTree"], Sequence["ArrayTree"]]
Schedule: TypeAlias = Callable[[int], Union[float, Array]]
ScalarOrSchedule: TypeAlias = Union[float, Schedule]
