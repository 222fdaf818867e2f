"""Derivatives for the second-order solvers: finite differences and the complex
step (``numdiff``), and the backends' automatic differentiation (``autodiff``,
torch and JAX)."""
