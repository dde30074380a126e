"""activations: oracle tests against torch.nn.functional, property tests, gradcheck, errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, strategies as st
from hypothesis.extra.numpy import arrays

from course_lib import activations as A

finite = st.floats(-50, 50, allow_nan=False, width=64)


def matrices(min_cols=1, max_cols=12):
    return st.integers(1, 6).flatmap(lambda r: st.integers(min_cols, max_cols).flatmap(
        lambda c: arrays(np.float64, (r, c), elements=finite)))


@given(matrices())
def test_elementwise_match_torch(a):
    x = torch.from_numpy(a)
    torch.testing.assert_close(A.relu(x), F.relu(x))
    torch.testing.assert_close(A.leaky_relu(x, 0.1), F.leaky_relu(x, 0.1))
    torch.testing.assert_close(A.elu(x), F.elu(x))
    torch.testing.assert_close(A.gelu(x), F.gelu(x))
    torch.testing.assert_close(A.threshold_relu(x, 0.5), F.threshold(x, 0.5, 0.0))


def test_which_give_exact_zeros():
    x = torch.arange(-300, 301, dtype=torch.float64) / 100   # contains exactly one 0.0
    assert (A.relu(x) == 0).sum() == 301
    assert (A.threshold_relu(x, 1.0) == 0).sum() == 401
    for dense in (A.leaky_relu, A.elu, A.gelu):
        assert (dense(x) == 0).sum() == 1                 # only at x = 0


@given(matrices(), st.data())
def test_topk_matches_torch_topk(a, data):
    x = torch.from_numpy(a)
    k = data.draw(st.integers(1, x.shape[1]))
    y = A.topk(x, k)
    assert ((y != 0) | (x == 0)).sum(1).ge(k).all()       # k kept (a kept value may be 0)
    kept = torch.where(A.topk_mask(x, k), x, -torch.inf).sort(1, descending=True).values[:, :k]
    torch.testing.assert_close(kept, x.topk(k, 1).values)
    assert (A.topk_mask(x, k).sum(1) == k).all()


def test_topk_dim_and_dtypes():
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(A.topk(x, 2, dim=0), A.topk(x.T, 2).T)
    for dt in (torch.float32, torch.float64):
        assert A.topk(x.to(dt), 3).dtype == dt
    torch.testing.assert_close(A.topk(x, 7), x)           # k = width keeps everything


def test_topk_gradients_exact_and_straight_through():
    x = torch.tensor([[3.0, -1.0, 2.0, 0.5]], requires_grad=True)
    A.topk(x, 2).sum().backward()
    assert x.grad.tolist() == [[1.0, 0.0, 1.0, 0.0]]
    x.grad = None
    y = A.topk(x, 2, straight_through=True)
    assert y.tolist() == [[3.0, 0.0, 2.0, 0.0]]
    y.sum().backward()
    assert x.grad.tolist() == [[1.0, 1.0, 1.0, 1.0]]


def test_topk_gradcheck():
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(lambda t: A.topk(t, 2), (x,))


@pytest.mark.parametrize("k", [0, -1, 5])
def test_k_out_of_range(k):
    with pytest.raises(ValueError, match="1 <= k <= width"):
        A.topk(torch.zeros(2, 4), k)
    with pytest.raises(ValueError, match="1 <= k <= width"):
        A.kwinners(torch.zeros(2, 4), k)


def test_bad_types_and_nonfinite():
    with pytest.raises(TypeError, match="k must be an int"):
        A.topk(torch.zeros(2, 4), 2.0)
    with pytest.raises(TypeError, match="floating"):
        A.relu(torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        A.sparsemax(np.zeros(3))
    for fn in (A.relu, A.gelu, A.sparsemax, lambda t: A.topk(t, 1), lambda t: A.kwinners(t, 1)):
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match="finite"):
                fn(torch.tensor([[0.0, bad]]))


def test_kwinners_boosting_prefers_rarely_active_units():
    x = torch.tensor([[1.0, 0.75, 0.5, 0.25]])
    assert A.kwinners(x, 2).tolist() == [[1.0, 0.75, 0.0, 0.0]]
    duty = torch.tensor([1.0, 1.0, 0.0, 0.0])              # units 0, 1 always on, 2, 3 never
    y = A.kwinners(x, 2, duty, boost_strength=10.0)
    assert y.tolist() == [[0.0, 0.0, 0.5, 0.25]]          # winners by boosted score, unboosted values
    b = A.boost_factors(duty, 2, 10.0)
    torch.testing.assert_close(b, torch.exp(10.0 * (0.5 - duty)))


def test_kwinners_errors():
    with pytest.raises(ValueError, match="duty_cycles must have shape"):
        A.kwinners(torch.zeros(2, 4), 1, torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="boost_strength"):
        A.boost_factors(torch.zeros(4), 1, -1.0)


def sparsemax_oracle(z):
    """Projection onto the simplex by bisection on τ (independent of the sort-based formula)."""
    lo, hi = z.min(-1, keepdim=True).values - 1, z.max(-1, keepdim=True).values
    for _ in range(200):
        tau = (lo + hi) / 2
        too_big = torch.clamp(z - tau, min=0).sum(-1, keepdim=True) > 1
        lo, hi = torch.where(too_big, tau, lo), torch.where(too_big, hi, tau)
    return torch.clamp(z - (lo + hi) / 2, min=0)


@given(matrices())
def test_sparsemax_simplex_and_oracle(a):
    z = torch.from_numpy(a)
    p = A.sparsemax(z)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(z.shape[0], dtype=z.dtype))
    torch.testing.assert_close(p, sparsemax_oracle(z), atol=1e-9, rtol=0)
    torch.testing.assert_close(A.sparsemax(z + 3.0), p)   # shift invariance


def test_sparsemax_known_values_and_dim():
    assert A.sparsemax(torch.tensor([2.0, 0.0, -1.0])).tolist() == [1.0, 0.0, 0.0]
    torch.testing.assert_close(A.sparsemax(torch.tensor([0.5, 0.5])), torch.tensor([0.5, 0.5]))
    z = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(A.sparsemax(z, dim=1), A.sparsemax(z.transpose(1, 2)).transpose(1, 2))
    with pytest.raises(ValueError, match="non-empty"):
        A.sparsemax(torch.zeros(2, 0))


def test_sparsemax_gradcheck_and_jacobian():
    z = torch.randn(4, 6, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(A.sparsemax, (z,))
    assert torch.autograd.gradcheck(lambda t: A.sparsemax(t, dim=0), (z,))
    z1 = z[0].detach()
    J = torch.autograd.functional.jacobian(A.sparsemax, z1)
    s = (A.sparsemax(z1) > 0).double()
    torch.testing.assert_close(J, torch.diag(s) - torch.outer(s, s) / s.sum())


@given(matrices(min_cols=2), st.data())
def test_kwinners_matches_numpy_oracle(a, data):
    """Winners = the k largest of x·exp(β(k/n − d)) by a numpy argsort; output keeps x."""
    x = torch.from_numpy(a)
    n = x.shape[1]
    k = data.draw(st.integers(1, n))
    duty = data.draw(arrays(np.float64, n, elements=st.floats(0, 1)))
    beta = data.draw(st.floats(0, 5))
    scores = a * np.exp(beta * (k / n - duty))
    assume(all(len(set(row)) == n for row in scores.round(12)))   # ties: any k of them is valid
    expected = np.where(np.argsort(np.argsort(-scores, axis=1), axis=1) < k, a, 0.0)
    np.testing.assert_array_equal(A.kwinners(x, k, torch.from_numpy(duty), beta).numpy(), expected)
