"""Meta-test, half 2: every graded check FAILS on the generated exercise notebook, and only
solution stubs and checks fail (set-up cells run), so no check is vacuous."""

import pytest
from gradelib import ROOT, STEMS, cell_roles, grade


@pytest.mark.parametrize("stem", STEMS)
def test_every_check_fails_on_the_stub(stem):
    path = ROOT / "exercises" / f"{stem}.ipynb"
    code, data, err = grade(path)
    assert data is not None, err
    roles = cell_roles(path)
    assert len(data["cells"]) == len(roles), "every code cell must run"
    for cell in data["cells"]:
        role = roles[cell["cell"]]
        if role == "check":
            assert not cell["passed"], f"{stem}: check cell {cell['cell']} passes on the stub"
        elif role == "other":
            assert cell["passed"], f"{stem}: set-up cell {cell['cell']} fails: {cell['error']}"
    assert code == 1 and all(r["status"] == "fail" for r in data["results"])
    assert sum(r["points"] for r in data["results"]) > 0
