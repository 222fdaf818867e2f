"""Exceptions and warnings that agnopt raises to users (exported from :mod:`agnopt`)."""

from __future__ import annotations

__all__ = ["AutodiffUnavailableError", "OptimizeWarning"]


class OptimizeWarning(UserWarning):
    """Warning of an optimizer or fit whose result needs care.

    ``curve_fit`` issues it when the covariance of the parameters cannot be
    estimated (as :class:`scipy.optimize.OptimizeWarning`).
    """


class AutodiffUnavailableError(TypeError, ValueError):
    """The arrays' backend cannot differentiate programs (not torch or JAX).

    Subclasses both ``TypeError`` (the arrays are of the wrong kind) and
    ``ValueError`` (the option ``"autodiff"`` is not valid for them), so that
    either ``except`` clause catches it.
    """
