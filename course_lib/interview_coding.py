"""Oracles and case generators for the graded coding-interview problems (``solutions/coding``).

Each oracle computes the answer to one problem by a route that differs from the expected
solution (a scipy routine, autograd, a dense product), so a check compares two
independent computations. The learner's task and its complexity are stated in the notebook.
Problems whose reference already lives in another module use it directly
(``formats.coo_to_csr_ref``, ``formats.nm_mask``, ``formats.nm_compress``, ``activations.topk``,
``activations.kwinners``, ``activations.sparsemax``, ``moe.noisy_top_k``,
``moe.load_balancing_loss``); this module holds only the rest.

Chapter: book/interview/coding
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from . import moe

# ---------------------------------------------------------------- input validation


def _check_csr(indptr, indices, data, n_cols: int) -> int:
    """Validate CSR arrays; return the number of rows. Raises ValueError naming the invariant."""
    indptr, indices, data = (np.asarray(a) for a in (indptr, indices, data))
    if indptr.ndim != 1 or indptr.size == 0:
        raise ValueError(f"indptr must be 1-D with length m+1 >= 1, got shape {indptr.shape}")
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        raise ValueError("indptr must start at 0 and be non-decreasing")
    if indices.shape != data.shape or indices.ndim != 1 or indptr[-1] != indices.size:
        raise ValueError(f"need len(indices) == len(data) == indptr[-1], got "
                         f"{indices.shape}, {data.shape}, {indptr[-1]}")
    if indices.size and (indices.min() < 0 or indices.max() >= n_cols):
        raise ValueError(f"column indices must lie in [0, {n_cols})")
    return indptr.size - 1


# ---------------------------------------------------------------- sparse formats (scipy oracles)


def spmv_oracle(indptr, indices, data, x) -> np.ndarray:
    """y = A x for A in CSR, computed by scipy."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {x.shape}")
    m = _check_csr(indptr, indices, data, x.size)
    return sp.csr_matrix((data, indices, indptr), shape=(m, x.size)) @ x


def spmm_oracle(indptr, indices, data, B) -> np.ndarray:
    """C = A B for A in CSR and dense B (n×k), computed by scipy."""
    B = np.asarray(B)
    if B.ndim != 2:
        raise ValueError(f"B must be 2-D, got shape {B.shape}")
    m = _check_csr(indptr, indices, data, B.shape[0])
    return np.asarray(sp.csr_matrix((data, indices, indptr), shape=(m, B.shape[0])) @ B)


def coo_matmul_oracle(A, B, shape_a, shape_b) -> np.ndarray:
    """Dense C = A B for A, B given as COO triplets ``(rows, cols, vals)``; scipy computes it."""
    if shape_a[1] != shape_b[0]:
        raise ValueError(f"inner dimensions differ: {shape_a} @ {shape_b}")
    Sa = sp.coo_matrix((A[2], (A[0], A[1])), shape=shape_a)
    Sb = sp.coo_matrix((B[2], (B[0], B[1])), shape=shape_b)
    return (Sa @ Sb).toarray()


def dense_to_bsr_oracle(A, blocksize):
    """BSR of a dense matrix keeping exactly the blocks that hold a nonzero (scipy ``tobsr``)."""
    A = np.asarray(A)
    R, C = blocksize
    if A.ndim != 2 or A.shape[0] % R or A.shape[1] % C:
        raise ValueError(f"shape {A.shape} is not divisible by blocksize {blocksize}")
    B = sp.csr_matrix(A).tobsr(blocksize=(R, C))
    B.sort_indices()
    return B.indptr.astype(np.int64), B.indices.astype(np.int64), B.data


def random_csr(rng: np.random.Generator, m: int, n: int, density: float):
    """Random CSR arrays ``(indptr, indices, data)`` with sorted columns and float64 values."""
    A = sp.random(m, n, density=density, format="csr", random_state=rng,
                  data_rvs=rng.standard_normal)
    A.sort_indices()
    return A.indptr.astype(np.int64), A.indices.astype(np.int64), A.data


# ---------------------------------------------------------------- measurement, sparse coding, MoE


def sequential_zero_fractions(model: nn.Sequential, X: torch.Tensor) -> dict[str, float]:
    """Fraction of exact zeros in the output of every ``nn.ReLU`` child of a Sequential model,
    computed by running the children one by one (no hooks)."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"expected nn.Sequential, got {type(model).__name__}")
    out, h = {}, X
    with torch.no_grad():
        for name, layer in model.named_children():
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                out[name] = (h == 0).float().mean().item()
    return out


def ista_step_oracle(z, D, x, lam: float, eta: float) -> torch.Tensor:
    """One ISTA step for min ½‖x − Dz‖² + λ‖z‖₁: softshrink(z − η∇, ηλ), ∇ taken by autograd."""
    z = z.detach().clone().requires_grad_(True)
    (0.5 * ((x - D @ z) ** 2).sum()).backward()
    return torch.nn.functional.softshrink(z.detach() - eta * z.grad, eta * lam)


def moe_router_oracle(logits: torch.Tensor, k: int, alpha: float = 0.01):
    """Top-k router as ``(weights, experts, aux_loss)``, assembled from ``course_lib.moe``.

    weights (T×k) = softmax over the k chosen logits (= their probabilities renormalised to sum
    to 1); aux_loss = α·N·Σᵢ fᵢ Pᵢ (``moe.load_balancing_loss``, Switch Transformer, top-k form).
    """
    _, experts, weights = moe.noisy_top_k(logits, k)
    return weights, experts, alpha * moe.load_balancing_loss(logits.softmax(-1), experts)
