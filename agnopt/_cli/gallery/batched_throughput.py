"""Fits per second against batch size: one batched agnopt.curve_fit call vs a loop of scipy's."""
import time

import matplotlib.pyplot as plt
import numpy as np
import scipy.optimize

import agnopt as ao


def peak(x, a, mu, s, c):
    return a * np.exp(-((x - mu) ** 2) / (2 * s * s)) + c


def best_time(fn, repeats=2):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)  # the least disturbed by whatever else the machine does


m = 50
x = np.linspace(-5.0, 5.0, m)
p0 = np.array([2.0, 0.0, 1.0, 0.5])
rng = np.random.default_rng(0)
Bs = (10, 30, 100, 300)
agnopt_rate, scipy_rate = [], []
for B in Bs:
    true = np.stack([rng.uniform(1, 3, B), rng.uniform(-1, 1, B), rng.uniform(0.6, 1.5, B),
                     rng.uniform(0, 1, B)], axis=1)
    Y = peak(x, *(true[:, i:i + 1] for i in range(4))) + 0.05 * rng.standard_normal((B, m))
    t = best_time(lambda: ao.curve_fit(peak, x, Y, p0=p0, batched=True))
    agnopt_rate.append(B / t)
    t = best_time(lambda: [scipy.optimize.curve_fit(peak, x, Y[i], p0=p0) for i in range(B)])
    scipy_rate.append(B / t)

fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
ax.loglog(Bs, agnopt_rate, "o-", lw=2, label="agnopt.curve_fit(batched=True), NumPy")
ax.loglog(Bs, scipy_rate, "kx--", lw=2, label="loop of scipy.optimize.curve_fit")
ax.set(xlabel=f"B (independent fits of 4 parameters, {m} points each)", ylabel="fits per second",
       title="Batched Gaussian-peak fits: throughput against batch size")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
