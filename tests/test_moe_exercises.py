"""solutions/moe.ipynb: every graded check accepts the solution and rejects a plausible wrong
implementation (run in the notebook's namespace, as the grader's interactive mode does)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions" / "moe.ipynb"

WRONG = {
    "moe.1": '''
        def top_k_router(logits, k):                     # gates: full softmax, not over the kept k
            top, idx = logits.topk(k, dim=1)
            return idx, torch.softmax(logits, dim=1).gather(1, idx)
    ''',
    "moe.2": '''
        def load_balancing_loss(probs, idx):             # f counts tokens' first choices only
            n = probs.shape[1]
            f = torch.bincount(idx[:, 0], minlength=n).to(probs.dtype) / idx.shape[0]
            return n * (f * probs.mean(dim=0)).sum()
    ''',
    "moe.3": '''
        def dispatch(idx, n_experts, capacity):          # token-major priority
            keep = torch.zeros(idx.shape, dtype=torch.bool)
            used = [0] * n_experts
            for t in range(idx.shape[0]):
                for s in range(idx.shape[1]):
                    e = int(idx[t, s]); keep[t, s] = used[e] < capacity; used[e] += 1
            return keep
    ''',
    "moe.4": '''
        def shared_moe_forward(x, W1, W2, w_gate, k, n_shared):   # shared = the FIRST n_shared
            N = W1.shape[0]
            if not 0 <= n_shared <= N or not 0 <= k <= N - n_shared:
                raise ValueError("bad configuration")
            y = sum((torch.relu(x @ W1[e]) @ W2[e] for e in range(n_shared)),
                    torch.zeros(x.shape[0], W2.shape[2], dtype=x.dtype))
            if k:
                top, idx = (x @ w_gate).topk(k, dim=1)
                g = torch.softmax(top, dim=1)
                for t in range(x.shape[0]):
                    for gt, e in zip(g[t], idx[t].tolist()):
                        y[t] = y[t] + gt * (torch.relu(x[t] @ W1[n_shared + e]) @ W2[n_shared + e])
            return y
    ''',
    "moe.5": '''
        def update_bias(bias, load, rate):               # sign flipped: feeds the busy experts
            if bias.ndim != 1 or bias.shape != load.shape or rate < 0:
                raise ValueError("bad input")
            return bias + rate * torch.sign(load.to(bias.dtype) - load.to(bias.dtype).mean())
    ''',
    "moe.6": '''
        def expert_choice(scores, capacity):             # tokens pick their top experts instead
            if capacity <= 0:
                raise ValueError("capacity must be positive")
            keep = torch.zeros(scores.shape, dtype=torch.bool)
            idx = scores.topk(min(capacity, scores.shape[1]), dim=1).indices
            return keep.scatter(1, idx, True)
    ''',
}


def _cells():
    nb = nbformat.read(SOLUTIONS, as_version=4)
    return [(c.source, c.metadata.get("course", {})) for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(scope="module")
def solved_namespace():
    ns: dict = {}
    for src, _ in _cells():
        exec(compile(src, str(SOLUTIONS), "exec"), ns)  # noqa: S102 - our own notebook
    return ns


def test_every_graded_exercise_has_a_wrong_implementation():
    assert {meta["exercise"] for _, meta in _cells() if "points" in meta} == set(WRONG)


def test_solution_cells_forbid_the_library_they_reimplement():
    for _, meta in _cells():
        if "exercise" in meta and "points" not in meta:
            assert "course_lib.moe" in meta["forbid"] and "course_lib.moe_routing" in meta["forbid"]


@pytest.mark.parametrize("exercise_id", sorted(WRONG))
def test_checks_accept_solution_and_reject_wrong_implementation(solved_namespace, exercise_id):
    checks = [src for src, meta in _cells() if meta.get("exercise") == exercise_id and "points" in meta]
    for src in checks:
        exec(compile(src, exercise_id, "exec"), dict(solved_namespace))  # noqa: S102
    ns = dict(solved_namespace)
    exec(textwrap.dedent(WRONG[exercise_id]), ns)  # noqa: S102
    failed = 0
    for src in checks:
        try:
            exec(compile(src, exercise_id, "exec"), dict(ns))  # noqa: S102
        except AssertionError as exc:
            assert f"[{exercise_id}]" in str(exc)
            failed += 1
    assert failed, f"no check of {exercise_id} rejects the wrong implementation"
