"""The sparse FFN's maths, its input checks and its reference tier (``impl="ref"``).

Chapter: book/fast/sparse_ffn

With ``W1: (d_ff, d_model)``, ``W2t = W2ᵀ: (d_ff, d_out)`` and the active neurons ``idx``:

* gather GEMV  ``y = Σ_p v[idx[p]] · W2t[idx[p]]``;
* row GEMV     ``h[p] = W1[idx[p]] · x``;
* fused FFN    ``y = Σ_p act(W1[idx[p]] · x + b1[idx[p]]) · W2t[idx[p]]``;
* the stack    for each layer ``l``: ``x ← x + fused_ffn(W1[l], b1[l], W2t[l], x / rms(x), idx[l])``.

The reference functions read like these formulas: ``index_select`` copies the active rows, then a
dense product. They are the oracles of the faster tiers (``ffn.cpu_fast``, ``ffn.triton_kernels``),
which read the active rows in place.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": torch.relu, "gelu": nn.functional.gelu}


# --------------------------------------------------------------------------- input checks

def check_gemv_args(name: str, W: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                     v_len: int) -> None:
    """``W`` a 2-D floating tensor, ``v`` a vector of ``v_len`` values of its dtype and device,
    ``idx`` a 1-D int32/int64 index tensor on the same device."""
    for arg, t in (("W", W), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if W.ndim != 2:
        raise ValueError(f"{name}: W must be 2-D, got shape {tuple(W.shape)}")
    if v.ndim != 1 or v.shape[0] != v_len:
        raise ValueError(f"{name}: vector must be 1-D of length {v_len}, got shape {tuple(v.shape)}")
    check_idx(name, idx, W.device)
    if not W.is_floating_point() or v.dtype != W.dtype:
        raise TypeError(f"{name}: W and vector must share a floating dtype, got {W.dtype} and {v.dtype}")
    if v.device != W.device:
        raise ValueError(f"{name}: W, vector and idx must be on one device")


def check_idx(name: str, idx, device: torch.device, ndim: int = 1) -> None:
    """``idx`` an ``ndim``-D int32/int64 tensor on ``device``."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{name}: idx must be a torch.Tensor, got {type(idx).__name__}")
    if idx.ndim != ndim:
        raise ValueError(f"{name}: idx must be {ndim}-D, got shape {tuple(idx.shape)}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: idx must be int32 or int64, got {idx.dtype}")
    if idx.device != device:
        raise ValueError(f"{name}: W, vector and idx must be on one device")


def check_range(name: str, idx, rows: int) -> None:
    """Every index in ``[0, rows)`` (``idx`` a tensor, or on the CPU path its NumPy view: cheaper)."""
    if idx.shape[0]:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= rows:
            raise ValueError(f"{name}: idx value {lo if lo < 0 else hi} is out of range [0, {rows})")


