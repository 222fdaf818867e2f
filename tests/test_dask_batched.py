"""Batched fits on Dask arrays chunked along the batch axis (one task per chunk).

* local (threaded scheduler): ``curve_fit(..., batched=True)`` with a Dask
  ``ydata`` and ``least_squares(..., batched=True)`` with a Dask ``x0`` give,
  fit by fit, exactly what the in-memory NumPy batched solve gives, with
  per-problem ``p0``, ``sigma`` and ``args`` following the row chunks; the
  graph has one solve task per chunk; results stay lazy until computed.
* cluster (``dask.distributed.LocalCluster``, 2 worker processes): fits
  generated on the workers equal the NumPy results computed in this process,
  fit by fit. The suite runs 2e5 fits (about 20 s here);
  ``AGNOPT_CLUSTER_FITS=1000000 python -m pytest -s tests/test_dask_batched.py``
  runs the 1e6 of the acceptance check and prints fits per second.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="dask is not installed")
import dask  # noqa: E402

import agnopt as ao  # noqa: E402

M = 30
T = np.linspace(-1.0, 1.0, M)


def peak(t, a, mu, s, c):
    return a * np.exp(-((t - mu) ** 2) / (2.0 * s**2)) + c


def peak_rows(X, y, t):
    """least_squares form: rows of parameters -> rows of residuals."""
    return peak(t, X[:, :1], X[:, 1:2], X[:, 2:3], X[:, 3:4]) - y


def make_data(B, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(1.0, 2.0, B)
    mu = rng.uniform(-0.3, 0.3, B)
    s = rng.uniform(0.2, 0.4, B)
    y = peak(T, a[:, None], mu[:, None], s[:, None], 0.1) + 0.01 * rng.standard_normal((B, M))
    return y


P0 = np.array([1.5, 0.0, 0.3, 0.0])


def test_curve_fit_chunks_equal_numpy_batched():
    y = make_data(600)
    sigma = np.random.default_rng(1).uniform(0.5, 2.0, y.shape)
    p0 = P0 + np.random.default_rng(2).uniform(-0.1, 0.1, (600, 4))
    ref = ao.curve_fit(peak, T, y, p0=p0, sigma=sigma, batched=True, full_output=True)
    out = ao.curve_fit(peak, T, da.from_array(y, chunks=(150, 10)), p0=da.from_array(p0, chunks=(200, 4)),
                       sigma=da.from_array(sigma, chunks=(100, M)), batched=True, full_output=True)
    popt, pcov, info, mesg, ier = out
    assert isinstance(popt, da.Array) and popt.chunks[0] == (150, 150, 150, 150)
    popt, pcov, info, ier = dask.compute(popt, pcov, info, ier)
    np.testing.assert_array_equal(popt, ref[0])
    np.testing.assert_array_equal(pcov, ref[1])
    for k in ("nfev", "status", "success", "nit", "njev", "fvec"):
        np.testing.assert_array_equal(info[k], ref[2][k])
    np.testing.assert_array_equal(ier, np.asarray(ref[4]))
    assert "status" in mesg


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::agnopt.OptimizeWarning")
def test_curve_fit_chunks_shared_p0_and_default_p0():
    y = make_data(300, seed=3)
    ref = ao.curve_fit(peak, T, y, p0=P0, batched=True)
    popt, pcov = ao.curve_fit(peak, T, da.from_array(y, chunks=(100, M)), p0=P0, batched=True)
    np.testing.assert_array_equal(popt.compute(), ref[0])
    # p0=None: ones with n read from the signature, as in memory
    ref1 = ao.curve_fit(peak, T, y, batched=True)
    np.testing.assert_array_equal(
        ao.curve_fit(peak, T, da.from_array(y, chunks=(100, M)), batched=True)[0].compute(), ref1[0])


def test_least_squares_chunks_equal_numpy_batched_with_chunked_args():
    B = 400
    y = make_data(B, seed=4)
    x0 = np.tile(P0, (B, 1))
    ref = ao.least_squares(peak_rows, x0, args=(y, T), batched=True)
    res = ao.least_squares(peak_rows, da.from_array(x0, chunks=(100, 4)),
                           args=(da.from_array(y, chunks=(50, M)), T), batched=True)
    assert isinstance(res.x, da.Array) and res.x.chunks[0] == (100,) * 4
    x, cost, status, success, nfev = dask.compute(res.x, res.cost, res.status, res.success, res.nfev)
    np.testing.assert_array_equal(x, ref.x)
    np.testing.assert_array_equal(cost, ref.cost)
    np.testing.assert_array_equal(status, ref.status)
    np.testing.assert_array_equal(success, ref.success)
    np.testing.assert_array_equal(nfev, ref.nfev)
    assert "status" in res.message


def test_one_task_per_chunk_and_lazy():
    """The solve is one task per chunk: the graph does not grow with iterations."""
    y = da.from_array(make_data(400, seed=5), chunks=(100, M))
    popt, _ = ao.curve_fit(peak, T, y, p0=P0, batched=True)
    names = [k[0] if isinstance(k, tuple) else k for k in dict(popt.__dask_graph__())]
    solves = {k for k in dict(popt.__dask_graph__()) if "_curve_fit_chunk" in str(k)}
    assert len(solves) == 4, names
    assert len(dict(popt.__dask_graph__())) < 40


def test_chunked_bad_input():
    y = da.from_array(make_data(40), chunks=(10, M))
    with pytest.raises(ValueError, match="p0"):
        ao.curve_fit(peak, T, y, p0=np.ones((39, 4)), batched=True)
    yu = y[y[:, 0] > -1e9]  # unknown chunk sizes
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        ao.curve_fit(peak, T, yu, p0=P0, batched=True)


# --------------------------------------------------------------------------- cluster
B_CLUSTER = int(os.environ.get("AGNOPT_CLUSTER_FITS", "200000"))
ROWS = 25_000  # 8 chunks at 2e5, 40 at 1e6


def gen_rows(block_id, rows=ROWS):
    """The rows of block ``block_id``: (rows, M) data, reproducible from the id."""
    rng = np.random.default_rng([11, int(block_id)])
    a = rng.uniform(1.0, 2.0, rows)
    mu = rng.uniform(-0.3, 0.3, rows)
    s = rng.uniform(0.2, 0.4, rows)
    return peak(T, a[:, None], mu[:, None], s[:, None], 0.1) + 0.01 * rng.standard_normal((rows, M))


def _gen_block(block_id=None):
    return gen_rows(block_id[0])


@pytest.mark.slow
def test_cluster_fits_equal_numpy():
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    nblocks = -(-B_CLUSTER // ROWS)
    n_fits = nblocks * ROWS
    y = da.map_blocks(_gen_block, dtype=np.float64, chunks=((ROWS,) * nblocks, (M,)))
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    client = distributed.Client(cluster)
    try:
        t0 = time.perf_counter()
        popt, pcov, info, _, _ = ao.curve_fit(peak, T, y, p0=P0, batched=True, full_output=True)
        popt, status = client.compute([popt, info["status"]], sync=True)
        t_cluster = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
    t0 = time.perf_counter()
    for i in range(nblocks):
        ref = ao.curve_fit(peak, T, gen_rows(i), p0=P0, batched=True, full_output=True)
        sl = slice(i * ROWS, (i + 1) * ROWS)
        np.testing.assert_array_equal(popt[sl], ref[0])
        np.testing.assert_array_equal(status[sl], ref[2]["status"])
    t_numpy = time.perf_counter() - t0
    print(f"\n{n_fits} fits: 2-worker LocalCluster {n_fits / t_cluster:,.0f} fits/s "
          f"({t_cluster:.1f} s); one process (NumPy, chunk by chunk, comparison included) "
          f"{n_fits / t_numpy:,.0f} fits/s ({t_numpy:.1f} s)")
    assert np.mean(status > 0) > 0.99
