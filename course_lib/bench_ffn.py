"""The ``ffn`` benchmark suite: batch-1 decode GEMVs of an FFN with a sparse active set.

``python -m course_lib.bench ffn [--quick|--tiny] [--device cpu|cuda] [--out DIR]``

The products of a ``d_model × d_ff`` FFN (default 4096 × 16384, as in a 7B-class model), at
densities 100 (the sparse kernel's own dense rate)/50/25/10/5 %, each call on a **fresh** random
active set (sorted, as ``nonzero`` returns it):

* ``down``: ``y = W2[:, S] · h[S]`` with ``ffn.gather_gemv`` on ``W2ᵀ``; baseline ``torch.mv(W2, h)``;
* ``up``:   ``h[S] = W1[S] · x`` with ``ffn.row_gemv`` (predicted rows); baseline ``torch.mv(W1, x)``;
* ``ffn``:  both in one pass, ``y = W2[:, S] · relu(W1[S] · x + b1[S])`` with ``ffn.fused_ffn``;
  baseline the dense FFN ``torch.mv(W2, relu(torch.mv(W1, x) + b1))``.

Per row: dense, sparse and naive (``index_select``, copies the rows) medians, the speed-up, its
bound ``1/density``, the sparse kernel's achieved GB/s, and its share of the bandwidth bound:
every timed call is followed by the read-bandwidth probes (this host's bandwidth switches between
levels within seconds), and the share is the median over calls of the call's GB/s over the
bandwidth probed right after it (``dense_share``: the same for the dense baseline). All timed
cases of a dtype (baselines, calls, passes, steps) are measured **interleaved**
(``bench.measure_interleaved``: each round runs every case once, in a shuffled order), so that a
slow stretch of the shared host spreads over every row instead of landing on one. ``call_ms`` is the fixed cost of a
call that reads no weights, timed the same way (the probes flush the caches, so it includes
refilling them with Python's and numba's state); ``share_beyond_call`` is the share of the time
beyond it, i.e. how close the kernel streams to the bound once it runs.

An isolated call after a cache flush is the pessimistic case. A decode step runs the same op in
layer after layer, so ``loop_ms`` and ``loop_share`` time a **decode pass**: the op on ``layers``
distinct layers' weights back to back (copies of the same values in separate memory, each larger
than the caches, so no layer finds another's rows cached), a fresh active set for each, the
probes after each pass (``loop_bandwidth_GBs``). Python's and numba's state stays warm; the
weights do not. For ``ffn``, ``stack_ms`` and ``stack_share`` time the same pass as **one call**
(``ffn.FusedFFNStack``, prepared once: pre-norm residual blocks, the thread team at a barrier
between layers, no Python in between; the active sets as one ``(layers, k)`` tensor), as a
compiled decode step runs it; ``stack_call_ms`` is the fixed cost of such a step (every active
set empty, timed after the probes) and ``stack_share_beyond_call`` the share of the time beyond it.

The layers' weights lie in 2 MiB transparent huge pages (``ffn.empty_huge_pages``), and the
stack packs its own copy, each neuron's W1 and W2t rows side by side. To measure what each is
worth, the one-call pass is also timed, in the same rounds, with the packed copy in ordinary
4 KiB pages (``stack_plain_*``) and without packing, on the layers as they are
(``stack_separate_*``). ``<step>_huge_pages`` records the share of each step's weights that the
kernel did get in huge pages (``ffn.huge_page_share``; Linux may refuse them). On CUDA (and with
``--interpret``) the kernels are the Triton ones, the step is ``stack`` only (the GPU path neither
packs nor uses huge pages) and the CPU-only columns are NaN.

Writes ``<suite>_<device>[_<size>].csv`` (``bench.csv_name``; metadata: ``bench.run_metadata``).

Chapter: book/fast/sparse_ffn.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, replace
from typing import Callable

import torch

from . import bench, ffn

#: 1.0 runs the sparse kernel on every row: its own dense rate, the reference for the others
DENSITIES = (1.0, 0.5, 0.25, 0.1, 0.05)
#: the one-call step, as measured on the CPU: packed in 2 MiB pages, packed in 4 KiB pages, and
#: the layers as they are (not packed); on CUDA only the first
STEPS = ("stack", "stack_plain", "stack_separate")


@dataclass(frozen=True)
class Setup:
    """What one run measures: the FFN's size, the timing's repeats and warm-up rounds, the
    decode pass's layers, the bandwidth probe's buffer, the densities, the device and the
    kernels' tier (``auto``: the numba kernels on the CPU, Triton on CUDA; ``triton`` on the CPU
    runs the interpreter)."""

    d_model: int
    d_ff: int
    repeats: int
    warmup: int = 3
    layers: int = 8
    probe_bytes: int = 512 * 2**20
    densities: tuple[float, ...] = DENSITIES
    device: str = "cpu"
    impl: str = "auto"
    seed: int = 0

    @property
    def numba_kernels(self) -> bool:
        """Whether the kernels are the CPU ones (which pack, use huge pages and have variants)."""
        return self.device == "cpu" and self.impl in ("auto", "cpu_fast")

    def active(self, density: float) -> int:
        """Active neurons at ``density`` (at least one)."""
        return max(1, round(density * self.d_ff))


SIZES = {
    "full": Setup(d_model=4096, d_ff=16384, repeats=20, layers=8),  # a 7B-class model's FFN
    "quick": Setup(d_model=512, d_ff=2048, repeats=5, layers=2, probe_bytes=64 * 2**20),
    "tiny": Setup(d_model=64, d_ff=256, repeats=2, warmup=1, layers=2, probe_bytes=16 * 2**20,
                  densities=(0.5, 0.1)),
}


def _copies(t: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` copies of ``t`` stacked, ``(n, *t.shape)``, on CPU in 2 MiB pages."""
    if t.device.type == "cpu":
        out = ffn.empty_huge_pages(n, *t.shape, dtype=t.dtype)
    else:
        out = torch.empty(n, *t.shape, dtype=t.dtype, device=t.device)
    out[:] = t
    return out


