"""The architecture description every source reader produces and every consumer (graph builder,
numpy reference, manifests) reads. Sources hand out *effective* weights: Gemma's `(1 + w)` norm
weights already offset, llama.cpp's permuted Q/K rows already restored."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ExportError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma")


@dataclass
class ModelConfig:
    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    context_length: int
    tied_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: list[int]
    pad_token_id: int | None
    chat_template: str | None = None
    name: str = ""
    activation: str = "silu"  # silu | gelu_tanh (both gated: act(gate) * up)
    qkv_bias: bool = False
    embedding_multiplier: float | None = None  # Gemma scales embeddings by sqrt(hidden)
    sliding_window: int | None = None
    rope_scaling: dict | None = None
    extra: dict = field(default_factory=dict)


def check_rope_scaling(scaling: dict | None) -> dict | None:
    """Keep the static rope scalings the graph can bake into its cos/sin tables."""
    if not scaling:
        return None
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "default":
        return None
    if kind not in ("linear", "llama3"):
        raise ExportError(f"rope scaling type '{kind}' is not supported; supported: linear, llama3")
    return {**scaling, "rope_type": kind}


def inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """Rotary inverse frequencies as Hugging Face computes them, including static scaling."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    s = cfg.rope_scaling
    if s is None:
        return inv.astype(np.float32)
    factor = float(s["factor"])
    if s["rope_type"] == "linear":
        return (inv / factor).astype(np.float32)
    # llama3: leave high frequencies, divide low ones by `factor`, blend in between.
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s["original_max_position_embeddings"])
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return np.where(medium, blended, scaled).astype(np.float32)


def rotary_caches(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables [context_length, head_dim/2]."""
    t = np.arange(cfg.context_length, dtype=np.int64).astype(np.float32)
    freqs = np.outer(t, inverse_frequencies(cfg)).astype(np.float32)
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the decoder reads, by Hugging Face name, with the shape the config implies."""
    h, d, ffn = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q, kv = cfg.num_heads * d, cfg.num_kv_heads * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tied_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}"
        shapes.update(
            {
                f"{p}.input_layernorm.weight": (h,),
                f"{p}.post_attention_layernorm.weight": (h,),
                f"{p}.self_attn.q_proj.weight": (q, h),
                f"{p}.self_attn.k_proj.weight": (kv, h),
                f"{p}.self_attn.v_proj.weight": (kv, h),
                f"{p}.self_attn.o_proj.weight": (h, q),
                f"{p}.mlp.gate_proj.weight": (ffn, h),
                f"{p}.mlp.up_proj.weight": (ffn, h),
                f"{p}.mlp.down_proj.weight": (h, ffn),
            }
        )
        if cfg.qkv_bias:
            shapes.update({f"{p}.self_attn.q_proj.bias": (q,), f"{p}.self_attn.k_proj.bias": (kv,), f"{p}.self_attn.v_proj.bias": (kv,)})
    return shapes
