r"""Second-order unconstrained minimization: Newton and Newton-CG.

One implementation written against the Python Array API standard; it runs on
every backend that :func:`agnopt._backend.resolve` accepts (NumPy, CuPy,
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
    modified-Cholesky step is used for that iteration instead. A Cholesky
    factorization counts as failed when it raises (NumPy, torch), returns
    NaNs (JAX), or has a pivot :math:`L_{ii}^2 \le 10\,n\,\epsilon
    \max_j L_{jj}^2` (numerically singular).

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

import inspect
import math
from typing import Any, Callable

import array_api_compat

from ._derivatives import autodiff as _autodiff
from ._core.backend import namespace_name, resolve, scalar
from array_api_compat import array_namespace
from ._core.result import OptimizeResult

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
    99: "`callback` raised `StopIteration`.",
}


def _is_dask(a: Any) -> bool:
    return bool(array_api_compat.is_dask_array(a))


def _floats(*arrays: Any) -> list[float]:
    """Python floats of 0-d arrays; for Dask, all in one ``dask.compute``."""
    if any(_is_dask(a) for a in arrays):
        import dask

        return [float(v) for v in dask.compute(*arrays)]
    return [float(a) for a in arrays]


def _persist(a: Any) -> Any:
    """Dask: compute and keep ``a`` so graphs do not grow with iterations."""
    return a.persist() if _is_dask(a) else a


def _local(xp: Any, a: Any) -> tuple[Any, Any]:
    """``(namespace, array)`` for the small dense linear algebra.

    Dask's ``linalg`` lacks ``pinv`` and its ``cholesky`` returns the *upper*
    factor, so for a Dask array the small ``(n, n)`` system is computed into
    an in-memory array and solved with that array's own namespace; the
    solution is converted back with ``xp.asarray``. Other backends solve in
    place on their device.
    """
    if _is_dask(a):
        loc = a.compute()
        return array_api_compat.array_namespace(loc), loc
    return xp, a


def _back(xp: Any, a: Any, dtype: Any, device: Any) -> Any:
    if array_api_compat.array_namespace(a) is xp:
        return a
    return xp.asarray(a, dtype=dtype, device=device)


def _cholesky(xl: Any, A: Any) -> Any | None:
    r"""Lower Cholesky factor of ``A``, or ``None`` where ``A`` is not
    (numerically) positive definite.

    Portable failure detection: NumPy / array-api-strict / torch raise, JAX
    returns NaNs; both are caught. A factorization that "succeeds" with a
    pivot at rounding level, :math:`\min_i L_{ii}^2 \le 10\,n\,\epsilon
    \max_i L_{ii}^2` (a numerically singular ``A``), is also rejected.
    """
    try:
        L = xl.linalg.cholesky(A)
    except Exception:  # LinAlgError (numpy, torch) and friends
        return None
    if not bool(xl.all(xl.isfinite(L))):
        return None
    d = xl.linalg.diagonal(L) ** 2
    n = A.shape[0]
    if not float(xl.min(d)) > 10.0 * n * float(xl.finfo(A.dtype).eps) * float(xl.max(d)):
        return None
    return L


def _cho_solve(xl: Any, L: Any, b: Any) -> Any:
    """Solve ``L L^T x = b`` with two triangular solves."""
    y = xl.linalg.solve(L, b[:, None])
    return xl.linalg.solve(xl.linalg.matrix_transpose(L), y)[:, 0]


def _newton_step(
    xp: Any, H: Any, g: Any, solver: str, pinv_rtol: float | None, dtype: Any, device: Any
) -> tuple[Any, float, str]:
    """The Newton direction and the shift ``tau`` used (see module docstring).

    Returns ``(p, tau, how)`` where ``how`` is ``"cholesky"``, ``"damped"``,
    ``"pinv"`` or ``"steepest"`` (the last only if every factorization
    failed, e.g. a Hessian with NaNs).
    """
    xl, Hl = _local(xp, H)
    gl = _local(xp, g)[1]
    n = Hl.shape[0]
    if not bool(xl.all(xl.isfinite(Hl))):
        return -g, math.inf, "steepest"
    eye = xl.eye(n, dtype=Hl.dtype, device=array_api_compat.device(Hl))
    hmax = float(xl.max(xl.abs(Hl)))
    if solver == "pinv":
        # The seed's step, used where H is positive semidefinite to within
        # sqrt(eps) max|H_ij| (tested by a Cholesky factorization of the
        # shifted matrix); on an indefinite H, -H^+ g heads for saddle
        # points, and the modified Cholesky below is used instead.
        delta = float(xl.finfo(Hl.dtype).eps) ** 0.5 * max(hmax, 1e-300)
        if _cholesky(xl, Hl + delta * eye) is not None:
            if pinv_rtol is None:
                Hp = xl.linalg.pinv(Hl)
            else:
                Hp = xl.linalg.pinv(Hl, rtol=pinv_rtol)
            p = -(Hp @ gl)
            if bool(xl.all(xl.isfinite(p))) and float(xl.sum(p * gl)) < 0:
                return _back(xp, p, dtype, device), 0.0, "pinv"
    dmin = float(xl.min(xl.linalg.diagonal(Hl)))
    tiny = float(xl.finfo(Hl.dtype).smallest_normal) ** 0.5
    beta = 1e-3 * max(hmax, tiny)
    tau = 0.0 if dmin > 0 else beta - dmin
    for _ in range(200):
        L = _cholesky(xl, Hl + tau * eye if tau > 0 else Hl)
        if L is not None:
            try:
                p = -_cho_solve(xl, L, gl)
            except Exception:  # a zero pivot: singular triangular factor
                p = None
            if p is not None and bool(xl.all(xl.isfinite(p))):
                return _back(xp, p, dtype, device), tau, ("cholesky" if tau == 0 else "damped")
        tau = max(2.0 * tau, beta)
        if not math.isfinite(tau):
            break
    return -g, math.inf, "steepest"


class _Problem:
    """The objective and its derivatives, with evaluation counters.

    Counting: ``nfev`` counts calls of ``fun`` (including those made by
    finite differences), ``njev`` calls of ``jac`` or autodiff gradients
    (including gradient calls made to difference the gradient), ``nhev``
    calls of ``hess``/``hessp`` or autodiff Hessians / Hessian-vector
    products.
    """

    def __init__(self, fun, jac, hess, hessp, args, xp, dtype, device, n):
        self.fun, self.jac, self.hess, self.hessp = fun, jac, hess, hessp
        self.args = args
        self.xp, self.dtype, self.device, self.n = xp, dtype, device, n
        self.nfev = self.njev = self.nhev = 0
        self.eps = float(xp.finfo(dtype).eps)
        self._cache: tuple | None = None  # (x, f, g) for jac=True
        self._hcache: tuple | None = None  # (x, H) for Hessian products
        if jac is None or jac is False:
            self.jac_kind = "2-point"
        elif jac is True:
            self.jac_kind = "combined"
        elif callable(jac):
            self.jac_kind = "callable"
        elif isinstance(jac, str) and jac in _FD + ("autodiff",):
            self.jac_kind = jac
        else:
            raise ValueError(
                f"jac must be None, True, a callable, '2-point', '3-point', 'cs' or "
                f"'autodiff'; got {jac!r}"
            )
        if not (hess is None or callable(hess) or (isinstance(hess, str) and hess in _FD + ("autodiff",))):
            raise ValueError(
                f"hess must be None, a callable, '2-point', '3-point', 'cs' or 'autodiff'; got {hess!r}"
            )
        if not (hessp is None or callable(hessp) or hessp == "autodiff"):
            raise ValueError(f"hessp must be None, a callable or 'autodiff'; got {hessp!r}")

    # -- conversions and checks ------------------------------------------------
    def _as_scalar(self, f: Any, where: str) -> Any:
        xp = self.xp
        if isinstance(f, (int, float)) or not hasattr(f, "shape"):
            try:
                return xp.asarray(float(f), dtype=self.dtype, device=self.device)
            except (TypeError, ValueError):
                raise TypeError(
                    f"fun must return a real scalar (0-d array or float); got "
                    f"{type(f).__name__} at {where}"
                ) from None
        if array_api_compat.is_array_api_obj(f) and not isinstance(f, float):
            try:
                fxp = array_namespace(f)
            except TypeError:
                fxp = None
            if fxp is not xp and not (hasattr(f, "__float__") and type(f).__module__ == "numpy"
                                      and namespace_name(xp) == "numpy"):
                raise TypeError(
                    f"fun returned a {namespace_name(fxp) if fxp is not None else type(f).__name__} "
                    f"array at {where} but x0 is a {namespace_name(xp)} array; fun must return "
                    "an array of x0's backend (or a Python float)"
                )
        if tuple(f.shape) != ():
            if math.prod(f.shape) == 1:
                f = xp.reshape(f, ())
            else:
                raise ValueError(
                    f"fun must return a scalar (0-d array); got shape {tuple(f.shape)} at {where}"
                )
        if f.dtype != self.dtype:
            f = scalar(xp, f, self.dtype, self.device)
        return f

    def _as_vector(self, g: Any, what: str) -> Any:
        xp = self.xp
        if not hasattr(g, "shape"):
            g = xp.asarray(g, dtype=self.dtype, device=self.device)
        if tuple(g.shape) != (self.n,):
            raise ValueError(
                f"{what} must return an array of shape (n,) = ({self.n},) like x0; "
                f"got shape {tuple(g.shape)}"
            )
        if g.dtype != self.dtype:
            g = xp.astype(g, self.dtype)
        return g

    def _as_matrix(self, H: Any, what: str) -> Any:
        xp = self.xp
        if not hasattr(H, "shape"):
            H = xp.asarray(H, dtype=self.dtype, device=self.device)
        if tuple(H.shape) != (self.n, self.n):
            raise ValueError(
                f"{what} must return an array of shape (n, n) = ({self.n}, {self.n}); "
                f"got shape {tuple(H.shape)}"
            )
        if H.dtype != self.dtype:
            H = xp.astype(H, self.dtype)
        return H

    # -- function and gradient ---------------------------------------------------
    def _call_fun(self, x: Any) -> Any:
        self.nfev += 1
        return self.fun(x, *self.args)

    def value(self, x: Any, where: str = "a trial point") -> Any:
        """``f(x)`` only (line search trials)."""
        if self.jac_kind == "combined":
            out = self._call_fun(x)
            f, g = self._split(out)
            f = self._as_scalar(f, where)
            self.njev += 1
            self._cache = (x, f, self._as_vector(g, "fun (with jac=True), second output,"))
            return f
        return self._as_scalar(self._call_fun(x), where)

    def _split(self, out: Any) -> tuple[Any, Any]:
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ValueError(
                "with jac=True, fun must return a pair (f, g) of the value and the "
                f"gradient; got {type(out).__name__}"
            )
        return out[0], out[1]

    def _fd_grad(self, x: Any, f0: Any, method: str) -> Any:
        approx_derivative = _get_approx_derivative()
        wrapped = self._counted_fun
        g = approx_derivative(wrapped, x, method=method, f0=f0)
        return self._as_vector(g, f"the {method} finite-difference gradient")

    def _counted_fun(self, x: Any) -> Any:
        f = self._call_fun(x)
        if array_api_compat.is_array_api_obj(f) and not isinstance(f, (int, float)):
            return f
        return self._as_scalar(f, "a finite-difference point")

    def value_and_grad(self, x: Any, where: str = "x") -> tuple[Any, Any]:
        c = self._cache
        if c is not None and c[0] is x:
            return c[1], c[2]
        k = self.jac_kind
        if k == "combined":
            f, g = self._split(self._call_fun(x))
            self.njev += 1
            return self._as_scalar(f, where), self._as_vector(g, "fun (with jac=True), second output,")
        if k == "autodiff":
            self.nfev += 1
            self.njev += 1
            f, g = _autodiff.value_and_grad(self.fun, x, args=self.args)
            return self._as_scalar(f, where), self._as_vector(g, "the autodiff gradient")
        f = self._as_scalar(self._call_fun(x), where)
        if k == "callable":
            self.njev += 1
            return f, self._as_vector(self.jac(x, *self.args), "jac")
        if not bool(self.xp.isfinite(f)):
            return f, self.xp.full((self.n,), math.nan, dtype=self.dtype, device=self.device)
        return f, self._fd_grad(x, f, k)

    def grad(self, x: Any) -> Any:
        """The gradient alone (for differencing the gradient)."""
        k = self.jac_kind
        if k == "callable":
            self.njev += 1
            return self._as_vector(self.jac(x, *self.args), "jac")
        if k == "combined":
            self.njev += 1
            return self._as_vector(self._split(self._call_fun(x))[1], "fun (with jac=True), second output,")
        if k == "autodiff":
            self.njev += 1
            return self._as_vector(_autodiff.gradient(self.fun, x, args=self.args), "the autodiff gradient")
        f = self._as_scalar(self._call_fun(x), "a finite-difference point")
        return self._fd_grad(x, f, k)

    # -- second derivatives ------------------------------------------------------
    @property
    def grad_noise(self) -> float:
        """Relative error of the gradient: rounding, or finite-difference error."""
        return {"2-point": self.eps ** 0.5, "3-point": self.eps ** (2 / 3)}.get(
            self.jac_kind, self.eps
        )

    def _hess_mode(self) -> str:
        if self.hess is not None:
            return "callable" if callable(self.hess) else self.hess
        if self.hessp is not None:
            return "hessp"
        if self.jac_kind == "autodiff":
            return "autodiff"
        return "fd"

    def hessian(self, x: Any, g: Any) -> Any:
        """The dense ``(n, n)`` Hessian (method="newton"), symmetrized."""
        xp = self.xp
        mode = self._hess_mode()
        if mode == "callable":
            self.nhev += 1
            H = self._as_matrix(self.hess(x, *self.args), "hess")
        elif mode == "autodiff":
            self.nhev += 1
            H = self._as_matrix(_autodiff.hessian(self.fun, x, args=self.args), "the autodiff Hessian")
        elif mode == "hessp":
            eye = xp.eye(self.n, dtype=self.dtype, device=self.device)
            cols = [self.hvp(x, g, eye[j, :]) for j in range(self.n)]
            H = xp.stack(cols, axis=1)
        else:
            method = mode if mode in _FD else None
            H = self._fd_hessian(x, g, method)
        return 0.5 * (H + xp.linalg.matrix_transpose(H))

    def _fd_hessian(self, x: Any, g: Any, method: str | None) -> Any:
        """Finite differences of the gradient.

        With an exact gradient (callable, jac=True, autodiff, 'cs'): forward
        differences ('2-point', relative step sqrt(eps)) unless ``hess`` names
        a scheme. With a finite-difference gradient of relative error
        ``delta`` (sqrt(eps) for '2-point', eps^(2/3) for '3-point'): central
        differences ('3-point') with relative step ``delta^(1/3)``, which
        balances the O(h^2) truncation against the O(delta/h) noise.
        """
        approx_derivative = _get_approx_derivative()
        noisy = self.jac_kind in ("2-point", "3-point")
        rel_step = None
        if method is None:
            method = "3-point" if noisy else "2-point"
        if noisy and method != "cs":
            rel_step = self.grad_noise ** (1 / 3) if method == "3-point" else self.grad_noise ** 0.5
        H = approx_derivative(self.grad, x, method=method, rel_step=rel_step, f0=g)
        return self._as_matrix(H, "the finite-difference Hessian")

    def hvp(self, x: Any, g: Any, v: Any) -> Any:
        """``H(x) v`` (method="newton-cg")."""
        xp = self.xp
        if self.hessp is not None and callable(self.hessp):
            self.nhev += 1
            return self._as_vector(self.hessp(x, v, *self.args), "hessp")
        mode = self._hess_mode()
        if self.hessp == "autodiff" or mode == "autodiff":
            self.nhev += 1
            return self._as_vector(_autodiff.hvp(self.fun, x, v, args=self.args), "the autodiff hvp")
        if mode == "callable" or mode in _FD:
            hc = self._hcache
            if hc is None or hc[0] is not x:
                H = self.hessian(x, g) if mode == "callable" else self._fd_hessian(x, g, mode)
                self._hcache = (x, H)
            return self._hcache[1] @ v
        # Directional finite difference of the gradient.
        vn = float(xp.linalg.vector_norm(v))
        if vn == 0.0:
            return xp.zeros_like(v)
        xn = float(xp.linalg.vector_norm(x))
        if self.jac_kind in ("2-point", "3-point"):
            h = self.grad_noise ** (1 / 3) * max(1.0, xn) / vn
            return (self.grad(x + h * v) - self.grad(x - h * v)) / (2.0 * h)
        h = self.eps ** 0.5 * max(1.0, xn) / vn
        return (self.grad(x + h * v) - g) / h


def _get_approx_derivative():
    try:
        from ._derivatives.numdiff import approx_derivative
    except ImportError as e:  # pragma: no cover - during development only
        raise NotImplementedError(
            "finite-difference derivatives need agnopt._numdiff.approx_derivative, "
            "which is not available; pass jac/hess callables or 'autodiff'"
        ) from e
    return approx_derivative


def _wants_intermediate(callback: Callable) -> bool:
    try:
        params = inspect.signature(callback).parameters
    except (TypeError, ValueError):
        return False
    return "intermediate_result" in params


def _nonnegative(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a non-negative number, got {value!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return v


def minimize(
    fun: Callable,
    x0: Any,
    *,
    method: str = "newton",
    jac: Any = None,
    hess: Any = None,
    hessp: Any = None,
    args: tuple = (),
    tol: float | None = None,
    maxiter: int | None = None,
    callback: Callable | None = None,
    options: dict | None = None,
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
        has its backend, device and dtype. Not modified.
    method : {"newton", "newton-cg"}
        See the module docstring for the mathematics.
    jac : None, True, callable, {"2-point", "3-point", "cs", "autodiff"}
        The gradient. ``None`` (default, as scipy): ``"2-point"`` forward
        differences. ``True``: ``fun`` returns ``(f, g)``. A callable
        ``jac(x, *args) -> (n,)``. ``"cs"`` (complex step) needs ``fun`` to
        accept complex input. ``"autodiff"``: torch / JAX arrays only.
    hess : None, callable, {"2-point", "3-point", "cs", "autodiff"}
        The Hessian, ``hess(x, *args) -> (n, n)``. ``None``: built from
        ``hessp`` if given (``n`` products, newton only), by autodiff when
        ``jac="autodiff"``, otherwise by finite differences of the gradient
        (forward differences with relative step sqrt(eps) for an exact
        gradient; central differences with relative step delta^(1/3) when the
        gradient itself is a finite difference of relative error delta). A
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
    args : tuple
        Extra arguments of ``fun``, ``jac``, ``hess``, ``hessp``.
    tol : float, optional
        Sets ``gtol``.
    maxiter : int, optional
        Maximum number of iterations (default ``200 * n``, as scipy's
        Newton-CG). Same as ``options["maxiter"]``.
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
        (ignored). Newton: ``solver`` (``"cholesky"`` default, or ``"pinv"``),
        ``pinv_rtol`` (the ``rtol`` of ``xp.linalg.pinv``; default the
        backend's, ``n * eps``). Newton-CG: ``globalization``
        (``"line-search"`` default, or ``"trust-region"``), ``cg_maxiter``
        (default ``20 * n``), and for the trust region
        ``initial_trust_radius`` (1.0), ``max_trust_radius`` (1000.0),
        ``eta`` (0.15). Unknown keys raise ``ValueError``.

    Returns
    -------
    OptimizeResult
        ``x`` (n,), ``fun`` (0-d array), ``jac`` (the gradient at ``x``), ``nit``,
        ``nfev``, ``njev``, ``nhev``, ``status``, ``message``, ``success``, and
        with ``options={"history": True}`` a ``history`` dict of lists:
        ``x`` (iterates, ``x[0]`` is ``x0``), ``fun``, ``grad_norm`` (floats),
        ``alpha`` (step lengths; the trust radius for the trust region),
        and ``tau`` (newton: the Hessian shift) or ``cg_iter`` (newton-cg).

    Stopping conditions (checked in this order, each iteration)
    ----------------------------------------------------------
    * status 0, success: :math:`\|g_k\|_\infty \le` ``gtol`` (checked also at
      ``x0``: a stationary start returns after 0 iterations).
    * status 1, not success: ``maxiter`` iterations done.
    * status 2, success: the accepted step satisfies
      :math:`\|x_{k+1} - x_k\|_\infty \le` ``xtol`` :math:`\cdot \max(1,
      \|x_{k+1}\|_\infty)`.
    * status 3, not success: the line search found no decrease in
      ``max_backtracks`` trials (or the step shrank below rounding).
    * status 4, not success: the gradient or Hessian became non-finite at an
      accepted point.
    * status 5, not success (trust region): the radius fell below
      ``xtol * max(1, ||x||)`` with no acceptable step.
    * status 99, not success: ``callback`` raised ``StopIteration``.

    Raises
    ------
    ValueError
        Unknown ``method`` (the message names ``method``) or option; ``x0`` not
        1-D or empty; ``fun(x0)`` or the gradient at ``x0`` not finite;
        ``fun``/``jac``/``hess``/``hessp`` returning the wrong shape;
        ``tol``/``gtol``/``xtol`` negative or ``maxiter`` not an integer >= 0.
    RuntimeError
        ``fun`` raised at ``x0`` (the original exception is the cause). At
        later points an exception of ``fun`` propagates unchanged, as in scipy.
    TypeError
        ``x0`` not one real floating array (a tree, a list); ``fun``
        returning an array of another backend; ``"autodiff"`` with arrays other than
        torch / JAX (:class:`agnopt._autodiff.AutodiffUnavailableError`, also
        a ``ValueError``).

    Notes
    -----
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
    gradient has error :math:`O(\sqrt{\epsilon})` relative, which limits
    the solution to about 1e-5 relative in float64 (as scipy's); use
    ``"3-point"``, ``"cs"``, a callable or ``"autodiff"`` for more.
    """
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise ValueError(
            f"method: unknown method {method!r}; choose one of {', '.join(map(repr, _METHODS))}"
        )
    method = method.lower()
    options = dict(options or {})
    unknown = set(options) - _OPTION_KEYS[method]
    if unknown:
        raise ValueError(
            f"options: unknown key(s) {sorted(unknown)} for method={method!r}; "
            f"known: {sorted(_OPTION_KEYS[method])}"
        )
    if not isinstance(args, tuple):
        args = (args,)

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
    dtype = x0.dtype
    if "autodiff" in (jac, hess, hessp):
        _autodiff.autodiff_backend(x0, "minimize(..., 'autodiff')")

    eps = float(xp.finfo(dtype).eps)
    gtol = _nonnegative("tol" if tol is not None else "options['gtol']",
                        options.get("gtol", eps ** 0.5) if tol is None else tol)
    xtol = _nonnegative("options['xtol']", options.get("xtol", eps ** (2 / 3)))
    if maxiter is None:
        maxiter = options.get("maxiter", 200 * n)
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 0:
        raise ValueError(f"maxiter: expected an integer >= 0, got {maxiter!r}")
    maxiter = int(maxiter)
    c1 = float(options.get("c1", 1e-4))
    max_bt = int(options.get("max_backtracks", 60))
    want_history = bool(options.get("history", False))

    P = _Problem(fun, jac, hess, hessp, args, xp, dtype, device, n)

    x = _persist(xp.asarray(x0, copy=True) if not _is_dask(x0) else x0 + 0.0)
    try:
        f, g = P.value_and_grad(x, "x0")
    except (ValueError, TypeError):
        raise  # our own checks of what fun / jac returned
    except Exception as e:
        # At x0 a failing fun is a bad input: say so, and keep the original
        # exception as the cause. Later calls propagate unchanged (as scipy).
        raise RuntimeError(f"fun raised {type(e).__name__} at x0: {e}") from e
    if not bool(xp.isfinite(f)):
        raise ValueError(
            f"fun(x0) is not finite ({float(f)}); minimize needs a finite objective at the "
            "starting point"
        )
    if not bool(xp.all(xp.isfinite(g))):
        raise ValueError("the gradient at x0 is not finite; check jac or the starting point")
    f, g = _persist(f), _persist(g)

    history: dict | None = None
    if want_history:
        history = {"x": [x], "fun": [float(f)], "grad_norm": [float(xp.max(xp.abs(g)))], "alpha": []}
        history["tau" if method == "newton" else "cg_iter"] = []

    state = dict(x=x, f=f, g=g, nit=0, status=None)
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


