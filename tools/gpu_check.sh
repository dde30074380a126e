#!/usr/bin/env bash
# The GPU check of issue 21: the GPU-marked tests, the bandwidth probe and the spmm and ffn
# benchmarks on one GPU, within 8 minutes, CSVs into book/fast/data/gpu/ (see tools/gpu_check.py).
#
#   bash tools/gpu_check.sh             install (make's venv), then run everything on the GPU
#   bash tools/gpu_check.sh --dry-run   the same steps on the CPU, Triton interpreter, tiny sizes
#   bash tools/gpu_check.sh --quick     the suites' --quick sizes (if the full ones do not fit)
#
# Environment: by default the Makefile's install step builds .venv from requirements.txt (pip
# then needs the package index). On a machine that cannot reach it but has a Python with torch
# (CUDA build), triton, numba, scipy, scikit-learn and pytest, name that Python instead:
#   GPU_CHECK_PYTHON=python3 bash tools/gpu_check.sh
# It then runs from this checkout (PYTHONPATH), installing nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
  PY="$GPU_CHECK_PYTHON"
  echo "gpu_check: using $PY as it is (GPU_CHECK_PYTHON), nothing installed"
else
  make --no-print-directory .venv/.installed
  PY=.venv/bin/python
fi
"$PY" -c "import torch, numba, scipy, pytest" || {
  echo "*** GPU CHECK FAILED: $PY lacks torch, numba, scipy or pytest" >&2; exit 1; }
exec "$PY" tools/gpu_check.py "$@"
