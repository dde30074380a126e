"""Every graded check enforces its statement: for each check cell, a plausible wrong solution
(the course's solution with one realistic mistake) makes that check fail, and the course's
solution passes it. Runs the bundle's cells in-process, in the checks' interactive mode."""

import textwrap

import pytest

from course_lib import grading
from course_lib.exercises import load_bundle

#: check key → (text in the course's solution cell, the mistake that replaces it), or the
#: source of a wrong function that replaces the course's after its solution cell ran
WRONG = {
    "activations.1/0": ("idx = x.topk(k, dim=1).indices", "idx = x.abs().topk(k, dim=1).indices"),
    "activations.1/1": ("    if not 1 <= k <= x.shape[1]:\n        raise ValueError(f\"k must be in 1..{x.shape[1]}, got {k}\")\n", ""),
    "activations.2/0": ("return torch.where(mask, x, torch.zeros_like(x))",
                        "return torch.where(mask, boosted, torch.zeros_like(x))"),
    "activations.3/0": ("tau = (cumsum.gather(1, k_star - 1) - 1) / k_star",
                        "tau = cumsum.gather(1, k_star - 1) / k_star"),
    "activations.4/0": ("v_hat = (grad_p * s).sum(dim=1, keepdim=True) / s.sum(dim=1, keepdim=True)",
                        "v_hat = grad_p.mean(dim=1, keepdim=True)"),
    "brain.1/0": ("return torch.where(mask, x, torch.zeros_like(x))",
                  "return torch.where(mask, x * boost, torch.zeros_like(x))"),
    "brain.2/0": ("return ((period - B) * duty_cycles", "return ((period - 1) * duty_cycles"),
    "brain.3/0": ("for b in (2, 3, 4)", "for b in (2,)"),
    "coding.1/0": ("lo, hi = indptr[i], indptr[i + 1]", "lo, hi = indptr[i], indptr[i + 1] - 1"),
    "coding.2/0": ("first[1:] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])", "first[1:] = True"),
    "coding.3/0": ("lo, hi = indptr[i], indptr[i + 1]", "lo, hi = indptr[i], indptr[i + 1] - 1"),
    "coding.4/0": ("idx = x.topk(k, dim=-1).indices", "idx = x.abs().topk(k, dim=-1).indices"),
    "coding.5/0": ("return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))",
                   "return torch.zeros_like(x).scatter(-1, idx, (x * boost).gather(-1, idx))"),
    "coding.6/0": ("return (z - tau).clamp(min=0)", "return torch.softmax(z, dim=-1)"),
    "coding.7/0": ("        for h in handles:\n            h.remove()", "        pass"),
    "coding.8/0": ("groups = np.abs(W).reshape", "groups = W.reshape"),
    "coding.9/0": ("positions = (np.nonzero(mask)[1] % m)", "positions = (np.nonzero(mask)[1])"),
    "coding.10/0": ("keep = (blocks != 0).any(axis=(2, 3))", "keep = np.ones(blocks.shape[:2], bool)"),
    "coding.11/0": ("u.abs() - eta * lam", "u.abs() - lam"),
    "coding.12/0": ("return a[active] @ W2t[active] + b2", "return a[active] @ W2t[active]"),
    "coding.13/0": ("/ (T * k)", "/ T"),
    "coding.14/0": ("C[i, j] += v * w", "C[i, j] = v * w"),
    "formats.1/0": ("return indptr, cols, A[rows, cols]",
                    "return indptr, cols, A[rows, cols].astype(np.float64)"),
    "formats.2/0": ("np.add.at(A, (rows, indices), data)", "A[rows, indices] = data"),
    "formats.3/0": ("new[1:] = (row[1:] != row[:-1]) | (col[1:] != col[:-1])", "new[1:] = True"),
    "metrics.1/0": ("x = x.double()", "x = x.float()"),
    "metrics.2/0": ("result[name] = (output == 0).double().mean().item()",
                    "result[name] = (output.abs() < 1e-2).double().mean().item()"),
    "metrics.2/1": ("    try:\n        with torch.no_grad():\n            model(X)\n    finally:\n"
                    "        for h in handles:\n            h.remove()",
                    "    with torch.no_grad():\n        model(X)\n    for h in handles:\n"
                    "        h.remove()"),
    "moe.1/0": ("return idx, torch.softmax(top, dim=1)",
                "return idx, torch.softmax(logits, dim=1).gather(1, idx)"),
    "moe.2/0": ("/ idx.numel()", "/ idx.shape[0]"),
    "moe.4/0": ("    for e in range(routed, N):", "    for e in range(n_shared):"),
    "moe.5/0": ("torch.sign(load.mean() - load)", "torch.sign(load - load.mean())"),
    "moe.6/0": ("key=lambda t: (-float(scores[t, e]), t)", "key=lambda t: (-float(scores[t, e]), -t)"),
    "moe.3/0": ("    for s in range(idx.shape[1]):\n        for t in range(idx.shape[0]):",
                "    for t in range(idx.shape[0]):\n        for s in range(idx.shape[1]):"),
    "llm_sparsity.1/0": """
        def cats_threshold(a, sparsity):                 # signed values instead of magnitudes
            if not 0 <= sparsity < 1:
                raise ValueError("sparsity")
            s = a.flatten().sort().values
            return s[int(sparsity * (len(s) - 1))].item()
    """,
    "llm_sparsity.2/0": """
        def enforce_2_4(h):                              # keeps the first two of each group
            if h.shape[-1] % 4:
                raise ValueError("multiple of 4")
            keep = (torch.arange(h.shape[-1]) % 4) < 2
            return h * keep

        def share_2_4(h):                                # counts zeros instead of nonzeros
            if h.shape[-1] % 4:
                raise ValueError("multiple of 4")
            return ((h == 0).reshape(*h.shape[:-1], -1, 4).sum(-1) <= 2).float().mean().item()
    """,
    "llm_sparsity.3/0": """
        def cett(h, w_down, eps):                        # sums the norms of the dropped terms
            norms = h.abs() * w_down.norm(dim=0)
            return (norms * (norms < eps)).sum(1) / (h @ w_down.T).norm(dim=1)
    """,
    "llm_sparsity.4/0": """
        def amdahl_bound(f, d):                          # kernel bound 1/d, ignores the rest
            if not 0 <= f <= 1 or not 0 < d <= 1:
                raise ValueError("range")
            return 1.0 / d
    """,
    "llm_sparsity.5/0": ("score = x.abs() * w.norm(dim=1)", "score = x.abs()"),  # TEAL's mask
    "sae.1/0": ("idx = pre.reshape(-1).topk(k * B).indices", "idx = pre.reshape(-1).topk(k).indices"),
    "sae.2/0": ("(-theta / bandwidth)", "(-1.0 / bandwidth)"),
    "sae.3/0": ("((x - x.mean(dim=0)) ** 2).sum()", "(x ** 2).sum()"),
    "sparse_coding.1/0": ("return torch.sign(x) * torch.clamp(x.abs() - t, min=0)",
                          "return torch.clamp(x - t, min=0)"),
    "sparse_coding.2/0": ("return soft_threshold(A - grad / L, lam / L)",
                          "return soft_threshold(A - grad / L, lam)"),
    "sparse_coding.3/0": ("return (X @ D.T).abs().amax(dim=1)", "return (X @ D.T).abs().sum(dim=1)"),
    "sparse_ffn.1/0": ("y = torch.zeros(Wt.shape[1], dtype=Wt.dtype)", "y = torch.zeros(Wt.shape[1])"),
    "sparse_ffn.2/0": ("k = int(sparsity * a.numel())", "k = max(1, round(sparsity * a.numel()))"),
    "sparse_ffn.3/0": ("speedup_bound = 1 / ((1 - f) + f * d)", "speedup_bound = 1 / d"),
    "sparse_ffn.4/0": ("h = torch.relu(W1[j] @ x + b1[j])", "h = W1[j] @ x + b1[j]"),
    "spmm_cpu.1/0": ("np.add.at(C, rows, data[:, None] * B[indices])",
                     "C[rows] += data[:, None] * B[indices]"),
    "spmm_cpu.2/0": ("    if shape_A[1] != shape_B[0]:\n", "    if False:\n"),
    "spmm_cpu.3/0": ("4 * (m + 1 + nnz)", "4 * (m + nnz)"),
    "spmm_gpu.1/0": ("csr_row_kernel[(M, triton.cdiv(N, block_n))]", "csr_row_kernel[(M, N // block_n)]"),
    "spmm_gpu.2/0": ("return 1.0 if lengths.size == 0 or lengths.max() == 0 else float(",
                     "return float("),
    "spmm_gpu.3/0": ("B_blocks = B.reshape(-1, Cb, B.shape[1])", "B_blocks = B.reshape(Cb, -1, B.shape[1]).swapaxes(0, 1)"),
    "training.1/0": ("return lam * sum(h.abs().mean() for h in hidden)",
                     "return lam * sum(h.abs().sum() for h in hidden)"),
    "training.2/0": ("    optimizer.zero_grad()\n", ""),
    "training.3/0": """
        def pareto_front(rows):                        # drops a row tied with another on both
            return [r for r in rows
                    if not any(o is not r and o[1] >= r[1] and o[2] >= r[2] for o in rows)]

        def operating_point(rows, max_drop):           # picks the sparsest row, ignoring accuracy
            if not rows or max_drop < 0:
                raise ValueError("bad input")
            return min(rows, key=lambda r: (-r[2], r[0]))[0]
    """,
    "training.4/0": """
        def leaky_warmup_slope(step, warmup_steps, start_slope):   # goes negative after warm-up
            if warmup_steps <= 0 or step < 0:
                raise ValueError("bad input")
            return start_slope * (1 - step / warmup_steps)

        def dead_unit_mask(h):                         # "dead on some row" instead of every row
            if h.dim() != 2:
                raise ValueError("h must be 2-D")
            return (h == 0).any(dim=0)
    """,
}

