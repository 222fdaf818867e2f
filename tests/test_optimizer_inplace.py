"""``Optimizer.step`` writes the new values into the caller's arrays, whatever path computed them.

A fresh-user trial found that ``Optimizer.step`` left a torch model's
parameters untouched (the model never trained, silently) wherever the fused
in-place path did not apply: user-built chains (``chain(clip_by_global_norm,
adamw)``), ``apply_if_finite``, ``mu_dtype`` other than the parameters',
non-contiguous leaves (channels_last, transposed, strided or Fortran-order),
``flat=True`` and ``AGNOPT_FAST=0``. Each case here checks that the caller's
own arrays equal ``opt.params`` and, where torch.optim has the same optimizer,
torch.optim's result (float64, relative 1e-10). Also: ``Optimizer`` accepts
``model.parameters()`` (a generator), as torch.optim does.
"""

from __future__ import annotations

import numpy as np
import pytest

import agnopt as ao

torch = pytest.importorskip("torch")

N_STEPS = 25


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64) + 0.7
    return X, y


def _linear(seed=1, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 1).to(dtype)


def _train_agnopt(model, tx, X, y, n=N_STEPS, **kw):
    params = dict(model.named_parameters())
    opt = ao.Optimizer(tx, params, **kw)
    for _ in range(n):
        model.zero_grad()
        ((model(X).squeeze(-1) - y) ** 2).mean().backward()
        opt.step({k: p.grad for k, p in params.items()})
    return params, opt


def _train_torch(model, make_opt, X, y, n=N_STEPS, clip=None):
    opt = make_opt(model.parameters())
    for _ in range(n):
        opt.zero_grad()
        ((model(X).squeeze(-1) - y) ** 2).mean().backward()
        if clip is not None:  # optax's rule, c / |g| (clip_grad_norm_ would add 1e-6 to |g|)
            total = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
            if total > clip:
                for p in model.parameters():
                    p.grad.mul_(clip / total)
        opt.step()
    return dict(model.named_parameters())


def _assert_user_is_result(params, opt, ref=None):
    """The caller's tensors are opt.params' and, with ``ref``, torch.optim's values."""
    for k, p in params.items():
        assert opt.params[k] is p or torch.equal(opt.params[k].detach(), p.detach()), k
        if ref is not None:
            torch.testing.assert_close(p.detach(), ref[k].detach(), rtol=1e-10, atol=0)


@pytest.mark.parametrize("fast", ["1", "0"])
def test_chain_clip_adamw_trains_a_torch_model(monkeypatch, fast):
    """The trial's reproducer: chain(clip, adamw) left nn.Linear unchanged (loss stayed 16.1)."""
    monkeypatch.setenv("AGNOPT_FAST", fast)
    X, y = _data()
    m, m_ref = _linear(), _linear()
    w0 = m.weight.detach().clone()
    params, opt = _train_agnopt(m, ao.chain(ao.clip_by_global_norm(1.0), ao.adamw(0.05)), X, y)
    ref = _train_torch(m_ref, lambda ps: torch.optim.AdamW(ps, lr=0.05), X, y, clip=1.0)
    assert not torch.equal(w0, m.weight.detach())
    _assert_user_is_result(params, opt, ref)


@pytest.mark.parametrize("fast", ["1", "0"])
def test_plain_adamw_and_agnopt_fast_0_give_the_same_model(monkeypatch, fast):
    """AGNOPT_FAST=0 (the generic path) updates the model as the fused path does."""
    monkeypatch.setenv("AGNOPT_FAST", fast)
    X, y = _data()
    m, m_ref = _linear(), _linear()
    params, opt = _train_agnopt(m, ao.adamw(0.05), X, y)
    ref = _train_torch(m_ref, lambda ps: torch.optim.AdamW(ps, lr=0.05), X, y)
    _assert_user_is_result(params, opt, ref)


def test_apply_if_finite_updates_the_model():
    X, y = _data()
    m, m_ref = _linear(), _linear()
    params, opt = _train_agnopt(m, ao.apply_if_finite(ao.adam(0.05), 3), X, y)
    ref = _train_torch(m_ref, lambda ps: torch.optim.Adam(ps, lr=0.05), X, y)
    _assert_user_is_result(params, opt, ref)


