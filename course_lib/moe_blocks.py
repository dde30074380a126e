"""Two ways to run the routed experts of a :class:`~course_lib.moe.MoE` with regular shapes.

* **Padded / capacity** (Switch, GShard): a static ``(N, C, d)`` buffer, slot ``j`` of expert
  ``e`` holds its ``j``-th kept token (zeros where fewer came), one batched product per layer
  ``Y_e = relu(X_e·W1_e + b1_e)·W2_e + b2_e``; assignments beyond ``C`` are dropped. Cost: ``N·C``
  token rows whatever the routing.
* **Dropless block-sparse** (MegaBlocks, Gale et al., 2023): sort the assignments by expert, pad
  each expert's group only to a multiple of the block height ``R``, and write each layer as one
  block-sparse × dense product in the course's BSR format. Block row ``I`` (``R`` rows of one
  expert ``e``) has one block, at block column ``e``::

      layer 1:  H = A1 · [W1_0; W1_1; …]   A1 = BSR (P, N·d), block (I, e) = X rows of block I
      layer 2:  Y = A2 · [W2_0; W2_1; …]   A2 = BSR (P, N·h), block (I, e) = relu(H + b1_e) rows

  so row ``t`` of the result is ``x_t·W1_e`` for its own expert only. MegaBlocks puts the sparsity
  on the weight side (an SDD then a DSD product); the course's SpMM takes a sparse *left* operand,
  so here the token matrix carries the block-diagonal structure: the same products, the same
  padding to ``R``, nothing dropped. Forward only (``spmm`` is not differentiable).

Chapter: book/fast/moe
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .formats import BSR
from .spmm import spmm

__all__ = ["padded_experts", "dropless_experts", "block_rows", "dispatch_layout", "dispatch_diagram"]


def _assignments(r, use_keep: bool):
    """(tokens, experts, gates) of the assignments, stably sorted by expert."""
    tokens = torch.arange(len(r.idx)).unsqueeze(1).expand_as(r.idx)
    mask = r.keep if use_keep else torch.ones_like(r.keep)
    tokens, experts, gates = tokens[mask], r.idx[mask], r.gates[mask]
    order = torch.argsort(experts, stable=True)
    return tokens[order], experts[order], gates[order]


def padded_experts(layer, x: torch.Tensor, r) -> torch.Tensor:
    """Routed-expert output with a static ``(N, C, d)`` capacity buffer (kept assignments only),
    ``C = max(1, expert_capacity(...))``; equals ``layer.combine(x, r)`` minus the shared experts."""
    from .moe import expert_capacity
    N = layer.n_routed
    C = max(1, expert_capacity(len(x), N, layer.k, layer.capacity_factor))
    tokens, experts, gates = _assignments(r, use_keep=True)
    counts = torch.bincount(experts, minlength=N)
    if len(experts) and int(counts.max()) > C:
        raise ValueError(f"routing keeps {int(counts.max())} assignments for one expert, "
                         f"more than the capacity C={C}")
    slot = torch.arange(len(experts)) - (torch.cumsum(counts, 0) - counts)[experts]
    buf = x.new_zeros(N, C, x.shape[1])
    buf[experts, slot] = x[tokens]
    W1, b1 = layer.W1[:N], layer.b1[:N]
    W2, b2 = layer.W2[:N], layer.b2[:N]
    Y = torch.bmm(torch.relu(torch.bmm(buf, W1) + b1[:, None]), W2) + b2[:, None]  # (N, C, d_out)
    y = x.new_zeros(len(x), W2.shape[2])
    return y.index_add(0, tokens, gates.unsqueeze(1) * Y[experts, slot])


def block_rows(counts, R: int) -> np.ndarray:
    """Rows per expert after padding each group to a multiple of ``R``: ``R·⌈c_e/R⌉``."""
    if R <= 0:
        raise ValueError(f"block height R must be positive, got {R}")
    return np.array([R * math.ceil(int(c) / R) for c in counts], dtype=np.int64)


def dropless_experts(layer, x: torch.Tensor, r, R: int = 4) -> tuple[torch.Tensor, dict]:
    """Routed-expert output computing **every** assignment of ``r.idx`` (``r.keep`` ignored) as two
    BSR × dense products (see the module docstring). Returns ``(y, sizes)``; ``sizes`` counts the
    assignments, the padded rows ``P = Σ_e R·⌈c_e/R⌉`` and the stored blocks."""
    N = layer.n_routed
    d, h, d_out = layer.W1.shape[1], layer.W1.shape[2], layer.W2.shape[2]
    tokens, experts, gates = _assignments(r, use_keep=False)
    counts = torch.bincount(experts, minlength=N).numpy()
    padded = block_rows(counts, R)
    P = int(padded.sum())
    start = np.cumsum(padded) - padded
    first = np.cumsum(counts) - counts
    rows = torch.as_tensor(start[experts.numpy()] + (np.arange(len(experts)) - first[experts.numpy()]))
    dtype = layer.W1.dtype
    X = torch.zeros(P, d, dtype=dtype)
    X[rows] = x[tokens].detach().to(dtype)
    block_expert = np.repeat(np.arange(N), padded // R)            # the expert of each block row
    indptr = np.arange(len(block_expert) + 1, dtype=np.int64)      # one block per block row
    W1 = layer.W1[:N].detach().reshape(N * d, h)
    W2 = layer.W2[:N].detach().reshape(N * h, d_out)
    A1 = BSR(indptr, block_expert, X.numpy().reshape(-1, R, d), (P, N * d))
    row_expert = torch.as_tensor(np.repeat(np.arange(N), padded))
    H = torch.relu(spmm(A1, W1) + layer.b1[:N].detach()[row_expert])
    A2 = BSR(indptr, block_expert, H.numpy().reshape(-1, R, h), (P, N * h))
    Y = spmm(A2, W2) + layer.b2[:N].detach()[row_expert]
    y = torch.zeros(len(x), d_out, dtype=dtype).index_add(0, tokens, gates.detach().unsqueeze(1) * Y[rows])
    sizes = {"assignments": len(experts), "padded_rows": P, "blocks": len(block_expert),
             "capacity_rows": N * max(1, int(counts.max(initial=0)))}
    return y, sizes


def dispatch_layout(idx: torch.Tensor, n_experts: int, capacity_factor: float, R: int) -> dict:
    """Where each token of a top-1 routing ``idx (T, 1)`` lands in both layouts: per expert, the
    tokens placed in order and the rows reserved — ``"capacity"``: ``C`` slots, overflow dropped
    (``moe.dispatch``); ``"dropless"``: all its tokens, ``R·⌈c_e/R⌉`` rows — plus ``C`` and the
    dropped tokens."""
    from .moe import dispatch, expert_capacity
    if idx.ndim != 2 or idx.shape[1] != 1:
        raise ValueError(f"idx must be a top-1 routing of shape (T, 1), got {tuple(idx.shape)}")
    C = expert_capacity(len(idx), n_experts, 1, capacity_factor)
    keep = dispatch(idx, n_experts, C)[:, 0]
    groups = [[t for t in range(len(idx)) if int(idx[t, 0]) == e] for e in range(n_experts)]
    rows = block_rows([len(g) for g in groups], R)
    return {"C": C, "dropped": [t for t in range(len(idx)) if not keep[t]],
            "capacity": [([t for t in g if keep[t]], C) for g in groups],
            "dropless": [(g, int(r)) for g, r in zip(groups, rows)]}


def dispatch_diagram(idx: torch.Tensor, n_experts: int, capacity_factor: float = 1.0, R: int = 2):
    """MoE dispatch drawn from :func:`dispatch_layout`: tokens (coloured by expert) → a capacity
    buffer of ``C`` slots per expert (dropped tokens marked, padding hatched) on the left, the
    dropless layout padded to multiples of ``R`` on the right. Returns the ``Figure``."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Rectangle
    lay = dispatch_layout(idx, n_experts, capacity_factor, R)
    T = len(idx)
    expert_of = [int(e) for e in idx[:, 0]]
    colors = plt.cm.tab10(np.arange(n_experts) % 10)
    titles = {"capacity": f"capacity C = ⌈{capacity_factor}·{T}/{n_experts}⌉ = {lay['C']} slots per expert",
              "dropless": f"dropless: each group padded to a multiple of R = {R}"}
    height = max(T, *(sum(r for _, r in lay[k]) + n_experts - 1 for k in titles))
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.3 * height + 1.2))
    for ax, (kind, title) in zip(axes, titles.items()):
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        ax.set_xlim(-0.2, 8.5)
        ax.set_ylim(-height - 0.2, 0.2)
        for t in range(T):
            ax.add_patch(Rectangle((0, -t - 1), 0.8, 0.8, color=colors[expert_of[t]], alpha=0.8))
            ax.text(0.4, -t - 0.6, f"t{t}", ha="center", va="center", fontsize=7)
        y = 0
        for e, (placed, rows) in enumerate(lay[kind]):
            for j in range(rows):
                if j < len(placed):
                    t = placed[j]
                    ax.add_patch(Rectangle((4, -y - j - 1), 0.8, 0.8, color=colors[e], alpha=0.8))
                    ax.text(4.4, -y - j - 0.6, f"t{t}", ha="center", va="center", fontsize=7)
                    ax.add_patch(FancyArrowPatch((0.85, -t - 0.6), (3.95, -y - j - 0.6),
                                                 arrowstyle="->", color=colors[e], lw=0.8))
                else:
                    ax.add_patch(Rectangle((4, -y - j - 1), 0.8, 0.8, fill=False, hatch="///", ec="grey"))
            ax.text(5.0, -y - rows / 2, f"expert {e}: {len(placed)} tokens, {rows - len(placed)} padding",
                    fontsize=7, va="center")
            y += rows + 1
        if kind == "capacity":
            for t in lay["dropped"]:
                ax.text(0.95, -t - 0.6, "✗ dropped: over capacity, residual only", fontsize=7,
                        va="center", color="crimson")
    fig.tight_layout()
    return fig
