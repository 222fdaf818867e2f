"""``python -m agnopt gpucheck`` on a machine without CUDA: what can be checked here.

The GPU parts run only on a CUDA machine (the command itself is the GPU
check). Here: it fails clearly without CUDA, its arguments, the parsing of
pytest's output, the test runner on a real (skipping) pytest run, the
benchmark functions on NumPy (the same code the GPU runs), and the table and
JSON writer on a result with made-up figures.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agnopt._cli import gpubench as gb
from agnopt._cli import gpucheck as gc


def _cuda_here() -> bool:
    try:
        return bool(gc.require_cuda(gc.cuda_report()))
    except gc.NoCuda:
        return False


needs_no_cuda = pytest.mark.skipif(_cuda_here(), reason="this machine has CUDA: gpucheck would run")


@needs_no_cuda
def test_without_cuda_it_fails_clearly(tmp_path):
    out = tmp_path / "gc.json"
    r = subprocess.run([sys.executable, "-m", "agnopt", "gpucheck", "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "gpucheck: FAILED: gpucheck needs a CUDA device" in r.stderr
    assert "torch-cuda:" in r.stderr and "cupy:" in r.stderr  # every reason is given
    data = json.loads(out.read_text())
    assert data["status"] == "no-cuda" and data["problems"]
    assert "tests" not in data and "bench" not in data  # nothing ran


@needs_no_cuda
def test_require_cuda_raises_with_the_reasons():
    rep = {"torch-cuda": {"ok": False, "detail": "torch X: no device"}, "cupy": {"ok": False, "detail": "absent"}}
    with pytest.raises(gc.NoCuda, match=r"torch-cuda: torch X: no device.*|cupy: absent"):
        gc.require_cuda(rep)
    assert gc.require_cuda({"torch-cuda": {"ok": True}, "cupy": {"ok": False}}) == ["torch-cuda"]


def test_arguments():
    a = gc.parse_args([])
    assert (a.quick, a.tests, a.bench, a.budget, a.json) == (False, True, True, gc.FULL_BUDGET_S, None)
    a = gc.parse_args(["--quick", "--no-tests", "--json", "x.json"])
    assert (a.quick, a.tests, a.bench, a.budget, a.json) == (True, False, True, gc.QUICK_BUDGET_S, "x.json")
    a = gc.parse_args(["--no-bench", "--budget", "60", "--test-files", "test_a.py,test_b.py"])
    assert (a.tests, a.bench, a.budget, a.test_files) == (True, False, 60.0, "test_a.py,test_b.py")
    for bad in (["--no-tests", "--no-bench"], ["--budget", "0"], ["--workers", "-1"], ["--bogus"]):
        with pytest.raises(SystemExit):
            gc.parse_args(bad)


def test_budget_split_gives_everything_to_what_runs():
    assert gc.split_budget(100, True, False, False) == (100, 0.0)
    assert gc.split_budget(100, False, True, True) == (0.0, 100)
    t, b = gc.split_budget(170, True, True, True)
    assert t + b == pytest.approx(170) and t > b > 0


XDIST_OUTPUT = """\
created: 4/4 workers
4 workers [6 items]
[gw0] [ 10%] PASSED tests/test_a.py::test_x[cupy]
[gw1] [ 20%] FAILED tests/test_a.py::test_x[torch-cuda]
[gw0] [ 30%] SKIPPED tests/test_b.py::test_y[cupy]
[gw2] [ 40%] XFAIL tests/test_b.py::test_z[torch-cuda-case]
[gw3] [ 50%] ERROR tests/test_c.py::test_w[cupy]
=========================== short test summary info ============================
FAILED tests/test_a.py::test_x[torch-cuda] - RuntimeError: boom
ERROR tests/test_c.py::test_w[cupy] - fixture
======= 1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error in 12.34s ========
"""


def test_parse_pytest_output_xdist():
    r = gc.parse_pytest_output(XDIST_OUTPUT)
    assert r["counts"] == {"passed": 1, "failed": 1, "skipped": 1, "xfail": 1, "error": 1}
    assert r["failures"] == ["tests/test_a.py::test_x[torch-cuda]", "tests/test_c.py::test_w[cupy]"]
    assert r["summary"] == "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error"
    assert r["n"] == 5 and r["collected"] == 6


def test_parse_pytest_output_serial_and_cut():
    text = ("tests/test_a.py::test_x[cupy] PASSED\n"
            "tests/test_a.py::test_y[cupy] FAILED\n"
            "tests/test_a.py::test_z[cupy] \n")  # killed by the budget mid-test: no summary
    r = gc.parse_pytest_output(text)
    assert r["counts"] == {"passed": 1, "failed": 1} and r["summary"] is None


def test_parse_pytest_output_summary_only():
    r = gc.parse_pytest_output("garbled\n===== 2 failed, 5 passed, 3 errors in 1.00s =====\n")
    assert r["counts"] == {"failed": 2, "passed": 5, "error": 3} and r["n"] == 10


def test_run_tests_on_a_real_pytest_run(tmp_path):
    """The runner, on this machine's real (skipping or, with CUDA, running) cases of one file."""
    args = gc.parse_args(["--no-bench", "--test-files", "test_tree_backend.py,no_such_file.py", "--workers", "0"])
    said = []
    r = gc.run_tests(["cupy", "torch-cuda"], args, 120, tmp_path / "log.txt", said.append)
    assert r["files"] == ["tests/test_tree_backend.py"] and r["missing_files"] == ["no_such_file.py"]
    assert not r["cut_by_budget"]
    assert r["n"] == 4  # the [cupy] and [torch-cuda] cases of the file's two backend tests
    if not _cuda_here():
        assert r["counts"] == {"skipped": 4} and r["returncode"] == 0
    assert "deselected" in r["summary"]
    assert (tmp_path / "log.txt").read_text()


