"""``python -m course_lib.bench SUITE [--quick|--tiny] [--device cpu|cuda] [--out DIR]``.

The registry of suites. It sits above them: this module imports the suite asked for, the suites
import the harness (``course_lib.bench``), and nothing imports this module, so the import graph
has no cycle. A suite is a module with ``main(argv) -> int`` that parses its arguments with
``bench.parse_suite_args`` and writes ``bench.csv_name(args)`` with ``bench.run_metadata(...)``.

Chapters: book/fast/spmm_cpu, book/fast/spmm_gpu, book/fast/sparse_ffn, book/fast/llm_sparsity.
"""

from __future__ import annotations

import importlib
import os
import sys

#: suite → (module, environment it needs before torch and numba load)
SUITES = {
    # Idle OpenMP threads (torch/MKL) sleep instead of spinning. On a machine shared with other
    # jobs, spinning threads steal the cores the working threads need and a parallel loop then
    # waits a scheduler time slice for its last thread: measured on the book's build machine,
    # 4–8× slower multi-threaded sparse kernels at load average 8. The value in effect is recorded
    # in the CSV (``omp_wait_policy``).
    "spmm": ("course_lib.bench_spmm", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "ffn": ("course_lib.bench_ffn", {}),
    "bandwidth": ("course_lib.bench_bandwidth", {}),
    "decode": ("course_lib.lm_decode", {}),
}


def main(argv: list[str] | None = None) -> int:
    """Run one suite with the rest of the command line; 2 (and the usage) for an unknown suite."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUITES:
        print(f"usage: python -m course_lib.bench {{{','.join(SUITES)}}} [--quick|--tiny] "
              "[--device cpu|cuda] [--interpret] [--out DIR]", file=sys.stderr)
        return 2
    module, environment = SUITES[argv[0]]
    if "torch" not in sys.modules:  # only where the OpenMP runtimes have not loaded yet
        for key, value in environment.items():
            os.environ.setdefault(key, value)
    return importlib.import_module(module).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
