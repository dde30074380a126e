"""The ``spmm`` benchmark suite: our SpMM tiers vs scipy.sparse, torch.sparse.mm and dense matmul.

``python -m course_lib.bench spmm [--quick|--tiny] [--device cpu|cuda] [--out DIR]``

For every shape (m×k sparse A, k×n dense B, fp32) and density it times every method on fresh
inputs: a new random B before every run and A cycled through a pool of independently drawn
matrices whose total size exceeds the last-level cache, so no run finds the previous run's A in
cache. The methods of one (shape, density) are timed **interleaved** (``bench.measure_interleaved``:
each round runs every method once, in a shuffled order, each run followed by the read-bandwidth
probes), after one untimed call each (JIT compilation, thread pools) that also sizes a slow
method's repeats to a time budget. Per row:

- ``median_s``, ``q1_s``, ``q3_s``, ``repeats``: the timing;
- ``gflops``: useful work 2·nnz·n / time (dense: 2·m·k·n, the same product computed densely);
- ``gbps``: compulsory bytes / time, bytes = A's storage + B + C, each moved once;
- ``bandwidth_GBs``: the read bandwidth probed right after the method's runs (median);
- ``bound_s``: the memory roofline bound, bytes / that bandwidth, and ``share_of_bound``, the
  median over runs of each run's GB/s over the bandwidth probed right after it;
- ``vs_scipy``, ``vs_dense``: time ratios to scipy and to dense at the same shape and density.

On CUDA the methods are our ``torch`` and ``triton`` tiers, ``torch_sparse`` (cuSPARSE) and
``dense`` (cuBLAS). Writes ``<suite>_<device>[_<size>].csv`` (``bench.csv_name``; metadata:
``bench.run_metadata``) and a ``.png`` beside it (time vs density, the dense line and the
crossover densities marked).

Chapters: book/fast/spmm_cpu, book/fast/spmm_gpu.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import torch

from . import bench, data, spmm

#: (shape m, k, n) → densities; the first shape is the one plotted. ``probe_bytes``: the
#: bandwidth probe's buffer, far larger than the caches except at the tiny size
SIZES = {
    "full": dict(cases=[((4096, 4096, 64), [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]),
                        ((4096, 4096, 256), [0.001, 0.01, 0.05, 0.2, 0.5])],
                 repeats=10, probe_bytes=512 * 2**20),
    "quick": dict(cases=[((1024, 1024, 64), [0.001, 0.01, 0.1, 0.5])], repeats=5,
                  probe_bytes=512 * 2**20),
    "tiny": dict(cases=[((32, 32, 8), [0.05, 0.5])], repeats=3, probe_bytes=16 * 2**20),
}
#: methods per device; "dense" is torch.mm on the densified A (MKL/oneDNN, cuBLAS). The "ref"
#: tier is left out (seconds per call at these sizes), and "triton" runs on CUDA only
#: (on the CPU it would time the interpreter: ``--interpret`` runs it there to test the suite)
METHODS = {"cpu": ["numpy", "torch", "cpu_fast", "scipy", "torch_sparse", "dense"],
           "cuda": ["torch", "triton", "torch_sparse", "dense"]}
#: the vectorized teaching tiers take seconds per call beyond this density and are never
#: competitive there: they are measured up to it only
SLOW_TIERS, SLOW_TIER_MAX_DENSITY = ("numpy", "torch"), 0.1
POOL_BYTES = 64 * 2**20  # > the 32 MiB L3 of the machine the book's CSV was measured on
MAX_POOL = 256  # at 0.1 % of 4096² a CSR is ~150 KiB: 256 of them still exceed that L3
BUDGET_S = 2.0  # target timed seconds per (method, shape, density): fewer repeats for slow calls


def _operands(A: "spmm.CSR", device: str, dense=None) -> dict:
    """A in the form each method takes: CSR (our tiers), scipy, torch sparse CSR, dense tensor
    (``dense`` reuses a densified matrix of the same shape: dense time does not depend on values)."""
    indptr, indices, values = spmm._torch_arrays(A, device)
    return {"csr": A, "scipy": A.to_scipy(), "torch_sparse": A.to_torch(device=device),
            # the torch-kind tiers get A's arrays already on the device: no copy inside the timing
            "csr_device": SimpleNamespace(indptr=indptr, indices=indices, data=values, shape=A.shape),
            "dense": torch.from_numpy(A.to_dense()).to(device) if dense is None else dense}


def _call(method: str):
    """f(operands, B) for a method; B is a torch tensor on the benchmark's device."""
    if method == "scipy":
        return lambda ops, B: ops["scipy"] @ B.numpy()
    if method == "torch_sparse":
        return lambda ops, B: torch.sparse.mm(ops["torch_sparse"], B)
    if method == "dense":
        return lambda ops, B: torch.mm(ops["dense"], B)
    tier = spmm.IMPLEMENTATIONS[method]
    if spmm.TIER_KIND[method] == "numpy":
        return lambda ops, B: tier(ops["csr"], B.numpy())
    return lambda ops, B: tier(ops["csr_device"], B)


