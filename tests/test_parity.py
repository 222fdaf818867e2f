"""Trajectory parity with torch.optim and optax (references no one here wrote).

For every optimizer and each of its options, 60 steps on two test functions
(5-D Rosenbrock and an ill-conditioned 6-D quadratic) in float64: agnopt's
iterates, on every backend of the matrix, equal torch.optim's (CPU) to a
relative 1e-10, and optax's for the options optax has. The worst relative
error per configuration is printed in the terminal summary.
"""

from __future__ import annotations

import functools

import array_api_compat.numpy as npx
import numpy as np
import pytest
from conftest import PARITY, materialize, to_numpy
from problems import Quadratic, rosenbrock_grad

import agnopt as ao

torch = pytest.importorskip("torch")

STEPS = 60
RTOL = 1e-10

ROSEN_X0 = np.array([-1.2, 1.0, -0.5, 0.8, 1.1])
QUAD = Quadratic(n=6, cond=100.0, seed=0)
QUAD_X0 = np.array([2.0, -1.0, 0.5, 3.0, -2.0, 1.0])


def _np_grad(problem, x):
    if problem == "rosenbrock":
        return np.asarray(rosenbrock_grad(npx, x))
    return QUAD.A @ (x - QUAD.c)


PROBLEMS = {"rosenbrock": ROSEN_X0, "quadratic": QUAD_X0}


def _decay_sched(lr, rate):
    # lr * rate**t, the schedule torch's LambdaLR(lambda k: rate**k) applies
    return ao.exponential_decay(lr, 1, rate)


# name -> (agnopt factory, torch factory(params) or None, optax factory or None, lr scale per problem)
# Learning rates are per problem: (rosenbrock, quadratic).
def _configs():
    c = {}

    def add(name, ours, theirs_torch, theirs_optax):
        c[name] = (ours, theirs_torch, theirs_optax)

    T = torch.optim
    add("sgd", lambda lr: ao.sgd(lr), lambda p, lr: T.SGD(p, lr=lr), lambda ox, lr: ox.sgd(lr))
    add("sgd-momentum", lambda lr: ao.sgd(lr, momentum=0.9),
        lambda p, lr: T.SGD(p, lr=lr, momentum=0.9), lambda ox, lr: ox.sgd(lr, momentum=0.9))
    add("sgd-nesterov", lambda lr: ao.sgd(lr, momentum=0.9, nesterov=True),
        lambda p, lr: T.SGD(p, lr=lr, momentum=0.9, nesterov=True),
        lambda ox, lr: ox.sgd(lr, momentum=0.9, nesterov=True))
    add("sgd-dampening", lambda lr: ao.sgd(lr, momentum=0.8, dampening=0.3),
        lambda p, lr: T.SGD(p, lr=lr, momentum=0.8, dampening=0.3), None)
    add("sgd-weight_decay", lambda lr: ao.sgd(lr, momentum=0.5, weight_decay=0.1),
        lambda p, lr: T.SGD(p, lr=lr, momentum=0.5, weight_decay=0.1), None)
    add("sgd-schedule", lambda lr: ao.sgd(_decay_sched(lr, 0.97), momentum=0.9),
        lambda p, lr: T.SGD(p, lr=lr, momentum=0.9), None)  # torch side gets LambdaLR
    add("sign_sgd", lambda lr: ao.sign_sgd(lr), None,
        lambda ox, lr: ox.chain(ox.scale_by_sign(), ox.scale(-lr)))
    add("adagrad", lambda lr: ao.adagrad(lr), lambda p, lr: T.Adagrad(p, lr=lr), None)
    add("adagrad-init_acc", lambda lr: ao.adagrad(lr, initial_accumulator_value=0.1),
        lambda p, lr: T.Adagrad(p, lr=lr, initial_accumulator_value=0.1), None)
    add("adagrad-weight_decay", lambda lr: ao.adagrad(lr, weight_decay=0.05),
        lambda p, lr: T.Adagrad(p, lr=lr, weight_decay=0.05), None)
    add("adagrad-eps_in_sqrt", lambda lr: ao.adagrad(lr, initial_accumulator_value=0.1, eps=1e-7, eps_in_sqrt=True),
        None, lambda ox, lr: ox.adagrad(lr))
    # the torch guide's mapping of Adagrad(lr_decay=d): the count is an int32 array, cast
    # by float() so lr / (1 + t * d) is computed in float64 as torch does (t * d on an int32
    # torch tensor is float32: 9e-9 relative off over 60 steps)
    add("adagrad-lr_decay", lambda lr: ao.adagrad(lambda t: lr / (1 + float(t) * 0.05)),
        lambda p, lr: T.Adagrad(p, lr=lr, lr_decay=0.05), None)
    add("rmsprop", lambda lr: ao.rmsprop(lr), lambda p, lr: T.RMSprop(p, lr=lr, alpha=0.9), None)
    add("rmsprop-centered", lambda lr: ao.rmsprop(lr, centered=True),
        lambda p, lr: T.RMSprop(p, lr=lr, alpha=0.9, centered=True), None)
    add("rmsprop-momentum", lambda lr: ao.rmsprop(lr, momentum=0.7),
        lambda p, lr: T.RMSprop(p, lr=lr, alpha=0.9, momentum=0.7), None)
    add("rmsprop-centered-momentum-wd", lambda lr: ao.rmsprop(lr, decay=0.99, centered=True, momentum=0.5, weight_decay=0.01),
        lambda p, lr: T.RMSprop(p, lr=lr, alpha=0.99, centered=True, momentum=0.5, weight_decay=0.01), None)
    add("rmsprop-eps_in_sqrt", lambda lr: ao.rmsprop(lr, eps_in_sqrt=True),
        None, lambda ox, lr: ox.rmsprop(lr))
    add("rmsprop-eps_in_sqrt-centered-momentum", lambda lr: ao.rmsprop(lr, eps_in_sqrt=True, centered=True, momentum=0.6),
        None, lambda ox, lr: ox.rmsprop(lr, centered=True, momentum=0.6))
    add("adam", lambda lr: ao.adam(lr), lambda p, lr: T.Adam(p, lr=lr), lambda ox, lr: ox.adam(lr))
    add("adam-betas-eps", lambda lr: ao.adam(lr, b1=0.8, b2=0.99, eps=1e-6),
        lambda p, lr: T.Adam(p, lr=lr, betas=(0.8, 0.99), eps=1e-6),
        lambda ox, lr: ox.adam(lr, b1=0.8, b2=0.99, eps=1e-6))
    add("adam-amsgrad", lambda lr: ao.adam(lr, amsgrad=True), lambda p, lr: T.Adam(p, lr=lr, amsgrad=True), None)
    add("adam-weight_decay", lambda lr: ao.adam(lr, weight_decay=0.1),
        lambda p, lr: T.Adam(p, lr=lr, weight_decay=0.1), None)
    add("adam-eps_root", lambda lr: ao.adam(lr, eps_root=1e-8), None, lambda ox, lr: ox.adam(lr, eps_root=1e-8))
    add("adam-schedule", lambda lr: ao.adam(_decay_sched(lr, 0.97)),
        lambda p, lr: T.Adam(p, lr=lr), None)  # torch side gets LambdaLR
    add("adam-cosine", lambda lr: ao.adam(ao.cosine_decay(lr, 40, alpha=0.1)), None,
        lambda ox, lr: ox.adam(ox.cosine_decay_schedule(lr, 40, alpha=0.1)))
    add("adamw", lambda lr: ao.adamw(lr), lambda p, lr: T.AdamW(p, lr=lr),
        lambda ox, lr: ox.adamw(lr, weight_decay=1e-2))
    add("adamw-amsgrad", lambda lr: ao.adamw(lr, amsgrad=True, weight_decay=0.1),
        lambda p, lr: T.AdamW(p, lr=lr, amsgrad=True, weight_decay=0.1), None)
    # (optax evaluates exponential/linear schedules in float32 for its int32
    # step count, so trajectories with them agree only to ~1e-8; their values
    # are compared in test_schedules_match_optax instead.)
    return c


