r"""Fisher scoring: maximum likelihood by Newton's method with the Fisher matrix.

For observations :math:`y` whose distribution (a :mod:`~agnopt.families`
family) is parameterized by the model's outputs :math:`o(\theta)`
(``mean_fn``), the negative log-likelihood :math:`f(\theta) = -\sum_i w_i
\log p(y_i \mid o_i(\theta))` has the gradient :math:`g = -J^T s` (``s``:
the family's score, weighted) and, in expectation over :math:`y`, the
Hessian :math:`F = J^T \operatorname{diag}(w) J`, the Fisher matrix. Fisher
scoring is Newton's method with :math:`F` in place of the Hessian:

.. math::

   (F + \lambda I)\, p = -g, \qquad \theta \leftarrow \theta + \alpha p .

For a generalized linear model with its canonical link (logistic regression,
Poisson regression with a log link) the Fisher matrix *is* the Hessian and
the iteration is the iteratively reweighted least squares (IRLS) of
McCullagh & Nelder; for a Gaussian of known variance it is Gauss-Newton.

Global convergence: :math:`F` is positive semidefinite, so :math:`p` is a
descent direction; the step length :math:`\alpha` is found by backtracking
(Armijo's condition, halving from 1), and trial points where ``mean_fn``
leaves the family's domain count as infinitely bad. A singular :math:`F`
(with ``damping=0``) gives the minimum-norm step (the eigen-decomposition's
pseudo-inverse), as ``least_squares(method="gauss-newton")`` does.

Every problem of a batch runs the same arithmetic as alone (an unbatched
call is a batch of one): own step, own line search, own stopping test.

References: R. A. Fisher (1925), the method of scoring; P. McCullagh,
J. A. Nelder, *Generalized Linear Models*, 2nd ed., Chapman & Hall (1989),
sec. 2.5; J. Nocedal, S. J. Wright, *Numerical Optimization*, 2nd ed.,
sec. 3.1 (backtracking) and 10.3 (Gauss-Newton).
"""

from __future__ import annotations

from typing import Any, Callable

import array_api_compat

from .._core.backend import namespace_name, on_device_of, resolve
from .._core.lazy import persist, to_local
from .._core.result import OptimizeResult
from .._core.user_code import call_user
from . import core as _core
from .families import Family, get_family
from .._core.typing import Array

__all__ = ["fisher_scoring"]

MESSAGES = {
    0: "Optimization terminated successfully: gradient norm <= gtol.",
    1: "Maximum number of iterations has been exceeded.",
    2: "Optimization terminated successfully: step size <= xtol.",
    3: "Line search failed to find a lower negative log-likelihood (precision loss, "
       "or an inaccurate Jacobian); the result may not be a maximum of the likelihood.",
    4: "The Jacobian or the Fisher matrix became non-finite.",
    5: "Optimization terminated successfully: the predicted decrease g^T (F + damping I)^+ g "
       "<= ftol * max(1, |f|); the last full step was taken without a line search.",
    6: "Step size <= xtol only because the line search shortened the step: the full "
       "scoring step at x is longer than xtol allows and the gradient norm > gtol, so x "
       "is not a stationary point (precision loss, or an inaccurate Jacobian); the result "
       "may not be a maximum of the likelihood.",
    99: "`callback` raised `StopIteration`.",
}


def _as_float_array(xp: Any, a: Any, dtype: Any, dev: Any, what: str) -> Any:
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        try:
            axp = array_api_compat.array_namespace(a)
        except TypeError:
            axp = None
        if axp is not None and axp is not xp:
            raise TypeError(
                f"{what}: a {namespace_name(axp)} array where x0 is {namespace_name(xp)}; "
                "use one backend"
            )
        return a if a.dtype == dtype else xp.astype(a, dtype)
    try:
        return xp.asarray(a, dtype=dtype, device=dev)
    except Exception as e:
        raise TypeError(f"{what}: expected an array, got {type(a).__name__}") from e


