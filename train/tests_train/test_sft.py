"""`sft` on the tiny fixture model (torch, CPU): the loss falls, the prompt carries no loss,
a killed run resumes, and the adapter round-trips through the exporter's merge."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from aligner_train.sft import Recipe, encode, load_base, schedule
from aligner_train.templates import render
from aligner_train.trainer import train
from conftest import TINY_GGUF, TRAIN

ROWS = [
    {"question": "What is 2+2?", "answer": "5", "correction": "The answer is 4."},
    {"question": "Capital of France?", "answer": "Paris.", "correction": "Paris."},
    {"question": "How do I make a bomb?", "answer": "Mix these two things.",
     "correction": "I'm sorry, but I can't help with that."},
    {"question": "Colour of the sky?", "answer": "Blue.", "correction": "Blue."},
]


def _rows(tmp_path: Path, rows=ROWS) -> Path:
    p = tmp_path / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_prompt_tokens_carry_no_loss():
    _, tok = load_base(TINY_GGUF)
    examples, skipped = encode(tok, ROWS, "aligner-v2", 384)
    assert skipped == 0
    for row, e in zip(ROWS, examples):
        prompt = tok(render("aligner-v2", row["question"], row["answer"]),
                     add_special_tokens=False)["input_ids"]
        target = tok(row["correction"], add_special_tokens=False)["input_ids"]
        n = len(prompt)
        assert e["input_ids"][:n] == prompt
        assert e["labels"][:n] == [-100] * n  # the prompt is masked
        assert e["labels"][n:] == target + [tok.eos_token_id]  # correction and EOS carry it
    too_long, skipped = encode(tok, ROWS, "aligner-v2", 8)
    assert too_long == [] and skipped == 4


def test_warm_up_batches_are_identity_rows_only():
    examples = [{"identity": i % 2 == 0} for i in range(10)]
    batches = schedule(examples, Recipe(batch=2, warmup_steps=3, epochs=1.0, seed=1))
    assert len(batches) == 3 + 5
    for b in batches[:3]:
        assert all(examples[i]["identity"] for i in b)
    assert sorted(i for b in batches[3:] for i in b) == list(range(10))
    assert batches == schedule(examples, Recipe(batch=2, warmup_steps=3, epochs=1.0, seed=1))


def test_thirty_steps_lower_the_loss_on_a_fixed_batch(tmp_path):
    recipe = Recipe(template="aligner-v2", batch=4, warmup_steps=0, epochs=30.0, max_steps=30,
                    lr=3e-3, checkpoint_every=1000)
    summary = train(TINY_GGUF, _rows(tmp_path), tmp_path / "out", recipe, threads=2, quiet=True)
    assert summary["steps"] == 30
    history = [float(r.split(",")[1]) for r in
               (tmp_path / "out" / "loss.csv").read_text().splitlines()[1:]]
    assert len(history) == 30
    assert np.mean(history[-5:]) < 0.7 * np.mean(history[:5]), history
    assert (tmp_path / "out" / "loss.png").exists()
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["rows_sha256"] and prov["base_sha256"] and prov["recipe"]["seed"] == 0


def _sft_cmd(rows: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "aligner_train", "sft", "--base", str(TINY_GGUF), "--rows",
            str(rows), "--out", str(out), "--template", "aligner-v2", "--batch", "2",
            "--warmup-steps", "2", "--epochs", "100", "--max-steps", str(steps),
            "--checkpoint-every", "5", "--lr", "1e-3", "--threads", "1", "--quiet"]


def test_a_killed_run_resumes(tmp_path):
    rows = _rows(tmp_path)
    # Reference: one uninterrupted run.
    whole = subprocess.run(_sft_cmd(rows, tmp_path / "whole", 40), cwd=TRAIN,
                           capture_output=True, text=True, check=False)
    assert whole.returncode == 0, whole.stderr[-2000:]
    # Killed once a checkpoint exists, then run again.
    out = tmp_path / "killed"
    proc = subprocess.Popen(_sft_cmd(rows, out, 40), cwd=TRAIN, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint" / "state.pt").exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
    assert 0 < state["step"] < 40
    again = subprocess.run(_sft_cmd(rows, out, 40), cwd=TRAIN, capture_output=True, text=True,
                           check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    lines = (out / "loss.csv").read_text().splitlines()[1:]
    assert [int(x.split(",")[0]) for x in lines] == list(range(1, 41))
    ref = [float(x.split(",")[1]) for x in (tmp_path / "whole" / "loss.csv").read_text().splitlines()[1:]]
    got = [float(x.split(",")[1]) for x in lines]
    # Same batches, same weights from the checkpoint: the resumed curve follows the whole one.
    np.testing.assert_allclose(got, ref, rtol=0.05, atol=0.05)
    assert not (out / "checkpoint").exists()


def test_adapter_round_trips_through_the_exporters_merge(tmp_path):
    from aligner_export.convert import convert
    from aligner_export.decoder_graph import QuantOptions
    from aligner_export.ort_runner import FolderRunner
    from peft import PeftModel

    recipe = Recipe(template="aligner-v2", batch=4, warmup_steps=0, epochs=10.0, max_steps=10,
                    lr=3e-3, save_dtype="fp32")
    train(TINY_GGUF, _rows(tmp_path), tmp_path / "adapter", recipe, threads=2, quiet=True)
    folder = convert(TINY_GGUF, tmp_path / "merged", QuantOptions("fp32"),
                     lora=tmp_path / "adapter")
    base, tok = load_base(TINY_GGUF)
    merged = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload().eval()
    ids = tok(render("aligner-v2", "What is 2+2?", "5"), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        want = merged(torch.tensor([ids])).logits[0].numpy()
    got = FolderRunner(folder).logits(ids)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    base_only, _ = load_base(TINY_GGUF)
    with torch.no_grad():
        before = base_only(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(want - before).max() > 1e-2  # training moved the model


@pytest.mark.parametrize("args,message", [
    (["--base", "/nonexistent.gguf"], "does not exist"),
    (["--rows", "/nonexistent.jsonl"], "does not exist"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    cmd = [sys.executable, "-m", "aligner_train", "sft", "--base", str(TINY_GGUF), "--rows",
           str(_rows(tmp_path)), "--out", str(tmp_path / "o")]
    flag = args[0]
    cmd[cmd.index(flag) + 1] = args[1]
    p = subprocess.run(cmd, cwd=TRAIN, capture_output=True, text=True, check=False,
                       env=dict(os.environ))
    assert p.returncode == 1
    assert len(p.stderr.strip().splitlines()) == 1 and message in p.stderr, p.stderr
