//! `aligner batch` for real: every input row ends as exactly one output or reject, a killed run
//! resumes without duplicates or loss, shards split the input, and DPO rows are well formed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// 50 rows: corrections to make, plus invalid JSON, a missing field, a non-string field, an
/// empty line, and an answer far longer than the default model's 8192-token context.
fn write_input(dir: &Path) -> (PathBuf, Vec<String>) {
    let mut lines: Vec<String> = (0..50)
        .map(|i| json!({"question": format!("What is {i} plus {i}?"), "answer": format!("It is {}.", 2 * i + 1)}).to_string())
        .collect();
    lines[4] = "{broken".into();
    lines[9] = json!({"question": "only a question"}).to_string();
    lines[13] = json!({"question": "q", "answer": 42}).to_string();
    lines[21] = String::new();
    lines[30] = json!({"question": "q", "answer": "word ".repeat(9000)}).to_string();
    let path = dir.join("in.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (path, lines)
}

/// Line number -> how many rows (outputs and rejects together) mention it.
fn coverage(out: &Path) -> BTreeMap<u64, usize> {
    let rejects = out.with_file_name(
        out.file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".jsonl", ".rejects.jsonl"),
    );
    let mut seen = BTreeMap::new();
    for row in jsonl(out).into_iter().chain(jsonl(&rejects)) {
        *seen
            .entry(row["meta"]["line"].as_u64().unwrap())
            .or_insert(0) += 1;
    }
    seen
}