def test_benchmark_functions_on_numpy():
    """The GPU benchmark code, run on NumPy (same functions, host device)."""
    r = gb.batched_lm("numpy", 300)
    assert r["B"] == 300 and r["n_success"] >= 290 and r["t"] > 0 and r["per_fit_us"] == pytest.approx(
        r["t"] / 300 * 1e6)
    r = gb.newton_step("numpy", 60, 3)
    assert r["nit"] == 1 and r["t_newton_step"] > 0 and r["t_cholesky_solve"] > 0
    r = gb.small_fit("numpy", 3)
    assert r["popt"] == pytest.approx([2.5, 1.3, 0.5], abs=0.05)


def _fake_result():
    N = 1e8
    return {
        "cuda": {"cupy": {"ok": True, "device": "FAKE GPU"}, "torch-cuda": {"ok": True, "device": "FAKE GPU"}},
        "tests": {"counts": {"passed": 10, "failed": 1}, "failures": ["tests/t.py::a[cupy]"], "seconds": 3.0,
                  "summary": "1 failed, 10 passed", "cut_by_budget": False, "n": 11, "log": "x.log"},
        "bench": {
            "copy_GBps": {"cupy": 4000.0, "torch-cuda": 4000.0},
            "first_order": [
                dict(backend="cupy", optimizer="adam", impl="agnopt step (fused kernel)", N=N, t=0.0008,
                     bytes=int(7 * N * 4)),
                dict(backend="torch-cuda", optimizer="adam", impl="torch.optim fused", N=N, t=0.0010,
                     bytes=int(7 * N * 4)),
                dict(backend="torch-cuda", optimizer="rmsprop", impl="torch.optim fused", N=N, t=None,
                     note="RuntimeError: no fused"),
            ],
            "numpy_host_lm": dict(backend="numpy", B=2000, t=0.2, per_fit_us=100.0, n_success=2000,
                                  note="timed at B=2000 on the host CPU; per-fit time extrapolated linearly"),
            "batched_lm": [dict(backend="cupy", B=100_000, t=0.4, per_fit_us=4.0, n_success=99_990),
                           dict(backend="torch-cuda", B=1_000_000, t=4.0, per_fit_us=4.0, n_success=999_000)],
            "newton": [dict(backend="cupy", n=2000, t_newton_step=0.004, t_cholesky_solve=0.002, ratio=2.0)],
            "small_fit": [dict(backend="cupy", t=0.05)],
            "skipped": ["batched LM cupy B=1e6: budget"], "errors": [],
        },
    }


