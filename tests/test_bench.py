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


def test_cli_rejects_unknown_suite(capsys):
    assert bench.main(["nope"]) == 2
    assert "usage" in capsys.readouterr().err
