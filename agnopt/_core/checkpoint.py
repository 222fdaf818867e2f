"""Checkpoints: optimizer state (or any tree of arrays) to a plain dict or a file, and back.

* :func:`state_dict` turns a state (NamedTuples, tuples, lists, dicts,
  ``None``, arrays, Python scalars) into a plain nested ``dict`` of arrays and
  Python scalars. Every container becomes a ``dict`` with a ``"__type__"``
  entry (``"ScaleByAdamState"``, ``"tuple"``, ``"list"``, ``"dict"``) so that
  :func:`load_state_dict` can check it. The arrays are the state's own (no
  copy is made).
* :func:`load_state_dict` rebuilds a state shaped like a *template* (what
  ``opt.init(params)`` returns on the target backend and device): the
  structure, every shape and every dtype must match, else ``ValueError``
  naming the first mismatch (``state[1].mu['w']: shape (3,) != template
  shape (4,)``). Arrays of another backend or device are moved onto the
  template's: through DLPack when both sides support it, otherwise through
  ``asarray`` on the target device (via a host NumPy array when needed:
  Dask, CuPy <-> CPU). Values are copied bit for bit; arrays are never
  modified.
* :func:`save_state` / :func:`load_state` write and read a ``.npz`` file
  with :func:`numpy.savez` and ``numpy.load(allow_pickle=False)``: one entry
  per array leaf plus a JSON header holding the format version, the
  structure fingerprint (container types and field names, dict keys, every
  leaf's shape and dtype) and an optional user ``config`` (e.g. the
  optimizer's hyperparameters). Loading a file into a template of a
  different structure, or with a different ``config``, is a ``ValueError``
  naming the difference, never a silent mismatch. ``bfloat16`` leaves, which
  NumPy cannot hold, are stored as ``float32`` (exactly) and cast back.

A resumed run continues the uninterrupted trajectory exactly: on the same
backend bit for bit (the state is the whole of the optimizer's memory); on
another backend to rounding, since backends may evaluate the same formula
with different rounding (fused multiply-add, vectorized ``pow`` or ``sqrt``
kernels, XLA's re-association).

NumPy is imported here only (lazily) for the file format and host copies.
"""

from __future__ import annotations

import json
import os
from typing import Any, TypeVar

import array_api_compat

from .backend import namespace_name, on_device_of
from .tree import _is_namedtuple

StateT = TypeVar("StateT")  # a state handed back with the template's type

__all__ = ["load_state", "load_state_dict", "save_state", "state_dict"]

FORMAT = "agnopt.state"
VERSION = 1
_TYPE = "__type__"
_HEADER = "__agnopt_header__"
_SCALARS = (bool, int, float)


def _is_array(x: Any) -> bool:
    return not isinstance(x, (*_SCALARS, complex)) and array_api_compat.is_array_api_obj(x)


def _dtype_name(dt: Any) -> str:
    return str(dt).split(".")[-1].replace("'>", "")


# --------------------------------------------------------------------------- state_dict
def state_dict(state: Any) -> dict[str, Any]:
    """A plain nested ``dict`` of arrays and Python scalars holding ``state``.

    Containers become dicts with a ``"__type__"`` entry (the NamedTuple's
    class name, or ``"tuple"``, ``"list"``, ``"dict"``); NamedTuple fields,
    tuple/list positions (as ``"0"``, ``"1"``...) and dict keys are the other
    entries. ``None`` stays ``None``. The result is wrapped as
    ``{"format": "agnopt.state", "version": 1, "state": ...}``.

    **No copy**: the arrays of the dict are the state's own arrays, which
    :func:`agnopt.step` and :class:`agnopt.Optimizer` overwrite in place on
    NumPy, torch and CuPy (as ``torch.optim``'s ``state_dict`` aliases its
    tensors). Take ``copy.deepcopy(state_dict(state))`` for a snapshot that
    later steps do not change, or write it to a file (:func:`save_state`).

    Raises ``TypeError`` for a leaf that is neither an array nor a Python
    scalar, ``ValueError`` for a dict key ``"__type__"``.
    """
    return {"format": FORMAT, "version": VERSION, "state": _encode(state, "state")}


