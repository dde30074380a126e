"""Benchmark harness: careful timing, the machine's measured bandwidth, and the suites' CLI.

Rules every number in the course follows:

* warm-up runs first (JIT compilation, caches, thread pools), then ``repeats`` timed runs;
* **fresh inputs per run**: ``make_inputs()`` is called before every run, outside the timed
  region, so a result left in cache by the previous run cannot flatter the next one;
* report the **median** (and the inter-quartile range), as a ratio against a baseline measured
  in the same run, next to the physical bound (bytes moved / measured bandwidth).
* on a shared host, pair each run with a bandwidth probe (:func:`measure_with_bandwidth`) and
  time the cases of a table interleaved (:func:`measure_interleaved`).

CLI: ``python -m course_lib.bench SUITE [options]`` runs ``course_lib.bench_<SUITE>.main``
(suites: ``spmm``, ``ffn``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

SUITES = ("spmm", "ffn")


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


def _bandwidth_probes(nbytes: int, device: str) -> list[Callable]:
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
               for probe in _bandwidth_probes(nbytes, device))
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
                        nbytes: int = 512 * 2**20, seed: int = 0) -> dict:
    """:func:`measure_with_bandwidth` for several cases at once, **interleaved**: ``cases`` maps
    a key to ``(fn, make_inputs or None, work_bytes)``; each round runs every case once (each run
    followed by the probes), in an order shuffled per round (seeded); returns a
    :class:`BandwidthRun` per key.

    A shared host has slow stretches of seconds (another job on the cores, a bandwidth level
    switch). Timed one after the other, the cases of a table meet different stretches and a
    single row can land in a slow one; interleaved, every case samples the whole measurement
    time, and the medians compare like with like.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    probes = _bandwidth_probes(nbytes, device)
    order = np.random.default_rng(seed)
    keys = list(cases)
    times: dict = {key: [] for key in keys}
    bandwidths: dict = {key: [] for key in keys}
    for i in range(warmup + repeats):
        for k in order.permutation(len(keys)):
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
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUITES:
        print(f"usage: python -m course_lib.bench {{{','.join(SUITES)}}} [--quick] [--device cpu|cuda] "
              "[--out DIR]", file=sys.stderr)
        return 2
    suite = importlib.import_module(f"course_lib.bench_{argv[0]}")
    return suite.main(argv[1:]) or 0


__all__ = ["Timing", "BandwidthRun", "measure", "measure_with_bandwidth", "measure_interleaved",
           "memory_bandwidth", "machine_info", "write_csv", "read_csv"]

if __name__ == "__main__":
    sys.exit(main())
