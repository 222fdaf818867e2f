"""One maximum-likelihood fit in two parameterizations: gradient descent vs the natural gradient."""
import math

import matplotlib.pyplot as plt
import numpy as np

import agnopt as ao

# a sample of N(1, 2^2); fit its mean and scale by minimizing the mean negative log-likelihood
y = 1.0 + 2.0 * np.random.default_rng(0).standard_normal(50)
ybar = y.mean()


def s2(mu):
    """Mean squared deviation from mu."""
    return np.mean((y - mu) ** 2)


coordinates = {
    # name: (model -> (mean, variance), gradient of the mean NLL, start, map to (mu, sigma))
    "(mu, sigma)": (
        lambda th: np.stack([th[0], th[1] ** 2])[None, :],
        lambda th: np.array([-(ybar - th[0]) / th[1] ** 2, 1 / th[1] - s2(th[0]) / th[1] ** 3]),
        np.array([0.0, 1.5]),
        lambda th: th,
    ),
    "(mu, log sigma)": (
        lambda ph: np.stack([ph[0], np.exp(2 * ph[1])])[None, :],
        lambda ph: np.array([-(ybar - ph[0]) / np.exp(2 * ph[1]), 1 - s2(ph[0]) / np.exp(2 * ph[1])]),
        np.array([0.0, math.log(1.5)]),
        lambda ph: np.array([ph[0], np.exp(ph[1])]),
    ),
}
eta, steps = 0.02, 150
family = ao.families.Gaussian(variance=None)  # the model returns the mean and the variance

fig, ax = plt.subplots(figsize=(9, 6), layout="constrained")
styles = {"gd": ("tab:red", "tab:orange"), "ng": ("tab:blue", "navy")}
for i, (name, (model, grad, x0, to_dist)) in enumerate(coordinates.items()):
    for tag, opt in (("gd", ao.sgd(eta)),
                     ("ng", ao.natural_gradient(eta, model=model, family=family, damping=0.0))):
        x, state, path = x0, opt.init(x0), [to_dist(x0)]
        for _ in range(steps):
            u, state = opt.update(grad(x), state, x)
            x = ao.apply_updates(x, u)
            path.append(to_dist(x))
        path = np.array(path)
        label = ("gradient descent " if tag == "gd" else "natural gradient ") + name
        ax.plot(path[:, 0], path[:, 1], color=styles[tag][i], ls="-" if i == 0 else "--",
                lw=5 if i == 0 else 2, alpha=0.5 if i == 0 else 1.0, label=label)
ax.plot([0.0], [1.5], "ko", label="start")
ax.plot([ybar], [math.sqrt(s2(ybar))], "k*", ms=14, label="maximum likelihood")
ax.set_xlabel(r"mean $\mu$")
ax.set_ylabel(r"scale $\sigma$")
ax.set_title(f"{steps} steps of {eta}, paths drawn in ($\\mu$, $\\sigma$)")
ax.legend()
