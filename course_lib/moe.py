"""Mixture-of-experts: noisy top-k gating, Switch load balancing, capacity and token dropping,
plus the later designs of :mod:`course_lib.moe_routing` (shared experts, loss-free bias, expert
choice, z-loss) as options of one layer.

For a token ``x`` the layer computes ``y = Σ_{e ∈ TopK(H(x))} g_e(x) · E_e(x)`` with

* router logits ``H(x) = x·W_g + ε·softplus(x·W_noise)``, ``ε ~ N(0, 1)`` while training
  (noisy top-k gating, Shazeer et al., 2017), and gates ``g = softmax`` over the k kept logits;
* the Switch load-balancing loss ``α·N·Σ_i f_i·P_i`` (Fedus et al., 2022), ``f_i`` the share of
  routing assignments that go to expert ``i``, ``P_i`` the mean router probability of ``i``;
* a capacity of ``C = ⌈capacity_factor · k · T / N⌉`` assignments per expert for ``T`` tokens:
  assignments beyond it are **dropped** (first choices of all tokens have priority over second
  choices; within a choice, earlier tokens first), their gate contributes nothing.

Options of :class:`MoE`: ``n_shared`` of the ``n_experts`` are *shared* (always on, gate 1,
DeepSeekMoE); ``bias_rate > 0`` selects by ``H + b`` with a per-expert bias updated from the load
(:meth:`MoE.update_bias`, loss-free balancing); ``routing="expert_choice"`` lets each expert pick
its ``C`` best tokens; ``z_loss`` adds ``β·mean_t (logsumexp H_t)²`` to ``aux_loss``.

Dispatch groups the kept assignments by expert (a stable sort by expert id) and runs each expert on
its own tokens only; :meth:`MoE.dense_reference` runs every expert on every token and combines with
a dense ``(T, N)`` gate matrix: it is the oracle for tests, never the fast path.

Chapter: book/fast/moe
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .moe_routing import expert_choice, expert_load, loss_free_bias_update, router_z_loss

__all__ = ["noisy_top_k", "load_balancing_loss", "expert_capacity", "dispatch", "Routing", "MoE",
           "MoEClassifier", "dispatch_ref"]


# --------------------------------------------------------------------------- routing pieces

def noisy_top_k(logits: torch.Tensor, k: int, noise_std: torch.Tensor | None = None,
                generator: torch.Generator | None = None, renormalize: bool = True,
                bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy top-k gating: ``H = logits + ε·noise_std``; keep the top ``k`` of ``H + bias`` per token.

    Returns ``(H, idx, gates)``: ``idx (T, k)`` experts in decreasing ``H + bias``; ``gates`` is
    ``softmax(H[idx])`` (Shazeer: softmax over the kept logits) if ``renormalize``, else
    ``softmax(H)[idx]`` (Switch: the full router probability). With ``k = 1`` the renormalised
    gate is always 1, so the task loss gives the router no gradient: use ``renormalize=False``.
    ``bias (N,)`` (loss-free balancing) changes which experts are chosen, never the gate values.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (tokens, experts), got shape {tuple(logits.shape)}")
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be in [1, n_experts={logits.shape[1]}], got {k}")
    H = logits
    if noise_std is not None:
        eps = torch.randn(logits.shape, generator=generator, dtype=logits.dtype)
        H = logits + eps * noise_std
    idx = (H if bias is None else H + bias).topk(k, dim=1).indices
    top = H.gather(1, idx)
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

ROUTINGS = ("token_choice", "expert_choice")


class MoE(nn.Module):
    """``N`` two-layer ReLU experts ``d_in → d_hidden → d_out`` behind a (noisy) router.

    The last ``n_shared`` experts are shared (every token, gate 1); the router scores the other
    ``n_routed = N − n_shared``. ``routing="token_choice"``: each token takes ``k`` experts
    (capacity ``⌈cf·k·T/n_routed⌉``, the rest dropped); ``"expert_choice"``: each routed expert
    takes its ``⌈cf·k·T/n_routed⌉`` best tokens by router probability. ``bias_rate`` γ > 0 turns
    on loss-free balancing (:meth:`update_bias`), ``z_loss`` β > 0 the router z-loss.
    """

    def __init__(self, d_in: int, d_out: int, n_experts: int, k: int = 2, d_hidden: int = 32,
                 capacity_factor: float | None = 1.25, noisy: bool = True, alpha: float = 0.01,
                 renormalize: bool | None = None, seed: int = 0, n_shared: int = 0,
                 routing: str = "token_choice", bias_rate: float = 0.0, z_loss: float = 0.0):
        super().__init__()
        if not 0 <= n_shared <= n_experts:
            raise ValueError(f"n_shared={n_shared} shared experts must be in [0, n_experts={n_experts}]")
        n_routed = n_experts - n_shared
        if not 1 <= k <= n_routed:
            raise ValueError(f"need 1 <= k <= n_experts - n_shared (routed experts), got k={k}, "
                             f"n_experts={n_experts}, n_shared={n_shared}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive, got {capacity_factor}")
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        if bias_rate < 0 or z_loss < 0:
            raise ValueError(f"bias_rate and z_loss must be >= 0, got {bias_rate}, {z_loss}")
        g = torch.Generator().manual_seed(seed)
        init = lambda *shape, fan_in: (torch.rand(*shape, generator=g) * 2 - 1) / math.sqrt(fan_in)  # noqa: E731
        self.n_experts, self.k, self.capacity_factor, self.alpha = n_experts, k, capacity_factor, alpha
        self.n_shared, self.n_routed, self.routing = n_shared, n_routed, routing
        self.bias_rate, self.z_loss = bias_rate, z_loss
        self.renormalize = k > 1 if renormalize is None else renormalize  # Shazeer for k>1, Switch for k=1
        self.w_gate = nn.Parameter(0.1 * init(d_in, n_routed, fan_in=d_in))
        self.w_noise = nn.Parameter(torch.zeros(d_in, n_routed)) if noisy else None
        self.register_buffer("expert_bias", torch.zeros(n_routed))
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
        """Routing of ``x (T, d_in)`` over the routed experts and the ``keep`` mask.

        Token choice: noisy (training only) top-k of ``H + expert_bias``, capacity dispatch.
        Expert choice: ``idx[t] = 0..n_routed-1``, ``gates = softmax(H)``, ``keep`` from
        :func:`~course_lib.moe_routing.expert_choice` (a token may get 0..n_routed experts).
        """
        C = expert_capacity(len(x), self.n_routed, self.k, self.capacity_factor)
        noise = None
        if self.training and self.w_noise is not None:
            noise = nn.functional.softplus(x @ self.w_noise)
        if self.routing == "expert_choice":
            H = x @ self.w_gate if noise is None else x @ self.w_gate + torch.randn_like(noise) * noise
            probs = torch.softmax(H, dim=1)
            idx = torch.arange(self.n_routed).expand(len(x), -1)
            keep = expert_choice(probs.detach(), C) if len(x) else torch.zeros(idx.shape, dtype=torch.bool)
            return Routing(H, idx, probs, keep)
        bias = self.expert_bias if self.bias_rate > 0 else None
        H, idx, gates = noisy_top_k(x @ self.w_gate, self.k, noise, renormalize=self.renormalize,
                                    bias=bias)
        return Routing(H, idx, gates, dispatch(idx, self.n_routed, C))

    def update_bias(self) -> None:
        """Loss-free balancing step on the last routing: ``b ← b + γ·sign(mean(c) − c)``."""
        if self.bias_rate > 0 and self.last_routing is not None:
            r = self.last_routing
            load = expert_load(r.idx, None, self.n_routed)  # demand, before capacity drops
            self.expert_bias.copy_(loss_free_bias_update(self.expert_bias, load, self.bias_rate))

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the shared experts, ``Σ_{s ≥ n_routed} E_s(x)`` (zero without shared experts)."""
        y = x.new_zeros(len(x), self.W2.shape[2])
        for e in range(self.n_routed, self.n_experts):
            y = y + self.expert(e, x)
        return y

    def combine(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        """Grouped dispatch: expert ``e`` runs on its kept tokens only; outputs are gate-weighted
        and scattered back with ``index_add_`` (no one-hot matmul over all experts)."""
        tokens = torch.arange(len(x)).unsqueeze(1).expand_as(r.idx)[r.keep]
        experts, gates = r.idx[r.keep], r.gates[r.keep]
        order = torch.argsort(experts, stable=True)
        tokens, experts, gates = tokens[order], experts[order], gates[order]
        counts = torch.bincount(experts, minlength=self.n_routed).tolist()
        y = self.shared(x)
        for e, (tok, g) in enumerate(zip(tokens.split(counts), gates.split(counts))):
            if len(tok):
                y = y.index_add(0, tok, g.unsqueeze(1) * self.expert(e, x[tok]))
        return y

    def dense_reference(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        """Oracle: every expert on every token, ``y = Σ_e G[:, e] · E_e(x)`` with a dense gate
        matrix (shared experts: gate 1)."""
        G = torch.cat([x.new_zeros(len(x), self.n_routed), x.new_ones(len(x), self.n_shared)], dim=1)
        G[:, :self.n_routed].scatter_add_(1, r.idx, r.gates * r.keep)
        outs = torch.stack([self.expert(e, x) for e in range(self.n_experts)], dim=1)  # (T, N, d_out)
        return (G.unsqueeze(2) * outs).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Route, store ``aux_loss = α·N·Σ f_i P_i + β·z-loss`` and ``last_routing``, combine.

        The Switch term applies to token choice only (expert choice is balanced by construction).
        """
        if x.ndim != 2:
            raise ValueError(f"x must be (tokens, d_in), got shape {tuple(x.shape)}")
        r = self.route(x)
        self.aux_loss = torch.zeros((), dtype=x.dtype)
        if self.alpha and self.routing == "token_choice" and len(x):
            self.aux_loss = self.alpha * load_balancing_loss(r.probs, r.idx)
        if self.z_loss and len(x):
            self.aux_loss = self.aux_loss + self.z_loss * router_z_loss(r.H)
        self.last_routing = r
        return self.combine(x, r)

    def flops_per_token(self) -> int:
        """Multiply-adds ×2 per token: the router plus ``k`` routed and the shared experts (dropped
        tokens not subtracted; for expert choice, ``k`` is the mean experts per token)."""
        d_in, d_hidden = self.W1.shape[1:]
        d_out = self.W2.shape[2]
        return 2 * d_in * self.n_routed + (self.k + self.n_shared) * 2 * (d_in * d_hidden + d_hidden * d_out)


class MoEClassifier(nn.Module):
    """Digits classifier: one MoE layer ``64 → 10`` whose experts are small MLPs."""

    def __init__(self, d_in: int = 64, n_classes: int = 10, **moe_kwargs):
        super().__init__()
        self.moe = MoE(d_in, n_classes, **moe_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(x)
