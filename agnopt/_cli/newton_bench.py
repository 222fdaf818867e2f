"""Newton's method against its references: one iteration against one Cholesky
factorization (:func:`newton_vs_cholesky`) and a whole solve on Rosenbrock's
function against ``scipy.optimize.minimize(method="trust-exact")``
(:func:`newton_vs_trust_exact`). Used by ``python -m agnopt bench`` and asv."""

from __future__ import annotations

import time

import numpy as np

from .single_fit import best_pair

__all__ = ["newton_vs_cholesky", "newton_vs_trust_exact"]


def newton_vs_cholesky(n: int, repeats: int = 15) -> dict:
    r"""One Newton iteration at size ``n`` against one Cholesky factorization and solve.

    * ``per_iteration``: ``minimize(method="newton")`` on :math:`f(x) =
      \tfrac12 x^TAx - b^Tx + \tfrac{c}{4}\sum_i x_i^4` (A symmetric positive
      definite, a new Hessian :math:`A + 3c\,\mathrm{diag}(x^2)` at every
      iterate) from :math:`x_0 = 10`, which takes 8 full steps: the time per
      iteration is :math:`(t_K - t_1)/(K - 1)` with ``maxiter`` K = 5 and 1
      (neither run converges, so neither makes the second-order test at a
      solution). The reference is SciPy's ``cho_factor`` + ``cho_solve``
      (LAPACK potrf + potrs) of the Hessian at :math:`x_0`. The iteration
      also calls the user's ``hess``, ``fun`` (the line search's trial) and
      ``jac`` once each; ``callbacks_s`` is their own time per iteration, and
      ``ratio_solver`` leaves it out.
    * ``one_step``: ``minimize(method="newton", maxiter=1)`` on the quadratic
      :math:`\tfrac12 x^TAx - b^Tx` from 0: one Newton step that lands on the
      solution, then the second-order test there (a second Hessian and a
      second factorization: success must mean a minimum), against one
      factorization and solve.

    Best of ``repeats`` rounds, the agnopt runs and the reference alternated
    in each round. BLAS threads are whatever the environment set.
    """
    import agnopt as ao

    try:
        import scipy.linalg as sl

        def factor_solve(H, g):  # the fair LAPACK reference: potrf + potrs
            return sl.cho_solve(sl.cho_factor(H, check_finite=False), g, check_finite=False)
    except ImportError:
        def factor_solve(H, g):
            L = np.linalg.cholesky(H)
            return np.linalg.solve(L.T, np.linalg.solve(L, g))

    rng = np.random.default_rng(0)
    M = rng.standard_normal((n, n))
    A = M @ M.T / n + np.eye(n)
    b = rng.standard_normal(n)
    c = 0.1
    di = np.diag_indices(n)

    def fun(x):
        return 0.5 * x @ (A @ x) - b @ x + 0.25 * c * (x ** 4).sum()

    def jac(x):
        return A @ x - b + c * x ** 3

    def hess(x):
        H = A.copy()
        H[di] += 3.0 * c * x * x
        return H

    x0 = np.full(n, 10.0)
    K = 5
    H0, g0 = hess(x0), jac(x0)
    runs = {
        "t1": lambda: ao.minimize(fun, x0, method="newton", jac=jac, hess=hess, maxiter=1),
        "tK": lambda: ao.minimize(fun, x0, method="newton", jac=jac, hess=hess, maxiter=K),
        "ref": lambda: factor_solve(H0, g0),
        "callbacks": lambda: (hess(x0), fun(x0), jac(x0)),
        "one_step": lambda: ao.minimize(lambda x: 0.5 * x @ (A @ x) - b @ x, np.zeros(n), method="newton",
                                        jac=lambda x: A @ x - b, hess=lambda x: A, maxiter=1),
        "one_step_ref": lambda: factor_solve(A, b),
    }
    res_K = runs["tK"]()
    if res_K.status != 1 or res_K.nit != K:  # pragma: no cover - the problem is fixed
        raise RuntimeError(f"per-iteration problem: expected {K} unconverged iterations, got {res_K.nit}")
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    per_it = (best["tK"] - best["t1"]) / (K - 1)
    return {"n": n, "t_iteration": per_it, "t_cholesky_solve": best["ref"], "ratio": per_it / best["ref"],
            "callbacks_s": best["callbacks"],
            "ratio_solver": (per_it - best["callbacks"]) / best["ref"],
            "t_one_step": best["one_step"], "t_one_step_ref": best["one_step_ref"],
            "ratio_one_step": best["one_step"] / best["one_step_ref"]}


def newton_vs_trust_exact(n: int = 2, repeats: int = 20) -> dict:
    """``minimize(method="newton")`` on Rosenbrock's function against scipy's
    ``minimize(method="trust-exact")``, both with scipy's exact ``rosen_der``
    and ``rosen_hess``, from the classic start ``(-1.2, 1, -1.2, 1, ...)``
    (``n`` even). Best of ``repeats``, the two alternated; ``ratio`` =
    agnopt / scipy (goal: at most 1), ``nit`` of each and whether both end at
    the same point (for ``n >= 4`` both reach the local minimum near
    ``(-1, 1, ..., 1)``)."""
    import scipy.optimize as so

    import agnopt as ao

    x0 = np.tile([-1.2, 1.0], n // 2)

    def ours():
        return ao.minimize(so.rosen, x0, method="newton", jac=so.rosen_der, hess=so.rosen_hess)

    def ref():
        return so.minimize(so.rosen, x0, method="trust-exact", jac=so.rosen_der,
                           hess=so.rosen_hess)

    a, r = ours(), ref()
    ta, tr = best_pair(ours, ref, repeats)
    return {"n": n, "t_agnopt": ta, "t_scipy": tr, "ratio": ta / tr, "nit_agnopt": int(a.nit),
            "nit_scipy": int(r.nit), "success": bool(a.success),
            # (trust-exact stops at a gradient of ~1e-6, its gtol; agnopt's is ~1e-10)
            "same_point": bool(np.max(np.abs(np.asarray(a.x) - r.x)) < 1e-4 * max(1.0, np.max(np.abs(r.x))))}
