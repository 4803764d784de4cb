from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "export"))

FIXTURES = ROOT / "tests" / "fixtures"
TINY_GGUF = FIXTURES / "tiny-llama" / "tiny-llama.gguf"
SMOLLM_GGUF = ROOT / ".cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"


class Runner:
    """Runs an exported folder with plain onnxruntime, prefill or step by step."""

    def __init__(self, folder: Path):
        self.session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        d = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        self.layers, self.kv_heads, self.head = d["num_hidden_layers"], d["num_key_value_heads"], d["head_size"]

    def empty_past(self) -> dict:
        z = np.zeros((1, self.kv_heads, 0, self.head), np.float32)
        return {f"past_key_values.{i}.{k}": z for i in range(self.layers) for k in ("key", "value")}

    def step(self, ids: list[int], past: dict) -> tuple[np.ndarray, dict]:
        past_len = next(iter(past.values())).shape[2]
        feeds = {
            "input_ids": np.array([ids], np.int64),
            "attention_mask": np.ones((1, past_len + len(ids)), np.int64),
            **past,
        }
        names = [o.name for o in self.session.get_outputs()]
        out = dict(zip(names, self.session.run(names, feeds)))
        present = {f"past_key_values.{i}.{k}": out[f"present.{i}.{k}"] for i in range(self.layers) for k in ("key", "value")}
        return out["logits"][0], present

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.step(ids, self.empty_past())[0]


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    from aligner_export.convert import convert
    from aligner_export.llama_graph import QuantOptions

    base = tmp_path_factory.mktemp("tiny")
    return {p: convert(TINY_GGUF, base / p, QuantOptions(p)) for p in ("fp32", "int8")}


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    if not SMOLLM_GGUF.is_file():
        pytest.fail(f"{SMOLLM_GGUF} is missing; run `make model` first")
    return SMOLLM_GGUF


@pytest.fixture(scope="session")
def smollm_fp32(tmp_path_factory, smollm_gguf) -> Path:
    from aligner_export.convert import convert
    from aligner_export.llama_graph import QuantOptions

    return convert(smollm_gguf, tmp_path_factory.mktemp("smol") / "fp32", QuantOptions("fp32"))


@pytest.fixture(scope="session")
def smollm_int8() -> Path:
    folder = ROOT / "models" / "smollm2-135m-instruct-int8"
    if not (folder / "model.onnx").is_file():
        pytest.fail(f"{folder} is missing; run `make model` first")
    return folder
