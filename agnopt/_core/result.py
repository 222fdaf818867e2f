"""The result object of the second-order solvers (scipy's ``OptimizeResult``)."""

from __future__ import annotations

from typing import Any

__all__ = ["OptimizeResult"]


class OptimizeResult(dict):
    """The result of :func:`minimize` and :func:`least_squares`, as in scipy.

    A ``dict`` whose keys are also attributes. Fields (those that apply to
    the method): ``x, fun, jac, grad, cost, optimality, nit, nfev, njev, nhev,
    status, message, success`` and, when asked for, ``history``. For batched
    problems every field has a leading batch axis (``x`` is ``(B, n)``,
    ``status`` is ``(B,)``...).
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    __setattr__ = dict.__setitem__
    __delattr__ = dict.__delitem__

    def __repr__(self) -> str:
        if not self:
            return f"{type(self).__name__}()"
        width = max(map(len, self)) + 1
        lines = []
        for k in sorted(self):
            v = repr(self[k]).replace("\n", "\n" + " " * (width + 2))
            lines.append(f"{k.rjust(width)}: {v}")
        return "\n".join(lines)

    def __dir__(self) -> list[str]:
        return list(self.keys())
