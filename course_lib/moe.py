"""Mixture-of-experts: noisy top-k gating, Switch load balancing, capacity and token dropping.

For a token ``x`` the layer computes ``y = Σ_{e ∈ TopK(H(x))} g_e(x) · E_e(x)`` with

* router logits ``H(x) = x·W_g + ε·softplus(x·W_noise)``, ``ε ~ N(0, 1)`` while training
  (noisy top-k gating, Shazeer et al., 2017), and gates ``g = softmax`` over the k kept logits;
* the Switch load-balancing loss ``α·N·Σ_i f_i·P_i`` (Fedus et al., 2022), ``f_i`` the share of
  routing assignments that go to expert ``i``, ``P_i`` the mean router probability of ``i``;
* a capacity of ``C = ⌈capacity_factor · k · T / N⌉`` assignments per expert for ``T`` tokens:
  assignments beyond it are **dropped** (first choices of all tokens have priority over second
  choices; within a choice, earlier tokens first), their gate contributes nothing.

Dispatch groups the kept assignments by expert (a stable sort by expert id) and runs each expert on
its own tokens only; :meth:`MoE.dense_reference` runs every expert on every token and combines with
a dense ``(T, N)`` gate matrix: it is the oracle for tests, never the fast path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["noisy_top_k", "load_balancing_loss", "expert_capacity", "dispatch", "Routing", "MoE",
           "MoEClassifier", "dispatch_ref"]


# --------------------------------------------------------------------------- routing pieces

def noisy_top_k(logits: torch.Tensor, k: int, noise_std: torch.Tensor | None = None,
                generator: torch.Generator | None = None, renormalize: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy top-k gating: ``H = logits + ε·noise_std``; keep the top ``k`` of ``H`` per token.

    Returns ``(H, idx, gates)``: ``idx (T, k)`` experts in decreasing ``H``; ``gates`` is
    ``softmax(H[idx])`` (Shazeer: softmax over the kept logits) if ``renormalize``, else
    ``softmax(H)[idx]`` (Switch: the full router probability). With ``k = 1`` the renormalised
    gate is always 1, so the task loss gives the router no gradient: use ``renormalize=False``.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (tokens, experts), got shape {tuple(logits.shape)}")
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be in [1, n_experts={logits.shape[1]}], got {k}")
    H = logits
    if noise_std is not None:
        eps = torch.randn(logits.shape, generator=generator, dtype=logits.dtype)
        H = logits + eps * noise_std
    top, idx = H.topk(k, dim=1)
    gates = torch.softmax(top, dim=1) if renormalize else torch.softmax(H, dim=1).gather(1, idx)
    return H, idx, gates


def load_balancing_loss(probs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Switch loss without α: ``N · Σ_i f_i · P_i``; equals 1 when routing is perfectly uniform.

    ``probs (T, N)`` router probabilities (softmax of all logits), ``idx (T, k)`` chosen experts;
    ``f_i = #{(t, slot): idx[t, slot] = i} / (T·k)`` (not differentiable), ``P_i = mean_t probs[t, i]``.
    """
    if probs.ndim != 2 or idx.ndim != 2 or idx.shape[0] != probs.shape[0]:
        raise ValueError(f"need probs (T, N) and idx (T, k) with the same T, got "
                         f"{tuple(probs.shape)} and {tuple(idx.shape)}")
    n = probs.shape[1]
    f = torch.bincount(idx.flatten(), minlength=n).to(probs.dtype) / idx.numel()
    return n * (f * probs.mean(dim=0)).sum()


def expert_capacity(tokens: int, n_experts: int, k: int, capacity_factor: float | None) -> int:
    """``C = ⌈capacity_factor · k · T / N⌉`` assignments per expert (``None``: no limit, ``C = T``)."""
    if capacity_factor is None:
        return tokens
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be positive, got {capacity_factor}")
    return math.ceil(capacity_factor * k * tokens / n_experts)


