"""Four NIST StRD nonlinear regression problems fitted by agnopt.least_squares."""
import json
from importlib.resources import files

import matplotlib.pyplot as plt
import numpy as np

import agnopt as ao

# NIST's data, starting points and certified values ship with agnopt as JSON
strd = json.loads(files("agnopt").joinpath("_cli/data/nist_strd.json").read_text())
problems = {p["name"]: p for p in strd["problems"]}
models = {  # NIST's model of each problem, b the parameters
    "Misra1a": lambda b, x: b[0] * (1 - np.exp(-b[1] * x)),
    "Gauss3": lambda b, x: (b[0] * np.exp(-b[1] * x) + b[2] * np.exp(-((x - b[3]) ** 2) / b[4] ** 2)
                            + b[5] * np.exp(-((x - b[6]) ** 2) / b[7] ** 2)),
    "Thurber": lambda b, x: ((b[0] + b[1] * x + b[2] * x**2 + b[3] * x**3)
                             / (1 + b[4] * x + b[5] * x**2 + b[6] * x**3)),
    "Eckerle4": lambda b, x: (b[0] / b[1]) * np.exp(-0.5 * ((x - b[2]) / b[1]) ** 2),
}


def lre(estimate, certified):
    """NIST's log relative error: the digits that agree with the certified values (at most 15)."""
    err = np.abs(np.asarray(estimate) - certified) / np.abs(certified)
    return float(min(15.0, -np.log10(max(err.max(), 1e-15))))


fig, axes = plt.subplots(2, 4, figsize=(14, 6.5), layout="constrained",
                         gridspec_kw={"height_ratios": [2.2, 1]})
for j, (name, model) in enumerate(models.items()):
    p = problems[name]
    x, y = np.array(p["x"]), np.array(p["y"])
    res = ao.least_squares(lambda b: model(b, x) - y, np.array(p["start1"]), method="lm",
                           ftol=1e-15, xtol=1e-15, gtol=1e-15)
    order = np.argsort(x)
    xf = np.linspace(x.min(), x.max(), 400)
    ax, axr = axes[0, j], axes[1, j]
    ax.plot(x, y, ".", color="0.35", label="data")
    ax.plot(xf, model(res.x, xf), "-", color="#d62728", lw=1.8, label="fit")
    ax.set_title(f"{name} ({p['difficulty']})\nLRE {lre(res.x, p['certified_values']):.1f}, "
                 f"{res.nfev} evaluations")
    ax.legend()
    axr.axhline(0.0, color="0.7", lw=0.8)
    axr.plot(x[order], res.fun[order], ".", color="#1f77b4")
    axr.set_xlabel("x")
axes[0, 0].set_ylabel("y")
axes[1, 0].set_ylabel("residual")
fig.suptitle("NIST StRD nonlinear regression: agnopt.least_squares from NIST's first start")
