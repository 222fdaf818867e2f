"""Termination statuses of the second-order solvers, with scipy's values.

``Status`` is what ``OptimizeResult.status`` holds for ``least_squares``,
``tall_least_squares`` and ``curve_fit``'s ``infodict["status"]``: the codes
of ``scipy.optimize.least_squares`` (-2 ... 4) and documented extra codes
of agnopt (-3 ... -6), each with a name. ``success`` is ``status > 0``.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Status"]


class Status(IntEnum):
    """Termination status (scipy's ``least_squares`` values, plus agnopt's -3 ... -6)."""

    #: agnopt: the ``xtol`` test fired (the step shrank, scipy's status 3, or
    #: 4 with ``ftol``) at a point that is not first-order stationary: the residuals are not
    #: orthogonal to the Jacobian's columns and the Gauss-Newton step is longer
    #: than ``xtol`` allows (a wrong or inaccurate Jacobian, non-smooth or
    #: noisy residuals, a saturated model); see ``least_squares``' notes.
    NOT_STATIONARY = -6

    #: agnopt: lm / gauss-newton with bounds stopped with a variable on a bound
    #: whose Jacobian column vanishes there: a stationary point of the projected
    #: iteration that need not be one of the problem (e.g. a width entering as
    #: ``c**2`` stopped at ``c = 0``); ``method="trf"`` keeps iterates inside.
    STUCK_ON_BOUND = -5

    #: agnopt: the residuals were not finite at the trial points and the step
    #: shrank to nothing without a finite trial point near ``x``.
    NONFINITE_TRIAL = -4
    #: agnopt: ``jac`` returned non-finite entries at the current point (a
    #: batched problem stops there; unbatched solves raise ``ValueError``).
    NONFINITE_JAC = -3
    #: scipy: ``callback`` raised ``StopIteration`` or returned ``True``.
    CALLBACK = -2
    #: scipy: improper input parameters (MINPACK); agnopt raises instead.
    IMPROPER_INPUT = -1
    #: scipy: the maximum number of function evaluations is exceeded.
    MAX_NFEV = 0
    #: scipy: ``gtol`` termination condition is satisfied.
    GTOL = 1
    #: scipy: ``ftol`` termination condition is satisfied.
    FTOL = 2
    #: scipy: ``xtol`` termination condition is satisfied.
    XTOL = 3
    #: scipy: both ``ftol`` and ``xtol`` termination conditions are satisfied.
    FTOL_XTOL = 4