def _encode(node: Any, path: str) -> Any:
    if node is None:
        return None
    if _is_namedtuple(node):
        out = {_TYPE: type(node).__name__}
        for f, v in zip(type(node)._fields, node):
            out[f] = _encode(v, f"{path}.{f}")
        return out
    if isinstance(node, (tuple, list)):
        out = {_TYPE: "tuple" if isinstance(node, tuple) else "list"}
        for i, v in enumerate(node):
            out[str(i)] = _encode(v, f"{path}[{i}]")
        return out
    if isinstance(node, dict):
        out = {_TYPE: "dict"}
        for k in node:
            if k == _TYPE:
                raise ValueError(f"{path}: the dict key {_TYPE!r} is reserved")
            out[k] = _encode(node[k], f"{path}[{k!r}]")
        return out
    if isinstance(node, _SCALARS) or _is_array(node):
        return node
    raise TypeError(f"{path}: expected an array or a Python scalar, got {type(node).__name__}")


# --------------------------------------------------------------------------- load_state_dict
@on_device_of(0, "template_state")  # CuPy: the loaded arrays made on the template's GPU
def load_state_dict(template_state: StateT, d: dict[str, Any]) -> StateT:
    """The state held in ``d`` (from :func:`state_dict`), shaped like ``template_state``.

    ``template_state`` is a state of the optimizer to resume, on the backend
    and device to resume on (``opt.init(params)``); its values are ignored.
    The template comes first, the state dict second (``load_state_dict(d,
    template)`` is refused with a message saying so). Every array of ``d`` is
    converted onto the template leaf's backend and device, bit for bit
    (DLPack, or ``asarray`` on that device).

    **No copy: the restored state shares memory with ``d``.** Where ``d``'s
    arrays are already on the template's backend and device, the returned
    state holds *the very arrays of* ``d``, hence of the state ``d`` was taken
    from (:func:`state_dict` copies nothing either). Since :func:`agnopt.step`
    and :class:`agnopt.Optimizer` update the state in place on NumPy, torch
    and CuPy, a restored optimizer and the original then change each other's
    state. For an independent copy, restore from ``copy.deepcopy(d)`` (or
    from a file: :func:`save_state` / :func:`load_state`).

    Raises
    ------
    ValueError
        ``d`` is not a state dict (or the arguments are swapped), or its
        structure (container types, field names, keys, lengths), a shape or
        a dtype differs from the template's; the message names the first
        difference by its path.
    """
    if (isinstance(template_state, dict) and template_state.get("format") == FORMAT
            and not (isinstance(d, dict) and d.get("format") == FORMAT)):
        raise ValueError(
            "load_state_dict(template_state, d): the arguments are swapped; the template "
            "(e.g. opt.init(params)) comes first and the dict from agnopt.state_dict second: "
            "load_state_dict(opt.init(params), d)"
        )
    if not isinstance(d, dict) or d.get("format") != FORMAT or "state" not in d:
        raise ValueError(
            "d: expected the dict returned by agnopt.state_dict "
            f"(with 'format': {FORMAT!r}), got "
            + (f"a dict with keys {sorted(map(str, d))}" if isinstance(d, dict) else type(d).__name__)
        )
    if d.get("version") != VERSION:
        raise ValueError(f"d: state dict version {d.get('version')!r} is not supported (expected {VERSION})")
    return _decode(template_state, d["state"], "state")


def _kind(node: Any) -> str:
    if node is None:
        return "None"
    if _is_namedtuple(node):
        return type(node).__name__
    if isinstance(node, tuple):
        return "tuple"
    if isinstance(node, list):
        return "list"
    if isinstance(node, dict):
        return "dict"
    if isinstance(node, _SCALARS):
        return type(node).__name__
    return "array"


