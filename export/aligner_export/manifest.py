"""genai_config.json (onnxruntime-genai's format) and aligner.json (ours)."""

from __future__ import annotations

import json
from pathlib import Path

from . import __version__
from .model_config import ModelConfig

MANIFEST_VERSION = 1


def genai_config(cfg: ModelConfig, filename: str = "model.onnx") -> dict:
    eos = cfg.eos_token_ids[0] if len(cfg.eos_token_ids) == 1 else cfg.eos_token_ids
    return {
        "model": {
            "bos_token_id": cfg.bos_token_id,
            "context_length": cfg.context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": cfg.head_dim,
                "hidden_size": cfg.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": cfg.num_heads,
                "num_hidden_layers": cfg.num_layers,
                "num_key_value_heads": cfg.num_kv_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_ids[0],
            "type": cfg.architecture,
            "vocab_size": cfg.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": cfg.context_length,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def generation_defaults(gen: dict) -> dict:
    """aligner's defaults from a generation_config.json; greedy unless it asks to sample."""
    out = {"max_new_tokens": int(gen.get("max_new_tokens") or 256), "temperature": 0.0, "top_k": 0, "top_p": 1.0,
           "min_p": 0.0, "repetition_penalty": float(gen.get("repetition_penalty") or 1.0)}
    if gen.get("do_sample"):
        out.update(
            temperature=float(gen.get("temperature", 1.0)),
            top_k=int(gen.get("top_k", 50) or 0),  # transformers' default top_k is 50
            top_p=float(gen.get("top_p", 1.0)),
            min_p=float(gen.get("min_p") or 0.0),
        )
    return out


def aligner_manifest(cfg: ModelConfig, template: str, generation: dict, provenance: dict, providers: list[str]) -> dict:
    return {
        "format_version": MANIFEST_VERSION,
        "template": template,
        "providers": providers,
        "generation": generation,
        "eos_token_ids": cfg.eos_token_ids,
        "provenance": {"exporter": f"aligner_export {__version__}", "architecture": cfg.architecture, **provenance},
    }


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
