#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) side of benches/compare.py; runs in the bench venv.

Makes the Q8_0 GGUF from the source GGUF when it is missing (llama.cpp's own quantizer), then
times prefill of the given prompt ids and decode of a fixed number of tokens, like
`aligner bench`. Prints one JSON object with per-run figures.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time
from pathlib import Path

import llama_cpp


def ensure_q8_0(source: Path, target: Path, threads: int) -> None:
    if target.exists():
        return
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True  # the source is itself quantized (Q4_1)
    params.nthread = threads
    tmp = target.with_suffix(".tmp")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"error: llama.cpp could not quantize {source} to Q8_0")
    tmp.rename(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-gguf", type=Path, required=True)
    ap.add_argument("--gguf", type=Path, required=True, help="Q8_0 file (made from --source-gguf if missing)")
    ap.add_argument("--ids", required=True, help="comma-separated prompt token ids")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    ensure_q8_0(a.source_gguf, a.gguf, a.threads)
    ids = [int(x) for x in a.ids.split(",")]
    llm = llama_cpp.Llama(str(a.gguf), n_ctx=len(ids) + a.new_tokens + 8, n_threads=a.threads,
                          n_threads_batch=a.threads, n_batch=512, verbose=False)
    prefill, decode = [], []
    for run in range(a.runs + 1):  # the first run warms up
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        token = int(llm.scores[len(ids) - 1].argmax())
        t1 = time.perf_counter()
        for _ in range(a.new_tokens - 1):
            llm.eval([token])
            token = int(llm.scores[llm.n_tokens - 1].argmax())
        t2 = time.perf_counter()
        if run:
            prefill.append(len(ids) / (t1 - t0))
            decode.append((a.new_tokens - 1) / (t2 - t1))
    print(json.dumps({"prefill_tok_s": prefill, "decode_tok_s": decode, "gguf": str(a.gguf),
                      "gguf_mb": a.gguf.stat().st_size / 2**20, "version": llama_cpp.__version__}))


if __name__ == "__main__":
    main()
