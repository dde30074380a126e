"""Sparse FFN decode: skip the weights of inactive neurons (batch 1, memory bound).

A transformer FFN computes ``y = W2 · act(W1 · x + b1) + b2`` with ``W1: (d_ff, d_model)`` and
``W2: (d_model, d_ff)``. At batch 1 every weight byte is read once per token, so time ≈ bytes /
bandwidth. If only the neurons in ``S`` are active, ``y = Σ_{j∈S} h_j · W2[:, j] + b2`` reads only
``|S|/d_ff`` of W2: the kernel speed-up is bounded by ``1/density``.

Layout: W2 is stored **transposed** (``W2t = W2ᵀ``, shape ``(d_ff, d_model)``) so that the column
``W2[:, j]`` of an active neuron is one contiguous row ``W2t[j]``; W1 keeps its rows (neuron ``j``
is ``W1[j]``), which is what a predictor-driven up-projection reads.

Kernels (torch tensors in, torch tensor out):

* :func:`gather_gemv` ``y = Σ_p v[idx[p]] · Wt[idx[p]]`` (down-projection with a sparse input);
* :func:`row_gemv` ``h[p] = W[idx[p]] · x`` (up-projection of predicted-active neurons only);
* :func:`fused_ffn` ``y = Σ_p act(W1[idx[p]] · x + b1[idx[p]]) · W2t[idx[p]]`` (both, one pass);
* :class:`FusedFFNStack` / :func:`fused_ffn_stack`: the FFN blocks of all layers of a decode step,
  ``x ← x + fused_ffn(W1[l], b1[l], W2t[l], x / rms(x), idx[l])``, in one call (no Python
  between layers). :func:`empty_huge_pages` gives weight memory in 2 MiB pages.

Tiers: ``*_ref`` index with ``torch.index_select`` (readable, but copies the gathered rows);
the CPU tier is a numba kernel that reads the active rows in place, split over a thread team
(``course_lib._numba.Team``: the caller starts at once, helpers join when awake)
(fp32/fp64, and bf16 read as its 16 bits and widened to fp32 in registers); the
Triton tier runs on CUDA tensors (and under ``TRITON_INTERPRET=1`` on CPU, for tests).

:class:`SparseFFN` has the modes ``dense``, ``exact`` (the exact zeros of ReLU), ``threshold``
(TEAL-style ``|h| > t`` with ``t`` calibrated to a target sparsity) and ``predicted`` (a low-rank
Deja Vu-style predictor of the active set).
"""

from __future__ import annotations

import math
import mmap
import threading
from pathlib import Path

import numpy as np
import torch
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload
from torch import nn

from ._numba import (TEAM, chunk_count, chunk_done, fetch_add, load_acquire, next_chunk, numba,
                     prefetch, wait_done)

__all__ = [
    "gather_gemv", "gather_gemv_ref", "row_gemv", "row_gemv_ref", "fused_ffn", "fused_ffn_ref",
    "FusedFFNStack", "fused_ffn_stack", "fused_ffn_stack_ref", "empty_huge_pages", "calibrate_threshold",
    "LowRankPredictor", "SparseFFN", "gemv_bytes",
]

_ACTIVATIONS = {"relu": torch.relu, "gelu": nn.functional.gelu}


# --------------------------------------------------------------------------- validation

