"""Compiled blocks (``agnopt._core.backend.compiled``): one implementation, compiled on JAX.

The least-squares engine runs groups of its array operations through
``compiled``: ``jax.jit`` on JAX, the function itself on every other backend.
These tests check that the wrapper caches one program per shape, that the
host shortcuts skipped inside a compiled block give the same numbers, and
that a fit on JAX (compiled) takes the NumPy fit's iterations, evaluations
and point, and the eager JAX fit's (``jax.disable_jit``).
"""

from __future__ import annotations

import numpy as np
import pytest

import agnopt as ao
from agnopt._core import lazy
from agnopt._core.backend import compiled


def _jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax


def _traced_twice(xp, a, b):
    # the Python body runs once per trace on JAX, once per call elsewhere
    _traced_twice.count += 1
    return xp.where(a > 0, a * b, b)


def test_compiled_runs_the_function_itself_off_jax():
    import array_api_compat.numpy as xp

    fn = compiled(_traced_twice)
    _traced_twice.count = 0
    a = xp.asarray([1.0, -1.0])
    out = fn(xp, a, a)
    fn(xp, a, a)
    assert _traced_twice.count == 2
    np.testing.assert_array_equal(out, [1.0, -1.0])
    assert fn.uncompiled is _traced_twice


def test_compiled_caches_one_program_per_shape_on_jax():
    jax = _jax()
    import jax.numpy as jnp

    fn = compiled(_traced_twice)
    _traced_twice.count = 0
    a = jnp.asarray([1.0, -2.0])
    out = fn(jnp, a, a)
    fn(jnp, a + 1.0, a)
    assert _traced_twice.count == 1  # the second call reuses the program
    fn(jnp, jnp.ones(3), jnp.ones(3))
    assert _traced_twice.count == 2  # a new shape: a new program
    np.testing.assert_array_equal(np.asarray(out), [1.0, -2.0])
    with jax.disable_jit():
        fn(jnp, a, a)
    assert _traced_twice.count == 3  # disable_jit runs the body as written


def test_known_all_is_false_for_traced_arrays():
    jax = _jax()
    import jax.numpy as jnp

    seen = []

    @jax.jit
    def f(a):
        seen.append((lazy.known_all(jnp, a), lazy.known_none(jnp, a)))
        return a

    f(jnp.ones(2, dtype=bool))
    assert seen == [(False, False)]
    assert lazy.known_all(jnp, jnp.ones(2, dtype=bool))
    assert not lazy.known_all(jnp, jnp.asarray([True, False]))
    assert lazy.known_none(jnp, jnp.zeros(2, dtype=bool))


def test_lmpar_compiled_pieces_equal_the_numpy_ones():
    """``lmpar`` with its Newton iterations running (steps outside the radius),
    on JAX (three compiled blocks) and on NumPy."""
    _jax()
    import array_api_compat.numpy as npx
    import jax.numpy as jnp

    from agnopt._least_squares.cholesky import chol_inv
    from agnopt._least_squares.lmpar import CholeskyBasis, lmpar

    rng = np.random.default_rng(3)
    J = rng.standard_normal((4, 12, 3))
    f = rng.standard_normal((4, 12))
    delta = np.array([1e-3, 1e-2, 1e3, 0.05])  # the third takes the Gauss-Newton step
    out = []
    for xp in (npx, jnp):
        Jx, fx = xp.asarray(J), xp.asarray(f)
        As = xp.matmul(xp.matrix_transpose(Jx), Jx)
        gs = xp.matmul(fx[:, None, :], Jx)[:, 0, :]
        Linv0, _ = chol_inv(xp, As)
        basis = CholeskyBasis(As, gs, Linv0, xp.eye(3, dtype=xp.float64))
        par, q, _ = lmpar(xp, basis, xp.asarray(delta), xp.zeros(4, dtype=xp.float64),
                          xp.ones(4, dtype=xp.bool))
        out.append((np.asarray(par), np.asarray(q)))
    assert np.all(out[0][0][[0, 1, 3]] > 0) and out[0][0][2] == 0
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-12)
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-12, atol=1e-15)
    q_norm = np.linalg.norm(out[0][1], axis=-1)
    assert np.all(np.abs(q_norm[[0, 1, 3]] - delta[[0, 1, 3]]) <= 0.1 * delta[[0, 1, 3]])


