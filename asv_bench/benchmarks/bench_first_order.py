"""One step of the first-order optimizers (``agnopt.step``: fast paths where they exist)."""

from __future__ import annotations

import numpy as np

import agnopt as ao

from .common import BACKENDS, grid, leaves_of, load

OPTIMIZERS = {
    "sgd-momentum": lambda: ao.sgd(1e-3, momentum=0.9),
    "adagrad": lambda: ao.adagrad(1e-2),
    "rmsprop": lambda: ao.rmsprop(1e-3),
    "adam": lambda: ao.adam(1e-3),
    "adamw": lambda: ao.adamw(1e-3),
}


class FirstOrderStep:
    """``ao.step`` on one array or a tree of 100 leaves of the same total size."""

    params = (
        BACKENDS,
        grid(list(OPTIMIZERS), ["adam"]),
        grid([100_000, 1_000_000, 10_000_000], [1_000]),
        grid(["float32", "float64"], ["float32"]),
        grid(["array", "tree100"], ["array", "tree100"]),
    )
    param_names = ["backend", "optimizer", "N", "dtype", "layout"]
    timeout = 600
    number = 1
    repeat = (3, 20, 30.0)

    def setup(self, backend, optimizer, N, dtype, layout):
        xp, device, sync = load(backend)
        if backend in ("dask", "array_api_strict") and N > 1_000_000:
            raise NotImplementedError("too slow to be useful at this size")
        rng = np.random.default_rng(0)
        leaves = 1 if layout == "array" else 100
        n = N // leaves
        dt = getattr(xp, dtype)

        def arr(a):
            return xp.asarray(a.astype(dtype), dtype=dt, device=device)

        if leaves == 1:
            self.p, self.g = arr(rng.standard_normal(n)), arr(1e-3 * rng.standard_normal(n))
        else:
            self.p = {f"l{i:03d}": arr(rng.standard_normal(n)) for i in range(leaves)}
            self.g = {k: arr(1e-3 * rng.standard_normal(n)) for k in self.p}
        self.opt = OPTIMIZERS[optimizer]()
        self.s = self.opt.init(self.p)
        self.sync = sync
        self.time_step()  # warm-up: numba compilation, JAX tracing, caches

    def time_step(self, *args):
        self.p, self.s = ao.step(self.opt, self.p, self.g, self.s)
        self.sync(leaves_of(self.p))

    def peakmem_step(self, *args):
        for _ in range(2):
            self.time_step()


class StepOverhead:
    """The Python overhead of one ``ao.step`` / ``Optimizer.step`` on N = 10 parameters.

    Each timing is 1000 steps (goal: under 10 us per step on NumPy); the tree
    layout is a dict of 100 leaves of 1000 elements (per-leaf overhead).
    """

    params = (BACKENDS, list(OPTIMIZERS), ["array10", "tree100x1000"])
    param_names = ["backend", "optimizer", "layout"]
    number = 1
    repeat = (3, 10, 20.0)

    def setup(self, backend, optimizer, layout):
        xp, device, sync = load(backend)
        if backend in ("dask", "jax", "array_api_strict"):
            raise NotImplementedError("no fast path: the overhead is the generic path's")
        dt = xp.float32

        def arr(a):
            return xp.asarray(a.astype("float32"), dtype=dt, device=device)

        if layout == "array10":
            self.p, self.g = arr(np.ones(10)), arr(np.full(10, 1e-3))
        else:
            self.p = {f"l{i:03d}": arr(np.ones(1000)) for i in range(100)}
            self.g = {k: arr(np.full(1000, 1e-3)) for k in self.p}
        self.opt = OPTIMIZERS[optimizer]()
        self.s = self.opt.init(self.p)
        p2 = arr(np.ones(10)) if layout == "array10" else {k: arr(np.ones(1000)) for k in self.p}
        self.o = ao.Optimizer(OPTIMIZERS[optimizer](), p2)
        self.sync = sync
        self.time_step_x1000()

    def time_step_x1000(self, *args):
        p, s, opt, g = self.p, self.s, self.opt, self.g
        for _ in range(1000):
            p, s = ao.step(opt, p, g, s)
        self.p, self.s = p, s
        self.sync(leaves_of(p))

    def time_optimizer_step_x1000(self, *args):
        o, g = self.o, self.g
        for _ in range(1000):
            o.step(g)
        self.sync(leaves_of(o.params))


class TreeOverArray:
    """The issue-14 target as one figure: ``ao.step`` (Adam, NumPy float32) on a dict of
    100 leaves of 1000 elements over the same step on one array of 1e5 elements
    (goal: 1.3), timed alternately in the same rounds (``agnopt bench``'s
    ``step_overhead``)."""

    unit = "ratio"
    number = 1
    repeat = 1
    timeout = 300

    def setup(self):
        if not hasattr(ao, "step"):
            raise NotImplementedError("agnopt.step is not available")

    def track_tree100_over_array_N1e5(self):
        from agnopt._cli.bench import tree_over_array

        return tree_over_array(100_000)["ratio"]

    def track_tree100_new_grads_over_array_N1e5(self):
        """The same, with new gradient arrays at every step (copied by the fused step)."""
        from agnopt._cli.bench import tree_over_array

        return tree_over_array(100_000)["ratio_new"]
