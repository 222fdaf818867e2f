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

__all__ = ["available_backends", "missing_backends", "run_tour", "run_second_order_tour", "converged", "OPTIMIZERS",
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
    out: list[tuple[str, Any, Any, Callable[[Any], None]]] = []
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


def missing_backends() -> list[str]:
    """The backends agnopt supports whose package is not importable here (their
    rows are absent from the tour), with the extra or package that brings each."""
    import importlib.util

    wanted = [("array_api_strict", "array-api-strict (the test extra)"),
              ("torch", "torch (the torch extra)"), ("jax", "jax (the jax extra)"),
              ("dask", "dask (the test extra)"), ("cupy", "cupy (a CUDA machine)")]
    return [what for mod, what in wanted if importlib.util.find_spec(mod) is None]


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


def _float64_backends(backends: list[str] | None):
    """``available_backends()`` narrowed to ``backends``, JAX switched to float64."""
    for name, xp, device, sync in available_backends():
        if backends and name not in backends:
            continue
        if name == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)
        yield name, xp, device, sync


def _header(out, header: str) -> None:
    out(header)
    out("-" * len(header))


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
    out("steps: the steps run; final loss: after them; first ms: the first step alone")
    out("  (on JAX: the jit compilation); us/step: the mean of the others. JAX rows run under jax.jit, whose fused arithmetic")
    out("  rounds differently from eager code (eager JAX equals NumPy), which first-order paths on Rosenbrock")
    out("  can show in the third digit")
    missing = missing_backends()
    if missing:
        out(f"not installed here, so not in the table: {', '.join(missing)}")
    out("")
    header = (f"{'backend':17s} {'device':14s} {'optimizer':18s} {'problem':11s} {'conv':>4s} "
              f"{'steps':>6s} {'final loss':>11s} {'first ms':>9s} {'us/step':>9s}")
    _header(out, header)
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
        out("Rosenbrock's curved valley takes first-order methods thousands of steps to reach 1e-6 of the start")
        out("  gap (rows marked 'no'); Newton's method below converges in about 25 iterations.")
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
    out(f"  y_i = 2.5 exp(-1.3 t_i) + 0.5 + 0.01 sin(7 i), t_i = 0.25 i, i = 0..39 (cost at the true parameters "
        f"{fit_bound:.4e},")
    out("  an upper bound of the minimum)")
    out(f"conv: the solver reports success and the final value is <= {SECOND_ORDER_TOL:g} (Rosenbrock) or <= the")
    out("  cost at the true parameters (the fit); nit: iterations, nfev: function evaluations; ms: the whole")
    out("  call, first call included (on JAX that is mostly compiling each operation: seconds, not a slow solver)")
    out("")
    header = (f"{'backend':17s} {'device':14s} {'solver':30s} {'conv':>4s} {'nit':>4s} {'nfev':>5s} "
              f"{'final value':>12s} {'ms':>8s}")
    _header(out, header)
    for name, xp, device, sync in _float64_backends(backends):
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
             lambda: least_squares(resid, xp.asarray([1.0, 1.0, 0.0], dtype=dt, device=device),
                                   method="lm"),
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


# --------------------------------------------------------------------------- beyond diagonals
# The rotated quadratic: 0.5 (x - c)^T Q diag(h) Q^T (x - c) with x a 4 x 4 matrix
# (16 parameters), h from 1 to 1e3 and Q a fixed random rotation, so that no
# coordinate scaling fits the curvature. Learning rates: the best of a scan
# 0.01 ... 1 on NumPy (full-matrix Adagrad is rotation invariant and reaches
# the minimum; the others stall at their step size's noise floor).
INVARIANT_OPTIMIZERS: dict[str, Callable[[], Any]] = {
    "adam (reference)": lambda: _ao().adam(0.3),
    "full_matrix_adagrad": lambda: _ao().full_matrix_adagrad(1.0),
    "shampoo": lambda: _ao().shampoo(0.03),
    "soap": lambda: _ao().soap(0.03),
    "muon": lambda: _ao().muon(0.03, weight_decay=0.0),
}
INVARIANT_STEPS = 300
INVARIANT_DASK_STEPS = 20


def _ao():
    import agnopt

    return agnopt


def _rotated_quadratic(xp: Any, device: Any, dtype: Any):
    """(x0 (4, 4), loss, grad, start loss) of the rotated quadratic on ``xp``."""
    import array_api_compat.numpy as np_xp

    n = 16
    # a fixed rotation: QR of a deterministic matrix (no random state needed)
    M = np_xp.asarray([[math.sin(1.0 + 3.0 * i + 7.0 * j + 0.1 * i * j) for j in range(n)]
                       for i in range(n)])
    Q, _ = np_xp.linalg.qr(M)
    h = np_xp.asarray([10.0 ** (3.0 * i / (n - 1)) for i in range(n)])
    H = xp.asarray((Q * h) @ Q.T, dtype=dtype, device=device)
    c = xp.asarray([math.cos(2.0 * i) for i in range(n)], dtype=dtype, device=device)

    def loss(W):
        d = xp.reshape(W, (n,)) - c
        return 0.5 * xp.sum(d * (H @ d))

    def grad(W):
        return xp.reshape(H @ (xp.reshape(W, (n,)) - c), (4, 4))

    x0 = xp.zeros((4, 4), dtype=dtype, device=device)
    return x0, loss, grad


