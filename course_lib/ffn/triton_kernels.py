"""The sparse FFN's Triton tier (``impl="triton"``): CUDA tensors, or CPU tensors under the
Triton interpreter (``TRITON_INTERPRET=1``, set when no CUDA device exists).

Chapter: book/fast/sparse_ffn

Every function computes what its reference in ``ffn.ref`` computes (see there for the formulas),
with inputs already checked by ``ffn.dispatch`` (this tier checks only the index range). The
kernels live at module level: a ``@triton.jit`` function calls another only through module
globals. ``ffn.dispatch`` imports this module on first use, so that ``course_lib.ffn`` works
without Triton installed.

Optimizations:

- the active rows are read in place: a program takes ``BLOCK_K`` active rows (their indices
  loaded once) and ``BLOCK_N`` columns, masked at the edges;
- values are widened to float32 in registers (bf16 and fp32 weights accumulate in float32) and
  rounded once, at the end;
- the gather and the fused FFN add their partial output rows with ``atomic_add``, so programs
  over different row blocks need no second pass; the fused FFN keeps its hidden values in
  registers between the W1 and the W2t rows.
"""

from __future__ import annotations

import torch

from ..tiers import import_triton
from .ref import check_range, rms_normalize_ref, stack_dtype

triton = import_triton()  # sets TRITON_INTERPRET=1 first when there is no CUDA device
import triton.language as tl  # noqa: E402

#: active rows per program and output columns per step, for every kernel of this module
BLOCK_K, BLOCK_N = 32, 128


