r"""The natural gradient (Amari 1998) as a transform: ``scale_by_natural_gradient``
and the optimizer ``natural_gradient``.

For a model whose outputs :math:`o(\theta)` parameterize a distribution of
the data, the Fisher information matrix of the parameters is

.. math::

   F(\theta) = J^T F_{out} J, \qquad J = \partial o / \partial \theta ,

with :math:`F_{out}` the Fisher matrix of the output distribution (diagonal
for the families of :mod:`agnopt.families`). The natural-gradient step
solves :math:`(F + \lambda I)\, d = g` and moves by :math:`-\eta d`. The
Fisher matrix is the metric of the model's *distributions*: a step measured
in it does not depend on the coordinates chosen for :math:`\theta` (to first
order in :math:`\eta`; exactly for linear changes of coordinates when
:math:`\lambda = 0`). For a Gaussian of known variance
:math:`F = J^TJ / s^2` and the step is Gauss-Newton's.

Reference: S. Amari, "Natural gradient works efficiently in learning",
Neural Computation 10(2), 251-276 (1998). Matrix-free solves by conjugate
gradients on Fisher-vector products follow J. Martens, "Deep learning via
Hessian-free optimization", ICML 2010 (the products
:math:`J^T(F_{out}(Jv))` of his Gauss-Newton matrix).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .._core.tree import tree_map
from .._core.typing import Array, ScalarOrSchedule
from .._fisher import core as _core
from .._fisher.families import Family, get_family
from .base import EmptyState, Transform, chain, check_state, trusted, validated_backend
from .transforms import check_learning_rate, check_nonnegative, scale_by_learning_rate

__all__ = ["scale_by_natural_gradient", "natural_gradient"]

#: parameter counts up to this use the dense Cholesky solve when ``solver="auto"``
AUTO_CHOLESKY_MAX = 1000


def _check_solver_args(solver: Any, cg_tol: Any, cg_maxiter: Any) -> tuple[str, float, int | None]:
    if solver not in ("auto", "cholesky", "cg"):
        raise ValueError(f"solver: expected 'auto', 'cholesky' or 'cg', got {solver!r}")
    tol = check_nonnegative("cg_tol", cg_tol)
    if cg_maxiter is not None and (isinstance(cg_maxiter, bool) or not isinstance(cg_maxiter, int)
                                   or cg_maxiter < 1):
        raise ValueError(f"cg_maxiter: expected an integer >= 1 or None, got {cg_maxiter!r}")
    return solver, tol, cg_maxiter


def scale_by_natural_gradient(
    model: Callable[..., Array],
    *,
    family: str | Family,
    damping: float = 1e-4,
    jac: str | Callable[..., Array] = "3-point",
    solver: str = "auto",
    cg_tol: float = 1e-6,
    cg_maxiter: int | None = None,
    weights: Array | None = None,
) -> Transform:
    r"""Precondition the gradient by the model's Fisher matrix: :math:`d = (F + \lambda I)^{-1} g`.

    Parameters
    ----------
    model : callable
        ``model(params, *model_args)`` returning the outputs that
        parameterize the distribution of the data, as ``family`` reads them:
        the mean for ``"gaussian"`` (known variance), ``"bernoulli"``,
        ``"poisson"``; the mean and variance on a trailing axis of 2 for
        ``Gaussian(variance=None)``; probabilities on a trailing class axis
        for ``"categorical"``. Any shape ``(..., [event])``. Write it with
        ``array_api_compat.array_namespace`` so that it runs on the
        parameters' backend.
    family : str or :class:`agnopt.families.Family`
        ``"gaussian"`` (variance 1), ``"bernoulli"``, ``"poisson"``,
        ``"categorical"``, or an instance such as
        ``agnopt.families.Gaussian(variance=0.5)``.
    damping : float
        :math:`\lambda \ge 0` added to the diagonal of :math:`F` (Tikhonov /
        Levenberg damping). ``0`` is the exact natural gradient; it needs a
        positive definite :math:`F`.
    jac : {"3-point", "2-point", "cs", "autodiff"} or callable
        The output Jacobian :math:`J`, of the outputs flattened to ``(M,)``
        with respect to the parameters flattened to ``(n,)`` (leaves raveled
        and concatenated in :func:`agnopt.tree_flatten` order): finite
        differences or the complex step by :func:`agnopt.approx_derivative`
        (``M`` or ``2n`` model calls), the backend's autodiff (torch, JAX;
        others raise :class:`agnopt.AutodiffUnavailableError`), or
        ``jac(params, *model_args) -> (M, n)``.
    solver : {"auto", "cholesky", "cg"}
        ``"cholesky"``: form :math:`F` (``n x n``) and factor it,
        :math:`O(Mn^2 + n^3)`. ``"cg"``: conjugate gradients on
        Fisher-vector products :math:`J^T(w \odot (Jv))`; with
        ``jac="autodiff"`` each product is one JVP and one VJP and neither
        :math:`J` nor :math:`F` is formed; with the other ``jac`` options
        :math:`J` is formed (``M x n``) but :math:`F` is not. ``"auto"``:
        Cholesky for ``n <= 1000`` parameters, CG above.
    cg_tol, cg_maxiter : float, int
        CG stops at :math:`\|r\| \le` ``cg_tol`` :math:`\|g\|` or after
        ``cg_maxiter`` iterations (default ``min(n, 200)``).
    weights : array, optional
        Nonnegative weights of the observations, shaped like the model's
        outputs without the event axis (broadcast against them); the Fisher
        matrix becomes :math:`J^T\operatorname{diag}(\text{weights}\cdot w)J`.

    Returns
    -------
    Transform
        ``init(params) -> EmptyState()``; ``update(grads, state, params, *,
        model_args=()) -> (d, state)`` with ``d`` shaped like ``grads``.
        ``params`` is required: the Fisher matrix is evaluated there. In a
        :func:`agnopt.chain` only ``params`` reaches this transform; data
        that change between steps (a mini-batch) are given either by a
        ``model`` that reads them (a closure over the current batch), or by
        calling this transform's ``update`` directly with ``model_args``.

    Raises
    ------
    ValueError
        ``params`` missing; ``model`` outputs outside the family's domain
        (e.g. a Bernoulli mean outside (0, 1)); ``damping=0`` with a Fisher
        matrix that is not positive definite (the message names
        ``damping``); bad ``solver``, ``cg_tol``, ``cg_maxiter``, ``jac``.
    TypeError
        Grads and params of different backends, non-float leaves, leaves of
        different dtypes.

    Notes
    -----
    One update costs the Jacobian (``n`` JVPs, or ``2n`` model calls for
    central differences) plus the solve; it reads a few scalars to the host
    (the domain and positive-definiteness checks), so it is not meant for
    ``jax.jit``. Dask: the ``n x n`` system is solved in memory.
    """
    if not callable(model):
        raise TypeError(f"model: expected a callable model(params) -> outputs, got {type(model).__name__}")
    fam = get_family(family)
    damping = check_nonnegative("damping", damping)
    _core.check_jac_arg(jac)
    solver, cg_tol, cg_maxiter = _check_solver_args(solver, cg_tol, cg_maxiter)
    who = "scale_by_natural_gradient"

    def init(params):
        validated_backend(params, None, "params")
        return EmptyState()

    @trusted
    def update(updates, state, params=None, *, model_args: tuple = ()):
        check_state(state, EmptyState, who)
        if params is None:
            raise ValueError(
                f"params: {who} needs the parameters (update(grads, state, params)) to "
                "evaluate the model's Fisher matrix there"
            )
        bk = validated_backend(updates, params)
        xp = bk.xp
        theta, unflatten = _core.flatten_tree(xp, params, "params")
        g, _ = _core.flatten_tree(xp, updates, "grads")
        if g.dtype != theta.dtype:
            g = xp.astype(g, theta.dtype)
        n = int(theta.shape[0])
        margs = tuple(model_args) if isinstance(model_args, (tuple, list)) else (model_args,)

        def f(v):
            out = model(unflatten(v), *margs)
            return xp.reshape(out, (-1,))

        out = model(params, *margs)
        if not (hasattr(out, "shape") and hasattr(out, "dtype")):
            raise TypeError(f"model: expected an array of outputs, got {type(out).__name__}")
        fam.check_out_shape(out, "model")
        _core.check_outputs(xp, fam, out, "model")
        w = fam.fisher_weights(xp, out)
        if weights is not None:
            wt = weights if fam.event_ndim == 0 else weights[..., None]
            w = w * wt
        w = xp.reshape(w, (-1,))
        use_cg = solver == "cg" or (solver == "auto" and n > AUTO_CHOLESKY_MAX)
        if use_cg and jac == "autodiff":
            _, jvp, vjp = _core.autodiff_products(f, theta)

            def fvp(v):
                return vjp(w * jvp(v))
        else:
            if callable(jac):
                J = jac(params, *margs)
                J = xp.reshape(J, (-1, n))
            else:
                J = _core.output_jacobian(f, theta, jac, f0=xp.reshape(out, (-1,)))
            if int(J.shape[0]) != int(w.shape[0]):
                raise ValueError(
                    f"jac: expected a ({int(w.shape[0])}, {n}) Jacobian of the flattened "
                    f"outputs, got shape {tuple(J.shape)}"
                )
            if not use_cg:
                d, _ = _core.solve_damped_cholesky(xp, J, w, g, damping, who)
                return unflatten_like(xp, d, unflatten, updates), state
            Jt = xp.matrix_transpose(J)

            def fvp(v):
                return xp.matmul(Jt, w * xp.matmul(J, v))

        maxit = cg_maxiter if cg_maxiter is not None else min(n, 200)
        d, _ = _core.solve_damped_cg(xp, fvp, g, damping, who, cg_tol, maxit)
        return unflatten_like(xp, d, unflatten, updates), state

    return Transform(init, update)


def unflatten_like(xp: Any, d: Any, unflatten: Callable, updates: Any) -> Any:
    """``d`` as a tree shaped like ``updates``, each leaf in that leaf's dtype."""
    tree = unflatten(d)
    return tree_map(lambda a, u: a if a.dtype == u.dtype else xp.astype(a, u.dtype), tree, updates)