def check_fused_args(name: str, W1, b1, W2t, x, idx, activation: str) -> None:
    """The arguments of a fused FFN: :func:`check_gemv_args` for ``W1, x, idx``, then ``b1``
    ``(d_ff,)`` and ``W2t`` ``(d_ff, d_out)`` agreeing with ``W1``."""
    check_gemv_args(name, W1, x, idx, W1.shape[1] if isinstance(W1, torch.Tensor) else 0)
    for arg, t in (("b1", b1), ("W2t", W2t)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if W2t.ndim != 2 or W2t.shape[0] != W1.shape[0]:
        raise ValueError(f"{name}: W2t must be (d_ff, d_out) with d_ff={W1.shape[0]}, got shape "
                         f"{tuple(W2t.shape)}")
    if b1.shape != (W1.shape[0],):
        raise ValueError(f"{name}: b1 must have shape ({W1.shape[0]},), got {tuple(b1.shape)}")
    check_ffn_weights_agree(name, W1, b1, W2t, activation)


def check_ffn_weights_agree(name: str, W1, b1, W2t, activation: str) -> None:
    """One floating dtype and one device for the weights, and a known activation."""
    if not W1.is_floating_point() or W2t.dtype != W1.dtype or b1.dtype != W1.dtype:
        raise TypeError(f"{name}: W1, b1 and W2t must share a floating dtype, got {W1.dtype}, "
                        f"{b1.dtype}, {W2t.dtype}")
    if not (W2t.device == b1.device == W1.device):
        raise ValueError(f"{name}: W1, b1, W2t, x and idx must be on one device")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{name}: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")


def check_stack_weights(name: str, W1, b1, W2t, activation: str) -> None:
    """``W1``, ``W2t`` ``(layers, d_ff, d_model)`` and ``b1`` ``(layers, d_ff)`` that agree."""
    for arg, t in (("W1", W1), ("b1", b1), ("W2t", W2t)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if W1.ndim != 3 or W2t.shape != W1.shape or b1.shape != W1.shape[:2]:
        raise ValueError(f"{name}: need W1 and W2t (layers, d_ff, d_model) and b1 (layers, d_ff), got "
                         f"{tuple(W1.shape)}, {tuple(W2t.shape)} and {tuple(b1.shape)}")
    check_ffn_weights_agree(name, W1, b1, W2t, activation)


def check_stack_inputs(name: str, W1, x, idx) -> None:
    """A step's ``x`` (``(d_model,)``, the weights' dtype and device) and its active sets: a list
    of one index tensor per layer, or one ``(layers, k)`` tensor."""
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
        check_idx(name, idx, W1.device, ndim=2)
        return
    if not isinstance(idx, (list, tuple)) or len(idx) != layers:
        raise ValueError(f"{name}: idx must be a list of {layers} index tensors (one per layer), "
                         f"or one ({layers}, k) tensor")
    for i in idx:
        check_idx(name, i, W1.device)


def stack_dtype(dtype: torch.dtype) -> torch.dtype:
    """The residual stream's dtype: float64 for float64 weights, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- reference tier

def rms_normalize_ref(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / √(mean(x²) + eps)``: RMSNorm without a gain (a gain folds into the next W1)."""
    return x / torch.sqrt(x.square().mean() + eps)


def gather_gemv_ref(Wt: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``y = Σ_p v[idx[p]] · Wt[idx[p]]`` = ``W[:, idx] · v[idx]`` with ``W = Wtᵀ`` (copies rows)."""
    check_gemv_args("gather_gemv_ref", Wt, v, idx, Wt.shape[0])
    check_range("gather_gemv_ref", idx, Wt.shape[0])
    return v[idx] @ Wt.index_select(0, idx)


def row_gemv_ref(W: torch.Tensor, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``h[p] = W[idx[p]] · x``: only the listed rows of ``W · x`` (copies rows)."""
    check_gemv_args("row_gemv_ref", W, x, idx, W.shape[1])
    check_range("row_gemv_ref", idx, W.shape[0])
    return W.index_select(0, idx) @ x


def fused_ffn_ref(W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor, x: torch.Tensor,
                  idx: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    """``y = Σ_p act(W1[idx[p]] · x + b1[idx[p]]) · W2t[idx[p]]`` (copies the rows; no ``b2``)."""
    check_fused_args("fused_ffn_ref", W1, b1, W2t, x, idx, activation)
    check_range("fused_ffn_ref", idx, W1.shape[0])
    h = ACTIVATIONS[activation](W1.index_select(0, idx) @ x + b1[idx])
    return h @ W2t.index_select(0, idx)


def fused_ffn_stack_ref(W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor, x: torch.Tensor,
                        idx, activation: str = "relu", eps: float = 1e-6) -> torch.Tensor:
    """For each layer ``l``: ``x ← x + fused_ffn_ref(W1[l], b1[l], W2t[l], u, idx[l])`` with
    ``u = x / √(mean(x²) + eps)``, in float32 (float64 for float64 weights); returns ``x``."""
    check_stack_weights("fused_ffn_stack_ref", W1, b1, W2t, activation)
    check_stack_inputs("fused_ffn_stack_ref", W1, x, idx)
    acc = stack_dtype(W1.dtype)
    x = x.to(acc)
    for layer, i in enumerate(idx):
        u = rms_normalize_ref(x, eps)
        x = x + fused_ffn_ref(W1[layer].to(acc), b1[layer].to(acc), W2t[layer].to(acc), u, i,
                              activation)
    return x.to(W1.dtype)


def gemv_bytes(rows: int, cols: int, itemsize: int, index_itemsize: int = 0) -> int:
    """Bytes a (gather) GEMV must read: ``rows·cols·itemsize`` weights + ``rows`` indices."""
    return rows * cols * itemsize + rows * index_itemsize
