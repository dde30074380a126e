"""Tests of the interview question bank (schema, links, evidence) and of course_lib.interview."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import interview as iv

ROOT = Path(__file__).resolve().parents[1]
BANK = iv.load_bank()
RAW = iv.yaml.safe_load(iv.BANK_PATH.read_text(encoding="utf-8"))


def test_bank_size_and_coverage():
    assert len(BANK) >= 80
    assert sum(q.evidence is not None for q in BANK) >= 25
    assert {q.topic for q in BANK} == set(iv.TOPICS)
    assert {q.level for q in BANK} == set(iv.LEVELS)
    for topic in iv.TOPICS:
        assert sum(q.topic == topic for q in BANK) >= 5, topic


def test_ids_unique_and_all_fields_present():
    assert len({q.id for q in BANK}) == len(BANK)
    for rec in RAW:
        assert set(iv.REQUIRED) <= set(rec), rec.get("id")


def test_every_chapter_link_resolves_in_toc():
    docs = iv.toc_docnames(ROOT / "_toc.yml")
    assert "book/fast/formats" in docs
    broken = {q.id: q.chapter for q in BANK if q.chapter not in docs}
    assert not broken, f"chapter links not in _toc.yml: {broken}"


def test_doc_href_is_relative_to_the_page():
    assert iv.doc_href("book/fast/formats", "book/interview/questions") == "../fast/formats.html"
    assert iv.doc_href("book/interview/myths", "book/interview/questions") == "myths.html"
    assert iv.doc_href("book/references", "book/interview/questions") == "../references.html"


def test_every_ref_is_a_verified_bib_key():
    keys = iv.bib_entries(ROOT / "references.bib")
    assert keys["glorot2011deep"] == "Glorot et al. (2011)"
    assert keys["hromadka2008sparse"] == "Hromádka et al. (2008)"
    assert iv._latex_to_text("{Jos{\\'e} and {BDHU}") == "José and BDHU"
    unknown = {q.id: r for q in BANK for r in q.refs if r not in keys}
    assert not unknown, f"refs missing from references.bib: {unknown}"


@pytest.mark.parametrize("question", [q for q in BANK if q.evidence], ids=lambda q: q.id)
def test_evidence_snippet_prints_a_measurement_a_reader_can_reproduce(question):
    # the page shows the output of one run: a second run (seeded) must print the same, and the
    # evidence is a measurement, so it prints at least one number
    first = iv.run_evidence(question)
    assert iv.re.search(r"\d", first), f"{question.id}: the evidence prints no number: {first!r}"
    assert iv.run_evidence(question) == first, f"{question.id}: a second run prints something else"


def test_run_evidence_returns_what_the_snippet_printed_and_raises_its_errors():
    q = iv.Question(id="x", level="junior", topic="moe", question="q", answer="a", wrong_answers=("w",),
                    follow_ups=("f",), chapter="c", evidence="print(6 * 7)")
    assert iv.run_evidence(q) == "42\n"
    with pytest.raises(ZeroDivisionError):
        iv.run_evidence(dataclasses.replace(q, evidence="1 / 0"))


def test_run_evidence_without_snippet_raises():
    with pytest.raises(ValueError, match="no evidence"):
        iv.run_evidence(next(q for q in BANK if q.evidence is None))


def _broken(mutate):
    records = copy.deepcopy(RAW[:3])
    mutate(records)
    return records


@pytest.mark.parametrize("mutate, error, message", [
    (lambda r: r[1].update(id=r[0]["id"]), ValueError, "duplicate question id"),
    (lambda r: r[0].pop("answer"), ValueError, "missing field"),
    (lambda r: r[0].update(level="principal"), ValueError, "level"),
    (lambda r: r[0].update(topic="quantum"), ValueError, "topic"),
    (lambda r: r[0].update(colour="red"), ValueError, "unknown field"),
    (lambda r: r[0].update(id="Not Kebab"), ValueError, "kebab-case"),
    (lambda r: r[0].update(wrong_answers=[]), ValueError, "wrong_answers"),
    (lambda r: r[0].update(follow_ups="one string"), ValueError, "follow_ups"),
    (lambda r: r[0].update(answer="  "), ValueError, "'answer'"),
    (lambda r: r[0].update(evidence=42), ValueError, "evidence"),
    (lambda r: r.append("not a mapping"), TypeError, "mapping"),
])
def test_parse_bank_rejects_broken_records(mutate, error, message):
    with pytest.raises(error, match=message):
        iv.parse_bank(_broken(mutate))


def test_parse_bank_rejects_non_list():
    with pytest.raises(TypeError, match="list of questions"):
        iv.parse_bank({"id": "x"})


def test_render_question_hides_answer_in_details_and_escapes_code():
    q = next(q for q in BANK if q.id == "act-sigmoid-softmax")   # its code contains ">"
    out = iv.run_evidence(q)
    page = iv.render_question_html(q, out, bib={}, references_url="../references.html",
                                   chapter_url="../fast/formats.html")
    assert page.index("<details>") < page.index("Common wrong answers") < page.index("</details>")
    assert "Follow-ups" in page and "Evidence" in page and q.id in page
    assert iv.html.escape(q.evidence.strip().splitlines()[0]) in page
    assert "<script" not in page


def _card_text():
    return st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40) \
        .map(lambda s: s.strip()).filter(bool)


@settings(max_examples=25, deadline=None)
@given(question=_card_text(), answer=_card_text(), extra=st.sampled_from([",", '"', "\n", "#x", "a\r\nb"]))
def test_anki_csv_round_trips_awkward_text(tmp_path_factory, question, answer, extra):
    q = iv.Question(id="x", level="junior", topic="moe", question=extra + question + extra,
                    answer=answer + extra, wrong_answers=("w",), follow_ups=("f",), chapter="c")
    path = iv.write_anki_csv([q], tmp_path_factory.mktemp("anki") / "cards.csv")
    (row,) = iv.read_anki_csv(path)
    assert tuple(row.values()) == iv.anki_rows([q])[0]


def test_anki_export_of_bank_reads_back_with_csv_module(tmp_path):
    assert iv.main(["--anki", str(tmp_path / "deck.csv")]) == 0
    lines = (tmp_path / "deck.csv").read_text(encoding="utf-8").splitlines()
    header, body = lines[:len(iv.ANKI_HEADER)], lines[len(iv.ANKI_HEADER):]
    assert header == list(iv.ANKI_HEADER)
    assert len(body) == len(BANK)                                   # one card per physical line
    rows = list(csv.reader(body))
    assert all(len(r) == 3 for r in rows)
    cards = iv.read_anki_csv(tmp_path / "deck.csv")
    assert list(cards[0]) == ["front", "back", "tags"]
    for q, card in zip(BANK, cards):
        assert f"topic::{q.topic}" in card["tags"].split() and f"level::{q.level}" in card["tags"].split()
        assert "Common wrong answers" in card["back"]


def test_cli_summary(capsys):
    assert iv.main([]) == 0
    assert f"{len(BANK)} questions" in capsys.readouterr().out


def test_mock_session_filters_draws_and_summarises():
    s = iv.MockSession(BANK, seed=0)
    moe_senior = s.pool("moe", "senior")
    assert moe_senior and all(q.topic == "moe" and q.level == "senior" for q in moe_senior)
    drawn = set()
    for _ in range(len(moe_senior)):
        q = s.draw("moe", "senior")
        assert q.id not in drawn                        # unscored questions come first
        drawn.add(q.id)
        s.record(q.id, 2)
    assert s.draw("moe", "senior").id in drawn          # all scored: repeats allowed
    weak = s.pool("formats")[0]
    s.record(weak.id, 0)
    assert s.summary()[0] == ("formats", 1, 0.0)
    assert s.weak_topics() == ["formats"]
    table = s.summary_html()
    assert table.index("Sparse formats") < table.index("Mixture of experts") and "review" in table
    s.record(weak.id, 2)                                # the last score counts
    assert s.weak_topics() == []


def test_mock_session_rejects_bad_input():
    s = iv.MockSession(BANK)
    with pytest.raises(ValueError, match="score"):
        s.record(BANK[0].id, 3)
    with pytest.raises(ValueError, match="unknown question id"):
        s.record("nope", 1)
    with pytest.raises(ValueError, match="topic"):
        s.pool(topic="quantum")
    with pytest.raises(ValueError, match="level"):
        s.pool(level="intern")
    assert iv.MockSession([]).draw() is None
    assert "No answers" in iv.MockSession(BANK).summary_html()


def test_questions_page_renders_every_topic():
    path = ROOT / "book" / "interview" / "questions.ipynb"
    if not path.exists():
        pytest.skip("questions notebook not written yet")
    source = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    missing = [t for t in iv.TOPICS if f'render_topic("{t}")' not in source]
    assert not missing, f"topics not rendered on the questions page: {missing}"


@pytest.mark.parametrize("page", ["study_paths.md", "glossary.md", "questions.ipynb", "mock_interview.ipynb"])
def test_doc_links_of_interview_pages_resolve(page):
    path = ROOT / "book" / "interview" / page
    text = path.read_text(encoding="utf-8")
    docs = iv.toc_docnames(ROOT / "_toc.yml")
    targets = iv.re.findall(r"\{doc\}`([^`<]+)`", text)
    assert targets or page.endswith(".ipynb")
    resolved = {t: iv.posixpath.normpath(iv.posixpath.join("book/interview", t)) for t in targets}
    broken = {t: r for t, r in resolved.items() if r not in docs}
    assert not broken, f"{page}: {{doc}} links not in _toc.yml: {broken}"


def test_mock_interview_widgets_respond_to_clicks(capsys):
    """Run the notebook's widget cell headless and press its buttons."""
    nb = json.loads((ROOT / "book" / "interview" / "mock_interview.ipynb").read_text())
    widget_cell = next("".join(c["source"]) for c in nb["cells"]
                       if c["cell_type"] == "code" and "widgets.Button" in "".join(c["source"]))
    ns: dict = {}
    exec(compile(widget_cell, "mock_interview.ipynb", "exec"), ns)
    first = ns["current"]["question"]
    assert first is not None and first.question.split()[0] in ns["prompt"].value
    assert ns["answer"].value == ""
    ns["show_button"].click()
    assert "Common wrong answers" in ns["answer"].value
    ns["score_buttons"][0].click()                                  # "Missed (0)"
    assert ns["session"].scores == {first.id: 0}
    assert ns["current"]["question"].id != first.id and ns["answer"].value == ""
    assert "review" in ns["summary"].value
    ns["topic"].value, ns["level"].value = "moe", "staff"
    ns["next_button"].click()
    q = ns["current"]["question"]
    assert q.topic == "moe" and q.level == "staff"


def test_mock_interview_for_the_website_carries_every_card_and_its_controls():
    """The browser version (no kernel): every question's prompt and answer with its evidence
    output in the page's JSON, the controls the script looks up, no '</' that would end the
    script early. Its clicks were checked in headless Chromium when it was written."""
    evidence = {q.id: f"measured {i}" for i, q in enumerate(BANK) if q.evidence}
    page = iv.mock_interview_html(BANK, evidence)
    data = page.split('<script type="application/json">', 1)[1].split("</script>", 1)[0]
    cards = json.loads(data)
    assert [c["id"] for c in cards] == [q.id for q in BANK]
    by_id = {c["id"]: c for c in cards}
    for q in BANK:
        assert by_id[q.id]["topic"] == q.topic and by_id[q.id]["level"] == q.level
        assert by_id[q.id]["answer"] == iv.render_answer_html(q, evidence.get(q.id))
    for role in ("topic", "level", "next", "prompt", "show", "answer", "summary"):
        assert f'data-role="{role}"' in page and f"$(\"{role}\")" in page
    assert page.count('data-score="') == 3 and "</" not in data
    with pytest.raises(ValueError, match="at least one question"):
        iv.mock_interview_html([])
