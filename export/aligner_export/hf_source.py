"""Read a Hugging Face checkpoint folder: config.json, (sharded) safetensors, tokenizer files and
generation_config.json. Everything is validated before the first byte of output is written."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np

from .errors import ExportError
from .model_config import (
    SUPPORTED_ARCHITECTURES,
    ModelConfig,
    check_rope_scaling,
    expected_shapes,
)
from .safetensors_io import TensorEntry, read_header, read_tensor
from .sentencepiece_model import (
    check_against_sentencepiece,
    parse_model,
    tokenizer_json,
)

TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
GELU_TANH = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path.name} is not valid JSON ({exc}); fix or re-download it") from exc


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


class HfCheckpoint:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        cfg_path = self.folder / "config.json"
        if not cfg_path.is_file():
            raise ExportError(f"{self.folder} has no config.json; pass a Hugging Face model folder or a .gguf file")
        self.raw = _load_json(cfg_path)
        gen_path = self.folder / "generation_config.json"
        self.generation = _load_json(gen_path) if gen_path.is_file() else {}
        tok_cfg_path = self.folder / "tokenizer_config.json"
        self.tokenizer_config = _load_json(tok_cfg_path) if tok_cfg_path.is_file() else {}
        self.entries = self._index_weights()
        self.config = self._read_config()
        self._check_shapes()

    # -- weights ------------------------------------------------------------------------------
    def weight_files(self) -> list[Path]:
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = _load_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ExportError(f"{index.name} has no weight_map; re-download the checkpoint")
            files = sorted(set(weight_map.values()))
            for name in files:
                if not (self.folder / name).is_file():
                    raise ExportError(f"shard {name} listed in {index.name} is missing from {self.folder}; re-download it")
            return [self.folder / f for f in files]
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            hint = " (PyTorch .bin checkpoints are not supported; save with safetensors)" if any(self.folder.glob("*.bin")) else ""
            raise ExportError(f"{self.folder} holds no *.safetensors weights{hint}")
        return files

    def _index_weights(self) -> dict[str, TensorEntry]:
        entries: dict[str, TensorEntry] = {}
        for path in self.weight_files():
            entries.update(read_header(path))
        return entries

    def _check_shapes(self) -> None:
        for name, shape in expected_shapes(self.config).items():
            entry = self.entries.get(name)
            if entry is None:
                raise ExportError(f"tensor '{name}' is missing from the weights; the checkpoint is incomplete or not a {self.config.architecture} model")
            if entry.shape != shape:
                raise ExportError(
                    f"shape mismatch: tensor '{name}' is {list(entry.shape)} in the weights but config.json implies "
                    f"{list(shape)}; the config does not belong to these weights"
                )

    def tensor(self, name: str) -> np.ndarray:
        entry = self.entries.get(name)
        if entry is None:
            raise ExportError(f"tensor '{name}' is missing from the weights; the checkpoint is incomplete")
        w = read_tensor(entry)
        if self.config.architecture == "gemma" and name.endswith("norm.weight"):
            w = w + np.float32(1.0)  # Gemma's RMSNorm multiplies by (1 + w)
        return w

    # -- config -------------------------------------------------------------------------------
    def _read_config(self) -> ModelConfig:
        c = self.raw
        arch = str(c.get("model_type", ""))
        if arch not in SUPPORTED_ARCHITECTURES:
            named = ", ".join(c.get("architectures") or []) or "no architectures field"
            raise ExportError(
                f"unsupported architecture '{arch}' ({named}) in config.json; this exporter handles: "
                + ", ".join(SUPPORTED_ARCHITECTURES)
            )

        def req(key: str):
            if c.get(key) is None:
                raise ExportError(f"config.json lacks '{key}'; the checkpoint is incomplete")
            return c[key]

        hidden, heads = int(req("hidden_size")), int(req("num_attention_heads"))
        rope = c.get("rope_parameters") or {}
        theta = float(c.get("rope_theta") or rope.get("rope_theta") or 10000.0)
        scaling = check_rope_scaling(c.get("rope_scaling") or rope)
        if arch == "gemma":
            act = c.get("hidden_activation") or "gelu_pytorch_tanh"
        else:
            act = c.get("hidden_act", "silu")
        if act in GELU_TANH:
            activation = "gelu_tanh"
        elif act in ("silu", "swish", "gelu"):
            activation = "silu" if act in ("silu", "swish") else "gelu"
        else:
            raise ExportError(f"activation '{act}' is not supported; supported: silu, gelu, gelu_pytorch_tanh")
        if c.get("mlp_bias") or (arch != "qwen2" and c.get("attention_bias")):
            raise ExportError("linear-layer biases other than Qwen2's q/k/v bias are not supported")
        sliding = c.get("sliding_window") if arch == "mistral" else None
        if arch == "qwen2" and c.get("use_sliding_window"):
            raise ExportError("Qwen2 with use_sliding_window=true is not supported; set it to false if the model allows")
        gen = self.generation
        eos = _ids(gen.get("eos_token_id", c.get("eos_token_id")))
        bos = gen.get("bos_token_id", c.get("bos_token_id"))
        pad = gen.get("pad_token_id", c.get("pad_token_id"))
        return ModelConfig(
            architecture=arch,
            num_layers=int(req("num_hidden_layers")),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or hidden // heads),
            intermediate_size=int(req("intermediate_size")),
            vocab_size=int(req("vocab_size")),
            rope_theta=theta,
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            context_length=int(c.get("max_position_embeddings") or 4096),
            tied_embeddings=bool(c.get("tie_word_embeddings", arch == "gemma")),
            bos_token_id=None if bos is None else int(_ids(bos)[0]),
            eos_token_ids=eos,
            pad_token_id=None if pad is None else int(_ids(pad)[0]),
            chat_template=self._chat_template(),
            name=str(c.get("_name_or_path") or self.folder.name),
            activation=activation,
            qkv_bias=arch == "qwen2",
            embedding_multiplier=math.sqrt(hidden) if arch == "gemma" else None,
            sliding_window=int(sliding) if sliding else None,
            rope_scaling=scaling,
        )

    def _chat_template(self) -> str | None:
        jinja = self.folder / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        tpl = self.tokenizer_config.get("chat_template")
        return tpl if isinstance(tpl, str) else None

    # -- provenance ---------------------------------------------------------------------------
    def sha256(self) -> str:
        """One digest over config.json and every weight file (name and content)."""
        outer = hashlib.sha256()
        for path in [self.folder / "config.json", *self.weight_files()]:
            inner = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    inner.update(chunk)
            outer.update(f"{path.name}:{inner.hexdigest()}\n".encode())
        return outer.hexdigest()

    # -- tokenizer ----------------------------------------------------------------------------
    def _extra_added_tokens(self) -> dict[int, tuple[str, bool]]:
        extra: dict[int, tuple[str, bool]] = {}
        for key, info in (self.tokenizer_config.get("added_tokens_decoder") or {}).items():
            extra[int(key)] = (info["content"], bool(info.get("special", True)))
        added = self.folder / "added_tokens.json"
        if added.is_file():
            for content, token_id in _load_json(added).items():
                extra.setdefault(int(token_id), (content, True))
        return extra

    def write_tokenizer(self, out: Path) -> dict:
        """Copy tokenizer.json, or build it from tokenizer.model; returns provenance notes."""
        for name in TOKENIZER_SIDE_FILES:
            if (self.folder / name).is_file():
                shutil.copyfile(self.folder / name, out / name)
        src_json = self.folder / "tokenizer.json"
        if src_json.is_file():
            shutil.copyfile(src_json, out / "tokenizer.json")
            return {"tokenizer": "tokenizer.json (copied)"}
        sp_path = self.folder / "tokenizer.model"
        if not sp_path.is_file():
            raise ExportError(f"{self.folder} has neither tokenizer.json nor tokenizer.model; add the tokenizer files")
        data = sp_path.read_bytes()
        add_bos = bool(self.tokenizer_config.get("add_bos_token", True))
        built = tokenizer_json(parse_model(data), self._extra_added_tokens(), add_bos)
        text = json.dumps(built, ensure_ascii=False)
        checked = check_against_sentencepiece(data, text)
        (out / "tokenizer.json").write_text(text, encoding="utf-8")
        note = {"tokenizer": "built from tokenizer.model"}
        if checked is not None:
            note["tokenizer_check"] = f"ids and decoding identical to sentencepiece on {checked} texts"
        return note
