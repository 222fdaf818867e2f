"""A Newton step (``agnopt.minimize``) and batched Levenberg-Marquardt (``agnopt.curve_fit``)."""

from __future__ import annotations

import numpy as np

import agnopt as ao

from .common import BACKENDS, grid, load


class NewtonStep:
    """One iteration of ``minimize(method="newton")`` on a convex quadratic."""

    params = (BACKENDS, grid([100, 500], [20]))
    param_names = ["backend", "n"]
    timeout = 300

    def setup(self, backend, n):
        if not hasattr(ao, "minimize"):
            raise NotImplementedError("agnopt.minimize is not available")
        xp, device, sync = load(backend)
        rng = np.random.default_rng(0)
        M = rng.standard_normal((n, n))
        A = xp.asarray(M @ M.T / n + np.eye(n), dtype=xp.float64, device=device)
        b = xp.asarray(rng.standard_normal(n), dtype=xp.float64, device=device)
        self.x0 = xp.zeros(n, dtype=xp.float64, device=device)
        self.fun = lambda x: 0.5 * xp.sum(x * (A @ x)) - xp.sum(b * x)
        self.jac = lambda x: A @ x - b
        self.hess = lambda x: A
        self.sync = sync
        self.time_newton_step()

    def time_newton_step(self, *args):
        r = ao.minimize(self.fun, self.x0, method="newton", jac=self.jac, hess=self.hess, maxiter=1)
        self.sync(r.x)


class BatchedLM:
    """``curve_fit(batched=True)``: B independent 4-parameter Gaussian fits of 50 points."""

    params = (BACKENDS, grid([1_000, 10_000], [50]))
    param_names = ["backend", "B"]
    timeout = 600
    number = 1
    repeat = (2, 5, 60.0)

    def setup(self, backend, B):
        if not hasattr(ao, "curve_fit"):
            raise NotImplementedError("agnopt.curve_fit is not available")
        xp, device, sync = load(backend)
        if backend in ("dask", "array_api_strict") and B > 1_000:
            raise NotImplementedError("too slow to be useful at this size")
        rng = np.random.default_rng(0)
        m = 50
        P = np.stack([rng.uniform(1, 3, B), rng.uniform(-1, 1, B), rng.uniform(0.6, 1.5, B),
                      rng.uniform(0, 1, B)], 1)
        x = np.linspace(-5.0, 5.0, m)
        Y = (P[:, 0:1] * np.exp(-((x - P[:, 1:2]) ** 2) / (2 * P[:, 2:3] ** 2)) + P[:, 3:4]
             + 0.05 * rng.standard_normal((B, m)))
        self.x = xp.asarray(x, dtype=xp.float64, device=device)
        self.Y = xp.asarray(Y, dtype=xp.float64, device=device)
        self.p0 = xp.asarray([2.0, 0.0, 1.0, 0.5], dtype=xp.float64, device=device)
        self.sync = sync
        self.time_batched_fit()

    @staticmethod
    def model(x, a, mu, s, c):
        from array_api_compat import array_namespace

        xp = array_namespace(x, a)
        return a * xp.exp(-((x - mu) ** 2) / (2 * s * s)) + c

    def time_batched_fit(self, *args):
        popt, _ = ao.curve_fit(self.model, self.x, self.Y, p0=self.p0, batched=True)
        self.sync(popt)


class SingleFit:
    """One small fit: ``a exp(-b t) + c``, 50 points, 3 parameters (issue 14's latency case).

    ``curve_fit`` and ``least_squares(method="lm")`` with the default Jacobian
    (complex step) and ``"2-point"``; scipy's times are the reference
    (``python -m agnopt fitbench --single`` prints both with their ratio). On
    JAX the time is a later call's (setup runs the first, which compiles).
    """

    params = (["numpy", "torch", "array_api_strict", "jax"], ["curve_fit", "least_squares"],
              ["default", "2-point"])
    param_names = ["backend", "call", "jac"]
    timeout = 120

    def setup(self, backend, call, jac):
        xp, device, sync = load(backend)
        t = np.linspace(0.0, 4.0, 50)
        y = 2.5 * np.exp(-1.3 * t) + 0.5 + 0.02 * np.random.default_rng(0).standard_normal(50)
        tx = xp.asarray(t, dtype=xp.float64, device=device)
        yx = xp.asarray(y, dtype=xp.float64, device=device)
        p0 = xp.asarray([1.0, 1.0, 1.0], dtype=xp.float64, device=device)
        j = None if jac == "default" else jac

        def model(x, a, b, c):
            return a * xp.exp(-b * x) + c

        if call == "curve_fit":
            self.run = lambda: ao.curve_fit(model, tx, yx, p0=p0, jac=j)[0]
        else:
            self.run = lambda: ao.least_squares(
                lambda p: p[0] * xp.exp(-p[1] * tx) + p[2] - yx, p0, jac=j, method="lm").x
        self.sync = sync
        self.time_single_fit()

    def time_single_fit(self, *args):
        self.sync(self.run())


class NewtonIterationRatio:
    """The issue-14 target as one figure: one Newton iteration at n = 500 (NumPy) over one
    Cholesky factorization and solve of the same size (goal: 1.2; ``agnopt bench``'s
    ``newton_vs_cholesky``, which also reports the one-step solve). Run with
    ``OPENBLAS_NUM_THREADS=1``: with BLAS threads on a busy machine the difference of
    two run times it is computed from is dominated by thread contention."""

    unit = "ratio"
    number = 1
    repeat = 1
    timeout = 300

    def setup(self):
        if not hasattr(ao, "minimize"):
            raise NotImplementedError("agnopt.minimize is not available")

    def track_newton_iteration_over_cholesky_n500(self):
        from agnopt._cli.newton_bench import newton_vs_cholesky

        return newton_vs_cholesky(500)["ratio"]


class NewtonRosenbrockRatio:
    """The issue-14 target: ``minimize(method="newton")`` on 2-D Rosenbrock with exact
    derivatives over scipy's ``trust-exact`` on the same problem, in one process
    (goal: at most 1; ``agnopt bench`` also prints n = 10)."""

    unit = "ratio"
    number = 1
    repeat = 1
    timeout = 120

    def setup(self):
        if not hasattr(ao, "minimize"):
            raise NotImplementedError("agnopt.minimize is not available")

    def track_newton_over_trust_exact_rosenbrock(self):
        from agnopt._cli.newton_bench import newton_vs_trust_exact

        return newton_vs_trust_exact(2, repeats=grid(20, 3))["ratio"]


class BatchedOverFloor:
    """The issue-14 batched target as one figure: ``curve_fit(batched=True)`` (NumPy,
    Gaussian peaks, 4 parameters, 50 points) over its evaluation floor, the model and
    Jacobian evaluated as often as the fit did, in a tight loop (goal: 2;
    ``python -m agnopt fitbench``'s ``total / floor``)."""

    params = (grid(["float64", "float32"], ["float64"]), ["analytic", "default"])
    param_names = ["dtype", "jac"]
    unit = "ratio"
    number = 1
    repeat = 1
    timeout = 300

    def setup(self, dtype, jac):
        if not hasattr(ao, "curve_fit"):
            raise NotImplementedError("agnopt.curve_fit is not available")

    def track_batched_over_floor_B1000(self, dtype, jac):
        from agnopt._cli.fitbench import run_fit_benchmark

        out = run_fit_benchmark(B=grid(1000, 100), m=50, scipy_subset=0, dtype=dtype,
                                jac="analytic" if jac == "analytic" else None, verbose=False)
        return out["floor_ratio"]
