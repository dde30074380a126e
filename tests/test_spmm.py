"""course_lib.spmm: every tier against scipy.sparse on generated matrices, edge cases, errors."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import formats, spmm

TIERS = list(spmm.IMPLEMENTATIONS)
BSR_TIERS = [t for t in TIERS if t != "cpu_fast"]  # cpu_fast is CSR only
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def random_dense(rng, m, k, density, dtype, empty_row_share=0.3):
    """N(0,1) values at a ``density`` share of positions; about ``empty_row_share`` rows forced empty."""
    A = rng.standard_normal((m, k)) * (rng.random((m, k)) < density)
    A[rng.random(m) < empty_row_share] = 0
    return A.astype(dtype)


@st.composite
def problems(draw, max_m=12, max_k=12, max_n=9):
    """(dense A, CSR A, dense B): nnz = 0, empty rows, a single column, int32/int64, f32/f64."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m, k, n = draw(st.integers(0, max_m)), draw(st.integers(1, max_k)), draw(st.integers(1, max_n))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    index_dtype = draw(st.sampled_from([np.int32, np.int64]))
    dense = random_dense(rng, m, k, draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])), dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    return dense, formats.CSR.from_dense(dense, index_dtype=index_dtype), B


def assert_matches_scipy(C, dense, B):
    expected = sp.csr_matrix(dense) @ B
    C = C.numpy() if isinstance(C, torch.Tensor) else C
    assert C.dtype == B.dtype and C.shape == expected.shape
    np.testing.assert_allclose(C, expected, **TOL[B.dtype.type])


@pytest.mark.parametrize("impl", TIERS)
@settings(max_examples=20, deadline=None)
@given(problem=problems())
def test_csr_tiers_match_scipy_numpy_in_numpy_out(impl, problem):
    dense, A, B = problem
    C = spmm.spmm(A, B, impl)
    assert isinstance(C, np.ndarray)
    assert_matches_scipy(C, dense, B)


@pytest.mark.parametrize("impl", TIERS)
@settings(max_examples=10, deadline=None)
@given(problem=problems())
def test_csr_tiers_match_scipy_torch_in_torch_out(impl, problem):
    dense, A, B = problem
    C = spmm.spmm(A, torch.from_numpy(B), impl)
    assert isinstance(C, torch.Tensor)
    assert_matches_scipy(C, dense, B)


