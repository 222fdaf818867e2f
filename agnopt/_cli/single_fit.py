"""Single small fits: ``curve_fit`` / ``least_squares`` against scipy's, one problem at a time.

``run_single_fit_benchmark()`` fits one 3-parameter exponential decay
``a exp(-b t) + c`` to 50 noisy points (issue 14's latency case) with agnopt
and with scipy, side by side in one process, and prints a table of the best
times and their ratios. Rows:

* ``curve_fit``, agnopt's default Jacobian (complex step) and ``"2-point"``,
  against ``scipy.optimize.curve_fit`` (MINPACK ``lmdif``: forward
  differences);
* ``least_squares`` (``method="lm"``), default Jacobian and ``"2-point"``,
  against ``scipy.optimize.least_squares(method="lm")`` (its default
  ``"2-point"``);
* ``least_squares`` (``method="lm"``) on JAX (agnopt's own: first call and
  later calls, with the plain model and with the model under ``jax.jit``,
  against agnopt's lm on NumPy in the same run) and ``curve_fit`` on JAX
  (against agnopt's ``curve_fit`` on NumPy) when JAX is installed;
* ``--peers``: optimistix's Levenberg-Marquardt under ``jax.jit`` (first call,
  which compiles, and later calls) when optimistix is installed, else a note.

The agnopt and reference calls are interleaved and the best of ``repeats``
is kept: on a shared machine the best time is the steadier figure. This is a
report, not a timed test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

__all__ = ["run_single_fit_benchmark"]


def _data(m: int = 50, seed: int = 0):
    import numpy as np

    t = np.linspace(0.0, 4.0, m)
    rng = np.random.default_rng(seed)
    y = 2.5 * np.exp(-1.3 * t) + 0.5 + 0.02 * rng.standard_normal(m)
    return t, y, np.array([1.0, 1.0, 1.0])


def best_pair(a: Callable[[], Any], b: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Best wall times of ``a`` and ``b``, interleaved, after one warm-up call each."""
    a()
    b()
    ta = tb = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta, tb = min(ta, t1 - t0), min(tb, t2 - t1)
    return ta, tb


