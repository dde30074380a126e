"""The exercise generator: single source in solutions/, exercises/ always in sync."""

import json

import nbformat
import pytest

from course_lib import exercises


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def _code(src, **course):
    c = nbformat.v4.new_code_cell(src)
    if course:
        c.metadata["course"] = course
    return c


def test_exercises_dir_is_in_sync_with_solutions():
    assert exercises.out_of_date() == [], "run `make exercises` and commit exercises/"


def test_every_solutions_notebook_is_stored_clean_and_has_checks():
    for src in exercises.sources():
        nb = nbformat.read(src, as_version=4)
        nbformat.validate(nb)
        first = nb.cells[0]
        assert first.cell_type == "markdown" and first.source.startswith("# "), src
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{src}: outputs"
        checks = [c for c in code if "points" in c.metadata.get("course", {})]
        solutions = [c for c in code if exercises.BEGIN in c.source]
        assert checks and solutions, f"{src}: needs solution and graded check cells"
        ids = {c.metadata["course"]["exercise"] for c in checks}
        assert all(i.startswith(src.stem + ".") for i in ids), f"{src}: ids must be <stem>.<n>"
        assert ids == {c.metadata["course"]["exercise"] for c in solutions}, src


def test_stub_replaces_block_with_indented_not_implemented():
    src = "def f(x):\n    '''doc'''\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    nb = _nb(nbformat.v4.new_markdown_cell("# T"),
             nbformat.v4.new_markdown_cell("```{solution-start} ex\n:class: dropdown\n```"),
             _code(src, exercise="t.1"),
             nbformat.v4.new_markdown_cell("```{solution-end}\n```"),
             _code("check(f)", exercise="t.1", points=1),
             nbformat.v4.new_markdown_cell("Why? ### BEGIN SOLUTION\nbecause\n### END SOLUTION"))
    nb.cells[5].source = "Why?\n### BEGIN SOLUTION\nbecause\n### END SOLUTION"
    ex = exercises.make_exercise(nb, "solutions/t.ipynb")
    sources = [c.source for c in ex.cells]
    assert sources[2] == ("def f(x):\n    '''doc'''\n"
                          '    raise NotImplementedError("Exercise t.1: your code here")')
    assert not any("solution-start" in s or "solution-end" in s for s in sources)
    assert sources[-1] == "Why?\n*Write your answer here.*"
    assert "because" not in json.dumps(ex) and "return x" not in json.dumps(ex)
    assert nb.cells[2].source == src  # the source notebook is not modified


@pytest.mark.parametrize("src, match", [
    ("### BEGIN SOLUTION\nx = 1\n", "without ### END"),
    ("x = 1\n### END SOLUTION\n", "without ### BEGIN"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "nested"),
])
def test_malformed_markers_are_errors(src, match):
    with pytest.raises(ValueError, match=match):
        exercises.make_exercise(_nb(_code(src, exercise="t.1")), "solutions/t.ipynb")


def test_solution_cell_without_id_is_an_error():
    with pytest.raises(ValueError, match="course.exercise"):
        exercises.make_exercise(_nb(_code("### BEGIN SOLUTION\n### END SOLUTION")), "s.ipynb")
