//! End-to-end: the `aligner` binary on real models and real ONNX Runtime.

mod common;

use common::*;
use std::io::Write;
use std::process::Stdio;

#[test]
fn correct_prints_a_non_empty_correction() {
    let model = default_model();
    let o = run(&[
        "correct",
        "--model",
        model.to_str().unwrap(),
        "--question",
        "How many legs does a spider have?",
        "--answer",
        "Spiders are insects, so they have six legs.",
        "--max-new-tokens",
        "48",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).trim().is_empty());
}

#[test]
fn correct_uses_default_model_folder_without_model_flag() {
    default_model();
    let o = run(&[
        "correct",
        "-q",
        "What is 2+2?",
        "-a",
        "5",
        "--max-new-tokens",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn json_output_has_its_fields() {
    let model = default_model();
    let v = json_of(&[
        "correct",
        "--model",
        model.to_str().unwrap(),
        "-q",
        "What is the capital of France?",
        "-a",
        "Berlin.",
        "--max-new-tokens",
        "16",
        "--json",
    ]);
    assert!(!v["correction"].as_str().unwrap().is_empty());
    assert!(v["prompt_tokens"].as_u64().unwrap() > 10);
    let n = v["completion_tokens"].as_u64().unwrap();
    assert!((1..=16).contains(&n));
    assert_eq!(v["tokens"].as_array().unwrap().len() as u64, n);
    assert!(["eos", "length", "stop"].contains(&v["finish_reason"].as_str().unwrap()));
    assert!(v["timings"]["total_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v["template"], "chatml-correction");
}

#[test]
fn answer_from_stdin_and_file_equal_inline_answer() {
    let model = default_model();
    let m = model.to_str().unwrap();
    let base = [
        "correct",
        "--model",
        m,
        "-q",
        "Is water wet?",
        "--max-new-tokens",
        "12",
        "--json",
    ];
    let inline = json_of(&[&base[..], &["-a", "Yes, water is wet."]].concat());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("answer.txt");
    std::fs::write(&file, "Yes, water is wet.").unwrap();
    let from_file = json_of(&[&base[..], &["--answer-file", file.to_str().unwrap()]].concat());

    let mut child = aligner()
        .args(base)
        .args(["-a", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Yes, water is wet.\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let from_stdin: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();

    assert_eq!(inline["tokens"], from_file["tokens"]);
    assert_eq!(inline["tokens"], from_stdin["tokens"]);
    assert_eq!(inline["prompt_tokens"], from_stdin["prompt_tokens"]);
}

#[test]
fn empty_answer_is_valid() {
    let model = default_model();
    let v = json_of(&[
        "correct",
        "--model",
        model.to_str().unwrap(),
        "-q",
        "Name a prime number.",
        "-a",
        "",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    assert!(v["completion_tokens"].as_u64().unwrap() >= 1);
}

#[test]
fn seed_reproduces_sampled_output_and_changing_it_changes_output() {
    let model = tiny_model();
    let m = model.to_str().unwrap();
    let sample = |seed: &str| {
        json_of(&[
            "generate",
            "--model",
            m,
            "--prompt-ids",
            "1,72,101,108",
            "--max-new-tokens",
            "24",
            "--suppress-eos",
            "--temperature",
            "1.5",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--json",
        ])["tokens"]
            .clone()
    };
    assert_eq!(sample("42"), sample("42"));
    assert_ne!(sample("42"), sample("43"));
}

#[test]
fn template_override_changes_the_prompt() {
    let model = default_model();
    let m = model.to_str().unwrap();
    let tokens = |template: &str| {
        json_of(&[
            "correct",
            "--model",
            m,
            "--template",
            template,
            "-q",
            "Q?",
            "-a",
            "A.",
            "--max-new-tokens",
            "2",
            "--json",
        ])["prompt_tokens"]
            .as_u64()
            .unwrap()
    };
    assert_ne!(tokens("aligner-v1"), tokens("chatml-correction"));
}

#[test]
fn genai_builder_folder_without_manifest_needs_a_template() {
    // Made by onnxruntime-genai's own builder: no aligner.json.
    let folder = root().join("tests/fixtures/genai-builder-tiny");
    let m = folder.to_str().unwrap();
    let o = run(&[
        "correct",
        "--model",
        m,
        "-q",
        "Q",
        "-a",
        "A",
        "--max-new-tokens",
        "2",
    ]);
    assert_one_line_error(&o, "--template");
    let v = json_of(&[
        "correct",
        "--model",
        m,
        "-q",
        "Q",
        "-a",
        "A",
        "--max-new-tokens",
        "3",
        "--template",
        "aligner-v2",
        "--suppress-eos",
        "--json",
    ]);
    assert_eq!(v["completion_tokens"], 3);
    assert_eq!(v["template"], "aligner-v2");
}

#[test]
fn info_reports_manifest_runtime_and_providers() {
    let model = default_model();
    let v = json_of(&["info", "--model", model.to_str().unwrap(), "--json"]);
    assert_eq!(v["onnxruntime"]["version"], "1.31.1");
    assert!(v["onnxruntime"]["path"]
        .as_str()
        .unwrap()
        .contains("libonnxruntime"));
    let eps: Vec<&str> = v["execution_providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(eps.contains(&"CPUExecutionProvider"));
    assert_eq!(v["manifest"]["template"], "chatml-correction");
    assert_eq!(v["layers"], 30);
}

#[test]
fn bench_reports_median_min_max() {
    // The default model: the built-in correction workload needs its context length.
    let model = default_model();
    let v = json_of(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--prompt-tokens",
        "16",
        "--new-tokens",
        "8",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--correction-tokens",
        "4",
        "--correction-runs",
        "1",
        "--json",
    ]);
    // Every measured run prefilled its whole prompt (prefix reuse would fake the figure).
    assert_eq!(v["prefill_reused_tokens"], 0);
    assert!(v["ttft_reuse_over_full"].as_f64().is_some_and(|r| r > 0.0));
    for key in [
        "prefill_tok_s",
        "decode_tok_s",
        "ttft_ms",
        "generation_ms",
        "correction_ms",
        "correction_plain_ms",
        "peak_rss_mb",
        "session_start_ms",
    ] {
        let (med, min, max) = (
            v[key].as_f64().unwrap(),
            v[format!("{key}_min")].as_f64().unwrap(),
            v[format!("{key}_max")].as_f64().unwrap(),
        );
        assert!(
            min <= med && med <= max && max > 0.0,
            "{key}: {min} {med} {max}"
        );
    }
    assert!(v["model_folder_mb"].as_f64().unwrap() > 0.0);
    assert!(v["kv_cache_mb"].as_f64().unwrap() > 0.0);
    let items = v["workload"].as_array().expect("per-pair reports");
    assert!(items.len() >= 12, "the built-in workload set");
    for item in items {
        let copy = item["copy_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&copy), "{item}");
        assert!(
            item["prompt_ids"].as_array().unwrap().len()
                == item["prompt_tokens"].as_u64().unwrap() as usize
        );
        assert!(item["identical"].is_boolean() && item["plain_ms"].as_f64().unwrap() > 0.0);
        // Equal in every run means every drafted output had the plain output's length.
        if item["identical"] == true {
            assert_eq!(item["draft_tokens_max"], item["output_tokens"], "{item}");
        } else {
            assert!(
                item["draft_tokens_max"].as_u64().is_some_and(|n| n > 0),
                "{item}"
            );
        }
        // The same pairs as serve runs them, with the template prefix from the cache.
        for key in ["plain_reuse_ms", "draft_reuse_ms"] {
            assert!(item[key].as_f64().is_some_and(|t| t > 0.0), "{key}: {item}");
        }
        assert!(item["reuse_outputs_identical"].is_boolean());
    }
    assert!(v["drafts_lossless"].is_boolean());
    let same = v["reuse_outputs_identical_pairs"].as_u64().unwrap() as usize;
    assert!(same <= items.len());
}

#[test]
fn bench_rejects_a_malformed_workload_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("w.jsonl");
    std::fs::write(&bad, "{\"question\": \"q\"}\n").unwrap();
    let o = run(&[
        "bench",
        "--model",
        tiny_model().to_str().unwrap(),
        "--workload",
        bad.to_str().unwrap(),
        "--runs",
        "1",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("line 1") && err.contains("answer"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn copy_drafts_change_speed_not_output() {
    // The default model corrects this answer by a one-word edit: some drafted tokens are
    // accepted and some rejected, so the KV cache is rolled back on the real engine.
    let model = default_model();
    let m = model.to_str().unwrap();
    let args = [
        "correct",
        "--model",
        m,
        "-q",
        "What color is the sky on a clear day?",
        "-a",
        "The sky is green on a clear day.",
        "--max-new-tokens",
        "40",
        "--json",
    ];
    let drafted = json_of(&args);
    let plain = json_of(&[&args[..], &["--no-draft"]].concat());
    assert_eq!(drafted["tokens"], plain["tokens"]);
    assert_eq!(drafted["correction"], plain["correction"]);
    assert!(plain.get("drafts").is_none());
    let d = &drafted["drafts"];
    let (proposed, accepted, passes) = (
        d["proposed"].as_u64().unwrap(),
        d["accepted"].as_u64().unwrap(),
        d["passes"].as_u64().unwrap(),
    );
    assert!(accepted > 0 && accepted < proposed, "{d}");
    assert!(
        passes < drafted["completion_tokens"].as_u64().unwrap(),
        "{d}"
    );
}

#[test]
fn draft_with_prompt_verifies_the_first_draft_in_the_prompt_pass() {
    // The trained default, whose corrections of good answers copy them.
    let model = root().join("models/smollm2-135m-aligner-int8");
    let answer = "There are nine planets in the Solar System: Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune and Pluto. They all orbit the Sun, and Jupiter is the largest of them.";
    let correct = |extra: &[&str]| {
        let mut args = vec![
            "correct",
            "--model",
            model.to_str().unwrap(),
            "-q",
            "How many planets are in the Solar System?",
            "-a",
            answer,
            "--max-new-tokens",
            "32",
            "--json",
        ];
        args.extend_from_slice(extra);
        json_of(&args)
    };
    let alone = correct(&[]);
    let with_prompt = correct(&["--draft-with-prompt"]);
    assert_eq!(with_prompt["correction"], alone["correction"]);
    // This correction copies the answer. Alone, the prompt pass gives the first token and a
    // drafted pass the other 31 (30 drafted, then the token after them); with the prompt, one
    // pass verifies 31 drafted tokens and gives all 32.
    assert_eq!(alone["timings"]["first_pass_tokens"], 1);
    assert_eq!(alone["drafts"]["proposed"], 30);
    assert_eq!(with_prompt["timings"]["first_pass_tokens"], 32);
    assert_eq!(with_prompt["drafts"]["proposed"], 31);
    assert_eq!(with_prompt["drafts"]["accepted"], 31);
}

/// ONNX Runtime 1.31's Linux build writes telemetry under ~/.cache/Microsoft/DeveloperTools
/// unless ORT_DISABLE_TELEMETRY=1 is set before it initializes; the binary sets it.
#[test]
fn onnx_runtime_telemetry_is_off_unless_the_user_turns_it_on() {
    let tiny = tiny_model();
    let records = |value: Option<&str>| {
        let home = tempfile::tempdir().unwrap();
        let mut c = aligner();
        // ONNX Runtime also skips telemetry when a CI variable is set (CI, GITHUB_ACTIONS,
        // GITLAB_CI, TF_BUILD and more), so the child gets a clean environment: what
        // `aligner()` set (it finds the library), a fresh HOME and PATH.
        let set: Vec<_> = c
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
        c.env_clear().envs(set).env("HOME", home.path());
        if let Some(path) = std::env::var_os("PATH") {
            c.env("PATH", path);
        }
        if let Some(v) = value {
            c.env("ORT_DISABLE_TELEMETRY", v);
        }
        let o = c
            .args([
                "correct",
                "--model",
                tiny.to_str().unwrap(),
                "--max-new-tokens",
                "2",
            ])
            .args(["--question", "q", "--answer", "a"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        home.path()
            .join(".cache/Microsoft/DeveloperTools/.onnxruntime")
            .exists()
    };
    assert!(!records(None), "ONNX Runtime recorded telemetry");
    // A value the user set wins; this also shows that the check above can see telemetry.
    assert!(records(Some("0")));
}
