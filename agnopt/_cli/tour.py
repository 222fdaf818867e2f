"""``python -m agnopt tour``: every optimizer on every installed backend.

For each installed backend (and device), each first-order optimizer runs on
the 2-D Rosenbrock function and on an ill-conditioned quadratic; one table
row each: backend, device, optimizer, problem, whether it converged, steps,
final loss, the time of the first step (on JAX: the jit compilation) and the
time per step after it. The same code runs on all backends: that is the point.

Before the table the tour prints each problem's known minimum and start
loss, and the convergence criterion (:data:`CONVERGED_RATIO`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from .. import adagrad, adam, adamw, apply_updates, exponential_decay, rmsprop, sgd, sign_sgd

__all__ = ["available_backends", "run_tour", "run_second_order_tour", "converged", "OPTIMIZERS",
           "PROBLEMS", "CONVERGED_RATIO", "DASK_STEPS"]

# Dask builds and runs a task graph for every array operation: ~10-20 ms per
# step for these 2- and 10-element arrays (the library's cost on Dask is per
# operation, not per element), so 1000 steps of the 12 runs would take minutes.
# The tour runs at most DASK_STEPS steps there and says so.
DASK_STEPS = 50

# A run converged when final loss - minimum <= CONVERGED_RATIO * (start loss - minimum).
CONVERGED_RATIO = 1e-6

# Newton's Rosenbrock value counts as converged at or below this (the minimum is 0).
SECOND_ORDER_TOL = 1e-12

# name -> (what it is, known minimum, where) of the first-order problems.
PROBLEMS = {
    "rosenbrock": ("Rosenbrock (1-x)^2 + 100 (y-x^2)^2 from (-1.2, 1)", 0.0, "(1, 1)"),
    "quadratic": ("0.5 sum_i h_i (x_i - c_i)^2, h_i from 1 to 1e3 (condition 1e3), from 0", 0.0,
                  "c = (1, -1, 1, ...)"),
}

OPTIMIZERS: dict[str, Callable[[], Any]] = {
    "sgd(momentum=0.9)": lambda: sgd(exponential_decay(2e-3, 1000, 0.5), momentum=0.9),
    "sign_sgd": lambda: sign_sgd(exponential_decay(1e-2, 600, 0.5)),
    "adagrad": lambda: adagrad(0.6),
    "rmsprop": lambda: rmsprop(exponential_decay(1e-2, 300, 0.5)),
    "adam": lambda: adam(2e-2),
    "adamw": lambda: adamw(2e-2, weight_decay=1e-4),
}


def available_backends() -> list[tuple[str, Any, Any, Callable[[Any], None]]]:
    """``(name, xp, device, sync)`` for every backend importable here."""
    out = []
    import array_api_compat.numpy as np_xp

    out.append(("numpy", np_xp, "cpu", lambda x: None))
    try:
        import array_api_strict

        out.append(("array_api_strict", array_api_strict, array_api_strict.Device("CPU_DEVICE"), lambda x: None))
    except ImportError:
        pass
    try:
        import torch
        import array_api_compat.torch as t_xp

        out.append(("torch", t_xp, torch.device("cpu"), lambda x: None))
        if torch.cuda.is_available():
            out.append(("torch", t_xp, torch.device("cuda"), lambda x: torch.cuda.synchronize()))
    except ImportError:
        pass
    try:
        import jax
        import jax.numpy as jnp

        for d in jax.devices():
            out.append(("jax", jnp, d, lambda x: jax.block_until_ready(x)))
    except ImportError:
        pass
    try:
        import array_api_compat.dask.array as d_xp

        out.append(("dask", d_xp, None, lambda x: None))
    except ImportError:
        pass
    try:
        import cupy
        import array_api_compat.cupy as c_xp

        if cupy.cuda.runtime.getDeviceCount() > 0:
            out.append(("cupy", c_xp, cupy.cuda.Device(0), lambda x: cupy.cuda.Device().synchronize()))
    except Exception:
        pass
    return out


def _problems(xp: Any, device: Any, dtype: Any):
    """(name, x0, loss, grad) for Rosenbrock 2-D and a 10-D quadratic of condition 1e3."""

    def rosen_loss(x):
        return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2

    def rosen_grad(x):
        r = x[1] - x[0] ** 2
        return xp.stack([-2.0 * (1.0 - x[0]) - 400.0 * x[0] * r, 200.0 * r])

    n = 10
    # diagonal quadratic with eigenvalues from 1 to 1e3, minimum at c
    h = xp.asarray([10.0 ** (3.0 * i / (n - 1)) for i in range(n)], dtype=dtype, device=device)
    c = xp.asarray([(-1.0) ** i for i in range(n)], dtype=dtype, device=device)

    def quad_loss(x):
        d = x - c
        return 0.5 * xp.sum(h * d * d)

    def quad_grad(x):
        return h * (x - c)

    return [
        ("rosenbrock", xp.asarray([-1.2, 1.0], dtype=dtype, device=device), rosen_loss, rosen_grad),
        ("quadratic", xp.zeros((n,), dtype=dtype, device=device), quad_loss, quad_grad),
    ]


def _device_name(name: str, device: Any) -> str:
    if device is None:
        return "cpu (chunked)" if name == "dask" else "-"
    s = str(device)
    if name == "array_api_strict":
        return "CPU_DEVICE"
    return s.replace("TFRT_CPU_0", "cpu")


def converged(final: float, start: float, minimum: float = 0.0) -> bool:
    """The tour's criterion: ``final - minimum <= CONVERGED_RATIO * (start - minimum)``."""
    return math.isfinite(final) and final - minimum <= CONVERGED_RATIO * (start - minimum)


