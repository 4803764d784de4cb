"""Greedy tokens from onnxruntime-genai for a model folder and prompt ids (EOS suppressed)."""

from __future__ import annotations

import onnxruntime_genai as og


def genai_greedy(folder: str, prompt_ids: list[int], new_tokens: int) -> list[int]:
    model = og.Model(folder)
    params = og.GeneratorParams(model)
    total = len(prompt_ids) + new_tokens
    # min_length == max_length keeps EOS from ending the sequence early.
    params.set_search_options(do_sample=False, max_length=total, min_length=total)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt_ids)
    out: list[int] = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out
