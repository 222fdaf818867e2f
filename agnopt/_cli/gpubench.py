"""The GPU benchmarks of ``python -m agnopt gpucheck`` (see :mod:`agnopt._cli.gpucheck`).

Each function measures one thing on one backend ("cupy", "torch-cuda", or
"numpy" for the host reference) and returns plain numbers; timing is the
median of repeats after a warm-up, with the device synchronized around each
repeat. :func:`run_benchmarks` runs them all within a deadline: a part that
would not fit in what is left is skipped and listed, an exception is listed
and the next part runs.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

STEP_ARRAYS = {"adam": 7, "adamw": 7, "rmsprop": 5}  # arrays a fused step reads + writes


# ------------------------------------------------------------------ benchmark helpers


def _xp_dev(backend: str):
    if backend == "cupy":
        import array_api_compat.cupy as xp
        import cupy

        return xp, cupy.cuda.Device(0)
    if backend == "torch-cuda":
        import array_api_compat.torch as xp
        import torch

        return xp, torch.device("cuda")
    if backend == "numpy":
        import array_api_compat.numpy as xp

        return xp, "cpu"
    raise ValueError(backend)


def _sync(backend: str) -> None:
    if backend == "cupy":
        import cupy

        cupy.cuda.Device().synchronize()
    elif backend == "torch-cuda":
        import torch

        torch.cuda.synchronize()


def _free(backend: str) -> None:
    import gc

    gc.collect()
    if backend == "cupy":
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    elif backend == "torch-cuda":
        import torch

        torch.cuda.empty_cache()


def _median_time(fn: Callable[[], Any], backend: str, repeats: int, budget_s: float, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(backend)
    times = []
    t_start = time.perf_counter()
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(backend)
        times.append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - t_start > budget_s:
            break
    return statistics.median(times)


def _host(a: Any):
    import numpy as np

    mod = type(a).__module__
    if mod.startswith("torch"):
        return a.detach().cpu().numpy()
    if mod.startswith("cupy"):
        return a.get()
    return np.asarray(a)


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


# ------------------------------------------------------------------ benchmarks


def copy_bandwidth(backend: str, N: int, repeats: int) -> float:
    """Device-to-device copy, bytes read + written per second (best of the library's copies)."""
    if backend == "cupy":
        import cupy

        a = cupy.ones(N, dtype=cupy.float32)
        b = cupy.empty_like(a)
        t = _median_time(lambda: cupy.copyto(b, a), backend, repeats, 5.0)
    else:
        import torch

        a = torch.ones(N, dtype=torch.float32, device="cuda")
        b = torch.empty_like(a)
        t = _median_time(lambda: b.copy_(a), backend, repeats, 5.0)
    a = b = None  # free the buffers before the next part
    _free(backend)
    return 2 * N * 4 / t


def _gpu_arrays(backend: str, N: int):
    if backend == "cupy":
        import cupy

        rs = cupy.random.RandomState(0)
        return rs.standard_normal(N, dtype=cupy.float32), rs.standard_normal(N, dtype=cupy.float32) * 1e-3
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    return (torch.randn(N, device="cuda", generator=gen),
            torch.randn(N, device="cuda", generator=gen) * 1e-3)


def first_order_rows(backend: str, N: int, names: tuple, repeats: int) -> list[dict]:
    """agnopt's step (fast path, and generic for Adam) on one GPU backend."""
    import agnopt as ao

    from .bench import _agnopt_opt

    rows = []
    stats_mod = "cupy_kernel" if backend == "cupy" else "torch_kernel"
    import importlib

    stats = importlib.import_module(f"agnopt._kernels.{stats_mod}").STATS
    old = os.environ.get("AGNOPT_FAST")
    try:
        for name in names:
            for mode in (("1", "0") if name == "adam" else ("1",)):
                os.environ["AGNOPT_FAST"] = mode
                p, g = _gpu_arrays(backend, N)
                opt = _agnopt_opt(name)
                box = [p, opt.init(p)]
                before = sum(stats.values())

                def run():
                    box[0], box[1] = ao.step(opt, box[0], g, box[1])

                fused_before = stats.get("torch_fused", 0)
                t = _median_time(run, backend, repeats, 5.0)
                fast = sum(stats.values()) > before
                label = "agnopt step (fused kernel)" if mode == "1" else "agnopt step (generic path)"
                if mode == "1" and backend == "torch-cuda":
                    # torch's own fused Adam/AdamW kernels where they apply, else in-place blocks
                    label = ("agnopt step (torch fused kernel)" if stats.get("torch_fused", 0) > fused_before
                             else "agnopt step (in-place blocks)")
                if mode == "1" and not fast:
                    label = "agnopt step (fast path NOT taken)"
                rows.append(dict(backend=backend, optimizer=name, impl=label, N=N, t=t,
                                 bytes=STEP_ARRAYS[name] * N * 4, fast_path=fast if mode == "1" else None))
                box = p = g = None
                _free(backend)
    finally:
        if old is None:
            os.environ.pop("AGNOPT_FAST", None)
        else:
            os.environ["AGNOPT_FAST"] = old
    return rows


def _accepts(cls: Any, kw: str) -> bool:
    """Whether ``cls.__init__`` takes the keyword ``kw`` (``fused`` / ``foreach``)."""
    import inspect

    try:
        return kw in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - no signature: try the call
        return True


def torch_optim_rows(N: int, names: tuple, repeats: int) -> list[dict]:
    """``torch.optim`` on CUDA, ``fused=True`` where torch has a fused kernel, and ``foreach=True``."""
    import torch

    T = torch.optim
    make = {"adam": lambda ps, **kw: T.Adam(ps, lr=1e-3, **kw),
            "adamw": lambda ps, **kw: T.AdamW(ps, lr=1e-3, **kw),
            "rmsprop": lambda ps, **kw: T.RMSprop(ps, lr=1e-3, alpha=0.9, **kw)}
    rows = []
    for name in names:
        for label, kw in (("torch.optim fused", {"fused": True}), ("torch.optim foreach", {"foreach": True})):
            cls = {"adam": T.Adam, "adamw": T.AdamW, "rmsprop": T.RMSprop}[name]
            if not _accepts(cls, next(iter(kw))):  # torch.optim.RMSprop has no fused implementation
                rows.append(dict(backend="torch-cuda", optimizer=name, impl=label, N=N, t=None, na=True,
                                 note=f"n/a: torch.optim.{cls.__name__} has no {next(iter(kw))}= option"))
                continue
            p, g = _gpu_arrays("torch-cuda", N)
            p.requires_grad_(True)
            p.grad = g
            try:
                opt = make[name]([p], **kw)
                opt.step()
            except (RuntimeError, TypeError, ValueError) as e:
                rows.append(dict(backend="torch-cuda", optimizer=name, impl=label, N=N, t=None,
                                 note=f"{type(e).__name__}: {str(e)[:80]}"))
                continue
            t = _median_time(opt.step, "torch-cuda", repeats, 5.0)
            rows.append(dict(backend="torch-cuda", optimizer=name, impl=label, N=N, t=t,
                             bytes=STEP_ARRAYS[name] * N * 4))
            del opt, p, g
            _free("torch-cuda")
    return rows


def _peaks(B: int, m: int = 50, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    P = np.stack([rng.uniform(1, 3, B), rng.uniform(-1, 1, B), rng.uniform(0.6, 1.5, B),
                  rng.uniform(0, 1, B)], 1)
    x = np.linspace(-5.0, 5.0, m)
    Y = (P[:, 0:1] * np.exp(-((x - P[:, 1:2]) ** 2) / (2 * P[:, 2:3] ** 2)) + P[:, 3:4]
         + 0.05 * rng.standard_normal((B, m)))
    return x, Y, np.array([2.0, 0.0, 1.0, 0.5])


def batched_lm(backend: str, B: int, repeat: int = 1) -> dict:
    """``curve_fit(batched=True)`` of B Gaussian peaks (default Jacobian, float64) on one backend."""
    from .. import curve_fit
    from .fitbench import _gauss

    xp, dev = _xp_dev(backend)
    x, Y, p0 = _peaks(B)
    xd = xp.asarray(x, dtype=xp.float64, device=dev)
    Yd = xp.asarray(Y, dtype=xp.float64, device=dev)
    p0d = xp.asarray(p0, dtype=xp.float64, device=dev)
    curve_fit(_gauss, xd, Yd[:100, :], p0=p0d, batched=True)  # warm-up: kernels, caches
    _sync(backend)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        popt, _, info, _, _ = curve_fit(_gauss, xd, Yd, p0=p0d, batched=True, full_output=True)
        _sync(backend)
        times.append(time.perf_counter() - t0)
    succ = _host(info["success"]).astype(bool)
    nfev = _host(info["nfev"])
    out = dict(backend=backend, B=B, t=min(times), per_fit_us=min(times) / B * 1e6,
               n_success=int(succ.sum()), nfev_mean=float(nfev.mean()))
    del popt, info, Yd
    _free(backend)
    return out


def profile_batched_lm(backend: str, B: int, top: int = 15) -> dict:
    """Where the time of one batched LM goes: cProfile's ``top`` functions by own time.

    Run only when a GPU's batched LM is not clearly faster than the host CPU
    (a per-problem loop or host transfer somewhere), so that the next run
    names the cause.
    """
    import cProfile
    import pstats

    from .. import curve_fit
    from .fitbench import _gauss

    xp, dev = _xp_dev(backend)
    x, Y, p0 = _peaks(B)
    xd = xp.asarray(x, dtype=xp.float64, device=dev)
    Yd = xp.asarray(Y, dtype=xp.float64, device=dev)
    p0d = xp.asarray(p0, dtype=xp.float64, device=dev)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    curve_fit(_gauss, xd, Yd, p0=p0d, batched=True)
    _sync(backend)
    prof.disable()
    t = time.perf_counter() - t0
    st = pstats.Stats(prof)
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]  # (file, line, name) -> (cc, nc, tt, ct, ...)
    funcs = [dict(func=f"{os.path.basename(k[0])}:{k[1]}:{k[2]}", ncalls=v[1], tottime=round(v[2], 4),
                  cumtime=round(v[3], 4)) for k, v in rows]
    del Yd
    _free(backend)
    return dict(backend=backend, B=B, t=t, top=funcs)


def newton_step(backend: str, n: int, repeats: int) -> dict:
    """One Newton step of ``minimize`` at size n against one Cholesky factor + solve, same device."""
    import numpy as np

    import agnopt as ao

    xp, dev = _xp_dev(backend)
    rng = np.random.default_rng(0)
    M = rng.standard_normal((n, n))
    A = xp.asarray(M @ M.T / n + np.eye(n), device=dev)
    b = xp.asarray(rng.standard_normal(n), device=dev)
    x0 = xp.asarray(np.zeros(n), device=dev)

    def fun(x):
        return 0.5 * xp.vecdot(x, A @ x) - xp.vecdot(b, x)

    def jac(x):
        return A @ x - b

    last = []

    def newton():
        last[:] = [ao.minimize(fun, x0, method="newton", jac=jac, hess=lambda x: A, maxiter=1)]

    if backend == "cupy":
        import cupy
        from cupyx.scipy.linalg import solve_triangular

        def chol():
            L = cupy.linalg.cholesky(A)
            return solve_triangular(L.T, solve_triangular(L, -b, lower=True), lower=False)
    elif backend == "torch-cuda":
        import torch

        def chol():
            L = torch.linalg.cholesky(A)
            return torch.cholesky_solve(-b[:, None], L)
    else:
        import scipy.linalg as sl

        def chol():
            return sl.cho_solve(sl.cho_factor(A, check_finite=False), -b, check_finite=False)
    t_newton = _median_time(newton, backend, repeats, 10.0, warmup=1)
    t_chol = _median_time(chol, backend, repeats, 5.0, warmup=1)
    return dict(backend=backend, n=n, t_newton_step=t_newton, t_cholesky_solve=t_chol,
                ratio=t_newton / t_chol, nit=int(last[0].nit))


def small_fit(backend: str, repeats: int) -> dict:
    """Latency of one ``curve_fit`` (a exp(-b t) + c, 50 points, default Jacobian)."""
    import numpy as np
    from array_api_compat import array_namespace

    from .. import curve_fit

    xp, dev = _xp_dev(backend)
    t = np.linspace(0.0, 4.0, 50)
    y = 2.5 * np.exp(-1.3 * t) + 0.5 + 0.01 * np.random.default_rng(0).standard_normal(50)
    td = xp.asarray(t, device=dev)
    yd = xp.asarray(y, device=dev)
    p0 = xp.asarray([1.0, 1.0, 0.0], dtype=xp.float64, device=dev)

    def model(tt, a, b, c):
        return a * array_namespace(tt).exp(-b * tt) + c

    popt = None

    def run():
        nonlocal popt
        popt = curve_fit(model, td, yd, p0=p0)[0]

    sec = _median_time(run, backend, repeats, 10.0, warmup=1)
    return dict(backend=backend, t=sec, popt=[float(v) for v in _host(popt)])


# ------------------------------------------------------------------ driver of the benchmarks


def run_benchmarks(backends: list[str], quick: bool, budget_s: float, res: dict, save: Callable[[], None],
                   out: Callable[[str], None]) -> None:
    dl = Deadline(budget_s)
    bench = res.setdefault("bench", {"copy_GBps": {}, "first_order": [], "batched_lm": [], "newton": [],
                                     "small_fit": [], "numpy_host_lm": None, "skipped": [], "errors": []})
    N = 100_000_000
    reps = 10 if quick else 30
    names = tuple(STEP_ARRAYS)

    def attempt(what: str, need_s: float, fn: Callable[[], Any]):
        if dl.left() < need_s:
            bench["skipped"].append(f"{what}: budget ({dl.left():.0f} s left, needs ~{need_s:.0f} s)")
            out(f"  {what}: skipped, budget")
            save()
            return None
        bench["running"] = what  # saved with the results so far: a killed run says where it stopped
        save()
        t0 = time.perf_counter()
        try:
            r = fn()
        except Exception as e:  # report, then carry on with the next part
            bench["errors"].append(f"{what}: {type(e).__name__}: {str(e)[:300]}")
            out(f"  {what}: ERROR {type(e).__name__}: {str(e)[:200]}")
            bench["running"] = None
            save()
            return None
        out(f"  {what}: {time.perf_counter() - t0:.1f} s")
        bench["running"] = None
        return r  # the caller stores it; the next part's save (or the final one) writes it

    out(f"benchmarks: budget {budget_s:.0f} s")
    for be in backends:
        r = attempt(f"copy bandwidth {be}", 3, lambda: copy_bandwidth(be, N, reps))
        if r is not None:
            bench["copy_GBps"][be] = r / 1e9
        rows = attempt(f"first-order steps {be} N=1e8", 8, lambda: first_order_rows(be, N, names, reps))
        bench["first_order"] += rows or []
    if "torch-cuda" in backends:
        bench["first_order"] += attempt("torch.optim fused/foreach N=1e8", 6,
                                        lambda: torch_optim_rows(N, names, reps)) or []
    B_host = 2000 if quick else 10_000
    host = attempt(f"batched LM numpy (host CPU) B={B_host}", 5, lambda: batched_lm("numpy", B_host))
    if host is not None:
        host["note"] = f"timed at B={B_host} on the host CPU; per-fit time extrapolated linearly"
        bench["numpy_host_lm"] = host
    small = {}
    for be in backends:
        r = attempt(f"batched LM {be} B=1e5", 10, lambda: batched_lm(be, 100_000))
        if r is not None:
            bench["batched_lm"].append(r)
            small[be] = r["t"]
    for be in backends:
        if be not in small:
            continue
        need = max(10.0, 5.0 * small[be])  # 10x the fits; the B=1e5 run is not saturating the card
        r = attempt(f"batched LM {be} B=1e6", need, lambda: batched_lm(be, 1_000_000))
        if r is not None:
            bench["batched_lm"].append(r)
    for be in backends:
        # a GPU not clearly ahead of the host CPU: profile a smaller batch to name the cause
        lm = next((r for r in bench["batched_lm"] if r["backend"] == be and r["B"] == 100_000), None)
        if lm is not None and host is not None and lm["per_fit_us"] > host["per_fit_us"] / 5:
            B_prof = 20_000
            need = 2.0 * lm["per_fit_us"] * B_prof / 1e6 + 2.0
            r = attempt(f"profile of batched LM {be} B={B_prof}", need, lambda: profile_batched_lm(be, B_prof))
            if r is not None:
                bench.setdefault("profiles", []).append(r)
    for be in ["numpy"] + backends:
        r = attempt(f"one small curve_fit {be}", 3, lambda: small_fit(be, 7 if quick else 15))
        if r is not None:
            bench["small_fit"].append(r)
    for be in ["numpy"] + backends:
        r = attempt(f"Newton step n=2000 {be}", 4, lambda: newton_step(be, 2000, 3 if quick else 7))
        if r is not None:
            bench["newton"].append(r)
