"""The GPU check (issue 21): every GPU test and benchmark of the course in one run, on one GPU.

Run through ``tools/gpu_check.sh`` (which installs the environment first) or directly with a
Python that has torch, triton, numba, scipy and pytest:

    python tools/gpu_check.py [--dry-run] [--quick] [--out DIR] [--budget-s 480]

Steps, each in its own process with its own time limit, all run even when one fails:

1. the GPU-marked tests (``tests/test_gpu.py``: every Triton kernel against its CPU oracle, tiny
   to realistic sizes, fp32/bf16), which must all run: a skipped test fails the check;
2. ``python -m course_lib.bench bandwidth --device cuda``: two read probes and a copy kernel,
   the memory bound the other suites are compared with;
3. ``python -m course_lib.bench spmm --device cuda``: the Triton SpMM against torch.sparse
   (cuSPARSE) and dense torch.mm (cuBLAS), measured in the same rounds;
4. ``python -m course_lib.bench ffn --device cuda``: the Triton sparse-FFN kernels against dense
   torch.mv, each call paired with the bandwidth probes.

CSVs (with the GPU's name, driver, torch and triton versions in their metadata) go to ``--out``
(default ``book/fast/data/gpu``), with ``gpu_tests.csv`` (one row per test) and
``gpu_check.csv`` (one row per step: status, seconds). A summary against the issue's targets is
printed at the end. The exit status is 0 only if every step passed within the budget.

``--dry-run`` runs the same steps on the CPU under the Triton interpreter (``TRITON_INTERPRET=1``)
at tiny sizes and writes to a temporary folder: it tests this script, not a GPU.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the reason test_gpu.py gives for the realistic sizes it leaves out under the interpreter
INTERPRETER_SKIP = "interpreter: tiny sizes only"
#: the issue's targets: Triton CSR SpMM time ≤ 1.2 × cuSPARSE's at 1–5 % density; the sparse
#: FFN at ≥ 70 % of the measured bandwidth bound at 10–50 % density
SPMM_TARGET, SPMM_DENSITIES = 1.2, (0.01, 0.02, 0.05)
FFN_TARGET, FFN_DENSITIES = 0.70, (0.1, 0.25, 0.5)


def _fail(message: str) -> None:
    print(f"\n*** GPU CHECK FAILED: {message}", file=sys.stderr, flush=True)


def run_step(name: str, command: list[str], timeout_s: float, env: dict) -> dict:
    """Run one step in its own process, its output streamed; a row of gpu_check.csv."""
    print(f"\n=== {name}: {' '.join(command)} (limit {timeout_s:.0f} s)", flush=True)
    start = time.monotonic()
    try:
        rc = subprocess.run(command, cwd=ROOT, env=env, timeout=timeout_s).returncode
        status = "passed" if rc == 0 else f"failed (exit status {rc})"
    except subprocess.TimeoutExpired:
        status = f"failed (over its {timeout_s:.0f} s limit)"
    seconds = time.monotonic() - start
    print(f"=== {name}: {status} in {seconds:.1f} s", flush=True)
    if status != "passed":
        _fail(f"step '{name}' {status}")
    return {"step": name, "status": status, "seconds": round(seconds, 1)}


def test_results(junit: Path) -> list[dict]:
    """One row per test case of a JUnit XML report: name, outcome, seconds, skip reason."""
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, reason = child.tag, child.get("message", "")
        rows.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                     "seconds": float(case.get("time", 0)), "reason": reason})
    return rows


def check_tests(rows: list[dict], dry_run: bool) -> str | None:
    """Why the GPU tests' outcome fails the check, or None: nothing may fail, nothing may be
    skipped (on the interpreter only the realistic sizes, for the reason test_gpu.py gives)."""
    if not rows:
        return "no GPU test ran"
    bad = [r["test"] for r in rows if r["outcome"] in ("failure", "error")]
    if bad:
        return f"{len(bad)} GPU test(s) failed: {', '.join(bad[:5])}"
    skipped = [r for r in rows if r["outcome"] == "skipped"
               and not (dry_run and INTERPRETER_SKIP in r["reason"])]
    if skipped:
        return (f"{len(skipped)} GPU test(s) were skipped, e.g. {skipped[0]['test']} "
                f"({skipped[0]['reason']}): a GPU check must run them all")
    if all(r["outcome"] == "skipped" for r in rows):
        return "every GPU test was skipped"
    return None


def write_rows(rows: list[dict], path: Path) -> None:
    if rows:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def _read(out: Path, stem: str):
    """The rows and metadata of a suite's CSV in ``out``, or None if it was not written."""
    sys.path.insert(0, str(ROOT))
    from course_lib import bench
    paths = sorted(out.glob(f"{stem}*.csv"))
    return bench.read_csv(paths[0]) if paths else None


