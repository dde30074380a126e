"""A verdict cannot be bought: every way a learner was seen to earn points without solving
anything earns 0 on a tampered copy of a real exercise notebook — with the static rules on
(as graded) and, for the attacks the rules stop, again with the rules switched off, which shows
that the verdict itself lives outside the learner's kernel."""

import json
import subprocess
import sys

import numpy as np
import pytest
from gradelib import ROOT, SEED, grade, learner_copy, solution_cell

#: a wrong answer that each attack tries to get accepted
WRONG = "def dense_to_csr(A):\n    return np.zeros(A.shape[0] + 1, int), np.zeros(0, int), np.zeros(0)\n"
#: attacks written into the solution cell of formats.1 (the other exercises stay stubs)
CELL_ATTACKS = {
    "replace_helper": "from course_lib import grading as g\n"
                      "g.check_function = lambda *a, **k: None\n"
                      "g.verdict = lambda *a, **k: None",
    "patch_numpy": "np.isclose = lambda a, b, **k: np.ones(np.broadcast(a, b).shape, bool)\n"
                   "np.array_equal = lambda *a, **k: True",
    "exception_handler": "get_ipython().set_custom_exc((AssertionError,), lambda *a, **k: None)",
    "ast_transformer": "import ast\nclass Drop(ast.NodeTransformer):\n"
                       "    def visit_Call(self, node):\n        return ast.Constant(None)\n"
                       "get_ipython().ast_transformers.append(Drop())",
    "rebind_reference": "def dense_to_csr(A):\n    return np.zeros(1), np.zeros(0), np.zeros(0)\n"
                        "formats.dense_to_csr_ref = dense_to_csr\n"
                        "formats.coo_to_csr_ref = lambda *a: (np.zeros(1), np.zeros(0), np.zeros(0))",
    "sys_modules": "import sys\nimport types\nfake = types.ModuleType('course_lib.grading')\n"
                   "fake.check_function = lambda *a, **k: None\n"
                   "sys.modules['course_lib.grading'] = fake",
    "liar_object": "class Anything:\n    def __eq__(self, other):\n        return True\n"
                   "    def __array__(self, dtype=None, copy=None):\n        return np.zeros(1)\n"
                   "def dense_to_csr(A):\n    return Anything()",
}
#: attacks the static rules stop before anything runs (tampering → notebook not run)
STATIC_ONLY = {"replace_helper", "patch_numpy", "exception_handler", "ast_transformer",
               "rebind_reference", "sys_modules"}


def _attack_copies(tmp_path):
    paths = {}
    for name, source in CELL_ATTACKS.items():
        def edit(nb, source=source):
            solution_cell(nb, "formats.1").source = WRONG + source
        paths[name] = learner_copy(tmp_path, "formats", edit=edit, name=f"{name}.ipynb")

    def edit_checks(nb):  # the learner's check cells no longer check anything
        for cell in nb.cells:
            if "points" in cell.metadata.get("course", {}):
                cell.source = "pass"
    paths["edit_checks"] = learner_copy(tmp_path, "formats", edit=edit_checks, name="edit_checks.ipynb")

    def raise_points(nb):
        for cell in nb.cells:
            if "points" in cell.metadata.get("course", {}):
                cell.metadata["course"]["points"] = 100
    paths["raise_points"] = learner_copy(tmp_path, "formats", edit=raise_points, name="raise_points.ipynb")

    def new_exercise(nb):
        import nbformat
        sol = nbformat.v4.new_code_cell("x = 1")
        sol.metadata["course"] = {"exercise": "formats.9"}
        chk = nbformat.v4.new_code_cell("pass")
        chk.metadata["course"] = {"exercise": "formats.9", "points": 50}
        nb.cells += [sol, chk]
    paths["new_exercise"] = learner_copy(tmp_path, "formats", edit=new_exercise, name="new_exercise.ipynb")

    def hand_in_reference(nb):
        solution_cell(nb, "formats.1").source = "dense_to_csr = formats.dense_to_csr_ref"
        solution_cell(nb, "formats.3").source = (
            "from course_lib.formats import COO\n"
            "def coo_to_csr(row, col, data, shape):\n"
            "    c = COO(row, col, data, shape).to_csr()\n"
            "    return c.indptr, c.indices, c.data")
    paths["hand_in_reference"] = learner_copy(tmp_path, "formats", edit=hand_in_reference,
                                              name="hand_in_reference.ipynb")
    return paths


