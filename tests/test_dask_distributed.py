"""Scale-out on Dask: tall least squares and first-order steps on chunked parameters.

Two groups:

* local (threaded Dask scheduler, always run when dask is installed): the tall
  solver gives the same iterates as ``agnopt.least_squares`` on the in-memory
  problem, does exactly one ``dask.compute`` per pass, validates its input;
  the first-order optimizers step Dask parameters without any compute.
* cluster (``dask.distributed.LocalCluster``: 2 worker processes, one thread
  each, a small memory limit): a tall Gauss-Newton / LM fit whose Jacobian
  is larger than one worker's memory limit equals an independent in-memory
  NumPy solve of the full problem to 1e-10 relative; a first-order run on
  chunked parameters equals the NumPy run. Skipped (with the reason) when
  ``distributed`` is not installed.
"""

from __future__ import annotations

import math
import resource
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="dask is not installed")
import dask  # noqa: E402
from dask.callbacks import Callback  # noqa: E402

import agnopt as ao  # noqa: E402
from agnopt import tall_least_squares  # noqa: E402


class CountComputes(Callback):
    """Counts the computations run by the local Dask schedulers."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def _start(self, dsk):
        self.n += 1


# --------------------------------------------------------------------------- the model
# y = exp(sum_k c_k P_k(t)) + noise, t ~ U(-1, 1): nonlinear in c, well conditioned
# (Legendre basis), data are two columns (t, y) while J has N_PAR columns.
N_PAR = 8
C_TRUE = np.array([0.3, 0.5, -0.2, 0.15, 0.1, -0.1, 0.08, 0.05])


def legendre(t, n=N_PAR):
    """``(n, rows)``: P_0(t) ... P_{n-1}(t), one contiguous row per degree."""
    P = np.empty((n, t.shape[0]))
    P[0] = 1.0
    if n > 1:
        P[1] = t
    for k in range(2, n):
        np.multiply(t, P[k - 1], out=P[k])
        P[k] *= (2 * k - 1) / k
        P[k] -= ((k - 1) / k) * P[k - 2]
    return P


def gen_block(ids, rows, seed=7):
    """The rows of block ``ids[0]``: columns (t, y), reproducible from the block id."""
    rng = np.random.default_rng([seed, int(ids[0])])
    t = rng.uniform(-1.0, 1.0, rows)
    y = np.exp(C_TRUE @ legendre(t)) + 0.002 * rng.standard_normal(rows)
    return np.stack([t, y], axis=1)


def f_chunk(data, x):
    t, y = data[:, 0], data[:, 1]
    return np.exp(x @ legendre(t)) - y


def j_chunk(data, x):
    P = legendre(data[:, 0])
    P *= np.exp(x @ P)
    return P.T  # (rows, n), Fortran order: J_i^T J_i is a fast BLAS product


def dask_data(m, rows):
    nb = m // rows
    ids = da.arange(nb, chunks=1)
    return ids.map_blocks(gen_block, rows, chunks=((rows,) * nb, (2,)), new_axis=1,
                          dtype=np.float64)


def dask_problem(data):
    def fun(x):
        return data.map_blocks(f_chunk, x, drop_axis=1, dtype=data.dtype)

    def jac(x):
        return data.map_blocks(j_chunk, x, chunks=(data.chunks[0], (x.shape[0],)),
                               dtype=data.dtype)

    return fun, jac


def numpy_reference(m, rows, x0, iters=40):
    """Gauss-Newton on the full problem in memory, each step an exact least-squares
    solve by QR (TSQR: the R factor of [J | -f] accumulated block by block, an
    independent method from the normal equations of the tall solver)."""
    x = np.array(x0, dtype=np.float64)
    blocks = [gen_block([b], rows) for b in range(m // rows)]
    for _ in range(iters):
        R = np.zeros((0, N_PAR + 1))
        for d in blocks:
            P = legendre(d[:, 0])
            e = np.exp(x @ P)
            M = np.concatenate([R, np.concatenate([(P * e).T, (d[:, 1] - e)[:, None]], axis=1)])
            R = np.linalg.qr(M, mode="r")
        dx = np.linalg.solve(R[:N_PAR, :N_PAR], R[:N_PAR, N_PAR])
        x = x + dx
        if np.linalg.norm(dx) <= 1e-15 * np.linalg.norm(x):
            break
    return x


# Tight tolerances: scipy's ftol/xtol conditions may stop up to ~sqrt(eps) away from
# the minimizer (in the norm of J); the gradient tests stop at the fixed point to
# rounding. GN's gtol is absolute (||J^T f||_inf, which scales with m; its rounding
# floor is ~ eps * m * mean|f| ~ 4e-19 m here); LM's is the largest cosine.
def tight(method, m):
    if method == "gauss-newton":
        return dict(ftol=1e-15, xtol=1e-15, gtol=2e-15 * m)
    return dict(ftol=2.3e-16, xtol=2.3e-16, gtol=1e-11)


X0 = np.full(N_PAR, 0.1)


def rel_err(x, ref):
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


# --------------------------------------------------------------------------- local (threaded)
def _small_problem(m=6000, rows=1000):
    data = dask_data(m, rows)
    fun, jac = dask_problem(data)
    d = data.compute()
    return fun, jac, (lambda x: f_chunk(d, x)), (lambda x: j_chunk(d, x))


@pytest.mark.parametrize("method", ["gauss-newton", "lm"])
def test_tall_matches_least_squares_and_one_compute_per_pass(method):
    fun, jac, nfun, njac = _small_problem()
    x0 = X0
    kw = dict(method=method, **tight(method, 6000))
    with CountComputes() as cc:
        res = tall_least_squares(fun, x0, jac=jac, **kw)
    ref = ao.least_squares(nfun, x0, jac=njac, **kw)
    assert res.success and ref.success
    assert rel_err(res.x, ref.x) <= 1e-10
    np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-13)
    passes = res.njev if method == "gauss-newton" else res.nfev + res.njev - 1
    assert cc.n == passes  # one dask.compute per pass, nothing hidden
    assert isinstance(res.x, np.ndarray) and res.x.shape == (N_PAR,)
    assert isinstance(res.fun, da.Array) and isinstance(res.jac, da.Array)  # lazy
    assert sorted(res) == sorted(ref)  # the same result fields
    np.testing.assert_allclose(res.grad, ref.grad, atol=1e-9)


@pytest.mark.parametrize("jac", ["2-point", "3-point"])
def test_tall_finite_differences(jac):
    fun, _, nfun, njac = _small_problem()
    res = tall_least_squares(fun, np.zeros(N_PAR), jac=jac, ftol=1e-12, xtol=1e-12)
    ref = ao.least_squares(nfun, np.zeros(N_PAR), jac=njac, method="gauss-newton",
                           ftol=1e-12, xtol=1e-12)
    assert res.success
    # the finite-difference Jacobian's error (about eps^(1/2) for forward,
    # eps^(2/3) ~ 4e-11 for central differences, relative) reaches x through
    # the conditioning of J: 1e-9 sat at the rounding level of the central case
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-6 if jac == "2-point" else 1e-8)


def test_tall_numpy_residuals_and_callback():
    """Eager residuals run the same code; a callback stops with status -2."""
    _, _, nfun, njac = _small_problem()
    seen = []
    def cb(intermediate_result):  # scipy's convention: this name gets the OptimizeResult
        seen.append(intermediate_result.nit)
        return intermediate_result.nit >= 2

    res = tall_least_squares(nfun, [0.0] * N_PAR, jac=njac, method="lm", callback=cb)
    assert res.status == -2 and not res.success and seen[-1] == 2


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_tall_bad_input():
    fun, jac, _, _ = _small_problem()
    with pytest.raises(ValueError, match="method"):
        tall_least_squares(fun, np.zeros(N_PAR), jac=jac, method="trf")
    with pytest.raises(ValueError, match="jac"):
        tall_least_squares(fun, np.zeros(N_PAR), jac="cs")
    with pytest.raises(ValueError, match="x0"):
        tall_least_squares(fun, np.zeros((2, N_PAR)), jac=jac)
    with pytest.raises(ValueError, match="ftol"):
        tall_least_squares(fun, np.zeros(N_PAR), jac=jac, method="lm", ftol=0.0)
    with pytest.raises(ValueError, match=r"jac: expected an array of shape"):
        tall_least_squares(fun, np.zeros(N_PAR), jac=lambda x: jac(x)[:, :3])
    with pytest.raises(ValueError, match="not finite at the initial point"):
        tall_least_squares(lambda x: fun(x) + np.inf, np.zeros(N_PAR), jac=jac)
    with pytest.raises(ZeroDivisionError):  # fun's own exception (as scipy), with a note
        tall_least_squares(lambda x: 1 / 0, np.zeros(N_PAR), jac=jac)


# First-order optimizers on chunked parameters
def _fo_problem(xp_mod):
    rng = np.random.default_rng(3)
    a = {"w": rng.uniform(0.5, 2.0, (120, 50)), "b": rng.uniform(0.5, 2.0, (30,))}
    tgt = {"w": rng.standard_normal((120, 50)), "b": rng.standard_normal((30,))}
    p0 = {"w": rng.standard_normal((120, 50)), "b": rng.standard_normal((30,))}
    if xp_mod == "dask":
        ch = {"w": (40, 25), "b": (10,)}
        conv = lambda tree: {k: da.from_array(v, chunks=ch[k]) for k, v in tree.items()}  # noqa: E731
        a, tgt, p0 = conv(a), conv(tgt), conv(p0)

    def grad(p):  # of sum(0.5 a (p - t)^2 + 0.25 p^4)
        return {k: a[k] * (p[k] - tgt[k]) + p[k] ** 3 for k in p}

    return p0, grad


OPTIMIZERS = {
    "adam": lambda: ao.adam(0.05),
    "adamw-amsgrad": lambda: ao.adamw(0.05, amsgrad=True),
    "sgd-nesterov": lambda: ao.sgd(0.02, momentum=0.9, nesterov=True, weight_decay=0.01),
    "rmsprop-centered": lambda: ao.rmsprop(0.01, centered=True, momentum=0.5),
    "adagrad": lambda: ao.adagrad(0.1),
    "adam-schedule-clip": lambda: ao.chain(
        ao.clip_by_global_norm(5.0), ao.adam(ao.warmup_cosine_decay(0.0, 0.05, 3, 20))),
}


def _run_first_order(opt, p, grad, steps):
    st = opt.init(p)
    for _ in range(steps):
        u, st = opt.update(grad(p), st, p)
        p = ao.apply_updates(p, u)
    return p, st


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_first_order_lazy_on_chunked_params(name):
    p0, grad = _fo_problem("dask")
    with CountComputes() as cc:
        p, st = _run_first_order(OPTIMIZERS[name](), p0, grad, 15)
    assert cc.n == 0, f"{cc.n} hidden computes in the steps"
    # ao.step / Optimizer.step persist params and state: exactly one computation per step
    # (documented; keeps the graph from growing with the number of steps, issue 15 item 7)
    with CountComputes() as cc:
        ao.step(OPTIMIZERS[name](), p0, grad(p0), OPTIMIZERS[name]().init(p0))
        opt = ao.Optimizer(OPTIMIZERS[name](), p0)
        for _ in range(3):
            opt.step(grad(opt.params))
    assert cc.n == 4, f"{cc.n} computes in 4 persisted steps"
    for k in p0:
        assert p[k].chunks == p0[k].chunks
    for leaf in ao.tree_leaves(st):
        if leaf.ndim:  # moments: chunked like their parameter
            assert leaf.chunks in (p0["w"].chunks, p0["b"].chunks)
    (pc, stc) = dask.compute(p, st)
    pn0, gradn = _fo_problem("numpy")
    pn, stn = _run_first_order(OPTIMIZERS[name](), pn0, gradn, 15)
    for k in pn:
        np.testing.assert_allclose(pc[k], pn[k], rtol=1e-13, atol=1e-15)
    for a, b in zip(ao.tree_leaves(stc), ao.tree_leaves(stn)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-15)


def test_first_order_init_state_chunked_like_params():
    p0, _ = _fo_problem("dask")
    st = ao.adam(0.1).init(p0)
    assert st[1].mu["w"].chunks == p0["w"].chunks


def test_apply_if_finite_no_hidden_compute():
    p0, grad = _fo_problem("dask")
    with CountComputes() as cc:
        _run_first_order(ao.apply_if_finite(ao.adam(0.05), 3), p0, grad, 3)
    assert cc.n == 0


# --------------------------------------------------------------------------- the cluster
MEMORY_LIMIT = 256 * 2**20  # bytes per worker
M_TALL = 4_500_000  # J: 4.5e6 x 8 float64 = 275 MiB > one worker's limit
ROWS = 125_000  # 36 row chunks; one J chunk is 8 MB


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip(
        "distributed", reason="dask.distributed is not installed (pip install distributed)")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit=MEMORY_LIMIT,
        dashboard_address=None, silence_logs=40)
    cl = distributed.Client(cluster)
    try:
        yield cl
    finally:
        cl.close()
        cluster.close()


def _peak_rss(client):
    """Peak resident memory of each worker process so far (bytes; Linux reports KiB).

    ``ru_maxrss`` can include memory inherited from the process that started
    the worker (in a long pytest session it reports the parent's peak), so
    it is printed for information; the memory bound is checked with
    :func:`_worker_pids` (the nanny kills a worker past its limit) and the
    current RSS.
    """
    return client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _worker_pids(client):
    import os

    return client.run(os.getpid)


def _current_rss(client):
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    return client.run(rss)


@pytest.fixture(scope="module")
def tall_reference():
    return numpy_reference(M_TALL, ROWS, X0)


@pytest.fixture(scope="module")
def tall_data(client):
    data = client.persist(dask_data(M_TALL, ROWS))
    from distributed import wait

    wait(data)
    return data


@pytest.mark.parametrize("method", ["gauss-newton", "lm"])
def test_cluster_tall_fit_equals_in_memory_numpy(client, tall_data, tall_reference, method):
    fun, jac = dask_problem(tall_data)
    x0 = X0
    J_bytes = M_TALL * N_PAR * 8
    assert J_bytes > MEMORY_LIMIT
    calls = []

    def counting_get(dsk, keys, **kw):
        calls.append(1)
        return client.get(dsk, keys, **kw)

    pids_before = _worker_pids(client)
    t0 = time.perf_counter()
    with dask.config.set(scheduler=counting_get):
        res = tall_least_squares(fun, x0, jac=jac, method=method, **tight(method, M_TALL))
    wall = time.perf_counter() - t0
    passes = res.njev if method == "gauss-newton" else res.nfev + res.njev - 1
    assert len(calls) == passes
    assert res.status in (1, 2, 3, 4), res.message
    rel = rel_err(res.x, tall_reference)
    rel_max = np.max(np.abs(res.x - tall_reference) / np.abs(tall_reference))
    peak = _peak_rss(client)
    print(f"\n{method}: m={M_TALL} n={N_PAR} J={J_bytes / 2**20:.0f} MiB, worker limit "
          f"{MEMORY_LIMIT / 2**20:.0f} MiB; {passes} passes, {wall:.1f} s; rel. error "
          f"{rel:.1e} (largest per component {rel_max:.1e}); peak RSS per worker (MiB): "
          + ", ".join(f"{v / 2**20:.0f}" for v in peak.values()))
    assert rel <= 1e-10
    # the nanny terminates a worker that passes 95% of its limit: the same
    # worker processes before and after means none went over it
    assert _worker_pids(client) == pids_before
    assert all(v < MEMORY_LIMIT for v in _current_rss(client).values())
    assert len(client.scheduler_info()["workers"]) == 2  # no worker was restarted


def test_cluster_first_order_equals_numpy(client):
    p0, grad = _fo_problem("dask")
    calls = []

    def counting_get(dsk, keys, **kw):
        calls.append(1)
        return client.get(dsk, keys, **kw)

    with dask.config.set(scheduler=counting_get):
        p, st = _run_first_order(ao.adam(0.05, amsgrad=True), p0, grad, 12)
        assert not calls  # lazy: no compute in the steps
        pc, stc = dask.compute(p, st)
    assert len(calls) == 1
    pn0, gradn = _fo_problem("numpy")
    pn, stn = _run_first_order(ao.adam(0.05, amsgrad=True), pn0, gradn, 12)
    for k in pn:
        np.testing.assert_allclose(pc[k], pn[k], rtol=1e-13, atol=1e-15)
    for a, b in zip(ao.tree_leaves(stc), ao.tree_leaves(stn)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-15)
    assert math.isfinite(float(np.sum(pc["w"])))