def natural_gradient(
    learning_rate: ScalarOrSchedule,
    *,
    model: Callable[..., Array],
    family: str | Family,
    damping: float = 1e-4,
    jac: str | Callable[..., Array] = "3-point",
    solver: str = "auto",
    cg_tol: float = 1e-6,
    cg_maxiter: int | None = None,
    weights: Array | None = None,
) -> Transform:
    r"""Natural gradient descent (Amari 1998): :math:`\theta \leftarrow \theta - \eta\,(F + \lambda I)^{-1} g`.

    ``chain(scale_by_natural_gradient(model, family=..., ...),
    scale_by_learning_rate(learning_rate))``; see
    :func:`scale_by_natural_gradient` for ``model``, ``family``, ``damping``,
    ``jac``, ``solver``, ``cg_tol``, ``cg_maxiter``, ``weights`` and the
    errors raised. ``update(grads, state, params)`` needs ``params``.

    With ``family="gaussian"`` (known variance 1), ``damping=0`` and
    ``learning_rate=1`` one step is the Gauss-Newton step for the residuals
    ``y - model(params)`` (``tests/test_natural_gradient.py``,
    ``test_gaussian_step_is_gauss_newton``). With ``"bernoulli"`` or
    ``"poisson"`` and a generalized linear model, it is one step of Fisher
    scoring (IRLS); :func:`agnopt.fisher_scoring` runs that to convergence.

    Examples
    --------
    Logistic regression, one natural-gradient step from zero:

    >>> import numpy as np, agnopt as ao
    >>> X = np.array([[1.0, -1.0], [1.0, 0.5], [1.0, 2.0], [1.0, 0.0]])
    >>> y = np.array([0.0, 1.0, 1.0, 0.0])
    >>> model = lambda w: 1.0 / (1.0 + np.exp(-(X @ w)))
    >>> grad = lambda w: X.T @ (model(w) - y)         # of the negative log-likelihood
    >>> opt = ao.natural_gradient(1.0, model=model, family="bernoulli", damping=0.0)
    >>> w = np.zeros(2)
    >>> u, _ = opt.update(grad(w), opt.init(w), w)
    >>> np.round(u, 4).tolist()
    [-0.56, 1.4933]
    """
    lr = check_learning_rate(learning_rate)
    if isinstance(lr, float) and not math.isfinite(lr):  # pragma: no cover - checked above
        raise ValueError("learning_rate must be finite")
    return chain(
        scale_by_natural_gradient(model, family=family, damping=damping, jac=jac, solver=solver,
                                  cg_tol=cg_tol, cg_maxiter=cg_maxiter, weights=weights),
        scale_by_learning_rate(lr),
    )
