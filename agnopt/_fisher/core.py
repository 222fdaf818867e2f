r"""The pieces shared by the natural gradient and Fisher scoring.

* :func:`flatten_tree` turns a parameter tree into one vector (and back);
* :func:`output_jacobian` is the Jacobian of the model's flattened outputs,
  by finite differences / complex step (:func:`agnopt.approx_derivative`),
  the backend's autodiff (torch, JAX) or a user callable;
* :func:`autodiff_products` gives matrix-free ``J v`` and ``J^T u`` (one JVP,
  one VJP) for the conjugate-gradient route;
* :func:`solve_damped_cholesky` and :func:`solve_damped_cg` solve
  :math:`(F + \lambda I) d = g` for the Fisher matrix
  :math:`F = J^T \operatorname{diag}(w) J` (the Cholesky factor is the
  checked one of :mod:`agnopt._core.linalg`);
* :func:`check_outputs` rejects outputs outside the family's domain (there
  the Fisher weights are not positive and :math:`F` is not a Fisher matrix).

Dense factorizations of Dask arrays run on the computed (in-memory) matrix
(:func:`agnopt._core.lazy.to_local`), as the other solvers do.
"""

from __future__ import annotations

from typing import Any, Callable

from .._core.backend import namespace_name
from .._core.lazy import is_dask, to_local
from .._core.linalg import cho_solve, cholesky
from .._core.tree import tree_flatten, tree_unflatten
from .._derivatives import autodiff as _autodiff
from .._derivatives.numdiff import approx_derivative

__all__ = [
    "JAC_STRINGS",
    "flatten_tree",
    "output_jacobian",
    "autodiff_products",
    "check_outputs",
    "solve_damped_cholesky",
    "solve_damped_cg",
]

JAC_STRINGS = ("2-point", "3-point", "cs", "autodiff")


def check_jac_arg(jac: Any, what: str = "jac") -> None:
    if not (callable(jac) or jac in JAC_STRINGS):
        raise ValueError(f"{what}: expected a callable or one of {JAC_STRINGS}, got {jac!r}")


def flatten_tree(xp: Any, tree: Any, what: str = "params") -> tuple[Any, Callable[[Any], Any]]:
    """``(vector, unflatten)``: the leaves raveled and concatenated in leaf order.

    Every leaf must have the same dtype (``TypeError`` naming ``what``
    otherwise). ``unflatten(v)`` rebuilds the tree from a vector (or, for the
    complex step, a complex vector) by slicing and reshaping, which autodiff
    traces through.
    """
    leaves, td = tree_flatten(tree)
    dt = leaves[0].dtype
    for leaf in leaves[1:]:
        if leaf.dtype != dt:
            raise TypeError(
                f"{what}: every leaf must have the same dtype for the Fisher matrix, "
                f"got {dt} and {leaf.dtype}"
            )
    shapes = [tuple(leaf.shape) for leaf in leaves]
    sizes = []
    for s in shapes:
        k = 1
        for d in s:
            k *= int(d)
        sizes.append(k)
    if len(leaves) == 1 and len(shapes[0]) == 1:
        vec = leaves[0]
    else:
        vec = xp.concat([xp.reshape(leaf, (-1,)) for leaf in leaves])

    def unflatten(v):
        if len(leaves) == 1 and len(shapes[0]) == 1:
            return tree_unflatten(td, [v])
        out, i = [], 0
        for s, k in zip(shapes, sizes):
            out.append(xp.reshape(v[i:i + k], s))
            i += k
        return tree_unflatten(td, out)

    return vec, unflatten


def output_jacobian(f: Callable, x: Any, jac: Any, *, batched: bool = False,
                    f0: Any = None, user_jac: Callable | None = None) -> Any:
    """Jacobian of ``f`` (``(n,) -> (M,)``, or batched ``(B, n) -> (B, M)``) at ``x``.

    ``jac`` is one of :data:`JAC_STRINGS` or ``"callable"`` (then
    ``user_jac(x)`` gives the matrix). Returns ``(M, n)`` or ``(B, M, n)``.
    """
    if jac == "callable":
        return user_jac(x)
    if jac == "autodiff":
        return _autodiff.jacobian(f, x, batched=batched)
    return approx_derivative(f, x, method=jac, f0=f0, batched=batched)


def autodiff_products(f: Callable, x: Any) -> tuple[Any, Callable, Callable]:
    """``(f(x), jvp, vjp)`` with ``jvp(v) = J v`` and ``vjp(u) = J^T u`` by the
    backend's autodiff (torch.func or JAX); ``J`` is never formed."""
    kind = _autodiff.autodiff_backend(x, "jac='autodiff'")
    if kind == "torch":
        import torch.func as tf

        out, vjp_fn = tf.vjp(f, x)

        def jvp(v):
            return tf.jvp(f, (x,), (v,))[1]

        return out, jvp, lambda u: vjp_fn(u)[0]
    import jax

    out, lin = jax.linearize(f, x)
    _, vjp_fn = jax.vjp(f, x)
    return out, lin, lambda u: vjp_fn(u)[0]


