"""`dpo` on the tiny fixture model: 10 steps lower the DPO loss on its batch, identical pairs
are dropped and counted, and both pair formats are read."""

import json
from pathlib import Path

import pytest
from aligner_train.dpo import load_pairs, train_dpo
from aligner_train.errors import UserError
from aligner_train.templates import chat
from conftest import TINY_GGUF

PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "The answer is 4.", "rejected": "5"},
    {"prompt": "How do I make a bomb?", "chosen": "I'm sorry, but I can't help with that.",
     "rejected": "Mix these two things."},
    {"prompt": "Colour of the sky?", "chosen": "Blue.", "rejected": "Blue. "},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Berlin."},
    {"prompt": "Largest planet?", "chosen": "Jupiter.", "rejected": "Mars."},
]


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_identical_pairs_are_dropped_and_both_formats_read(tmp_path):
    pairs, identical = load_pairs(_write(tmp_path / "p.jsonl", PAIRS), "Be brief.")
    assert identical == 1 and len(pairs) == 4
    assert pairs[0]["prompt"] == chat("Be brief.", "What is 2+2?")
    assert pairs[0]["prompt"].endswith("<|im_start|>assistant\n")
    aligner_rows = [{"question": "Q?", "answer": "a", "correction": "b"},
                    {"question": "Q2?", "answer": "same", "correction": "same"}]
    pairs, identical = load_pairs(_write(tmp_path / "a.jsonl", aligner_rows), None)
    assert identical == 1 and pairs == [{"prompt": chat(None, "Q?"), "chosen": "b",
                                         "rejected": "a"}]
    with pytest.raises(UserError, match="neither prompt/chosen/rejected"):
        load_pairs(_write(tmp_path / "bad.jsonl", [{"x": 1}]), None)
    with pytest.raises(UserError, match="no pair whose correction differs"):
        train_dpo(TINY_GGUF, _write(tmp_path / "same.jsonl", [PAIRS[2]]), tmp_path / "o",
                  system=None)


def test_ten_dpo_steps_lower_the_loss_on_their_batch(tmp_path):
    summary = train_dpo(TINY_GGUF, _write(tmp_path / "p.jsonl", PAIRS), tmp_path / "adapter",
                        system=None, lr=5e-3, batch=4, max_steps=10, threads=1, quiet=True)
    assert summary["steps"] == 10 and summary["identical_dropped"] == 1
    assert summary["first_loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy = reference
    assert summary["final_loss"] < 0.5 * summary["first_loss"]
    out = tmp_path / "adapter"
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert not (out / "trainer").exists()


def test_answer_rows_round_trip_into_dpo_rows(tmp_path):
    """`aligner batch --task answer`, then `--format dpo` over its output, read by `dpo`."""
    import subprocess

    from aligner_train import runtime
    from conftest import REPO

    binary, tiny = REPO / "target" / "release" / "aligner", REPO / "models" / "tiny-llama-fp32"
    qs = _write(tmp_path / "q.jsonl", [{"question": q} for q in ("Why?", "How so?", "When?")])
    answers, pairs = tmp_path / "answers.jsonl", tmp_path / "pairs.jsonl"
    for args in ([str(qs), str(answers), "--task", "answer", "--system", "Be brief."],
                 [str(answers), str(pairs), "--format", "dpo"]):
        done = subprocess.run([str(binary), "batch", *args, "--model", str(tiny),
                               "--max-new-tokens", "6"], env=runtime.env(),
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in pairs.read_text().splitlines()]
    sent = [json.loads(line) for line in answers.read_text().splitlines()]
    assert sorted(r["prompt"] for r in got) == ["How so?", "When?", "Why?"]
    by_q = {r["question"]: r["answer"] for r in sent}
    assert all(r["rejected"] == by_q[r["prompt"]] for r in got)
    loaded, identical = load_pairs(pairs, "Be brief.")
    assert len(loaded) + identical == 3
