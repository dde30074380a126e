"""course_lib.lm: the course's decoder LM family, its measurements and its sparsifiers."""

import json
import math
from dataclasses import asdict, replace

import pytest
import torch
from hypothesis import given, strategies as st

from course_lib import lm

COMMITTED = ["swiglu", "relu", "relu2", "drelu", "swiglu_topk"]
SAME_SIZE = ["swiglu", "relu", "relu2", "drelu"]


def small(ffn: str) -> lm.DecoderLM:
    torch.manual_seed(0)
    return lm.DecoderLM(lm.LMConfig(name=f"t-{ffn}", ffn=ffn, d_model=16, n_layers=2, n_heads=2,
                                    context=8))


# --------------------------------------------------------------------------- data

def test_corpus_split_is_contiguous_bytes():
    parts = lm.splits()
    whole = lm.encode(lm.corpus_text())
    assert torch.equal(torch.cat([parts["train"], parts["calib"], parts["valid"]]), whole)
    assert whole.dtype == torch.int64 and int(whole.min()) >= 0 and int(whole.max()) < 256
    assert 0.09 < len(parts["valid"]) / len(whole) < 0.11


@given(st.text(max_size=50))
def test_encode_decode_roundtrip(text):
    assert lm.decode(lm.encode(text)) == text


# --------------------------------------------------------------------------- model

@pytest.mark.parametrize("ffn", lm.FFN_KINDS)
def test_ffn_hidden_matches_formula(ffn):
    torch.manual_seed(1)
    f = lm.FFN(8, 12, ffn)
    x = torch.randn(5, 8)
    up = x @ f.up.weight.T
    expected = {
        "swiglu": lambda: torch.nn.functional.silu(x @ f.gate.weight.T) * up,
        "drelu": lambda: torch.relu(x @ f.gate.weight.T) * torch.relu(up),
        "reglu": lambda: torch.relu(x @ f.gate.weight.T) * up,
        "relu": lambda: torch.relu(up),
        "relu2": lambda: torch.relu(up) ** 2,
    }[ffn]()
    torch.testing.assert_close(f.hidden(x), expected)
    torch.testing.assert_close(f(x), expected @ f.down.weight.T)


def test_variants_have_the_same_size():
    sizes = {k: lm.n_params(lm.DecoderLM(lm.CONFIGS[k])) for k in SAME_SIZE}
    assert max(sizes.values()) / min(sizes.values()) < 1.01


def test_model_is_causal():
    model = small("swiglu").eval()
    x = torch.randint(0, 256, (1, 8))
    y = x.clone()
    y[0, 5:] = (y[0, 5:] + 1) % 256
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0, :5], model(y)[0, :5])


def test_bad_input_raises_value_error():
    model = small("relu")
    with pytest.raises(ValueError, match="dtype"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 9, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown config"):
        lm.get_config("gpt5")
    with pytest.raises(ValueError, match="ffn"):
        lm.DecoderLM(lm.LMConfig(name="x", ffn="gelu"))
    with pytest.raises(ValueError, match="CATS"):
        lm.sites(model, "cats")
    w = lm.windows(lm.splits()["calib"], 8, 2)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="sparsity"):
            lm.calibrate(model, lm.sites(model, "teal"), bad, w)


# --------------------------------------------------------------------------- measurements

def test_cett_oracle():
    torch.manual_seed(2)
    h, W = torch.randn(6, 10), torch.randn(4, 10)
    eps = 1.0
    for t in range(6):
        y = sum(h[t, i] * W[:, i] for i in range(10))
        tail = sum((h[t, i] * W[:, i] for i in range(10)
                    if abs(h[t, i]) * W[:, i].norm() < eps), torch.zeros(4))
        assert math.isclose(lm.cett(h, W, eps)[t].item(), (tail.norm() / y.norm()).item(),
                            rel_tol=1e-5, abs_tol=1e-6)
    assert torch.all(lm.cett(h, W, 0.0) == 0)


def test_cett_sparsity_bounds():
    torch.manual_seed(3)
    h, W = torch.randn(32, 64), torch.randn(16, 64)
    s = lm.cett_sparsity(h, W, 0.2)
    assert 0 < s < 1
    assert lm.cett_sparsity(h, W, 0.0) == 0.0
    assert lm.cett_sparsity(h, W, 0.4) >= s
    h[:, :32] = 0
    assert lm.cett_sparsity(h, W, 0.0) == 0.5  # exact zeros are dropped at no error
    assert lm.cett_sparsity(h, W, 0.2) >= 0.5
    with pytest.raises(ValueError, match="CETT"):
        lm.cett_sparsity(h, W, 1.0)


