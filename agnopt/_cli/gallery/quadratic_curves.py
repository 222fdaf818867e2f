"""Loss against step on an ill-conditioned quadratic (axis-aligned and rotated); a 2-D zig-zag."""
import matplotlib.pyplot as plt
import numpy as np

import agnopt as ao


def run(opt, grad, x0, steps):
    """The iterates x0, x1, ..., x_steps of a first-order optimizer."""
    x, state, path = x0, opt.init(x0), [x0]
    for _ in range(steps):
        updates, state = opt.update(grad(x), state, x)
        x = ao.apply_updates(x, updates)
        path.append(x)
    return np.array(path)


n, steps = 10, 300
h = np.logspace(0.0, 3.0, n)  # curvatures 1 ... 1000
c = (-1.0) ** np.arange(n) * (0.5 + np.arange(n) / n)  # the minimum
Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))
optimizers = {
    "sgd": ao.sgd(1.0 / h.max()),  # the stable step 1/L
    "sgd(momentum=0.9)": ao.sgd(1.0 / h.max(), momentum=0.9),
    "sign_sgd": ao.sign_sgd(ao.exponential_decay(0.1, 50, 0.5)),
    "adagrad": ao.adagrad(1.0),
    "rmsprop": ao.rmsprop(ao.exponential_decay(0.1, 50, 0.5)),
    "adam": ao.adam(0.1),
}

fig, axes = plt.subplots(1, 3, figsize=(15, 5), layout="constrained")
for ax, A, what in ((axes[0], np.diag(h), "axis-aligned"), (axes[1], (Q * h) @ Q.T, "rotated axes")):
    def loss(x, A=A):
        return 0.5 * (x - c) @ A @ (x - c)

    def grad(x, A=A):
        return A @ (x - c)

    x0 = np.zeros(n)
    for name, opt in optimizers.items():
        ax.semilogy([max(loss(x), 1e-17) for x in run(opt, grad, x0, steps)], lw=1.5, label=name)
    res = ao.minimize(loss, x0, jac=grad, hess=lambda x, A=A: A, options={"history": True})
    ax.semilogy(np.maximum(res.history["fun"], 1e-17), "ko-", lw=2, label=f"newton ({res.nit} step)")
    ax.set(xlabel="step", ylim=(1e-17, 1e4), title=f"10-D quadratic, condition 1000, {what}")
axes[0].set_ylabel("f(x) - f*  (floored at 1e-17)")
axes[1].legend(ncol=2, loc="lower left")

# 2-D valley of condition 25: gradient descent zig-zags, momentum oscillates, Newton jumps
H = np.array([1.0, 25.0])
x0 = np.array([-4.5, 1.0])
ax = axes[2]
gx, gy = np.meshgrid(np.linspace(-5, 1.5, 200), np.linspace(-1.6, 1.6, 200))
ax.contour(gx, gy, 0.5 * (H[0] * gx**2 + H[1] * gy**2), levels=np.logspace(-2, 1.5, 12),
           colors="0.75", linewidths=0.6)
for name, opt, k in (("sgd, step 1.9/L", ao.sgd(1.9 / 25.0), 40),
                     ("sgd(momentum=0.9)", ao.sgd(0.2 / 25.0, momentum=0.9), 60),
                     ("adam", ao.adam(0.3), 60)):
    p = run(opt, lambda x: H * x, x0, k)
    ax.plot(p[:, 0], p[:, 1], ".-", lw=1, ms=4, label=f"{name} ({k} steps)")
res = ao.minimize(lambda x: 0.5 * np.sum(H * x * x), x0, jac=lambda x: H * x,
                  hess=lambda x: np.diag(H), options={"history": True})
p = np.array(res.history["x"])
ax.plot(p[:, 0], p[:, 1], "ko-", lw=2, label=f"newton ({res.nit} step)")
ax.plot(0, 0, "*", color="gold", mec="k", ms=14, zorder=5)
ax.set(aspect="equal", xlabel="x", ylabel="y", title="2-D valley, condition 25")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
