"""Benchmark harness: careful timing, the machine's measured bandwidth, and the suites' CLI.

Rules every number in the course follows:

* warm-up runs first (JIT compilation, caches, thread pools), then ``repeats`` timed runs;
* **fresh inputs per run**: ``make_inputs()`` is called before every run, outside the timed
  region, so a result left in cache by the previous run cannot flatter the next one;
* report the **median** (and the inter-quartile range), as a ratio against a baseline measured
  in the same run, next to the physical bound (bytes moved / measured bandwidth).
* on a shared host, pair each run with a bandwidth probe (:func:`measure_with_bandwidth`) and
  time the cases of a table interleaved (:func:`measure_interleaved`).

Every suite shares one command line, one metadata schema and one file name
(:func:`suite_arguments`, :func:`run_metadata`, :func:`csv_name`):
``python -m course_lib.bench SUITE [--quick] [--device cpu|cuda] [--out DIR]`` writes
``DIR/<suite>_<device>[_quick].csv`` (the CLI and its registry of suites: ``bench/__main__.py``,
which imports the suites; they import this module, never the CLI).

Chapters: book/fast/spmm_cpu, book/fast/sparse_ffn (and every chapter that times something).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and quartiles over ``repeats`` timed runs."""

    median: float
    q1: float
    q3: float
    repeats: int

    @classmethod
    def of(cls, times: Sequence[float]) -> "Timing":
        q1, med, q3 = np.percentile(times, [25, 50, 75])
        return cls(float(med), float(q1), float(q3), len(times))

    def __str__(self) -> str:
        return f"{self.median * 1e3:.3f} ms (IQR {self.q1 * 1e3:.3f}–{self.q3 * 1e3:.3f}, n={self.repeats})"


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def _timed(fn: Callable, args: Sequence, device: str) -> float:
    """Seconds of one call ``fn(*args)`` (CUDA work synchronized inside the timing)."""
    _synchronize(device)
    t0 = time.perf_counter()
    fn(*args)
    _synchronize(device)
    return time.perf_counter() - t0


def measure(fn: Callable, make_inputs: Callable[[], Sequence] | None = None, repeats: int = 20,
            warmup: int = 3, device: str = "cpu") -> Timing:
    """Time ``fn(*make_inputs())``: ``warmup`` untimed calls, then ``repeats`` timed calls, each
    on inputs made fresh (untimed) just before it. CUDA work is synchronized inside the timing."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    make_inputs = make_inputs or (lambda: ())
    times = []
    for i in range(warmup + repeats):
        t = _timed(fn, make_inputs(), device)
        if i >= warmup:
            times.append(t)
    return Timing.of(times)


def read_probes(nbytes: int, device: str) -> list[Callable]:
    """Two streaming reads of ``nbytes`` on all of torch's threads: ``x.sum()`` and ``M @ v``."""
    import torch
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    M = x[: x.numel() // 4096 * 4096].view(4096, -1)
    v = torch.ones(M.shape[1], dtype=torch.float32, device=device)
    return [lambda: x.sum(), lambda: torch.mv(M, v)]


def memory_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 10, device: str = "cpu") -> float:
    """Measured read bandwidth in GB/s (1e9 B/s) of a buffer far larger than the caches.

    Takes the faster of two streaming reads, each the median of ``repeats`` runs on all of
    torch's threads: a reduction ``x.sum()`` and a matrix-vector product ``M @ v`` (what a
    batch-1 decode layer does). A single probe can under-read (a reduction may be limited by
    its own arithmetic), and a bound must not be lower than what a real kernel achieves.
    """
    best = min(measure(probe, repeats=repeats, warmup=2, device=device).median
               for probe in read_probes(nbytes, device))
    return nbytes / best / 1e9


@dataclass(frozen=True)
class BandwidthRun:
    """A kernel's runs, each followed by the bandwidth probes: the kernel's share of the bound."""

    times: tuple[float, ...]         # seconds of each timed kernel run
    bandwidths: tuple[float, ...]    # GB/s probed right after each of them (the faster probe)
    work_bytes: int                  # bytes one kernel call must read

    @property
    def timing(self) -> Timing:
        """Median and quartiles of :attr:`times`."""
        return Timing.of(self.times)

    @property
    def bandwidth_GBs(self) -> float:
        """Median of the probed bandwidths."""
        return float(np.median(self.bandwidths))

    @property
    def share(self) -> float:
        """Median over runs of ``(work_bytes / t_i) / bandwidth_i``: each run against its own probe."""
        return self.share_beyond(0.0)

    def share_beyond(self, fixed: float) -> float:
        """:attr:`share` of the time beyond a fixed cost per call of ``fixed`` seconds (measured
        separately, e.g. a call that reads nothing): how fast the kernel streams once it runs.
        A run no longer than ``fixed`` counts as infinitely fast (its payload is within the noise
        of the fixed cost), so a median of ``inf`` says: too little work to tell."""
        return float(np.median([self.work_bytes / (t - fixed) / 1e9 / bw if t > fixed else np.inf
                                for t, bw in zip(self.times, self.bandwidths)]))