def _decoded_kind(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, dict):
        return str(x.get(_TYPE, "dict without '__type__'"))
    if isinstance(x, _SCALARS):
        return type(x).__name__
    if _is_array(x) or hasattr(x, "shape"):
        return "array"
    return type(x).__name__


def _decode(t: Any, x: Any, path: str) -> Any:
    kt, kx = _kind(t), _decoded_kind(x)
    if kt != kx:
        raise ValueError(f"{path}: the state dict holds {_a(kx)} where the template has {_a(kt)}")
    if t is None:
        return None
    if _is_namedtuple(t):
        names = list(type(t)._fields)
        _check_keys(path, names, x)
        return type(t)(*(_decode(v, x[f], f"{path}.{f}") for f, v in zip(names, t)))
    if isinstance(t, (tuple, list)):
        _check_keys(path, [str(i) for i in range(len(t))], x, length=True)
        out = [_decode(v, x[str(i)], f"{path}[{i}]") for i, v in enumerate(t)]
        return tuple(out) if isinstance(t, tuple) else out
    if isinstance(t, dict):
        _check_keys(path, list(t), x)
        d = {k: _decode(t[k], x[k], f"{path}[{k!r}]") for k in t}
        return d if type(t) is dict else type(t)(d)
    if isinstance(t, _SCALARS):
        return type(t)(x)
    return _convert_leaf(t, x, path)


def _a(kind: str) -> str:
    return ("an " if kind[:1].lower() in "aeiou" else "a ") + kind