CONFIGS = _configs()

LR = {  # (rosenbrock, quadratic)
    "sgd": (2e-4, 2e-3), "sign_sgd": (1e-2, 1e-2), "adagrad": (5e-2, 1e-1),
    "rmsprop": (1e-3, 1e-2), "adam": (1e-2, 5e-2), "adamw": (1e-2, 5e-2),
}


def _lr(name, problem):
    base = name.split("-")[0]
    return LR[base][0 if problem == "rosenbrock" else 1]


@functools.cache
def torch_trajectory(name, problem):
    make = CONFIGS[name][1]
    lr = _lr(name, problem)
    t = torch.tensor(PROBLEMS[problem].copy(), dtype=torch.float64, requires_grad=True)
    opt = make([t], lr)
    sched = None
    if name.endswith("-schedule"):
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.97**k)
    traj = []
    for _ in range(STEPS):
        g = _np_grad(problem, t.detach().numpy().copy())
        t.grad = torch.from_numpy(g)
        opt.step()
        if sched is not None:
            sched.step()
        traj.append(t.detach().numpy().copy())
    return np.array(traj)


@functools.cache
def optax_trajectory(name, problem):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp

    lr = _lr(name, problem)
    opt = CONFIGS[name][2](optax, lr)
    x = jnp.asarray(PROBLEMS[problem].copy(), dtype=jnp.float64)
    state = opt.init(x)
    traj = []
    for _ in range(STEPS):
        g = jnp.asarray(_np_grad(problem, np.asarray(x)))
        u, state = opt.update(g, state, x)
        x = optax.apply_updates(x, u)
        traj.append(np.asarray(x))
    return np.array(traj)


