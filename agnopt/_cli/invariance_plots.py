r"""The reparameterization picture: one fit, two coordinate systems.

:func:`reparameterization_paths` fits a Gaussian's mean and scale to a
sample by maximum likelihood, once in the coordinates :math:`(\mu, \sigma)`
and once in :math:`(\mu, \log\sigma)`, with plain gradient descent and with
the natural gradient (:func:`agnopt.natural_gradient`, the Fisher metric),
and draws all four paths in the same distribution space
:math:`(\mu, \sigma)`. Gradient descent's two paths part (each follows the
Euclidean metric of its own coordinates); the natural gradient's two lie on
top of each other (the Fisher metric does not depend on the coordinates).
Everything runs on NumPy through the public API; matplotlib is imported when
the function is called. ``tests/test_natural_gradient.py``
(``test_natural_gradient_reparameterization_invariant_to_first_order``)
checks the same runs numerically.

Examples
--------
>>> from agnopt._cli.invariance_plots import reparameterization_paths
>>> fig = reparameterization_paths(steps=20)
>>> len(fig.axes)
1
>>> import matplotlib.pyplot as plt; plt.close(fig)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import agnopt as ao

__all__ = ["gaussian_fit_paths", "reparameterization_paths"]


def gaussian_fit_paths(eta: float = 0.02, steps: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """The four paths, each ``(steps + 1, 2)`` in :math:`(\\mu, \\sigma)`.

    Keys ``"gd (mu, sigma)"``, ``"gd (mu, log sigma)"``, ``"ng (mu, sigma)"``,
    ``"ng (mu, log sigma)"``; also ``"mle"`` (the closed-form fit).
    """
    rng = np.random.default_rng(seed)
    y = 1.0 + 2.0 * rng.standard_normal(50)
    ybar = float(y.mean())

    def s2(mu):
        return float(np.mean((y - mu) ** 2))

    fam = ao.families.Gaussian(variance=None)
    coords = {
        "(mu, sigma)": (
            lambda th: np.stack([th[0], th[1] ** 2])[None, :],
            lambda th: np.array([-(ybar - th[0]) / th[1] ** 2, 1 / th[1] - s2(th[0]) / th[1] ** 3]),
            np.array([0.0, 1.5]),
            lambda th: th,
        ),
        "(mu, log sigma)": (
            lambda ph: np.stack([ph[0], np.exp(2 * ph[1])])[None, :],
            lambda ph: np.array([-(ybar - ph[0]) / math.exp(2 * ph[1]), 1 - s2(ph[0]) / math.exp(2 * ph[1])]),
            np.array([0.0, math.log(1.5)]),
            lambda ph: np.array([ph[0], math.exp(ph[1])]),
        ),
    }
    out: dict[str, np.ndarray] = {}
    for name, (model, grad, x0, to_dist) in coords.items():
        for tag, opt in (("gd", ao.sgd(eta)),
                         ("ng", ao.natural_gradient(eta, model=model, family=fam, damping=0.0))):
            x, s = x0, opt.init(x0)
            path = [to_dist(x)]
            for _ in range(steps):
                u, s = opt.update(grad(x), s, x)
                x = ao.apply_updates(x, u)
                path.append(to_dist(x))
            out[f"{tag} {name}"] = np.array(path)
    out["mle"] = np.array([ybar, math.sqrt(s2(ybar))])
    return out


def reparameterization_paths(eta: float = 0.02, steps: int = 150) -> Any:
    """Figure: gradient descent's two paths apart, the natural gradient's on top of each other."""
    import matplotlib.pyplot as plt

    p = gaussian_fit_paths(eta, steps)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    styles = {
        "gd (mu, sigma)": dict(color="tab:red", ls="-", lw=2.5, alpha=0.6),
        "gd (mu, log sigma)": dict(color="tab:orange", ls="--", lw=1.5),
        "ng (mu, sigma)": dict(color="tab:blue", ls="-", lw=4.0, alpha=0.4),
        "ng (mu, log sigma)": dict(color="navy", ls="--", lw=1.5),
    }
    for key, st in styles.items():
        xy = p[key]
        label = ("gradient descent" if key.startswith("gd") else "natural gradient") + key[2:]
        ax.plot(xy[:, 0], xy[:, 1], label=label, **st)
    ax.plot([p["ng (mu, sigma)"][0, 0]], [p["ng (mu, sigma)"][0, 1]], "ko", label="start")
    ax.plot([p["mle"][0]], [p["mle"][1]], "k*", ms=12, label="maximum likelihood")
    ax.set_xlabel(r"$\mu$")
    ax.set_ylabel(r"$\sigma$")
    ax.set_title(f"Gaussian fit, {steps} steps of {eta}: two parameterizations")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
