"""Grade exercise notebooks: ``python -m course_lib.grade [PATH ...]``.
Chapter: every ``solutions/<stem>`` exercises page (README "Exercises and grading").

The verdict comes from the course, not from the learner's notebook:

1. the exercises, check code and points come from the course's bundle
   (``course_lib/checks.json``, written by ``make exercises``); the learner's notebook
   contributes only its solution cells, matched by exercise id;
2. solution cells are read first (:mod:`course_lib.grade_rules`): tampering code earns the
   notebook 0 without running it; a use of the course's own implementation of an exercise, or
   of what its statement forbids, earns that exercise 0;
3. in this process, which never runs the learner's code, the judge runs the course's set-up,
   solution and check cells: the checks draw their cases — fixed, seeded, and hidden ones from
   a seed drawn now — and evaluate the references (:mod:`course_lib.grading`);
4. nbval executes a notebook made of the course's cells and the learner's solution cells in a
   fresh kernel; there the checks only call the learner's functions on the judge's inputs and
   write the outputs as plain data;
5. the judge compares. Points are per check cell (partial credit).

Options: ``--json`` (everything, feedback whole; ``--json-file FILE`` writes it to a file
while the table goes to the terminal), ``--junit FILE`` (one test case per
exercise), ``--gradebook FILE`` (each PATH is one learner's folder: one CSV row per learner and
exercise, and a total per learner), ``--seed N`` (repeat the hidden cases of an earlier report),
``--timeout S`` per cell, ``--notebook-timeout S`` per notebook.

Exit status: 0 when every exercise passes, 1 when some fail, 2 when some path could not be
graded (missing, not a notebook, not one of the course's exercise notebooks) — the others are
still graded and reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import secrets
import sys
import tempfile
import textwrap
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

import nbformat

from course_lib import grade_rules, grading
from course_lib.exercises import load_bundle
from course_lib.grade_run import run_notebook

#: 3 × the slowest course solution notebook under the grader (training: 10 s on 2 idle cores)
NOTEBOOK_TIMEOUT_S = 30
CELL_TIMEOUT_S = 120


class GradeError(Exception):
    """A path that cannot be graded (missing, not a notebook, not a course notebook)."""


@dataclass
class CheckResult:
    key: str
    points: float
    passed: bool
    feedback: str


@dataclass
class Result:
    notebook: str
    exercise: str
    points: float
    earned: float
    status: str  # "pass" | "partial" | "fail" | "error"
    feedback: str
    checks: list[CheckResult] = field(default_factory=list)


@dataclass
class NotebookReport:
    path: str
    stem: str
    status: str  # "graded" | "not run" | "unreadable"
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cells: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading


def find_notebooks(paths: list[str]) -> tuple[list[Path], list[NotebookReport]]:
    """Expand directories to their ``*.ipynb``; missing paths become unreadable reports."""
    found, bad = [], []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            inside = sorted(p.glob("*.ipynb"))
            if not inside:
                bad.append(NotebookReport(raw, "", "unreadable", "no notebooks in this folder"))
            found += inside
        elif p.is_file():
            found.append(p)
        else:
            bad.append(NotebookReport(raw, "", "unreadable", "no such file or directory"))
    return found, bad


def read_learner(path: Path, bundle: dict):
    """(stem, parsed notebook) of a learner's file, or GradeError with a one-line reason."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise GradeError("not a notebook: the file is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise GradeError(f"not a notebook: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        kind = type(raw).__name__ if not isinstance(raw, dict) else "an object without a cell list"
        raise GradeError(f"not a notebook: the JSON is {kind}, a notebook is an object with "
                         "'cells', 'metadata' and 'nbformat'")
    try:
        nb = nbformat.reads(json.dumps(raw), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # noqa: BLE001 - any validation problem is "corrupt"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GradeError(f"not a valid notebook: {text}") from None
    source = str(nb.metadata.get("course", {}).get("generated_from", ""))
    stem = Path(source).stem if source else path.stem
    if stem not in bundle["notebooks"]:
        raise GradeError(f"not one of the course's exercise notebooks ({stem!r}; the course has "
                         f"{', '.join(sorted(bundle['notebooks']))})")
    return stem, nb


def learner_cells(nb, entry: dict) -> tuple[dict[str, list[str]], list[str], int]:
    """(solution sources by exercise id, check-cell sources, number of the learner's own code
    cells that are neither solutions nor the course's set-up: those are not run)."""
    course = {c["source"].strip() for c in entry["cells"] if c["role"] == "setup"}
    solutions: dict[str, list[str]] = {}
    checks: list[str] = []
    others = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("course", {})
        meta = meta if isinstance(meta, dict) else {}
        if "points" in meta:
            checks.append(cell.source)
        elif isinstance(meta.get("exercise"), str):
            solutions.setdefault(meta["exercise"], []).append(cell.source)
        elif cell.source.strip() and cell.source.strip() not in course:
            others += 1
    return solutions, checks, others


# ---------------------------------------------------------------------------------------------
# Judge side


def prepare(stem: str, entry: dict, seed: int) -> tuple[dict, dict[str, str]]:
    """Run the course's cells in judge mode: (specs by call key, judge errors by check key)."""
    judge = grading.start_judge(seed)
    ns = {"__name__": f"course_judge_{stem}"}
    errors = {}
    try:
        with open(os.devnull, "w") as sink, redirect_stdout(sink), redirect_stderr(sink):
            for cell in entry["cells"]:
                if cell["role"] == "check":
                    grading.begin_check(cell["key"])
                try:
                    exec(compile(cell["source"], f"<course {stem}>", "exec"), ns)  # noqa: S102
                except Exception as exc:  # noqa: BLE001 - a course bug: report, don't crash
                    errors[cell.get("key", "setup")] = f"{type(exc).__name__}: {exc}"
    finally:
        grading.stop_judge()
    return judge.specs, errors


def graded_notebook(entry: dict, solutions: dict[str, list[str]], channel: Path):
    """The notebook nbval runs: the course's cells with the learner's solution cells."""
    def code(source, **meta):
        c = nbformat.v4.new_code_cell(source)
        c.metadata["course_grade"] = meta
        return c

    cells = [code(f"from course_lib import grading as _course_grading\n"
                  f"_course_grading.record_to({str(channel)!r})", role="grader")]
    placed = set()
    for cell in entry["cells"]:
        role = cell["role"]
        if role == "solution":
            ex = cell["exercise"]
            if ex not in placed:  # the learner's cells go where the exercise's first one was
                placed.add(ex)
                for src in solutions.get(ex) or [cell["stub"]]:
                    cells.append(code(src, role="solution", exercise=ex))
        elif role == "check":
            cells.append(code(f"_course_grading.begin_check({cell['key']!r})\n{cell['source']}",
                              role="check", exercise=cell["exercise"], key=cell["key"]))
        else:
            cells.append(code(cell["source"], role="setup"))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


def read_outputs(channel: Path) -> dict[str, list | None]:
    """Outputs recorded in the kernel, by call key; a key recorded twice counts as missing."""
    out: dict[str, list | None] = {}
    seen = set()
    path = channel / "outputs.jsonl"
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            key, outputs = str(rec["key"]), rec["outputs"]
        except (ValueError, KeyError, TypeError):
            continue
        if key in seen:
            out[key] = None
            continue
        seen.add(key)
        out[key] = [grading.decode(o) for o in outputs] if isinstance(outputs, list) else None
    return out


def judge_check(cell: dict, specs: dict, outputs: dict, judge_errors: dict,
                cell_records: list[dict]) -> CheckResult:
    """Score one check cell from the recorded outputs."""
    key = cell["key"]
    if key in judge_errors:
        return CheckResult(key, cell["points"], False,
                           f"grader error (the course's own check failed): {judge_errors[key]}")
    mine = sorted((k for k in specs if k.rsplit("#", 1)[0] == key),
                  key=lambda k: int(k.rsplit("#", 1)[1]))
    ran = next((c for c in cell_records if c["meta"].get("key") == key), None)
    solution = next((c for c in cell_records if c["meta"].get("role") == "solution"
                     and c["meta"].get("exercise") == cell["exercise"] and not c["passed"]), None)
    for k in mine:
        spec, got = specs[k], outputs.get(k)
        if got is None or len(got) != len(spec.cases):
            if ran is not None and not ran["passed"] and ran["error"]:
                why = f"the check cell failed: {ran['error']}"
            else:
                why = "the check cell did not run" if ran is None else "the check recorded no result"
        else:
            why = grading.verdict(spec, got)
            if why and spec.hint:
                why += f"\nHint: {spec.hint}"
        if why:
            if solution is not None:  # the learner's own cell failing is the news, not the check
                why = f"your solution cell failed: {solution['error']}"
            return CheckResult(key, cell["points"], False, why)
    return CheckResult(key, cell["points"], True, "passed")


def grade_notebook(path: Path, bundle: dict, seed: int, cell_s: float, notebook_s: float
                   ) -> tuple[NotebookReport, list[Result]]:
    """Grade one learner notebook; every course exercise of it gets a result."""
    stem, nb = read_learner(path, bundle)
    entry = bundle["notebooks"][stem]
    report = NotebookReport(str(path), stem, "graded")
    solutions, their_checks, others = learner_cells(nb, entry)
    course_checks = [c["source"] for c in entry["cells"] if c["role"] == "check"]
    if their_checks != course_checks:
        report.notes.append("the notebook's check cells differ from the course's (edited, "
                            "missing or added): the course's checks were used")
    unknown = sorted(set(solutions) - set(entry["exercises"]))
    if unknown:
        report.notes.append(f"cells claiming exercises this notebook does not have were "
                            f"ignored: {', '.join(unknown)}")
    if others:
        report.notes.append(f"{others} code cell(s) outside the solution cells were not run: "
                            "put helpers inside a solution cell")
    spec_of = {c["exercise"]: c for c in entry["cells"] if c["role"] == "solution"}
    findings = grade_rules.check_cells(
        [c["source"] for c in entry["cells"] if c["role"] == "setup"],
        [(ex, src, spec_of[ex]["forbid"], spec_of[ex]["rules"])
         for ex, srcs in solutions.items() if ex in spec_of for src in srcs])
    results = {ex: Result(str(path), ex, pts, 0.0, "fail", "") for ex, pts in
               entry["exercises"].items()}
    tamper = [f for f in findings if f.kind == "tamper"]
    if tamper:
        report.status = "not run"
        report.reason = "tampering: " + "; ".join(f"{f.exercise}: {f.message}" for f in tamper)
        for r in results.values():
            r.feedback = f"0 points: the notebook was not run ({report.reason})"
        return report, list(results.values())

    start = time.monotonic()
    specs, judge_errors = prepare(stem, entry, seed)
    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        channel = Path(tmp) / "channel"
        channel.mkdir()
        with open(channel / "inputs.pkl", "wb") as f:
            pickle.dump({k: s.cases for k, s in specs.items()}, f)
        work = Path(tmp) / "run"
        work.mkdir()
        graded = work / f"{stem}.ipynb"
        nbformat.write(graded_notebook(entry, solutions, channel), graded)
        records = run_notebook(graded, cell_s, notebook_s)
        outputs = read_outputs(channel)
    report.seconds = round(time.monotonic() - start, 2)
    report.cells = records

    for cell in entry["cells"]:
        if cell["role"] == "check":
            results[cell["exercise"]].checks.append(
                judge_check(cell, specs, outputs, judge_errors, records))
    leaked = {}
    for f in findings:
        leaked.setdefault(f.exercise, []).append(f.message)
    for ex, r in results.items():
        r.earned = sum(c.points for c in r.checks if c.passed)
        failing = [c for c in r.checks if not c.passed]
        r.status = "pass" if not failing else "partial" if r.earned > 0 else "fail"
        if any(c.feedback.startswith("grader error") for c in failing):
            r.status = "error"
        r.feedback = "all checks passed" if not failing else "\n".join(
            f"check {c.key} ({c.points:g} pt): {c.feedback}" for c in failing)
        if ex in leaked:
            r.earned, r.status = 0.0, "fail"
            r.feedback = "0 points: your solution " + "; ".join(dict.fromkeys(leaked[ex]))
    return report, list(results.values())


# ---------------------------------------------------------------------------------------------
# Reports


def _header(bundle: dict, seed: int) -> dict:
    return {"course_version": bundle["course_version"], "checks_sha256": bundle["checks_sha256"],
            "seed": seed}


def format_table(reports: list[NotebookReport], results: list[Result], header: dict,
                 width: int = 100) -> str:
    lines = []
    by_nb: dict[str, list[Result]] = {}
    for r in results:
        by_nb.setdefault(r.notebook, []).append(r)
    wrap = lambda text, indent: "\n".join(  # noqa: E731
        textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent + "  ",
                      replace_whitespace=False, drop_whitespace=False) if line else ""
        for line in text.splitlines())
    for rep in reports:
        lines.append(f"{rep.path}")
        if rep.status == "unreadable":
            lines.append(f"  ERROR  {rep.reason}")
            continue
        if rep.reason:
            lines.append(wrap(f"NOT RUN: {rep.reason}", "  "))
        for note in rep.notes:
            lines.append(wrap(f"note: {note}", "  "))
        for r in by_nb.get(rep.path, []):
            lines.append(f"  {r.exercise:<18} {r.earned:g}/{r.points:g}".ljust(34)
                         + f"{r.status.upper()}")
            if r.status != "pass":
                lines.append(wrap(r.feedback, "      "))
    earned, total = sum(r.earned for r in results), sum(r.points for r in results)
    passed = sum(r.status == "pass" for r in results)
    unreadable = sum(rep.status == "unreadable" for rep in reports)
    lines.append(f"\nTotal: {earned:g}/{total:g} points, {passed}/{len(results)} exercises passed"
                 + (f", {unreadable} path(s) could not be graded" if unreadable else ""))
    lines.append(f"Course {header['course_version']}, checks {header['checks_sha256'][:12]}, "
                 f"hidden-case seed {header['seed']} (repeat with --seed {header['seed']})")
    return "\n".join(lines)


