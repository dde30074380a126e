"""Static checks of the book that `jupyter-book build -W -n` would otherwise catch late."""

import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
BIB_KEYS = set(re.findall(r"@\w+\{([^,]+),", (ROOT / "references.bib").read_text()))


def _toc_files(node):
    if isinstance(node, dict):
        if "file" in node:
            yield node["file"]
        for v in node.values():
            yield from _toc_files(v)
    elif isinstance(node, list):
        for v in node:
            yield from _toc_files(v)


DOCS = [TOC["root"], *_toc_files(TOC["parts"])]


def _path(doc):
    found = [p for p in (ROOT / f"{doc}.md", ROOT / f"{doc}.ipynb") if p.exists()]
    assert len(found) == 1, f"{doc}: expected exactly one of .md/.ipynb, found {found}"
    return found[0]


def _text(path):
    if path.suffix == ".md":
        return path.read_text(encoding="utf-8")
    nb = nbformat.read(path, as_version=4)
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_toc_docs_unique_and_numbered_parts():
    assert len(DOCS) == len(set(DOCS))
    captions = [p["caption"] for p in TOC["parts"]]
    assert captions[:4] == ["Foundations", "Brain-inspired motivation", "Making sparsity fast",
                            "Interview preparation"]


@pytest.mark.parametrize("doc", DOCS)
def test_page_has_one_title_and_valid_references(doc):
    path = _path(doc)
    text = _text(path)
    lines = [line for line in text.splitlines() if not line.startswith("    ")]
    body = re.sub(r"```.*?```", "", "\n".join(lines), flags=re.S)
    titles = re.findall(r"^# \S", body, flags=re.M)
    assert text.lstrip().startswith("# ") and len(titles) == 1, f"{doc}: one H1, first"
    for keys in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text):
        for key in keys.split(","):
            assert key.strip() in BIB_KEYS, f"{doc}: unknown citation {key!r}"
    for target in re.findall(r"\{doc\}`(?:[^`<]*<)?([^`>]+)>?`", text):
        resolved = (path.parent / target).resolve().relative_to(ROOT).as_posix()
        assert resolved in DOCS, f"{doc}: {{doc}} link {target!r} is not a page of the book"


@pytest.mark.parametrize("doc", [d for d in DOCS if (ROOT / f"{d}.ipynb").exists()])
def test_notebooks_stored_without_outputs(doc):
    nb = nbformat.read(ROOT / f"{doc}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", doc
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{doc}: stored outputs"
