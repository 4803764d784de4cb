"""Top-1 agreement of quantized folders with a reference (fp32) folder, over every position of
a fixed prompt set (tests/fixtures/agreement_texts.txt plus the SmolLM2 fixture prompts).

    PYTHONPATH=export .venv/bin/python -m aligner_export convert .cache/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out /tmp/smol-fp32 --precision fp32
    .venv/bin/python export/scripts/int8_agreement.py /tmp/smol-fp32 models/smollm2-135m-instruct-int8
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tokenizers

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "export" / "tests"))
from export_helpers import FIXTURES, Runner


def prompt_set(reference: Path) -> list[list[int]]:
    tok = tokenizers.Tokenizer.from_file(str(reference / "tokenizer.json"))
    texts = (FIXTURES / "agreement_texts.txt").read_text(encoding="utf-8").split("\n===\n")
    ref = np.load(FIXTURES / "smollm2" / "reference.npz")
    return [tok.encode(t, add_special_tokens=False).ids for t in texts] + [ref[f"prompt_{n}"].tolist() for n in range(3)]


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    reference, candidates = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    prompts = prompt_set(reference)
    base = Runner(reference)
    expected = [base.logits(ids) for ids in prompts]
    for folder in candidates:
        run = Runner(folder)
        agree = total = 0
        worst_margin = 0.0
        for ids, ref_logits in zip(prompts, expected):
            got = run.logits(ids).argmax(-1)
            want = ref_logits.argmax(-1)
            top2 = np.sort(ref_logits, axis=-1)[:, -2:]
            flips = got != want
            if flips.any():
                worst_margin = max(worst_margin, float((top2[:, 1] - top2[:, 0])[flips].max()))
            agree += int((~flips).sum())
            total += len(ids)
        print(f"{folder}: top-1 agreement {agree / total:.4f} over {total} positions; largest reference margin flipped {worst_margin:.4f}")


if __name__ == "__main__":
    main()
