"""Sparse × dense matrix multiplication (SpMM), C = A·B, in tiers from the formula to a GPU kernel.

A is a ``formats.CSR`` (m×k) or, where the tier supports it, a ``formats.BSR``; B is a dense k×n
NumPy array or torch tensor; C is m×n, of the same kind (and device) as B. Every tier computes

    C[i, :] = Σ_{p = indptr[i]}^{indptr[i+1]-1} data[p] · B[indices[p], :]

(for BSR the same sum runs over blocks: C[block row I] = Σ_p data[p] @ B[block column indices[p]]).

Tiers (``IMPLEMENTATIONS``; the names are the package's, see ``course_lib.tiers``):

- ``ref``      :func:`spmm_python`, the row loop: the reference; reads like the formula.
- ``numpy``    vectorized: gather rows of B, scale, segment-sum by row (no loop over nonzeros).
- ``torch``    the same gather / scale / ``index_add_`` in torch; CPU and CUDA tensors.
- ``cpu_fast`` our multi-core CPU kernel (numba, rows split over a thread team), CSR only.
- ``triton``   a CSR row-split kernel and a BSR block kernel (``spmm.triton_kernels``, imported
               with Triton on first use); native on CUDA, and on CPU through the Triton
               interpreter (``TRITON_INTERPRET=1``, set here when no CUDA device exists).

``spmm(A, B, impl="auto")`` checks the operands, converts B to the tier's array kind and back.

Chapter: book/fast/spmm_cpu, book/fast/spmm_gpu
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..formats import BSR, CSR
from ..numba_team import TEAM, chunk_count, chunk_done, next_chunk, numba, wait_done
from ..tiers import check_device, check_impl, enable_interpreter_without_cuda, has_triton

# Triton reads TRITON_INTERPRET when a kernel is decorated: set before any Triton kernel module
# loads, here or in a notebook that imports spmm before writing its own kernels
enable_interpreter_without_cuda()

FLOAT_DTYPES = ("float32", "float64")
#: elements of the (nnz × n) temporary the numpy tier builds per chunk of rows: 1 MiB of fp32,
#: so the temporary stays in L2 (16× larger chunks measured ~3× slower on this 2-core CPU)
CHUNK_ELEMENTS = 1 << 18
#: the torch tier's chunk (64 MiB of fp32): every torch op costs a thread-pool round trip on the
#: CPU or a kernel launch on the GPU, so it takes few large chunks
TORCH_CHUNK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------------------------
# operand checks and conversions
# --------------------------------------------------------------------------------------------

def _dtype_name(x) -> str:
    """'float32', 'int64', 'bfloat16', … for a NumPy array or torch tensor."""
    return str(x.dtype).removeprefix("torch.")


def _device(x) -> str:
    """'cpu' for NumPy arrays, the torch device string (e.g. 'cuda:0') for tensors."""
    return str(x.device) if isinstance(x, torch.Tensor) else "cpu"


def check_operands(A, B) -> None:
    """Raise TypeError/ValueError unless A (CSR or BSR) and the dense 2-D B can be multiplied."""
    if not isinstance(A, (CSR, BSR)):
        raise TypeError(f"A must be a formats.CSR or formats.BSR, got {type(A).__name__}")
    if not isinstance(B, (np.ndarray, torch.Tensor)):
        raise TypeError(f"B must be a NumPy array or torch tensor, got {type(B).__name__}")
    if B.ndim != 2:
        raise ValueError(f"B must be 2-D, got shape {tuple(B.shape)} ({B.ndim}-D)")
    if A.shape[1] != B.shape[0]:
        raise ValueError(f"shape mismatch: A is {tuple(A.shape)}, B is {tuple(B.shape)} "
                         f"(A.shape[1] = {A.shape[1]} must equal B.shape[0] = {B.shape[0]})")
    a_dt, b_dt = _dtype_name(A.data), _dtype_name(B)
    if b_dt not in FLOAT_DTYPES:
        raise TypeError(f"B must be float32 or float64, got {b_dt}")
    if a_dt != b_dt:
        raise TypeError(f"dtype mismatch: A.data is {a_dt}, B is {b_dt}")


def _torch_arrays(A, device):
    """(indptr, indices, data) of A as torch tensors on ``device`` (zero-copy on the CPU)."""
    return tuple(_as_torch(x, device) for x in (A.indptr, A.indices, A.data))


def _as_torch(x, device="cpu") -> torch.Tensor:
    """Tensor view of an array; formats arrays are read-only and the tiers never write to them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(x, device=device)


