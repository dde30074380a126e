"""The Triton tier of ``course_lib.spmm`` (``impl="triton"``): a CSR row-split kernel and a BSR
block kernel; native on CUDA, and on the CPU through the Triton interpreter (``TRITON_INTERPRET=1``,
set when no CUDA device exists).

Chapter: book/fast/spmm_gpu

``spmm.spmm_triton`` imports this module on first use (so that ``course_lib.spmm`` works without
Triton installed) and passes A's arrays as torch tensors on B's device.
"""

from __future__ import annotations

import torch

from ..tiers import import_triton

triton = import_triton()  # sets TRITON_INTERPRET=1 first when there is no CUDA device
import triton.language as tl  # noqa: E402


@triton.jit
def csr_spmm_kernel(indptr, indices, data, B, C, N, stride_b, stride_c,
                     BLOCK_N: tl.constexpr, BLOCK_NNZ: tl.constexpr):
    """Program (row, column tile): C[row, tile] = Σ_p data[p] · B[indices[p], tile], BLOCK_NNZ nonzeros a step."""
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    # the grid has exactly M rows, so indptr[row] and indptr[row + 1] are in bounds
    start = tl.load(indptr + row).to(tl.int64)
    end = tl.load(indptr + row + 1).to(tl.int64)
    acc = tl.zeros([BLOCK_N], dtype=C.dtype.element_ty)
    for p0 in range(start, end, BLOCK_NNZ):
        p = p0 + tl.arange(0, BLOCK_NNZ)
        p_ok = p < end
        k = tl.load(indices + p, mask=p_ok, other=0).to(tl.int64)
        v = tl.load(data + p, mask=p_ok, other=0.0)
        b = tl.load(B + k[:, None] * stride_b + cols[None, :],
                    mask=p_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.sum(v[:, None] * b, axis=0)
    tl.store(C + row * stride_c + cols, acc, mask=col_ok)


@triton.jit
def bsr_spmm_kernel(indptr, indices, data, B, C, N, stride_b, stride_c,
                     R: tl.constexpr, CB: tl.constexpr, RP: tl.constexpr, CP: tl.constexpr,
                     BLOCK_N: tl.constexpr, USE_DOT: tl.constexpr):
    """Program (block row I, column tile): C[I·R:(I+1)·R, tile] = Σ_p data[p] @ B[indices[p]·CB:…, tile].

    R×CB blocks are padded to powers of two RP×CP (masked); with USE_DOT the block product is a
    ``tl.dot`` (tensor cores on a GPU), else a broadcast multiply and sum.
    """
    brow = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    r = tl.arange(0, RP)
    c = tl.arange(0, CP)
    col_ok = cols < N
    blk_ok = (r[:, None] < R) & (c[None, :] < CB)
    start = tl.load(indptr + brow).to(tl.int64)
    end = tl.load(indptr + brow + 1).to(tl.int64)
    acc = tl.zeros([RP, BLOCK_N], dtype=C.dtype.element_ty)
    for p in range(start, end):
        blk = tl.load(data + p * (R * CB) + r[:, None] * CB + c[None, :], mask=blk_ok, other=0.0)
        k = tl.load(indices + p).to(tl.int64)
        b = tl.load(B + (k * CB + c)[:, None] * stride_b + cols[None, :],
                    mask=(c[:, None] < CB) & col_ok[None, :], other=0.0)
        if USE_DOT:
            acc += tl.dot(blk, b, input_precision="ieee")
        else:
            acc += tl.sum(blk[:, :, None] * b[None, :, :], axis=1)
    out = (brow * R + r).to(tl.int64)
    tl.store(C + out[:, None] * stride_c + cols[None, :], acc,
             mask=(r[:, None] < R) & col_ok[None, :])


def launch(indptr: torch.Tensor, indices: torch.Tensor, data: torch.Tensor, shape, B: torch.Tensor,
           blocksize=None, block_n: int = 32, block_nnz: int = 16) -> torch.Tensor:
    """C = A·B for A given by its arrays and ``shape`` (BSR when ``blocksize = (R, C)`` is given).

    Row-split: one program per output row and column tile (grid rows × ⌈n/block_n⌉); rows with
    many nonzeros take longer (load imbalance). BSR: one program per block row; each step is a
    dense R×C block product.
    """
    B = B.contiguous()
    m, n = shape[0], B.shape[1]
    C = torch.empty((m, n), dtype=B.dtype, device=B.device)
    if m == 0 or n == 0:
        return C.zero_()
    block_n = min(block_n, triton.next_power_of_2(n))
    if blocksize is not None:
        R, Cb = blocksize
        RP, CP = triton.next_power_of_2(R), triton.next_power_of_2(Cb)
        use_dot = min(RP, CP, block_n) >= 16 and B.dtype != torch.float64
        bsr_spmm_kernel[(m // R, triton.cdiv(n, block_n))](
            indptr, indices, data.contiguous(), B, C, n, B.stride(0), C.stride(0),
            R=R, CB=Cb, RP=RP, CP=CP, BLOCK_N=block_n, USE_DOT=use_dot)
    else:
        csr_spmm_kernel[(m, triton.cdiv(n, block_n))](
            indptr, indices, data, B, C, n, B.stride(0), C.stride(0),
            BLOCK_N=block_n, BLOCK_NNZ=block_nnz)
    return C
