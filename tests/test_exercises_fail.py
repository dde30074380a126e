"""Meta-test, half 2: every graded check FAILS on the generated exercise notebook, and only
the learner's stubs and the checks fail (the course's set-up cells run), so no check is vacuous."""

import pytest
from gradelib import ROOT, STEMS, grade


@pytest.mark.parametrize("stem", STEMS)
def test_every_check_fails_on_the_stub(stem):
    code, data, err = grade(ROOT / "exercises" / f"{stem}.ipynb")
    assert data is not None, err
    (nb,) = data["notebooks"]
    assert nb["status"] == "graded" and nb["notes"] == [], nb
    for cell in nb["cells"]:
        role = cell["meta"].get("role")
        if role in ("setup", "grader"):
            assert cell["passed"], f"{stem}: set-up cell {cell['cell']} fails: {cell['error']}"
        elif role == "solution" and not cell["passed"]:  # a stub at the top level of a cell
            assert "NotImplementedError" in cell["error"], cell
    for r in data["results"]:
        assert r["status"] == "fail" and r["earned"] == 0 and r["points"] > 0, r
        assert r["checks"] and all(not c["passed"] for c in r["checks"]), r
        assert all("not implemented yet" in c["feedback"] or "your solution cell failed"
                   in c["feedback"] for c in r["checks"]), r
    assert code == 1
