"""Build a Hugging Face `tokenizer.json` from GGUF tokenizer metadata (byte-level BPE, or
SentencePiece BPE for `llama` tokenizers).

The pre-tokenizer regexes mirror what llama.cpp applies for each `tokenizer.ggml.pre` value, so
our runtime, onnxruntime-genai and llama.cpp split text the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ExportError

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# GGUF token_type values (llama.cpp's llama_token_type).
CONTROL = 3
USER_DEFINED = 4


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _pre_tokenizer(pre: str | None) -> dict:
    if pre in ("smollm", "starcoder", "refact", "codeshell", "gpt-2", "gpt2", None, "default"):
        steps = []
        if pre in ("smollm", "starcoder", "refact", "codeshell"):
            steps.append({"type": "Digits", "individual_digits": True})
        steps.append(_byte_level(True))
        return {"type": "Sequence", "pretokenizers": steps}
    if pre in ("llama3", "llama-bpe", "smaug-bpe"):
        return {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
                _byte_level(False),
            ],
        }
    raise ExportError(f"GGUF pre-tokenizer '{pre}' is not supported; supply a tokenizer.json next to the model")


def sentencepiece_from_gguf(fields: dict) -> dict:
    """A SentencePiece-style tokenizer.json for GGUF `llama` tokenizers (Llama-2, Mistral):
    GGUF keeps the pieces, scores and piece types (same numbering as SentencePiece)."""
    from .sentencepiece_model import tokenizer_json

    tokens = list(fields["tokens"])
    scores = list(fields.get("scores") or [0.0] * len(tokens))
    types = list(fields.get("token_type") or [1] * len(tokens))
    unk = fields.get("unk")
    bos = fields.get("bos")
    model = {
        "pieces": [(t, float(s), int(k)) for t, s, k in zip(tokens, scores, types)],
        "trainer": {"model_type": 2, "byte_fallback": True, "unk_piece": tokens[unk if unk is not None else 0],
                    "bos_id": -1 if bos is None else int(bos)},
        "normalizer": {"name": "identity", "precompiled_charsmap": b"", "remove_extra_whitespaces": False,
                       "add_dummy_prefix": fields.get("add_space_prefix") is not False},
    }
    add_bos = fields.get("add_bos")
    return tokenizer_json(model, {}, True if add_bos is None else bool(add_bos))


def tokenizer_json_from_gguf(fields: dict) -> dict:
    if fields.get("model") == "llama":
        return sentencepiece_from_gguf(fields)
    if fields.get("model") != "gpt2":
        raise ExportError(
            f"GGUF tokenizer model '{fields.get('model')}' is not supported (supported: byte-level BPE 'gpt2', SentencePiece 'llama')"
        )
    tokens = list(fields["tokens"])
    types = list(fields["token_type"] or [1] * len(tokens))
    merges = list(fields["merges"] or [])
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (tok, kind) in enumerate(zip(tokens, types))
        if kind in (CONTROL, USER_DEFINED)
    ]
    bos = fields.get("bos")
    post = None
    if fields.get("add_bos") and bos is not None:
        post = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tokens[bos]: {"id": tokens[bos], "ids": [bos], "tokens": [tokens[bos]]}},
        }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(fields.get("pre")),
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }


def write_tokenizer_files(fields: dict, out_dir: Path, chat_template: str | None) -> None:
    tok = tokenizer_json_from_gguf(fields)
    (out_dir / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    tokens = fields["tokens"]
    bos = fields.get("bos")
    eos = (fields.get("eos") or [None])[0]
    cfg = {
        "tokenizer_class": "LlamaTokenizerFast" if fields.get("model") == "llama" else "GPT2Tokenizer",
        "add_bos_token": bool(fields.get("add_bos")),
        "add_prefix_space": False,
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 30,
    }
    if chat_template:
        cfg["chat_template"] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