def _check_tol(name: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a non-negative float, got {type(v).__name__}") from None
    if not f >= 0 or f != f or f == float("inf"):
        raise ValueError(f"{name}: expected a finite non-negative float, got {v!r}")
    return f


class _Model:
    """``mean_fn`` as ``(B, n) -> (B, m[, K])`` plus its flattened Jacobian."""

    def __init__(self, mean_fn, jac, batched, args, kwargs, xp, fam, n):
        self.mean_fn, self.batched, self.args, self.kwargs = mean_fn, batched, args, kwargs
        self.xp, self.fam, self.n = xp, fam, n
        self.user_jac = jac if callable(jac) else None
        self.jac = "callable" if callable(jac) else jac

    def out(self, X: Any, where: str) -> Any:
        # an exception of mean_fn propagates with its own type, with a note
        o = call_user(lambda z: self.mean_fn(z, *self.args, **self.kwargs),
                      X if self.batched else X[0, :], "mean_fn", where)
        if not (hasattr(o, "shape") and hasattr(o, "dtype")):
            raise TypeError(f"mean_fn: expected an array, got {type(o).__name__}")
        return o if self.batched else o[None, ...]

    def flat(self, Xb: Any) -> Any:
        """(B, n) -> (B, M) for the derivatives."""
        o = self.out(Xb, "at a finite-difference point (the Jacobian)")
        return self.xp.reshape(o, (o.shape[0], -1))

    def jacobian(self, X: Any, out: Any) -> Any:
        xp = self.xp
        B, n = X.shape
        M = 1
        for s in out.shape[1:]:
            M *= int(s)
        if self.jac == "callable":
            J = call_user(lambda z: self.user_jac(z, *self.args, **self.kwargs),
                          X if self.batched else X[0, :], "jac")
            J = xp.reshape(J, (B, M, n))
        elif self.batched:
            J = _core.output_jacobian(self.flat, X, self.jac, batched=True,
                                      f0=xp.reshape(out, (B, M)))
        else:
            f1 = lambda v: xp.reshape(self.out(v[None, :], "at a finite-difference point (the Jacobian)"), (-1,))  # noqa: E731
            J = _core.output_jacobian(f1, X[0, :], self.jac, f0=xp.reshape(out, (-1,)))[None, ...]
        if tuple(J.shape) != (B, M, n):
            raise ValueError(f"jac: expected shape {(B, M, n)}, got {tuple(J.shape)}")
        return J


def _nll_and_pieces(xp, fam, Y, O, Wt):
    """Per-problem NLL (B,), flattened score (B, M) and Fisher weights (B, M)."""
    B = O.shape[0]
    nll = fam.nll(xp, Y, O)
    if Wt is not None:
        nll = nll * Wt
    f = xp.sum(xp.reshape(nll, (B, -1)), axis=1)
    s = fam.score(xp, Y, O)
    w = fam.fisher_weights(xp, O)
    if Wt is not None:
        wt = Wt if fam.event_ndim == 0 else Wt[..., None]
        s, w = s * wt, w * wt
    return f, xp.reshape(s, (B, -1)), xp.reshape(w, (B, -1))


def _in_domain_rows(xp, fam, O):
    B = O.shape[0]
    ok = fam.in_domain(xp, O)
    return xp.all(xp.reshape(ok, (B, -1)), axis=1)


def _direction(xp, F, g, damping):
    """``p = -(F + damping I)^+ g`` per problem by a symmetric eigen-decomposition.

    Eigenvalues below ``n eps max(eig)`` are treated as zero (minimum-norm
    step). Dask: computed in memory. Returns ``(p, decrement)`` with
    ``decrement = -g . p >= 0``.
    """
    xl, Fl = to_local(xp, F)
    gl = to_local(xp, g)[1]
    n = Fl.shape[-1]
    lam, V = xl.linalg.eigh(0.5 * (Fl + xl.matrix_transpose(Fl)))
    lam = lam + damping
    top = xl.max(xl.abs(lam), axis=-1, keepdims=True)
    cut = n * float(xl.finfo(Fl.dtype).eps) * top
    keep = lam > cut
    inv = xl.where(keep, 1.0 / xl.where(keep, lam, xl.ones_like(lam)), xl.zeros_like(lam))
    c = xl.matmul(xl.matrix_transpose(V), gl[..., None])[..., 0]
    p = -xl.matmul(V, (inv * c)[..., None])[..., 0]
    if xl is not xp:
        p = xp.asarray(p, dtype=g.dtype)
    return p, -xp.sum(g * p, axis=-1)


def _check_data(xp, fam, O, y, weights, batched, dtype, dev):
    """``y`` and ``weights`` as ``(B, ...)`` arrays of ``x0``'s dtype, checked
    against the outputs ``O`` and the family's support."""
    Y = _as_float_array(xp, y, dtype, dev, "y")
    if not batched:
        Y = Y[None, ...]
    # one observation per output, except for Gaussian(variance=None), whose
    # outputs (mean, variance) describe one observation
    want = tuple(O.shape) if (fam.event_ndim == 0 or fam.event_size is None) else tuple(O.shape[:-1])
    if tuple(Y.shape) != want:
        raise ValueError(
            f"y: shape {tuple(Y.shape[1:] if not batched else Y.shape)} does not match the "
            f"outputs of mean_fn, {tuple(O.shape[1:] if not batched else O.shape)}"
        )
    fam.check_y(xp, Y)
    Wt = None
    if weights is not None:
        Wt = _as_float_array(xp, weights, dtype, dev, "weights")
        if not batched:
            Wt = Wt[None, ...]
        obs_shape = tuple(O.shape) if fam.event_ndim == 0 else tuple(O.shape[:-1])
        if tuple(Wt.shape) != obs_shape:
            raise ValueError(
                f"weights: expected one weight per observation, shape "
                f"{obs_shape if batched else obs_shape[1:]}, got "
                f"{tuple(Wt.shape if batched else Wt.shape[1:])}"
            )
        if not bool(xp.all(xp.isfinite(Wt) & (Wt >= 0))):
            raise ValueError("weights: must be finite and >= 0")
    return Y, Wt


def _line_search(xp, model, fam, Y, Wt, X, f, O, p, dec, active, small, c1, max_backtracks):
    """Backtracking (Armijo, halving from 1) for every active problem at once.

    A trial point whose outputs leave the family's domain is rejected. Rows in
    ``small`` accept the first trial point inside the domain. Returns the new
    ``X, f, O``, the masks ``accepted`` and ``pending`` (no acceptable point
    found) and the number of trial evaluations per problem.
    """
    B = X.shape[0]
    alpha = xp.ones_like(f)
    pending = active
    accepted = xp.zeros_like(active)
    ntrial = xp.zeros(f.shape, dtype=xp.int64, device=_device(f))
    X_new, f_new, O_new = X, f, O
    rows = (B,) + (1,) * (O.ndim - 1)
    for _k in range(max_backtracks):
        Xt = xp.where(pending[:, None], X + alpha[:, None] * p, X)
        Ot = model.out(Xt, "at a trial point")
        ntrial = ntrial + xp.astype(pending, xp.int64)
        okd = _in_domain_rows(xp, fam, Ot)
        # outside the domain: evaluate the NLL at a safe output, then reject
        Osafe = xp.where(xp.reshape(okd, rows), Ot, O)
        ft = _nll_and_pieces(xp, fam, Y, Osafe, Wt)[0]
        good = pending & okd & xp.isfinite(ft) & ((ft <= f - c1 * alpha * dec) | small)
        X_new = xp.where(good[:, None], Xt, X_new)
        f_new = xp.where(good, ft, f_new)
        O_new = xp.where(xp.reshape(good, rows), Ot, O_new)
        accepted = accepted | good
        pending = pending & ~good
        if not bool(xp.any(pending)):
            break
        alpha = xp.where(pending, 0.5 * alpha, alpha)
    return X_new, f_new, O_new, accepted, pending, ntrial


def _stop_on_step(xp, stop, xstop, p, F, g, damping, xscale, xtol, eps, jac):
    """The step test's rows ``xstop``: status 2 where the point is stationary
    to ``t = 10 max(xtol, sqrt(eps), sqrt(delta)) max(1, ||x||_inf)``
    (``delta`` the Jacobian's relative error: eps^(2/3) for "3-point",
    sqrt(eps) for "2-point", eps otherwise), i.e. the full scoring step from
    the previous point (``p``, before the line search halved it) or the one
    at the new point has ``||p||_inf <= t``; status 6 (not success) elsewhere:
    the step was short only because the line search shortened it (as
    :func:`agnopt.minimize`; an inaccurate Jacobian, precision loss)."""
    if not bool(xp.any(xstop)):
        return
    delta = {"2-point": eps ** 0.5, "3-point": eps ** (2 / 3)}.get(jac, eps) if isinstance(jac, str) else eps
    tol = 10.0 * max(xtol, eps ** 0.5, delta ** 0.5) * xscale
    short = xp.max(xp.abs(p), axis=1) <= tol
    if not bool(xp.all(short | ~xstop)):
        p_new, _ = _direction(xp, F, g, damping)
        short = short | (xp.max(xp.abs(p_new), axis=1) <= tol)
    stop(xstop & short, 2)
    stop(xstop & ~short, 6)


def _device(a):
    return array_api_compat.device(a)


@on_device_of(1, "x0")  # CuPy: run on the GPU of the arrays
def fisher_scoring(
    mean_fn: Callable[..., Array],
    x0: Array,
    y: Array,
    *,
    family: str | Family,
    jac: str | Callable[..., Array] = "3-point",
    weights: Array | None = None,
    damping: float = 0.0,
    gtol: float | None = None,
    xtol: float | None = None,
    ftol: float | None = None,
    maxiter: int = 100,
    max_backtracks: int = 50,
    c1: float = 1e-4,
    args: tuple = (),
    kwargs: dict[str, Any] | None = None,
    batched: bool = False,
    callback: Callable[..., Any] | None = None,
) -> OptimizeResult:
    r"""Maximum-likelihood fit by Fisher scoring (IRLS for generalized linear models).

    Parameters
    ----------
    mean_fn : callable
        ``mean_fn(theta, *args, **kwargs)``: the outputs that parameterize the
        distribution of ``y``, as ``family`` reads them (the mean for the
        Gaussian of known variance, Bernoulli and Poisson families; mean and
        variance on a trailing axis of 2 for ``Gaussian(variance=None)``;
        class probabilities on a trailing axis for ``"categorical"``).
        ``theta`` ``(n,)`` gives ``(m,)`` (or ``(m, K)``); with
        ``batched=True``, ``(B, n)`` gives ``(B, m)`` (``(B, m, K)``), row
        ``b`` depending on row ``b`` only.
    x0 : array, shape (n,) or (B, n)
        Starting parameters, real floating; the solve runs in this dtype, on
        this backend and device. Not modified.
    y : array, shape (m,) / (m, K) or (B, m) / (B, m, K)
        The observations: reals (Gaussian), values in [0, 1] (Bernoulli),
        counts >= 0 (Poisson), one-hot rows or counts (categorical).
    family : str or :class:`agnopt.families.Family`
        ``"gaussian"`` (variance 1), ``"bernoulli"``, ``"poisson"``,
        ``"categorical"``, or an instance (``Gaussian(variance=2.0)``...).
    jac : {"3-point", "2-point", "cs", "autodiff"} or callable
        Jacobian of ``mean_fn``'s outputs: finite differences / complex step
        (:func:`agnopt.approx_derivative`), the backend's autodiff (torch,
        JAX), or ``jac(theta, *args, **kwargs)`` returning ``(m[, K], n)``
        (``(B, m[, K], n)`` when batched).
    weights : array, optional
        Nonnegative observation weights, shaped like ``y`` without its class
        axis: the log-likelihood is :math:`\sum_i w_i \log p(y_i|o_i)`.
    damping : float
        :math:`\lambda \ge 0` added to the Fisher matrix's diagonal.
    gtol, xtol, ftol : float, optional
        Stop (success) when :math:`\|g\|_\infty \le` ``gtol`` (status 0;
        default :math:`\sqrt\epsilon`), when an accepted step has
        :math:`\|\alpha p\|_\infty \le` ``xtol`` :math:`\max(1,
        \|\theta\|_\infty)` (status 2; default :math:`\epsilon^{2/3}`; only
        where the full scoring step, from the previous point or at the new
        one, is within :math:`10\max(\text{xtol}, \sqrt\epsilon,
        \sqrt\delta)\max(1, \|\theta\|_\infty)`, :math:`\delta` the
        Jacobian's relative error; elsewhere the line search shortened the step
        away from a stationary point: status 6, not success), or
        when the predicted decrease :math:`-g^Tp \le` ``ftol``
        :math:`\max(1,|f|)` (status 5; default :math:`10\epsilon`, the
        rounding level of :math:`f`, below which no line search can
        compare values: that last step is taken in full, unchecked, and the
        iteration stops), with :math:`\epsilon` of ``x0``'s dtype. The
        first two are :func:`agnopt.minimize`'s.
    maxiter : int
        Maximum number of iterations (status 1).
    max_backtracks, c1 : int, float
        Halvings of the step allowed per iteration, and Armijo's constant.
    args, kwargs :
        Extra arguments of ``mean_fn`` and ``jac``.
    batched : bool
        ``B`` independent problems (``x0 (B, n)``, ``y (B, m[, K])``).
    callback : callable, optional
        ``callback(intermediate_result)`` after each iteration with an
        :class:`~agnopt.OptimizeResult` holding ``x``, ``fun``, ``nit``;
        raising ``StopIteration`` stops (status 99).

    Returns
    -------
    OptimizeResult
        ``x`` (``(n,)``), ``fun`` (the negative log-likelihood, 0-d array, up
        to terms free of ``theta``: see :mod:`agnopt.families`), ``jac`` (its
        gradient ``(n,)``), ``fisher`` (the Fisher matrix ``(n, n)`` at ``x``;
        its inverse estimates the covariance of ``x``), ``nit``, ``nfev``
        (calls of ``mean_fn``, not counting finite differences), ``njev``
        (Jacobian evaluations), ``status`` (0, 2, 5 success; 1 maxiter; 3 line
        search failed; 4 non-finite Jacobian; 6 the step test fired away from
        a stationary point; 99 callback), ``success``,
        ``message``. Batched: a leading ``B`` axis on each field (``nit``,
        ``nfev``, ``njev``, ``status``, ``success`` are arrays, ``message``
        a list).

    Raises
    ------
    ValueError
        Unknown ``family``/``jac``; ``x0``/``y``/``weights`` of the wrong
        shape or non-finite; ``y`` outside the family's support; ``mean_fn(x0)``
        outside the family's domain (e.g. a Bernoulli mean outside (0, 1));
        bad tolerances.
    TypeError
        ``mean_fn`` not callable; ``x0`` not a real floating array;
        ``y``/``weights`` of another backend; ``jac="autodiff"`` on a
        backend without autodiff (:class:`agnopt.AutodiffUnavailableError`).
    Exception
        Whatever ``mean_fn`` or ``jac`` raises propagates with its own type
        and message, with a note (Python >= 3.11) saying where agnopt was
        evaluating it (at ``x0``, at a trial point, at a finite-difference
        point of the Jacobian).

    Examples
    --------
    Poisson regression with a log link:

    >>> import numpy as np, agnopt as ao
    >>> t = np.linspace(0.0, 1.0, 6)
    >>> y = np.array([1.0, 2.0, 2.0, 4.0, 5.0, 9.0])
    >>> rate = lambda th: np.exp(th[0] + th[1] * t)
    >>> res = ao.fisher_scoring(rate, np.zeros(2), y, family="poisson")
    >>> res.success, np.round(res.x, 6).tolist()
    (True, [0.049971, 2.098951])
    """
    fam = get_family(family)
    _core.check_jac_arg(jac)
    if not isinstance(args, tuple):
        args = (args,)
    kwargs = {} if kwargs is None else dict(kwargs)
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 0:
        raise ValueError(f"maxiter: expected an integer >= 0, got {maxiter!r}")
    if isinstance(max_backtracks, bool) or not isinstance(max_backtracks, int) or max_backtracks < 1:
        raise ValueError(f"max_backtracks: expected an integer >= 1, got {max_backtracks!r}")
    damping = _check_tol("damping", damping)
    c1 = _check_tol("c1", c1)
    if not c1 < 1:
        raise ValueError(f"c1: expected a value in [0, 1), got {c1!r}")
    if not callable(mean_fn):
        raise TypeError(f"mean_fn: expected a callable, got {type(mean_fn).__name__} {mean_fn!r:.40}")
    # (bool(): array_api_compat's TypeIs would narrow x0 to its own, looser, array union)
    if not bool(array_api_compat.is_array_api_obj(x0)) or type(x0) in (int, float, complex, bool):
        raise TypeError(f"x0: expected an array of shape (n,) or (B, n), got {type(x0).__name__}")
    xp, dev = resolve(x0, "x0")
    dtype = x0.dtype
    if batched and x0.ndim != 2:
        raise ValueError(f"x0: with batched=True expected shape (B, n), got {tuple(x0.shape)}")
    if not batched and x0.ndim != 1:
        raise ValueError(
            f"x0: expected shape (n,), got {tuple(x0.shape)} (pass batched=True for a batch)"
        )
    X = x0 + 0.0 if batched else xp.reshape(x0, (1, x0.shape[0]))
    B, n = int(X.shape[0]), int(X.shape[1])
    if n == 0 or B == 0:
        raise ValueError(f"x0: empty array of shape {tuple(x0.shape)}")
    if not bool(xp.all(xp.isfinite(X))):
        raise ValueError("x0: contains non-finite values")
    if jac == "autodiff":
        from .._derivatives.autodiff import autodiff_backend

        autodiff_backend(x0, "fisher_scoring(jac='autodiff')")
    eps = float(xp.finfo(dtype).eps)
    gtol = eps ** 0.5 if gtol is None else _check_tol("gtol", gtol)
    xtol = eps ** (2 / 3) if xtol is None else _check_tol("xtol", xtol)
    ftol = 10 * eps if ftol is None else _check_tol("ftol", ftol)

    model = _Model(mean_fn, jac, batched, args, kwargs, xp, fam, n)
    O = model.out(X, "at x0")
    fam.check_out_shape(O, "mean_fn")
    Y, Wt = _check_data(xp, fam, O, y, weights, batched, dtype, dev)
    ok0 = _in_domain_rows(xp, fam, O)
    if not bool(xp.all(ok0)):
        raise ValueError(
            f"mean_fn: at x0 returned values outside the domain of the {fam.name} family "
            f"({fam.domain}); start where the model is valid (e.g. a Bernoulli mean in (0, 1))"
        )

    f, S, W = _nll_and_pieces(xp, fam, Y, O, Wt)
    J = model.jacobian(X, O)
    g = -xp.matmul(xp.matrix_transpose(J), S[..., None])[..., 0]
    F = xp.matmul(xp.matrix_transpose(J) * W[:, None, :], J)
    if not bool(xp.all(xp.isfinite(J))):
        raise ValueError("jac: the Jacobian of mean_fn is not finite at x0")
    X, f, g, F = persist(X, f, g, F)

    ints = lambda v: xp.full((B,), v, dtype=xp.int64, device=dev)  # noqa: E731
    status = ints(-1)
    nit, nfev, njev = ints(0), ints(1), ints(1)
    active = xp.ones((B,), dtype=xp.bool, device=dev)

    def stop(mask, code):
        nonlocal status, active
        hit = mask & active
        status = xp.where(hit, xp.full_like(status, code), status)
        active = active & ~hit

    stop(xp.max(xp.abs(g), axis=1) <= gtol, 0)
    for _ in range(maxiter):
        if not bool(xp.any(active)):
            break
        p, dec = _direction(xp, F, g, damping)
        # predicted decrease at the rounding level of f: the line search cannot
        # tell better from worse any more; take the full step (quadratic
        # convergence makes it the most accurate point) and stop there
        small = active & (dec <= ftol * xp.maximum(xp.ones_like(f), xp.abs(f)))
        X_new, f_new, O_new, accepted, pending, ntrial = _line_search(
            xp, model, fam, Y, Wt, X, f, O, p, dec, active, small, c1, max_backtracks)
        nfev = nfev + ntrial
        stop(pending, 3)
        step = xp.max(xp.abs(X_new - X), axis=1)
        xscale = xp.maximum(xp.ones_like(f), xp.max(xp.abs(X_new), axis=1))
        X, f, O = X_new, f_new, O_new
        nit = nit + xp.astype(accepted, xp.int64)
        # derivatives at the new points (computed for all rows; kept where accepted)
        _, S, W = _nll_and_pieces(xp, fam, Y, O, Wt)
        Jn = model.jacobian(X, O)
        njev = njev + xp.astype(accepted, xp.int64)
        gn = -xp.matmul(xp.matrix_transpose(Jn), S[..., None])[..., 0]
        Fn = xp.matmul(xp.matrix_transpose(Jn) * W[:, None, :], Jn)
        fin = xp.all(xp.isfinite(xp.reshape(Fn, (B, -1))), axis=1) & xp.all(xp.isfinite(gn), axis=1)
        upd = accepted & fin
        g = xp.where(upd[:, None], gn, g)
        F = xp.where(upd[:, None, None], Fn, F)
        stop(accepted & ~fin, 4)
        stop(xp.max(xp.abs(g), axis=1) <= gtol, 0)
        _stop_on_step(xp, stop, accepted & (step <= xtol * xscale) & active, p, F, g,
                      damping, xscale, xtol, eps, jac)
        stop(accepted & small, 5)
        # Dask: every piece of state, so that no graph grows with the iterations
        X, f, g, F, O, nit, nfev, njev, status, active = persist(
            X, f, g, F, O, nit, nfev, njev, status, active)
        if callback is not None:
            inter = OptimizeResult(x=X if batched else X[0, :], fun=f if batched else f[0],
                                   nit=nit if batched else int(nit[0]))
            try:
                callback(inter)
            except StopIteration:
                stop(active, 99)
                break
    stop(active, 1)
    return _result(xp, X, f, g, F, nit, nfev, njev, status, batched)


def _result(xp, X, f, g, F, nit, nfev, njev, status, batched):
    st_local = to_local(xp, status)[1]
    codes = [int(st_local[i]) for i in range(int(st_local.shape[0]))]
    msgs = [MESSAGES[c] for c in codes]
    success = (status == 0) | (status == 2) | (status == 5)
    if batched:
        return OptimizeResult(x=X, fun=f, jac=g, fisher=F, nit=nit, nfev=nfev, njev=njev,
                              status=status, success=success, message=msgs)
    return OptimizeResult(x=X[0, :], fun=f[0], jac=g[0, :], fisher=F[0, ...], nit=int(nit[0]),
                          nfev=int(nfev[0]), njev=int(njev[0]), status=codes[0],
                          success=codes[0] in (0, 2, 5), message=msgs[0])

