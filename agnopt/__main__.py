"""Command line: ``python -m agnopt [tour|fitbench] [options]``.

* ``tour`` (the default): every optimizer on every installed backend, one
  table row each.
* ``fitbench``: the batched curve-fit benchmark (agnopt's batched
  Levenberg-Marquardt against a loop of ``scipy.optimize.curve_fit``).
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agnopt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    tour = sub.add_parser("tour", help="run every optimizer on every installed backend (default)")
    tour.add_argument("--steps", type=int, default=1000, help="steps per run (default 1000)")
    tour.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    tour.add_argument("--backends", default=None,
                      help="comma-separated subset, e.g. numpy,torch (default: all installed)")
    fb = sub.add_parser("fitbench", help="batched curve_fit vs a scipy.optimize.curve_fit loop")
    fb.add_argument("--B", type=int, default=10_000, help="number of independent fits")
    fb.add_argument("--m", type=int, default=50, help="points per fit")
    fb.add_argument("--scipy-subset", type=int, default=None,
                    help="time the scipy loop on this many fits and extrapolate")
    fb.add_argument("--backend", default="numpy")
    args = parser.parse_args(argv)
    command = args.command or "tour"

    if command == "tour":
        from ._tour import run_tour

        steps = getattr(args, "steps", 1000)
        if steps < 2:
            parser.error("--steps must be at least 2")
        backends = getattr(args, "backends", None)
        t0 = time.perf_counter()
        print(f"agnopt tour: {steps} steps per run, {getattr(args, 'dtype', 'float64')}")
        run_tour(steps=steps, dtype=getattr(args, "dtype", "float64"),
                 backends=backends.split(",") if backends else None)
        print(f"tour finished in {time.perf_counter() - t0:.1f} s")
        return 0
    if command == "fitbench":
        from ._fitbench import run_fit_benchmark

        run_fit_benchmark(B=args.B, m=args.m, backend=args.backend, scipy_subset=args.scipy_subset)
        return 0
    parser.error(f"unknown command {command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
