"""``python -m agnopt gpucheck``: everything that needs CUDA, in one command.

Runs, within a time budget (default 470 s, so under 8 minutes on one
H100/H200 with start-up):

1. **Tests**: the cupy and torch-cuda cases of the test suite
   (``AGNOPT_BACKENDS=cupy,torch-cuda pytest -k "cupy or torch-cuda"``,
   spread over the CPU cores with pytest-xdist when it is installed, a
   per-test timeout with pytest-timeout when it is installed). Needs the
   source checkout's ``tests/`` folder. ``--quick`` runs the files that
   hold CUDA cases, those that failed on the first GPU run first, within
   a shorter budget; a run cut by the budget says how far it got.
2. **Benchmarks** (every figure measured in the same run):

   * first-order steps (Adam, AdamW, RMSProp; float32, N = 1e8) on CuPy and
     torch-cuda, against the card's measured device-to-device copy
     bandwidth (``x copy bw`` is achieved bytes per second, counting the
     arrays a fused step must read and write, over copy bandwidth; 1.0 is
     the memory roofline) and against ``torch.optim`` with ``fused=True``
     on the same card;
   * batched Levenberg-Marquardt: ``curve_fit(batched=True)`` of Gaussian
     peaks (4 parameters, 50 points, default Jacobian, float64) at
     B = 1e5 and 1e6 on CuPy and torch-cuda, against our own NumPy run on
     the host CPU. NumPy is timed at a smaller B (10 000; 2 000 with
     ``--quick``) and its time per fit extrapolated linearly to B (the
     table says so);
   * one Newton step at n = 2000 (``minimize(method="newton", maxiter=1)``,
     dense Hessian) against one Cholesky factorization and solve of the
     same matrix on the same device;
   * the latency of one small ``curve_fit`` (3-parameter exponential, 50
     points), GPU and NumPy.

The benchmark functions live in :mod:`agnopt._cli.gpubench`. It writes one JSON (``--json PATH``; rewritten after each part, so a run
killed from outside keeps what it measured) and prints a table. Without a
CUDA device it **fails** (exit status 2, the reason on stderr): it never
skips its way to a green result. Exit status 1: a test failed, a part did
not run (missing backend, budget) or a benchmark raised.

The goals it reports (issue 14): Adam on CuPy at least 85 % of copy
bandwidth and no slower than torch's fused Adam; batched LM on the GPU at
least 42x our NumPy run on the CPU (Gpufit's published GPU-over-CPU figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .gpubench import STEP_ARRAYS, run_benchmarks

GPU_BACKENDS = ("cupy", "torch-cuda")
FULL_BUDGET_S = 470.0
QUICK_BUDGET_S = 170.0
# Files with cupy / torch-cuda cases; those with failures on the first GPU run first.
# Then the files with CUDA cases that no GPU has run yet; minimize (the slowest on the GPU) last.
QUICK_TEST_FILES = (
    "test_bad_inputs.py", "test_least_squares.py", "test_nist.py", "test_tree_backend.py",
    "test_properties.py", "test_fast_paths.py", "test_first_order.py", "test_curve_fit.py",
    "test_nonfinite_solvers.py", "test_lsq_bounds_losses.py", "test_lsq_engine.py",
    "test_numerics_edges.py", "test_natural_gradient.py", "test_fisher_scoring.py",
    "test_parity.py", "test_minimize.py",
)
GOAL_COPY_FRACTION = 0.85
GOAL_LM_SPEEDUP = 42.0


class NoCuda(RuntimeError):
    """No CUDA device reachable from CuPy or torch."""


# ------------------------------------------------------------------ CUDA


def cuda_report() -> dict:
    """What each GPU backend sees: ``{"torch-cuda": {...}, "cupy": {...}}`` (``ok``, ``detail``)."""
    rep: dict = {}
    try:
        import torch

        if torch.cuda.is_available():
            rep["torch-cuda"] = {"ok": True, "detail": f"torch {torch.__version__}, CUDA {torch.version.cuda}",
                                 "device": torch.cuda.get_device_name(0)}
        else:
            rep["torch-cuda"] = {"ok": False, "detail": f"torch {torch.__version__}: torch.cuda.is_available() "
                                 f"is False (CUDA build: {torch.version.cuda})"}
    except ImportError:
        rep["torch-cuda"] = {"ok": False, "detail": "torch is not installed"}
    try:
        import cupy

        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # no driver / no device
            n, err = 0, f"{type(e).__name__}: {e}"
        else:
            err = "no CUDA device"
        if n > 0:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
            rep["cupy"] = {"ok": True, "detail": f"cupy {cupy.__version__}, CUDA runtime "
                           f"{cupy.cuda.runtime.runtimeGetVersion()}", "device": name}
        else:
            rep["cupy"] = {"ok": False, "detail": f"cupy {cupy.__version__}: {err}"}
    except ImportError:
        rep["cupy"] = {"ok": False, "detail": "cupy is not installed"}
    return rep


def require_cuda(report: dict) -> list[str]:
    """The GPU backends that can run; raises :class:`NoCuda` (with every reason) if none."""
    ok = [b for b in GPU_BACKENDS if report.get(b, {}).get("ok")]
    if not ok:
        why = "; ".join(f"{b}: {report.get(b, {}).get('detail', 'not checked')}" for b in GPU_BACKENDS)
        raise NoCuda("gpucheck needs a CUDA device, and none is reachable here (" + why + "). "
                     "Nothing was run: run it on a machine with an NVIDIA GPU and cupy and/or a "
                     "CUDA build of torch installed.")
    return ok


# ------------------------------------------------------------------ arguments and budget


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agnopt gpucheck",
                                description="Run the CUDA tests and GPU benchmarks; write one JSON.")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results to PATH")
    p.add_argument("--quick", action="store_true",
                   help="smaller sizes, fewer repeats, the test files with CUDA cases only, "
                        f"budget {QUICK_BUDGET_S:.0f} s")
    p.add_argument("--tests", action=argparse.BooleanOptionalAction, default=True,
                   help="run the cupy / torch-cuda test cases (default: yes)")
    p.add_argument("--bench", action=argparse.BooleanOptionalAction, default=True,
                   help="run the GPU benchmarks (default: yes)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help=f"wall-clock budget of the whole run (default {FULL_BUDGET_S:.0f}; "
                        f"{QUICK_BUDGET_S:.0f} with --quick)")
    p.add_argument("--workers", type=int, default=None,
                   help="pytest-xdist workers (default: the CPU count, at most 16)")
    p.add_argument("--log", default=None, metavar="PATH",
                   help="pytest's output (default: next to --json, else gpucheck_pytest.log)")
    p.add_argument("--test-files", default=None,
                   help="comma-separated files under tests/ (default: all; --quick: a fixed list)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.tests and not args.bench:
        parser.error("--no-tests and --no-bench together leave nothing to run")
    if args.budget is None:
        args.budget = QUICK_BUDGET_S if args.quick else FULL_BUDGET_S
    if args.budget <= 0:
        parser.error("--budget must be positive")
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be >= 0 (0: no xdist)")
    return args


def split_budget(total: float, tests: bool, bench: bool, quick: bool) -> tuple[float, float]:
    """Seconds for the tests and for the benchmarks (tests first: they warm CuPy's kernel cache)."""
    if tests and bench:
        # the benchmarks need ~60 s on an H200 (most of it batched LM at B = 1e6); what
        # the tests leave unused goes to the benchmarks (see main)
        share = 0.62
        return total * share, total * (1.0 - share)
    return (total, 0.0) if tests else (0.0, total)


# ------------------------------------------------------------------ tests

_RESULT = r"(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)"
_LINE_A = re.compile(_RESULT + r"\s+(tests/\S+::\S+)")  # xdist: "[gw0] [ 1%] PASSED tests/..."
_LINE_B = re.compile(r"(tests/\S+::\S+)\s+" + _RESULT)  # serial: "tests/...::t PASSED [ 1%]"
_SUMMARY = re.compile(r"=+ (.*\d+ (?:passed|failed|error|errors|skipped|deselected).*) in [\d.]+s")


def parse_pytest_output(text: str) -> dict:
    """Outcome per test id from ``pytest -v`` output (with or without xdist) and the summary line."""
    outcome: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE_A.search(line)
        if m:
            outcome[m.group(2)] = m.group(1)
            continue
        m = _LINE_B.search(line)
        if m and not line.startswith(("FAILED ", "ERROR ")):
            outcome[m.group(1)] = m.group(2)
    counts: dict[str, int] = {}
    for v in outcome.values():
        counts[v.lower()] = counts.get(v.lower(), 0) + 1
    summary = None
    for line in text.splitlines():
        m = _SUMMARY.search(line)
        if m:
            summary = m.group(1)
    m = (re.search(r"\[(\d+) items?\]", text) or re.search(r"(\d+) selected", text)
         or re.search(r"collected (\d+) items?", text))
    collected = int(m.group(1)) if m else None
    if summary and not outcome:  # per-test lines in an unexpected format: counts from the summary
        for num, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)", summary):
            key = {"errors": "error", "xfailed": "xfail", "xpassed": "xpass"}.get(word, word)
            counts[key] = int(num)
    return {"counts": counts, "failures": sorted(k for k, v in outcome.items() if v in ("FAILED", "ERROR")),
            "summary": summary, "n": len(outcome) or sum(counts.values()), "collected": collected}


