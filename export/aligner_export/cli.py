"""`python -m aligner_export convert SRC --out DIR`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .convert import convert
from .errors import ExportError
from .llama_graph import QuantOptions
from .templates import TEMPLATES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m aligner_export", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert a GGUF checkpoint into an ONNX model folder")
    c.add_argument("src", type=Path, help="a Llama-architecture .gguf file")
    c.add_argument("--out", type=Path, required=True, help="model folder to create")
    c.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    c.add_argument("--block-size", type=int, default=32, help="int8 quantization block size")
    c.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4], default=4, help="MatMulNBits compute type (4 = int8 activations)")
    c.add_argument("--template", choices=TEMPLATES, help="prompt template recorded in aligner.json")
    c.add_argument("--context-length", type=int, help="override the context length (sizes the rotary cache)")
    c.add_argument("--force", action="store_true", help="replace an existing output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "convert":
            quant = QuantOptions(args.precision, args.block_size, args.accuracy_level)
            out = convert(args.src, args.out, quant, args.template, args.context_length, args.force)
            print(f"wrote {out}")
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
