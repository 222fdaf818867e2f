r"""Batched fits on Dask arrays chunked along the batch axis: one task per chunk.

A survey of spectra or an image stack of pixels holds ``B = 1e6 .. 1e8``
independent small fits, more than one process wants to hold. When ``x0`` (for
:func:`agnopt.least_squares`) or ``ydata`` (for :func:`agnopt.curve_fit`) is a
Dask array chunked along its first (batch) axis and ``batched=True``, each
chunk of rows is an ordinary in-memory batched solve (a Dask batch in a single
row chunk stays on the lazy Array API path): this module turns every
chunk into one task that computes its rows' inputs (NumPy or CuPy blocks) on a
worker, runs the same in-memory engine there, and returns the chunk's results.
The graph has one task per chunk and nothing per iteration; the results are
Dask arrays chunked like the input, so they stay on the workers until the
caller computes or persists them. It runs on whatever scheduler is active: an
existing ``dask.distributed`` ``Client`` included.

Which rows a chunk sees
    ``ydata`` / ``x0`` rows of the chunk; ``p0``, ``sigma`` and Dask arrays in
    ``args`` / ``kwargs`` whose first axis has length ``B`` are sliced to the
    same rows (they are rechunked to ``x0``'s / ``ydata``'s row chunks);
    everything else (``xdata``, bounds, scalars, shared ``(n,)`` ``p0``) is
    passed to every chunk whole.

What comes back
    The same fields as the in-memory batched solve, as Dask arrays with the
    input's row chunks, except the per-problem ``message`` list (a list cannot
    be lazy): ``message`` is a sentence pointing to ``status``, whose values
    :func:`agnopt.least_squares` documents. ``curve_fit(..., full_output=True)``
    likewise returns ``ier`` as a Dask array and ``mesg`` as that sentence.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .._core.result import OptimizeResult

__all__ = ["chunked_curve_fit", "chunked_least_squares", "is_chunked_batch"]

CHUNKED_MESSAGE = (
    "batched solve on Dask chunks: per-problem outcomes are in `status` "
    "(agnopt.least_squares documents its values) and `success`"
)


def is_chunked_batch(a: Any) -> bool:
    """True for a 2-D Dask array split into several chunks of rows: the chunked path.

    A Dask batch in one row chunk stays on the lazy Array API path (as before
    this path existed), so a ``fun`` that closes over whole-batch Dask data
    keeps working there.
    """
    from .._core.lazy import is_dask

    return is_dask(a) and getattr(a, "ndim", 0) == 2 and len(a.chunks[0]) > 1


def _rows_like(a: Any, B: int, row_chunks: tuple) -> Any:
    """``a`` rechunked to the batch's row chunks if it is a per-problem Dask array."""
    from .._core.lazy import is_dask

    if is_dask(a) and a.ndim >= 1 and a.shape[0] == B:
        return a.rechunk((row_chunks,) + tuple(-1 for _ in range(a.ndim - 1)))
    return a


def _block(a: Any, i: int, lo: int, hi: int, B: int) -> Any:
    """Row block ``i`` (rows ``lo:hi``) of a per-problem array, or ``a`` itself."""
    from .._core.lazy import is_dask

    if is_dask(a) and a.ndim >= 1 and a.shape[0] == B:
        return a.to_delayed().ravel()[i]
    if hasattr(a, "shape") and hasattr(a, "dtype") and getattr(a, "ndim", 0) >= 1 and a.shape[0] == B:
        return a[lo:hi]
    return a


def _assemble(parts: list, shapes: list, dtypes: dict) -> dict:
    """Dask arrays, field by field, from the per-chunk dicts of results."""
    import dask
    import dask.array as da

    out = {}
    for key, (dtype, tail) in dtypes.items():
        blocks = [
            da.from_delayed(dask.delayed(_field)(p, key), shape=(b,) + tail, dtype=dtype)
            for p, b in zip(parts, shapes)
        ]
        out[key] = da.concatenate(blocks, axis=0)
    return out


