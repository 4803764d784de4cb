"""The Llama decoder as an ONNX graph over ONNX Runtime's fused CPU contrib ops.

Inputs and outputs follow onnxruntime-genai's naming so that one folder serves both runtimes:
`input_ids`, `attention_mask`, `past_key_values.{i}.key/value` in; `logits`,
`present.{i}.key/value` out. GroupQueryAttention derives positions and causal masking from
`attention_mask` (seqlens_k / total_sequence_length) and applies rotary itself, so there is no
`position_ids` input, and it supports the past/present shared-buffer mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from .gguf_source import ModelConfig
from .onnx_writer import GraphWriter
from .quant import quantize_blockwise

MS = "com.microsoft"


@dataclass
class QuantOptions:
    precision: str = "int8"  # int8 | fp32
    block_size: int = 32
    accuracy_level: int = 4  # MatMulNBits: 0 = fp32 compute, 4 = int8 activations

    @property
    def quantized(self) -> bool:
        return self.precision == "int8"


def rotary_caches(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables [context_length, head_dim/2], computed as Hugging Face Llama does."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    t = np.arange(cfg.context_length, dtype=np.int64).astype(np.float32)
    freqs = np.outer(t, inv_freq).astype(np.float32)
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


class LlamaGraphBuilder:
    def __init__(self, g: GraphWriter, cfg: ModelConfig, quant: QuantOptions):
        self.g = g
        self.cfg = cfg
        self.quant = quant
        self.embedding_quant = None  # set when the embedding is quantized and may be shared

    # -- building blocks ----------------------------------------------------------------------
    def linear(self, x: str, weight: np.ndarray, name: str) -> str:
        """x @ weight.T for a weight stored [out_features, in_features]."""
        g = self.g
        if not self.quant.quantized:
            w = g.weight(f"{name}.weight", np.ascontiguousarray(weight.T.astype(np.float32)))
            return g.one("MatMul", [x, w], name)
        qw = quantize_blockwise(weight, 8, self.quant.block_size)
        return self._matmul_nbits(x, qw, name)

    def _matmul_nbits(self, x: str, qw, name: str, shared: tuple[str, str, str] | None = None) -> str:
        g = self.g
        if shared is None:
            b = g.weight(f"{name}.weight_q", qw.data)
            s = g.weight(f"{name}.scales", qw.scales)
            z = g.weight(f"{name}.zero_points", qw.zero_points)
        else:
            b, s, z = shared
        return g.one(
            "MatMulNBits",
            [x, b, s, z],
            name,
            domain=MS,
            K=qw.k,
            N=qw.n,
            bits=qw.bits,
            block_size=qw.block_size,
            accuracy_level=self.quant.accuracy_level,
        )

    def embedding(self, ids: str, table: np.ndarray) -> str:
        g = self.g
        if not self.quant.quantized:
            w = g.weight("model.embed_tokens.weight", table.astype(np.float32))
            return g.one("Gather", [w, ids], "/model/embed_tokens/Gather")
        qw = quantize_blockwise(table, 8, self.quant.block_size)
        data = g.weight("model.embed_tokens.weight_q", qw.data)
        scales = g.weight("model.embed_tokens.scales", qw.scales)
        zeros = g.weight("model.embed_tokens.zero_points", qw.zero_points)
        self.embedding_quant = (qw, (data, scales, zeros))
        # Gather the int8 rows and dequantize only those. The [V, K/block, block] table is the
        # one the tied lm_head's MatMulNBits reads, so it is stored once.
        p = "/model/embed_tokens"
        rows = g.one("Cast", [g.one("Gather", [data, ids], f"{p}/Gather")], f"{p}/CastRows", to=TensorProto.FLOAT)
        zero = g.one("Cast", [g.one("Gather", [zeros, ids], f"{p}/GatherZeros")], f"{p}/CastZeros", to=TensorProto.FLOAT)
        scale = g.one("Gather", [scales, ids], f"{p}/GatherScales")
        last = g.const_i64("/model/constants/axis_last", [-1])
        centered = g.one("Sub", [rows, g.one("Unsqueeze", [zero, last], f"{p}/UnsqueezeZeros")], f"{p}/Sub")
        scaled = g.one("Mul", [centered, g.one("Unsqueeze", [scale, last], f"{p}/UnsqueezeScales")], f"{p}/Mul")
        shape = g.one("Shape", [ids], f"{p}/Shape")
        out_shape = g.one("Concat", [shape, g.const_i64("/model/constants/hidden", [self.cfg.hidden_size])], f"{p}/Concat", axis=0)
        return g.one("Reshape", [scaled, out_shape], f"{p}/Reshape")

    def lm_head(self, x: str, weight: np.ndarray | None) -> str:
        """weight None means tied to the embedding table."""
        g = self.g
        name = "/lm_head/MatMul"
        if self.quant.quantized:
            if weight is None:
                qw, shared = self.embedding_quant
                return self._matmul_nbits(x, qw, name, shared)
            return self._matmul_nbits(x, quantize_blockwise(weight, 8, self.quant.block_size), name)
        if weight is not None:
            return self.linear(x, weight, name)
        # Tied fp32: Gemm with transB reuses the [V, H] embedding table instead of a transposed copy.
        hidden = self.cfg.hidden_size
        flat = g.one("Reshape", [x, g.const_i64("/model/constants/flat_hidden", [-1, hidden])], "/lm_head/Reshape")
        logits2d = g.one("Gemm", [flat, "model.embed_tokens.weight"], "/lm_head/Gemm", transB=1)
        shape_x = g.one("Shape", [x], "/lm_head/Shape", start=0, end=2)
        vocab = g.const_i64("/model/constants/vocab", [self.cfg.vocab_size])
        out_shape = g.one("Concat", [shape_x, vocab], "/lm_head/Concat", axis=0)
        return g.one("Reshape", [logits2d, out_shape], "/lm_head/Reshape_out")

    # -- whole model --------------------------------------------------------------------------
    def build(self, weights) -> None:
        """`weights(name)` returns a float32 array in Hugging Face layout for a GGUF tensor name."""
        g, cfg = self.g, self.cfg
        kvh, d = cfg.num_kv_heads, cfg.head_dim
        g.add_input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
        g.add_input("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])
        for i in range(cfg.num_layers):
            for kind in ("key", "value"):
                g.add_input(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, ["batch_size", kvh, "past_sequence_length", d])
        g.add_output("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", cfg.vocab_size])
        for i in range(cfg.num_layers):
            for kind in ("key", "value"):
                g.add_output(f"present.{i}.{kind}", TensorProto.FLOAT, ["batch_size", kvh, "total_sequence_length", d])

        # Sequence bookkeeping for GroupQueryAttention, derived from the mask once.
        mask_sum = g.one("ReduceSum", ["attention_mask", g.const_i64("/model/constants/axis1", [1])], "/model/attn_mask/ReduceSum", keepdims=0)
        seqlens = g.one("Sub", [mask_sum, g.const_i64("/model/constants/one", 1)], "/model/attn_mask/Sub")
        seqlens_k = g.one("Cast", [seqlens], "/model/attn_mask/seqlens_k", to=TensorProto.INT32)
        mask_shape = g.one("Shape", ["attention_mask"], "/model/attn_mask/Shape")
        total_len = g.one("Gather", [mask_shape, g.const_i64("/model/constants/idx1", 1)], "/model/attn_mask/Gather", axis=0)
        total_len32 = g.one("Cast", [total_len], "/model/attn_mask/total_seq_len", to=TensorProto.INT32)
        cos, sin = rotary_caches(cfg)
        cos_name = g.weight("cos_cache", cos)
        sin_name = g.weight("sin_cache", sin)

        hidden = self.embedding("input_ids", weights("token_embd.weight"))
        eps = float(cfg.rms_norm_eps)
        residual = None
        pending = hidden  # value to add into the residual stream before the next norm
        for i in range(cfg.num_layers):
            p = f"/model/layers.{i}"
            attn_norm = g.weight(f"model.layers.{i}.input_layernorm.weight", weights(f"blk.{i}.attn_norm.weight"))
            if residual is None:
                normed = g.one("SimplifiedLayerNormalization", [pending, attn_norm], f"{p}/input_layernorm/LayerNorm", axis=-1, epsilon=eps, stash_type=1)
                residual = pending
            else:
                normed, residual = self._skip_norm(pending, residual, attn_norm, f"{p}/input_layernorm/SkipLayerNorm", eps)

            qkv_w = np.concatenate(
                [weights(f"blk.{i}.attn_q.weight"), weights(f"blk.{i}.attn_k.weight"), weights(f"blk.{i}.attn_v.weight")], axis=0
            )
            qkv = self.linear(normed, qkv_w, f"{p}/attn/qkv_proj/MatMul")
            del qkv_w
            attn_out, _, _ = g.node(
                "GroupQueryAttention",
                [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k, total_len32, cos_name, sin_name],
                [f"{p}/attn/GroupQueryAttention/output_0", f"present.{i}.key", f"present.{i}.value"],
                f"{p}/attn/GroupQueryAttention",
                domain=MS,
                num_heads=cfg.num_heads,
                kv_num_heads=kvh,
                scale=float(1.0 / np.sqrt(d)),
                do_rotary=1,
                rotary_interleaved=0,
                local_window_size=-1,
            )
            o = self.linear(attn_out, weights(f"blk.{i}.attn_output.weight"), f"{p}/attn/o_proj/MatMul")

            ffn_norm = g.weight(f"model.layers.{i}.post_attention_layernorm.weight", weights(f"blk.{i}.ffn_norm.weight"))
            normed2, residual = self._skip_norm(o, residual, ffn_norm, f"{p}/post_attention_layernorm/SkipLayerNorm", eps)
            gate_up_w = np.concatenate([weights(f"blk.{i}.ffn_gate.weight"), weights(f"blk.{i}.ffn_up.weight")], axis=0)
            gate_up = self.linear(normed2, gate_up_w, f"{p}/mlp/gate_up_proj/MatMul")
            del gate_up_w
            ffn = cfg.intermediate_size
            split = g.const_i64("/model/constants/ffn_split", [ffn, ffn])
            gate, up = g.node("Split", [gate_up, split], [f"{p}/mlp/gate", f"{p}/mlp/up"], f"{p}/mlp/Split", axis=-1)
            sig = g.one("Sigmoid", [gate], f"{p}/mlp/act_fn/Sigmoid")
            act = g.one("Mul", [gate, sig], f"{p}/mlp/act_fn/Mul")
            prod = g.one("Mul", [act, up], f"{p}/mlp/Mul")
            pending = self.linear(prod, weights(f"blk.{i}.ffn_down.weight"), f"{p}/mlp/down_proj/MatMul")

        final_norm = g.weight("model.norm.weight", weights("output_norm.weight"))
        normed, _ = self._skip_norm(pending, residual, final_norm, "/model/norm/SkipLayerNorm", eps)
        lm_weight = None if cfg.tied_embeddings else weights("output.weight")
        logits = self.lm_head(normed, lm_weight)
        g.node("Identity", [logits], ["logits"], "/lm_head/Identity")

    def _skip_norm(self, x: str, residual: str, gamma: str, name: str, eps: float) -> tuple[str, str]:
        out, _, _, summed = self.g.node(
            "SkipSimplifiedLayerNormalization",
            [x, residual, gamma],
            [f"{name}/output_0", "", "", f"{name}/output_3"],
            name,
            domain=MS,
            epsilon=eps,
        )
        return out, summed
