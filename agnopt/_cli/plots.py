r"""Pictures of the optimizers: the documentation's gallery and ``tour --plot``.

Every function returns a :class:`matplotlib.figure.Figure` (made with
``matplotlib.pyplot``, so it shows in notebooks and in Sphinx's ``plot``
directive); matplotlib is imported only when a function is called.
:func:`write_plots` writes all of them as PNG files.

All computations run on NumPy (the point of these pictures is the
mathematics, not the backend) through the public API of :mod:`agnopt`.

=============================  ==========================================================
function                       what it draws
=============================  ==========================================================
:func:`rosenbrock_paths`       every first-order optimizer and Newton on Rosenbrock's valley
:func:`quadratic_curves`       loss vs step on an ill-conditioned quadratic; GD's zig-zag
:func:`adam_bias_correction`   Adam's first steps with, without and with the seed's
                               (wrong) bias correction
:func:`nist_fits`              NIST StRD fits: data, model and residuals
:func:`batched_throughput`     fits per second vs batch size B: batched curve_fit against
                               a loop of scipy.optimize.curve_fit
:func:`bench_ratios`           the bench command's step times over the memory roofline
                               (needs ``agnopt._cli.bench``)
=============================  ==========================================================

Examples
--------
>>> from agnopt._cli.plots import quadratic_curves
>>> fig = quadratic_curves(steps=20)
>>> len(fig.axes)
3
>>> import matplotlib.pyplot as plt; plt.close(fig)
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

__all__ = [
    "rosenbrock_paths",
    "quadratic_curves",
    "adam_bias_correction",
    "nist_fits",
    "batched_throughput",
    "bench_ratios",
    "write_plots",
    "PLOTS",
]

_COLORS = {
    "sgd": "#7f7f7f",
    "sgd(momentum=0.9)": "#1f77b4",
    "sign_sgd": "#8c564b",
    "adagrad": "#2ca02c",
    "rmsprop": "#9467bd",
    "adam": "#d62728",
    "adamw": "#ff7f0e",
    "newton": "#000000",
}


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _first_order(problem: str) -> dict[str, Any]:
    """The first-order optimizers drawn, with step sizes that suit ``problem``."""
    import agnopt as ao

    if problem == "rosenbrock":
        return {
            "sgd": ao.sgd(1e-3),
            "sgd(momentum=0.9)": ao.sgd(1e-3, momentum=0.9),
            "sign_sgd": ao.sign_sgd(ao.exponential_decay(5e-3, 1000, 0.5)),
            "adagrad": ao.adagrad(0.5),
            "rmsprop": ao.rmsprop(ao.exponential_decay(1e-2, 300, 0.5)),
            "adam": ao.adam(2e-2),
            "adamw": ao.adamw(2e-2, weight_decay=1e-2),
        }
    # quadratic with largest eigenvalue L: gradient descent is stable for lr < 2/L
    return {
        "sgd": ao.sgd(1.0 / problem_l_max(problem)),
        "sgd(momentum=0.9)": ao.sgd(1.0 / problem_l_max(problem), momentum=0.9),
        "sign_sgd": ao.sign_sgd(ao.exponential_decay(0.1, 50, 0.5)),
        "adagrad": ao.adagrad(1.0),
        "rmsprop": ao.rmsprop(ao.exponential_decay(0.1, 50, 0.5)),
        "adam": ao.adam(0.1),
        "adamw": ao.adamw(0.1, weight_decay=1e-3),
    }


def problem_l_max(problem: str) -> float:
    """Largest curvature of the named quadratic (``"quadratic"``: 1e3, ``"valley"``: 25)."""
    return {"quadratic": 1e3, "valley": 25.0}[problem]


def _run(opt: Any, grad: Callable, x0: Any, steps: int) -> list:
    """Iterates ``[x0, x1, ..., x_steps]`` of a first-order optimizer (NumPy)."""
    import agnopt as ao

    x, state = x0, opt.init(x0)
    path = [x0]
    for _ in range(steps):
        u, state = opt.update(grad(x), state, x)
        x = ao.apply_updates(x, u)
        path.append(x)
    return path


def _rosen(x):
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def _rosen_grad(x):
    import numpy as np

    r = x[1] - x[0] ** 2
    return np.stack([-2.0 * (1.0 - x[0]) - 400.0 * x[0] * r, 200.0 * r])


def rosenbrock_paths(steps: int = 2000) -> Any:
    """Paths of every first-order optimizer and of Newton on the Rosenbrock valley.

    :math:`f(x, y) = (1-x)^2 + 100 (y - x^2)^2` from NIST's classic start
    (-1.2, 1); one panel per optimizer over log-spaced contours of ``f``.
    The first-order methods take ``steps`` steps; Newton
    (:func:`agnopt.minimize`, exact gradient, finite-difference Hessian) runs
    to convergence.
    """
    import numpy as np

    import agnopt as ao

    plt = _plt()
    x0 = np.array([-1.2, 1.0])
    paths = {name: np.array(_run(opt, _rosen_grad, x0, steps))
             for name, opt in _first_order("rosenbrock").items()}
    res = ao.minimize(_rosen, x0, jac=_rosen_grad, options={"history": True})
    paths["newton"] = np.array([np.asarray(v) for v in res.history["x"]])

    gx, gy = np.meshgrid(np.linspace(-2.0, 2.0, 300), np.linspace(-1.0, 3.0, 300))
    fz = (1 - gx) ** 2 + 100 * (gy - gx**2) ** 2
    levels = np.logspace(-1, 3.5, 14)
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.6), sharex=True, sharey=True,
                             layout="constrained")
    for ax, (name, p) in zip(axes.flat, paths.items()):
        ax.contour(gx, gy, fz, levels=levels, colors="0.75", linewidths=0.6)
        ax.plot(p[:, 0], p[:, 1], "-", color=_COLORS[name], lw=1.3)
        ax.plot(p[0, 0], p[0, 1], "o", color="0.3", ms=5)
        ax.plot(1.0, 1.0, "*", color="gold", mec="k", ms=12, zorder=5)
        n = len(p) - 1
        if name == "newton":
            ax.plot(p[:, 0], p[:, 1], ".", color=_COLORS[name], ms=5)
        what = f"{n} iterations" if name == "newton" else f"{n} steps"
        ax.set_title(f"{name}\n{what}, f = {_rosen(p[-1]):.1e}", fontsize=10)
        ax.set_xlim(-2, 2)
        ax.set_ylim(-1, 3)
    for ax in axes[-1]:
        ax.set_xlabel("x")
    for ax in axes[:, 0]:
        ax.set_ylabel("y")
    fig.suptitle("Rosenbrock's valley from (-1.2, 1): first-order optimizers and Newton")
    return fig


def _quadratic(n: int = 10, cond: float = 1e3, rotated: bool = False):
    """``(A, c)`` of ``0.5 (x-c)^T A (x-c)``: eigenvalues 1..cond, axis-aligned or rotated."""
    import numpy as np

    h = np.logspace(0.0, math.log10(cond), n)
    c = (-1.0) ** np.arange(n) * (0.5 + np.arange(n) / n)
    if not rotated:
        return np.diag(h), c
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))
    return (q * h) @ q.T, c


def quadratic_curves(steps: int = 300) -> Any:
    r"""Loss against step on an ill-conditioned quadratic, and the zig-zag of gradient descent.

    Left: :math:`f(x) = \tfrac12 (x-c)^T A (x-c)` in 10 dimensions, :math:`A`
    diagonal with curvatures from 1 to 1000 (condition number 1000), from
    :math:`x = 0`. Gradient descent with the stable step 1/L is limited by
    the smallest curvature; the diagonal preconditioners (Adagrad, RMSProp,
    Adam) see exactly these axis-aligned curvatures and converge fast; Newton
    (:func:`agnopt.minimize`) lands on the minimum in one step. Middle: the
    same eigenvalues in a rotated basis (:math:`A = Q\,\mathrm{diag}(h)\,Q^T`):
    gradient descent and Newton do not change (they are rotation invariant),
    the diagonal methods lose their advantage. Right: a 2-D valley of
    condition 25: gradient descent at step 1.9/L zig-zags across it, momentum
    oscillates along it, Adam's first steps are sign-like (diagonal),
    Newton takes one step.
    """
    import numpy as np

    import agnopt as ao

    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1, 1.05]})
    for ax, rotated in zip(axes[:2], (False, True)):
        A, c = _quadratic(rotated=rotated)

        def loss(x, A=A, c=c):
            return 0.5 * float((x - c) @ A @ (x - c))

        def grad(x, A=A, c=c):
            return A @ (x - c)

        x0 = np.zeros_like(c)
        for name, opt in _first_order("quadratic").items():
            path = _run(opt, grad, x0, steps)
            ax.semilogy([max(loss(x), 1e-17) for x in path], color=_COLORS[name], label=name,
                        lw=1.3)
        res = ao.minimize(lambda x, A=A, c=c: 0.5 * ((x - c) @ A @ (x - c)), x0, jac=grad,
                          hess=lambda x, A=A: A, options={"history": True})
        nl = [max(float(v), 1e-17) for v in res.history["fun"]]
        ax.semilogy(range(len(nl)), nl, "o-", color=_COLORS["newton"], lw=2,
                    label=f"newton ({res.nit} step)")
        ax.set_xlabel("step")
        ax.set_ylim(1e-17, 1e4)
        ax.set_title("10-D quadratic, condition 1000, "
                     + ("rotated axes" if rotated else "axis-aligned"))
    axes[0].set_ylabel("f(x) - f*  (floored at 1e-17)")
    axes[1].legend(fontsize=8, ncol=2, loc="lower left")

    ax2 = axes[2]
    H2 = np.array([1.0, 25.0])
    g2 = lambda x: H2 * x  # noqa: E731
    x02 = np.array([-4.5, 1.0])
    gx, gy = np.meshgrid(np.linspace(-5, 1.5, 200), np.linspace(-1.6, 1.6, 200))
    ax2.contour(gx, gy, 0.5 * (H2[0] * gx**2 + H2[1] * gy**2), levels=np.logspace(-2, 1.5, 12),
                colors="0.75", linewidths=0.6)
    runs = {
        "sgd": (ao.sgd(1.9 / 25.0), 40),
        "sgd(momentum=0.9)": (ao.sgd(0.2 / 25.0, momentum=0.9), 60),
        "adam": (ao.adam(0.3), 60),
    }
    for name, (opt, n) in runs.items():
        p = np.array(_run(opt, g2, x02, n))
        ax2.plot(p[:, 0], p[:, 1], ".-", color=_COLORS[name], lw=1, ms=3,
                 label=f"{name} ({n} steps)")
    r2 = ao.minimize(lambda x: 0.5 * np.sum(H2 * x * x), x02, jac=g2, hess=lambda x: np.diag(H2),
                     options={"history": True})
    p = np.array([np.asarray(v) for v in r2.history["x"]])
    ax2.plot(p[:, 0], p[:, 1], "o-", color="k", lw=2, label=f"newton ({r2.nit} step)")
    ax2.plot(0, 0, "*", color="gold", mec="k", ms=12, zorder=5)
    ax2.set_aspect("equal")
    ax2.set_title("2-D valley, condition 25")
    ax2.legend(fontsize=8, loc="upper right")
    return fig


def _adam_variants(g: Callable, x0: float, lr: float, steps: int, b1=0.9, b2=0.999, eps=1e-8):
    """Iterates and update/lr ratios of three Adam variants on a scalar problem.

    * ``"Kingma & Ba (agnopt.adam)"``: :func:`agnopt.adam` itself.
    * ``"no bias correction"``: ``m / (sqrt(v) + eps)`` with the raw moments.
    * ``"seed's pseudocode"``: the corrected moments overwrite the running ones.
    """
    import numpy as np

    import agnopt as ao

    out = {}
    opt = ao.adam(lr, b1, b2, eps)
    x = np.array([x0])
    s = opt.init(x)
    xs, us = [x0], []
    for _ in range(steps):
        u, s = opt.update(g(x), s, x)
        x = ao.apply_updates(x, u)
        xs.append(float(x[0]))
        us.append(-float(u[0]) / lr)
    out["Kingma & Ba (agnopt.adam)"] = (xs, us)
    for variant in ("no bias correction", "seed's pseudocode (overwrites m, v)"):
        m = v = 0.0
        x = x0
        xs, us = [x0], []
        for t in range(1, steps + 1):
            gt = float(g(np.array([x]))[0])
            m = b1 * m + (1 - b1) * gt
            v = b2 * v + (1 - b2) * gt * gt
            if variant.startswith("seed"):
                m = m / (1 - b1**t)  # the slip: the running moments are overwritten
                v = v / (1 - b2**t)
            step = m / (math.sqrt(v) + eps)
            x = x - lr * step
            xs.append(x)
            us.append(step)
        out[variant] = (xs, us)
    return out


def adam_bias_correction(steps: int = 3000) -> Any:
    """Adam's first steps with the bias correction, without it, and as the seed wrote it.

    Left: the size of the step in units of the learning rate, ``|Δθ| / η``,
    for a constant gradient (g = 1). Kingma & Ba's Adam steps exactly η from
    the first step: the corrected ratio m̂/√v̂ of a constant gradient is 1 (a
    sign step). Without the correction the ratio is
    :math:`(1-\\beta_1^t)/\\sqrt{1-\\beta_2^t}`: 3.2 at t = 1, a peak of 6.6 at
    t = 12, back to 1 only after thousands of steps. The seed's pseudocode
    (corrected moments written back into the running moments) compounds the
    correction every step; the second moment's factor
    :math:`1/(1-\\beta_2^t)` stays large far longer than the first's, so
    :math:`v` explodes and the steps vanish (0.24 η at t = 2, 1e-3 η at t = 5, and
    still shrinking): the optimizer stalls.
    Right: the iterates on :math:`f(x) = x^2/2` from x = 1 with η = 0.01.
    """
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    colors = ["#d62728", "#1f77b4", "#7f7f7f"]
    styles = ["-", "--", ":"]
    const = _adam_variants(lambda x: x * 0 + 1.0, 0.0, 1e-3, steps)
    for (name, (_, us)), col, ls in zip(const.items(), colors, styles):
        ax.loglog(range(1, len(us) + 1), us, ls, color=col, lw=2, label=name)
    ax.set_xlabel("step t")
    ax.set_ylabel("|update| / learning rate")
    ax.set_title("constant gradient g = 1")
    ax.axhline(1.0, color="0.8", lw=0.8, zorder=0)
    ax.set_ylim(1e-4, 30)
    ax.legend(fontsize=8, loc="lower left")
    quad = _adam_variants(lambda x: x, 1.0, 1e-2, 300)
    for (name, (xs, _)), col, ls in zip(quad.items(), colors, styles):
        ax2.plot(xs, ls, color=col, lw=2, label=name)
    ax2.axhline(0.0, color="0.8", lw=0.8, zorder=0)
    ax2.set_xlabel("step t")
    ax2.set_ylabel("x_t")
    ax2.set_title("f(x) = x²/2 from x = 1, learning rate 0.01")
    ax2.legend(fontsize=8)
    fig.suptitle("Adam's bias correction: correct a copy of the moments, never the moments")
    return fig


NIST_DEFAULT = ("Misra1a", "Gauss3", "Thurber", "Eckerle4")


def nist_fits(names: tuple[str, ...] = NIST_DEFAULT, start: str = "start1") -> Any:
    """NIST StRD problems fitted by :func:`agnopt.least_squares` (Levenberg-Marquardt).

    Top row: the data and the fitted model (with the LRE, NIST's log relative
    error of the parameters against the certified values: the number of
    correct digits, capped at 15), tolerances 1e-15 as in the NIST report
    (``agnopt._cli.nist.nist_report``). Bottom row: the residuals. Starts from NIST's ``start``.
    Needs the StRD data file (found in a source checkout, or set
    ``AGNOPT_NIST_STRD``).
    """
    import numpy as np
    import array_api_compat.numpy as xp

    import agnopt as ao
    from agnopt._cli.nist import load_nist, lre, nist_problem

    plt = _plt()
    probs = {p["name"]: p for p in load_nist()}
    fig, axes = plt.subplots(2, len(names), figsize=(3.3 * len(names), 5.6), layout="constrained",
                             gridspec_kw={"height_ratios": [2.2, 1]}, squeeze=False)
    for j, name in enumerate(names):
        p = probs[name]
        fun, model, x, resp = nist_problem(p, xp)
        res = ao.least_squares(fun, xp.asarray(p[start], dtype=xp.float64),
                               ftol=1e-15, xtol=1e-15, gtol=1e-15)
        b = [float(v) for v in res.x]
        score = lre(b, p["certified_values"])
        xs = np.asarray(x)
        order = np.argsort(xs)
        xf = np.linspace(xs.min(), xs.max(), 400)
        ax, axr = axes[0, j], axes[1, j]
        ax.plot(xs, np.asarray(resp), ".", color="0.35", ms=4, label="data")
        ax.plot(xf, np.asarray(model(xp.asarray(xf), *[xp.asarray(v) for v in b])), "-",
                color="#d62728", lw=1.6, label="fit")
        ax.set_title(f"{name} ({p['difficulty']})\nLRE {score:.1f}, {int(res.nfev)} evaluations",
                     fontsize=10)
        ax.legend(fontsize=8)
        r = np.asarray(fun(xp.asarray(b)))
        axr.axhline(0.0, color="0.7", lw=0.8)
        axr.plot(xs[order], r[order], ".", color="#1f77b4", ms=4)
        axr.set_xlabel("x")
    axes[0, 0].set_ylabel("y")
    axes[1, 0].set_ylabel("residual")
    fig.suptitle(f"NIST StRD nonlinear regression, agnopt.least_squares from {start}")
    return fig


def _cuda_backends() -> list[str]:
    out = []
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            out.append("cupy")
    except Exception:
        pass
    return out


def batched_throughput(Bs: tuple[int, ...] = (10, 30, 100, 300, 1000), m: int = 50,
                       backends: tuple[str, ...] | None = None,
                       progress: Callable[[str], Any] | None = None, repeats: int = 2) -> Any:
    """Fits per second against the batch size B: one batched call vs a scipy loop.

    Each point fits B noisy Gaussian peaks (4 parameters, ``m`` points each,
    the problems of ``python -m agnopt fitbench``) with one call of
    :func:`agnopt.curve_fit` ``(batched=True)`` per backend (default: NumPy,
    plus CuPy where a CUDA device is present) and with a Python loop of
    :func:`scipy.optimize.curve_fit`. Needs scipy. Times are wall-clock on
    the machine that draws the figure, the best of ``repeats`` runs.
    """
    from agnopt._cli.fitbench import run_fit_benchmark

    plt = _plt()
    backends = tuple(backends) if backends is not None else ("numpy", *_cuda_backends())
    rates: dict[str, list[float]] = {b: [] for b in backends}
    scipy_rate: list[float] = []
    for B in Bs:
        for k, be in enumerate(backends):
            # best of `repeats` runs: the minimum time is the least disturbed
            # by whatever else the machine is doing
            runs = [run_fit_benchmark(B=B, m=m, backend=be, verbose=False,
                                      scipy_subset=None if k == 0 else 1) for _ in range(repeats)]
            r = dict(t_batched=min(x["t_batched"] for x in runs),
                     t_scipy=min(x["t_scipy"] for x in runs))
            rates[be].append(B / r["t_batched"])
            if k == 0:
                scipy_rate.append(B / r["t_scipy"])
            if progress is not None:
                progress(f"  B={B:5d} {be}: {B / r['t_batched']:9.0f} fits/s "
                         f"(scipy loop {B / r['t_scipy']:7.0f} fits/s)" if k == 0 else
                         f"  B={B:5d} {be}: {B / r['t_batched']:9.0f} fits/s")
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    marks = {"numpy": "o-", "cupy": "s-", "torch": "^-", "jax": "v-"}
    for be, v in rates.items():
        ax.loglog(Bs, v, marks.get(be, "o-"), lw=2, label=f"agnopt.curve_fit(batched=True), {be}")
    ax.loglog(Bs, scipy_rate, "k--", lw=2, marker="x", label="loop of scipy.optimize.curve_fit")
    ax.set_xlabel("B (independent fits of 4 parameters, %d points each)" % m)
    ax.set_ylabel("fits per second")
    ax.set_title("Batched Gaussian-peak fits: throughput against batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def bench_ratios(results: Any = None, N: int = 100_000) -> Any:
    """The bench command's ratios (step time / fused memory roofline) as a bar chart.

    ``results`` is what ``agnopt._cli.bench.run_bench`` returns (its ``"steps"``
    rows: ``optimizer``, ``impl``, ``x_roofline``); ``None`` runs it here
    with one small size ``N`` (one array, a few repeats, no second-order
    rows), as ``python -m agnopt bench --sizes 1e5 --tree-leaves 0
    --no-second-order`` does. A ratio of 1 is a perfectly fused, memory-bound
    step on this machine; lower is better. Raises ``ImportError`` where
    ``agnopt._cli.bench`` does not exist.
    """
    if results is None:
        import importlib

        bench = importlib.import_module("agnopt._cli.bench")
        results = bench.run_bench(sizes=(N,), tree_leaves=0, repeats=5, budget=0.5,
                                  second_order=False, out=lambda s: None)
    rows = [r for r in results["steps"] if r.get("x_roofline") is not None]
    plt = _plt()
    opts = list(dict.fromkeys(r["optimizer"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 0.19 * len(opts) * max(len(impls), 1) + 1.6),
                           layout="constrained")
    height = 0.8 / max(len(impls), 1)
    cmap = plt.get_cmap("tab10")
    for k, impl in enumerate(impls):
        ys, xs = [], []
        for i, o in enumerate(opts):
            for r in rows:
                if r["optimizer"] == o and r["impl"] == impl:
                    ys.append(i + k * height)
                    xs.append(r["x_roofline"])
        ax.barh(ys, xs, height=height, color=cmap(k % 10), label=impl)
    ax.set_yticks([i + (len(impls) - 1) * height / 2 for i in range(len(opts))], opts)
    ax.axvline(1.0, color="k", lw=1)
    ax.set_xscale("log")
    ax.invert_yaxis()
    n = rows[0]["N"] if rows else N
    ax.set_xlabel("step time / fused memory roofline (1 = ideal, lower is better)")
    ax.set_title(f"python -m agnopt bench: one step on N = {n:.0e} parameters, {results.get('dtype', '')}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


PLOTS: dict[str, Callable[..., Any]] = {
    "rosenbrock_paths": rosenbrock_paths,
    "quadratic_curves": quadratic_curves,
    "adam_bias_correction": adam_bias_correction,
    "nist_fits": nist_fits,
    "batched_throughput": batched_throughput,
    "bench_ratios": bench_ratios,
}


def write_plots(directory: str | os.PathLike, progress: Callable[[str], Any] | None = print,
                dpi: int = 110) -> list[str]:
    """Write the main plots as PNG files in ``directory`` (created if needed).

    One file per entry of :data:`PLOTS` (``rosenbrock_paths.png``, ...). A
    figure whose requirements are missing (scipy for the throughput plot, the
    NIST data file, ``agnopt._cli.bench``) is skipped with a message. ``progress``
    (default ``print``; ``None`` for silence) gets one line per figure with its
    time, and per batch size while the throughput figure is measured.

    Returns
    -------
    list of str
        The paths written.
    """
    plt = _plt()
    say = progress if progress is not None else (lambda s: None)
    os.makedirs(directory, exist_ok=True)
    written = []
    t_all = time.perf_counter()
    for i, (name, fn) in enumerate(PLOTS.items(), 1):
        t0 = time.perf_counter()
        say(f"[{i}/{len(PLOTS)}] {name} ...")
        try:
            fig = fn(progress=say) if fn is batched_throughput else fn()
        except (ImportError, FileNotFoundError) as e:
            say(f"[{i}/{len(PLOTS)}] {name}: skipped ({type(e).__name__}: {e})")
            continue
        path = os.path.join(os.fspath(directory), f"{name}.png")
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        written.append(path)
        say(f"[{i}/{len(PLOTS)}] {name}: {path} ({time.perf_counter() - t0:.1f} s)")
    say(f"{len(written)} plots written to {os.fspath(directory)} "
        f"in {time.perf_counter() - t_all:.1f} s")
    return written
