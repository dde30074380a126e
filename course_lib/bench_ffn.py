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
every timed call is followed by the read-bandwidth probes (``bench.measure_with_bandwidth``: this
host's bandwidth switches between levels within seconds), and the share is the median over calls
of the call's GB/s over the bandwidth probed right after it. ``call_ms`` is the fixed cost of a
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
between layers, no Python in between), as a compiled decode step runs it; ``stack_call_ms`` is
the fixed cost of such a step (every active set empty, timed after the probes) and
``stack_share_beyond_call`` the share of the time beyond it.

The layers' weights lie in 2 MiB transparent huge pages (``ffn.empty_huge_pages``). To measure
what the pages are worth, the one-call pass is timed again, right after, on a copy of the layers
in ordinary 4 KiB pages (``stack_plain_share``, ``stack_plain_bandwidth_GBs``).
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


def _copies(t: torch.Tensor, n: int, huge_pages: bool) -> torch.Tensor:
    """``n`` copies of ``t`` stacked, ``(n, *t.shape)``, on CPU in 2 MiB pages if ``huge_pages``."""
    if huge_pages and t.device.type == "cpu":
        out = ffn.empty_huge_pages(n, *t.shape, dtype=t.dtype)
    else:
        out = torch.empty(n, *t.shape, dtype=t.dtype, device=t.device)
    out[:] = t
    return out


