"""The objective and its derivatives (callables, finite differences, autodiff),
with evaluation counters and checks of what the user's functions return."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
from array_api_compat import array_namespace

from .._derivatives import autodiff as _autodiff
from .._core.backend import namespace_name, scalar
from .._core.linalg import is_symmetric
from .._derivatives.numdiff import approx_derivative

_FD = ("2-point", "3-point", "cs")


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
        wrapped = self._counted_fun
        g = approx_derivative(wrapped, x, method=method, f0=f0)
        return self._as_vector(g, f"the {method} finite-difference gradient")

    def _counted_fun(self, x: Any) -> Any:
        f = self._call_fun(x)
        if array_api_compat.is_array_api_obj(f) and not isinstance(f, (int, float)):
            return f
        return self._as_scalar(f, "a finite-difference point")

    def value_and_grad(self, x: Any, where: str = "x", f: Any = None) -> tuple[Any, Any]:
        """``(f(x), g(x))``. ``f``: the value at ``x`` already computed by
        :meth:`value` (the accepted trial point of a line search or trust
        region), reused instead of calling ``fun`` at ``x`` a second time where
        the gradient comes separately (a ``jac`` callable, finite differences)."""
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
        if f is None:  # no accepted trial value to reuse
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
        if is_symmetric(xp, H):
            # Already symmetric (the usual analytic or autodiff Hessian): no
            # copy; 0.5 * (H + H^T) would return the same values (it differs
            # only where h + h overflows).
            return H
        return 0.5 * (H + xp.linalg.matrix_transpose(H))

    def _fd_hessian(self, x: Any, g: Any, method: str | None) -> Any:
        """Finite differences of the gradient.

        With an exact gradient (callable, jac=True, autodiff, 'cs'): forward
        differences ('2-point', relative step sqrt(eps)) unless ``hess`` names
        a scheme. With a finite-difference gradient of relative error
        ``delta`` (sqrt(eps) for '2-point', eps^(2/3) for '3-point'): central
        differences ('3-point') with the step ``delta^(1/3) max(1, |x_i|)``,
        which balances the O(h^2) truncation against the O(delta/h) noise.
        """
        noisy = self.jac_kind in ("2-point", "3-point")
        abs_step = None
        if method is None:
            method = "3-point" if noisy else "2-point"
        if noisy and method != "cs":
            r = self.grad_noise ** (1 / 3) if method == "3-point" else self.grad_noise ** 0.5
            # r max(1, |x_i|), as scipy's default step: a ``rel_step`` would be
            # r |x_i| (scipy's rule for an explicit one), a step that vanishes
            # with x_i and, near a minimizer at x_i = 0, divides the gradient's
            # error by almost nothing (an indefinite Hessian of noise)
            xp = self.xp
            abs_step = r * xp.maximum(xp.ones_like(x), xp.abs(x))
        H = approx_derivative(self.grad, x, method=method, abs_step=abs_step, f0=g)
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
                hc = self._hcache = (x, H)
            return hc[1] @ v
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

