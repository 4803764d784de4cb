"""`convert --lora`: the torch-free merge against peft's own merged model (reference logits made
by train/scripts/make_lora_fixture.py at development time), and each bad adapter."""

import json
import shutil

import numpy as np
import pytest
from aligner_export.cli import main
from aligner_export.convert import convert
from aligner_export.decoder_graph import QuantOptions
from aligner_export.errors import ExportError
from export_helpers import FIXTURES, TINY_GGUF, Runner

LORA = FIXTURES / "tiny-llama-lora"


def test_merged_fp32_export_equals_peft_merged_logits(tmp_path):
    out = convert(TINY_GGUF, tmp_path / "merged", QuantOptions("fp32"), lora=LORA)
    ref = np.load(LORA / "reference.npz")
    base = np.load(FIXTURES / "tiny-llama" / "reference.npz")
    run = Runner(out)
    for n in range(5):
        got = run.logits(ref[f"prompt_{n}"].tolist())
        np.testing.assert_allclose(got, ref[f"logits_{n}"], atol=1e-4, rtol=0)
        # The adapter matters: the merged model is far from the base.
        assert np.abs(got - base[f"logits_{n}"]).max() > 1.0
    lora = json.loads((out / "aligner.json").read_text())["provenance"]["lora"]
    assert lora["r"] == 4 and lora["modules"] == 14 and len(lora["adapter_sha256"]) == 64


def test_merge_works_at_int8(tmp_path):
    out = convert(TINY_GGUF, tmp_path / "merged8", QuantOptions("int8"), lora=LORA)
    ref = np.load(LORA / "reference.npz")
    got = Runner(out).logits(ref["prompt_0"].tolist())
    agree = (got.argmax(-1) == ref["logits_0"].argmax(-1)).mean()
    assert agree >= 0.8


def _adapter(tmp_path, edit=None, drop=None):
    d = tmp_path / "adapter"
    shutil.copytree(LORA, d)
    (d / "reference.npz").unlink()
    if drop:
        (d / drop).unlink()
    if edit:
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg.update(edit)
        (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("edit,drop,message", [
    (None, "adapter_model.safetensors", "has no adapter_model.safetensors"),
    (None, "adapter_config.json", "has no adapter_config.json"),
    ({"use_dora": True}, None, "uses DoRA"),
    ({"bias": "all"}, None, "trains biases"),
    ({"peft_type": "IA3"}, None, "only LoRA can be merged"),
    ({"r": 0}, None, "no positive 'r'"),
])
def test_bad_adapters_are_named(tmp_path, edit, drop, message):
    d = _adapter(tmp_path, edit, drop)
    with pytest.raises(ExportError, match=message):
        convert(TINY_GGUF, tmp_path / "out", QuantOptions("fp32"), lora=d)
    assert not (tmp_path / "out").exists()


def test_an_adapter_of_another_model_is_refused_in_one_line(tmp_path, capsys):
    from aligner_export.safetensors_io import (
        read_header,
        read_tensor,
        write_safetensors,
    )

    d = _adapter(tmp_path)
    path = d / "adapter_model.safetensors"
    tensors = {}
    for name, entry in read_header(path).items():
        arr = read_tensor(entry)
        if "layers.0.self_attn.q_proj.lora_B" in name:
            arr = np.zeros((arr.shape[0] * 2, arr.shape[1]), np.float32)
        tensors[name] = ("F32", arr.shape, np.ascontiguousarray(arr, np.float32).tobytes())
    write_safetensors(path, tensors)
    rc = main(["convert", str(TINY_GGUF), "--out", str(tmp_path / "out"), "--precision", "fp32", "--lora", str(d)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "trained on another model" in err[0] and "q_proj" in err[0]
    assert not (tmp_path / "out").exists()
