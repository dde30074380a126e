"""The benchmark harness: fresh inputs per run, warm-up excluded, medians, CSV round trip."""

import numpy as np
import pytest

from course_lib import bench


def test_measure_makes_fresh_inputs_and_skips_warmup():
    made, called = [], []

    def make():
        made.append(len(made))
        return (made[-1],)

    t = bench.measure(lambda i: called.append(i), make, repeats=5, warmup=2)
    assert made == list(range(7)) and called == list(range(7))
    assert t.repeats == 5 and 0 <= t.q1 <= t.median <= t.q3
    with pytest.raises(ValueError, match="repeats"):
        bench.measure(lambda: None, repeats=0)


def test_measure_with_bandwidth_times_only_the_kernel_on_fresh_inputs():
    made, called = [], []

    def make():
        made.append(len(made))
        return (made[-1],)

    run = bench.measure_with_bandwidth(lambda i: called.append(i), make, repeats=4, warmup=1,
                                       nbytes=16 * 2**20, work_bytes=1000)
    assert made == called == list(range(5))
    t = run.timing
    assert t.repeats == len(run.times) == len(run.bandwidths) == 4 and 0 <= t.q1 <= t.median <= t.q3
    assert t.median < 1e-3  # a list append; the probes between runs are not in the timing
    assert 0.1 < run.bandwidth_GBs < 10_000
    # each run against the probe right after it, not median against median
    assert run.share == pytest.approx(float(np.median(
        [1000 / t_i / 1e9 / bw for t_i, bw in zip(run.times, run.bandwidths)])))
    fixed = min(run.times) / 2
    assert run.share_beyond(fixed) == pytest.approx(float(np.median(
        [1000 / (t_i - fixed) / 1e9 / bw for t_i, bw in zip(run.times, run.bandwidths)])))
    assert run.share_beyond(fixed) > run.share
    with pytest.raises(ValueError, match="repeats"):
        bench.measure_with_bandwidth(lambda: None, repeats=0)


def test_measure_interleaved_runs_every_case_each_round_on_fresh_inputs():
    log = []

    def case(name):
        made = []
        return (lambda i: log.append((name, i)), lambda: (made.append(len(made)) or len(made) - 1,),
                len(name))

    runs = bench.measure_interleaved({"a": case("a"), "bb": case("bb"), "ccc": case("ccc")},
                                     repeats=3, warmup=1, nbytes=16 * 2**20, seed=1)
    rounds = [log[3 * r:3 * r + 3] for r in range(4)]
    for r, calls in enumerate(rounds):  # one run of every case per round, each on its r-th input
        assert sorted(calls) == [("a", r), ("bb", r), ("ccc", r)]
    assert len({tuple(name for name, _ in calls) for calls in rounds}) > 1  # order shuffled
    assert {key: (len(run.times), len(run.bandwidths), run.work_bytes) for key, run in runs.items()} \
        == {"a": (3, 3, 1), "bb": (3, 3, 2), "ccc": (3, 3, 3)}
    with pytest.raises(ValueError, match="repeats"):
        bench.measure_interleaved({"a": case("a")}, repeats=0)


def test_bandwidth_and_machine_info():
    gbs = bench.memory_bandwidth(nbytes=64 * 2**20, repeats=3)
    assert 0.1 < gbs < 10_000
    info = bench.machine_info()
    assert {"cpu", "cores", "torch", "date", "device"} <= set(info)


def test_csv_round_trip_with_metadata(tmp_path):
    rows = [{"impl": "scipy", "density": 0.01, "ms": 1.5}, {"impl": "dense", "density": 0.01, "ms": 3.0}]
    path = bench.write_csv(rows, tmp_path / "x.csv", meta={"cpu": "test cpu", "command": "x"})
    back, meta = bench.read_csv(path)
    assert back == rows and meta == {"cpu": "test cpu", "command": "x"}


def test_measure_interleaved_gives_slow_cases_fewer_rounds():
    log = []
    cases = {name: (lambda name=name: log.append(name), None, 0) for name in ("fast", "slow")}
    runs = bench.measure_interleaved(cases, repeats=4, warmup=1, nbytes=16 * 2**20,
                                     case_repeats={"slow": 2})
    assert len(runs["fast"].times) == 4 and len(runs["slow"].times) == 2
    assert log.count("fast") == 5 and log.count("slow") == 3  # warm-up included
    with pytest.raises(ValueError, match="repeats"):
        bench.measure_interleaved(cases, case_repeats={"slow": 0})


