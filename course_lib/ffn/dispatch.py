"""The sparse FFN's tiers in one registry, and the one dispatch every public entry point uses.

Chapter: book/fast/sparse_ffn

``IMPLEMENTATIONS[impl][op]`` is the tier ``impl`` (``ref``, ``cpu_fast``, ``triton``: the
package's tier names, see ``course_lib.tiers``) of the operation ``op``: ``gather_gemv``,
``row_gemv``, ``fused_ffn`` and ``stack_step`` (which prepares a decode step of the FFN stack).
``pick_impl`` says which tier ``impl="auto"`` means. The entry points check their arguments
once, pick the tier and call it; each tier checks only the index range, where its data lie.
"""

from __future__ import annotations

import torch

from ..tiers import check_device, check_impl, enable_interpreter_without_cuda, has_triton
from . import cpu_fast
from .ref import (check_fused_args, check_gemv_args, fused_ffn_ref, fused_ffn_stack_ref,
                  gather_gemv_ref, row_gemv_ref)

enable_interpreter_without_cuda()  # the Triton tier's device check reads it before the import

OPS = ("gather_gemv", "row_gemv", "fused_ffn", "stack_step")


def _ref_stack_step(W1, b1, W2t, activation, eps, **cpu_options):
    """The reference decode step: :func:`ref.fused_ffn_stack_ref` on the given weights."""
    return lambda x, idx: fused_ffn_stack_ref(W1, b1, W2t, x, idx, activation, eps)


def _triton(op: str):
    """The Triton tier's ``op``, its module (and Triton, an optional extra) imported on the first call."""
    def run(*args, **kwargs):
        from . import triton_kernels
        return getattr(triton_kernels, op)(*args, **kwargs)
    run.__name__ = run.__qualname__ = op
    return run


#: tier → operation → function, each on torch tensors
IMPLEMENTATIONS = {
    "ref": {"gather_gemv": gather_gemv_ref, "row_gemv": row_gemv_ref, "fused_ffn": fused_ffn_ref,
            "stack_step": _ref_stack_step},
    "cpu_fast": {"gather_gemv": cpu_fast.gather_gemv, "row_gemv": cpu_fast.row_gemv,
                 "fused_ffn": cpu_fast.fused_ffn, "stack_step": cpu_fast.StackStep},
    "triton": {op: _triton(op) for op in OPS},
}
#: every tier takes and returns torch tensors
TIER_KIND = {"ref": "torch", "cpu_fast": "torch", "triton": "torch"}


def pick_impl(W: torch.Tensor) -> str:
    """The tier ``"auto"`` uses for weights ``W``: ``cpu_fast`` on the CPU; on CUDA ``triton``
    where Triton is installed, else ``ref`` (torch on the GPU)."""
    if not W.is_cuda:
        return "cpu_fast"
    return "triton" if has_triton() else "ref"


def resolve_impl(impl: str, W: torch.Tensor) -> str:
    """The tier ``impl`` names (``pick_impl(W)`` for ``"auto"``), checked to exist and to run on
    ``W``'s device."""
    if impl == "auto":
        impl = pick_impl(W)
    check_impl(impl, IMPLEMENTATIONS)
    check_device(impl, TIER_KIND[impl], W.device.type)
    return impl


def tier(op: str, impl: str, W: torch.Tensor):
    """The function of tier ``impl`` (see :func:`resolve_impl`) for the operation ``op``."""
    return IMPLEMENTATIONS[resolve_impl(impl, W)][op]


def gather_gemv(Wt: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, *,
                impl: str = "auto") -> torch.Tensor:
    """``y = Σ_p v[idx[p]] · Wt[idx[p]]`` reading only the listed rows of ``Wt``, never copying them.

    ``Wt`` is ``(d_ff, d_model)`` (the transposed down-projection), ``v`` the ``d_ff`` hidden
    vector, ``idx`` the active neurons (int32/int64; a repeated index counts twice).
    """
    check_gemv_args("gather_gemv", Wt, v, idx, Wt.shape[0])
    return tier("gather_gemv", impl, Wt)(Wt, v, idx)


def row_gemv(W: torch.Tensor, x: torch.Tensor, idx: torch.Tensor, *,
             impl: str = "auto") -> torch.Tensor:
    """``h[p] = W[idx[p]] · x`` reading only the listed rows of ``W`` (``(d_ff, d_model)``)."""
    check_gemv_args("row_gemv", W, x, idx, W.shape[1])
    return tier("row_gemv", impl, W)(W, x, idx)


def fused_ffn(W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor, x: torch.Tensor,
              idx: torch.Tensor, activation: str = "relu", *, impl: str = "auto") -> torch.Tensor:
    """``y = Σ_p act(W1[idx[p]] · x + b1[idx[p]]) · W2t[idx[p]]``: an FFN (without ``b2``) on the
    active neurons ``idx`` in **one pass**: each active neuron's W1 row, its activation and its
    W2t row, the hidden values kept in registers, neither weight matrix copied.

    ``W1`` is ``(d_ff, d_model)``, ``b1`` ``(d_ff,)``, ``W2t = W2ᵀ`` ``(d_ff, d_out)``, ``x``
    ``(d_model,)``, ``activation`` ``"relu"`` or ``"gelu"``. One call instead of
    :func:`row_gemv` then :func:`gather_gemv` halves the fixed costs per layer.
    """
    check_fused_args("fused_ffn", W1, b1, W2t, x, idx, activation)
    return tier("fused_ffn", impl, W1)(W1, b1, W2t, x, idx, activation)