BUNDLE = load_bundle()["notebooks"]
CHECKS = [(stem, c["key"]) for stem, e in BUNDLE.items() for c in e["cells"] if c["role"] == "check"]


def run_notebook(stem, exercise, replace=None):
    """Execute the bundle's cells (other exercises' checks too: they define helpers later
    checks use); return {check key of ``exercise``: AssertionError message or None}."""
    ns = {"__name__": f"audit_{stem}"}
    outcome = {}
    for cell in BUNDLE[stem]["cells"]:
        source = cell["source"]
        if cell["role"] == "solution" and cell["exercise"] == exercise and isinstance(replace, tuple):
            assert replace[0] in source, f"{exercise}: the course's solution changed"
            source = source.replace(*replace)
        elif cell["role"] == "solution" and cell["exercise"] == exercise and replace:
            source += "\n" + textwrap.dedent(replace)
        if cell["role"] == "check":
            try:
                exec(compile(source, cell["key"], "exec"), ns)
                why = None
            except AssertionError as exc:  # later exercises may build on the broken one
                why = str(exc)
            if cell["exercise"] == exercise:
                outcome[cell["key"]] = why
        else:
            exec(compile(source, f"{stem} cell", "exec"), ns)
    return outcome


def test_every_check_has_a_wrong_solution():
    assert sorted(key for _, key in CHECKS) == sorted(WRONG)


@pytest.mark.parametrize("stem, key", CHECKS, ids=[k for _, k in CHECKS])
def test_check_rejects_a_plausible_wrong_solution(stem, key):
    exercise = key.split("/")[0]
    assert grading._STATE is None  # interactive mode; tests/test_solutions_pass.py runs the solutions
    why = run_notebook(stem, exercise, WRONG[key])[key]
    assert why is not None, f"{key} accepts the mistake {WRONG[key]!r}"
    assert why.startswith(f"[{exercise}]")


#: exercises for which the course has no implementation a solution could call
NOTHING_TO_FORBID = {"sparse_ffn.3", "spmm_gpu.2", "training.1", "training.3"}


def test_every_solution_lists_what_it_must_not_call():
    empty = {c["exercise"] for e in BUNDLE.values() for c in e["cells"]
             if c["role"] == "solution" and not c["forbid"]}
    assert empty == NOTHING_TO_FORBID
