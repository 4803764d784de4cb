"""Exported graphs against Hugging Face transformers' own Llama (reference fixtures made by
export/scripts/make_fixtures.py at development time)."""

import json

import numpy as np
import tokenizers
from export_helpers import FIXTURES, Runner

# The target is 99%; measured (see README) the int8 default (MatMulNBits
# accuracy_level 4, int8 activations) reaches ~96% on the real model. These floors guard
# against regressions from that measured level.
INT8_MIN_AGREEMENT_REAL = 0.94
INT8_MIN_AGREEMENT_TINY = 0.85


def tiny_reference():
    return np.load(FIXTURES / "tiny-llama" / "reference.npz")


def test_tiny_fp32_logits_match_transformers(tiny_folders):
    ref = tiny_reference()
    run = Runner(tiny_folders["fp32"])
    for n in range(5):
        got = run.logits(ref[f"prompt_{n}"].tolist())
        np.testing.assert_allclose(got, ref[f"logits_{n}"], atol=1e-4, rtol=0)


def test_tiny_fp32_step_by_step_with_kv_cache_matches_full_prompt(tiny_folders):
    ref = tiny_reference()
    run = Runner(tiny_folders["fp32"])
    ids = ref["prompt_2"].tolist()
    np.testing.assert_allclose(run.incremental_logits(ids, 5), ref["logits_2"], atol=1e-4, rtol=0)


def top1_agreement(a_runner, b_runner, prompts) -> float:
    agree = total = 0
    for ids in prompts:
        a = a_runner.logits(ids).argmax(-1)
        b = b_runner.logits(ids).argmax(-1)
        agree += int((a == b).sum())
        total += len(ids)
    return agree / total


def test_tiny_int8_top1_agreement(tiny_folders):
    ref = tiny_reference()
    prompts = [ref[f"prompt_{n}"].tolist() for n in range(5)]
    rate = top1_agreement(Runner(tiny_folders["fp32"]), Runner(tiny_folders["int8"]), prompts)
    assert rate >= INT8_MIN_AGREEMENT_TINY, rate


def test_int8_folder_is_about_the_size_of_int8_weights(smollm_int8):
    size = sum(f.stat().st_size for f in smollm_int8.iterdir())
    # 135M parameters at one byte plus block scales/zero points; fp32 would be ~540 MB.
    assert size < 175e6, size


def test_smollm_fp32_matches_transformers_topk(smollm_fp32):
    ref = np.load(FIXTURES / "smollm2" / "reference.npz")
    run = Runner(smollm_fp32)
    for n in range(3):
        logits = run.logits(ref[f"prompt_{n}"].tolist())
        got = np.take_along_axis(logits, ref[f"topk_ids_{n}"], axis=-1)
        np.testing.assert_allclose(got, ref[f"topk_logits_{n}"], atol=2e-4, rtol=0)
        assert np.array_equal(logits.argmax(-1), ref[f"topk_ids_{n}"][:, 0])


def test_smollm_int8_top1_agreement(smollm_fp32, smollm_int8):
    ref = np.load(FIXTURES / "smollm2" / "reference.npz")
    prompts = [ref[f"prompt_{n}"].tolist() for n in range(3)]
    rate = top1_agreement(Runner(smollm_fp32), Runner(smollm_int8), prompts)
    assert rate >= INT8_MIN_AGREEMENT_REAL, rate


def test_tokenizer_json_matches_transformers(smollm_int8):
    tok = tokenizers.Tokenizer.from_file(str(smollm_int8 / "tokenizer.json"))
    cases = json.loads((FIXTURES / "smollm2" / "tokenizer_reference.json").read_text(encoding="utf-8"))
    for case in cases:
        assert tok.encode(case["text"], add_special_tokens=False).ids == case["ids"], case["text"]
        assert tok.decode(case["ids"], skip_special_tokens=False) == case["text"]


def test_manifests_describe_the_folder(smollm_int8):
    genai = json.loads((smollm_int8 / "genai_config.json").read_text())
    manifest = json.loads((smollm_int8 / "aligner.json").read_text())
    d = genai["model"]["decoder"]
    assert (d["num_hidden_layers"], d["num_key_value_heads"], d["head_size"]) == (30, 3, 64)
    assert genai["model"]["eos_token_id"] == 2 and genai["model"]["vocab_size"] == 49152
    assert manifest["template"] == "chatml-correction"
    prov = manifest["provenance"]
    assert prov["precision"] == "int8" and len(prov["source_sha256"]) == 64


def test_logits_to_keep_returns_the_last_rows_and_defaults_to_all(tiny_folders):
    import onnxruntime as ort

    for precision in ("fp32", "int8"):
        s = ort.InferenceSession(str(tiny_folders[precision] / "model.onnx"))
        feeds = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in s.get_inputs() if "past" in i.name}
        ids = np.array([[1, 5, 9, 14, 3, 7]], np.int64)
        feeds |= {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        every = s.run(["logits"], feeds)[0]
        assert every.shape[1] == ids.shape[1], "not fed: logits for every position"
        for keep in (1, 3, 6):
            kept = s.run(["logits"], feeds | {"logits_to_keep": np.array([keep], np.int64)})[0]
            assert kept.shape[1] == keep
            np.testing.assert_allclose(kept[0], every[0, -keep:], rtol=1e-5, atol=1e-5)
