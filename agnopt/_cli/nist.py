"""NIST StRD nonlinear regression: the certification run of :func:`least_squares`.

``nist_report()`` solves the 27 problems of the NIST Statistical Reference
Datasets (nonlinear regression) from both official starting points and prints
the LRE table (log relative error, NIST's measure: ``-log10(|est - cert| /
|cert|)``, minimum over parameters, capped at 15).

The data file (``nist_strd.json``, public-domain data of NIST, see
``data/NIST_STRD_README.md`` beside this module) ships with agnopt as package
data; ``$AGNOPT_NIST_STRD`` may name another copy.

Run it as ``python -m agnopt nist [--method lm] [--backend numpy]``.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["load_nist", "nist_report", "nist_problem"]


def _data_path() -> Path:
    env = os.environ.get("AGNOPT_NIST_STRD")
    cands = ([Path(env)] if env else []) + [Path(__file__).resolve().parent / "data" / "nist_strd.json"]
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(
        "nist_strd.json not found; set AGNOPT_NIST_STRD to its path (tried "
        + ", ".join(str(c) for c in cands) + ")"
    )


def load_nist() -> list[dict]:
    """The 27 problems (dicts as in the JSON file), in NIST's order."""
    with open(_data_path()) as fh:
        return json.load(fh)["problems"]


def _namespace(backend: str):
    modules = {"numpy": "array_api_compat.numpy", "array_api_strict": "array_api_strict",
               "torch": "array_api_compat.torch", "jax": "jax.numpy",
               "dask": "array_api_compat.dask.array", "cupy": "array_api_compat.cupy"}
    if backend not in modules:
        raise ValueError(f"backend: unknown {backend!r}")
    if backend == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    return importlib.import_module(modules[backend])


def nist_problem(p: dict, xp: Any, dtype: Any = None):
    """``(fun, model, x, resp)`` for a NIST problem on namespace ``xp``.

    ``fun(b)`` is the residual ``resp - model(x, b)`` (``b`` an array);
    ``model(x, *b)`` is the curve_fit form.
    """
    dtype = xp.float64 if dtype is None else dtype
    x = xp.asarray(p["x"], dtype=dtype)
    y = xp.asarray(p["y"], dtype=dtype)
    resp = eval(p["response_python"], {"xp": xp, "y": y})  # noqa: S307 - trusted data file
    code = compile(p["model_python"], p["name"], "eval")

    def fun(b):
        return resp - eval(code, {"xp": xp, "x": x, "b": b})  # noqa: S307

    def model(xx, *b):
        return eval(code, {"xp": xp, "x": xx, "b": b})  # noqa: S307

    return fun, model, x, resp


def lre(est: list[float], cert: list[float]) -> float:
    """NIST's log relative error, minimum over parameters, capped at 15."""
    out = 15.0
    for e, c in zip(est, cert):
        if not math.isfinite(e):
            return -math.inf
        err = abs(e - c)
        v = 15.0 if err == 0 else -math.log10(err / abs(c))
        out = min(out, v)
    return min(out, 15.0)


def _tolist(a) -> list[float]:
    if hasattr(a, "compute"):
        a = a.compute()
    mod = type(a).__module__
    if mod.startswith("torch"):
        a = a.detach().cpu()
    if mod.startswith("cupy"):
        a = a.get()
    if mod.startswith("array_api_strict"):
        return [float(a[i]) for i in range(a.shape[0])]
    return [float(v) for v in a.tolist()]