def test_mu_dtype_float32_on_bfloat16_model():
    """bf16 parameters with float32 moments (generic path): the bf16 tensors are written."""
    X, y = _data()
    m = _linear(dtype=torch.bfloat16)
    w_start = {k: p.detach().clone() for k, p in m.named_parameters()}
    tx = ao.adam(0.05, mu_dtype=torch.float32, nu_dtype=torch.float32)
    params, opt = _train_agnopt(m, tx, X.to(torch.bfloat16), y.to(torch.bfloat16), n=5)
    # the same steps through the functional API, from the same start and gradients
    m2 = _linear(dtype=torch.bfloat16)
    p = {k: v.detach().clone() for k, v in m2.named_parameters()}
    s = tx.init(p)
    for _ in range(5):
        for k, v in m2.named_parameters():
            v.data.copy_(p[k])
        m2.zero_grad()
        ((m2(X.to(torch.bfloat16)).squeeze(-1) - y.to(torch.bfloat16)) ** 2).mean().backward()
        u, s = tx.update({k: v.grad for k, v in m2.named_parameters()}, s, p)
        p = ao.apply_updates(p, u)
    for k, v in params.items():
        assert v.dtype == torch.bfloat16
        assert not torch.equal(v.detach(), w_start[k]), k
        assert torch.equal(v.detach(), opt.params[k].detach())
        assert torch.equal(v.detach(), p[k].to(torch.bfloat16)), k


def test_channels_last_conv2d_like_torch_adam():
    """A channels_last Conv2d (non-contiguous weight): weight and bias written, layout kept."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = x.to(memory_format=torch.channels_last)

    def conv():
        torch.manual_seed(2)
        return torch.nn.Conv2d(3, 4, 3).double().to(memory_format=torch.channels_last)

    c, c_ref = conv(), conv()
    params = dict(c.named_parameters())
    opt = ao.Optimizer(ao.adam(0.1), params)
    o_ref = torch.optim.Adam(c_ref.parameters(), lr=0.1)
    for _ in range(5):
        c.zero_grad()
        c(x).square().mean().backward()
        opt.step({k: p.grad for k, p in params.items()})
        o_ref.zero_grad()
        c_ref(x).square().mean().backward()
        o_ref.step()
    assert c.weight.is_contiguous(memory_format=torch.channels_last)
    assert not c.weight.is_contiguous()
    _assert_user_is_result(params, opt, dict(c_ref.named_parameters()))


def test_transposed_torch_tensor_like_torch_adam():
    base = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    w = base.t()  # a non-contiguous view: the generic path
    w_ref = base.t().clone().requires_grad_(True)
    opt = ao.Optimizer(ao.adam(0.1), w)
    o_ref = torch.optim.Adam([w_ref], lr=0.1)
    for k in range(5):
        g = torch.sin(w + k)  # a gradient depending on the current parameters
        opt.step(g)
        w_ref.grad = torch.sin(w_ref.detach() + k)
        o_ref.step()
    assert opt.params is w
    assert torch.equal(base.t(), w)  # the caller's storage holds the result
    torch.testing.assert_close(w, w_ref.detach(), rtol=1e-10, atol=0)


def _numpy_functional(tx, p0, n):
    p = p0.copy()
    s = tx.init(p)
    for k in range(n):
        u, s = tx.update(np.sin(p + k), s, p)
        p = ao.apply_updates(p, u)
    return p


@pytest.mark.parametrize("layout", ["fortran", "strided"])
def test_numpy_non_contiguous_arrays_are_written(layout):
    rng = np.random.default_rng(5)
    if layout == "fortran":
        w = np.asfortranarray(rng.standard_normal((4, 6)))
    else:
        w = rng.standard_normal((4, 12))[:, ::2]
    assert not w.flags.c_contiguous
    want = _numpy_functional(ao.adam(0.1), np.ascontiguousarray(w), 5)
    opt = ao.Optimizer(ao.adam(0.1), w)
    for k in range(5):
        opt.step(np.sin(w + k))
    assert opt.params is w
    np.testing.assert_array_equal(w, want)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_flat_mode_writes_the_callers_arrays(backend):
    """flat=True steps a copy in one buffer; the caller's arrays receive its values."""
    rng = np.random.default_rng(6)
    init = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    if backend == "numpy":
        params = {k: v.copy() for k, v in init.items()}
    else:
        params = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    ref = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    opt = ao.Optimizer(ao.adam(0.1), params, flat=True)
    o_ref = torch.optim.Adam(list(ref.values()), lr=0.1)
    for k in range(5):
        g = {n: np.sin(np.asarray(p.detach() if backend == "torch" else p) + k) for n, p in params.items()}
        opt.step(g if backend == "numpy" else {n: torch.tensor(v) for n, v in g.items()})
        for n, p in ref.items():
            p.grad = torch.sin(p.detach() + k)
        o_ref.step()
    for n, p in params.items():
        mine = np.asarray(p.detach() if backend == "torch" else p)
        np.testing.assert_array_equal(mine, np.asarray(opt.params[n].detach() if backend == "torch"
                                                       else opt.params[n]))
        np.testing.assert_allclose(mine, ref[n].detach().numpy(), rtol=1e-10, atol=0)