def run_tour(steps: int = 1000, dtype: str = "float64", backends: list[str] | None = None,
             out=print) -> list[dict]:
    """Run the tour and print the table; returns its rows as dicts.

    Each row: ``backend, device, optimizer, problem, converged, steps,
    final_loss, first_ms`` (the first step alone: on JAX it includes the jit
    compilation) and ``us_per_step`` (the mean of the other steps, without the
    compilation).
    """
    rows = []
    out("Problems (both minima are 0):")
    import array_api_compat.numpy as np_xp

    for prob, x0, loss, _ in _problems(np_xp, "cpu", np_xp.float64):
        what, fmin, where = PROBLEMS[prob]
        out(f"  {prob:11s} {what}; minimum {fmin:g} at {where}; start loss {float(loss(x0)):.4g}")
    out(f"converged: final loss - minimum <= {CONVERGED_RATIO:g} x (start loss - minimum)")
    out("first ms: the first step alone (on JAX: the jit compilation); us/step: the mean of the others")
    out("")
    header = (f"{'backend':17s} {'device':14s} {'optimizer':18s} {'problem':11s} {'conv':>4s} "
              f"{'steps':>6s} {'final loss':>11s} {'first ms':>9s} {'us/step':>9s}")
    out(header)
    out("-" * len(header))
    for name, xp, device, sync in available_backends():
        if backends and name not in backends:
            continue
        dt = getattr(xp, dtype, None)
        if dt is None:
            continue
        jit = None
        if name == "jax":
            import jax

            if dtype == "float64":  # the tour's own process: ask JAX for float64
                jax.config.update("jax_enable_x64", True)
            jit = jax.jit
        n_steps = min(steps, DASK_STEPS) if name == "dask" else steps
        for opt_name, make in OPTIMIZERS.items():
            for prob, x0, loss, grad in _problems(xp, device, dt):
                opt = make()

                def step(x, s, opt=opt, grad=grad):
                    u, s = opt.update(grad(x), s, x)
                    return apply_updates(x, u), s

                if jit is not None:
                    step = jit(step)
                start = float(loss(x0))
                x, s = x0, opt.init(x0)
                sync(x)
                t0 = time.perf_counter()
                x, s = step(x, s)  # the first step (compiles under jit)
                sync(x)
                first = time.perf_counter() - t0
                t0 = time.perf_counter()
                for i in range(n_steps - 1):
                    x, s = step(x, s)
                    if name == "dask" and i % 25 == 24:
                        x, s = _persist((x, s))
                sync(x)
                dt_step = (time.perf_counter() - t0) / max(n_steps - 1, 1)
                final = float(loss(x))
                ok = converged(final, start, PROBLEMS[prob][1])
                row = dict(backend=name, device=_device_name(name, device), optimizer=opt_name,
                           problem=prob, steps=n_steps, start_loss=start, final_loss=final,
                           minimum=PROBLEMS[prob][1], converged=ok, first_ms=first * 1e3,
                           us_per_step=dt_step * 1e6)
                rows.append(row)
                out(f"{name:17s} {row['device']:14s} {opt_name:18s} {prob:11s} {'yes' if ok else 'no':>4s} "
                    f"{n_steps:6d} {final:11.3e} {row['first_ms']:9.1f} {row['us_per_step']:9.1f}")
                if not math.isfinite(final):
                    raise RuntimeError(f"{opt_name} on {name} diverged on {prob}")
    out("")
    if any(r["backend"] == "dask" for r in rows) and steps > DASK_STEPS:
        out(f"dask ran {DASK_STEPS} steps per run, not {steps}: every array operation builds and runs a task")
        out("  graph (~10-20 ms a step for these tiny arrays), so the full count would take minutes; at the")
        out(f"  same step count its losses equal the other backends' (compare with --steps {DASK_STEPS}).")
    if any(r["problem"] == "rosenbrock" and not r["converged"] for r in rows):
        out("Rosenbrock's curved valley takes first-order methods many thousands of steps (rows marked")
        out("  'no'); Newton's method below converges in about 25 iterations.")
    return rows


