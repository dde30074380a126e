"""The grader CLI: score table, exit codes, one-line errors, never writes the notebook."""

import hashlib
import subprocess
import sys

import nbformat
import pytest
from gradelib import ROOT, grade


def _run(*args):
    return subprocess.run([sys.executable, "-m", "course_lib.grade", *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_missing_path_is_one_line_exit_2(tmp_path):
    proc = _run(str(tmp_path / "nope.ipynb"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr


def test_corrupt_notebook_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text('{"cells": [ this is not json')
    proc = _run(str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cannot read notebook" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(str(empty)).returncode == 2


def _learner_notebook(tmp_path, body):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    check = nbformat.v4.new_code_cell("from course_lib import grading\n"
                                      "grading.check_value('x.1', answer(), 42)")
    check.metadata["course"] = {"exercise": "x.1", "points": 2}
    nb.cells = [nbformat.v4.new_markdown_cell("# X"), nbformat.v4.new_code_cell(body), check]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    return path


def test_scores_and_never_writes(tmp_path):
    path = _learner_notebook(tmp_path, "def answer():\n    return 41")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    code, data, _ = grade(path)
    assert code == 1
    (r,) = data["results"]
    assert (r["exercise"], r["status"], r["earned"], r["points"]) == ("x.1", "fail", 0, 2)
    assert "got 41, expected 42" in r["feedback"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ipynb"]

    path.write_text(path.read_text().replace("return 41", "return 42"))
    proc = _run(str(path))
    assert proc.returncode == 0
    assert "x.1" in proc.stdout and "PASS" in proc.stdout and "Total: 2/2 points" in proc.stdout


def test_infinite_loop_fails_that_exercise_only(tmp_path):
    path = _learner_notebook(tmp_path, "def answer():\n    while True:\n        pass")
    code, data, _ = grade(path, timeout=3)
    assert code == 1
    assert "Timeout" in data["results"][0]["feedback"]


def test_failing_solution_cell_is_reported_before_the_check(tmp_path):
    path = _learner_notebook(tmp_path, "answer_value = 1 / 0")
    import nbformat
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].metadata["course"] = {"exercise": "x.1"}
    nbformat.write(nb, path)
    _, data, _ = grade(path)
    assert data["results"][0]["feedback"] == "your solution cell failed: ZeroDivisionError: division by zero"


def test_kernel_start_is_retried_when_the_kernel_dies_while_starting(monkeypatch):
    from nbval import kernel

    from course_lib import grade as grade_module
    calls = []

    def flaky_start(*args, **kwargs):  # dies twice (a port taken meanwhile), then starts
        calls.append(args)
        if len(calls) < 3:
            raise RuntimeError("Kernel died before replying to kernel_info")
        return "km", "kc"

    monkeypatch.setattr(kernel, "start_new_kernel", flaky_start)
    grade_module.retry_kernel_start()
    grade_module.retry_kernel_start()  # idempotent: one retry layer, not two
    assert kernel.start_new_kernel("python") == ("km", "kc") and len(calls) == 3

    def dead_start(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(kernel, "start_new_kernel", dead_start)
    grade_module.retry_kernel_start()
    calls.clear()
    with pytest.raises(RuntimeError, match="Kernel died"):
        kernel.start_new_kernel("python")
    assert len(calls) == 3  # gives up after three attempts