@pytest.mark.parametrize("kind", ["teal", "cats"])
def test_calibrated_thresholds_reach_the_target(kind):
    model = small("swiglu")
    at = lm.sites(model, kind)
    thresholds = lm.calibrate(model, at, 0.5, lm.windows(lm.splits()["calib"], 8, 64))
    # on held-out text, about half of each site's dense input lies at or below its threshold
    for x, t in zip(lm.recorded(model, at, lm.windows(lm.splits()["valid"], 8, 64)), thresholds):
        assert abs(lm.zero_share(x, t) - 0.5) < 0.05
    lm.set_thresholds(at, thresholds)
    assert [s.threshold for s in at] == thresholds
    lm.clear_thresholds(model)
    assert all(s.threshold is None for s in at)


def test_zero_thresholds_change_nothing():
    model = small("swiglu").eval()
    w = lm.windows(lm.splits()["valid"], 8, 4)
    at = lm.sites(model, "teal")
    with torch.no_grad():
        before = model(w[:, :-1])
        lm.set_thresholds(at, lm.calibrate(model, at, 0.0, w))
        torch.testing.assert_close(model(w[:, :-1]), before)


# --------------------------------------------------------------------------- training, checkpoints

def test_tiny_trains_deterministically(tmp_path):
    torch.set_num_threads(1)
    cfg = lm.CONFIGS["tiny"]
    m1, r1 = lm.train(cfg, log=lambda s: None)
    m2, r2 = lm.train(cfg, log=lambda s: None)
    assert r1["train_loss"] == r2["train_loss"]
    assert r1["train_loss"][-1] < r1["train_loss"][0]
    assert [s["step"] for s in r1["snapshots"]] == [0, 2, 4]
    path = lm.save(m1, r1, tmp_path)
    m3, r3 = lm.load(path)
    assert r3["valid_ppl"] == r1["valid_ppl"]
    assert math.isclose(lm.perplexity(m3), r1["valid_ppl"], rel_tol=1e-5)


def test_checkpoint_of_the_wrong_shape(tmp_path):
    from safetensors.torch import load_file, save_file
    model, record = lm.train(lm.CONFIGS["tiny"], log=lambda s: None)
    path = lm.save(model, record, tmp_path)
    state = load_file(str(path))
    state["head.weight"] = state["head.weight"][:, :-1].contiguous()
    save_file(state, str(path), metadata={"config": json.dumps(asdict(model.cfg))})
    with pytest.raises(ValueError, match="head.weight has shape"):
        lm.load(path)
    state = load_file(str(path))
    state["head.weight"] = torch.zeros(256, 32, dtype=torch.float64)
    save_file(state, str(path), metadata={"config": json.dumps(asdict(model.cfg))})
    with pytest.raises(ValueError, match="float32"):
        lm.load(path)
    with pytest.raises(ValueError, match="no checkpoint"):
        lm.load(tmp_path / "missing.safetensors")


def test_cli_rejects_unknown_config():
    with pytest.raises(ValueError, match="unknown config"):
        lm.main(["train", "--config", "nope"])


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_checkpoint_reproduces_its_perplexity(name):
    model, record = lm.load(name)
    assert record["corpus_sha256"] == lm.corpus_sha256(), "another Python ships another corpus"
    assert record["command"] == f"python -m course_lib.lm train --config {name}"
    assert math.isclose(lm.perplexity(model), record["valid_ppl"], rel_tol=1e-4)


FINE_TUNES = ["relufied", "swiglu_continued", "prosparse_l03", "prosparse_l1", "prosparse_l3"]


@pytest.mark.parametrize("name", FINE_TUNES)
def test_fine_tune_logs_are_committed_without_their_checkpoints(name):
    record = json.loads((lm.CHECKPOINT_DIR / f"{name}.json").read_text())
    assert record["command"] == f"python -m course_lib.lm train --config {name}"
    assert record["config"] == asdict(lm.CONFIGS[name])
    assert record["config"]["init_from"] == "swiglu" and record["corpus_sha256"] == lm.corpus_sha256()
    steps = [s["step"] for s in record["snapshots"]]
    assert steps[0] == 0 and steps[-1] == record["config"]["steps"]
    if record["config"]["ffn"] == "reglu":  # ProSparse's threshold shift, logged at the end
        shift = record["threshold_shift"]
        assert [r["target"] for r in shift] == list(lm.SHIFT_LEVELS)
        assert all(a["sparsity"] <= b["sparsity"] for a, b in zip(shift, shift[1:]))


@pytest.mark.parametrize("name", ["swiglu", "relu", "relu2", "drelu"])
def test_second_seed_logs(name):
    record = json.loads((lm.CHECKPOINT_DIR / "seeds" / f"{name}_seed1.json").read_text())
    assert record["config"] == asdict(replace(lm.CONFIGS[name], name=f"{name}_seed1", seed=1))
    assert record["command"].startswith(f"python -m course_lib.lm train --config {name} --seed 1")


