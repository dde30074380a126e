"""tools/gpu_check.py: the dry run goes through every step, and the check fails loudly."""

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib import bench

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_dry_run_runs_every_step_on_the_interpreter(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--dry-run", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    steps = _rows(out / "gpu_check.csv")
    assert [(s["step"], s["status"]) for s in steps] == [
        ("gpu tests", "passed"), ("bandwidth", "passed"), ("spmm", "passed"), ("ffn", "passed")]
    tests = _rows(out / "gpu_tests.csv")
    assert sum(t["outcome"] == "passed" for t in tests) >= 30
    assert all(t["outcome"] == "passed" or gpu_check.INTERPRETER_SKIP in t["reason"] for t in tests)
    for suite in ("bandwidth", "spmm", "ffn"):
        rows, meta = bench.read_csv(out / f"{suite}_cpu_interpret_tiny.csv")
        assert rows and (meta["suite"], meta["triton_interpret"]) == (suite, "1")
    methods = {r["method"] for r in bench.read_csv(out / "spmm_cpu_interpret_tiny.csv")[0]}
    assert methods == {"torch", "triton", "torch_sparse", "dense"}  # the CUDA suite's methods
    assert "=== summary" in proc.stdout and "spmm 32x32x8 at 5.0%: triton" in proc.stdout


def test_a_skipped_or_failed_gpu_test_fails_the_check():
    ran = {"test": "t::a", "outcome": "passed", "seconds": 0.1, "reason": ""}
    small = {"test": "t::b", "outcome": "skipped", "seconds": 0, "reason": gpu_check.INTERPRETER_SKIP}
    no_gpu = {"test": "t::c", "outcome": "skipped", "seconds": 0, "reason": "needs a CUDA device"}
    broken = {"test": "t::d", "outcome": "failure", "seconds": 0.1, "reason": "assert"}
    assert gpu_check.check_tests([ran, small], dry_run=True) is None
    assert "skipped" in gpu_check.check_tests([ran, small], dry_run=False)  # on a GPU: all run
    assert "skipped" in gpu_check.check_tests([ran, no_gpu], dry_run=True)
    assert "failed" in gpu_check.check_tests([ran, broken], dry_run=False)
    assert gpu_check.check_tests([], dry_run=False) == "no GPU test ran"
    assert gpu_check.check_tests([small], dry_run=True) == "every GPU test was skipped"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_a_gpu_the_real_check_fails_loudly(tmp_path):
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "GPU CHECK FAILED: no usable GPU" in proc.stderr
    assert not list(tmp_path.glob("*.csv"))
