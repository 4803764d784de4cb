"""`python -m aligner_train mix`: the training rows {question, answer, correction}, from the
*train* split only, with what `../shared/notes/training-data.md` learned built in:

- harmful questions get upstream answers in several styles (the default model under three
  system prompts, pyrit's human-written unsafe answers), so that only the question separates
  them from benign rows; the correction refuses in varied words and offers a safe way on;
- benign questions of the same surface form (health "how do I ...", money, facts) get answers
  in the same styles, kept as they are (identity rows), against over-refusal;
- identity rows from good answers (TruthfulQA, Fiqa, pyrit's safe answers) keep the copy habit;
- correction rows: NQ-open wrong → a sentence naming the gold answer, wrong → right summaries,
  pyrit unsafe → safe.

The evaluation's "numbered steps" answer style is deliberately absent, so the evaluation keeps
one upstream style that training never saw.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aligner_train import metrics, runtime
from aligner_train.evaluate import SMOLLM_SYSTEM, split_rows
from aligner_train.records import write_jsonl
from aligner_train.refusal import RefusalDetector
from aligner_train.wheels import sha256_file

STYLES = {
    "default": SMOLLM_SYSTEM,
    "plain": "Answer in two plain sentences.",
    "direct": "Give a direct, specific answer with no caveats or warnings.",
}

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I cannot provide help with this, because it could hurt people.",
    "I'm unable to help with this request.",
    "Sorry, I can't assist with that.",
    "I'm not able to provide that information.",
    "I can't assist with this, since it could cause real harm.",
    "I'm sorry, I can't help with this one.",
    "I cannot provide instructions or details for this.",
)
ALTERNATIVES = (
    "",
    "If you or someone else is in danger, please contact local emergency services.",
    "If you want, I can share general safety information or a legal alternative instead.",
    "I'd be glad to help with a safe, legal way to reach your goal.",
    "If you are researching this topic, I can point you to general educational resources.",
    "If this is about a conflict, talking to someone you trust or a professional can help.",
)
FACT_FORMS = ("The answer is {g}.", "{g}.", "It is {g}.", "The correct answer is {g}.")


@dataclass
class Sizes:
    harmful: int = 540
    benign: int = 330
    truthfulqa: int = 200
    fiqa: int = 150
    nq: int = 150
    summary: int = 150


def refusal(rng: random.Random) -> str:
    alt = rng.choice(ALTERNATIVES)
    return f"{rng.choice(REFUSALS)} {alt}".strip()


def _answers(binary: Path, upstream: Path, work: Path, questions: list[dict], workers: int | None,
             tokens: int) -> list[dict]:
    """Each question answered in one style, styles rotating, through the runtime."""
    out = []
    styles = list(STYLES.items())
    for i, (style, system) in enumerate(styles):
        rows = questions[i::len(styles)]
        job = runtime.Job(model=upstream, task="answer", system=system, max_new_tokens=tokens,
                          repetition_penalty=1.1)
        got = runtime.run(binary, job, rows, work / f"{style}-{job.key()}", workers)
        out += [dict(r, answer=o["answer"], style=style) for r, o in zip(rows, got)
                if o is not None and o["answer"].strip()]
    return out


def build(data: Path, out: Path, binary: Path, upstream: Path, work: Path, seed: int,
          sizes: Sizes, workers: int | None = None, tokens: int = 128) -> dict:
    rng = random.Random(seed)
    detector = RefusalDetector.from_strings(json.loads((data / "refusal_strings.json").read_text()))
    rows: list[dict] = []

    def add(r: dict, answer: str, correction: str, kind: str, source: str) -> None:
        rows.append({"question": r["question"], "answer": answer, "correction": correction,
                     "kind": kind, "identity": answer == correction, "source": source,
                     "origin": r.get("origin", "")})

    harmful = split_rows(data, "harmful", "train")
    rng.shuffle(harmful)
    for r in _answers(binary, upstream, work / "harmful", harmful[: sizes.harmful], workers,
                      tokens):
        if detector(r["answer"]):  # it already refused: keep the refusal
            add(r, r["answer"], r["answer"], "harmful-refused", f"model/{r['style']}")
        else:
            add(r, r["answer"], refusal(rng), "harmful", f"model/{r['style']}")
    safe = {r["question"]: r["answer"] for r in split_rows(data, "pyrit_safe", "train")}
    for r in split_rows(data, "pyrit_unsafe", "train"):
        target = safe.get(r["question"])
        if not target or not detector(target):
            target = refusal(rng)
        add(r, r["answer"], target, "harmful", "pyrit/human")
    for r in split_rows(data, "pyrit_safe", "train"):
        add(r, r["answer"], r["answer"], "keep", "pyrit/human")

    fiqa_questions = [dict(r, answer=None) for r in split_rows(data, "fiqa", "train")]
    benign = split_rows(data, "health", "train") + fiqa_questions
    rng.shuffle(benign)
    for r in _answers(binary, upstream, work / "benign", benign[: sizes.benign], workers, tokens):
        add(r, r["answer"], r["answer"], "keep", f"model/{r['style']}")
    for name, n in (("truthfulqa", sizes.truthfulqa), ("fiqa", sizes.fiqa)):
        for r in split_rows(data, name, "train")[:n]:
            add(r, r["answer"], r["answer"], "keep", f"dataset/{name}")
    for r in split_rows(data, "nq", "train")[: sizes.nq]:
        gold = r["gold"][0]
        gold = gold[:1].upper() + gold[1:]
        add(r, r["answer"], rng.choice(FACT_FORMS).format(g=gold), "fix", "dataset/nq")
    for r in split_rows(data, "summary", "train")[: sizes.summary]:
        add(r, r["answer"], r["right"], "fix", "dataset/summary")

    rng.shuffle(rows)
    n = write_jsonl(out, rows)
    digest = sha256_file(out)
    counts = Counter(f"{r['kind']} {r['source']}" for r in rows)
    copy = [metrics.copy_fraction(r["correction"], r["answer"]) for r in rows]
    summary = {"rows": n, "sha256": digest, "seed": seed, "counts": dict(sorted(counts.items())),
               "identity_rows": sum(r["identity"] for r in rows),
               "mean_copy": sum(copy) / len(copy), "styles": STYLES, "split": "train"}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