def _have(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def pytest_command(files: list[str], workers: int, per_test_timeout: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rfE",
           "-k", "cupy or torch-cuda", "-o", "console_output_style=classic"]
    if workers > 0 and _have("xdist"):
        cmd += ["-n", str(workers)]
    if per_test_timeout and _have("pytest_timeout"):
        cmd += ["--timeout", str(per_test_timeout)]
    return cmd + files


def pytest_env(backends: list[str]) -> dict:
    env = dict(os.environ)
    env["AGNOPT_BACKENDS"] = ",".join(backends)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # see tests/conftest.py
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_tests(backends: list[str], args: argparse.Namespace, budget_s: float, log_path: Path,
              out: Callable[[str], None]) -> dict:
    root = Path(__file__).resolve().parents[2]
    tests_dir = root / "tests"
    res: dict = {"log": str(log_path), "budget_s": round(budget_s, 1)}
    if not (tests_dir / "conftest.py").is_file():
        res["error"] = f"no tests/ folder next to the package ({tests_dir}): run from a source checkout"
        return res
    if args.test_files:
        names = [f.strip() for f in args.test_files.split(",") if f.strip()]
    elif args.quick:
        names = list(QUICK_TEST_FILES)
    else:
        names = sorted(p.name for p in tests_dir.glob("test_*.py"))
    missing = [n for n in names if not (tests_dir / n).is_file()]
    names = [n for n in names if (tests_dir / n).is_file()]
    files = [f"tests/{n}" for n in names]
    workers = args.workers if args.workers is not None else min(16, os.cpu_count() or 1)
    cmd = pytest_command(files, workers, 60 if args.quick else 150)
    res.update(command=cmd[1:], files=files, missing_files=missing,
               xdist=_have("xdist"), pytest_timeout=_have("pytest_timeout"))
    out(f"tests: {' '.join(cmd[1:4])} ... on {len(files)} files, AGNOPT_BACKENDS={','.join(backends)}, "
        f"budget {budget_s:.0f} s, log {log_path}")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=pytest_env(backends), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        cut = False
        try:
            proc.wait(timeout=max(budget_s, 1.0))
        except subprocess.TimeoutExpired:
            cut = True
            os.killpg(proc.pid, signal.SIGINT)  # pytest prints its summary on Ctrl-C
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["returncode"] = proc.returncode
    res["cut_by_budget"] = cut
    res.update(parse_pytest_output(log_path.read_text(errors="replace")))
    return res


# ------------------------------------------------------------------ goals, table, JSON


def goals(res: dict) -> list[dict]:
    """The issue's GPU goals, each with the measured value and met / not met / not measured."""
    b = res.get("bench") or {}
    out = []
    copy = b.get("copy_GBps", {})
    fo = b.get("first_order", [])

    def t_of(be, opt, impl):
        for r in fo:
            if r["backend"] == be and r["optimizer"] == opt and r["impl"] == impl and r.get("t"):
                return r["t"]
        return None

    t_cupy = t_of("cupy", "adam", "agnopt step (fused kernel)")
    t_fused = t_of("torch-cuda", "adam", "torch.optim fused")
    if t_cupy and copy.get("cupy"):
        frac = STEP_ARRAYS["adam"] * 100_000_000 * 4 / t_cupy / 1e9 / copy["cupy"]  # N = 1e8, float32
        out.append(dict(goal=f"Adam on CuPy >= {GOAL_COPY_FRACTION:.0%} of copy bandwidth", value=frac,
                        met=frac >= GOAL_COPY_FRACTION))
    else:
        out.append(dict(goal=f"Adam on CuPy >= {GOAL_COPY_FRACTION:.0%} of copy bandwidth", value=None, met=None))
    if t_cupy and t_fused:
        out.append(dict(goal="Adam on CuPy no slower than torch fused Adam", value=t_cupy / t_fused,
                        met=t_cupy <= t_fused))
    else:
        out.append(dict(goal="Adam on CuPy no slower than torch fused Adam", value=None, met=None))
    host = b.get("numpy_host_lm")
    for r in b.get("batched_lm", []):
        if r["backend"] == "numpy" or not host:
            continue
        sp = host["per_fit_us"] / r["per_fit_us"]
        out.append(dict(goal=f"batched LM {r['backend']} B={r['B']:.0e} >= {GOAL_LM_SPEEDUP:.0f}x NumPy on the CPU",
                        value=sp, met=sp >= GOAL_LM_SPEEDUP))
    return out


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_table(res: dict) -> str:
    """The human-readable report of a result dict (as written to the JSON)."""
    L = []
    dev = res.get("cuda", {})
    L.append("agnopt gpucheck: " + "; ".join(f"{k}: {v.get('device', v.get('detail'))}" for k, v in dev.items()))
    t = res.get("tests")
    if t:
        L.append("")
        if t.get("error"):
            L.append(f"tests: NOT RUN: {t['error']}")
        else:
            c = t.get("counts", {})
            cut = (f" (CUT BY THE BUDGET: {t.get('n')} of {t.get('collected') or '?'} selected cases ran)"
                   if t.get("cut_by_budget") else "")
            L.append(f"tests: {c.get('passed', 0)} passed, {c.get('failed', 0)} failed, {c.get('error', 0)} errors, "
                     f"{c.get('skipped', 0)} skipped, {c.get('xfail', 0)} xfailed in {t.get('seconds')} s{cut}")
            if t.get("summary"):
                L.append(f"  pytest: {t['summary']}")
            for f in t.get("failures", [])[:40]:
                L.append(f"  FAILED {f}")
            if len(t.get("failures", [])) > 40:
                L.append(f"  ... {len(t['failures']) - 40} more in {t.get('log')}")
    b = res.get("bench")
    if b:
        copy = b.get("copy_GBps", {})
        L.append("")
        L.append("device-to-device copy: " + ", ".join(f"{k} {v:.0f} GB/s" for k, v in copy.items()))
        fo = b.get("first_order", [])
        if fo:
            fused = {r["optimizer"]: r["t"] for r in fo if r["impl"] == "torch.optim fused" and r.get("t")}
            L.append(f"{'optimizer':9s} {'backend':11s} {'implementation':34s} {'ms':>8s} {'GB/s':>7s} "
                     f"{'x copy bw':>9s} {'x torch fused':>13s}")
            for r in fo:
                tt = r.get("t")
                gbs = r["bytes"] / tt / 1e9 if tt and r.get("bytes") else None
                bw = copy.get(r["backend"]) or (max(copy.values()) if copy else None)
                L.append(f"{r['optimizer']:9s} {r['backend']:11s} {r['impl']:34s} {_f(tt and tt * 1e3, '8.3f')} "
                         f"{_f(gbs, '7.0f')} {_f(gbs / bw if gbs and bw else None, '9.2f')} "
                         f"{_f(tt / fused[r['optimizer']] if tt and r['optimizer'] in fused else None, '13.2f')}"
                         + (f"  {r['note']}" if r.get("note") else ""))
        host = b.get("numpy_host_lm")
        if b.get("batched_lm") or host:
            L.append("")
            L.append(f"{'batched LM (Gaussian peaks)':28s} {'B':>8s} {'s':>8s} {'us/fit':>8s} {'converged':>10s} "
                     f"{'x NumPy CPU':>11s}")
            if host:
                L.append(f"{'numpy (host CPU)':28s} {host['B']:8d} {host['t']:8.3f} {host['per_fit_us']:8.2f} "
                         f"{host['n_success']:10d} {1.0:11.1f}  ({host.get('note', '')})")
            for r in b.get("batched_lm", []):
                sp = host["per_fit_us"] / r["per_fit_us"] if host else None
                L.append(f"{r['backend']:28s} {r['B']:8d} {r['t']:8.3f} {r['per_fit_us']:8.2f} "
                         f"{r['n_success']:10d} {_f(sp, '11.1f')}")
        if b.get("newton"):
            L.append("")
            for r in b["newton"]:
                L.append(f"Newton step n={r['n']} {r['backend']:11s}: {r['t_newton_step'] * 1e3:8.2f} ms; one Cholesky "
                         f"factor+solve {r['t_cholesky_solve'] * 1e3:8.2f} ms; ratio {r['ratio']:.2f}")
        if b.get("small_fit"):
            L.append("")
            for r in b["small_fit"]:
                L.append(f"one small curve_fit {r['backend']:11s}: {r['t'] * 1e3:8.2f} ms")
        for pr in b.get("profiles", []):
            L.append("")
            L.append(f"profile of batched LM {pr['backend']} B={pr['B']} ({pr['t']:.2f} s; "
                     "slower than 5x the host CPU per fit), functions by own time:")
            for f in pr["top"]:
                L.append(f"  {f['tottime']:8.3f} s own {f['cumtime']:8.3f} s cum {f['ncalls']:8d} calls  {f['func']}")
        for s in b.get("skipped", []):
            L.append(f"SKIPPED {s}")
        for e in b.get("errors", []):
            L.append(f"ERROR {e}")
    if res.get("goals"):
        L.append("")
        for g in res["goals"]:
            state = "not measured" if g["met"] is None else ("met" if g["met"] else "NOT met")
            L.append(f"goal: {g['goal']}: {_f(g['value'], '.2f')} -> {state}")
    for p in res.get("problems", []):
        L.append(f"PROBLEM: {p}")
    L.append(f"status: {res.get('status')}")
    return "\n".join(L)


def write_json(path: str | None, res: dict) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1, default=str)
    os.replace(tmp, path)


