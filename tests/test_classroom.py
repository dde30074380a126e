"""The class workflow (tools/classroom/grade.yml): a GitHub Actions file that grades on push,
keeps the JSON as an artifact and publishes JUnit; its grading command works as written."""

import json
import subprocess
from xml.etree import ElementTree as ET

import yaml
from gradelib import ROOT, learner_copy

WORKFLOW = ROOT / "tools" / "classroom" / "grade.yml"


def _load():
    doc = yaml.safe_load(WORKFLOW.read_text())
    return doc, doc[True] if True in doc else doc["on"]  # YAML 1.1 reads the key `on` as True


def test_workflow_runs_on_push_and_keeps_the_reports():
    doc, on = _load()
    assert "push" in on
    steps = doc["jobs"]["grade"]["steps"]
    names = [s.get("name") for s in steps]
    grade = next(s for s in steps if s.get("name") == "Grade")["run"]
    assert "python -m course_lib.grade" in grade and "--junit grade-junit.xml" in grade
    assert "--json-file grade.json" in grade
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert "grade.json" in upload["with"]["path"] and upload["if"] == "always()"
    assert "COURSE_SOURCE" in doc["env"] and "Install the course" in names
    install = next(s for s in steps if s.get("name") == "Install the course")["run"]
    assert "download.pytorch.org/whl/cpu" in install  # never the CUDA build


def test_the_grade_step_works_as_written(tmp_path):
    """Run the workflow's grading command in a learner repository with one solved notebook."""
    learner_copy(tmp_path / "exercises", "formats", solve=["formats.1", "formats.2", "formats.3"])
    doc, _ = _load()
    command = next(s for s in doc["jobs"]["grade"]["steps"] if s.get("name") == "Grade")["run"]
    venv_python = ROOT / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else "python"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command.replace("python ", f"{python} ", 1)],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "grade.json").read_text())
    assert sum(r["earned"] for r in report["results"]) == 7
    cases = ET.parse(tmp_path / "grade-junit.xml").getroot().findall(".//testcase")
    assert len(cases) == 3 and all(c.find("failure") is None for c in cases)
    assert "Total: 7/7 points" in (tmp_path / "grade.txt").read_text()
