"""The interview question bank: load and validate it, run its evidence, render it, export flash cards.

The bank is one YAML file shipped with the package (``interview_bank.yaml``): a list of records
with the fields in :data:`FIELDS`. It is the single source of the book's question page, the mock
interview and the Anki deck::

    python -m course_lib.interview --anki cards.csv      # Anki-importable CSV (front, back, tags)

Chapter: book/interview/questions, book/interview/mock_interview
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import html
import io
import json
import posixpath
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml
from markdown_it import MarkdownIt

BANK_PATH = Path(__file__).with_name("interview_bank.yaml")

LEVELS = ("junior", "senior", "staff")

TOPICS = {
    "concepts": "Concepts",
    "activations": "Activation functions",
    "brain": "Brain motivation",
    "measurement": "Measuring sparsity",
    "training": "Training for sparsity",
    "formats": "Sparse formats",
    "spmm": "SpMM on CPU and GPU",
    "hardware": "Hardware: roofline, 2:4, tensor cores",
    "inference": "Inference with activation sparsity",
    "moe": "Mixture of experts",
    "sae": "Sparse coding and sparse autoencoders",
}

REQUIRED = ("id", "level", "topic", "question", "answer", "wrong_answers", "follow_ups", "chapter")
OPTIONAL = ("evidence", "refs")
FIELDS = REQUIRED + OPTIONAL

_ID = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_MD = MarkdownIt("commonmark")


@dataclass(frozen=True)
class Question:
    """One interview question; ``evidence`` is a Python snippet that prints its proof (or None)."""

    id: str
    level: str
    topic: str
    question: str
    answer: str
    wrong_answers: tuple[str, ...]
    follow_ups: tuple[str, ...]
    chapter: str
    evidence: str | None = None
    refs: tuple[str, ...] = ()


def _text_list(rec_id: str, field: str, value) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"question {rec_id!r}: {field!r} must be a non-empty list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"question {rec_id!r}: {field}[{i}] must be a non-empty string")
    return tuple(item.strip() for item in value)


def parse_bank(records) -> list[Question]:
    """Validate raw records (a list of dicts) and return them as :class:`Question` objects.

    Invariants: every required field present and non-empty, no unknown field, ids unique and
    kebab-case, ``level`` in :data:`LEVELS`, ``topic`` in :data:`TOPICS`, ``evidence`` a string.
    """
    if not isinstance(records, list):
        raise TypeError(f"the bank must be a list of questions, got {type(records).__name__}")
    questions, seen = [], set()
    for pos, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise TypeError(f"bank entry {pos} must be a mapping, got {type(rec).__name__}")
        rec_id = rec.get("id", f"#{pos}")
        missing = [f for f in REQUIRED if f not in rec]
        if missing:
            raise ValueError(f"question {rec_id!r}: missing field(s) {missing}")
        unknown = sorted(set(rec) - set(FIELDS))
        if unknown:
            raise ValueError(f"question {rec_id!r}: unknown field(s) {unknown}")
        for f in ("id", "level", "topic", "question", "answer", "chapter"):
            if not isinstance(rec[f], str) or not rec[f].strip():
                raise ValueError(f"question {rec_id!r}: {f!r} must be a non-empty string")
        if not _ID.match(rec_id):
            raise ValueError(f"question {rec_id!r}: id must be kebab-case ([a-z0-9-])")
        if rec_id in seen:
            raise ValueError(f"duplicate question id {rec_id!r} (entry {pos})")
        seen.add(rec_id)
        if rec["level"] not in LEVELS:
            raise ValueError(f"question {rec_id!r}: level {rec['level']!r} not in {LEVELS}")
        if rec["topic"] not in TOPICS:
            raise ValueError(f"question {rec_id!r}: topic {rec['topic']!r} not in {sorted(TOPICS)}")
        evidence = rec.get("evidence")
        if evidence is not None and (not isinstance(evidence, str) or not evidence.strip()):
            raise ValueError(f"question {rec_id!r}: 'evidence' must be a non-empty code string")
        refs = rec.get("refs", [])
        refs = _text_list(rec_id, "refs", refs) if refs else ()
        questions.append(Question(
            id=rec_id, level=rec["level"], topic=rec["topic"],
            question=rec["question"].strip(), answer=rec["answer"].strip(),
            wrong_answers=_text_list(rec_id, "wrong_answers", rec["wrong_answers"]),
            follow_ups=_text_list(rec_id, "follow_ups", rec["follow_ups"]),
            chapter=rec["chapter"].strip(), evidence=evidence, refs=refs))
    return questions


def load_bank(path: str | Path = BANK_PATH) -> list[Question]:
    """Read and validate the YAML bank (default: the one shipped with course_lib)."""
    with open(path, encoding="utf-8") as fh:
        return parse_bank(yaml.safe_load(fh))


def toc_docnames(toc_path: str | Path) -> set[str]:
    """All docnames (``file:`` entries, without suffix) listed in a Jupyter Book ``_toc.yml``."""
    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                yield re.sub(r"\.(md|ipynb)$", "", str(node["file"]))
            if "root" in node:
                yield str(node["root"])
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    with open(toc_path, encoding="utf-8") as fh:
        return set(walk(yaml.safe_load(fh)))


def doc_href(target_doc: str, from_doc: str) -> str:
    """Relative URL of a built page, e.g. ``doc_href("book/fast/formats", "book/interview/questions")``
    = ``"../fast/formats.html"``."""
    return posixpath.relpath(target_doc, posixpath.dirname(from_doc)) + ".html"


_ACCENTS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", '"': "\u0308", "~": "\u0303", "c": "\u0327"}


def _latex_to_text(name: str) -> str:
    """``Hrom{\\'a}dka`` → ``Hromádka``: LaTeX accent commands to Unicode, braces dropped."""
    name = re.sub(r"\{?\\(['`^\"~c])\s*\{?(\w)\}?\}?",
                  lambda m: unicodedata.normalize("NFC", m.group(2) + _ACCENTS[m.group(1)]), name)
    return name.replace("{", "").replace("}", "").strip()


def bib_entries(bib_path: str | Path) -> dict[str, str]:
    """Map each BibTeX key to a short label "Surname et al. (year)" (enough to render a source line)."""
    text = Path(bib_path).read_text(encoding="utf-8")
    labels = {}
    for match in re.finditer(r"@\w+\{([^,\s]+),(.*?)\n\}", text, flags=re.S):
        key, body = match.groups()
        author = re.search(r"author\s*=\s*\{(.*?)\}\s*,?\s*\n", body, flags=re.S)
        year = re.search(r"year\s*=\s*\{?(\d{4})", body)
        names = ([_latex_to_text(a.split(",")[0]) for a in author.group(1).split(" and ")]
                 if author else [key])
        who = names[0] if len(names) == 1 else (
            f"{names[0]} & {names[1]}" if len(names) == 2 else f"{names[0]} et al.")
        labels[key] = f"{who} ({year.group(1) if year else 'n.d.'})"
    return labels


def run_evidence(question: Question) -> str:
    """Execute the question's evidence snippet in a fresh namespace and return what it printed."""
    if question.evidence is None:
        raise ValueError(f"question {question.id!r} has no evidence snippet")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(question.evidence, f"<evidence {question.id}>", "exec"), {"__name__": "__evidence__"})
    return out.getvalue()


