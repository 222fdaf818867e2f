"""Every first-order optimizer and Newton's method on Rosenbrock's valley."""
import matplotlib.pyplot as plt
import numpy as np

import agnopt as ao


def f(x):
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def grad(x):
    r = x[1] - x[0] ** 2
    return np.stack([-2.0 * (1.0 - x[0]) - 400.0 * x[0] * r, 200.0 * r])


def run(opt, x0, steps):
    """The iterates x0, x1, ..., x_steps of a first-order optimizer."""
    x, state, path = x0, opt.init(x0), [x0]
    for _ in range(steps):
        updates, state = opt.update(grad(x), state, x)
        x = ao.apply_updates(x, updates)
        path.append(x)
    return np.array(path)


x0 = np.array([-1.2, 1.0])
steps = 2000
optimizers = {  # step sizes chosen by hand for this problem
    "sgd": ao.sgd(1e-3),
    "sgd(momentum=0.9)": ao.sgd(1e-3, momentum=0.9),
    "sign_sgd": ao.sign_sgd(ao.exponential_decay(5e-3, 1000, 0.5)),
    "adagrad": ao.adagrad(0.5),
    "rmsprop": ao.rmsprop(ao.exponential_decay(1e-2, 300, 0.5)),
    "adam": ao.adam(2e-2),
    "adamw": ao.adamw(2e-2, weight_decay=1e-2),
}
paths = {name: run(opt, x0, steps) for name, opt in optimizers.items()}
res = ao.minimize(f, x0, jac=grad, options={"history": True})  # Newton, finite-difference Hessian
paths["newton"] = np.array(res.history["x"])

gx, gy = np.meshgrid(np.linspace(-2.0, 2.0, 300), np.linspace(-1.0, 3.0, 300))
fig, axes = plt.subplots(2, 4, figsize=(12, 6.8), sharex=True, sharey=True, layout="constrained")
for ax, (name, p) in zip(axes.flat, paths.items()):
    ax.contour(gx, gy, f(np.stack([gx, gy])), levels=np.logspace(-1, 3.5, 14), colors="0.75",
               linewidths=0.6)
    ax.plot(p[:, 0], p[:, 1], ".-" if name == "newton" else "-", lw=1.5)
    ax.plot(*x0, "o", color="0.3")
    ax.plot(1.0, 1.0, "*", color="gold", mec="k", ms=14, zorder=5)
    count = f"{res.nit} iterations" if name == "newton" else f"{steps} steps"
    ax.set_title(f"{name}\n{count}, f = {f(p[-1]):.1e}")
for ax in axes[-1]:
    ax.set_xlabel("x")
for ax in axes[:, 0]:
    ax.set_ylabel("y")
fig.suptitle("Rosenbrock's valley from (-1.2, 1): first-order optimizers and Newton")