def _by_notebook(data):
    out = {}
    for r in data["results"]:
        out.setdefault(r["notebook"].rsplit("/", 1)[-1][:-len(".ipynb")], []).append(r)
    notes = {n["path"].rsplit("/", 1)[-1][:-len(".ipynb")]: n for n in data["notebooks"]}
    return out, notes


def test_every_attack_earns_zero(tmp_path):
    paths = _attack_copies(tmp_path)
    code, data, err = grade(tmp_path)
    assert data is not None, err
    results, notebooks = _by_notebook(data)
    assert set(results) == set(paths)
    for name, rows in results.items():
        assert sum(r["earned"] for r in rows) == 0, (name, rows)
        assert sum(r["points"] for r in rows) == 7, name  # the course's totals, always
        assert [r["exercise"] for r in rows] == ["formats.1", "formats.2", "formats.3"], name
    for name in STATIC_ONLY:
        assert notebooks[name]["status"] == "not run" and "tampering" in notebooks[name]["reason"]
    assert any("differ from the course's" in n for n in notebooks["edit_checks"]["notes"])
    assert any("formats.9" in n for n in notebooks["new_exercise"]["notes"])
    leak = {r["exercise"]: r["feedback"] for r in results["hand_in_reference"]}
    assert "uses `course_lib.formats`" in leak["formats.1"] and leak["formats.1"].count("\n") == 0
    assert "course_lib.formats" in leak["formats.3"]
    assert code == 1


NO_RULES = ("import sys, course_lib.grade_rules as rules, course_lib.grade as g\n"
            "rules.check_cells = lambda *a, **k: []\n"
            "sys.exit(g.main(sys.argv[1:]))")


def test_the_verdict_is_out_of_reach_even_without_the_static_rules(tmp_path):
    """Defence in depth: with the static rules switched off the tampering code runs in the
    learner's kernel, and still earns nothing, because the checks there only record outputs."""
    paths = _attack_copies(tmp_path)
    for name in set(paths) - STATIC_ONLY - {"liar_object"}:
        paths.pop(name).unlink()
    proc = subprocess.run([sys.executable, "-c", NO_RULES, "--json", "--seed", str(SEED), str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    data = json.loads(proc.stdout)
    results, notebooks = _by_notebook(data)
    assert set(results) == set(paths)
    for name, rows in results.items():
        assert notebooks[name]["status"] == "graded", name
        assert sum(r["earned"] for r in rows) == 0, (name, [r["feedback"][:200] for r in rows])


def _visible_cases():
    """spmm_gpu.2's fixed and seeded random cases, exactly as its check draws them."""
    rng = np.random.default_rng(0)
    fixed = [np.array([0, 2, 4, 6]), np.array([0, 0, 0]), np.array([0, 10, 10, 11]), np.array([0])]
    return fixed + [np.concatenate([[0], np.cumsum(rng.integers(0, 20, rng.integers(1, 9)))])
                    for _ in range(25)]


def test_hard_coding_the_visible_cases_fails_the_hidden_ones(tmp_path):
    def true_value(indptr):
        lengths = np.diff(indptr)
        return float(np.mean(lengths) / np.max(lengths)) if lengths.size and lengths.max() else 1.0

    table = {tuple(int(v) for v in c): true_value(c) for c in _visible_cases()}
    memorised = (f"TABLE = {table!r}\n"
                 "def row_split_efficiency(indptr):\n"
                 "    return TABLE.get(tuple(int(v) for v in indptr), 0.5)")

    def edit(nb):
        solution_cell(nb, "spmm_gpu.2").source = memorised
    path = learner_copy(tmp_path, "spmm_gpu", solve=["spmm_gpu.3"], edit=edit)
    _, data, _ = grade(path)
    r = {r["exercise"]: r for r in data["results"]}["spmm_gpu.2"]
    assert r["earned"] == 0 and "hidden" in r["feedback"]
    # the same function passes every case the learner could see
    from course_lib import grading
    ns = {}
    exec(memorised, ns)
    grading.check_function("spmm_gpu.2", ns["row_split_efficiency"], true_value,
                           cases=_visible_cases()[:4],
                           random_cases=lambda rng: np.concatenate(
                               [[0], np.cumsum(rng.integers(0, 20, rng.integers(1, 9)))]))


@pytest.mark.parametrize("stem", ["formats"])
def test_honest_solution_earns_full_points_with_the_rules_on(tmp_path, stem):
    path = learner_copy(tmp_path, stem, solve=["formats.1", "formats.2", "formats.3"])
    code, data, _ = grade(path)
    assert code == 0 and sum(r["earned"] for r in data["results"]) == 7
