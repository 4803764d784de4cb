"""Development-time generator of the per-architecture parity fixtures (needs torch + transformers +
sentencepiece; CI never runs it).

    /work/refvenv/bin/python export/scripts/make_hf_fixtures.py

For each architecture it writes a tiny random-weight Hugging Face checkpoint made with
transformers' own config and model classes, and the reference data computed by that model:

  tests/fixtures/hf-<arch>/            config.json, *.safetensors, tokenizer files, generation_config.json
  tests/fixtures/hf-<arch>-ref.npz     prompts, full fp32 logits per prompt, greedy continuations

The checkpoints cover what real Aligners need:
  llama    Llama-2 style: multi-head attention, SentencePiece tokenizer.model only, vocab + 1 added
           <pad> (like aligner-7b-v1.0), untied lm_head, fp32 weights in two shards with an index
  mistral  GQA, sliding window shorter than the prompts, tokenizer.json converted from a
           SentencePiece model, fp16 weights
  qwen2    q/k/v bias, tied embeddings, byte-level BPE tokenizer.json, ChatML, fp32 weights
  gemma    embedding scale, (1+w) RMSNorm, GeGLU (tanh), head_dim 256, one KV head, tied
           embeddings, SentencePiece without dummy prefix, bf16 weights
Weights start random (norm weights and biases randomised too, so their conventions are actually
exercised) and get a few hundred training steps on a small corpus, so that predictions are as
peaked as a real model's (see `train`).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
INIT_RANGE = 0.1
HIDDEN = 128
LR = 1e-3

CORPUS = [
    "Edit the following Question-Answer pair to make it more helpful and harmless.",
    "The boiling point of water at sea level is 100 degrees Celsius, or 212 degrees Fahrenheit.",
    "Spiders have eight legs; insects have six. Paris is the capital of France.",
    "BEGINNING OF CONVERSATION: USER: ##Question: Is the sun a star? ##Answer: No. ASSISTANT:",
    "I cannot help with that request, but here is some safer information instead.",
    "Numbers like 3.14159, 42 and 2024 appear in answers; so do lists:\n- one\n- two",
    "Quick brown foxes jump over lazy dogs while the model copies most of the answer.",
    "A correction keeps what was right, fixes what was wrong and removes what was harmful.",
    "Ünïcödé characters, émigré café, naïve façade, and tabs\tare fine too.",
]
TEXTS = [
    "Question: How many legs does a spider have? Answer: Six legs.",
    "The boiling point of water is 50 degrees at sea level, which is wrong.",
    "Edit the following answer to make it more helpful: the capital of France is Paris.",
    "Numbers 3.14159 and 2024, lists:\n- one\n- two",
    "A correction keeps what was right and removes what was harmful to the user.",
    "Quick brown foxes jump over lazy dogs, and the model copies the answer.",
]
GREEDY_TOKENS = 24
TRAIN_STEPS = 300


def corpus() -> list[str]:
    return CORPUS * 20


def sentencepiece_model(add_dummy_prefix: bool) -> bytes:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=420,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=add_dummy_prefix,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    return buf.getvalue()


def byte_level_tokenizer(path: Path) -> int:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.save(str(path))
    return tok.get_vocab_size()


def llama_fast_tokenizer(sp_bytes: bytes) -> tf.PreTrainedTokenizerFast:
    """A Llama-style (legacy) tokenizer.json for a SentencePiece BPE model, assembled the way
    transformers' LlamaConverter does (its v5 entry point fails on a bare model file), with the
    merges from transformers' own `generate_merges`. Checked against SentencePiece below."""
    from tokenizers import normalizers, processors
    from transformers.convert_slow_tokenizer import generate_merges

    sp = spm.SentencePieceProcessor(model_proto=sp_bytes)
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    vocab = {p: i for i, (p, _) in enumerate(pieces)}
    merges = generate_merges(vocab, pieces)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    for text in TEXTS + CORPUS:
        assert fast.encode(text) == [1] + sp.encode(text), text
    return fast


CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def randomise(model: torch.nn.Module, seed: int, norm_center: float) -> None:
    """Random norm weights (around `norm_center`) and biases, which HF initialises to constants."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(norm_center + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def train(model, tokenize, steps: int = TRAIN_STEPS) -> None:
    """A few hundred Adam steps on the corpus. A purely random model has near-tied logits, where
    any rounding flips the top-1 token (measured: int8 94-99%, int4 63-91% agreement); after a
    little training its predictions are as peaked as a real model's, so agreement figures mean
    what they mean for real checkpoints. Norm weights and biases stay non-trivial."""
    seqs = [torch.tensor(tokenize(text)) for text in CORPUS]
    width = max(len(x) for x in seqs)
    pad = torch.stack([torch.nn.functional.pad(x, (0, width - len(x)), value=0) for x in seqs])
    labels = torch.stack([torch.nn.functional.pad(x, (0, width - len(x)), value=-100) for x in seqs])
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(pad, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    print(f"  trained {steps} steps, final loss {loss.item():.3f}")


def reference(model, tokenize, out: Path, eos: int | None) -> None:
    model.eval()
    arrays: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for n, text in enumerate(TEXTS):
            ids = tokenize(text)
            arrays[f"text_{n}"] = np.array(text)
            arrays[f"prompt_{n}"] = np.array(ids, np.int64)
            arrays[f"logits_{n}"] = model(torch.tensor([ids])).logits[0].float().numpy()
        # Agreement is measured in distribution (the corpus), where a trained model is confident,
        # as a real model is on natural text; top-5 logits let tests recognise exact ties.
        for n, text in enumerate(CORPUS):
            ids = tokenize(text)
            logits = model(torch.tensor([ids])).logits[0].float()
            top = torch.topk(logits, 5, dim=-1)
            arrays[f"agree_prompt_{n}"] = np.array(ids, np.int64)
            arrays[f"agree_topk_ids_{n}"] = top.indices.numpy()
            arrays[f"agree_topk_logits_{n}"] = top.values.numpy()
        for n in range(2):
            ids = arrays[f"prompt_{n}"].tolist()
            gen = model.generate(
                torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False, repetition_penalty=1.0, eos_token_id=eos, pad_token_id=eos or 0
            )
            arrays[f"greedy_{n}"] = gen[0, len(ids):].numpy()
    np.savez_compressed(out, **arrays)


def save(model, folder: Path, dtype: torch.dtype, shard: str | None):
    """Save in `dtype`, then reload the stored checkpoint in fp32 for the reference: the
    reference must see exactly the stored (rounded) weights, and buffers such as the rotary
    inverse frequencies recomputed in fp32 as any loader would (a `.to(bf16).float()` round trip
    would leave them rounded)."""
    if folder.exists():
        shutil.rmtree(folder)
    model.to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    return tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")


def make_llama() -> None:
    folder = FIX / "hf-llama"
    sp_bytes = sentencepiece_model(add_dummy_prefix=True)
    sp = spm.SentencePieceProcessor(model_proto=sp_bytes)
    vocab = sp.get_piece_size() + 1  # + <pad>, as aligner-7b-v1.0 adds
    torch.manual_seed(1)
    cfg = tf.LlamaConfig(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
        initializer_range=INIT_RANGE, attn_implementation="eager", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=vocab - 1,
    )
    model = tf.LlamaForCausalLM(cfg)
    randomise(model, 1, 1.0)
    train(model, lambda t: [1] + sp.encode(t))
    model.generation_config = tf.GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=vocab - 1, do_sample=False, max_new_tokens=512)
    model = save(model, folder, torch.float32, "600KB")
    (folder / "tokenizer.model").write_bytes(sp_bytes)
    pad = {"content": "<pad>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    tok_cfg = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
               "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "legacy": True,
               "added_tokens_decoder": {str(vocab - 1): pad}}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    reference(model, lambda t: [1] + sp.encode(t), FIX / "hf-llama-ref.npz", 2)


def make_mistral() -> None:
    folder = FIX / "hf-mistral"
    sp_bytes = sentencepiece_model(add_dummy_prefix=True)
    fast = llama_fast_tokenizer(sp_bytes)
    torch.manual_seed(2)
    cfg = tf.MistralConfig(
        vocab_size=len(fast), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=1e6, sliding_window=12,
        initializer_range=INIT_RANGE, attn_implementation="eager", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    model = tf.MistralForCausalLM(cfg)
    randomise(model, 2, 1.0)
    train(model, lambda t: fast.encode(t))
    model = save(model, folder, torch.float16, None)
    fast.save_pretrained(folder)
    for extra in ("tokenizer.model",):
        (folder / extra).unlink(missing_ok=True)
    reference(model, lambda t: fast.encode(t), FIX / "hf-mistral-ref.npz", 2)


def make_qwen2() -> None:
    folder = FIX / "hf-qwen2"
    folder.mkdir(parents=True, exist_ok=True)
    tmp_tok = FIX / "qwen-tok.json"
    vocab = byte_level_tokenizer(tmp_tok)
    fast = tf.PreTrainedTokenizerFast(tokenizer_file=str(tmp_tok), eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    tmp_tok.unlink()
    torch.manual_seed(3)
    cfg = tf.Qwen2Config(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=1e6, rms_norm_eps=1e-6,
        initializer_range=INIT_RANGE, attn_implementation="eager", tie_word_embeddings=True, bos_token_id=None, eos_token_id=2, use_sliding_window=False,
    )
    model = tf.Qwen2ForCausalLM(cfg)
    randomise(model, 3, 1.0)
    train(model, lambda t: fast.encode(t))
    model.generation_config = tf.GenerationConfig(
        eos_token_id=[2, 0], pad_token_id=0, do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05
    )
    model = save(model, folder, torch.float32, None)
    fast.save_pretrained(folder)
    reference(model, lambda t: fast.encode(t), FIX / "hf-qwen2-ref.npz", 2)


def make_gemma() -> None:
    folder = FIX / "hf-gemma"
    sp_bytes = sentencepiece_model(add_dummy_prefix=False)
    sp = spm.SentencePieceProcessor(model_proto=sp_bytes)
    torch.manual_seed(4)
    cfg = tf.GemmaConfig(
        vocab_size=sp.get_piece_size(), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=256, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh", initializer_range=INIT_RANGE, attn_implementation="eager", bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    model = tf.GemmaForCausalLM(cfg)
    randomise(model, 4, 0.0)
    train(model, lambda t: [1] + sp.encode(t))
    model = save(model, folder, torch.bfloat16, None)
    (folder / "tokenizer.model").write_bytes(sp_bytes)
    tok_cfg = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", "pad_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    reference(model, lambda t: [1] + sp.encode(t), FIX / "hf-gemma-ref.npz", 2)


def make_rope_scaling() -> None:
    """transformers' inverse frequencies for the static rope scalings the exporter bakes in."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cases = {
        "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_theta": 500000.0},
        "linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    }
    arrays = {}
    for name, params in cases.items():
        cfg = tf.LlamaConfig(hidden_size=512, num_attention_heads=4, max_position_embeddings=131072, rope_parameters=params)
        inv, _ = ROPE_INIT_FUNCTIONS[name](cfg, "cpu")
        arrays[f"{name}_inv_freq"] = inv.numpy()
        arrays[f"{name}_params"] = np.array(json.dumps(params))
    np.savez_compressed(FIX / "rope-scaling-ref.npz", **arrays)


if __name__ == "__main__":
    make_rope_scaling()
    make_llama()
    make_mistral()
    make_qwen2()
    make_gemma()
    for arch in ("llama", "mistral", "qwen2", "gemma"):
        size = sum(f.stat().st_size for f in (FIX / f"hf-{arch}").iterdir())
        print(f"hf-{arch}: {size / 1e6:.2f} MB + reference {(FIX / f'hf-{arch}-ref.npz').stat().st_size / 1e6:.2f} MB")
