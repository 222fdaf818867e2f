"""Batched curve-fitting benchmark: ``curve_fit(batched=True)`` against a loop of scipy's.

``run_fit_benchmark()`` fits ``B`` independent noisy 1-D Gaussian peaks
(4 parameters ``a, mu, s, c`` of ``a exp(-(x-mu)^2 / (2 s^2)) + c``, ``m``
points each) in one batched call and with a Python loop of
``scipy.optimize.curve_fit`` (NumPy), and reports the times, the speed-up and
the agreement of the fitted parameters. This is a report, not a timed test.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["run_fit_benchmark"]


def _gauss(x, a, mu, s, c):
    # written to make few full-size temporaries: the (B, 1) factors are
    # combined first (scipy's loop runs the same expression, _gauss_np)
    from array_api_compat import array_namespace

    xp = array_namespace(x, a)
    d = x - mu
    return a * xp.exp((d * d) * (-0.5 / (s * s))) + c


def run_fit_benchmark(
    B: int = 10000,
    m: int = 50,
    seed: int = 0,
    backend: str = "numpy",
    scipy_subset: int | None = None,
    verbose: bool = True,
    jac: Any = None,
    repeat: int = 2,
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
        ``None``: each library's default Jacobian (agnopt: the complex step,
        n complex evaluations of the model per Jacobian; scipy: forward
        differences). ``"analytic"``: the closed-form Gaussian Jacobian for
        both. Another string is passed to agnopt (scipy keeps its default).
    repeat : int
        Batched runs timed (best of).

    The model is written with few full-size temporaries (``_gauss``); the
    scipy loop evaluates the same expression in NumPy (``_gauss_np``,
    ``_gauss_jac_np``). Times are wall-clock and CPU (``process_time``);
    on a shared machine the CPU ratio is the steadier one, and the report
    gives the load average.

    Returns
    -------
    dict
        ``t_batched`` / ``cpu_batched`` (s, best of ``repeat`` after a
        warm-up run on 100 problems), ``t_scipy`` / ``cpu_scipy`` (s,
        measured or extrapolated), ``speedup`` / ``speedup_cpu``,
        ``load_avg``, ``nfev_mean`` / ``nfev_max`` (batched), ``scipy_fits`` (how many
        were timed), ``speedup``, ``max_abs_diff`` and ``median_abs_diff``
        (parameters, over the scipy-fitted problems that both converged),
        ``n_success`` (batched), ``n_scipy_failed``.
    """
    import numpy as np
    import scipy.optimize as so

    from .._least_squares import curve_fit
    from .nist import _namespace

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

    # warm-up (JIT / caches), then the best of ``repeat`` runs (wall and CPU time)
    cjac = _gauss_jac if jac == "analytic" else jac
    sjac = _gauss_jac_np if jac == "analytic" else None
    sync(curve_fit(_gauss, xd, Yd[:100, :], p0=p0d, batched=True, jac=cjac)[0])
    times, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        popt, pcov, info, _, _ = curve_fit(_gauss, xd, Yd, p0=p0d, batched=True, full_output=True,
                                             jac=cjac)
        sync(popt)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    t_batched = min(times)
    c_batched = min(cpu)
    popt_np = _to_numpy(popt)
    succ = _to_numpy(info["success"]).astype(bool)

    n_sc = B if scipy_subset is None else min(int(scipy_subset), B)
    ref = np.full((n_sc, 4), np.nan)
    failed = 0
    kw = {} if sjac is None else {"jac": sjac}
    t0, c0 = time.perf_counter(), time.process_time()
    for b in range(n_sc):
        try:
            ref[b] = so.curve_fit(_gauss_np, x, Y[b], p0=p0, **kw)[0]
        except RuntimeError:
            failed += 1
    t_sc_meas = time.perf_counter() - t0
    c_sc_meas = time.process_time() - c0
    t_scipy = t_sc_meas * B / n_sc
    c_scipy = c_sc_meas * B / n_sc
    ok = succ[:n_sc] & np.all(np.isfinite(ref), axis=1)
    diff = np.abs(popt_np[:n_sc][ok] - ref[ok])
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        load = float("nan")
    out = dict(
        B=B, m=m, backend=backend, jac="default" if jac is None else str(jac),
        t_batched=t_batched, t_scipy=t_scipy, cpu_batched=c_batched, cpu_scipy=c_scipy,
        t_scipy_measured=t_sc_meas, scipy_fits=n_sc, extrapolated=n_sc < B,
        speedup=t_scipy / t_batched, speedup_cpu=c_scipy / c_batched, load_avg=load,
        n_success=int(succ.sum()), n_scipy_failed=failed,
        max_abs_diff=float(diff.max()) if diff.size else float("nan"),
        median_abs_diff=float(np.median(diff)) if diff.size else float("nan"),
        max_rel_diff=float((diff / np.abs(ref[ok])).max()) if diff.size else float("nan"),
        max_abs_err_true=float(np.abs(popt_np[succ] - P[succ]).max()),
        nfev_mean=float(_to_numpy(info["nfev"]).mean()),
        nfev_max=int(_to_numpy(info["nfev"]).max()),
    )
    if verbose:
        ext = f" (timed on {n_sc}, extrapolated x{B / n_sc:g})" if n_sc < B else ""
        jname = ("closed-form Jacobian for both" if jac == "analytic" else
                 "default Jacobians: agnopt 'cs' (complex step), scipy '2-point'" if jac is None
                 else f"agnopt jac={jac}, scipy '2-point'")
        threads = ""
        if backend == "torch":
            import torch

            threads = f"; torch threads {torch.get_num_threads()}"
        print(f"Batched Gaussian-peak fits: B={B}, m={m}, n=4, backend={backend}, {jname}; "
              f"load average {load:.2f}{threads}")
        print(f"  agnopt curve_fit(batched=True): {t_batched:.3f} s wall, {c_batched:.3f} s CPU "
              f"({out['n_success']}/{B} converged, nfev mean {out['nfev_mean']:.1f} "
              f"max {out['nfev_max']})")
        print(f"  scipy.optimize.curve_fit loop : {t_scipy:.2f} s wall, {c_scipy:.2f} s CPU{ext} "
              f"({failed} failed)")
        print(f"  speed-up: {out['speedup']:.1f}x wall, {out['speedup_cpu']:.1f}x CPU")
        print(f"  parameters vs scipy: max |diff| {out['max_abs_diff']:.2e}, median "
              f"{out['median_abs_diff']:.2e}, max rel {out['max_rel_diff']:.2e}")
    return out


def _gauss_jac(x, a, mu, s, c):
    from array_api_compat import array_namespace

    xp = array_namespace(x, a)
    d = x - mu
    e = xp.exp((d * d) * (-0.5 / (s * s)))
    j1 = (e * d) * (a / (s * s))
    return xp.stack([e, j1, j1 * (d / s), xp.ones_like(e)], axis=-1)


def _gauss_np(x, a, mu, s, c):
    import numpy as np

    d = x - mu
    return a * np.exp((d * d) * (-0.5 / (s * s))) + c


def _gauss_jac_np(x, a, mu, s, c):
    import numpy as np

    d = x - mu
    e = np.exp((d * d) * (-0.5 / (s * s)))
    j1 = (e * d) * (a / (s * s))
    return np.stack([e, j1, j1 * (d / s), np.ones_like(e)], axis=-1)


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
