"""course_lib.lm_predict: a low-rank predictor of a ReLU FFN's active neurons."""

import math

import pytest
import torch

from course_lib import lm, lm_predict as lp


def small(ffn: str = "relu") -> lm.DecoderLM:
    torch.manual_seed(0)
    return lm.DecoderLM(lm.LMConfig(name=f"t-{ffn}", ffn=ffn, d_model=16, n_layers=2, n_heads=2,
                                    context=8)).eval()


def low_rank_task(n: int = 2000, d: int = 16, d_ff: int = 48, seed: int = 0):
    """Labels that a rank-2 linear map decides exactly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 2, generator=g) @ torch.randn(2, d_ff, generator=g)
    return x, (x @ w) > 0.5


def test_predictor_learns_a_low_rank_rule_and_meets_its_recall():
    x, active = low_rank_task()
    p = lp.train_predictor(x[:1500], active[:1500], rank=2, steps=300)
    tau = lp.calibrate_recall(p, x[1500:1750], active[1500:1750], 0.95)
    with torch.no_grad():
        guess = p(x[1750:]) > tau
    truth = active[1750:]
    recall = (guess & truth).sum() / truth.sum()
    precision = (guess & truth).sum() / guess.sum()
    assert recall > 0.9 and precision > 0.8
    assert p.overhead() == pytest.approx(2 * (16 + 48) / (2 * 16 * 48))


def test_calibrated_threshold_reaches_the_recall_on_its_data():
    x, active = low_rank_task(seed=1)
    p = lp.train_predictor(x, active, rank=1, steps=20)
    for target in (0.5, 0.9, 1.0):
        tau = lp.calibrate_recall(p, x, active, target)
        with torch.no_grad():
            got = ((p(x) > tau) & active).sum() / active.sum()
        assert got >= target - 1e-3


def test_keeping_every_neuron_is_the_dense_model():
    model = small()
    w = lm.windows(lm.splits()["valid"], 8, 8)
    preds = [lp.Predictor(16, model.cfg.d_ff, 2).eval() for _ in model.blocks]
    out = lp.evaluate(model, preds, [-math.inf] * 2, w)
    assert out["recall"] == [1.0, 1.0] and out["predicted_density"] == [1.0, 1.0]
    assert math.isclose(out["ppl"], lm.windows_perplexity(model, w), rel_tol=1e-6)
    assert all(s.transform is None for s in lm.sites(model, "teal"))


def test_a_predictor_that_misses_changes_the_output():
    model = small()
    w = lm.windows(lm.splits()["valid"], 8, 8)
    preds = [lp.Predictor(16, model.cfg.d_ff, 2).eval() for _ in model.blocks]
    out = lp.evaluate(model, preds, [math.inf] * 2, w)  # predicts nothing: no FFN at all
    assert out["recall"] == [0.0, 0.0]
    assert out["ppl"] != lm.windows_perplexity(model, w)


def test_fit_and_density_thresholds():
    model = small()
    parts = lm.splits()
    preds, taus = lp.fit(model, 2, 0.9, lm.windows(parts["train"], 8, 8),
                         lm.windows(parts["calib"], 8, 8), steps=5)
    assert len(preds) == len(taus) == 2
    xs = [x for x, _ in lp.ffn_inputs(model, lm.windows(parts["calib"], 8, 8))]
    taus = lp.thresholds_for_density(preds, xs, [0.25, 0.5])
    with torch.no_grad():
        kept = [(p(x) > t).float().mean().item() for p, x, t in zip(preds, xs, taus)]
    assert kept == pytest.approx([0.25, 0.5], abs=0.02)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="relu model"):
        lp.ffn_inputs(small("swiglu"), lm.windows(lm.splits()["valid"], 8, 2))
    with pytest.raises(ValueError, match="rank"):
        lp.Predictor(4, 8, 5)
    with pytest.raises(ValueError, match="label rows"):
        lp.train_predictor(torch.zeros(3, 4), torch.zeros(2, 8, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="recall"):
        lp.calibrate_recall(lp.Predictor(4, 8, 2), torch.zeros(3, 4),
                            torch.ones(3, 8, dtype=torch.bool), 0.0)
    with pytest.raises(ValueError, match="predictors"):
        lp.predicted_masks(small(), [lp.Predictor(16, 64, 2)], [0.0])