def run_invariant_tour(backends: list[str] | None = None, out=print) -> list[dict]:
    """Optimizers that precondition with more than a diagonal, on every backend.

    Part 1: Adam (for reference), full-matrix Adagrad, Shampoo, SOAP and Muon
    on the rotated quadratic (minimum 0). Part 2: a logistic regression
    (Bernoulli likelihood) solved by ``fisher_scoring`` and stepped by the
    ``natural_gradient`` transform; its minimum is the maximum-likelihood fit,
    whose gradient is zero. One row each.
    """
    ao = _ao()
    rows = []
    out("Beyond diagonal preconditioners: the rotated quadratic 0.5 (x-c)^T Q diag(h) Q^T (x-c), x a 4x4")
    out("  matrix, h from 1 to 1e3, Q a fixed rotation (minimum 0 at x = c; start loss at x = 0 below);")
    out(f"  {INVARIANT_STEPS} steps ({INVARIANT_DASK_STEPS} on dask); conv, start, final as above; ms: the "
        "whole run. Then a logistic regression (30 points,")
    out("  2 parameters) by fisher_scoring and by 30 natural_gradient steps; conv: ||gradient|| <= 1e-6.")
    out("")
    header = (f"{'backend':17s} {'device':14s} {'method':22s} {'conv':>4s} {'steps':>6s} "
              f"{'start':>10s} {'final':>11s} {'ms':>9s}")
    _header(out, header)
    for name, xp, device, sync in _float64_backends(backends):
        dt = xp.float64
        n_steps = INVARIANT_DASK_STEPS if name == "dask" else INVARIANT_STEPS
        for opt_name, make in INVARIANT_OPTIMIZERS.items():
            x0, loss, grad = _rotated_quadratic(xp, device, dt)
            opt = make()
            start = float(loss(x0))
            t0 = time.perf_counter()
            x, s = x0, opt.init(x0)
            for i in range(n_steps):
                u, s = opt.update(grad(x), s, x)
                x = apply_updates(x, u)
                if name == "dask" and i % 10 == 9:
                    x, s = _persist((x, s))
            sync(x)
            ms = (time.perf_counter() - t0) * 1e3
            final = float(loss(x))
            ok = converged(final, start)
            rows.append(dict(backend=name, device=_device_name(name, device), method=opt_name,
                             steps=n_steps, start_loss=start, final_loss=final, converged=ok, ms=ms))
            out(f"{name:17s} {_device_name(name, device):14s} {opt_name:22s} {'yes' if ok else 'no':>4s} "
                f"{n_steps:6d} {start:10.4g} {final:11.3e} {ms:9.1f}")
        rows.extend(_logistic_rows(ao, name, xp, device, sync, out))
    out("")
    out("Full-matrix Adagrad is invariant to rotations of the parameters: the rotation costs it nothing and it")
    out("  reaches the minimum to rounding. Adam (whose diagonal also converges on this small problem) and the")
    out("  Kronecker-factored methods see a curvature that is not aligned with their factors; Shampoo, SOAP and")
    out("  Muon keep a fixed step size and end near the minimum, not at it. Muon's orthogonalized steps at a")
    out("  fixed size do not settle, so rounding differences between backends grow along its path (its rows")
    out(f"  agree across backends for the first steps, not after {INVARIANT_STEPS}). This part runs a fixed "
        "number of steps (--steps applies to the first table).")
    return rows


def _logistic_rows(ao, name, xp, device, sync, out) -> list[dict]:
    """fisher_scoring and natural_gradient on one logistic regression."""
    m = 30
    t = [-2.0 + 4.0 * i / (m - 1) for i in range(m)]
    X = xp.asarray([[1.0, ti] for ti in t], dtype=xp.float64, device=device)
    y = xp.asarray([1.0 if math.sin(3.0 * i) + ti > 0.2 else 0.0 for i, ti in enumerate(t)],
                   dtype=xp.float64, device=device)

    def p(w):
        return 1.0 / (1.0 + xp.exp(-(X @ w)))

    def gnorm(w):
        g = X.T @ (p(w) - y)
        return float(xp.sqrt(xp.sum(g * g)))

    rows = []
    w0 = xp.zeros((2,), dtype=xp.float64, device=device)
    t0 = time.perf_counter()
    res = ao.fisher_scoring(p, w0, y, family="bernoulli")
    sync(res.x)
    runs = [("fisher_scoring", int(res.nit), res.x, time.perf_counter() - t0)]
    opt = ao.natural_gradient(1.0, model=p, family="bernoulli")
    w, s = w0, opt.init(w0)
    t0 = time.perf_counter()
    for _ in range(30):
        u, s = opt.update(X.T @ (p(w) - y), s, w)
        w = apply_updates(w, u)
    sync(w)
    runs.append(("natural_gradient", 30, w, time.perf_counter() - t0))
    start = gnorm(w0)
    for method, steps, wf, sec in runs:
        final = gnorm(wf)
        ok = final <= 1e-6
        rows.append(dict(backend=name, device=_device_name(name, device), method=method, steps=steps,
                         start_loss=start, final_loss=final, converged=ok, ms=sec * 1e3))
        out(f"{name:17s} {_device_name(name, device):14s} {method:22s} {'yes' if ok else 'no':>4s} "
            f"{steps:6d} {start:10.4g} {final:11.3e} {sec * 1e3:9.1f}")
    return rows