def test_read_only_numpy_is_not_written():
    """A read-only array cannot be written: opt.params holds the result, the input keeps its values."""
    w = np.arange(4.0)
    w.flags.writeable = False
    opt = ao.Optimizer(ao.adam(0.1), w)
    opt.step(np.ones(4))
    np.testing.assert_array_equal(w, np.arange(4.0))
    np.testing.assert_allclose(opt.params, np.arange(4.0) - 0.1)


def test_jax_params_are_returned_not_written():
    jnp = pytest.importorskip("jax.numpy")
    w = jnp.arange(4.0)
    opt = ao.Optimizer(ao.adam(0.1), w)
    opt.step(jnp.ones(4))
    np.testing.assert_array_equal(np.asarray(w), np.arange(4.0))
    np.testing.assert_allclose(np.asarray(opt.params), np.arange(4.0) - 0.1, rtol=1e-4)  # float32


def test_model_parameters_generator_is_accepted():
    """Optimizer(tx, model.parameters()) as torch.optim: the generator becomes a list."""
    X, y = _data()
    m, m_ref = _linear(), _linear()
    opt = ao.Optimizer(ao.adam(0.05), m.parameters())
    assert isinstance(opt.params, list)
    assert all(a is b for a, b in zip(opt.params, m.parameters()))
    for _ in range(N_STEPS):
        m.zero_grad()
        ((m(X).squeeze(-1) - y) ** 2).mean().backward()
        opt.step([p.grad for p in opt.params])
    ref = _train_torch(m_ref, lambda ps: torch.optim.Adam(ps, lr=0.05), X, y)
    for (k, p) in m.named_parameters():
        torch.testing.assert_close(p.detach(), ref[k].detach(), rtol=1e-10, atol=0)


def test_flat_mode_torch_parameters_share_the_buffer_and_views_are_copied():
    """flat=True: contiguous torch leaves (nn.Parameter) become views of the flat buffer (no copy
    per step); a non-contiguous leaf (transposed) receives a copy. Both equal torch.optim."""
    X, y = _data()
    m, m_ref = _linear(), _linear()
    extra = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8)).t())
    assert not extra.is_contiguous()
    extra_ref = extra.detach().clone().requires_grad_(True)
    params = {**dict(m.named_parameters()), "extra": extra}
    weight = m.weight
    opt = ao.Optimizer(ao.adam(0.05), params, flat=True)
    assert m.weight is weight  # the same Parameter object ...
    assert m.weight.data_ptr() == opt.params["weight"].data_ptr()  # ... now a view of the buffer
    assert extra.data_ptr() != opt.params["extra"].data_ptr()  # a transposed view: copied back
    o_ref = torch.optim.Adam([*m_ref.parameters(), extra_ref], lr=0.05)
    for k in range(N_STEPS):
        m.zero_grad()
        ((m(X).squeeze(-1) - y) ** 2).mean().backward()
        opt.step({"weight": m.weight.grad, "bias": m.bias.grad, "extra": torch.cos(extra.detach() + k)})
        o_ref.zero_grad()
        ((m_ref(X).squeeze(-1) - y) ** 2).mean().backward()
        extra_ref.grad = torch.cos(extra_ref.detach() + k)
        o_ref.step()
    ref = {**dict(m_ref.named_parameters()), "extra": extra_ref}
    for k, p in params.items():
        assert torch.equal(p.detach(), opt.params[k])
        torch.testing.assert_close(p.detach(), ref[k].detach(), rtol=1e-10, atol=0)
