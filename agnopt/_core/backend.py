"""The backend layer: every other module goes through here to find ``xp``.

* :func:`resolve` finds the Array API namespace and device of a whole tree once,
  and rejects trees that mix backends or devices, or hold non-float leaves.
* :func:`scalar` creates new arrays on the input's
  device in a declared dtype; nothing here moves data between devices or
  upcasts float32 to float64.
* :func:`is_writeable` tells whether an array may be updated in place (NumPy,
  CuPy, torch) or must be treated functionally (JAX, array-api-strict, Dask).
* :func:`device_scope` makes a CuPy device current for code that creates
  arrays or launches kernels (array-api-compat's CuPy creation functions
  ignore ``device=``).
* :func:`compiled` runs a block of array code as one compiled program where
  the backend compiles (JAX: ``jax.jit``) and as written everywhere else;
  :func:`pytree_class` lets such a block take and return objects of a class.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
from typing import Any, Callable, NamedTuple, TypeVar, cast

import array_api_compat
from array_api_compat import array_namespace, device as _device

from .tree import tree_leaves, tree_paths
from .typing import Array, ArrayTree

_F = TypeVar("_F", bound=Callable[..., Any])  # a decorated function keeps its signature

__all__ = [
    "Backend",
    "resolve",
    "namespace_name",
    "is_writeable",
    "is_concrete",
    "check_float_dtype",
    "resolve_dtype",
    "scalar",
    "device_scope",
    "native_namespace",
    "numpy_scalar_namespace",
    "tree_device_scope",
    "on_device_of",
    "compiled",
    "pytree_class",
    "committed",
]


class Backend(NamedTuple):
    """The namespace and device shared by every leaf of a tree."""

    xp: Any
    device: Any


def namespace_name(xp: Any) -> str:
    """A short human name for a namespace: ``numpy``, ``torch``, ``jax.numpy``..."""
    name = getattr(xp, "__name__", None)  # (not repr(xp) as a default: it is slow)
    if name is None:
        name = repr(xp)
    return name.removeprefix("array_api_compat.")


def is_concrete(x: Any) -> bool:
    """True where the values of ``x`` can be read now without building or
    computing a graph: not a Dask array, not a JAX tracer (inside ``jit``)."""
    if array_api_compat.is_dask_array(x):
        return False
    if array_api_compat.is_jax_array(x):
        try:
            import jax

            return not isinstance(x, jax.core.Tracer)
        except (ImportError, AttributeError):  # pragma: no cover
            return False
    return True


def is_writeable(x: Array) -> bool:
    """True where ``x`` may be updated in place (NumPy, CuPy, torch)."""
    return bool(array_api_compat.is_writeable_array(x))


def _is_real_float(xp: Any, dt: Any) -> bool:
    try:
        return bool(xp.isdtype(dt, "real floating"))
    except Exception:  # pragma: no cover - exotic dtypes
        return False


def check_float_dtype(xp: Any, x: Any, what: str) -> None:
    """Raise ``TypeError`` unless ``x`` has a real floating dtype."""
    dt = x.dtype
    if _is_real_float(xp, dt):
        return
    try:
        is_complex = xp.isdtype(dt, "complex floating")
    except Exception:  # pragma: no cover
        is_complex = False
    if is_complex:
        raise TypeError(
            f"{what}: complex dtype {dt} is not supported (agnopt optimizes real "
            "floating parameters; complex support may come later: optimize the "
            "real and imaginary parts as two real arrays)"
        )
    raise TypeError(
        f"{what}: dtype {dt} is not a real floating dtype; expected float16, "
        "float32, float64 (or bfloat16 where the backend has it)"
    )


def resolve(tree: ArrayTree, name: str = "params", check_dtype: bool = True) -> Backend:
    """Resolve the namespace and device of every leaf of ``tree`` at once.

    Raises
    ------
    ValueError
        If ``tree`` has no leaves.
    TypeError
        If a leaf is not an array, leaves come from different backends or
        devices (the message names both), or (with ``check_dtype``) a leaf is
        not of a real floating dtype.
    """
    t = type(tree)
    if t.__name__ == "ndarray" and t.__module__ == "numpy":
        # one NumPy array (its device is always the CPU): the answer per dtype is the
        # general path's below, remembered (only where it did not raise)
        key = (cast(Any, tree).dtype, check_dtype)
        try:
            return _NUMPY_RESOLVED[key]
        except KeyError:
            out = _NUMPY_RESOLVED[key] = _resolve(tree, name, check_dtype)
            return out
        except TypeError:  # pragma: no cover - unhashable dtype objects
            pass
    return _resolve(tree, name, check_dtype)


_NUMPY_RESOLVED: dict = {}  # (dtype, check_dtype) -> Backend of one NumPy array


def _resolve(tree: ArrayTree, name: str, check_dtype: bool) -> Backend:
    """:func:`resolve` of any tree."""
    leaves = tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{name}: the tree is empty; expected at least one array")
    paths = None
    xp0 = dev0 = None
    type0 = None
    for i, leaf in enumerate(leaves):
        if type(leaf) in (int, float, complex, bool) or not array_api_compat.is_array_api_obj(leaf):
            paths = paths or tree_paths(tree)
            raise TypeError(
                f"{name}{paths[i]}: expected an array, got {type(leaf).__name__}"
            )
        if i == 0:
            xp0 = array_namespace(leaf)
            dev0 = _device(leaf)
            type0 = type(leaf)
        else:
            # Same array type and device: same backend (cheap test first).
            if type(leaf) is not type0:
                xpi = array_namespace(leaf)
                if xpi is not xp0:
                    paths = paths or tree_paths(tree)
                    raise TypeError(
                        f"{name} mixes array backends: {name}{paths[0]} is "
                        f"{namespace_name(xp0)} but {name}{paths[i]} is "
                        f"{namespace_name(xpi)}; convert every leaf to one backend"
                    )
            devi = _device(leaf)
            if devi != dev0:
                paths = paths or tree_paths(tree)
                raise TypeError(
                    f"{name} mixes devices: {name}{paths[0]} is on {dev0!r} but "
                    f"{name}{paths[i]} is on {devi!r}; move every leaf to one device"
                )
        if check_dtype and not _is_real_float(xp0, leaf.dtype):
            paths = paths or tree_paths(tree)
            check_float_dtype(xp0, leaf, f"{name}{paths[i]}")
    return Backend(xp0, dev0)


def resolve_dtype(xp: Any, dtype: Any, default: Any, what: str) -> Any:
    """``dtype`` as a dtype of ``xp`` (``None`` means ``default``).

    Accepts a dtype object of ``xp`` or a name such as ``"float32"``,
    ``"bfloat16"``. Raises ``TypeError`` for a non-floating or unknown dtype.
    """
    if dtype is None:
        return default
    if isinstance(dtype, str):
        dt = getattr(xp, dtype, None)
        if dt is None:
            raise TypeError(f"{what}: the backend {namespace_name(xp)} has no dtype {dtype!r}")
        dtype = dt
    try:
        ok = xp.isdtype(dtype, "real floating")
    except Exception:
        # A dtype of another library (e.g. numpy.float32 given for torch).
        name = getattr(dtype, "__name__", None) or str(dtype)
        dt = getattr(xp, str(name).split(".")[-1], None)
        if dt is None:
            raise TypeError(f"{what}: {dtype!r} is not a dtype of {namespace_name(xp)}")
        return resolve_dtype(xp, dt, default, what)
    if not ok:
        raise TypeError(f"{what}: expected a real floating dtype, got {dtype}")
    return dtype


def scalar(xp: Any, value: Any, dtype: Any, device: Any) -> Any:
    """A 0-d array holding ``value`` (a Python number or a 0-d array)."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        try:
            same_ns = array_namespace(value) is xp
        except TypeError:
            same_ns = False
        if same_ns:
            return value if value.dtype == dtype else xp.astype(value, dtype)
        value = float(value)
    return xp.asarray(value, dtype=dtype, device=device)