def _field(d: dict, key: str) -> Any:
    return d[key]


def _row_bounds(row_chunks: tuple) -> list[tuple[int, int]]:
    bounds, lo = [], 0
    for b in row_chunks:
        bounds.append((lo, lo + b))
        lo += b
    return bounds


def _numpy_dtype(a: Any) -> Any:
    """The NumPy dtype of ``a`` (Dask describes its blocks with NumPy dtypes)."""
    import numpy as np

    return np.dtype(str(a.dtype).replace("torch.", ""))


# --------------------------------------------------------------------------- curve_fit
def _curve_fit_chunk(f, xdata, y, p0, sigma, full_output, kwargs) -> dict:
    """One chunk of fits in memory (runs on a worker)."""
    from .._core.lazy import compute
    from .curve_fit import curve_fit

    y, p0, sigma = compute(y, p0, sigma)
    out = curve_fit(f, xdata, y, p0=p0, sigma=sigma, batched=True,
                        full_output=full_output, **kwargs)
    res = {"popt": out[0], "pcov": out[1]}
    if full_output:
        info, ier = out[2], out[4]
        for k, v in info.items():
            res["info_" + k] = v
        import array_api_compat

        xp = array_api_compat.array_namespace(out[0])
        res["ier"] = xp.asarray(ier, dtype=xp.int64)
    return res


def chunked_curve_fit(f: Callable, xdata: Any, ydata: Any, p0: Any, n: int, sigma: Any,
                      full_output: bool, kwargs: dict) -> tuple:
    """``curve_fit(..., batched=True)`` with a Dask ``ydata`` ``(B, m)``: one task per row chunk.

    ``ydata`` is rechunked to one chunk along ``m``; ``p0`` ``(B, n)`` and
    ``sigma`` ``(B, m)`` that are Dask arrays follow its row chunks; NumPy
    ones of those shapes are sliced per chunk. Returns what
    :func:`agnopt.curve_fit` returns, as Dask arrays (see the module notes).
    """
    B, m = ydata.shape
    if any(isinstance(c, float) and math.isnan(c) for c in ydata.chunks[0]):
        raise ValueError("ydata: Dask chunks of unknown size; call ydata.compute_chunk_sizes() first")
    ydata = ydata.rechunk({1: -1})
    rows = ydata.chunks[0]
    p0 = _rows_like(p0, B, rows)
    sigma = _rows_like(sigma, B, rows)
    yblocks = ydata.to_delayed().ravel()
    import dask

    parts, shapes = [], []
    for i, (lo, hi) in enumerate(_row_bounds(rows)):
        parts.append(dask.delayed(_curve_fit_chunk, pure=True)(
            f, xdata, yblocks[i], _block(p0, i, lo, hi, B), _block(sigma, i, lo, hi, B),
            full_output, kwargs))
        shapes.append(hi - lo)
    dt = _numpy_dtype(ydata)
    import numpy as np

    fields = {"popt": (dt, (n,)), "pcov": (dt, (n, n))}
    if full_output:
        fields.update({"info_nfev": (np.dtype(np.int64), ()), "info_fvec": (dt, (m,)),
                       "info_status": (np.dtype(np.int64), ()), "info_success": (np.dtype(bool), ()),
                       "info_nit": (np.dtype(np.int64), ()), "info_njev": (np.dtype(np.int64), ()),
                       "ier": (np.dtype(np.int64), ())})
    out = _assemble(parts, shapes, fields)
    if not full_output:
        return out["popt"], out["pcov"]
    info = {k[5:]: v for k, v in out.items() if k.startswith("info_")}
    return out["popt"], out["pcov"], info, CHUNKED_MESSAGE, out["ier"]


# --------------------------------------------------------------------------- least_squares
_LSQ_INT_FIELDS = ("nfev", "njev", "nit", "status")