def _html_list(items) -> str:
    return "<ul>" + "".join(f"<li>{_MD.renderInline(i)}</li>" for i in items) + "</ul>"


def render_answer_html(question: Question, evidence_output: str | None = None,
                       bib: dict[str, str] | None = None, references_url: str | None = None) -> str:
    """The answer side as HTML: model answer, wrong answers, follow-ups, evidence, sources."""
    parts = [_MD.render(question.answer),
             "<p><strong>Common wrong answers</strong></p>", _html_list(question.wrong_answers),
             "<p><strong>Follow-ups</strong></p>", _html_list(question.follow_ups)]
    if question.evidence is not None:
        parts.append("<p><strong>Evidence</strong> (runnable)</p>")
        parts.append(f"<pre><code class=\"language-python\">{html.escape(question.evidence.rstrip())}</code></pre>")
        if evidence_output is not None:
            parts.append(f"<pre class=\"evidence-output\">{html.escape(evidence_output.rstrip())}</pre>")
    if question.refs:
        names = [html.escape((bib or {}).get(k, k)) for k in question.refs]
        if references_url:
            names = [f"<a href=\"{references_url}\">{n}</a>" for n in names]
        parts.append("<p><strong>Sources:</strong> " + "; ".join(names) + "</p>")
    return "\n".join(parts)


