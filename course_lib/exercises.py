"""Generate the learner notebooks in exercises/ and the grader's check bundle from solutions/.

Rules (the nbgrader convention, implemented with nbformat):

* in a code cell, every block ``### BEGIN SOLUTION`` … ``### END SOLUTION`` becomes
  ``raise NotImplementedError("Exercise <id>: …")`` at the marker's indentation, where ``<id>``
  is the cell's ``metadata.course.exercise``;
* in a markdown cell, such a block becomes "*Write your answer here.*";
* markdown cells holding only a ``{solution-start}`` or ``{solution-end}`` directive (the
  book's dropdown solutions) are dropped;
* everything else (prose, set-up, graded checks) is kept; outputs are stripped.

It also writes ``course_lib/checks.json``, the course's copy of every exercise: set-up cells,
solution cells (course solution, learner stub, ``forbid`` list and rules), graded check cells
with their points and a SHA-256 of each. The grader reads the checks and points from this
bundle only, never from the learner's notebook.

Usage::

    python -m course_lib.exercises                 # regenerate exercises/ from solutions/
    python -m course_lib.exercises --check         # exit 1 if exercises/ is out of date
    python -m course_lib.exercises --strip NB ...  # strip outputs (and jupytext metadata) in place
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from functools import lru_cache
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_GATE = re.compile(r"^\s*(`{3,}|:{3,})\{solution-(start|end)\}.*?\1\s*$", re.S)
ROOT = Path(__file__).resolve().parent.parent
BUNDLE = Path(__file__).resolve().parent / "checks.json"
NOTE = ("*Generated from `{src}` by `make exercises`: do not edit the source; solve the "
        "exercises below and grade them with `make grade`.*")


def _replace_blocks(source: str, replacement: str, where: str) -> str:
    out, inside, indent = [], False, ""
    for lineno, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"{where}: line {lineno}: nested {BEGIN}")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out.append(indent + replacement)
        elif stripped == END:
            if not inside:
                raise ValueError(f"{where}: line {lineno}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN} without {END}")
    return "\n".join(out)


KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def strip_outputs(nb):
    """Store a notebook the course's way (in place; returns nb): no outputs or execution
    counts, no execution/jupytext metadata, the ``python3`` kernel."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        for key in ("execution", "lines_to_next_cell"):
            cell.metadata.pop(key, None)
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def make_exercise(nb, src_name: str):
    """The learner version of a solutions notebook (a new notebook; ``nb`` is not changed)."""
    ex = nbformat.reads(nbformat.writes(nb), as_version=4)
    cells = []
    for i, cell in enumerate(ex.cells):
        where = f"{src_name} cell {i}"
        if cell.cell_type == "markdown":
            if _GATE.match(cell.source):
                continue
            cell.source = _replace_blocks(cell.source, "*Write your answer here.*", where)
        elif cell.cell_type == "code" and (BEGIN in cell.source or END in cell.source):
            _replace_blocks(cell.source, "", where)  # malformed markers fail before the id check
            ex_id = cell.metadata.get("course", {}).get("exercise")
            if not ex_id:
                raise ValueError(f"{where}: a solution cell needs metadata course.exercise")
            stub = f'raise NotImplementedError("Exercise {ex_id}: your code here")'
            cell.source = _replace_blocks(cell.source, stub, where)
        cells.append(cell)
    note = nbformat.v4.new_markdown_cell(NOTE.format(src=src_name))
    note.id = "generated-note"
    ex.cells = cells[:1] + [note] + cells[1:]
    ex.metadata.setdefault("course", {})["generated_from"] = src_name
    return strip_outputs(ex)


def render(src: Path) -> str:
    """The exact text of ``exercises/<stem>.ipynb`` for ``solutions/<stem>.ipynb``."""
    nb = nbformat.read(src, as_version=4)
    return nbformat.writes(make_exercise(nb, f"solutions/{src.name}")) + "\n"


def sources(root: Path = ROOT) -> list[Path]:
    return sorted((root / "solutions").glob("*.ipynb"))


def out_of_date(root: Path = ROOT) -> list[str]:
    """Exercise notebooks that differ from what the generator produces (or are orphans)."""
    stale = []
    for src in sources(root):
        dst = root / "exercises" / src.name
        if not dst.exists() or dst.read_text(encoding="utf-8") != render(src):
            stale.append(str(dst.relative_to(root)))
    if root == ROOT and (not BUNDLE.exists() or BUNDLE.read_text(encoding="utf-8") != render_bundle(root)):
        stale.append(str(BUNDLE.relative_to(ROOT)))
    names = {s.name for s in sources(root)}
    stale += [f"exercises/{p.name} (no source)" for p in sorted((root / "exercises").glob("*.ipynb"))
              if p.name not in names]
    return stale


