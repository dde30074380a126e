"""The ``ffn`` benchmark suite: batch-1 decode GEMVs of an FFN with a sparse active set.

``python -m course_lib.bench ffn [--quick] [--device cpu|cuda] [--out DIR]``

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
kernel did get in huge pages (``ffn.huge_page_share``; Linux may refuse them).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import shlex
import sys
from pathlib import Path

import torch

from . import bench, ffn

#: 1.0 runs the sparse kernel on every row: its own dense rate, the reference for the others
DENSITIES = (1.0, 0.5, 0.25, 0.1, 0.05)
FULL = dict(d_model=4096, d_ff=16384, repeats=20, probe_bytes=512 * 2**20, layers=8)
QUICK = dict(d_model=512, d_ff=2048, repeats=5, probe_bytes=64 * 2**20, layers=2)


def _dtypes(device: str) -> list[torch.dtype]:
    """fp32 and bf16: both kernels (numba on CPU, Triton on CUDA) read bf16 and accumulate in fp32."""
    return [torch.float32, torch.bfloat16]


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


def run(d_model: int, d_ff: int, repeats: int, device: str = "cpu",
        densities=DENSITIES, seed: int = 0, probe_bytes: int = 512 * 2**20,
        layers: int = 8) -> tuple[list[dict], float]:
    """Measure every (op, dtype, density); returns the rows and the measured bandwidth (GB/s)."""
    gen = torch.Generator().manual_seed(seed)
    bandwidth = bench.memory_bandwidth(nbytes=probe_bytes, device=device)
    rows = []
    for dtype in _dtypes(device):  # one dtype's weights at a time (fp32: ~13 GiB with the defaults)
        rows += _run_dtype(dtype, d_model, d_ff, repeats, device, densities, gen, seed,
                           probe_bytes, layers)
    return rows, bandwidth


def _run_dtype(dtype, d_model, d_ff, repeats, device, densities, gen, seed, probe_bytes,
               layers) -> list[dict]:
    """:func:`run`'s rows for one dtype."""
    def weights(*shape):
        return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)

    W1s, b1s, W2ts = decode_layers(weights(d_ff, d_model), weights(d_ff),
                                   weights(d_ff, d_model), layers)
    stack = list(zip(W1s, b1s, W2ts))  # the layers as views
    W1, b1, W2t = stack[0]
    W2 = _copies(W2t.t(), 1)[0]  # the dense baseline's row-major W2
    # one call per step: its packed weights in huge pages, in 4 KiB pages, and not packed
    steps = {"stack": ffn.FusedFFNStack(W1s, b1s, W2ts),
             "stack_plain": ffn.FusedFFNStack(W1s, b1s, W2ts, huge_pages=False),
             "stack_separate": ffn.FusedFFNStack(W1s, b1s, W2ts, packed=False)}
    huge = {name: ffn.huge_page_share(step.W1) for name, step in steps.items()}
    itemsize = W1.element_size()

    def vec(n):
        return lambda: (torch.randn(n, generator=gen).to(dtype=dtype, device=device),)

    def active(k):
        return torch.randperm(d_ff, generator=gen)[:k].sort().values.to(device)

    def step_inputs(k):  # a decode step's input and every layer's set, as one (layers, k) tensor
        return vec(d_model)()[0], torch.stack([active(k) for _ in stack])

    # (op, dense baseline(v), sparse kernel(layer, v, idx), reference(v, idx), len(v), matrices)
    ops = (
        ("down", lambda h: torch.mv(W2, h), lambda L, h, i: ffn.gather_gemv(L[2], h, i),
         lambda h, i: ffn.gather_gemv_ref(W2t, h, i), d_ff, 1),
        ("up", lambda x: torch.mv(W1, x), lambda L, x, i: ffn.row_gemv(L[0], x, i),
         lambda x, i: ffn.row_gemv_ref(W1, x, i), d_model, 1),
        ("ffn", lambda x: torch.mv(W2, torch.relu(torch.mv(W1, x) + b1)),
         lambda L, x, i: ffn.fused_ffn(*L, x, i),
         lambda x, i: ffn.fused_ffn_ref(W1, b1, W2t, x, i), d_model, 2),
    )
    # every timed case: (fn, fresh inputs, bytes it must read); timed interleaved below
    cases, naive = {}, {}
    actives = {density: max(1, round(density * d_ff)) for density in densities}
    for op, dense_fn, kernel, naive_fn, vec_len, matrices in ops:
        sparse_fn = functools.partial(kernel, stack[0])

        def decode_pass(*inputs, kernel=kernel):  # the op once per layer, back to back
            for layer, (v, i) in zip(stack, inputs):
                kernel(layer, v, i)

        def sparse_inputs(k, n=vec_len):
            return vec(n)()[0], active(k)

        cases[op, "dense"] = (dense_fn, vec(vec_len), matrices * d_ff * d_model * itemsize)
        # the fixed cost of a call: one that reads no weights, timed in the same conditions
        # (after the probes have flushed the caches), so that it can be told apart
        cases[op, "call"] = (sparse_fn, functools.partial(sparse_inputs, 0), 0)
        for density, k in actives.items():
            fresh = functools.partial(sparse_inputs, k)
            nbytes = matrices * ffn.gemv_bytes(k, d_model, itemsize) + 8 * k  # + int64 indices
            cases[op, density] = (sparse_fn, fresh, nbytes)
            cases[op, "pass", density] = (
                decode_pass, lambda fresh=fresh: [fresh() for _ in stack], layers * nbytes)
            naive[op, density] = bench.measure(naive_fn, fresh, repeats=max(3, repeats // 4),
                                               device=device)
            if op == "ffn":  # the fused FFN's pass as one call per step
                for name, step in steps.items():
                    cases[name, density] = (step, functools.partial(step_inputs, k),
                                            layers * nbytes)
    for name, step in steps.items():  # the fixed cost of a step: every layer's set empty
        cases[name, "call"] = (step, functools.partial(step_inputs, 0), 0)
    runs = bench.measure_interleaved(cases, repeats=repeats, device=device,
                                     nbytes=probe_bytes, seed=seed)

    rows = []
    for op, *_, matrices in ops:
        dense, call_s = runs[op, "dense"], runs[op, "call"].timing.median
        for density, k in actives.items():
            measured, loop = runs[op, density], runs[op, "pass", density]
            sparse, nbytes = measured.timing, measured.work_bytes
            stacked = {}
            for name in steps:
                ms = share = bw = call_ms = beyond = in_huge = math.nan
                if op == "ffn":
                    one_call, step_call_s = runs[name, density], runs[name, "call"].timing.median
                    ms = one_call.timing.median / layers * 1e3
                    share, bw = one_call.share, one_call.bandwidth_GBs
                    call_ms, beyond = step_call_s * 1e3, one_call.share_beyond(step_call_s)
                    in_huge = math.nan if huge[name] is None else huge[name]
                stacked |= {f"{name}_ms": ms, f"{name}_share": share,
                            f"{name}_bandwidth_GBs": bw, f"{name}_call_ms": call_ms,
                            f"{name}_share_beyond_call": beyond, f"{name}_huge_pages": in_huge}
            rows.append({
                "op": op, "dtype": str(dtype).removeprefix("torch."), "d_model": d_model,
                "d_ff": d_ff, "density": density, "active": k,
                "dense_ms": dense.timing.median * 1e3, "sparse_ms": sparse.median * 1e3,
                "sparse_q1_ms": sparse.q1 * 1e3, "sparse_q3_ms": sparse.q3 * 1e3,
                "naive_ms": naive[op, density].median * 1e3,
                "speedup": dense.timing.median / sparse.median, "bound": 1.0 / density,
                "naive_speedup": dense.timing.median / naive[op, density].median,
                "dense_GBs": dense.work_bytes / dense.timing.median / 1e9,
                "dense_share": dense.share,
                "sparse_GBs": nbytes / sparse.median / 1e9,
                "bandwidth_GBs": measured.bandwidth_GBs, "share_of_bound": measured.share,
                "call_ms": call_s * 1e3, "share_beyond_call": measured.share_beyond(call_s),
                "loop_ms": loop.timing.median / layers * 1e3, "loop_share": loop.share,
                "loop_bandwidth_GBs": loop.bandwidth_GBs, **stacked,
            })
    return rows


def _print_table(rows: list[dict]) -> None:
    cols = ("op", "dtype", "density", "dense_ms", "sparse_ms", "naive_ms", "speedup", "bound",
            "sparse_GBs", "share_of_bound", "call_ms", "share_beyond_call", "loop_ms", "loop_share",
            "stack_share", "stack_plain_share", "stack_separate_share")
    print("  ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]:>14.3f}" if isinstance(r[c], float) else f"{r[c]:>14}" for c in cols))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.bench ffn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (seconds)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, help="write ffn_bench_<device>[_quick].csv here")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available on this machine", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    load_at_start = os.getloadavg()[0]  # other jobs sharing the cores, recorded with the results
    rows, bandwidth = run(**sizes, device=args.device)
    print(f"measured read bandwidth: {bandwidth:.1f} GB/s")
    _print_table(rows)
    if args.out is not None:
        meta = bench.machine_info(args.device)
        meta["bandwidth_GBs"] = f"{bandwidth:.2f}"
        meta["load_average_1min"] = f"{load_at_start:.2f} at start, {os.getloadavg()[0]:.2f} at end"
        meta["command"] = "python -m course_lib.bench ffn " + shlex.join(
            list(sys.argv[1:] if argv is None else argv))
        name = f"ffn_bench_{args.device}{'_quick' if args.quick else ''}.csv"
        print("wrote", bench.write_csv(rows, args.out / name, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
