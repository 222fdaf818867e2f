r"""``least_squares``: nonlinear least squares on any Array API backend, one problem or ``B``.

Levenberg-Marquardt (MINPACK ``lmder``, :mod:`.engine`) and damped
Gauss-Newton (:mod:`.gauss_newton`). Every problem set is a batch: an
unbatched call is a batch of one, so batched and unbatched runs execute the
same arithmetic, problem by problem.

The linear algebra of one iteration works on the scaled Jacobian
:math:`\tilde J = J D^{-1}` through a *route* (:mod:`.routes`): for
well-conditioned small problems (``n <= 16``, no variable frozen at a bound,
and a certified bound ``trace(A) trace(A^{-1}) < 1e8`` on the condition
number of :math:`A = \tilde J^T\tilde J`, so :math:`\operatorname{cond}
(\tilde J) < 10^4`) the damped normal equations :math:`(A + \lambda I) q =
\tilde J^T f` are solved with a Cholesky factor written as a few dozen
vectorized operations over the batch (entry by entry for ``n <= 6``), and
Moré's Newton correction uses :math:`q^T (A+\lambda I)^{-1} q = \|L^{-1}
q\|^2` as MINPACK does. Squaring a condition number below 1e4 costs at most
~1e-8 relative accuracy in a step, never in the fixed point (the gradient
comes from :math:`J` itself). LAPACK's batched SVD / ``eigh`` of many tiny
matrices is dominated by per-matrix call overhead (NumPy: ~4 us per 4x4
``eigh``, ~12 us per 50x4 SVD), which this route avoids. Every other problem
takes the SVD route: with :math:`\tilde J = U S V^T`, :math:`w = s^2` and
:math:`c = V^T \tilde J^T f`, :math:`D p(\lambda) = -V c / (w + \lambda)`,
so Moré's search for :math:`\lambda` costs ``O(n)`` per trial value and never
squares the condition number. The route is chosen per problem from that
problem's own Jacobian, so a batch computes what each problem alone computes.

Batched solves drop finished problems (:mod:`.batched`): ``fun`` is then
called with the running rows only if it offers a row hook
(``fun._agnopt_rows(idx)``, which ``curve_fit`` provides for a shared
``xdata``, checked once against the full evaluation); any other batched
``fun`` keeps receiving all ``B`` rows (the finished ones frozen). No
compaction on JAX or Dask, nor when a callback, history or ``verbose=2``
needs the whole batch each iteration.
"""

from __future__ import annotations

import math
from typing import Any, Callable


from .._core.backend import native_namespace, on_device_of
from .._core.result import OptimizeResult
from .._core.linalg import linalg_errors
from .._core.typing import Array, ArrayLike, BoundsLike
from .arrays import call_checked, indices, shared_x0
from .batched import WorkingSet, compactable
from .chunked import chunked_least_squares, is_chunked_batch
from .._core.progress import make_progress
from .bounds import strictly_feasible
from .dogbox import DOGBOX
from . import jax_rerun, jax_solve
from .engine import run_lm
from .losses import check_loss
from .trf import TRF, run_trust_region
from .gauss_newton import run_gn
from .result import finish
from .options import (
    JAC_STRINGS,
    as_array,
    as_bounds_pair,
    check_m_ge_n,
    check_max_nfev,
    check_method,
    check_scipy_options,
    check_tolerances,
    check_verbose,
    resolve_x_scale,
    wrap_callback,
)
from .problem import Problem
from .start import checked_bounds, scale_from, start_point
from .tall import is_tall, solve_tall

__all__ = ["least_squares"]

DEFAULT_TOL = 1e-8  # ftol, xtol, gtol (scipy's)