def generate(root: Path = ROOT) -> list[Path]:
    (root / "exercises").mkdir(exist_ok=True)
    written = []
    for src in sources(root):
        dst = root / "exercises" / src.name
        text = render(src)
        if not dst.exists() or dst.read_text(encoding="utf-8") != text:
            dst.write_text(text, encoding="utf-8")
            written.append(dst)
    if root == ROOT:
        text = render_bundle(root)
        if not BUNDLE.exists() or BUNDLE.read_text(encoding="utf-8") != text:
            BUNDLE.write_text(text, encoding="utf-8")
            written.append(BUNDLE)
    for orphan in (root / "exercises").glob("*.ipynb"):
        if not (root / "solutions" / orphan.name).exists():
            orphan.unlink()
            written.append(orphan)
    return written


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bundle_entry(nb, src_name: str) -> dict:
    """The course's copy of one exercise notebook: its code cells by role, in order."""
    cells, totals, n_checks = [], {}, {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("course", {})
        where = f"{src_name} cell {i}"
        if "points" in meta:
            ex = meta["exercise"]
            n = n_checks[ex] = n_checks.get(ex, -1) + 1
            points = float(meta["points"])
            if points <= 0:
                raise ValueError(f"{where}: points must be positive, got {points}")
            totals[ex] = totals.get(ex, 0.0) + points
            cells.append({"role": "check", "key": f"{ex}/{n}", "exercise": ex, "points": points,
                          "source": cell.source, "sha256": _sha(cell.source)})
        elif BEGIN in cell.source or "exercise" in meta:
            ex = meta.get("exercise")
            if not ex:
                raise ValueError(f"{where}: a solution cell needs metadata course.exercise")
            stub = f'raise NotImplementedError("Exercise {ex}: your code here")'
            cells.append({"role": "solution", "exercise": ex, "source": cell.source,
                          "stub": _replace_blocks(cell.source, stub, where),
                          "forbid": list(meta.get("forbid", [])),
                          "rules": list(meta.get("rules", []))})
        else:
            cells.append({"role": "setup", "source": cell.source})
    solved = {c["exercise"] for c in cells if c["role"] == "solution"}
    for ex in totals:
        if ex not in solved:
            raise ValueError(f"{src_name}: exercise {ex} has checks but no solution cell")
    return {"source": src_name, "cells": cells, "exercises": totals}


def build_bundle(root: Path = ROOT) -> dict:
    """Every notebook's entry, the course version, and one hash over all checks."""
    from course_lib import __version__
    notebooks = {src.stem: bundle_entry(nbformat.read(src, as_version=4), f"solutions/{src.name}")
                 for src in sources(root)}
    graded = {stem: [(c["role"], c.get("key"), c.get("points"), c["source"], c.get("forbid"),
                      c.get("rules")) for c in e["cells"] if c["role"] != "solution"]
              + [(c["exercise"], c["forbid"], c["rules"]) for c in e["cells"]
                 if c["role"] == "solution"]
              for stem, e in notebooks.items()}
    return {"course_version": __version__,
            "checks_sha256": _sha(json.dumps(graded, sort_keys=True)),
            "notebooks": notebooks}


def render_bundle(root: Path = ROOT) -> str:
    return json.dumps(build_bundle(root), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


@lru_cache(maxsize=1)
def load_bundle() -> dict:
    """The installed check bundle (``course_lib/checks.json``)."""
    if not BUNDLE.exists():
        raise FileNotFoundError(f"{BUNDLE} is missing: run `make exercises`")
    return json.loads(BUNDLE.read_text(encoding="utf-8"))


def course_namespace(stem: str, until: str | None = None) -> dict:
    """Run a notebook's set-up and course-solution cells in a fresh namespace (checks skipped),
    stopping after the solution cells of exercise ``until``."""
    entry = load_bundle()["notebooks"][stem]
    ns = {"__name__": f"course_solution_{stem}"}
    seen = False
    for cell in entry["cells"]:
        if cell["role"] == "check":
            if seen:
                break
            continue
        exec(compile(cell["source"], f"<{stem} course cell>", "exec"), ns)  # noqa: S102 - course code
        seen = seen or (cell.get("exercise") == until)
    return ns


def solution_value(exercise_id: str, name: str):
    """The value of ``name`` after the course's solution of ``exercise_id`` ran."""
    stem = exercise_id.rsplit(".", 1)[0]
    return course_namespace(stem, until=exercise_id)[name]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.exercises", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if exercises/ is out of date")
    p.add_argument("--strip", nargs="+", metavar="NB", help="strip outputs of these notebooks in place")
    args = p.parse_args(argv)
    if args.strip:
        for path in args.strip:
            nb = nbformat.read(path, as_version=4)
            nbformat.write(strip_outputs(nb), path)
        return 0
    if args.check:
        stale = out_of_date()
        for s in stale:
            print(f"out of date: {s} (run `make exercises`)")
        return 1 if stale else 0
    for path in generate():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
