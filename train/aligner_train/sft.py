"""`python -m aligner_train sft`: residual-correction training (needs `.venv-train`: torch,
transformers, peft).

The paper's recipe: the prompt is masked, so the loss falls on the correction and EOS only;
an identity warm-up (rows whose correction equals the answer) teaches copying first, then the
residual rows follow with identity rows mixed in. LoRA on every linear projection (or full
fine-tuning), a fixed seed, bf16 autocast where the CPU has it, CUDA when present. A progress
bar shows loss and ETA; `loss.csv`/`loss.png` record the curve; a checkpoint every
`--checkpoint-every` steps lets a killed run resume where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from aligner_train.errors import UserError
from aligner_train.templates import render

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Recipe:
    template: str = "chatml-correction"
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    lr: float = 3e-4
    batch: int = 8
    epochs: float = 1.0
    warmup_steps: int = 20  # identity-only steps first
    max_len: int = 384
    seed: int = 0
    full: bool = False
    max_steps: int = 0  # 0: from epochs
    checkpoint_every: int = 25
    save_dtype: str = "bf16"


def _torch():
    try:
        import torch
    except ImportError as e:
        raise UserError("sft needs torch: run `make train-venv` and use .venv-train/bin/python"
                        ) from e
    return torch


def load_base(base: Path, dtype=None):
    """A Hugging Face folder, or a Llama GGUF that transformers dequantises on load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch = _torch()
    if not base.exists():
        raise UserError(f"--base {base} does not exist; pass a Hugging Face folder or a GGUF")
    kw = {"gguf_file": base.name} if base.suffix == ".gguf" else {}
    folder = base.parent if base.suffix == ".gguf" else base
    tok = AutoTokenizer.from_pretrained(folder, **kw)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32, **kw)
    if kw:
        # Dequantised on load, the weights are plain floats; without this, transformers'
        # Trainer (which trl's DPO uses) refuses to train a "GGUF-quantized" model.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model, tok


def encode(tok, rows: list[dict], template: str, max_len: int) -> tuple[list[dict], int]:
    """Prompt ids (label -100) + correction ids + EOS. Rows longer than `max_len` are skipped."""
    eos = tok.eos_token_id
    if eos is None:
        raise UserError("the base tokenizer has no EOS token; the correction cannot end")
    out, skipped = [], 0
    for r in rows:
        prompt = tok(render(template, r["question"], r["answer"]), add_special_tokens=False)
        target = tok(r["correction"], add_special_tokens=False)["input_ids"] + [eos]
        ids = prompt["input_ids"] + target
        if len(ids) > max_len:
            skipped += 1
            continue
        out.append({"input_ids": ids, "labels": [-100] * len(prompt["input_ids"]) + target,
                    "identity": bool(r.get("identity", r["answer"] == r["correction"]))})
    return out, skipped


def schedule(examples: list[dict], recipe: Recipe) -> list[list[int]]:
    """The batches, in order: `warmup_steps` identity-only batches, then every example,
    shuffled (identity rows included), for `epochs`. Deterministic in the seed."""
    rng = random.Random(recipe.seed)
    identity = [i for i, e in enumerate(examples) if e["identity"]]
    batches = []
    pool: list[int] = []
    for _ in range(recipe.warmup_steps if identity else 0):
        if len(pool) < recipe.batch:
            pool += rng.sample(identity, len(identity))
        batches.append(pool[: recipe.batch])
        pool = pool[recipe.batch:]
    everything = list(range(len(examples)))
    total = math.ceil(recipe.epochs * len(examples) / recipe.batch)
    order: list[int] = []
    while len(order) < total * recipe.batch:
        order += rng.sample(everything, len(everything))
    batches += [order[i * recipe.batch:(i + 1) * recipe.batch] for i in range(total)]
    if recipe.max_steps:
        batches = batches[: recipe.max_steps]
    return batches


def collate(examples: list[dict], pad_id: int):
    torch = _torch()
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return ids, mask, labels


def wrap(model, recipe: Recipe):
    if recipe.full:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                        target_modules=LORA_TARGETS, task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, config)


def _bf16_ok(device: str) -> bool:
    if device == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fingerprint(recipe: Recipe, data_sha: str, base_sha: str) -> str:
    key = json.dumps({**asdict(recipe), "data": data_sha, "base": base_sha}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]
