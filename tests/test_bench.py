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


def test_cli_rejects_unknown_suite(capsys):
    assert bench.main(["nope"]) == 2
    assert "usage" in capsys.readouterr().err
