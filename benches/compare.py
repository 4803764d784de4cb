#!/usr/bin/env python3
"""Side-by-side speed: aligner against onnxruntime-genai and llama.cpp, in one run.

Same machine, same thread count, same prompt token ids, same number of new tokens (EOS
suppressed everywhere). The runtimes take turns round by round, so a slow stretch of a noisy
machine hits all of them; each figure is the median over every measured run. See
benches/README.md for what each row means and how the comparison folders are made.

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
CACHE = ROOT / ".cache"
ENV = dict(os.environ, VIRTUAL_ENV=str(ROOT / ".venv"))
COPY_HEAVY = 0.7


def aligner(*args: str) -> str:
    return subprocess.run([str(BIN), *args], check=True, capture_output=True, text=True, env=ENV).stdout


def aligner_plain(model: Path, a: argparse.Namespace) -> dict:
    """Per-run prefill/decode figures of `aligner bench` (no correction workload)."""
    out = json.loads(aligner("bench", "--model", str(model), "--threads", str(a.threads), "--prompt-tokens",
                             str(a.prompt_tokens), "--new-tokens", str(a.new_tokens), "--runs", str(a.runs),
                             "--no-corrections", "--json"))
    return {"prefill_tok_s": [out["prefill_tok_s"]], "decode_tok_s": [out["decode_tok_s"]]}


def genai_view(model: Path, threads: int, tmp: Path) -> Path:
    """A view of `model` whose genai_config pins the thread count (files are symlinked)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.name != "genai_config.json":
            (tmp / f.name).symlink_to(f.resolve())
    cfg = json.loads((model / "genai_config.json").read_text())
    cfg["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    (tmp / "genai_config.json").write_text(json.dumps(cfg))
    return tmp


def genai_plain(m: og.Model, ids: list[int], new_tokens: int, runs: int) -> dict:
    prefill, decode = [], []
    for run in range(runs + 1):  # the first run warms up
        params = og.GeneratorParams(m)
        n = len(ids) + new_tokens
        params.set_search_options(do_sample=False, max_length=n, min_length=n)
        gen = og.Generator(m, params)
        t0 = time.perf_counter()
        gen.append_tokens(ids)
        gen.generate_next_token()  # the first token comes from the prompt's logits
        t1 = time.perf_counter()
        while not gen.is_done():
            gen.generate_next_token()
        t2 = time.perf_counter()
        if run:
            prefill.append(len(ids) / (t1 - t0))
            decode.append((new_tokens - 1) / (t2 - t1))
    return {"prefill_tok_s": prefill, "decode_tok_s": decode}


def genai_correct_ms(m: og.Model, ids: list[int], max_new: int, eos: set[int], ngram: bool) -> tuple[float, int]:
    """End-to-end greedy correction time (prompt to EOS or budget), optionally with
    onnxruntime-genai's own n-gram speculation (ngram_size 3, max_draft_tokens 8)."""
    params = og.GeneratorParams(m)
    params.set_search_options(do_sample=False, max_length=len(ids) + max_new)
    if ngram:
        params.set_speculative_options(ngram_size=3, max_draft_tokens=8)
    gen = og.Generator(m, params)
    t0 = time.perf_counter()
    gen.append_tokens(ids)
    produced = 0
    while not gen.is_done():
        gen.generate_next_token()
        produced += 1
        if set(gen.get_next_tokens()) & eos:
            break
    return (time.perf_counter() - t0) * 1000, produced


def llama_cpp_plain(python: Path, ids: list[int], a: argparse.Namespace) -> dict:
    args = [str(python), str(ROOT / "benches" / "llama_cpp_bench.py"), "--source-gguf", str(a.source_gguf),
            "--gguf", str(a.q8_gguf), "--ids", ",".join(map(str, ids)), "--new-tokens", str(a.new_tokens),
            "--runs", str(a.runs), "--threads", str(a.threads)]
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


def session_starts(a: argparse.Namespace, tmp: Path, trials: int = 3) -> dict:
    """Start times: without the graph cache, the first start with an empty cache (it writes
    the optimized graph) and the second start (it loads it)."""
    def start(cache: str) -> float:
        out = aligner("bench", "--model", str(a.model), "--threads", str(a.threads), "--prompt-tokens", "8",
                      "--new-tokens", "2", "--runs", "1", "--warmup", "0", "--no-corrections", "--json",
                      "--graph-cache", cache)
        return json.loads(out)["session_start_ms"]

    off, first, second = [], [], []
    for trial in range(trials):
        cache = tmp / f"graph-cache-{trial}"
        off.append(start("off"))
        first.append(start(str(cache)))
        second.append(start(str(cache)))
    return {"no_cache_ms": med(off), "first_ms": med(first), "second_ms": med(second),
            "second_over_first": med(second) / med(first), "second_over_no_cache": med(second) / med(off)}


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def plain_section(a: argparse.Namespace, ids: list[int], tmp: Path) -> dict:
    same = og.Model(str(genai_view(a.model, a.threads, tmp / "same")))
    builder = og.Model(str(genai_view(a.genai_builder, a.threads, tmp / "builder"))) if a.genai_builder else None
    series: dict[str, dict[str, list[float]]] = {}

    def add(name: str, got: dict) -> None:
        for key in ("prefill_tok_s", "decode_tok_s"):
            series.setdefault(name, {}).setdefault(key, []).extend(got[key])

    for _ in range(a.rounds):
        add("aligner", aligner_plain(a.model, a))
        add("genai_same_folder", genai_plain(same, ids, a.new_tokens, a.runs))
        if builder:
            add("genai_builder_int8", genai_plain(builder, ids, a.new_tokens, a.runs))
        if a.llama_python:
            add("llama_cpp_q8_0", llama_cpp_plain(a.llama_python, ids, a))
    return {name: {k: med(v) for k, v in s.items()} for name, s in series.items()}


def corrections_section(a: argparse.Namespace, tmp: Path) -> dict:
    """Per-pair correction times, aligner and onnxruntime-genai taking turns round by round (a
    slow stretch of the machine then hits both), each time the median over every round."""
    m = og.Model(str(genai_view(a.model, a.threads, tmp / "corr")))
    cfg = json.loads((a.model / "genai_config.json").read_text())["model"]
    eos = set(cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]])
    rounds: list[dict] = []
    genai: dict[str, dict[str, list[float]]] = {}
    for _ in range(a.rounds):
        ours = json.loads(aligner("bench", "--model", str(a.model), "--threads", str(a.threads), "--runs", "1",
                                  "--new-tokens", "2", "--correction-tokens", str(a.correction_tokens),
                                  "--correction-runs", str(a.correction_runs), "--json",
                                  *(["--workload", str(a.workload)] if a.workload else [])))
        rounds.append(ours)
        for item in ours["workload"]:
            ids = item["prompt_ids"]
            times = genai.setdefault(item["id"], {"plain": [], "ngram": []})
            genai_correct_ms(m, ids, a.correction_tokens, eos, False)  # warm-up
            for _ in range(a.correction_runs):
                times["plain"].append(genai_correct_ms(m, ids, a.correction_tokens, eos, False)[0])
                times["ngram"].append(genai_correct_ms(m, ids, a.correction_tokens, eos, True)[0])
    rows = []
    for i, item in enumerate(rounds[0]["workload"]):
        per_round = [r["workload"][i] for r in rounds]
        row = {k: item[k] for k in ("id", "kind", "output_tokens", "copy_fraction")}
        for key in ("plain_ms", "draft_ms", "plain_reuse_ms", "draft_reuse_ms"):
            row[key] = med([r[key] for r in per_round])
        for key in ("identical", "reuse_outputs_identical"):
            row[key] = all(r[key] for r in per_round)
        row["draft_tokens_max"] = max(r["draft_tokens_max"] for r in per_round)
        times = genai[item["id"]]
        row |= {"genai_ms": med(times["plain"]), "genai_ngram_ms": med(times["ngram"]),
                "genai_tokens": genai_correct_ms(m, item["prompt_ids"], a.correction_tokens, eos, False)[1]}
        rows.append(row)
    ours = rounds[-1]
    heavy = [r for r in rows if r["copy_fraction"] >= COPY_HEAVY]

    def total(key: str, chosen: list[dict]) -> float:
        return sum(r[key] for r in chosen)

    summary = {"copy_heavy_pairs": len(heavy), "pairs": len(rows)}
    if heavy:
        summary["draft_over_plain"] = total("draft_ms", heavy) / total("plain_ms", heavy)
        summary["draft_over_genai_ngram"] = total("draft_ms", heavy) / total("genai_ngram_ms", heavy)
        summary["genai_ngram_over_genai_plain"] = total("genai_ngram_ms", heavy) / total("genai_ms", heavy)
    summary["all_draft_over_plain"] = total("draft_ms", rows) / total("plain_ms", rows)
    summary["all_draft_over_genai_ngram"] = total("draft_ms", rows) / total("genai_ngram_ms", rows)
    # As `serve` and `batch` run: the template's fixed prefix comes from the KV cache.
    if heavy:
        summary["draft_reuse_over_genai_ngram"] = total("draft_reuse_ms", heavy) / total("genai_ngram_ms", heavy)
    summary["plain_over_genai_worst_pair"] = max(r["plain_ms"] / r["genai_ms"] for r in rows)
    summary["plain_reuse_over_genai_worst_pair"] = max(r["plain_reuse_ms"] / r["genai_ms"] for r in rows)
    summary["drafts_lossless"] = all(r["identical"] for r in rows)
    summary["reuse_lossless"] = all(r["reuse_outputs_identical"] for r in rows)
    return {"rows": rows, "summary": summary, "aligner_bench": {k: v for k, v in ours.items() if k != "workload"}}


