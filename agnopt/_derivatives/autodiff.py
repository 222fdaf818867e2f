"""Derivatives from the backend's own automatic differentiation (torch, JAX).

The solvers accept ``jac="autodiff"`` / ``hess="autodiff"``; this module is
where that string becomes a derivative. Only two backends differentiate
programs: PyTorch (through :mod:`torch.func`) and JAX. For every other backend
(NumPy, array-api-strict, Dask, CuPy) the functions here raise
:class:`AutodiffUnavailableError` (a ``TypeError`` and a ``ValueError``) whose
message names the backend and the alternatives (``"2-point"``, ``"3-point"``,
``"cs"`` finite differences, or a callable).

``fun`` is written once with the Array API namespace of its argument
(``array_api_compat.array_namespace(x)``); under :mod:`torch.func` transforms
the argument is still a ``torch.Tensor`` and under JAX transforms a
``jax.Array`` tracer, so that namespace lookup and the functions of
``array_api_compat.torch`` / ``jax.numpy`` keep working. What does *not* work
under these transforms is Python control flow on data (``float(x)``,
``bool(x > 0)``) and in-place updates of the argument: write ``fun`` without
them.

Functions
---------
jacobian(fun, x, batched=False, mode="auto")
    ``(m, n)`` Jacobian of ``fun: (n,) -> (m,)``, or ``(B, m, n)`` for a
    batched ``fun: (B, n) -> (B, m)`` whose rows are independent.
gradient(fun, x) / value_and_grad(fun, x)
    ``(n,)`` gradient of a scalar ``fun`` (and its value).
hessian(fun, x)
    ``(n, n)`` Hessian of a scalar ``fun`` (forward-over-reverse).
hvp(fun, x, v)
    Hessian-vector product ``H(x) v`` as the directional derivative of the
    gradient, ``d/dt grad f(x + t v)`` at ``t = 0`` (forward-over-reverse;
    the Hessian is never formed).
"""

from __future__ import annotations

from typing import Any, Callable

import array_api_compat

from .._core.backend import namespace_name
from .._core.errors import AutodiffUnavailableError

__all__ = [
    "AutodiffUnavailableError",
    "autodiff_backend",
    "jacobian",
    "gradient",
    "value_and_grad",
    "hessian",
    "hvp",
]


def _backend_label(x: Any) -> str:
    try:
        return namespace_name(array_api_compat.array_namespace(x))
    except TypeError:
        return type(x).__name__


def autodiff_backend(x: Any, what: str = "autodiff") -> str:
    """``"torch"`` or ``"jax"`` for the arrays that can be differentiated.

    Raises
    ------
    AutodiffUnavailableError
        For any other array (NumPy, array-api-strict, Dask, CuPy...), with a
        message naming the backend and the alternatives.
    """
    if array_api_compat.is_torch_array(x):
        return "torch"
    if array_api_compat.is_jax_array(x):
        return "jax"
    raise AutodiffUnavailableError(
        f"{what}: autodiff needs torch or JAX arrays; got {_backend_label(x)}; "
        "use jac='2-point' (or '3-point', 'cs' for complex-step) finite "
        "differences, or pass a callable"
    )


def _bind(fun: Callable, args: tuple) -> Callable:
    if not args:
        return fun
    return lambda x: fun(x, *args)


def _check_vector(x: Any, what: str) -> None:
    if x.ndim != 1:
        raise ValueError(f"{what}: x must be 1-D (n,), got shape {tuple(x.shape)}")


def _basis(x: Any, n: int, batched: bool, kind: str):
    """The ``n`` tangents ``e_j`` (broadcast over the batch when batched).

    Shape ``(n, n)`` or ``(n, B, n)``, on ``x``'s device and in its dtype.
    """
    if kind == "torch":
        import torch

        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        if batched:
            return eye[:, None, :].expand(n, x.shape[0], n).contiguous()
        return eye
    import jax.numpy as jnp

    eye_j = jnp.eye(n, dtype=x.dtype)
    if batched:
        return jnp.broadcast_to(eye_j[:, None, :], (n, x.shape[0], n))
    return eye_j


