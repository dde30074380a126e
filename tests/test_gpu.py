"""Every Triton kernel against its CPU oracle, from tiny to realistic sizes (marker ``gpu``).

On a CUDA device these run the kernels natively on every size; ``tools/gpu_check.sh`` runs them
(``pytest -m gpu``) and fails if any was skipped. Without CUDA they skip, unless
``COURSE_GPU_TESTS=interpret`` (what ``tools/gpu_check.sh --dry-run`` sets): then the tiny sizes
run on the CPU through the Triton interpreter, which tests the tests and the script, not the GPU.

The oracles run on the CPU in float64 on the same values: ``scipy.sparse`` for SpMM, the
reference tier of ``course_lib.ffn`` for the FFN kernels. Errors are measured as
``‖C − C_ref‖ / ‖C_ref‖`` (Frobenius), which does not depend on the size of the sums: fp32 on
CUDA cores stays near 1e-6; ``tl.dot`` on tensor cores rounds fp32 inputs to TF32 (10-bit
mantissa) and bf16 results carry 8 bits, hence the looser tolerances. SpMM runs in fp32 (and
fp64) only: its CSR/BSR values are NumPy arrays, which have no bf16; the FFN kernels run in
fp32 and bf16 (read as stored, accumulated in fp32).
"""

import os

import numpy as np
import pytest
import torch

INTERPRET = os.environ.get("COURSE_GPU_TESTS") == "interpret"
if INTERPRET:  # the interpreter must be chosen before the first @triton.jit runs
    os.environ["TRITON_INTERPRET"] = "1"

from course_lib import data, ffn, formats, spmm  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (INTERPRET or torch.cuda.is_available()),
                       reason="needs a CUDA device (or COURSE_GPU_TESTS=interpret: the Triton "
                              "interpreter on the CPU, tiny sizes, as tools/gpu_check.sh --dry-run)"),
]


