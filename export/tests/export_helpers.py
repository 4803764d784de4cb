from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "export"))

FIXTURES = ROOT / "tests" / "fixtures"
TINY_GGUF = FIXTURES / "tiny-llama" / "tiny-llama.gguf"
SMOLLM_GGUF = ROOT / ".cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# After the sys.path insert; re-exported for the tests.
from aligner_export.ort_runner import FolderRunner as Runner  # noqa: F401

ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma")


def hf_fixture(arch: str) -> Path:
    return FIXTURES / f"hf-{arch}"


def hf_reference(arch: str):
    return np.load(FIXTURES / f"hf-{arch}-ref.npz")


@pytest.fixture(scope="session")
def arch_folders(tmp_path_factory):
    """Exports of every fixture architecture, made on first use: arch_folders(arch, precision)."""
    from aligner_export.convert import convert
    from aligner_export.decoder_graph import QuantOptions

    base = tmp_path_factory.mktemp("arch")
    made: dict[tuple[str, str], Path] = {}

    def get(arch: str, precision: str) -> Path:
        if (arch, precision) not in made:
            made[arch, precision] = convert(hf_fixture(arch), base / f"{arch}-{precision}", QuantOptions(precision))
        return made[arch, precision]

    return get


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    from aligner_export.convert import convert
    from aligner_export.decoder_graph import QuantOptions

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
    from aligner_export.decoder_graph import QuantOptions

    return convert(smollm_gguf, tmp_path_factory.mktemp("smol") / "fp32", QuantOptions("fp32"))


@pytest.fixture(scope="session")
def smollm_int8() -> Path:
    folder = ROOT / "models" / "smollm2-135m-instruct-int8"
    if not (folder / "model.onnx").is_file():
        pytest.fail(f"{folder} is missing; run `make model` first")
    return folder