# ---------------------------------------------------------------------------
# shared pieces


def _gnorm(xp: Any, g: Any) -> float:
    return float(xp.max(xp.abs(g)))


def _cached_gnorm(xp: Any, state: dict) -> float:
    gn = state.get("gnorm")
    if gn is None:
        gn = state["gnorm"] = _gnorm(xp, state["g"])
    return gn


def _line_search(P: _Problem, x: Any, f: Any, p: Any, gp: float, c1: float, max_bt: int):
    """Backtracking Armijo search (Nocedal & Wright Alg. 3.1, §3.5 interpolation).

    Returns ``(alpha, x_new, f_new)`` or ``None`` when no trial is accepted.
    """
    xp = P.xp
    f0, pn, xn = _floats(f, xp.max(xp.abs(p)), xp.max(xp.abs(x)))
    alpha = 1.0
    # At the rounding level of f (predicted decrease -g^T p <= 4 eps |f|),
    # Armijo cannot be decided from f values; the full step is then accepted
    # when f does not increase beyond rounding.
    noise = 4.0 * P.eps * abs(f0)
    for _ in range(max_bt):
        xt = _persist(x + alpha * p)
        ft = P.value(xt)
        ftf = float(ft)
        if math.isfinite(ftf) and (
            ftf <= f0 + c1 * alpha * gp or (alpha == 1.0 and -gp <= noise and ftf <= f0 + noise)
        ):
            return alpha, xt, ft
        if not math.isfinite(ftf):
            alpha *= 0.25  # rejected: fun not finite here
        else:
            denom = 2.0 * (ftf - f0 - gp * alpha)
            a_new = -gp * alpha * alpha / denom if denom > 0 else 0.5 * alpha
            alpha = min(max(a_new, 0.1 * alpha), 0.5 * alpha)
        if alpha * pn <= P.eps * max(1.0, xn):
            break
    return None