def render_prompt_html(question: Question, chapter_url: str | None = None) -> str:
    """The question side as HTML: the prompt in bold, then id · level · topic (· chapter link)."""
    meta = f"<code>{question.id}</code> · {question.level} · {TOPICS[question.topic]}"
    if chapter_url:
        meta += f" · <a href=\"{chapter_url}\">demonstrated in this chapter</a>"
    return f"<p><strong>{_MD.renderInline(question.question)}</strong><br><small>{meta}</small></p>"


def render_question_html(question: Question, evidence_output: str | None = None,
                         bib: dict[str, str] | None = None, references_url: str | None = None,
                         chapter_url: str | None = None) -> str:
    """One question as HTML: the prompt visible, the answer inside a ``<details>`` dropdown."""
    return (f"<div class=\"interview-question\" id=\"q-{question.id}\">"
            f"{render_prompt_html(question, chapter_url)}"
            f"<details><summary>Show the answer</summary>"
            f"{render_answer_html(question, evidence_output, bib, references_url)}</details></div>")


def _one_line(html_text: str) -> str:
    """Newlines as ``&#10;`` (same rendering, also inside ``<pre>``): one card = one physical line."""
    return html_text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "&#10;")


def anki_rows(questions) -> list[tuple[str, str, str]]:
    """Flash cards ``(front, back, tags)``: front = question, back = answer HTML, tags space-separated."""
    return [(_one_line(_MD.renderInline(q.question)), _one_line(render_answer_html(q)),
             f"sparse-activation topic::{q.topic} level::{q.level}") for q in questions]


ANKI_HEADER = ("#separator:comma", "#html:true", "#columns:front,back,tags", "#tags column:3")


def write_anki_csv(questions, path: str | Path) -> Path:
    """Write an Anki-importable CSV: Anki's ``#`` header lines, then one card per line."""
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("\n".join(ANKI_HEADER) + "\n")
        # QUOTE_ALL: no card line can start with "#" and be mistaken for a header line
        csv.writer(fh, lineterminator="\n", quoting=csv.QUOTE_ALL).writerows(anki_rows(questions))
    return path


def read_anki_csv(path: str | Path) -> list[dict[str, str]]:
    """Read a CSV written by :func:`write_anki_csv` back into dicts keyed by the ``#columns`` header."""
    with open(path, encoding="utf-8", newline="") as fh:
        lines = fh.read().split("\n")
    n_header = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    header = dict(line.split(":", 1) for line in lines[:n_header])
    body = "\n".join(lines[n_header:])
    columns = header["#columns"].split(",")
    return [dict(zip(columns, row, strict=True)) for row in csv.reader(io.StringIO(body)) if row]