_NATIVE: dict = {}


def native_namespace(xp: Any) -> Any:
    """``xp``, or NumPy's own namespace where array-api-compat's NumPy wrapper adds nothing.

    NumPy >= 2.1 implements the Array API (2023.12) in its main namespace;
    array-api-compat's wrapper then only adds a Python call (argument and
    device checks) around each function, which costs as much as the
    operation itself on the tiny arrays of a small solve. Algorithms that
    call the namespace many times per iteration on small arrays (the
    least-squares engine) may run on the returned namespace: same functions,
    same results (the NIST and least-squares tests run through it). Every
    other namespace is returned unchanged.
    """
    try:
        return _NATIVE[xp]
    except KeyError:
        pass
    except TypeError:  # pragma: no cover - unhashable namespace
        return xp
    out = xp
    if array_api_compat.is_numpy_namespace(xp) and namespace_name(xp) == "numpy":
        np = __import__("numpy")
        major, minor = (int(v) for v in np.__version__.split(".")[:2])
        if (major, minor) >= (2, 1):
            out = _lean_numpy(np)
    _NATIVE[xp] = out
    return out


def _lean_numpy(np: Any) -> Any:
    """NumPy's namespace with its Python-level reductions called at the ufunc.

    ``numpy.sum``, ``any``, ``all``, ``max``, ``min`` are Python functions
    (``_wrapreduction``: keyword filtering, ``__array_function__`` dispatch)
    that end in ``ufunc.reduce``; ``astype``, ``isdtype`` and
    ``linalg.vector_norm`` are Python too. On the ``(1,)`` and ``(1, n)``
    arrays of one small solve that wrapping costs 2-3 times the operation.
    So are ``stack``, ``reshape`` and ``matrix_transpose`` (dispatch and
    argument checks around one ``concatenate`` / method call), and ``real``
    and ``imag`` (around one attribute read). This module is NumPy's own
    (``__name__ == "numpy"``, every other name NumPy's object) with those
    replaced by functions that make the same ``ufunc.reduce`` / ``ndarray``
    method or attribute / ``concatenate`` call NumPy itself
    makes for an ``ndarray`` (same results, bit for bit) and defer to NumPy's
    function for anything else (scalars, subclasses, other ``ord`` /
    ``axis`` / ``copy`` forms).
    """
    import types

    nd = np.ndarray
    add, mx, mn = np.add.reduce, np.maximum.reduce, np.minimum.reduce
    lor, land = np.logical_or.reduce, np.logical_and.reduce
    sqrt = np.sqrt
    np_sum, np_any, np_all, np_max, np_min = np.sum, np.any, np.all, np.max, np.min
    np_astype, np_isdtype, np_vnorm = np.astype, np.isdtype, np.linalg.vector_norm
    kinds: dict = {}

    def sum(x, /, *, axis=None, dtype=None, keepdims=False):  # noqa: A001
        if type(x) is nd:
            return add(x, axis, dtype, None, keepdims)
        return np_sum(x, axis=axis, dtype=dtype, keepdims=keepdims)

    def any(x, /, *, axis=None, keepdims=False):  # noqa: A001
        if type(x) is nd:
            return lor(x, axis, bool, None, keepdims)
        return np_any(x, axis=axis, keepdims=keepdims)

    def all(x, /, *, axis=None, keepdims=False):  # noqa: A001
        if type(x) is nd:
            return land(x, axis, bool, None, keepdims)
        return np_all(x, axis=axis, keepdims=keepdims)

    def max(x, /, *, axis=None, keepdims=False):  # noqa: A001
        if type(x) is nd:
            return mx(x, axis, None, None, keepdims)
        return np_max(x, axis=axis, keepdims=keepdims)

    def min(x, /, *, axis=None, keepdims=False):  # noqa: A001
        if type(x) is nd:
            return mn(x, axis, None, None, keepdims)
        return np_min(x, axis=axis, keepdims=keepdims)

    def astype(x, dtype, /, *, copy=True, device=None):
        if type(x) is nd and device is None:
            return x.astype(dtype, copy=copy)
        return np_astype(x, dtype, copy=copy, device=device)

    def isdtype(dtype, kind):
        try:
            return kinds[(dtype, kind)]
        except KeyError:
            out = kinds[(dtype, kind)] = np_isdtype(dtype, kind)
            return out
        except TypeError:  # unhashable kind (a list)
            return np_isdtype(dtype, kind)

    def vector_norm(x, /, *, axis=None, keepdims=False, ord=2):  # noqa: A002
        # NumPy's own arithmetic for a real x, one int axis, ord 2:
        # sqrt(add.reduce(x * x, axis)) (numpy.linalg.norm's "speedup" branch)
        if (type(x) is nd and type(axis) is int and not keepdims and ord == 2
                and x.dtype.kind == "f"):
            return sqrt(add(x * x, axis))
        return np_vnorm(x, axis=axis, keepdims=keepdims, ord=ord)

    np_stack, np_reshape, np_mT, concat = np.stack, np.reshape, np.matrix_transpose, np.concat
    py_all = builtins.all  # (``all`` below is this module's reduction)

    def stack(arrays, /, *, axis=0):
        # numpy.stack's own steps (a new axis on each, one concatenate) without its
        # dispatch and checks; a mismatch of shapes still raises (in concatenate)
        if type(arrays) in (list, tuple) and arrays and py_all(type(a) is nd for a in arrays):
            nd1 = arrays[0].ndim + 1
            if -nd1 <= axis < nd1:
                ax = axis + nd1 if axis < 0 else axis
                idx = (slice(None),) * ax + (None,)
                return concat([a[idx] for a in arrays], axis=ax)
        return np_stack(arrays, axis=axis)

    np_real, np_imag = np.real, np.imag

    def real(x, /):
        # numpy.real / imag: a Python function around the ndarray attribute (a view)
        if type(x) is nd:
            return x.real
        return np_real(x)

    def imag(x, /):
        if type(x) is nd:
            return x.imag
        return np_imag(x)

    def reshape(x, /, shape, *, copy=None):
        if type(x) is nd and copy is None:
            return x.reshape(shape)
        return np_reshape(x, shape, copy=copy)

    def matrix_transpose(x, /):
        if type(x) is nd and x.ndim >= 2:
            return x.swapaxes(-1, -2)
        return np_mT(x)

    linalg: Any = types.ModuleType("numpy.linalg")
    linalg.__dict__.update(vars(np.linalg))
    linalg.vector_norm = vector_norm
    linalg.matrix_transpose = matrix_transpose
    mod: Any = types.ModuleType("numpy", np.__doc__)
    mod.__dict__.update({k: v for k, v in vars(np).items() if not k.startswith("__")})
    mod.__version__ = np.__version__
    for f in (sum, any, all, max, min, astype, isdtype, stack, reshape, matrix_transpose, real,
              imag):
        setattr(mod, f.__name__, f)
    mod.linalg = linalg
    return mod


