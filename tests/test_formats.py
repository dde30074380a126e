"""course_lib.formats against scipy.sparse as the oracle."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib import formats
from course_lib.formats import BSR, COO, CSR

INDEX = st.sampled_from([np.int32, np.int64])
VALUE = st.sampled_from([np.float32, np.float64])


@st.composite
def dense(draw, max_side=9, multiple_of=(1, 1)):
    """Dense arrays with many exact zeros: empty rows, nnz = 0, 1×n and n×1 all occur."""
    R, C = multiple_of
    m = draw(st.integers(0, max_side)) * R
    n = draw(st.integers(1 if m == 0 else 0, max_side)) * C
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n)) * (rng.random((m, n)) < density)
    return A.astype(draw(VALUE))


@given(dense(), INDEX)
def test_csr_from_dense_matches_scipy(A, idx):
    c = CSR.from_dense(A, index_dtype=idx)
    ref = sp.csr_matrix(A)
    np.testing.assert_array_equal(c.indptr, ref.indptr)
    np.testing.assert_array_equal(c.indices, ref.indices)
    np.testing.assert_array_equal(c.data, ref.data)
    assert c.indptr.dtype == idx and c.data.dtype == A.dtype
    np.testing.assert_array_equal(c.to_dense(), A)
    assert c.nnz == ref.nnz
    assert c.density == (ref.nnz / A.size if A.size else 0.0)


@given(dense(), INDEX)
def test_scipy_torch_coo_round_trips(A, idx):
    c = CSR.from_dense(A, index_dtype=idx)
    np.testing.assert_array_equal(CSR.from_scipy(c.to_scipy()).to_dense(), A)
    np.testing.assert_array_equal(c.to_coo().to_csr().to_dense(), A)
    np.testing.assert_array_equal(COO.from_dense(A).to_scipy().toarray(), A)
    if A.size:  # torch cannot build a sparse tensor with a zero dimension on every version
        t = c.to_torch()
        assert t.layout == torch.sparse_csr
        np.testing.assert_array_equal(t.to_dense().numpy(), A)
        np.testing.assert_array_equal(CSR.from_torch(t).to_dense(), A)
        np.testing.assert_array_equal(CSR.from_torch(t.to_sparse_coo()).to_dense(), A)


@given(dense(), INDEX)
def test_nbytes_formulas(A, idx):
    c = CSR.from_dense(A, index_dtype=idx)
    ib, vb = np.dtype(idx).itemsize, A.dtype.itemsize
    assert c.nbytes == formats.csr_nbytes(A.shape[0], c.nnz, ib, vb)
    ref = sp.csr_matrix(A)
    assert c.nbytes == ref.indptr.astype(idx).nbytes + ref.indices.astype(idx).nbytes + ref.data.nbytes
    coo = c.to_coo()
    assert coo.nbytes == formats.coo_nbytes(coo.nnz, ib, vb)


@given(st.integers(0, 40), st.integers(0, 40), st.integers(0, 2**31), INDEX)
def test_coo_to_csr_sums_duplicates_like_scipy(m, nnz, seed, idx):
    rng = np.random.default_rng(seed)
    m, n = m % 7 + 1, rng.integers(1, 7)
    row, col = rng.integers(0, m, nnz).astype(idx), rng.integers(0, n, nnz).astype(idx)
    data = rng.standard_normal(nnz)
    got = COO(row, col, data, (m, n)).to_csr()
    ref = sp.coo_matrix((data, (row, col)), shape=(m, n)).tocsr()
    ref.sum_duplicates()
    np.testing.assert_array_equal(got.indptr, ref.indptr)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_allclose(got.data, ref.data)
    assert got.indptr.dtype == idx


@given(dense(max_side=4, multiple_of=(2, 3)), INDEX)
def test_bsr_matches_scipy(A, idx):
    b = BSR.from_dense(A, (2, 3), index_dtype=idx)
    np.testing.assert_array_equal(b.to_dense(), A)
    assert b.blocksize == (2, 3)
    c = CSR.from_dense(A, index_dtype=idx)
    np.testing.assert_array_equal(c.to_bsr((2, 3)).to_dense(), A)
    np.testing.assert_array_equal(b.to_csr().to_dense(), A)
    ref = sp.bsr_matrix(A, blocksize=(2, 3)) if A.size else None
    if ref is not None:
        ref.eliminate_zeros()
        assert b.nnzb == sum(1 for blk in ref.data if np.any(blk != 0))
    assert b.nbytes == formats.bsr_nbytes(A.shape[0], b.nnzb, (2, 3), np.dtype(idx).itemsize,
                                          A.dtype.itemsize)


@pytest.mark.parametrize("kwargs, match", [
    (dict(indptr=[0, 1], indices=[0], data=[1.0], shape=(2, 2)), "rows \\+ 1"),
    (dict(indptr=[1, 1, 1], indices=[0], data=[1.0], shape=(2, 2)), "indptr\\[0\\] must be 0"),
    (dict(indptr=[0, 2, 1], indices=[0, 1], data=[1.0, 2.0], shape=(2, 2)), "non-decreasing"),
    (dict(indptr=[0, 1, 1], indices=[0, 1], data=[1.0, 2.0], shape=(2, 2)), "must equal nnz"),
    (dict(indptr=[0, 1, 2], indices=[0, 5], data=[1.0, 2.0], shape=(2, 2)), "indices\\[1\\] = 5"),
    (dict(indptr=[0, 1, 2], indices=[0, -1], data=[1.0, 2.0], shape=(2, 2)), "out of range"),
    (dict(indptr=[0, 1, 2], indices=[0, 1], data=[1.0], shape=(2, 2)), "one length"),
    (dict(indptr=[0, 0], indices=[], data=[], shape=(1, -3)), "non-negative"),
])
def test_csr_rejects_broken_invariants(kwargs, match):
    kwargs = {k: np.asarray(v) if k != "shape" else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        CSR(**kwargs)


def test_type_errors_and_block_divisibility():
    with pytest.raises(TypeError, match="integer dtype"):
        CSR(np.array([0.0, 1.0]), np.array([0]), np.array([1.0]), (1, 1))
    with pytest.raises(TypeError, match="share one dtype"):
        CSR(np.array([0, 1], np.int32), np.array([0], np.int64), np.array([1.0]), (1, 1))
    with pytest.raises(ValueError, match="must divide"):
        BSR.from_dense(np.ones((4, 4)), (3, 2))
    with pytest.raises(ValueError, match="row\\[0\\] = 3"):
        COO(np.array([3]), np.array([0]), np.array([1.0]), (2, 2))


def test_immutable_and_caller_arrays_untouched():
    indptr = np.array([0, 1])
    c = CSR(indptr, np.array([0]), np.array([1.0]), (1, 1))
    with pytest.raises(ValueError):
        c.data[0] = 5.0
    indptr[0] = 0  # the caller's array is still writeable
    with pytest.raises(Exception):
        c.shape = (2, 2)


@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31))
def test_nm_mask_keeps_n_largest_per_group(rows, groups, seed):
    W = np.random.default_rng(seed).standard_normal((rows, 4 * groups))
    mask = formats.nm_mask(W, 2, 4)
    g = mask.reshape(rows, groups, 4)
    assert (g.sum(-1) == 2).all()
    absW = np.abs(W).reshape(rows, groups, 4)
    kept_min = np.where(g, absW, np.inf).min(-1)
    dropped_max = np.where(~g, absW, -np.inf).max(-1)
    assert (kept_min >= dropped_max).all()
    values, meta = formats.nm_compress(W, 2, 4)
    assert values.shape == (rows, 2 * groups) and meta.max() < 4
    rebuilt = np.zeros_like(W).reshape(rows, groups, 4)
    np.put_along_axis(rebuilt, meta.reshape(rows, groups, 2).astype(int),
                      values.reshape(rows, groups, 2), axis=-1)
    np.testing.assert_array_equal(rebuilt.reshape(W.shape), W * mask)


def test_nm_storage_and_crossover_numbers():
    # 2:4 in fp16: half the values plus 2 metadata bits each = 56.25 % of dense.
    assert formats.nm_nbytes(64, 64, value_bits=16) / formats.dense_nbytes(64, 64, 2) == 0.5625
    d = formats.csr_crossover_density(1000, 1000, 4, 4)
    nnz = int(d * 1e6)
    assert formats.csr_nbytes(1000, nnz) <= formats.dense_nbytes(1000, 1000) < \
        formats.csr_nbytes(1000, nnz + 2)
    with pytest.raises(ValueError, match="multiple of m"):
        formats.nm_mask(np.ones((2, 6)))


@given(dense(), st.integers(0, 2**31))
def test_reference_tier_matches_library(A, seed):
    indptr, indices, data = formats.dense_to_csr_ref(A)
    c = CSR.from_dense(A)
    np.testing.assert_array_equal(indptr, c.indptr)
    np.testing.assert_array_equal(indices, c.indices)
    np.testing.assert_array_equal(formats.csr_to_dense_ref(indptr, indices, data, A.shape), A)
