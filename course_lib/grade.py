"""Grade exercise notebooks: ``python -m course_lib.grade [PATH ...] [--json] [--timeout S]``.

Each notebook runs top to bottom in a fresh kernel through nbval (``--nbval-lax``, a per-cell
timeout so an endless loop fails that exercise instead of hanging). Graded check cells carry
``metadata.course = {"exercise": id, "points": p}``; an exercise earns its points when all its
check cells pass. The learner's notebook is only read, never written.

``--json`` prints ``{"results": [per exercise], "cells": [per executed code cell]}``.

Exit status: 0 when every exercise passes, 1 when some fail, 2 (with a one-line message) for a
missing path or an unreadable notebook.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat
import pytest


class GradeError(Exception):
    """A path that cannot be graded (missing, not a notebook, corrupt)."""


@dataclass
class Result:
    notebook: str
    exercise: str
    points: float
    earned: float
    status: str  # "pass" | "fail"
    feedback: str


def find_notebooks(paths: list[str]) -> list[Path]:
    """Expand directories to their ``*.ipynb``; check every notebook parses as nbformat 4."""
    found = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found += sorted(p.glob("*.ipynb"))
        elif p.is_file():
            found.append(p)
        else:
            raise GradeError(f"no such file or directory: {raw}")
    if not found:
        raise GradeError(f"no notebooks found in: {' '.join(paths)}")
    for nb in found:
        try:
            nbformat.validate(nbformat.read(nb, as_version=4))
        except Exception as exc:  # noqa: BLE001 - any parse/validation problem is "corrupt"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GradeError(f"cannot read notebook {nb}: {first}") from None
    return found


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


class _Collector:
    """pytest plugin: remember the outcome and error of every executed notebook cell."""

    def __init__(self):
        self.cells: list[dict] = []

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and report.failed):
            self.cells.append({"path": getattr(report, "course_path", ""),
                               "cell": getattr(report, "course_cell", -1),
                               "passed": report.passed,
                               "meta": getattr(report, "course_meta", {}),
                               "error": getattr(report, "course_error", "")})

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        cell = getattr(item, "cell", None)
        report.course_path = str(Path(str(item.fspath)).resolve())
        report.course_cell = getattr(item, "cell_num", -1)
        report.course_meta = dict(cell.metadata.get("course", {})) if cell is not None else {}
        errors = [o for o in (getattr(item, "test_outputs", None) or []) if "ename" in o]
        if errors:
            ename, evalue = errors[-1]["ename"], errors[-1]["evalue"]
            if ename == "KeyboardInterrupt":
                report.course_error = "Timeout: the cell ran longer than the per-cell limit"
            else:
                # graded checks raise AssertionError("[id] why"): the message is the feedback
                prefix = "" if ename == "AssertionError" and evalue else f"{ename}: "
                report.course_error = f"{prefix}{_first_line(evalue)}" if evalue else ename
        elif call.excinfo is not None:
            report.course_error = _first_line(str(call.excinfo.value)) or call.excinfo.typename


_KERNEL_START_ATTEMPTS = 3


def retry_kernel_start() -> None:
    """Make nbval start a notebook's kernel up to three times before it reports a failure.

    jupyter_client picks free TCP ports, closes them and passes them to the new kernel; a kernel
    started at the same moment elsewhere (pytest-xdist workers, two graders) can take one first,
    and the new kernel dies before running anything ("Kernel died before replying to
    kernel_info", jupyter/jupyter_client#154). No notebook code has run then, so starting again
    changes no result. Idempotent; used by :func:`run_notebooks` and the test suite.
    """
    from nbval import kernel
    start = kernel.start_new_kernel
    if getattr(start, "course_retries", False):
        return

    def start_new_kernel(*args, **kwargs):
        for attempt in range(1, _KERNEL_START_ATTEMPTS + 1):
            try:
                return start(*args, **kwargs)
            except RuntimeError:  # died or timed out while starting; nbval has shut it down
                if attempt == _KERNEL_START_ATTEMPTS:
                    raise

    start_new_kernel.course_retries = True
    kernel.start_new_kernel = start_new_kernel


def run_notebooks(notebooks: list[Path], timeout: int) -> list[dict]:
    """Execute the notebooks with nbval and return one record per cell."""
    retry_kernel_start()
    collector = _Collector()
    args = [str(p) for p in notebooks] + [
        "--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={timeout}",
        "-p", "no:cacheprovider", "-q", "--no-header", "-o", "addopts=", "-o", "testpaths=",
        "--rootdir", str(Path(notebooks[0]).resolve().parent)]
    with redirect_stdout(io.StringIO()):
        pytest.main(args, plugins=[collector])
    return collector.cells


def score(notebooks: list[Path], cells: list[dict]) -> list[Result]:
    """One result per exercise, in notebook order; points earned only if all checks pass."""
    results: dict[tuple[str, str], Result] = {}
    for nb in notebooks:
        parsed = nbformat.read(nb, as_version=4)
        for cell in parsed.cells:
            meta = cell.metadata.get("course", {})
            if cell.cell_type == "code" and "points" in meta:
                key = (str(nb.resolve()), meta["exercise"])
                r = results.setdefault(key, Result(str(nb), meta["exercise"], 0.0, 0.0, "fail",
                                                   "not run"))
                r.points += float(meta["points"])
    by_nb: dict[str, list[dict]] = {}
    for c in cells:
        by_nb.setdefault(c["path"], []).append(c)
    for (nb_path, ex_id), r in results.items():
        cells_here = by_nb.get(nb_path, [])
        checks = [c for c in cells_here
                  if c["meta"].get("exercise") == ex_id and "points" in c["meta"]]
        failed = [c for c in checks if not c["passed"]]
        if checks and not failed:
            r.status, r.earned, r.feedback = "pass", r.points, "all checks passed"
            continue
        own = next((c for c in cells_here if c["meta"].get("exercise") == ex_id
                    and "points" not in c["meta"] and not c["passed"]), None)
        first = next((c for c in cells_here if not c["passed"]), None)
        if own is not None:  # the learner's own cell failed: that is the news, not the check
            r.feedback = f"your solution cell failed: {own['error']}"
        else:
            r.feedback = (failed[0]["error"] or "the check cell failed") if failed else "check not run"
            if first is not None and "points" not in first["meta"]:
                r.feedback += f" (an earlier cell failed first: {first['error']})"
    return list(results.values())


def format_table(results: list[Result]) -> str:
    rows = [("notebook", "exercise", "points", "status", "feedback")]
    rows += [(r.notebook, r.exercise, f"{r.earned:g}/{r.points:g}", r.status.upper(),
              r.feedback[:110]) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4]
             for row in rows]
    lines.insert(1, "-" * min(120, len(lines[0]) + 10))
    earned, total = sum(r.earned for r in results), sum(r.points for r in results)
    passed = sum(r.status == "pass" for r in results)
    lines.append(f"\nTotal: {earned:g}/{total:g} points, {passed}/{len(results)} exercises passed")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.grade",
                                description="Grade exercise notebooks (default: exercises/).")
    p.add_argument("paths", nargs="*", default=["exercises"], help="notebooks or directories")
    p.add_argument("--json", action="store_true", help="print machine-readable results")
    p.add_argument("--timeout", type=int, default=120, help="seconds allowed per cell (default 120)")
    args = p.parse_args(argv)
    try:
        notebooks = find_notebooks(args.paths)
    except GradeError as exc:
        print(f"grade: error: {exc}", file=sys.stderr)
        return 2
    cells = run_notebooks(notebooks, args.timeout)
    results = score(notebooks, cells)
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in results], "cells": cells}, indent=1))
    else:
        print(format_table(results))
    return 0 if results and all(r.status == "pass" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
