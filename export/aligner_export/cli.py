"""`python -m aligner_export convert SRC --out DIR` and `python -m aligner_export verify DIR --against SRC`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .convert import convert
from .decoder_graph import PRECISIONS, TARGETS, QuantOptions
from .errors import ExportError
from .templates import TEMPLATES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m aligner_export", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert a Hugging Face folder or a GGUF file into an ONNX model folder")
    c.add_argument("src", type=Path, help="a Hugging Face model folder (llama, mistral, qwen2, gemma) or a .gguf file")
    c.add_argument("--out", type=Path, required=True, help="model folder to create")
    c.add_argument("--precision", choices=PRECISIONS, default="int8")
    c.add_argument("--block-size", type=int, default=32, help="quantization block size (int8/int4)")
    c.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4], default=4, help="MatMulNBits compute type (4 = int8 activations)")
    c.add_argument("--symmetric", action="store_true", help="int8/int4 blocks without zero points (default: with them, which measured more accurate at the same speed; benches/README.md)")
    c.add_argument("--target", choices=TARGETS, default="cpu", help="execution provider the int8/int4 graph is for (cuda: fp16 activations and KV cache)")
    c.add_argument("--template", choices=TEMPLATES, help="prompt template recorded in aligner.json")
    c.add_argument("--context-length", type=int, help="override the context length (sizes the rotary cache)")
    c.add_argument("--force", action="store_true", help="replace an existing output folder")
    c.add_argument("--lora", type=Path, help="merge this LoRA adapter folder (peft's adapter_config.json + adapter_model.safetensors) into the weights")
    c.add_argument("--progress", action="store_true", help="print each converted layer with the process's memory use")
    v = sub.add_parser("verify", help="compare an exported folder with its source checkpoint's fp32 reference")
    v.add_argument("folder", type=Path, help="a folder written by `convert`")
    v.add_argument("--against", type=Path, required=True, help="the checkpoint the folder was converted from")
    v.add_argument("--max-tokens", type=int, default=64, help="tokens per prompt")
    v.add_argument("--min-agreement", type=float, help="exit 1 when top-1 agreement is below this fraction")
    v.add_argument("--no-record", action="store_true", help="do not write the result into aligner.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "convert":
            quant = QuantOptions(args.precision, args.block_size, args.accuracy_level, args.target, symmetric=args.symmetric)
            out = convert(args.src, args.out, quant, args.template, args.context_length, args.force, args.progress, args.lora)
            print(f"wrote {out}")
        else:
            from .verify import verify

            r = verify(args.folder, args.against, args.max_tokens, record=not args.no_record)
            print(
                f"top-1 agreement {r['top1_agreement']:.4f} over {r['positions']} positions, "
                f"max |logit error| {r['max_abs_logit_error']:.3g}, KL mean {r['kl_mean']:.3g} max {r['kl_max']:.3g}"
            )
            if args.min_agreement is not None and r["top1_agreement"] < args.min_agreement:
                print(f"error: top-1 agreement {r['top1_agreement']:.4f} is below --min-agreement {args.min_agreement}", file=sys.stderr)
                return 1
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
