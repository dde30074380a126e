"""course_lib.moe: routing, the Switch loss, capacity dispatch, grouped vs dense combine, training."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib import moe
from course_lib.data import load_digits_split
from course_lib.train import fit


@given(T=st.integers(0, 30), n=st.integers(1, 6), k=st.integers(1, 3), cap=st.integers(0, 12),
       seed=st.integers(0, 2**16))
def test_dispatch_matches_the_loop_oracle(T, n, k, cap, seed):
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(T)]) if T \
        else torch.empty(0, k, dtype=torch.int64)
    keep = moe.dispatch(idx, n, cap)
    assert torch.equal(keep, moe.dispatch_ref(idx, n, cap))
    per_expert = torch.bincount(idx[keep], minlength=n)
    assert all(c <= cap for c in per_expert.tolist())


def test_dispatch_priority_first_choices_before_second():
    # expert 0: t0 (1st), t2 (1st), then t1 (2nd) is dropped; expert 1: t1 (1st), t0 (2nd), t2 dropped
    idx = torch.tensor([[0, 1], [1, 0], [0, 1]])
    keep = moe.dispatch(idx, 2, capacity=2)
    assert keep.tolist() == [[True, True], [True, False], [True, False]]
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        moe.dispatch(torch.tensor([[2]]), 2, 1)


def test_switch_gates_are_full_softmax_probabilities_and_keep_router_gradient():
    logits = torch.tensor([[1.0, 3.0, 2.0]], requires_grad=True)
    _, idx, renorm = moe.noisy_top_k(logits, 1)
    assert renorm.item() == 1.0  # Shazeer's renormalised gate is constant for k = 1
    _, _, switch = moe.noisy_top_k(logits, 1, renormalize=False)
    torch.testing.assert_close(switch, torch.softmax(logits, 1)[:, 1:2])
    assert torch.autograd.grad(switch.sum(), logits)[0].abs().sum() > 0


def test_noisy_top_k_gates_are_a_softmax_over_the_top_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    H, idx, gates = moe.noisy_top_k(logits, 2)
    assert idx.tolist() == [[1, 2]] and torch.equal(H, logits)
    torch.testing.assert_close(gates, torch.softmax(torch.tensor([[3.0, 2.0]]), 1))
    _, idx_noisy, _ = moe.noisy_top_k(logits, 2, noise_std=torch.full((1, 4), 100.0),
                                      generator=torch.Generator().manual_seed(1))
    assert idx_noisy.shape == (1, 2)
    with pytest.raises(ValueError, match="k must be in"):
        moe.noisy_top_k(logits, 5)


@given(T=st.integers(1, 40), n=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_balancing_loss_formula_and_uniform_value(T, n, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(T, n, generator=g, dtype=torch.float64), 1)
    idx = probs.argmax(1, keepdim=True)
    f = torch.tensor([(idx == i).float().mean().item() for i in range(n)], dtype=torch.float64)
    expected = n * (f * probs.mean(0)).sum()
    torch.testing.assert_close(moe.load_balancing_loss(probs, idx), expected)
    uniform = torch.full((n, n), 1.0 / n, dtype=torch.float64)
    assert moe.load_balancing_loss(uniform, torch.arange(n).unsqueeze(1)).item() == pytest.approx(1.0)


def test_capacity_formula():
    assert moe.expert_capacity(100, 8, 2, 1.0) == 25
    assert moe.expert_capacity(10, 4, 1, 1.25) == math.ceil(1.25 * 10 / 4)
    assert moe.expert_capacity(10, 4, 1, None) == 10
    with pytest.raises(ValueError, match="positive"):
        moe.expert_capacity(10, 4, 1, 0.0)


@pytest.mark.parametrize("k,cf", [(1, 1.0), (2, 1.25), (2, None), (3, 0.5)])
def test_grouped_combine_equals_dense_reference_values_and_gradients(k, cf):
    torch.manual_seed(0)
    layer = moe.MoE(5, 3, n_experts=4, k=k, d_hidden=6, capacity_factor=cf).double()
    with torch.no_grad():
        layer.w_gate.normal_()
    x = torch.randn(17, 5, dtype=torch.float64, requires_grad=True)
    layer.eval()
    r = layer.route(x)
    y, y_ref = layer.combine(x, r), layer.dense_reference(x, r)
    torch.testing.assert_close(y, y_ref)
    g1 = torch.autograd.grad(y.sum(), [x, layer.W1, layer.w_gate], retain_graph=True)
    g2 = torch.autograd.grad(y_ref.sum(), [x, layer.W1, layer.w_gate])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    fixed = moe.Routing(r.H.detach(), r.idx, r.gates.detach(), r.keep)  # routing held constant
    torch.autograd.gradcheck(lambda inp: layer.combine(inp, fixed), (x.detach().requires_grad_(),))


def test_dropped_tokens_get_zero_output_and_aux_loss_is_stored():
    layer = moe.MoE(4, 2, n_experts=2, k=1, capacity_factor=0.5, noisy=False).eval()
    with torch.no_grad():
        layer.w_gate.zero_()
    x = torch.randn(8, 4)
    y = layer(x)
    r = layer.last_routing
    assert r.keep.sum().item() == 2  # zero router: every token ties to expert 0, which keeps C = ⌈0.5·8/2⌉
    assert torch.all(y[~r.keep[:, 0]] == 0)
    assert layer.aux_loss.item() == pytest.approx(0.01 * 1.0)  # zero gate weights: uniform probs
    with pytest.raises(ValueError, match="tokens, d_in"):
        layer(torch.randn(4))
    with pytest.raises(ValueError, match="k <= n_experts"):
        moe.MoE(4, 2, n_experts=2, k=3)


def test_training_on_digits_learns_and_balancing_loss_flows():
    X, y, Xt, yt = load_digits_split()
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread avoids OpenMP barriers on a shared machine
    try:
        model = moe.MoEClassifier(n_experts=4, k=1, d_hidden=16, alpha=1.0, noisy=False)
        hist = fit(model, X, y, Xt, yt, epochs=8, lr=1e-2, extra_loss=lambda m: m.moe.aux_loss)
    finally:
        torch.set_num_threads(threads)
    assert hist.test_acc[-1] > 0.85
    load = torch.bincount(model.moe.last_routing.idx.flatten(), minlength=4)
    assert load.min() > 0  # balanced enough that no expert is dead
    assert model.moe.w_gate.abs().sum() > 0  # the router was trained
    assert model.moe.flops_per_token() == 2 * 64 * 4 + 2 * (64 * 16 + 16 * 10)
