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

__all__ = ["padded_experts", "dropless_experts", "block_rows"]


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
