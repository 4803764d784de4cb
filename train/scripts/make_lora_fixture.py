"""Dev-time fixture (needs .venv-train): a random LoRA adapter for the tiny GGUF fixture and
peft's merged-model logits, so the torch-free exporter's `--lora` merge is checked against peft.

    .venv-train/bin/python train/scripts/make_lora_fixture.py
writes tests/fixtures/tiny-llama-lora/{adapter_config.json, adapter_model.safetensors,
reference.npz}.
"""

from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[2]
GGUF = ROOT / "tests" / "fixtures" / "tiny-llama" / "tiny-llama.gguf"
OUT = ROOT / "tests" / "fixtures" / "tiny-llama-lora"


def main() -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name,
                                                 dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                        "gate_proj", "up_proj", "down_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    with torch.no_grad():  # big enough updates that a wrong merge cannot pass at 1e-4
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(1.5)
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT)
    (OUT / "README.md").unlink(missing_ok=True)
    merged = model.merge_and_unload().eval()
    ref = np.load(ROOT / "tests" / "fixtures" / "tiny-llama" / "reference.npz")
    arrays = {}
    for n in range(5):
        ids = ref[f"prompt_{n}"]
        with torch.no_grad():
            logits = merged(torch.tensor([ids.tolist()])).logits[0].numpy()
        arrays[f"prompt_{n}"], arrays[f"logits_{n}"] = ids, logits.astype(np.float32)
        base = ref[f"logits_{n}"]
        print(f"prompt {n}: max |merged - base| = {np.abs(logits - base).max():.3f}")
    np.savez_compressed(OUT / "reference.npz", **arrays)


if __name__ == "__main__":
    main()