def print_report(r: dict) -> None:
    p = r["plain"]
    print(f"model {r['model']}  threads {r['threads']}  prompt {r['prompt_tokens']} tok  new {r['new_tokens']} tok  "
          f"(medians of {r['rounds']} rounds x {r['runs']} runs, runtimes interleaved)")
    print(f"{'':22}" + "".join(f"{name:>20}" for name in p))
    for key in ("prefill_tok_s", "decode_tok_s"):
        print(f"{key:22}" + "".join(f"{p[name][key]:20.1f}" for name in p))
    print("\nratios (higher is better for aligner)")
    for label, value in r["ratios"].items():
        print(f"  {label:58} {value:6.2f}x")
    st = r["session_start"]
    print(f"\nsession start: no graph cache {st['no_cache_ms']:.0f} ms, first start (writes the cache) "
          f"{st['first_ms']:.0f} ms, second start {st['second_ms']:.0f} ms: second / first = "
          f"{st['second_over_first']:.2f}x, second / no cache = {st['second_over_no_cache']:.2f}x")
    c = r.get("corrections")
    if not c:
        return
    print(f"\ncorrections (greedy, up to {r['correction_tokens']} tokens; ms are medians)")
    print(f"{'pair':18} {'kind':>7} {'tok':>4} {'d-tok':>5} {'copy':>5} {'plain':>8} {'drafts':>8} {'same':>5} "
          f"{'plain-r':>8} {'drafts-r':>8} {'genai':>8} {'g-ngram':>8} {'g-tok':>5}")
    for row in c["rows"]:
        print(f"{row['id']:18} {row['kind']:>7} {row['output_tokens']:4d} {row['draft_tokens_max']:5d} "
              f"{row['copy_fraction'] * 100:4.0f}% "
              f"{row['plain_ms']:8.1f} {row['draft_ms']:8.1f} {row['identical']!s:>5} {row['plain_reuse_ms']:8.1f} "
              f"{row['draft_reuse_ms']:8.1f} {row['genai_ms']:8.1f} {row['genai_ngram_ms']:8.1f} "
              f"{row['genai_tokens']:5d}")
    print("(d-tok: the longest drafted output over the runs; same: drafted equal to plain in every run; "
          "-r: prefix reuse on, the cache holding the previous pair's prompt, as serve and batch run)")
    s = c["summary"]
    print(f"copy-heavy pairs (copy >= {COPY_HEAVY:.0%}): {s['copy_heavy_pairs']} of {s['pairs']}")
    for key in ("draft_over_plain", "draft_over_genai_ngram", "draft_reuse_over_genai_ngram",
                "genai_ngram_over_genai_plain", "all_draft_over_plain", "all_draft_over_genai_ngram",
                "plain_over_genai_worst_pair", "plain_reuse_over_genai_worst_pair"):
        if key in s:
            print(f"  {key:40} {s[key]:6.2f}x  (time; lower is better)")
    print(f"  drafted output identical to plain greedy: {s['drafts_lossless']}; "
          f"with prefix reuse identical to without: {s['reuse_lossless']}")


