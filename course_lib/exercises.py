"""Generate the learner notebooks in exercises/ from their single source in solutions/.

Rules (the nbgrader convention, implemented with nbformat):

* in a code cell, every block ``### BEGIN SOLUTION`` … ``### END SOLUTION`` becomes
  ``raise NotImplementedError("Exercise <id>: …")`` at the marker's indentation, where ``<id>``
  is the cell's ``metadata.course.exercise``;
* in a markdown cell, such a block becomes "*Write your answer here.*";
* markdown cells holding only a ``{solution-start}`` or ``{solution-end}`` directive (the
  book's dropdown solutions) are dropped;
* everything else (prose, set-up, graded checks) is kept; outputs are stripped.

Usage::

    python -m course_lib.exercises                 # regenerate exercises/ from solutions/
    python -m course_lib.exercises --check         # exit 1 if exercises/ is out of date
    python -m course_lib.exercises --strip NB ...  # strip outputs (and jupytext metadata) in place
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_GATE = re.compile(r"^\s*(`{3,}|:{3,})\{solution-(start|end)\}.*?\1\s*$", re.S)
ROOT = Path(__file__).resolve().parent.parent
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
    for orphan in (root / "exercises").glob("*.ipynb"):
        if not (root / "solutions" / orphan.name).exists():
            orphan.unlink()
            written.append(orphan)
    return written


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