def decode_layers(W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor,
                  layers: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A decode step's ``layers`` layers, stacked: ``W1s``, ``W2ts`` ``(layers, d_ff, d_model)``
    and ``b1s`` ``(layers, d_ff)``, each layer a copy of the given one in separate memory (so
    that no layer can find another's rows in a cache), on CPU in 2 MiB pages
    (``ffn.empty_huge_pages``)."""
    return _copies(W1, layers), _copies(b1, layers), _copies(W2t, layers)


@dataclass(frozen=True)
class Op:
    """One product: the torch baseline ``dense(v)`` on layer 0, the sparse ``kernel(layer, v,
    idx)``, the ``naive(v, idx)`` version that copies the rows (``index_select``), the length of
    its input vector and how many ``d_ff × d_model`` matrices it reads."""

    name: str
    dense: Callable
    kernel: Callable
    naive: Callable
    vec_len: int
    matrices: int


def _ops(layers: list, setup: Setup) -> list[Op]:
    """``down`` (gather GEMV), ``up`` (row GEMV) and ``ffn`` (both fused), on ``layers``' views."""
    W1, b1, W2t = layers[0]
    W2 = _copies(W2t.t(), 1)[0]  # the dense baseline's row-major W2
    impl = setup.impl
    return [
        Op("down", lambda h: torch.mv(W2, h), lambda L, h, i: ffn.gather_gemv(L[2], h, i, impl=impl),
           lambda h, i: ffn.gather_gemv_ref(W2t, h, i), setup.d_ff, 1),
        Op("up", lambda x: torch.mv(W1, x), lambda L, x, i: ffn.row_gemv(L[0], x, i, impl=impl),
           lambda x, i: ffn.row_gemv_ref(W1, x, i), setup.d_model, 1),
        Op("ffn", lambda x: torch.mv(W2, torch.relu(torch.mv(W1, x) + b1)),
           lambda L, x, i: ffn.fused_ffn(*L, x, i, impl=impl),
           lambda x, i: ffn.fused_ffn_ref(W1, b1, W2t, x, i), setup.d_model, 2),
    ]


def _steps(W1s, b1s, W2ts, setup: Setup) -> dict[str, ffn.FusedFFNStack]:
    """The one-call decode step (:data:`STEPS`) as the device runs it."""
    if not setup.numba_kernels:
        return {"stack": ffn.FusedFFNStack(W1s, b1s, W2ts, impl=setup.impl)}
    return {"stack": ffn.FusedFFNStack(W1s, b1s, W2ts),
            "stack_plain": ffn.FusedFFNStack(W1s, b1s, W2ts, huge_pages=False),
            "stack_separate": ffn.FusedFFNStack(W1s, b1s, W2ts, packed=False)}


@dataclass
class _Draws:
    """Fresh random inputs, drawn from one seeded generator, made on the device."""

    setup: Setup
    dtype: torch.dtype
    gen: torch.Generator

    def vec(self, n: int) -> torch.Tensor:
        return torch.randn(n, generator=self.gen).to(dtype=self.dtype, device=self.setup.device)

    def active(self, k: int) -> torch.Tensor:
        """``k`` distinct neurons, sorted (as ``nonzero`` returns them)."""
        d_ff = self.setup.d_ff
        return torch.randperm(d_ff, generator=self.gen)[:k].sort().values.to(self.setup.device)

    def call(self, n: int, k: int) -> tuple:
        """A sparse call's inputs: a vector of length ``n`` and ``k`` active neurons."""
        return self.vec(n), self.active(k)

    def step(self, k: int) -> tuple:
        """A step's input and every layer's set, as one ``(layers, k)`` tensor."""
        return self.vec(self.setup.d_model), torch.stack([self.active(k)
                                                          for _ in range(self.setup.layers)])


def _cases(setup: Setup, layers: list, ops: list[Op], steps: dict, draw: _Draws) -> dict:
    """Every timed case of one dtype, ``key → (fn, fresh inputs, bytes it must read)``, keys:
    ``(op, "dense")``, ``(op, "call")`` (a call that reads no weights: the fixed cost of a call,
    timed in the same conditions, after the probes have flushed the caches), ``(op, density)``,
    ``(op, "pass", density)`` (the op once per layer, back to back), ``(step, density)`` and
    ``(step, "call")`` (a step with every layer's set empty)."""
    itemsize = layers[0][0].element_size()
    cases = {}
    for op in ops:
        sparse_fn = functools.partial(op.kernel, layers[0])

        def decode_pass(*inputs, kernel=op.kernel):
            for layer, (v, i) in zip(layers, inputs):
                kernel(layer, v, i)

        cases[op.name, "dense"] = (op.dense, lambda n=op.vec_len: (draw.vec(n),),
                                   op.matrices * setup.d_ff * setup.d_model * itemsize)
        cases[op.name, "call"] = (sparse_fn, functools.partial(draw.call, op.vec_len, 0), 0)
        for density in setup.densities:
            k = setup.active(density)
            fresh = functools.partial(draw.call, op.vec_len, k)
            nbytes = op.matrices * ffn.gemv_bytes(k, setup.d_model, itemsize) + 8 * k  # + int64 indices
            cases[op.name, density] = (sparse_fn, fresh, nbytes)
            cases[op.name, "pass", density] = (
                decode_pass, lambda fresh=fresh: [fresh() for _ in layers], setup.layers * nbytes)
            if op.name == "ffn":  # the fused FFN's pass as one call per step
                for name, step in steps.items():
                    cases[name, density] = (step, functools.partial(draw.step, k),
                                            setup.layers * nbytes)
    for name, step in steps.items():
        cases[name, "call"] = (step, functools.partial(draw.step, 0), 0)
    return cases


def _step_columns(name: str, runs: dict, density: float, setup: Setup, huge: dict) -> dict:
    """A one-call step's columns of the ``ffn`` row at ``density`` (NaN where not measured)."""
    columns = dict.fromkeys(("ms", "share", "bandwidth_GBs", "call_ms", "share_beyond_call",
                             "huge_pages"), math.nan)
    if (name, density) in runs:
        one_call, call_s = runs[name, density], runs[name, "call"].timing.median
        columns.update(ms=one_call.timing.median / setup.layers * 1e3, share=one_call.share,
                       bandwidth_GBs=one_call.bandwidth_GBs, call_ms=call_s * 1e3,
                       share_beyond_call=one_call.share_beyond(call_s),
                       huge_pages=math.nan if huge.get(name) is None else huge[name])
    return {f"{name}_{key}": value for key, value in columns.items()}


def _row(op: Op, density: float, dtype: torch.dtype, setup: Setup, runs: dict, naive: dict,
         huge: dict) -> dict:
    """The CSV row of one (op, dtype, density)."""
    dense, call_s = runs[op.name, "dense"], runs[op.name, "call"].timing.median
    measured, loop = runs[op.name, density], runs[op.name, "pass", density]
    sparse = measured.timing
    steps = {}
    for name in STEPS:
        steps |= _step_columns(name, runs if op.name == "ffn" else {}, density, setup, huge)
    return {
        "op": op.name, "dtype": str(dtype).removeprefix("torch."), "d_model": setup.d_model,
        "d_ff": setup.d_ff, "density": density, "active": setup.active(density),
        "dense_ms": dense.timing.median * 1e3, "sparse_ms": sparse.median * 1e3,
        "sparse_q1_ms": sparse.q1 * 1e3, "sparse_q3_ms": sparse.q3 * 1e3,
        "naive_ms": naive[op.name, density].median * 1e3,
        "speedup": dense.timing.median / sparse.median, "bound": 1.0 / density,
        "naive_speedup": dense.timing.median / naive[op.name, density].median,
        "dense_GBs": dense.work_bytes / dense.timing.median / 1e9, "dense_share": dense.share,
        "sparse_GBs": measured.work_bytes / sparse.median / 1e9,
        "bandwidth_GBs": measured.bandwidth_GBs, "share_of_bound": measured.share,
        "call_ms": call_s * 1e3, "share_beyond_call": measured.share_beyond(call_s),
        "loop_ms": loop.timing.median / setup.layers * 1e3, "loop_share": loop.share,
        "loop_bandwidth_GBs": loop.bandwidth_GBs, **steps,
    }


def _run_dtype(setup: Setup, dtype: torch.dtype, gen: torch.Generator) -> list[dict]:
    """:func:`run`'s rows for one dtype: every case timed interleaved, then one row per
    (op, density)."""
    draw = _Draws(setup, dtype, gen)
    W1s, b1s, W2ts = decode_layers(draw.vec(setup.d_ff * setup.d_model).view(setup.d_ff, -1),
                                   draw.vec(setup.d_ff),
                                   draw.vec(setup.d_ff * setup.d_model).view(setup.d_ff, -1),
                                   setup.layers)
    layers = list(zip(W1s, b1s, W2ts))  # the layers as views
    ops, steps = _ops(layers, setup), _steps(W1s, b1s, W2ts, setup)
    huge = {name: ffn.huge_page_share(step.W1) if setup.device == "cpu" else None
            for name, step in steps.items()}
    cases = _cases(setup, layers, ops, steps, draw)
    naive = {(op.name, density): bench.measure(op.naive, cases[op.name, density][1],
                                               repeats=max(3, setup.repeats // 4),
                                               device=setup.device)
             for op in ops for density in setup.densities}
    runs = bench.measure_interleaved(cases, repeats=setup.repeats, warmup=setup.warmup,
                                     device=setup.device, nbytes=setup.probe_bytes, seed=setup.seed)
    return [_row(op, density, dtype, setup, runs, naive, huge)
            for op in ops for density in setup.densities]


def run(setup: Setup) -> tuple[list[dict], float]:
    """Measure every (op, dtype, density) of ``setup``, fp32 then bf16 (both kernels read bf16
    and accumulate in fp32); returns the rows and the read bandwidth (GB/s) measured at the start."""
    gen = torch.Generator().manual_seed(setup.seed)
    bandwidth = bench.memory_bandwidth(nbytes=setup.probe_bytes, device=setup.device)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):  # one dtype's weights at a time (fp32: ~13 GiB in full)
        rows += _run_dtype(setup, dtype, gen)
        if setup.device == "cuda":
            torch.cuda.empty_cache()
    return rows, bandwidth


def _print_table(rows: list[dict]) -> None:
    cols = ("op", "dtype", "density", "dense_ms", "sparse_ms", "naive_ms", "speedup", "bound",
            "sparse_GBs", "share_of_bound", "call_ms", "share_beyond_call", "loop_ms", "loop_share",
            "stack_share", "stack_plain_share", "stack_separate_share")
    print("  ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]:>14.3f}" if isinstance(r[c], float) else f"{r[c]:>14}" for c in cols))


def main(argv=None) -> int:
    args = bench.parse_suite_args("ffn", __doc__, argv)
    setup = replace(SIZES[args.size], device=args.device,
                    impl="triton" if args.interpret else "auto")
    load_at_start = os.getloadavg()[0]
    rows, bandwidth = run(setup)
    print(f"measured read bandwidth: {bandwidth:.1f} GB/s")
    _print_table(rows)
    print("wrote", bench.write_csv(rows, args.out / bench.csv_name(args),
                                   bench.run_metadata(args, bandwidth, load_at_start)))
    return 0
