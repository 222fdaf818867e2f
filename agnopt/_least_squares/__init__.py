"""Nonlinear least squares: ``least_squares``, ``tall_least_squares`` (Dask), ``curve_fit``.

Layers (each module named after what it holds):

* :mod:`.problem` -- argument checks and the in-memory ``Problem`` (residuals,
  Jacobians, row subsets of a batch);
* :mod:`.engine` -- ONE Levenberg-Marquardt driver (MINPACK ``lmder``) for
  every path; :mod:`.state` its typed per-problem state;
* :mod:`.lmpar` -- Moré's LM-parameter iteration (once, for every route);
* :mod:`.routes` -- how J^T J / J^T f are formed and solved (normal-equation
  Cholesky, SVD, host solve for Dask); :mod:`.cholesky` the batched factor;
* :mod:`.gauss_newton` -- damped Gauss-Newton;
* :mod:`.batched` -- the working set of a batched solve;
* :mod:`.tall` -- tall problems on Dask (blockwise J^T J, same engine);
* :mod:`.least_squares`, :mod:`.curve_fit` -- the public drivers;
  :mod:`.covariance` -- ``curve_fit``'s parameter covariance;
* :mod:`.outcome` -- statuses, messages and per-iteration reports.
"""

from .curve_fit import curve_fit
from .least_squares import least_squares
from .tall import tall_least_squares

__all__ = ["curve_fit", "least_squares", "tall_least_squares"]