def agnopt_trajectory(xp, device, name, problem):
    lr = _lr(name, problem)
    opt = CONFIGS[name][0](lr)
    x = xp.asarray(PROBLEMS[problem].copy(), dtype=xp.float64, device=device)
    if problem == "quadratic":
        A, c = QUAD.arrays(xp, xp.float64, device)
        grad = lambda x: QUAD.grad(xp, x, A, c)
    else:
        grad = lambda x: rosenbrock_grad(xp, x)
    state = opt.init(x)
    traj = []
    for _ in range(STEPS):
        u, state = opt.update(grad(x), state, x)
        x = ao.apply_updates(x, u)
        x, state = materialize((x, state))
        traj.append(to_numpy(x))
    return np.array(traj)


def rel_err(a, ref):
    scale = np.maximum(np.max(np.abs(ref), axis=1, keepdims=True), 1e-300)
    return float(np.max(np.abs(a - ref) / scale))


TORCH_CASES = [(n, p) for n in CONFIGS if CONFIGS[n][1] is not None for p in PROBLEMS]
OPTAX_CASES = [(n, p) for n in CONFIGS if CONFIGS[n][2] is not None for p in PROBLEMS]


@pytest.mark.parametrize("name,problem", TORCH_CASES, ids=[f"{n}-{p}" for n, p in TORCH_CASES])
def test_matches_torch_optim(backend, name, problem):
    case, xp, device = backend
    ref = torch_trajectory(name, problem)
    got = agnopt_trajectory(xp, device, name, problem)
    assert np.all(np.isfinite(ref))
    # the trajectory really moves (a test that cannot fail otherwise)
    assert np.max(np.abs(ref[-1] - PROBLEMS[problem])) > 1e-3
    err = rel_err(got, ref)
    PARITY.record("torch.optim", name, str(case), err)
    assert err <= RTOL, f"{name} on {problem}: relative error {err:.2e} vs torch.optim"


@pytest.mark.parametrize("name,problem", OPTAX_CASES, ids=[f"{n}-{p}" for n, p in OPTAX_CASES])
def test_matches_optax(backend, name, problem):
    case, xp, device = backend
    pytest.importorskip("optax")
    ref = optax_trajectory(name, problem)
    got = agnopt_trajectory(xp, device, name, problem)
    assert np.max(np.abs(ref[-1] - PROBLEMS[problem])) > 1e-3
    err = rel_err(got, ref)
    PARITY.record("optax", name, str(case), err)
    assert err <= RTOL, f"{name} on {problem}: relative error {err:.2e} vs optax"


def test_sign_sgd_is_rmsprop_without_cumulant(xp, device):
    """The seed's limit: RMSProp with decay 0 and eps 0 is sign descent."""
    x0 = xp.asarray(ROSEN_X0, dtype=xp.float64, device=device)
    trajs = []
    for opt in (ao.sign_sgd(1e-2), ao.rmsprop(1e-2, decay=0.0, eps=0.0)):
        x, s = x0, opt.init(x0)
        for _ in range(30):
            u, s = opt.update(rosenbrock_grad(xp, x), s, x)
            x = ao.apply_updates(x, u)
            x, s = materialize((x, s))
        trajs.append(to_numpy(x))
    np.testing.assert_allclose(trajs[0], trajs[1], rtol=1e-14, atol=0)
    assert np.max(np.abs(trajs[0] - ROSEN_X0)) > 0.1


SCHEDULES = {
    "constant": (lambda: ao.constant(0.3), lambda ox: ox.constant_schedule(0.3)),
    "exponential_decay": (lambda: ao.exponential_decay(0.1, 7, 0.5, transition_begin=3),
                          lambda ox: ox.exponential_decay(0.1, 7, 0.5, transition_begin=3)),
    "exponential_decay-staircase-end": (
        lambda: ao.exponential_decay(0.1, 7, 0.5, staircase=True, end_value=0.01),
        lambda ox: ox.exponential_decay(0.1, 7, 0.5, staircase=True, end_value=0.01)),
    "cosine_decay": (lambda: ao.cosine_decay(0.1, 40, alpha=0.1, exponent=2.0),
                     lambda ox: ox.cosine_decay_schedule(0.1, 40, alpha=0.1, exponent=2.0)),
    "linear_warmup": (lambda: ao.linear_warmup(0.0, 0.2, 15),
                      lambda ox: ox.linear_schedule(0.0, 0.2, 15)),
    "warmup_cosine_decay": (lambda: ao.warmup_cosine_decay(0.0, 0.01, 10, 50, end_value=1e-3),
                            lambda ox: ox.warmup_cosine_decay_schedule(0.0, 0.01, 10, 50, end_value=1e-3)),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedules_match_optax(xp, device, name):
    """Schedule values at Python-int and array steps equal optax's.

    optax evaluates some schedules in float32 for an int32 step (its linear
    schedule divides an int32 count), so the tolerance is float32's.
    """
    optax = pytest.importorskip("optax")
    ours, theirs = SCHEDULES[name][0](), SCHEDULES[name][1](optax)
    for t in [0, 1, 2, 5, 9, 10, 11, 17, 30, 49, 50, 80]:
        ref = float(theirs(t))
        assert ours(t) == pytest.approx(ref, rel=1e-6, abs=1e-12)
        tt = xp.asarray(t, dtype=xp.int32, device=device)
        assert float(ours(tt)) == pytest.approx(ref, rel=1e-6, abs=1e-12)
