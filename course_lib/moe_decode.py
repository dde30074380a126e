"""Decode economics of an MoE FFN: bytes read per token, experts touched per batch, and an
expert cache's hit rate on a routing trace.

At batch 1 a decode step multiplies each weight matrix by one vector, so its time is about
``bytes read / bandwidth``. An MoE FFN reads the router and the ``k`` routed plus ``s`` shared
experts a token uses, ``(k + s)·2·d·h·b + d·N·b`` bytes, not the ``N`` experts it stores: it
saves memory **bandwidth**, never memory **capacity**. A batch of ``B`` tokens reads the union
of their experts; with independent uniform routing an expert is missed by one token with
probability ``1 − k/N``, so the expected number touched is ``N·(1 − (1 − k/N)^B)``.

    python -m course_lib.moe_decode --out book/fast/data/moe/decode_cpu.csv   # times the kernels

Chapter: book/fast/moe
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

__all__ = ["ffn_bytes", "expected_experts_touched", "touched_in_batches", "cache_hit_rate",
           "expert_rows"]


def ffn_bytes(d: int, h: int, experts_read: int, bytes_per_value: int = 2, router_experts: int = 0) -> int:
    """Bytes of one FFN step at batch 1: ``experts_read`` blocks of ``W1 (d×h)`` and ``W2 (h×d)``
    plus a router ``d × router_experts`` (biases ignored). Dense FFN: ``experts_read = 1``."""
    if min(d, h) <= 0 or experts_read < 0 or router_experts < 0:
        raise ValueError(f"need positive d, h and non-negative counts, got {d}, {h}, "
                         f"{experts_read}, {router_experts}")
    return (experts_read * 2 * d * h + d * router_experts) * bytes_per_value


def expected_experts_touched(B: int, n_experts: int, k: int) -> float:
    """``N·(1 − (1 − k/N)^B)``: distinct experts a batch of ``B`` tokens reads (uniform routing)."""
    if not 1 <= k <= n_experts:
        raise ValueError(f"need 1 <= k <= n_experts, got k={k}, n_experts={n_experts}")
    if B < 0:
        raise ValueError(f"batch size must be >= 0, got {B}")
    return n_experts * (1 - (1 - k / n_experts) ** B)


def touched_in_batches(trace, B: int, n_experts: int) -> float:
    """Mean distinct experts per decode step for ``B`` sequences decoded together: the trace
    ``(T, k)`` is cut into ``B`` streams of ``T // B`` consecutive tokens, and step ``t`` reads
    the experts of token ``t`` of every stream."""
    tr = np.asarray(trace)
    if tr.ndim != 2 or B < 1 or len(tr) < B:
        raise ValueError(f"need a (T, k) trace with T >= B >= 1, got shape {tr.shape}, B={B}")
    steps = len(tr) // B
    streams = tr[:steps * B].reshape(B, steps, tr.shape[1])
    touched = [len(np.unique(streams[:, t])) for t in range(steps)]
    if max(int(tr.max()), 0) >= n_experts:
        raise ValueError(f"trace holds expert ids >= n_experts={n_experts}")
    return float(np.mean(touched))


def cache_hit_rate(trace, slots: int, policy: str = "lru", warm: int = 0) -> float:
    """Share of expert reads served by a cache of ``slots`` experts on a trace ``(T, k)``.

    ``"lru"``: evict the least recently used expert; ``"static"``: keep the ``slots`` experts most
    often used in the first ``warm`` tokens (a profile), never change. Only tokens after ``warm``
    are counted for both, so the two policies are compared on the same reads.
    """
    tr = np.asarray(trace)
    if tr.ndim != 2 or slots < 0 or not 0 <= warm < len(tr):
        raise ValueError(f"need a (T, k) trace, slots >= 0 and 0 <= warm < T; got {tr.shape}, "
                         f"{slots}, {warm}")
    if policy == "static":
        counts = np.bincount(tr[:warm].ravel(), minlength=int(tr.max()) + 1)
        kept = set(np.argsort(-counts, kind="stable")[:slots].tolist())
        rest = tr[warm:].ravel()
        return float(np.mean([e in kept for e in rest.tolist()]))
    if policy != "lru":
        raise ValueError(f"policy must be 'lru' or 'static', got {policy!r}")
    cache: OrderedDict = OrderedDict()
    hits = reads = 0
    for t, row in enumerate(tr.tolist()):
        for e in row:
            if t >= warm:
                reads += 1
                hits += e in cache
            if e in cache:
                cache.move_to_end(e)
            elif slots:
                cache[e] = True
                if len(cache) > slots:
                    cache.popitem(last=False)
    return hits / reads


def expert_rows(experts, h: int) -> torch.Tensor:
    """Neuron indices of the given experts when the experts' hidden units are stored one after
    another (expert ``e`` owns rows ``e·h … e·h + h − 1`` of the stacked ``W1`` and ``W2ᵀ``)."""
    e = torch.as_tensor(experts, dtype=torch.int64).reshape(-1, 1)
    return (e * h + torch.arange(h)).reshape(-1)


def time_decode(d: int = 1024, h: int = 2048, n_experts: int = 8, k: int = 2, repeats: int = 15,
                seed: int = 0) -> list[dict]:
    """Time one batch-1 FFN step with the course's fused kernel (``ffn.fused_ffn``, the active
    neurons only) on stacked fp32 expert weights: the MoE step (``k`` random experts per call),
    a dense FFN of equal active width (``k·h``) and one of equal total width (``N·h``); cases
    interleaved with the bandwidth probes of ``bench.measure_interleaved``."""
    from . import bench, ffn
    g = torch.Generator().manual_seed(seed)
    H = n_experts * h
    W1 = torch.randn(H, d, generator=g) / d ** 0.5
    W2t = torch.randn(H, d, generator=g) / H ** 0.5
    b1 = torch.zeros(H)
    rng = np.random.default_rng(seed)
    x = lambda: torch.randn(d, generator=g)  # noqa: E731
    def moe_inputs():
        return (W1, b1, W2t, x(), expert_rows(np.sort(rng.choice(n_experts, k, replace=False)), h))
    cases = {
        "moe_top_k": (ffn.fused_ffn, moe_inputs, ffn_bytes(d, h, k, 4)),
        "dense_equal_active": (ffn.fused_ffn, lambda: (W1, b1, W2t, x(), torch.arange(k * h)),
                               ffn_bytes(d, k * h, 1, 4)),
        "dense_equal_total": (ffn.fused_ffn, lambda: (W1, b1, W2t, x(), torch.arange(H)),
                              ffn_bytes(d, H, 1, 4)),
    }
    runs = bench.measure_interleaved(cases, repeats=repeats, warmup=3, nbytes=64 * 2**20, seed=seed)
    return [{"case": key, "bytes": run.work_bytes, "median_ms": run.timing.median * 1e3,
             "q1_ms": run.timing.q1 * 1e3, "q3_ms": run.timing.q3 * 1e3,
             "probe_GBs": run.bandwidth_GBs, "share_of_bound": run.share}
            for key, run in runs.items()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Time batch-1 MoE vs dense FFN steps (measured under load).")
    ap.add_argument("--out", type=Path, default=Path("book/fast/data/moe/decode_cpu.csv"))
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    from . import bench
    rows = time_decode(repeats=args.repeats)
    for r in rows:
        print(f"{r['case']:20s} {r['bytes'] / 2**20:6.1f} MiB  {r['median_ms']:7.2f} ms "
              f"(IQR {r['q1_ms']:.2f}-{r['q3_ms']:.2f})  share of bound {r['share_of_bound']:.2f}")
    bench.write_csv(rows, args.out, meta={**bench.machine_info(), "note": "measured while other jobs shared the 2 cores"})


if __name__ == "__main__":
    main()