def _row_chunks(indptr, width: int, budget: int):
    """Split rows into [r0, r1) ranges whose nonzeros × ``width`` stay near ``budget`` elements.

    Bounds the temporary of the vectorized tiers; a row longer than the budget is its own chunk.
    """
    ptr = np.asarray(indptr.cpu() if isinstance(indptr, torch.Tensor) else indptr, dtype=np.int64)
    per_chunk = max(1, budget // max(width, 1))
    m, r0 = len(ptr) - 1, 0
    while r0 < m:
        r1 = int(np.searchsorted(ptr, ptr[r0] + per_chunk, side="right")) - 1
        r1 = min(max(r1, r0 + 1), m)
        yield r0, r1
        r0 = r1


def _bsr_geometry(A):
    """(R, Cb, number of block rows) of a BSR."""
    R, Cb = A.blocksize
    return R, Cb, A.shape[0] // R


# --------------------------------------------------------------------------------------------
# tier "ref": the reference, a Python row loop
# --------------------------------------------------------------------------------------------

def spmm_python(A, B: np.ndarray) -> np.ndarray:
    """Row loop: C[i] = Σ_p data[p] · B[indices[p]] over the nonzeros p of row i (BSR: of block row i)."""
    indptr, indices, data = A.indptr, A.indices, A.data
    C = np.zeros((A.shape[0], B.shape[1]), dtype=B.dtype)
    if isinstance(A, BSR):
        R, Cb, mb = _bsr_geometry(A)
        for i in range(mb):
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                C[i * R:(i + 1) * R] += data[p] @ B[j * Cb:(j + 1) * Cb]
        return C
    for i in range(A.shape[0]):
        for p in range(indptr[i], indptr[i + 1]):
            C[i] += data[p] * B[indices[p]]
    return C


# --------------------------------------------------------------------------------------------
# tier "numpy": gather, scale, segment-sum
# --------------------------------------------------------------------------------------------

def _segment_sum(products: np.ndarray, local_ptr: np.ndarray, out: np.ndarray) -> None:
    """out[r] = Σ products[local_ptr[r]:local_ptr[r+1]] for every nonempty segment r (sorted rows)."""
    nonempty = np.flatnonzero(np.diff(local_ptr))
    if nonempty.size:
        out[nonempty] = np.add.reduceat(products, local_ptr[nonempty], axis=0)


def spmm_numpy(A, B: np.ndarray) -> np.ndarray:
    """Vectorized: P = data[:, None] · B[indices] (one product row per nonzero), then C[i] = Σ_{p∈row i} P[p].

    See the reference :func:`spmm_python`. BSR: P[p] = data[p] @ B[block column indices[p]].

    Optimizations: no Python loop over nonzeros (one gather, one multiply, one
    ``np.add.reduceat`` at the row starts); rows in chunks of about ``CHUNK_ELEMENTS`` products,
    so that the (nnz × n) temporary stays in L2.
    """
    indptr, indices, data = A.indptr, A.indices, A.data
    indptr = indptr.astype(np.int64)
    n = B.shape[1]
    if isinstance(A, BSR):
        R, Cb, mb = _bsr_geometry(A)
        B_blocks = B.reshape(-1, Cb, n)
        C = np.zeros((mb, R, n), dtype=B.dtype)
        product = lambda lo, hi: np.matmul(data[lo:hi], B_blocks[indices[lo:hi]])  # noqa: E731
        width = R * n
    else:
        C = np.zeros((A.shape[0], n), dtype=B.dtype)
        product = lambda lo, hi: data[lo:hi, None] * B[indices[lo:hi]]  # noqa: E731
        width = n
    for r0, r1 in _row_chunks(indptr, width, CHUNK_ELEMENTS):
        lo, hi = indptr[r0], indptr[r1]
        _segment_sum(product(lo, hi), indptr[r0:r1 + 1] - lo, C[r0:r1])
    return C.reshape(A.shape[0], n)


# --------------------------------------------------------------------------------------------
# tier "torch": gather, scale, index_add_ (any device)
# --------------------------------------------------------------------------------------------

def spmm_torch(A, B: torch.Tensor) -> torch.Tensor:
    """Vectorized torch: C.index_add_(0, row_of_nonzero, data[:, None] · B[indices]), on B's device.

    See the reference :func:`spmm_python`. BSR: the products are the batched block products
    data[p] @ B[block column indices[p]].

    Optimizations: the numpy tier's gather / scale / segment sum as torch operations, which run
    on a GPU as well; few large chunks (``TORCH_CHUNK_ELEMENTS``), because every torch operation
    costs a thread-pool round trip on the CPU or a kernel launch on the GPU.
    """
    indptr, indices, data = _torch_arrays(A, B.device)
    n = B.shape[1]
    counts = torch.diff(indptr)
    if isinstance(A, BSR):
        R, Cb, mb = _bsr_geometry(A)
        B_blocks = B.reshape(-1, Cb, n)
        C = torch.zeros((mb, R, n), dtype=B.dtype, device=B.device)
        product = lambda lo, hi: torch.bmm(data[lo:hi], B_blocks[indices[lo:hi]])  # noqa: E731
        width = R * n
    else:
        C = torch.zeros((A.shape[0], n), dtype=B.dtype, device=B.device)
        product = lambda lo, hi: data[lo:hi, None] * B[indices[lo:hi]]  # noqa: E731
        width = n
    for r0, r1 in _row_chunks(indptr, width, TORCH_CHUNK_ELEMENTS):
        lo, hi = int(indptr[r0]), int(indptr[r1])
        rows = torch.repeat_interleave(torch.arange(r1 - r0, device=B.device), counts[r0:r1])
        C[r0:r1].index_add_(0, rows, product(lo, hi))
    return C.reshape(A.shape[0], n)


# --------------------------------------------------------------------------------------------
# tier "cpu_fast": numba, rows split over a thread team
# --------------------------------------------------------------------------------------------

#: output rows a team thread claims at once: 64 chunks for a 4096-row A, enough to balance
_ROWS_PER_CHUNK = 64


@numba.njit(nogil=True, cache=True)
def csr_spmm_rows(indptr, indices, data, B, C, tid, state):  # pragma: no cover  (compiled)
    """The kernel of :func:`spmm_cpu_fast`: C[i, :] += data[p] · B[indices[p], :] for p in row i;
    chunks of rows claimed by the team."""
    m = C.shape[0]
    lo, hi = next_chunk(state, m, _ROWS_PER_CHUNK)
    while lo >= 0:
        for i in range(lo, hi):
            Ci = C[i]
            p, end = indptr[i], indptr[i + 1]
            while p + 8 <= end:  # eight nonzeros per pass over the C row
                b0, b1, b2, b3 = B[indices[p]], B[indices[p + 1]], B[indices[p + 2]], B[indices[p + 3]]
                b4, b5, b6, b7 = B[indices[p + 4]], B[indices[p + 5]], B[indices[p + 6]], B[indices[p + 7]]
                a0, a1, a2, a3 = data[p], data[p + 1], data[p + 2], data[p + 3]
                a4, a5, a6, a7 = data[p + 4], data[p + 5], data[p + 6], data[p + 7]
                for j in range(Ci.shape[0]):
                    Ci[j] += ((a0 * b0[j] + a1 * b1[j]) + (a2 * b2[j] + a3 * b3[j])
                              + (a4 * b4[j] + a5 * b5[j]) + (a6 * b6[j] + a7 * b7[j]))
                p += 8
            for q in range(p, end):
                a, b = data[q], B[indices[q]]
                for j in range(Ci.shape[0]):
                    Ci[j] += a * b[j]
        chunk_done(state)
        lo, hi = next_chunk(state, m, _ROWS_PER_CHUNK)
    if tid == 0:
        wait_done(state, chunk_count(m, _ROWS_PER_CHUNK))


def spmm_cpu_fast(A, B: np.ndarray) -> np.ndarray:
    """Multi-core CSR SpMM compiled by numba: output rows split over a thread team. See the
    reference :func:`spmm_python`.

    Optimizations, and why it is correct without locks:
    - threads claim disjoint chunks of output rows (``course_lib.numba_team.Team``: the caller starts
      at once and helpers join when they wake, instead of paying a thread-pool wake-up of
      ≈ 0.08 ms per call), so there are no write conflicts and no atomics on C;
    - eight nonzeros per pass: eight B rows are loaded at once (eight independent memory
      streams) and the C row is read and written once per eight nonzeros instead of once per
      nonzero — measured 2× faster than one nonzero per pass at 1 % density;
    - the innermost loop runs over the n contiguous columns, which LLVM turns into SIMD
      fused multiply-adds; no temporaries: the CSR arrays, the gathered B rows and C move once.
    The loop nest is scipy's ``csr_matvecs`` (single-threaded), unrolled and run on all cores.
    """
    if isinstance(A, BSR):
        raise TypeError("the cpu_fast tier supports CSR only; use impl='numpy' or 'torch' for BSR")
    C = np.zeros((A.shape[0], B.shape[1]), dtype=B.dtype)
    TEAM.run(csr_spmm_rows, A.indptr, A.indices, A.data, np.ascontiguousarray(B), C)
    return C


# --------------------------------------------------------------------------------------------
# tier "triton": the kernels live in course_lib.spmm.triton_kernels
# --------------------------------------------------------------------------------------------

def spmm_triton(A, B: torch.Tensor, block_n: int = 32, block_nnz: int = 16) -> torch.Tensor:
    """The Triton kernels of :mod:`course_lib.spmm.triton_kernels` (imported, with Triton, on first use):
    C = A·B as in the reference :func:`spmm_python`.

    Optimizations: a CSR row-split kernel, one program per (row, column tile), which loads
    ``block_nnz`` nonzeros and their B rows at a time and accumulates in registers; for BSR one
    program per block row, each step a dense block product (``tl.dot``: tensor cores on a GPU
    when the padded blocks are at least 16 wide). No atomics: a program owns its output tile.
    """
    from . import triton_kernels as kernels  # here, not at the top: Triton is an optional extra

    indptr, indices, data = _torch_arrays(A, B.device)
    blocksize = A.blocksize if isinstance(A, BSR) else None
    return kernels.launch(indptr, indices, data, A.shape, B, blocksize, block_n, block_nnz)


# --------------------------------------------------------------------------------------------
# registry and public entry points
# --------------------------------------------------------------------------------------------

#: name → tier function f(A, B) on the tier's native array kind (see ``TIER_KIND``)
IMPLEMENTATIONS = {
    "ref": spmm_python,
    "numpy": spmm_numpy,
    "torch": spmm_torch,
    "cpu_fast": spmm_cpu_fast,
    "triton": spmm_triton,
}
#: the array kind each tier takes and returns
TIER_KIND = {"ref": "numpy", "numpy": "numpy", "cpu_fast": "numpy", "torch": "torch", "triton": "torch"}


def pick_impl(A, B) -> str:
    """The tier "auto" uses. CPU: cpu_fast for CSR (our fastest tier in the spmm benchmark) and
    numpy for BSR (batched block products). CUDA: the Triton kernels where Triton is installed
    (the tier written for the GPU; ``python -m course_lib.bench spmm --device cuda`` times it
    against cuSPARSE and cuBLAS), else the torch tier."""
    if _device(B).startswith("cuda"):
        return "triton" if has_triton() else "torch"
    return "numpy" if isinstance(A, BSR) else "cpu_fast"


def spmm(A, B, impl: str = "auto"):
    """C = A·B for sparse A (CSR/BSR) and dense 2-D B; C has B's kind (NumPy/torch), dtype and device."""
    check_operands(A, B)
    if impl == "auto":
        impl = pick_impl(A, B)
    check_impl(impl, IMPLEMENTATIONS)
    check_device(impl, TIER_KIND[impl], _device(B))
    is_torch = isinstance(B, torch.Tensor)
    if TIER_KIND[impl] == "numpy":
        C = IMPLEMENTATIONS[impl](A, B.detach().numpy() if is_torch else B)
        return torch.from_numpy(C) if is_torch else C
    C = IMPLEMENTATIONS[impl](A, B if is_torch else _as_torch(B))
    return C if is_torch else C.numpy()


def spmv(A, x, impl: str = "auto"):
    """y = A·x for a 1-D x (NumPy or torch): y[i] = Σ_p data[p] · x[indices[p]]."""
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise TypeError(f"x must be a NumPy array or torch tensor, got {type(x).__name__}")
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {tuple(x.shape)}")
    return spmm(A, x[:, None], impl)[:, 0]
