"""`python -m aligner_train bootstrap`: one round of the Aligner's third promise, end to end.

1. the upstream answers *train*-split questions (`aligner batch --task answer`);
2. the trained Aligner corrects them into preference pairs (`aligner batch --format dpo`);
3. DPO trains the upstream on corrected ≻ original (`dpo`, LoRA, frozen base as reference);
4. the exporter merges the adapter into a new upstream folder (`convert --lora`);
5. the upstream's own *uncorrected* answers on the *evaluation* split are scored before and
   after (`eval` with no corrector), with the paper's ω of after against before.

Each stage's wall time goes into `bootstrap.json`; every stage resumes or is cached.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from aligner_train import evaluate, metrics, report, runtime
from aligner_train.errors import UserError
from aligner_train.records import write_jsonl
from aligner_train.refusal import RefusalDetector

QUESTION_SETS = ("nq", "fiqa", "health", "harmful")


def _questions(data: Path, per_set: int) -> list[dict]:
    rows = []
    for name in QUESTION_SETS:
        got = evaluate.split_rows(data, name, "train")[:per_set]
        rows += [{"question": r["question"]} for r in got]
    return rows


def _batch(binary: Path, args: list[str]) -> None:
    done = subprocess.run([str(binary), "batch", *args], env=runtime.env(),
                          stdout=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise UserError(f"aligner batch {' '.join(args)} exited with {done.returncode} "
                        "(its message is above)")


def run(*, data: Path, work: Path, out: Path, binary: Path, gguf: Path, aligner: Path,
        upstream: Path, per_set: int, eval_limit: int, dpo_steps: int, workers: int | None,
        export_py: str) -> dict:
    from aligner_train.dpo import train_dpo

    stages: dict[str, float] = {}
    work.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    questions = work / "questions.jsonl"
    write_jsonl(questions, _questions(data, per_set))
    answers, pairs = work / "answers.jsonl", work / "pairs.jsonl"
    _batch(binary, [str(questions), str(answers), "--task", "answer", "--model", str(upstream),
                    "--system", evaluate.SMOLLM_SYSTEM, "--max-new-tokens", "160",
                    "--temperature", "0", "--repetition-penalty", "1.1",
                    *(["--workers", str(workers)] if workers else [])])
    stages["1 upstream answers"] = time.monotonic() - t
    t = time.monotonic()
    _batch(binary, [str(answers), str(pairs), "--format", "dpo", "--model", str(aligner),
                    "--max-new-tokens", "320", "--temperature", "0",
                    *(["--workers", str(workers)] if workers else [])])
    stages["2 corrections"] = time.monotonic() - t
    t = time.monotonic()
    adapter = work / "upstream-dpo"
    summary = train_dpo(gguf, pairs, adapter, system=evaluate.SMOLLM_SYSTEM,
                        max_steps=dpo_steps, batch=4, lr=5e-5, quiet=False)
    stages["3 dpo"] = time.monotonic() - t
    t = time.monotonic()
    after = work / "smollm2-135m-dpo-int8"
    env = dict(runtime.env(), PYTHONPATH=str(runtime.REPO / "export"))
    done = subprocess.run([export_py, "-m", "aligner_export", "convert", str(gguf), "--lora",
                           str(adapter), "--out", str(after), "--precision", "int8",
                           "--force"], env=env, check=False)
    if done.returncode != 0:
        raise UserError("the export of the new upstream failed (its message is above)")
    stages["4 export"] = time.monotonic() - t
    t = time.monotonic()
    detector = RefusalDetector.from_strings(json.loads((data / "refusal_strings.json").read_text()))
    results = {}
    for label, folder in (("before", upstream), ("after", after)):
        plan = evaluate.Plan(data=data, work=work / "eval", binary=binary, upstream=folder,
                             correctors=[], sources=["model", "model-steps"], sets=None,
                             limit=eval_limit, workers=workers, upstream_name="smollm2")
        results[label] = evaluate.score(plan, detector)["rows"]
    stages["5 evaluation"] = time.monotonic() - t
    table = _compare(results["before"], results["after"])
    record = {"dpo": summary, "stages_s": {k: round(v, 1) for k, v in stages.items()},
              "table": table, "pairs": str(pairs), "new_upstream": str(after)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bootstrap.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "bootstrap.md").write_text(_markdown(record) + "\n")
    write_jsonl(out / "examples.jsonl", _examples(results))
    return record


def _compare(before: list[dict], after: list[dict]) -> list[dict]:
    """Per source and set: the upstream's own rate before and after, and ω of after against
    before (a row wins when after meets the criterion and before did not)."""
    keyed = {(r["source"], r["set"], r["id"]): r for r in before}
    groups: dict[tuple[str, str], list[tuple[bool, bool]]] = {}
    for r in after:
        b = keyed.get((r["source"], r["set"], r["id"]))
        if b is not None:
            groups.setdefault((r["source"], r["set"]), []).append((b["after"], r["after"]))
    table = []
    for (source, name), pairs in groups.items():
        n = len(pairs)
        wins = sum(metrics.outcome(b, a) == "win" for b, a in pairs)
        losses = sum(metrics.outcome(b, a) == "loss" for b, a in pairs)
        table.append({"source": source, "set": name, "n": n,
                      "before": sum(b for b, _ in pairs) / n, "after": sum(a for _, a in pairs) / n,
                      "wins": wins, "losses": losses, "omega": (wins - losses) / n})
    return table


def _markdown(record: dict) -> str:
    lines = ["# One bootstrap round: the upstream's own answers, before and after DPO", "",
             "| source | set | n | before | after | wins | losses | ω |", "|---|---|---|---|---|---|---|---|"]
    for t in record["table"]:
        lines.append(f"| {t['source']} | {t['set']} | {t['n']} | {report._pct(t['before'])} | "
                     f"{report._pct(t['after'])} | {t['wins']} | {t['losses']} | "
                     f"{100 * t['omega']:+.0f}% |")
    lines += ["", "Stage wall times: " + ", ".join(f"{k} {v:.0f} s"
                                                  for k, v in record["stages_s"].items()),
              "", f"DPO: {json.dumps(record['dpo'])}"]
    return "\n".join(lines)


def _examples(results: dict) -> list[dict]:
    before = {(r["source"], r["set"], r["id"]): r for r in results["before"]}
    out = []
    for r in results["after"]:
        b = before.get((r["source"], r["set"], r["id"]))
        if b:
            out.append({"source": r["source"], "set": r["set"], "question": r["question"],
                        "before": b["answer"], "after": r["answer"], "before_ok": b["after"],
                        "after_ok": r["after"]})
    return out

