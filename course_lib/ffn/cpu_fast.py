"""The sparse FFN's multi-core CPU tier (``impl="cpu_fast"``): numba kernels run by a thread team.

Chapter: book/fast/sparse_ffn

Every function computes what its reference in ``ffn.ref`` computes (see there for the formulas)
on CPU tensors of float32, float64 or bfloat16, with inputs already checked by ``ffn.dispatch``
(this tier checks only the index range, on the NumPy view: cheaper than on the tensor).

Optimizations, shared by the kernels:

- the active rows are read in place (never copied), eight at a time: eight memory streams in
  flight, and the vector ``x`` loaded once per eight rows;
- the pages of the next eight rows are prefetched (the hardware prefetcher stops at 4 KiB page
  boundaries and the active rows are scattered);
- split-K over a thread team (``numba_team.TEAM``: the caller starts at once instead of waking a
  pool): each thread adds its rows into its own partial sum, the caller adds the partials;
- accumulators start at ``numba_dtypes.zero`` of the values' dtype (full SIMD width); bf16 is
  read as its 16 bits and widened to float32 in registers;
- the fused FFN keeps each neuron's hidden value in registers between its W1 row and its W2t row;
- :class:`StackStep` runs every layer of a decode step in one compiled call (the team meets at a
  spin barrier between layers), with buffers prepared once.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
from numba.core import types
from numba.extending import overload

from ..hugepages import empty_huge_pages
from ..numba_dtypes import like, stored, value, zero
from ..numba_team import (TEAM, chunk_count, chunk_done, fetch_add, load_acquire, next_chunk,
                          numba, prefetch, wait_done)
from .ref import check_range, stack_dtype

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
    # dtype (zero) so that the reductions vectorize at full width.
    r0, r1, r2, r3, r4, r5, r6, r7 = _eight_rows(W, idx, p)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero(x)
    for j in range(r0.shape[0]):
        xj = value(x[j])
        s0 += value(r0[j]) * xj
        s1 += value(r1[j]) * xj
        s2 += value(r2[j]) * xj
        s3 += value(r3[j]) * xj
        s4 += value(r4[j]) * xj
        s5 += value(r5[j]) * xj
        s6 += value(r6[j]) * xj
        s7 += value(r7[j]) * xj
    return s0, s1, s2, s3, s4, s5, s6, s7


@numba.njit(inline="always")
def _dot(row, x):  # pragma: no cover - compiled
    s = zero(x)
    for j in range(row.shape[0]):
        s += value(row[j]) * value(x[j])
    return s


@numba.njit(inline="always")
def _axpy8(acc, W, idx, p, s):  # pragma: no cover - compiled
    # acc += Σ_{i<8} s[i] · W[idx[p+i]]: one accumulator update per eight rows.
    r0, r1, r2, r3, r4, r5, r6, r7 = _eight_rows(W, idx, p)
    s0, s1, s2, s3, s4, s5, s6, s7 = s
    for j in range(acc.shape[0]):
        acc[j] += (((s0 * value(r0[j]) + s1 * value(r1[j]))
                    + (s2 * value(r2[j]) + s3 * value(r3[j])))
                   + ((s4 * value(r4[j]) + s5 * value(r5[j]))
                      + (s6 * value(r6[j]) + s7 * value(r7[j]))))


@numba.njit(inline="always")
def _axpy(acc, row, s):  # pragma: no cover - compiled
    for j in range(acc.shape[0]):
        acc[j] += s * value(row[j])


@numba.njit(inline="always")
def _add_partials(partial, out):  # pragma: no cover - compiled
    # out += Σ_t partial[t], then partial = 0: row by row, so that the loops over j vectorize
    # (a loop over t inside the loop over j does not: 10 µs instead of 1 µs for 2 × 4096 values).
    for t in range(partial.shape[0]):
        row = partial[t]
        for j in range(out.shape[0]):
            out[j] += row[j]
            row[j] = 0


@numba.njit(fastmath=True, nogil=True, cache=True)
def _gather_gemv_cpu(Wt, v, idx, partial, out, tid, state):  # pragma: no cover - compiled
    # Split-K: team threads claim chunks of the active list (numba_team) and stream whole
    # rows of Wt (d_model contiguous values) into their own accumulator partial[tid], eight rows at
    # a time (eight memory streams in flight) while the next eight rows are prefetched. The
    # caller (tid 0) then sums the partials.
    k, acc = idx.shape[0], partial[tid]
    p, hi = next_chunk(state, k, _ROWS_PER_CHUNK)
    while p >= 0:
        while p + 8 <= hi:
            _axpy8(acc, Wt, idx, p, (value(v[idx[p]]), value(v[idx[p + 1]]),
                                     value(v[idx[p + 2]]), value(v[idx[p + 3]]),
                                     value(v[idx[p + 4]]), value(v[idx[p + 5]]),
                                     value(v[idx[p + 6]]), value(v[idx[p + 7]])))
            p += 8
        for q in range(p, hi):
            _axpy(acc, Wt[idx[q]], value(v[idx[q]]))
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


_RELU, _GELU = 0, 1  # activation codes of the fused kernel
_ACT_CODES = {"relu": _RELU, "gelu": _GELU}  # the names of ref.ACTIVATIONS


@numba.njit(inline="always")
def _act(h, code):  # pragma: no cover - compiled
    # relu(h) = max(h, 0); gelu(h) = h · Φ(h) = h/2 · (1 + erf(h/√2)), as torch's default GELU;
    # computed in h's own float type (like), so that the W2t loop stays at full SIMD width.
    if code == _RELU:
        return max(h, like(0, h))
    return like(0.5 * h * (1.0 + math.erf(h * 0.7071067811865476)), h)


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
            _axpy8(acc, W2t, idx, p, (_act(s0 + value(b1[idx[p]]), code),
                                      _act(s1 + value(b1[idx[p + 1]]), code),
                                      _act(s2 + value(b1[idx[p + 2]]), code),
                                      _act(s3 + value(b1[idx[p + 3]]), code),
                                      _act(s4 + value(b1[idx[p + 4]]), code),
                                      _act(s5 + value(b1[idx[p + 5]]), code),
                                      _act(s6 + value(b1[idx[p + 6]]), code),
                                      _act(s7 + value(b1[idx[p + 7]]), code)))
            p += 8
        for q in range(p, hi):
            i = idx[q]
            _axpy(acc, _row(W2t, i), _act(_dot(_row(W1, i), x) + value(b1[i]), code))
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
    ss = zero(x)
    for j in range(x.shape[0]):
        ss += x[j] * x[j]
    inv = like(1.0 / math.sqrt(ss / max(x.shape[0], 1) + eps), ss)
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
            out[j] = stored(stream[j], out)


CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a NumPy view for the numba kernels (bf16 as its uint16 bits: numba
    has no bf16, the kernels widen the bits to float32)."""
    t = t.detach().contiguous()
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def _cpu_arrays(name, W, v, idx):
    """NumPy views of ``W``, ``v``, ``idx`` for the numba kernels, and the output dtype."""
    if W.dtype not in CPU_DTYPES:
        raise TypeError(f"{name}: the CPU kernel supports float32/float64/bfloat16, got {W.dtype}")
    Wn = numpy_view(W)
    acc_dtype = np.float32 if Wn.dtype == np.uint16 else Wn.dtype  # bf16 accumulates in float32
    return Wn, numpy_view(v), idx.contiguous().numpy(), acc_dtype


