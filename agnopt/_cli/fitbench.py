"""Batched curve-fitting benchmark: ``curve_fit(batched=True)`` against its evaluation floor and peers.

``run_fit_benchmark()`` fits ``B`` independent noisy 1-D Gaussian peaks
(4 parameters ``a, mu, s, c`` of ``a exp(-(x-mu)^2 / (2 s^2)) + c``, ``m``
points each) in one batched call, and reports

* the *evaluation floor*: the time of the model and Jacobian evaluations the
  run needed, evaluated over the whole batch in a tight loop -- ``nfev``
  evaluations of the model and ``nit + 1`` Jacobians per problem (the means
  of the run's own counts: one Jacobian at ``x0`` and one after each step
  taken, the last one at the solution, which the result and ``pcov`` use;
  ``njev`` counts all but that last one), a Jacobian being the closed form
  (``jac="analytic"``) or what agnopt's default Jacobian evaluates (the
  complex step: ``n`` evaluations of the model, each with one parameter
  complex); the ratio ``total / floor`` is what the solver adds;
* the time spent inside those functions during the timed run itself (the same
  evaluations cost more there than in the floor's tight loop: calls on the
  shrinking working set, and large temporaries that miss the caches), so the
  ratio splits into the evaluations' share and the solver's own;
* a Python loop of ``scipy.optimize.curve_fit`` (NumPy, float64);
* with ``peers``: optimistix's Levenberg-Marquardt under
  ``jax.jit(jax.vmap(...))`` (skipped with a note when not installed).

``run_fit_sweep()`` runs the grid of cases of issue 14 (B, dtype, Jacobian,
backend, torch threads) and prints one table. This is a report, not a timed
test.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["run_fit_benchmark", "run_fit_sweep"]

# true parameters uniform in these ranges; noise sd; start
_LO = (1.0, -1.0, 0.6, 0.0)
_HI = (3.0, 1.0, 1.5, 1.0)
_P0 = (2.0, 0.0, 1.0, 0.5)


def _gauss(x, a, mu, s, c):
    # written to make few full-size temporaries: the (B, 1) factors are
    # combined first (scipy's loop runs the same expression, _gauss_np)
    from array_api_compat import array_namespace

    xp = array_namespace(x, a)
    d = x - mu
    return a * xp.exp((d * d) * (-0.5 / (s * s))) + c


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


def _data(B, m, seed):
    """``(P, x, Y, p0)``: true parameters (B, 4), abscissae (m,), data (B, m), start (4,) (NumPy float64)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    P = np.stack([rng.uniform(lo, hi, B) for lo, hi in zip(_LO, _HI)], 1)
    x = np.linspace(-5.0, 5.0, m)
    Y = (P[:, 0:1] * np.exp(-((x - P[:, 1:2]) ** 2) / (2 * P[:, 2:3] ** 2)) + P[:, 3:4]
         + 0.05 * rng.standard_normal((B, m)))
    return P, x, Y, np.array(_P0)


def _sync(a):
    """``a`` once the device has finished it (JAX, CuPy, torch CUDA; Dask computed)."""
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


