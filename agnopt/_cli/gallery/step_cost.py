"""Wall time of one optimizer step against the size of a square matrix parameter, on NumPy."""
import time

import matplotlib.pyplot as plt
import numpy as np

import agnopt as ao

sizes = [32, 64, 128, 256, 512]
optimizers = {
    "adam": lambda: ao.adam(1e-3),
    "shampoo": lambda: ao.shampoo(1e-3, precondition_frequency=10),
    "soap": lambda: ao.soap(1e-3, precondition_frequency=10),
    "muon": lambda: ao.muon(1e-3),
}
rng = np.random.default_rng(0)
times = {name: [] for name in optimizers}
for n in sizes:
    W = rng.standard_normal((n, n)).astype(np.float32)
    G = rng.standard_normal((n, n)).astype(np.float32)
    for name, make in optimizers.items():
        opt = make()
        state = opt.init(W)
        steps = 20  # two refreshes of the eigenbases (every 10 steps): their cost is amortized
        updates, state = opt.update(G, state, W)  # the first step (and first eigendecompositions)
        best = float("inf")
        for _ in range(2):  # the better of two rounds: less noise from other processes
            t0 = time.perf_counter()
            for _ in range(steps):
                updates, state = opt.update(G, state, W)
            best = min(best, (time.perf_counter() - t0) / steps * 1e3)
        times[name].append(best)

fig, ax = plt.subplots(figsize=(9, 6))
for name, t in times.items():
    ax.loglog(sizes, t, "o-", label=name)
ax.loglog(sizes, [times["adam"][0] * (s / sizes[0]) ** 2 for s in sizes], "k:", label="~ n^2 (memory)")
ax.loglog(sizes, [times["shampoo"][-1] * (s / sizes[-1]) ** 3 for s in sizes], "k--", label="~ n^3 (eigh, matmul)")
ax.set_xlabel("matrix size n (parameter n x n, float32)")
ax.set_ylabel("ms per step (eigenbasis refreshed every 10 steps)")
ax.set_title("One update on NumPy: Adam's cost grows with the parameter count, the others' with n^3")
ax.legend()
fig.tight_layout()
