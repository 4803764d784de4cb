"""Merging a LoRA adapter (peft's `adapter_config.json` + `adapter_model.safetensors`) into a
checkpoint while it converts: no torch, one weight at a time.

Each adapted projection becomes W + s·B·A with s = alpha/r (alpha/√r with rsLoRA), in the
Hugging Face layout every source presents (GGUF sources un-permute Q/K first, as transformers
does when peft trains on a GGUF). Only plain LoRA on linear weights is merged; DoRA, per-module
rank or alpha patterns, trained biases and fully trained extra modules are refused by name.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np

from .errors import ExportError
from .safetensors_io import read_header, read_tensor

# peft's key: base_model.model.<module path>.lora_A.weight (some versions add an adapter name).
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


class LoraMerged:
    """A checkpoint whose `tensor(name)` has the adapter merged in; everything else passes
    through to the wrapped checkpoint."""

    def __init__(self, ckpt, adapter: Path):
        adapter = Path(adapter)
        cfg_path, weights = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
        for p in (cfg_path, weights):
            if not p.is_file():
                raise ExportError(f"--lora {adapter} has no {p.name}; pass a folder written by peft's save_pretrained (or `python -m aligner_train sft`)")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise ExportError(f"{cfg_path} is not valid JSON ({exc})") from exc
        self._check_config(cfg, cfg_path)
        r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
        self.scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        self.fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
        self._ckpt = ckpt
        self._pairs: dict[str, dict[str, object]] = {}
        for key, entry in read_header(weights).items():
            m = _KEY.match(key)
            if not m:
                raise ExportError(f"{weights.name} holds '{key}', which is not a LoRA A/B weight; only plain LoRA adapters can be merged")
            self._pairs.setdefault(m["module"] + ".weight", {})[m["ab"]] = entry
        for name, pair in self._pairs.items():
            if set(pair) != {"A", "B"}:
                raise ExportError(f"{weights.name} has only lora_{''.join(pair)} for {name}; the adapter is incomplete")
        if not self._pairs:
            raise ExportError(f"{weights.name} holds no LoRA weights")
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        self.provenance = {"adapter": adapter.name, "adapter_sha256": digest, "r": r, "lora_alpha": alpha,
                           "modules": len(self._pairs)}
        self._used: set[str] = set()

    @staticmethod
    def _check_config(cfg: dict, path: Path) -> None:
        if cfg.get("peft_type", "LORA") != "LORA":
            raise ExportError(f"{path} is a {cfg.get('peft_type')} adapter; only LoRA can be merged")
        for key, why in (("use_dora", "DoRA"), ("rank_pattern", "per-module ranks"), ("alpha_pattern", "per-module alphas"),
                         ("modules_to_save", "fully trained extra modules")):
            if cfg.get(key):
                raise ExportError(f"{path} uses {why} ({key}); only plain LoRA can be merged")
        if cfg.get("bias", "none") != "none":
            raise ExportError(f"{path} trains biases (bias={cfg['bias']}); only bias='none' can be merged")
        for key in ("r", "lora_alpha"):
            if not isinstance(cfg.get(key), (int, float)) or cfg[key] <= 0:
                raise ExportError(f"{path} has no positive '{key}'")

    def __getattr__(self, name):
        return getattr(self._ckpt, name)

    def tensor(self, name: str) -> np.ndarray:
        w = self._ckpt.tensor(name)
        pair = self._pairs.get(name)
        if pair is None:
            return w
        a, b = read_tensor(pair["A"]), read_tensor(pair["B"])
        delta = (b.astype(np.float64) @ a.astype(np.float64)) * self.scale
        if self.fan_in_fan_out:
            delta = delta.T
        if delta.shape != w.shape:
            raise ExportError(f"the adapter's update for {name} has shape {delta.shape} but the weight is {w.shape}; the adapter was trained on another model")
        self._used.add(name)
        return (w.astype(np.float64) + delta).astype(np.float32)

    def check_all_used(self) -> None:
        """After conversion: every adapted weight must have been read, or the adapter names
        modules this model does not have."""
        unused = sorted(set(self._pairs) - self._used)
        if unused:
            raise ExportError(f"the adapter adapts {len(unused)} weight(s) this model does not have (first: {unused[0]}); it was trained on another model")

    def sha256(self) -> str:
        return self._ckpt.sha256()
