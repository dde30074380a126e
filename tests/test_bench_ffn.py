"""course_lib.bench_ffn: the ffn suite runs end to end (tiny sizes) and writes a readable CSV."""

import math

import pytest

from course_lib import bench, bench_ffn


def test_run_reports_every_density_and_consistent_ratios():
    rows, bandwidth = bench_ffn.run(d_model=64, d_ff=256, repeats=2, densities=(0.5, 0.1),
                                     probe_bytes=16 * 2**20, layers=2)
    assert bandwidth > 0
    expected = [(dt, op, d) for dt in ("float32", "bfloat16") for op in ("down", "up", "ffn")
                for d in (0.5, 0.1)]
    assert [(r["dtype"], r["op"], r["density"]) for r in rows] == expected
    for r in rows:
        assert r["active"] == round(r["density"] * 256)
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["sparse_ms"])
        assert r["bound"] == pytest.approx(1 / r["density"])
        assert r["share_of_bound"] > 0 and r["bandwidth_GBs"] > 0  # pairing: tests/test_bench.py
        assert r["dense_share"] > 0 and r["dense_GBs"] > 0
        assert r["call_ms"] > 0 and r["share_beyond_call"] > r["share_of_bound"]
        assert r["loop_ms"] > 0 and r["loop_share"] > 0 and r["loop_bandwidth_GBs"] > 0
        stacked = [r[f"{name}_{k}"] for name in ("stack", "stack_plain", "stack_separate")
                   for k in ("ms", "share", "bandwidth_GBs", "call_ms", "share_beyond_call")]
        # the one-call decode pass exists for the fused FFN only
        assert all(v > 0 for v in stacked) if r["op"] == "ffn" else all(math.isnan(v) for v in stacked)
        if r["op"] == "ffn":
            assert r["stack_share_beyond_call"] > r["stack_share"]
            assert all(0 <= r[f"{name}_huge_pages"] <= 1 for name in ("stack", "stack_plain"))


def test_decode_layers_are_equal_copies_in_separate_memory():
    import torch
    W1, b1, W2t = torch.randn(6, 4), torch.randn(6), torch.randn(6, 4)
    W1s, b1s, W2ts = bench_ffn.decode_layers(W1, b1, W2t, 3)
    assert W1s.shape == W2ts.shape == (3, 6, 4) and b1s.shape == (3, 6)
    for stacked, one in ((W1s, W1), (b1s, b1), (W2ts, W2t)):
        assert all(torch.equal(layer, one) for layer in stacked)
        assert stacked.data_ptr() != one.data_ptr()  # copies: no layer shares the given memory


def test_cli_writes_csv_with_machine_info(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_ffn, "QUICK", dict(d_model=32, d_ff=128, repeats=1, layers=2,
                                                  probe_bytes=16 * 2**20))
    assert bench.main(["ffn", "--quick", "--out", str(tmp_path)]) == 0
    rows, meta = bench.read_csv(tmp_path / "ffn_bench_cpu_quick.csv")
    assert len(rows) == 2 * 3 * len(bench_ffn.DENSITIES)  # 2 dtypes × 3 ops
    assert {"cpu", "bandwidth_GBs", "command", "date"} <= set(meta)
    assert meta["command"].endswith("--quick --out " + str(tmp_path))


def test_cuda_request_without_a_gpu_fails_cleanly(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert bench_ffn.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
