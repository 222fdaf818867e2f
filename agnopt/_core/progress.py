"""Progress display for long solves (opt-in; ``tqdm`` is an optional extra).

Solvers that can run for minutes (batched fits of many problems, tall Dask
fits, long ``minimize`` runs) take ``progress=True``: a ``tqdm`` bar then
shows the iteration, the function evaluations, the cost (for a batch: the
largest cost among the problems still running, so it can rise when the
problems with the smallest costs finish; ``verbose=2`` prints the largest
over all problems) and, for batched solves, how many problems still run. ``tqdm`` is not a dependency of
agnopt: ``pip install "agnopt[progress]"`` installs it, and asking for a bar
without it raises an ``ImportError`` that says so. ``progress`` also accepts
a callable ``progress(info)`` that receives the same figures as a ``dict``
(``nit``, ``nfev``, ``cost``, ``active``, ``total``) after every iteration,
for users who display progress their own way (a notebook widget, a log).

For first-order training loops, which the user writes, wrap the loop in
``tqdm`` directly (the documentation's guides show it); nothing here is
needed.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["Progress", "make_progress"]


class Progress:
    """One progress display; ``update`` after each iteration, ``close`` at the end."""

    def __init__(self, desc: str, total: int | None, sink: Callable[[dict], Any] | None, bar: Any):
        self.desc = desc
        self.total = total
        self._sink = sink
        self._bar = bar
        self._last = 0
        self._post: dict = {}
        self._problems: int | None = None

    def update(self, nit: int, nfev: int, cost: float, active: int | None = None,
               problems: int | None = None) -> None:
        """Report iteration ``nit``: ``nfev`` evaluations so far, ``cost`` (for a batch the
        largest cost among running problems), ``active`` of ``problems`` still running."""
        info: dict[str, Any] = {"nit": int(nit), "nfev": int(nfev), "cost": float(cost)}
        if active is not None:
            info["active"] = int(active)
            info["problems"] = int(problems) if problems is not None else None
        if self._sink is not None:
            self._sink(info)
        if self._bar is not None:
            post = {"nfev": info["nfev"], "cost": f"{info['cost']:.4g}"}
            if active is not None and info["problems"] not in (None, 1):  # a batch: how many run
                post["running"] = f"{info['active']}/{info['problems']}"
                self._problems = info["problems"]
            self._post = post
            self._bar.set_postfix(post, refresh=False)
            self._bar.update(max(0, info["nit"] - self._last))
            self._last = info["nit"]

    def close(self) -> None:
        """End the display: the solve is over, so no problem is running any more."""
        if self._bar is not None:
            if self._problems is not None:
                self._post["running"] = f"0/{self._problems}"
                self._bar.set_postfix(self._post, refresh=False)
            self._bar.close()


def make_progress(progress: Any, desc: str, total: int | None = None) -> Progress | None:
    """``None`` for ``progress`` false; a :class:`Progress` for ``True`` (a ``tqdm`` bar) or a
    callable (receives a ``dict`` per iteration).

    Raises
    ------
    ImportError
        ``progress=True`` without ``tqdm`` installed.
    TypeError
        ``progress`` is neither a bool nor a callable.
    """
    if progress is None or progress is False:
        return None
    if isinstance(progress, Progress):  # made by a caller that names the display
        return progress
    if callable(progress):
        return Progress(desc, total, progress, None)
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError as e:
            raise ImportError(
                "progress=True shows a tqdm progress bar: pip install tqdm "
                '(or pip install "agnopt[progress]")'
            ) from e
        return Progress(desc, total, None, tqdm(total=total, desc=desc, unit="it", leave=True))
    raise TypeError(f"progress: expected a bool or a callable, got {type(progress).__name__}")