def _after_step(P, state, x_new, f_new, xtol, history, extra, callback, alpha) -> bool:
    """Accept ``x_new``; return True when a stopping condition fired."""
    xp = P.xp
    x_old = state["x"]
    f_new, g_new = P.value_and_grad(x_new)
    f_new, g_new = _persist(f_new), _persist(g_new)
    state.update(x=x_new, f=f_new, g=g_new)
    state["nit"] += 1
    ff, gn, step, xmax = _floats(
        f_new, xp.max(xp.abs(g_new)), xp.max(xp.abs(x_new - x_old)), xp.max(xp.abs(x_new))
    )
    finite = math.isfinite(gn)
    state["gnorm"] = gn
    if history is not None:
        history["x"].append(x_new)
        history["fun"].append(ff)
        history["grad_norm"].append(gn if finite else math.nan)
        history["alpha"].append(alpha)
        for k, v in extra.items():
            history[k].append(v)
    if not finite:
        state["status"] = 4
        return True
    if callback is not None:
        try:
            if _wants_intermediate(callback):
                callback(intermediate_result=OptimizeResult(x=x_new, fun=f_new, jac=g_new, nit=state["nit"]))
            else:
                callback(x_new)
        except StopIteration:
            state["status"] = 99
            return True
    if step <= xtol * max(1.0, xmax):
        state["status"] = 0 if gn <= state["gtol"] else 2
        return True
    return False