def main() -> None:
    global BIN
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct-int8")
    ap.add_argument("--genai-builder", type=Path, default=CACHE / "genai-builder-int8",
                    help="onnxruntime-genai builder's int8 folder of the same weights (see benches/README.md)")
    ap.add_argument("--source-gguf", type=Path, default=CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--q8-gguf", type=Path, default=CACHE / "SmolLM2-135M-Instruct.Q8_0.gguf")
    ap.add_argument("--llama-python", type=Path, default=ROOT / ".venv-bench" / "bin" / "python",
                    help="a Python with llama-cpp-python (make bench-venv)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=122)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3, help="measured runs per runtime per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workload", type=Path, help="correction pairs (default: aligner's built-in set)")
    ap.add_argument("--correction-tokens", type=int, default=160)
    ap.add_argument("--correction-runs", type=int, default=3)
    ap.add_argument("--no-corrections", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--bin", type=Path, default=BIN,
                    help="the aligner binary to measure (e.g. an older build, to tell a change "
                         "from a slow day of the machine)")
    a = ap.parse_args()
    BIN = a.bin
    if not a.genai_builder.is_dir():
        print(f"note: {a.genai_builder} is missing; skipping the onnxruntime-genai builder folder (benches/README.md)")
        a.genai_builder = None
    if not a.llama_python.exists():
        print(f"note: {a.llama_python} is missing; skipping llama.cpp (run `make bench-venv`)")
        a.llama_python = None

    ids = [int(x) for x in aligner("bench", "--model", str(a.model), "--prompt-tokens", str(a.prompt_tokens),
                                   "--print-prompt-ids").strip().split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        plain = plain_section(a, ids, Path(tmp))
        corrections = None if a.no_corrections else corrections_section(a, Path(tmp))
        starts = session_starts(a, Path(tmp))
    ours = plain["aligner"]
    ratios = {"decode (a): aligner / onnxruntime-genai, same folder":
              ours["decode_tok_s"] / plain["genai_same_folder"]["decode_tok_s"],
              "prefill: aligner / onnxruntime-genai, same folder":
              ours["prefill_tok_s"] / plain["genai_same_folder"]["prefill_tok_s"]}
    if "genai_builder_int8" in plain:
        ratios["decode (b): aligner, our int8 / onnxruntime-genai, builder int8"] = \
            ours["decode_tok_s"] / plain["genai_builder_int8"]["decode_tok_s"]
    if "llama_cpp_q8_0" in plain:
        ratios["decode (b): aligner, our int8 / llama.cpp Q8_0"] = \
            ours["decode_tok_s"] / plain["llama_cpp_q8_0"]["decode_tok_s"]
        ratios["prefill: aligner, our int8 / llama.cpp Q8_0"] = \
            ours["prefill_tok_s"] / plain["llama_cpp_q8_0"]["prefill_tok_s"]
    report = {"model": str(a.model), "threads": a.threads, "prompt_tokens": a.prompt_tokens,
              "new_tokens": a.new_tokens, "runs": a.runs, "rounds": a.rounds,
              "correction_tokens": a.correction_tokens, "plain": plain, "ratios": ratios}
    report["session_start"] = starts
    if corrections:
        report["corrections"] = corrections
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
