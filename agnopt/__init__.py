"""agnopt: numerical optimizers written once against the Python Array API standard.

The same code runs on NumPy, CuPy, PyTorch, JAX, Dask and array-api-strict
arrays (through ``array-api-compat``).
"""

from ._core.backend import Backend, is_writeable, resolve
from ._first_order.base import EmptyState, Transform, apply_updates, chain, identity
from ._core.errors import AutodiffUnavailableError, OptimizeWarning
from ._core.result import OptimizeResult
from ._core.status import Status
from ._first_order import schedules as schedules
from ._first_order.schedules import (
    constant,
    constant as constant_schedule,
    cosine_decay,
    exponential_decay,
    linear_schedule,
    linear_warmup,
    warmup_cosine_decay,
)
from ._first_order.transforms import (
    ScaleByAdamState,
    ScaleByRmsState,
    ScaleByRssState,
    ScaleByScheduleState,
    ScaleByStddevState,
    TraceState,
    add_decayed_weights,
    clip_by_global_norm,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_rss,
    scale_by_schedule,
    scale_by_sign,
    scale_by_stddev,
    trace,
)
from ._first_order.alias import adagrad, adam, adamw, rmsprop, sgd, sign_sgd
from ._first_order.step import Optimizer, step
# --- reparameterization-invariant first-order methods (issue 13) ---
from ._first_order.full_matrix_adagrad import (
    ScaleByFullMatrixAdagradState,
    full_matrix_adagrad,
    scale_by_full_matrix_adagrad,
)
from ._first_order.shampoo import ScaleByShampooState, scale_by_shampoo, shampoo
from ._first_order.soap import ScaleBySoapState, scale_by_soap, soap
from ._first_order.muon import MuonState, ScaleByMuonState, muon, scale_by_muon
# --- end reparameterization-invariant first-order methods ---
from ._first_order.finite import ApplyIfFiniteState, apply_if_finite
from ._core.checkpoint import load_state, load_state_dict, save_state, state_dict
from ._core.tree import (
    TreeDef,
    check_same_structure,
    tree_flatten,
    tree_leaves,
    tree_map,
    tree_paths,
    tree_structure,
    tree_unflatten,
)

# --- second-order solvers (each line owned by its module) ---
from ._derivatives.numdiff import approx_derivative
from ._least_squares import curve_fit, least_squares
from ._minimize import minimize
from ._least_squares import tall_least_squares
# --- end second-order solvers ---

# --- Fisher-matrix methods (natural gradient, Fisher scoring) ---
from ._fisher import families as families
from ._fisher.fisher_scoring import fisher_scoring
from ._first_order.natural_gradient import natural_gradient, scale_by_natural_gradient
# --- end Fisher-matrix methods ---

# --- types for annotations (agnopt.typing: Array, ArrayTree, Schedule, ...) ---
from . import typing as typing

__version__ = "0.1.0"