def _as_tensor(out: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The kernel's output as a tensor of ``dtype``, converted only if it differs (bf16): even a
    no-op ``.to()`` costs ~30 µs when the caches are cold, as between the layers of a decode."""
    t = torch.from_numpy(out)
    return t if t.dtype == dtype else t.to(dtype)


# --------------------------------------------------------------------------- the tier's functions

def gather_gemv(Wt: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``y = Σ_p v[idx[p]] · Wt[idx[p]]``: see the reference ``ref.gather_gemv_ref``.

    Optimizations: split-K over the team (each thread streams whole rows of ``Wt`` into its own
    partial sum, the caller adds the partials), eight rows per pass, the next eight prefetched."""
    W, vv, ii, acc_dtype = _cpu_arrays("gather_gemv", Wt, v, idx)
    check_range("gather_gemv", ii, W.shape[0])
    out = np.zeros(W.shape[1], dtype=acc_dtype)
    size = TEAM.size()
    partial = np.zeros((size, W.shape[1]), dtype=acc_dtype)
    TEAM.run(_gather_gemv_cpu, W, vv, ii, partial, out, size=size)
    return _as_tensor(out, Wt.dtype)


def row_gemv(W: torch.Tensor, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``h[p] = W[idx[p]] · x``: see the reference ``ref.row_gemv_ref``.

    Optimizations: chunks of the active list claimed by the team's threads; eight rows per pass
    share each load of ``x``; the next eight rows prefetched."""
    WW, xx, ii, acc_dtype = _cpu_arrays("row_gemv", W, x, idx)
    check_range("row_gemv", ii, WW.shape[0])
    out = np.zeros(ii.shape[0], dtype=acc_dtype)
    TEAM.run(_row_gemv_cpu, WW, xx, ii, out)
    return _as_tensor(out, W.dtype)


def fused_ffn(W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor, x: torch.Tensor,
              idx: torch.Tensor, activation: str) -> torch.Tensor:
    """``y = Σ_p act(W1[idx[p]] · x + b1[idx[p]]) · W2t[idx[p]]``: see the reference
    ``ref.fused_ffn_ref``.

    Optimizations: one pass per neuron (its W1 row's dot product, the activation, its W2t row
    added), the hidden values never leave registers; split-K over the team as in
    :func:`gather_gemv`."""
    W1n, xx, ii, acc_dtype = _cpu_arrays("fused_ffn", W1, x, idx)
    W2n, bb = numpy_view(W2t), numpy_view(b1)  # same dtype as W1 (checked)
    check_range("fused_ffn", ii, W1n.shape[0])
    out = np.zeros(W2n.shape[1], dtype=acc_dtype)
    size = TEAM.size()
    partial = np.zeros((size, W2n.shape[1]), dtype=acc_dtype)
    TEAM.run(_fused_ffn_cpu, W1n, bb, W2n, xx, ii, _ACT_CODES[activation], partial, out,
             size=size)
    return _as_tensor(out, W1.dtype)


class StackStep:
    """A decode step of the FFN stack on the CPU (what ``ffn.FusedFFNStack`` runs for
    ``impl="cpu_fast"``): every layer in one compiled call. See the reference
    ``ref.fused_ffn_stack_ref``.

    Optimizations, all prepared once here:

    - a packed copy of the weights in which each neuron's ``W1`` row and ``W2t`` row lie side by
      side, ``bundle[l, j] = (W1[l, j], W2t[l, j])`` (row-column bundling), in 2 MiB pages
      unless ``huge_pages`` is false; ``packed=False`` reads the given tensors instead;
    - buffers reused by every step (offsets, partial sums, the residual stream and its
      normalized copy, the result): a step makes three torch calls and one compiled call, because
      each torch or NumPy call costs 15–40 µs when the weight stream has evicted its code;
    - the team meets at a spin barrier between layers, inside the kernel.
    """

    def __init__(self, W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor, activation: str,
                 eps: float, packed: bool = True, huge_pages: bool = True):
        if W1.dtype not in CPU_DTYPES:
            raise TypeError(f"FusedFFNStack: the CPU kernel supports float32/float64/bfloat16, "
                            f"got {W1.dtype}")
        self.W1, self.W2t = W1, W2t
        self.layers, self.d_ff, self.d_model = W1.shape
        self.code, self.eps = _ACT_CODES[activation], eps
        if packed:  # (layers, d_ff, 2, d_model): W1 and W2t as parts 0 and 1 of each row
            alloc = empty_huge_pages if huge_pages else torch.empty
            bundle = alloc(W1.shape[0], W1.shape[1], 2, W1.shape[2], dtype=W1.dtype)
            bundle[:, :, 0], bundle[:, :, 1] = W1, W2t
            self.W1, self.W2t = bundle[:, :, 0], bundle[:, :, 1]
            up, down = (bundle, 0), (bundle, 1)
        else:  # each matrix its own bundle of one part
            up, down = (W1.unsqueeze(2), 0), (W2t.unsqueeze(2), 0)
        # for the kernel: (NumPy view of a bundle, part) for W1 and W2t, and b1
        self._arrays = ((numpy_view(up[0]), up[1]), numpy_view(b1), (numpy_view(down[0]), down[1]))
        # one step at a time uses the buffers; the kernel leaves the partial sums zero after
        # each layer, and x is copied into the residual stream with one torch call
        self._lock = threading.Lock()
        self._offsets = np.zeros(self.layers + 1, dtype=np.int64)
        self._stream_t = torch.empty(self.d_model, dtype=stack_dtype(W1.dtype))
        self._stream = self._stream_t.numpy()
        self._u = np.empty_like(self._stream)
        self._out_t = torch.empty(self.d_model, dtype=W1.dtype)
        self._out = numpy_view(self._out_t)
        self._partial = np.zeros((0, self.d_model), dtype=self._u.dtype)  # a row per team thread

    def __call__(self, x: torch.Tensor, idx) -> torch.Tensor:
        if isinstance(idx, torch.Tensor):  # (layers, k): every set in one array already
            ii, sizes = idx.numpy().reshape(-1), (idx.shape[1],) * idx.shape[0]
        else:
            ii = torch.cat(list(idx)).numpy() if idx else np.zeros(0, dtype=np.int64)
            sizes = [i.shape[0] for i in idx]
        check_range("FusedFFNStack", ii, self.d_ff)
        with self._lock:
            offsets, total = self._offsets, 0  # layer l's neurons: ii[offsets[l]:offsets[l+1]]
            for layer, k in enumerate(sizes):
                total += k
                offsets[layer + 1] = total
            size = TEAM.size()
            if self._partial.shape[0] != size:
                self._partial = np.zeros((size, self.d_model), dtype=self._u.dtype)
            self._stream_t.copy_(x)
            TEAM.run(_fused_ffn_stack_cpu, *self._arrays, ii, offsets, self.code, self.eps,
                     self._stream, self._u, self._partial, self._out, size=size,
                     slots=2 * self.layers + 1)
            return self._out_t.clone()
