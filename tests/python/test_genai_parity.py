"""aligner's greedy tokens equal onnxruntime-genai's on the same folders, token for token."""

import numpy as np
import onnxruntime_genai as og
import pytest
import tokenizers
from genai_ref import genai_greedy
from runtime_helpers import DEFAULT_MODEL, ROOT, aligner

NEW_TOKENS = 64
TEXT_PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "BEGINNING OF CONVERSATION: USER: ##Question: Is the sun a star?\n##Answer: No, it is a planet.\n##Correction:  ASSISTANT:",
    "Once upon a time, in a village by the sea,",
    "def fibonacci(n):\n",
    "Question: How many legs does a spider have?\nAnswer: Spiders have six legs.\nCorrected answer:",
]


def aligner_greedy(folder, ids: list[int]) -> list[int]:
    out = aligner(
        "generate", "--model", str(folder), "--prompt-ids", ",".join(map(str, ids)),
        "--max-new-tokens", str(NEW_TOKENS), "--suppress-eos",
    )
    assert out["finish_reason"] == "length"
    return out["tokens"]


@pytest.mark.parametrize("text", TEXT_PROMPTS)
def test_default_int8_folder_matches_genai(text):
    tok = tokenizers.Tokenizer.from_file(str(DEFAULT_MODEL / "tokenizer.json"))
    ids = tok.encode(text, add_special_tokens=False).ids
    expected = genai_greedy(str(DEFAULT_MODEL), ids, NEW_TOKENS)
    assert len(expected) == NEW_TOKENS
    assert aligner_greedy(DEFAULT_MODEL, ids) == expected


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_tiny_fixture_matches_genai(precision):
    folder = ROOT / "models" / f"tiny-llama-{precision}"
    ref = np.load(ROOT / "tests" / "fixtures" / "tiny-llama" / "reference.npz")
    for n in range(5):
        ids = ref[f"prompt_{n}"].tolist()
        assert aligner_greedy(folder, ids) == genai_greedy(str(folder), ids, NEW_TOKENS), f"prompt {n}"


def test_tiny_fp32_greedy_matches_transformers():
    ref = np.load(ROOT / "tests" / "fixtures" / "tiny-llama" / "reference.npz")
    for n in range(5):
        got = aligner_greedy(ROOT / "models" / "tiny-llama-fp32", ref[f"prompt_{n}"].tolist())
        assert got == ref[f"greedy_{n}"].tolist(), f"prompt {n}"


def test_prompt_tokenization_matches_genai():
    """Text prompts: aligner's tokenizer (HF tokenizers) and genai's give the same ids."""
    model = og.Model(str(DEFAULT_MODEL))
    genai_tok = og.Tokenizer(model)
    for text in TEXT_PROMPTS:
        ours = aligner("generate", "--model", str(DEFAULT_MODEL), "--prompt", text, "--max-new-tokens", "2", "--suppress-eos")
        theirs = [int(x) for x in genai_tok.encode(text)]
        assert ours["prompt_tokens"] == len(theirs)
        tok = tokenizers.Tokenizer.from_file(str(DEFAULT_MODEL / "tokenizer.json"))
        assert tok.encode(text, add_special_tokens=False).ids == theirs


def test_genai_builder_folder_runs_and_matches_genai_and_transformers():
    """A folder made by onnxruntime-genai's own builder (no aligner.json) from the tiny model."""
    folder = ROOT / "tests" / "fixtures" / "genai-builder-tiny"
    ref = np.load(ROOT / "tests" / "fixtures" / "tiny-llama" / "reference.npz")
    for n in range(5):
        ids = ref[f"prompt_{n}"].tolist()
        ours = aligner_greedy(folder, ids)
        assert ours == genai_greedy(str(folder), ids, NEW_TOKENS), f"prompt {n}"
        assert ours == ref[f"greedy_{n}"].tolist(), f"prompt {n}"
