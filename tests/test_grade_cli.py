"""The grader CLI: scores, partial credit, whole feedback, limits, unreadable input, reports
(table, JSON, JUnit, gradebook); it never writes the learner's notebook."""

import csv
import hashlib
import json
import subprocess
import sys
import time
from xml.etree import ElementTree as ET

import nbformat
from gradelib import ROOT, SEED, grade, learner_copy, results_by_exercise, solution_cell

from course_lib.exercises import load_bundle


def _run(*args):
    return subprocess.run([sys.executable, "-m", "course_lib.grade", *args],
                          capture_output=True, text=True, cwd=ROOT)


def _set_solution(exercise, source):
    def edit(nb):
        solution_cell(nb, exercise).source = source
    return edit


def test_missing_path_is_one_line_exit_2(tmp_path):
    proc = _run(str(tmp_path / "nope.ipynb"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr


def test_unreadable_files_get_a_one_line_reason_and_the_rest_is_graded(tmp_path):
    learner_copy(tmp_path, "formats", solve=["formats.1", "formats.2", "formats.3"])
    (tmp_path / "corrupt.ipynb").write_text('{"cells": [ this is not json')
    (tmp_path / "list.ipynb").write_text("[1, 2, 3]")
    (tmp_path / "number.ipynb").write_text("5")
    (tmp_path / "other.ipynb").write_text(json.dumps(nbformat.v4.new_notebook()))
    code, data, err = grade(tmp_path)
    assert code == 2 and err.count("\n") == 4
    reasons = {n["path"].rsplit("/", 1)[-1]: n["reason"] for n in data["notebooks"]}
    assert "invalid JSON" in reasons["corrupt.ipynb"]
    assert "the JSON is list" in reasons["list.ipynb"] and "the JSON is int" in reasons["number.ipynb"]
    assert "not one of the course's exercise notebooks" in reasons["other.ipynb"]
    assert all(r["status"] == "pass" for r in data["results"]) and len(data["results"]) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(str(empty)).returncode == 2


def test_scores_never_writes_and_names_the_checks_it_used(tmp_path):
    path = learner_copy(tmp_path, "formats", solve=["formats.1", "formats.3"])
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    code, data, _ = grade(path)
    assert code == 1
    r = results_by_exercise(data)
    assert (r["formats.1"]["earned"], r["formats.2"]["earned"], r["formats.3"]["earned"]) == (2, 0, 3)
    assert "not implemented yet" in r["formats.2"]["feedback"]
    bundle = load_bundle()
    assert (data["course_version"], data["checks_sha256"], data["seed"]) == (
        bundle["course_version"], bundle["checks_sha256"], SEED)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["formats.ipynb"]
    table = _run("--seed", "5", str(path)).stdout
    assert "Total: 5/7 points, 2/3 exercises passed" in table
    assert f"checks {bundle['checks_sha256'][:12]}" in table and "--seed 5" in table


def test_partial_credit_per_check_cell(tmp_path):
    """activations.1 has a 2-point check of values and gradients and a 1-point check that a
    k outside 1..n raises ValueError: forgetting the ValueError earns 2 of 3."""
    src = load_bundle()["notebooks"]["activations"]["cells"]
    course = next(c["source"] for c in src if c.get("exercise") == "activations.1"
                  and c["role"] == "solution")
    no_check = course.replace('    if not 1 <= k <= x.shape[1]:\n'
                              '        raise ValueError(f"k must be in 1..{x.shape[1]}, got {k}")\n', "")
    path = learner_copy(tmp_path, "activations", edit=_set_solution("activations.1", no_check))
    _, data, _ = grade(path)
    r = results_by_exercise(data)["activations.1"]
    assert (r["earned"], r["points"], r["status"]) == (2, 3, "partial")
    assert [c["passed"] for c in r["checks"]] == [True, False]
    assert "expected ValueError" in r["feedback"]


def test_feedback_is_whole_in_json_and_wrapped_in_the_table(tmp_path):
    wrong = ("def csr_to_dense(indptr, indices, data, shape):\n"
             "    A = np.zeros(shape)\n"
             "    rows = np.repeat(np.arange(shape[0]), np.diff(indptr))\n"
             "    A[rows, indices] = data\n"
             "    return A")
    path = learner_copy(tmp_path, "formats", edit=_set_solution("formats.2", wrong))
    _, data, _ = grade(path)
    fb = results_by_exercise(data)["formats.2"]["feedback"]
    for part in ("cases failed", "Smallest failing input", "Expected:", "Got:",
                 "Hint: Use indptr to find which row each entry belongs to; duplicates must add"):
        assert part in fb
    table = _run("--seed", str(SEED), str(path)).stdout
    assert "Hint: Use indptr to find which row each entry belongs to" in table.replace("\n       ", " ")
    assert max(len(line) for line in table.splitlines()) <= 110


def test_an_endless_loop_fails_with_the_limit_named(tmp_path):
    loop = "def dense_to_csr(A):\n    while True:\n        pass"
    path = learner_copy(tmp_path, "formats", solve=["formats.2", "formats.3"],
                        edit=_set_solution("formats.1", loop))
    code, data, _ = grade(path, timeout=3)
    r = results_by_exercise(data)
    assert "per-cell limit of 3 s" in r["formats.1"]["feedback"]
    assert r["formats.2"]["status"] == "pass" and r["formats.3"]["status"] == "pass"


def test_the_notebook_time_cap(tmp_path):
    loop = "def dense_to_csr(A):\n    while True:\n        pass"
    path = learner_copy(tmp_path, "formats", edit=_set_solution("formats.1", loop))
    start = time.monotonic()
    _, data, _ = grade(path, timeout=100, args=["--notebook-timeout", "6"])
    assert time.monotonic() - start < 60
    assert "the notebook's time limit of 6 s" in results_by_exercise(data)["formats.1"]["feedback"]


def test_a_dead_kernel_is_reported_within_seconds(tmp_path):
    crash = "import faulthandler\nfaulthandler._sigsegv()"
    path = learner_copy(tmp_path, "formats", edit=_set_solution("formats.2", crash))
    start = time.monotonic()
    code, data, _ = grade(path, timeout=120)
    assert time.monotonic() - start < 60  # not the 120-s cell timeout
    r = results_by_exercise(data)
    assert "the kernel died" in r["formats.2"]["feedback"]
    assert "the kernel had died" in r["formats.3"]["feedback"] or \
        "the kernel died" in r["formats.3"]["feedback"]
    assert code == 1


def test_junit_and_gradebook(tmp_path):
    subs = tmp_path / "submissions"
    learner_copy(subs / "alice", "formats", solve=["formats.1", "formats.2", "formats.3"])
    learner_copy(subs / "alice", "formats", solve=["formats.1"], name="zz_copy.ipynb")
    learner_copy(subs / "bob", "formats", solve=["formats.1"])
    (subs / "carol").mkdir(parents=True)
    (subs / "carol" / "formats.ipynb").write_text("not json")
    book, junit = tmp_path / "grades.csv", tmp_path / "junit.xml"
    proc = _run("--seed", str(SEED), "--gradebook", str(book), "--junit", str(junit),
                str(subs / "alice"), str(subs / "bob"), str(subs / "carol"))
    assert proc.returncode == 2, proc.stderr
    rows = list(csv.DictReader(book.open()))
    total_points = sum(p for e in load_bundle()["notebooks"].values() for p in e["exercises"].values())
    totals = {r["learner"]: r for r in rows if r["exercise"] == "TOTAL"}
    assert (totals["alice"]["earned"], totals["bob"]["earned"], totals["carol"]["earned"]) == ("7", "2", "0")
    assert totals["alice"]["points"] == f"{total_points:g}"
    assert "zz_copy.ipynb: a second copy, not counted" in totals["alice"]["reason"]
    by = {(r["learner"], r["exercise"]): r for r in rows}
    assert by[("bob", "formats.2")]["status"] == "fail"
    assert by[("alice", "moe.1")]["reason"] == "notebook not submitted"
    assert "invalid JSON" in by[("carol", "formats.1")]["reason"]
    assert {r["checks_sha256"] for r in rows} == {load_bundle()["checks_sha256"]}
    suites = ET.parse(junit).getroot()
    cases = suites.findall(".//testcase")
    assert len([c for c in cases if c.get("classname") == "formats"]) == 9
    failures = [c for c in cases if c.find("failure") is not None]
    assert len(failures) == 4 and all("not implemented yet" in f.find("failure").text for f in failures)
    assert any(c.find("error") is not None for c in cases)
