"""``agnopt._cli.newton_bench``: the Newton benchmark cases run and report what they
measure (a report, not a timed test: no speed is asserted)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("scipy")


def test_newton_vs_trust_exact_reports_both_solves():
    from agnopt._cli.newton_bench import newton_vs_trust_exact

    r = newton_vs_trust_exact(2, repeats=1)
    assert r["success"] and r["same_point"]  # both at (1, 1)
    assert r["nit_agnopt"] > 0 and r["nit_scipy"] > 0
    assert r["t_agnopt"] > 0 and r["t_scipy"] > 0 and r["ratio"] == r["t_agnopt"] / r["t_scipy"]


def test_newton_vs_cholesky_reports_the_iteration():
    from agnopt._cli.newton_bench import newton_vs_cholesky

    r = newton_vs_cholesky(20, repeats=1)
    # (a difference of two run times: its sign is noise at this size, its finiteness is not)
    assert math.isfinite(r["t_iteration"]) and r["t_cholesky_solve"] > 0
    assert r["ratio"] == r["t_iteration"] / r["t_cholesky_solve"]
