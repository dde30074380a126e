"""sparse_coding: ISTA/FISTA against scikit-learn's sparse_encode (same λ convention), the lasso
optimality conditions, the dictionary step, whitening, patches, and bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from sklearn.decomposition import sparse_encode as sk_sparse_encode

from course_lib import sparse_coding as sc


def _problem(seed, n=6, k=5, p=8, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((k, p))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.standard_normal((n, p))
    return torch.tensor(X, dtype=dtype), torch.tensor(D, dtype=dtype)


def _kkt_violation(X, D, A, lam):
    """max violation of the lasso optimality conditions: g = (X − A D) Dᵀ must equal λ·sign(a)
    where a ≠ 0 and satisfy |g| ≤ λ where a = 0."""
    g = (X - A @ D) @ D.T
    on = A != 0
    v_on = (g - lam * torch.sign(A))[on].abs()
    v_off = (g.abs() - lam).clamp_min(0)[~on]
    return max(float(v_on.max()) if v_on.numel() else 0.0, float(v_off.max()) if v_off.numel() else 0.0)


# ---------------------------------------------------------------- soft thresholding

@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=20), st.floats(0, 10))
def test_soft_threshold_is_the_prox_of_l1(xs, t):
    x = torch.tensor(xs, dtype=torch.float64)
    z = sc.soft_threshold(x, t)
    # prox property: z minimizes ½(z − x)² + t|z|, so it beats nearby candidates
    obj = lambda v: 0.5 * (v - x) ** 2 + t * v.abs()  # noqa: E731
    for dz in (-1e-3, 1e-3):
        assert torch.all(obj(z) <= obj(z + dz) + 1e-9)
    assert torch.all(z.abs() <= x.abs()) and torch.all(z * x >= 0)


def test_soft_threshold_values_and_bad_threshold():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0])
    assert torch.equal(sc.soft_threshold(x, 1.0), torch.tensor([-2.0, 0.0, 0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="threshold"):
        sc.soft_threshold(x, -0.1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        sc.soft_threshold([1.0, 2.0], 0.5)


# ---------------------------------------------------------------- codes vs scikit-learn

@pytest.mark.parametrize("lam", [0.0, 0.05, 0.3, 1.0])
def test_fista_matches_sklearn_sparse_encode(lam):
    X, D = _problem(1)
    ours = sc.sparse_encode(X, D, lam, n_iter=3000)
    ref = sk_sparse_encode(X.numpy(), D.numpy(), algorithm="lasso_cd", alpha=lam,
                           max_iter=100_000)
    # undercomplete generic D: the lasso solution is unique, so the codes themselves agree
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)


def test_lambda_is_lasso_alpha_times_n_features():
    """The scaling convention: our ½||x − aD||² + λ||a||₁ is p times scikit-learn's Lasso
    objective (1/(2p))||x − Dᵀa||² + α||a||₁ with α = λ/p, so both have the same minimizer."""
    from sklearn.linear_model import Lasso

    X, D = _problem(11)
    lam, p = 0.3, D.shape[1]
    ours = sc.sparse_encode(X, D, lam, n_iter=3000).numpy()
    for x, a in zip(X.numpy(), ours):
        ref = Lasso(alpha=lam / p, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(D.numpy().T, x)
        np.testing.assert_allclose(a, ref.coef_, atol=1e-6)
        wrong = Lasso(alpha=lam, fit_intercept=False, max_iter=100_000).fit(D.numpy().T, x)
        assert not np.allclose(wrong.coef_, a, atol=1e-3)  # forgetting the 1/p changes the code


@given(st.integers(0, 10_000), st.floats(0.01, 2.0))
def test_fista_satisfies_lasso_optimality_overcomplete(seed, lam):
    X, D = _problem(seed, n=4, k=12, p=6)  # overcomplete: unique code not guaranteed, KKT is
    A = sc.sparse_encode(X, D, lam, n_iter=2000)
    assert _kkt_violation(X, D, A, lam) < 1e-4
    ref = torch.tensor(sk_sparse_encode(X.numpy(), D.numpy(), algorithm="lasso_cd", alpha=lam,
                                        max_iter=100_000))
    assert float(sc.lasso_objective(X, D, A, lam)) <= float(sc.lasso_objective(X, D, ref, lam)) + 1e-6


@given(st.integers(0, 10_000))
def test_ista_step_never_increases_the_objective(seed):
    X, D = _problem(seed)
    lam, L = 0.2, sc.lipschitz_constant(D)
    A = torch.zeros(X.shape[0], D.shape[0], dtype=X.dtype)
    prev = float(sc.lasso_objective(X, D, A, lam))
    for _ in range(20):
        A = sc.ista_step(A, X, D, lam, L)
        cur = float(sc.lasso_objective(X, D, A, lam))
        assert cur <= prev + 1e-12
        prev = cur


def test_ista_and_fista_reach_the_same_solution_and_fista_is_faster():
    X, D = _problem(3, n=10, k=16, p=12)
    lam = 0.1
    star = sc.lasso_objective(X, D, sc.sparse_encode(X, D, lam, n_iter=5000), lam)
    gap = lambda m, it: float(sc.lasso_objective(X, D, sc.sparse_encode(X, D, lam, it, m), lam) - star)  # noqa: E731
    assert gap("ista", 5000) < 1e-8
    assert gap("fista", 100) < gap("ista", 100)


def test_ista_step_is_one_iteration_of_sparse_encode():
    X, D = _problem(4)
    one = sc.sparse_encode(X, D, 0.3, n_iter=1, method="ista")
    A0 = torch.zeros_like(one)
    torch.testing.assert_close(one, sc.ista_step(A0, X, D, 0.3, sc.lipschitz_constant(D)))


def test_large_lambda_gives_zero_code_and_float32_runs():
    X, D = _problem(5, dtype=torch.float32)
    lam_max = float(((X @ D.T).abs()).max())  # smallest λ for which A = 0 is optimal
    assert torch.count_nonzero(sc.sparse_encode(X, D, lam_max * 1.01)) == 0
    A = sc.sparse_encode(X, D, 0.1)
    assert A.dtype == torch.float32 and A.shape == (X.shape[0], D.shape[0])


def test_edge_cases_empty_batch_zero_dictionary_single_atom():
    X, D = _problem(6)
    assert sc.sparse_encode(X[:0], D, 0.1).shape == (0, D.shape[0])
    assert torch.count_nonzero(sc.sparse_encode(X, torch.zeros_like(D), 0.1)) == 0
    d = D[:1]  # one atom: closed form a = S_λ(x·d)
    torch.testing.assert_close(sc.sparse_encode(X, d, 0.2, n_iter=50),
                               sc.soft_threshold(X @ d.T, 0.2))


@pytest.mark.parametrize("bad, err, match", [
    (dict(X=np.zeros((2, 8))), TypeError, "torch.Tensor"),
    (dict(X=torch.zeros(8)), ValueError, "2-D"),
    (dict(X=torch.zeros(2, 7, dtype=torch.float64)), ValueError, "features"),
    (dict(X=torch.zeros(2, 8, dtype=torch.float32)), TypeError, "dtype"),
    (dict(X=torch.zeros(2, 8, dtype=torch.int64)), TypeError, "floating"),
    (dict(lam=-1.0), ValueError, "lam"),
    (dict(lam=float("nan")), ValueError, "lam"),
    (dict(n_iter=0), ValueError, "n_iter"),
    (dict(method="admm"), ValueError, "method"),
    (dict(A0=torch.zeros(3, 3, dtype=torch.float64)), ValueError, "n_samples, n_atoms"),
])
def test_sparse_encode_rejects_bad_input(bad, err, match):
    X, D = _problem(0)
    kw = dict(X=X, D=D, lam=0.1, n_iter=5, method="fista", A0=None) | bad
    with pytest.raises(err, match=match):
        sc.sparse_encode(**kw)


# ---------------------------------------------------------------- dictionary

def test_dictionary_step_decreases_reconstruction_error_and_keeps_unit_atoms():
    X, D = _problem(7, n=50, k=6, p=8)
    A = sc.sparse_encode(X, D, 0.1)
    D2 = sc.update_dictionary(D, X, A)
    torch.testing.assert_close(D2.norm(dim=1), torch.ones(6, dtype=X.dtype))
    # the gradient step decreases ½||X − AD||²; with normalization the objective can only
    # be compared after re-encoding
    A2 = sc.sparse_encode(X, D2, 0.1)
    assert sc.lasso_objective(X, D2, A2, 0.1) < sc.lasso_objective(X, D, A, 0.1)


def test_unused_atom_is_unchanged_and_zero_codes_keep_dictionary():
    X, D = _problem(8, n=20, k=4, p=8)
    A = sc.sparse_encode(X, D, 0.1)
    A[:, 2] = 0
    torch.testing.assert_close(sc.update_dictionary(D, X, A)[2], D[2])
    torch.testing.assert_close(sc.update_dictionary(D, X, torch.zeros_like(A)), D)


def test_learn_dictionary_recovers_a_planted_dictionary():
    """Data made from a known sparse dictionary: learning lowers the objective and recovers
    most atoms (up to sign) — the identifiability that makes the filters meaningful."""
    g = torch.Generator().manual_seed(0)
    k, p, n = 8, 16, 2000
    D_true = torch.randn(k, p, generator=g, dtype=torch.float64)
    D_true /= D_true.norm(dim=1, keepdim=True)
    A_true = torch.randn(n, k, generator=g, dtype=torch.float64) * (torch.rand(n, k, generator=g) < 0.2)
    X = A_true @ D_true
    D, obj = sc.learn_dictionary(X, k, lam=0.05, n_steps=150, batch_size=200, n_iter=60, seed=1)
    assert obj[-1] < 0.5 * obj[0]
    best = (D @ D_true.T).abs().max(dim=0).values  # best |cosine| per true atom
    assert int((best > 0.95).sum()) >= 6


def test_learn_dictionary_is_deterministic_and_validates():
    X, _ = _problem(9, n=40)
    D1, o1 = sc.learn_dictionary(X, 5, 0.1, n_steps=3, batch_size=10, n_iter=5, seed=2)
    D2, o2 = sc.learn_dictionary(X, 5, 0.1, n_steps=3, batch_size=10, n_iter=5, seed=2)
    assert torch.equal(D1, D2) and o1 == o2
    with pytest.raises(ValueError, match="batch_size"):
        sc.learn_dictionary(X, 5, 0.1, batch_size=41)
    with pytest.raises(ValueError, match="n_atoms"):
        sc.learn_dictionary(X, 0, 0.1)
    with pytest.raises(TypeError, match="2-D"):
        sc.learn_dictionary(X[0], 5, 0.1)


def test_relative_error_bounds():
    X, D = _problem(10)
    assert sc.relative_error(X, torch.zeros(X.shape[0], D.shape[0], dtype=X.dtype), D) == pytest.approx(1.0)
    A = sc.sparse_encode(X, D, 0.0, n_iter=3000)
    assert 0.0 <= sc.relative_error(X, A, D) < 1.0


# ---------------------------------------------------------------- patches and whitening

def test_zca_whitening_gives_identity_covariance_without_regularization():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5000, 6)) @ rng.standard_normal((6, 6))
    Xw, W, mu = sc.zca_whiten(X, eps_rel=1e-12)
    np.testing.assert_allclose(np.cov(Xw.T, bias=True), np.eye(6), atol=1e-6)
    np.testing.assert_allclose(W, W.T)  # ZCA = the symmetric whitening matrix
    np.testing.assert_allclose(Xw, (X - mu) @ W)


def test_zca_regularization_shrinks_weak_directions():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4000, 4)) * np.array([10.0, 1.0, 0.1, 0.01])
    var = sc.zca_whiten(X, eps_rel=1.0)[0].var(axis=0)
    assert np.all(np.diff(var) < 0) and var[0] < 1.0  # strong directions ≈ 1, weak ones ≪ 1


@pytest.mark.parametrize("bad, match", [(np.zeros((1, 3)), "2 rows"), (np.zeros(5), "2-D"),
                                        (np.full((3, 2), np.nan), "finite")])
def test_zca_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        sc.zca_whiten(bad)


def test_extract_patches_shapes_dc_removed_and_seeded():
    img = np.arange(100.0).reshape(10, 10)
    P = sc.extract_patches([img], 3, 7, seed=0)
    assert P.shape == (7, 9)
    np.testing.assert_allclose(P.mean(axis=1), 0, atol=1e-12)
    # a linear ramp image: every DC-removed patch is the same
    np.testing.assert_allclose(P, np.broadcast_to(P[0], P.shape))
    np.testing.assert_array_equal(sc.extract_patches([img], 3, 7, seed=0), P)
    with pytest.raises(ValueError, match="smaller than patch_size"):
        sc.extract_patches([img], 11, 1)
    with pytest.raises(ValueError, match="2-D"):
        sc.extract_patches([np.zeros((4, 4, 3))], 2, 1)
    with pytest.raises(ValueError, match="patch_size"):
        sc.extract_patches([img], 0, 1)


def test_natural_patches_from_bundled_images():
    Xw, Xr = sc.natural_patches(patch_size=6, n_patches=500, seed=0)
    assert Xw.shape == Xr.shape == (500, 36) and Xw.dtype == torch.float32
    assert torch.isfinite(Xw).all()
    imgs = sc.load_gray_images(downsample=2)
    assert len(imgs) == 2 and all(0 <= im.min() and im.max() <= 1 for im in imgs)
    with pytest.raises(ValueError, match="downsample"):
        sc.load_gray_images(0)
