#!/usr/bin/env python3
"""Development-time helper (needs torch and transformers): a GGUF file as a Hugging Face folder,
so onnxruntime-genai's builder can make its own int8 folder of the same weights.

    python benches/gguf_to_hf.py SRC.gguf OUT_DIR
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

src, out = sys.argv[1], sys.argv[2]
folder, name = os.path.split(src)
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
os.makedirs(out, exist_ok=True)
# Tied embeddings: lm_head.weight is the embedding table, stored once.
weights = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
save_file(weights, f"{out}/model.safetensors", metadata={"format": "pt"})
cfg = model.config
if hasattr(cfg, "quantization_config"):
    del cfg.quantization_config  # the weights written are plain fp32
cfg.architectures = ["LlamaForCausalLM"]  # empty in a GGUF-derived config; the builder needs it
cfg.save_pretrained(out)
tok.save_pretrained(out)