def test_l1_schedule_rises_in_stages():
    one = replace(lm.CONFIGS["relufied"], steps=100)
    assert [lm.l1_weight(one, t) for t in (0, 49, 99)] == pytest.approx(
        [one.l1 * math.sin(math.pi / 2 * (t + 1) / 100) for t in (0, 49, 99)])
    three = replace(one, l1_stages=3, steps=90)
    w = [lm.l1_weight(three, t) for t in range(90)]
    assert all(a <= b + 1e-12 for a, b in zip(w, w[1:]))  # never falls
    # each stage ends at l1·s/3
    assert [w[29], w[59], w[89]] == pytest.approx([three.l1 / 3, 2 * three.l1 / 3, three.l1])
    with pytest.raises(ValueError, match="l1_stages"):
        lm.DecoderLM(replace(one, l1_stages=0))


def test_committed_checkpoints_fit_the_budget():
    total = sum((lm.CHECKPOINT_DIR / f"{k}.safetensors").stat().st_size for k in COMMITTED)
    assert total <= 20 * 2 ** 20


# --------------------------------------------------------------------------- 2:4, sweeps, PPL-p%

@given(st.integers(1, 4), st.integers(0, 2 ** 31 - 1))
def test_nm_mask_keeps_the_n_largest_of_each_group(n, seed):
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(seed))
    keep = lm.nm_mask(x, n, 4)
    groups, kept = x.abs().reshape(3, 4, 4), keep.reshape(3, 4, 4)
    assert torch.all(kept.sum(-1) == n)
    smallest_kept = torch.where(kept, groups, torch.inf).amin(-1)
    largest_dropped = torch.where(kept, -torch.inf, groups).amax(-1)
    assert torch.all(smallest_kept >= largest_dropped)


def test_nm_share_counts_groups_already_in_the_pattern():
    x = torch.tensor([[1.0, 0, 0, 2, 1, 1, 1, 0]])
    assert lm.nm_share(x) == 0.5
    site = lm.Site()
    site.nm = (2, 4)
    assert lm.nm_share(site(torch.randn(5, 8))) == 1.0
    with pytest.raises(ValueError, match="multiple of m"):
        lm.nm_share(torch.ones(2, 6))
    with pytest.raises(ValueError, match="multiple of m"):
        lm.nm_mask(torch.ones(2, 6))


def test_sweep_reaches_its_targets_and_zero_is_dense():
    model = small("swiglu")
    calib, valid = lm.splits()["calib"], lm.splits()["valid"]
    cw, ew = lm.windows(calib, 8, 64), lm.windows(valid, 8, 64)
    rows = lm.sweep(model, "cats", [0.0, 0.5, 0.9], cw, ew)
    assert rows[0]["sparsity"] == 0.0
    assert rows[0]["ppl"] == pytest.approx(lm.windows_perplexity(model, ew))
    assert [r["sparsity"] for r in rows[1:]] == pytest.approx([0.5, 0.9], abs=0.05)
    assert all(s.threshold is None for s in lm.sites(model, "teal"))


def test_ppl_p_sparsity_respects_its_budget():
    torch.manual_seed(0)
    model, _ = lm.train(lm.CONFIGS["tiny"], log=lambda s: None)
    w = lm.windows(lm.splits()["calib"], 32, 8)
    row = lm.ppl_p_sparsity(model, 0.01, w, w)
    assert row["ppl"] <= 1.01 * lm.windows_perplexity(model, w) * (1 + 1e-6)
    assert 0 <= row["sparsity"] < 1 and 0 <= row["cett"] < 1
    with pytest.raises(ValueError, match="p must be"):
        lm.ppl_p_sparsity(model, 1.0, w, w)


@given(st.lists(st.floats(-10, 10), min_size=1, max_size=40), st.floats(0, 0.99))
def test_magnitude_threshold_zeroes_at_least_the_target_share(values, sparsity):
    x = torch.tensor(values)
    t = lm.magnitude_threshold(x, sparsity)
    share = (x.abs() <= t).float().mean().item()
    assert share >= sparsity * (len(values) - 1) / len(values) and t in x.abs().tolist()


def test_magnitude_threshold_and_amdahl_reject_bad_input():
    with pytest.raises(ValueError, match="sparsity"):
        lm.magnitude_threshold(torch.ones(3), 1.0)
    with pytest.raises(ValueError, match="empty"):
        lm.magnitude_threshold(torch.ones(0), 0.5)
    with pytest.raises(ValueError, match="ffn_share"):
        lm.amdahl_bound(1.5, 0.5)
    with pytest.raises(ValueError, match="density"):
        lm.amdahl_bound(0.5, 0.0)