def traffic_bytes(method: str, m: int, k: int, n: int, nnz: int, itemsize: int = 4,
                  index_bytes: int = 4) -> int:
    """Compulsory bytes: A once (CSR: (m+1)+nnz indices, nnz values; dense: m·k values), B and C once."""
    a = m * k * itemsize if method == "dense" else (m + 1 + nnz) * index_bytes + nnz * itemsize
    return a + (k * n + m * n) * itemsize


def _pool(m: int, k: int, density: float, device: str, seed: int) -> list[dict]:
    """Operands of independently drawn A's whose CSRs together exceed the last-level cache."""
    csr_bytes = (m + 1) * 4 + density * m * k * 8
    pool_size = int(min(MAX_POOL, max(2, math.ceil(POOL_BYTES / csr_bytes))))
    pool = []
    for i in range(pool_size):  # two densified matrices (each m·k·4 bytes), shared
        shared = pool[i % 2]["dense"] if i >= 2 else None
        pool.append(_operands(data.make_sparse_matrix(m, k, density, seed=seed + i), device, shared))
    return pool


def run(cases, repeats: int, device: str = "cpu", seed: int = 0, methods=None,
        budget_s: float = BUDGET_S, probe_bytes: int = 512 * 2**20,
        log=print) -> tuple[list[dict], float]:
    """Measure every method on every (shape, density) of ``cases`` = [((m, k, n), densities), …].

    Returns the rows and the read bandwidth (GB/s) measured at the start."""
    methods = methods or METHODS[device]
    bandwidth = bench.memory_bandwidth(nbytes=probe_bytes, device=device)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for (m, k, n), densities in cases:
        for density in densities:
            pool = _pool(m, k, density, device, seed)
            nnz = pool[0]["csr"].nnz
            turn = iter(range(10**9))

            def make_inputs():
                B = torch.randn(k, n, generator=gen).to(device)
                return pool[next(turn) % len(pool)], B

            table, reps = {}, {}
            for method in methods:
                if method in SLOW_TIERS and density > SLOW_TIER_MAX_DENSITY and device == "cpu":
                    continue
                fn = _call(method)
                # one untimed call: the warm-up (JIT, thread pools), and its time sizes the repeats
                once = bench.measure(fn, make_inputs, repeats=1, warmup=1, device=device).median
                reps[method] = int(min(repeats, max(3, budget_s // max(once, 1e-9))))
                table[method] = (fn, make_inputs, traffic_bytes(method, m, k, n, nnz))
            runs = bench.measure_interleaved(table, repeats=repeats, warmup=0, device=device,
                                             nbytes=probe_bytes, seed=seed, case_repeats=reps)
            times = {method: r.timing for method, r in runs.items()}
            for method, r in runs.items():
                t, nbytes = r.timing, r.work_bytes
                flops = 2 * (m * k if method == "dense" else nnz) * n
                rows.append(dict(
                    method=method, m=m, k=k, n=n, density=density, nnz=nnz,
                    median_s=t.median, q1_s=t.q1, q3_s=t.q3, repeats=t.repeats,
                    gflops=flops / t.median / 1e9, gbps=nbytes / t.median / 1e9,
                    bandwidth_GBs=r.bandwidth_GBs, bound_s=nbytes / (r.bandwidth_GBs * 1e9),
                    share_of_bound=r.share,
                    vs_scipy=t.median / times["scipy"].median if "scipy" in times else "",
                    vs_dense=t.median / times["dense"].median))
            log(f"{m}x{k}x{n} density {density:.3%}: " + ", ".join(
                f"{name} {t.median * 1e3:.2f} ms" for name, t in times.items()))
    return rows, bandwidth


def crossover_density(rows: list[dict], method: str, shape=None) -> float:
    """Density at which ``method`` becomes as slow as dense (log-log interpolation between the
    measured densities); ``inf`` if it is faster at every measured density, 0 if never faster."""
    shape = shape or (rows[0]["m"], rows[0]["k"], rows[0]["n"])
    pick = lambda name: sorted((r["density"], r["median_s"]) for r in rows  # noqa: E731
                               if r["method"] == name and (r["m"], r["k"], r["n"]) == tuple(shape))
    dense = dict(pick("dense"))
    ratio = [(d, t / dense[d]) for d, t in pick(method)]
    if not ratio or ratio[0][1] >= 1:
        return 0.0
    for (d0, r0), (d1, r1) in zip(ratio, ratio[1:]):
        if r1 >= 1:
            w = math.log(r0) / (math.log(r0) - math.log(r1))
            return float(math.exp(math.log(d0) + w * (math.log(d1) - math.log(d0))))
    return math.inf


def describe_density(x: float) -> str:
    """A crossover density in words: a percentage, or where it lies outside the measured range."""
    if x == 0:
        return "below the smallest measured density"
    if x == math.inf:
        return "above the largest measured density"
    return f"{x:.0%}" if x >= 0.1 else f"{x:.1%}"


def plot(rows: list[dict], shape=None, ax=None, title: str | None = None):
    """Time vs density (log-log) per method at one shape; dense dashed; crossovers marked."""
    import matplotlib.pyplot as plt
    shape = tuple(shape or (rows[0]["m"], rows[0]["k"], rows[0]["n"]))
    sel = [r for r in rows if (r["m"], r["k"], r["n"]) == shape]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in sel):
        pts = sorted((r["density"], r["median_s"] * 1e3) for r in sel if r["method"] == method)
        d, t = zip(*pts)
        style = dict(ls="--", color="k") if method == "dense" else dict(marker="o", ms=3)
        line, = ax.plot(d, t, label=method, **style)
        if method != "dense":
            x = crossover_density(sel, method, shape)
            if 0 < x < math.inf:
                ax.axvline(x, color=line.get_color(), lw=0.8, ls=":")
                ax.annotate(f"{x:.1%}", (x, 0.02), xycoords=ax.get_xaxis_transform(),
                            color=line.get_color(), rotation=90, va="bottom", ha="right", fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="density of A (nnz / m·k)", ylabel="time per call (ms)",
           title=title or f"SpMM {shape[0]}×{shape[1]} · {shape[1]}×{shape[2]}, fp32")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.1%}".replace(".0%", "%")))
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return ax


def main(argv=None) -> int:
    args = bench.parse_suite_args("spmm", __doc__, argv)
    load_at_start = os.getloadavg()[0]
    methods = METHODS["cuda"] if args.interpret else None
    rows, bandwidth = run(**SIZES[args.size], device=args.device, methods=methods)
    path = bench.write_csv(rows, args.out / bench.csv_name(args),
                           bench.run_metadata(args, bandwidth, load_at_start))
    import matplotlib
    matplotlib.use("Agg")
    ax = plot(rows)
    ax.figure.tight_layout()
    ax.figure.savefig(path.with_suffix(".png"), dpi=120)
    for method in dict.fromkeys(r["method"] for r in rows):
        if method != "dense":
            print(f"crossover vs dense, {method}: {describe_density(crossover_density(rows, method))}")
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0
