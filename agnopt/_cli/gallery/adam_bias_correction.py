"""Adam's first steps with Kingma & Ba's bias correction, without it, and with the moments overwritten."""
import math

import matplotlib.pyplot as plt
import numpy as np

import agnopt as ao


def variants(grad, x0, lr, steps, b1=0.9, b2=0.999, eps=1e-8):
    """Iterates and |update| / lr of agnopt.adam and of two hand-written variants (scalar x)."""
    out = {}
    opt = ao.adam(lr, b1, b2, eps)
    x = np.array([x0])
    state = opt.init(x)
    xs, ratios = [x0], []
    for _ in range(steps):
        u, state = opt.update(grad(x), state, x)
        x = ao.apply_updates(x, u)
        xs.append(float(x[0]))
        ratios.append(abs(float(u[0])) / lr)
    out["Kingma & Ba (agnopt.adam)"] = (xs, ratios)
    for variant in ("no bias correction", "corrected moments overwrite m, v"):
        m = v = 0.0
        x, xs, ratios = x0, [x0], []
        for t in range(1, steps + 1):
            g = float(grad(np.array([x]))[0])
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            if variant.startswith("corrected"):  # the slip: the running moments are overwritten
                m, v = m / (1 - b1**t), v / (1 - b2**t)
            step = m / (math.sqrt(v) + eps)
            x -= lr * step
            xs.append(x)
            ratios.append(abs(step))
        out[variant] = (xs, ratios)
    return out


fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
styles = [("#d62728", "-"), ("#1f77b4", "--"), ("#7f7f7f", ":")]
for (name, (_, ratios)), (col, ls) in zip(variants(lambda x: x * 0 + 1.0, 0.0, 1e-3, 3000).items(),
                                            styles):
    ax.loglog(range(1, len(ratios) + 1), ratios, ls, color=col, lw=2, label=name)
ax.axhline(1.0, color="0.8", lw=0.8, zorder=0)
ax.set(xlabel="step t", ylabel="|update| / learning rate", ylim=(1e-4, 30),
       title="constant gradient g = 1")
ax.legend(loc="lower left")
for (name, (xs, _)), (col, ls) in zip(variants(lambda x: x, 1.0, 1e-2, 300).items(), styles):
    ax2.plot(xs, ls, color=col, lw=2, label=name)
ax2.axhline(0.0, color="0.8", lw=0.8, zorder=0)
ax2.set(xlabel="step t", ylabel="x_t", title="f(x) = x²/2 from x = 1, learning rate 0.01")
ax2.legend()
fig.suptitle("Adam's bias correction: correct a copy of the moments, never the moments")
