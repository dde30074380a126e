"""layers: TopK / KWinners modules (duty cycles, boosting, inference k), MLP."""

import pytest
import torch
from torch import nn

from course_lib import layers as L


def test_topk_module():
    m = L.TopK(2)
    x = torch.tensor([[1.0, 3.0, 2.0]])
    assert m(x).tolist() == [[0.0, 3.0, 2.0]]
    with pytest.raises(ValueError, match="positive int"):
        L.TopK(0)


def test_kwinners_duty_cycle_formula():
    torch.manual_seed(0)
    m = L.KWinners(6, k=2, boost_strength=0.0, duty_cycle_period=10)
    x1, x2 = torch.randn(4, 6), torch.randn(8, 6)
    y1 = m(x1)
    d1 = (y1 > 0).float().mean(0)                           # first batch: period = 4
    torch.testing.assert_close(m.duty_cycles, d1)
    y2 = m(x2)                                              # period = min(10, 12) = 10
    torch.testing.assert_close(m.duty_cycles, (d1 * (10 - 8) + (y2 > 0).float().sum(0)) / 10)
    assert int(m.samples_seen) == 12


def test_kwinners_boosting_spreads_activity():
    """With a fixed bias towards units 0..1, boosting makes the other units win too."""
    gen = torch.Generator().manual_seed(0)
    bias = torch.tensor([3.0, 3.0, 0, 0, 0, 0, 0, 0])
    def winners_used(beta):
        m = L.KWinners(8, k=2, boost_strength=beta, boost_strength_factor=1.0, duty_cycle_period=50)
        used = torch.zeros(8, dtype=torch.bool)
        for _ in range(50):
            used |= (m(torch.rand(16, 8, generator=gen) + bias) != 0).any(0)
        return int(used.sum())
    assert winners_used(0.0) == 2
    assert winners_used(20.0) == 8


def test_kwinners_eval_k_frozen_duty_and_boost_decay():
    m = L.KWinners(10, k=2, k_inference_factor=2.0, boost_strength=1.0, boost_strength_factor=0.5)
    m.eval()
    y = m(torch.randn(3, 10))
    assert ((y != 0).sum(1) == 4).all()
    assert (m.duty_cycles == 0).all() and int(m.samples_seen) == 0
    m.update_boost_strength()
    assert m.boost_strength == 0.5
    assert "duty_cycles" in m.state_dict()


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=4, k=5), "1 <= k <= width"), (dict(n=4, k=1, boost_strength=-1), "boost_strength"),
    (dict(n=4, k=1, boost_strength_factor=2), "boost_strength_factor"),
    (dict(n=4, k=1, duty_cycle_period=0), "duty_cycle_period")])
def test_kwinners_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.KWinners(**kwargs)


def test_kwinners_gradient_only_to_winners():
    m = L.KWinners(4, k=1, boost_strength=0.0)
    x = torch.tensor([[0.1, 2.0, 0.3, -1.0]], requires_grad=True)
    m(x).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="last dim 4"):
        m(torch.zeros(2, 5))


def test_mlp_shapes_hidden_and_activations():
    mlp = L.MLP([8, 16, 12, 3], activation="relu")
    out = mlp(torch.randn(5, 8))
    assert out.shape == (5, 3) and [h.shape for h in mlp.hidden] == [(5, 16), (5, 12)]
    assert all((h >= 0).all() for h in mlp.hidden)
    k_mlp = L.MLP([8, 16, 3], activation=lambda n: L.TopK(4))
    k_mlp(torch.randn(5, 8))
    assert ((k_mlp.hidden[0] != 0).sum(1) <= 4).all()
    for name in L.ACTIVATIONS:
        assert L.MLP([2, 3, 1], name)(torch.zeros(1, 2)).shape == (1, 1)
    assert isinstance(L.MLP([2, 3, 1], lambda n: L.Sparsemax()).acts[0], L.Sparsemax)


def test_mlp_bad_args():
    with pytest.raises(ValueError, match="unknown activation"):
        L.MLP([2, 3, 1], "swishy")
    with pytest.raises(ValueError, match="sizes"):
        L.MLP([2])
    with pytest.raises(TypeError, match="nn.Module"):
        L.MLP([2, 3, 1], lambda n: 3)
    with pytest.raises(TypeError, match="name or a callable"):
        L.MLP([2, 3, 1], 3)


def test_ksparse_autoencoder_exactly_k_latents_and_reconstruction():
    torch.manual_seed(0)
    ae = L.KSparseAutoencoder(6, 10, k=3)
    x = torch.randn(4, 6)
    z = ae.encode(x)
    assert ((z != 0).sum(1) == 3).all()
    torch.testing.assert_close(ae(x), z @ ae.decoder.weight.T + ae.b_pre)
    with pytest.raises(ValueError, match="1 <= k <= width"):
        L.KSparseAutoencoder(6, 10, k=11)
