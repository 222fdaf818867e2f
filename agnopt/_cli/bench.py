"""``python -m agnopt bench``: one optimizer step against the memory roofline, torch.optim and optax.

An adaptive step is memory-bound: Adam must read params, grads, m, v and
write params, m, v (7 arrays of N elements); RMSProp, Adagrad and SGD with
momentum move 5. The *fused roofline* is the time a perfectly fused loop
needs to move those bytes on this machine, measured in the same run:

* with numba installed, a fused numba loop that reads and writes exactly the
  same streams (one add per element, so it is bandwidth-bound);
* without numba, an estimate from NumPy copies: the bandwidth of
  ``np.copyto`` (one read and one write stream) times the step's bytes.

Each row is the median of timed repeats after a warm-up: agnopt's ``step``
(fast path: numba if installed; blocked NumPy; the generic path
``update`` + ``apply_updates``), and where installed ``torch.optim``
(``foreach=True``, ``fused=True``) and optax under ``jax.jit`` with donated
buffers. Ratios are to the roofline and to torch's fused step. The N = 1e7
figures are meant single-threaded: ``--threads 1`` (default) sets
``torch.set_num_threads``, numba's threads, and XLA's CPU threads (only
effective if JAX is not yet imported); BLAS threads (``OPENBLAS_NUM_THREADS``)
are read at NumPy's import, so set them in the environment for the
second-order rows.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from typing import Any, Callable

import numpy as np

from .newton_bench import newton_vs_cholesky, newton_vs_trust_exact

ARRAYS = {"adam": 7, "adamw": 7, "rmsprop": 5, "adagrad": 5, "sgd-momentum": 5}


def _agnopt_opt(name: str):
    import agnopt as ao

    return {
        "adam": lambda: ao.adam(1e-3),
        "adamw": lambda: ao.adamw(1e-3),
        "rmsprop": lambda: ao.rmsprop(1e-3),
        "adagrad": lambda: ao.adagrad(1e-2),
        "sgd-momentum": lambda: ao.sgd(1e-3, momentum=0.9),
    }[name]()


def _median_time(fn: Callable[[], Any], repeats: int, budget_s: float, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    t_start = time.perf_counter()
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - t_start > budget_s:
            break
    return statistics.median(times)


# ------------------------------------------------------------------ roofline

def _roofline_kernels():
    import numba

    @numba.njit(error_model="numpy", nogil=True)
    def seven(p, g, m, v):  # reads p, g, m, v; writes p, m, v
        for i in range(p.shape[0]):
            gi = g[i]
            m[i] = m[i] + gi
            v[i] = v[i] + gi
            p[i] = p[i] + gi

    @numba.njit(error_model="numpy", nogil=True)
    def five(p, g, v):  # reads p, g, v; writes p, v
        for i in range(p.shape[0]):
            gi = g[i]
            v[i] = v[i] + gi
            p[i] = p[i] + gi

    return seven, five


def roofline(N: int, dtype: str, n_arrays: int, repeats: int, budget: float) -> dict:
    """Seconds a perfectly fused step moving ``n_arrays`` streams of N elements needs."""
    dt = np.dtype(dtype)
    nbytes = n_arrays * N * dt.itemsize
    try:
        seven, five = _roofline_kernels()
        arrs = [np.full(N, 1e-3, dt) for _ in range(4 if n_arrays == 7 else 3)]
        k = seven if n_arrays == 7 else five
        t = _median_time(lambda: k(*arrs), repeats, budget)
        method = "fused numba loop"
    except ImportError:
        a = np.full(N, 1.0, dt)
        b = np.empty_like(a)
        tc = _median_time(lambda: np.copyto(b, a), repeats, budget)
        bw = 2 * N * dt.itemsize / tc
        t = nbytes / bw
        method = "NumPy copy bandwidth x step bytes"
    return {"t": t, "GBps": nbytes / t / 1e9, "method": method, "bytes": nbytes}


# ------------------------------------------------------------------ contenders

def _agnopt_rows(name, N, dtype, repeats, budget, leaves=1):
    import agnopt as ao

    rows = {}
    rng = np.random.default_rng(0)
    n_leaf = N // leaves

    def make():
        if leaves == 1:
            return rng.standard_normal(N).astype(dtype), rng.standard_normal(N).astype(dtype) * 1e-3
        p = {f"l{i:03d}": rng.standard_normal(n_leaf).astype(dtype) for i in range(leaves)}
        g = {k: (v * 1e-3).astype(dtype) for k, v in p.items()}
        return p, g

    modes = [("agnopt fast", "1"), ("agnopt numpy-blocked", "numpy"), ("agnopt generic", "0")]
    old = os.environ.get("AGNOPT_FAST")
    try:
        for label, mode in modes:
            if mode == "1":
                from .._kernels.cpu import HAVE_NUMBA

                label = "agnopt fast (numba)" if HAVE_NUMBA else "agnopt fast (numpy-blocked)"
                if not HAVE_NUMBA:
                    continue  # same as the blocked row
            os.environ["AGNOPT_FAST"] = mode
            opt = _agnopt_opt(name)
            p, g = make()
            box = [p, opt.init(p)]

            def run(box=box, opt=opt, g=g):
                box[0], box[1] = ao.step(opt, box[0], g, box[1])

            rows[label] = _median_time(run, repeats, budget if mode != "0" else budget / 2)
            del box, p, g, run
        if leaves > 1:  # the stateful optimizer with flat buffers
            os.environ["AGNOPT_FAST"] = "1"
            p, g = make()
            o = ao.Optimizer(_agnopt_opt(name), p, flat=True)
            for dst, src in zip(ao.tree_leaves(o.grads), ao.tree_leaves(g)):
                dst[...] = src
            rows["agnopt Optimizer(flat=True)"] = _median_time(o.step, repeats, budget)
    finally:
        if old is None:
            os.environ.pop("AGNOPT_FAST", None)
        else:
            os.environ["AGNOPT_FAST"] = old
    return rows


def _torch_rows(name, N, dtype, repeats, budget, leaves=1):
    try:
        import torch
    except ImportError:
        return {}
    T = torch.optim
    tdt = getattr(torch, dtype)
    make = {
        "adam": lambda ps, **kw: T.Adam(ps, lr=1e-3, **kw),
        "adamw": lambda ps, **kw: T.AdamW(ps, lr=1e-3, **kw),
        "rmsprop": lambda ps, **kw: T.RMSprop(ps, lr=1e-3, alpha=0.9, **kw),
        "adagrad": lambda ps, **kw: T.Adagrad(ps, lr=1e-2, **kw),
        "sgd-momentum": lambda ps, **kw: T.SGD(ps, lr=1e-3, momentum=0.9, **kw),
    }[name]
    rows = {}
    for label, kw in (("torch foreach", {"foreach": True}), ("torch fused", {"fused": True})):
        n_leaf = N // leaves
        ps = [torch.randn(n_leaf, dtype=tdt, requires_grad=True) for _ in range(leaves)]
        for q in ps:
            q.grad = torch.randn(n_leaf, dtype=tdt) * 1e-3
        try:
            opt = make(ps, **kw)
            opt.step()
        except (RuntimeError, TypeError, ValueError):
            continue  # e.g. no fused kernel for this optimizer / device
        rows[label] = _median_time(opt.step, repeats, budget)
    return rows


def _optax_rows(name, N, dtype, repeats, budget, leaves=1):
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        return {}
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    opt = {
        "adam": lambda: optax.adam(1e-3),
        "adamw": lambda: optax.adamw(1e-3, weight_decay=1e-2),
        "rmsprop": lambda: optax.rmsprop(1e-3),
        "adagrad": lambda: optax.adagrad(1e-2, initial_accumulator_value=0.0, eps=1e-10),
        "sgd-momentum": lambda: optax.sgd(1e-3, momentum=0.9),
    }[name]()
    n_leaf = N // leaves
    key = jax.random.PRNGKey(0)
    if leaves == 1:
        p = jax.random.normal(key, (N,), dtype=dtype)
    else:
        p = {f"l{i:03d}": jax.random.normal(jax.random.fold_in(key, i), (n_leaf,), dtype=dtype)
             for i in range(leaves)}
    g = jax.tree_util.tree_map(lambda x: x * 1e-3, p)

    @jax.jit
    def _step(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    stepd = jax.jit(_step, donate_argnums=(0, 1))
    box = [p, opt.init(p)]

    def run():
        box[0], box[1] = stepd(box[0], box[1], g)
        jax.block_until_ready(box[0])

    return {"optax jit (donated)": _median_time(run, repeats, budget, warmup=3)}


# ------------------------------------------------------------------ per-step overhead

def _best_of(fn: Callable[[], Any], inner: int, rounds: int) -> float:
    """Best over ``rounds`` of the mean time of ``inner`` calls (a loaded machine only adds time)."""
    for _ in range(min(inner, 20)):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def step_overhead(optimizers=("adam", "adamw", "rmsprop", "adagrad", "sgd-momentum"), dtype="float32",
                  rounds=7, out=print) -> dict:
    """Python overhead of one step, and a 100-leaf tree against one array of the same size.

    * ``ao.step`` and ``Optimizer.step`` on N = 10 parameters (fast path): the
      time is all dispatch and checks (goal: under 10 us);
    * ``ao.step`` on a dict of 100 leaves against one array of the same total
      size, at 1e5 and 1e7 elements, timed alternately in the same rounds
      (best of ``rounds``), so load affects both alike (issue 14 goal, at 1e5: 1.3x).
    """
    import agnopt as ao

    res: dict = {"N10_us": {}, "tree100": {}}
    out(f"per-step overhead (best of {rounds} rounds, load average {os.getloadavg()}):")
    for name in optimizers:
        opt = _agnopt_opt(name)
        p = np.ones(10, dtype)
        g = np.full(10, 1e-3, dtype)
        box = [p, opt.init(p)]

        def run(box=box, opt=opt, g=g):
            box[0], box[1] = ao.step(opt, box[0], g, box[1])

        o = ao.Optimizer(_agnopt_opt(name), np.ones(10, dtype))
        t_step = _best_of(run, 2000, rounds)
        t_opt = _best_of(functools.partial(o.step, g), 2000, rounds)
        res["N10_us"][name] = {"ao.step": t_step * 1e6, "Optimizer.step": t_opt * 1e6}
        out(f"  {name:13s} N=10: ao.step {t_step * 1e6:7.2f} us   Optimizer.step {t_opt * 1e6:7.2f} us")
    for N in (100_000, 10_000_000):
        r = res["tree100"][N] = tree_over_array(N, dtype, rounds)
        tt, tf = r["tree_s"], r["array_s"]
        tn = r["tree_new_s"]
        out(f"  adam N={N:.0e}: 100-leaf dict {tt * 1e3:8.3f} ms (same gradient arrays each step), "
            f"{tn * 1e3:8.3f} ms (new gradient arrays), one array {tf * 1e3:8.3f} ms: "
            f"ratios {tt / tf:5.2f} / {tn / tf:5.2f} (goal 1.3; "
            f"{(tt - tf) / 100 * 1e6:.2f} / {(tn - tf) / 100 * 1e6:.2f} us per extra leaf)")
    return res


def tree_over_array(N: int, dtype: str = "float32", rounds: int = 7) -> dict:
    """``ao.step`` (Adam) on a dict of 100 leaves against one array of the same ``N`` elements.

    Both layouts are stepped alternately in the same rounds (best of
    ``rounds``; 50 steps per timing at N <= 1e5), so load affects both alike.
    Two gradient patterns for the tree: the same gradient arrays at every step
    (a model writing its gradients into fixed buffers: ``tree_s``, ``ratio``)
    and new arrays at every step (two gradient trees in turn, as from a
    functional gradient: ``tree_new_s``, ``ratio_new``), whose small leaves'
    gradients the fused step copies into one buffer.
    """
    import agnopt as ao

    rng = np.random.default_rng(0)
    opt = _agnopt_opt("adam")
    flat = rng.standard_normal(N).astype(dtype)
    tree = {f"l{i:03d}": x.copy() for i, x in enumerate(np.split(flat.copy(), 100))}
    gflat = (flat * 1e-3).astype(dtype)
    gtree = {k: (v * 1e-3).astype(dtype) for k, v in tree.items()}
    gtrees = [gtree, {k: v.copy() for k, v in gtree.items()}]  # new arrays each step
    bf, bt = [flat, opt.init(flat)], [tree, opt.init(tree)]
    inner = 50 if N <= 100_000 else 1
    tf = tt = tn = float("inf")

    def one(b, g, opt=opt):
        b[0], b[1] = ao.step(opt, b[0], g, b[1])

    turn = [0]

    def alternating(b, opt=opt):
        turn[0] ^= 1
        b[0], b[1] = ao.step(opt, b[0], gtrees[turn[0]], b[1])

    for _ in range(rounds if N <= 100_000 else 3 * rounds):
        tt = min(tt, _best_of(functools.partial(one, bt, gtree), inner, 1))
        tf = min(tf, _best_of(functools.partial(one, bf, gflat), inner, 1))
        tn = min(tn, _best_of(functools.partial(alternating, bt), inner, 1))
    return {"N": N, "array_s": tf, "tree_s": tt, "ratio": tt / tf,
            "tree_new_s": tn, "ratio_new": tn / tf}


# ------------------------------------------------------------------ second order
# (the Newton cases: agnopt._cli.newton_bench)

def batched_lm(B: int, scipy_subset: int = 500) -> dict:
    from .fitbench import run_fit_benchmark

    out = run_fit_benchmark(B=B, scipy_subset=min(B, scipy_subset), verbose=False)
    return {k: out[k] for k in ("B", "t_batched", "t_scipy", "scipy_fits", "extrapolated", "speedup",
                                "n_success")}


# ------------------------------------------------------------------ driver

def _set_threads(threads: int | None) -> dict:
    info: dict[str, Any] = {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    if threads is None:
        return info
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                          f"intra_op_parallelism_threads={threads}")
    try:
        import torch

        torch.set_num_threads(threads)
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    # agnopt's numba kernels are serial (no parallel=True): nothing to set, and
    # starting numba's threading layer here would compete with torch's OpenMP pool.
    info["numba"] = "serial kernels"
    return info


def run_bench(sizes=(100_000, 10_000_000), dtype="float32",
              optimizers=("adam", "rmsprop", "adagrad", "sgd-momentum", "adamw"),
              backends=("agnopt", "torch", "optax"), tree_leaves=100, repeats=25,
              budget=3.0, threads=1, second_order=True, json_path=None, out=print) -> dict:
    thread_info = _set_threads(threads)
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    res: dict = {"dtype": dtype, "threads": thread_info, "loadavg_start": load, "steps": [],
                 "second_order": {}}
    out(f"agnopt bench: dtype={dtype}, threads={threads}, load average {load}")
    hdr = f"{'optimizer':13s} {'N':>9s} {'layout':8s} {'implementation':30s} {'ms':>9s} {'x roofline':>11s} {'x torch fused':>14s}"
    out(hdr)
    out("-" * len(hdr))
    for N in sizes:
        for name in optimizers:
            rf = roofline(N, dtype, ARRAYS[name], repeats, budget)
            layouts = [1] + ([tree_leaves] if tree_leaves and tree_leaves > 1 else [])
            for leaves in layouts:
                rows: dict = {}
                if "agnopt" in backends:
                    rows.update(_agnopt_rows(name, N, dtype, repeats, budget, leaves))
                if "torch" in backends:
                    rows.update(_torch_rows(name, N, dtype, repeats, budget, leaves))
                if "optax" in backends:
                    rows.update(_optax_rows(name, N, dtype, repeats, budget, leaves))
                tf = rows.get("torch fused")
                layout = "array" if leaves == 1 else f"{leaves} leaves"
                out(f"{name:13s} {N:9.0e} {layout:8s} {'roofline: ' + rf['method']:30s} "
                    f"{rf['t'] * 1e3:9.3f} {1.0:11.2f} {'':>14s}  ({rf['GBps']:.1f} GB/s)")
                for label, t in rows.items():
                    r_tf = f"{t / tf:14.2f}" if tf else f"{'-':>14s}"
                    out(f"{'':13s} {'':9s} {'':8s} {label:30s} {t * 1e3:9.3f} {t / rf['t']:11.2f} {r_tf}")
                    res["steps"].append(dict(optimizer=name, N=N, leaves=leaves, impl=label, t=t,
                                             x_roofline=t / rf["t"], x_torch_fused=(t / tf if tf else None),
                                             roofline_t=rf["t"], roofline_method=rf["method"],
                                             roofline_GBps=rf["GBps"]))
    out("")
    res["overhead"] = step_overhead(out=out)
    if second_order:
        out("")
        for n in (100, 500):
            try:
                r = newton_vs_cholesky(n)
            except Exception as e:  # pragma: no cover - report, not crash
                out(f"Newton step n={n}: not measured ({type(e).__name__}: {e})")
                continue
            res["second_order"][f"newton_n{n}"] = r
            out(f"Newton iteration n={n}: {r['t_iteration'] * 1e3:.3f} ms; one Cholesky factor+solve "
                f"{r['t_cholesky_solve'] * 1e3:.3f} ms; ratio {r['ratio']:.2f} (goal 1.2; "
                f"{r['ratio_solver']:.2f} without the user's fun/jac/hess, {r['callbacks_s'] * 1e3:.3f} ms)")
            out(f"  one-step solve n={n} (step + second-order test: 2 factorizations): "
                f"{r['t_one_step'] * 1e3:.3f} ms; ratio {r['ratio_one_step']:.2f}")
        for n in (2, 10):
            try:
                r = newton_vs_trust_exact(n)
            except Exception as e:  # pragma: no cover - report, not crash
                out(f"Newton on Rosenbrock n={n}: not measured ({type(e).__name__}: {e})")
                continue
            res["second_order"][f"rosenbrock_n{n}"] = r
            out(f"minimize newton on Rosenbrock n={n}: {r['t_agnopt'] * 1e3:.3f} ms ({r['nit_agnopt']} "
                f"iterations); scipy trust-exact {r['t_scipy'] * 1e3:.3f} ms ({r['nit_scipy']}); ratio "
                f"{r['ratio']:.2f} (goal 1){'' if r['same_point'] else ' [different end points]'}")
        try:
            r = batched_lm(10_000)
            res["second_order"]["batched_lm_B10000"] = r
            ext = f" (scipy timed on {r['scipy_fits']}, extrapolated)" if r["extrapolated"] else ""
            out(f"Batched LM B=10000 Gaussian fits: agnopt {r['t_batched']:.3f} s, scipy curve_fit loop "
                f"{r['t_scipy']:.2f} s{ext}; speed-up {r['speedup']:.1f}x")
        except Exception as e:  # pragma: no cover
            out(f"Batched LM: not measured ({type(e).__name__}: {e})")
    try:
        res["loadavg_end"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    out(f"load average at the end: {res.get('loadavg_end')}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(res, f, indent=1, default=str)
        out(f"figures written to {json_path}")
    return res


# ------------------------------------------------------------------ invariant (matrix) optimizers

INVARIANT_OPTIMIZERS = ("adam", "shampoo", "soap", "muon")


def _invariant_opt(name: str, frequency: int):
    import agnopt as ao

    return {
        "adam": lambda: ao.adam(1e-3),
        "shampoo": lambda: ao.shampoo(1e-3, precondition_frequency=frequency),
        "soap": lambda: ao.soap(1e-3, precondition_frequency=frequency),
        "muon": lambda: ao.muon(1e-3, weight_decay=0.0),
    }[name]()


def _installed_backends(names=("numpy", "array_api_strict", "torch", "jax", "dask", "cupy", "torch-cuda")):
    out = []
    for name in names:
        try:
            if name == "numpy":
                import array_api_compat.numpy as xp

                out.append((name, xp, "cpu", lambda x: None))
            elif name == "array_api_strict":
                import array_api_strict as xp

                out.append((name, xp, xp.Device("CPU_DEVICE"), lambda x: None))
            elif name in ("torch", "torch-cuda"):
                import array_api_compat.torch as xp
                import torch

                if name == "torch":
                    out.append((name, xp, torch.device("cpu"), lambda x: None))
                elif torch.cuda.is_available():
                    out.append((name, xp, torch.device("cuda"), lambda x: torch.cuda.synchronize()))
            elif name == "jax":
                import jax
                import jax.numpy as xp

                out.append((name, xp, jax.devices()[0], lambda x: jax.block_until_ready(x)))
            elif name == "dask":
                import array_api_compat.dask.array as xp
                import dask

                out.append((name, xp, None, lambda x: dask.compute(x)))
            elif name == "cupy":
                import array_api_compat.cupy as xp
                import cupy

                if cupy.cuda.runtime.getDeviceCount() > 0:
                    out.append((name, xp, cupy.cuda.Device(0),
                                lambda x: cupy.cuda.Device().synchronize()))
        except Exception:  # not installed, or no device / driver
            continue
    return out


def run_invariant_bench(sizes=(256, 1024), dtype="float32", backends=None, frequency=10,
                        repeats=5, budget=20.0, threads=1, out=print) -> list[dict]:
    """One step of Adam, Shampoo, SOAP and Muon on one square matrix parameter.

    Shampoo and SOAP recompute their eigendecompositions every ``frequency``
    steps: each is timed on a refresh step and on a plain step, and the
    amortized figure is ``(refresh + (frequency - 1) * plain) / frequency``.
    The states are pure values, so the same state is stepped repeatedly
    (count 0 for refresh steps, count 1 for plain ones). Median of
    ``repeats`` (fewer once ``budget`` seconds are spent), eager (no jit).
    ``threads`` as in :func:`run_bench` (BLAS threads come from the environment).
    """
    _set_threads(threads)
    rows = []
    chosen = _installed_backends() if backends is None else _installed_backends(tuple(backends))
    out(f"invariant optimizers: one step on a square matrix, dtype={dtype}, "
        f"eigh every {frequency} steps for Shampoo/SOAP (eager; median ms)")
    hdr = f"{'backend':17s} {'n':>5s} {'optimizer':9s} {'plain step':>11s} {'refresh step':>13s} {'amortized':>10s}"
    out(hdr)
    out("-" * len(hdr))
    for bname, xp, dev, sync in chosen:
        for n in sizes:
            if bname in ("dask", "array_api_strict") and n > 256:
                continue  # too slow to be useful at this size
            rng = np.random.default_rng(0)
            dt = getattr(xp, dtype)
            p = xp.asarray(rng.standard_normal((n, n)).astype(dtype), dtype=dt, device=dev)
            g = xp.asarray((1e-3 * rng.standard_normal((n, n))).astype(dtype), dtype=dt, device=dev)
            for name in INVARIANT_OPTIMIZERS:
                opt = _invariant_opt(name, frequency)
                s0 = opt.init(p)
                _, s1 = opt.update(g, s0, p)

                def step(s, opt=opt, g=g, p=p, sync=sync):
                    u, _ = opt.update(g, s, p)
                    sync(u)

                try:
                    t_plain = _median_time(functools.partial(step, s1), repeats, budget, warmup=1)
                    t_ref = (_median_time(functools.partial(step, s0), repeats, budget, warmup=1)
                             if name in ("shampoo", "soap") else t_plain)
                except Exception as e:  # pragma: no cover - report, not crash
                    out(f"{bname:17s} {n:5d} {name:9s} not measured ({type(e).__name__}: {e})")
                    continue
                amort = (t_ref + (frequency - 1) * t_plain) / frequency
                rows.append(dict(backend=bname, n=n, optimizer=name, t_plain=t_plain, t_refresh=t_ref,
                                 t_amortized=amort, dtype=dtype, frequency=frequency))
                out(f"{bname:17s} {n:5d} {name:9s} {t_plain * 1e3:11.2f} {t_ref * 1e3:13.2f} {amort * 1e3:10.2f}")
    return rows
