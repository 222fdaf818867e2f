"""Exceptions raised by the user's functions (``fun``, ``jac``, a model ``f``).

They propagate with their own type, as in scipy.optimize (an ``except
RuntimeError`` around ``curve_fit`` must not catch a bug in the model), with
one note (PEP 678, shown under the traceback on Python >= 3.11; nothing is
added on 3.10) saying which function agnopt was evaluating and where: at
``x0``, at a trial point, at a finite-difference point of the Jacobian.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Callable
from typing import Any, cast

__all__ = ["call_user", "has_note", "note", "quiet_complex_casts", "renote"]

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


_CAST_MESSAGE = "Casting complex values to real discards the imaginary part"
_CAST_ENTRY = ("ignore", re.compile(_CAST_MESSAGE, re.IGNORECASE), Warning, None, 0)
_CAST_LOCK = threading.Lock()
_cast_state: list = [0]  # blocks open inside quiet_complex_casts


class _QuietComplexCasts:
    """Silence "Casting complex values to real discards the imaginary part"
    (NumPy's ``ComplexWarning``, torch's ``UserWarning``) inside the block.

    For agnopt's *default* complex-step Jacobian only: a model that calls
    ``float(p)`` or ``.astype(float)`` drops the imaginary step, and agnopt
    finds that itself (the check against finite differences, or the fallback
    to central differences) without a warning about complex numbers the user
    never asked for. An explicit ``jac="cs"`` keeps the warning (nothing
    checks that Jacobian). Matched by message, so no backend is imported.

    ``warnings.catch_warnings`` is not thread-safe (fits of a Dask batch run
    in the scheduler's threads: one thread's exit would restore the filters
    another had saved): one ``ignore`` filter is put in ``warnings.filters``
    by the first block to enter and taken out by the last to leave, under a
    lock. While any block is open, that one message is silenced in every
    thread. The entry is the one ``warnings.filterwarnings("ignore",
    message=...)`` would insert, without its regex lookup and registry reset
    (an "ignore" filter needs none: a message already shown stays silenced by
    the registry anyway): ~1 us a block instead of ~4.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        with _CAST_LOCK:
            if _cast_state[0] == 0:
                cast("list[Any]", warnings.filters).insert(0, _CAST_ENTRY)  # (typeshed: a Sequence)
            _cast_state[0] += 1

    def __exit__(self, *exc: object) -> None:
        with _CAST_LOCK:
            _cast_state[0] -= 1
            if _cast_state[0] == 0:
                try:
                    cast("list[Any]", warnings.filters).remove(_CAST_ENTRY)
                except ValueError:  # a caller's catch_warnings restored its own list
                    pass


_QUIET = _QuietComplexCasts()


def quiet_complex_casts() -> _QuietComplexCasts:
    """The context manager :class:`_QuietComplexCasts` (``with quiet_complex_casts(): ...``)."""
    return _QUIET