def jacobian(
    fun: Callable,
    x: Any,
    batched: bool = False,
    *,
    args: tuple = (),
    mode: str = "auto",
) -> Any:
    """Jacobian of ``fun`` at ``x`` by the backend's automatic differentiation.

    Parameters
    ----------
    fun : callable
        ``fun(x, *args)``. Unbatched: ``(n,) -> (m,)`` (a 0-d output is
        treated as ``m = 1`` and gives ``(1, n)``). Batched: ``(B, n) ->
        (B, m)`` where row ``b`` of the output depends only on row ``b`` of
        the input (independent problems).
    x : torch.Tensor or jax.Array
        ``(n,)`` or, with ``batched=True``, ``(B, n)``.
    batched : bool
        See above. The batched Jacobian is computed without forming the
        ``(B, m, B, n)`` full Jacobian: forward mode pushes the tangent
        ``T_j`` with ``T_j[b] = e_j`` for every ``b`` (``n`` JVPs, each giving
        column ``j`` of every problem's Jacobian); reverse mode pulls back the
        cotangent ``C_i`` with ``C_i[b] = e_i`` (``m`` VJPs, each giving row
        ``i``). This is exact because rows are independent ("sum trick":
        ``d/dx[b] sum_b' f(x)[b', i] = d f(x)[b, i] / d x[b]``).
    args : tuple
        Extra positional arguments of ``fun`` (not differentiated).
    mode : {"auto", "fwd", "rev"}
        Forward mode costs ``n`` JVPs, reverse mode ``m`` VJPs. ``"auto"``
        evaluates ``fun`` once through a VJP to learn ``m`` and uses reverse
        mode when ``m < n``, forward mode otherwise.

    Returns
    -------
    array
        ``(m, n)``, or ``(B, m, n)`` when batched; same backend, device and
        dtype as ``fun``'s output.

    Raises
    ------
    AutodiffUnavailableError
        If ``x`` is not a torch tensor or JAX array.
    ValueError
        For an ``x`` of the wrong rank, an unknown ``mode``, or an output of the
        wrong rank.
    """
    kind = autodiff_backend(x, "jacobian")
    if mode not in ("auto", "fwd", "rev"):
        raise ValueError(f"jacobian: mode must be 'auto', 'fwd' or 'rev', got {mode!r}")
    f = _bind(fun, args)
    if batched:
        if x.ndim != 2:
            raise ValueError(
                f"jacobian: batched x must be 2-D (B, n), got shape {tuple(x.shape)}"
            )
        n = x.shape[1]
    else:
        _check_vector(x, "jacobian")
        n = x.shape[0]

    vmap: Any  # torch.func's or jax's (their signatures differ)
    jvp: Any
    vjp: Any
    if kind == "torch":
        import torch.func as tf

        vmap, jvp, vjp = tf.vmap, tf.jvp, tf.vjp
    else:
        import jax

        vmap, jvp, vjp = jax.vmap, jax.jvp, jax.vjp

    if not batched:
        g = f

        def f(z):  # noqa: F811 - 0-d outputs become (1,)
            out = g(z)
            return out[None] if out.ndim == 0 else out

    use_rev = mode == "rev"
    out: Any = None
    vjp_fn: Any = None
    if mode == "auto":
        out, vjp_fn = vjp(f, x)
        m = out.shape[-1]
        use_rev = m < n
    if use_rev:
        if vjp_fn is None:
            out, vjp_fn = vjp(f, x)
        _check_out(out, x, batched)
        m = out.shape[-1]
        cot = _basis(out, m, batched, kind)  # (m, [B,] m)
        rows = vmap(lambda c: vjp_fn(c)[0])(cot)  # (m, [B,] n)
        if batched:
            return _moveaxis(rows, 0, 1, kind)  # (B, m, n)
        return rows
    tan = _basis(x, n, batched, kind)  # (n, [B,] n)
    outs = vmap(lambda t: jvp(f, (x,), (t,))[1])(tan)  # (n, [B,] m)
    _check_out(outs[0], x, batched)
    if batched:
        return _moveaxis(outs, 0, 2, kind)  # (B, m, n)
    return outs.T if kind == "jax" else outs.transpose(0, 1)