def problems_of(res: dict, backends_ok: list[str]) -> list[str]:
    """Why the run is not a pass (empty list: it is)."""
    out = []
    for b in GPU_BACKENDS:
        if b not in backends_ok:
            out.append(f"{b} did not run: {res['cuda'].get(b, {}).get('detail')}")
    t = res.get("tests")
    if t is not None:
        if t.get("error"):
            out.append(f"tests: {t['error']}")
        else:
            c = t.get("counts", {})
            if c.get("failed") or c.get("error"):
                out.append(f"tests: {c.get('failed', 0)} failed, {c.get('error', 0)} errors")
            if t.get("cut_by_budget"):
                out.append("tests: cut by the time budget (not all ran)")
            if not t.get("n"):
                out.append("tests: no test outcome found in pytest's output (see the log)")
    b = res.get("bench")
    if b is not None:
        out += [f"bench: {e}" for e in b.get("errors", [])]
        out += [f"bench skipped: {s}" for s in b.get("skipped", [])]
    return out


def _say(line: str) -> None:
    print(line, flush=True)  # flushed: a run killed from outside keeps what it printed


def main(argv: list[str] | None = None, out: Callable[[str], None] = _say) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    res: dict = {"command": "python -m agnopt gpucheck " + " ".join(argv or []), "quick": args.quick,
                 "budget_s": args.budget, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "host": {"python": platform.python_version(), "machine": platform.machine(),
                          "cpus": os.cpu_count()}, "status": "running", "problems": []}
    res["cuda"] = cuda_report()
    try:
        backends = require_cuda(res["cuda"])
    except NoCuda as e:
        res["status"] = "no-cuda"
        res["problems"] = [str(e)]
        write_json(args.json, res)
        print(f"gpucheck: FAILED: {e}", file=sys.stderr)
        return 2
    write_json(args.json, res)
    out("agnopt gpucheck: " + "; ".join(f"{k}: {v.get('device', '-')} ({v['detail']})"
                                        for k, v in res["cuda"].items() if v.get("ok")))
    t_tests, t_bench = split_budget(args.budget, args.tests, args.bench, args.quick)
    if args.tests:
        log = Path(args.log) if args.log else (Path(args.json).with_suffix(".pytest.log") if args.json
                                               else Path("gpucheck_pytest.log"))
        res["tests"] = run_tests(backends, args, t_tests, log.resolve(), out)
        write_json(args.json, res)
    if args.bench:
        left = args.budget - (time.perf_counter() - t_start)
        run_benchmarks(backends, args.quick, max(left, t_bench if not args.tests else 0.0), res,
                       lambda: write_json(args.json, res), out)
        res["goals"] = goals(res)
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    res["problems"] = problems_of(res, backends)
    res["status"] = "passed" if not res["problems"] else "failed"
    write_json(args.json, res)
    out("")
    out(format_table(res))
    if args.json:
        out(f"results written to {args.json}")
    return 0 if res["status"] == "passed" else 1