@on_device_of(1, "x0")  # CuPy: run on the GPU of the arrays
def least_squares(
    fun: Callable[..., Array],
    x0: ArrayLike,
    jac: str | Callable[..., Array] | None = None,
    bounds: BoundsLike = (-math.inf, math.inf),
    method: str = "trf",
    ftol: float | None = DEFAULT_TOL,
    xtol: float | None = DEFAULT_TOL,
    gtol: float | None = DEFAULT_TOL,
    x_scale: str | ArrayLike | None = None,
    loss: str | Callable[..., Array] = "linear",
    f_scale: float = 1.0,
    diff_step: float | ArrayLike | None = None,
    tr_solver: str | None = None,
    tr_options: dict[str, Any] | None = None,
    jac_sparsity: None = None,
    max_nfev: int | None = None,
    verbose: int = 0,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    callback: Callable[..., Any] | None = None,
    workers: int | None = None,
    *,
    batched: bool = False,
    history: bool = False,
    progress: bool | Callable[[dict[str, Any]], Any] = False,
) -> OptimizeResult:
    r"""Solve a nonlinear least-squares problem (or ``B`` of them at once).

    Minimizes :math:`F(x) = \tfrac12 \|f(x)\|^2` for residuals
    :math:`f: \mathbb R^n \to \mathbb R^m`, optionally subject to
    ``lb <= x <= ub``, on any Array API backend (the arrays never leave
    their backend or device).

    Parameters
    ----------
    fun : callable
        ``fun(x, *args, **kwargs)`` returning the residuals, shape ``(m,)``
        for ``x`` of shape ``(n,)``; with ``batched=True``, ``(B, m)`` for
        ``(B, n)`` (row ``b`` must depend on row ``b`` only).
    x0 : array
        Starting point, ``(n,)`` or ``(B, n)`` (``batched=True``), real
        floating dtype; the computation runs in this dtype on this device.
        Lists are converted to NumPy float64 arrays. torch: an ``x0`` (or
        residuals) in an autograd graph is accepted and the result records
        the graph of the iterations, but the solve is not differentiable
        through agnopt (that graph is not the derivative of the solution);
        detach the inputs (as :func:`agnopt.curve_fit` does with its data)
        unless you need it.
    jac : None, {"cs", "2-point", "3-point", "autodiff"} or callable
        How to get the Jacobian ``J = df/dx``, ``(m, n)`` (``(B, m, n)``):

        * ``None`` (default): ``"cs"``, verified. If ``fun`` cannot take
          complex input (it raises, e.g. a torch ``matmul`` of a float64
          matrix with a complex vector, or returns real output) the solve
          switches to ``"3-point"`` for good. The first complex-step Jacobian
          is also compared with finite differences (central and forward
          along one direction: 3 extra evaluations of ``fun`` once per solve,
          not counted in ``nfev``; column by column, ``3n``, when ``x0`` is
          next to a bound): where they disagree beyond the differences' own
          error (``fun`` silently drops the imaginary part of some terms, e.g.
          by writing ``x`` into a real work array, ``float``, ``real``,
          ``abs``), the solve switches to ``"3-point"`` for good. A ``fun``
          that loses the imaginary part only away from ``x0`` is not
          detected: pass ``jac="3-point"`` for such functions. (scipy's
          default is ``"2-point"``; the verified complex step is kept because
          it makes ``"lm"`` reach NIST's certified values on all 54 runs.)
        * ``"cs"``: complex step, ``Im f(x + i h e_j) / h`` with
          ``h = sqrt(eps) max(1, |x_j|)``. For residuals that are analytic
          in complex arithmetic (all usual model functions: polynomials,
          rationals, exp, log, powers, trigonometric functions) it is exact
          to rounding, because no difference of nearby values is taken. It is
          the default because it makes Levenberg-Marquardt reach the NIST
          StRD certified values on all 27 problems from both starts (LRE >= 6,
          ``python -m agnopt nist``), where forward and central differences stop
          early on ill-conditioned problems (Kirby2, Hahn1, BoxBOD, Lanczos,
          Bennett5, ...) as scipy's defaults do. It needs ``fun`` to accept
          complex input and propagate the imaginary part: if ``fun`` uses
          ``abs``, comparisons, ``real``, ``maximum``... pass ``jac="3-point"``
          (a ``fun`` that fails on complex input or returns real output
          gives a clear error).
        * ``"2-point"``, ``"3-point"``: finite differences with scipy's steps
          (see :func:`agnopt.approx_derivative`), kept inside the bounds.
        * ``"autodiff"``: the backend's automatic differentiation (torch.func
          or JAX), :func:`agnopt._derivatives.autodiff.jacobian`; other backends raise.
        * a callable ``jac(x, *args, **kwargs)`` returning ``(m, n)``
          (``(B, m, n)`` when batched).
    method : {"trf", "dogbox", "lm", "gauss-newton"}
        Default ``"trf"`` (scipy's default). Residuals chunked by rows (a
        tall Dask problem) take ``"lm"`` or ``"gauss-newton"`` only.

        * ``"trf"``: trust-region-reflective (Branch, Coleman and Li 1999),
          as scipy's ``method="trf"`` with ``tr_solver="exact"``
          (:mod:`agnopt._least_squares.trf`): iterates strictly inside the
          bounds, Coleman-Li scaling of the variables, the trust-region
          subproblem of the augmented scaled Jacobian solved by Moré's
          ``lmpar`` in its SVD basis, and a step that reaches a bound is
          cut there, reflected, or replaced by the scaled anti-gradient,
          whichever the quadratic model prefers. Without bounds: scipy's
          ``trf_no_bounds``. Any ``m`` (also ``m < n``).
        * ``"dogbox"``: the rectangular trust-region dogleg of Voglis and
          Lagaris (2004), as scipy's ``method="dogbox"``
          (:mod:`agnopt._least_squares.dogbox`): variables on a bound that
          the anti-gradient pushes against are held there, the Gauss-Newton
          step is the minimum-norm least-squares step of the others. Any
          ``m``.

        For these two, scipy's rules: ``ftol`` (``dF < ftol F`` and a
        ratio of actual to predicted reduction above 0.25), ``xtol``
        (``||dx|| < xtol (xtol + ||x||)``), ``gtol`` (``optimality <
        gtol``, with ``optimality`` as in the result), ``x_scale`` default 1;
        a step is taken only when its residuals are finite and the cost went
        down.

        * ``"lm"``: Levenberg-Marquardt as MINPACK's ``lmder`` (Moré 1978):
          trust region of radius :math:`\Delta` in the scaled norm
          :math:`\|Dp\|`, the step :math:`p` minimizes
          :math:`\|f + Jp\|^2 + \lambda\|Dp\|^2` with :math:`\lambda` chosen by
          Moré's ``lmpar`` iteration so that :math:`\|Dp\| \approx \Delta`
          (within 10%), and MINPACK's rules for :math:`\Delta`,
          :math:`\lambda` and the step acceptance (ratio >= 1e-4, finite
          residuals, and a lower cost for a step the bounds cut short),
          initial radius ``||D x0||`` (MINPACK's ``factor = 1``; MINPACK and
          scipy use 100, which on NIST's problems took 10% more evaluations
          and stopped BoxBOD's start 1 on a plateau, status -6). The step is
          computed from the SVD of :math:`J D^{-1}` (instead of MINPACK's
          pivoted QR: same step, batched, rank deficiency handled by
          truncation), or for well-conditioned problems with ``n <= 16`` from
          a Cholesky factor of the damped normal equations (see the module
          notes).
          Requires ``m >= n`` (scipy's rule).
        * ``"gauss-newton"``: the Gauss-Newton iteration with
          :math:`\lambda I` damping,
          :math:`p = -(J^TJ + \lambda D^2)^{+} J^T f` (``D = 1/x_scale``,
          default identity). :math:`\lambda` starts at 0 (the plain
          Gauss-Newton step through the pseudo-inverse, so a singular
          :math:`J^TJ` is harmless); a step that does not decrease the cost
          is rejected and :math:`\lambda \leftarrow \max(10\lambda,
          10^{-3}\max\operatorname{diag}(\tilde J^T\tilde J))`; an accepted step divides
          :math:`\lambda` by 10 (to 0 below ``1e-12`` times that scale).
          No ``m >= n`` requirement.
    bounds : (lb, ub) or Bounds
        Scalars or arrays broadcastable to ``x0``; ``-inf``/``inf`` for no
        bound. Any object with ``lb`` and ``ub`` attributes (scipy's
        ``Bounds``) is taken as ``(bounds.lb, bounds.ub)``. Unlike scipy,
        ``"lm"`` accepts bounds. ``"trf"`` keeps its iterates strictly inside (reflective
        steps) and ``"dogbox"`` holds variables on a bound (see ``method``);
        ``"lm"`` and ``"gauss-newton"``: **projection with an active set**. Variables that
        sit on a bound with the gradient pointing out of the box are frozen
        for the step (their Jacobian columns are dropped), the step of the
        others is computed as without bounds, and the trial point is
        projected onto the box, ``clip(x + p, lb, ub)``. Every iterate (and
        every finite-difference point) is feasible. The model reduction of a
        projected step is evaluated for that step, so the trust-region
        control and the tests stay consistent. ``x0`` must be feasible.
    ftol, xtol, gtol : float or None
        Tolerances, with scipy's exact conditions. For ``"lm"`` (MINPACK):

        * ``ftol``: ``|actred| <= ftol and prered <= ftol and ratio <= 2``
          where ``actred = 1 - (||f_new|| / ||f||)**2`` and ``prered`` is the
          same relative reduction predicted by the linear model (scipy:
          "``dF < ftol * F`` and an adequate agreement between the local
          quadratic model and the true model"), except on a step the trust
          radius cut short (``lambda > 0``) with ``ratio >= 0.75`` (the radius
          then doubles) while ``max_j cos^2(J_j, f) > ftol`` (the Gauss-Newton
          step would remove more): such a step's small relative reduction
          says nothing about the reduction still possible;
        * ``xtol``: ``Delta <= xtol * ||D x||`` (trust-region radius against
          the scaled ``x``);
        * ``gtol``: ``max_j |J_j . f| / (||f|| ||J_j||) <= gtol`` (the largest
          cosine between a column of ``J`` and ``f``; also true when ``f = 0``).

        ``None`` switches a test off (it is taken as 0, scipy's rule): not
        allowed for ``"lm"``, where all three must be >= 2.22e-16; for the
        other methods at least one must be >= 2.22e-16 and a smaller one
        draws a ``UserWarning``. When a test
        holds with ``eps`` of the working dtype in place of the tolerance
        (MINPACK's info 6/7/8, e.g. float32 with default tolerances) the
        same status is reported with a "machine precision" message. In
        float32 (``"lm"``) the ``ftol`` test at machine precision also holds
        when a full Gauss-Newton step (not cut by the trust radius or the
        bounds) predicts ``prered <= eps``, however ``actred`` came out: the
        rounding noise of the float32 cost would otherwise reject such steps
        until the radius collapsed (about 4 more evaluations per fit).
        For ``"gauss-newton"``, ``"trf"`` and ``"dogbox"`` (scipy's trf conditions):
        ``ftol``: ``dF < ftol * F`` and ``dF / predicted dF > 0.25`` on an
        accepted step (trf and dogbox: not on a step that reached the trust
        region's boundary with ``dF / predicted dF > 0.75`` while
        ``max_j cos^2(J_j, f) > ftol``, as for ``"lm"``; scipy's trf stops
        there); ``xtol``: ``||dx|| < xtol * (xtol + ||x||)``;
        ``gtol``: ``||J^T f||_inf < gtol`` (trf and dogbox: ``optimality < gtol``).
    x_scale : None, "jac" or array
        ``D = 1 / x_scale``. ``"jac"``: MINPACK's ``mode=1``,
        ``D_j = max`` over iterations of ``||J_j||`` (column norms). ``None``
        (default): ``"jac"`` for ``"lm"`` (scipy >= 1.16's default) and 1 for the
        other methods (as scipy).
    diff_step : None, float or array
        Relative step of the finite differences (and of the complex step):
        ``h = diff_step * |x|`` per variable (scipy's rule: where that is 0,
        the default step). ``None``: the default steps.
    tr_solver : {None, "exact", "lsmr"}
        ``None`` or ``"exact"``: the dense subproblem solver (SVD / Cholesky).
        ``"lsmr"`` (scipy's iterative solver for sparse or operator
        Jacobians) is not supported: ``ValueError``, except with ``"lm"``,
        which has no choice of subproblem solver and ignores it, as scipy.
    tr_options : dict, optional
        Ignored, as scipy ignores it for ``"exact"`` and ``"lm"``.
    jac_sparsity : None
        Sparse finite differences are not supported: anything but ``None``
        raises ``ValueError``. So do a ``jac`` returning a sparse matrix or a
        ``LinearOperator``.
    max_nfev : int, optional
        Maximum number of residual evaluations, not counting those of
        finite differences (scipy >= 1.16's rule). Default ``100 * n``.
        Reaching it gives ``status = 0``, ``success = False``.
    args, kwargs :
        Extra arguments of ``fun`` and ``jac``.
    batched : bool
        ``B`` independent problems: ``x0`` ``(B, n)``, ``fun`` maps
        ``(B, n) -> (B, m)``, ``jac`` gives ``(B, m, n)``. An ``x0`` of shape
        ``(n,)`` is shared by all problems (as ``curve_fit``'s ``p0``): ``B``
        is then the number of rows of ``fun(x0[None, :])`` (one extra call,
        not counted in ``nfev``; ``fun`` must broadcast a ``(1, n)`` input
        against its per-problem data), and ``x0`` is broadcast to ``(B, n)``. Each problem has its
        own scaling, damping, trust region, stopping test and status;
        finished problems keep their ``x``. Results equal solving each
        problem alone (same iterates up to rounding). ``fun`` always
        receives all ``B`` rows (finished rows frozen), but the solver's
        own work shrinks to the running problems (see the module notes).
    verbose : {0, 1, 2}
        1: final report; 2: one line per iteration.
    progress : bool or callable
        ``True``: a ``tqdm`` progress bar (``pip install tqdm``; an
        ``ImportError`` says so when it is missing) showing the iteration,
        the evaluations, the largest cost among the running problems and,
        batched, how many of the ``B`` problems still run. A callable
        receives those figures as a ``dict`` after every iteration. Costs one
        host read per iteration; the default ``False`` shows nothing.
    callback : callable, optional
        Called after each iteration (for ``"lm"``: each trial step, accepted
        or not), as scipy decides from its signature:
        ``callback(intermediate_result)`` with an :class:`OptimizeResult`
        holding ``x``, ``cost``, ``nit`` when its only parameter is named
        ``intermediate_result``, else ``callback(x)`` with a copy of ``x``.
        Raising ``StopIteration`` (or, beyond scipy, returning ``True``)
        stops the solve (``status = -2``).
    workers : None or 1
        Parallel finite differences are not supported: anything else raises
        ``ValueError`` (use ``batched=True`` to solve many problems at once).
    history : bool
        Record a short history (``nit``, ``nfev``, ``cost`` per iteration) in
        ``result.history``.
    loss : {"linear", "soft_l1", "huber", "cauchy", "arctan"} or callable
        Robust loss :math:`\rho` (scipy's ``loss``,
        :mod:`agnopt._least_squares.losses`): the cost is
        :math:`\tfrac12\sum_i C^2\rho((f_i/C)^2)` with ``C = f_scale``. A
        callable ``loss(z)`` returns ``(3, ...)``: :math:`\rho, \rho',
        \rho''` at ``z``. Every method takes it (scipy: trf and dogbox
        only): each linearization uses the loss's Gauss-Newton model
        (Triggs et al. 1999, scipy's scaling of ``f`` and ``J``); for
        ``"lm"`` MINPACK's relative reductions and ``gtol`` cosine use
        ``sqrt(2 cost)`` in place of ``||f||``, and the geodesic
        acceleration is off. ``ValueError`` for an unknown name.
    f_scale : float
        The soft margin ``C`` between inlier and outlier residuals
        (positive; ``ValueError`` otherwise). Default 1.

    Returns
    -------
    OptimizeResult
        ``x``, ``cost`` (``0.5 ||f||^2``), ``fun`` (residuals), ``jac`` (at
        ``x``; with a loss, the loss's model Jacobian, as scipy), ``grad``
        (``J^T f`` of that model), ``optimality`` (``||grad||_inf``; trf
        with bounds ``||grad * v||_inf`` with Coleman-Li's ``v``, dogbox the
        norm over the variables not held at a bound, as scipy), ``cost`` is
        the robust cost and ``fun`` the true residuals,
        ``nfev``, ``njev``, ``nit``, ``status`` (scipy's codes: 0 max_nfev,
        1 gtol, 2 ftol, 3 xtol, 4 ftol and xtol, -2 callback; and -3: ``jac``
        returned non-finite entries at the current point, a batched problem
        then stops there while the others go on (unbatched: ``ValueError``);
        -4: the step shrank to nothing on non-finite residuals at the trial
        points, i.e. no finite trial point near ``x``; -5: lm or
        gauss-newton with bounds stopped with a variable on a bound where its
        Jacobian column vanishes (use ``method="trf"``); -6: the ``xtol`` test
        (alone or with ``ftol``: status 3 or 4) fired at a point that is not
        first-order stationary, see Notes;
        the codes are named by :class:`agnopt.Status`),
        ``message``, ``success`` (``status > 0``), ``active_mask`` (-1/0/1
        per variable: at the lower bound / free / at the upper bound), and
        ``history`` when asked. Batched: every field has a leading ``B``
        axis (``message`` is a list).

    Raises
    ------
    ValueError
        Wrong shapes (``x0``, ``fun``'s or ``jac``'s output), complex
        ``x0``, ``m < n`` for ``"lm"``, infeasible ``x0``, ``lb >= ub``,
        non-finite residuals at ``x0``, bad tolerances, unsupported options
        (see above; ``jac`` neither callable nor one of its strings),
        ``batched=True`` with a 1-D ``x0``.
    TypeError
        ``fun`` not callable.
    RuntimeError
        When the linear algebra of a step fails (LAPACK's "SVD did not
        converge": a non-finite or badly scaled Jacobian).
    Exception
        Whatever ``fun`` or ``jac`` raises propagates with its own type and
        message, as in scipy (a ``TypeError`` for wrong ``args`` /
        ``kwargs``, a ``ZeroDivisionError``, the model's own exceptions),
        with a note (Python >= 3.11) saying where agnopt evaluated it: at
        ``x0``, at a trial point, at a finite-difference point of the
        Jacobian, or in ``jac``. The default complex-step Jacobian is the
        exception: an error at its complex points only switches the solve
        to central differences (at real points, which raise what ``fun``
        raises there).

    Notes
    -----
    Residuals whose squares would overflow or underflow (``max |f(x0)|``
    beyond about ``1e77`` or below ``1e-77`` in float64, ``4e9`` /
    ``2e-10`` in float32) are multiplied by an exact power of 2 for the
    solve (and ``f_scale`` with them), so that ``||f||^2`` and ``J^T J``
    are representable; the reported ``fun``, ``jac``, ``cost``, ``grad``
    and ``optimality`` are those of ``fun`` itself. ``"lm"`` is invariant
    under this scaling; the other methods' absolute ``gtol`` then applies
    to the scaled gradient. In a batch each problem gets its own power of
    2, the one it gets alone (a ``ValueError`` with a robust loss when the
    problems need different ones).

    Non-finite residuals at a trial point reject the step (the trust region
    shrinks tenfold), as if the cost had increased; when the step tolerance
    is then met on a non-finite trial point the status is -4 (not 3).

    An ``xtol`` stop is a success only at a converged point. Every method
    stops when the step gets short, and a step is short either next to a
    minimizer or because the trust region (damping) collapsed after failed
    trial steps: a wrong or inaccurate Jacobian, non-smooth or noisy
    residuals, or a saturated model (a plateau where a parameter's column
    underflows, e.g. ``exp(-x b)`` with ``b`` large; dogbox from NIST's
    MGH17 and Rat43 first starts; lm from BoxBOD's ``b = [1, 5]``, where
    ``ftol`` fires too). scipy reports both as success. Here a status-3 or
    status-4 stop (``xtol``, or ``ftol`` and ``xtol`` together) becomes
    status -6 (``success=False``, ``x`` unchanged)
    unless, at the final point, (1) the residual is orthogonal to every
    Jacobian column of a variable not held at a bound to within ``100
    sqrt(eps)`` (``|J_j . f| <= 100 sqrt(eps) ||J_j|| ||f||``, MINPACK's
    scaled gradient; with a loss, of the loss's model), or (2) the
    minimum-norm Gauss-Newton step on the free variables is within
    ``10 t (t + ||x||)``, ``t = max(xtol, sqrt(eps))`` (a zero-residual
    solution). See :mod:`agnopt._least_squares.stationarity`.

    Unbatched, when ``x0`` is in memory (not Dask) and ``fun(x0)`` is a Dask
    array with more than one row chunk (a tall problem), the solve is handed to
    :func:`agnopt.tall_least_squares` (``jac`` ``None``/``"cs"`` become
    ``"2-point"``; ``method`` must be ``"lm"`` or ``"gauss-newton"``, finite
    ``bounds`` and ``history`` are not supported there: ``ValueError``).

    References
    ----------
    J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and
    theory", Numerical Analysis, LNM 630, Springer (1978).
    J. J. Moré, B. S. Garbow, K. E. Hillstrom, MINPACK-1 User Guide,
    ANL-80-74 (1980) (``lmder``, ``lmpar``).
    """
    if not callable(fun):
        raise TypeError(f"fun: expected a callable, got {type(fun).__name__} {fun!r:.40}")
    check_method(method)
    if not (jac is None or callable(jac) or jac in JAC_STRINGS):
        raise ValueError(f"jac: expected a callable or one of {JAC_STRINGS}, got {jac!r}")
    check_verbose(verbose)
    check_scipy_options(method, tr_solver, tr_options, jac_sparsity, workers, diff_step)
    kwargs = {} if kwargs is None else dict(kwargs)
    ftol, xtol, gtol = check_tolerances(method, ftol, xtol, gtol)
    check_loss(loss, f_scale)
    f_scale = float(f_scale)
    bounds = as_bounds_pair(bounds)
    user_callback, callback = callback, wrap_callback(callback)
    return solve(fun, x0, jac=jac, bounds=bounds, method=method, ftol=ftol, xtol=xtol,
                 gtol=gtol, x_scale=x_scale, loss=loss, f_scale=f_scale, diff_step=diff_step,
                 max_nfev=max_nfev, verbose=verbose, args=tuple(args), kwargs=kwargs,
                 callback=callback, user_callback=user_callback, batched=batched,
                 history=history, progress=progress)