def summary(out: Path) -> list[str]:
    """Short lines on the measured numbers against the issue's targets."""
    lines = []
    bandwidth = _read(out, "bandwidth_")
    if bandwidth:
        rows, meta = bandwidth
        lines.append(f"device: {meta.get('gpu', meta['cpu'])}, driver {meta.get('gpu_driver', '-')}, "
                     f"torch {meta['torch']}, triton {meta['triton']}")
        lines.append("bandwidth: " + ", ".join(f"{r['probe']} {r['GBs']:.0f} GB/s" for r in rows))
    spmm = _read(out, "spmm_")
    if spmm:
        rows, _ = spmm
        shape = (int(rows[0]["m"]), int(rows[0]["k"]), int(rows[0]["n"]))
        at = {(r["method"], r["density"]): r for r in rows
              if (r["m"], r["k"], r["n"]) == shape}
        for density in sorted({d for _, d in at}):
            t = {m: at[m, d]["median_s"] for m, d in at if d == density}
            if "triton" in t and "torch_sparse" in t:
                ratio = t["triton"] / t["torch_sparse"]
                mark = ("" if density not in SPMM_DENSITIES else
                        "  target met" if ratio <= SPMM_TARGET else
                        f"  target {SPMM_TARGET}x missed by {ratio / SPMM_TARGET - 1:.0%}")
                lines.append(f"spmm {shape[0]}x{shape[1]}x{shape[2]} at {density:.1%}: triton "
                             f"{t['triton'] * 1e3:.3f} ms = {ratio:.2f}x torch.sparse, "
                             f"{t['triton'] / t['dense']:.2f}x dense{mark}")
    ffn = _read(out, "ffn_")
    if ffn:
        rows, _ = ffn
        for r in rows:
            if r["op"] == "ffn" and r["density"] < 1:
                mark = ("" if r["density"] not in FFN_DENSITIES else
                        "  target met" if r["share_of_bound"] >= FFN_TARGET else
                        f"  target {FFN_TARGET:.0%} missed by {FFN_TARGET - r['share_of_bound']:.0%} points")
                stack = r["stack_share"]
                lines.append(f"ffn {r['dtype']} at {r['density']:.0%}: {r['share_of_bound']:.0%} of "
                             f"the bound per call, {r['loop_share']:.0%} in a decode pass"
                             + ("" if math.isnan(stack) else f", {stack:.0%} as one step") + mark)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="the same steps on the CPU under the Triton interpreter, tiny sizes, "
                        "into a temporary folder")
    p.add_argument("--quick", action="store_true", help="the suites' --quick sizes")
    p.add_argument("--out", type=Path, help="where the CSVs go (default book/fast/data/gpu; "
                                            "--dry-run: a new temporary folder)")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="the whole check's time limit in seconds (default 8 minutes)")
    args = p.parse_args(argv)
    start = time.monotonic()
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu_check_")) if args.dry_run
                       else ROOT / "book" / "fast" / "data" / "gpu")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if args.dry_run:
        env |= {"TRITON_INTERPRET": "1", "COURSE_GPU_TESTS": "interpret"}
        device = ["--device", "cpu", "--interpret"]
        size = ["--tiny"]
    else:
        env.pop("COURSE_GPU_TESTS", None)
        env.pop("TRITON_INTERPRET", None)
        device = ["--device", "cuda"]
        size = ["--quick"] if args.quick else []
        probe = subprocess.run([sys.executable, "-c", "import torch, triton; "
                                "assert torch.cuda.is_available(), 'torch sees no CUDA device'; "
                                "print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)"],
                               env=env, capture_output=True, text=True)
        if probe.returncode != 0:
            _fail("no usable GPU: " + (probe.stderr.strip().splitlines() or ["?"])[-1])
            return 1
        print("GPU:", probe.stdout.strip())
    print(f"writing to {out}", flush=True)
    py = sys.executable
    # (step, command, share of the budget kept for it): a step may use what the steps before it
    # left, minus what is kept for the steps after it
    steps = [
        ("gpu tests", [py, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-rs",
                       "-p", "no:cacheprovider", "--noconftest",
                       f"--junitxml={out / 'gpu_tests.xml'}"], 0.25),
        ("bandwidth", [py, "-m", "course_lib.bench", "bandwidth", *device, *size, "--out", str(out)],
         0.05),
        ("spmm", [py, "-m", "course_lib.bench", "spmm", *device, *size, "--out", str(out)], 0.25),
        ("ffn", [py, "-m", "course_lib.bench", "ffn", *device, *size, "--out", str(out)], 0.25),
    ]
    report = []
    for i, (name, command, _) in enumerate(steps):
        kept = sum(share for *_, share in steps[i + 1:]) * args.budget_s
        limit = max(steps[i][2] * args.budget_s, args.budget_s - (time.monotonic() - start) - kept)
        report.append(run_step(name, command, limit, env))
        if name == "gpu tests" and (out / "gpu_tests.xml").exists():
            tests = test_results(out / "gpu_tests.xml")
            write_rows(tests, out / "gpu_tests.csv")
            (out / "gpu_tests.xml").unlink()
            why = check_tests(tests, args.dry_run)
            if why:
                _fail(why)
                report[-1]["status"] = "failed: " + why
            print(f"gpu tests: {sum(r['outcome'] == 'passed' for r in tests)} passed, "
                  f"{sum(r['outcome'] == 'skipped' for r in tests)} skipped, "
                  f"{sum(r['outcome'] in ('failure', 'error') for r in tests)} failed")
    total = time.monotonic() - start
    if total > args.budget_s:
        _fail(f"the check took {total:.0f} s, over its {args.budget_s:.0f} s budget (try --quick)")
        report.append({"step": "budget", "status": f"failed ({total:.0f} s)", "seconds": round(total, 1)})
    write_rows(report, out / "gpu_check.csv")
    print("\n=== summary" + (" (dry run: interpreter on the CPU, tiny sizes; the numbers mean "
                               "nothing)" if args.dry_run else ""))
    for line in summary(out):
        print("  " + line)
    failed = [r["step"] for r in report if r["status"] != "passed"]
    print(f"\n{len(report) - len(failed)} of {len(report)} steps passed in {total:.0f} s; "
          f"files in {out}")
    if failed:
        _fail("failed steps: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
