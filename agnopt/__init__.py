"""agnopt: numerical optimizers written once against the Python Array API standard.

The same code runs on NumPy, CuPy, PyTorch, JAX, Dask and array-api-strict
arrays (through ``array-api-compat``).
"""

from ._backend import Backend, is_writeable, resolve
from ._base import EmptyState, Transform, apply_updates, chain, identity
from ._result import OptimizeResult
from ._tree import (
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
# --- end second-order solvers ---

__version__ = "0.1.0"