def test_amdahl_bound_limits():
    assert lm.amdahl_bound(0.0, 0.1) == 1.0
    assert lm.amdahl_bound(1.0, 0.5) == 2.0
    assert lm.amdahl_bound(0.6, 0.5) == pytest.approx(1 / 0.7)


# --------------------------------------------------- solutions/llm_sparsity: checks reject wrong answers

def test_cett_sparsity_skips_tokens_with_zero_output():
    torch.manual_seed(4)
    h, W = torch.relu(torch.randn(16, 32)), torch.randn(8, 32)
    h[:4] = 0  # tokens whose FFN output is exactly zero: CETT 0/0
    assert torch.isnan(lm.cett(h, W, 1.0)[:4]).all()
    assert lm.cett_sparsity(h, W, 0.2) >= lm.zero_share(h)


# --------------------------------------------------------------------------- top-k (STE), ReLUfication

@given(st.integers(1, 8), st.integers(0, 2 ** 31 - 1))
def test_topk_ste_forward_keeps_k_largest_and_backward_is_identity(k, seed):
    h = torch.randn(3, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64,
                    requires_grad=True)
    y = lm.topk_ste(h, k)
    assert torch.all((y != 0).sum(-1) == k)
    kept = y.detach().abs()
    assert torch.all(torch.where(kept > 0, kept, torch.inf).amin(-1)
                     >= torch.where(kept > 0, 0.0, h.detach().abs()).amax(-1))
    g = torch.randn(3, 8, dtype=torch.float64)
    (grad,) = torch.autograd.grad(y, h, g)
    torch.testing.assert_close(grad, g)  # straight through: the mask is skipped backward


def test_topk_and_l1_configs_are_validated():
    with pytest.raises(ValueError, match="topk"):
        lm.DecoderLM(lm.LMConfig(name="x", topk=1.0))
    with pytest.raises(ValueError, match="l1"):
        lm.DecoderLM(lm.LMConfig(name="x", l1=-1.0))
    with pytest.raises(ValueError, match="k must be"):
        lm.topk_ste(torch.ones(2, 4), 0)


def test_topk_model_has_the_kept_share_of_zeros():
    torch.manual_seed(0)
    model = lm.DecoderLM(lm.LMConfig(name="t", d_model=16, n_layers=1, n_heads=2, context=8,
                                     topk=0.25))
    hs = lm.hidden_activations(model, lm.windows(lm.splits()["valid"], 8, 4))
    assert lm.zero_share(hs[0]) == pytest.approx(1 - model.blocks[0].ffn.keep / model.cfg.d_ff)


def test_relufication_starts_from_the_swiglu_weights():
    cfg = replace(lm.CONFIGS["relufied"], steps=1, warmup=1, eval_every=1, eval_windows=1)
    torch.set_num_threads(1)
    model, record = lm.train(cfg, log=lambda s: None)
    source, _ = lm.load("swiglu")
    # one optimiser step away from the source weights, with ReLU instead of SiLU on the gate
    assert model.cfg.ffn == "reglu"
    drift = (model.blocks[0].ffn.up.weight - source.blocks[0].ffn.up.weight).abs().max().item()
    assert 0 < drift < 1e-2
    assert len(record["train_loss"]) == 1
    assert [r["target"] for r in record["threshold_shift"]] == list(lm.SHIFT_LEVELS)


def test_cli_seed_names_the_run(tmp_path, monkeypatch):
    seen, real_train = {}, lm.train

    def fake_train(cfg):
        seen["cfg"] = cfg
        return real_train(replace(lm.CONFIGS["tiny"], name=cfg.name, seed=cfg.seed),
                        log=lambda s: None)

    monkeypatch.setattr(lm, "train", fake_train)
    lm.main(["train", "--config", "tiny", "--seed", "3", "--out", str(tmp_path)])
    assert seen["cfg"].seed == 3 and seen["cfg"].name == "tiny_seed3"
    record = json.loads((tmp_path / "tiny_seed3.json").read_text())
    assert record["command"] == f"python -m course_lib.lm train --config tiny --seed 3 --out {tmp_path}"


def test_generate_is_greedy_and_validates_input():
    torch.manual_seed(0)
    model = small("relu")
    out = lm.generate(model, "for x in", 12)
    assert out == lm.generate(model, "for x in", 12)
    assert len(out) <= 12  # 12 bytes decode to at most 12 characters (invalid ones to U+FFFD)
    with torch.no_grad():  # the first byte is the arg-max of the prompt's last logits
        first = model(lm.encode("for x in").unsqueeze(0))[0, -1].argmax().reshape(1)
    assert lm.generate(model, "for x in", 1) == lm.decode(first)
    with pytest.raises(ValueError, match="empty"):
        lm.generate(model, "", 3)
    with pytest.raises(ValueError, match="n must"):
        lm.generate(model, "x", -1)
