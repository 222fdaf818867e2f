r"""Pictures of the optimizers: the documentation's gallery and ``tour --plot``.

Each figure is drawn by a short script in ``agnopt/_cli/gallery/`` that uses
only the public API (``import agnopt as ao``), NumPy and matplotlib (scipy for
the throughput figure): the documentation's gallery shows these scripts as
they are, so what a reader sees is the whole code of each figure.
:func:`figure` runs one script and returns its figure; :func:`write_plots`
writes all of them as PNG files. matplotlib is imported only when a figure
is drawn.

=========================  ==========================================================
name                       what it draws
=========================  ==========================================================
``rosenbrock_paths``       every first-order optimizer and Newton on Rosenbrock's valley
``quadratic_curves``       loss vs step on an ill-conditioned quadratic; GD's zig-zag
``adam_bias_correction``   Adam's first steps with, without, and with a wrong bias correction
``nist_fits``              NIST StRD fits: data, model and residuals
``batched_throughput``     fits per second vs batch size B: batched curve_fit against
                           a loop of scipy.optimize.curve_fit (needs scipy)
``bench_ratios``           ``python -m agnopt bench``'s step times over the memory roofline
=========================  ==========================================================

Examples
--------
>>> from agnopt._cli.plots import figure
>>> fig = figure("adam_bias_correction")
>>> len(fig.axes)
2
>>> import matplotlib.pyplot as plt; plt.close(fig)
"""

from __future__ import annotations

import os
import runpy
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["GALLERY", "PLOTS", "RC", "figure", "write_plots"]

GALLERY = Path(__file__).resolve().parent / "gallery"

# name -> script (in GALLERY); the order of the gallery page and of write_plots
PLOTS: dict[str, Path] = {
    name: GALLERY / f"{name}.py"
    for name in ("rosenbrock_paths", "quadratic_curves", "adam_bias_correction", "nist_fits",
                 "batched_throughput", "bench_ratios", "reparameterization_paths", "step_cost")
}

# matplotlib settings of every figure (also the docs' plot_rcparams): fonts that stay
# readable when a 12-15 inch wide figure is shown at the width of a page
RC: dict[str, Any] = {
    "font.size": 13,
    "axes.titlesize": 13,
    "axes.labelsize": 13,
    "legend.fontsize": 11,
    "xtick.labelsize": 12,
    "ytick.labelsize": 12,
    "figure.titlesize": 15,
    "figure.max_open_warning": 0,
}


def figure(name: str) -> Any:
    """Run the gallery script ``name`` (a key of :data:`PLOTS`) and return its figure.

    Raises ``KeyError`` for an unknown name, and whatever the script raises
    (``ImportError`` when matplotlib or scipy is missing).
    """
    import matplotlib.pyplot as plt

    path = PLOTS[name]
    with plt.rc_context(RC):
        before = set(plt.get_fignums())
        runpy.run_path(str(path), run_name=f"agnopt_gallery_{name}")
        new = [n for n in plt.get_fignums() if n not in before]
    if not new:
        raise RuntimeError(f"gallery script {path} drew no figure")
    for n in new[:-1]:
        plt.close(n)
    return plt.figure(new[-1])


def write_plots(directory: str | os.PathLike, progress: Callable[[str], Any] | None = print,
                dpi: int = 110) -> list[str]:
    """Write the gallery's figures as PNG files in ``directory`` (created if needed).

    One file per entry of :data:`PLOTS` (``rosenbrock_paths.png``, ...). A
    figure whose requirements are missing (scipy for the throughput figure, a
    bench command that fails) is skipped with a message. ``progress``
    (default ``print``; ``None`` for silence) gets one line per figure with
    its time.

    Returns
    -------
    list of str
        The paths written.
    """
    import matplotlib.pyplot as plt

    say = progress if progress is not None else (lambda s: None)
    os.makedirs(directory, exist_ok=True)
    written = []
    t_all = time.perf_counter()
    for i, name in enumerate(PLOTS, 1):
        t0 = time.perf_counter()
        say(f"[{i}/{len(PLOTS)}] {name} ...")
        try:
            fig = figure(name)
        except (ImportError, FileNotFoundError, subprocess.CalledProcessError) as e:
            say(f"[{i}/{len(PLOTS)}] {name}: skipped ({type(e).__name__}: {e})")
            continue
        path = os.path.join(os.fspath(directory), f"{name}.png")
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        written.append(path)
        say(f"[{i}/{len(PLOTS)}] {name}: {path} ({time.perf_counter() - t0:.1f} s)")
    say(f"{len(written)} plots written to {os.fspath(directory)} "
        f"in {time.perf_counter() - t_all:.1f} s")
    return written
