//! Regression tests for inputs that once crashed, hung or exhausted memory through the CLI:
//! huge budgets, unbounded files, absurd manifests and out-of-range flags. Each ends in one
//! `error:` line with the README's exit code (2: the input; 1: the model folder), or works.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn huge_token_budgets_are_capped_at_the_context() {
    // Regression: the loop reserved max_new_tokens before capping it, and aborted.
    let m = tiny_model();
    for n in ["1000000000000", "4611686018427387904"] {
        let o = correct_with(&m, &["--max-new-tokens", n, "--suppress-eos", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["finish_reason"], "context_full");
    }
    // The same budget as the folder's default.
    let d = broken_copy(|p| {
        edit_json(&p.join("aligner.json"), |v| {
            v["generation"]["max_new_tokens"] = 1_000_000_000_000u64.into()
        })
    });
    let o = correct_with(d.path(), &["--suppress-eos", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn an_endless_answer_file_is_refused_by_size() {
    // Regression: --answer-file /dev/zero read until allocation failed.
    let m = tiny_model();
    let o = run(&[
        "correct",
        "--model",
        m.to_str().unwrap(),
        "-q",
        "Q",
        "--answer-file",
        "/dev/zero",
    ]);
    assert_one_line_error(&o, "more than 16 MiB");
    assert_eq!(o.status.code(), Some(2));
    // Below that bound but beyond what the context could hold: refused before tokenizing.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.txt");
    std::fs::write(&big, "w ".repeat(3_000_000)).unwrap();
    let o = run(&[
        "correct",
        "--model",
        m.to_str().unwrap(),
        "-q",
        "Q",
        "--answer-file",
        big.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "bytes, more than the model's context");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn absurd_manifest_numbers_are_broken_folders() {
    // Regression: 1e12 layers looped with growing memory; a vocabulary of 1e12 aborted.
    for (field, value, needle) in [
        (
            "num_hidden_layers",
            1_000_000_000_000u64,
            "num_hidden_layers",
        ),
        ("vocab_size", 1_000_000_000_000, "vocab_size"),
        ("vocab_size", 1000, "logits have"),
        ("context_length", 1u64 << 40, "context_length"),
    ] {
        let d = broken_copy(|p| {
            edit_json(&p.join("genai_config.json"), |v| match field {
                "num_hidden_layers" => v["model"]["decoder"][field] = value.into(),
                _ => v["model"][field] = value.into(),
            })
        });
        let o = correct_with(d.path(), &[]);
        assert_one_line_error(&o, needle);
        assert_eq!(o.status.code(), Some(1), "{field}");
    }
}

#[test]
fn unreadable_folder_files_name_their_real_cause() {
    let d = broken_copy(|p| {
        std::fs::remove_file(p.join("genai_config.json")).unwrap();
        std::os::unix::fs::symlink(p.join("b"), p.join("genai_config.json")).unwrap();
        std::os::unix::fs::symlink(p.join("genai_config.json"), p.join("b")).unwrap();
    });
    let o = correct_with(d.path(), &[]);
    assert_one_line_error(&o, "symbolic links");
    assert_eq!(o.status.code(), Some(1));
    let d = broken_copy(|p| {
        std::fs::remove_file(p.join("tokenizer.json")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", p.join("tokenizer.json")).unwrap();
    });
    let o = correct_with(d.path(), &[]);
    assert_one_line_error(&o, "tokenizer.json is not a regular file");
    assert_eq!(o.status.code(), Some(1));
    let d = broken_copy(|p| {
        std::fs::remove_file(p.join("aligner.json")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", p.join("aligner.json")).unwrap();
    });
    assert_one_line_error(
        &correct_with(d.path(), &[]),
        "aligner.json is not a regular file",
    );
}

#[test]
fn thread_counts_are_checked() {
    let m = tiny_model();
    let o = correct_with(&m, &["--threads", "4294967296"]);
    assert_one_line_error(&o, "--threads 4294967296 must be between 1 and");
    assert_eq!(o.status.code(), Some(2));
    assert_one_line_error(&correct_with(&m, &["--threads", "0"]), "--threads 0");
    // More threads than cores: capped, with a note, and the run works.
    let o = correct_with(&m, &["--threads", "1000", "--max-new-tokens", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--threads 1000 is more than the"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn out_of_range_token_ids_and_temperatures_exit_2() {
    let m = tiny_model();
    let o = run(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt-ids",
        "1,4294967296",
    ]);
    assert_one_line_error(&o, "'4294967296' is not a token id");
    assert_eq!(o.status.code(), Some(2));
    let o = correct_with(&m, &["--temperature", "inf"]);
    assert_one_line_error(&o, "temperature inf must be >= 0 and finite");
    assert_eq!(o.status.code(), Some(2));
    // A vanishing temperature is greedy, not noise.
    let greedy = correct_with(&m, &["--max-new-tokens", "8", "--json"]);
    let tiny_t = correct_with(
        &m,
        &["--max-new-tokens", "8", "--json", "--temperature", "1e-40"],
    );
    let text = |o: &std::process::Output| {
        serde_json::from_str::<Value>(&stdout(o)).unwrap()["tokens"].clone()
    };
    assert_eq!(text(&greedy), text(&tiny_t));
}
