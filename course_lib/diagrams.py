"""Conceptual diagrams drawn by code, so a reader can regenerate (and change) each one.

Every drawing function returns the matplotlib ``Figure``; the numbers a drawing shows come from a
small pure function next to it (``gather_reads``, ``roofline``), which the tests check against an
independent computation.

| function | chapter |
|---|---|
| ``sparse_layouts`` | ``book/fast/formats`` (CSR, BSR and 2:4 layouts of one matrix) |
| ``gather_gemv_reads`` | ``book/fast/formats`` (the weights a gather-GEMV reads) |
| ``ffn_block`` | ``book/foundations/activations`` (where an FFN's zeros appear) |
| ``decode_roofline`` | ``book/brain/brain`` (batch-1 decode on the roofline) |

Chapter: book/fast/formats, book/foundations/activations, book/brain/brain
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, Rectangle

from course_lib import formats

_ZERO, _NONZERO, _FILL, _SKIP = "#f4f4f4", "#4a6fa5", "#f2c14e", "#dddddd"


def _matrix(A, name: str = "A") -> np.ndarray:
    A = np.asarray(A)
    if A.ndim != 2 or 0 in A.shape:
        raise ValueError(f"{name} must be a non-empty 2-D matrix, got shape {A.shape}")
    if not np.issubdtype(A.dtype, np.number):
        raise TypeError(f"{name} must be numeric, got dtype {A.dtype}")
    return A


def _grid(ax, colors, labels=None, title=""):
    """Draw a matrix of cell colours (row 0 at the top) with optional text in each cell."""
    rows, cols = colors.shape[:2]
    for i in range(rows):
        for j in range(cols):
            ax.add_patch(Rectangle((j, rows - 1 - i), 1, 1, fc=colors[i, j], ec="white", lw=1.5))
            if labels is not None and labels[i][j] != "":
                ax.text(j + 0.5, rows - 0.5 - i, labels[i][j], ha="center", va="center",
                        fontsize=8, color="white" if colors[i, j] == _NONZERO else "black")
    ax.set(xlim=(0, cols), ylim=(0, rows), title=title)
    ax.set_aspect("equal")
    ax.axis("off")


def _array_row(ax, y, name, values, color="#e8f0fe"):
    """One labelled row of boxes holding ``values`` (a stored array of a sparse format)."""
    ax.text(-0.3, y + 0.5, name, ha="right", va="center", fontsize=9, family="monospace")
    for k, v in enumerate(values):
        ax.add_patch(Rectangle((k, y), 1, 1, fc=color, ec="#4a6fa5"))
        ax.text(k + 0.5, y + 0.5, v, ha="center", va="center", fontsize=8)


def _value_labels(A):
    return [[f"{v:g}" if v else "" for v in row] for row in A]


def sparse_layouts(A=None, blocksize=(2, 2)) -> plt.Figure:
    """The same matrix in three layouts (chapter ``book/fast/formats``).

    Top row: the dense matrix (nonzeros blue), its BSR blocks (a block is stored as soon as one of
    its entries is nonzero; the zeros it stores, the fill-in, are yellow) and its 2:4 pattern (the
    two largest magnitudes of every group of four consecutive entries in a row are kept).
    Bottom: the CSR arrays, ``indptr[i]:indptr[i+1]`` is the slice of ``indices``/``data``
    that holds row ``i``.
    """
    if A is None:
        A = np.array([[1, 0, 0, 2, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0, 0, 0, 0],
                      [0, 3, 4, 0, 0, 0, 5, 0],
                      [0, 0, 0, 0, 0, 6, 0, 0]], dtype=np.float32)
    A = _matrix(A)
    R, C = blocksize
    if A.shape[0] % R or A.shape[1] % C:
        raise ValueError(f"blocksize {blocksize} must divide the shape {A.shape}")
    if A.shape[1] % 4:
        raise ValueError(f"the 2:4 panel needs a column count divisible by 4, got {A.shape[1]}")
    csr = formats.CSR.from_dense(A, np.int32)
    nz = A != 0
    stored_block = nz.reshape(A.shape[0] // R, R, A.shape[1] // C, C).any(axis=(1, 3))
    in_stored = np.kron(stored_block, np.ones((R, C), dtype=bool))
    keep = formats.nm_mask(A, 2, 4)

    fig = plt.figure(figsize=(11, 5.2))
    top = [fig.add_axes([0.02 + 0.33 * k, 0.42, 0.3, 0.5]) for k in range(3)]
    bottom = fig.add_axes([0.12, 0.02, 0.86, 0.3])
    dense_c = np.where(nz, _NONZERO, _ZERO)
    _grid(top[0], dense_c, _value_labels(A), f"dense {A.shape[0]}×{A.shape[1]}: {int(nz.sum())} nonzeros")
    bsr_c = np.where(nz, _NONZERO, np.where(in_stored, _FILL, _ZERO))
    _grid(top[1], bsr_c, _value_labels(A),
          f"BSR {R}×{C}: {int(stored_block.sum())} of {stored_block.size} blocks stored\n"
          f"({int((in_stored & ~nz).sum())} stored zeros = fill-in, yellow)")
    for bi, bj in zip(*np.nonzero(stored_block)):
        top[1].add_patch(Rectangle((bj * C, A.shape[0] - (bi + 1) * R), C, R, fill=False,
                                   ec="black", lw=1.5))
    nm_c = np.where(keep, np.where(nz, _NONZERO, _FILL), _ZERO)
    _grid(top[2], nm_c, _value_labels(A),
          "2:4: keep 2 of every 4 in a row\n(kept zeros yellow; dropped nonzeros lost)")
    for g in range(1, A.shape[1] // 4):
        top[2].axvline(4 * g, color="black", lw=1.5)

    _array_row(bottom, 2.2, "indptr", [str(v) for v in csr.indptr], "#fde9c9")
    _array_row(bottom, 1.1, "indices", [str(v) for v in csr.indices])
    _array_row(bottom, 0.0, "data", [f"{v:g}" for v in csr.data])
    for i in range(A.shape[0]):   # bracket the slice of each row under the data array
        lo, hi = csr.indptr[i], csr.indptr[i + 1]
        if hi > lo:
            bottom.plot([lo + 0.1, hi - 0.1], [-0.15, -0.15], color="0.3", lw=1.5)
            bottom.text((lo + hi) / 2, -0.55, f"row {i}", ha="center", fontsize=8)
    width = max(len(csr.indptr), csr.nnz)
    bottom.set(xlim=(-2.2, width + 0.2), ylim=(-0.8, 3.3))
    bottom.set_title("CSR: row i is indices/data[indptr[i]:indptr[i+1]] (empty row: equal pointers)",
                     fontsize=9)
    bottom.set_aspect("equal")
    bottom.axis("off")
    return fig


def gather_reads(d_ff: int, d_model: int, active) -> tuple[np.ndarray, np.ndarray]:
    """Which weights a batch-1 sparse FFN step reads: boolean masks over W1 (d_ff × d_model,
    row j = neuron j's input weights) and W2ᵀ (d_ff × d_model, row j = neuron j's output weights).

    With the active set known (predicted, or the nonzeros of ReLU(W1 x)), neuron j's rows are read
    iff j is active: reads = |active| · d_model per matrix instead of d_ff · d_model.
    """
    for name, v in (("d_ff", d_ff), ("d_model", d_model)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    active = np.asarray(active)
    if active.ndim != 1 or (active.size and not np.issubdtype(active.dtype, np.integer)):
        raise TypeError(f"active must be a 1-D array of neuron indices, got {active!r}")
    if active.size and (active.min() < 0 or active.max() >= d_ff):
        raise ValueError(f"active indices must lie in [0, {d_ff}), got {active.tolist()}")
    rows = np.zeros(d_ff, dtype=bool)
    rows[active] = True
    mask = np.repeat(rows[:, None], d_model, axis=1)
    return mask, mask.copy()


def gather_gemv_reads(d_ff: int = 12, d_model: int = 6, active=(1, 4, 5, 9)) -> plt.Figure:
    """The weights a gather-GEMV reads for one token (chapter ``book/fast/formats``).

    Left: W1 with the rows of the active neurons read (blue) and the rest skipped (grey); centre:
    h, nonzero only at the active neurons; right: W2 stored transposed, so each active neuron's
    output weights are one contiguous row. A dense GEMV reads every row of both.
    """
    w1, w2t = gather_reads(d_ff, d_model, np.asarray(active, dtype=np.int64))
    fig, axes = plt.subplots(1, 3, figsize=(9, 4.2), gridspec_kw={"width_ratios": [d_model, 1.6, d_model]})
    _grid(axes[0], np.where(w1, _NONZERO, _SKIP), title=f"W1 ({d_ff}×{d_model}): rows read")
    h = np.where(w1[:, :1], _NONZERO, _ZERO)
    _grid(axes[1], h, [["≠0" if a else "0"] for a in w1[:, 0]], "h")
    _grid(axes[2], np.where(w2t, _NONZERO, _SKIP), title=f"W2ᵀ ({d_ff}×{d_model}): rows read")
    read = int(w1.sum() + w2t.sum())
    fig.suptitle(f"{len(set(np.asarray(active).tolist()))} of {d_ff} neurons active: "
                 f"{read} of {2 * d_ff * d_model} weights read ({read / (2 * d_ff * d_model):.0%})",
                 fontsize=10)
    return fig


def _box(ax, xy, text, color="#e8f0fe", w=1.6, h=0.7):
    x, y = xy
    ax.add_patch(Rectangle((x - w / 2, y - h / 2), w, h, fc=color, ec="#4a6fa5", lw=1.2))
    ax.text(x, y, text, ha="center", va="center", fontsize=8.5)


def _arrow(ax, a, b):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=10, color="0.35"))


def _note(ax, xy, text):
    ax.text(*xy, text, ha="center", va="top", fontsize=7.5, color="#a33")


def ffn_block(kinds=("relu", "swiglu")) -> plt.Figure:
    """The FFN block, ReLU and SwiGLU, marking where zeros appear and which weights they let a
    kernel skip (chapter ``book/foundations/activations``).

    ReLU: y = W2 ReLU(W1 x). h has exact zeros; a zero h_j lets the kernel skip row j of W2ᵀ
    (and row j of W1 too, if a predictor names the active set before W1 x is computed).
    SwiGLU: y = W_down (SiLU(W_gate x) ⊙ W_up x). SiLU has no exact zeros (only at 0), so nothing
    is skipped unless h is thresholded (TEAL-style) or the gate is made a ReLU; then a zero gate_j
    lets the kernel skip row j of W_up and of W_downᵀ.
    """
    kinds = tuple(kinds)
    if not kinds or any(k not in ("relu", "swiglu") for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of ('relu', 'swiglu'), got {kinds}")
    fig, axes = plt.subplots(len(kinds), 1, figsize=(10, 2.8 * len(kinds)), squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds):
        ax.set(xlim=(0, 10.4), ylim=(-0.4, 2.7))
        ax.axis("off")
        if kind == "relu":
            ax.set_title("ReLU FFN: y = W2 · ReLU(W1 x)", fontsize=10)
            _box(ax, (0.7, 1.5), "x", w=1.0)
            _box(ax, (3.0, 1.5), "W1 x\n(rows of W1)")
            _box(ax, (5.4, 1.5), "h = ReLU(·)\nexact zeros", "#fde9c9")
            _box(ax, (7.8, 1.5), "W2 h\n(rows of W2ᵀ)")
            _box(ax, (9.8, 1.5), "y", w=0.8)
            for a, b in (((1.2, 1.5), (2.2, 1.5)), ((3.8, 1.5), (4.6, 1.5)),
                         ((6.2, 1.5), (7.0, 1.5)), ((8.6, 1.5), (9.4, 1.5))):
                _arrow(ax, a, b)
            _note(ax, (3.0, 1.0), "row j skippable only if a predictor\nnames the active set first")
            _note(ax, (5.4, 1.0), "zeros appear here")
            _note(ax, (7.8, 1.0), "h_j = 0: skip row j of W2ᵀ")
        else:
            ax.set_title("SwiGLU FFN: y = W_down · (SiLU(W_gate x) ⊙ W_up x)", fontsize=10)
            _box(ax, (0.7, 1.3), "x", w=1.0)
            _box(ax, (3.0, 2.2), "SiLU(W_gate x)", "#fde9c9")
            _box(ax, (3.0, 0.4), "W_up x")
            _box(ax, (5.6, 1.3), "h = gate ⊙ up", "#fde9c9")
            _box(ax, (8.0, 1.3), "W_down h\n(rows of W_downᵀ)")
            _box(ax, (9.9, 1.3), "y", w=0.7)
            for a, b in (((1.2, 1.45), (2.2, 2.1)), ((1.2, 1.15), (2.2, 0.5)),
                         ((3.8, 2.1), (4.8, 1.45)), ((3.8, 0.5), (4.8, 1.15)),
                         ((6.4, 1.3), (7.2, 1.3)), ((8.8, 1.3), (9.55, 1.3))):
                _arrow(ax, a, b)
            _note(ax, (3.0, 1.75), "SiLU has no exact zeros; a ReLU gate would,\nand gate_j = 0 skips row j of W_up")
            _note(ax, (5.6, 0.85), "zeros only if thresholded\n(TEAL) or the gate is a ReLU")
            _note(ax, (8.0, 0.85), "h_j = 0: skip row j of W_downᵀ")
    fig.tight_layout()
    return fig


def roofline(intensity, bandwidth_gbs: float, peak_gflops: float) -> np.ndarray:
    """Attainable GFLOP/s = min(peak, intensity × bandwidth), the roofline model; intensity in
    FLOP/byte, bandwidth in GB/s."""
    if not (bandwidth_gbs > 0 and peak_gflops > 0):
        raise ValueError(f"bandwidth and peak must be > 0, got {bandwidth_gbs}, {peak_gflops}")
    intensity = np.asarray(intensity, dtype=float)
    if np.any(intensity <= 0):
        raise ValueError("arithmetic intensity must be > 0 FLOP/byte")
    return np.minimum(peak_gflops, intensity * bandwidth_gbs)


def decode_roofline(bandwidth_gbs: float, peak_gflops: float, points=()) -> plt.Figure:
    """The roofline with measured points (chapter ``book/brain/brain``).

    ``points``: (label, intensity FLOP/byte, measured GFLOP/s). Batch-1 decode sits far left:
    a GEMV does 2 FLOPs per weight, so 0.5 FLOP/byte with fp32 weights and 1 with 16-bit ones,
    where the roof is the bandwidth line, not the compute peak.
    """
    x = np.logspace(-2, 3, 200)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.loglog(x, roofline(x, bandwidth_gbs, peak_gflops), "k-", lw=1.5,
              label=f"roof: min({peak_gflops:.0f} GFLOP/s, I × {bandwidth_gbs:.1f} GB/s)")
    ridge = peak_gflops / bandwidth_gbs
    ax.axvline(ridge, color="0.6", ls=":", lw=1)
    ax.text(ridge * 1.1, roofline(ridge, bandwidth_gbs, peak_gflops) * 0.05,
            f"ridge {ridge:.1f} FLOP/B", fontsize=8, color="0.4")
    for name, inten in (("fp32 GEMV", 0.5), ("16-bit GEMV", 1.0)):
        ax.axvline(inten, color="#a33", ls="--", lw=0.8)
        ax.text(inten * 1.05, peak_gflops * 1.3, name, fontsize=8, color="#a33", rotation=90, va="top")
    for label, inten, gflops in points:
        ax.plot([inten], [gflops], "o", ms=7, label=f"{label}: {gflops:.1f} GFLOP/s")
    ax.set(xlabel="arithmetic intensity (FLOP per byte from memory)", ylabel="GFLOP/s",
           title="Decode on the roofline: batch-1 GEMV is memory bound")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
