"""GGUF -> model folder, written to a temporary sibling folder and renamed into place."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from . import __version__
from .errors import ExportError
from .gguf_source import GgufCheckpoint, sha256_of
from .llama_graph import LlamaGraphBuilder, QuantOptions
from .manifest import aligner_manifest, genai_config, write_json
from .onnx_writer import GraphWriter
from .templates import TEMPLATES, default_template
from .tokenizer_build import write_tokenizer_files


def convert(
    src: Path,
    out: Path,
    quant: QuantOptions,
    template: str | None = None,
    context_length: int | None = None,
    force: bool = False,
) -> Path:
    src, out = Path(src), Path(out)
    if quant.precision not in ("int8", "fp32"):
        raise ExportError(f"--precision {quant.precision} is not supported; use int8 or fp32")
    if template is not None and template not in TEMPLATES:
        raise ExportError(f"unknown template '{template}'; choose one of: {', '.join(TEMPLATES)}")
    if out.exists() and not force:
        raise ExportError(f"output folder {out} already exists; remove it or pass --force")
    if src.suffix != ".gguf":
        raise ExportError(f"{src} is not a .gguf file; this exporter reads GGUF checkpoints")
    ckpt = GgufCheckpoint(src)
    cfg = ckpt.config
    if context_length is not None:
        if context_length < 1:
            raise ExportError(f"--context-length {context_length} must be positive")
        cfg.context_length = context_length

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        g = GraphWriter(tmp / "model.onnx.data")
        LlamaGraphBuilder(g, cfg, quant).build(ckpt.tensor)
        g.save(tmp / "model.onnx", f"aligner_export {__version__}", {"source": src.name, "precision": quant.precision})
        write_tokenizer_files(ckpt.tokenizer_fields(), tmp, cfg.chat_template)
        write_json(tmp / "genai_config.json", genai_config(cfg))
        provenance = {
            "source": src.name,
            "source_sha256": sha256_of(src),
            "precision": quant.precision,
        }
        if quant.quantized:
            provenance.update({"block_size": quant.block_size, "accuracy_level": quant.accuracy_level})
        chosen = template or default_template(cfg.chat_template)
        write_json(tmp / "aligner.json", aligner_manifest(cfg, chosen, provenance))
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
