"""The spmm benchmark suite: rows, ratios, crossover interpolation, CLI outputs (tiny sizes)."""

import math

import pytest

from course_lib import bench, bench_spmm
from course_lib.bench.__main__ import main as cli

TINY = bench_spmm.SIZES["tiny"]


@pytest.fixture(scope="module")
def tiny_run():
    return bench_spmm.run(**TINY, log=lambda *_: None)


def test_run_measures_every_cpu_method_with_consistent_columns(tiny_run):
    rows, bandwidth = tiny_run
    slow_skipped = [m for m in bench_spmm.METHODS["cpu"] if m not in bench_spmm.SLOW_TIERS]
    # interleaved timing: every method of a (shape, density) once per round; rows in method order
    assert [r["method"] for r in rows] == bench_spmm.METHODS["cpu"] + slow_skipped  # 5 %, then 50 %
    assert 0.1 < bandwidth < 10_000
    for r in rows:
        m, k, n, nnz = r["m"], r["k"], r["n"], r["nnz"]
        assert r["q1_s"] <= r["median_s"] <= r["q3_s"] and 3 <= r["repeats"] <= TINY["repeats"]
        assert nnz == pytest.approx(r["density"] * m * k, rel=0.05)
        # every derived column follows from the timing, the traffic model and the probe
        nbytes = bench_spmm.traffic_bytes(r["method"], m, k, n, nnz)
        flops = 2 * (m * k if r["method"] == "dense" else nnz) * n
        assert r["gbps"] == pytest.approx(nbytes / r["median_s"] / 1e9)
        assert r["gflops"] == pytest.approx(flops / r["median_s"] / 1e9)
        assert r["bound_s"] == pytest.approx(nbytes / r["bandwidth_GBs"] / 1e9)
        assert 0.1 < r["bandwidth_GBs"] < 10_000
        same = {x["method"]: x for x in rows if x["density"] == r["density"]}
        assert r["vs_dense"] == pytest.approx(r["median_s"] / same["dense"]["median_s"])
        assert r["vs_scipy"] == pytest.approx(r["median_s"] / same["scipy"]["median_s"])


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


def test_cli_writes_csv_with_machine_info_and_png(tmp_path, capsys):
    assert cli(["spmm", "--tiny", "--out", str(tmp_path)]) == 0
    rows, meta = bench.read_csv(tmp_path / "spmm_cpu_tiny.csv")
    assert len(rows) == 2 * len(bench_spmm.METHODS["cpu"]) - len(bench_spmm.SLOW_TIERS)
    assert (meta["suite"], meta["size"], meta["device"]) == ("spmm", "tiny", "cpu")
    assert meta["command"] == "python -m course_lib.bench spmm --tiny --out " + str(tmp_path)
    assert (tmp_path / "spmm_cpu_tiny.png").stat().st_size > 0
    assert "crossover vs dense, scipy" in capsys.readouterr().out


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
