"""Batched curve-fitting benchmark: ``curve_fit(batched=True)`` against a loop of scipy's.

``run_fit_benchmark()`` fits ``B`` independent noisy 1-D Gaussian peaks
(4 parameters ``a, mu, s, c`` of ``a exp(-(x-mu)^2 / (2 s^2)) + c``, ``m``
points each) in one batched call and with a Python loop of
``scipy.optimize.curve_fit`` (NumPy), and reports the times, the speed-up and
the agreement of the fitted parameters. This is a report, not a timed test.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["run_fit_benchmark"]


def _gauss(x, a, mu, s, c):
    from array_api_compat import array_namespace

    xp = array_namespace(x, a)
    return a * xp.exp(-((x - mu) ** 2) / (2 * s * s)) + c


def run_fit_benchmark(
    B: int = 10000,
    m: int = 50,
    seed: int = 0,
    backend: str = "numpy",
    scipy_subset: int | None = None,
    verbose: bool = True,
    jac: Any = None,
) -> dict[str, Any]:
    """Fit ``B`` Gaussian peaks batched, and with a loop of scipy's curve_fit.

    Parameters
    ----------
    B, m : int
        Number of problems and of points per problem.
    seed : int
        Data seed (true parameters uniform in a=[1,3], mu=[-1,1], s=[0.6,1.5],
        c=[0,1]; noise sd 0.05; x on [-5, 5]; common start p0=(2, 0, 1, 0.5)).
    backend : str
        "numpy", "torch", "jax", "cupy", "array_api_strict" or "dask".
    scipy_subset : int, optional
        Time scipy on the first ``scipy_subset`` problems only and
        extrapolate linearly to ``B`` (the report says so). Default: all.
    jac : None, str or "analytic"
        Jacobian for agnopt (``None``: least_squares' default, the complex
        step, which evaluates the model in complex arithmetic n times per
        iteration; ``"analytic"``: the closed-form Gaussian Jacobian).
        scipy always uses its default (forward differences).

    Returns
    -------
    dict
        ``t_batched`` (s, best of 2 after a warm-up run on 100 problems),
        ``t_scipy`` (s, measured or extrapolated), ``scipy_fits`` (how many
        were timed), ``speedup``, ``max_abs_diff`` and ``median_abs_diff``
        (parameters, over the scipy-fitted problems that both converged),
        ``n_success`` (batched), ``n_scipy_failed``.
    """
    import numpy as np
    import scipy.optimize as so

    from ._curve_fit import curve_fit
    from ._nist import _namespace

    xp = _namespace(backend)
    rng = np.random.default_rng(seed)
    P = np.stack([rng.uniform(1, 3, B), rng.uniform(-1, 1, B), rng.uniform(0.6, 1.5, B),
                  rng.uniform(0, 1, B)], 1)
    x = np.linspace(-5.0, 5.0, m)
    Y = (P[:, 0:1] * np.exp(-((x - P[:, 1:2]) ** 2) / (2 * P[:, 2:3] ** 2)) + P[:, 3:4]
         + 0.05 * rng.standard_normal((B, m)))
    p0 = np.array([2.0, 0.0, 1.0, 0.5])

    xd = xp.asarray(x.tolist(), dtype=xp.float64)
    Yd = xp.asarray(Y) if backend in ("numpy", "dask", "jax", "torch") else xp.asarray(Y.tolist(), dtype=xp.float64)
    p0d = xp.asarray(p0.tolist(), dtype=xp.float64)

    def sync(a):
        if hasattr(a, "block_until_ready"):
            a.block_until_ready()
        if hasattr(a, "compute"):
            a = a.compute()
        mod = type(a).__module__
        if mod.startswith("torch") and a.is_cuda:
            import torch

            torch.cuda.synchronize()
        if mod.startswith("cupy"):
            import cupy

            cupy.cuda.Device().synchronize()
        return a

    # warm-up (JIT / caches), then best of two
    cjac = _gauss_jac if jac == "analytic" else jac
    sync(curve_fit(_gauss, xd, Yd[:100, :], p0=p0d, batched=True, jac=cjac)[0])
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        popt, pcov, info, _, _ = curve_fit(_gauss, xd, Yd, p0=p0d, batched=True, full_output=True,
                                             jac=cjac)
        sync(popt)
        times.append(time.perf_counter() - t0)
    t_batched = min(times)
    popt_np = _to_numpy(popt)
    succ = _to_numpy(info["success"]).astype(bool)

    n_sc = B if scipy_subset is None else min(int(scipy_subset), B)
    ref = np.full((n_sc, 4), np.nan)
    failed = 0
    t0 = time.perf_counter()
    for b in range(n_sc):
        try:
            ref[b] = so.curve_fit(_gauss_np, x, Y[b], p0=p0)[0]
        except RuntimeError:
            failed += 1
    t_sc_meas = time.perf_counter() - t0
    t_scipy = t_sc_meas * B / n_sc
    ok = succ[:n_sc] & np.all(np.isfinite(ref), axis=1)
    diff = np.abs(popt_np[:n_sc][ok] - ref[ok])
    out = dict(
        B=B, m=m, backend=backend, t_batched=t_batched, t_scipy=t_scipy,
        t_scipy_measured=t_sc_meas, scipy_fits=n_sc, extrapolated=n_sc < B,
        speedup=t_scipy / t_batched, n_success=int(succ.sum()), n_scipy_failed=failed,
        max_abs_diff=float(diff.max()) if diff.size else float("nan"),
        median_abs_diff=float(np.median(diff)) if diff.size else float("nan"),
        max_rel_diff=float((diff / np.abs(ref[ok])).max()) if diff.size else float("nan"),
        max_abs_err_true=float(np.abs(popt_np[succ] - P[succ]).max()),
    )
    if verbose:
        ext = f" (timed on {n_sc}, extrapolated x{B / n_sc:g})" if n_sc < B else ""
        print(f"Batched Gaussian-peak fits: B={B}, m={m}, n=4, backend={backend}, "
              f"jac={'default (cs)' if jac is None else jac}")
        print(f"  agnopt curve_fit(batched=True): {t_batched:.3f} s "
              f"({out['n_success']}/{B} converged)")
        print(f"  scipy.optimize.curve_fit loop : {t_scipy:.2f} s{ext} "
              f"({failed} failed)")
        print(f"  speed-up: {out['speedup']:.1f}x")
        print(f"  parameters vs scipy: max |diff| {out['max_abs_diff']:.2e}, median "
              f"{out['median_abs_diff']:.2e}, max rel {out['max_rel_diff']:.2e}")
    return out


def _gauss_jac(x, a, mu, s, c):
    from array_api_compat import array_namespace

    xp = array_namespace(x, a)
    e = xp.exp(-((x - mu) ** 2) / (2 * s * s))
    d = x - mu
    return xp.stack([e, a * e * d / (s * s), a * e * d * d / (s * s * s), xp.ones_like(e)], axis=-1)


def _gauss_np(x, a, mu, s, c):
    import numpy as np

    return a * np.exp(-((x - mu) ** 2) / (2 * s * s)) + c


def _to_numpy(a):
    import numpy as np

    if hasattr(a, "compute"):
        a = a.compute()
    mod = type(a).__module__
    if mod.startswith("torch"):
        return a.detach().cpu().numpy()
    if mod.startswith("cupy"):
        return a.get()
    if mod.startswith("array_api_strict"):
        return np.asarray(a._array)
    return np.asarray(a)
