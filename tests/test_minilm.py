"""course_lib.minilm: offline loading, recorded FFN inputs, TEAL thresholds and the sparsified forward."""

import pytest
import torch

from course_lib import minilm

SMALL = minilm.SENTENCES[:6]


@pytest.fixture(scope="module")
def model():
    return minilm.load_model()


def test_model_loads_offline_with_the_documented_shape(model):
    mods = minilm.ffn_modules(model)
    assert len(mods) == 6
    assert all((u.in_features, u.out_features, d.out_features) == (384, 1536, 384) for u, d in mods)
    e = minilm.embed(model, SMALL)
    assert e.shape == (6, 384)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(6))


def test_recorded_inputs_are_the_ffn_inputs_of_real_tokens(model):
    rec = minilm.record_ffn_inputs(model, SMALL)
    n_tokens = int(model.preprocess(list(SMALL))["attention_mask"].sum())
    assert [a.shape for a in rec["up"]] == [(n_tokens, 384)] * 6
    assert [a.shape for a in rec["down"]] == [(n_tokens, 1536)] * 6
    up, _ = minilm.ffn_modules(model)[0]
    with torch.no_grad():  # down input = exact GELU of the up projection
        torch.testing.assert_close(rec["down"][0],
                                   torch.nn.functional.gelu(up(rec["up"][0])), rtol=1e-5, atol=1e-5)
    assert not model[0].auto_model.encoder.layer[0].output.dense._forward_pre_hooks  # hooks removed


def test_thresholds_hit_the_target_sparsity_on_calibration_data(model):
    rec = minilm.record_ffn_inputs(model, SMALL)
    ts = minilm.calibrate_thresholds(rec["down"], 0.75)
    for a, t in zip(rec["down"], ts):
        assert (a.abs() <= t).float().mean().item() == pytest.approx(0.75, abs=1e-3)


def test_thresholded_forward_zero_sparsity_is_exact_and_hooks_are_removed(model):
    dense = minilm.embed(model, SMALL)
    keep_all = {"up": [-1.0] * 6, "down": [-1.0] * 6}
    with minilm.thresholded(model, keep_all):
        same = minilm.embed(model, SMALL)
    torch.testing.assert_close(same, dense)
    with minilm.thresholded(model, {"down": [1e9] * 6}):  # every FFN output is just the bias
        changed = minilm.embed(model, SMALL)
    assert not torch.allclose(changed, dense)
    torch.testing.assert_close(minilm.embed(model, SMALL), dense)


def test_thresholded_rejects_bad_thresholds(model):
    with pytest.raises(ValueError, match="one 'up' threshold per layer"):
        with minilm.thresholded(model, {"up": [0.1]}):
            pass
    with pytest.raises(ValueError, match="'up' or 'down'"):
        with minilm.thresholded(model, {"mid": [0.1] * 6}):
            pass
    with pytest.raises(ValueError, match="non-empty"):
        minilm.embed(model, [])


def test_agreement_of_identical_embeddings_is_perfect():
    e = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    a = minilm.agreement(e, e)
    assert a["cosine_min"] == pytest.approx(1.0) and a["top1"] == 1.0 and a["spearman"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one shape"):
        minilm.agreement(e, e[:4])
