"""Exceptions raised by the user's functions (``fun``, ``jac``, a model ``f``).

They propagate with their own type, as in scipy.optimize (an ``except
RuntimeError`` around ``curve_fit`` must not catch a bug in the model), with
one note (PEP 678, shown under the traceback on Python >= 3.11; nothing is
added on 3.10) saying which function agnopt was evaluating and where: at
``x0``, at a trial point, at a finite-difference point of the Jacobian.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["call_user", "has_note", "note", "renote"]

_MARK = "_agnopt_note"  # the attribute holding the note agnopt added (once per exception)


def note(e: BaseException, text: str) -> None:
    """Add ``text`` to ``e``'s notes, unless agnopt already added one to it."""
    if getattr(e, _MARK, None) is not None:
        return
    try:
        setattr(e, _MARK, text)
    except (AttributeError, TypeError):  # pragma: no cover - exceptions without attributes
        return
    add = getattr(e, "add_note", None)
    if add is not None:
        add(text)


def has_note(e: BaseException) -> bool:
    """Whether ``e`` went through :func:`note` (it was raised while evaluating user code)."""
    return getattr(e, _MARK, None) is not None


def renote(e: BaseException, rename: Callable[[str], str]) -> None:
    """Rewrite agnopt's note on ``e`` with ``rename`` (``curve_fit`` names ``f``
    and ``p0`` where ``least_squares`` names ``fun`` and ``x0``)."""
    old = getattr(e, _MARK, None)
    if old is None:
        return
    new = rename(old)
    setattr(e, _MARK, new)
    notes = getattr(e, "__notes__", None)
    if isinstance(notes, list):
        for i, t in enumerate(notes):
            if t == old:
                notes[i] = new


def call_user(fun: Callable[[Any], Any], x: Any, what: str, where: str = "") -> Any:
    """``fun(x)``; an exception it raises propagates unchanged (its own type and
    message, as scipy), with the note ``agnopt: raised while evaluating <what>
    <where>``."""
    try:
        return fun(x)
    except Exception as e:
        note(e, f"agnopt: raised while evaluating {what}" + (f" {where}" if where else ""))
        raise
