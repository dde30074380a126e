"""Meta-test, half 1: every graded check PASSES on the solutions notebook."""

import pytest
from gradelib import ROOT, STEMS, cell_roles, grade


@pytest.mark.parametrize("stem", STEMS)
def test_every_check_passes_on_the_solution(stem):
    path = ROOT / "solutions" / f"{stem}.ipynb"
    code, data, err = grade(path)
    assert data is not None, err
    failed = [c for c in data["cells"] if not c["passed"]]
    assert not failed, f"{stem}: failing cells {[(c['cell'], c['error']) for c in failed]}"
    roles = cell_roles(path)
    assert len(data["cells"]) == len(roles), "every code cell must run"
    assert code == 0 and all(r["status"] == "pass" for r in data["results"])