def realistic(*cases):
    """Cases too large for the interpreter: kept on CUDA, marked skipped-by-design otherwise."""
    return [pytest.param(*c, marks=pytest.mark.skipif(INTERPRET, reason="interpreter: tiny sizes only"))
            for c in cases]


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """‖got − want‖ / ‖want‖ in float64 on the CPU (0 when both are zero)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    scale = want.norm().item()
    return (got - want).norm().item() / scale if scale else got.norm().item()


# ---- SpMM: the CSR row-split kernel and the BSR block kernel -------------------------------

SPMM_CASES = [  # (m, k, n, density): one entry, column tails, empty rows, rows longer than a block
    (1, 1, 1, 1.0), (7, 5, 3, 0.5), (33, 17, 40, 0.2), (20, 20, 8, 0.01), (16, 64, 33, 0.9),
] + realistic((4096, 4096, 64, 0.01), (4096, 4096, 64, 0.05), (4096, 4096, 256, 0.01),
              (4096, 4096, 64, 0.5), (1000, 3000, 100, 0.1))


TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.mark.parametrize("m,k,n,density", SPMM_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_triton_csr_spmm_matches_scipy(m, k, n, density, dtype):
    A = data.make_sparse_matrix(m, k, density, seed=m + n, dtype=dtype)
    B = torch.randn(k, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    C = spmm.spmm(A, B.to(dtype=TORCH_DTYPE[dtype], device=DEVICE), impl="triton")
    assert C.shape == (m, n) and C.device.type == DEVICE
    want = torch.from_numpy(A.to_scipy().astype(np.float64) @ B.numpy())
    assert rel_error(C, want) < (1e-5 if dtype == np.float32 else 1e-12)


BSR_CASES = [  # (m, k, n, block, density of blocks): 16-wide blocks take the tensor-core path
    (8, 8, 4, 4, 0.5), (32, 48, 20, 16, 0.3), (64, 64, 32, 16, 1.0),
] + realistic((4096, 4096, 64, 32, 0.1), (4096, 4096, 256, 16, 0.05))


@pytest.mark.parametrize("m,k,n,block,density", BSR_CASES)
def test_triton_bsr_spmm_matches_scipy(m, k, n, block, density):
    rng = np.random.default_rng(m + k)
    keep = rng.random((m // block, k // block)) < density
    dense = (np.kron(keep, np.ones((block, block))) * rng.standard_normal((m, k))).astype(np.float32)
    A = formats.BSR.from_dense(dense, (block, block))
    B = torch.randn(k, n, generator=torch.Generator().manual_seed(2))
    C = spmm.spmm(A, B.to(DEVICE), impl="triton")
    # tl.dot rounds fp32 to TF32 on tensor cores (16-wide blocks on a GPU)
    tol = 5e-3 if (DEVICE == "cuda" and block >= 16) else 1e-5
    assert rel_error(C, torch.from_numpy(dense.astype(np.float64) @ B.double().numpy())) < tol


# ---- the sparse FFN's Triton kernels: gather GEMV, row GEMV, fused FFN, the decode step -----

FFN_SIZES = [  # (d_model, d_ff, active): none, one, odd sizes, every row
    (8, 16, 0), (8, 16, 1), (33, 70, 20), (64, 256, 256),
] + realistic((4096, 16384, 819), (4096, 16384, 8192), (1024, 4096, 410))
DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # bf16: the result is rounded to 8 bits


def _ffn_inputs(d_model, d_ff, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    W1 = (torch.randn(d_ff, d_model, generator=g) / d_model**0.5).to(dtype)
    b1 = (torch.randn(d_ff, generator=g) * 0.1).to(dtype)
    W2t = (torch.randn(d_ff, d_model, generator=g) / d_ff**0.5).to(dtype)
    x = torch.randn(d_model, generator=g).to(dtype)
    h = torch.randn(d_ff, generator=g).to(dtype)
    idx = torch.randperm(d_ff, generator=g)[:k].sort().values
    return W1, b1, W2t, x, h, idx


def _on(device, *tensors):
    return [t.to(device) for t in tensors]


@pytest.mark.parametrize("d_model,d_ff,k", FFN_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_gather_and_row_gemv_match_the_reference(d_model, d_ff, k, dtype):
    W1, _, W2t, x, h, idx = _ffn_inputs(d_model, d_ff, k, dtype)
    got = ffn.gather_gemv(*_on(DEVICE, W2t, h, idx), impl="triton")
    want = ffn.gather_gemv_ref(W2t.double(), h.double(), idx)
    assert got.dtype == dtype and rel_error(got, want) < TOL[dtype]
    got = ffn.row_gemv(*_on(DEVICE, W1, x, idx), impl="triton")
    want = ffn.row_gemv_ref(W1.double(), x.double(), idx)
    assert got.shape == (k,) and rel_error(got, want) < TOL[dtype]


@pytest.mark.parametrize("d_model,d_ff,k", FFN_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_triton_fused_ffn_matches_the_reference(d_model, d_ff, k, dtype, activation):
    W1, b1, W2t, x, _, idx = _ffn_inputs(d_model, d_ff, k, dtype, seed=1)
    got = ffn.fused_ffn(*_on(DEVICE, W1, b1, W2t, x, idx), activation, impl="triton")
    want = ffn.fused_ffn_ref(W1.double(), b1.double(), W2t.double(), x.double(), idx, activation)
    assert got.dtype == dtype and rel_error(got, want) < TOL[dtype]


STACK_SIZES = [(2, 16, 64, 8), (3, 33, 70, 0)] + realistic((4, 4096, 16384, 819), (8, 1024, 4096, 2048))


@pytest.mark.parametrize("layers,d_model,d_ff,k", STACK_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_decode_step_matches_the_reference(layers, d_model, d_ff, k, dtype):
    g = torch.Generator().manual_seed(3)
    W1 = (torch.randn(layers, d_ff, d_model, generator=g) / d_model**0.5).to(dtype)
    b1 = torch.zeros(layers, d_ff).to(dtype)
    W2t = (torch.randn(layers, d_ff, d_model, generator=g) / d_ff**0.5).to(dtype)
    x = torch.randn(d_model, generator=g).to(dtype)
    idx = torch.stack([torch.randperm(d_ff, generator=g)[:k].sort().values for _ in range(layers)])
    step = ffn.FusedFFNStack(*_on(DEVICE, W1, b1, W2t), impl="triton")
    got = step(x.to(DEVICE), idx.to(DEVICE))
    want = ffn.fused_ffn_stack_ref(W1.double(), b1.double(), W2t.double(), x.double(), idx)
    # bf16: the Triton path rounds each layer's normalised input to bf16 as well
    assert got.dtype == dtype and rel_error(got, want) < 2 * TOL[dtype]
