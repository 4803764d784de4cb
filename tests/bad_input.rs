//! Every bad input ends in one `error:` line and a non-zero exit, never a panic.

mod common;

use common::*;

/// A correction of at most 4 tokens: enough to reach every check.
fn correct_short(model: &std::path::Path, extra: &[&str]) -> std::process::Output {
    correct_with(model, &[&["--max-new-tokens", "4"][..], extra].concat())
}

#[test]
fn missing_model_folder() {
    let o = correct_short(std::path::Path::new("/nonexistent/model"), &[]);
    assert_one_line_error(&o, "does not exist");
}

#[test]
fn missing_genai_config() {
    let d = broken_copy(|p| std::fs::remove_file(p.join("genai_config.json")).unwrap());
    assert_one_line_error(
        &correct_short(d.path(), &[]),
        "genai_config.json is missing",
    );
}

#[test]
fn invalid_genai_config() {
    let d = broken_copy(|p| std::fs::write(p.join("genai_config.json"), "{\"model\": 3").unwrap());
    assert_one_line_error(
        &correct_short(d.path(), &[]),
        "genai_config.json is invalid",
    );
}

#[test]
fn truncated_model_onnx() {
    let d = broken_copy(|p| {
        let bytes = std::fs::read(p.join("model.onnx")).unwrap();
        std::fs::write(p.join("model.onnx"), &bytes[..bytes.len() / 3]).unwrap();
    });
    assert_one_line_error(&correct_short(d.path(), &[]), "re-export the folder");
}

#[test]
fn truncated_tokenizer() {
    let d = broken_copy(|p| {
        let text = std::fs::read(p.join("tokenizer.json")).unwrap();
        std::fs::write(p.join("tokenizer.json"), &text[..text.len() / 2]).unwrap();
    });
    assert_one_line_error(
        &correct_short(d.path(), &[]),
        "tokenizer.json cannot be parsed",
    );
}

#[test]
fn missing_tokenizer() {
    let d = broken_copy(|p| std::fs::remove_file(p.join("tokenizer.json")).unwrap());
    assert_one_line_error(&correct_short(d.path(), &[]), "tokenizer.json is missing");
}

#[test]
fn prompt_longer_than_context() {
    // The tiny model's context is 256 positions.
    let long = "word ".repeat(400);
    let m = tiny_model();
    let o = run(&[
        "correct",
        "--model",
        m.to_str().unwrap(),
        "-q",
        &long,
        "-a",
        "A.",
        "--max-new-tokens",
        "4",
    ]);
    assert_one_line_error(&o, "context holds 256");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn top_p_out_of_range() {
    let o = correct_short(&tiny_model(), &["--top-p", "1.5"]);
    assert_one_line_error(&o, "top_p 1.5 must be in (0, 1]");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn negative_temperature() {
    let o = correct_short(&tiny_model(), &["--temperature", "-1"]);
    assert_one_line_error(&o, "temperature -1 must be >= 0");
}

#[test]
fn unknown_template() {
    let o = correct_short(&tiny_model(), &["--template", "aligner-v9"]);
    assert_one_line_error(&o, "unknown template 'aligner-v9'");
}

#[test]
fn onnx_runtime_not_found() {
    let o = correct_short(
        &tiny_model(),
        &["--ort-lib", "/nonexistent/libonnxruntime.so"],
    );
    assert_one_line_error(&o, "pip install onnxruntime==1.31.1");
}

#[test]
fn onnx_runtime_search_lists_what_it_tried() {
    let o = aligner()
        .env_remove("VIRTUAL_ENV")
        .env("LD_LIBRARY_PATH", "/nonexistent")
        .args(["info", "--model", tiny_model().to_str().unwrap()])
        .output()
        .unwrap();
    // Without the venv the system path is tried last; on a machine with a system-wide
    // ONNX Runtime this may succeed, which is also correct behaviour.
    if !o.status.success() {
        assert_one_line_error(&o, "tried:");
    }
}

#[test]
fn not_an_onnx_runtime_library() {
    let d = tempfile::tempdir().unwrap();
    let fake = d.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a library").unwrap();
    let o = correct_short(&tiny_model(), &["--ort-lib", fake.to_str().unwrap()]);
    assert_one_line_error(&o, "ONNX Runtime library not found");
}

#[test]
fn unreadable_answer_file() {
    let o = correct_short(&tiny_model(), &["--answer-file", "/nonexistent/answer.txt"]);
    // --answer and --answer-file conflict: clap reports it; use a run without -a instead.
    assert!(!o.status.success());
    let m = tiny_model();
    let o = run(&[
        "correct",
        "--model",
        m.to_str().unwrap(),
        "-q",
        "Q",
        "--answer-file",
        "/nonexistent/answer.txt",
    ]);
    assert_one_line_error(&o, "cannot read --answer-file");
}

#[test]
fn bad_prompt_ids() {
    let m = tiny_model();
    let o = run(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt-ids",
        "1,x",
    ]);
    assert_one_line_error(&o, "'x' is not a token id");
    let o = run(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt-ids",
        "1,99999",
    ]);
    assert_one_line_error(&o, "outside the vocabulary");
}

#[test]
fn batch_with_a_missing_input_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    let out = dir.path().join("out.jsonl");
    let o = run(&["batch", missing.to_str().unwrap(), out.to_str().unwrap()]);
    assert_one_line_error(&o, "cannot read input");
    assert!(!out.exists(), "nothing may be written");
}

#[test]
fn serve_on_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let o = run(&["serve", "--port", &port]);
    assert_one_line_error(&o, "is the port taken?");
}

#[test]
fn serve_with_bad_settings() {
    assert_one_line_error(
        &run(&["serve", "--workers", "0"]),
        "--workers must be at least 1",
    );
    for (flag, value) in [("serve", "0"), ("serve", "65"), ("batch", "0")] {
        let mut args = vec![flag];
        if flag == "batch" {
            args.extend(["in.jsonl", "out.jsonl"]);
        }
        args.extend(["--batch-size", value]);
        assert_one_line_error(&run(&args), "--batch-size");
    }
    assert_one_line_error(
        &run(&["serve", "--upstream-timeout", "0"]),
        "--upstream-timeout must be a positive",
    );
    let o = run(&[
        "serve",
        "--upstream",
        "http://127.0.0.1:9",
        "--upstream-key-env",
        "ALIGNER_TEST_SURELY_UNSET",
    ]);
    assert_one_line_error(&o, "ALIGNER_TEST_SURELY_UNSET: the variable is not set");
}