def test_copy_bandwidth_counts_read_and_written_bytes(monkeypatch):
    # a copy that takes exactly 1 ms moves 2 × 8 MiB: read once, written once
    monkeypatch.setattr(bench, "measure", lambda *a, **k: bench.Timing(1e-3, 1e-3, 1e-3, 1))
    assert bench.copy_bandwidth(nbytes=8 * 2**20) == pytest.approx(2 * 8 * 2**20 / 1e-3 / 1e9)


def test_suite_command_line_file_name_and_metadata(tmp_path):
    args = bench.parse_suite_args("spmm", "test", ["--quick", "--out", str(tmp_path / "a b")])
    assert (args.suite, args.size, args.device, args.interpret) == ("spmm", "quick", "cpu", False)
    # the command as one would type it again (shell-quoted)
    assert args.command == f"python -m course_lib.bench spmm --quick --out '{tmp_path / 'a b'}'"
    assert bench.csv_name(args) == "spmm_cpu_quick.csv"
    assert bench.csv_name(bench.parse_suite_args("ffn", "test", [])) == "ffn_cpu.csv"
    meta = bench.run_metadata(args, 12.345, 0.5)
    assert list(meta)[-1] == "command" and meta["command"] == args.command
    assert meta["bandwidth_GBs"] == "12.35" and meta["load_average_1min_start"] == "0.50"
    assert set(SCHEMA) <= set(meta)
    with pytest.raises(SystemExit):
        bench.parse_suite_args("spmm", "test", ["--quick", "--tiny"])  # one size at a time


def test_interpret_needs_the_cpu_and_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    args = bench.parse_suite_args("ffn", "test", ["--tiny", "--interpret"])
    assert bench.csv_name(args) == "ffn_cpu_interpret_tiny.csv"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(SystemExit) as stop:
        bench.parse_suite_args("ffn", "test", ["--tiny", "--interpret"])
    assert stop.value.code == 2


def test_cuda_request_without_a_gpu_exits_2(monkeypatch, capsys):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        bench.parse_suite_args("spmm", "test", ["--device", "cuda"])
    assert stop.value.code == 2 and "no CUDA device" in capsys.readouterr().err


#: the metadata every suite's CSV carries (``bench.run_metadata``)
SCHEMA = ("date", "cpu", "cores", "torch_threads", "python", "numpy", "scipy", "torch", "triton",
          "numba", "device", "suite", "size", "bandwidth_GBs", "load_average_1min_start",
          "load_average_1min_end", "omp_wait_policy", "numba_threads", "triton_interpret", "command")


def test_committed_benchmark_csvs_follow_the_schema_and_the_naming_rule():
    from pathlib import Path
    data = Path(__file__).resolve().parents[1] / "book" / "fast" / "data"
    # lm/ and moe/ hold trained models' logs and the MoE chapter's own measurements, not suites'
    paths = sorted(p for p in data.rglob("*.csv") if p.parent.name not in ("lm", "moe"))
    assert paths, "no committed benchmark CSV found"
    for path in paths:
        rows, meta = bench.read_csv(path)
        assert rows and set(SCHEMA) <= set(meta), path
        assert path.stem.split("_")[:2] == [meta["suite"], meta["device"].split(":")[0]], path
        assert float(meta["bandwidth_GBs"]) > 1 and meta["command"].startswith(
            f"python -m course_lib.bench {meta['suite']}"), path


def test_cli_registry_runs_a_suite_and_rejects_unknown_ones(tmp_path, capsys):
    from course_lib.bench.__main__ import SUITES, main
    assert main(["nope"]) == 2
    assert "usage" in capsys.readouterr().err
    assert set(SUITES) == {"spmm", "ffn", "bandwidth", "decode"}
    assert main(["bandwidth", "--tiny", "--out", str(tmp_path)]) == 0
    rows, meta = bench.read_csv(tmp_path / "bandwidth_cpu_tiny.csv")
    assert [r["probe"] for r in rows] == ["read_sum", "read_mv", "copy"]
    for r in rows:
        assert r["GBs"] == pytest.approx(r["nbytes"] / r["median_s"] / 1e9)
    assert float(meta["bandwidth_GBs"]) == pytest.approx(
        max(r["GBs"] for r in rows if r["probe"] != "copy"), abs=0.01)


def test_suites_do_not_import_the_cli():
    """The registry imports the suites, the suites import the harness: no cycle at run time."""
    import subprocess
    import sys
    code = ("import sys, course_lib.bench_spmm, course_lib.bench_ffn, course_lib.bench_bandwidth; "
            "assert 'course_lib.bench.__main__' not in sys.modules; "
            "import course_lib.bench as b; assert not hasattr(b, 'main')")
    subprocess.run([sys.executable, "-c", code], check=True)