def test_goals_table_and_json(tmp_path):
    res = _fake_result()
    res["goals"] = gc.goals(res)
    g = {x["goal"]: x for x in res["goals"]}
    # 7 * 1e8 * 4 B / 0.8 ms = 3500 GB/s = 0.875 of 4000 GB/s
    assert g["Adam on CuPy >= 85% of copy bandwidth"]["value"] == pytest.approx(0.875)
    assert g["Adam on CuPy >= 85% of copy bandwidth"]["met"] is True
    assert g["Adam on CuPy no slower than torch fused Adam"]["value"] == pytest.approx(0.8)
    lm = g["batched LM cupy B=1e+05 >= 42x NumPy on the CPU"]
    assert lm["value"] == pytest.approx(25.0) and lm["met"] is False
    res["problems"] = gc.problems_of(res, ["cupy", "torch-cuda"])
    assert res["problems"] == ["tests: 1 failed, 0 errors", "bench skipped: batched LM cupy B=1e6: budget"]
    res["status"] = "failed"
    table = gc.format_table(res)
    assert "tests: 10 passed, 1 failed" in table and "FAILED tests/t.py::a[cupy]" in table
    assert "   0.800    3500      0.88          0.80" in table  # ms, GB/s, x copy bw, x torch fused
    assert "RuntimeError: no fused" in table
    assert "timed at B=2000 on the host CPU" in table and "25.0" in table
    assert "goal: batched LM cupy B=1e+05 >= 42x NumPy on the CPU: 25.00 -> NOT met" in table
    assert "Newton step n=2000 cupy" in table and "ratio 2.00" in table
    assert table.rstrip().endswith("status: failed")
    path = tmp_path / "r.json"
    gc.write_json(str(path), res)
    assert json.loads(path.read_text())["goals"] == json.loads(json.dumps(res["goals"]))


def test_problems_name_a_missing_backend():
    res = _fake_result()
    res["cuda"]["cupy"] = {"ok": False, "detail": "cupy is not installed"}
    res["bench"]["skipped"] = []
    res["tests"]["counts"] = {"passed": 3}
    assert gc.problems_of(res, ["torch-cuda"]) == ["cupy did not run: cupy is not installed"]


def test_torch_optim_without_fused_is_na_not_an_error():
    """torch.optim.RMSprop has no fused= (torch 2.x): the benchmark records n/a, not an exception."""
    torch = pytest.importorskip("torch")
    assert gb._accepts(torch.optim.Adam, "fused") and gb._accepts(torch.optim.AdamW, "fused")
    assert gb._accepts(torch.optim.RMSprop, "foreach")
    assert not gb._accepts(torch.optim.SGD, "no_such_option")
    if not gb._accepts(torch.optim.RMSprop, "fused"):  # torch <= 2.13 at the time of writing
        with pytest.raises(TypeError):
            torch.optim.RMSprop([torch.zeros(2, requires_grad=True)], fused=True)


def test_profile_of_a_batched_lm_on_numpy():
    r = gb.profile_batched_lm("numpy", 200, top=10)
    assert r["B"] == 200 and r["t"] > 0 and len(r["top"]) == 10
    assert all(set(f) == {"func", "ncalls", "tottime", "cumtime"} for f in r["top"])
    assert [f["tottime"] for f in r["top"]] == sorted((f["tottime"] for f in r["top"]), reverse=True)


def test_table_shows_na_rows_and_profiles():
    res = _fake_result()
    res["bench"]["first_order"].append(dict(backend="torch-cuda", optimizer="rmsprop", impl="torch.optim fused",
                                            N=1e8, t=None, na=True,
                                            note="n/a: torch.optim.RMSprop has no fused= option"))
    res["bench"]["profiles"] = [dict(backend="cupy", B=20_000, t=2.5, top=[
        dict(func="svd.py:10:_svd_batched", ncalls=20_000, tottime=2.0, cumtime=2.2)])]
    table = gc.format_table(res)
    assert "n/a: torch.optim.RMSprop has no fused= option" in table
    assert "profile of batched LM cupy B=20000 (2.50 s" in table and "_svd_batched" in table
    assert gc.problems_of(res, ["cupy", "torch-cuda"]) == [
        "tests: 1 failed, 0 errors", "bench skipped: batched LM cupy B=1e6: budget"]  # n/a is no problem
