"""course_lib.lm_decode: the KV-cache decode step against the full forward pass."""

import pytest
import torch

from course_lib import lm
from course_lib import lm_decode as ld


def small(ffn: str) -> lm.DecoderLM:
    torch.manual_seed(0)
    return lm.DecoderLM(lm.LMConfig(name=f"t-{ffn}", ffn=ffn, d_model=16, n_layers=2, n_heads=2,
                                    context=8)).eval()


@pytest.mark.parametrize("ffn", lm.FFN_KINDS)
def test_kv_cache_step_matches_the_full_forward(ffn):
    model = small(ffn)
    tokens = lm.encode("def f(x)")
    with torch.no_grad():
        full = model(tokens.unsqueeze(0))[0]
    dec = ld.KVDecoder(model)
    steps = torch.stack([dec.step(int(t)) for t in tokens])
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ffn", ["relu", "relu2"])
def test_exact_sparse_ffn_equals_dense(ffn):
    model = small(ffn)
    dense, exact = ld.KVDecoder(model, "dense"), ld.KVDecoder(model, "exact")
    for t in lm.encode("x = [1]"):
        torch.testing.assert_close(exact.step(int(t)), dense.step(int(t)), rtol=1e-4, atol=1e-5)


def test_masked_ffn_with_every_neuron_active_equals_dense():
    model = small("relu")
    dense, masked = ld.KVDecoder(model, "dense"), ld.KVDecoder(model, "masked")
    every = [torch.arange(model.cfg.d_ff)] * model.cfg.n_layers
    for t in lm.encode("abc"):
        torch.testing.assert_close(masked.step(int(t), every), dense.step(int(t)),
                                   rtol=1e-4, atol=1e-5)


def keep_all(model: lm.DecoderLM) -> tuple[list, list[float]]:
    """Predictors whose threshold lets every neuron through."""
    from course_lib import lm_predict
    torch.manual_seed(1)
    preds = [lm_predict.Predictor(model.cfg.d_model, model.cfg.d_ff, 4).eval()
             for _ in model.blocks]
    return preds, [-float("inf")] * len(preds)


def test_predicted_ffn_keeping_every_neuron_equals_dense():
    model = small("relu")
    dense, predicted = ld.KVDecoder(model, "dense"), ld.KVDecoder(model, "predicted",
                                                                   *keep_all(model))
    for t in lm.encode("abc"):
        torch.testing.assert_close(predicted.step(int(t)), dense.step(int(t)),
                                   rtol=1e-4, atol=1e-5)


def test_none_mode_drops_the_ffn():
    model = small("relu")
    for b in model.blocks:
        torch.nn.init.zeros_(b.ffn.down.weight)  # a zero FFN: dense equals no FFN
    dense, none = ld.KVDecoder(model, "dense"), ld.KVDecoder(model, "none")
    for t in lm.encode("ab"):
        torch.testing.assert_close(none.step(int(t)), dense.step(int(t)))


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="mode"):
        ld.KVDecoder(small("relu"), "sparse")
    with pytest.raises(ValueError, match="ungated"):
        ld.KVDecoder(small("swiglu"), "exact")
    with pytest.raises(ValueError, match="relu model"):
        ld.KVDecoder(small("relu2"), "masked")
    dec = ld.KVDecoder(small("relu"), "masked")
    with pytest.raises(ValueError, match="active sets"):
        dec.step(1)
    dec = ld.KVDecoder(small("relu"))
    for t in range(8):
        dec.step(t)
    with pytest.raises(ValueError, match="reset"):
        dec.step(0)
    with pytest.raises(ValueError, match="densities"):
        ld.draw_active_sets(16, [0.0], 2)
    preds, taus = keep_all(small("relu"))
    with pytest.raises(ValueError, match="exactly when the mode is 'predicted'"):
        ld.KVDecoder(small("relu"), "predicted")
    with pytest.raises(ValueError, match="exactly when the mode is 'predicted'"):
        ld.KVDecoder(small("relu"), "dense", preds, taus)
    with pytest.raises(ValueError, match="as many predictors"):
        ld.KVDecoder(small("relu"), "predicted", preds[:1], taus[:1])


def test_active_sets_have_the_requested_size():
    sets = ld.draw_active_sets(100, [0.1, 0.25], steps=3, seed=1)
    assert [[len(s) for s in step] for step in sets] == [[10, 25]] * 3
    assert all(torch.all(s[1:] > s[:-1]) for step in sets for s in step)


def test_benchmark_rows_are_consistent():
    model = small("relu")
    rows = ld._rows("t", model, [0.25, 0.5], steps=6, modes=("exact", "masked", "predicted"),
                    predicted=(*keep_all(model), 0.6))
    assert [r["mode"] for r in rows] == ["dense", "exact", "masked", "predicted"]
    by = {r["mode"]: r for r in rows}
    assert by["masked"]["ffn_bytes_read"] == pytest.approx(0.375, abs=1e-4)
    assert by["predicted"]["ffn_bytes_read"] == 0.6
    assert by["exact"]["ffn_bytes_read"] == pytest.approx((1 + 0.375) / 2, abs=1e-4)
    for r in rows:  # the bound follows from the measured FFN share and the bytes read
        f, b = r["ffn_share"], r["ffn_bytes_read"]
        assert r["amdahl_bound"] == pytest.approx(1 / ((1 - f) + f * b), rel=1e-3)


def test_decode_suite_writes_the_shared_schema(tmp_path):
    """`python -m course_lib.bench decode --tiny`: the shared file name and metadata, one row per
    model and mode, speed-ups and bounds that follow from the measured times."""
    from course_lib import bench
    from course_lib.bench.__main__ import main
    assert main(["decode", "--tiny", "--out", str(tmp_path)]) == 0
    rows, meta = bench.read_csv(tmp_path / "decode_cpu_tiny.csv")
    assert (meta["suite"], meta["size"], meta["device"]) == ("decode", "tiny", "cpu")
    assert meta["command"] == "python -m course_lib.bench decode --tiny --out " + str(tmp_path)
    assert float(meta["bandwidth_GBs"]) > 0
    assert [(r["model"].split(",")[0], r["mode"]) for r in rows] == [
        ("course relu", "dense"), ("course relu", "exact"), ("course relu", "predicted"),
        ("wide relu", "dense"), ("wide relu", "exact"), ("wide relu", "masked"),
        ("wide relu", "predicted")]
    for r in rows:
        assert r["share_of_bound"] == pytest.approx(r["speedup"] / r["amdahl_bound"], rel=1e-3)
        f, b = r["ffn_share"], r["ffn_bytes_read"]
        assert r["amdahl_bound"] == pytest.approx(1 / ((1 - f) + f * b), rel=1e-3)


def test_decode_suite_rejects_an_unknown_size():
    from course_lib import lm_decode
    with pytest.raises(ValueError, match="size must be one of"):
        lm_decode.bench_decode("huge")
