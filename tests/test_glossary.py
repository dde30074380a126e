"""Every glossary row links to a page whose prose actually uses the term.

A row's English column may list several terms ("prefill / decode", "boosting, duty cycle") and
an abbreviation in parentheses ("mixture of experts (MoE)"). Each listed term must appear on the
linked page, either spelled out or as its abbreviation; matching ignores case and treats "-" and
" " alike. The page text is its markdown (for a notebook, the markdown cells): the prose a reader
meets, not code that happens to contain the word.
"""

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
GLOSSARY = ROOT / "book" / "interview" / "glossary.md"
ROW = re.compile(r"^\|(?P<english>[^|]+)\|[^|]+\|.*\{doc\}`(?P<target>[^`]+)`\s*\|\s*$")


def _rows():
    for line in GLOSSARY.read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if m:
            yield m["english"].strip(), m["target"].strip()


def _terms(english):
    """Each listed term as a tuple of acceptable spellings: 'rectified linear unit (ReLU)' ->
    ('rectified linear unit', 'ReLU'). Terms are separated by '/' or ',' outside parentheses;
    a parenthesis holds alternatives (themselves separated by '/' or ',') and is left out of the
    spelled-out term: 'semi-structured (N:M, 2:4) sparsity' -> ('semi-structured sparsity',
    'N:M', '2:4')."""
    for part in re.split(r"\s*[/,]\s*(?![^(]*\))", english):
        inside = re.search(r"\((.+)\)", part)
        if inside is None:
            yield (part,)
        else:
            spelled = re.sub(r"\s+", " ", part.replace(inside[0], "")).strip()
            yield (spelled, *re.split(r"\s*[/,]\s*", inside[1]))


def _normal(text):
    """Lower case, markdown emphasis and code marks dropped, '-' and runs of blanks as one space."""
    return re.sub(r"[-\s]+", " ", re.sub(r"[*_`]", "", text.lower()))


def _page_text(target):
    base = (GLOSSARY.parent / target).resolve()
    for suffix in (".md", ".ipynb"):
        path = base.with_suffix(suffix)
        if path.exists():
            if suffix == ".md":
                return path.read_text(encoding="utf-8")
            nb = nbformat.read(path, as_version=4)
            return "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    raise AssertionError(f"glossary links to {target}, which does not exist")


ROWS = list(_rows())


def test_glossary_has_rows():
    assert len(ROWS) > 50, f"only {len(ROWS)} glossary rows parsed: did the table format change?"


@pytest.mark.parametrize(("english", "target"), ROWS, ids=[e for e, _ in ROWS])
def test_link_lands_on_a_page_that_uses_the_term(english, target):
    text = _normal(_page_text(target))
    missing = [" or ".join(spellings) for spellings in _terms(english)
               if not any(_normal(s) in text for s in spellings)]
    assert not missing, f"{target} never mentions {missing} (glossary row {english!r})"


@pytest.mark.parametrize(("english", "expected"), [
    ("mixture of experts (MoE)", [("mixture of experts", "MoE")]),
    ("prefill / decode", [("prefill",), ("decode",)]),
    ("boosting, duty cycle", [("boosting",), ("duty cycle",)]),
    ("semi-structured (N:M, 2:4) sparsity", [("semi-structured sparsity", "N:M", "2:4")]),
    ("pruning (unstructured / structured)", [("pruning", "unstructured", "structured")]),
])
def test_terms_split_as_documented(english, expected):
    assert list(_terms(english)) == expected
