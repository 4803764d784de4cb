"""SentencePiece `tokenizer.model` -> Hugging Face `tokenizer.json`, without protobuf or
sentencepiece at conversion time.

The model file is a small protobuf; we decode the few fields that matter with a minimal wire
format reader. The result has the shape transformers' Llama/Gemma converters produce (BPE with
byte fallback, merges ordered by piece score). When the `sentencepiece` package is installed the
result is checked token for token against it on a fixed text set.
"""

from __future__ import annotations

import struct

from .errors import ExportError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE_MODEL = 2

ROUNDTRIP_TEXTS = [
    "Hello world! How are you today?",
    ("BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and harmless: "
     "What is 2+2? | 5 ASSISTANT:"),
    "##Question: Is the sun a star?\n##Answer: No, it is a planet.\n##Correction:  ASSISTANT:",
    "Numbers 3.14159, 42, 2024 and 1,000,000.",
    "  leading, double  spaces and trailing  ",
    "tabs\tand\nnew\n\nlines",
    "Ünïcödé, émigré café, naïve façade; 日本語; emoji 🙂👍",
    "",
]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) for one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated message")
        yield number, wire, value


def parse_model(data: bytes) -> dict:
    pieces: list[tuple[str, float, int]] = []
    trainer = {"model_type": 1, "byte_fallback": False, "unk_piece": "<unk>", "unk_id": 0, "bos_id": 1, "eos_id": 2}
    normalizer = {"name": "", "precompiled_charsmap": b"", "add_dummy_prefix": True, "remove_extra_whitespaces": True}
    try:
        for number, _, value in _fields(data):
            if number == 1:
                piece, score, kind = "", 0.0, NORMAL
                for n, _, v in _fields(value):
                    if n == 1:
                        piece = v.decode("utf-8")
                    elif n == 2:
                        score = struct.unpack("<f", v)[0]
                    elif n == 3:
                        kind = v
                pieces.append((piece, score, kind))
            elif number == 2:
                names = {3: "model_type", 35: "byte_fallback", 45: "unk_piece", 40: "unk_id", 41: "bos_id", 42: "eos_id"}
                for n, _, v in _fields(value):
                    if n in names:
                        trainer[names[n]] = v.decode() if n == 45 else v
            elif number == 3:
                names = {1: "name", 2: "precompiled_charsmap", 3: "add_dummy_prefix", 4: "remove_extra_whitespaces"}
                for n, _, v in _fields(value):
                    if n in names:
                        normalizer[names[n]] = v.decode() if n == 1 else v
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportError(f"tokenizer.model is not a valid SentencePiece model ({exc}); re-download it") from exc
    if not pieces:
        raise ExportError("tokenizer.model holds no pieces; re-download it or supply tokenizer.json")
    return {"pieces": pieces, "trainer": trainer, "normalizer": normalizer}


def bpe_merges(pieces: list[tuple[str, float, int]]) -> list[list[str]]:
    """Every split of a piece into two vocabulary pieces, highest-scoring result first (the
    order in which SentencePiece's BPE applies them)."""
    vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
    merges: list[tuple[str, str, float]] = []
    for piece, score, _ in pieces:
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [[left, right] for left, right, _ in merges]


def _added(token_id: int, content: str, special: bool) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def tokenizer_json(model: dict, extra_added: dict[int, tuple[str, bool]], add_bos: bool) -> dict:
    trainer, norm = model["trainer"], model["normalizer"]
    if trainer["model_type"] != BPE_MODEL:
        raise ExportError("tokenizer.model is a SentencePiece unigram model, which is not supported; supply tokenizer.json")
    if norm["name"] not in ("identity", "") or norm["precompiled_charsmap"] or norm["remove_extra_whitespaces"]:
        raise ExportError(
            f"tokenizer.model uses the SentencePiece normalizer '{norm['name']}', which is not supported; supply tokenizer.json"
        )
    pieces = model["pieces"]
    prefix = bool(norm["add_dummy_prefix"])
    steps = ([{"type": "Prepend", "prepend": "▁"}] if prefix else []) + [
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    ]
    decoders = [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    added = [_added(i, p, kind != USER_DEFINED) for i, (p, _, kind) in enumerate(pieces) if kind in (UNKNOWN, CONTROL, USER_DEFINED)]
    for token_id, (content, special) in sorted(extra_added.items()):
        if token_id >= len(pieces):
            added.append(_added(token_id, content, special))
    post = None
    bos_id = trainer["bos_id"]
    if add_bos and 0 <= bos_id < len(pieces):
        bos = pieces[bos_id][0]
        post = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        }
    vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
    for token_id, (content, _) in extra_added.items():
        vocab.setdefault(content, token_id)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": steps},
        "pre_tokenizer": None,
        "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": trainer["unk_piece"],
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": bool(trainer["byte_fallback"]),
            "ignore_merges": False,
            "vocab": vocab,
            "merges": bpe_merges(pieces),
        },
    }


def check_against_sentencepiece(model_bytes: bytes, tokenizer_json_text: str) -> int | None:
    """Token ids and decoded text of the built tokenizer against SentencePiece itself, on
    ROUNDTRIP_TEXTS. Returns how many texts were checked, or None without `sentencepiece`."""
    try:
        import sentencepiece as spm
    except ImportError:
        return None
    import tokenizers

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    tok = tokenizers.Tokenizer.from_str(tokenizer_json_text)
    for text in ROUNDTRIP_TEXTS:
        want = sp.encode(text)
        got = tok.encode(text, add_special_tokens=False).ids
        if got != want:
            raise ExportError(
                f"the tokenizer built from tokenizer.model splits {text[:40]!r} differently from SentencePiece "
                f"({got[:8]}... vs {want[:8]}...); supply tokenizer.json"
            )
        if tok.decode(got, skip_special_tokens=False) != sp.decode(want):
            raise ExportError(f"the tokenizer built from tokenizer.model decodes {text[:40]!r} differently from SentencePiece")
    return len(ROUNDTRIP_TEXTS)
