"""Small utilities for parameter trees.

A *tree* is one array, or a nested ``dict`` / ``list`` / ``tuple`` (including
``NamedTuple``) whose leaves are arrays. ``None`` is an empty subtree (it has
no leaves), as in JAX. Dictionaries are traversed in sorted-key order, so two
dicts with the same keys have the same structure whatever their insertion
order.

These helpers never look inside arrays and never import an array library.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, NamedTuple, Sequence

from .typing import ArrayTree

__all__ = [
    "TreeDef",
    "tree_flatten",
    "tree_unflatten",
    "tree_leaves",
    "leaves_like",
    "tree_map",
    "tree_paths",
    "tree_structure",
    "check_same_structure",
]


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


class TreeDef(NamedTuple):
    """The structure of a tree: its node kind, keys and children."""

    kind: str  # "leaf", "none", "dict", "list", "tuple", "namedtuple"
    node_type: Any  # the NamedTuple class, or None
    keys: tuple  # sorted dict keys, or () for sequences
    children: tuple  # TreeDef of each child

    @property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(c.num_leaves for c in self.children)

    def __repr__(self) -> str:  # compact, readable in error messages
        if self.kind == "leaf":
            return "*"
        if self.kind == "none":
            return "None"
        inner = ", ".join(repr(c) for c in self.children)
        if self.kind == "dict":
            inner = ", ".join(f"{k!r}: {c!r}" for k, c in zip(self.keys, self.children))
            return "{" + inner + "}"
        if self.kind == "list":
            return "[" + inner + "]"
        if self.kind == "namedtuple":
            return f"{self.node_type.__name__}({inner})"
        return "(" + inner + ("," if len(self.children) == 1 else "") + ")"


_LEAF = TreeDef("leaf", None, (), ())
_NONE = TreeDef("none", None, (), ())


def _children(tree: Any) -> tuple[str, Any, tuple, list]:
    """(kind, node_type, keys, children) of one node."""
    if tree is None:
        return "none", None, (), []
    if isinstance(tree, dict):
        try:
            keys = tuple(sorted(tree))
        except TypeError:
            keys = tuple(tree)
        return "dict", type(tree), keys, [tree[k] for k in keys]
    if _is_namedtuple(tree):
        return "namedtuple", type(tree), (), list(tree)
    if isinstance(tree, tuple):
        return "tuple", None, (), list(tree)
    if isinstance(tree, list):
        return "list", None, (), list(tree)
    return "leaf", None, (), []


_NODES = (dict, tuple, list)
_is = operator.is_
_FLAT_DEFS: dict = {}
_FLAT_IDS: dict = {}  # id(treedef) -> treedef for the TreeDefs in _FLAT_DEFS (an int hash, not a tuple's)


def _flat_def(tt: type, keys: tuple, n: int) -> TreeDef:
    """The TreeDef of a dict (sorted ``keys``) or list of ``n`` leaves, shared between calls."""
    key = (tt, keys, n)
    td = _FLAT_DEFS.get(key)
    if td is None:
        if len(_FLAT_DEFS) > 1024:
            _FLAT_DEFS.clear()
            _FLAT_IDS.clear()
        td = _FLAT_DEFS[key] = TreeDef("dict" if tt is dict else "list", tt if tt is dict else None,
                                       keys, (_LEAF,) * n)
        _FLAT_IDS[id(td)] = td
    return td


def _is_flat(treedef: TreeDef) -> bool:
    """Whether ``treedef`` is one of :func:`_flat_def`'s (a dict or list of leaves)."""
    return _FLAT_IDS.get(id(treedef)) is treedef


