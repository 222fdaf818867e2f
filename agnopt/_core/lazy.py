"""Laziness, Dask and host transfers: the one place that decides them.

Every solver asks this module, and only this module, whether arrays are lazy
(Dask graphs; JAX tracers under ``jit``), how to materialize them, and how to
bring a small array to the host for dense linear algebra that the lazy
backend lacks. The predicates build on array-api-compat's own
(``is_dask_namespace``, ``is_dask_array``, ``is_lazy_array``,
``is_writeable_array``) so that a new backend is recognised in one place.

Functions
---------
is_dask_namespace(xp), is_dask(a)
    Whether a namespace / an array is Dask's.
is_lazy(a)
    Whether reading the values of ``a`` needs a graph to be computed (Dask) or
    is impossible now (a JAX tracer).
persist(*arrays)
    Dask: compute and keep the arrays so graphs do not grow with iterations;
    identity for eager arrays.
compute(*arrays)
    One ``dask.compute`` for all Dask arrays among ``arrays`` (eager ones pass
    through); returns a tuple.
to_local(xp, a)
    ``(namespace, array)`` of a computed (in-memory) copy of a Dask array, for
    dense linear algebra Dask lacks; ``(xp, a)`` for eager backends.
host_floats(*arrays)
    Python floats of 0-d arrays, computed together for Dask.
is_traced(a), known_all(xp, a), known_none(xp, a)
    Whether ``a`` is a JAX tracer (inside a compiled block, see
    :func:`agnopt._core.backend.compiled`), and the host tests of exact
    shortcuts that such a block skips.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

__all__ = [
    "compute",
    "host_floats",
    "is_dask",
    "is_dask_namespace",
    "is_lazy",
    "is_traced",
    "known_all",
    "known_none",
    "persist",
    "to_local",
]


def is_dask_namespace(xp: Any) -> bool:
    """True for Dask's array namespace (``array_api_compat.dask.array``)."""
    return bool(array_api_compat.is_dask_namespace(xp))


def is_dask(a: Any) -> bool:
    """True for a Dask array."""
    return bool(array_api_compat.is_dask_array(a))


def is_lazy(a: Any) -> bool:
    """True where the values of ``a`` cannot be read without computing a graph
    (Dask) or at all for now (a JAX tracer inside ``jit``)."""
    if is_dask(a):
        return True
    if array_api_compat.is_jax_array(a):
        try:
            import jax

            return isinstance(a, jax.core.Tracer)
        except (ImportError, AttributeError):  # pragma: no cover
            return True
    return False


def persist(*arrays: Any) -> tuple:
    """Dask: compute and keep ``arrays`` (one ``dask.persist``); identity otherwise."""
    if not any(is_dask(a) for a in arrays):
        return arrays
    import dask

    return tuple(dask.persist(*arrays))


def compute(*arrays: Any) -> tuple:
    """One ``dask.compute`` for all of ``arrays`` (identity for eager arrays)."""
    if not any(is_dask(a) for a in arrays):
        return arrays
    import dask

    return tuple(dask.compute(*arrays))


def to_local(xp: Any, a: Any) -> tuple[Any, Any]:
    """``(namespace, array)`` for small dense linear algebra.

    A Dask array is computed into an in-memory array (NumPy or CuPy chunks)
    and returned with that array's own namespace; other arrays are returned
    with ``xp`` unchanged.
    """
    if is_dask(a):
        (loc,) = compute(a)
        return array_api_compat.array_namespace(loc), loc
    return xp, a


def host_floats(*arrays: Any) -> list[float]:
    """Python floats of 0-d arrays; for Dask, all in one ``dask.compute``."""
    return [float(v) for v in compute(*arrays)]


def is_traced(a: Any) -> bool:
    """True for a JAX tracer: an array inside a compiled block, whose values
    cannot be read on the host (``bool()`` / ``float()`` would raise)."""
    if not array_api_compat.is_jax_array(a):
        return False
    import jax

    return isinstance(a, jax.core.Tracer)


def known_all(xp: Any, a: Any) -> bool:
    """``bool(xp.all(a))``, or ``False`` where ``a`` is traced (values unknown).

    For shortcuts that are exact: the code after a ``False`` must give the
    same result as the shortcut when every element is in fact true, so that
    a compiled block (which cannot read ``a``) takes the general path and
    agrees with the eager one.
    """
    return not is_traced(a) and bool(xp.all(a))


def known_none(xp: Any, a: Any) -> bool:
    """``not bool(xp.any(a))``, or ``False`` where ``a`` is traced (see :func:`known_all`)."""
    return not is_traced(a) and not bool(xp.any(a))


def bounded_loop(xp: Any, body: Any, carry: Any, n: int, done: Any) -> Any:
    """``for it in range(n): carry = body(it, carry)``, ending early once every
    element of ``done(carry)`` is true (read on the host).

    For loops whose finished elements are frozen by ``body`` (so that the early
    exit is exact): where ``done(carry)`` is traced (inside a compiled JAX
    program) the loop is one ``jax.lax.while_loop`` (``it`` then a traced
    integer; its exit test ``~all(done)`` on the device) instead of ``n``
    unrolled copies of ``body``, which gives the same numbers.
    """
    d = done(carry)
    if is_traced(d):
        import jax

        def cond(c: Any) -> Any:
            it, inner = c
            return (it < n) & ~xp.all(done(inner))

        def step(c: Any) -> Any:
            it, inner = c
            new = body(it, inner)
            new = jax.tree_util.tree_map(lambda r, v: v.astype(r.dtype) if v.dtype != r.dtype
                                         else v, inner, new)
            return it + 1, new

        return jax.lax.while_loop(cond, step, (xp.asarray(0), carry))[1]
    for it in range(n):
        carry = body(it, carry)
        if known_all(xp, done(carry)):
            break
    return carry
