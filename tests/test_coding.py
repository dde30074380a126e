"""Tests for the coding-interview problems: the oracles of ``course_lib.interview_coding`` against
independent computations, and for every problem of ``solutions/coding.ipynb`` a plausible
wrong-but-running implementation that its graded check must reject."""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from course_lib import interview_coding as ic

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions" / "coding.ipynb"


# ------------------------------------------------------------------------------ oracles


@st.composite
def csr_and_vector(draw):
    m, n = draw(st.integers(0, 7)), draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    return (*ic.random_csr(rng, m, n, draw(st.floats(0, 1))), rng.standard_normal(n))


@given(csr_and_vector())
def test_spmv_oracle_matches_dense(case):
    indptr, indices, data, x = case
    A = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, len(x))).toarray()
    np.testing.assert_allclose(ic.spmv_oracle(indptr, indices, data, x), A @ x, atol=1e-12)
    B = np.stack([x, 2 * x], axis=1)
    np.testing.assert_allclose(ic.spmm_oracle(indptr, indices, data, B), A @ B, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_spmv_oracle_edge_cases(dtype):
    empty = (np.zeros(3, dtype), np.array([], dtype), np.array([], np.float32))
    np.testing.assert_array_equal(ic.spmv_oracle(*empty, np.ones(2, np.float32)), np.zeros(2))
    assert ic.spmm_oracle(*empty, np.ones((2, 5))).shape == (2, 5)


@pytest.mark.parametrize("bad, match", [
    ((np.array([1, 1]), np.array([0]), np.array([1.0])), "start at 0"),
    ((np.array([0, 2, 1]), np.array([0]), np.array([1.0])), "non-decreasing"),
    ((np.array([0, 2]), np.array([0]), np.array([1.0])), "indptr\\[-1\\]"),
    ((np.array([0, 1]), np.array([5]), np.array([1.0])), "column indices"),
    ((np.zeros((2, 2), int), np.array([0]), np.array([1.0])), "1-D"),
])
def test_spmv_oracle_rejects_broken_csr(bad, match):
    with pytest.raises(ValueError, match=match):
        ic.spmv_oracle(*bad, np.ones(3))


def test_shape_errors():
    with pytest.raises(ValueError, match="x must be 1-D"):
        ic.spmv_oracle(np.array([0]), np.array([], int), np.array([]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="B must be 2-D"):
        ic.spmm_oracle(np.array([0]), np.array([], int), np.array([]), np.ones(2))
    with pytest.raises(ValueError, match="inner dimensions"):
        ic.coo_matmul_oracle(([], [], []), ([], [], []), (2, 3), (2, 3))
    with pytest.raises(ValueError, match="divisible"):
        ic.dense_to_bsr_oracle(np.ones((3, 4)), (2, 2))
    with pytest.raises(ValueError, match="k must be"):
        ic.moe_router_oracle(torch.zeros(2, 3), 4)
    with pytest.raises(TypeError, match="nn.Sequential"):
        ic.sequential_zero_fractions(nn.ReLU(), torch.zeros(1))


@given(st.integers(0, 2**31 - 1))
def test_coo_matmul_oracle_with_duplicates(seed):
    rng = np.random.default_rng(seed)
    m, n, p = rng.integers(1, 6, size=3)

    def triplets(r, c):
        nnz = int(rng.integers(0, 2 * r * c))
        return rng.integers(0, r, nnz), rng.integers(0, c, nnz), rng.standard_normal(nnz)

    A, B = triplets(m, n), triplets(n, p)
    dense = lambda t, s: np.add.at(z := np.zeros(s), (t[0], t[1]), t[2]) or z  # noqa: E731
    np.testing.assert_allclose(ic.coo_matmul_oracle(A, B, (m, n), (n, p)),
                               dense(A, (m, n)) @ dense(B, (n, p)), atol=1e-12)


@given(st.integers(0, 2**31 - 1), st.sampled_from([(1, 1), (2, 2), (2, 3), (4, 1)]))
def test_dense_to_bsr_oracle_keeps_exactly_nonzero_blocks(seed, blocksize):
    rng = np.random.default_rng(seed)
    R, C = blocksize
    A = rng.standard_normal((3 * R, 2 * C)) * (rng.random((3 * R, 2 * C)) < 0.2)
    indptr, indices, data = ic.dense_to_bsr_oracle(A, blocksize)
    block_nz = (A.reshape(3, R, 2, C) != 0).any(axis=(1, 3))
    assert data.shape == (int(block_nz.sum()), R, C)
    np.testing.assert_array_equal(np.diff(indptr), block_nz.sum(axis=1))
    back = sp.bsr_matrix((data, indices, indptr), shape=A.shape).toarray()
    np.testing.assert_array_equal(back, A)


def test_sequential_zero_fractions_counts_exact_zeros_only():
    model = nn.Sequential(nn.Identity(), nn.ReLU(), nn.LeakyReLU(), nn.ReLU())
    X = torch.tensor([[-1.0, 0.0, 2.0, 3.0]])
    assert ic.sequential_zero_fractions(model, X) == {"1": 0.5, "3": 0.5}


@given(st.integers(0, 2**31 - 1), st.floats(0, 3), st.floats(0.01, 1))
def test_ista_oracle_matches_closed_form(seed, lam, eta):
    rng = np.random.default_rng(seed)
    d, K = rng.integers(1, 6, size=2)
    D, z, x = (torch.as_tensor(rng.standard_normal(s)) for s in ((d, K), (K,), (d,)))
    u = z - eta * D.T @ (D @ z - x)
    expected = torch.sign(u) * torch.clamp(u.abs() - eta * lam, min=0)
    torch.testing.assert_close(ic.ista_step_oracle(z, D, x, lam, eta), expected)


def test_ista_oracle_with_identity_dictionary_is_soft_threshold_of_x():
    x = torch.tensor([2.0, -0.5, 0.1], dtype=torch.float64)
    z = ic.ista_step_oracle(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64),
                            x, 0.3, 1.0)
    torch.testing.assert_close(z, torch.tensor([1.7, -0.2, 0.0], dtype=torch.float64))


@given(st.integers(0, 2**31 - 1), st.integers(1, 4))
def test_moe_router_oracle_properties(seed, k):
    rng = np.random.default_rng(seed)
    T, N = int(rng.integers(1, 30)), 4
    logits = torch.as_tensor(rng.standard_normal((T, N)))
    w, e, loss = ic.moe_router_oracle(logits, k, alpha=1.0)
    torch.testing.assert_close(w.sum(-1), torch.ones(T, dtype=w.dtype))
    assert e.shape == (T, k) and all(len(set(r)) == k for r in e.tolist())
    probs = logits.softmax(-1)
    assert torch.all(probs.gather(-1, e).diff(dim=-1) <= 0)          # descending probability
    if k == N:   # every expert gets exactly 1/N of the assignments: loss = N·Σ(1/N)·P̄ᵢ = 1
        torch.testing.assert_close(loss, torch.tensor(1.0, dtype=loss.dtype))


def test_moe_router_loss_is_larger_when_collapsed():
    collapsed = torch.tensor([[10.0, 0, 0, 0]] * 8)
    uniform = torch.zeros(8, 4)
    assert ic.moe_router_oracle(collapsed, 1, 1.0)[2] > 3.9
    torch.testing.assert_close(ic.moe_router_oracle(uniform, 1, 1.0)[2], torch.tensor(1.0))


# ------------------------------------------------- the notebook's checks reject wrong answers

WRONG = {
    "coding.1": '''
        def csr_spmv(indptr, indices, data, x):          # off by one: drops each row's last entry
            y = np.zeros(len(indptr) - 1)
            for i in range(len(y)):
                lo, hi = indptr[i], indptr[i + 1] - 1
                y[i] = data[lo:hi] @ x[indices[lo:hi]]
            return y
    ''',
    "coding.2": '''
        def coo_to_csr(rows, cols, vals, shape):         # sorts, but keeps duplicates
            order = np.lexsort((cols, rows))
            indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=shape[0]))])
            return indptr, np.asarray(cols)[order], np.asarray(vals)[order]
    ''',
    "coding.3": '''
        def csr_spmm(indptr, indices, data, B):          # uses the row position, not the column
            C = np.zeros((len(indptr) - 1, B.shape[1]))
            for i in range(len(C)):
                lo, hi = indptr[i], indptr[i + 1]
                C[i] = data[lo:hi] @ B[np.arange(lo, hi) % B.shape[0]]
            return C
    ''',
    "coding.4": '''
        def topk_activation(x, k):                       # by magnitude instead of value
            idx = x.abs().topk(k, dim=-1).indices
            return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))
    ''',
    "coding.5": '''
        def kwta_boosted(x, k, duty_cycles, boost_strength):   # outputs the boosted scores
            s = x * torch.exp(boost_strength * (k / x.shape[-1] - duty_cycles))
            idx = s.topk(k, dim=-1).indices
            return torch.zeros_like(x).scatter(-1, idx, s.gather(-1, idx))
    ''',
    "coding.6": '''
        def sparsemax(z):                                # softmax is not sparsemax
            return z.softmax(dim=-1)
    ''',
    "coding.7": '''
        def record_zero_fractions(model, X):             # right numbers, but leaks its hooks
            fractions = {}
            for name, module in model.named_modules():
                if isinstance(module, nn.ReLU):
                    module.register_forward_hook(
                        lambda mod, i, o, name=name: fractions.__setitem__(name, (o == 0).float().mean().item()))
            model(X)
            return fractions
    ''',
    "coding.8": '''
        def nm_mask(W, n, m):                            # largest signed value, not magnitude
            groups = W.reshape(*W.shape[:-1], -1, m)
            keep = np.argsort(-groups, axis=-1, kind="stable")[..., :n]
            mask = np.zeros(groups.shape, dtype=bool)
            np.put_along_axis(mask, keep, True, axis=-1)
            return mask.reshape(W.shape)
    ''',
    "coding.9": '''
        def nm_compress(W, n, m):                        # column index instead of in-group position
            mask = nm_mask(W, n, m)
            return W[mask].reshape(W.shape[0], -1), np.nonzero(mask)[1].reshape(W.shape[0], -1)
    ''',
    "coding.10": '''
        def dense_to_bsr(A, blocksize):                  # stores every block, zero blocks included
            R, C = blocksize
            mb, nb = A.shape[0] // R, A.shape[1] // C
            blocks = A.reshape(mb, R, nb, C).transpose(0, 2, 1, 3)
            return np.arange(mb + 1) * nb, np.tile(np.arange(nb), mb), blocks.reshape(-1, R, C)
    ''',
    "coding.11": '''
        def ista_step(z, D, x, lam, eta):                # threshold lam instead of eta * lam
            u = z - eta * D.T @ (D @ z - x)
            return torch.sign(u) * torch.clamp(u.abs() - lam, min=0)
    ''',
    "coding.12": '''
        def sparse_ffn(x, W1, b1, W2t, b2):              # picks neurons by W1 x > 0, ignoring b1
            a = torch.relu(W1 @ x + b1)
            active = torch.nonzero(W1 @ x > 0).squeeze(-1)
            return a[active] @ W2t[active] + b2
    ''',
    "coding.13": '''
        def topk_router(logits, k, alpha):               # forgets the factor N in the aux loss
            T, N = logits.shape
            probs = logits.softmax(dim=-1)
            top = probs.topk(k, dim=-1)
            f = torch.bincount(top.indices.flatten(), minlength=N).to(probs.dtype) / (T * k)
            return top.values / top.values.sum(-1, keepdim=True), top.indices, alpha * (f * probs.mean(0)).sum()
    ''',
    "coding.14": '''
        def coo_matmul(A, B, shape_a, shape_b):          # last write wins: duplicates not summed
            Da = np.zeros(shape_a); Da[A[0], A[1]] = A[2]
            Db = np.zeros(shape_b); Db[B[0], B[1]] = B[2]
            return Da @ Db
    ''',
}


def _cells():
    nb = nbformat.read(SOLUTIONS, as_version=4)
    return [(c.source, c.metadata.get("course", {})) for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(scope="module")
def solved_namespace():
    """Run every code cell of the solutions notebook in order (checks define case generators
    that later checks reuse); the solutions pass, so nothing raises."""
    ns: dict = {}
    for src, _ in _cells():
        exec(compile(src, str(SOLUTIONS), "exec"), ns)  # noqa: S102 - our own notebook
    return ns


def _check_cells(exercise_id):
    return [src for src, meta in _cells() if meta.get("exercise") == exercise_id and "points" in meta]


def test_every_graded_problem_has_a_wrong_implementation():
    graded = {meta["exercise"] for _, meta in _cells() if "points" in meta}
    assert len(graded) >= 12
    assert graded == set(WRONG)


@pytest.mark.parametrize("exercise_id", sorted(WRONG, key=lambda s: int(s.split(".")[1])))
def test_checks_accept_solution_and_reject_wrong_implementation(solved_namespace, exercise_id):
    checks = _check_cells(exercise_id)
    for src in checks:                                   # the solution passes ...
        exec(compile(src, exercise_id, "exec"), dict(solved_namespace))  # noqa: S102
    ns = dict(solved_namespace)
    exec(textwrap.dedent(WRONG[exercise_id]), ns)       # noqa: S102
    failed = 0
    for src in checks:                                   # ... the wrong answer fails a check
        try:
            exec(compile(src, exercise_id, "exec"), dict(ns))  # noqa: S102
        except AssertionError as exc:
            assert f"[{exercise_id}]" in str(exc)
            failed += 1
    assert failed, f"no check of {exercise_id} rejects the wrong implementation"


# ------------------------------------- the model solutions, on more inputs than the checks use


@given(csr_and_vector(), st.sampled_from([np.int32, np.int64]),
       st.sampled_from([np.float32, np.float64]))
def test_solution_spmv_and_spmm_match_scipy(solved_namespace, case, index_dtype, value_dtype):
    indptr, indices, data, x = case
    indptr, indices = indptr.astype(index_dtype), indices.astype(index_dtype)
    data, x = data.astype(value_dtype), x.astype(value_dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if value_dtype == np.float32 else dict(atol=1e-12)
    y = solved_namespace["csr_spmv"](indptr, indices, data, x)
    assert y.dtype == value_dtype
    np.testing.assert_allclose(y, ic.spmv_oracle(indptr, indices, data, x), **tol)
    B = np.stack([x, -x, 2 * x], axis=1)
    np.testing.assert_allclose(solved_namespace["csr_spmm"](indptr, indices, data, B),
                               ic.spmm_oracle(indptr, indices, data, B), **tol)


@given(st.integers(0, 2**31 - 1))
def test_solution_coo_to_csr_is_canonical_scipy(solved_namespace, seed):
    rng = np.random.default_rng(seed)
    m, n = (int(v) for v in rng.integers(1, 6, size=2))
    nnz = int(rng.integers(0, 4 * m * n))
    rows, cols = rng.integers(0, m, nnz), rng.integers(0, n, nnz)
    vals = rng.integers(-2, 3, nnz).astype(float)            # small integers: many exact cancellations
    indptr, indices, data = solved_namespace["coo_to_csr"](rows, cols, vals, (m, n))
    S = sp.coo_matrix((vals, (rows, cols)), shape=(m, n)).tocsr()
    S.sum_duplicates()
    np.testing.assert_array_equal(indptr, S.indptr)
    np.testing.assert_array_equal(indices, S.indices)
    np.testing.assert_array_equal(data, S.data)


@given(st.integers(0, 2**31 - 1))
def test_solution_dense_to_bsr_and_coo_matmul(solved_namespace, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((4, 6)) * (rng.random((4, 6)) < 0.3)
    for blocksize in ((1, 1), (2, 3), (4, 2)):
        got = solved_namespace["dense_to_bsr"](A, blocksize)
        for g, e in zip(got, ic.dense_to_bsr_oracle(A, blocksize)):
            np.testing.assert_array_equal(g, e)
    r, c = np.nonzero(A)
    triplets = (r, c, A[r, c])
    np.testing.assert_allclose(
        solved_namespace["coo_matmul"](triplets, (c, r, A[r, c]), (4, 6), (6, 4)), A @ A.T, atol=1e-12)


@given(st.integers(0, 2**31 - 1))
def test_solution_activations_properties(solved_namespace, seed):
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.standard_normal((3, 9)))
    p = solved_namespace["sparsemax"](x)
    torch.testing.assert_close(p.sum(-1), torch.ones(3, dtype=p.dtype))
    assert torch.all(p >= 0)
    k = int(rng.integers(1, 10))
    no_boost = solved_namespace["kwta_boosted"](x, k, torch.rand(9, dtype=x.dtype), 0.0)
    torch.testing.assert_close(no_boost, solved_namespace["topk_activation"](x, k))
    assert ((no_boost != 0).sum(-1) == k).all()
