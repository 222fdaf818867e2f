"""Command line: ``python -m agnopt [tour|bench|fitbench|nist|tall-bench|gpucheck] [options]``.

* ``tour`` (the default): every optimizer on every installed backend, one
  table row each, then Newton and Levenberg-Marquardt on each backend;
  ``--plot DIR`` also writes the main plots as PNG files.
* ``bench``: one step of each first-order optimizer against the fused
  memory roofline, torch.optim (foreach, fused) and optax (jit, donated);
  ``bench --invariant``: one step of Adam, Shampoo, SOAP and Muon on a
  256 x 256 and a 1024 x 1024 matrix on every installed backend.
* ``fitbench``: the batched curve-fit benchmark (agnopt's batched
  Levenberg-Marquardt against its evaluation floor, a loop of
  ``scipy.optimize.curve_fit`` and, with ``--peers``, optimistix under
  ``jax.jit(jax.vmap)``); ``fitbench --sweep``: every case (B, dtype,
  Jacobian, NumPy / torch) in one table;
  ``fitbench --single [--peers]``: one small fit against scipy's (and
  optimistix's under ``jax.jit``), best times and ratios.
* ``nist``: the NIST StRD nonlinear regression table (LRE per problem and
  starting point) for ``least_squares``.
* ``tall-bench``: tall Gauss-Newton on a ``dask.distributed`` LocalCluster.
* ``gpucheck``: everything that needs CUDA (the cupy / torch-cuda tests and
  the GPU benchmarks) in one run, one JSON; fails without a CUDA device.

The commands live in :mod:`agnopt._cli`; ``import agnopt`` never loads them.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

# the array backends the tools know (each may or may not be installed here)
BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "dask", "cupy")
LSQ_METHODS = ("lm", "trf", "dogbox", "gauss-newton")


def _plain(text: str) -> str:
    """A docstring without its reStructuredText markup, for ``--help``."""
    text = re.sub(r":(?:mod|func|class|meth):`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _backend_list(parser: argparse.ArgumentParser, value: str | None, option: str) -> list[str] | None:
    """``value`` (comma-separated backend names) as a list, each checked (usage error)."""
    if not value:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in names if v not in BACKENDS]
    if bad or not names:
        parser.error(f"{option}: unknown backend(s) {', '.join(map(repr, bad)) or repr(value)}; "
                     f"choose from {', '.join(BACKENDS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m agnopt``: one sub-command per tool."""
    parser = argparse.ArgumentParser(prog="python -m agnopt", description=_plain(__doc__ or ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    tour = sub.add_parser("tour", help="run every optimizer on every installed backend (default)")
    tour.add_argument("--steps", type=int, default=1000, help="steps per run (default 1000)")
    tour.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    tour.add_argument("--backends", default=None,
                      help="comma-separated subset, e.g. numpy,torch (default: all installed)")
    tour.add_argument("--plot", default=None, metavar="DIR",
                      help="also write the main plots as PNG files in DIR (needs matplotlib)")
    tour.add_argument("--no-second-order", action="store_true",
                      help="skip the Newton / Levenberg-Marquardt part of the tour")
    tour.add_argument("--no-invariant", action="store_true",
                      help="skip the full-matrix / Kronecker / natural-gradient part of the tour")
    fb = sub.add_parser("fitbench", help="batched curve_fit vs its evaluation floor and a scipy loop")
    fb.add_argument("--B", type=int, default=10_000, help="number of independent fits")
    fb.add_argument("--m", type=int, default=50, help="points per fit")
    fb.add_argument("--scipy-subset", type=int, default=None,
                    help="time the scipy loop on this many fits and extrapolate")
    fb.add_argument("--backend", default="numpy", choices=BACKENDS,
                    help="array backend of the batched fit (default numpy)")
    fb.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    fb.add_argument("--repeat", "--repeats", dest="repeat", type=int, default=None,
                    help="timed runs, best of (default 3 batched runs; with --single, 50 calls)")
    fb.add_argument("--sweep", action="store_true",
                    help="every case: B in --Bs, float64 and float32, analytic and default Jacobian, "
                         "numpy and torch (1 thread and torch's default), one table")
    fb.add_argument("--Bs", default="1000,10000", help="with --sweep: the batch sizes (default 1000,10000)")
    fb.add_argument("--backends", default="numpy,torch", help="with --sweep: backends (default numpy,torch)")
    fb.add_argument("--jac", default=None,
                    help="'analytic' (closed form for both), or a jac string for agnopt (default: each one's default)")
    fb.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's own; 1 avoids OpenMP overhead on tiny "
                         "operations on a busy machine)")
    fb.add_argument("--single", action="store_true",
                    help="single small fits (curve_fit, least_squares) against scipy's, not the batch")
    fb.add_argument("--peers", action="store_true",
                    help="also optimistix's LM under jax.jit (batched: jax.jit(jax.vmap)); "
                         "skipped with a note when absent")
    bench = sub.add_parser("bench", help="one optimizer step vs the memory roofline, torch.optim and optax")
    bench.add_argument("--sizes", default="1e5,1e7", help="comma-separated N (default 1e5,1e7)")
    bench.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    bench.add_argument("--optimizers", default="adam,rmsprop,adagrad,sgd-momentum,adamw")
    bench.add_argument("--backends", default="agnopt,torch,optax",
                       help="contenders: agnopt,torch,optax (default all installed)")
    bench.add_argument("--tree-leaves", type=int, default=100, help="also a tree of this many leaves (0: no)")
    bench.add_argument("--repeats", type=int, default=25, help="timed repeats (median; fewer when slow)")
    bench.add_argument("--budget", type=float, default=3.0, help="seconds per measurement at most")
    bench.add_argument("--threads", type=int, default=1, help="torch/numba/XLA threads (default 1)")
    bench.add_argument("--no-second-order", action="store_true", help="skip the Newton and batched-LM rows")
    bench.add_argument("--json", default=None, metavar="PATH", help="write the figures to PATH")
    bench.add_argument("--invariant", action="store_true",
                       help="instead: one step of Adam, Shampoo, SOAP and Muon on a square matrix "
                            "on every installed backend (--matrix-sizes)")
    bench.add_argument("--matrix-sizes", default="256,1024",
                       help="matrix sizes for --invariant (default 256,1024)")
    nist = sub.add_parser("nist", help="the NIST StRD table: LRE per problem and start")
    nist.add_argument("--method", default="lm", choices=LSQ_METHODS,
                      help="least_squares method (default lm)")
    nist.add_argument("--backend", default="numpy", choices=BACKENDS,
                      help="array backend (default numpy)")
    nist.add_argument("--scipy", action="store_true",
                      help="also scipy.optimize.least_squares (same method, jac='3-point')")
    sub.add_parser("tall-bench", add_help=False,
                   help="tall Gauss-Newton on a dask.distributed LocalCluster (--help for its options)")
    sub.add_parser("gpucheck", add_help=False,
                   help="the CUDA tests and GPU benchmarks in one run (--help for its options)")
    return parser


def _tour(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``tour``: first order, second order and the beyond-diagonal methods on every backend."""
    from ._cli.tour import run_tour

    steps = getattr(args, "steps", 1000)
    if steps < 2:
        parser.error("--steps must be at least 2")
    backends = getattr(args, "backends", None)
    chosen = _backend_list(parser, backends, "--backends")
    if getattr(args, "plot", None):  # fail before the tour, not after it
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            print("tour --plot needs matplotlib: python -m pip install matplotlib", file=sys.stderr)
            return 1
    t0 = time.perf_counter()
    print(f"agnopt tour: {steps} steps per run, {getattr(args, 'dtype', 'float64')}")
    if chosen:
        from ._cli.tour import available_backends

        here = {name for name, *_ in available_backends()}
        missing = [b for b in chosen if b not in here]
        if missing:
            print(f"note: not installed here, skipped: {', '.join(missing)}", file=sys.stderr)
    run_tour(steps=steps, dtype=getattr(args, "dtype", "float64"), backends=chosen)
    if not getattr(args, "no_second_order", False):
        from ._cli.tour import run_second_order_tour

        print()
        run_second_order_tour(backends=chosen)
    if not getattr(args, "no_invariant", False):
        from ._cli.tour import run_invariant_tour

        print()
        run_invariant_tour(backends=chosen)
    plot_dir = getattr(args, "plot", None)
    if plot_dir:
        try:
            from ._cli.plots import write_plots

            print()
            print(f"writing plots to {plot_dir}")
            paths = write_plots(plot_dir)
        except ImportError as e:
            print(f"cannot draw plots: {e} (pip install matplotlib)", file=sys.stderr)
            return 1
        for p in paths:
            print(f"  {p}")
    print(f"tour finished in {time.perf_counter() - t0:.1f} s")
    return 0


def _fitbench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``fitbench``: batched (or ``--single``) fits against scipy."""
    sweep_backends = _backend_list(parser, args.backends, "--backends")
    if args.single:
        from ._cli.single_fit import run_single_fit_benchmark

        run_single_fit_benchmark(repeats=50 if args.repeat is None else args.repeat, peers=args.peers)
        return 0
    from ._cli.fitbench import run_fit_benchmark

    repeat = 3 if args.repeat is None else args.repeat
    if args.threads is not None:
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            pass
    if args.sweep:
        from ._cli.fitbench import run_fit_sweep

        backends = tuple(sweep_backends or ("numpy",))
        threads = (args.threads,) if args.threads is not None else (1, None)
        run_fit_sweep(Bs=tuple(int(float(b)) for b in args.Bs.split(",")), backends=backends,
                      torch_threads=threads, peers=args.peers, repeat=repeat,
                      scipy_subset=1000 if args.scipy_subset is None else args.scipy_subset)
        return 0
    run_fit_benchmark(B=args.B, m=args.m, backend=args.backend, scipy_subset=args.scipy_subset,
                      jac=args.jac, dtype=args.dtype, peers=args.peers, repeat=repeat)
    return 0


def _bench(args: argparse.Namespace) -> int:
    """``bench``: one optimizer step against the roofline, torch.optim and optax."""
    if args.invariant:
        import json

        from ._cli.bench import run_invariant_bench

        rows = run_invariant_bench(sizes=tuple(int(s) for s in args.matrix_sizes.split(",")),
                                   dtype=args.dtype, repeats=min(args.repeats, 7),
                                   threads=args.threads)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return 0
    from ._cli.bench import run_bench

    run_bench(sizes=tuple(int(float(s)) for s in args.sizes.split(",")), dtype=args.dtype,
              optimizers=tuple(args.optimizers.split(",")), backends=tuple(args.backends.split(",")),
              tree_leaves=args.tree_leaves, repeats=args.repeats, budget=args.budget,
              threads=args.threads, second_order=not args.no_second_order, json_path=args.json)
    return 0


def _nist(args: argparse.Namespace) -> int:
    """``nist``: the NIST StRD table."""
    from ._cli.nist import main as nist_main

    nist_main(args.method, args.backend, args.scipy)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m agnopt <command>``; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gpucheck"]:
        from ._cli.gpucheck import main as gpucheck

        return gpucheck(argv[1:])
    if argv[:1] == ["tall-bench"]:
        from ._cli.tall_bench import main as tall_bench

        tall_bench(argv[1:])
        return 0
    args = parser.parse_args(argv)
    command = args.command or "tour"
    if command == "tour":
        return _tour(parser, args)
    if command == "fitbench":
        return _fitbench(parser, args)
    if command == "bench":
        return _bench(args)
    if command == "nist":
        return _nist(args)
    parser.error(f"unknown command {command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
