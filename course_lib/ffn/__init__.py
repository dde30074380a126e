"""Sparse FFN decode: skip the weights of inactive neurons (batch 1, memory bound).

Chapter: book/fast/sparse_ffn, book/fast/transformer, book/interview/system_design

A transformer FFN computes ``y = W2 · act(W1 · x + b1) + b2`` with ``W1: (d_ff, d_model)`` and
``W2: (d_model, d_ff)``. At batch 1 every weight byte is read once per token, so time ≈ bytes /
bandwidth. If only the neurons in ``S`` are active, ``y = Σ_{j∈S} h_j · W2[:, j] + b2`` reads only
``|S|/d_ff`` of W2: the kernel speed-up is bounded by ``1/density``.

Layout: W2 is stored **transposed** (``W2t = W2ᵀ``, shape ``(d_ff, d_model)``) so that the column
``W2[:, j]`` of an active neuron is one contiguous row ``W2t[j]``; W1 keeps its rows (neuron ``j``
is ``W1[j]``), which is what a predictor-driven up-projection reads.

The package, one idea per module, each importing only the ones above it in this list:

* ``ffn.ref``            the formulas, the input checks and the reference tier (``impl="ref"``);
* ``ffn.cpu_fast``       the multi-core CPU tier: numba kernels run by ``numba_team.TEAM``
                         (fp32/fp64, and bf16 read as its 16 bits, ``numba_dtypes``);
* ``ffn.triton_kernels`` the Triton tier (CUDA, or the interpreter on CPU), imported on first use;
* ``ffn.dispatch``       the registry ``IMPLEMENTATIONS`` / ``pick_impl`` and the entry points
                         :func:`gather_gemv`, :func:`row_gemv`, :func:`fused_ffn` (``impl=``);
* ``ffn.stack``          :class:`FusedFFNStack`: the FFN blocks of every layer of a decode step,
                         prepared once, one call per step;
* ``ffn.layer``          :class:`SparseFFN` (modes dense/exact/threshold/predicted), its
                         :class:`LowRankPredictor` and :func:`calibrate_threshold`.

This module gathers their public names; the huge-page helpers of ``course_lib.hugepages``
are re-exported here because the FFN benchmark and chapter use them with the stack.
"""

from ..hugepages import empty_huge_pages, huge_page_share, thp_mode
from .dispatch import IMPLEMENTATIONS, TIER_KIND, fused_ffn, gather_gemv, pick_impl, row_gemv
from .layer import LowRankPredictor, SparseFFN, calibrate_threshold
from .ref import fused_ffn_ref, fused_ffn_stack_ref, gather_gemv_ref, gemv_bytes, row_gemv_ref
from .stack import FusedFFNStack, fused_ffn_stack

__all__ = [
    "IMPLEMENTATIONS", "TIER_KIND", "pick_impl",
    "gather_gemv", "gather_gemv_ref", "row_gemv", "row_gemv_ref", "fused_ffn", "fused_ffn_ref",
    "FusedFFNStack", "fused_ffn_stack", "fused_ffn_stack_ref", "gemv_bytes",
    "calibrate_threshold", "LowRankPredictor", "SparseFFN",
    "empty_huge_pages", "huge_page_share", "thp_mode",
]
