"""Meta-test, half 1: every graded check PASSES on the solutions notebook, through the grader
(judge + recording kernel), hidden cases included."""

import pytest
from gradelib import ROOT, STEMS, grade


@pytest.mark.parametrize("stem", STEMS)
def test_every_check_passes_on_the_solution(stem):
    code, data, err = grade(ROOT / "solutions" / f"{stem}.ipynb")
    assert data is not None, err
    (nb,) = data["notebooks"]
    assert nb["status"] == "graded" and not any("differ" in n for n in nb["notes"]), nb
    failing = [(r["exercise"], r["feedback"]) for r in data["results"] if r["status"] != "pass"]
    assert not failing, failing
    assert code == 0 and all(r["earned"] == r["points"] > 0 for r in data["results"])
    assert all(c["passed"] for c in nb["cells"]), [c for c in nb["cells"] if not c["passed"]]
