"""Fused in-place kernels behind :func:`agnopt.step`: ``common`` (the shared
set-up: reading a chain's state, checking what a kernel can run), ``cpu``
(numba or blocked NumPy), ``torch_kernel`` and ``cupy_kernel``. Each is an
accelerator of the generic transforms and is tested equal to them."""
