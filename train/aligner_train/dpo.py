"""`python -m aligner_train dpo`: train the *upstream* on corrected ≻ original pairs (needs
`.venv-train`). DPO from trl, LoRA from peft; the reference model is the frozen base (trl uses
the base with the adapter switched off). Pairs whose correction equals the answer carry no
preference: they are dropped and counted. Checkpoints and resume come from transformers'
Trainer; the adapter is saved in bf16 with its provenance, as `sft` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from aligner_train.errors import UserError
from aligner_train.records import read_jsonl
from aligner_train.sft import LORA_TARGETS, _bf16_ok, _torch, load_base
from aligner_train.templates import chat
from aligner_train.wheels import sha256_file


def load_pairs(path: Path, system: str | None) -> tuple[list[dict], int]:
    """{prompt, chosen, rejected} rows (`aligner batch --format dpo`), or {question, answer,
    correction} rows; identical pairs dropped, and counted."""
    if not path.exists():
        raise UserError(f"--pairs {path} does not exist; write it with `aligner batch --format dpo`")
    pairs, identical = [], 0
    for n, row in enumerate(read_jsonl(path), 1):
        if {"prompt", "chosen", "rejected"} <= row.keys():
            q, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        elif {"question", "answer", "correction"} <= row.keys():
            q, chosen, rejected = row["question"], row["correction"], row["answer"]
        else:
            raise UserError(f"{path}:{n} has neither prompt/chosen/rejected nor "
                            "question/answer/correction")
        if chosen.strip() == rejected.strip():
            identical += 1
            continue
        # The runtime's own chat turn: the upstream learns on the prompt it answers at run time.
        pairs.append({"prompt": chat(system, q), "chosen": chosen, "rejected": rejected})
    return pairs, identical


def train_dpo(base: Path, pairs_path: Path, out: Path, *, system: str | None, beta: float = 0.1,
              lr: float = 5e-5, rank: int = 16, alpha: int = 32, batch: int = 4,
              epochs: float = 1.0, max_steps: int = 0, seed: int = 0, checkpoint_every: int = 25,
              max_len: int = 384, threads: int | None = None, quiet: bool = False) -> dict:
    torch = _torch()
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    pairs, identical = load_pairs(pairs_path, system)
    if not pairs:
        raise UserError(f"{pairs_path} has no pair whose correction differs from the answer "
                        f"({identical} identical pairs dropped)")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model, tok = load_base(base)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    cuda = torch.cuda.is_available()
    args = DPOConfig(
        output_dir=str(out / "trainer"), per_device_train_batch_size=batch,
        num_train_epochs=epochs, max_steps=max_steps or -1, learning_rate=lr, beta=beta,
        save_steps=checkpoint_every, save_total_limit=1, logging_steps=1, seed=seed,
        bf16=_bf16_ok("cuda" if cuda else "cpu"), use_cpu=not cuda, report_to=[],
        max_length=max_len, disable_tqdm=quiet, dataloader_num_workers=0)
    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      task_type="CAUSAL_LM", bias="none")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                         processing_class=tok, peft_config=lora)
    checkpoints = sorted((out / "trainer").glob("checkpoint-*"),
                         key=lambda p: int(p.name.split("-")[1]))
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    history = [h for h in trainer.state.log_history if "loss" in h]
    summary = {
        "base": str(base), "base_sha256": sha256_file(base) if base.is_file() else "",
        "pairs": str(pairs_path), "pairs_sha256": sha256_file(pairs_path),
        "pairs_used": len(pairs), "identical_dropped": identical, "beta": beta, "lr": lr,
        "rank": rank, "alpha": alpha, "batch": batch, "seed": seed,
        "steps": trainer.state.global_step,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "reward_accuracy_last": history[-1].get("rewards/accuracies") if history else None,
    }
    _save(trainer.model, out, history, summary)
    return summary


def _save(model, out: Path, history: list[dict], summary: dict) -> None:
    import shutil

    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    torch = _torch()
    model.save_pretrained(out)
    state = {k: v.detach().to(torch.bfloat16).contiguous()
             for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(out / "adapter_model.safetensors"))
    (out / "README.md").unlink(missing_ok=True)
    (out / "dpo_log.json").write_text(json.dumps(history, indent=1) + "\n")
    (out / "provenance.json").write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(out / "trainer", ignore_errors=True)