def _least_squares_chunk(fun, x0, jac, args, kwargs, options) -> dict:
    """One chunk of problems in memory (runs on a worker)."""
    from .._core.lazy import compute
    from .least_squares import least_squares

    (x0,) = compute(x0)
    args = tuple(compute(*args)) if args else ()
    kwargs = dict(zip(kwargs, compute(*kwargs.values()))) if kwargs else {}
    res = least_squares(fun, x0, jac=jac, args=args, kwargs=kwargs, batched=True, **options)
    return {k: v for k, v in res.items() if k != "message"}


def chunked_least_squares(fun: Callable, x0: Any, jac: Any, args: tuple, kwargs: dict,
                          options: dict) -> OptimizeResult:
    """``least_squares(..., batched=True)`` with a Dask ``x0`` ``(B, n)``: one task per row chunk.

    ``fun(X, *args, **kwargs)`` receives a chunk's rows ``X`` ``(b, n)`` and the
    same rows of every Dask array in ``args`` / ``kwargs`` whose first axis has
    length ``B``; it returns ``(b, m)``. ``m`` is read by evaluating ``fun``
    on the first row once, on the client. Returns the batched result's fields
    as Dask arrays (see the module notes).
    """
    from .._core.lazy import compute

    B, n = x0.shape
    if any(isinstance(c, float) and math.isnan(c) for c in x0.chunks[0]):
        raise ValueError("x0: Dask chunks of unknown size; call x0.compute_chunk_sizes() first")
    x0 = x0.rechunk({1: -1})
    rows = x0.chunks[0]
    args = tuple(_rows_like(a, B, rows) for a in args)
    kwargs = {k: _rows_like(v, B, rows) for k, v in kwargs.items()}
    # m from one row, evaluated here
    first = lambda a: _block(a, 0, 0, 1, B) if not _is_per_problem_dask(a, B) else a[:1]  # noqa: E731
    x1, *a1 = compute(x0[:1], *[first(a) for a in args])
    k1 = dict(zip(kwargs, compute(*[first(v) for v in kwargs.values()]))) if kwargs else {}
    f1 = fun(x1, *a1, **k1)
    if getattr(f1, "ndim", 0) != 2 or f1.shape[0] != 1:
        raise ValueError(
            f"fun: with batched=True expected residuals of shape (B, m), got {tuple(getattr(f1, 'shape', ()))} "
            "for one row of x0 (x0 is a Dask array in several row chunks, solved chunk by chunk: "
            "pass per-problem data through args / kwargs as arrays with B rows, not by closure)"
        )
    m = f1.shape[1]
    import dask
    import numpy as np

    xblocks = x0.to_delayed().ravel()
    parts, shapes = [], []
    for i, (lo, hi) in enumerate(_row_bounds(rows)):
        parts.append(dask.delayed(_least_squares_chunk, pure=True)(
            fun, xblocks[i], jac, tuple(_block(a, i, lo, hi, B) for a in args),
            {k: _block(v, i, lo, hi, B) for k, v in kwargs.items()}, options))
        shapes.append(hi - lo)
    dt = _numpy_dtype(x0)
    i64 = np.dtype(np.int64)
    fields = {"x": (dt, (n,)), "cost": (dt, ()), "fun": (dt, (m,)), "jac": (dt, (m, n)),
              "grad": (dt, (n,)), "optimality": (dt, ()), "active_mask": (i64, (n,)),
              "success": (np.dtype(bool), ())}
    fields.update({k: (i64, ()) for k in _LSQ_INT_FIELDS})
    out = _assemble(parts, shapes, fields)
    return OptimizeResult(message=CHUNKED_MESSAGE, **out)


def _is_per_problem_dask(a: Any, B: int) -> bool:
    from .._core.lazy import is_dask

    return is_dask(a) and a.ndim >= 1 and a.shape[0] == B
