"""The cache key of :mod:`.jax_solve`'s programs: what a ``fun`` (``jac``, ``loss``)
reads besides its arguments, and whether a program compiled around it stays right.

A plain function is identified by its code, its globals, the globals its code
names and its closure (compared by identity; writeable NumPy arrays also by
content), and the JAX arrays of its closure and of ``args`` / ``kwargs`` are
inputs of the program, not constants (:func:`_key`); everything else it reads
must be immutable (:func:`_pure_ref`). The rules are :mod:`.jax_solve`'s
(its module notes); moved here from there unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import types

import array_api_compat

__all__: list = []


def _content(v):
    """A NumPy array's content digest (it, or the array it views, may change in
    place); ``None`` for anything else and for a read-only array owning its data."""
    flags = getattr(v, "flags", None)
    if type(v).__module__ == "numpy" and flags is not None and (
            flags.writeable or getattr(v, "base", None) is not None):
        return hashlib.blake2b(memoryview(v.tobytes()), digest_size=16).digest()
    return None


_NAMES: dict = {}  # code object -> the global names it and its nested code read


def _global_names(code) -> tuple:
    try:
        return _NAMES[code]
    except KeyError:
        pass
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names.update(_global_names(c))
    out = _NAMES[code] = tuple(sorted(names))
    return out


def _function_refs(f, out: list, depth: int = 0) -> None:
    """The objects ``f``'s result depends on besides its arguments: ``f``, the
    closure cells and the globals its code names (unwrapping ``__wrapped__``,
    ``functools.partial``, bound methods)."""
    if depth > 4 or f is None:
        return
    out.append(f)
    inner = getattr(f, "__wrapped__", None) or getattr(f, "func", None) \
        or getattr(f, "__func__", None)
    if inner is not None and inner is not f:
        _function_refs(inner, out, depth + 1)
    for a in (getattr(f, "args", None) or ()) if hasattr(f, "keywords") else ():
        out.append(a)
    if hasattr(f, "__self__"):
        out.append(f.__self__)
    code = getattr(f, "__code__", None)
    if code is None:
        return
    for cell in getattr(f, "__closure__", None) or ():
        try:
            out.append(cell.cell_contents)
        except ValueError:  # an empty cell
            out.append(None)
    _code_refs(f, code, out)


def _code_refs(f, code, out: list) -> None:
    """The defaults of ``f`` and the globals its code names."""
    out.extend(getattr(f, "__defaults__", None) or ())
    out.extend((getattr(f, "__kwdefaults__", None) or {}).values())
    g = getattr(f, "__globals__", {})
    names = _global_names(code)
    for name in names:
        if name in g:
            v = g[name]
            out.append(v)
            if isinstance(v, types.ModuleType):
                # a module's data attributes the code names (``data.y``): compared like
                # the globals (its functions, ``jnp.exp``, are taken as fixed)
                for attr in names:
                    a = getattr(v, attr, None)
                    if a is not None and not callable(a) and not isinstance(a, types.ModuleType):
                        out.append(a)


_EMPTY = object()  # an empty closure cell


def _split_fun(fun, refs: list, depth: int = 0):
    """``fun`` as ``(identity, arrays, rebuild)``: a plain Python function is
    identified by its code, globals and closure, whose JAX arrays become inputs
    of the program (``rebuild(arrays)`` makes the function again around them:
    a lambda made anew for each fit over a new data array reuses the program);
    a plain function in its closure (``curve_fit``'s residual around the user's
    model, a model written inline as a ``lambda``) is split the same way, to a
    depth of :data:`_NEST`, so a new such function with the same code, globals
    and statics also reuses it; anything else is identified by itself
    (``rebuild`` returns it)."""
    if type(fun) is not types.FunctionType:
        _function_refs(fun, refs)
        return id(fun), [], lambda arrs: fun
    cells = []
    for c in fun.__closure__ or ():
        try:
            cells.append(c.cell_contents)
        except ValueError:
            cells.append(_EMPTY)
    # per cell: "a" a JAX array (an input), "s" a static (compared by identity),
    # or a nested plain function split in turn: (identity, its arrays' count, rebuild)
    kinds: list = []
    arrays: list = []
    statics = []
    for v in cells:
        if array_api_compat.is_jax_array(v):
            kinds.append("a")
            arrays.append(v)
        elif type(v) is types.FunctionType and v is not fun and depth < _NEST:
            ident_v, arrays_v, rebuild_v = _split_fun(v, refs, depth + 1)
            kinds.append((ident_v, len(arrays_v), rebuild_v))
            arrays.extend(arrays_v)
        else:
            kinds.append("s")
            statics.append(v)
    refs.extend(statics)
    _code_refs(fun, fun.__code__, refs)
    code, glb, name, dfl, kwd = (fun.__code__, fun.__globals__, fun.__name__, fun.__defaults__,
                                 fun.__kwdefaults__)

    def rebuild(arrs):
        at, st = 0, iter(statics)
        vals = []
        for k in kinds:
            if k == "a":
                vals.append(arrs[at])
                at += 1
            elif k == "s":
                vals.append(next(st))
            else:
                vals.append(k[2](arrs[at:at + k[1]]))
                at += k[1]
        closure = tuple(types.CellType() if v is _EMPTY else types.CellType(v) for v in vals)
        g = types.FunctionType(code, glb, name, dfl, closure or None)
        g.__kwdefaults__ = kwd
        return g

    shape = tuple(k if isinstance(k, str) else ("f", k[0]) for k in kinds)
    ident = (code, id(glb), shape, tuple((tuple(v.shape), str(v.dtype)) for v in arrays))
    return ident, arrays, rebuild


_NEST = 2  # how deep plain functions in closures are split (:func:`_split_fun`)


def _key(prob, X, F, jac_scale, ftol, xtol, gtol, max_nfev):
    """``(key, refs, leaves, rebuild)``: the cache key, the objects compared by
    identity, the arrays that are inputs of the program (``fun``'s closure,
    ``args`` / ``kwargs``) and how to rebuild ``(fun, args, kwargs)`` from them;
    ``None`` when not hashable."""
    import jax

    refs: list = []
    fun_id, fun_arrays, fun_rebuild = _split_fun(prob.fun, refs)
    flat, treedef = jax.tree_util.tree_flatten((prob.args, prob.kwargs))
    is_arr = tuple(hasattr(v, "shape") and hasattr(v, "dtype") for v in flat)
    leaves = [v for v, a in zip(flat, is_arr) if a]
    statics = tuple(v for v, a in zip(flat, is_arr) if not a)
    for f in (prob.jac_arg if callable(prob.jac_arg) else None,
              prob.loss if callable(prob.loss) else None):
        _function_refs(f, refs)
    jac = prob.jac_arg if isinstance(prob.jac_arg, str) else id(prob.jac_arg)
    loss = prob.loss if isinstance(prob.loss, str) else id(prob.loss)
    if prob.row_scaled:  # per-row residual scales (an array): the engine
        return None
    try:
        # F None: the program that evaluates fun at x0 itself (:mod:`.jax_rerun`), whose
        # residuals' shape follows from the rest of the key
        key = (fun_id, jac, prob.auto_cs, loss, prob.f_scale, prob.fscale, prob.diff_step,
               tuple(X.shape), "x0" if F is None else tuple(F.shape), str(X.dtype),
               prob.batched, prob.bounded,
               bool(jac_scale), ftol, xtol, gtol, max_nfev, treedef,
               tuple((type(v), v) for v in statics),
               tuple((tuple(v.shape), str(v.dtype)) for v in leaves))
        hash(key)
    except TypeError:
        return None
    contents = tuple(_content(r) for r in refs)
    flags = is_arr
    nf = len(fun_arrays)

    def rebuild(arrs):
        it, st = iter(arrs[nf:]), iter(statics)
        vals = [next(it) if a else next(st) for a in flags]
        args, kwargs = jax.tree_util.tree_unflatten(treedef, vals)
        return fun_rebuild(arrs[:nf]), args, kwargs

    return key, (refs, contents), fun_arrays + leaves, rebuild


# values that cannot change behind a reference (so identity is the value)
_IMMUTABLE = (int, float, complex, bool, str, bytes, type(None), type(Ellipsis), range,
              types.ModuleType, types.BuiltinFunctionType, types.CodeType)


def _is_jitted(v) -> bool:
    """A ``jax.jit`` function: its author took on JAX's contract that it is pure."""
    return callable(getattr(v, "lower", None)) and callable(getattr(v, "eval_shape", None))