def _check_keys(path: str, want: list, x: dict, length: bool = False) -> None:
    have = [k for k in x if k != _TYPE]
    if length and len(have) != len(want):
        raise ValueError(f"{path}: length {len(have)} in the state dict where the template has {len(want)}")
    missing = [k for k in want if k not in x]
    extra = [k for k in have if k not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        raise ValueError(f"{path}: the state dict has " + " and ".join(parts) + " compared with the template")


def _convert_leaf(t: Any, x: Any, path: str) -> Any:
    st, sx = tuple(t.shape), tuple(x.shape)
    if st != sx:
        raise ValueError(f"{path}: shape {sx} in the state dict != template shape {st}")
    dt, dx = _dtype_name(t.dtype), _dtype_name(x.dtype)
    if dt != dx:
        raise ValueError(f"{path}: dtype {dx} in the state dict != template dtype {dt}")
    return _to_like(x, t)


def _to_like(x: Any, t: Any) -> Any:
    """``x`` on the backend and device of ``t`` (same values, bit for bit)."""
    xp = array_api_compat.array_namespace(t)
    dev = array_api_compat.device(t)
    if _is_array(x):
        same_ns = array_api_compat.array_namespace(x) is xp
        if same_ns and array_api_compat.device(x) == dev:
            return x
        if same_ns:
            return array_api_compat.to_device(x, dev)
    is_dask = "dask" in namespace_name(xp)
    src = x
    if type(src).__module__.startswith("dask"):
        src = src.compute()
    if _dtype_name(t.dtype) == "bfloat16" and _dtype_name(src.dtype) == "uint16":
        return _from_bf16_bits(src, t)  # a file's bit pattern
    if not is_dask:
        try:
            y = xp.from_dlpack(src)
            if array_api_compat.device(y) != dev:
                y = array_api_compat.to_device(y, dev)
            if _dtype_name(y.dtype) != _dtype_name(t.dtype):  # bfloat16 held as float32
                return xp.astype(y, t.dtype)
            # never share memory with the source (another library's buffer)
            return xp.asarray(y, copy=True) if array_api_compat.is_writeable_array(y) else y
        except Exception:
            pass
    host = _to_host(src)
    if _dtype_name(host.dtype) != _dtype_name(t.dtype):  # bfloat16 held as float32 on the host
        return xp.astype(xp.asarray(host, device=dev), t.dtype)
    return xp.asarray(host, device=dev, copy=True) if not is_dask else xp.asarray(host)


def _from_bf16_bits(u16: Any, t: Any) -> Any:
    """bfloat16 array on ``t``'s backend and device from its uint16 bit pattern (host)."""
    import numpy as np

    mod = type(t).__module__
    if mod.startswith("torch"):
        import torch

        y = torch.from_numpy(np.array(u16, dtype=np.uint16).view(np.int16)).view(torch.bfloat16)
        return y.to(t.device)
    if mod.startswith("jax"):
        import jax
        import jax.numpy as jnp

        yj = jax.lax.bitcast_convert_type(jnp.asarray(u16), jnp.bfloat16)
        return jax.device_put(yj, array_api_compat.device(t))
    xp = array_api_compat.array_namespace(t)
    f32 = (np.asarray(u16, dtype=np.uint32) << 16).view(np.float32)
    return xp.astype(xp.asarray(f32, device=array_api_compat.device(t)), t.dtype)


def _to_host(x: Any, bits: bool = False) -> Any:
    """A NumPy array with the values of ``x``.

    bfloat16 (which NumPy lacks) comes back as float32 (exact, except NaN
    payloads), or with ``bits`` as its uint16 bit pattern (bit for bit).
    """
    import numpy as np

    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__
    if mod.startswith("dask"):
        return np.asarray(x.compute())
    if mod.startswith("torch"):
        import torch

        x = x.detach()
        if x.dtype == torch.bfloat16:
            if bits:
                return x.view(torch.int16).cpu().numpy().view(np.uint16)
            x = x.float()
        return x.cpu().numpy()
    if mod.startswith("cupy"):
        return x.get()
    if mod.startswith("jax") and _dtype_name(x.dtype) == "bfloat16":
        if bits:
            import jax
            import jax.numpy as jnp

            return np.asarray(jax.lax.bitcast_convert_type(x, jnp.uint16))
        return np.asarray(x.astype("float32"))
    if mod.startswith("array_api_strict"):
        return np.asarray(x._array) if hasattr(x, "_array") else np.from_dlpack(x)
    try:
        return np.from_dlpack(x)
    except Exception:
        return np.asarray(x)


# --------------------------------------------------------------------------- files
def _spec(node: Any) -> Any:
    """The JSON structure fingerprint of a state, and its array leaves in order."""
    leaves: list = []

    def rec(n: Any) -> Any:
        if n is None:
            return {"kind": "None"}
        if _is_namedtuple(n):
            return {"kind": "namedtuple", "type": type(n).__name__,
                    "fields": [[f, rec(v)] for f, v in zip(type(n)._fields, n)]}
        if isinstance(n, (tuple, list)):
            return {"kind": "tuple" if isinstance(n, tuple) else "list", "items": [rec(v) for v in n]}
        if isinstance(n, dict):
            keys = list(n)
            skeys = [str(k) for k in keys]
            if len(set(skeys)) != len(skeys):
                raise ValueError(f"state: dict keys {keys} are not distinct as strings; cannot save")
            return {"kind": "dict", "items": [[str(k), rec(n[k])] for k in keys]}
        if isinstance(n, _SCALARS):
            return {"kind": "scalar", "type": type(n).__name__, "value": n}
        if _is_array(n):
            leaves.append(n)
            return {"kind": "array", "shape": list(n.shape), "dtype": _dtype_name(n.dtype),
                    "index": len(leaves) - 1}
        raise TypeError(f"state: expected arrays, Python scalars and containers, got {type(n).__name__}")

    return rec(node), leaves


def _first_spec_difference(a: Any, b: Any, path: str = "state") -> str | None:
    """Where the file's structure ``a`` differs from the template's ``b``."""
    ka = a.get("type", a["kind"]) if a["kind"] == "namedtuple" else a["kind"]
    kb = b.get("type", b["kind"]) if b["kind"] == "namedtuple" else b["kind"]
    if ka != kb:
        return f"{path}: the file holds {_a(ka)} where the template has {_a(kb)}"
    k = a["kind"]
    if k == "array":
        if a["shape"] != b["shape"]:
            return f"{path}: shape {tuple(a['shape'])} in the file != template shape {tuple(b['shape'])}"
        if a["dtype"] != b["dtype"]:
            return f"{path}: dtype {a['dtype']} in the file != template dtype {b['dtype']}"
        return None
    if k == "scalar":
        if a["type"] != b["type"]:
            return f"{path}: a {a['type']} in the file where the template has a {b['type']}"
        return None
    if k in ("namedtuple", "dict"):
        ia = a["fields" if k == "namedtuple" else "items"]
        ib = b["fields" if k == "namedtuple" else "items"]
        na, nb = [x[0] for x in ia], [x[0] for x in ib]
        if sorted(na) != sorted(nb):
            missing = [x for x in nb if x not in na]
            extra = [x for x in na if x not in nb]
            parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
            return f"{path}: the file has " + " and ".join(parts) + " compared with the template"
        db = dict((x[0], x[1]) for x in ib)
        for name, sub in ia:
            p = f"{path}.{name}" if k == "namedtuple" else f"{path}[{name!r}]"
            r = _first_spec_difference(sub, db[name], p)
            if r:
                return r
        return None
    if k in ("tuple", "list"):
        if len(a["items"]) != len(b["items"]):
            return f"{path}: length {len(a['items'])} in the file where the template has {len(b['items'])}"
        for i, (x, y) in enumerate(zip(a["items"], b["items"])):
            r = _first_spec_difference(x, y, f"{path}[{i}]")
            if r:
                return r
    return None


def _strip_index(spec: Any) -> Any:
    if isinstance(spec, dict):
        return {k: _strip_index(v) for k, v in spec.items() if k != "index"}
    if isinstance(spec, list):
        return [_strip_index(v) for v in spec]
    return spec


def save_state(path: str | os.PathLike[str], state: Any, *, config: Any = None) -> None:
    """Save ``state`` (any tree of arrays) to ``path`` with :func:`numpy.savez`.

    ``config`` is an optional JSON-serializable description of the optimizer
    (``{"name": "adam", "lr": 1e-3}``); :func:`load_state` given a
    ``config`` refuses a file saved with a different one. Arrays are copied
    to the host (from any backend and device); nothing is pickled.
    ``TypeError`` where ``path`` is not a path (the arguments swapped:
    ``save_state(state, path)``) or ``state`` holds other objects.
    """
    import numpy as np

    _check_path(path, state, "save_state")
    spec, leaves = _spec(state)
    try:
        cfg = json.loads(json.dumps(config))
    except (TypeError, ValueError) as e:
        raise TypeError(f"config: expected a JSON-serializable value ({e})") from None
    header = json.dumps({"format": FORMAT, "version": VERSION, "structure": spec, "config": cfg})
    arrays = {f"leaf_{i}": np.asarray(_to_host(x, bits=True), order="C") for i, x in enumerate(leaves)}
    arrays[_HEADER] = np.asarray(header)
    with open(os.fspath(path), "wb") as fh:
        # numpy's stub types **kwds as if a key could be its allow_pickle flag; ours are leaf_i/header
        np.savez(fh, **arrays)  # type: ignore[arg-type, unused-ignore]


def _check_path(path: Any, other: Any, who: str) -> None:
    """``TypeError`` unless ``path`` is a ``str`` or path-like; says so where the two
    arguments look swapped."""
    if isinstance(path, (str, os.PathLike)):
        return
    swapped = isinstance(other, (str, os.PathLike))
    second = "state" if who == "save_state" else "template"
    raise TypeError(
        f"path: expected a str or os.PathLike, got {type(path).__name__}"
        + (f"; the path comes first: {who}(path, {second})" if swapped else ""))


@on_device_of(1, "template")
def load_state(path: str | os.PathLike[str], template: StateT, *, config: Any = None) -> StateT:
    """Load a state saved by :func:`save_state`, onto the template's backend and device.

    Parameters
    ----------
    path : str or path
        The ``.npz`` file.
    template : state
        A state of the same optimizer configuration on the target backend
        (``opt.init(params)``); its values are ignored.
    config : optional
        If given, must equal the ``config`` the file was saved with.

    Raises
    ------
    ValueError
        Not an agnopt state file (or another format version); the file's
        structure, a shape or a dtype differs from the template's (the
        message names the first difference); ``config`` differs.
    TypeError
        ``path`` is not a ``str`` or path-like (the arguments swapped:
        ``load_state(template, path)``).
    """
    import numpy as np

    _check_path(path, template, "load_state")
    with np.load(os.fspath(path), allow_pickle=False) as z:
        if _HEADER not in z.files:
            raise ValueError(f"path: {os.fspath(path)!r} is not an agnopt state file (no header)")
        header = json.loads(str(z[_HEADER][()]))
        if header.get("format") != FORMAT:
            raise ValueError(f"path: {os.fspath(path)!r} is not an agnopt state file")
        if header.get("version") != VERSION:
            raise ValueError(
                f"path: {os.fspath(path)!r} has state file version {header.get('version')!r}; "
                f"this agnopt reads version {VERSION}"
            )
        if config is not None:
            want = json.loads(json.dumps(config))
            if header.get("config") != want:
                raise ValueError(
                    f"config: the file was saved with config {header.get('config')!r}, "
                    f"not {want!r}; it belongs to another optimizer configuration"
                )
        file_spec = header["structure"]
        tmpl_spec, _ = _spec(template)
        diff = _first_spec_difference(_strip_index(file_spec), _strip_index(tmpl_spec))
        if diff:
            raise ValueError(
                f"template: the file {os.fspath(path)!r} holds the state of a different "
                f"optimizer configuration or parameters; {diff}"
            )
        # file leaves in template order (dict items may be ordered differently)
        file_leaves = _ordered_leaves(file_spec, tmpl_spec, z)
    out = []
    for (kind, v), t in zip(file_leaves, _leaf_nodes(template)):
        out.append(_to_like(v, t) if kind == "array" else type(t)(v))
    return _rebuild(template, iter(out))


def _ordered_leaves(fs: Any, ts: Any, z: Any) -> list:
    out: list = []

    def rec(a: Any, b: Any) -> None:
        k = b["kind"]
        if k == "array":
            arr = z[f"leaf_{a['index']}"]
            if list(arr.shape) != list(a["shape"]):
                raise ValueError(
                    f"path: the file is corrupt (leaf_{a['index']} has shape {tuple(arr.shape)}, "
                    f"its header says {tuple(a['shape'])})"
                )
            out.append(("array", arr))
        elif k == "scalar":
            out.append(("scalar", a["value"]))
        elif k in ("namedtuple", "dict"):
            key = "fields" if k == "namedtuple" else "items"
            da = dict((x[0], x[1]) for x in a[key])
            for name, sub in b[key]:
                rec(da[name], sub)
        elif k in ("tuple", "list"):
            for x, y in zip(a["items"], b["items"]):
                rec(x, y)

    rec(fs, ts)
    return out


def _rebuild(t: Any, it: Any) -> Any:
    if t is None:
        return None
    if _is_namedtuple(t):
        return type(t)(*(_rebuild(v, it) for v in t))
    if isinstance(t, (tuple, list)):
        out = [_rebuild(v, it) for v in t]
        return tuple(out) if isinstance(t, tuple) else out
    if isinstance(t, dict):
        d = {k: _rebuild(v, it) for k, v in t.items()}
        return d if type(t) is dict else type(t)(d)
    return next(it)


def _leaf_nodes(t: Any) -> list:
    """Array and scalar leaves of ``t``, in the order of :func:`_rebuild`."""
    out: list = []

    def rec(n: Any) -> None:
        if n is None:
            return
        if isinstance(n, dict):
            for v in n.values():
                rec(v)
        elif isinstance(n, (tuple, list)):
            for v in n:
                rec(v)
        else:
            out.append(n)

    rec(t)
    return out