def tree_flatten(tree: ArrayTree) -> tuple[list[Any], TreeDef]:
    """Return ``(leaves, treedef)``; leaves in a deterministic order."""
    if tree is not None and not isinstance(tree, (dict, tuple, list)):
        return [tree], _LEAF  # one array: the common case, kept cheap
    tt = type(tree)
    if tt is dict or tt is list:  # one level of leaves (a dict or list of arrays): no recursion
        if tt is dict:
            try:
                keys = tuple(sorted(tree))
            except TypeError:
                keys = tuple(tree)
            vals = [tree[k] for k in keys]
        else:
            keys, vals = (), list(tree)
        for v in vals:
            if v is None or isinstance(v, _NODES):
                break
        else:
            return vals, _flat_def(tt, keys, len(vals))
    leaves: list = []

    def rec(node: Any) -> TreeDef:
        kind, node_type, keys, children = _children(node)
        if kind == "leaf":
            leaves.append(node)
            return _LEAF
        if kind == "none":
            return _NONE
        return TreeDef(kind, node_type, keys, tuple(rec(c) for c in children))

    treedef = rec(tree)
    return leaves, treedef


def leaves_like(tree: ArrayTree, treedef: TreeDef) -> list[Any] | None:
    """The objects at the leaf positions of ``tree`` if its containers are those of ``treedef``, else None.

    A cheaper :func:`tree_flatten` for a tree expected to have a known
    structure (the same optimizer stepped again): for a dict or list of
    leaves it reads the entries by ``treedef``'s keys without sorting them
    and **without checking that they are leaves**; the caller must check
    the returned objects (by identity with known arrays, or by type). Any
    other structure is flattened in full and compared.
    """
    if treedef.kind == "dict" and treedef.node_type is dict:
        keys = treedef.keys
        if type(tree) is dict and len(tree) == len(keys) and _is_flat(treedef):  # a dict of leaves
            if tuple(tree) == keys:  # inserted in sorted order (as tree_unflatten and tree_map build them)
                return list(tree.values())
            try:
                return [tree[k] for k in keys]
            except KeyError:
                return None
    elif treedef.kind == "list" and type(tree) is list and len(tree) == len(treedef.children):
        if _is_flat(treedef):
            return list(tree)
    elif treedef is _LEAF:
        return None if tree is None or isinstance(tree, _NODES) else [tree]
    leaves, td = tree_flatten(tree)
    return leaves if td == treedef else None


def same_leaves(tree: ArrayTree, treedef: TreeDef, leaves: list) -> bool:
    """Whether ``tree`` has the containers of ``treedef`` holding the very objects ``leaves``
    (compared by identity, in leaf order): :func:`leaves_like` then an identity test, without
    building the list for a dict of leaves inserted in sorted order."""
    if (type(tree) is dict and treedef.kind == "dict" and treedef.node_type is dict
            and len(tree) == len(treedef.keys) == len(leaves) and _is_flat(treedef)
            and tuple(tree) == treedef.keys):
        return all(map(_is, tree.values(), leaves))
    lv = leaves_like(tree, treedef)
    return lv is not None and len(lv) == len(leaves) and all(map(_is, lv, leaves))


def tree_unflatten(treedef: TreeDef, leaves: Sequence[Any]) -> Any:
    """Inverse of :func:`tree_flatten`."""
    if (treedef.kind == "dict" and treedef.node_type is dict and len(leaves) == len(treedef.keys)
            and _is_flat(treedef)):  # a dict of leaves
        return dict(zip(treedef.keys, leaves))
    it = iter(leaves)

    def rec(td: TreeDef) -> Any:
        if td.kind == "leaf":
            return next(it)
        if td.kind == "none":
            return None
        children = [rec(c) for c in td.children]
        if td.kind == "dict":
            out = dict(zip(td.keys, children))
            return out if td.node_type in (dict, None) else td.node_type(out)
        if td.kind == "list":
            return children
        if td.kind == "namedtuple":
            return td.node_type(*children)
        return tuple(children)

    out = rec(treedef)
    return out


def tree_leaves(tree: ArrayTree) -> list[Any]:
    """The leaves of ``tree`` in flattening order."""
    return tree_flatten(tree)[0]


def tree_structure(tree: ArrayTree) -> TreeDef:
    """The :class:`TreeDef` of ``tree``."""
    return tree_flatten(tree)[1]


