r"""Output families for the Fisher-matrix methods (natural gradient, Fisher scoring).

A *family* says which distribution the model's outputs parameterize. Every
family here is written in its **mean parameterization** (the model returns
the mean of the observation, plus the variance for the Gaussian of unknown
variance), and in that parameterization its Fisher information is
*diagonal*: for outputs :math:`o` (flattened) the Fisher matrix of one
observation is :math:`F_{out} = \operatorname{diag}(w(o))`, so the Fisher
matrix of the model parameters is :math:`F = J^T \operatorname{diag}(w) J`
with :math:`J = \partial o / \partial\theta`.

============================  =================  ==========================  =========================================
family                        outputs            Fisher weights ``w``        score :math:`\partial\log p/\partial o`
============================  =================  ==========================  =========================================
``Gaussian(variance=s2)``     mean :math:`\mu`   :math:`1/s^2`               :math:`(y-\mu)/s^2`
``Gaussian(variance=None)``   :math:`(\mu, v)`   :math:`(1/v,\ 1/(2v^2))`    :math:`((y-\mu)/v,\ ((y-\mu)^2 - v)/(2v^2))`
``Bernoulli()``               :math:`p`          :math:`1/(p(1-p))`          :math:`(y-p)/(p(1-p))`
``Poisson()``                 rate :math:`\mu`   :math:`1/\mu`               :math:`y/\mu - 1`
``Categorical()``             :math:`p_{1..K}`   :math:`1/p_k`               :math:`y_k/p_k - \sum_j y_j`
============================  =================  ==========================  =========================================

For the categorical family the probabilities must sum to one over the last
axis; then every column of :math:`J` sums to zero over the classes, and
:math:`J^T\operatorname{diag}(1/p)J = \sum_k \nabla p_k \nabla p_k^T / p_k`
is the Fisher matrix of the multinomial (the subtracted :math:`\sum_j y_j`
in the score is zero after multiplication by :math:`J^T`; it only removes a
cancellation).

Negative log-likelihoods (``nll``) drop the terms that do not depend on the
outputs: Gaussian of known variance :math:`\tfrac12 (y-\mu)^2/s^2` (the
least-squares cost for :math:`s = 1`); Gaussian of unknown variance
:math:`\tfrac12\log v + (y-\mu)^2/(2v)`; Bernoulli
:math:`-y\log p-(1-y)\log(1-p)`; Poisson :math:`\mu - y\log\mu`;
categorical :math:`-\sum_k y_k\log p_k`.

Reference: P. McCullagh, J. A. Nelder, *Generalized Linear Models*, 2nd ed.
(1989), ch. 2 (variance functions, Fisher scoring = IRLS).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["Family", "Gaussian", "Bernoulli", "Poisson", "Categorical", "get_family"]


def _xlogy(xp: Any, y: Any, m: Any) -> Any:
    """``y * log(m)`` with ``0 * log(anything) = 0`` (no NaN at ``y = 0``)."""
    zero = y == 0
    safe = xp.where(zero, xp.ones_like(m), m)
    return xp.where(zero, xp.zeros_like(m), y * xp.log(safe))


class Family:
    """Base class: an output distribution in its mean parameterization.

    Subclasses define ``name``, ``event_ndim`` (0: one output per
    observation; 1: a trailing axis per observation, of length
    ``event_size`` or any length when ``event_size`` is None), and the
    elementwise ``in_domain``, ``fisher_weights``, ``score``, ``nll`` and
    ``check_y``.
    """

    name = "family"
    event_ndim = 0
    event_size: int | None = None
    domain = ""

    def in_domain(self, xp: Any, out: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def fisher_weights(self, xp: Any, out: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, xp: Any, y: Any, out: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def nll(self, xp: Any, y: Any, out: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_y(self, xp: Any, y: Any) -> None:
        if not bool(xp.all(xp.isfinite(y))):
            raise ValueError(f"y: contains non-finite values (family {self.name})")

    def check_out_shape(self, out: Any, what: str) -> None:
        if self.event_ndim == 1:
            if out.ndim < 1 or (self.event_size is not None and out.shape[-1] != self.event_size):
                need = "a trailing axis" if self.event_size is None else f"a trailing axis of {self.event_size}"
                raise ValueError(
                    f"{what}: the {self.name} family needs outputs with {need} "
                    f"({self.domain}); got shape {tuple(out.shape)}"
                )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Gaussian(Family):
    """Gaussian observations.

    ``variance`` a positive float: the model returns the mean, the variance
    is known (the Fisher matrix is :math:`J^TJ/s^2`, Gauss-Newton's). ``None``:
    the model returns the mean and the variance on a trailing axis of 2.
    """

    name = "gaussian"

    def __init__(self, variance: float | None = 1.0):
        if variance is not None:
            if isinstance(variance, bool) or not isinstance(variance, (int, float)):
                raise TypeError(f"variance: expected a positive float or None, got {type(variance).__name__}")
            if not (math.isfinite(variance) and variance > 0):
                raise ValueError(f"variance: expected a positive finite float or None, got {variance!r}")
            self.variance: float | None = float(variance)
            self.event_ndim, self.event_size = 0, None
            self.domain = "a mean"
        else:
            self.variance = None
            self.event_ndim, self.event_size = 1, 2
            self.domain = "the mean and the variance"

    def in_domain(self, xp, out):
        if self.variance is not None:
            return xp.isfinite(out)
        ok = xp.isfinite(out[..., 0]) & xp.isfinite(out[..., 1]) & (out[..., 1] > 0)
        return xp.stack([ok, ok], axis=-1)

    def fisher_weights(self, xp, out):
        if self.variance is not None:
            return xp.full_like(out, 1.0 / self.variance)
        v = out[..., 1]
        return xp.stack([1.0 / v, 0.5 / (v * v)], axis=-1)

    def score(self, xp, y, out):
        if self.variance is not None:
            return (y - out) / self.variance
        mu, v = out[..., 0], out[..., 1]
        r = y - mu
        return xp.stack([r / v, 0.5 * (r * r - v) / (v * v)], axis=-1)

    def nll(self, xp, y, out):
        if self.variance is not None:
            r = y - out
            return 0.5 * r * r / self.variance
        mu, v = out[..., 0], out[..., 1]
        r = y - mu
        return 0.5 * xp.log(v) + 0.5 * r * r / v

    def __repr__(self):
        return f"Gaussian(variance={self.variance!r})"


class Bernoulli(Family):
    """Bernoulli observations ``y`` in [0, 1]; the model returns :math:`p \\in (0, 1)`."""

    name = "bernoulli"
    domain = "a probability in (0, 1)"

    def in_domain(self, xp, out):
        return (out > 0) & (out < 1)

    def fisher_weights(self, xp, out):
        return 1.0 / (out * (1.0 - out))

    def score(self, xp, y, out):
        return (y - out) / (out * (1.0 - out))

    def nll(self, xp, y, out):
        return -(_xlogy(xp, y, out) + _xlogy(xp, 1.0 - y, 1.0 - out))

    def check_y(self, xp, y):
        super().check_y(xp, y)
        if not bool(xp.all((y >= 0) & (y <= 1))):
            raise ValueError("y: the bernoulli family needs observations in [0, 1]")


class Poisson(Family):
    """Poisson counts ``y >= 0``; the model returns the rate :math:`\\mu > 0`."""

    name = "poisson"
    domain = "a rate > 0"

    def in_domain(self, xp, out):
        return (out > 0) & xp.isfinite(out)

    def fisher_weights(self, xp, out):
        return 1.0 / out

    def score(self, xp, y, out):
        return y / out - 1.0

    def nll(self, xp, y, out):
        return out - _xlogy(xp, y, out)

    def check_y(self, xp, y):
        super().check_y(xp, y)
        if not bool(xp.all(y >= 0)):
            raise ValueError("y: the poisson family needs counts >= 0")


class Categorical(Family):
    """Categorical (multinomial) observations: ``y`` one-hot or counts on a
    trailing class axis; the model returns probabilities on that axis,
    positive and summing to one."""

    name = "categorical"
    event_ndim = 1
    event_size = None
    domain = "probabilities on the last axis, positive, summing to 1"

    def in_domain(self, xp, out):
        tol = float(xp.finfo(out.dtype).eps) ** 0.5
        total = xp.sum(out, axis=-1, keepdims=True)
        return (out > 0) & (out <= 1) & (xp.abs(total - 1.0) <= tol)

    def fisher_weights(self, xp, out):
        return 1.0 / out

    def score(self, xp, y, out):
        return y / out - xp.sum(y, axis=-1, keepdims=True)

    def nll(self, xp, y, out):
        return -xp.sum(_xlogy(xp, y, out), axis=-1)

    def check_y(self, xp, y):
        super().check_y(xp, y)
        if not bool(xp.all(y >= 0)):
            raise ValueError("y: the categorical family needs one-hot rows or counts >= 0")


_BY_NAME = {"gaussian": Gaussian, "normal": Gaussian, "bernoulli": Bernoulli,
            "binomial": Bernoulli, "poisson": Poisson, "categorical": Categorical,
            "multinomial": Categorical}


def get_family(family: Any, what: str = "family") -> Family:
    """A :class:`Family` from an instance or a name (``"gaussian"`` is
    ``Gaussian(variance=1.0)``)."""
    if isinstance(family, Family):
        return family
    if isinstance(family, str) and family.lower() in _BY_NAME:
        return _BY_NAME[family.lower()]()
    raise ValueError(
        f"{what}: expected one of 'gaussian', 'bernoulli', 'poisson', 'categorical' or a "
        f"family object (agnopt.families.Gaussian(variance=...), ...), got {family!r}"
    )
