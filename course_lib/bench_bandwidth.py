"""The ``bandwidth`` benchmark suite: the memory bound every other suite is compared with.

``python -m course_lib.bench bandwidth [--quick|--tiny] [--device cpu|cuda] [--out DIR]``

Three streaming kernels over a buffer far larger than the caches, each the median of
``repeats`` runs: the two read probes of ``bench.memory_bandwidth`` (``x.sum()`` and ``M @ v``,
GB/s of bytes read) and a copy kernel (``dst.copy_(src)``, GB/s of bytes read plus written,
``bench.copy_bandwidth``). ``GBs`` is each kernel's rate; the bound the other suites use is the
faster read probe.

Chapters: book/fast/spmm_gpu, book/fast/sparse_ffn.
"""

from __future__ import annotations

import os

from . import bench

#: buffer bytes and timed runs per size (a GPU's HBM needs ≥ 1 GiB to hide its L2 of ~50 MiB)
SIZES = {"full": dict(nbytes=2 * 2**30, repeats=20), "quick": dict(nbytes=512 * 2**20, repeats=10),
         "tiny": dict(nbytes=16 * 2**20, repeats=3)}


def run(nbytes: int, repeats: int, device: str = "cpu") -> list[dict]:
    """One row per probe: ``probe``, ``nbytes`` (buffer size), ``median_s`` and ``GBs``."""
    import torch
    rows = []
    for name, probe in zip(("read_sum", "read_mv"), bench.read_probes(nbytes, device)):
        t = bench.measure(probe, repeats=repeats, warmup=2, device=device).median
        rows.append(dict(probe=name, nbytes=nbytes, median_s=t, GBs=nbytes / t / 1e9))
    gbs = bench.copy_bandwidth(nbytes, repeats=repeats, device=device)
    rows.append(dict(probe="copy", nbytes=2 * nbytes, median_s=2 * nbytes / gbs / 1e9, GBs=gbs))
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    args = bench.parse_suite_args("bandwidth", __doc__, argv)
    load_at_start = os.getloadavg()[0]
    rows = run(**SIZES[args.size], device=args.device)
    read = max(r["GBs"] for r in rows if r["probe"].startswith("read"))
    for r in rows:
        print(f"{r['probe']:>9}: {r['GBs']:8.1f} GB/s ({r['nbytes'] / 2**20:.0f} MiB in "
              f"{r['median_s'] * 1e3:.3f} ms)")
    path = bench.write_csv(rows, args.out / bench.csv_name(args),
                           bench.run_metadata(args, read, load_at_start))
    print("wrote", path)
    return 0
