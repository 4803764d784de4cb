#!/usr/bin/env python3
"""Side-by-side speed: `aligner bench` against onnxruntime-genai on the same model folder.

Same machine, same run, same thread count, same prompt token ids, same number of new tokens
(EOS suppressed on both sides). Prints each runtime's median figures and the ratios.

    .venv/bin/python benches/compare.py --model models/smollm2-135m-instruct-int8 --threads 2
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

import onnxruntime_genai as og

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "aligner"


def aligner_bench(model: Path, threads: int, prompt_tokens: int, new_tokens: int, runs: int) -> dict:
    args = [str(BIN), "bench", "--model", str(model), "--threads", str(threads), "--prompt-tokens", str(prompt_tokens),
            "--new-tokens", str(new_tokens), "--runs", str(runs), "--json"]
    env = dict(os.environ, VIRTUAL_ENV=str(ROOT / ".venv"))
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout)


def prompt_ids(model: Path, prompt_tokens: int) -> list[int]:
    args = [str(BIN), "bench", "--model", str(model), "--prompt-tokens", str(prompt_tokens), "--print-prompt-ids"]
    env = dict(os.environ, VIRTUAL_ENV=str(ROOT / ".venv"))
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
    return [int(x) for x in out.strip().split(",")]


def genai_folder_with_threads(model: Path, threads: int, tmp: Path) -> Path:
    """A view of `model` whose genai_config pins the thread count (files are symlinked)."""
    for f in model.iterdir():
        if f.name != "genai_config.json":
            (tmp / f.name).symlink_to(f.resolve())
    cfg = json.loads((model / "genai_config.json").read_text())
    cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    (tmp / "genai_config.json").write_text(json.dumps(cfg))
    return tmp


def genai_bench(model: Path, ids: list[int], new_tokens: int, runs: int) -> dict:
    m = og.Model(str(model))
    prefill, decode, total = [], [], []
    for run in range(runs + 1):  # first run is warm-up
        params = og.GeneratorParams(m)
        n = len(ids) + new_tokens
        params.set_search_options(do_sample=False, max_length=n, min_length=n)
        gen = og.Generator(m, params)
        t0 = time.perf_counter()
        gen.append_tokens(ids)
        gen.generate_next_token()  # first token: from the prompt's logits
        t1 = time.perf_counter()
        while not gen.is_done():
            gen.generate_next_token()
        t2 = time.perf_counter()
        if run:
            prefill.append(len(ids) / (t1 - t0))
            decode.append((new_tokens - 1) / (t2 - t1))
            total.append((t2 - t0) * 1000)
    return {"prefill_tok_s": statistics.median(prefill), "decode_tok_s": statistics.median(decode),
            "correction_ms": statistics.median(total)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct-int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=122)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    ids = prompt_ids(a.model, a.prompt_tokens)
    ours = aligner_bench(a.model, a.threads, a.prompt_tokens, a.new_tokens, a.runs)
    with tempfile.TemporaryDirectory() as tmp:
        theirs = genai_bench(genai_folder_with_threads(a.model, a.threads, Path(tmp)), ids, a.new_tokens, a.runs)
    ratios = {k: ours[k] / theirs[k] for k in ("prefill_tok_s", "decode_tok_s")}
    ratios["correction_speedup"] = theirs["correction_ms"] / ours["correction_ms"]
    result = {"model": str(a.model), "threads": a.threads, "prompt_tokens": a.prompt_tokens,
              "new_tokens": a.new_tokens, "runs": a.runs, "aligner": ours, "onnxruntime_genai": theirs, "ratios": ratios}
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"model {a.model}  threads {a.threads}  prompt {a.prompt_tokens} tok  new {a.new_tokens} tok  runs {a.runs} (medians)")
    print(f"{'':24}{'aligner':>12}{'ort-genai':>12}{'ratio':>8}")
    for key in ("prefill_tok_s", "decode_tok_s"):
        print(f"{key:24}{ours[key]:12.1f}{theirs[key]:12.1f}{ratios[key]:8.2f}x")
    print(f"{'correction_ms':24}{ours['correction_ms']:12.1f}{theirs['correction_ms']:12.1f}{ratios['correction_speedup']:8.2f}x")


if __name__ == "__main__":
    main()
