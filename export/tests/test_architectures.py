"""Every fixture architecture (tiny checkpoints made with transformers' own classes by
export/scripts/make_hf_fixtures.py) exported at every precision, against transformers."""

import json
import shutil

import numpy as np
import pytest
import tokenizers
from aligner_export.hf_source import HfCheckpoint
from aligner_export.reference import reference_logits
from aligner_export.safetensors_io import read_header, read_tensor, write_safetensors
from aligner_export.verify import TIE_TOLERANCE
from export_helpers import ARCHITECTURES, Runner, hf_fixture, hf_reference

PROMPTS = 6


def prompts(ref, prefix: str = "prompt") -> list[list[int]]:
    return [ref[f"{prefix}_{n}"].tolist() for n in range(sum(k.startswith(f"{prefix}_") for k in ref.files))]


def agreement(folder, ref) -> float:
    """Share of in-distribution positions whose exported top-1 is the transformers top-1 (up to
    exact ties, as `verify` counts them)."""
    run = Runner(folder)
    agree = total = 0
    for n, ids in enumerate(prompts(ref, "agree_prompt")):
        picked = run.logits(ids).argmax(-1)
        top_ids, top_logits = ref[f"agree_topk_ids_{n}"], ref[f"agree_topk_logits_{n}"]
        tied = top_logits >= top_logits[:, :1] - TIE_TOLERANCE
        agree += int(((top_ids == picked[:, None]) & tied).any(-1).sum())
        total += len(ids)
    return agree / total


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fp32_export_matches_transformers(arch, arch_folders):
    ref = hf_reference(arch)
    run = Runner(arch_folders(arch, "fp32"))
    for n, ids in enumerate(prompts(ref)):
        np.testing.assert_allclose(run.logits(ids), ref[f"logits_{n}"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fp32_export_step_by_step_through_the_kv_cache(arch, arch_folders):
    ref = hf_reference(arch)
    run = Runner(arch_folders(arch, "fp32"))
    ids = ref["prompt_2"].tolist()  # longer than mistral's sliding window of 12
    np.testing.assert_allclose(run.incremental_logits(ids, 4), ref["logits_2"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_numpy_reference_used_by_verify_matches_transformers(arch):
    ref = hf_reference(arch)
    ckpt = HfCheckpoint(hf_fixture(arch))
    got = reference_logits(ckpt.config, ckpt.tensor, prompts(ref))
    for n, logits in enumerate(got):
        np.testing.assert_allclose(logits, ref[f"logits_{n}"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_int8_export_top1_agreement(arch, arch_folders):
    rate = agreement(arch_folders(arch, "int8"), hf_reference(arch))
    assert rate >= 0.99, rate


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_int4_export_top1_agreement(arch, arch_folders):
    rate = agreement(arch_folders(arch, "int4"), hf_reference(arch))
    assert rate >= 0.95, rate


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fp16_export_runs_in_fp16_and_agrees(arch, arch_folders):
    folder = arch_folders(arch, "fp16")
    run = Runner(folder)
    assert run.kv_dtype == np.float16
    assert agreement(folder, hf_reference(arch)) >= 0.99
    ref = hf_reference(arch)
    err = max(float(np.abs(run.logits(ids) - ref[f"logits_{n}"]).max()) for n, ids in enumerate(prompts(ref)))
    assert err < 0.1, err


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tokenizer_json_reproduces_the_source_tokenization(arch, arch_folders):
    """llama and gemma have only tokenizer.model (built here); mistral and qwen2 ship tokenizer.json."""
    ref = hf_reference(arch)
    tok = tokenizers.Tokenizer.from_file(str(arch_folders(arch, "fp32") / "tokenizer.json"))
    for n in range(PROMPTS):
        text = str(ref[f"text_{n}"])
        ids = tok.encode(text).ids
        assert ids == ref[f"prompt_{n}"].tolist(), text
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_from_tokenizer_model_keeps_the_added_pad_token(arch_folders):
    folder = arch_folders("llama", "fp32")
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab = json.loads((folder / "genai_config.json").read_text())["model"]["vocab_size"]
    assert tok.token_to_id("<pad>") == vocab - 1
    assert tok.encode("a <pad> b").ids.count(vocab - 1) == 1
    notes = json.loads((folder / "aligner.json").read_text())["provenance"]
    assert notes["tokenizer"] == "built from tokenizer.model"
    assert "identical to sentencepiece" in notes["tokenizer_check"]


def test_bf16_weights_load_exactly(tmp_path):
    """gemma's fixture is bf16; the same weights written as fp32 must give the same tensors."""
    src = hf_fixture("gemma")
    entries = read_header(src / "model.safetensors")
    assert {e.dtype for e in entries.values()} == {"BF16"}
    copy = tmp_path / "gemma-fp32"
    shutil.copytree(src, copy)
    widened = {name: ("F32", e.shape, read_tensor(e).astype(np.float32).tobytes()) for name, e in entries.items()}
    write_safetensors(copy / "model.safetensors", widened)
    bf16, fp32 = HfCheckpoint(src), HfCheckpoint(copy)
    assert {e.dtype for e in fp32.entries.values()} == {"F32"}
    for name, entry in entries.items():
        assert np.array_equal(bf16.tensor(name), fp32.tensor(name)), name
        # bf16 -> fp32 is a bit shift: the low 16 bits of every widened value are zero, and
        # the high 16 bits are the stored bf16 bits.
        widened = read_tensor(entry).view(np.uint32)
        assert not (widened & 0xFFFF).any()
        raw = np.fromfile(src / "model.safetensors", np.uint16, count=(entry.end - entry.start) // 2, offset=entry.start)
        assert np.array_equal((widened >> 16).astype(np.uint16), raw.reshape(entry.shape)), name


def test_sharded_checkpoint_with_index_loads():
    ckpt = HfCheckpoint(hf_fixture("llama"))
    files = ckpt.weight_files()
    index = json.loads((hf_fixture("llama") / "model.safetensors.index.json").read_text())
    assert len(files) > 1 and {f.name for f in files} == set(index["weight_map"].values())
    assert set(index["weight_map"]) <= set(ckpt.entries)


@pytest.mark.parametrize(
    "arch, template, temperature",
    [("llama", "aligner-v1", 0.0), ("mistral", "aligner-v2", 0.0), ("qwen2", "chatml-correction", 0.7), ("gemma", "aligner-2b", 0.0)],
)
def test_manifest_template_and_generation_defaults(arch, template, temperature, arch_folders):
    folder = arch_folders(arch, "int8")
    manifest = json.loads((folder / "aligner.json").read_text())
    genai = json.loads((folder / "genai_config.json").read_text())["model"]
    gen_src = json.loads((hf_fixture(arch) / "generation_config.json").read_text())
    assert manifest["template"] == template
    assert manifest["generation"]["temperature"] == temperature
    want_eos = gen_src["eos_token_id"] if isinstance(gen_src["eos_token_id"], list) else [gen_src["eos_token_id"]]
    assert manifest["eos_token_ids"] == want_eos
    assert genai["type"] == arch
    prov = manifest["provenance"]
    assert prov["architecture"] == arch and prov["precision"] == "int8" and len(prov["source_sha256"]) == 64
    if arch == "qwen2":
        assert (manifest["generation"]["top_p"], manifest["generation"]["top_k"]) == (0.8, 20)
        assert manifest["generation"]["repetition_penalty"] == 1.05
    if arch == "llama":
        assert manifest["generation"]["max_new_tokens"] == 512


@pytest.mark.parametrize("kind", ["llama3", "linear"])
def test_rope_scaling_frequencies_match_transformers(kind):
    from aligner_export.model_config import (
        ModelConfig,
        check_rope_scaling,
        inverse_frequencies,
    )

    ref = np.load(hf_fixture("llama").parent / "rope-scaling-ref.npz")
    params = json.loads(str(ref[f"{kind}_params"]))
    cfg = ModelConfig("llama", 1, 512, 4, 4, 128, 1, 1, params["rope_theta"], 1e-6, 16, False, None, [], None)
    cfg.rope_scaling = check_rope_scaling(params)
    np.testing.assert_allclose(inverse_frequencies(cfg), ref[f"{kind}_inv_freq"], rtol=1e-6)


@pytest.mark.parametrize("precision, providers", [("int8", ["cpu"]), ("int4", ["cpu"]), ("fp16", ["cuda", "tensorrt", "cpu"]), ("fp32", ["cpu"])])
def test_manifest_records_the_providers_a_folder_is_for(precision, providers, arch_folders):
    manifest = json.loads((arch_folders("qwen2", precision) / "aligner.json").read_text())
    assert manifest["providers"] == providers


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_int4_for_cuda_runs_fp16_activations_and_kv_cache(arch, tmp_path):
    from aligner_export.convert import convert
    from aligner_export.decoder_graph import QuantOptions

    folder = convert(hf_fixture(arch), tmp_path / "int4-cuda", QuantOptions("int4", target="cuda"))
    assert json.loads((folder / "aligner.json").read_text())["providers"] == ["cuda"]
    run = Runner(folder)
    assert run.kv_dtype == np.float16
    types = {i.name: i.type for i in run.session.get_inputs()}
    assert types["past_key_values.0.key"] == "tensor(float16)"
    assert agreement(folder, hf_reference(arch)) >= 0.95
