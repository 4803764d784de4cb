"""Run an exported folder with the onnxruntime Python package: whole prompts or step by step
through the KV cache. Used by `verify` and by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class FolderRunner:
    def __init__(self, folder: Path, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(Path(folder) / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        d = json.loads((Path(folder) / "genai_config.json").read_text())["model"]["decoder"]
        self.layers, self.kv_heads, self.head = d["num_hidden_layers"], d["num_key_value_heads"], d["head_size"]
        past = next(i for i in self.session.get_inputs() if i.name.startswith("past_key_values"))
        self.kv_dtype = np.float16 if "float16" in past.type else np.float32
        self.output_names = [o.name for o in self.session.get_outputs()]

    def empty_past(self) -> dict:
        z = np.zeros((1, self.kv_heads, 0, self.head), self.kv_dtype)
        return {f"past_key_values.{i}.{k}": z for i in range(self.layers) for k in ("key", "value")}

    def step(self, ids: list[int], past: dict) -> tuple[np.ndarray, dict]:
        past_len = next(iter(past.values())).shape[2]
        feeds = {
            "input_ids": np.array([ids], np.int64),
            "attention_mask": np.ones((1, past_len + len(ids)), np.int64),
            **past,
        }
        out = dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        present = {f"past_key_values.{i}.{k}": out[f"present.{i}.{k}"] for i in range(self.layers) for k in ("key", "value")}
        return out["logits"][0].astype(np.float32), present

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.step(ids, self.empty_past())[0]

    def incremental_logits(self, ids: list[int], first: int) -> np.ndarray:
        """Logits for every position of `ids`, from a `first`-token prefill followed by one
        token per step through the KV cache (the path generation takes)."""
        logits, past = self.step(ids[:first], self.empty_past())
        rows = list(logits)
        for t in ids[first:]:
            logits, past = self.step([t], past)
            rows.append(logits[-1])
        return np.stack(rows)
