"""Triton kernels of ``course_lib.ffn`` (module level, so that one kernel can call another).

Imported lazily by ``ffn._triton_kernels``; ``course_lib.spmm`` is imported first because it
sets ``TRITON_INTERPRET=1`` when no CUDA device exists (read when the kernels are decorated).
"""

from . import spmm  # noqa: F401  (sets TRITON_INTERPRET=1 when no CUDA device exists)
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

cdiv = triton.cdiv


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