def decode_layers(W1: torch.Tensor, b1: torch.Tensor, W2t: torch.Tensor, layers: int,
                  huge_pages: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A decode step's ``layers`` layers, stacked: ``W1s``, ``W2ts`` ``(layers, d_ff, d_model)``
    and ``b1s`` ``(layers, d_ff)``, each layer a copy of the given one in separate memory (so
    that no layer can find another's rows in a cache), on CPU in 2 MiB pages
    (``ffn.empty_huge_pages``) unless ``huge_pages`` is false."""
    return _copies(W1, layers, huge_pages), _copies(b1, layers, huge_pages), \
        _copies(W2t, layers, huge_pages)


def run(d_model: int, d_ff: int, repeats: int, device: str = "cpu",
        densities=DENSITIES, seed: int = 0, probe_bytes: int = 512 * 2**20,
        layers: int = 8) -> tuple[list[dict], float]:
    """Measure every (op, dtype, density); returns the rows and the measured bandwidth (GB/s)."""
    gen = torch.Generator().manual_seed(seed)
    bandwidth = bench.memory_bandwidth(nbytes=probe_bytes, device=device)
    rows = []
    for dtype in _dtypes(device):
        def weights(*shape):
            return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)

        W1s, b1s, W2ts = decode_layers(weights(d_ff, d_model), weights(d_ff),
                                       weights(d_ff, d_model), layers)
        stack = list(zip(W1s, b1s, W2ts))  # the layers as views
        W1, b1, W2t = stack[0]
        W2 = _copies(W2t.t(), 1, True)[0]  # the dense baseline's row-major W2
        # one call per step, on the layers in huge pages and on a copy in 4 KiB pages
        steps = {"stack": ffn.FusedFFNStack(W1s, b1s, W2ts),
                 "stack_plain": ffn.FusedFFNStack(*decode_layers(W1, b1, W2t, layers, False))}
        itemsize = W1.element_size()

        def vec(n):
            return lambda: (torch.randn(n, generator=gen).to(dtype=dtype, device=device),)

        # (op, dense baseline(v), sparse kernel(layer, v, idx), reference(v, idx), len(v), matrices)
        for op, dense_fn, kernel, naive_fn, vec_len, matrices in (
            ("down", lambda h: torch.mv(W2, h), lambda L, h, i: ffn.gather_gemv(L[2], h, i),
             lambda h, i: ffn.gather_gemv_ref(W2t, h, i), d_ff, 1),
            ("up", lambda x: torch.mv(W1, x), lambda L, x, i: ffn.row_gemv(L[0], x, i),
             lambda x, i: ffn.row_gemv_ref(W1, x, i), d_model, 1),
            ("ffn", lambda x: torch.mv(W2, torch.relu(torch.mv(W1, x) + b1)),
             lambda L, x, i: ffn.fused_ffn(*L, x, i),
             lambda x, i: ffn.fused_ffn_ref(W1, b1, W2t, x, i), d_model, 2),
        ):
            dense = bench.measure(dense_fn, vec(vec_len), repeats=repeats, device=device)
            sparse_fn = functools.partial(kernel, stack[0])

            def decode_pass(*inputs, kernel=kernel):  # the op once per layer, back to back
                for layer, (v, i) in zip(stack, inputs):
                    kernel(layer, v, i)

            def sparse_inputs(k, n=vec_len):
                idx = torch.randperm(d_ff, generator=gen)[:k].sort().values.to(device)
                return vec(n)()[0], idx

            # the fixed cost of a call: one that reads no weights, timed in the same conditions
            # (after the probes have flushed the caches), so that it can be told apart
            call = bench.measure_with_bandwidth(sparse_fn, lambda: sparse_inputs(0),
                                                repeats=repeats, device=device, nbytes=probe_bytes)
            call_s = call.timing.median
            # and of a whole step in one call (the fused FFN only): every layer's set empty
            step_call_s = {name: bench.measure_with_bandwidth(
                step, lambda: (vec(d_model)()[0], [sparse_inputs(0)[1] for _ in stack]),
                repeats=repeats, device=device, nbytes=probe_bytes).timing.median
                for name, step in steps.items()} if op == "ffn" else {}
            for density in densities:
                k = max(1, round(density * d_ff))
                fresh = functools.partial(sparse_inputs, k)
                nbytes = matrices * ffn.gemv_bytes(k, d_model, itemsize) + 8 * k  # + int64 indices
                measured = bench.measure_with_bandwidth(
                    sparse_fn, fresh, repeats=repeats, device=device, nbytes=probe_bytes,
                    work_bytes=nbytes)
                sparse = measured.timing
                loop = bench.measure_with_bandwidth(
                    decode_pass, lambda: [fresh() for _ in stack], repeats=repeats,
                    device=device, nbytes=probe_bytes, work_bytes=layers * nbytes)
                naive = bench.measure(naive_fn, fresh, repeats=max(3, repeats // 4),
                                      device=device)
                stacked = {}
                for name, step in steps.items():  # the fused FFN's pass as one call per step
                    ms = share = bw = call_ms = beyond = math.nan
                    if op == "ffn":
                        one_call = bench.measure_with_bandwidth(
                            step, lambda: (vec(d_model)()[0], [fresh()[1] for _ in stack]),
                            repeats=repeats, device=device, nbytes=probe_bytes,
                            work_bytes=layers * nbytes)
                        ms = one_call.timing.median / layers * 1e3
                        share, bw = one_call.share, one_call.bandwidth_GBs
                        call_ms = step_call_s[name] * 1e3
                        beyond = one_call.share_beyond(step_call_s[name])
                    stacked |= {f"{name}_ms": ms, f"{name}_share": share,
                                f"{name}_bandwidth_GBs": bw, f"{name}_call_ms": call_ms,
                                f"{name}_share_beyond_call": beyond}
                rows.append({
                    "op": op, "dtype": str(dtype).removeprefix("torch."), "d_model": d_model,
                    "d_ff": d_ff, "density": density, "active": k,
                    "dense_ms": dense.median * 1e3, "sparse_ms": sparse.median * 1e3,
                    "sparse_q1_ms": sparse.q1 * 1e3, "sparse_q3_ms": sparse.q3 * 1e3,
                    "naive_ms": naive.median * 1e3,
                    "speedup": dense.median / sparse.median, "bound": 1.0 / density,
                    "naive_speedup": dense.median / naive.median,
                    "dense_GBs": matrices * d_ff * d_model * itemsize / dense.median / 1e9,
                    "sparse_GBs": nbytes / sparse.median / 1e9,
                    "bandwidth_GBs": measured.bandwidth_GBs, "share_of_bound": measured.share,
                    "call_ms": call_s * 1e3, "share_beyond_call": measured.share_beyond(call_s),
                    "loop_ms": loop.timing.median / layers * 1e3, "loop_share": loop.share,
                    "loop_bandwidth_GBs": loop.bandwidth_GBs, **stacked,
                })
    return rows, bandwidth


def _print_table(rows: list[dict]) -> None:
    cols = ("op", "dtype", "density", "dense_ms", "sparse_ms", "naive_ms", "speedup", "bound",
            "sparse_GBs", "share_of_bound", "call_ms", "share_beyond_call", "loop_ms", "loop_share",
            "stack_share", "stack_plain_share")
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
