"""Backends for the benchmarks: ``(xp, device, sync)`` or NotImplementedError (asv skips).

``AGNOPT_ASV_SMOKE=1`` shrinks every parameter grid to its smallest case
(what ``.ci/run`` runs with ``--quick --dry-run`` so the suite cannot rot).
"""

from __future__ import annotations

import os

BACKENDS = ["numpy", "array_api_strict", "torch", "dask", "jax", "cupy", "torch-cuda"]
SMOKE = os.environ.get("AGNOPT_ASV_SMOKE", "") not in ("", "0")


def grid(full, smoke):
    return smoke if SMOKE else full


def load(name):
    """``(xp, device, sync)`` for backend ``name``; NotImplementedError when unavailable."""
    try:
        if name == "numpy":
            import array_api_compat.numpy as xp

            return xp, "cpu", lambda x: None
        if name == "array_api_strict":
            import array_api_strict as xp

            return xp, xp.Device("CPU_DEVICE"), lambda x: None
        if name in ("torch", "torch-cuda"):
            import torch
            import array_api_compat.torch as xp

            if name == "torch":
                return xp, torch.device("cpu"), lambda x: None
            if not torch.cuda.is_available():
                raise NotImplementedError("torch has no CUDA device here")
            return xp, torch.device("cuda"), lambda x: torch.cuda.synchronize()
        if name == "dask":
            import array_api_compat.dask.array as xp
            import dask

            def sync(x):
                leaves = x if isinstance(x, list) else [x]
                dask.compute(*leaves)

            return xp, None, sync
        if name == "jax":
            import jax
            import jax.numpy as xp

            jax.config.update("jax_enable_x64", True)
            return xp, jax.devices("cpu")[0], lambda x: jax.block_until_ready(x)
        if name == "cupy":
            import cupy
            import array_api_compat.cupy as xp

            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise NotImplementedError("no CUDA device")
            return xp, cupy.cuda.Device(0), lambda x: cupy.cuda.Device().synchronize()
    except ImportError as e:
        raise NotImplementedError(f"{name}: {e}")
    except NotImplementedError:
        raise
    except Exception as e:  # e.g. a CUDA runtime without a driver
        raise NotImplementedError(f"{name}: {type(e).__name__}: {e}")
    raise NotImplementedError(name)


def leaves_of(tree):
    import agnopt as ao

    return ao.tree_leaves(tree)