def _best(fn, repeat):
    """Best wall time of ``repeat`` calls of ``fn`` (after one untimed call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _is_complex(a) -> bool:
    return "complex" in str(getattr(a, "dtype", ""))


def _counting(fn, log, what):
    """``fn`` recording ``(what, rows, complex parameter or -1)`` for each call in ``log``."""
    def wrapped(x, *p):
        cplx = [j for j, pj in enumerate(p) if _is_complex(pj)]
        log.append((what, int(p[0].shape[0]), cplx[0] if len(cplx) == 1 else -1 if not cplx else -2))
        return fn(x, *p)
    return wrapped


def _timing(fn, acc):
    """``fn`` adding the wall time of each call to ``acc[0]`` (s)."""
    def wrapped(*a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        acc[0] += time.perf_counter() - t0
        return out
    return wrapped


def _floor(xp, xd, popt, jac, nfev, njac, repeat):
    """The evaluation floor ``nfev t_f + njac t_J`` (s) over the whole batch.

    ``popt`` (B, 4): the points evaluated (the fitted parameters); ``t_f``
    one evaluation of the model, ``t_J`` one Jacobian: the closed form
    (``jac == "analytic"``) or the complex step's ``n`` evaluations of the
    model with parameter ``j`` complex (``j = 0..n-1``), as the default
    Jacobian evaluates it. Each is the best of ``repeat``.
    """
    n = popt.shape[1]
    cols = [popt[:, j:j + 1] for j in range(n)]
    t_f = _best(lambda: _sync(_gauss(xd, *cols)), repeat)
    if jac == "analytic":
        t_J = _best(lambda: _sync(_gauss_jac(xd, *cols)), repeat)
    else:
        cdt = xp.complex64 if popt.dtype == xp.float32 else xp.complex128
        eps = float(xp.finfo(popt.dtype).eps)
        t_J = 0.0
        for j in range(n):
            # the complex step's point x_j + i h_j, h_j = eps |x_j| (eps where 0): a
            # nonzero imaginary part (complex exp is cheaper where it is 0)
            c = cols[j]
            h = eps * xp.where(c == 0, xp.ones_like(c), xp.abs(c))
            cj = list(cols)
            cj[j] = xp.astype(c, cdt) + xp.astype(h, cdt) * xp.asarray(1j, dtype=cdt)
            t_J += _best(lambda cj=cj: _sync(_gauss(xd, *cj)), repeat)
    return nfev * t_f + njac * t_J, t_f, t_J


def _optimistix(x, Y, p0, dtype, repeat):
    """optimistix LM under ``jax.jit(jax.vmap(...))``: ``(first call s, best s, popt)``,
    or a note (str) when optimistix is absent.

    Tolerances ``rtol = atol = 1e-8`` (float64) or ``1e-6`` (float32).
    Runs under ``jax.enable_x64(dtype == "float64")``, so that a float32 case
    keeps optimistix's own scalars (damping, tolerances) in float32 after a
    float64 case in the same process.
    """
    try:
        import optimistix as optx
    except ImportError:
        return "optimistix not installed (pip install optimistix): peer column skipped"
    import contextlib

    import jax
    import jax.numpy as jnp
    import numpy as np

    x64 = getattr(jax, "enable_x64", None)
    if x64 is not None:
        ctx = x64(dtype == "float64")
    else:  # older JAX: the global switch (float64 only then)
        jax.config.update("jax_enable_x64", dtype == "float64")
        ctx = contextlib.nullcontext()
    with ctx:
        jdt = jnp.float64 if dtype == "float64" else jnp.float32
        xj, Yj = jnp.asarray(x, dtype=jdt), jnp.asarray(Y, dtype=jdt)
        P0 = jnp.broadcast_to(jnp.asarray(p0, dtype=jdt), (Y.shape[0], p0.shape[0]))
        # 1e-8 (float64) is out of float32's reach (eps 1.2e-7): 1e-6 there (at
        # 1e-7 some fits, and so the whole vmapped loop, run to max_steps)
        tol = 1e-8 if dtype == "float64" else 1e-6
        solver = optx.LevenbergMarquardt(rtol=tol, atol=tol)

        def one(p, y):
            def res(q, _):
                d = xj - q[1]
                return q[0] * jnp.exp((d * d) * (-0.5 / (q[2] * q[2]))) + q[3] - y
            return optx.least_squares(res, solver, p, max_steps=300, throw=False).value

        solve = jax.jit(jax.vmap(one))
        t0 = time.perf_counter()
        solve(P0, Yj).block_until_ready()
        first = time.perf_counter() - t0
        best = _best(lambda: solve(P0, Yj).block_until_ready(), repeat)
        return first, best, np.asarray(solve(P0, Yj)).astype(np.float64)


def run_fit_benchmark(
    B: int = 10000,
    m: int = 50,
    seed: int = 0,
    backend: str = "numpy",
    scipy_subset: int | None = None,
    verbose: bool = True,
    jac: Any = None,
    repeat: int = 2,
    dtype: str = "float64",
    peers: bool = False,
    floor_repeat: int = 5,
) -> dict[str, Any]:
    """Fit ``B`` Gaussian peaks batched; time the fit, its evaluation floor, a scipy loop (and peers).

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
        extrapolate linearly to ``B`` (the report says so). Default: all;
        0: no scipy loop.
    jac : None, str or "analytic"
        ``None``: each library's default Jacobian (agnopt: the complex step,
        n complex evaluations of the model per Jacobian; scipy: forward
        differences). ``"analytic"``: the closed-form Gaussian Jacobian for
        both. Another string is passed to agnopt (scipy keeps its default).
    repeat : int
        Batched runs timed (best of), after one untimed full run that counts
        the model's and Jacobian's evaluations (``evals``).
    dtype : {"float64", "float32"}
        agnopt's (and optimistix's) working dtype; the scipy loop is float64.
    peers : bool
        Also optimistix's LM under ``jax.jit(jax.vmap(...))`` (first call,
        which compiles, and the best of ``repeat`` later calls).
    floor_repeat : int
        Each evaluation of the floor is the best of this many.

    Times are wall-clock (best of), and CPU (``process_time``) for the
    batched run and the scipy loop; on a shared machine the report gives the
    load average.

    Returns
    -------
    dict
        ``t_batched`` / ``cpu_batched`` (s), ``t_floor`` (s: ``nfev_mean *
        t_f + (nit_mean + 1) * t_J``), ``t_f``, ``t_J`` (s, one evaluation over the
        batch), ``floor_ratio`` (``t_batched / t_floor``), ``nfev_mean``,
        ``njev_mean``, ``nit_mean``, ``nfev_max``, ``evals`` (rows evaluated,
        summed over calls, divided by ``B``: ``{"fun": .., "fun_complex": ..,
        "jac": ..}``, every call the run made, checks included), ``t_evals`` (s: the
        wall time inside the user's model and Jacobian during the best timed run;
        host time: on an asynchronous device only their dispatch),
        ``t_scipy`` / ``cpu_scipy`` (s, measured or extrapolated; NaN when
        not run), ``speedup``, ``scipy_fits``, ``max_abs_diff``,
        ``median_abs_diff``, ``max_rel_diff`` (parameters against scipy's,
        over the problems both fitted), ``n_success``, ``n_scipy_failed``,
        ``load_avg``, ``threads`` (torch), and with ``peers``:
        ``t_optimistix``, ``optimistix_first`` (s) or ``optimistix_note``,
        ``optimistix_agree`` (fits within 1e-4 relative of agnopt's converged ones).
    """
    import numpy as np
    import scipy.optimize as so

    from .._least_squares import curve_fit
    from .nist import _namespace

    xp = _namespace(backend)
    P, x, Y, p0 = _data(B, m, seed)
    wdt = getattr(xp, dtype)
    if backend in ("numpy", "dask", "jax", "torch"):
        xd, Yd, p0d = (xp.asarray(a.astype(dtype)) for a in (x, Y, p0))
    else:
        xd, Yd, p0d = (xp.asarray(a.tolist(), dtype=wdt) for a in (x, Y, p0))

    cjac = _gauss_jac if jac == "analytic" else jac
    sjac = _gauss_jac_np if jac == "analytic" else None
    # untimed full run (JIT / caches) that counts the evaluations
    log: list = []
    cfun = _counting(_gauss, log, "fun")
    cj = _counting(_gauss_jac, log, "jac") if jac == "analytic" else cjac
    _sync(curve_fit(cfun, xd, Yd, p0=p0d, batched=True, jac=cj)[0])
    evals = {"fun": 0.0, "fun_complex": 0.0, "jac": 0.0}
    for what, rows, cplx in log:
        key = "jac" if what == "jac" else "fun" if cplx == -1 else "fun_complex"
        evals[key] += rows / B
    times, cpu, in_evals = [], [], []
    for _ in range(repeat):
        # (the user's functions timed inside the solve: their share of the run)
        acc = [0.0]
        tfun = _timing(_gauss, acc)
        tjac = _timing(cjac, acc) if callable(cjac) else cjac
        t0, c0 = time.perf_counter(), time.process_time()
        popt, _, info, _, _ = curve_fit(tfun, xd, Yd, p0=p0d, batched=True, full_output=True,
                                        jac=tjac)
        _sync(popt)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        in_evals.append(acc[0])
    best_run = min(range(repeat), key=times.__getitem__)
    t_batched = times[best_run]
    c_batched = min(cpu)
    popt_np = _to_numpy(popt).astype(np.float64)
    succ = _to_numpy(info["success"]).astype(bool)
    nfev = _to_numpy(info["nfev"])
    njev = _to_numpy(info["njev"])
    nit = _to_numpy(info["nit"])
    t_floor, t_f, t_J = _floor(xp, xd, popt, jac, float(nfev.mean()), float(nit.mean()) + 1.0,
                               floor_repeat)

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
    t_scipy = t_sc_meas * B / n_sc if n_sc else float("nan")
    c_scipy = c_sc_meas * B / n_sc if n_sc else float("nan")
    ok = succ[:n_sc] & np.all(np.isfinite(ref), axis=1)
    diff = np.abs(popt_np[:n_sc][ok] - ref[ok])
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        load = float("nan")
    threads = None
    if backend == "torch":
        import torch

        threads = torch.get_num_threads()
    out = dict(
        B=B, m=m, backend=backend, dtype=dtype, jac="default" if jac is None else str(jac),
        threads=threads,
        t_batched=t_batched, cpu_batched=c_batched, t_floor=t_floor, t_f=t_f, t_J=t_J,
        floor_ratio=t_batched / t_floor, evals=evals, t_evals=in_evals[best_run],
        t_scipy=t_scipy, cpu_scipy=c_scipy,
        t_scipy_measured=t_sc_meas, scipy_fits=n_sc, extrapolated=n_sc < B,
        speedup=t_scipy / t_batched, speedup_cpu=c_scipy / c_batched, load_avg=load,
        n_success=int(succ.sum()), n_scipy_failed=failed,
        max_abs_diff=float(diff.max()) if diff.size else float("nan"),
        median_abs_diff=float(np.median(diff)) if diff.size else float("nan"),
        max_rel_diff=float((diff / np.abs(ref[ok])).max()) if diff.size else float("nan"),
        max_abs_err_true=float(np.abs(popt_np[succ] - P[succ]).max()),
        nfev_mean=float(nfev.mean()), njev_mean=float(njev.mean()), nit_mean=float(nit.mean()),
        nfev_max=int(nfev.max()),
    )
    if peers:
        r = _optimistix(x, Y, p0, dtype, repeat)
        if isinstance(r, str):
            out["optimistix_note"] = r
        else:
            out["optimistix_first"], out["t_optimistix"], px = r
            d = np.max(np.abs(px - popt_np) / (1.0 + np.abs(popt_np)), axis=1)
            out["optimistix_agree"] = int(np.sum(succ & (d <= 1e-4)))
    if verbose:
        _print_case(out)
    return out


def _print_case(out):
    B, n_sc = out["B"], out["scipy_fits"]
    ext = f" (timed on {n_sc}, extrapolated x{B / n_sc:g})" if 0 < n_sc < B else ""
    jac = out["jac"]
    jname = ("closed-form Jacobian for both" if jac == "analytic" else
             "default Jacobians: agnopt 'cs' (complex step), scipy '2-point'" if jac == "default"
             else f"agnopt jac={jac}, scipy '2-point'")
    threads = "" if out["threads"] is None else f"; torch threads {out['threads']}"
    ev = out["evals"]
    print(f"Batched Gaussian-peak fits: B={B}, m={out['m']}, n=4, backend={out['backend']}, "
          f"{out['dtype']}, {jname}; load average {out['load_avg']:.2f}{threads}")
    print(f"  agnopt curve_fit(batched=True): {out['t_batched']:.3f} s wall, "
          f"{out['cpu_batched']:.3f} s CPU ({out['n_success']}/{B} converged, nfev mean "
          f"{out['nfev_mean']:.1f} max {out['nfev_max']}, njev mean {out['njev_mean']:.1f})")
    print(f"  evaluation floor: {out['t_floor']:.4f} s = nfev {out['nfev_mean']:.2f} x "
          f"{out['t_f'] * 1e3:.3f} ms + (nit + 1) {out['nit_mean'] + 1:.2f} x "
          f"{out['t_J'] * 1e3:.3f} ms (Jacobian); total / floor = {out['floor_ratio']:.2f}x")
    print(f"  evaluations made (rows / B): model {ev['fun']:.2f}, complex model "
          f"{ev['fun_complex']:.2f}, Jacobian {ev['jac']:.2f}")
    te = out["t_evals"]
    print(f"  inside the solve: the user's functions {te:.4f} s ({te / out['t_floor']:.2f}x the "
          f"floor), the rest {out['t_batched'] - te:.4f} s ({(out['t_batched'] - te) / out['t_floor']:.2f}x)")
    if n_sc:
        print(f"  scipy.optimize.curve_fit loop : {out['t_scipy']:.2f} s wall, "
              f"{out['cpu_scipy']:.2f} s CPU{ext} ({out['n_scipy_failed']} failed)")
        print(f"  speed-up: {out['speedup']:.1f}x wall, {out['speedup_cpu']:.1f}x CPU")
        print(f"  parameters vs scipy: max |diff| {out['max_abs_diff']:.2e}, median "
              f"{out['median_abs_diff']:.2e}, max rel {out['max_rel_diff']:.2e}")
    if "optimistix_note" in out:
        print(f"  {out['optimistix_note']}")
    elif "t_optimistix" in out:
        print(f"  optimistix LM, jax.jit(jax.vmap): {out['t_optimistix']:.3f} s (first call, "
              f"compiling: {out['optimistix_first']:.2f} s); {out['optimistix_agree']}/{B} fits "
              f"agree with agnopt's (relative 1e-4)")


def _fmt(t):
    return "-" if t is None or t != t else f"{t:.3f}"


def run_fit_sweep(Bs=(1000, 10000), dtypes=("float64", "float32"), jacs=("analytic", None),
                  backends=("numpy", "torch"), torch_threads=(1, None), scipy_subset=1000,
                  peers=False, repeat=3, verbose=True) -> list[dict[str, Any]]:
    """Every case of the grid: one :func:`run_fit_benchmark` each, then one table.

    ``torch_threads``: torch is run once per entry (``None``: torch's
    default, restored afterwards). The table gives, per case, agnopt's time,
    the evaluation floor and their ratio, the scipy loop (extrapolated from
    ``scipy_subset`` fits), optimistix (``peers``; float64 and float32, its
    own autodiff Jacobian in both Jacobian rows), and torch's time over
    NumPy's for the same case. Returns the rows (dicts of
    :func:`run_fit_benchmark`).
    """
    rows = []
    default_threads = 1
    if "torch" in backends:
        import torch

        default_threads = torch.get_num_threads()
    opt_cache: dict = {}
    for B in Bs:
        for dtype in dtypes:
            for jac in jacs:
                for backend in backends:
                    for th in (torch_threads if backend == "torch" else (None,)):
                        if backend == "torch":
                            import torch

                            torch.set_num_threads(default_threads if th is None else int(th))
                        first = backend == backends[0] and th is None
                        key = (B, dtype)
                        want_peer = peers and first and key not in opt_cache
                        r = run_fit_benchmark(B=B, backend=backend, jac=jac, dtype=dtype,
                                              scipy_subset=scipy_subset if first else 0,
                                              repeat=repeat, peers=want_peer, verbose=False)
                        if want_peer:
                            opt_cache[key] = r.get("t_optimistix")
                        r["t_optimistix"] = opt_cache.get(key)
                        rows.append(r)
    if "torch" in backends:
        import torch

        torch.set_num_threads(default_threads)
    base = {(r["B"], r["dtype"], r["jac"]): r for r in rows if r["backend"] == backends[0]}
    sc = {k: r["t_scipy"] for k, r in base.items()}
    for r in rows:
        k = (r["B"], r["dtype"], r["jac"])
        r["t_scipy_case"] = sc.get(k)
        r["vs_first_backend"] = r["t_batched"] / base[k]["t_batched"] if k in base else None
    if verbose:
        print_sweep(rows)
    return rows


def print_sweep(rows):
    """The table of :func:`run_fit_sweep`'s rows (markdown)."""
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = (float("nan"),) * 3
    print(f"Batched Gaussian peaks (n=4, m={rows[0]['m'] if rows else 50}); times in s, best of N; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| B | dtype | J | backend | agnopt | floor | total/floor | evals in solve / floor "
          "| scipy loop | optimistix | vs numpy | nfev | nit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        be = r["backend"] + ("" if r["threads"] is None else f" ({r['threads']} thr)")
        vs = r.get("vs_first_backend")
        print(f"| {r['B']} | {r['dtype']} | {r['jac']} | {be} | {_fmt(r['t_batched'])} | "
              f"{_fmt(r['t_floor'])} | {r['floor_ratio']:.2f}x | {r['t_evals'] / r['t_floor']:.2f}x | "
              f"{_fmt(r.get('t_scipy_case'))} | "
              f"{_fmt(r.get('t_optimistix'))} | {'-' if vs is None else f'{vs:.2f}x'} | "
              f"{r['nfev_mean']:.2f} | {r['nit_mean']:.2f} |")


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