@st.composite
def bsr_problems(draw):
    """(dense A, BSR A, B) with R×C blocks, R, C in 1..4, some blocks empty, some block rows empty."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    R, Cb = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    mb, kb, n = draw(st.integers(0, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 9))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    keep = np.kron(rng.random((mb, kb)) < draw(st.sampled_from([0.0, 0.3, 1.0])), np.ones((R, Cb)))
    dense = (rng.standard_normal((mb * R, kb * Cb)) * keep).astype(dtype)
    A = formats.BSR.from_dense(dense, (R, Cb), index_dtype=draw(st.sampled_from([np.int32, np.int64])))
    return dense, A, rng.standard_normal((kb * Cb, n)).astype(dtype)


@pytest.mark.parametrize("impl", BSR_TIERS)
@settings(max_examples=15, deadline=None)
@given(problem=bsr_problems())
def test_bsr_tiers_match_scipy(impl, problem):
    dense, A, B = problem
    assert_matches_scipy(spmm.spmm(A, B, impl), dense, B)


def test_triton_bsr_tensor_core_path_under_interpreter():
    """16×16 blocks and n = 16 take the tl.dot branch of the BSR kernel."""
    rng = np.random.default_rng(1)
    keep = np.kron(np.array([[1, 0], [1, 1]]), np.ones((16, 16)))
    dense = (rng.standard_normal((32, 32)) * keep).astype(np.float32)
    B = rng.standard_normal((32, 16)).astype(np.float32)
    assert_matches_scipy(spmm.spmm(formats.BSR.from_dense(dense, (16, 16)), B, "triton"), dense, B)


def test_triton_csr_masks_column_tail_and_long_rows():
    """n = 33 leaves a 1-column tile; a 40-nonzero row spans three BLOCK_NNZ = 16 steps."""
    rng = np.random.default_rng(2)
    dense = random_dense(rng, 5, 40, 0.3, np.float32, empty_row_share=0.0)
    dense[3] = rng.standard_normal(40)
    B = rng.standard_normal((40, 33)).astype(np.float32)
    assert_matches_scipy(spmm.spmm(formats.CSR.from_dense(dense), B, "triton"), dense, B)


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_vectorized_tiers_chunk_rows(monkeypatch, impl):
    """A tiny chunk budget forces many chunks, and rows longer than one chunk."""
    monkeypatch.setattr(spmm, "CHUNK_ELEMENTS", 24)
    monkeypatch.setattr(spmm, "TORCH_CHUNK_ELEMENTS", 24)
    rng = np.random.default_rng(3)
    dense = random_dense(rng, 30, 20, 0.4, np.float64)
    dense[7] = rng.standard_normal(20)
    B = rng.standard_normal((20, 4))
    assert_matches_scipy(spmm.spmm(formats.CSR.from_dense(dense), B, impl), dense, B)
    bsr = formats.BSR.from_dense(dense, (2, 2))
    assert_matches_scipy(spmm.spmm(bsr, B, impl), dense, B)


@pytest.mark.parametrize("impl", TIERS)
def test_non_contiguous_b(impl):
    rng = np.random.default_rng(4)
    dense = random_dense(rng, 6, 7, 0.5, np.float32)
    B = np.asfortranarray(rng.standard_normal((7, 5)).astype(np.float32))
    A = formats.CSR.from_dense(dense)
    assert_matches_scipy(spmm.spmm(A, B, impl), dense, B)
    assert_matches_scipy(spmm.spmm(A, torch.from_numpy(B.T.copy()).T, impl), dense, B)


@pytest.mark.parametrize("impl", TIERS)
def test_spmv_matches_scipy(impl):
    rng = np.random.default_rng(5)
    dense = random_dense(rng, 9, 6, 0.4, np.float64)
    x = rng.standard_normal(6)
    y = spmm.spmv(formats.CSR.from_dense(dense), x, impl)
    assert y.shape == (9,)
    np.testing.assert_allclose(y, sp.csr_matrix(dense) @ x, **TOL[np.float64])
    yt = spmm.spmv(formats.CSR.from_dense(dense), torch.from_numpy(x), impl)
    assert isinstance(yt, torch.Tensor) and yt.shape == (9,)


def test_auto_picks_a_tier_per_format_and_device():
    A = formats.CSR.from_dense(np.eye(3, dtype=np.float32))
    bsr = formats.BSR.from_dense(np.eye(4, dtype=np.float32), (2, 2))
    assert spmm.pick_impl(A, np.ones((3, 2), np.float32)) == "cpu_fast"
    assert spmm.pick_impl(bsr, np.ones((4, 2), np.float32)) == "numpy"
    B = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(spmm.spmm(A, B), B)


def test_zero_sized_dimensions():
    A = formats.CSR(np.zeros(4, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), (3, 5))
    for impl in TIERS:
        C = spmm.spmm(A, np.ones((5, 0), np.float32), impl)
        assert C.shape == (3, 0)
        np.testing.assert_array_equal(spmm.spmm(A, np.ones((5, 2), np.float32), impl), 0)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(6)
    dense = random_dense(rng, 5, 5, 0.5, np.float32)
    B = rng.standard_normal((5, 3)).astype(np.float32)
    B0 = B.copy()
    A = formats.CSR.from_dense(dense)
    for impl in TIERS:
        spmm.spmm(A, B, impl)
    np.testing.assert_array_equal(B, B0)
    np.testing.assert_array_equal(A.to_dense(), dense)


# ------------------------------------------------------------------------------------- errors

A32 = formats.CSR.from_dense(np.eye(3, dtype=np.float32))


@pytest.mark.parametrize("B, exc, words", [
    (np.ones((4, 2), np.float32), ValueError, ["shape mismatch", "(3, 3)", "(4, 2)"]),
    (np.ones((3, 2), np.float64), TypeError, ["dtype mismatch", "float32", "float64"]),
    (np.ones((3, 2), np.int32), TypeError, ["float32 or float64", "int32"]),
    (np.ones(3, np.float32), ValueError, ["2-D", "(3,)"]),
    (np.ones((3, 2, 1), np.float32), ValueError, ["2-D", "(3, 2, 1)"]),
    ([[1.0, 2.0]] * 3, TypeError, ["NumPy array or torch tensor", "list"]),
])
def test_bad_operands_raise_naming_the_problem(B, exc, words):
    with pytest.raises(exc) as info:
        spmm.spmm(A32, B)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_bad_a_impl_and_device():
    with pytest.raises(TypeError, match="formats.CSR or formats.BSR"):
        spmm.spmm(np.eye(3, dtype=np.float32), np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="unknown impl 'fast'"):
        spmm.spmm(A32, np.ones((3, 2), np.float32), "fast")
    with pytest.raises(TypeError, match="CSR only"):
        spmm.spmm(formats.BSR.from_dense(np.eye(2, dtype=np.float32), (1, 1)),
                  np.ones((2, 2), np.float32), "cpu_fast")
    meta = torch.ones((3, 2), device="meta")  # a non-CPU device that needs no GPU
    with pytest.raises(ValueError, match="device mismatch.*meta"):
        spmm.spmm(A32, meta, "numpy")
    with pytest.raises(ValueError, match="1-D"):
        spmm.spmv(A32, np.ones((3, 1), np.float32))
    with pytest.raises(TypeError, match="float32 or float64, got bfloat16"):
        spmm.spmm(A32, torch.ones((3, 2), dtype=torch.bfloat16))
