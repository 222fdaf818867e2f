"""First-order optimizers as optax-style transforms.

``base`` (Transform, chain, apply_updates), ``transforms`` (the building
blocks: scale_by_adam, scale_by_rms, clip_by_global_norm, ...), ``alias``
(sgd, adam, ... as chains of those blocks; each alias also declares the state
layout its fused kernel reads), ``schedules``, ``finite`` (apply_if_finite)
and ``step`` (the in-place ``step`` / ``Optimizer`` front end that dispatches
to :mod:`agnopt._kernels`).
"""
