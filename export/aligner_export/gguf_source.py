"""Read a Llama-architecture GGUF file: hyper-parameters, dequantized weights and tokenizer data.

llama.cpp stores the Q and K projections permuted for its interleaved rotary layout; we undo
that so the graph can use the Hugging Face (half-split) rotary form that ONNX Runtime's
GroupQueryAttention implements with `rotary_interleaved=0`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .errors import ExportError
from .model_config import ModelConfig

GGUF_ARCHITECTURES = ("llama",)  # llama.cpp also files Mistral under "llama"

# Hugging Face tensor names (what the graph builder asks for) -> GGUF names.
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    parts = hf_name.split(".", 3)  # model, layers, i, rest
    if len(parts) == 4 and parts[1] == "layers" and parts[3] in _LAYER_NAMES:
        return f"blk.{parts[2]}.{_LAYER_NAMES[parts[3]]}"
    raise ExportError(f"no GGUF tensor corresponds to '{hf_name}'")


def _field_value(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute` for q/k weights (rows are output features)."""
    rows = w.shape[0]
    head_dim = rows // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GgufCheckpoint:
    """A memory-mapped GGUF file; tensors are dequantized one at a time on request."""

    def __init__(self, path: Path):
        import gguf

        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"source file {self.path} does not exist; pass the path of a .gguf file")
        try:
            self.reader = gguf.GGUFReader(str(self.path))
        except Exception as exc:  # gguf raises ValueError/struct.error/etc on corrupt files
            raise ExportError(f"{self.path} is not a readable GGUF file ({exc}); re-download or re-convert it") from exc
        self._tensors = {t.name: t for t in self.reader.tensors}
        self.config = self._read_config()

    def _read_config(self) -> ModelConfig:
        r = self.reader
        arch = _field_value(r, "general.architecture")
        if arch not in GGUF_ARCHITECTURES:
            raise ExportError(
                f"unsupported architecture '{arch}' in {self.path.name}; GGUF input handles: "
                + ", ".join(GGUF_ARCHITECTURES)
                + " (convert other architectures from their Hugging Face folder)"
            )

        def req(key: str):
            v = _field_value(r, f"{arch}.{key}")
            if v is None:
                raise ExportError(f"{self.path.name} lacks metadata '{arch}.{key}'; the file is incomplete")
            return v

        hidden = int(req("embedding_length"))
        n_heads = int(req("attention.head_count"))
        n_kv = int(_field_value(r, f"{arch}.attention.head_count_kv") or n_heads)
        head_dim = int(_field_value(r, f"{arch}.rope.dimension_count") or hidden // n_heads)
        if _field_value(r, f"{arch}.rope.scaling.type") not in (None, "none"):
            raise ExportError(f"{self.path.name} uses rope scaling, which this exporter does not support yet")
        tokens = _field_value(r, "tokenizer.ggml.tokens")
        vocab = int(_field_value(r, f"{arch}.vocab_size") or (len(tokens) if tokens else 0))
        eos = _field_value(r, "tokenizer.ggml.eos_token_id")
        eot = _field_value(r, "tokenizer.ggml.eot_token_id")
        eos_ids = [int(x) for x in (eos, eot) if x is not None]
        eos_ids = list(dict.fromkeys(eos_ids))
        bos = _field_value(r, "tokenizer.ggml.bos_token_id")
        pad = _field_value(r, "tokenizer.ggml.padding_token_id")
        return ModelConfig(
            architecture=arch,
            num_layers=int(req("block_count")),
            hidden_size=hidden,
            num_heads=n_heads,
            num_kv_heads=n_kv,
            head_dim=head_dim,
            intermediate_size=int(req("feed_forward_length")),
            vocab_size=vocab,
            rope_theta=float(_field_value(r, f"{arch}.rope.freq_base") or 10000.0),
            rms_norm_eps=float(req("attention.layer_norm_rms_epsilon")),
            context_length=int(req("context_length")),
            tied_embeddings="output.weight" not in self._tensors,
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=eos_ids,
            pad_token_id=None if pad is None else int(pad),
            chat_template=_field_value(r, "tokenizer.chat_template"),
            name=str(_field_value(r, "general.name") or self.path.stem),
        )

    def sha256(self) -> str:
        return sha256_of(self.path)

    def tensor(self, hf_name: str) -> np.ndarray:
        """Dequantized float32 weight, by Hugging Face name and in Hugging Face layout."""
        import gguf

        name = gguf_name(hf_name)
        t = self._tensors.get(name)
        if t is None:
            raise ExportError(f"{self.path.name} lacks tensor '{name}'; the file is incomplete")
        qtype = t.tensor_type
        if qtype == gguf.GGMLQuantizationType.F32:
            w = np.array(t.data, dtype=np.float32)
        elif qtype in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16):
            w = gguf.quants.dequantize(t.data, qtype).astype(np.float32)
        else:
            try:
                w = gguf.quants.dequantize(t.data, qtype).astype(np.float32)
            except NotImplementedError as exc:
                raise ExportError(
                    f"tensor '{name}' uses GGUF type {qtype.name}, which cannot be dequantized here; "
                    "convert the model with a Q8_0, Q4_0, Q4_1, F16 or F32 quantization"
                ) from exc
        # GGUF lists dims fastest-first; numpy's view is already [rows, cols].
        expected = tuple(int(d) for d in reversed(t.shape))
        w = w.reshape(expected)
        c = self.config
        if name.endswith("attn_q.weight"):
            w = unpermute_rotary(w, c.num_heads)
        elif name.endswith("attn_k.weight"):
            w = unpermute_rotary(w, c.num_kv_heads)
        return np.ascontiguousarray(w)

    def tokenizer_fields(self) -> dict:
        r = self.reader
        return {
            "model": _field_value(r, "tokenizer.ggml.model"),
            "pre": _field_value(r, "tokenizer.ggml.pre"),
            "tokens": _field_value(r, "tokenizer.ggml.tokens"),
            "token_type": _field_value(r, "tokenizer.ggml.token_type"),
            "merges": _field_value(r, "tokenizer.ggml.merges"),
            "scores": _field_value(r, "tokenizer.ggml.scores"),
            "add_space_prefix": _field_value(r, "tokenizer.ggml.add_space_prefix"),
            "unk": _field_value(r, "tokenizer.ggml.unknown_token_id"),
            "add_bos": _field_value(r, "tokenizer.ggml.add_bos_token"),
            "bos": self.config.bos_token_id,
            "eos": self.config.eos_token_ids,
        }