# ---------------------------------------------------------------------------
# Newton


def _run_newton(P, state, options, gtol, xtol, maxiter, c1, max_bt, history, callback):
    xp = P.xp
    solver = options.get("solver", "cholesky")
    if solver not in ("cholesky", "pinv"):
        raise ValueError(f"options['solver'] must be 'cholesky' or 'pinv'; got {solver!r}")
    pinv_rtol = options.get("pinv_rtol")
    state["gtol"] = gtol
    while True:
        x, f, g = state["x"], state["f"], state["g"]
        if _cached_gnorm(xp, state) <= gtol:
            state["status"] = 0
            return
        if state["nit"] >= maxiter:
            state["status"] = 1
            return
        H = P.hessian(x, g)
        if not bool(xp.all(xp.isfinite(H))):
            state["status"] = 4
            return
        p, tau, _how = _newton_step(xp, H, g, solver, pinv_rtol, P.dtype, P.device)
        gp = float(xp.sum(g * p))
        if not (gp < 0):
            p, gp, tau = -g, -float(xp.sum(g * g)), math.inf
        ls = _line_search(P, x, f, p, gp, c1, max_bt)
        if ls is None:
            state["status"] = 3
            return
        alpha, x_new, f_new = ls
        if _after_step(P, state, x_new, f_new, xtol, history, {"tau": tau}, callback, alpha):
            return


