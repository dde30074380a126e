"""course_lib.moe_routing and the MoE options built on it: expert choice, loss-free bias, z-loss,
shared experts, the padded and the dropless block-sparse expert computations."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib import moe, moe_blocks, moe_routing


@given(T=st.integers(1, 20), n=st.integers(1, 6), cap=st.integers(1, 25), seed=st.integers(0, 2**16),
       ties=st.booleans())
def test_expert_choice_matches_loop_oracle(T, n, cap, seed, ties):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (T, n), generator=g).double() if ties else torch.rand(T, n, generator=g)
    keep = moe_routing.expert_choice(scores, cap)
    assert torch.equal(keep, moe_routing.expert_choice_ref(scores, cap))
    assert keep.sum(0).tolist() == [min(cap, T)] * n  # every expert gets exactly C tokens


def test_expert_choice_bad_input():
    with pytest.raises(ValueError, match="capacity must be positive"):
        moe_routing.expert_choice(torch.rand(3, 2), 0)
    with pytest.raises(ValueError, match="tokens, experts"):
        moe_routing.expert_choice(torch.rand(3), 1)


def test_loss_free_bias_update_moves_towards_the_mean():
    b = torch.zeros(4)
    new = moe_routing.loss_free_bias_update(b, torch.tensor([10, 2, 4, 4]), 0.5)
    assert new.tolist() == [-0.5, 0.5, 0.5, 0.5]  # mean 5: only expert 0 is overloaded
    assert moe_routing.loss_free_bias_update(b, torch.tensor([3, 3, 3, 3]), 0.5).tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="one shape"):
        moe_routing.loss_free_bias_update(b, torch.ones(3), 0.1)
    with pytest.raises(ValueError, match="rate"):
        moe_routing.loss_free_bias_update(b, torch.ones(4), -1.0)


def test_bias_changes_selection_not_gates_and_has_no_gradient():
    logits = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    _, idx, gates = moe.noisy_top_k(logits, 1, renormalize=False, bias=torch.tensor([0.0, 0.0, 5.0]))
    assert idx.item() == 2
    torch.testing.assert_close(gates, torch.softmax(logits, 1)[:, 2:])  # gate from the unbiased logit
    layer = moe.MoE(4, 2, n_experts=4, k=1, bias_rate=0.1, noisy=False)
    assert not layer.expert_bias.requires_grad and "expert_bias" in dict(layer.named_buffers())


def test_loss_free_balancing_rebalances_a_skewed_router():
    torch.manual_seed(0)
    layer = moe.MoE(8, 2, n_experts=4, k=1, bias_rate=0.05, noisy=False, capacity_factor=None).eval()
    with torch.no_grad():
        layer.w_gate.normal_(0, 0.3)
        layer.w_gate[:, 0] += 1.0  # inputs are positive: expert 0 wins for most tokens
    x = torch.randn(400, 8).abs()
    layer(x)
    before = moe_routing.balance_stats(moe_routing.expert_load(layer.last_routing.idx, None, 4))
    for _ in range(200):
        layer(x)
        layer.update_bias()
    after = moe_routing.balance_stats(moe_routing.expert_load(layer.last_routing.idx, None, 4))
    assert before["max_over_mean"] > 2 and after["max_over_mean"] < 1.3


@given(T=st.integers(1, 10), n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_router_z_loss_formula(T, n, seed):
    H = torch.randn(T, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in H.tolist()) / T
    assert moe_routing.router_z_loss(H).item() == pytest.approx(expected)


def test_balance_stats():
    assert moe_routing.balance_stats([5, 5, 5, 5]) == {"cv": 0.0, "max_over_mean": 1.0}
    s = moe_routing.balance_stats([8, 0, 0, 0])
    assert s["max_over_mean"] == 4.0 and s["cv"] == pytest.approx(math.sqrt(3))
    with pytest.raises(ValueError, match="positive sum"):
        moe_routing.balance_stats([0, 0])


def _layer(**kw):
    torch.manual_seed(0)
    layer = moe.MoE(5, 3, d_hidden=6, noisy=False, **kw).double().eval()
    with torch.no_grad():
        layer.w_gate.normal_()
        layer.b1.normal_()
        layer.b2.normal_()
    return layer


@pytest.mark.parametrize("kw", [dict(n_experts=6, k=2, n_shared=2), dict(n_experts=5, k=1, n_shared=1),
                                dict(n_experts=4, k=2, routing="expert_choice"),
                                dict(n_experts=6, k=2, n_shared=1, routing="expert_choice"),
                                dict(n_experts=4, k=2, bias_rate=0.3, z_loss=0.01)])
def test_options_grouped_combine_equals_dense_reference(kw):
    layer = _layer(capacity_factor=1.0, **kw)
    layer.expert_bias.normal_()
    x = torch.randn(13, 5, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    r = layer.last_routing
    torch.testing.assert_close(y, layer.dense_reference(x, r))
    if layer.routing == "expert_choice":  # every expert takes exactly C tokens
        assert r.keep.sum(0).tolist() == [moe.expert_capacity(13, layer.n_routed, layer.k, 1.0)] * layer.n_routed
    fixed = moe.Routing(r.H.detach(), r.idx, r.gates.detach(), r.keep)
    torch.autograd.gradcheck(lambda inp: layer.combine(inp, fixed), (x.detach().requires_grad_(),))


def test_shared_experts_match_the_functional_oracle():
    layer = _layer(n_experts=6, k=2, n_shared=2, capacity_factor=None)
    layer.b1.data.zero_()
    layer.b2.data.zero_()
    x = torch.randn(9, 5, dtype=torch.float64)
    expected = moe_routing.shared_moe_ref(x, layer.W1, layer.W2, layer.w_gate, 2, 2)
    torch.testing.assert_close(layer(x), expected)
    assert layer.flops_per_token() == 2 * 5 * 4 + 4 * 2 * (5 * 6 + 6 * 3)


def test_z_loss_and_no_switch_term_for_expert_choice():
    layer = _layer(n_experts=4, k=1, routing="expert_choice", alpha=1.0, z_loss=0.5)
    x = torch.randn(8, 5, dtype=torch.float64)
    layer(x)
    expected = 0.5 * moe_routing.router_z_loss(layer.last_routing.H)
    torch.testing.assert_close(layer.aux_loss, expected)


@pytest.mark.parametrize("kw, match", [
    (dict(n_experts=4, k=5), "k <= n_experts - n_shared"),
    (dict(n_experts=4, k=1, n_shared=5), "shared experts must be in"),
    (dict(n_experts=4, k=2, n_shared=3), "k <= n_experts - n_shared"),
    (dict(n_experts=4, k=1, capacity_factor=0.0), "capacity_factor must be positive"),
    (dict(n_experts=4, k=1, capacity_factor=-1.0), "capacity_factor must be positive"),
    (dict(n_experts=4, k=1, routing="hash"), "routing must be one of"),
    (dict(n_experts=4, k=1, bias_rate=-0.1), "must be >= 0"),
])
def test_bad_configurations_name_the_problem(kw, match):
    with pytest.raises(ValueError, match=match):
        moe.MoE(4, 2, **kw)


@pytest.mark.parametrize("bad, match", [(dict(n_shared=7), "shared experts"), (dict(k=6), "k=6"),
                                        (dict(gate_cols=3), "routed expert")])
def test_shared_moe_ref_bad_input(bad, match):
    W1, W2 = torch.randn(6, 5, 4), torch.randn(6, 4, 3)
    k, n_shared = bad.get("k", 1), bad.get("n_shared", 2)
    gate = torch.randn(5, bad.get("gate_cols", 6 - min(n_shared, 6)))
    with pytest.raises(ValueError, match=match):
        moe_routing.shared_moe_ref(torch.randn(2, 5), W1, W2, gate, k, n_shared)


@pytest.mark.parametrize("cf, kw", [(1.0, dict(n_experts=4, k=2)), (0.5, dict(n_experts=5, k=1)),
                                    (2.0, dict(n_experts=6, k=2, n_shared=2)),
                                    (1.0, dict(n_experts=4, k=2, routing="expert_choice"))])
def test_padded_capacity_version_equals_grouped_combine(cf, kw):
    layer = _layer(capacity_factor=cf, **kw)
    x = torch.randn(17, 5, dtype=torch.float64, requires_grad=True)
    r = layer.route(x)
    y = moe_blocks.padded_experts(layer, x, r)
    torch.testing.assert_close(y + layer.shared(x), layer.combine(x, r))
    y.sum().backward()  # differentiable: the static buffer is built with index_put
    assert x.grad is not None


@given(T=st.integers(0, 30), R=st.integers(1, 8), seed=st.integers(0, 2**10))
def test_dropless_block_sparse_equals_padded_without_drops(T, R, seed):
    torch.manual_seed(seed)
    layer = moe.MoE(5, 3, n_experts=4, k=2, d_hidden=6, noisy=False, capacity_factor=None).double().eval()
    with torch.no_grad():
        layer.w_gate.normal_()
        layer.b1.normal_()
    x = torch.randn(T, 5, dtype=torch.float64)
    r = layer.route(x)
    y, sizes = moe_blocks.dropless_experts(layer, x, r, R=R)
    torch.testing.assert_close(y, moe_blocks.padded_experts(layer, x, r))
    counts = np.bincount(r.idx.flatten().numpy(), minlength=4)
    assert sizes["assignments"] == 2 * T
    assert sizes["padded_rows"] == sum(R * math.ceil(c / R) for c in counts)
    assert sizes["padded_rows"] - sizes["assignments"] < 4 * R  # at most R - 1 padding rows per expert


def test_dropless_keeps_what_capacity_drops():
    layer = _layer(n_experts=4, k=1, capacity_factor=0.5)
    x = torch.randn(16, 5, dtype=torch.float64)
    r = layer.route(x)
    assert (~r.keep).any()
    y_drop = layer.combine(x, r)
    y_full, _ = moe_blocks.dropless_experts(layer, x, r, R=2)
    dropped = ~r.keep[:, 0]
    torch.testing.assert_close(y_drop[~dropped], y_full[~dropped])
    assert torch.all(y_drop[dropped] == 0) and torch.all(y_full[dropped].abs().sum(1) > 0)
    with pytest.raises(ValueError, match="block height"):
        moe_blocks.block_rows([1, 2], 0)


def test_dispatch_layout_and_diagram():
    idx = torch.tensor([[0], [1], [0], [0], [2], [0], [1], [2], [1], [0]])
    lay = moe_blocks.dispatch_layout(idx, 3, 1.0, R=2)
    assert lay["C"] == 4 and lay["dropped"] == [9]  # expert 0's fifth token overflows C = ⌈10/3⌉
    assert lay["capacity"] == [([0, 2, 3, 5], 4), ([1, 6, 8], 4), ([4, 7], 4)]
    assert lay["dropless"] == [([0, 2, 3, 5, 9], 6), ([1, 6, 8], 4), ([4, 7], 2)]
    fig = moe_blocks.dispatch_diagram(idx, 3, 1.0, R=2)
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt
    plt.close(fig)
    with pytest.raises(ValueError, match="top-1 routing"):
        moe_blocks.dispatch_layout(torch.zeros(4, 2, dtype=torch.long), 3, 1.0, 2)
