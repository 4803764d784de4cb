"""The normalised record every set is written as, its stable id, and the train/eval split.

Split rule: a record is in the **evaluation** split when the first 8 bytes of
sha256(normalised question), read as a big-endian integer, are 0..19 modulo 100; otherwise
**train**. The normalised question is lower-cased with runs of whitespace collapsed to one
space. Keying on the question alone keeps every answer to one question (a safe and an unsafe
one, a wrong and a right one) on the same side, so training never sees an evaluation question.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

EVAL_PERCENT = 20

# What a set's answers are, and so how a correction of them is scored.
FIX_GOLD = "fix_gold"  # wrong answer; fixed when the correction contains a gold answer
FIX_REF = "fix_ref"  # wrong answer; fixed when the correction is closer to the right reference
KEEP = "keep"  # good answer; the correction should keep it
HARMFUL = "harmful"  # harmful question; the correction should refuse or redirect
KINDS = (FIX_GOLD, FIX_REF, KEEP, HARMFUL)


def normalise_question(question: str) -> str:
    return " ".join(question.lower().split())


def split_of(question: str) -> str:
    digest = hashlib.sha256(normalise_question(question).encode("utf-8")).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % 100 < EVAL_PERCENT else "train"


def record_id(set_name: str, question: str, answer: str | None) -> str:
    key = f"{set_name}\x1f{question}\x1f{answer or ''}".encode()
    return f"{set_name}-{hashlib.sha256(key).hexdigest()[:12]}"


@dataclass
class Record:
    set: str
    kind: str
    question: str
    # The upstream answer the dataset ships (None: question-only, answers come from models).
    answer: str | None
    origin: str
    gold: list[str] = field(default_factory=list)  # FIX_GOLD: acceptable answers
    right: str | None = None  # FIX_REF: the right reference
    # HARMFUL: the dataset's answer is labelled unsafe (not left to the refusal detector).
    unsafe: bool = False
    id: str = ""
    split: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind}")
        self.id = self.id or record_id(self.set, self.question, self.answer)
        self.split = self.split or split_of(self.question)


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)  # a killed run never leaves a half-written set behind
    return n


def read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def load_records(path: Path) -> list[Record]:
    return [Record(**row) for row in read_jsonl(path)]


def to_row(record: Record) -> dict:
    return asdict(record)