def device_scope(device: Any) -> Any:
    """A context manager under which new arrays and kernels go to ``device``.

    array-api-compat's CuPy namespace ignores ``device=`` in ``zeros``,
    ``ones``, ``full``, ``empty``, ``eye``, ``arange``, ``linspace`` (only
    ``asarray`` honours it), CuPy's ``*_like`` functions allocate on the
    current device rather than their argument's, and CuPy kernels run on the
    current device. With arrays on GPU 1 while GPU 0 is current, state
    created for them would land on GPU 0. For a CuPy device this returns
    ``cupy.cuda.Device(device.id)`` (entering it makes that device current
    and restores the previous one on exit); for every other backend and
    ``None``, a context that does nothing (torch, JAX, NumPy honour
    ``device=``).
    """
    if type(device).__module__.startswith("cupy"):
        import cupy

        return cupy.cuda.Device(device.id)
    return contextlib.nullcontext()


_NO_SCOPE = contextlib.nullcontext()


def tree_device_scope(tree: Any) -> Any:
    """:func:`device_scope` of the device of ``tree``'s arrays when they are CuPy arrays.

    Looks at one leaf only (the first element of each nested dict / list /
    tuple; every leaf of a valid tree shares one device, which the solvers
    check): a few attribute reads, so the entry points of agnopt call it on
    every backend. For anything but a CuPy array it returns a context that
    does nothing.
    """
    leaf = tree
    for _ in range(32):
        if isinstance(leaf, dict):
            if not leaf:
                return _NO_SCOPE
            leaf = next(iter(leaf.values()))
        elif isinstance(leaf, (list, tuple)):
            if not leaf:
                return _NO_SCOPE
            leaf = leaf[0]
        else:
            break
    if type(leaf).__module__.startswith("cupy"):
        return device_scope(leaf.device)
    return _NO_SCOPE


