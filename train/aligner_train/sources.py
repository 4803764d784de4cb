"""Parsers from the files inside the pinned wheels to [`Record`]s, one per source format.

Each takes the file's text (and a name for the record's origin) so that tests can feed it
small in-repo samples of the same format.
"""

from __future__ import annotations

import ast
import csv
import io
import json
from collections import defaultdict

from aligner_train.errors import UserError
from aligner_train.records import FIX_GOLD, FIX_REF, HARMFUL, KEEP, Record

# donotanswer intents that are harmful requests. The rest (C* chatbot small talk and
# temporal/emotional questions, S002* personal medical, legal and financial advice, S009*
# questions about the assistant's own "private" data, S001mis opinions, C009 false premises)
# deserve a helpful answer, not a refusal, so they stay out of the harmful set.
HARMFUL_INTENT_PREFIXES = (
    "S001dis", "S001fab", "S003", "S004erotica", "S004lewd", "S005", "S006", "S007", "S008",
)
NOT_HARMFUL_INTENT_PREFIXES = ("C", "S002", "S009")


def _jsonl(text: str, origin: str) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"{origin}:{number} is not JSON ({e}); the wheel is damaged") from e
    return rows


def _clean(text: str) -> str:
    # NQ-open predictions carry escaped quotes (\"Sesenne\").
    return text.replace('\\"', '"').strip().strip('"').strip()


def nq_open(text: str, origin: str) -> list[Record]:
    """Question + a definitely-incorrect prediction → gold answers."""
    out = []
    for number, row in _jsonl(text, origin):
        wrong = [_clean(w) for w in row.get("def_incorrect_predictions") or [] if _clean(w)]
        gold = [_clean(g) for g in (row.get("answer") or []) + (row.get("def_correct_predictions") or [])]
        gold = list(dict.fromkeys(g for g in gold if g))
        if not wrong or not gold:
            continue
        question = row["question"].strip()
        question = question if question.endswith("?") else question + "?"
        out.append(Record(set="nq", kind=FIX_GOLD, question=question, answer=wrong[0],
                          gold=gold, origin=f"{origin}:{number}"))
    return out


def factual_summaries(text: str, origin: str) -> list[Record]:
    """A sentence to summarise; a summary with a factual error → the right summary."""
    return [
        Record(set="summary", kind=FIX_REF,
               question=f"Summarize this sentence in one sentence: {row['article_sent'].strip()}",
               answer=row["incorrect_sent"].strip(), right=row["correct_sent"].strip(),
               origin=f"{origin}:{number}")
        for number, row in _jsonl(text, origin)
    ]


def truthfulqa(text: str, origin: str) -> list[Record]:
    """The first (best) true answer, to be kept."""
    return [
        Record(set="truthfulqa", kind=KEEP, question=row["question"].strip(),
               answer=row["answer"][0].strip().rstrip(".") + ".", origin=f"{origin}:{number}")
        for number, row in _jsonl(text, origin)
        if row.get("answer")
    ]


def fiqa(text: str, origin: str) -> list[Record]:
    """A financial question's human answer, to be kept."""
    return [
        Record(set="fiqa", kind=KEEP, question=row["question"].strip(),
               answer=" ".join(row["answer"].split()), origin=f"{origin}:{number}")
        for number, row in _jsonl(text, origin)
        if row.get("answer", "").strip()
    ]


def health_questions(text: str, origin: str) -> list[Record]:
    """Benign health questions (no answers): upstream models answer them, and a correction
    should keep those answers. They look like harmful ones ("how do I ...", medicine), which
    is what teaches a model to refuse by question, not by topic."""
    return [
        Record(set="health", kind=KEEP, question=row["question"].strip(), answer=None,
               origin=f"{origin}:{number}")
        for number, row in _jsonl(text, origin)
        if row.get("question", "").strip()
    ]


def harmful_questions_bss(text: str, origin: str) -> list[Record]:
    return [
        Record(set="harmful", kind=HARMFUL, question=row["text"].strip(), answer=None,
               origin=f"{origin}:{number}")
        for number, row in _jsonl(text, origin)
    ]


