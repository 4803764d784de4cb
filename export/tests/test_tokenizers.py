"""Tokenizers built without the source library: from SentencePiece `tokenizer.model` files and
from GGUF SentencePiece metadata, checked against `sentencepiece` itself."""

import json

import pytest
import sentencepiece as spm
import tokenizers
from aligner_export.errors import ExportError
from aligner_export.sentencepiece_model import (
    ROUNDTRIP_TEXTS,
    check_against_sentencepiece,
    parse_model,
    tokenizer_json,
)
from aligner_export.tokenizer_build import tokenizer_json_from_gguf
from export_helpers import FIXTURES

SP_MODELS = {"with dummy prefix (Llama)": "hf-llama", "without dummy prefix (Gemma)": "hf-gemma"}


@pytest.mark.parametrize("fixture", SP_MODELS.values(), ids=SP_MODELS.keys())
def test_tokenizer_model_conversion_matches_sentencepiece(fixture):
    data = (FIXTURES / fixture / "tokenizer.model").read_bytes()
    built = json.dumps(tokenizer_json(parse_model(data), {}, add_bos=True))
    assert check_against_sentencepiece(data, built) == len(ROUNDTRIP_TEXTS)
    tok, sp = tokenizers.Tokenizer.from_str(built), spm.SentencePieceProcessor(model_proto=data)
    assert tok.encode("Hi there").ids == [sp.bos_id()] + sp.encode("Hi there")


@pytest.mark.parametrize("fixture", SP_MODELS.values(), ids=SP_MODELS.keys())
def test_gguf_sentencepiece_metadata_matches_sentencepiece(fixture):
    data = (FIXTURES / fixture / "tokenizer.model").read_bytes()
    model = parse_model(data)
    fields = {
        "model": "llama",
        "tokens": [p for p, _, _ in model["pieces"]],
        "scores": [s for _, s, _ in model["pieces"]],
        "token_type": [k for _, _, k in model["pieces"]],
        "add_space_prefix": bool(model["normalizer"]["add_dummy_prefix"]),
        "unk": 0,
        "bos": 1,
        "add_bos": True,
    }
    assert check_against_sentencepiece(data, json.dumps(tokenizer_json_from_gguf(fields))) == len(ROUNDTRIP_TEXTS)


def test_a_wrong_tokenizer_is_caught_by_the_check():
    data = (FIXTURES / "hf-llama" / "tokenizer.model").read_bytes()
    built = tokenizer_json(parse_model(data), {}, add_bos=True)
    built["model"]["merges"] = built["model"]["merges"][::-1]  # wrong merge priority
    with pytest.raises(ExportError, match="differently from SentencePiece"):
        check_against_sentencepiece(data, json.dumps(built))


def test_corrupt_tokenizer_model_is_a_clear_error():
    data = (FIXTURES / "hf-llama" / "tokenizer.model").read_bytes()
    with pytest.raises(ExportError, match="not a valid SentencePiece model"):
        parse_model(data[:-7] + b"\xff\xff\xff")
