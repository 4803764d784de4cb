"""The decoder (Llama, Mistral, Qwen2, Gemma) as an ONNX graph over ONNX Runtime's fused contrib ops.

Inputs and outputs follow onnxruntime-genai's naming so that one folder serves both runtimes:
`input_ids`, `attention_mask`, `past_key_values.{i}.key/value` in; `logits`,
`present.{i}.key/value` out. GroupQueryAttention derives positions and causal masking from
`attention_mask` (seqlens_k / total_sequence_length), applies rotary itself and supports the
past/present shared-buffer mode, so there is no `position_ids` input.

Precisions: fp32 and fp16 keep float weights (fp16 also runs activations and the KV cache in
fp16, the form CUDA wants); int8 and int4 store every projection as MatMulNBits blocks with fp32
activations. The embedding table and lm_head are 8-bit in both quantized forms: they are one
table when tied, and 8 bits there costs little while keeping the output distribution sharp.
The architecture differences are small and explicit: q/k/v bias (Qwen2), embedding scale and
tanh-GELU (Gemma), sliding window (Mistral), head_dim independent of hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from .errors import ExportError
from .model_config import ModelConfig, rotary_caches
from .onnx_writer import GraphWriter
from .quant import BlockQuantized, quantize_rows

MS = "com.microsoft"
PRECISIONS = ("int8", "int4", "fp16", "fp32")
LOGITS_TO_KEEP = "logits_to_keep"
TARGETS = ("cpu", "cuda")


@dataclass
class QuantOptions:
    precision: str = "int8"  # int8 | int4 | fp16 | fp32
    block_size: int = 32
    accuracy_level: int = 4  # MatMulNBits: 0 = fp32 compute, 4 = int8 activations
    target: str = "cpu"  # cpu | cuda: quantized graphs for CUDA run fp16 activations and KV cache
    symmetric: bool = False  # True: no zero points (see quant.quantize_blockwise)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExportError(f"--precision {self.precision} is not supported; use one of: {', '.join(PRECISIONS)}")
        if self.target not in TARGETS:
            raise ExportError(f"--target {self.target} is not supported; use one of: {', '.join(TARGETS)}")
        if self.target == "cuda" and self.precision == "fp32":
            raise ExportError("--precision fp32 graphs are for the CPU (CUDA's GroupQueryAttention needs fp16); use fp16, int8 or int4 with --target cuda")

    @property
    def providers(self) -> list[str]:
        """Execution providers the folder is built for, recorded in aligner.json."""
        if self.precision == "fp16":
            return ["cuda", "tensorrt", "cpu"]
        return ["cuda"] if self.target == "cuda" else ["cpu"]

    @property
    def quantized(self) -> bool:
        return self.precision in ("int8", "int4")

    @property
    def bits(self) -> int:
        return 4 if self.precision == "int4" else 8

    @property
    def half(self) -> bool:
        return self.precision == "fp16" or (self.quantized and self.target == "cuda")

    @property
    def float_type(self) -> int:
        return TensorProto.FLOAT16 if self.half else TensorProto.FLOAT

    @property
    def numpy_float(self) -> type:
        return np.float16 if self.half else np.float32


class DecoderGraphBuilder:
    def __init__(self, g: GraphWriter, cfg: ModelConfig, quant: QuantOptions):
        self.g = g
        self.cfg = cfg
        self.quant = quant
        self.embedding_quant: tuple[BlockQuantized, tuple[str, str, str]] | None = None

    def _float(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array, dtype=self.quant.numpy_float)

    # -- building blocks ----------------------------------------------------------------------
    def linear(self, x: str, parts: list[np.ndarray], name: str, bias: list[np.ndarray] | None = None, bits: int | None = None) -> str:
        """x @ concat(parts).T (+ bias) for weights stored [out_features, in_features]; several
        parts make one packed projection (q/k/v, gate/up) without an fp32 concatenation."""
        g = self.g
        if self.quant.quantized:
            qw = quantize_rows(parts, bits or self.quant.bits, self.quant.block_size, self.quant.symmetric)
            y = self._matmul_nbits(x, qw, name)
        else:
            w = np.concatenate([self._float(p).T for p in parts], axis=1) if len(parts) > 1 else self._float(parts[0]).T
            y = g.one("MatMul", [x, g.weight(f"{name}.weight", np.ascontiguousarray(w))], name)
        if bias is not None:
            b = g.weight(f"{name}.bias", self._float(np.concatenate(bias)))
            y = g.one("Add", [y, b], f"{name}/BiasAdd")
        return y

    def _matmul_nbits(self, x: str, qw: BlockQuantized, name: str, shared: tuple[str, str, str] | None = None) -> str:
        g = self.g
        if shared is None:
            b = g.weight(f"{name}.weight_q", qw.data)
            s = g.weight(f"{name}.scales", self._float(qw.scales))
            z = None if qw.zero_points is None else g.weight(f"{name}.zero_points", qw.zero_points)
        else:
            b, s, z = shared
        inputs = [x, b, s] if z is None else [x, b, s, z]
        return g.one(
            "MatMulNBits", inputs, name, domain=MS, K=qw.k, N=qw.n, bits=qw.bits,
            block_size=qw.block_size, accuracy_level=self.quant.accuracy_level,
        )

    def embedding(self, ids: str, table: np.ndarray) -> str:
        g = self.g
        p = "/model/embed_tokens"
        if not self.quant.quantized:
            w = g.weight("model.embed_tokens.weight", self._float(table))
            out = g.one("Gather", [w, ids], f"{p}/Gather")
        else:
            qw = quantize_rows([table], 8, self.quant.block_size, self.quant.symmetric)
            data = g.weight("model.embed_tokens.weight_q", qw.data)
            scales = g.weight("model.embed_tokens.scales", self._float(qw.scales))
            zeros = None if qw.zero_points is None else g.weight("model.embed_tokens.zero_points", qw.zero_points)
            self.embedding_quant = (qw, (data, scales, zeros))
            # Gather the int8 rows and dequantize only those. The [V, K/block, block] table is the
            # one the tied lm_head's MatMulNBits reads, so it is stored once.
            ft = self.quant.float_type
            rows = g.one("Cast", [g.one("Gather", [data, ids], f"{p}/Gather")], f"{p}/CastRows", to=ft)
            scale = g.one("Gather", [scales, ids], f"{p}/GatherScales")
            last = g.const_i64("/model/constants/axis_last", [-1])
            if zeros is None:  # symmetric: the implicit zero point 128
                zero = g.weight("/model/constants/int8_zero_point", self._float(np.array(128.0)))
            else:
                gathered = g.one("Cast", [g.one("Gather", [zeros, ids], f"{p}/GatherZeros")], f"{p}/CastZeros", to=ft)
                zero = g.one("Unsqueeze", [gathered, last], f"{p}/UnsqueezeZeros")
            centered = g.one("Sub", [rows, zero], f"{p}/Sub")
            scaled = g.one("Mul", [centered, g.one("Unsqueeze", [scale, last], f"{p}/UnsqueezeScales")], f"{p}/Mul")
            shape = g.one("Shape", [ids], f"{p}/Shape")
            hidden = g.const_i64("/model/constants/hidden", [self.cfg.hidden_size])
            out_shape = g.one("Concat", [shape, hidden], f"{p}/Concat", axis=0)
            out = g.one("Reshape", [scaled, out_shape], f"{p}/Reshape")
        if self.cfg.embedding_multiplier is not None:
            scale = g.weight("/model/constants/embedding_multiplier", self._float(np.array(self.cfg.embedding_multiplier)))
            out = g.one("Mul", [out, scale], f"{p}/Scale")
        return out

    def lm_head(self, x: str, weight: np.ndarray | None) -> str:
        """weight None means tied to the embedding table."""
        g = self.g
        name = "/lm_head/MatMul"
        if self.quant.quantized:
            if weight is None:
                qw, shared = self.embedding_quant
                return self._matmul_nbits(x, qw, name, shared)
            return self.linear(x, [weight], name, bits=8)
        if weight is not None:
            return self.linear(x, [weight], name)
        # Tied float: Gemm with transB reuses the [V, H] embedding table instead of a transposed copy.
        hidden = self.cfg.hidden_size
        flat = g.one("Reshape", [x, g.const_i64("/model/constants/flat_hidden", [-1, hidden])], "/lm_head/Reshape")
        logits2d = g.one("Gemm", [flat, "model.embed_tokens.weight"], "/lm_head/Gemm", transB=1)
        shape_x = g.one("Shape", [x], "/lm_head/Shape", start=0, end=2)
        vocab = g.const_i64("/model/constants/vocab", [self.cfg.vocab_size])
        out_shape = g.one("Concat", [shape_x, vocab], "/lm_head/Concat", axis=0)
        return g.one("Reshape", [logits2d, out_shape], "/lm_head/Reshape_out")

    def activation(self, gate: str, name: str) -> str:
        g, act = self.g, self.cfg.activation
        if act == "silu":
            return g.one("Mul", [gate, g.one("Sigmoid", [gate], f"{name}/Sigmoid")], f"{name}/Mul")
        return g.one("Gelu", [gate], f"{name}/Gelu", approximate="tanh" if act == "gelu_tanh" else "none")

    # -- whole model --------------------------------------------------------------------------
    def _declare_io(self) -> None:
        g, cfg, ft = self.g, self.cfg, self.quant.float_type
        kvh, d = cfg.num_kv_heads, cfg.head_dim
        g.add_input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
        g.add_input("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])
        for i in range(cfg.num_layers):
            for kind in ("key", "value"):
                g.add_input(f"past_key_values.{i}.{kind}", ft, ["batch_size", kvh, "past_sequence_length", d])
        # Optional: how many trailing positions get logits. Its initializer (0 = all) is the
        # default, so runtimes that never feed it (onnxruntime-genai) see the usual graph.
        g.add_input(LOGITS_TO_KEEP, TensorProto.INT64, [1])
        g.const_i64(LOGITS_TO_KEEP, [0])
        g.add_output("logits", TensorProto.FLOAT, ["batch_size", "logits_sequence_length", cfg.vocab_size])
        for i in range(cfg.num_layers):
            for kind in ("key", "value"):
                g.add_output(f"present.{i}.{kind}", ft, ["batch_size", kvh, "total_sequence_length", d])

    def build(self, weights, on_layer=None) -> None:
        """`weights(name)` returns an fp32 array in Hugging Face layout for a Hugging Face name;
        `on_layer(i, n)` is called after each layer is written (progress reporting)."""
        g, cfg = self.g, self.cfg
        self._declare_io()
        # Sequence bookkeeping for GroupQueryAttention, derived from the mask once.
        mask_sum = g.one("ReduceSum", ["attention_mask", g.const_i64("/model/constants/axis1", [1])], "/model/attn_mask/ReduceSum", keepdims=0)
        seqlens = g.one("Sub", [mask_sum, g.const_i64("/model/constants/one", 1)], "/model/attn_mask/Sub")
        seqlens_k = g.one("Cast", [seqlens], "/model/attn_mask/seqlens_k", to=TensorProto.INT32)
        mask_shape = g.one("Shape", ["attention_mask"], "/model/attn_mask/Shape")
        total_len = g.one("Gather", [mask_shape, g.const_i64("/model/constants/idx1", 1)], "/model/attn_mask/Gather", axis=0)
        total_len32 = g.one("Cast", [total_len], "/model/attn_mask/total_seq_len", to=TensorProto.INT32)
        cos, sin = rotary_caches(cfg)
        rotary = (g.weight("cos_cache", self._float(cos)), g.weight("sin_cache", self._float(sin)))

        hidden = self.embedding("input_ids", weights("model.embed_tokens.weight"))
        eps = float(cfg.rms_norm_eps)
        residual = None
        pending = hidden  # value to add into the residual stream before the next norm
        for i in range(cfg.num_layers):
            p, w = f"/model/layers.{i}", f"model.layers.{i}"
            attn_norm = g.weight(f"{w}.input_layernorm.weight", self._float(weights(f"{w}.input_layernorm.weight")))
            if residual is None:
                normed = g.one("SimplifiedLayerNormalization", [pending, attn_norm], f"{p}/input_layernorm/LayerNorm", axis=-1, epsilon=eps, stash_type=1)
                residual = pending
            else:
                normed, residual = self._skip_norm(pending, residual, attn_norm, f"{p}/input_layernorm/SkipLayerNorm", eps)
            attn_out = self._attention(i, normed, weights, seqlens_k, total_len32, rotary)
            o = self.linear(attn_out, [weights(f"{w}.self_attn.o_proj.weight")], f"{p}/attn/o_proj/MatMul")

            ffn_norm = g.weight(f"{w}.post_attention_layernorm.weight", self._float(weights(f"{w}.post_attention_layernorm.weight")))
            normed2, residual = self._skip_norm(o, residual, ffn_norm, f"{p}/post_attention_layernorm/SkipLayerNorm", eps)
            gate_up = self.linear(normed2, [weights(f"{w}.mlp.gate_proj.weight"), weights(f"{w}.mlp.up_proj.weight")], f"{p}/mlp/gate_up_proj/MatMul")
            ffn = cfg.intermediate_size
            split = g.const_i64("/model/constants/ffn_split", [ffn, ffn])
            gate, up = g.node("Split", [gate_up, split], [f"{p}/mlp/gate", f"{p}/mlp/up"], f"{p}/mlp/Split", axis=-1)
            prod = g.one("Mul", [self.activation(gate, f"{p}/mlp/act_fn"), up], f"{p}/mlp/Mul")
            pending = self.linear(prod, [weights(f"{w}.mlp.down_proj.weight")], f"{p}/mlp/down_proj/MatMul")
            if on_layer is not None:
                on_layer(i + 1, cfg.num_layers)

        final_norm = g.weight("model.norm.weight", self._float(weights("model.norm.weight")))
        normed, _ = self._skip_norm(pending, residual, final_norm, "/model/norm/SkipLayerNorm", eps)
        # Keep the last `logits_to_keep` positions: Slice from -k (k = 0 slices from 0, all of
        # them). Prefill then skips the vocabulary projection of every earlier position.
        normed = g.one(
            "Slice",
            [normed, g.one("Neg", [LOGITS_TO_KEEP], "/lm_head/KeepStart"),
             g.const_i64("/model/constants/int64_max", [np.iinfo(np.int64).max]), g.const_i64("/model/constants/axis1_list", [1])],
            "/lm_head/KeepLast",
        )
        logits = self.lm_head(normed, None if cfg.tied_embeddings else weights("lm_head.weight"))
        if self.quant.float_type != TensorProto.FLOAT:
            logits = g.one("Cast", [logits], "/lm_head/CastLogits", to=TensorProto.FLOAT)
        g.node("Identity", [logits], ["logits"], "/lm_head/Identity")

    def _attention(self, i: int, x: str, weights, seqlens_k: str, total_len: str, rotary: tuple[str, str]) -> str:
        g, cfg = self.g, self.cfg
        p, w = f"/model/layers.{i}/attn", f"model.layers.{i}.self_attn"
        parts = [weights(f"{w}.{k}_proj.weight") for k in ("q", "k", "v")]
        bias = [weights(f"{w}.{k}_proj.bias") for k in ("q", "k", "v")] if cfg.qkv_bias else None
        qkv = self.linear(x, parts, f"{p}/qkv_proj/MatMul", bias)
        out, _, _ = g.node(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k, total_len, *rotary],
            [f"{p}/GroupQueryAttention/output_0", f"present.{i}.key", f"present.{i}.value"],
            f"{p}/GroupQueryAttention",
            domain=MS,
            num_heads=cfg.num_heads,
            kv_num_heads=cfg.num_kv_heads,
            scale=float(1.0 / np.sqrt(cfg.head_dim)),
            do_rotary=1,
            rotary_interleaved=0,
            local_window_size=cfg.sliding_window or -1,
        )
        return out

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
