"""A plain numpy fp32 forward pass of the supported decoders: the reference `verify` compares
an exported folder against. It reads the source checkpoint's own weights through the same
readers as the exporter but shares none of the graph code, and it is itself checked against
Hugging Face transformers' logits by the parity tests.

It runs layer-major over all prompts, holding one layer's weights at a time, so verifying a 7B
checkpoint needs about one layer of fp32 weights in memory.
"""

from __future__ import annotations

import numpy as np

from .model_config import ModelConfig, inverse_frequencies


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7); numpy has no erf.
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def activation(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "silu":
        return x / (1.0 + np.exp(-x))
    if kind == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Half-split rotary on [seq, heads, head_dim] with cos/sin [seq, head_dim/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def attention(cfg: ModelConfig, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    seq, heads, d = q.shape
    group = heads // cfg.num_kv_heads
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d)
    i = np.arange(seq)[:, None]
    j = np.arange(seq)[None, :]
    allowed = j <= i
    if cfg.sliding_window:
        allowed &= (i - j) < cfg.sliding_window
    scores = np.where(allowed[None], scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", probs, v).reshape(seq, heads * d)


def reference_logits(cfg: ModelConfig, weights, prompts: list[list[int]]) -> list[np.ndarray]:
    """fp32 logits [len(prompt), vocab] for each prompt."""
    table = weights("model.embed_tokens.weight")
    states = [table[np.array(ids)].astype(np.float32) for ids in prompts]
    if cfg.embedding_multiplier is not None:
        states = [x * np.float32(cfg.embedding_multiplier) for x in states]
    if not cfg.tied_embeddings:
        del table
    longest = max(len(p) for p in prompts)
    freqs = np.outer(np.arange(longest, dtype=np.float32), inverse_frequencies(cfg))
    cos, sin = np.cos(freqs), np.sin(freqs)
    h, d, eps = cfg.num_heads, cfg.head_dim, cfg.rms_norm_eps
    kvh = cfg.num_kv_heads
    for layer in range(cfg.num_layers):
        p = f"model.layers.{layer}"
        ln1, ln2 = weights(f"{p}.input_layernorm.weight"), weights(f"{p}.post_attention_layernorm.weight")
        wq, wk, wv = (weights(f"{p}.self_attn.{n}_proj.weight") for n in ("q", "k", "v"))
        bq, bk, bv = (weights(f"{p}.self_attn.{n}_proj.bias") if cfg.qkv_bias else 0.0 for n in ("q", "k", "v"))
        wo = weights(f"{p}.self_attn.o_proj.weight")
        wg, wu, wd = (weights(f"{p}.mlp.{n}_proj.weight") for n in ("gate", "up", "down"))
        for n, x in enumerate(states):
            s = x.shape[0]
            xn = rms_norm(x, ln1, eps)
            q = (xn @ wq.T + bq).reshape(s, h, d)
            k = (xn @ wk.T + bk).reshape(s, kvh, d)
            v = (xn @ wv.T + bv).reshape(s, kvh, d)
            q, k = rotate(q, cos[:s], sin[:s]), rotate(k, cos[:s], sin[:s])
            x = x + attention(cfg, q, k, v) @ wo.T
            xn = rms_norm(x, ln2, eps)
            x = x + (activation(cfg.activation, xn @ wg.T) * (xn @ wu.T)) @ wd.T
            states[n] = x.astype(np.float32)
        del wq, wk, wv, wo, wg, wu, wd
    final = weights("model.norm.weight")
    head = table if cfg.tied_embeddings else weights("lm_head.weight")
    return [(rms_norm(x, final, eps) @ head.T).astype(np.float32) for x in states]