# ---------------------------------------------------------------------------
# Newton-CG, line search (N&W Alg. 7.1)


def _cg_truncated(P, x, g, cg_maxiter):
    """Truncated CG on ``H p = -g`` (see module docstring). Returns ``(p, iters)``."""
    xp = P.xp
    rr = float(xp.sum(g * g))
    gn2 = rr ** 0.5
    tol = min(0.5, gn2 ** 0.5) * gn2
    z = xp.zeros_like(g)
    r = g
    d = -g
    it = 0
    for it in range(1, cg_maxiter + 1):
        if rr ** 0.5 <= tol:
            it -= 1
            break
        Hd = _persist(P.hvp(x, g, d))
        curv, dd = _floats(xp.sum(d * Hd), xp.sum(d * d))
        if not math.isfinite(curv):
            break
        if 0 <= curv <= 3 * P.eps * dd:
            break
        if curv < 0:
            if it == 1:
                z = (rr / -curv) * (-g)
            break
        a = rr / curv
        z = z + a * d
        r = r + a * Hd
        rr_new = float(xp.sum(r * r))
        d = -r + (rr_new / rr) * d
        rr = rr_new
        z, r, d = _persist(z), _persist(r), _persist(d)
    return z, it


def _run_newton_cg_ls(P, state, options, gtol, xtol, maxiter, c1, max_bt, history, callback):
    xp = P.xp
    cg_maxiter = int(options.get("cg_maxiter", 20 * P.n))
    state["gtol"] = gtol
    while True:
        x, f, g = state["x"], state["f"], state["g"]
        if _cached_gnorm(xp, state) <= gtol:
            state["status"] = 0
            return
        if state["nit"] >= maxiter:
            state["status"] = 1
            return
        p, it = _cg_truncated(P, x, g, cg_maxiter)
        gp = float(xp.sum(g * p))
        if not (gp < 0) or not math.isfinite(gp):
            p, gp = -g, -float(xp.sum(g * g))
        ls = _line_search(P, x, f, p, gp, c1, max_bt)
        if ls is None:
            state["status"] = 3
            return
        alpha, x_new, f_new = ls
        if _after_step(P, state, x_new, f_new, xtol, history, {"cg_iter": it}, callback, alpha):
            return


