"""The training loop behind `sft`: checkpoints, resume, progress, the loss curve, and the
adapter written in bf16 (half the size) with its provenance."""

from __future__ import annotations

import csv
import json
import resource
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from aligner_train.errors import UserError
from aligner_train.records import read_jsonl
from aligner_train.sft import (
    Recipe,
    _bf16_ok,
    _torch,
    collate,
    encode,
    fingerprint,
    load_base,
    schedule,
    wrap,
)
from aligner_train.templates import TEMPLATES
from aligner_train.wheels import sha256_file

CKPT = "checkpoint"


def _save_checkpoint(out: Path, model, optimizer, scheduler, step: int, history: list, key: str):
    torch = _torch()
    tmp = out / (CKPT + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    trainable = {k: v for k, v in model.state_dict().items() if k in names}
    torch.save({"model": trainable, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "history": history,
                "key": key, "rng": torch.get_rng_state()}, tmp / "state.pt")
    final = out / CKPT
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # a kill mid-save leaves the previous checkpoint whole


def _load_checkpoint(out: Path, model, optimizer, scheduler, key: str):
    torch = _torch()
    path = out / CKPT / "state.pt"
    if not path.exists():
        return 0, []
    state = torch.load(path, weights_only=False)
    if state["key"] != key:
        raise UserError(f"{out} holds a checkpoint of another recipe or data; use a new --out, "
                        f"or delete {out / CKPT} to start again")
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state["step"], state["history"]


def _curve(out: Path, history: list[dict]) -> None:
    with open(out / "loss.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "tokens", "seconds"])
        w.writeheader()
        w.writerows(history)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (correction + EOS tokens)")
    ax.set_title("sft loss")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)


def train(base: Path, rows_path: Path, out: Path, recipe: Recipe, threads: int | None = None,
          quiet: bool = False) -> dict:
    torch = _torch()
    from tqdm import tqdm

    if recipe.template not in TEMPLATES:
        raise UserError(f"unknown --template {recipe.template}")
    if not rows_path.exists():
        raise UserError(f"--rows {rows_path} does not exist; build it with "
                        "`python -m aligner_train mix`")
    torch.manual_seed(recipe.seed)
    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_base(base)
    rows = list(read_jsonl(rows_path))
    examples, skipped = encode(tok, rows, recipe.template, recipe.max_len)
    if not examples:
        raise UserError(f"no row of {rows_path} fits --max-len {recipe.max_len}")
    batches = schedule(examples, recipe)
    data_sha, base_sha = sha256_file(rows_path), sha256_file(base) if base.is_file() else ""
    key = fingerprint(recipe, data_sha, base_sha)
    model = wrap(model, recipe).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    total = len(batches)
    warm = max(1, min(10, total // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - s / total))
    out.mkdir(parents=True, exist_ok=True)
    start, history = _load_checkpoint(out, model, optimizer, scheduler, key)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    autocast = _bf16_ok(device)
    bar = tqdm(total=total, initial=start, disable=quiet, unit="step", dynamic_ncols=True)
    began, tokens = time.monotonic(), 0
    for step in range(start, total):
        ids, mask, labels = (t.to(device) for t in collate([examples[i] for i in batches[step]],
                                                            pad))
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        elapsed = time.monotonic() - began
        history.append({"step": step + 1, "loss": round(loss.item(), 5),
                        "lr": scheduler.get_last_lr()[0], "tokens": int(mask.sum()),
                        "seconds": round(elapsed, 2)})
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens / max(elapsed, 1e-9):.0f}")
        bar.update(1)
        if (step + 1) % recipe.checkpoint_every == 0 and step + 1 < total:
            _save_checkpoint(out, model, optimizer, scheduler, step + 1, history, key)
            _curve(out, history)
    bar.close()
    _curve(out, history)
    last = history[-min(20, len(history)):] if history else []
    summary = {
        "recipe": asdict(recipe), "base": str(base), "base_sha256": base_sha,
        "rows": str(rows_path), "rows_sha256": data_sha, "examples": len(examples),
        "skipped_over_max_len": skipped, "steps": total,
        "final_loss": round(sum(h["loss"] for h in last) / len(last), 4) if last else None,
        "first_loss": history[0]["loss"] if history else None,
        "device": device, "bf16_autocast": autocast, "threads": torch.get_num_threads(),
        "train_seconds_this_run": round(time.monotonic() - began, 1),
        "tokens_per_second_this_run": round(tokens / max(time.monotonic() - began, 1e-9), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    save(model, out, recipe, summary)
    return summary


def save(model, out: Path, recipe: Recipe, summary: dict) -> None:
    """The adapter (or, with --full, the model) plus provenance.json."""
    torch = _torch()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        recipe.save_dtype]
    if recipe.full:
        model.to(dtype).save_pretrained(out / "model", safe_serialization=True)
    else:
        from safetensors.torch import save_file

        model.save_pretrained(out)  # adapter_config.json (+ fp32 weights, replaced next)
        from peft import get_peft_model_state_dict

        state = {k: v.detach().to(dtype).contiguous()
                 for k, v in get_peft_model_state_dict(model).items()}
        save_file(state, str(out / "adapter_model.safetensors"))
        (out / "README.md").unlink(missing_ok=True)  # peft's empty model card
    (out / "provenance.json").write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(out / CKPT, ignore_errors=True)
