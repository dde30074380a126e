"""Modules around the sparse activations: ``TopK``, ``KWinners`` (boosting + duty cycles),
``Sparsemax`` and an ``MLP`` with a pluggable activation.

Chapter: book/foundations/activations, book/foundations/training
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from . import activations as A

__all__ = ["TopK", "KWinners", "Sparsemax", "MLP", "make_activation", "ACTIVATIONS",
           "KSparseAutoencoder"]


class TopK(nn.Module):
    """y = x ⊙ [x among the k largest of its row] (see ``activations.topk``)."""

    def __init__(self, k: int, straight_through: bool = False):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.k, self.straight_through = k, straight_through

    def forward(self, x):
        return A.topk(x, self.k, dim=-1, straight_through=self.straight_through)

    def extra_repr(self):
        return f"k={self.k}, straight_through={self.straight_through}"


class KWinners(nn.Module):
    """k-winners-take-all with boosting (Ahmad & Scheinkman 2019; semantics of nupic.torch).

    Training: winners by boosted score x·exp(β(k/n − d)), then the duty cycles d (how often each
    unit is a nonzero winner) are updated over a window of ``duty_cycle_period`` samples:
    d ← (d·(T − B) + Σ_batch [y > 0]) / T with T = min(period, samples seen).
    Evaluation: k_inference = round(k·k_inference_factor) winners, boosting on, duty cycles frozen.
    ``update_boost_strength()`` (call once per epoch) decays β ← β·boost_strength_factor.
    """

    def __init__(self, n: int, k: int, boost_strength: float = 1.0,
                 boost_strength_factor: float = 0.9, duty_cycle_period: int = 1000,
                 k_inference_factor: float = 1.0):
        super().__init__()
        A._check_k(k, n)
        if boost_strength < 0:
            raise ValueError(f"boost_strength must be >= 0, got {boost_strength}")
        if not 0.0 <= boost_strength_factor <= 1.0:
            raise ValueError(f"boost_strength_factor must be in [0, 1], got {boost_strength_factor}")
        if duty_cycle_period < 1:
            raise ValueError(f"duty_cycle_period must be >= 1, got {duty_cycle_period}")
        self.n, self.k = n, k
        self.k_inference = A._check_k(min(n, max(1, round(k * k_inference_factor))), n)
        self.boost_strength = float(boost_strength)
        self.boost_strength_factor = boost_strength_factor
        self.duty_cycle_period = duty_cycle_period
        self.register_buffer("duty_cycles", torch.zeros(n))
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if x.shape[-1] != self.n:
            raise ValueError(f"expected last dim {self.n}, got shape {tuple(x.shape)}")
        k = self.k if self.training else self.k_inference
        y = A.kwinners(x, k, self.duty_cycles, self.boost_strength)
        if self.training:
            self._update_duty_cycles(y.detach().reshape(-1, self.n))
        return y

    @torch.no_grad()
    def _update_duty_cycles(self, y):
        batch = y.shape[0]
        self.samples_seen += batch
        period = min(self.duty_cycle_period, int(self.samples_seen))
        self.duty_cycles.copy_(A.update_duty_cycles(self.duty_cycles, y > 0, period))

    def update_boost_strength(self):
        """β ← β · boost_strength_factor (typically once per epoch)."""
        self.boost_strength *= self.boost_strength_factor

    def extra_repr(self):
        return (f"n={self.n}, k={self.k}, k_inference={self.k_inference}, "
                f"boost_strength={self.boost_strength:.3g}, duty_cycle_period={self.duty_cycle_period}")


class Sparsemax(nn.Module):
    """sparsemax along ``dim`` (Martins & Astudillo 2016)."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return A.sparsemax(x, self.dim)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU, "gelu": nn.GELU,
}


def make_activation(spec: str | Callable[[int], nn.Module], width: int) -> nn.Module:
    """An activation module from a name in ``ACTIVATIONS`` or a factory ``width -> nn.Module``
    (e.g. ``lambda n: KWinners(n, k=8)``)."""
    if isinstance(spec, str):
        if spec not in ACTIVATIONS:
            raise ValueError(f"unknown activation {spec!r}; known: {sorted(ACTIVATIONS)}")
        return ACTIVATIONS[spec]()
    if callable(spec):
        module = spec(width)
        if not isinstance(module, nn.Module):
            raise TypeError(f"activation factory must return an nn.Module, got {type(module).__name__}")
        return module
    raise TypeError(f"activation must be a name or a callable, got {type(spec).__name__}")


class MLP(nn.Module):
    """Linear → activation → … → Linear for ``sizes = [d_in, h_1, …, d_out]``.

    The post-activation outputs of the last forward pass are kept in ``self.hidden`` (one tensor
    per hidden layer) so that a loss can penalise them, e.g. the L1 activity penalty
    λ·Σ_l mean|h_l|.
    """

    def __init__(self, sizes, activation: str | Callable[[int], nn.Module] = "relu"):
        super().__init__()
        sizes = list(sizes)
        if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"sizes must be >= 2 positive ints, got {sizes}")
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.acts = nn.ModuleList(make_activation(activation, h) for h in sizes[1:-1])
        self.hidden: list[torch.Tensor] = []

    def forward(self, x):
        self.hidden = []
        for linear, act in zip(self.linears[:-1], self.acts):
            x = act(linear(x))
            self.hidden.append(x)
        return self.linears[-1](x)


class KSparseAutoencoder(nn.Module):
    """z = topk(W_enc (x − b_pre) + b_enc, k),  x̂ = W_dec z + b_pre.

    The k-sparse autoencoder of Makhzani & Frey (2014) with the pre-encoder bias b_pre of the TopK
    sparse autoencoders of Gao et al. (2025): exactly k latents are nonzero per input, so the
    sparsity is set by k instead of being traded against the loss with an L1 coefficient.
    """

    def __init__(self, n_in: int, n_latent: int, k: int):
        super().__init__()
        A._check_k(k, n_latent)
        self.k = k
        self.b_pre = nn.Parameter(torch.zeros(n_in))
        self.encoder = nn.Linear(n_in, n_latent)
        self.decoder = nn.Linear(n_latent, n_in, bias=False)

    def encode(self, x):
        return A.topk(self.encoder(x - self.b_pre), self.k)

    def forward(self, x):
        return self.decoder(self.encode(x)) + self.b_pre