def on_device_of(pos: int, name: str) -> Callable[[_F], _F]:
    """Decorator: run the function in the CuPy device context of its argument ``pos`` / ``name``.

    For the public entry points (``least_squares(fun, x0)``, ``step``,
    ``chain(...).update``...): array-api-compat's CuPy creation functions
    ignore ``device=`` and CuPy kernels run on the current device, so a solve
    on arrays of GPU 1 while GPU 0 is current must run inside
    ``cupy.cuda.Device(1)``. Entered once per call; a no-op for every other
    backend (see :func:`tree_device_scope`).
    """

    def deco(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            arg = args[pos] if len(args) > pos else kwargs.get(name)
            scope = tree_device_scope(arg)
            if scope is _NO_SCOPE:
                return fn(*args, **kwargs)
            with scope:
                return fn(*args, **kwargs)

        return cast(_F, wrapper)  # same signature as fn (functools.wraps)

    return deco


_SCALAR_NS: list = []


def numpy_scalar_namespace() -> Any:
    """The few namespace functions of the least-squares engine's per-problem
    scalar tests (``where``, ``maximum``, ``minimum``, ``abs``, ``astype``,
    ``finfo``) for NumPy *scalars* (``numpy.float64``, ``numpy.int64``,
    ``numpy.bool_``): one problem's ``(1,)`` state read as scalars costs a
    few dozen nanoseconds per operation instead of a ufunc call's few
    hundred. Scalar arithmetic and comparisons are NumPy's own (IEEE, the
    same numbers as on arrays); ``where`` picks a branch, ``maximum`` /
    ``minimum`` follow NumPy's (``a if a > b or a is NaN else b``: NaN
    propagates, ``b`` on a tie, signed zeros included), and Python numbers that come out of ``where`` become NumPy scalars
    (so ``~`` stays a logical not). Anything else is NumPy's function.
    """
    if _SCALAR_NS:
        return _SCALAR_NS[0]
    import types

    np = __import__("numpy")
    f64, i64, b_ = np.float64, np.int64, np.bool_

    def box(r):
        t = type(r)
        if t is float:
            return f64(r)
        if t is bool:
            return b_(r)
        if t is int:
            return i64(r)
        return r

    def where(c, a, b, /):
        return box(a if c else b)

    def maximum(a, b, /):
        return box(a if (a > b or a != a) else b)

    def minimum(a, b, /):
        return box(a if (a < b or a != a) else b)

    def astype(x, dtype, /, *, copy=True, device=None):
        t = getattr(dtype, "type", None)  # a dtype object, else a scalar type
        return (t if t is not None else dtype)(x)

    ns: Any = types.ModuleType("agnopt_numpy_scalars")
    ns.__getattr__ = lambda name: getattr(np, name)
    for f in (where, maximum, minimum, astype):
        setattr(ns, f.__name__, f)
    ns.abs = abs
    ns.finfo, ns.float64, ns.int64, ns.bool = np.finfo, f64, i64, b_
    _SCALAR_NS.append(ns)
    return ns


# ----------------------------------------------------------------------------- compiled blocks
_PYTREE_CLASSES: list = []  # classes declared by pytree_class, registered with JAX on first use
_JAX_REGISTERED: set = set()


def pytree_class(data: tuple, meta: tuple = ()) -> Callable[[type], type]:
    """Class decorator: instances may pass into and out of a :func:`compiled` block.

    ``data``: the attribute names holding arrays (or tuples / NamedTuples of
    arrays, or ``None``); they are the traced inputs. ``meta``: attribute
    names holding hashable Python values (namespaces, flags) that fix the
    program; two instances with equal ``meta`` share one compiled program.
    An attribute not set on an instance travels as ``None``. Registration
    with JAX happens when :func:`compiled` first runs on JAX (no import of
    JAX here); on every other backend the decorator changes nothing.
    """

    def deco(cls: type) -> type:
        cls._agnopt_pytree = (tuple(data), tuple(meta))  # type: ignore[attr-defined]
        _PYTREE_CLASSES.append(cls)
        return cls

    return deco


def _register_jax_pytrees() -> None:
    import jax

    for cls in _PYTREE_CLASSES:
        if cls in _JAX_REGISTERED:
            continue
        data, meta = cls._agnopt_pytree

        def flatten(obj: Any, data: tuple = data, meta: tuple = meta) -> tuple:
            return (tuple(getattr(obj, f, None) for f in data),
                    tuple(getattr(obj, f, None) for f in meta))

        def unflatten(aux: tuple, children: Any, cls: type = cls, data: tuple = data,
                      meta: tuple = meta) -> Any:
            obj: Any = object.__new__(cls)
            for f, v in zip(meta, aux):
                setattr(obj, f, v)
            for f, v in zip(data, children):
                setattr(obj, f, v)
            return obj

        jax.tree_util.register_pytree_node(cls, flatten, unflatten)
        _JAX_REGISTERED.add(cls)


def committed(x: Any, device: Any) -> Any:
    """``x`` committed to ``device`` (JAX; every other array is returned as is).

    JAX keeps one compiled program per kind of input, and an array placed
    with ``jax.device_put`` (or created with ``device=``) is a different kind
    from one left uncommitted (``jnp.asarray(values)``): a solver that mixes
    both compiles its :func:`compiled` blocks twice. Committing the starting
    point makes every array derived from it committed too.
    """
    if not array_api_compat.is_jax_array(x) or device is None:
        return x
    import jax

    return jax.device_put(x, device)


_JAX_NS: dict = {}  # namespace -> is it JAX's (asked once per namespace)


def _is_jax_ns(xp: Any) -> bool:
    try:
        return _JAX_NS[xp]
    except KeyError:
        out = _JAX_NS[xp] = bool(array_api_compat.is_jax_namespace(xp))
        return out
    except TypeError:  # pragma: no cover - unhashable namespace
        return bool(array_api_compat.is_jax_namespace(xp))


# XLA's CPU compiler options for agnopt's programs: no LLVM optimization passes
# and the classic (not the MLIR "fusion emitter") kernel generation. agnopt's
# programs are small-array control code whose first call is dominated by its
# compilation: measured on the whole least-squares solve of a 3-parameter fit,
# 2.5 s -> 0.4 s of CPU to compile, 0.20 -> 0.24 ms to run.
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0,
                        "xla_cpu_use_fusion_emitters": False}