# ---------------------------------------------------------------------------
# Newton-CG, trust region (Steihaug-Toint CG, N&W Alg. 7.2 in Alg. 4.1)


def _to_boundary(xp, z, d, delta):
    """The ``tau >= 0`` with ``||z + tau d|| = delta``."""
    a, b, c = _floats(xp.sum(d * d), xp.sum(z * d), xp.sum(z * z))
    b, c = 2.0 * b, c - delta * delta
    disc = max(b * b - 4 * a * c, 0.0)
    # Numerically stable positive root.
    if b >= 0:
        return (2 * c) / (-b - disc ** 0.5) if (-b - disc ** 0.5) != 0 else 0.0
    return (-b + disc ** 0.5) / (2 * a)


def _steihaug(P, x, g, delta, cg_maxiter):
    """CG-Steihaug. Returns ``(p, iters, on_boundary)``."""
    xp = P.xp
    rr = float(xp.sum(g * g))
    gn = rr ** 0.5
    tol = min(0.5, gn ** 0.5) * gn
    z = xp.zeros_like(g)
    r = g
    d = -g
    for j in range(1, cg_maxiter + 1):
        Bd = _persist(P.hvp(x, g, d))
        dBd = float(xp.sum(d * Bd))
        if not math.isfinite(dBd) or dBd <= 0:
            tau = _to_boundary(xp, z, d, delta)
            return z + tau * d, j, True
        a = rr / dBd
        z_next = z + a * d
        r = r + a * Bd
        zz, rr_new = _floats(xp.sum(z_next * z_next), xp.sum(r * r))
        if zz ** 0.5 >= delta:
            tau = _to_boundary(xp, z, d, delta)
            return z + tau * d, j, True
        z = _persist(z_next)
        if rr_new ** 0.5 <= tol:
            return z, j, False
        d = _persist(-r + (rr_new / rr) * d)
        r = _persist(r)
        rr = rr_new
    return z, cg_maxiter, False


