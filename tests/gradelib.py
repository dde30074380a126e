"""Run the grader CLI in a subprocess (as a learner would) and parse its JSON."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEMS = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))


def grade(*paths, timeout=120):
    """(exit code, parsed JSON or None, stderr) of `python -m course_lib.grade --json PATHS`."""
    proc = subprocess.run([sys.executable, "-m", "course_lib.grade", "--json",
                           "--timeout", str(timeout), *map(str, paths)],
                          capture_output=True, text=True, cwd=ROOT)
    data = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, data, proc.stderr


def cell_roles(path):
    """For each code cell (nbval numbering): 'check', 'solution' or 'other'."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    roles = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        meta = c.metadata.get("course", {})
        roles.append("check" if "points" in meta else "solution" if "exercise" in meta else "other")
    return roles