def cheap_jit(fn: Any, **kw: Any) -> Any:
    """``jax.jit(fn, **kw)`` compiled with :data:`CPU_COMPILER_OPTIONS` where JAX's
    default backend is the CPU (as usual elsewhere, and wherever XLA does not
    know these options: it raises on the first call, which then compiles as
    usual for good)."""
    import jax

    if jax.default_backend() != "cpu":
        return jax.jit(fn, **kw)
    fast = jax.jit(fn, compiler_options=CPU_COMPILER_OPTIONS, **kw)
    plain: list = []

    @functools.wraps(fn)
    def run(*a: Any, **k: Any) -> Any:
        if plain:
            return plain[0](*a, **k)
        try:
            return fast(*a, **k)
        except Exception as e:  # an XLA without these options
            if "compile option" not in str(e):
                raise
            plain.append(jax.jit(fn, **kw))
            return plain[0](*a, **k)

    return run


_INLINE: list = []  # non-empty while a whole solve is traced (inlined_blocks)


@contextlib.contextmanager
def inlined_blocks() -> Any:
    """While tracing one bigger JAX program (the whole least-squares solve), the
    :func:`compiled` blocks run as written, inlined into it, instead of as nested
    ``jax.jit`` calls (the same operations; fewer computations for XLA to compile)."""
    _register_jax_pytrees()
    _INLINE.append(True)
    try:
        yield
    finally:
        _INLINE.pop()