@triton.jit
def gather_kernel(Wt, v, idx, out, K, N, stride_w,
                  BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    # program (n-block, k-block): BLOCK_K active rows × BLOCK_N outputs, atomically added.
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    nmask = cols < N
    rows = tl.load(idx + ks, mask=kmask, other=0).to(tl.int64)
    s = tl.load(v + rows, mask=kmask, other=0.0).to(tl.float32)
    w = tl.load(Wt + rows[:, None] * stride_w + cols[None, :],
                mask=kmask[:, None] & nmask[None, :], other=0.0).to(tl.float32)
    tl.atomic_add(out + cols, tl.sum(w * s[:, None], axis=0), mask=nmask)


@triton.jit
def _dots(W, x, rows, kmask, N, stride_w, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    # (W[rows[i]] · x for the BLOCK_K rows), accumulated in fp32 over BLOCK_N chunks.
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        nmask = cols < N
        xv = tl.load(x + cols, mask=nmask, other=0.0).to(tl.float32)
        w = tl.load(W + rows[:, None] * stride_w + cols[None, :],
                    mask=kmask[:, None] & nmask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w * xv[None, :], axis=1)
    return acc


@triton.jit
def row_kernel(W, x, idx, out, K, N, stride_w,
               BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    # program k-block: BLOCK_K active rows' dot products with x.
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    rows = tl.load(idx + ks, mask=kmask, other=0).to(tl.int64)
    tl.store(out + ks, _dots(W, x, rows, kmask, N, stride_w, BLOCK_K, BLOCK_N), mask=kmask)


@triton.jit
def fused_kernel(W1, b1, W2t, x, idx, out, K, N1, N2, stride_1, stride_2,
                 GELU: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    # program k-block: the hidden values of BLOCK_K active neurons (_dots, bias, activation),
    # then their W2t rows added atomically over BLOCK_N chunks of the output.
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    rows = tl.load(idx + ks, mask=kmask, other=0).to(tl.int64)
    h = _dots(W1, x, rows, kmask, N1, stride_1, BLOCK_K, BLOCK_N)
    h += tl.load(b1 + rows, mask=kmask, other=0.0).to(tl.float32)
    if GELU:
        h = 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))
    else:
        h = tl.maximum(h, 0.0)
    h = tl.where(kmask, h, 0.0)
    for start in range(0, N2, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        nmask = cols < N2
        w = tl.load(W2t + rows[:, None] * stride_2 + cols[None, :],
                    mask=kmask[:, None] & nmask[None, :], other=0.0).to(tl.float32)
        tl.atomic_add(out + cols, tl.sum(w * h[:, None], axis=0), mask=nmask)


# --------------------------------------------------------------------------- the tier's functions

def gather_gemv(Wt: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``y = Σ_p v[idx[p]] · Wt[idx[p]]``: see the reference ``ref.gather_gemv_ref``.

    Optimizations: a grid of (column block, row block) programs, each adding its partial
    output row atomically."""
    check_range("gather_gemv", idx, Wt.shape[0])
    Wt, v, idx = Wt.contiguous(), v.contiguous(), idx.contiguous()
    K, N = idx.shape[0], Wt.shape[1]
    out = torch.zeros(N, dtype=torch.float32, device=Wt.device)
    if K:
        grid = (triton.cdiv(N, BLOCK_N), triton.cdiv(K, BLOCK_K))
        gather_kernel[grid](Wt, v, idx, out, K, N, Wt.stride(0), BLOCK_K=BLOCK_K, BLOCK_N=BLOCK_N)
    return out.to(Wt.dtype)


def row_gemv(W: torch.Tensor, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``h[p] = W[idx[p]] · x``: see the reference ``ref.row_gemv_ref``.

    Optimizations: one program per block of active rows; ``x`` loaded once per column block
    for all of them."""
    check_range("row_gemv", idx, W.shape[0])
    W, x, idx = W.contiguous(), x.contiguous(), idx.contiguous()
    K, N = idx.shape[0], W.shape[1]
    out = torch.zeros(K, dtype=torch.float32, device=W.device)
    if K:
        row_kernel[(triton.cdiv(K, BLOCK_K),)](W, x, idx, out, K, N, W.stride(0),
                                               BLOCK_K=BLOCK_K, BLOCK_N=BLOCK_N)
    return out.to(W.dtype)


def fused_ffn(W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor, x: torch.Tensor,
              idx: torch.Tensor, activation: str) -> torch.Tensor:
    """``y = Σ_p act(W1[idx[p]] · x + b1[idx[p]]) · W2t[idx[p]]``: see the reference
    ``ref.fused_ffn_ref``.

    Optimizations: one program per block of active neurons computes their hidden values and
    adds their W2t rows atomically, in one launch."""
    check_range("fused_ffn", idx, W1.shape[0])
    return _fused(W1, b1, W2t, x, idx, activation)


def _fused(W1, b1, W2t, x, idx, activation):
    W1, b1, W2t, x, idx = W1.contiguous(), b1.contiguous(), W2t.contiguous(), x.contiguous(), idx.contiguous()
    K = idx.shape[0]
    out = torch.zeros(W2t.shape[1], dtype=torch.float32, device=W1.device)
    if K:
        fused_kernel[(triton.cdiv(K, BLOCK_K),)](
            W1, b1, W2t, x, idx, out, K, W1.shape[1], W2t.shape[1], W1.stride(0), W2t.stride(0),
            GELU=activation == "gelu", BLOCK_K=BLOCK_K, BLOCK_N=BLOCK_N)
    return out.to(W1.dtype)


def stack_step(W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor, activation: str,
               eps: float, **cpu_options):
    """A decode step of the FFN stack (see the reference ``ref.fused_ffn_stack_ref``): the
    index ranges checked once, then one fused-FFN launch per layer on ``u`` rounded to the
    weights' dtype. ``cpu_options`` (packing, huge pages) apply to the CPU tier only."""
    acc = stack_dtype(W1.dtype)

    def step(x: torch.Tensor, idx) -> torch.Tensor:
        for i in idx:
            check_range("FusedFFNStack", i, W1.shape[1])
        x = x.to(acc)
        for layer, i in enumerate(idx):
            u = rms_normalize_ref(x, eps).to(W1.dtype)
            x = x + _fused(W1[layer], b1[layer], W2t[layer], u, i, activation).to(acc)
        return x.to(W1.dtype)
    return step
