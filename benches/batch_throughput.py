#!/usr/bin/env python3
"""`aligner batch` rows/s: continuous batching against the previous best (sessions per core,
rows one by one), on the same rows and settings, in one run.

The rows are the distinct pairs of `--pairs FILE`: by default the eval set's
(reports/eval/rows.jsonl, which `make eval` writes), every pair once. Without that file they
are the benchmark workload's 16 correction pairs, repeated to `--rows`, with a note: repeats
flatter settings that run rows one after another, since a repeated row drafts its whole output
from its earlier twin (copy drafts also come from recent outputs). Every setting runs once
per round and the rounds interleave, so a slow stretch of a noisy machine hits all of them;
each figure is the median over rounds. EOS is suppressed so that every row writes exactly
`--new-tokens` tokens and the settings do the same work.

    .venv/bin/python benches/batch_throughput.py --new-tokens 32 160
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from old_binary import flags_for

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "aligner"
ENV = dict(os.environ, VIRTUAL_ENV=str(ROOT / ".venv"))
WORKLOAD = ROOT / "benches" / "workloads" / "corrections.jsonl"
EVAL_ROWS = ROOT / "reports" / "eval" / "rows.jsonl"

# name -> extra flags. The baseline is what `aligner batch` did before batching: one session
# per core, one thread each, copy drafts on.
SETTINGS = {
    "sessions-2x1-rows-1by1": ["--workers", "2", "--threads", "1", "--batch-size", "1"],
    "batch-8": ["--workers", "1", "--threads", "2", "--batch-size", "8"],
    "batch-16": ["--workers", "1", "--threads", "2", "--batch-size", "16"],
    "batch-32": ["--workers", "1", "--threads", "2", "--batch-size", "32"],
    "2x1-batch-8": ["--workers", "2", "--threads", "1", "--batch-size", "8"],
    "2x1-batch-16": ["--workers", "2", "--threads", "1", "--batch-size", "16"],
    "2x1-batch-32": ["--workers", "2", "--threads", "1", "--batch-size", "32"],
    # Batching as it was before copy drafts ran in batches: every row decodes plainly.
    "2x1-batch-16-no-draft": ["--workers", "2", "--threads", "1", "--batch-size", "16", "--no-draft"],
    # The first copy draft verified in the prompt's pass (not the default: see the README).
    "2x1-batch-16-draft-with-prompt": ["--workers", "2", "--threads", "1", "--batch-size", "16",
                                       "--draft-with-prompt"],
}
BASELINE = "sessions-2x1-rows-1by1"


def distinct_pairs(source: Path) -> list[dict]:
    seen: set[tuple[str, str]] = set()
    pairs = []
    for line in source.read_text().splitlines():
        if line.strip():
            p = json.loads(line)
            key = (p["question"], p["answer"])
            if key not in seen:
                seen.add(key)
                pairs.append(p)
    return pairs


def rows_file(tmp: Path, n: int, pairs: list[dict], source: Path) -> Path:
    if len(pairs) < n:
        print(f"note: {source} has {len(pairs)} distinct pairs; {n} rows repeat them, and a "
              "repeated row drafts its output from its earlier twin (see the docstring)")
    path = tmp / "rows.jsonl"
    with path.open("w") as f:
        for i in range(n):
            p = pairs[i % len(pairs)]
            f.write(json.dumps({"question": p["question"], "answer": p["answer"]}) + "\n")
    return path


def run(model: Path, rows: Path, out: Path, new_tokens: int, flags: list[str],
        binary: Path = BIN) -> tuple[float, int]:
    out.unlink(missing_ok=True)
    Path(f"{out}.rejects.jsonl").unlink(missing_ok=True)
    cmd = [str(binary), "batch", str(rows), str(out), "--model", str(model), "--max-new-tokens",
           str(new_tokens), "--suppress-eos", *flags_for(binary, "batch", flags)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=ENV)
    secs = time.perf_counter() - start
    written = [json.loads(line) for line in out.read_text().splitlines()]
    tokens = sum(r["meta"]["completion_tokens"] for r in written)
    return len(written) / secs, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-aligner-int8")
    ap.add_argument("--rows", type=int,
                    help="rows per run (default: every distinct pair once, or 64 workload rows)")
    ap.add_argument("--pairs", type=Path,
                    help="JSON lines with question and answer: the rows' distinct pairs "
                         "(default: reports/eval/rows.jsonl if `make eval` wrote it, else the "
                         "benchmark workload)")
    ap.add_argument("--new-tokens", type=int, nargs="+", default=[32, 160])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--baseline-bin", type=Path,
                    help="an older aligner binary: --old-settings also run with it (as old:NAME), "
                         "and its baseline becomes the base of the ratios")
    ap.add_argument("--old-settings", nargs="+", default=[BASELINE], choices=list(SETTINGS))
    a = ap.parse_args()
    if a.pairs is None:
        a.pairs = EVAL_ROWS if EVAL_ROWS.is_file() else WORKLOAD
    pairs = distinct_pairs(a.pairs)
    if a.rows is None:
        a.rows = 64 if a.pairs == WORKLOAD else len(pairs)
    if BASELINE not in a.settings:
        a.settings.insert(0, BASELINE)
    # name -> (flags, binary)
    runs = {name: (SETTINGS[name], BIN) for name in a.settings}
    if a.baseline_bin:
        old = {f"old:{n}": (SETTINGS[n], a.baseline_bin) for n in a.old_settings}
        runs = {**old, **runs}
    base_name = f"old:{BASELINE}" if a.baseline_bin and BASELINE in a.old_settings else BASELINE
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        rows = rows_file(tmp, a.rows, pairs, a.pairs)
        for new_tokens in a.new_tokens:
            rates: dict[str, list[float]] = {s: [] for s in runs}
            tokens: dict[str, int] = {}
            for _ in range(a.rounds):
                for name, (flags, binary) in runs.items():
                    out = tmp / f"{name.replace(':', '-')}.jsonl"
                    rate, n = run(a.model, rows, out, new_tokens, flags, binary)
                    rates[name].append(rate)
                    tokens[name] = n
            base = statistics.median(rates[base_name])
            print(f"\n{a.rows} rows, {new_tokens} new tokens each, median of {a.rounds} rounds")
            print(f"{'setting':28} {'rows/s':>8} {'x baseline':>10} {'tokens':>8}")
            figures = {}
            for name in runs:
                r = statistics.median(rates[name])
                figures[name] = {"rows_s": round(r, 3), "over_baseline": round(r / base, 3),
                                 "runs": [round(x, 3) for x in rates[name]], "tokens": tokens[name]}
                print(f"{name:28} {r:8.2f} {r / base:10.2f} {tokens[name]:8d}")
            report[str(new_tokens)] = figures
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