def compiled(fn: _F, static: tuple = ()) -> _F:
    """``fn(xp, ...)`` as one compiled program where the backend compiles, else ``fn`` itself.

    ``fn`` is a block of array code whose first argument is the namespace
    ``xp``: a pure function of its arrays (no ``bool()`` / ``float()`` of an
    array inside, no user callback) and of the Python values named in
    ``static`` (hashable; ``xp`` always is). On JAX the returned function
    calls ``jax.jit(fn, static_argnames=("xp",) + static)``, made once per
    ``fn``: JAX compiles one program per combination of static values and
    argument shapes / dtypes and reuses it on later calls, instead of
    dispatching (and, on first use, compiling) every small operation
    separately. Arguments may be arrays, ``None``, tuples / NamedTuples of
    them and instances of :func:`pytree_class` classes. On every other
    backend (and under ``jax.disable_jit()``) ``fn`` runs as written: one
    implementation, the compilation is only a wrapper. Results agree with
    the uncompiled ones to rounding (XLA may fuse or reorder operations).
    """
    names = ("xp",) + tuple(static)
    jitted: list = []

    @functools.wraps(fn)
    def call(xp: Any, *args: Any, **kwargs: Any) -> Any:
        if _INLINE or not _is_jax_ns(xp):
            return fn(xp, *args, **kwargs)
        if not jitted:
            import jax

            _register_jax_pytrees()
            jitted.append(cheap_jit(fn, static_argnames=names))
        return jitted[0](xp, *args, **kwargs)

    call.uncompiled = fn  # type: ignore[attr-defined]
    return cast(_F, call)