class MockSession:
    """State of a mock interview: draw questions by topic/level, record self-scores, find weak topics.

    Scores are 0 (missed), 1 (partial), 2 (nailed). A topic's mastery is mean score / 2.
    """

    SCORES = (0, 1, 2)

    def __init__(self, questions, seed: int = 0):
        self.questions = list(questions)
        self.rng = random.Random(seed)
        self.scores: dict[str, int] = {}

    def pool(self, topic: str | None = None, level: str | None = None) -> list[Question]:
        """Questions matching ``topic``/``level`` (None = any)."""
        if topic is not None and topic not in TOPICS:
            raise ValueError(f"topic {topic!r} not in {sorted(TOPICS)}")
        if level is not None and level not in LEVELS:
            raise ValueError(f"level {level!r} not in {LEVELS}")
        return [q for q in self.questions
                if (topic is None or q.topic == topic) and (level is None or q.level == level)]

    def draw(self, topic: str | None = None, level: str | None = None) -> Question | None:
        """A random unscored question from the pool (a scored one if all are scored; None if empty)."""
        pool = self.pool(topic, level)
        fresh = [q for q in pool if q.id not in self.scores]
        return self.rng.choice(fresh or pool) if pool else None

    def record(self, question_id: str, score: int) -> None:
        """Store the self-score of one question (the last score counts)."""
        if question_id not in {q.id for q in self.questions}:
            raise ValueError(f"unknown question id {question_id!r}")
        if score not in self.SCORES:
            raise ValueError(f"score must be one of {self.SCORES}, got {score!r}")
        self.scores[question_id] = score

    def summary(self) -> list[tuple[str, int, float]]:
        """Per answered topic ``(topic, n_answered, mastery)``, weakest first."""
        by_topic: dict[str, list[int]] = {}
        topic_of = {q.id: q.topic for q in self.questions}
        for qid, score in self.scores.items():
            by_topic.setdefault(topic_of[qid], []).append(score)
        rows = [(t, len(s), sum(s) / (2 * len(s))) for t, s in by_topic.items()]
        return sorted(rows, key=lambda r: (r[2], r[0]))

    def summary_html(self, threshold: float = 0.6) -> str:
        """The summary as an HTML table (topic, answered, mastery), weak topics marked."""
        if not self.scores:
            return "<p>No answers scored yet.</p>"
        rows = "".join(
            f"<tr><td>{TOPICS[t]}</td><td>{n}</td><td>{m:.0%}</td>"
            f"<td>{'review' if m < threshold else ''}</td></tr>" for t, n, m in self.summary())
        return ("<table><thead><tr><th>topic</th><th>answered</th><th>mastery</th><th></th></tr>"
                f"</thead><tbody>{rows}</tbody></table>")

    def weak_topics(self, threshold: float = 0.6) -> list[str]:
        """Topics whose mastery is below ``threshold``, weakest first."""
        return [t for t, _, m in self.summary() if m < threshold]


