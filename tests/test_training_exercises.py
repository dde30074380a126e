"""solutions/training.ipynb: for every graded exercise, a plausible wrong-but-running
implementation that its graded check must reject (the solutions passing is tested by
test_solutions_pass.py; the stubs failing by test_exercises_fail.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions" / "training.ipynb"

WRONG = {
    "training.1": '''
        def l1_activity_penalty(hidden, lam):          # sums instead of averaging each layer
            return lam * sum(h.abs().sum() for h in hidden)
    ''',
    "training.2": '''
        def ksae_step(ae, x, optimizer):               # forgets zero_grad: gradients accumulate
            loss = ((ae(x) - x) ** 2).sum(dim=1).mean()
            loss.backward()
            optimizer.step()
            return loss.item()
    ''',
    "training.3": '''
        def pareto_front(rows):                        # drops a row tied with another on both
            return [r for r in rows
                    if not any(o is not r and o[1] >= r[1] and o[2] >= r[2] for o in rows)]

        def operating_point(rows, max_drop):           # picks the sparsest row, ignoring accuracy
            if not rows or max_drop < 0:
                raise ValueError("bad input")
            return min(rows, key=lambda r: (-r[2], r[0]))[0]
    ''',
    "training.4": '''
        def leaky_warmup_slope(step, warmup_steps, start_slope):   # goes negative after warm-up
            if warmup_steps <= 0 or step < 0:
                raise ValueError("bad input")
            return start_slope * (1 - step / warmup_steps)

        def dead_unit_mask(h):                         # "dead on some row" instead of every row
            if h.dim() != 2:
                raise ValueError("h must be 2-D")
            return (h == 0).any(dim=0)
    ''',
}


def _cells():
    nb = nbformat.read(SOLUTIONS, as_version=4)
    return [(c.source, c.metadata.get("course", {})) for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(scope="module")
def solved_namespace():
    """Every code cell of the solutions notebook, in order; the solutions pass, nothing raises."""
    ns: dict = {}
    for src, _ in _cells():
        exec(compile(src, str(SOLUTIONS), "exec"), ns)  # noqa: S102 - our own notebook
    return ns


def test_every_graded_exercise_has_a_wrong_implementation():
    graded = {meta["exercise"] for _, meta in _cells() if "points" in meta}
    assert graded == set(WRONG)


def test_every_solution_cell_lists_what_it_must_not_call():
    solution_cells = [meta for _, meta in _cells() if "exercise" in meta and "points" not in meta]
    assert len(solution_cells) == len(WRONG)
    assert all(isinstance(meta.get("forbid"), list) for meta in solution_cells), solution_cells


@pytest.mark.parametrize("exercise_id", sorted(WRONG))
def test_checks_reject_the_wrong_implementation(solved_namespace, exercise_id):
    checks = [src for src, meta in _cells() if meta.get("exercise") == exercise_id and "points" in meta]
    ns = dict(solved_namespace)
    exec(textwrap.dedent(WRONG[exercise_id]), ns)       # noqa: S102
    failed = 0
    for src in checks:
        try:
            exec(compile(src, exercise_id, "exec"), dict(ns))  # noqa: S102
        except AssertionError as exc:
            assert f"[{exercise_id}]" in str(exc)
            failed += 1
    assert failed, f"no check of {exercise_id} rejects the wrong implementation"
