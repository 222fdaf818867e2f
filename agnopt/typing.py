"""Types for annotating code that uses agnopt (``from agnopt.typing import Array, ArrayTree``).

``Array`` (any backend's array, structural), ``ArrayLike`` (an array, or numbers and
lists of them as the scipy-style solvers accept), ``ArrayTree`` (parameters, gradients,
updates), ``Schedule`` and ``ScalarOrSchedule`` (learning rates), and the two functions
of a :class:`agnopt.Transform`: ``TransformInitFn``, ``TransformUpdateFn``. Checked by a
type checker only; nothing here is checked at run time.
"""

from ._core.typing import (
    Array,
    ArrayLike,
    ArrayTree,
    ScalarOrSchedule,
    Schedule,
    TransformInitFn,
    TransformUpdateFn,
)

__all__ = [
    "Array",
    "ArrayLike",
    "ArrayTree",
    "ScalarOrSchedule",
    "Schedule",
    "TransformInitFn",
    "TransformUpdateFn",
]
