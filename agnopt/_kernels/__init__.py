"""Fused in-place kernels behind :func:`agnopt.step`: ``common`` (the shared
set-up: reading a chain's state, checking what a kernel can run), ``cpu``
(numba or blocked NumPy), ``torch_kernel`` and ``cupy_kernel``; and
``lm_cpu`` and ``lm_route``, numba blocks of the Levenberg-Marquardt engine
for one float64 NumPy problem (the verdict on a step; the step route and
trial point). Each is an accelerator of the generic code and is tested
equal to it."""

import importlib as _importlib
import sys as _sys


def loaded(name: str):
    """``agnopt._kernels.<name>`` where an import of it has finished in this process,
    else ``None`` (never imported, or another thread is still running its import:
    a partially initialized module lacks the names defined below the line it is
    at, so ``sys.modules`` alone is not enough)."""
    mod = _sys.modules.get(__name__ + "." + name)
    if mod is None or getattr(getattr(mod, "__spec__", None), "_initializing", False):
        return None
    return mod


def module(name: str):
    """``agnopt._kernels.<name>``, imported on first use (numba with it) and remembered
    once the import has finished, so that a later solve pays a dictionary lookup.
    ``importlib.import_module`` waits for another thread's import of the module
    (``sys.modules`` alone gave a partially initialized module to a second thread:
    "no attribute 'applies'", tests/test_kernel_threads.py)."""
    mod = _MODULES.get(name)
    if mod is None:
        mod = _MODULES[name] = _importlib.import_module(__name__ + "." + name)
    return mod


_MODULES: dict = {}  # name -> agnopt._kernels.<name>, fully imported
