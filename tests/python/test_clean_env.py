"""The tools work outside make: from another folder, with no environment variable set
(`env -i` with only PATH and HOME)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLEAN = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=CLEAN, cwd=cwd, timeout=300, check=False)


def test_the_binary_finds_onnx_runtime_and_the_default_model_by_itself(tmp_path):
    out = run([str(ROOT / "target/release/aligner"), "correct", "-q", "What is 2+2?", "-a", "4",
               "--max-new-tokens", "8", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert '"provider":"cpu"' in out.stdout and "smollm2-135m-aligner-int8" in out.stdout


def test_the_exporter_is_an_installed_command(tmp_path):
    folder = tmp_path / "tiny"
    out = run([str(ROOT / ".venv/bin/aligner-export"), "convert", str(ROOT / "tests/fixtures/tiny-llama/tiny-llama.gguf"),
               "--out", str(folder), "--precision", "fp32"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert (folder / "model.onnx").is_file() and (folder / "genai_config.json").is_file()
    out = run([str(ROOT / ".venv/bin/python"), "-m", "aligner_export", "verify", "--help"], tmp_path)
    assert out.returncode == 0 and "usage" in out.stdout, out.stderr


def test_the_training_tools_are_an_installed_command(tmp_path):
    out = run([str(ROOT / ".venv/bin/aligner-train"), "--help"], tmp_path)
    assert out.returncode == 0 and "data" in out.stdout and "eval" in out.stdout, out.stderr
