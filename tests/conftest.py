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


# ---------------------------------------------------------------- costly cases
# The full backend matrix runs on small problems. A few dozen reference tests
# (whole fits, NIST problems, long trajectories, property sweeps) cost 5-90 s
# each on Dask (a task graph per array operation) and on JAX (a compilation per
# eager operation), most of the suite's time, for code that their NumPy,
# array-api-strict and torch cases already run line for line; those backend
# cases are skipped with this reason (each of Dask and JAX keeps its own tests
# of the same solvers, e.g. test_minimize.py::test_float32 on Dask,
# test_minimize.py::test_autodiff and test_jax_solve.py on JAX). The NIST
# default-Jacobian sweep also skips array-api-strict (numpy and torch run it).
# AGNOPT_FULL_MATRIX=1 runs them all. Chosen from `pytest --durations` (dask and
# jax cases of 5 s or more, stop 20).
COSTLY = {
    "array_api_strict": frozenset({
        "test_nist.py::test_nist_lm_default_jacobian",  # 25 s; numpy and torch run it
    }),
    "dask": frozenset({
        "test_nist.py::test_nist_lm_default_jacobian",
        # from the final clean-clone CI's --durations (stop 20): 8-20 s per case
        # (Dask keeps minimize through test_float32, test_rosen_helpers_match_scipy ...)
        "test_minimize.py::test_rosenbrock_2d",
        "test_properties.py::test_first_order_is_deterministic",
        # stop 20's new files: 4-12 s per Dask case (test_kink_batched keeps Dask's)
        "test_cs_check_kink.py::test_kink_users_case",
        "test_cs_check_kink.py::test_kink_curve_fit",
        "test_cs_check_kink.py::test_kink_bounded_columns",
        "test_cs_check_kink.py::test_kink_off_the_solution",
        "test_input_messages.py::test_negative_and_inf_sigma_as_scipy",
        "test_parity.py::test_matches_torch_optim",  # (test_matches_optax keeps Dask's parity)
        "test_curve_fit.py::test_covariance_sigma",
        "test_curve_fit.py::test_no_false_ftol_convergence_on_steps_cut_by_the_radius",
        "test_curve_fit_fixes.py::test_batched_nan_policy_omit_equals_solo_fits",
        "test_curve_fit_scipy_numerics.py::test_float32_fit_is_the_float32_solution",
        "test_first_order.py::test_converges",
        "test_first_order.py::test_low_precision_params_with_float32_state",
        "test_fisher_scoring.py::test_autodiff_and_callable_jac",
        "test_fisher_scoring.py::test_batched_equals_one_by_one",
        "test_fisher_scoring.py::test_categorical_softmax_regression",
        "test_fisher_scoring.py::test_far_start_needs_the_line_search",
        "test_fisher_scoring.py::test_gaussian_family_is_least_squares",
        "test_fisher_scoring.py::test_gaussian_mean_and_variance",
        "test_fisher_scoring.py::test_linear_reparameterization_equivariance",
        "test_fisher_scoring.py::test_weights_equal_repeated_observations",
        "test_fscale_rows.py::test_one_huge_row_leaves_the_others_alone",
        "test_invariant_optimizers.py::test_full_matrix_adagrad_power_minus_one_affine_invariance",
        "test_invariant_optimizers.py::test_left_right_rotation_invariance",
        "test_least_squares.py::test_batched_equals_solo",
        "test_least_squares.py::test_ftol_stops_where_every_step_is_limited",
        "test_lsq_engine.py::test_every_accepted_step_is_finite_and_downhill",
        "test_lsq_engine.py::test_projected_uphill_steps_are_rejected",
        "test_lsq_engine.py::test_stuck_on_a_bound_is_not_success",
        "test_minimize.py::test_derivative_sources",
        "test_minimize.py::test_saddle_is_not_a_minimum",
        "test_minimize_stationarity.py::test_fisher_scoring_short_step_far_from_a_minimum_is_not_success",
        "test_minimize_stationarity.py::test_legitimate_xtol_stop_is_success",
        "test_natural_gradient.py::test_gaussian_run_reaches_least_squares",
        "test_natural_gradient.py::test_natural_gradient_reparameterization_invariant_to_first_order",
        "test_nist.py::test_nist_certified_std_dev",
        "test_nonfinite_solvers.py::test_curve_fit_rejects_non_finite_trial_points",
        "test_nonfinite_solvers.py::test_least_squares_rejects_non_finite_trial_points",
        "test_numerics_edges.py::test_centered_rmsprop_constant_gradient_stays_finite",
        "test_properties.py::test_adam_invariant_to_gradient_scale",
        "test_properties.py::test_second_order_is_deterministic",
        "test_properties.py::test_update_is_pure",
        "test_scipy_compat.py::test_overflowing_residuals_are_scaled",
        "test_step_cache.py::test_tree_step_equals_flat_array_step",
        "test_trf_dogbox.py::test_issue_bounded_rosenbrock",
        "test_xtol_stationarity.py::test_dogbox_stop_on_a_saturated_model_is_not_success",
        "test_xtol_stationarity.py::test_ftol_xtol_stop_on_a_saturated_model_is_not_success",
        "test_xtol_stationarity.py::test_wrong_jacobian_stop_is_not_success",
    }),
    "jax": frozenset({
        # from the final clean-clone CI's --durations (stop 20): 8-11 s per case
        "test_minimize.py::test_rosenbrock_default_finite_differences",
        "test_numerics_properties.py::test_derivatives_through_every_transform_finite_at_zero",
        "test_fisher_scoring.py::test_gaussian_family_is_least_squares",
        "test_cs_check_kink.py::test_kink_bounded_columns",
        # (test_kink_batched and test_kink_jax_program keep JAX's)
        "test_cs_check_kink.py::test_kink_users_case",
        "test_cs_check_kink.py::test_kink_curve_fit",
        "test_cs_check_kink.py::test_kink_off_the_solution",
        "test_input_messages.py::test_negative_and_inf_sigma_as_scipy",
        "test_curve_fit.py::test_batched_failures_do_not_raise",
        "test_curve_fit.py::test_no_false_ftol_convergence_on_steps_cut_by_the_radius",
        "test_curve_fit_fixes.py::test_batched_nan_policy_omit_equals_solo_fits",
        "test_curve_fit_scipy_numerics.py::test_float32_fit_is_the_float32_solution",
        "test_fisher_scoring.py::test_batched_equals_one_by_one",
        "test_fisher_scoring.py::test_categorical_softmax_regression",
        "test_fisher_scoring.py::test_float32",
        "test_fisher_scoring.py::test_gaussian_mean_and_variance",
        "test_fisher_scoring.py::test_glm_mle",
        "test_fscale_rows.py::test_one_huge_row_leaves_the_others_alone",
        "test_least_squares.py::test_ftol_stops_where_every_step_is_limited",
        "test_lsq_engine.py::test_projected_uphill_steps_are_rejected",
        "test_lsq_engine.py::test_small_products_are_the_matrix_products",
        "test_lsq_engine.py::test_stuck_on_a_bound_is_not_success",
        "test_minimize_stationarity.py::test_finite_difference_gradient_stop_is_success",
        "test_minimize_stationarity.py::test_fisher_scoring_short_step_far_from_a_minimum_is_not_success",
        "test_natural_gradient.py::test_natural_gradient_reparameterization_invariant_to_first_order",
        "test_nist.py::test_nist_certified_std_dev",
        "test_numerics_properties.py::test_derivatives_through_every_transform_finite_at_zero",
        "test_properties.py::test_second_order_is_deterministic",
        "test_scipy_compat.py::test_overflowing_residuals_are_scaled",
        "test_trf_dogbox.py::test_batched_equals_solo",
        "test_xtol_stationarity.py::test_dogbox_stop_on_a_saturated_model_is_not_success",
    }),
}


def pytest_collection_modifyitems(config, items):
    if os.environ.get("AGNOPT_FULL_MATRIX", "") == "1":
        return
    for item in items:
        spec = getattr(item, "callspec", None)
        case = spec.params.get("backend") if spec is not None else None
        if not isinstance(case, BackendCase):
            continue
        name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        if name in COSTLY.get(case.value, ()):
            item.add_marker(pytest.mark.skip(
                reason=f"{case.value}: costly case, run on the cheaper backends (numpy, torch, "
                       "mostly array_api_strict; AGNOPT_FULL_MATRIX=1 runs it here too: "
                       "see COSTLY in conftest.py)"))


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