def measure_with_bandwidth(fn: Callable, make_inputs: Callable[[], Sequence] | None = None,
                           repeats: int = 20, warmup: int = 3, device: str = "cpu",
                           nbytes: int = 512 * 2**20, work_bytes: int = 0) -> BandwidthRun:
    """:func:`measure` ``fn``, with the bandwidth probes of :func:`memory_bandwidth` timed right
    after each of its runs; ``work_bytes`` is what one call of ``fn`` must read.

    On a shared host the bandwidth a VM gets drifts (measured here: 26 to 62 GB/s, switching
    within seconds), so a kernel's share of the bound is only meaningful against a bound measured
    next to it: :attr:`BandwidthRun.share` pairs every run with the probe that follows it.
    """
    return measure_interleaved({None: (fn, make_inputs, work_bytes)}, repeats, warmup, device,
                               nbytes)[None]


def measure_interleaved(cases: dict, repeats: int = 20, warmup: int = 3, device: str = "cpu",
                        nbytes: int = 512 * 2**20, seed: int = 0,
                        case_repeats: dict | None = None) -> dict:
    """:func:`measure_with_bandwidth` for several cases at once, **interleaved**: ``cases`` maps
    a key to ``(fn, make_inputs or None, work_bytes)``; each round runs every case once (each run
    followed by the probes), in an order shuffled per round (seeded); returns a
    :class:`BandwidthRun` per key.

    A shared host has slow stretches of seconds (another job on the cores, a bandwidth level
    switch). Timed one after the other, the cases of a table meet different stretches and a
    single row can land in a slow one; interleaved, every case samples the whole measurement
    time, and the medians compare like with like.

    ``case_repeats`` gives some keys fewer timed runs than ``repeats`` (a slow case that would
    take minutes): such a case sits out the last rounds.
    """
    reps = {key: repeats for key in cases} | (case_repeats or {})
    if min(reps.values(), default=1) < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {reps}, {warmup}")
    probes = read_probes(nbytes, device)
    order = np.random.default_rng(seed)
    keys = list(cases)
    times: dict = {key: [] for key in keys}
    bandwidths: dict = {key: [] for key in keys}
    for i in range(warmup + max(reps.values(), default=0)):
        for k in order.permutation(len(keys)):
            if i >= warmup + reps[keys[k]]:
                continue
            fn, make_inputs, _ = cases[keys[k]]
            t = _timed(fn, make_inputs() if make_inputs else (), device)  # inputs made untimed
            best = min(_timed(probe, (), device) for probe in probes)
            if i >= warmup:
                times[keys[k]].append(t)
                bandwidths[keys[k]].append(nbytes / best / 1e9)
    return {key: BandwidthRun(tuple(times[key]), tuple(bandwidths[key]), cases[key][2])
            for key in keys}


def machine_info(device: str = "cpu") -> dict:
    """What a reader needs to interpret a number: CPU/GPU, cores, threads, library versions, date."""
    import scipy
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "date": _dt.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "numpy": np.__version__, "scipy": scipy.__version__, "torch": torch.__version__,
        "triton": _version("triton"), "numba": _version("numba"), "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_driver"] = _nvidia_driver()
        info["cuda"] = torch.version.cuda
    return info


