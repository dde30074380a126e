"""course_lib.lm_sparsify: WINA, LaRoSA, R-Sparse, statistical top-k and hot-neuron coverage."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from course_lib import lm, lm_sparsify as sp


def small(ffn: str = "swiglu") -> lm.DecoderLM:
    torch.manual_seed(0)
    return lm.DecoderLM(lm.LMConfig(name=f"t-{ffn}", ffn=ffn, d_model=16, n_layers=2, n_heads=2,
                                    context=8)).eval()


def windows(split: str, n: int = 16) -> torch.Tensor:
    return lm.windows(lm.splits()[split], 8, n)


@pytest.mark.parametrize("ffn", ["swiglu", "relu"])
def test_consumers_multiply_what_each_site_receives(ffn):
    model = small(ffn)
    at = lm.sites(model, "teal")
    xs = lm.recorded(model, at, windows("valid", 2))
    ws = sp.consumers(model)
    assert len(ws) == len(at) == 4 * model.cfg.n_layers
    b = model.blocks[0]
    # x·W is what the site's linears compute: the attention input gives q, k, v at once
    assert torch.allclose(xs[0] @ ws[0], b.attn.qkv(xs[0]), atol=1e-6)
    assert torch.allclose(xs[3] @ ws[3], b.ffn.down(xs[3]), atol=1e-6)
    d_out = (2 if b.ffn.gated else 1) * model.cfg.d_ff
    assert ws[2].shape == (model.cfg.d_model, d_out)


def test_teal_rows_are_the_lm_sweep():
    model = small()
    levels = [0.0, 0.3, 0.6]
    ours = sp.sweep(model, "teal", levels, windows("calib"), windows("valid"))
    theirs = lm.sweep(model, "teal", levels, windows("calib"), windows("valid"))
    for a, b in zip(ours, theirs):
        assert math.isclose(a["ppl"], b["ppl"], rel_tol=1e-9)
        assert math.isclose(a["sparsity"], b["sparsity"], abs_tol=1e-6)


@pytest.mark.parametrize("method", sp.METHODS)
def test_level_zero_is_the_dense_model(method):
    model = small()
    dense = lm.windows_perplexity(model, windows("valid"))
    row = sp.sweep(model, method, [0.0], windows("calib"), windows("valid"))[0]
    assert math.isclose(row["ppl"], dense, rel_tol=1e-5)
    assert row["sparsity"] == pytest.approx(0.0, abs=1e-6)
    assert all(s.transform is None and s.record is None for s in lm.sites(model, "teal"))


@pytest.mark.parametrize("method", sp.METHODS)
def test_achieved_sparsity_is_near_the_target(method):
    model = small()
    row = sp.sweep(model, method, [0.5], windows("calib", 64), windows("valid", 64))[0]
    # LaRoSA pays for reading Q, R-Sparse for its factors: they save less than the target
    low = 0.5 - (0.6 if method == "larosa" else 0.1)
    assert low < row["sparsity"] < 0.56


@settings(deadline=None, max_examples=25)
@given(st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_topk_keeps_k_per_token_in_the_rotated_basis(k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 12, generator=g)
    q = sp.pca_rotation(torch.randn(40, 12, generator=g))
    assert torch.allclose(q.T @ q, torch.eye(12), atol=1e-5)
    for rotation in (None, q):
        t = sp.TopK(k, rotation)
        assert torch.all(t.keep(x).sum(-1) == k)
        y = t(x)
        z = x if rotation is None else x @ q
        kept = (y if rotation is None else y @ q)
        # what survives is z on the k largest |z_j|, zero elsewhere
        assert torch.allclose(kept, z * t.keep(x), atol=1e-5)
    assert torch.allclose(sp.TopK(12, q)(x), x, atol=1e-5)


def test_pca_rotation_concentrates_energy_first():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g) * torch.tensor([0.1, 5.0, 0.2, 1.0, 0.3, 0.05])
    energy = ((x @ sp.pca_rotation(x)) ** 2).mean(0)
    assert torch.all(energy[:-1] >= energy[1:])


def test_rank_aware_interpolates_between_the_mask_and_the_dense_layer():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 20, generator=g)
    x = torch.randn(30, 8, generator=g)
    mask = sp.Threshold(0.8, w.norm(dim=1))
    assert torch.equal(sp.RankAware(mask, w, 0)(x), mask(x))
    full = sp.RankAware(mask, w, 8)
    assert torch.allclose(full(x) @ w, x @ w, atol=1e-4)  # all singular directions: exact
    r = 3
    part = sp.RankAware(mask, w, r)
    assert part.overhead == pytest.approx(r * (8 + 20) / (8 * 20))
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    dropped = x - mask(x)
    expected = mask(x) @ w + dropped @ (u[:, :r] * s[:r]) @ vh[:r]
    assert torch.allclose(part(x) @ w, expected, atol=1e-4)
    with pytest.raises(ValueError, match="rank"):
        sp.RankAware(mask, w, 9)


def test_wina_scores_by_the_weight_row():
    x = torch.tensor([[1.0, 1.0]])
    t = sp.Threshold(1.5, torch.tensor([1.0, 2.0]))  # the second channel meets a heavier row
    assert t.keep(x).tolist() == [[False, True]]


def test_bad_arguments_name_the_problem():
    calib = [torch.randn(10, 4)]
    ws = [torch.randn(4, 6)]
    with pytest.raises(ValueError, match="method"):
        sp.sparsifiers("deja_vu", 0.5, calib, ws)
    with pytest.raises(ValueError, match="sparsity level"):
        sp.sparsifiers("teal", 1.0, calib, ws)
    with pytest.raises(ValueError, match="only rsparse has a rank"):
        sp.sparsifiers("wina", 0.5, calib, ws, rank=2)
    with pytest.raises(ValueError, match="sparsity budget"):
        sp.sparsifiers("rsparse", 0.9, calib, ws, rank=2)  # the factors read 0.83 of W
    with pytest.raises(ValueError, match="rotate"):
        sp.sparsifiers("larosa", 0.5, calib, ws)
    with pytest.raises(ValueError, match="share kept"):
        sp.statistical_topk_keep(torch.randn(3, 10), 1.0)
    with pytest.raises(ValueError, match="share of neurons"):
        sp.hot_neuron_coverage(torch.ones(2, 3), torch.ones(2, 3), 0.0)


def test_statistical_topk_is_exact_for_gaussian_rows():
    z = torch.randn(64, 20_000, generator=torch.Generator().manual_seed(3))
    for share in (0.08, 0.25):
        assert sp.statistical_topk_keep(z, share).mean().item() == pytest.approx(share, abs=0.003)
    # a heavy tail breaks the assumption: far more than 8 % lie above mean + 1.4 std
    heavy = torch.distributions.StudentT(1.5).sample((64, 2000))
    assert sp.statistical_topk_keep(heavy, 0.08).mean().item() < 0.08


def test_hot_neuron_coverage():
    h_calib = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]])  # neuron 0 is hottest
    h_eval = torch.tensor([[2.0, 0.0, 3.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    assert sp.hot_neuron_coverage(h_calib, h_eval, 0.25) == pytest.approx(1 / 3)
    assert sp.hot_neuron_coverage(h_calib, h_eval, 1.0) == 1.0