def check_outputs(xp: Any, family: Any, out: Any, what: str) -> None:
    """``ValueError`` naming ``what`` if ``out`` leaves the family's domain."""
    ok = family.in_domain(xp, out)
    if not bool(xp.all(ok)):
        raise ValueError(
            f"{what}: returned values outside the domain of the {family.name} family "
            f"({family.domain}); the Fisher matrix is only defined there (map the "
            "outputs through a link function, e.g. a sigmoid, exp or softmax)"
        )


def _not_pd_message(damping: float, who: str) -> str:
    if damping == 0.0:
        return (
            f"{who}: damping=0 and the Fisher matrix is not (numerically) positive "
            "definite (some parameter directions do not change the model's outputs); "
            "pass damping > 0"
        )
    return (
        f"{who}: the damped Fisher matrix F + damping*I is not numerically positive "
        f"definite (damping={damping!r} is too small against the scale of F, or F is "
        "not finite); increase damping"
    )


def solve_damped_cholesky(xp: Any, J: Any, w: Any, g: Any, damping: float, who: str) -> tuple[Any, Any]:
    """Solve ``(J^T diag(w) J + damping I) d = g`` by Cholesky; return ``(d, F)``.

    ``J`` is ``(M, n)``, ``w`` ``(M,)``, ``g`` ``(n,)``. Raises ``ValueError``
    (naming ``damping``) when the matrix is not numerically positive definite.
    """
    F = xp.matmul(xp.matrix_transpose(J) * w, J)
    F = 0.5 * (F + xp.matrix_transpose(F))
    xl, Fl = to_local(xp, F)
    gl = to_local(xp, g)[1]
    n = Fl.shape[-1]
    A = Fl + damping * xl.eye(n, dtype=Fl.dtype, device=_dev(Fl)) if damping else Fl
    L = cholesky(xl, A)
    d = None if L is None else cho_solve(xl, L, gl)
    if d is None or not bool(xl.all(xl.isfinite(d))):
        raise ValueError(_not_pd_message(damping, who))
    if xl is not xp:
        d = xp.asarray(d, dtype=g.dtype)
    return d, F


def _dev(a: Any) -> Any:
    from array_api_compat import device

    return device(a)


def solve_damped_cg(xp: Any, fvp: Callable[[Any], Any], g: Any, damping: float, who: str,
                    tol: float, maxiter: int) -> tuple[Any, int]:
    r"""Conjugate gradients on ``(F + damping I) d = g`` from ``d = 0``.

    ``fvp(v) = F v`` (a Fisher-vector product). Stops when
    :math:`\|r\| \le` ``tol`` :math:`\|g\|` or after ``maxiter`` iterations.
    A direction without curvature, :math:`p^T(F+\lambda I)p \le 100\,\epsilon\,
    \rho\, p^Tp` with :math:`\rho` the largest Rayleigh quotient met (that of
    the all-ones vector first), raises ``ValueError`` naming ``damping``.
    Returns ``(d, iterations)``.
    """
    d = xp.zeros_like(g)
    r = g
    p = r
    rr = float(xp.sum(r * r))
    gnorm = rr ** 0.5
    if gnorm == 0.0:
        return d, 0
    eps = float(xp.finfo(g.dtype).eps)
    k = 0
    # the scale of F + damping I: the largest Rayleigh quotient met, starting
    # with that of the all-ones vector (one extra product; it sees the scale
    # even when g itself lies in a null direction of F)
    ones = xp.ones_like(g)
    Ao = fvp(ones)
    rq_max = float(xp.sum(ones * Ao)) / float(g.shape[0]) + damping
    for k in range(1, maxiter + 1):
        Ap = fvp(p)
        if damping:
            Ap = Ap + damping * p
        pAp, pp = float(xp.sum(p * Ap)), float(xp.sum(p * p))
        if pAp != pAp or pp == 0.0:
            raise ValueError(_not_pd_message(damping, who))
        rq_max = max(rq_max, pAp / pp)
        if pAp <= 100.0 * eps * rq_max * pp:
            # no curvature along p: F is singular there (damping 0) or rounding
            raise ValueError(_not_pd_message(damping, who))
        alpha = rr / pAp
        d = d + alpha * p
        r = r - alpha * Ap
        rr_new = float(xp.sum(r * r))
        if rr_new ** 0.5 <= tol * gnorm:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return d, k


def backend_label(xp: Any) -> str:
    return namespace_name(xp)


def is_lazy_backend(a: Any) -> bool:
    return is_dask(a)
