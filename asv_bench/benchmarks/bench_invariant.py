"""One step of Adam, Shampoo, SOAP and Muon on one square matrix parameter (issue 13).

Shampoo and SOAP recompute eigendecompositions every ``precondition_frequency``
steps: ``time_plain_step`` times a step that reuses them, ``time_refresh_step``
one that recomputes them (the amortized cost is
``(refresh + (f - 1) * plain) / f``; ``python -m agnopt bench --invariant``
prints it). States are pure values, so the same state is stepped again.
"""

from __future__ import annotations

import numpy as np

import agnopt as ao

from .common import BACKENDS, grid, load

OPTIMIZERS = {
    "adam": lambda: ao.adam(1e-3),
    "shampoo": lambda: ao.shampoo(1e-3, precondition_frequency=10),
    "soap": lambda: ao.soap(1e-3, precondition_frequency=10),
    "muon": lambda: ao.muon(1e-3, weight_decay=0.0),
}


class InvariantStep:
    """``update`` of one optimizer on an n x n float32 matrix."""

    params = (
        BACKENDS,
        grid(list(OPTIMIZERS), ["shampoo", "muon"]),
        grid([256, 1024], [32]),
    )
    param_names = ["backend", "optimizer", "n"]
    timeout = 600
    number = 1
    repeat = (3, 10, 30.0)

    def setup(self, backend, optimizer, n):
        xp, device, sync = load(backend)
        if backend in ("dask", "array_api_strict") and n > 256:
            raise NotImplementedError("too slow to be useful at this size")
        rng = np.random.default_rng(0)
        dt = xp.float32
        self.p = xp.asarray(rng.standard_normal((n, n)).astype("float32"), dtype=dt, device=device)
        self.g = xp.asarray((1e-3 * rng.standard_normal((n, n))).astype("float32"), dtype=dt, device=device)
        self.opt = OPTIMIZERS[optimizer]()
        self.s0 = self.opt.init(self.p)
        _, self.s1 = self.opt.update(self.g, self.s0, self.p)  # count 1: no refresh
        self.sync = sync
        self.time_plain_step()  # warm-up

    def _step(self, s):
        u, _ = self.opt.update(self.g, s, self.p)
        self.sync(u)

    def time_plain_step(self, *args):
        self._step(self.s1)

    def time_refresh_step(self, *args):
        self._step(self.s0)