def _persist(tree):
    from .._core.tree import tree_map

    return tree_map(lambda a: a.persist(), tree)


def run_second_order_tour(backends: list[str] | None = None, out=print) -> list[dict]:
    """Newton's method on Rosenbrock and a Levenberg-Marquardt fit, on every backend.

    One row each: the iterations, function evaluations, the final value and
    the time. The exponential fit's data are the same on every backend (a
    fixed, noise-free model plus a deterministic perturbation), so the
    fitted parameters can be compared across rows.
    """
    from .. import least_squares, minimize  # the public API (the tour is what a user would write)

    rows = []
    t = [0.25 * i for i in range(40)]
    y = [2.5 * math.exp(-1.3 * ti) + 0.5 + 0.01 * math.sin(7.0 * i) for i, ti in enumerate(t)]
    true = (2.5, 1.3, 0.5)
    # the cost at the true parameters bounds the least-squares minimum from above
    fit_bound = 0.5 * sum((true[0] * math.exp(-true[1] * ti) + true[2] - yi) ** 2 for ti, yi in zip(t, y))
    out("Second order: Newton and Newton-CG on Rosenbrock (minimum 0 at (1, 1)); Levenberg-Marquardt on")
    out(f"  y = 2.5 exp(-1.3 t) + 0.5 + 0.01 sin(7 i), 40 points (cost at the true parameters {fit_bound:.4e},")
    out("  an upper bound of the minimum)")
    out(f"conv: the solver reports success and the final value is <= {SECOND_ORDER_TOL:g} (Rosenbrock) or <= the")
    out("  cost at the true parameters (the fit); ms: the whole call, first call included")
    out("")
    header = (f"{'backend':17s} {'device':14s} {'solver':30s} {'conv':>4s} {'nit':>4s} {'nfev':>5s} "
              f"{'final value':>12s} {'ms':>8s}")
    out(header)
    out("-" * len(header))
    for name, xp, device, sync in available_backends():
        if backends and name not in backends:
            continue
        if name == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)
        dt = xp.float64

        def rosen(x):
            return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2

        def rosen_grad(x):
            r = x[1] - x[0] ** 2
            return xp.stack([-2.0 * (1.0 - x[0]) - 400.0 * x[0] * r, 200.0 * r])

        def rosen_hess(x):
            return xp.stack([xp.stack([2.0 - 400.0 * (x[1] - 3.0 * x[0] ** 2), -400.0 * x[0]]),
                             xp.stack([-400.0 * x[0], xp.asarray(200.0, dtype=dt, device=device)])])

        tx = xp.asarray(t, dtype=dt, device=device)
        yx = xp.asarray(y, dtype=dt, device=device)

        def resid(p):
            return p[0] * xp.exp(-p[1] * tx) + p[2] - yx

        runs = [
            ("minimize newton rosenbrock",
             lambda: minimize(rosen, xp.asarray([-1.2, 1.0], dtype=dt, device=device), method="newton",
                              jac=rosen_grad, hess=rosen_hess),
             lambda r: float(r.fun), SECOND_ORDER_TOL),
            ("minimize newton-cg rosenbrock",
             lambda: minimize(rosen, xp.asarray([-1.2, 1.0], dtype=dt, device=device), method="newton-cg",
                              jac=rosen_grad, hess=rosen_hess),
             lambda r: float(r.fun), SECOND_ORDER_TOL),
            ("least_squares lm exp-decay fit",
             lambda: least_squares(resid, xp.asarray([1.0, 1.0, 0.0], dtype=dt, device=device)),
             lambda r: float(r.cost), fit_bound),
        ]
        for label, run, value, bound in runs:
            t0 = time.perf_counter()
            res = run()
            sync(res.x)
            ms = (time.perf_counter() - t0) * 1e3
            v = value(res)
            nit = res.get("nit", -1)
            ok = bool(res.success) and math.isfinite(v) and v <= bound
            row = dict(backend=name, device=_device_name(name, device), solver=label,
                       nit=int(nit) if nit is not None else -1, nfev=int(res.nfev), value=v, ms=ms,
                       success=bool(res.success), converged=ok)
            rows.append(row)
            out(f"{name:17s} {row['device']:14s} {label:30s} {'yes' if ok else 'no':>4s} {row['nit']:4d} "
                f"{row['nfev']:5d} {v:12.4e} {ms:8.1f}")
            if not res.success:
                raise RuntimeError(f"{label} on {name} failed: {res.message}")
    return rows
