//! Execution-provider selection on the CPU-only ONNX Runtime that `make test` installs: an
//! explicit GPU provider fails clearly, fallback and `auto` run on the CPU and say so, options
//! are validated, and the IoBinding (shared KV buffer) path gives the same tokens as the plain
//! one. The GPU side is checked by scripts/gpu-check.sh on a GPU machine.

mod common;

use common::*;

fn correct(extra: &[&str]) -> std::process::Output {
    let model = default_model();
    let mut args = vec![
        "correct",
        "--model",
        model.to_str().unwrap(),
        "-q",
        "What is 2+2?",
        "-a",
        "5",
        "--max-new-tokens",
        "6",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn explicit_cuda_on_the_cpu_library_is_a_clear_error() {
    let o = correct(&["--ep", "cuda"]);
    assert_one_line_error(&o, "execution provider cuda is unavailable");
    let err = stderr(&o);
    assert!(err.contains("has no CUDAExecutionProvider"), "{err}");
    assert!(
        err.contains("onnxruntime-gpu==1.31.1") && err.contains("--allow-cpu-fallback"),
        "{err}"
    );
    assert!(stdout(&o).is_empty(), "nothing may run on the CPU silently");
}

#[test]
fn explicit_tensorrt_on_the_cpu_library_is_a_clear_error() {
    let o = correct(&["--ep", "tensorrt"]);
    assert_one_line_error(&o, "execution provider tensorrt is unavailable");
}

#[test]
fn cpu_fallback_must_be_asked_for_and_is_reported() {
    let o = correct(&["--ep", "cuda", "--allow-cpu-fallback", "--json"]);
    let v = json_stdout(&o);
    assert_eq!(v["provider"], "cpu");
    assert!(!v["correction"].as_str().unwrap().is_empty());
    let err = stderr(&o);
    assert!(
        err.contains("cuda unavailable, falling back to cpu"),
        "{err}"
    );
    assert!(err.contains("execution provider: cpu"), "{err}");
}

#[test]
fn auto_picks_the_cpu_here_and_says_why() {
    let o = correct(&["--ep", "auto", "--json"]);
    assert_eq!(json_stdout(&o)["provider"], "cpu");
    let err = stderr(&o);
    assert!(
        err.contains("tensorrt unavailable") && err.contains("cuda unavailable"),
        "{err}"
    );
    assert!(err.contains("execution provider: cpu"), "{err}");
}

#[test]
fn info_reports_the_provider_in_use_and_node_placement() {
    let model = default_model();
    let o = run(&[
        "info",
        "--model",
        model.to_str().unwrap(),
        "--ep",
        "auto",
        "--json",
    ]);
    let v = json_stdout(&o);
    assert_eq!(v["provider_in_use"], "cpu");
    let placement = v["node_placement"].as_array().unwrap();
    assert_eq!(placement.len(), 1, "{placement:?}");
    assert_eq!(placement[0]["provider"], "CPUExecutionProvider");
    assert!(placement[0]["nodes"].as_u64().unwrap() > 30);
    assert_eq!(v["exported_for"], serde_json::json!(["cpu"]));
}

#[test]
fn provider_options_are_validated_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--device-id".into(), "-1".into()],
            "device id -1 is negative",
        ),
        (vec!["--gpu-mem-limit".into(), "0".into()], "memory limit 0"),
        (
            vec!["--ep".into(), "rocm".into()],
            "unknown execution provider 'rocm'",
        ),
        (
            vec![
                "--ep".into(),
                "tensorrt".into(),
                "--trt-cache-dir".into(),
                file.display().to_string(),
            ],
            "is a file, not a directory",
        ),
        (
            vec![
                "--trt-cache-dir".into(),
                file.join("engines").display().to_string(),
            ],
            "which is a file",
        ),
    ];
    for (extra, needle) in cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let o = correct(&extra);
        assert_one_line_error(&o, needle);
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
    }
    let o = correct(&["--device-id", "first"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--device-id"), "{}", stderr(&o));
}

#[test]
fn a_folder_exported_for_another_provider_gets_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(&tiny_model(), dir.path());
    let manifest_path = dir.path().join("aligner.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["providers"] = serde_json::json!(["cuda"]);
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let o = run(&[
        "generate",
        "--model",
        dir.path().to_str().unwrap(),
        "--prompt-ids",
        "1,2,3",
        "--max-new-tokens",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("was exported for cuda; on cpu it may run slowly"),
        "{}",
        stderr(&o)
    );
}

fn greedy_tokens(model: &std::path::Path) -> Vec<u64> {
    let o = run(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        "32",
        "--suppress-eos",
        "--temperature",
        "0",
        "--json",
    ]);
    json_stdout(&o)["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

#[test]
fn io_binding_path_gives_the_same_tokens_as_the_plain_path() {
    // The default folder uses the shared-buffer IoBinding path; a copy with the flag off runs
    // the plain path (present tensors chained into the next step's past).
    let bound = default_model();
    let dir = tempfile::tempdir().unwrap();
    copy_model(&bound, dir.path());
    let genai_path = dir.path().join("genai_config.json");
    let mut genai: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&genai_path).unwrap()).unwrap();
    assert_eq!(genai["search"]["past_present_share_buffer"], true);
    genai["search"]["past_present_share_buffer"] = serde_json::json!(false);
    std::fs::write(&genai_path, genai.to_string()).unwrap();
    let shared = greedy_tokens(&bound);
    assert_eq!(shared.len(), 32);
    assert_eq!(greedy_tokens(dir.path()), shared);
}
