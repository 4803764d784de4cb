//! Helpers for the end-to-end tests: the real binary, real ONNX Runtime (from the repo's
//! `.venv`, as `make test` sets up), and model folders built by `make model` / `make test`.

#![allow(dead_code)]

pub mod http;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The benchmark workload's (question, answer) pairs.
pub fn workload_pairs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("benches/workloads/corrections.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            (s("question"), s("answer"))
        })
        .collect()
}

/// The kB figure of line `field` (`VmRSS:`) in `/proc/PID/FILE`.
fn proc_kb(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Resident memory of process `pid` (`VmRSS`), in kB.
pub fn rss_kb(pid: u32) -> u64 {
    proc_kb(pid, "status", "VmRSS:")
}

/// Peak resident memory of process `pid` (`VmHWM`), in kB.
pub fn peak_rss_kb(pid: u32) -> u64 {
    proc_kb(pid, "status", "VmHWM:")
}

/// Anonymous (heap, not file-backed) memory of process `pid`, in kB.
pub fn anonymous_kb(pid: u32) -> u64 {
    proc_kb(pid, "smaps_rollup", "Anonymous:")
}

/// [`rss_kb`] in MB.
pub fn rss_mb(pid: u32) -> f64 {
    rss_kb(pid) as f64 / 1024.0
}

/// The ONNX Runtime library of the repo's `.venv`, for tests that load through the library.
pub fn ort_lib() -> PathBuf {
    let p =
        root().join(".venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1");
    assert!(p.is_file(), "{} missing: run `make test`", p.display());
    p
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn default_model() -> PathBuf {
    let p = root().join("models/smollm2-135m-instruct-int8");
    assert!(
        p.join("model.onnx").is_file(),
        "{} missing: run `make model`",
        p.display()
    );
    p
}

pub fn tiny_model() -> PathBuf {
    let p = root().join("models/tiny-llama-fp32");
    assert!(
        p.join("model.onnx").is_file(),
        "{} missing: run `make test`",
        p.display()
    );
    p
}

pub fn aligner() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_aligner"));
    // Tests copy model folders around; caching an optimized graph for each copy would only
    // fill the disk (tests/cli.rs checks the cache on its own folder).
    c.env("ALIGNER_GRAPH_CACHE", "off");
    c.env("VIRTUAL_ENV", root().join(".venv"))
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("ALIGNER_MODEL")
        .current_dir(root());
    c
}

pub fn run(args: &[&str]) -> Output {
    aligner()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failed run printed exactly one line, `error: ...` containing `needle`.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    let lines: Vec<&str> = err.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(needle), "'{needle}' not in: {err}");
}

/// A copy of the tiny model folder, changed by `edit`, for tests that break a folder.
pub fn broken_copy(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_model(&tiny_model(), dir.path());
    edit(dir.path());
    dir
}

/// Copies a model folder so a test can break the copy.
pub fn copy_model(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// `aligner correct --model MODEL -q Q? -a A.` plus `extra`.
pub fn correct_with(model: &Path, extra: &[&str]) -> Output {
    let m = model.to_str().unwrap();
    let base = ["correct", "--model", m, "-q", "Q?", "-a", "A."];
    run(&[&base[..], extra].concat())
}

/// The one JSON object a successful run printed.
pub fn json_stdout(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_str(stdout(o).trim()).expect("one JSON object")
}

/// Runs `args` and returns the JSON object it printed.
pub fn json_of(args: &[&str]) -> serde_json::Value {
    json_stdout(&run(args))
}

/// Every line of a JSONL file (none when it does not exist); each must be whole JSON.
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every row is whole JSON"))
        .collect()
}

/// Rewrites a JSON file through `edit`.
pub fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// Polls `done` for up to 20 s: a deadline for a state to be reached, not a timing test.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