def dispatch(idx: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """Which assignments fit: ``keep (T, k)`` bool, ``keep[t, s]`` iff fewer than ``capacity``
    higher-priority assignments went to expert ``idx[t, s]`` (priority: slot, then token)."""
    if idx.ndim != 2:
        raise ValueError(f"idx must be (tokens, k), got shape {tuple(idx.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_experts):
        raise ValueError(f"idx values must be in [0, {n_experts})")
    flat = idx.t().reshape(-1)                       # priority order: slot-major, then token
    order = torch.argsort(flat, stable=True)         # grouped by expert, priority kept inside
    counts = torch.bincount(flat, minlength=n_experts)
    start = torch.cumsum(counts, 0) - counts
    position = torch.empty_like(flat)
    position[order] = torch.arange(flat.numel()) - start[flat[order]]
    return (position < capacity).reshape(idx.shape[1], idx.shape[0]).t()


def dispatch_ref(idx: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """Loop version of :func:`dispatch`: walk assignments in priority order, count per expert."""
    keep = torch.zeros(idx.shape, dtype=torch.bool)
    used = [0] * n_experts
    for s in range(idx.shape[1]):
        for t in range(idx.shape[0]):
            e = int(idx[t, s])
            keep[t, s] = used[e] < capacity
            used[e] += 1
    return keep


@dataclass
class Routing:
    """One routing decision for ``T`` tokens: logits ``H``, chosen ``idx``/``gates`` (T, k), ``keep``."""

    H: torch.Tensor
    idx: torch.Tensor
    gates: torch.Tensor
    keep: torch.Tensor

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.H, dim=1)


# --------------------------------------------------------------------------- the layer

class MoE(nn.Module):
    """``N`` two-layer ReLU experts ``d_in → d_hidden → d_out`` behind a noisy top-k router."""

    def __init__(self, d_in: int, d_out: int, n_experts: int, k: int = 2, d_hidden: int = 32,
                 capacity_factor: float | None = 1.25, noisy: bool = True, alpha: float = 0.01,
                 renormalize: bool | None = None, seed: int = 0):
        super().__init__()
        if not 1 <= k <= n_experts:
            raise ValueError(f"need 1 <= k <= n_experts, got k={k}, n_experts={n_experts}")
        g = torch.Generator().manual_seed(seed)
        init = lambda *shape, fan_in: (torch.rand(*shape, generator=g) * 2 - 1) / math.sqrt(fan_in)  # noqa: E731
        self.n_experts, self.k, self.capacity_factor, self.alpha = n_experts, k, capacity_factor, alpha
        self.renormalize = k > 1 if renormalize is None else renormalize  # Shazeer for k>1, Switch for k=1
        self.w_gate = nn.Parameter(0.1 * init(d_in, n_experts, fan_in=d_in))
        self.w_noise = nn.Parameter(torch.zeros(d_in, n_experts)) if noisy else None
        self.W1 = nn.Parameter(init(n_experts, d_in, d_hidden, fan_in=d_in))
        self.b1 = nn.Parameter(torch.zeros(n_experts, d_hidden))
        self.W2 = nn.Parameter(init(n_experts, d_hidden, d_out, fan_in=d_hidden))
        self.b2 = nn.Parameter(torch.zeros(n_experts, d_out))
        self.aux_loss = torch.zeros(())
        self.last_routing: Routing | None = None

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """``E_e(x) = relu(x·W1_e + b1_e)·W2_e + b2_e``."""
        return torch.relu(x @ self.W1[e] + self.b1[e]) @ self.W2[e] + self.b2[e]

    def route(self, x: torch.Tensor) -> Routing:
        """Noisy (training only) top-k routing of ``x (T, d_in)`` and the capacity ``keep`` mask."""
        cf = self.capacity_factor
        noise = None
        if self.training and self.w_noise is not None:
            noise = nn.functional.softplus(x @ self.w_noise)
        H, idx, gates = noisy_top_k(x @ self.w_gate, self.k, noise, renormalize=self.renormalize)
        keep = dispatch(idx, self.n_experts, expert_capacity(len(x), self.n_experts, self.k, cf))
        return Routing(H, idx, gates, keep)

    def combine(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        """Grouped dispatch: expert ``e`` runs on its kept tokens only; outputs are gate-weighted
        and scattered back with ``index_add_`` (no one-hot matmul over all experts)."""
        tokens = torch.arange(len(x)).unsqueeze(1).expand_as(r.idx)[r.keep]
        experts, gates = r.idx[r.keep], r.gates[r.keep]
        order = torch.argsort(experts, stable=True)
        tokens, experts, gates = tokens[order], experts[order], gates[order]
        counts = torch.bincount(experts, minlength=self.n_experts).tolist()
        y = x.new_zeros(len(x), self.W2.shape[2])
        for e, (tok, g) in enumerate(zip(tokens.split(counts), gates.split(counts))):
            if len(tok):
                y = y.index_add(0, tok, g.unsqueeze(1) * self.expert(e, x[tok]))
        return y

    def dense_reference(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        """Oracle: every expert on every token, ``y = Σ_e G[:, e] · E_e(x)`` with a dense gate matrix."""
        G = x.new_zeros(len(x), self.n_experts)
        G.scatter_add_(1, r.idx, r.gates * r.keep)
        outs = torch.stack([self.expert(e, x) for e in range(self.n_experts)], dim=1)  # (T, N, d_out)
        return (G.unsqueeze(2) * outs).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Route, store ``aux_loss = α·N·Σ f_i P_i`` and ``last_routing``, combine."""
        if x.ndim != 2:
            raise ValueError(f"x must be (tokens, d_in), got shape {tuple(x.shape)}")
        r = self.route(x)
        self.aux_loss = self.alpha * load_balancing_loss(r.probs, r.idx)
        self.last_routing = r
        return self.combine(x, r)

    def flops_per_token(self) -> int:
        """Multiply-adds ×2 per token: the router plus ``k`` experts (dropped tokens not subtracted)."""
        d_in, d_hidden = self.W1.shape[1:]
        d_out = self.W2.shape[2]
        return 2 * d_in * self.n_experts + self.k * 2 * (d_in * d_hidden + d_hidden * d_out)


class MoEClassifier(nn.Module):
    """Digits classifier: one MoE layer ``64 → 10`` whose experts are small MLPs."""

    def __init__(self, d_in: int = 64, n_classes: int = 10, **moe_kwargs):
        super().__init__()
        self.moe = MoE(d_in, n_classes, **moe_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(x)
