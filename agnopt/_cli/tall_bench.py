"""Benchmark: tall Gauss-Newton on a ``dask.distributed`` cluster (``python -m agnopt tall-bench``).

Times one Gauss-Newton iteration (one pass over the data: ``J^T J``,
``J^T f`` and ``||f||^2`` reduced blockwise, :func:`agnopt.tall_least_squares`)
for ``m`` rows and ``n`` parameters on a ``LocalCluster`` of 1 and 2 worker
processes (one thread each), and reports the peak resident memory of each
worker (``ru_maxrss`` of the worker process: data loading and the fit,
everything included) next to the size ``J`` would have if it were
materialised.

The model is ``y = exp(sum_k c_k P_k(t))`` with Legendre polynomials
``P_k`` (``n`` parameters), on ``(t, y)`` rows generated block by block on the
workers and persisted there (two float64 columns: ``16 m`` bytes); the
residuals and the Jacobian are computed chunk by chunk with ``map_blocks``.
A fresh cluster is started for every configuration so that the peaks are not
carried over.

Options: ``--sizes 1e6,1e7 --workers 1,2 --n 10 --rows 250000 --iters 4
--memory-limit 4GiB``. Requires ``distributed``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np


def _legendre(t, n):
    P = np.empty((n, t.shape[0]))
    P[0] = 1.0
    if n > 1:
        P[1] = t
    for k in range(2, n):
        np.multiply(t, P[k - 1], out=P[k])
        P[k] *= (2 * k - 1) / k
        P[k] -= ((k - 1) / k) * P[k - 2]
    return P


def _c_true(n):
    return 0.4 * (-0.6) ** np.arange(n)


def _gen_block(ids, rows, n, seed=11):
    rng = np.random.default_rng([seed, int(ids[0])])
    t = rng.uniform(-1.0, 1.0, rows)
    y = np.exp(_c_true(n) @ _legendre(t, n)) + 0.01 * rng.standard_normal(rows)
    return np.stack([t, y], axis=1)


def _f_chunk(data, x):
    return np.exp(x @ _legendre(np.ascontiguousarray(data[:, 0]), x.shape[0])) - data[:, 1]


def _j_chunk(data, x):
    P = _legendre(np.ascontiguousarray(data[:, 0]), x.shape[0])
    P *= np.exp(x @ P)
    return P.T


def dataset(m: int, n: int, rows: int):
    """The lazy ``(m, 2)`` dataset ``(t, y)``, chunked by ``rows``."""
    import dask.array as da

    nb = -(-m // rows)
    sizes = (rows,) * (m // rows) + ((m % rows,) if m % rows else ())
    ids = da.arange(nb, chunks=1)
    data = ids.map_blocks(lambda i, block_info=None: _gen_block(
        i, block_info[None]["chunk-shape"][0], n), chunks=(sizes, (2,)), new_axis=1,
        dtype=np.float64)
    return data


def problem(data):
    """``(fun, jac)``: the tall residuals and Jacobian over ``data``, chunk by chunk."""

    def fun(x):
        return data.map_blocks(_f_chunk, x, drop_axis=1, dtype=np.float64)

    def jac(x):
        return data.map_blocks(_j_chunk, x, chunks=(data.chunks[0], (x.shape[0],)),
                               dtype=np.float64)

    return fun, jac


def _peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_one(m: int, n: int, workers: int, rows: int, iters: int, memory_limit: str) -> dict:
    from distributed import Client, LocalCluster, wait

    from .._least_squares import tall_least_squares

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      memory_limit=memory_limit, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        data = client.persist(dataset(m, n, rows))
        wait(data)
        fun, jac = problem(data)
        x0 = np.zeros(n)
        t0 = time.perf_counter()
        res = tall_least_squares(fun, x0, jac=jac, method="gauss-newton",
                                 max_nfev=iters, ftol=1e-15, xtol=1e-15, gtol=0.0)
        wall = time.perf_counter() - t0
        peaks = list(client.run(_peak_rss).values())
    return dict(m=m, n=n, workers=workers, passes=res.njev, nit=res.nit, wall=wall,
                per_iter=wall / res.njev, peaks=peaks, J_bytes=m * n * 8, cost=res.cost)


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(prog="python -m agnopt tall-bench", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e6,1e7", help="comma-separated m values")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--n", type=int, default=10, help="number of parameters")
    ap.add_argument("--rows", type=int, default=250_000, help="rows per chunk")
    ap.add_argument("--iters", type=int, default=4, help="Gauss-Newton passes per configuration")
    ap.add_argument("--memory-limit", default="4GiB", help="memory limit per worker")
    a = ap.parse_args(argv)
    sizes = [int(float(s)) for s in a.sizes.split(",")]
    workers = [int(w) for w in a.workers.split(",")]
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise SystemExit("python -m agnopt tall-bench needs dask.distributed: pip install distributed")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"tall Gauss-Newton, n = {a.n}, {a.rows} rows per chunk, {a.iters} passes per run, "
          f"LocalCluster (processes, 1 thread per worker, limit {a.memory_limit}); "
          f"{os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"{'m':>10s} {'workers':>7s} {'s/iter':>8s} {'passes':>6s} {'J if materialised':>18s} "
          f"{'peak RSS per worker':>22s}")
    rows = []
    for w in workers:
        for m in sizes:
            r = run_one(m, a.n, w, a.rows, a.iters, a.memory_limit)
            rows.append(r)
            peaks = ", ".join(f"{p / 2**20:.0f}" for p in r["peaks"])
            print(f"{m:>10.0e} {w:>7d} {r['per_iter']:>8.2f} {r['passes']:>6d} "
                  f"{r['J_bytes'] / 2**20:>14.0f} MiB {peaks:>18s} MiB", flush=True)
    return rows


if __name__ == "__main__":
    main()
