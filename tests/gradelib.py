"""Run the grader CLI in a subprocess (as a learner would) and parse its JSON."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
STEMS = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))
SEED = 7  # the hidden cases of the test runs: fixed, so a test run is repeatable


def grade(*paths, timeout=120, args=()):
    """(exit code, parsed JSON or None, stderr) of `python -m course_lib.grade --json PATHS`."""
    # a generous notebook cap: the test workers share the machine (the cap's own test sets it)
    proc = subprocess.run([sys.executable, "-m", "course_lib.grade", "--json", "--seed", str(SEED),
                           "--timeout", str(timeout), "--notebook-timeout", "300", *args,
                           *map(str, paths)],
                          capture_output=True, text=True, cwd=ROOT)
    data = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, data, proc.stderr


def learner_copy(tmp_path, stem, solve=(), edit=None, name=None):
    """A copy of exercises/<stem>.ipynb in tmp_path with the course's solution cells pasted
    into the exercises listed in ``solve``; ``edit(nb)`` may change it further."""
    nb = nbformat.read(ROOT / "exercises" / f"{stem}.ipynb", as_version=4)
    src = nbformat.read(ROOT / "solutions" / f"{stem}.ipynb", as_version=4)
    course = {c.metadata["course"]["exercise"]: c.source for c in src.cells
              if c.cell_type == "code" and "exercise" in c.metadata.get("course", {})
              and "points" not in c.metadata["course"]}
    for cell in nb.cells:
        meta = cell.metadata.get("course", {})
        if cell.cell_type == "code" and meta.get("exercise") in solve and "points" not in meta:
            cell.source = course[meta["exercise"]]
    if edit is not None:
        edit(nb)
    path = tmp_path / (name or f"{stem}.ipynb")
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def solution_cell(nb, exercise):
    return next(c for c in nb.cells if c.cell_type == "code"
                and c.metadata.get("course", {}).get("exercise") == exercise
                and "points" not in c.metadata["course"])


def results_by_exercise(data):
    return {r["exercise"]: r for r in data["results"]}


__all__ = ["ROOT", "STEMS", "SEED", "grade", "learner_copy", "solution_cell",
           "results_by_exercise", "shutil"]
