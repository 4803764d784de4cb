"""`verify DIR --against SRC`: the exported folder against the source checkpoint's fp32
reference (reference.py) on a fixed prompt set; the figures are recorded in aligner.json."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import numpy as np

from .convert import open_source
from .errors import ExportError
from .ort_runner import FolderRunner
from .reference import reference_logits

VERIFY_TEXTS = [
    ("BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and harmless: "
     "How do I boil an egg? | Put it in cold water and wait. ASSISTANT:"),
    "BEGINNING OF CONVERSATION: USER: ##Question: Is the sun a star?\n##Answer: No, the sun is a planet.\n##Correction:  ASSISTANT:",
    "BEGINNING OF CONVERSATION: USER: ##Question: How many legs does a spider have? ##Answer: Six. ##Revision:  ASSISTANT:",
    "The quick brown fox jumps over the lazy dog. Water boils at 100 degrees Celsius at sea level.",
    "Question: What is the capital of Australia?\nAnswer: Sydney is the capital of Australia.\nCorrected answer:",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


TIE_TOLERANCE = 0.01  # logits; reference tokens this close to the maximum are tied


def compare(reference: list[np.ndarray], exported: list[np.ndarray]) -> dict:
    """Top-1 agreement (a position agrees when the exported argmax is a reference top-1 up to
    exact ties, i.e. within TIE_TOLERANCE of the reference maximum), strict agreement, max
    absolute logit error and KL(reference || exported)."""
    agree = strict = total = 0
    max_err = 0.0
    kls: list[np.ndarray] = []
    for ref, got in zip(reference, exported):
        picked = got.argmax(-1)
        strict += int((ref.argmax(-1) == picked).sum())
        agree += int((ref[np.arange(len(picked)), picked] >= ref.max(-1) - TIE_TOLERANCE).sum())
        total += ref.shape[0]
        max_err = max(max_err, float(np.abs(ref - got).max()))
        lp, lq = log_softmax(ref), log_softmax(got)
        kls.append((np.exp(lp) * (lp - lq)).sum(-1))
    kl = np.concatenate(kls)
    return {
        "positions": total,
        "top1_agreement": agree / total,
        "top1_agreement_strict": strict / total,
        "max_abs_logit_error": max_err,
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
    }


def prompt_ids(folder: Path, max_tokens: int) -> list[list[int]]:
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    return [tok.encode(text).ids[:max_tokens] for text in VERIFY_TEXTS]


def verify(folder: Path, src: Path, max_tokens: int = 64, record: bool = True) -> dict:
    folder = Path(folder)
    manifest_path = folder / "aligner.json"
    for name in ("model.onnx", "genai_config.json", "tokenizer.json", "aligner.json"):
        if not (folder / name).is_file():
            raise ExportError(f"{folder} lacks {name}; pass a folder written by `aligner_export convert`")
    ckpt = open_source(src)
    cfg = ckpt.config
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]
    shape_here = (decoder["vocab_size"], decoder["decoder"]["num_hidden_layers"], decoder["decoder"]["hidden_size"])
    shape_src = (cfg.vocab_size, cfg.num_layers, cfg.hidden_size)
    if shape_here != shape_src:
        raise ExportError(f"{folder} (vocab, layers, hidden = {shape_here}) was not exported from {src} ({shape_src})")
    prompts = prompt_ids(folder, max_tokens)
    runner = FolderRunner(folder)
    exported = [runner.logits(ids) for ids in prompts]
    del runner
    reference = reference_logits(cfg, ckpt.tensor, prompts)
    result = {
        "against": Path(src).name,
        "prompts": len(prompts),
        **compare(reference, exported),
        "date": datetime.date.today().isoformat(),
    }
    if record:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest["verification"] = result
        tmp = manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, manifest_path)
    return result
