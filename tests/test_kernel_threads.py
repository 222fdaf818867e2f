"""The numba kernels are compiled once per process, safely from several threads at once.

A Dask array's chunks are solved by a thread pool: every thread of a fresh
process reached the lazy ``_compile`` of ``agnopt._kernels.lm_batched_cpu``
together and re-jitted an already jitted function (TypeError; found by a
fresh-user trial with the Dask guide's batched example). Each case runs in a
new interpreter, where nothing is compiled yet.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")

SCRIPT = textwrap.dedent(
    """
    import threading
    import numpy as np
    import agnopt as ao

    BATCHED = {batched}
    x = np.linspace(0.0, 4.0, 30)

    def model(x, a, k, c):
        return a * np.exp(-k * x) + c

    rng = np.random.default_rng(1)
    ks = [rng.uniform(0.5, 2.0, (200, 1) if BATCHED else (1,)) for _ in range(4)]
    out, errs = [None] * 4, []
    barrier = threading.Barrier(4)

    def run(i):
        try:
            barrier.wait()
            y = 2.0 * np.exp(-ks[i] * x) + 0.5
            out[i] = ao.curve_fit(model, x, y, p0=np.array([1.0, 1.0, 0.0]), batched=BATCHED)[0]
        except Exception as e:  # reported below
            errs.append(repr(e))

    ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs, errs
    for o, k in zip(out, ks):
        k_fit = o[:, 1] if BATCHED else o[1:2]
        np.testing.assert_allclose(k_fit, k.ravel(), rtol=1e-6)
    print("ok")
    """
)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "one-problem"])
def test_first_fits_in_four_threads_at_once(batched):
    env = dict(os.environ, AGNOPT_FAST="numba")  # the kernels from the first fit on
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(batched=batched)],
                       capture_output=True, text=True, env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("ok")
