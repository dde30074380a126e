"""solutions/moe.ipynb: every solution forbids the MoE modules it re-implements (the wrong
solutions each check rejects are in tests/test_check_audit.py)."""

from pathlib import Path

import nbformat

SOLUTIONS = Path(__file__).resolve().parent.parent / "solutions" / "moe.ipynb"


def test_solution_cells_forbid_the_library_they_reimplement():
    nb = nbformat.read(SOLUTIONS, as_version=4)
    metas = [c.metadata.get("course", {}) for c in nb.cells if c.cell_type == "code"]
    solutions = [m for m in metas if "exercise" in m and "points" not in m]
    assert len(solutions) == 6
    for meta in solutions:
        assert "course_lib.moe" in meta["forbid"] and "course_lib.moe_routing" in meta["forbid"]