def write_junit(path: str, reports: list[NotebookReport], results: list[Result],
                header: dict) -> None:
    """One test case per exercise (classname = notebook), failures carry the whole feedback."""
    suites = ET.Element("testsuites", name="course_lib.grade")
    by_nb: dict[str, list[Result]] = {}
    for r in results:
        by_nb.setdefault(r.notebook, []).append(r)
    for rep in reports:
        rows = by_nb.get(rep.path, [])
        suite = ET.SubElement(suites, "testsuite", name=rep.stem or rep.path,
                              tests=str(max(1, len(rows))),
                              failures=str(sum(r.status != "pass" for r in rows)),
                              errors=str(int(rep.status == "unreadable")),
                              time=f"{rep.seconds:.2f}")
        props = ET.SubElement(suite, "properties")
        for k, v in header.items():
            ET.SubElement(props, "property", name=k, value=str(v))
        if rep.status == "unreadable":
            case = ET.SubElement(suite, "testcase", classname=rep.path, name="read notebook")
            ET.SubElement(case, "error", message=rep.reason).text = rep.reason
        for r in rows:
            case = ET.SubElement(suite, "testcase", classname=rep.stem,
                                 name=f"{r.exercise} ({r.earned:g}/{r.points:g} points)")
            if r.status != "pass":
                ET.SubElement(case, "failure", message=r.feedback.splitlines()[0][:200]
                              ).text = r.feedback
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def write_gradebook(path: str, learners: dict[str, tuple[list, list]], bundle: dict,
                    header: dict) -> None:
    """CSV: learner, exercise, earned, points, status, reason; a TOTAL row per learner."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["learner", "exercise", "earned", "points", "status", "reason",
                    "course_version", "checks_sha256", "seed"])
        tail = [header["course_version"], header["checks_sha256"], header["seed"]]
        for learner, (reports, results) in learners.items():
            got: dict[str, Result] = {}
            for r in results:  # two copies of one notebook: the first file (sorted) counts
                got.setdefault(r.exercise, r)
            why_missing = {rep.stem: rep.reason for rep in reports if rep.status == "unreadable"}
            for stem, entry in bundle["notebooks"].items():
                for ex, points in entry["exercises"].items():
                    r = got.get(ex)
                    if r is None:
                        reason = why_missing.get(stem) or "notebook not submitted"
                        w.writerow([learner, ex, 0, f"{points:g}", "missing", reason, *tail])
                    else:
                        w.writerow([learner, ex, f"{r.earned:g}", f"{r.points:g}", r.status,
                                    " ".join(r.feedback.split())[:500], *tail])
            unread = [f"{Path(rep.path).name}: {rep.reason}" for rep in reports
                      if rep.status == "unreadable"]
            total = sum(p for e in bundle["notebooks"].values() for p in e["exercises"].values())
            counted = {r.notebook for r in got.values()}
            ignored = sorted({f"{Path(r.notebook).name}: a second copy, not counted"
                              for r in results if r.notebook not in counted})
            w.writerow([learner, "TOTAL", f"{sum(r.earned for r in got.values()):g}",
                        f"{total:g}", "", "; ".join(unread + ignored), *tail])


def grade_paths(paths: list[str], bundle: dict, seed: int, cell_s: float, notebook_s: float
                ) -> tuple[list[NotebookReport], list[Result]]:
    notebooks, reports = find_notebooks(paths)
    results = []
    for path in notebooks:
        try:
            rep, res = grade_notebook(path, bundle, seed, cell_s, notebook_s)
        except GradeError as exc:
            rep, res = NotebookReport(str(path), path.stem, "unreadable", str(exc)), []
        reports.append(rep)
        results += res
    return reports, results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.grade",
                                description="Grade exercise notebooks (default: exercises/).")
    p.add_argument("paths", nargs="*", default=["exercises"],
                   help="notebooks or folders (with --gradebook: one folder per learner)")
    p.add_argument("--json", action="store_true", help="print machine-readable results")
    p.add_argument("--json-file", metavar="FILE", help="also write the JSON report to FILE")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report")
    p.add_argument("--gradebook", metavar="FILE", help="write a CSV gradebook; each path is "
                   "one learner's folder")
    p.add_argument("--seed", type=int, help="seed of the hidden cases (default: drawn now)")
    p.add_argument("--timeout", type=float, default=CELL_TIMEOUT_S,
                   help=f"seconds allowed per cell (default {CELL_TIMEOUT_S})")
    p.add_argument("--notebook-timeout", type=float, default=NOTEBOOK_TIMEOUT_S,
                   help=f"seconds allowed per notebook (default {NOTEBOOK_TIMEOUT_S})")
    args = p.parse_args(argv)
    bundle = load_bundle()
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    header = _header(bundle, seed)
    limits = (args.timeout, args.notebook_timeout)
    if args.gradebook:
        learners = {}
        for folder in args.paths:
            name = Path(folder).name or folder
            learners[name] = grade_paths([folder], bundle, seed, *limits)
        write_gradebook(args.gradebook, learners, bundle, header)
        reports = [rep for reps, _ in learners.values() for rep in reps]
        results = [r for _, res in learners.values() for r in res]
    else:
        reports, results = grade_paths(args.paths, bundle, seed, *limits)
    if args.junit:
        write_junit(args.junit, reports, results, header)
    report = json.dumps({**header, "notebooks": [asdict(r) for r in reports],
                         "results": [asdict(r) for r in results]}, indent=1, default=str)
    if args.json_file:
        Path(args.json_file).write_text(report + "\n", encoding="utf-8")
    if args.json:
        print(report)
    else:
        print(format_table(reports, results, header))
    unreadable = [rep for rep in reports if rep.status == "unreadable"]
    for rep in unreadable:
        print(f"grade: error: {rep.path}: {rep.reason}", file=sys.stderr)
    if unreadable:
        return 2
    return 0 if results and all(r.status == "pass" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