def _pure_ref(v, depth: int = 0, top: bool = False, seen: list | None = None) -> bool:
    """Whether ``v`` (an object ``fun`` reads besides its arguments) cannot
    change while it stays the same object, so that a program compiled around it
    stays right: numbers, strings, modules, JAX arrays, NumPy arrays at the top
    (their content is compared, :func:`_content`) and NumPy scalars/ufuncs,
    tuples of such, and functions whose own closure and globals are such. A
    dict, list, set or any other object (``self`` of a bound method, a class)
    may be mutated between two fits (``d["y"] = new_data``): ``fun`` reading
    one is solved by the engine, evaluation by evaluation."""
    if depth > 4:
        return False
    if isinstance(v, _IMMUTABLE) or v is _EMPTY or array_api_compat.is_jax_array(v):
        return True
    mod = type(v).__module__
    if mod == "numpy":  # an ndarray (content compared only at the top), a scalar, a ufunc
        return top or not hasattr(v, "flags")
    if mod.startswith("numpy.") and not hasattr(v, "flags"):  # dtypes
        return True
    if isinstance(v, (tuple, frozenset)):
        return all(_pure_ref(x, depth + 1) for x in v)
    if isinstance(v, types.FunctionType):
        inner: list = []
        for c in v.__closure__ or ():
            try:
                inner.append(c.cell_contents)
            except ValueError:  # an empty cell
                pass
        _code_refs(v, v.__code__, inner)
        if seen is not None:  # what a helper function reads is part of the program's key too
            seen.extend(x for x in inner if x is not v)
        return all(x is v or _pure_ref(x, depth + 1, seen=seen) for x in inner)
    if _is_jitted(v):
        wrapped = getattr(v, "__wrapped__", None)
        return wrapped is None or _pure_ref(wrapped, depth + 1, seen=seen)
    if isinstance(v, functools.partial):
        return (_pure_ref(v.func, depth + 1, seen=seen)
                and all(_pure_ref(a, depth + 1, seen=seen) for a in v.args)
                and all(_pure_ref(a, depth + 1, seen=seen) for a in v.keywords.values()))
    return False


def _same_refs(a, b) -> bool:
    (ra, ca), (rb, cb) = a, b
    return len(ra) == len(rb) and all(x is y for x, y in zip(ra, rb)) and ca == cb