def _check_gemv_args(name: str, W: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                     v_len: int) -> None:
    for arg, t in (("W", W), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if W.ndim != 2:
        raise ValueError(f"{name}: W must be 2-D, got shape {tuple(W.shape)}")
    if v.ndim != 1 or v.shape[0] != v_len:
        raise ValueError(f"{name}: vector must be 1-D of length {v_len}, got shape {tuple(v.shape)}")
    _check_idx(name, idx, W.device)
    if not W.is_floating_point() or v.dtype != W.dtype:
        raise TypeError(f"{name}: W and vector must share a floating dtype, got {W.dtype} and {v.dtype}")
    if v.device != W.device:
        raise ValueError(f"{name}: W, vector and idx must be on one device")


def _check_idx(name: str, idx, device: torch.device, ndim: int = 1) -> None:
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{name}: idx must be a torch.Tensor, got {type(idx).__name__}")
    if idx.ndim != ndim:
        raise ValueError(f"{name}: idx must be {ndim}-D, got shape {tuple(idx.shape)}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: idx must be int32 or int64, got {idx.dtype}")
    if idx.device != device:
        raise ValueError(f"{name}: W, vector and idx must be on one device")


def _check_range(name: str, idx, rows: int) -> None:
    """Every index in ``[0, rows)`` (``idx`` a tensor, or on the CPU path its NumPy view: cheaper)."""
    if idx.shape[0]:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= rows:
            raise ValueError(f"{name}: idx value {lo if lo < 0 else hi} is out of range [0, {rows})")


# --------------------------------------------------------------------------- reference tier

def gather_gemv_ref(Wt: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``y = Σ_p v[idx[p]] · Wt[idx[p]]`` = ``W[:, idx] · v[idx]`` with ``W = Wtᵀ`` (copies rows)."""
    _check_gemv_args("gather_gemv_ref", Wt, v, idx, Wt.shape[0])
    _check_range("gather_gemv_ref", idx, Wt.shape[0])
    return v[idx] @ Wt.index_select(0, idx)


def row_gemv_ref(W: torch.Tensor, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``h[p] = W[idx[p]] · x``: only the listed rows of ``W · x`` (copies rows)."""
    _check_gemv_args("row_gemv_ref", W, x, idx, W.shape[1])
    _check_range("row_gemv_ref", idx, W.shape[0])
    return W.index_select(0, idx) @ x


def _check_fused_args(name: str, W1, b1, W2t, x, idx, activation: str) -> None:
    _check_gemv_args(name, W1, x, idx, W1.shape[1] if isinstance(W1, torch.Tensor) else 0)
    for arg, t in (("b1", b1), ("W2t", W2t)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if W2t.ndim != 2 or W2t.shape[0] != W1.shape[0]:
        raise ValueError(f"{name}: W2t must be (d_ff, d_out) with d_ff={W1.shape[0]}, got shape "
                         f"{tuple(W2t.shape)}")
    if b1.shape != (W1.shape[0],):
        raise ValueError(f"{name}: b1 must have shape ({W1.shape[0]},), got {tuple(b1.shape)}")
    _check_ffn_weights_agree(name, W1, b1, W2t, activation)


def _check_ffn_weights_agree(name: str, W1, b1, W2t, activation: str) -> None:
    if not W1.is_floating_point() or W2t.dtype != W1.dtype or b1.dtype != W1.dtype:
        raise TypeError(f"{name}: W1, b1 and W2t must share a floating dtype, got {W1.dtype}, "
                        f"{b1.dtype}, {W2t.dtype}")
    if not (W2t.device == b1.device == W1.device):
        raise ValueError(f"{name}: W1, b1, W2t, x and idx must be on one device")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{name}: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")


def fused_ffn_ref(W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor, x: torch.Tensor,
                  idx: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    """``y = Σ_p act(W1[idx[p]] · x + b1[idx[p]]) · W2t[idx[p]]`` (copies the rows; no ``b2``)."""
    _check_fused_args("fused_ffn_ref", W1, b1, W2t, x, idx, activation)
    _check_range("fused_ffn_ref", idx, W1.shape[0])
    h = _ACTIVATIONS[activation](W1.index_select(0, idx) @ x + b1[idx])
    return h @ W2t.index_select(0, idx)


def _check_stack_weights(name: str, W1, b1, W2t, activation: str) -> None:
    for arg, t in (("W1", W1), ("b1", b1), ("W2t", W2t)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if W1.ndim != 3 or W2t.shape != W1.shape or b1.shape != W1.shape[:2]:
        raise ValueError(f"{name}: need W1 and W2t (layers, d_ff, d_model) and b1 (layers, d_ff), got "
                         f"{tuple(W1.shape)}, {tuple(W2t.shape)} and {tuple(b1.shape)}")
    _check_ffn_weights_agree(name, W1, b1, W2t, activation)


def _check_stack_inputs(name: str, W1, x, idx) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.shape != (W1.shape[2],):
        raise ValueError(f"{name}: x must be 1-D of length {W1.shape[2]}, got shape {tuple(x.shape)}")
    if x.dtype != W1.dtype:
        raise TypeError(f"{name}: x must share the weights' dtype {W1.dtype}, got {x.dtype}")
    if x.device != W1.device:
        raise ValueError(f"{name}: x must be on the weights' device {W1.device}, got {x.device}")
    layers = W1.shape[0]
    if isinstance(idx, torch.Tensor) and idx.ndim == 2 and idx.shape[0] == layers:
        _check_idx(name, idx, W1.device, ndim=2)
        return
    if not isinstance(idx, (list, tuple)) or len(idx) != layers:
        raise ValueError(f"{name}: idx must be a list of {layers} index tensors (one per layer), "
                         f"or one ({layers}, k) tensor")
    for i in idx:
        _check_idx(name, i, W1.device)


def _stack_dtype(dtype: torch.dtype) -> torch.dtype:
    """The residual stream's dtype: float64 for float64 weights, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rms_normalize_ref(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.square().mean() + eps)


def fused_ffn_stack_ref(W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor, x: torch.Tensor,
                        idx, activation: str = "relu", eps: float = 1e-6) -> torch.Tensor:
    """For each layer ``l``: ``x ← x + fused_ffn_ref(W1[l], b1[l], W2t[l], u, idx[l])`` with
    ``u = x / √(mean(x²) + eps)``, in float32 (float64 for float64 weights); returns ``x``."""
    _check_stack_weights("fused_ffn_stack_ref", W1, b1, W2t, activation)
    _check_stack_inputs("fused_ffn_stack_ref", W1, x, idx)
    acc = _stack_dtype(W1.dtype)
    x = x.to(acc)
    for layer, i in enumerate(idx):
        u = _rms_normalize_ref(x, eps)
        x = x + fused_ffn_ref(W1[layer].to(acc), b1[layer].to(acc), W2t[layer].to(acc), u, i,
                              activation)
    return x.to(W1.dtype)


# --------------------------------------------------------------------------- CPU tier (numba)

@intrinsic
def _bf16_to_f32(typingctx, bits):
    """bfloat16 is the top half of a float32: ``f32 = bitcast(uint32(bits) << 16)``."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())
    return types.float32(bits), codegen


@intrinsic
def _f32_bits(typingctx, value):
    """The 32 bits of a float32 as a uint32 (``bitcast``)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(value), codegen


def _value(x):  # pragma: no cover - only its numba overload below is ever called
    """A stored weight as a number: floats as they are, bf16 bits (uint16) widened to float32."""
    raise NotImplementedError


@overload(_value, inline="always")
def _value_overload(x):
    if isinstance(x, types.Float):
        return lambda x: x
    if x == types.uint16:
        return lambda x: _bf16_to_f32(x)
    return None


def _zero(a):  # pragma: no cover - only its numba overload below is ever called
    """Zero in the accumulation dtype of ``a``'s values: float32 for bf16 bits, else their own."""
    raise NotImplementedError


@overload(_zero, inline="always")
def _zero_overload(a):
    # A literal ``0`` would not do: numba, like NumPy, promotes float32 * int64 to float64, and a
    # float64 accumulator halves the vector width (measured, one thread, 8 MiB of bf16 rows in
    # L3: row_gemv at 17 GB/s with the literal, 44 GB/s with this zero).
    if not isinstance(a, types.Array):
        return None
    acc = types.float32 if a.dtype == types.uint16 else a.dtype
    return (lambda a: acc(0)) if isinstance(acc, types.Float) else None


def _stored(value, out):  # pragma: no cover - only its numba overload below is ever called
    """``value`` as an element of the array ``out``: cast to its float type, or for bf16 bits
    (uint16) rounded to the nearest bfloat16, ties to even, as torch's ``.to(torch.bfloat16)``."""
    raise NotImplementedError


@overload(_stored, inline="always")
def _stored_overload(value, out):
    if not isinstance(out, types.Array):
        return None
    if out.dtype == types.uint16:
        def to_bf16(value, out):
            v = types.float32(value)
            if v != v:
                return types.uint16(0x7FC0)  # NaN
            bits = _f32_bits(v)
            return types.uint16((bits + types.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16)
        return to_bf16
    float_type = out.dtype
    return (lambda value, out: float_type(value)) if isinstance(float_type, types.Float) else None


_ROWS_PER_CHUNK = 32  # active rows a team thread claims at once (a multiple of 8)


def _row(W, i):  # pragma: no cover - only its numba overload below is ever called
    """Neuron ``i``'s weight row: ``W[i]`` of a 2-D array, or ``B[i, part]`` of a bundle
    ``W = (B, part)`` whose ``B[i]`` holds neuron ``i``'s rows of several matrices side by side."""
    raise NotImplementedError


@overload(_row, inline="always")
def _row_overload(W, i):
    if isinstance(W, types.Array) and W.ndim == 2:
        return lambda W, i: W[i]
    if isinstance(W, types.BaseTuple) and len(W) == 2 and isinstance(W[0], types.Array) \
            and W[0].ndim == 3:
        return lambda W, i: W[0][i, W[1]]
    return None


@numba.njit(inline="always")
def _prefetch_rows(W, idx, lo, hi):  # pragma: no cover - compiled
    # The hardware prefetcher stops at 4 KiB page boundaries, and the active rows are scattered:
    # ask for the first line of every page of the rows idx[lo:hi] before they are needed.
    for q in range(lo, min(hi, idx.shape[0])):
        row = _row(W, idx[q])
        for e in range(0, row.shape[0], 4096 // row.itemsize):
            prefetch(row, e)


@numba.njit(inline="always")
def _eight_rows(W, idx, p):  # pragma: no cover - compiled
    # Rows idx[p:p+8] of W, eight memory streams to run at once, while the pages of the next
    # eight are prefetched.
    _prefetch_rows(W, idx, p + 8, p + 16)
    return (_row(W, idx[p]), _row(W, idx[p + 1]), _row(W, idx[p + 2]), _row(W, idx[p + 3]),
            _row(W, idx[p + 4]), _row(W, idx[p + 5]), _row(W, idx[p + 6]), _row(W, idx[p + 7]))


@numba.njit(inline="always")
def _dots8(W, idx, p, x):  # pragma: no cover - compiled
    # (W[idx[p+i]] · x for i < 8): eight rows share each load of x, accumulators in the values'
    # dtype (_zero) so that the reductions vectorize at full width.
    r0, r1, r2, r3, r4, r5, r6, r7 = _eight_rows(W, idx, p)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = _zero(x)
    for j in range(r0.shape[0]):
        xj = _value(x[j])
        s0 += _value(r0[j]) * xj
        s1 += _value(r1[j]) * xj
        s2 += _value(r2[j]) * xj
        s3 += _value(r3[j]) * xj
        s4 += _value(r4[j]) * xj
        s5 += _value(r5[j]) * xj
        s6 += _value(r6[j]) * xj
        s7 += _value(r7[j]) * xj
    return s0, s1, s2, s3, s4, s5, s6, s7


@numba.njit(inline="always")
def _dot(row, x):  # pragma: no cover - compiled
    s = _zero(x)
    for j in range(row.shape[0]):
        s += _value(row[j]) * _value(x[j])
    return s


@numba.njit(inline="always")
def _axpy8(acc, W, idx, p, s):  # pragma: no cover - compiled
    # acc += Σ_{i<8} s[i] · W[idx[p+i]]: one accumulator update per eight rows.
    r0, r1, r2, r3, r4, r5, r6, r7 = _eight_rows(W, idx, p)
    s0, s1, s2, s3, s4, s5, s6, s7 = s
    for j in range(acc.shape[0]):
        acc[j] += (((s0 * _value(r0[j]) + s1 * _value(r1[j]))
                    + (s2 * _value(r2[j]) + s3 * _value(r3[j])))
                   + ((s4 * _value(r4[j]) + s5 * _value(r5[j]))
                      + (s6 * _value(r6[j]) + s7 * _value(r7[j]))))


@numba.njit(inline="always")
def _axpy(acc, row, s):  # pragma: no cover - compiled
    for j in range(acc.shape[0]):
        acc[j] += s * _value(row[j])


@numba.njit(inline="always")
def _add_partials(partial, out):  # pragma: no cover - compiled
    # out += Σ_t partial[t], then partial = 0: row by row, so that the loops over j vectorize
    # (a loop over t inside the loop over j did not: 10 µs for 2 × 4096 values, now ~1 µs).
    for t in range(partial.shape[0]):
        row = partial[t]
        for j in range(out.shape[0]):
            out[j] += row[j]
            row[j] = 0


@numba.njit(fastmath=True, nogil=True, cache=True)
def _gather_gemv_cpu(Wt, v, idx, partial, out, tid, state):  # pragma: no cover - compiled
    # Split-K: team threads claim chunks of the active list (course_lib._numba) and stream whole
    # rows of Wt (d_model contiguous values) into their own accumulator partial[tid], eight rows at
    # a time (eight memory streams in flight) while the next eight rows are prefetched. The
    # caller (tid 0) then sums the partials.
    k, acc = idx.shape[0], partial[tid]
    p, hi = next_chunk(state, k, _ROWS_PER_CHUNK)
    while p >= 0:
        while p + 8 <= hi:
            _axpy8(acc, Wt, idx, p, (_value(v[idx[p]]), _value(v[idx[p + 1]]),
                                     _value(v[idx[p + 2]]), _value(v[idx[p + 3]]),
                                     _value(v[idx[p + 4]]), _value(v[idx[p + 5]]),
                                     _value(v[idx[p + 6]]), _value(v[idx[p + 7]])))
            p += 8
        for q in range(p, hi):
            _axpy(acc, Wt[idx[q]], _value(v[idx[q]]))
        chunk_done(state)
        p, hi = next_chunk(state, k, _ROWS_PER_CHUNK)
    if tid == 0:
        wait_done(state, chunk_count(k, _ROWS_PER_CHUNK))
        _add_partials(partial, out)


@numba.njit(fastmath=True, nogil=True, cache=True)
def _row_gemv_cpu(W, x, idx, out, tid, state):  # pragma: no cover - compiled
    # Team threads claim chunks of the active list; eight rows at a time share each load of x
    # (eight concurrent row streams, the next eight prefetched).
    k = idx.shape[0]
    p, hi = next_chunk(state, k, _ROWS_PER_CHUNK)
    while p >= 0:
        while p + 8 <= hi:
            out[p], out[p + 1], out[p + 2], out[p + 3], \
                out[p + 4], out[p + 5], out[p + 6], out[p + 7] = _dots8(W, idx, p, x)
            p += 8
        for q in range(p, hi):
            out[q] = _dot(W[idx[q]], x)
        chunk_done(state)
        p, hi = next_chunk(state, k, _ROWS_PER_CHUNK)
    if tid == 0:
        wait_done(state, chunk_count(k, _ROWS_PER_CHUNK))


_RELU, _GELU = 0, 1  # activation codes of the fused kernel (``activation`` names in _ACT_CODES)
_ACT_CODES = {"relu": _RELU, "gelu": _GELU}  # the names of _ACTIVATIONS


def _like(value, ref):  # pragma: no cover - only its numba overload below is ever called
    """``value`` converted to the float type of ``ref`` (float literals would promote to float64)."""
    raise NotImplementedError


@overload(_like, inline="always")
def _like_overload(value, ref):
    if not isinstance(ref, types.Float):
        return None
    float_type = ref
    return lambda value, ref: float_type(value)


@numba.njit(inline="always")
def _act(h, code):  # pragma: no cover - compiled
    # relu(h) = max(h, 0); gelu(h) = h · Φ(h) = h/2 · (1 + erf(h/√2)), as torch's default GELU;
    # computed in h's own float type (_like), so that the W2t loop stays at full SIMD width.
    if code == _RELU:
        return max(h, _like(0, h))
    return _like(0.5 * h * (1.0 + math.erf(h * 0.7071067811865476)), h)


@numba.njit(inline="always")
def _fused_chunks(W1, b1, W2t, x, idx, code, acc, state):  # pragma: no cover - compiled
    # This thread's share of one sparse FFN layer: it claims chunks of the active list and, for
    # eight neurons at a time, takes their W1 rows' dot products with x, the activation, then
    # adds their W2t rows into acc (its split-K partial). The hidden values never leave
    # registers; each weight row is read once. W1 and W2t are 2-D arrays or parts of a bundle
    # (_row).
    k = idx.shape[0]
    p, hi = next_chunk(state, k, _ROWS_PER_CHUNK)
    while p >= 0:
        while p + 8 <= hi:
            s0, s1, s2, s3, s4, s5, s6, s7 = _dots8(W1, idx, p, x)
            _axpy8(acc, W2t, idx, p, (_act(s0 + _value(b1[idx[p]]), code),
                                      _act(s1 + _value(b1[idx[p + 1]]), code),
                                      _act(s2 + _value(b1[idx[p + 2]]), code),
                                      _act(s3 + _value(b1[idx[p + 3]]), code),
                                      _act(s4 + _value(b1[idx[p + 4]]), code),
                                      _act(s5 + _value(b1[idx[p + 5]]), code),
                                      _act(s6 + _value(b1[idx[p + 6]]), code),
                                      _act(s7 + _value(b1[idx[p + 7]]), code)))
            p += 8
        for q in range(p, hi):
            i = idx[q]
            _axpy(acc, _row(W2t, i), _act(_dot(_row(W1, i), x) + _value(b1[i]), code))
        chunk_done(state)
        p, hi = next_chunk(state, k, _ROWS_PER_CHUNK)


@numba.njit(fastmath=True, nogil=True, cache=True)
def _fused_ffn_cpu(W1, b1, W2t, x, idx, code, partial, out, tid, state):  # pragma: no cover
    # One sparse FFN layer, split-K as in _gather_gemv_cpu: the caller sums the partials.
    _fused_chunks(W1, b1, W2t, x, idx, code, partial[tid], state)
    if tid == 0:
        wait_done(state, chunk_count(idx.shape[0], _ROWS_PER_CHUNK))
        _add_partials(partial, out)


@numba.njit(inline="always")
def _rms_normalize(x, u, eps):  # pragma: no cover - compiled
    # u = x / sqrt(mean(x²) + eps): RMSNorm without a gain (a gain g folds into W1: W1·(g⊙u)).
    ss = _zero(x)
    for j in range(x.shape[0]):
        ss += x[j] * x[j]
    inv = _like(1.0 / math.sqrt(ss / max(x.shape[0], 1) + eps), ss)
    for j in range(x.shape[0]):
        u[j] = x[j] * inv


@numba.njit(fastmath=True, nogil=True, cache=True)
def _fused_ffn_stack_cpu(W1, b1, W2t, idx, offsets, code, eps, stream, u, partial, out,
                         tid, state):  # pragma: no cover - compiled
    # Every layer in one call, no Python between them: s ← s + FFN_l(u) with u = s / rms(s), for
    # the residual stream s (float32, float64 for float64 weights) that the caller has set to x,
    # ending in out (rounded to the weights' dtype). W1 and W2t are (bundle, part) pairs: row j
    # of layer l is bundle[l, j, part] (FusedFFNStack packs both into one bundle). state holds a
    # chunk-counter pair per layer, then the count of layers whose input u is ready. The caller
    # (tid 0) normalizes s; after each layer it waits for the layer's chunks, adds the partials
    # to s, clears them and normalizes again. Helpers spin on that count (the barrier between
    # layers) and so never sleep, or wait on Python, inside a decode step.
    layers = b1.shape[0]
    ready = 2 * layers
    if tid == 0:
        _rms_normalize(stream, u, eps)
        fetch_add(state, ready, 1)
    for layer in range(layers):
        while load_acquire(state, ready) <= layer:
            pass
        counters = state[2 * layer:2 * layer + 2]
        active = idx[offsets[layer]:offsets[layer + 1]]
        _fused_chunks((W1[0][layer], W1[1]), b1[layer], (W2t[0][layer], W2t[1]), u, active, code,
                      partial[tid], counters)
        if tid == 0:
            wait_done(counters, chunk_count(active.shape[0], _ROWS_PER_CHUNK))
            _add_partials(partial, stream)
            _rms_normalize(stream, u, eps)
            fetch_add(state, ready, 1)
    if tid == 0:
        for j in range(out.shape[0]):
            out[j] = _stored(stream[j], out)


_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a NumPy view for the numba kernels (bf16 as its uint16 bits: numba
    has no bf16, the kernels widen the bits to float32)."""
    t = t.detach().contiguous()
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def _cpu_arrays(name, W, v, idx):
    """NumPy views of ``W``, ``v``, ``idx`` for the numba kernels, and the output dtype."""
    if W.dtype not in _CPU_DTYPES:
        raise TypeError(f"{name}: the CPU kernel supports float32/float64/bfloat16, got {W.dtype}")
    Wn = _numpy_view(W)
    acc_dtype = np.float32 if Wn.dtype == np.uint16 else Wn.dtype  # bf16 accumulates in float32
    return Wn, _numpy_view(v), idx.contiguous().numpy(), acc_dtype


def _as_tensor(out: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The kernel's output as a tensor of ``dtype``, converted only if it differs (bf16): even a
    no-op ``.to()`` costs ~30 µs when the caches are cold, as between the layers of a decode."""
    t = torch.from_numpy(out)
    return t if t.dtype == dtype else t.to(dtype)


# --------------------------------------------------------------------------- Triton tier

def _triton_kernels():
    """The Triton kernels (``course_lib._ffn_triton``), imported on first use."""
    from . import _ffn_triton
    return _ffn_triton


# --------------------------------------------------------------------------- dispatch

def _backend(backend: str, W: torch.Tensor) -> str:
    if backend == "auto":
        return "triton" if W.is_cuda else "cpu"
    if backend not in ("cpu", "triton", "ref"):
        raise ValueError(f"backend must be 'auto', 'cpu', 'triton' or 'ref', got {backend!r}")
    if backend == "cpu" and W.is_cuda:
        raise ValueError("backend 'cpu' needs CPU tensors")
    return backend


def gather_gemv(Wt: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, *,
                backend: str = "auto") -> torch.Tensor:
    """``y = Σ_p v[idx[p]] · Wt[idx[p]]`` reading only the listed rows of ``Wt``, never copying them.

    ``Wt`` is ``(d_ff, d_model)`` (the transposed down-projection), ``v`` the ``d_ff`` hidden
    vector, ``idx`` the active neurons (int32/int64; a repeated index counts twice).
    """
    _check_gemv_args("gather_gemv", Wt, v, idx, Wt.shape[0])
    backend = _backend(backend, Wt)
    if backend == "ref":
        return gather_gemv_ref(Wt, v, idx)
    if backend == "cpu":
        W, vv, ii, acc_dtype = _cpu_arrays("gather_gemv", Wt, v, idx)
        _check_range("gather_gemv", ii, W.shape[0])
        out = np.zeros(W.shape[1], dtype=acc_dtype)
        size = TEAM.size()
        partial = np.zeros((size, W.shape[1]), dtype=acc_dtype)
        TEAM.run(_gather_gemv_cpu, W, vv, ii, partial, out, size=size)
        return _as_tensor(out, Wt.dtype)
    _check_range("gather_gemv", idx, Wt.shape[0])
    kern = _triton_kernels()
    Wt, v, idx = Wt.contiguous(), v.contiguous(), idx.contiguous()
    K, N = idx.shape[0], Wt.shape[1]
    out = torch.zeros(N, dtype=torch.float32, device=Wt.device)
    if K:
        BLOCK_K, BLOCK_N = 32, 128
        grid = (kern.cdiv(N, BLOCK_N), kern.cdiv(K, BLOCK_K))
        kern.gather_kernel[grid](Wt, v, idx, out, K, N, Wt.stride(0), BLOCK_K=BLOCK_K, BLOCK_N=BLOCK_N)
    return out.to(Wt.dtype)


def row_gemv(W: torch.Tensor, x: torch.Tensor, idx: torch.Tensor, *,
             backend: str = "auto") -> torch.Tensor:
    """``h[p] = W[idx[p]] · x`` reading only the listed rows of ``W`` (``(d_ff, d_model)``)."""
    _check_gemv_args("row_gemv", W, x, idx, W.shape[1])
    backend = _backend(backend, W)
    if backend == "ref":
        return row_gemv_ref(W, x, idx)
    if backend == "cpu":
        WW, xx, ii, acc_dtype = _cpu_arrays("row_gemv", W, x, idx)
        _check_range("row_gemv", ii, WW.shape[0])
        out = np.zeros(ii.shape[0], dtype=acc_dtype)
        TEAM.run(_row_gemv_cpu, WW, xx, ii, out)
        return _as_tensor(out, W.dtype)
    _check_range("row_gemv", idx, W.shape[0])
    kern = _triton_kernels()
    W, x, idx = W.contiguous(), x.contiguous(), idx.contiguous()
    K, N = idx.shape[0], W.shape[1]
    out = torch.zeros(K, dtype=torch.float32, device=W.device)
    if K:
        BLOCK_K, BLOCK_N = 32, 128
        kern.row_kernel[(kern.cdiv(K, BLOCK_K),)](W, x, idx, out, K, N, W.stride(0),
                                                 BLOCK_K=BLOCK_K, BLOCK_N=BLOCK_N)
    return out.to(W.dtype)


def fused_ffn(W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor, x: torch.Tensor,
              idx: torch.Tensor, activation: str = "relu", *, backend: str = "auto") -> torch.Tensor:
    """``y = Σ_p act(W1[idx[p]] · x + b1[idx[p]]) · W2t[idx[p]]``: an FFN (without ``b2``) on the
    active neurons ``idx`` in **one pass**: each active neuron's W1 row, its activation and its
    W2t row, the hidden values kept in registers, neither weight matrix copied.

    ``W1`` is ``(d_ff, d_model)``, ``b1`` ``(d_ff,)``, ``W2t = W2ᵀ`` ``(d_ff, d_out)``, ``x``
    ``(d_model,)``, ``activation`` ``"relu"`` or ``"gelu"``. One call instead of
    :func:`row_gemv` then :func:`gather_gemv` halves the fixed costs per layer.
    """
    _check_fused_args("fused_ffn", W1, b1, W2t, x, idx, activation)
    backend = _backend(backend, W1)
    if backend == "ref":
        return fused_ffn_ref(W1, b1, W2t, x, idx, activation)
    if backend == "cpu":
        W1n, xx, ii, acc_dtype = _cpu_arrays("fused_ffn", W1, x, idx)
        W2n, bb = _numpy_view(W2t), _numpy_view(b1)  # same dtype as W1 (checked)
        _check_range("fused_ffn", ii, W1n.shape[0])
        out = np.zeros(W2n.shape[1], dtype=acc_dtype)
        size = TEAM.size()
        partial = np.zeros((size, W2n.shape[1]), dtype=acc_dtype)
        TEAM.run(_fused_ffn_cpu, W1n, bb, W2n, xx, ii, _ACT_CODES[activation], partial, out,
                 size=size)
        return _as_tensor(out, W1.dtype)
    _check_range("fused_ffn", idx, W1.shape[0])
    kern = _triton_kernels()
    W1, b1, W2t, x, idx = W1.contiguous(), b1.contiguous(), W2t.contiguous(), x.contiguous(), idx.contiguous()
    K = idx.shape[0]
    out = torch.zeros(W2t.shape[1], dtype=torch.float32, device=W1.device)
    if K:
        BLOCK_K, BLOCK_N = 32, 128
        kern.fused_kernel[(kern.cdiv(K, BLOCK_K),)](
            W1, b1, W2t, x, idx, out, K, W1.shape[1], W2t.shape[1], W1.stride(0), W2t.stride(0),
            GELU=activation == "gelu", BLOCK_K=BLOCK_K, BLOCK_N=BLOCK_N)
    return out.to(W1.dtype)


class FusedFFNStack:
    """The FFN blocks of a decode step, computed layer after layer in **one call** per step: for
    each layer ``l``, ``x ← x + Σ_p act(W1[l, i_p] · u + b1[l, i_p]) · W2t[l, i_p]`` with
    ``u = x / √(mean(x²) + eps)`` (pre-norm residual blocks, RMSNorm without gain) and
    ``i = idx[l]`` the layer's active neurons.

    ``W1``, ``W2t`` are ``(layers, d_ff, d_model)`` and ``b1`` ``(layers, d_ff)``; a call takes
    ``x`` ``(d_model,)`` and ``idx``, the active sets known before the step (a benchmark's random
    sets, or predictions made ahead: Deja Vu predicts a layer's set while the layer before it
    runs): a list of ``layers`` index tensors, or one ``(layers, k)`` tensor when every layer
    keeps ``k`` neurons (top-k), which a call uses as it is. The residual stream stays in float32
    (float64 for float64 weights) and is returned in the weights' dtype.

    The weights are checked, and on the CPU **packed**, once, here, as an inference engine
    prepares them at load time: a copy in which each neuron's ``W1`` row and ``W2t`` row lie side
    by side, ``bundle[l, j] = (W1[l, j], W2t[l, j])`` (the row-column bundling of "LLM in a
    flash", there for reads from flash), so that an active neuron is one contiguous run of
    ``2·d_model`` values instead of two runs at unrelated addresses (measured: about 2 points of
    the bandwidth bound in 4 KiB pages, within the noise in 2 MiB pages). The copy lies in 2 MiB
    pages unless ``huge_pages`` is false (:func:`empty_huge_pages`); ``self.W1``, ``self.W2t``
    are then views of it, and the caller may drop its own tensors. ``packed=False`` reads the
    given tensors instead (to measure what the packing is worth).

    On the CPU the whole step is one compiled call: ``x`` is copied into the residual stream's
    buffer, the kernel reads the sets where they are and writes the result (rounded to bf16
    there) into a buffer of which the caller gets a copy, and the thread team meets at a spin
    barrier between layers, so the fixed cost of a call is paid once per step instead of once
    per layer. Each torch or NumPy call a step makes costs 15–40 µs when the step's weight stream
    has evicted its code from the caches (measured), hence so few of them. Threads claim chunks
    of rows as they come, so the summation order, and the last bits of the result, can differ
    from call to call. The Triton path launches :func:`fused_ffn` per layer (``u`` rounded to
    the weights' dtype).
    """

    def __init__(self, W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor,
                 activation: str = "relu", *, eps: float = 1e-6, backend: str = "auto",
                 packed: bool = True, huge_pages: bool = True):
        _check_stack_weights("FusedFFNStack", W1, b1, W2t, activation)
        self.W1, self.b1, self.W2t = W1, b1, W2t
        self.activation, self.eps = activation, eps
        self.backend = _backend(backend, W1)
        self._acc = _stack_dtype(W1.dtype)  # the residual stream's dtype
        if self.backend == "cpu":
            if W1.dtype not in _CPU_DTYPES:
                raise TypeError(f"FusedFFNStack: the CPU kernel supports float32/float64/bfloat16, "
                                f"got {W1.dtype}")
            if packed:  # (layers, d_ff, 2, d_model): W1 and W2t as parts 0 and 1 of each row
                alloc = empty_huge_pages if huge_pages else torch.empty
                bundle = alloc(W1.shape[0], W1.shape[1], 2, W1.shape[2], dtype=W1.dtype)
                bundle[:, :, 0], bundle[:, :, 1] = W1, W2t
                self.W1, self.W2t = bundle[:, :, 0], bundle[:, :, 1]
                up, down = (bundle, 0), (bundle, 1)
            else:  # each matrix its own bundle of one part
                up, down = (W1.unsqueeze(2), 0), (W2t.unsqueeze(2), 0)
            # for the kernel: (NumPy view of a bundle, part) for W1 and W2t, and b1
            self._arrays = ((_numpy_view(up[0]), up[1]), _numpy_view(b1),
                            (_numpy_view(down[0]), down[1]))
            # buffers reused by every step (a cold NumPy call costs tens of µs), one step at a
            # time; the kernel leaves the partial sums zero at the end of each layer
            self._lock = threading.Lock()
            self._offsets = np.zeros(W1.shape[0] + 1, dtype=np.int64)
            # the residual stream (a step copies x into it: one torch call, where viewing x for
            # the kernel took five), its normalized copy (a layer's input), the step's result
            # (the caller gets a clone: one call again, where wrapping a new array took four)
            self._stream_t = torch.empty(W1.shape[2], dtype=self._acc)
            self._stream = self._stream_t.numpy()
            self._u = np.empty_like(self._stream)
            self._out_t = torch.empty(W1.shape[2], dtype=W1.dtype)
            self._out = _numpy_view(self._out_t)
            self._partial = np.zeros((0, W1.shape[2]), dtype=self._u.dtype)  # a row per team thread

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, idx) -> torch.Tensor:
        W1, b1, W2t = self.W1, self.b1, self.W2t
        _check_stack_inputs("FusedFFNStack", W1, x, idx)
        if self.backend == "ref":
            return fused_ffn_stack_ref(W1, b1, W2t, x, idx, self.activation, self.eps)
        if self.backend == "cpu":
            return self._cpu_step(x, idx)
        acc = self._acc
        x = x.to(acc)
        for layer, i in enumerate(idx):
            u = _rms_normalize_ref(x, self.eps).to(W1.dtype)
            x = x + fused_ffn(W1[layer], b1[layer], W2t[layer], u, i, self.activation,
                              backend="triton").to(acc)
        return x.to(W1.dtype)

    def _cpu_step(self, x: torch.Tensor, idx) -> torch.Tensor:
        W1 = self.W1
        if isinstance(idx, torch.Tensor):  # (layers, k): every set in one array already
            ii, sizes = idx.numpy().reshape(-1), (idx.shape[1],) * idx.shape[0]
        else:
            ii = torch.cat(list(idx)).numpy() if idx else np.zeros(0, dtype=np.int64)
            sizes = [i.shape[0] for i in idx]
        _check_range("FusedFFNStack", ii, W1.shape[1])
        with self._lock:
            offsets, total = self._offsets, 0  # layer l's neurons: ii[offsets[l]:offsets[l+1]]
            for layer, k in enumerate(sizes):
                total += k
                offsets[layer + 1] = total
            size = TEAM.size()
            if self._partial.shape[0] != size:
                self._partial = np.zeros((size, W1.shape[2]), dtype=self._u.dtype)
            self._stream_t.copy_(x)
            TEAM.run(_fused_ffn_stack_cpu, *self._arrays, ii, offsets, _ACT_CODES[self.activation],
                     self.eps, self._stream, self._u, self._partial, self._out, size=size,
                     slots=2 * W1.shape[0] + 1)
            return self._out_t.clone()


def fused_ffn_stack(W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor, x: torch.Tensor,
                    idx, activation: str = "relu", *, eps: float = 1e-6,
                    backend: str = "auto") -> torch.Tensor:
    """:class:`FusedFFNStack` ``(W1, b1, W2t, activation)`` applied once to ``x`` with the active
    sets ``idx`` (a decode loop should build the stack once and call it every step)."""
    return FusedFFNStack(W1, b1, W2t, activation, eps=eps, backend=backend)(x, idx)


def empty_huge_pages(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialized CPU tensor in memory advised for 2 MiB transparent huge pages.

    A sparse decode reads scattered weight rows of a few KiB: with 4 KiB pages each row needs
    TLB entries of its own (and a page walk costs more in a virtual machine); a 2 MiB page
    covers 128 fp32 rows of 4096 values. Linux ``madvise(MADV_HUGEPAGE)`` on a 2 MiB-aligned anonymous map
    (honoured when /sys/kernel/mm/transparent_hugepage/enabled is ``always`` or ``madvise``);
    elsewhere a plain ``torch.empty``.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0 or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(*shape, dtype=dtype)
    huge = 2 * 2**20
    # private: an anonymous mmap is MAP_SHARED by default, i.e. shared memory, which THP leaves
    # in 4 KiB pages unless .../transparent_hugepage/shmem_enabled allows it (``never`` here)
    buf = mmap.mmap(-1, nbytes + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)  # freed with the last view of it
    raw = np.frombuffer(buf, dtype=np.uint8)
    start = -raw.ctypes.data % huge
    return torch.from_numpy(raw[start:start + nbytes]).view(dtype).view(shape)


def thp_mode(switch: str = "enabled",
             folder: str | Path = "/sys/kernel/mm/transparent_hugepage") -> str | None:
    """The mode of Linux's transparent huge pages: the bracketed word of ``folder/switch``
    (``enabled`` for private memory, ``shmem_enabled`` for shared memory), or None where there
    is no such file."""
    try:
        text = Path(folder, switch).read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")]


def huge_page_share(t: torch.Tensor) -> float | None:
    """The share of ``t``'s bytes that lie in transparent huge pages (``AnonHugePages`` of the
    mappings that hold it, from /proc/self/smaps), or None where there is no such file."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return None
    lo, hi = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    huge, inside = 0, False
    for line in lines:
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):  # a mapping's first line: start-end perms …
            start, end = (int(a, 16) for a in head.split("-"))
            inside = start < hi and lo < end
        elif inside and head == "AnonHugePages:":
            huge += int(line.split()[1]) * 1024
    return min(1.0, huge / (hi - lo)) if hi > lo else 0.0


def gemv_bytes(rows: int, cols: int, itemsize: int, index_itemsize: int = 0) -> int:
    """Bytes a (gather) GEMV must read: ``rows·cols·itemsize`` weights + ``rows`` indices."""
    return rows * cols * itemsize + rows * index_itemsize


# --------------------------------------------------------------------------- calibration

def calibrate_threshold(h: torch.Tensor, sparsity: float) -> float:
    """TEAL-style threshold: the ``sparsity``-quantile of ``|h|`` over calibration activations.

    ``t`` is the k-th smallest ``|h|`` with ``k = ⌊sparsity·n⌋``: zeroing every entry with
    ``|h| <= t`` removes ``k/n ≈ sparsity`` of the entries (more if there are ties at ``t``).
    """
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"h must be a torch.Tensor, got {type(h).__name__}")
    if h.numel() == 0:
        raise ValueError("h must contain at least one activation to calibrate on")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    k = int(sparsity * h.numel())  # entries to zero
    if k == 0:
        return -1.0  # nothing is below a negative threshold: keep everything
    a = h.detach().abs().flatten().double().cpu().numpy()
    return float(np.partition(a, k - 1)[k - 1])  # the k-th smallest |h|


# --------------------------------------------------------------------------- predictor

class LowRankPredictor(nn.Module):
    """Deja Vu-style predictor: ``logits = B · (A · x)``; neuron ``j`` predicted active if ``logit_j > 0``."""

    def __init__(self, d_model: int, d_ff: int, rank: int):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        self.A = nn.Linear(d_model, rank, bias=False)
        self.B = nn.Linear(rank, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x))

    def fit(self, X: torch.Tensor, active: torch.Tensor, *, steps: int = 300, lr: float = 1e-2,
            pos_weight: float = 2.0, seed: int = 0) -> list[float]:
        """Train on recorded (input, active-mask) pairs with weighted BCE (``pos_weight`` favours recall)."""
        if X.ndim != 2 or active.shape != (X.shape[0], self.B.out_features):
            raise ValueError(f"need X (n, d_model) and active (n, d_ff); got {tuple(X.shape)}, "
                             f"{tuple(active.shape)}")
        torch.manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=X.device))
        target = active.float()
        losses = []
        for _ in range(steps):
            loss = loss_fn(self(X), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses


# --------------------------------------------------------------------------- the layer

class SparseFFN:
    """Inference-only FFN ``y = W2 · act(W1 · x + b1) + b2`` that reads only active neurons' weights.

    Stores ``W1`` as ``(d_ff, d_model)`` and ``W2t = W2ᵀ`` as ``(d_ff, d_out)`` (``d_out = d_model``
    in a transformer): the weights of neuron ``j`` are the contiguous rows ``W1[j]`` and ``W2t[j]``.
    """

    MODES = ("dense", "exact", "threshold", "predicted")

    def __init__(self, W1: torch.Tensor, b1: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor,
                 activation: str = "relu", backend: str = "auto"):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if W1.ndim != 2 or W2.ndim != 2 or W2.shape[1] != W1.shape[0]:
            raise ValueError(f"need W1 (d_ff, d_model) and W2 (d_out, d_ff), got "
                             f"{tuple(W1.shape)} and {tuple(W2.shape)}")
        if b1.shape != (W1.shape[0],) or b2.shape != (W2.shape[0],):
            raise ValueError(f"need b1 ({W1.shape[0]},) and b2 ({W2.shape[0]},), got "
                             f"{tuple(b1.shape)} and {tuple(b2.shape)}")
        self.W1 = W1.detach().contiguous()
        self.b1 = b1.detach()
        self.W2t = W2.detach().t().contiguous()
        self.b2 = b2.detach()
        self.act = _ACTIVATIONS[activation]
        self.activation = activation
        self.backend = backend
        self.threshold: float | None = None
        self.predictor: LowRankPredictor | None = None

    @classmethod
    def from_linear(cls, up: nn.Linear, down: nn.Linear, activation: str = "relu",
                    backend: str = "auto") -> "SparseFFN":
        """Wrap the two ``nn.Linear`` of an FFN (``up: d_model→d_ff``, ``down: d_ff→d_out``)."""
        zeros = lambda n, ref: torch.zeros(n, dtype=ref.dtype)  # noqa: E731
        b1 = up.bias if up.bias is not None else zeros(up.out_features, up.weight)
        b2 = down.bias if down.bias is not None else zeros(down.out_features, down.weight)
        return cls(up.weight, b1, down.weight, b2, activation, backend)

    @property
    def d_model(self) -> int:
        return self.W1.shape[1]

    @property
    def d_ff(self) -> int:
        return self.W1.shape[0]

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The dense hidden activations ``act(W1 · x + b1)`` (any leading batch shape)."""
        return self.act(x @ self.W1.t() + self.b1)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The dense reference ``W2 · act(W1 · x + b1) + b2``."""
        return self.hidden(x) @ self.W2t + self.b2

    def calibrate(self, X: torch.Tensor, sparsity: float) -> float:
        """Set the threshold so that a ``sparsity`` share of ``|h|`` over ``X`` falls below it."""
        self.threshold = calibrate_threshold(self.hidden(X), sparsity)
        return self.threshold

    def fit_predictor(self, X: torch.Tensor, rank: int = 32, **fit_kwargs) -> list[float]:
        """Train a low-rank predictor of the active set ``{j : h_j ≠ 0}`` (or ``|h_j| > t``) on ``X``."""
        with torch.no_grad():
            active = self._mask(self.hidden(X))
        self.predictor = LowRankPredictor(self.d_model, self.d_ff, rank)
        self.predictor.to(device=self.W1.device, dtype=self.W1.dtype)
        return self.predictor.fit(X, active, **fit_kwargs)

    def _mask(self, h: torch.Tensor) -> torch.Tensor:
        return h.abs() > self.threshold if self.threshold is not None else h != 0

    def active_set(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """Indices of the neurons ``mode`` computes for one token ``x``."""
        if mode == "predicted":
            if self.predictor is None:
                raise ValueError("mode 'predicted' needs fit_predictor() first")
            with torch.no_grad():
                return torch.nonzero(self.predictor(x) > 0).flatten()
        if mode == "threshold" and self.threshold is None:
            raise ValueError("mode 'threshold' needs calibrate() first")
        h = self.hidden(x)
        return torch.nonzero(h != 0 if mode == "exact" else h.abs() > self.threshold).flatten()

    @torch.no_grad()
    def recall(self, X: torch.Tensor) -> dict:
        """Predictor quality on ``X``: recall = |pred ∩ true| / |true|, plus precision and density."""
        if self.predictor is None:
            raise ValueError("recall needs fit_predictor() first")
        true = self._mask(self.hidden(X))
        pred = self.predictor(X) > 0
        hit = (true & pred).sum().item()
        return {"recall": hit / max(1, true.sum().item()),
                "precision": hit / max(1, pred.sum().item()),
                "true_density": true.float().mean().item(),
                "predicted_density": pred.float().mean().item()}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, mode: str = "exact") -> torch.Tensor:
        """Forward one token ``(d_model,)`` or a batch ``(n, d_model)`` (token by token, as in decode)."""
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if x.shape[-1] != self.d_model or x.ndim not in (1, 2):
            raise ValueError(f"x must be (d_model,) or (n, d_model) with d_model={self.d_model}, "
                             f"got {tuple(x.shape)}")
        if mode == "dense":
            return self.dense(x)
        if x.ndim == 2:
            return torch.stack([self(row, mode) for row in x]) if len(x) else self.dense(x)
        idx = self.active_set(x, mode)
        if mode == "predicted":  # one pass over the predicted neurons: W1 rows, act, W2t rows
            return fused_ffn(self.W1, self.b1, self.W2t, x, idx, self.activation,
                             backend=self.backend) + self.b2
        return gather_gemv(self.W2t, self.hidden(x), idx, backend=self.backend) + self.b2