_MOCK_JS = """
(function () {
  const root = document.getElementById("course-mock-interview");
  const cards = JSON.parse(root.querySelector("script[type='application/json']").textContent);
  const topics = JSON.parse(root.dataset.topics), threshold = 0.6, scores = {};
  const $ = (role) => root.querySelector(`[data-role='${role}']`);
  let current = null, state = 1;
  function random() {  // a small LCG: the same first question on every visit, as MockSession(seed)
    state = (1103515245 * state + 12345) % 2147483648;
    return state / 2147483648;
  }
  function pool() {
    const t = $("topic").value, l = $("level").value;
    return cards.filter((c) => (!t || c.topic === t) && (!l || c.level === l));
  }
  function next() {  // unscored questions first, as MockSession.draw
    const p = pool(), fresh = p.filter((c) => !(c.id in scores)), from = fresh.length ? fresh : p;
    current = from.length ? from[Math.floor(random() * from.length)] : null;
    $("prompt").innerHTML = current ? current.prompt : "<p>No question matches these filters.</p>";
    $("answer").innerHTML = "";
  }
  function summary() {  // mastery = mean score / 2 per topic, weakest first, as MockSession.summary
    const by = {};
    for (const c of cards) if (c.id in scores) (by[c.topic] = by[c.topic] || []).push(scores[c.id]);
    const rows = Object.entries(by).map(([t, s]) => [t, s.length, s.reduce((a, b) => a + b, 0) / (2 * s.length)]);
    rows.sort((a, b) => a[2] - b[2] || a[0].localeCompare(b[0]));
    $("summary").innerHTML = rows.length ? "<table><thead><tr><th>topic</th><th>answered</th>" +
      "<th>mastery</th><th></th></tr></thead><tbody>" + rows.map(([t, n, m]) =>
        `<tr><td>${topics[t]}</td><td>${n}</td><td>${Math.round(100 * m)}%</td>` +
        `<td>${m < threshold ? "review" : ""}</td></tr>`).join("") + "</tbody></table>"
      : "<p>No answers scored yet.</p>";
  }
  $("next").addEventListener("click", next);
  $("show").addEventListener("click", () => {
    if (!current) return;
    $("answer").innerHTML = current.answer;
    if (window.MathJax && MathJax.typesetPromise) MathJax.typesetPromise([$("answer")]);
  });
  for (const button of root.querySelectorAll("[data-score]")) {
    button.addEventListener("click", () => {
      if (!current) return;
      scores[current.id] = Number(button.dataset.score);
      summary();
      next();
    });
  }
  summary();
  next();
})();
"""


def mock_interview_html(questions, evidence: dict[str, str] | None = None) -> str:
    """The mock interview as one HTML block that runs in the browser, with no kernel.

    Every card's prompt and answer (with its evidence output, run when this is built) is
    rendered here; a few lines of JavaScript draw, score and summarise by the rules of
    :class:`MockSession`: unscored questions first, the last score counts, mastery = mean
    score / 2 per topic, below 60 % marked for review.
    """
    cards = [{"id": q.id, "topic": q.topic, "level": q.level, "prompt": render_prompt_html(q),
              "answer": render_answer_html(q, (evidence or {}).get(q.id))} for q in questions]
    if not cards:
        raise ValueError("a mock interview needs at least one question")
    options = lambda pairs: "".join(  # noqa: E731
        f"<option value=\"{html.escape(v)}\">{html.escape(label)}</option>" for v, label in pairs)
    data = json.dumps(cards).replace("</", "<\\/")  # no "</script>" inside the JSON
    return (f"<div id=\"course-mock-interview\" data-topics=\"{html.escape(json.dumps(TOPICS))}\">"
            f"<p><select data-role=\"topic\">{options([('', 'All topics'), *TOPICS.items()])}</select> "
            f"<select data-role=\"level\">{options([('', 'Any level')] + [(v, v) for v in LEVELS])}"
            "</select> <button data-role=\"next\">Next question</button></p>"
            "<div data-role=\"prompt\"></div><p><button data-role=\"show\">Show answer</button></p>"
            "<div data-role=\"answer\"></div><p>"
            + " ".join(f"<button data-score=\"{s}\">{label} ({s})</button>"
                       for label, s in (("Missed", 0), ("Partial", 1), ("Nailed", 2)))
            + "</p><div data-role=\"summary\"></div>"
            f"<script type=\"application/json\">{data}</script><script>{_MOCK_JS}</script></div>")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--anki", metavar="OUT.csv", help="write the bank as Anki flash cards")
    parser.add_argument("--bank", default=str(BANK_PATH), help="YAML bank to read")
    args = parser.parse_args(argv)
    questions = load_bank(args.bank)
    if args.anki:
        write_anki_csv(questions, args.anki)
        print(f"wrote {len(questions)} cards to {args.anki}")
    else:
        counts = {t: sum(q.topic == t for q in questions) for t in TOPICS}
        print(f"{len(questions)} questions, {sum(q.evidence is not None for q in questions)} with evidence")
        for t, n in counts.items():
            print(f"  {TOPICS[t]}: {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
