"""Backend matrix for the test suite.

Every test that takes the ``xp`` fixture runs once per backend in
:class:`BackendCase`. A backend that is not installed (or, for cupy and
torch-cuda, has no CUDA device) is reported as *skipped* with the reason,
never as a failure. ``AGNOPT_BACKENDS=numpy,torch`` narrows the matrix.

Tests receive ``xp`` (the Array API namespace) and can ask for the
``device`` fixture (the device to create arrays on). Helpers:

* ``to_numpy(x)``: any backend's array as a NumPy array (computes Dask).
* ``materialize(tree)``: for lazy backends (Dask), compute the graph so long
  loops do not grow it without bound; identity elsewhere.
"""

from __future__ import annotations

import enum
import importlib
import os

# Before anything imports JAX (the parity tests import it for optax, the JAX case
# of the matrix, subprocesses of `python -m agnopt` inherit this environment):
# on a CUDA machine JAX would otherwise grab 75% of the GPU's memory in every
# pytest-xdist worker at its first array, and the cupy / torch-cuda cases of the
# other workers then fail with out-of-memory (the first GPU run: 252 of its 307
# failures). The JAX case of the matrix and the optax references run on the CPU
# (``jax.devices("cpu")``), so JAX needs no GPU here at all; preallocation is
# also switched off in case a user points JAX_PLATFORMS at the GPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest


class BackendCase(enum.Enum):
    NUMPY = "numpy"
    ARRAY_API_STRICT = "array_api_strict"
    TORCH = "torch"
    DASK = "dask"
    JAX = "jax"
    CUPY = "cupy"
    TORCH_CUDA = "torch-cuda"

    def __str__(self) -> str:
        return self.value


def _load(case: BackendCase):
    """Return ``(xp, device)`` or raise ``pytest.skip``-able reason string."""
    if case is BackendCase.NUMPY:
        import array_api_compat.numpy as xp

        return xp, "cpu"
    if case is BackendCase.ARRAY_API_STRICT:
        try:
            import array_api_strict as xp
        except ImportError:
            return "array-api-strict is not installed"
        return xp, xp.Device("CPU_DEVICE")
    if case in (BackendCase.TORCH, BackendCase.TORCH_CUDA):
        try:
            import torch
            import array_api_compat.torch as xp
        except ImportError:
            return "torch is not installed"
        if case is BackendCase.TORCH:
            return xp, torch.device("cpu")
        if not torch.cuda.is_available():
            return "torch has no CUDA device here"
        return xp, torch.device("cuda")
    if case is BackendCase.DASK:
        try:
            import dask  # noqa: F401
            import array_api_compat.dask.array as xp
        except ImportError:
            return "dask is not installed"
        return xp, None
    if case is BackendCase.JAX:
        try:
            import jax

            jax.config.update("jax_enable_x64", True)
            import jax.numpy as xp
        except ImportError:
            return "jax is not installed"
        return xp, jax.devices("cpu")[0]
    if case is BackendCase.CUPY:
        try:
            import cupy
            import array_api_compat.cupy as xp
        except ImportError:
            return "cupy is not installed"
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "cupy has no CUDA device here"
        except Exception as e:  # no driver
            return f"cupy has no CUDA device here ({type(e).__name__})"
        return xp, cupy.cuda.Device(0)
    raise AssertionError(case)


def _selected() -> list[BackendCase]:
    env = os.environ.get("AGNOPT_BACKENDS")
    if not env:
        return list(BackendCase)
    names = [n.strip() for n in env.split(",") if n.strip()]
    out = []
    for n in names:
        try:
            out.append(BackendCase(n))
        except ValueError:
            raise pytest.UsageError(
                f"AGNOPT_BACKENDS: unknown backend {n!r}; choose from "
                + ", ".join(c.value for c in BackendCase)
            )
    return out


BACKENDS = _selected()
_cache: dict = {}


def load_backend(case: BackendCase):
    if case not in _cache:
        _cache[case] = _load(case)
    res = _cache[case]
    if isinstance(res, str):
        pytest.skip(f"{case.value}: {res}")
    return res


@pytest.fixture(params=BACKENDS, ids=str)
def backend(request):
    """``(case, xp, device)`` for one backend of the matrix."""
    case = request.param
    xp, dev = load_backend(case)
    return case, xp, dev


@pytest.fixture
def xp(backend):
    return backend[1]


@pytest.fixture
def device(backend):
    return backend[2]


def to_numpy(x):
    """Any supported backend's array as a NumPy array."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        return x.detach().cpu().numpy()
    if mod.startswith("cupy"):
        return x.get()
    if mod.startswith("dask"):
        return np.asarray(x.compute())
    if mod.startswith("array_api_strict"):
        return np.asarray(x._array)
    return np.asarray(x)


def materialize(tree):
    """Compute Dask leaves of a tree (keeps long loops' graphs small)."""
    from agnopt import tree_flatten, tree_unflatten

    leaves, treedef = tree_flatten(tree)
    if leaves and type(leaves[0]).__module__.startswith("dask"):
        import dask

        return tree_unflatten(treedef, list(dask.persist(*leaves)))
    return tree


def have(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


class _ParityRecorder:
    """Worst relative error per (reference, configuration, backend), printed at the end."""

    def __init__(self):
        self.results: dict = {}

    def record(self, reference: str, name: str, backend: str, err: float) -> None:
        key = (reference, name, backend)
        self.results[key] = max(err, self.results.get(key, 0.0))


PARITY = _ParityRecorder()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not PARITY.results:
        return
    tr = terminalreporter
    tr.section("trajectory parity (max relative error over 60 steps, 2 problems)")
    backends = sorted({b for (_, _, b) in PARITY.results})
    for ref in sorted({r for (r, _, _) in PARITY.results}):
        tr.write_line(f"vs {ref}:")
        tr.write_line(f"  {'configuration':40s}" + "".join(f"{b:>18s}" for b in backends))
        names = sorted({n for (r, n, _) in PARITY.results if r == ref})
        for n in names:
            cells = []
            for b in backends:
                v = PARITY.results.get((ref, n, b))
                cells.append(f"{v:18.1e}" if v is not None else f"{'-':>18s}")
            tr.write_line(f"  {n:40s}" + "".join(cells))