def _exp_data(m=50):
    t = np.linspace(0.0, 4.0, m)
    y = 2.5 * np.exp(-1.3 * t) + 0.5 + 0.02 * np.sin(7.0 * t)
    return t, y


@pytest.mark.parametrize("case", ["near", "far", "bounded", "2-point"])
def test_lm_fit_on_jax_equals_numpy_and_eager_jax(case):
    """A fit on JAX takes the NumPy fit's steps: same nit / nfev / njev / status,
    same point to rounding; and the compiled blocks equal the eager JAX run."""
    jax = _jax()
    import jax.numpy as jnp

    t, y = _exp_data()
    # "far": steps limited by the radius (lmpar's iterations, geodesic acceleration)
    p0 = {"far": [10.0, 0.05, -3.0], "bounded": [1.0, 2.0, 1.0]}.get(case, [1.0, 1.0, 1.0])
    kw: dict = {"method": "lm"}
    if case == "bounded":
        kw = {"method": "lm", "bounds": ([0.0, 1.4, 0.0], [10.0, 10.0, 10.0])}
    if case == "2-point":
        kw["jac"] = "2-point"

    def res_np(p):
        return p[0] * np.exp(-p[1] * t) + p[2] - y

    tj, yj = jnp.asarray(t), jnp.asarray(y)

    def res_j(p):
        return p[0] * jnp.exp(-p[1] * tj) + p[2] - yj

    ref = ao.least_squares(res_np, np.asarray(p0), **kw)
    got = ao.least_squares(res_j, jnp.asarray(p0), **kw)
    with jax.disable_jit():
        eager = ao.least_squares(res_j, jnp.asarray(p0), **kw)
    assert ref.success and got.success
    # "2-point": the forward differences divide an ulp of difference between JAX's and
    # NumPy's exp by h ~ 1.5e-8, so the two Jacobians differ by ~1e-8 relative, and the
    # points where the fit stops on ftol (status 2) by about that times the last step
    # (also with fun compiled into the whole-solve program, agnopt._least_squares.jax_solve,
    # which rounds an ulp differently from fun run op by op)
    rtol = 1e-9 if case == "2-point" else 1e-10
    for r in (got, eager):
        assert (r.nfev, r.njev, r.status) == (ref.nfev, ref.njev, ref.status)
        np.testing.assert_allclose(np.asarray(r.x), ref.x, rtol=rtol)
        np.testing.assert_allclose(np.asarray(r.cost), ref.cost, rtol=1e-9)
    if case == "bounded":
        assert np.asarray(got.x)[1] == 1.4  # the bound is active: the test means something


def test_batched_lm_on_jax_equals_numpy():
    jax = _jax()
    import jax.numpy as jnp

    t, y = _exp_data(30)
    scale = np.array([1.0, 2.0, 0.5])[:, None]
    Y = scale * y[None, :]
    P0 = np.array([[1.0, 1.0, 1.0], [5.0, 0.1, 0.0], [0.2, 3.0, 0.3]])

    def res_np(P):
        return P[:, 0:1] * np.exp(-P[:, 1:2] * t) + P[:, 2:3] - Y

    tj, Yj = jnp.asarray(t), jnp.asarray(Y)

    def res_j(P):
        return P[:, 0:1] * jnp.exp(-P[:, 1:2] * tj) + P[:, 2:3] - Yj

    ref = ao.least_squares(res_np, P0, method="lm", batched=True)
    got = ao.least_squares(res_j, jnp.asarray(P0), method="lm", batched=True)
    with jax.disable_jit():
        eager = ao.least_squares(res_j, jnp.asarray(P0), method="lm", batched=True)
    np.testing.assert_array_equal(np.asarray(got.nfev), np.asarray(ref.nfev))
    np.testing.assert_array_equal(np.asarray(got.success), np.asarray(ref.success))
    # every problem stops on xtol (1e-8): the last step's rounding shows at ~1e-9
    np.testing.assert_allclose(np.asarray(got.x), np.asarray(ref.x), rtol=1e-7)
    # the third problem ends on the ftol test's edge: NumPy's rounding says ftol and
    # xtol (4), JAX's xtol (3), compiled or not; the compiled blocks change nothing
    np.testing.assert_array_equal(np.asarray(got.status), np.asarray(eager.status))
    np.testing.assert_array_equal(np.asarray(got.nfev), np.asarray(eager.nfev))
    np.testing.assert_allclose(np.asarray(got.x), np.asarray(eager.x), rtol=1e-12)
