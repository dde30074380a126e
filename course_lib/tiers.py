"""The tier vocabulary every kernel module shares: one keyword, ``impl``, and one set of names.

Chapter: book/fast/spmm_cpu, book/fast/spmm_gpu, book/fast/sparse_ffn

A kernel module implements its operation in tiers, from the formula to a GPU kernel, lists them
in ``IMPLEMENTATIONS`` (name → function), the array kind each takes in ``TIER_KIND``, and says
which one ``impl="auto"`` means in ``pick_impl``. The names, used by every module:

- ``ref``      the reference: reads like the formula, the oracle of every other tier;
- ``numpy``    vectorized NumPy (no Python loop over the nonzeros);
- ``torch``    vectorized torch (CPU and CUDA tensors);
- ``cpu_fast`` our multi-core CPU kernel (numba, run by ``numba_team.TEAM``);
- ``triton``   a Triton kernel: native on CUDA, interpreted on the CPU (``TRITON_INTERPRET=1``).

A module implements a subset of them (``spmm`` all five, ``ffn`` ``ref``, ``cpu_fast`` and
``triton``). Triton is an optional dependency (the ``gpu`` extra): a module's Triton kernels live
in a module of their own (``spmm.triton_kernels``, ``ffn.triton_kernels``) that the kernel module imports
when a Triton tier is first asked for, so ``import course_lib.<module>`` works without Triton;
:func:`import_triton` then raises an ImportError that names the extra.
"""

from __future__ import annotations

import importlib
import os

import torch

TIERS = ("ref", "numpy", "torch", "cpu_fast", "triton")


def enable_interpreter_without_cuda() -> None:
    """Set ``TRITON_INTERPRET=1`` when no CUDA device exists, unless the user chose a value.

    Triton reads the variable when a ``@triton.jit`` decorator runs, so this must happen before
    any kernel module is imported (the kernel modules call it at import)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def import_triton():
    """The ``triton`` package, or an ImportError that names the extra that installs it."""
    enable_interpreter_without_cuda()
    try:
        return importlib.import_module("triton")
    except ImportError as err:
        raise ImportError("the 'triton' tier needs the triton package, which is not installed: "
                          "pip install 'course_lib[gpu]' (or pick another impl, e.g. 'auto')") from err


def has_triton() -> bool:
    """Whether the ``triton`` package can be imported (``pick_impl`` falls back without it)."""
    try:
        import_triton()
    except ImportError:
        return False
    return True


def check_impl(impl: str, implementations) -> None:
    """ValueError unless ``impl`` names one of a module's tiers (``"auto"`` resolved before)."""
    if impl not in implementations:
        raise ValueError(f"unknown impl {impl!r}; choose one of {['auto', *implementations]}")


def check_device(impl: str, kind: str, device: str) -> None:
    """ValueError unless tier ``impl`` (taking arrays of ``kind``) runs on operands on ``device``.

    NumPy-kind tiers and ``cpu_fast`` run on the CPU; native Triton needs a CUDA device (on the
    CPU it runs only under the interpreter, which is off when a CUDA device exists)."""
    on_cpu = device == "cpu"
    if (kind == "numpy" or impl == "cpu_fast") and not on_cpu:
        raise ValueError(f"device mismatch: impl {impl!r} runs on the CPU, the operands are on {device}")
    if impl == "triton" and on_cpu and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("device mismatch: impl 'triton' needs operands on a CUDA device here "
                         "(a CUDA device exists, so the CPU interpreter is off)")