def _version(package: str) -> str:
    """An installed package's version, read without importing it."""
    from importlib import metadata
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _nvidia_driver() -> str:
    """The NVIDIA driver's version, as ``nvidia-smi`` reports it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi failed)"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def copy_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 10, device: str = "cpu") -> float:
    """Measured copy bandwidth in GB/s: bytes read plus bytes written per second by a copy
    kernel (``dst.copy_(src)``, ``nbytes`` each), median of ``repeats`` runs.

    A GPU's bound is usually quoted this way (STREAM's copy); a kernel that only reads may get
    somewhat more than half of it in reads, so report it next to :func:`memory_bandwidth`.
    """
    import torch
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), repeats=repeats, warmup=2, device=device).median
    return 2 * src.numel() * 4 / t / 1e9


# ---- the command line, metadata and file names every suite shares ----------------------------

DEVICES = ("cpu", "cuda")
#: ``--quick``/``--tiny`` pick a suite's sizes; tiny sizes test the pipeline, not the machine
SIZES = ("full", "quick", "tiny")


def suite_arguments(suite: str, description: str) -> argparse.ArgumentParser:
    """The command line of ``python -m course_lib.bench SUITE``: the same options for every suite."""
    p = argparse.ArgumentParser(prog=f"python -m course_lib.bench {suite}", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, few repeats (about a minute)")
    size.add_argument("--tiny", action="store_true",
                      help="toy sizes that test the pipeline in seconds (the numbers mean nothing)")
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--interpret", action="store_true",
                   help="with --device cpu: run the CUDA suite's Triton tiers on the CPU through "
                        "the Triton interpreter (TRITON_INTERPRET=1), as tools/gpu_check.sh "
                        "--dry-run does; use with --tiny")
    p.add_argument("--out", type=Path, default=Path("bench_out"),
                   help="directory for <suite>_<device>[_interpret][_<size>].csv (default bench_out)")
    return p


def parse_suite_args(suite: str, description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse a suite's command line (:func:`suite_arguments`); adds ``size``, ``suite`` and
    ``command`` (the line as typed, recorded with the results). Exits with status 2 when
    ``--device cuda`` finds no CUDA device or ``--interpret`` finds no interpreter."""
    import torch
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = suite_arguments(suite, description)
    args = parser.parse_args(argv)
    args.suite = suite
    args.size = "quick" if args.quick else "tiny" if args.tiny else "full"
    args.command = shlex.join(["python", "-m", "course_lib.bench", suite, *argv])
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "--device cuda: no CUDA device is available on this machine\n")
    if args.interpret and (args.device != "cpu" or os.environ.get("TRITON_INTERPRET") != "1"):
        parser.exit(2, "--interpret runs Triton on the CPU: it needs --device cpu and "
                       "TRITON_INTERPRET=1 in the environment\n")
    return args


def csv_name(args: argparse.Namespace) -> str:
    """The one file-naming rule: ``<suite>_<device>[_interpret][_<size>].csv`` (no size: full)."""
    parts = [args.suite, args.device] + (["interpret"] if args.interpret else [])
    return "_".join(parts + ([] if args.size == "full" else [args.size])) + ".csv"


def run_metadata(args: argparse.Namespace, bandwidth_GBs: float, load_at_start: float) -> dict:
    """The metadata every suite's CSV carries: :func:`machine_info`, then the suite and size,
    the read bandwidth measured at the start (``bandwidth_GBs``), the 1-minute load average at
    the start and now (other jobs sharing the cores), the runtime switches that change timings
    (``OMP_WAIT_POLICY``, numba's threads, ``TRITON_INTERPRET``) and the command."""
    import numba
    return {**machine_info(args.device), "suite": args.suite, "size": args.size,
            "bandwidth_GBs": f"{bandwidth_GBs:.2f}",
            "load_average_1min_start": f"{load_at_start:.2f}",
            "load_average_1min_end": f"{os.getloadavg()[0]:.2f}",
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
            "numba_threads": numba.get_num_threads(),
            "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
            "command": args.command}


def write_csv(rows: list[dict], path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write rows (dicts with the same keys) to CSV; ``meta`` goes into ``# key: value`` lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        for k, v in (meta or {}).items():
            f.write(f"# {k}: {v}\n")
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """Rows (numbers converted to float where possible) and the ``# key: value`` metadata."""
    meta, lines = {}, []
    with open(path) as f:
        for line in f:
            if line.startswith("# "):
                k, _, v = line[2:].partition(":")
                meta[k.strip()] = v.strip()
            else:
                lines.append(line)

    def num(v):
        try:
            return float(v)
        except ValueError:
            return v
    return [{k: num(v) for k, v in row.items()} for row in csv.DictReader(lines)], meta


__all__ = ["Timing", "BandwidthRun", "measure", "measure_with_bandwidth", "measure_interleaved",
           "memory_bandwidth", "read_probes", "copy_bandwidth", "machine_info", "write_csv", "read_csv",
           "DEVICES", "SIZES", "suite_arguments", "parse_suite_args", "csv_name", "run_metadata"]
