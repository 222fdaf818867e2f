r"""Second-order unconstrained minimization: Newton and Newton-CG.

One implementation written against the Python Array API standard; it runs on
every backend that :func:`agnopt._core.backend.resolve` accepts (NumPy, CuPy,
PyTorch, JAX, Dask, array-api-strict).

Notation: :math:`f:\mathbb{R}^n\to\mathbb{R}`, :math:`g_k = \nabla f(x_k)`,
:math:`H_k = \nabla^2 f(x_k)`.

Newton (``method="newton"``)
    Line-search Newton with a Hessian modification (Nocedal & Wright,
    *Numerical Optimization*, 2nd ed., Alg. 3.2 with Alg. 3.3): the step
    :math:`p_k` solves :math:`(H_k + \tau_k I) p_k = -g_k` by Cholesky, with
    :math:`\tau_k = 0` whenever :math:`H_k` is positive definite (the pure
    Newton step of the seed, :math:`-H_k^{-1} g_k`). Otherwise, "Cholesky with
    added multiple of the identity": with :math:`\beta = 10^{-3}\max_{ij}
    |H_{ij}|`, start from :math:`\tau = 0` if :math:`\min_i H_{ii} > 0` and
    :math:`\tau = \beta - \min_i H_{ii}` otherwise, and double
    (:math:`\tau \leftarrow \max(2\tau, \beta)`) until the Cholesky
    factorization of :math:`H_k + \tau I` succeeds. With ``options={"solver":
    "pinv"}`` the step is the seed's Moore-Penrose update
    :math:`p_k = -H_k^{\dagger} g_k` (``xp.linalg.pinv``), which is defined for
    singular Hessians (the minimum-norm Newton step). It is used where
    :math:`H_k` is positive semidefinite to within :math:`\delta =
    \sqrt{\epsilon}\max_{ij}|H_{ij}|` (Cholesky of :math:`H_k + \delta I`
    succeeds) and :math:`p_k` is a descent direction; on an indefinite
    :math:`H_k`, where :math:`-H_k^{\dagger} g_k` heads for saddle points, the
    modified-Cholesky step is used for that iteration instead. Every
    factorization goes through the checked Cholesky of
    :mod:`agnopt._core.linalg`: it counts as failed when the backend raises
    its linear-algebra error (NumPy, torch; CuPy under
    ``cupyx.errstate(linalg="raise")``), returns NaNs (JAX), or returns a
    factor with a non-positive or non-finite pivot (CuPy's partial factor), a
    pivot :math:`L_{ii}^2 \le 10\,n\,\epsilon \max_j L_{jj}^2`
    (numerically singular), or one that does not reproduce the matrix on a
    test vector. Other errors of the device (out of memory) propagate.

Newton-CG (``method="newton-cg"``)
    Matrix-free: only Hessian-vector products :math:`H_k v` are used.

    * ``options={"globalization": "line-search"}`` (default): truncated
      Newton (Nocedal & Wright Alg. 7.1, as scipy's ``Newton-CG``). CG on
      :math:`H_k p = -g_k` from :math:`p = 0`, stopped when the residual
      satisfies :math:`\|r_j\|_2 \le \eta_k \|g_k\|_2` with
      :math:`\eta_k = \min(0.5, \sqrt{\|g_k\|_2})` (superlinear
      convergence), after ``cg_maxiter`` iterations, or on curvature
      :math:`d_j^T H_k d_j \le 3\epsilon\, d_j^T d_j`. On negative curvature in
      the first CG iteration the step is the steepest-descent direction
      scaled by :math:`r^Tr / |d^T H d|` (scipy's choice); later, the current
      CG iterate is returned (it is a descent direction).
    * ``options={"globalization": "trust-region"}``: Steihaug-Toint CG
      (Nocedal & Wright Alg. 7.2) inside the trust-region method (Alg. 4.1):
      CG stops on the boundary :math:`\|p\| = \Delta_k` when it meets negative
      curvature or leaves the region, so directions of negative curvature are
      followed. With :math:`\rho_k = (f(x_k) - f(x_k + p_k)) / -(g_k^Tp_k +
      \tfrac12 p_k^T H_k p_k)`: :math:`\Delta \leftarrow \Delta/4` if
      :math:`\rho_k < 1/4`; :math:`\Delta \leftarrow \min(2\Delta,
      \Delta_{max})` if :math:`\rho_k > 3/4` and the step reached the
      boundary; the step is accepted if :math:`\rho_k > \eta = 0.15`.

Line search (newton, newton-cg line-search)
    Backtracking from :math:`\alpha = 1` until the Armijo condition
    :math:`f(x_k + \alpha p_k) \le f(x_k) + c_1 \alpha g_k^T p_k` holds, the
    next trial from the minimizer of the quadratic interpolant, safeguarded to
    :math:`[0.1\alpha, 0.5\alpha]` (Nocedal & Wright §3.5). A trial point
    where ``fun`` is not finite (``nan``/``inf``) is rejected and
    :math:`\alpha \leftarrow \alpha/4`: it does not stop the solver.
    Rounding level: when the predicted decrease :math:`-g_k^Tp_k \le
    4\epsilon|f(x_k)|`, the Armijo test cannot be decided from ``f`` values,
    and the full step is accepted if :math:`f(x_k + p_k) \le f(x_k) +
    4\epsilon|f(x_k)|` (likewise, in the trust region, :math:`\rho_k` is
    taken as 1 when the predicted decrease is at that level and ``f`` did not
    increase beyond it).

References
----------
J. Nocedal and S. J. Wright, *Numerical Optimization*, 2nd ed., Springer
2006: Alg. 3.1 (backtracking), 3.2/3.3 (Newton with Hessian modification),
4.1 (trust region), 7.1 (line-search Newton-CG), 7.2 (CG-Steihaug).
T. Steihaug, "The conjugate gradient method and trust regions in large scale
optimization", SIAM J. Numer. Anal. 20 (1983) 626-637.
scipy.optimize.minimize(method="Newton-CG") (``_minimize_newtoncg``), whose
CG termination and negative-curvature rules the line-search variant follows.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import array_api_compat

from .._derivatives import autodiff as _autodiff
from .._core.backend import native_namespace, on_device_of, resolve
from .._core.errors import OptimizeWarning
from .._core.result import OptimizeResult
from .._core.user_code import note
from .._core.typing import Array, ArrayLike
from .certify import certify, needs_certificate
from .curvature import settle
from .common import _gnorm, _is_dask, _nonnegative, _persist
from .newton import _run_newton, full_step as _newton_full_step
from .newton_cg import _run_newton_cg_ls, full_step as _cg_full_step
from .problem import _Problem
from .trust_region import _run_newton_cg_tr

__all__ = ["minimize"]

_METHODS = ("newton", "newton-cg")
_FD = ("2-point", "3-point", "cs")
_OPTION_KEYS = {
    "newton": {
        "gtol", "xtol", "maxiter", "solver", "pinv_rtol", "history", "c1",
        "max_backtracks", "disp",
    },
    "newton-cg": {
        "gtol", "xtol", "maxiter", "globalization", "cg_maxiter", "history",
        "c1", "max_backtracks", "initial_trust_radius", "max_trust_radius",
        "eta", "disp",
    },
}

_MESSAGES = {
    0: "Optimization terminated successfully: gradient norm <= gtol.",
    1: "Maximum number of iterations has been exceeded.",
    2: "Optimization terminated successfully: step size <= xtol.",
    3: "Line search failed to find a lower function value (precision loss, "
       "or an inaccurate gradient); the result may not be a minimizer.",
    4: "The gradient or Hessian became non-finite.",
    5: "Trust region radius shrank below xtol without sufficient decrease "
       "(precision loss, or an inaccurate gradient).",
    6: "Step size <= xtol only because the line search or trust region shortened "
       "the step: the full Newton step at x is longer than xtol allows and the "
       "gradient norm > gtol, so x is not a stationary point (precision loss, or an "
       "inaccurate gradient or Hessian); the result may not be a minimizer.",
    7: "The finite-difference gradient is too inaccurate to certify gtol in this dtype "
       "(its truncation error exceeds gtol at the final point) and fun does not accept "
       "complex input for a complex-step check; the result may not be a minimizer: use "
       "jac='cs', 'autodiff' or a callable, float64, or a larger gtol.",
    99: "`callback` raised `StopIteration`.",
}


@on_device_of(1, "x0")  # CuPy: run on the GPU of the arrays
def minimize(
    fun: Callable[..., Any],
    x0: ArrayLike,
    args: tuple[Any, ...] = (),
    method: str | None = "newton",
    jac: bool | str | Callable[..., Array] | None = None,
    hess: str | Callable[..., Array] | None = None,
    hessp: str | Callable[..., Array] | None = None,
    bounds: Any = None,
    constraints: Any = (),
    tol: float | None = None,
    callback: Callable[..., Any] | None = None,
    options: dict[str, Any] | None = None,
    *,
    maxiter: int | None = None,
) -> OptimizeResult:
    r"""Minimize a scalar function of one 1-D array with a second-order method.

    Parameters
    ----------
    fun : callable
        ``fun(x, *args) -> f``, ``x`` of shape ``(n,)``; ``f`` a 0-d array (or
        a Python float). With ``jac=True``, ``fun`` returns ``(f, g)``.
        Write ``fun`` with ``xp = array_api_compat.array_namespace(x)`` to keep
        it backend-agnostic. If ``fun`` raises, the exception propagates
        unchanged (nothing is caught or retried).
    x0 : array, shape (n,)
        Starting point, of a real floating dtype; every array the solver makes
        has its backend, device and dtype. Not modified. As in scipy, a list
        or tuple of numbers (or a Python number) is converted to a float64
        NumPy array, and an integer or boolean array to float64 of its own
        backend and device.
    args : tuple
        Extra arguments of ``fun``, ``jac``, ``hess``, ``hessp``.
    method : {"newton", "newton-cg"} or None
        See the module docstring for the mathematics. ``None`` (scipy's
        default, which picks BFGS, a method agnopt does not have) is
        ``"newton"``. Case-insensitive, so scipy's ``"Newton-CG"`` works.
    jac : None, True, callable, {"2-point", "3-point", "cs", "autodiff"}
        The gradient. ``None`` (default, as scipy): ``"2-point"`` forward
        differences. A success stop made with ``"2-point"``/``"3-point"`` is
        re-checked with an accurate gradient (Notes). ``True``: ``fun`` returns ``(f, g)``. A callable
        ``jac(x, *args) -> (n,)``. ``"cs"`` (complex step) needs ``fun`` to
        accept complex input. ``"autodiff"``: torch / JAX arrays only.
    hess : None, callable, {"2-point", "3-point", "cs", "autodiff"}
        The Hessian, ``hess(x, *args) -> (n, n)``. ``None``: built from
        ``hessp`` if given (``n`` products, newton only), by autodiff when
        ``jac="autodiff"``, otherwise by finite differences of the gradient
        (forward differences with step ``sqrt(eps) max(1, |x_i|)`` for an exact
        gradient; central differences with step ``delta^(1/3) max(1, |x_i|)``
        when the gradient itself is a finite difference of relative error
        delta). A
        string selects that scheme for differencing the gradient. For
        newton-cg a dense ``hess`` is evaluated once per iteration and
        multiplied.
    hessp : None, callable, "autodiff"
        ``hessp(x, v, *args) -> H(x) v`` (newton-cg; for newton, the Hessian
        is assembled from ``n`` products). ``None`` for newton-cg: products from
        ``hess``, or autodiff (``jac``/``hess`` = ``"autodiff"``), or the
        directional difference ``(g(x + h v) - g(x)) / h``, ``h =
        sqrt(eps) max(1, ||x||) / ||v||`` (central differences with
        ``h = delta^(1/3) max(1, ||x||) / ||v||`` for a finite-difference
        gradient).
    bounds, constraints : ignored
        Neither method handles them: as scipy's Newton-CG, a ``bounds`` other
        than ``None`` issues ``RuntimeWarning("Method <method> cannot handle
        bounds.")``, non-empty ``constraints`` ``RuntimeWarning("Method
        <method> cannot handle constraints.")``, and the problem is solved
        without them.
    tol : float, optional
        Sets ``gtol``.
    callback : callable, optional
        Called after each iteration as ``callback(intermediate_result)``
        (an :class:`OptimizeResult` with ``x``, ``fun``, ``jac``, ``nit``) if
        its signature has a parameter of that name, else as ``callback(xk)``.
        Raising ``StopIteration`` stops the solver (status 99).
    options : dict, optional
        ``gtol`` (default ``sqrt(eps)`` of the dtype: 1.5e-8 in float64,
        3.5e-4 in float32), ``xtol`` (default ``eps^(2/3)``: 3.7e-11 in
        float64, 4.8e-5 in float32), ``maxiter``, ``history`` (bool),
        ``c1`` (Armijo constant, 1e-4), ``max_backtracks`` (60), ``disp``
        (``True``: print scipy's final report: the message, final value and
        counts; a failure's message is issued as an ``OptimizeWarning``
        instead of printed, as scipy does). Newton: ``solver`` (``"cholesky"`` default, or ``"pinv"``),
        ``pinv_rtol`` (the ``rtol`` of ``xp.linalg.pinv``; default the
        backend's, ``n * eps``). Newton-CG: ``globalization``
        (``"line-search"`` default, or ``"trust-region"``), ``cg_maxiter``
        (default ``20 * n``), and for the trust region
        ``initial_trust_radius`` (1.0), ``max_trust_radius`` (1000.0),
        ``eta`` (0.15). Unknown keys are ignored with an
        :class:`agnopt.OptimizeWarning` "Unknown solver options: ..." (what
        scipy.optimize.minimize does; a misspelt key therefore does not stop
        the run: turn the warning into an error with
        ``warnings.simplefilter("error", agnopt.OptimizeWarning)``).
    maxiter : int, optional
        Keyword only (not one of scipy's parameters). Maximum number of
        iterations (default ``200 * n``, as scipy's Newton-CG). Same as
        ``options["maxiter"]``.

    The parameters up to ``options`` are positional-or-keyword in scipy's
    order: ``minimize(fun, x0, args, method, jac, hess, hessp, bounds,
    constraints, tol, callback, options)``.

    Warns
    -----
    OptimizeWarning
        Unknown keys in ``options``; with ``disp=True``, a run that did not
        succeed.
    RuntimeWarning
        ``bounds`` or ``constraints`` given (ignored, as scipy's Newton-CG).

    Returns
    -------
    OptimizeResult
        ``x`` (n,), ``fun`` (0-d array), ``jac`` (the gradient at ``x``), ``nit``,
        ``nfev``, ``njev``, ``nhev``, ``status`` (0 or 2: success; 1, 3, 4,
        5, 6, 7, 99: not; see Notes), ``message``, ``success``, and
        with ``options={"history": True}`` a ``history`` dict of lists:
        ``x`` (iterates, ``x[0]`` is ``x0``), ``fun``, ``grad_norm`` (floats),
        ``alpha`` (step lengths; the trust radius for the trust region),
        and ``tau`` (newton: the Hessian shift) or ``cg_iter`` (newton-cg).

    Raises
    ------
    ValueError
        Unknown ``method`` (the message names ``method``); ``x0`` not
        1-D or empty; ``fun(x0)`` or the gradient at ``x0`` not finite;
        ``fun``/``jac``/``hess``/``hessp`` returning the wrong shape;
        ``tol``/``gtol``/``xtol`` negative or ``maxiter`` not an integer >= 0.
    TypeError
        ``fun`` not callable; ``x0`` not one real floating array (a tree, a
        complex array, a ragged or non-numeric list); ``fun`` returning an
        array of another backend; ``"autodiff"`` with arrays other than
        torch / JAX (:class:`agnopt.AutodiffUnavailableError`, also
        a ``ValueError``).
    Exception
        An exception raised by ``fun`` (or ``jac``, ``hess``, ``hessp``)
        propagates with its own type and message, as in scipy; at ``x0`` it
        carries a note (Python >= 3.11) saying so.

    Notes
    -----
    **Stopping conditions** (checked in this order, each iteration):

    * status 0, success: :math:`\|g_k\|_\infty \le` ``gtol`` (checked also at
      ``x0``: a stationary start at a minimum returns after 0 iterations)
      and the curvature there is non-negative (see below).
    * status 1, not success: ``maxiter`` iterations done.
    * status 2, success: the accepted step satisfies
      :math:`\|x_{k+1} - x_k\|_\infty \le` ``xtol`` :math:`\cdot \max(1,
      \|x_{k+1}\|_\infty)` at a point that is stationary to the tolerance
      :math:`t = 10\,x_g \max(1, \|x_{k+1}\|_\infty)`, :math:`x_g =
      \max(\text{xtol}, \sqrt\epsilon, \sqrt\delta)` (:math:`\delta` the
      gradient's relative error: :math:`\epsilon` exact, :math:`\sqrt\epsilon`
      ``"2-point"``, :math:`\epsilon^{2/3}` ``"3-point"``): the method's full
      step (before the line search or trust region shortened it) from
      :math:`x_k`, or else the one computed at :math:`x_{k+1}` (one more
      Hessian, or CG products; the modified Newton step for newton, the
      truncated-CG step for newton-cg), has :math:`\|p\|_\infty \le t`.
      (Where the gradient test holds too, the status is 0.)
    * status 3, not success: the line search found no decrease in
      ``max_backtracks`` trials (or the step shrank below rounding), or
      no decrease was found along a direction of negative curvature. With a
      ``"2-point"``/``"3-point"`` gradient such a stall is first re-checked
      (below).
    * status 4, not success: the gradient or Hessian became non-finite at an
      accepted point.
    * status 5, not success (trust region): the radius fell below
      ``xtol * max(1, ||x||)`` with no acceptable step (re-checked first
      with a finite-difference gradient, as status 3).
    * status 6, not success: the step test fired, but only because the line
      search or the trust region shortened the step: the gradient test fails
      and the full step is longer than :math:`t` (status 2 above), so ``x``
      is not a stationary point (a wrong or inaccurate gradient or Hessian, a
      non-smooth ``fun``, precision loss). scipy's ``Newton-CG`` reports
      such stops as "precision loss" (its status 2, ``success=False``);
      ``x`` and the other fields are where the solver stopped.
    * status 7, not success: a ``"2-point"``/``"3-point"`` gradient stop that
      could not be certified (below): the finite-difference gradient is too
      inaccurate to certify ``gtol`` in this dtype and ``fun`` does not take
      complex input; use ``jac="cs"``, ``"autodiff"`` or a callable, float64,
      or a larger ``gtol``.
    * status 99, not success: ``callback`` raised ``StopIteration``.

    **Finite-difference gradients** (``jac=None``, ``"2-point"``,
    ``"3-point"``): their error (forward: :math:`\tfrac12 h_i|H_{ii}|`,
    :math:`h_i = \sqrt\epsilon\max(1, |x_i|)`; central: :math:`O(h^2)`) can
    exceed ``gtol`` by far (float32 Rosenbrock: 0.1 against ``gtol`` 3.5e-4),
    so statuses 0 and 2 reached with one are re-checked at the final ``x``
    with an accurate gradient: the complex step where ``fun`` accepts
    complex input (checked against finite differences as least_squares
    checks its default complex step), else central differences with a
    Richardson error bound. The stop stands where that gradient passes
    ``gtol`` (status 0) or the method's step computed with it is within
    :math:`10\max(\text{xtol}, \sqrt\epsilon, \delta_a)\max(1,
    \|x\|_\infty)` (status 2; :math:`\delta_a` its relative error). Otherwise
    the solve goes on from ``x`` with the complex-step gradient (``fun``
    takes complex input; the answer is then as accurate as with
    ``jac="cs"``), else with central differences (from ``"2-point"``), and a
    central-difference stop that cannot be certified is status 7. The check
    costs ``n`` complex and 3 real evaluations of ``fun`` (or ``4n`` real
    ones) and one more Hessian or CG solve, counted in ``nfev``; in float64
    it makes the default gradient's results accurate to about 1e-8 instead
    of 1e-5 (scipy's stop where its 2-point gradient passes ``gtol``).

    The same check is made where such a run stalls, since near a minimizer
    the forward difference's error (:math:`\tfrac12 h_i|H_{ii}|`, about
    ``gtol`` times :math:`|H_{ii}|`) can keep the gradient test from firing
    and stop the line search: where the line search fails (status 3), the
    trust region collapses (status 5), or, with ``"2-point"``, an accepted
    step's predicted or actual decrease of ``f`` is at its rounding level
    (:math:`\le 4\epsilon|f|`: ``f`` can no longer tell the iterates apart).
    A certified stall ends with status 0 or 2 (after the curvature test
    below); otherwise the solve goes on with the complex step or central
    differences, and a ``"3-point"`` stall that cannot be certified keeps its
    status (3 or 5). (``v[0]**2 + 3*v[1]**2`` from ``[1, 1]`` ended with
    status 3 at its minimum, and ``v[0]**2 + v[1]**4/4 - v[1]**2/2`` from
    ``[1, 0]`` used 400 iterations at its minimum; both now succeed in 3 to
    8 iterations.)

    A stop of status 2 is thus as reliable as the gradient: with a
    finite-difference gradient on an ill-conditioned problem (condition
    number near :math:`1/\sqrt\delta` or above) the gradient's noise can
    move the answer far along the flat directions while every step is
    short (use an exact gradient there). A gradient inconsistent with
    ``fun`` that vanishes at some point ends there with status 0 (the
    gradient test cannot see it).

    Saddle points and maxima are not minima. Statuses 0 and 2 are reported
    only where the curvature is non-negative: newton factorizes
    :math:`H + \sqrt{\epsilon}\max|H_{ij}|\,I` (checked Cholesky) at the final
    point; newton-cg runs CG with Hessian-vector products on a fixed vector
    (at most ``n`` products) and watches for :math:`d^THd < 0`. Where negative
    curvature is found the solver steps along it (a backtracking search with
    sufficient decrease) and goes on; so ``x0`` at a saddle is left rather
    than returned (scipy's methods return it). The test costs one Hessian or up
    to ``n`` products at the end, counted in ``nhev`` (or ``njev``/``nfev`` where
    they are finite differences). The rule, its reference
    and its limits (a negative-curvature direction orthogonal to CG's Krylov
    space is not seen) are in :mod:`agnopt._minimize.curvature`.

    Newton's method with the line search is affine invariant: for
    :math:`g(y) = f(Ay + b)`, the iterates satisfy :math:`x_k = A y_k + b`
    as long as the Hessians met are positive definite (the modification and
    ``gtol`` are not invariant). All control flow on data goes through
    ``float(...)`` of 0-d arrays, so every iteration synchronizes with the
    device. Dask: iterates are persisted after each step so graphs do not
    grow, scalars read together are computed in one ``dask.compute``, and
    the small ``(n, n)`` Newton system is computed into memory and solved
    with that array's namespace (``dask.array.linalg`` has no ``pinv`` and
    its ``cholesky`` returns the upper factor); the step returns as a Dask
    array. Dask works but is slow for small problems (one graph compute per
    scalar read).

    Accuracy with finite differences: the default ``jac=None`` (2-point)
    gradient has error :math:`O(\sqrt{\epsilon})` relative, which would
    limit the solution to about 1e-5 relative in float64 (scipy's); the
    check above goes on with the complex step or central differences where
    it falls short of ``gtol``. ``"cs"``, a callable or ``"autodiff"`` avoid
    the extra work.
    """
    if not callable(fun):
        raise TypeError(f"fun: expected a callable, got {type(fun).__name__} {fun!r:.40}")
    method_name = "newton" if method is None else method
    method, options = _check_method_and_options(method_name, options)
    # as scipy.optimize.minimize for a method without constraints or bounds
    # (Newton-CG): a RuntimeWarning each, and they are ignored
    if _has_constraints(constraints):
        warnings.warn(f"Method {method_name} cannot handle constraints.", RuntimeWarning,
                      stacklevel=3)  # the caller of minimize (through on_device_of)
    if bounds is not None:
        warnings.warn(f"Method {method_name} cannot handle bounds.", RuntimeWarning, stacklevel=3)
    if not isinstance(args, tuple):
        args = (args,)
    x0 = _as_x0(x0)
    xp, device, n, dtype = _check_x0(x0)
    xp = native_namespace(xp)  # NumPy >= 2.1: its own functions (small per-iteration arrays)
    if "autodiff" in (jac, hess, hessp):
        _autodiff.autodiff_backend(x0, "minimize(..., 'autodiff')")
    gtol, xtol, maxiter = _tolerances(xp, dtype, n, tol, maxiter, options)
    c1 = float(options.get("c1", 1e-4))
    max_bt = int(options.get("max_backtracks", 60))

    P = _Problem(fun, jac, hess, hessp, args, xp, dtype, device, n)
    x, f, g = _start(P, x0)
    history: dict | None = None
    if options.get("history", False):
        history = {"x": [x], "fun": [float(f)], "grad_norm": [_gnorm(xp, g)], "alpha": []}
        history["tau" if method == "newton" else "cg_iter"] = []

    state = dict(x=x, f=f, g=g, nit=0, status=None)
    state["ctx"] = dict(
        mode="hessian" if method == "newton" else "hvp", maxiter=maxiter, c1=c1, max_bt=max_bt,
        xtol=xtol, history=history, callback=callback,
        cg_maxiter=int(options.get("cg_maxiter", 20 * n)),
    )
    cg_maxiter = state["ctx"]["cg_maxiter"]
    state["ctx"]["full_step"] = (
        (lambda P_, x_, g_: _newton_full_step(P_, x_, g_, options)) if method == "newton"
        else (lambda P_, x_, g_: _cg_full_step(P_, x_, g_, cg_maxiter))
    )
    while True:
        if method == "newton":
            _run_newton(P, state, options, gtol, xtol, maxiter, c1, max_bt, history, callback)
        elif options.get("globalization", "line-search") == "line-search":
            _run_newton_cg_ls(P, state, options, gtol, xtol, maxiter, c1, max_bt, history, callback)
        elif options.get("globalization") == "trust-region":
            _run_newton_cg_tr(P, state, options, gtol, xtol, maxiter, history, callback)
        else:
            raise ValueError(
                f"options['globalization'] must be 'line-search' or 'trust-region'; "
                f"got {options.get('globalization')!r}"
            )
        # a success stop or a stall (line search or trust region failed, steps at
        # the rounding level of f) on a finite-difference gradient: certified by
        # an accurate gradient, or the solve goes on with the complex step or
        # central differences (each switch at most once)
        if not needs_certificate(P, state):
            break
        stalled = state["status"] not in (0, 2)
        if certify(P, state, gtol, xtol):
            continue
        # a stall certified stationary: the curvature test the success stops had
        if not (stalled and state["status"] in (0, 2) and not settle(P, state)):
            break
    res = _result(P, state, history)
    if options.get("disp", False):
        _report(res)
    return res


def _has_constraints(constraints: Any) -> bool:
    """Whether ``constraints`` holds any (scipy: ``np.any(constraints)``): a dict or
    a constraint object is one, a list or tuple holds its items."""
    if constraints is None:
        return False
    if isinstance(constraints, (list, tuple, dict)):
        return len(constraints) > 0
    return True


def _report(res: OptimizeResult) -> None:
    """``disp=True``: scipy's final report (the message is printed on success
    and issued as an :class:`OptimizeWarning` otherwise, as scipy does)."""
    if res.success:
        print(res.message)
    else:
        warnings.warn(res.message, OptimizeWarning, stacklevel=4)  # + minimize's on_device_of frame
    print(f"         Current function value: {float(res.fun):f}")
    print(f"         Iterations: {res.nit:d}")
    print(f"         Function evaluations: {res.nfev:d}")
    print(f"         Gradient evaluations: {res.njev:d}")
    print(f"         Hessian evaluations: {res.nhev:d}")


def _check_method_and_options(method: Any, options: dict | None) -> tuple[str, dict]:
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise ValueError(
            f"method: unknown method {method!r}; choose one of {', '.join(map(repr, _METHODS))}"
        )
    method = method.lower()
    options = dict(options or {})
    unknown = [k for k in options if k not in _OPTION_KEYS[method]]
    if unknown:
        # As scipy.optimize.minimize: a warning naming them, and they are ignored.
        warnings.warn(
            f"Unknown solver options: {', '.join(map(str, unknown))} (method={method!r} "
            f"knows {', '.join(sorted(_OPTION_KEYS[method]))})",
            OptimizeWarning,
            stacklevel=4,  # the caller of minimize (through its on_device_of wrapper)
        )
        for k in unknown:
            del options[k]
    return method, options


def _as_x0(x0: Any) -> Any:
    """``x0`` as one real floating array, converted as scipy does.

    A list or tuple of numbers (not of arrays: that is a tree, refused by
    ``_check_x0``), or a Python number, becomes a float64 NumPy
    array (at least 1-D, as ``numpy.atleast_1d``); an integer or boolean
    array becomes float64 of its own backend and device. Anything else is
    returned unchanged for ``_check_x0``.
    """
    if (isinstance(x0, (list, tuple)) and not _holds_arrays(x0)) or type(x0) in (int, float):
        import array_api_compat.numpy as npx

        try:
            a = npx.asarray(x0, dtype=npx.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"x0: a {type(x0).__name__} that is not a (rectangular) sequence of real "
                f"numbers ({e})"
            ) from None
        return npx.reshape(a, (1,)) if a.ndim == 0 else a
    if array_api_compat.is_array_api_obj(x0) and hasattr(x0, "dtype"):
        xp = array_api_compat.array_namespace(x0)
        try:
            convert = xp.isdtype(x0.dtype, ("integral", "bool"))
        except (TypeError, ValueError):  # pragma: no cover - exotic dtypes
            convert = False
        if convert:
            return xp.astype(x0, xp.float64)
    return x0


def _holds_arrays(seq: Any) -> bool:
    """True for a list/tuple with an array among its (nested) items: a tree of
    parameters, which minimize does not take (the message says so)."""
    return any(
        _holds_arrays(v) if isinstance(v, (list, tuple))
        else array_api_compat.is_array_api_obj(v) and getattr(v, "ndim", 0) >= 1
        for v in seq
    )


def _check_x0(x0: Any) -> tuple[Any, Any, int, Any]:
    """``(xp, device, n, dtype)`` of a valid ``x0`` (see ``minimize``'s Raises)."""
    if not array_api_compat.is_array_api_obj(x0) or type(x0) in (int, float, complex, bool):
        raise TypeError(
            f"x0 must be one 1-D array of shape (n,); got {type(x0).__name__} "
            "(minimize does not take trees: concatenate the parameters into one vector)"
        )
    xp, device = resolve(x0, "x0")
    if x0.ndim != 1:
        raise ValueError(f"x0 must be a 1-D array of shape (n,); got shape {tuple(x0.shape)}")
    n = int(x0.shape[0])
    if n == 0:
        raise ValueError("x0 must have at least one element")
    return xp, device, n, x0.dtype


def _tolerances(xp: Any, dtype: Any, n: int, tol: Any, maxiter: Any, options: dict):
    """``(gtol, xtol, maxiter)`` with their defaults, checked."""
    eps = float(xp.finfo(dtype).eps)
    gtol = _nonnegative("tol" if tol is not None else "options['gtol']",
                        options.get("gtol", eps ** 0.5) if tol is None else tol)
    xtol = _nonnegative("options['xtol']", options.get("xtol", eps ** (2 / 3)))
    if maxiter is None:
        maxiter = options.get("maxiter", 200 * n)
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 0:
        raise ValueError(f"maxiter: expected an integer >= 0, got {maxiter!r}")
    return gtol, xtol, int(maxiter)


def _start(P: _Problem, x0: Any) -> tuple[Any, Any, Any]:
    """A copy of ``x0`` and ``f``, ``g`` there, checked finite."""
    xp = P.xp
    x = _persist(xp.asarray(x0, copy=True) if not _is_dask(x0) else x0 + 0.0)
    try:
        f, g = P.value_and_grad(x, "x0")
    except Exception as e:
        # as scipy, an exception of fun / jac propagates with its own type;
        # at x0 it gets a note saying so (agnopt's own checks of what fun /
        # jac returned raise ValueError / TypeError naming them)
        note(e, "agnopt: raised while evaluating fun (and its gradient) at x0")
        raise
    if not bool(xp.isfinite(f)):
        raise ValueError(
            f"fun(x0) is not finite ({float(f)}); minimize needs a finite objective at the "
            "starting point"
        )
    if not bool(xp.all(xp.isfinite(g))):
        raise ValueError("the gradient at x0 is not finite; check jac or the starting point")
    return x, _persist(f), _persist(g)


def _result(P: _Problem, state: dict, history: dict | None) -> OptimizeResult:
    status = state["status"]
    res = OptimizeResult(
        x=state["x"],
        fun=state["f"],
        jac=state["g"],
        nit=state["nit"],
        nfev=P.nfev,
        njev=P.njev,
        nhev=P.nhev,
        status=status,
        message=_MESSAGES[status],
        success=status in (0, 2),
    )
    if history is not None:
        res["history"] = history
    return res
