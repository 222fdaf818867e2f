"""The working set of a batched solve (agnopt._least_squares.batched.WorkingSet): the
rows of the problems set aside come back in their places."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy

from agnopt._least_squares.batched import WorkingSet, compactable


def test_field_where_gathers_the_masked_rows_alone(xp, device):
    if not compactable(xp):
        pytest.skip("no working set on JAX or Dask (batched.compactable): finished rows stay")
    B = 11
    rng = np.random.default_rng(0)
    vals = rng.standard_normal((B, 3, 2))
    # three pieces (the last one the final working set), indices out of order overall
    parts = [np.array([0, 4, 7]), np.array([2, 3, 9, 10]), np.array([1, 5, 6, 8])]
    a = lambda v, dt=xp.float64: xp.asarray(v, dtype=dt, device=device)
    ws = WorkingSet(xp, B, device)
    ws.pieces = [(a(W, xp.int64), (a(vals[W]),)) for W in parts[:-1]]
    ws.W = a(parts[-1], xp.int64)
    (full,) = ws.assemble((a(vals[parts[-1]]),))
    assert np.array_equal(to_numpy(full), vals)
    base = rng.standard_normal((B, 3, 2))
    for mask in (np.zeros(B, bool), np.ones(B, bool), rng.uniform(size=B) < 0.3,
                 np.arange(B) == 9):
        out = to_numpy(ws.field_where(0, a(mask, xp.bool), a(base)))
        assert np.array_equal(out, np.where(mask[:, None, None], vals, base)), mask
