"""The spmm benchmark suite: rows, ratios, crossover interpolation, CLI outputs (tiny sizes)."""

import math

import pytest

from course_lib import bench, bench_spmm

TINY = dict(cases=[((64, 64, 8), [0.05, 0.5])], repeats=3)


@pytest.fixture(scope="module")
def tiny_run():
    return bench_spmm.run(TINY["cases"], TINY["repeats"], log=lambda *_: None)


def test_run_measures_every_cpu_method_with_ratios(tiny_run):
    rows, meta = tiny_run
    slow_skipped = [m for m in bench_spmm.METHODS["cpu"] if m not in bench_spmm.SLOW_TIERS]
    assert [r["method"] for r in rows] == bench_spmm.METHODS["cpu"] + slow_skipped  # 5 %, then 50 %
    for r in rows:
        assert r["q1_s"] <= r["median_s"] <= r["q3_s"] and r["repeats"] >= 3
        assert r["gflops"] > 0 and r["gbps"] > 0 and r["bound_s"] > 0
        if r["method"] == "scipy":
            assert r["vs_scipy"] == 1.0
        if r["method"] == "dense":
            assert r["vs_dense"] == 1.0
    assert meta["bandwidth_GBps"] > 0 and meta["cores"] >= 1


def test_traffic_model():
    # CSR: (m+1+nnz) int32 indices + nnz fp32 values, plus B (k×n) and C (m×n) once
    assert bench_spmm.traffic_bytes("scipy", 4, 5, 2, nnz=3) == (5 + 3) * 4 + 3 * 4 + (10 + 8) * 4
    assert bench_spmm.traffic_bytes("dense", 4, 5, 2, nnz=3) == 20 * 4 + (10 + 8) * 4


def _rows(method, pairs):
    return [dict(method=method, m=8, k=8, n=8, density=d, median_s=t) for d, t in pairs]


def test_crossover_density_interpolates_in_log_space():
    dense = _rows("dense", [(0.01, 1.0), (0.1, 1.0), (1.0, 1.0)])
    sparse = _rows("s", [(0.01, 0.1), (0.1, 0.5), (1.0, 2.0)])
    # ratio 0.5 at 10 %, 2 at 100 %: log-midpoint, sqrt(0.1 · 1)
    assert bench_spmm.crossover_density(dense + sparse, "s") == pytest.approx(math.sqrt(0.1))
    assert bench_spmm.crossover_density(dense + _rows("fast", [(0.01, 0.1), (1.0, 0.9)]), "fast") == math.inf
    assert bench_spmm.crossover_density(dense + _rows("slow", [(0.01, 1.5), (1.0, 9.0)]), "slow") == 0.0


def test_cli_writes_csv_with_machine_info_and_png(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_spmm, "QUICK", TINY)
    assert bench.main(["spmm", "--quick", "--out", str(tmp_path)]) == 0
    rows, meta = bench.read_csv(tmp_path / "spmm.csv")
    assert len(rows) == 2 * len(bench_spmm.METHODS["cpu"]) - len(bench_spmm.SLOW_TIERS)
    assert {"cpu", "bandwidth_GBps", "command", "date"} <= set(meta)
    assert meta["command"] == "python -m course_lib.bench spmm --quick --out " + str(tmp_path)
    assert (tmp_path / "spmm.png").stat().st_size > 0
    assert "crossover vs dense, scipy" in capsys.readouterr().out


def test_cli_refuses_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(bench_spmm.torch.cuda, "is_available", lambda: False)
    assert bench_spmm.main(["--device", "cuda"]) == 2


def test_describe_density_names_out_of_range_crossovers():
    assert bench_spmm.describe_density(0.0) == "below the smallest measured density"
    assert bench_spmm.describe_density(math.inf) == "above the largest measured density"
    assert bench_spmm.describe_density(0.071) == "7.1%"
    assert bench_spmm.describe_density(0.2) == "20%"


@pytest.mark.parametrize("method", bench_spmm.METHODS["cpu"])
def test_every_method_computes_the_product(method):
    """What is timed is the right product; torch-kind tiers get device-resident CSR arrays."""
    import numpy as np
    import torch

    from course_lib import data

    A = data.make_sparse_matrix(30, 20, 0.2, seed=3)
    ops = bench_spmm._operands(A, "cpu")
    assert isinstance(ops["csr_device"].indptr, torch.Tensor)
    B = torch.randn(20, 5)
    C = bench_spmm._call(method)(ops, B)
    C = C.numpy() if isinstance(C, torch.Tensor) else C
    np.testing.assert_allclose(C, A.to_scipy() @ B.numpy(), rtol=1e-5, atol=1e-5)
