"""NIST StRD nonlinear regression: certified values from both starts.

``least_squares(method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)`` with its
default Jacobian (complex step) must reach LRE >= 6 (NIST's log relative
error, minimum over parameters) on all 27 problems from both starting points.
``pytest -s`` prints the table; ``python -m agnopt nist`` reproduces it.

Backends: the full 54 runs on numpy, array_api_strict and torch. JAX compiles
every eager operation once per shape (~10-25 s per NIST problem on the 2-core
CI) and Dask builds a task graph per operation (~20-40 s per run), so they run
a documented subset (CI budget): one problem from both starts on JAX
(Misra1a), one run on Dask (DanWood, start 1); the certified standard
deviations likewise on one problem each. The solver is the same Array API
code on every backend; the full table runs on numpy, array_api_strict, torch.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from array_api_compat import device as array_device

import agnopt as ao
from agnopt._cli import nist as _nist

from conftest import to_numpy

try:
    PROBLEMS = _nist.load_nist()
except FileNotFoundError:  # pragma: no cover
    PROBLEMS = []

pytestmark = pytest.mark.skipif(not PROBLEMS, reason="nist_strd.json not found")

SUBSETS = {
    "jax": (["Misra1a"], ("start1", "start2")),
    "dask": (["DanWood"], ("start1",)),
}
STD_DEV_SUBSETS = {"jax": ("Misra1a",), "dask": ("DanWood",)}


def _run(case, method):
    names, starts = SUBSETS.get(case, (None, ("start1", "start2")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in exp at rejected trial points
        rows = _nist.nist_report(method=method, backend=case, names=names, starts=starts,
                                 verbose=False)
    return rows


@pytest.mark.slow
def test_nist_lm_default_jacobian(backend):
    case = backend[0].value
    if case in ("cupy", "torch-cuda"):
        pytest.skip("NIST certification runs on the CPU backends")
    rows = _run(case, "lm")
    print()
    print(_nist.format_table(rows, f"NIST StRD, least_squares(method='lm'), backend {case}"))
    print(f"{case}: {sum(r['seconds'] for r in rows):.1f} s")
    bad = [(r["name"], r["start"], r["lre"], r["error"]) for r in rows if not r["lre"] >= 6]
    assert not bad, bad
    assert all(r["success"] for r in rows)
    if case in ("numpy", "array_api_strict", "torch"):
        assert len(rows) == 54


@pytest.mark.slow
def test_nist_gauss_newton_never_crashes():
    rows = _nist.nist_report(method="gauss-newton", backend="numpy", verbose=False)
    print()
    print(_nist.format_table(rows, "NIST StRD, least_squares(method='gauss-newton'), numpy"))
    assert len(rows) == 54
    assert not [r for r in rows if r["error"]]
    solved = sum(r["lre"] >= 6 for r in rows)
    print(f"gauss-newton solves {solved} of 54 (LRE >= 6)")
    assert solved >= 30  # 36 at the time of writing; guards against regressions


@pytest.mark.parametrize("name", [p["name"] for p in PROBLEMS if p["name"] != "Lanczos1"])
def test_nist_certified_std_dev(xp, device, backend, name):
    """curve_fit's pcov gives the certified standard deviations to 4 significant digits.

    Lanczos1 is excluded: its certified RSS (1.4e-25) is at the level of
    float64 rounding of the residuals, so sqrt(diag(pcov)) (proportional to
    the RSS) cannot be reproduced in float64; its parameters are checked above.
    """
    case = backend[0].value
    if case in STD_DEV_SUBSETS and name not in STD_DEV_SUBSETS[case]:
        pytest.skip(f"{case}: certified std devs checked on {STD_DEV_SUBSETS[case]} only "
                    "(per-operation compile / task-graph overhead; all 26 run on "
                    "numpy/array_api_strict/torch)")
    p = next(q for q in PROBLEMS if q["name"] == name)
    _, model, x, resp = _nist.nist_problem(p, xp)
    # nist_problem creates its arrays on the default device; the data, the start
    # and hence every array of the fit go to the backend's device (torch-cuda
    # would otherwise run the whole fit on the CPU).
    x = xp.asarray(x, device=device)
    resp = xp.asarray(resp, device=device)
    p0 = xp.asarray(p["start2"], dtype=xp.float64, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        popt, pcov = ao.curve_fit(model, x, resp, p0=p0, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    assert array_device(popt) == array_device(x) and array_device(pcov) == array_device(x)
    sd = np.sqrt(np.diag(to_numpy(pcov)))
    cert = np.array(p["certified_std_dev"])
    rel = np.abs(sd - cert) / np.abs(cert)
    assert np.all(rel < 5e-5), (name, sd, cert)  # 4 significant digits


def _verified_default_jacobian() -> bool:
    from agnopt._least_squares.problem import Problem

    return hasattr(Problem, "_cs_disagrees")


@pytest.mark.xfail(not _verified_default_jacobian(), strict=True,
                   reason="needs the verified default Jacobian (complex step checked against "
                          "differences; branch scipycompat, e05da54): remove this marker once merged")
def test_roszman1_with_a_lossy_complex_arctan(xp, device, backend):
    """The torch-cuda failure of Roszman1 (std devs 72-95% off, success=True), reproduced on the CPU.

    torch on CUDA computes the complex ``atan`` as libc++ does, ``-i atanh(i z)`` with
    ``atanh(w) = log((1 + w) / (1 - w)) / 2``: the real part of that logarithm is the
    difference of two numbers equal to rounding, so the imaginary part of ``z`` that the
    complex step reads (``h = eps |b|``) is lost. With that ``atan`` written out here the
    default Jacobian must still give the certified standard deviations: the complex step
    is checked against finite differences and dropped where it disagrees.
    """
    case = backend[0].value
    if case in ("jax", "dask"):
        pytest.skip(f"{case}: one NIST std-dev problem only (see test_nist_certified_std_dev)")
    p = next(q for q in PROBLEMS if q["name"] == "Roszman1")
    _, _, x, resp = _nist.nist_problem(p, xp)
    x = xp.asarray(x, device=device)
    resp = xp.asarray(resp, device=device)
    p0 = xp.asarray(p["start2"], dtype=xp.float64, device=device)

    def lossy_atan(z):
        if not xp.isdtype(z.dtype, "complex floating"):
            return xp.atan(z)
        w = z * 1j
        return (xp.log((1.0 + w) / (1.0 - w)) * 0.5) * (-1j)

    def model(t, b1, b2, b3, b4):  # NIST's Roszman1: b1 - b2 x - arctan(b3 / (x - b4)) / pi
        return b1 - b2 * t - lossy_atan(b3 / (t - b4)) / math.pi

    h = 1e-13  # the complex step agnopt takes for b3 ~ 1200 (eps |b3|): the formula loses it
    z = xp.asarray(3.0 + h * 1j, device=device)
    lost = abs(float(xp.imag(lossy_atan(z))) - h / 10.0) / (h / 10.0)
    assert lost > 1e-3, "the stand-in is not lossy: the test would not see the fault"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        popt, pcov = ao.curve_fit(model, x, resp, p0=p0, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    sd = np.sqrt(np.diag(to_numpy(pcov)))
    cert = np.array(p["certified_std_dev"])
    assert np.all(np.abs(sd - cert) / np.abs(cert) < 5e-5), (sd, cert)
    np.testing.assert_allclose(to_numpy(popt), p["certified_values"], rtol=1e-6)
