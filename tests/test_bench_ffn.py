"""course_lib.bench_ffn: the ffn suite runs end to end (tiny sizes) and writes a readable CSV."""

import math
from dataclasses import replace

import pytest
import torch

from course_lib import bench, bench_ffn, ffn
from course_lib.bench.__main__ import main as cli

TINY = bench_ffn.SIZES["tiny"]


@pytest.fixture(scope="module")
def tiny_rows():
    return bench_ffn.run(TINY)


def test_run_reports_every_density_and_consistent_columns(tiny_rows):
    rows, bandwidth = tiny_rows
    assert 0.1 < bandwidth < 10_000
    expected = [(dt, op, d) for dt in ("float32", "bfloat16") for op in ("down", "up", "ffn")
                for d in TINY.densities]
    assert [(r["dtype"], r["op"], r["density"]) for r in rows] == expected
    for r in rows:
        k, itemsize = r["active"], 4 if r["dtype"] == "float32" else 2
        matrices = 2 if r["op"] == "ffn" else 1
        assert k == round(r["density"] * TINY.d_ff)
        assert r["sparse_q1_ms"] <= r["sparse_ms"] <= r["sparse_q3_ms"]
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["sparse_ms"])
        assert r["naive_speedup"] == pytest.approx(r["dense_ms"] / r["naive_ms"])
        assert r["bound"] == pytest.approx(1 / r["density"])
        # the bytes behind each rate: the active rows (+ int64 indices), the whole matrices
        sparse_bytes = matrices * ffn.gemv_bytes(k, TINY.d_model, itemsize) + 8 * k
        assert r["sparse_GBs"] * r["sparse_ms"] * 1e6 == pytest.approx(sparse_bytes)
        dense_bytes = matrices * TINY.d_ff * TINY.d_model * itemsize
        assert r["dense_GBs"] * r["dense_ms"] * 1e6 == pytest.approx(dense_bytes)
        assert 0.1 < r["bandwidth_GBs"] < 10_000 and 0.1 < r["loop_bandwidth_GBs"] < 10_000
        # a share is a rate over a probed bandwidth, so it lies near (GB/s) / (probed GB/s)
        assert 0 < r["share_of_bound"] < 100 * r["sparse_GBs"] / r["bandwidth_GBs"]
        # beyond a positive fixed cost, the same payload streams faster
        assert r["call_ms"] > 0 and r["share_beyond_call"] > r["share_of_bound"]
        stacked = [r[f"{name}_{key}"] for name in bench_ffn.STEPS
                   for key in ("ms", "share", "bandwidth_GBs", "call_ms", "share_beyond_call")]
        # the one-call decode pass exists for the fused FFN only
        assert all(v > 0 for v in stacked) if r["op"] == "ffn" else all(math.isnan(v) for v in stacked)
        if r["op"] == "ffn":
            assert r["stack_share_beyond_call"] > r["stack_share"]
            assert all(0 <= r[f"{name}_huge_pages"] <= 1 for name in ("stack", "stack_plain"))


def test_the_timed_cases_compute_what_the_rows_say(monkeypatch):
    """Each timed case runs its op on fresh inputs of the row's size (checked against the
    reference on one draw), and a decode pass visits every layer."""
    setup = replace(TINY, densities=(0.25,))
    draw = bench_ffn._Draws(setup, torch.float32, torch.Generator().manual_seed(0))
    W1s, b1s, W2ts = bench_ffn.decode_layers(torch.randn(setup.d_ff, setup.d_model),
                                             torch.randn(setup.d_ff),
                                             torch.randn(setup.d_ff, setup.d_model), setup.layers)
    layers = list(zip(W1s, b1s, W2ts))
    ops = bench_ffn._ops(layers, setup)
    steps = bench_ffn._steps(W1s, b1s, W2ts, setup)
    cases = bench_ffn._cases(setup, layers, ops, steps, draw)
    k = setup.active(0.25)
    for op in ops:
        fn, fresh, _ = cases[op.name, 0.25]
        v, idx = fresh()
        assert idx.shape == (k,) and torch.equal(idx, idx.sort().values) and v.shape == (op.vec_len,)
        torch.testing.assert_close(fn(v, idx), op.naive(v, idx), rtol=1e-4, atol=1e-4)
        assert cases[op.name, "call"][1]()[1].numel() == 0  # the fixed cost: an empty set
        passes = cases[op.name, "pass", 0.25][1]()
        assert len(passes) == setup.layers
    x, sets = cases["stack", 0.25][1]()
    assert sets.shape == (setup.layers, k)
    assert set(steps) == set(bench_ffn.STEPS)


def test_decode_layers_are_equal_copies_in_separate_memory():
    W1, b1, W2t = torch.randn(6, 4), torch.randn(6), torch.randn(6, 4)
    W1s, b1s, W2ts = bench_ffn.decode_layers(W1, b1, W2t, 3)
    assert W1s.shape == W2ts.shape == (3, 6, 4) and b1s.shape == (3, 6)
    for stacked, one in ((W1s, W1), (b1s, b1), (W2ts, W2t)):
        assert all(torch.equal(layer, one) for layer in stacked)
        assert stacked.data_ptr() != one.data_ptr()  # copies: no layer shares the given memory


def test_cli_writes_csv_with_machine_info(tmp_path, monkeypatch):
    monkeypatch.setitem(bench_ffn.SIZES, "quick", replace(TINY, d_model=32, d_ff=128, repeats=1,
                                                          densities=bench_ffn.DENSITIES))
    assert cli(["ffn", "--quick", "--out", str(tmp_path)]) == 0
    rows, meta = bench.read_csv(tmp_path / "ffn_cpu_quick.csv")
    assert len(rows) == 2 * 3 * len(bench_ffn.DENSITIES)  # 2 dtypes × 3 ops
    assert (meta["suite"], meta["size"], meta["device"]) == ("ffn", "quick", "cpu")
    assert meta["command"] == "python -m course_lib.bench ffn --quick --out " + str(tmp_path)
