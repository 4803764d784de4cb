"""Checkpoint (Hugging Face folder or GGUF file) -> model folder, written to a temporary sibling
folder and renamed into place, so a failure never leaves a half-written `--out`."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from . import __version__
from .decoder_graph import DecoderGraphBuilder, QuantOptions
from .errors import ExportError
from .manifest import aligner_manifest, genai_config, generation_defaults, write_json
from .onnx_writer import GraphWriter
from .templates import TEMPLATES, default_template


def open_source(src: Path):
    """A GgufCheckpoint or HfCheckpoint for `src`; both expose config, tensor(hf_name), sha256()."""
    src = Path(src)
    if src.is_dir():
        from .hf_source import HfCheckpoint

        return HfCheckpoint(src)
    if not src.exists():
        raise ExportError(f"source {src} does not exist; pass a Hugging Face model folder or a .gguf file")
    if src.suffix != ".gguf":
        raise ExportError(f"{src} is not a .gguf file or a model folder; pass a Hugging Face model folder or a .gguf file")
    from .gguf_source import GgufCheckpoint

    return GgufCheckpoint(src)


def memory_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MB."""
    import resource

    with open("/proc/self/statm") as fh:
        current = int(fh.read().split()[1]) * resource.getpagesize()
    return current / 1e6, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def report_progress(done: int, total: int) -> None:
    current, peak = memory_mb()
    print(f"layer {done}/{total}: rss {current:.0f} MB, peak {peak:.0f} MB", file=sys.stderr, flush=True)


def convert(
    src: Path,
    out: Path,
    quant: QuantOptions,
    template: str | None = None,
    context_length: int | None = None,
    force: bool = False,
    progress: bool = False,
    lora: Path | None = None,
) -> Path:
    src, out = Path(src), Path(out)
    if template is not None and template not in TEMPLATES:
        raise ExportError(f"unknown template '{template}'; choose one of: {', '.join(TEMPLATES)}")
    if out.exists() and not force:
        raise ExportError(f"output folder {out} already exists; remove it or pass --force")
    ckpt = open_source(src)
    if lora is not None:
        from .lora import LoraMerged

        ckpt = LoraMerged(ckpt, lora)
    cfg = ckpt.config
    if context_length is not None:
        if context_length < 1:
            raise ExportError(f"--context-length {context_length} must be positive")
        cfg.context_length = context_length
    if quant.quantized and cfg.hidden_size % quant.block_size:
        raise ExportError(f"hidden size {cfg.hidden_size} is not a multiple of --block-size {quant.block_size}; pick a smaller block size")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        g = GraphWriter(tmp / "model.onnx.data")
        DecoderGraphBuilder(g, cfg, quant).build(ckpt.tensor, report_progress if progress else None)
        if lora is not None:
            ckpt.check_all_used()
        g.save(tmp / "model.onnx", f"aligner_export {__version__}", {"source": src.name, "precision": quant.precision})
        provenance = {"source": src.name, "source_sha256": ckpt.sha256(), "precision": quant.precision}
        if lora is not None:
            provenance["lora"] = ckpt.provenance
        if quant.quantized:
            provenance.update({"bits": quant.bits, "block_size": quant.block_size, "accuracy_level": quant.accuracy_level, "symmetric": quant.symmetric,
                               "target": quant.target})
        if hasattr(ckpt, "write_tokenizer"):
            provenance.update(ckpt.write_tokenizer(tmp))
            generation = generation_defaults(ckpt.generation)
        else:
            from .tokenizer_build import write_tokenizer_files

            write_tokenizer_files(ckpt.tokenizer_fields(), tmp, cfg.chat_template)
            generation = generation_defaults({})
        write_json(tmp / "genai_config.json", genai_config(cfg))
        chosen = template or default_template(cfg)
        write_json(tmp / "aligner.json", aligner_manifest(cfg, chosen, generation, provenance, quant.providers))
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