def _run_newton_cg_tr(P, state, options, gtol, xtol, maxiter, history, callback):
    xp = P.xp
    cg_maxiter = int(options.get("cg_maxiter", 20 * P.n))
    delta = float(options.get("initial_trust_radius", 1.0))
    dmax = float(options.get("max_trust_radius", 1000.0))
    eta = float(options.get("eta", 0.15))
    if not (0 < delta <= dmax):
        raise ValueError("options: need 0 < initial_trust_radius <= max_trust_radius")
    state["gtol"] = gtol
    while True:
        x, f, g = state["x"], state["f"], state["g"]
        if _cached_gnorm(xp, state) <= gtol:
            state["status"] = 0
            return
        if state["nit"] >= maxiter:
            state["status"] = 1
            return
        p, it, boundary = _steihaug(P, x, g, delta, cg_maxiter)
        Hp = P.hvp(x, g, p)
        x_new = _persist(x + p)
        f_new = P.value(x_new)
        gp_, pHp, fn, f0 = _floats(xp.sum(g * p), xp.sum(p * Hp), f_new, f)
        pred = -(gp_ + 0.5 * pHp)
        actual = f0 - fn
        noise = 4.0 * P.eps * abs(f0)
        if not math.isfinite(fn):
            rho = -math.inf
        elif pred <= noise:
            # The model decrease is at the rounding level of f: rho cannot be
            # measured; accept if f did not increase beyond rounding.
            rho = 1.0 if -actual <= noise else -math.inf
        else:
            rho = actual / pred
        if rho < 0.25:
            delta = 0.25 * delta
        elif rho > 0.75 and boundary:
            delta = min(2.0 * delta, dmax)
        if rho > eta:
            if _after_step(P, state, x_new, f_new, xtol, history, {"cg_iter": it}, callback, delta):
                return
        else:
            state["nit"] += 1
            if delta <= xtol * max(1.0, float(xp.max(xp.abs(x)))):
                state["status"] = 5
                return
