"""Bad input: one-line errors, exit 2, nothing half-written."""

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np

from export_helpers import ROOT, TINY_GGUF


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT / "export"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "aligner_export", *args], capture_output=True, text=True, env=env)


def assert_one_line_error(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in p.stderr


def test_missing_source(tmp_path):
    p = run_cli("convert", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "out"))
    assert_one_line_error(p, "does not exist")
    assert not (tmp_path / "out").exists()


def test_not_a_gguf_file(tmp_path):
    src = tmp_path / "model.safetensors"
    src.write_bytes(b"x")
    p = run_cli("convert", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(p, "not a .gguf file")


def test_corrupt_gguf_leaves_nothing_behind(tmp_path):
    src = tmp_path / "broken.gguf"
    src.write_bytes(TINY_GGUF.read_bytes()[:5000])
    p = run_cli("convert", str(src), "--out", str(tmp_path / "out"))
    assert p.returncode == 2 and p.stderr.startswith("error: "), p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["broken.gguf"]


def test_unsupported_architecture_is_named(tmp_path):
    src = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(src), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    p = run_cli("convert", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(p, "unsupported architecture 'gpt2'")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    p = run_cli("convert", str(TINY_GGUF), "--out", str(out))
    assert_one_line_error(p, "already exists")
    assert (out / "keep.txt").read_text() == "user data"


def test_successful_convert_writes_the_folder(tmp_path):
    out = tmp_path / "tiny"
    p = run_cli("convert", str(TINY_GGUF), "--out", str(out), "--precision", "fp32")
    assert p.returncode == 0, p.stderr
    names = {x.name for x in out.iterdir()}
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "aligner.json", "tokenizer.json"} <= names
    assert [x.name for x in tmp_path.iterdir()] == ["tiny"], "temporary folder left behind"
