"""Write a random-weight bf16 Hugging Face checkpoint with a real model's shapes, to measure
the exporter's time and peak memory on a full-size model without downloading one.

    python export/scripts/synthetic_checkpoint.py --shape llama2-7b --out /tmp/synth-7b
    /usr/bin/time -v python -m aligner_export convert /tmp/synth-7b --out /tmp/synth-7b-int8 --progress

Values are random bf16 bit patterns with magnitudes between 2^-9 and 2^-4 (no NaN or inf), generated
and written one tensor at a time into shards of about 2 GB with an index, as transformers saves.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aligner_export.model_config import ModelConfig, expected_shapes
from aligner_export.safetensors_io import write_safetensors

SHAPES = {
    # aligner-7b-v1.0 is Llama-2-7B with one added <pad> token.
    "llama2-7b": {"hidden": 4096, "layers": 32, "heads": 32, "kv": 32, "ffn": 11008, "vocab": 32001},
    "llama-1b": {"hidden": 2048, "layers": 16, "heads": 32, "kv": 8, "ffn": 8192, "vocab": 32001},
}
SHARD_BYTES = 2 << 30
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


def random_bf16(shape: tuple[int, ...], rng: np.random.Generator) -> bytes:
    n = int(np.prod(shape))
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint16) & np.uint16(0x807F)  # sign + mantissa
    exponent = rng.integers(118, 123, n, dtype=np.uint16) << np.uint16(7)
    return (bits | exponent).tobytes()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=SHAPES, default="llama2-7b")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    s = SHAPES[a.shape]
    cfg = ModelConfig("llama", s["layers"], s["hidden"], s["heads"], s["kv"], s["hidden"] // s["heads"], s["ffn"], s["vocab"],
                      10000.0, 1e-5, 4096, False, 1, [2], s["vocab"] - 1)
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shapes = expected_shapes(cfg)
    size = 0
    weight_map: dict[str, int] = {}
    # Group tensors into shards by size, then generate and write each shard's tensors.
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * 2
        if size + nbytes > SHARD_BYTES and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    total = len(groups)
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        tensors = {name: ("BF16", shape, random_bf16(shape, rng)) for name, shape in group}
        write_safetensors(a.out / fname, tensors)
        del tensors
        for name, _ in group:
            weight_map[name] = fname
        print(f"wrote {fname}", flush=True)
    (a.out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": s["hidden"],
        "intermediate_size": s["ffn"], "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv"], "vocab_size": s["vocab"], "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": s["vocab"] - 1, "torch_dtype": "bfloat16",
    }
    (a.out / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(FIXTURES / "hf-llama" / "tokenizer.model", a.out / "tokenizer.model")
    pad = {"content": "<pad>", "special": True}
    (a.out / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "added_tokens_decoder": {str(s["vocab"] - 1): pad}}))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