fn batch(model: &Path, input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "batch",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ];
    if !extra.contains(&"--max-new-tokens") {
        args.extend_from_slice(&["--max-new-tokens", "8"]);
    }
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn every_input_row_ends_as_one_output_or_one_reject() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = write_input(dir.path());
    let out = dir.path().join("out.jsonl");
    let o = batch(&default_model(), &input, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seen = coverage(&out);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>()
    );
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    let rejects: BTreeMap<u64, String> = jsonl(&dir.path().join("out.rejects.jsonl"))
        .iter()
        .map(|r| {
            (
                r["meta"]["line"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rejects.keys().copied().collect::<Vec<_>>(),
        vec![4, 9, 13, 21, 30]
    );
    assert!(rejects[&4].starts_with("invalid JSON"));
    assert_eq!(rejects[&9], "missing field 'answer'");
    assert_eq!(rejects[&13], "field 'answer' is not a string");
    assert_eq!(rejects[&21], "empty line");
    assert!(
        rejects[&30].contains("context holds 8192"),
        "{}",
        rejects[&30]
    );
    assert!(
        stderr(&o).contains("45 corrected, 5 rejected"),
        "{}",
        stderr(&o)
    );

    // A second run finds everything done and writes nothing.
    let again = batch(&default_model(), &input, &out, &[]);
    assert!(
        stderr(&again).contains("0 corrected, 0 rejected")
            && stderr(&again).contains("50 already done")
    );
    assert_eq!(coverage(&out).values().sum::<usize>(), 50);
}

#[test]
fn a_killed_run_resumes_without_duplicates_or_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = write_input(dir.path());
    let out = dir.path().join("out.jsonl");
    // The default model with one worker is slow enough to be killed part way.
    let model = default_model();
    let mut child = aligner()
        .args([
            "batch",
            input.to_str().unwrap(),
            out.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--max-new-tokens",
            "24",
            "--suppress-eos",
            "--workers",
            "1",
            "--sync-every",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while jsonl(&out).len() < 8 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the batch made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = coverage(&out).len();
    assert!(
        before < 50,
        "killed too late to test resuming ({before} rows)"
    );

    let o = batch(
        &model,
        &input,
        &out,
        &["--max-new-tokens", "24", "--suppress-eos"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let seen = coverage(&out);
    assert_eq!(seen.len(), 50, "rows lost: {seen:?}");
    assert!(seen.values().all(|&n| n == 1), "duplicates: {seen:?}");
}

#[test]
fn shards_are_disjoint_and_cover_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = write_input(dir.path());
    let mut union = BTreeMap::new();
    for i in 0..3 {
        let out = dir.path().join(format!("shard{i}.jsonl"));
        let o = batch(
            &default_model(),
            &input,
            &out,
            &["--shard", &format!("{i}/3")],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        for (line, n) in coverage(&out) {
            assert_eq!(line % 3, i, "line {line} in shard {i}");
            *union.entry(line).or_insert(0) += n;
        }
    }
    assert_eq!(union.len(), 50);
    assert!(union.values().all(|&n| n == 1));
    let bad = batch(
        &default_model(),
        &input,
        &dir.path().join("x.jsonl"),
        &["--shard", "3/3"],
    );
    assert_one_line_error(&bad, "--shard 3/3 is not I/N");
}

#[test]
fn dpo_and_sharegpt_rows_are_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    let (input, lines) = write_input(dir.path());
    let out = dir.path().join("dpo.jsonl");
    assert!(batch(&default_model(), &input, &out, &["--format", "dpo"])
        .status
        .success());
    let dpo = jsonl(&out);
    assert_eq!(dpo.len(), 45);
    for row in &dpo {
        let line = row["meta"]["line"].as_u64().unwrap() as usize;
        let source: Value = serde_json::from_str(&lines[line]).unwrap();
        assert_eq!(row["prompt"], source["question"]);
        assert_eq!(row["rejected"], source["answer"]);
        assert!(row["chosen"].is_string());
        assert_eq!(
            row.as_object().unwrap().len(),
            4,
            "prompt, chosen, rejected, meta"
        );
    }
    let out = dir.path().join("sharegpt.jsonl");
    assert!(
        batch(&default_model(), &input, &out, &["--format", "sharegpt"])
            .status
            .success()
    );
    let row = &jsonl(&out)[0];
    assert_eq!(row["conversations"][0]["from"], "human");
    assert_eq!(row["chosen"]["from"], "gpt");
    assert_eq!(row["rejected"]["from"], "gpt");
}

#[test]
fn custom_field_names_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        json!({"prompt": "Capital of France?", "response": "Berlin."}).to_string() + "\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let o = batch(
        &default_model(),
        &input,
        &out,
        &["--question-field", "prompt", "--answer-field", "response"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let row = &jsonl(&out)[0];
    assert_eq!(
        (row["question"].as_str(), row["answer"].as_str()),
        (Some("Capital of France?"), Some("Berlin."))
    );
}

/// `--task answer`: each question answered as a chat turn, exactly what `aligner generate`
/// gives for the same ChatML prompt; the rows then feed a correcting run and its DPO pairs.
#[test]
fn answer_task_writes_upstream_answers_that_feed_a_correcting_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("questions.jsonl");
    let questions = ["What is the capital of France?", "Name a primary colour."];
    let text: String = questions
        .iter()
        .map(|q| json!({"question": q}).to_string() + "\n")
        .collect();
    std::fs::write(&input, text).unwrap();
    let answers = dir.path().join("answers.jsonl");
    let system = "Answer in one short sentence.";
    let o = batch(
        &default_model(),
        &input,
        &answers,
        &[
            "--task",
            "answer",
            "--system",
            system,
            "--max-new-tokens",
            "12",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 answered"), "{}", stderr(&o));
    let rows_out = jsonl(&answers);
    assert_eq!(rows_out.len(), 2);
    for row in &rows_out {
        let q = row["question"].as_str().unwrap();
        assert_eq!(row["meta"]["task"], "answer");
        assert_eq!(row["meta"]["system"], system);
        assert!(row["meta"]["latency_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(row.as_object().unwrap().len(), 3, "question, answer, meta");
        let prompt = format!(
            "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
        );
        let g = run(&[
            "generate",
            "--model",
            default_model().to_str().unwrap(),
            "--prompt",
            &prompt,
            "--max-new-tokens",
            "12",
            "--stop",
            "<|im_end|>",
        ]);
        assert!(g.status.success(), "{}", stderr(&g));
        let generated = String::from_utf8_lossy(&g.stdout);
        assert_eq!(
            row["answer"].as_str().unwrap(),
            generated.trim_end_matches('\n')
        );
        assert!(!generated.trim().is_empty());
    }
    // The answers are the input of a correcting run, and so of preference pairs.
    let pairs = dir.path().join("pairs.jsonl");
    let o = batch(&default_model(), &answers, &pairs, &["--format", "dpo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dpo = jsonl(&pairs);
    assert_eq!(dpo.len(), 2);
    // Rows are written as they finish (`meta.line` says which input line), so match by prompt.
    for pair in &dpo {
        let answer = rows_out
            .iter()
            .find(|r| r["question"] == pair["prompt"])
            .unwrap_or_else(|| panic!("no answer row for {}", pair["prompt"]));
        assert_eq!(pair["rejected"], answer["answer"]);
    }
}

#[test]
fn answer_task_options_that_cannot_apply_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("q.jsonl");
    std::fs::write(&input, "{\"question\": \"q\"}\n").unwrap();
    let out = dir.path().join("out.jsonl");
    for (extra, says) in [
        (
            &["--task", "answer", "--format", "dpo"][..],
            "drop --format",
        ),
        (
            &["--system", "Be brief."][..],
            "--system is for --task answer",
        ),
    ] {
        let o = batch(&default_model(), &input, &out, extra);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
        assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    }
}
