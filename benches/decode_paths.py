#!/usr/bin/env python3
"""Which passes of ONNX Runtime give the same logits: why drafted greedy output can differ
from plain greedy output on a real model, measured rather than guessed.

A correction decodes one token per pass (plain) or verifies several drafted tokens in one pass
(copy drafts). This runs a random prompt through a model folder, then the same 8 tokens:

- from scratch, prompt and tokens in one pass (the reference);
- as one pass of 8, as passes of 4 + 4 and of 2 + 2 + 2 + 2, and as 8 single-token passes.

It prints, per way, the largest logit difference from the reference and how many of the 8
positions keep the same argmax. Then it isolates the two operators a pass runs, on the
folder's own weights and attributes: MatMulNBits with 1 row against 4 rows, and
GroupQueryAttention with single-token steps against one 4-token pass.

    .venv/bin/python benches/decode_paths.py models/smollm2-135m-aligner-int8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

TOKENS = 8


def session(model: bytes | str, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


class Decoder:
    """The folder's graph with a KV cache passed in and out (not shared buffers)."""

    def __init__(self, path: Path, threads: int) -> None:
        self.s = session(str(path), threads)
        inputs = {i.name: i for i in self.s.get_inputs()}
        self.layers = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
        key = inputs["past_key_values.0.key"]
        self.kv_heads, self.head = key.shape[1], key.shape[3]
        self.keep = "logits_to_keep" in inputs

    def empty(self) -> list[np.ndarray]:
        return [np.zeros((1, self.kv_heads, 0, self.head), np.float32) for _ in range(2 * self.layers)]

    def run(self, ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits of every new position, and the cache after them."""
        past_len = past[0].shape[2]
        feed = {"input_ids": ids[None, :].astype(np.int64),
                "attention_mask": np.ones((1, past_len + len(ids)), np.int64)}
        for layer in range(self.layers):
            feed[f"past_key_values.{layer}.key"] = past[2 * layer]
            feed[f"past_key_values.{layer}.value"] = past[2 * layer + 1]
        if self.keep:
            feed["logits_to_keep"] = np.array(len(ids), np.int64)
        out = self.s.run(None, feed)
        return out[0][0][-len(ids):], out[1:]

    def in_passes(self, tokens: np.ndarray, sizes: list[int], past: list[np.ndarray]) -> np.ndarray:
        rows, at = [], 0
        for size in sizes:
            logits, past = self.run(tokens[at:at + size], past)
            rows.append(logits)
            at += size
        return np.concatenate(rows)


def whole_model(d: Decoder, path: Path, prompt_tokens: int) -> None:
    rng = np.random.default_rng(0)
    vocab = d.s.get_outputs()[0].shape[-1]
    prompt = rng.integers(0, vocab, prompt_tokens)
    tokens = rng.integers(0, vocab, TOKENS)
    reference = d.run(np.concatenate([prompt, tokens]), d.empty())[0][-TOKENS:]
    _, past = d.run(prompt, d.empty())
    print(f"{path.parent.name}: {prompt_tokens}-token random prompt, then {TOKENS} tokens; "
          "against prompt and tokens in one pass from scratch")
    for sizes in ([TOKENS], [4, 4], [2] * 4, [1] * TOKENS):
        rows = d.in_passes(tokens, sizes, past)
        diff = np.abs(rows - reference).max()
        same = int((rows.argmax(axis=1) == reference.argmax(axis=1)).sum())
        print(f"  passes {'+'.join(map(str, sizes)):16} max |logit diff| {diff:.6f}, argmax equal {same} of {TOKENS}")


def operator_model(node: onnx.NodeProto, inputs: list, outputs: list, initializers: list) -> bytes:
    graph = helper.make_graph([node], "op", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString()


def operators(path: Path, threads: int, head: int) -> None:
    m = onnx.load(str(path))
    init = {i.name: i for i in m.graph.initializer}
    rng = np.random.default_rng(1)
    print("operators, on the folder's weights and attributes:")
    shapes = set()
    for node in m.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits" and (attrs["K"], attrs["N"]) not in shapes:
            shapes.add((attrs["K"], attrs["N"]))
            weights = [init[n] for n in node.input[1:] if n in init]
            op = helper.make_node("MatMulNBits", ["A", *(w.name for w in weights)], ["Y"],
                                  domain="com.microsoft", **attrs)
            s = session(operator_model(
                op, [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", attrs["K"]])],
                [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", attrs["N"]])], weights), threads)
            a = rng.standard_normal((4, attrs["K"])).astype(np.float32)
            together = s.run(None, {"A": a})[0]
            alone = np.concatenate([s.run(None, {"A": a[i:i + 1]})[0] for i in range(4)])
            print(f"  MatMulNBits K={attrs['K']} N={attrs['N']}: 1 row against 4 rows, "
                  f"max |diff| {np.abs(alone - together).max():.3g}")
    gqa = next(n for n in m.graph.node if n.op_type == "GroupQueryAttention")
    attrs = {a.name: helper.get_attribute_value(a) for a in gqa.attribute}
    heads, kv_heads = attrs["num_heads"], attrs["kv_num_heads"]
    width = (heads + 2 * kv_heads) * head
    caches = [init[n] for n in gqa.input[7:9] if n in init]
    op = helper.make_node("GroupQueryAttention", ["qkv", "", "", "pk", "pv", "seqlens_k", "total",
                                                  *(c.name for c in caches)],
                          ["out", "present_k", "present_v"], domain="com.microsoft", **attrs)
    f = TensorProto.FLOAT
    s = session(operator_model(op, [
        helper.make_tensor_value_info("qkv", f, [1, "S", width]),
        helper.make_tensor_value_info("pk", f, [1, kv_heads, "P", head]),
        helper.make_tensor_value_info("pv", f, [1, kv_heads, "P", head]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("total", TensorProto.INT32, [])],
        [helper.make_tensor_value_info("out", f, None), helper.make_tensor_value_info("present_k", f, None),
         helper.make_tensor_value_info("present_v", f, None)], caches), threads)

    def attend(qkv: np.ndarray, k: np.ndarray, v: np.ndarray) -> list[np.ndarray]:
        total = k.shape[2] + qkv.shape[1]
        return s.run(None, {"qkv": qkv, "pk": k, "pv": v, "seqlens_k": np.array([total - 1], np.int32),
                            "total": np.array(total, np.int32)})

    k = rng.standard_normal((1, kv_heads, 90, head)).astype(np.float32)
    v = rng.standard_normal((1, kv_heads, 90, head)).astype(np.float32)
    qkv = rng.standard_normal((1, 4, width)).astype(np.float32)
    together = attend(qkv, k, v)[0][0]
    rows = []
    for i in range(4):
        out, k, v = attend(qkv[:, i:i + 1], k, v)
        rows.append(out[0, 0])
    print(f"  GroupQueryAttention: 4 single-token steps against one 4-token pass, "
          f"max |diff| {np.abs(np.stack(rows) - together).max():.3g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=90)
    a = ap.parse_args()
    model = a.folder / "model.onnx"
    decoder = Decoder(model, a.threads)
    whole_model(decoder, model, a.prompt_tokens)
    operators(model, a.threads, decoder.head)


if __name__ == "__main__":
    main()
