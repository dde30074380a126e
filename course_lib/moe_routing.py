"""Routing as MoE models are built after Switch: expert choice, loss-free balancing, the router
z-loss, shared experts, and the load statistics used to judge them.

* **Expert choice** (Zhou et al., 2022): with router probabilities ``S = softmax(X·W_g)``
  ``(T, N)``, each expert picks its ``C`` highest-scoring tokens, ``I_e = TopC(S[:, e])``; a token
  may be picked by several experts or by none. Every expert gets exactly ``C`` tokens.
* **Auxiliary-loss-free balancing** (Wang et al., 2024; DeepSeek-V3): a per-expert bias ``b``
  enters the *selection* only, ``TopK(s_t + b)``, while the gates use the unbiased scores ``s_t``;
  after each step ``b_i ← b_i + γ·sign(mean_j c_j − c_i)`` with ``c_i`` the load of expert ``i``.
  No gradient flows from it, so it does not interfere with the task loss.
* **Router z-loss** (Zoph et al., 2022, ST-MoE): ``L_z = (1/T) Σ_t (log Σ_i exp H_ti)²`` keeps the
  router logits small.
* **Shared experts** (DeepSeekMoE, Dai et al., 2024): ``y = Σ_{s shared} E_s(x) + Σ_{e ∈ TopK}
  g_e E_e(x)``: some experts see every token, the routed ones specialise.

Chapter: book/fast/moe
"""

from __future__ import annotations

import torch

__all__ = ["expert_choice", "expert_choice_ref", "loss_free_bias_update", "router_z_loss",
           "expert_load", "balance_stats", "shared_moe_ref"]


def expert_choice(scores: torch.Tensor, capacity: int) -> torch.Tensor:
    """``keep (T, N)`` bool: ``keep[t, e]`` iff token ``t`` is among the ``capacity`` highest
    ``scores[:, e]`` (ties to the earlier token). ``capacity`` is clipped to ``T``."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be (tokens, experts), got shape {tuple(scores.shape)}")
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    T = scores.shape[0]
    # a stable descending sort keeps the earlier token first among equal scores
    order = torch.sort(scores, dim=0, descending=True, stable=True).indices[:min(capacity, T)]
    keep = torch.zeros(scores.shape, dtype=torch.bool)
    keep.scatter_(0, order, True)
    return keep


def expert_choice_ref(scores: torch.Tensor, capacity: int) -> torch.Tensor:
    """Loop oracle of :func:`expert_choice`: each expert in turn takes its best unpicked tokens."""
    keep = torch.zeros(scores.shape, dtype=torch.bool)
    for e in range(scores.shape[1]):
        ranked = sorted(range(scores.shape[0]), key=lambda t: (-float(scores[t, e]), t))
        for t in ranked[:capacity]:
            keep[t, e] = True
    return keep


def loss_free_bias_update(bias: torch.Tensor, load: torch.Tensor, rate: float) -> torch.Tensor:
    """``b_i + γ·sign(mean(c) − c_i)``: raise the bias of underloaded experts, lower the others'."""
    if bias.shape != load.shape or bias.ndim != 1:
        raise ValueError(f"bias and load must be (n_experts,) of one shape, got "
                         f"{tuple(bias.shape)} and {tuple(load.shape)}")
    if rate < 0:
        raise ValueError(f"rate must be >= 0, got {rate}")
    load = load.to(bias.dtype)
    return bias + rate * torch.sign(load.mean() - load)


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss ``mean_t (logsumexp_i H_ti)²`` of router logits ``H (T, N)``."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be (tokens, experts), got shape {tuple(logits.shape)}")
    return torch.logsumexp(logits, dim=1).square().mean()


def expert_load(idx: torch.Tensor, keep: torch.Tensor | None, n_experts: int) -> torch.Tensor:
    """Assignments per expert: ``c_i = #{(t, s): idx[t, s] = i and keep[t, s]}``."""
    chosen = idx if keep is None else idx[keep]
    return torch.bincount(chosen.flatten(), minlength=n_experts)


def balance_stats(load) -> dict:
    """Coefficient of variation ``std(c)/mean(c)`` and ``max(c)/mean(c)`` of a load vector
    (0 and 1 when perfectly balanced; ``max/mean`` is the slowdown of the busiest expert)."""
    c = torch.as_tensor(load, dtype=torch.float64)
    if c.ndim != 1 or not len(c) or c.sum() <= 0:
        raise ValueError("load must be a non-empty 1-D vector with a positive sum")
    mean = c.mean()
    return {"cv": float(c.std(unbiased=False) / mean), "max_over_mean": float(c.max() / mean)}


def shared_moe_ref(x: torch.Tensor, W1: torch.Tensor, W2: torch.Tensor, w_gate: torch.Tensor,
                   k: int, n_shared: int) -> torch.Tensor:
    """DeepSeekMoE layer, oracle form: experts ``E_e(x) = relu(x·W1[e])·W2[e]``; the **last**
    ``n_shared`` of ``W1 (N, d, h)`` / ``W2 (N, h, d_out)`` are shared, the router ``w_gate
    (d, N − n_shared)`` scores the others, ``g = softmax`` over each token's ``k`` best logits:
    ``y = Σ_{s ≥ N − n_shared} E_s(x) + Σ_{e ∈ TopK} g_e E_e(x)``."""
    N = W1.shape[0]
    if not 0 <= n_shared <= N:
        raise ValueError(f"n_shared={n_shared} shared experts must be in [0, n_experts={N}]")
    routed = N - n_shared
    if w_gate.shape[-1] != routed:
        raise ValueError(f"w_gate has {w_gate.shape[-1]} columns, need one per routed expert ({routed})")
    if not 0 <= k <= routed:
        raise ValueError(f"k={k} must be in [0, routed experts={routed}]")
    outs = torch.stack([torch.relu(x @ W1[e]) @ W2[e] for e in range(N)], dim=1)  # (T, N, d_out)
    y = outs[:, routed:].sum(dim=1)
    if k:
        top, idx = (x @ w_gate).topk(k, dim=1)
        gates = torch.softmax(top, dim=1)
        y = y + (gates.unsqueeze(2) * outs[:, :routed].gather(
            1, idx.unsqueeze(2).expand(-1, -1, outs.shape[2]))).sum(dim=1)
    return y