def tree_paths(tree: ArrayTree) -> list[str]:
    """A path string (``"['layer1']['w']"``, ``"[0]"``) per leaf, in leaf order."""
    paths: list[str] = []

    def rec(node: Any, prefix: str) -> None:
        kind, _, keys, children = _children(node)
        if kind == "leaf":
            paths.append(prefix)
        elif kind == "dict":
            for k, c in zip(keys, children):
                rec(c, f"{prefix}[{k!r}]")
        elif kind == "namedtuple":
            for f, c in zip(type(node)._fields, children):
                rec(c, f"{prefix}.{f}")
        else:
            for i, c in enumerate(children):
                rec(c, f"{prefix}[{i}]")

    rec(tree, "")
    return paths


def _first_structure_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """Path and description of the first place where two trees differ in structure."""
    ka, ta, keys_a, ca = _children(a)
    kb, tb, keys_b, cb = _children(b)
    if ka != kb or (ka == "namedtuple" and ta is not tb):
        def desc(kind, t, node):
            if kind == "leaf":
                return f"a leaf of type {type(node).__name__}"
            if kind == "namedtuple":
                return f"a {t.__name__}"
            return f"a {kind}"
        return f"{prefix or '(root)'}: {desc(ka, ta, a)} where {desc(kb, tb, b)} was expected"
    if ka == "dict" and keys_a != keys_b:
        extra = [k for k in keys_a if k not in keys_b]
        missing = [k for k in keys_b if k not in keys_a]
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if extra:
            parts.append(f"unexpected keys {extra}")
        return f"{prefix or '(root)'}: " + ", ".join(parts)
    if ka in ("list", "tuple", "namedtuple") and len(ca) != len(cb):
        return f"{prefix or '(root)'}: length {len(ca)} where {len(cb)} was expected"
    if ka == "dict":
        labels = [f"[{k!r}]" for k in keys_a]
    elif ka == "namedtuple":
        labels = [f".{f}" for f in type(a)._fields]
    else:
        labels = [f"[{i}]" for i in range(len(ca))]
    for lab, x, y in zip(labels, ca, cb):
        d = _first_structure_difference(x, y, prefix + lab)
        if d is not None:
            return d
    return None


def check_same_structure(
    tree: ArrayTree, reference: ArrayTree, name: str = "grads", ref_name: str = "params",
    check_shapes: bool = True,
) -> None:
    """Raise ``ValueError`` naming the first path where ``tree`` differs from ``reference``.

    Compares the structure and, with ``check_shapes``, every leaf's shape, e.g.
    ``grads['layer1']['w']: shape (3, 4) != params shape (4, 3)``.
    """
    leaves, td = tree_flatten(tree)
    ref_leaves, ref_td = tree_flatten(reference)
    if td != ref_td:
        diff = _first_structure_difference(tree, reference)
        raise ValueError(
            f"{name} must have the same tree structure as {ref_name}; "
            f"first difference at {name}{diff}"
        )
    if check_shapes:
        for i, (x, r) in enumerate(zip(leaves, ref_leaves)):
            sx, sr = tuple(getattr(x, "shape", ())), tuple(getattr(r, "shape", ()))
            if sx != sr:
                path = tree_paths(reference)[i]
                raise ValueError(
                    f"{name}{path}: shape {sx} != {ref_name} shape {sr}"
                )


def tree_map(f: Callable[..., Any], tree: ArrayTree, *rest: ArrayTree) -> Any:
    """Apply ``f`` leaf-wise: ``f(leaf, *(r_leaf for r in rest))``.

    Every tree in ``rest`` must have the structure of ``tree``.
    """
    leaves, td = tree_flatten(tree)
    others = []
    for r in rest:
        rl, rtd = tree_flatten(r)
        if rtd != td:
            check_same_structure(r, tree, "tree", "reference", check_shapes=False)
        others.append(rl)
    return tree_unflatten(td, [f(x, *ys) for x, *ys in zip(leaves, *others)])
