"""Prompt template names shared with the Rust runtime (src/template.rs holds the strings)."""

from __future__ import annotations

TEMPLATES = ("aligner-v1", "aligner-v2", "aligner-2b", "chatml-correction")


def default_template(cfg) -> str:
    """The prompt a checkpoint of this kind was most likely trained with:
    ChatML instruct models get the chat correction prompt; Gemma is Aligner-2B's base; Llama-2
    (32k vocab) is aligner-7b-v1.0's; newer bases (Llama-3, Qwen2, Mistral) follow the current
    upstream training code (v2). `--template` overrides it."""
    if cfg.chat_template and "<|im_start|>" in cfg.chat_template:
        return "chatml-correction"
    if cfg.architecture == "gemma":
        return "aligner-2b"
    if cfg.architecture == "llama" and cfg.vocab_size < 100_000:
        return "aligner-v1"
    return "aligner-v2"
