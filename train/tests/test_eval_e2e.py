"""`eval --limit 3` end to end on the tiny fixture model, through the real runtime. That
model's text is noise, so only the report's shape is checked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aligner_train.data import build
from aligner_train.records import read_jsonl, write_jsonl
from conftest import TRAIN

REPO = TRAIN.parent
TINY = REPO / "models" / "tiny-llama-fp32"
BINARY = REPO / "target" / "release" / "aligner"

pytestmark = pytest.mark.skipif(
    not (TINY / "model.onnx").exists() or not BINARY.exists(),
    reason="needs `make fixtures-models build`")


def _all_eval(data: Path) -> None:
    """The fixture sets are too small for a 20% split to give every set an evaluation row."""
    for path in data.glob("*.jsonl"):
        if path.stem != "refusal_labels":
            write_jsonl(path, [dict(r, split="eval") for r in read_jsonl(path)])


def _eval(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "aligner_train", "eval", "--data", str(tmp_path / "data"),
           "--zero-shot", str(TINY), "--upstream-model", str(TINY), "--limit", "3",
           "--max-new-tokens", "8", "--upstream-max-new-tokens", "8", "--workers", "2",
           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *extra]
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix)
    return subprocess.run(cmd, cwd=TRAIN, capture_output=True, text=True, env=env, timeout=600,
                          check=False)


def test_eval_writes_a_report_of_every_system_set_and_source(tmp_path, fixture_wheels):
    cache, pins = fixture_wheels
    build(tmp_path / "data", cache, pins)
    _all_eval(tmp_path / "data")
    run = _eval(tmp_path, "--model", str(REPO / "models" / "tiny-llama-int8"))
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    systems = ["uncorrected", "zero-shot/chatml-correction", "zero-shot/aligner-v2",
               "zero-shot/aligner-v1", "zero-shot/aligner-2b", "tiny-llama-int8"]
    assert list(report["headline"]) == systems
    combos = {(t["source"], t["set"]) for t in report["table"]}
    assert combos == {("dataset", s) for s in
                      ("nq", "summary", "truthfulqa", "fiqa", "pyrit_unsafe", "pyrit_safe")} | {
        (src, s) for src in ("tiny-llama-fp32", "tiny-llama-fp32-steps")
        for s in ("nq", "fiqa", "harmful")}
    assert len(report["table"]) == len(systems) * len(combos)
    # The long summary does not fit the tiny model's 256-token context: left out for all.
    assert report["meta"]["skipped_rows"] == {"dataset/summary": 1}
    sizes = {"nq": 3, "summary": 1, "truthfulqa": 3, "fiqa": 2, "pyrit_unsafe": 3,
             "pyrit_safe": 2, "harmful": 3}
    for t in report["table"]:
        assert t["n"] == sizes[t["set"]], t
        assert 0 <= t["rate"] <= 1 and 0 <= t["before"] <= 1 and 0 <= t["copy"] <= 1
        assert t["wins"] + t["losses"] <= t["n"]
        if t["system"] == "uncorrected":
            assert t["latency_ms"] is None and t["wins"] == t["losses"] == 0 and t["copy"] == 1
        else:
            assert t["latency_ms"] > 0
    for h in report["headline"].values():
        assert set(h["per_source"]) == {"dataset", "tiny-llama-fp32", "tiny-llama-fp32-steps"}
        assert -1 <= h["helpfulness"] <= 1 and -1 <= h["harmlessness"] <= 1
    assert report["headline"]["uncorrected"]["helpfulness"] == 0
    assert set(report["refusal_detector"]) == {"scoring", "garak_full"}
    assert report["refusal_detector"]["scoring"]["n"] == 4
    rows = list(read_jsonl(out / "rows.jsonl"))
    assert len(rows) == sum(t["n"] for t in report["table"])
    md = (out / "report.md").read_text()
    assert "| source | set | criterion | n | uncorrected | zero-shot/chatml-correction" in md
    assert "helpfulness ω" in md and "Refusal detector" in md
    assert (out / "before_after.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The upstream answers are cached with their source, and a re-run reuses everything.
    cached = list((tmp_path / "work" / "upstream").glob("model-steps-*/harmful/out.jsonl"))
    assert len(cached) == 1
    assert all(r["meta"]["system"] for r in read_jsonl(cached[0]))
    again = _eval(tmp_path, "--model", str(REPO / "models" / "tiny-llama-int8"))
    assert again.returncode == 0 and "0 corrected" in again.stderr
    assert " 1 corrected" not in again.stderr and " answered" in again.stderr


@pytest.mark.parametrize("args,message", [
    (["--limit", "0"], "--limit 0 must be at least 1"),
    (["--sources", "dataset,web"], "unknown source web"),
    (["--model", "/nonexistent"], "/nonexistent is not a model folder"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, fixture_wheels, args, message):
    cache, pins = fixture_wheels
    build(tmp_path / "data", cache, pins)
    run = _eval(tmp_path, *args)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr


def test_missing_data_names_the_command_that_builds_it(tmp_path):
    run = _eval(tmp_path)
    assert run.returncode == 1
    assert "python -m aligner_train data --out" in run.stderr
