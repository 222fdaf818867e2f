"""Fused in-place kernels behind :func:`agnopt.step`: ``common`` (the shared
set-up: reading a chain's state, checking what a kernel can run), ``cpu``
(numba or blocked NumPy), ``torch_kernel`` and ``cupy_kernel``; and
``lm_cpu`` and ``lm_route``, numba blocks of the Levenberg-Marquardt engine
for one float64 NumPy problem (the verdict on a step; the step route and
trial point). Each is an accelerator of the generic code and is tested
equal to it."""