def _first_and_best(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return first, best


def _jax_rows(t, y, p0, repeats: int, peers: bool) -> tuple[list[dict], list[str]]:
    rows: list[dict] = []
    notes: list[str] = []
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        notes.append("JAX not installed: no JAX rows")
        return rows, notes
    import agnopt as ao

    jax.config.update("jax_enable_x64", True)
    tj, yj, pj = jnp.asarray(t), jnp.asarray(y), jnp.asarray(p0)

    def res(p):
        return p[0] * jnp.exp(-p[1] * tj) + p[2] - yj

    import numpy as np

    def res_np(p):
        return p[0] * np.exp(-p[1] * t) + p[2] - y

    reps = max(3, repeats // 5)
    # the first call compiles agnopt's blocks (once per problem shape) and the
    # operations of ``res``; ``res`` itself runs eagerly, as the user wrote it
    first, best = _first_and_best(
        lambda: ao.least_squares(res, pj, method="lm").x.block_until_ready(), reps)
    _, ref = _first_and_best(lambda: ao.least_squares(res_np, p0, method="lm"), reps)
    rows.append({"case": "least_squares lm on JAX (agnopt)", "first": first, "best": best,
                 "numpy": ref})
    # a user who compiles the model: each evaluation is one call instead of ~8 operations
    res_jit = jax.jit(res)
    first, best = _first_and_best(
        lambda: ao.least_squares(res_jit, pj, method="lm").x.block_until_ready(), reps)
    rows.append({"case": "  same, fun = jax.jit(res)", "first": first, "best": best,
                 "numpy": ref})
    # curve_fit builds its residual anew for each call (around the data): the engine
    # solves, block by block (no whole-solve program)
    def model_j(x, a, b, c):
        return a * jnp.exp(-b * x) + c

    def model_n(x, a, b, c):
        return a * np.exp(-b * x) + c

    first, best = _first_and_best(
        lambda: jax.block_until_ready(ao.curve_fit(model_j, tj, yj, p0=pj)[0]), reps)
    _, ref_cf = _first_and_best(lambda: ao.curve_fit(model_n, t, y, p0=p0), reps)
    rows.append({"case": "curve_fit on JAX (agnopt)", "first": first, "best": best,
                 "numpy": ref_cf, "numpy_name": "agnopt curve_fit on NumPy"})
    if not peers:
        return rows, notes
    try:
        import optimistix as optx
    except ImportError:
        notes.append("optimistix not installed (pip install optimistix): peer row skipped")
        return rows, notes

    solver: Any = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)

    @jax.jit
    def solve(p):
        return optx.least_squares(lambda q, _: res(q), solver, p, max_steps=300).value

    first, best = _first_and_best(lambda: solve(pj).block_until_ready(), repeats)
    rows.append({"case": "optimistix LevenbergMarquardt under jax.jit", "first": first,
                 "best": best})
    return rows, notes


def run_single_fit_benchmark(repeats: int = 50, peers: bool = False,
                             verbose: bool = True) -> dict[str, Any]:
    """Time one small fit with agnopt and with scipy (and peers), and print the table.

    Parameters
    ----------
    repeats : int
        Timed calls of each contender (best of).
    peers : bool
        Also time optimistix's Levenberg-Marquardt under ``jax.jit`` (skipped,
        with a note, when optimistix is not installed).
    verbose : bool
        Print the table.

    Returns
    -------
    dict
        ``rows``: one dict per NumPy case (``case``, ``agnopt`` and
        ``reference`` best times in s, ``ratio`` = agnopt / reference,
        ``reference_name``); ``jax_rows``: ``case``, ``first`` (the first
        call, compilation included), ``best`` (s) and, for agnopt's rows,
        ``numpy`` (agnopt's lm on NumPy, s; ``numpy_name`` when another
        NumPy call); ``notes``; ``load_avg``;
        ``first_fits``: the first row's best time (s) over a process's first fits,
        before agnopt's numba blocks start (``None`` when they were on already or off).
    """
    import numpy as np
    import scipy.optimize as so

    import agnopt as ao

    t, y, p0 = _data()

    def model(x, a, b, c):
        return a * np.exp(-b * x) + c

    def res(p):
        return p[0] * np.exp(-p[1] * t) + p[2] - y

    cases = [
        ("curve_fit, default Jacobian", lambda: ao.curve_fit(model, t, y, p0=p0),
         "scipy curve_fit (lm)", lambda: so.curve_fit(model, t, y, p0=p0)),
        ("curve_fit, jac='2-point'", lambda: ao.curve_fit(model, t, y, p0=p0, jac="2-point"),
         "scipy curve_fit (lm)", lambda: so.curve_fit(model, t, y, p0=p0)),
        ("least_squares lm, default Jacobian", lambda: ao.least_squares(res, p0, method="lm"),
         "scipy least_squares lm", lambda: so.least_squares(res, p0, method="lm")),
        ("least_squares lm, jac='2-point'",
         lambda: ao.least_squares(res, p0, method="lm", jac="2-point"),
         "scipy least_squares lm", lambda: so.least_squares(res, p0, method="lm")),
        ("least_squares trf (default method)", lambda: ao.least_squares(res, p0),
         "scipy least_squares trf", lambda: so.least_squares(res, p0)),
    ]
    # agnopt's numba blocks for one problem start with the WARMUP-th unbatched fit of a
    # process (agnopt._kernels.lm_cpu): time the first fits' NumPy path, then go past it,
    # so that every row below is the steady state of a process that fits many times
    from .._kernels import lm_cpu

    early = None
    if lm_cpu.HAVE_NUMBA and lm_cpu._solves < lm_cpu.WARMUP and \
            os.environ.get("AGNOPT_FAST", "") not in ("0", "numpy", "numba"):
        fa = cases[0][1]
        early = min(best_pair(fa, fa, max(1, min(repeats, lm_cpu.WARMUP // 2 - 2))))
        for _ in range(lm_cpu.WARMUP):
            if lm_cpu._solves >= lm_cpu.WARMUP:
                break
            fa()
    rows: list[dict[str, Any]] = []
    for name, fa, rname, fr in cases:
        ta, tr = best_pair(fa, fr, repeats)
        rows.append({"case": name, "agnopt": ta, "reference": tr, "ratio": ta / tr,
                     "reference_name": rname})
    jax_rows, notes = _jax_rows(t, y, p0, repeats, peers)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if verbose:
        print(f"Single fits: a exp(-b t) + c, 50 points, 3 parameters; best of {repeats}; "
              f"load average {load:.2f}")
        print("  ratio = agnopt time / reference time (1 = as fast; above 1 = agnopt slower)")
        print(f"  {'case':38s} {'agnopt':>10s} {'reference':>10s} {'ratio':>7s}  reference")
        for r in rows:
            print(f"  {r['case']:38s} {r['agnopt'] * 1e3:8.3f}ms {r['reference'] * 1e3:8.3f}ms "
                  f"{r['ratio']:6.2f}x  {r['reference_name']}")
        for r in jax_rows:
            vs = (f" ({r['best'] / r['numpy']:.1f}x {r.get('numpy_name', 'agnopt lm on NumPy')}, "
                  f"{r['numpy'] * 1e3:.3f} ms)"
                  if "numpy" in r else "")
            print(f"  {r['case']:38s} first call {r['first']:.2f} s, later "
                  f"{r['best'] * 1e3:.3f} ms{vs}")
        if early is not None:
            print(f"  note: rows timed from the {lm_cpu.WARMUP}th fit of the process on, where agnopt's "
                  f"numba blocks run; a process's first fits take the NumPy path "
                  f"({early * 1e3:.3f} ms for the first row)")
        for n in notes:
            print(f"  note: {n}")
    return {"rows": rows, "jax_rows": jax_rows, "notes": notes, "load_avg": load,
            "first_fits": early}