def solve(fun, x0, *, jac, bounds, method, ftol, xtol, gtol, x_scale, loss, f_scale, diff_step,
          max_nfev, verbose, args, kwargs, callback, user_callback, batched, history, progress):
    """:func:`least_squares` once its arguments are checked (``bounds`` a pair, ``ftol``,
    ``xtol``, ``gtol`` floats, ``callback`` wrapped, ``user_callback`` the caller's, ``args``
    a tuple, ``kwargs`` a dict, ``f_scale`` a float): also ``curve_fit``'s entry, whose
    own checks cover the default arguments it passes."""
    if batched and getattr(x0, "ndim", None) != 2:
        x0 = as_array(x0, "x0")
        if x0.ndim == 1 and x0.shape[0] > 0:  # shared by all problems: B from fun's rows
            x0 = shared_x0(fun, x0, args, kwargs)
    if (not batched and method == "lm" and callback is None and not history and verbose == 0
            and progress is False and (x_scale is None or (isinstance(x_scale, str)
                                                           and x_scale == "jac"))
            and _default_bounds(bounds)):
        # a later call of a small JAX fit: the program the first call made, alone
        res = jax_rerun.rerun(fun, x0, jac, loss, f_scale, diff_step, args, kwargs,
                              ftol, xtol, gtol, max_nfev)
        if res is not None:
            return res
    if batched and is_chunked_batch(x0):  # a Dask batch: one in-memory solve per row chunk
        return chunked_least_squares(
            fun, x0, jac, args, kwargs,
            dict(method=method, bounds=bounds, ftol=ftol, xtol=xtol, gtol=gtol,
                 x_scale=x_scale, max_nfev=max_nfev, verbose=verbose, loss=loss,
                 f_scale=f_scale, diff_step=diff_step))
    x0_in = x0
    xp, dev, x0, X = start_point(x0, batched)
    xp = native_namespace(xp)  # NumPy >= 2.1: its own namespace (no wrapper calls per iteration)
    B, n = X.shape

    f0 = None
    if not batched:
        # tall problems: an in-memory x0 whose residuals are a Dask array chunked
        # by rows go to agnopt.tall_least_squares (blockwise J^T J, never
        # materialising J); a Dask x0 stays on the Array API path below
        f0 = call_checked(lambda z: fun(z, *args, **kwargs), x0, "fun", "at x0")
        if is_tall(xp, f0):
            if method in ("trf", "dogbox") or not (isinstance(loss, str) and loss == "linear"):
                raise ValueError(
                    "method: residuals chunked by rows (a tall Dask problem, solved by "
                    "tall_least_squares) take method='lm' or method='gauss-newton' with "
                    f"loss='linear', got method={method!r} (least_squares' default is 'trf', "
                    "as scipy's)")
            if diff_step is not None:
                raise ValueError("diff_step: not supported for residuals chunked by rows (a tall "
                                 "Dask problem, solved by tall_least_squares)")
            return solve_tall(fun, x0, xp, bounds, history, jac=jac, method=method, ftol=ftol,
                               xtol=xtol, gtol=gtol, x_scale=x_scale, max_nfev=max_nfev,
                               args=args, kwargs=kwargs, verbose=verbose,
                               callback=user_callback)

    lb, ub, bounded = checked_bounds(xp, bounds, X, x0, batched)
    if method == "trf" and bounded:
        # trf's iterates are strictly feasible (scipy's make_strictly_feasible)
        Xs = strictly_feasible(xp, X, lb, ub)
        if not bool(xp.all(Xs == X)):
            X, f0 = Xs, None
    max_nfev = check_max_nfev(max_nfev, n)
    x_scale = resolve_x_scale(x_scale, method)
    jac_scale = isinstance(x_scale, str)
    D = xp.ones_like(X) if jac_scale else scale_from(xp, x_scale, X, dev)

    prob = Problem(fun, jac, X, batched, args, kwargs, lb, ub, xp, dev)
    prob.diff_step = diff_step
    F = prob.residual(X, where="at x0", f=f0)
    m = F.shape[1]
    check_m_ge_n(method, m, n)
    # (a batch names the problems; one problem: max |f| is not finite exactly where a
    # residual is not, one reduction for this check and set_fscale)
    amax = None if batched else prob.max_abs(F)
    fin0 = xp.all(xp.isfinite(F), axis=-1) if batched else math.isfinite(amax)
    if not bool(xp.all(fin0) if batched else fin0):
        raise ValueError(
            "fun: residuals are not finite at the initial point x0"
            + ("" if not batched else f" (problems {indices(xp, ~fin0)})")
        )
    F = prob.set_fscale(F, amax)  # exact power-of-2 scaling when squares would overflow
    # drop finished problems from the working set (batched, row gathers allowed,
    # no per-iteration report that needs the whole batch)
    compact = (batched and B > 1 and compactable(xp) and not history
               and callback is None and verbose < 2)
    if prob.row_scaled and not (isinstance(loss, str) and loss == "linear"):
        raise ValueError(
            "fun: with a robust loss the residuals at x0 of every problem must need the same "
            "scaling: some problems' max |f| lie beyond the dtype's safe range for squares "
            "and differ from the others by more than a power of 2; solve them in a batch "
            "of their own, or rescale fun"
        )
    # the loss's margin scales with f (the linear loss has none: per-row scales are fine)
    prob.set_loss(loss, f_scale if prob.row_scaled else f_scale * prob.fscale)
    prob.configure(n, m, bounded, compact)
    prob.progress, prob.n_problems = make_progress(progress, "least_squares"), B
    try:
        if method in ("trf", "dogbox"):
            ws = WorkingSet(xp, B, dev) if compact else None
            algo = TRF if method == "trf" else DOGBOX
            out = run_trust_region(xp, prob, algo, X, F, D, jac_scale, loss, prob.f_scale, ftol,
                                   xtol, gtol, max_nfev, verbose, callback, history, ws)
        elif method == "lm":
            ws = WorkingSet(xp, B, dev) if compact else None
            out, ran = None, False
            if jax_solve.eligible(xp, prob, ws, callback, history, verbose):
                if (jax_rerun.fits(batched, bounded, jac_scale, verbose, prob)
                        and getattr(x0_in, "ndim", 0) == 1
                        and getattr(x0_in, "dtype", None) == X.dtype):
                    # from x0 to the result as one program, which later calls reuse
                    res, ran = jax_rerun.run_full(xp, prob, x0_in, X, jac_scale, ftol, xtol,
                                                  gtol, max_nfev)
                    if res is not None:
                        return res
                # JAX, fun traceable: the whole solve as one compiled program
                out = None if ran else jax_solve.run_lm_jax(xp, prob, X, F, D, jac_scale, ftol,
                                                            xtol, gtol, max_nfev)
            if out is None:
                out = run_lm(xp, prob, X, F, prob.fnorm(F), D, jac_scale, ftol,
                             xtol, gtol, max_nfev, verbose, callback, history, ws)
        else:
            out = run_gn(xp, prob, X, F, D, ftol, xtol, gtol, max_nfev, verbose, callback,
                         history)
        return finish(xp, prob, out, batched, verbose, bounded, method, loss, prob.f_scale,
                       xtol)
    except linalg_errors() as e:
        # a LAPACK failure (SVD / eigh did not converge) never escapes as such
        raise RuntimeError(
            f"least_squares: the linear algebra of a step failed ({type(e).__name__}: {e}); "
            "the Jacobian is probably not finite or badly scaled: check jac, or rescale "
            "fun or x (x_scale)") from e


def _default_bounds(bounds) -> bool:
    """``bounds`` (a pair) is the default ``(-inf, inf)``."""
    lo, hi = bounds
    return type(lo) is float and type(hi) is float and lo == -math.inf and hi == math.inf