def nist_report(
    method: str = "lm",
    backend: str = "numpy",
    names: list[str] | None = None,
    starts: tuple[str, ...] = ("start1", "start2"),
    tol: float = 1e-15,
    verbose: bool = True,
    solver: Any = None,
    **kwargs: Any,
) -> list[dict]:
    """Run ``least_squares`` on the NIST StRD problems and print the LRE table.

    Each run is ``least_squares(fun, start, method=method, xtol=tol,
    ftol=tol, gtol=tol, **kwargs)`` with the default Jacobian unless
    ``kwargs`` says otherwise. Returns one dict per (problem, start):
    ``name, difficulty, start, lre, status, nfev, success, seconds``.
    Lanczos1 is judged on its parameters (its certified RSS, 1.4e-25, is
    below what 11-digit values reproduce; see the data README).
    ``solver``: another function with ``least_squares``' signature (e.g.
    ``scipy.optimize.least_squares``, the reference table), numpy only.
    """
    from .._least_squares import least_squares

    if solver is not None:
        least_squares = solver

    xp = _namespace(backend)
    rows = []
    for p in load_nist():
        if names is not None and p["name"] not in names:
            continue
        fun, _, _, _ = nist_problem(p, xp)
        for st in starts:
            x0 = xp.asarray(p[st], dtype=xp.float64)
            t0 = time.perf_counter()
            try:
                r = least_squares(fun, x0, method=method, xtol=tol, ftol=tol, gtol=tol, **kwargs)
                est = _tolist(r.x)
                row = dict(name=p["name"], difficulty=p["difficulty"], start=st,
                           lre=lre(est, p["certified_values"]), status=int(r.status),
                           nfev=int(r.nfev), success=bool(r.success), error=None)
            except Exception as e:  # reported, never hidden
                row = dict(name=p["name"], difficulty=p["difficulty"], start=st,
                           lre=-math.inf, status=None, nfev=None, success=False,
                           error=f"{type(e).__name__}: {e}")
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
    if verbose:
        who = "least_squares" if solver is None else f"{solver.__module__}.{solver.__name__}"
        extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
        print(format_table(rows, f"NIST StRD, {who}(method={method!r}{extra}), backend {backend}"))
    return rows


def format_table(rows: list[dict], title: str = "") -> str:
    by: dict[str, Any] = {}
    for r in rows:
        by.setdefault(r["name"], {})[r["start"]] = r
    lines = [title] if title else []
    lines.append(f"{'problem':10s} {'level':8s} | {'start1 LRE':>10s} {'st':>3s} {'nfev':>5s} | "
                 f"{'start2 LRE':>10s} {'st':>3s} {'nfev':>5s}")
    for name, d in by.items():
        cells = []
        for st in ("start1", "start2"):
            r = d.get(st)
            if r is None:
                cells.append(f"{'-':>10s} {'':>3s} {'':>5s}")
            elif r["error"]:
                cells.append(f"{'ERROR':>10s} {'':>3s} {'':>5s}")
            else:
                cells.append(f"{r['lre']:10.1f} {r['status']:3d} {r['nfev']:5d}")
        diff = next(iter(d.values()))["difficulty"]
        lines.append(f"{name:10s} {diff:8s} | " + " | ".join(cells))
    ok = sum(1 for r in rows if r["lre"] >= 6)
    lines.append(f"LRE >= 6: {ok} of {len(rows)} runs; LRE >= 4: "
                 f"{sum(1 for r in rows if r['lre'] >= 4)}; errors: "
                 f"{sum(1 for r in rows if r['error'])}")
    lines.append("LRE: digits agreeing with NIST's certified values, -log10(|est - cert| / |cert|) "
                 "of the worst parameter; 6 or more counts as solved.")
    lines.append("st: the status (agnopt.Status): 1 gtol, 2 ftol, 3 xtol, 4 ftol and xtol are "
                 "success; 0 (max_nfev) and negatives are failures. nfev: residual evaluations.")
    return "\n".join(lines)


def main(method: str = "lm", backend: str = "numpy", scipy_reference: bool = False) -> list[dict]:
    """The command ``python -m agnopt nist``: the LRE table, overflow warnings of rejected trial points silenced.

    ``scipy_reference``: then also scipy's ``least_squares`` with the same
    method and tolerances and ``jac="3-point"`` (its best finite
    differences) on NumPy, the reference table.
    """
    import warnings

    # Trial points far from the solution overflow exp() in several models:
    # those steps are rejected by the solver; the warnings are noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = nist_report(method, backend)
        if scipy_reference:
            from scipy.optimize import least_squares as scipy_least_squares

            print()
            nist_report(method, "numpy", solver=scipy_least_squares, jac="3-point")
        return rows