def _harmful_intents(intents: list[str]) -> bool:
    if any(i.startswith(NOT_HARMFUL_INTENT_PREFIXES) for i in intents):
        return False
    return any(i.startswith(HARMFUL_INTENT_PREFIXES) for i in intents)


def harmful_questions_donotanswer(text: str, origin: str) -> list[Record]:
    return [
        Record(set="harmful", kind=HARMFUL, question=row["prompt"].strip(), answer=None,
               origin=f"{origin}:{number}")
        for number, row in _jsonl(text, origin)
        if _harmful_intents(row.get("intents") or [])
    ]


def harmful_questions_lines(text: str, origin: str) -> list[Record]:
    return [
        Record(set="harmful", kind=HARMFUL, question=line.strip(), answer=None,
               origin=f"{origin}:{number}")
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]


def _csv_rows(text: str) -> list[dict]:
    """pyrit's CSVs open with `#` comment lines before the header."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return list(csv.DictReader(io.StringIO(body)))


def _mean_human_score(row: dict) -> float | None:
    scores = [float(v) for k, v in row.items()
              if k and k.startswith("human_score") and v not in (None, "")]
    return sum(scores) / len(scores) if scores else None


def pyrit_harm(text: str, origin: str, max_chars: int) -> tuple[list[Record], list[Record]]:
    """Human-scored answers to harmful objectives: per objective, its most harmful answer
    (mean score >= 0.5) → `pyrit_unsafe`, and its first answer scored 0 by every rater →
    `pyrit_safe` (to be kept). Only answers of at most `max_chars` are candidates."""
    by_objective: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for number, row in enumerate(_csv_rows(text), 1):
        score = _mean_human_score(row)
        response = (row.get("assistant_response") or "").strip()
        objective = (row.get("objective") or "").strip()
        if score is None or not response or not objective or len(response) > max_chars:
            continue
        by_objective[objective].append((score, number, response))
    unsafe, safe = [], []
    for objective, answers in by_objective.items():
        worst = max(answers, key=lambda a: (a[0], -a[1]))
        if worst[0] >= 0.5:
            unsafe.append(Record(set="pyrit_unsafe", kind=HARMFUL, question=objective,
                                 answer=worst[2], unsafe=True, origin=f"{origin}:{worst[1]}"))
        clean = [a for a in answers if a[0] == 0]
        if clean:
            unsafe_free = clean[0]
            safe.append(Record(set="pyrit_safe", kind=KEEP, question=objective,
                               answer=unsafe_free[2], origin=f"{origin}:{unsafe_free[1]}"))
    return unsafe, safe


def pyrit_refusal_labels(text: str, origin: str) -> list[dict]:
    """Human refusal labels: {objective, response, refusal, origin}."""
    out = []
    for number, row in enumerate(_csv_rows(text), 1):
        label = (row.get("human_score") or "").strip()
        if label not in ("0", "1"):
            continue
        out.append({"objective": row.get("objective", ""), "response": row["assistant_response"],
                    "refusal": label == "1", "origin": f"{origin}:{number}"})
    return out


def garak_refusal_strings(source: str, origin: str) -> dict[str, list[str]]:
    """The `substrings` lists of garak's `MitigationBypass` (matched anywhere) and `Prefixes`
    (matched at the start) detectors, read from the module's source without importing it."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise UserError(f"{origin} does not parse ({e}); the wheel is damaged") from e
    found: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name in ("MitigationBypass", "Prefixes"):
            for sub in ast.walk(node):
                if (isinstance(sub, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == "substrings" for t in sub.targets)):
                    found[node.name] = list(ast.literal_eval(sub.value))
    missing = {"MitigationBypass", "Prefixes"} - found.keys()
    if missing:
        raise UserError(f"{origin} has no substrings for {', '.join(sorted(missing))}; "
                        "is it the pinned garak version?")
    return {"anywhere": found["MitigationBypass"], "prefixes": found["Prefixes"]}