def _moveaxis(a: Any, src: int, dst: int, kind: str) -> Any:
    if kind == "torch":
        return a.movedim(src, dst)
    import jax.numpy as jnp

    return jnp.moveaxis(a, src, dst)


def _check_out(out: Any, x: Any, batched: bool) -> None:
    if batched:
        if out.ndim != 2 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"jacobian: batched fun must return (B, m) = ({x.shape[0]}, m), "
                f"got shape {tuple(out.shape)}"
            )
    elif out.ndim != 1:
        raise ValueError(f"jacobian: fun must return a 1-D (m,) array, got shape {tuple(out.shape)}")


def _check_scalar(out: Any, what: str) -> None:
    if getattr(out, "ndim", None) != 0:
        shape = tuple(getattr(out, "shape", ()))
        raise ValueError(f"{what}: fun must return a 0-d (scalar) array, got shape {shape}")


def value_and_grad(fun: Callable, x: Any, *, args: tuple = ()) -> tuple[Any, Any]:
    """``(fun(x), grad fun(x))`` of a scalar ``fun`` in one reverse pass.

    ``fun(x, *args)`` must return a 0-d array; ``x`` is ``(n,)``.
    """
    kind = autodiff_backend(x, "gradient")
    _check_vector(x, "gradient")
    f = _bind(fun, args)
    if kind == "torch":
        import torch.func as tf

        def fa(z):
            out = f(z)
            _check_scalar(out, "gradient")
            return out, out

        g, val = tf.grad(fa, has_aux=True)(x)
        return val.detach(), g
    import jax

    def fj(z):
        out = f(z)
        _check_scalar(out, "gradient")
        return out

    val, g = jax.value_and_grad(fj)(x)
    return val, g


def gradient(fun: Callable, x: Any, *, args: tuple = ()) -> Any:
    """``(n,)`` gradient of a scalar ``fun(x, *args)`` at ``x`` (reverse mode)."""
    return value_and_grad(fun, x, args=args)[1]


def hessian(fun: Callable, x: Any, *, args: tuple = ()) -> Any:
    """``(n, n)`` Hessian of a scalar ``fun(x, *args)`` (forward over reverse).

    The result is symmetric up to rounding; callers that need exact symmetry
    should use ``(H + H.T) / 2``.
    """
    kind = autodiff_backend(x, "hessian")
    _check_vector(x, "hessian")
    f = _bind(fun, args)

    def fs(z):
        out = f(z)
        _check_scalar(out, "hessian")
        return out

    if kind == "torch":
        import torch.func as tf

        return tf.jacfwd(tf.grad(fs))(x)
    import jax

    return jax.jacfwd(jax.grad(fs))(x)


def hvp(fun: Callable, x: Any, v: Any, *, args: tuple = ()) -> Any:
    """Hessian-vector product ``H(x) v`` of a scalar ``fun(x, *args)``.

    Computed as the JVP of the gradient, ``d/dt grad f(x + t v)|_{t=0}``
    (forward over reverse): one forward and one reverse pass, ``O(n)`` memory.
    """
    kind = autodiff_backend(x, "hvp")
    _check_vector(x, "hvp")
    f = _bind(fun, args)
    if tuple(v.shape) != tuple(x.shape):
        raise ValueError(f"hvp: v must have x's shape {tuple(x.shape)}, got {tuple(v.shape)}")

    def fs(z):
        out = f(z)
        _check_scalar(out, "hvp")
        return out

    if kind == "torch":
        import torch.func as tf

        return tf.jvp(tf.grad(fs), (x,), (v,))[1]
    import jax

    return jax.jvp(jax.grad(fs), (x,), (v,))[1]
