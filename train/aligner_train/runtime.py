"""Runs the real runtime: `aligner batch`, for upstream answers (`--task answer`) and for
corrections. Batch is resumable, so a killed evaluation picks up where it stopped, and a
larger `--limit` only runs the new rows."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aligner_train.errors import UserError
from aligner_train.records import read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def find_binary(explicit: str | None) -> Path:
    """`--aligner`, else this checkout's release build, else `aligner` on PATH."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise UserError(f"--aligner {explicit} does not exist; build it with `make build`")
        return path
    built = REPO / "target" / "release" / "aligner"
    if built.is_file():
        return built
    found = shutil.which("aligner")
    if not found:
        raise UserError("no aligner binary: run `make build`, or pass --aligner PATH")
    return Path(found)


def check_model(folder: Path) -> Path:
    if not (folder / "model.onnx").is_file():
        raise UserError(f"{folder} is not a model folder (no model.onnx); build it with "
                        "`make model`, or pass another --model")
    return folder


@dataclass
class Job:
    """One `aligner batch` run over `rows` (dicts with question and, to correct, answer)."""

    model: Path
    task: str  # "correct" or "answer"
    template: str | None = None
    system: str | None = None
    max_new_tokens: int = 320
    repetition_penalty: float = 1.0
    extra: list[str] = field(default_factory=list)

    def key(self) -> str:
        """Names the cache: any change of model file or settings starts a fresh output."""
        onnx = self.model / "model.onnx"
        st = onnx.stat()
        parts = [str(self.model.resolve()), str(st.st_size), str(int(st.st_mtime)), self.task,
                 self.template or "", self.system or "", str(self.max_new_tokens),
                 str(self.repetition_penalty), *self.extra]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12]


def run(binary: Path, job: Job, rows: list[dict], work: Path,
        workers: int | None) -> list[dict | None]:
    """Runs `job` on `rows` (resuming in `work`) and returns one output row per input row, in
    order; None for a row the runtime rejected (too long for the context, say), with a
    warning naming the reason."""
    work.mkdir(parents=True, exist_ok=True)
    inp, out = work / "in.jsonl", work / "out.jsonl"
    fields = ("question",) if job.task == "answer" else ("question", "answer")
    write_jsonl(inp, ({k: r[k] for k in fields} for r in rows))
    cmd = [str(binary), "batch", str(inp), str(out), "--model", str(job.model),
           "--task", job.task, "--max-new-tokens", str(job.max_new_tokens),
           "--temperature", "0", "--repetition-penalty", str(job.repetition_penalty), *job.extra]
    if job.template:
        cmd += ["--template", job.template]
    if job.system:
        cmd += ["--system", job.system]
    if workers:
        cmd += ["--workers", str(workers)]
    # stderr stays the terminal's: the runtime's progress bar and its one-line errors.
    done = subprocess.run(cmd, env=env(), stdout=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise UserError(f"aligner batch exited with {done.returncode} (its message is above); "
                        f"the command was: {' '.join(cmd)}")

    def key(row: dict) -> tuple[str, str]:
        return row["question"], "" if job.task == "answer" else row["answer"]

    got: dict[tuple[str, str], dict] = {}
    for row in read_jsonl(out):
        got[key(row)] = row  # a later row for the same input wins
    rejected: dict[int, str] = {}
    rejects = work / "out.rejects.jsonl"
    if rejects.exists():
        rejected = {bad["meta"]["line"]: bad["reason"] for bad in read_jsonl(rejects)}
    results: list[dict | None] = []
    for line, r in enumerate(rows):
        if key(r) in got:
            results.append(got[key(r)])
        elif line in rejected:
            print(f"aligner_train: warning: row {line} of {inp} left out: {rejected[line]}",
                  file=sys.stderr)
            results.append(None)
        else:
            raise UserError(f"{out} lacks the row for {r['question'][:60]!r}; delete {work} "
                            "and re-run")
    return results


def env() -> dict[str, str]:
    """The environment for the runtime: it finds ONNX Runtime through VIRTUAL_ENV."""
    e = dict(os.environ)
    e.setdefault("VIRTUAL_ENV", sys.prefix)
    return e


def dump(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n")
