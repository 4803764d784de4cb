"""Bad input: one-line errors, exit 2, nothing half-written."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
from export_helpers import ROOT, TINY_GGUF


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT / "export"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "aligner_export", *args], capture_output=True, text=True, env=env, check=False)


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


# -- Hugging Face folders -----------------------------------------------------------------------
HF = ROOT / "tests" / "fixtures"


def broken_copy(tmp_path: Path, arch: str) -> Path:
    src = tmp_path / f"src-{arch}"
    shutil.copytree(HF / f"hf-{arch}", src)
    return src


def assert_nothing_written(tmp_path: Path) -> None:
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("src-"))
    assert left == [], f"convert left {left} behind"


def edit_config(src: Path, **changes) -> None:
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (src / "config.json").write_text(json.dumps(cfg))


def test_hf_unsupported_architecture_is_named(tmp_path):
    src = broken_copy(tmp_path, "llama")
    edit_config(src, model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])
    p = run_cli("convert", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(p, "unsupported architecture 'gpt_neox' (GPTNeoXForCausalLM)")
    assert_nothing_written(tmp_path)


def test_hf_missing_shard(tmp_path):
    src = broken_copy(tmp_path, "llama")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (src / shard).unlink()
    p = run_cli("convert", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(p, f"shard {shard} listed in model.safetensors.index.json is missing")
    assert_nothing_written(tmp_path)


def test_hf_shape_mismatch_between_config_and_weights(tmp_path):
    src = broken_copy(tmp_path, "qwen2")
    edit_config(src, intermediate_size=200)
    p = run_cli("convert", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(p, "shape mismatch: tensor 'model.layers.0.mlp.gate_proj.weight' is [256, 128] in the weights but config.json implies [200, 128]")
    assert_nothing_written(tmp_path)


def test_hf_truncated_safetensors(tmp_path):
    src = broken_copy(tmp_path, "mistral")
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    p = run_cli("convert", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(p, "model.safetensors is truncated")
    assert_nothing_written(tmp_path)


def test_hf_missing_tokenizer(tmp_path):
    src = broken_copy(tmp_path, "gemma")
    (src / "tokenizer.model").unlink()
    p = run_cli("convert", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(p, "has neither tokenizer.json nor tokenizer.model")
    assert_nothing_written(tmp_path)


def test_hf_existing_output_needs_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    p = run_cli("convert", str(HF / "hf-qwen2"), "--out", str(out))
    assert_one_line_error(p, "already exists")
    assert (out / "keep.txt").read_text() == "user data"
    p = run_cli("convert", str(HF / "hf-qwen2"), "--out", str(out), "--force")
    assert p.returncode == 0, p.stderr
    assert not (out / "keep.txt").exists() and (out / "model.onnx").is_file()


def test_verify_records_figures_in_the_manifest(tmp_path):
    out = tmp_path / "llama-int8"
    assert run_cli("convert", str(HF / "hf-llama"), "--out", str(out)).returncode == 0
    p = run_cli("verify", str(out), "--against", str(HF / "hf-llama"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("top-1 agreement ")
    v = json.loads((out / "aligner.json").read_text())["verification"]
    assert v["against"] == "hf-llama" and v["positions"] > 100
    assert 0.8 < v["top1_agreement"] <= 1.0 and v["kl_mean"] >= 0 and v["max_abs_logit_error"] > 0
    p = run_cli("verify", str(out), "--against", str(HF / "hf-llama"), "--min-agreement", "1.01", "--no-record")
    assert p.returncode == 1 and "below --min-agreement" in p.stderr


def test_verify_against_a_different_checkpoint_is_refused(tmp_path):
    out = tmp_path / "qwen2"
    assert run_cli("convert", str(HF / "hf-qwen2"), "--out", str(out), "--precision", "fp32").returncode == 0
    p = run_cli("verify", str(out), "--against", str(HF / "hf-gemma"))
    assert_one_line_error(p, "was not exported from")
    assert "verification" not in json.loads((out / "aligner.json").read_text())


def test_fp32_for_cuda_is_refused(tmp_path):
    p = run_cli("convert", str(HF / "hf-qwen2"), "--out", str(tmp_path / "out"), "--precision", "fp32", "--target", "cuda")
    assert_one_line_error(p, "--precision fp32 graphs are for the CPU")
    assert not (tmp_path / "out").exists()
