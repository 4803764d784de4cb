//! Regression tests for the hostile-probe findings against `aligner batch`: each case once
//! destroyed a file, hung, or aborted a run. The real binary and the tiny model.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn rows(n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({"question": format!("What is {i}?"), "answer": format!("It is {i}.")})
                .to_string()
                + "\n"
        })
        .collect()
}

fn batch_cmd(input: &Path, out: &Path, extra: &[&str]) -> std::process::Command {
    let mut c = aligner();
    c.args([
        "batch",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--model",
        tiny_model().to_str().unwrap(),
        "--max-new-tokens",
        "4",
        "--workers",
        "1",
    ])
    .args(extra)
    .stdin(Stdio::null());
    c
}

/// Runs batch, failing the test if it has not ended within two minutes (a hang).
fn batch(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut child = batch_cmd(input, out, extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("aligner batch hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn setup(n: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, rows(n)).unwrap();
    let out = dir.path().join("out.jsonl");
    (dir, input, out)
}

#[test]
fn output_that_is_the_input_is_refused_and_the_input_kept() {
    // Regression: `batch same.jsonl same.jsonl` truncated the input to 0 bytes and exited 0.
    let (dir, input, _) = setup(3);
    let before = std::fs::read(&input).unwrap();
    let o = batch(&input, &input, &[]);
    assert_one_line_error(&o, "is the input file");
    assert_eq!(o.status.code(), Some(2));
    // The same file under another name: a symlink and a hard link.
    let sym = dir.path().join("sym.jsonl");
    std::os::unix::fs::symlink(&input, &sym).unwrap();
    assert_one_line_error(&batch(&input, &sym, &[]), "is the input file");
    let hard = dir.path().join("hard.jsonl");
    std::fs::hard_link(&input, &hard).unwrap();
    assert_one_line_error(&batch(&input, &hard, &[]), "is the input file");
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn an_unrelated_or_damaged_output_is_never_cut() {
    // Regression: an existing unrelated JSONL output lost its whole content, and a row without
    // meta in the middle of a real output lost every row after it.
    let (dir, input, _) = setup(3);
    let precious = dir.path().join("precious.jsonl");
    let text = "{\"id\": 1, \"note\": \"keep me\"}\n{\"id\": 2}\n";
    std::fs::write(&precious, text).unwrap();
    let o = batch(&input, &precious, &[]);
    assert_one_line_error(
        &o,
        "precious.jsonl line 1 is not a row written by aligner batch",
    );
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), text);

    let out = dir.path().join("out.jsonl");
    assert!(batch(&input, &out, &[]).status.success());
    let mut lines: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.insert(1, "{\"question\": \"no meta\"}".into());
    let damaged = lines.join("\n") + "\n";
    std::fs::write(&out, &damaged).unwrap();
    let o = batch(&input, &out, &[]);
    assert_one_line_error(&o, "out.jsonl line 2");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), damaged);
}

#[test]
fn a_missing_output_folder_is_an_error_not_a_hang() {
    // Regression: `batch IN nodir/out.jsonl` hung for ever with no message.
    let (dir, input, _) = setup(40);
    let out = dir.path().join("nodir").join("out.jsonl");
    let o = batch(&input, &out, &[]);
    assert_one_line_error(&o, "cannot open");
    assert!(stderr(&o).contains("folder exists"));
}

#[test]
fn a_full_disk_is_reported_and_the_run_resumes_after() {
    // Regression: with `ulimit -f` (or a full disk) and more than a few rows, the feeder
    // blocked on a full queue after the writer died, and the run hung.
    let (dir, input, out) = setup(40);
    let mut c = std::process::Command::new("bash");
    let mut args = vec![
        "-c".to_string(),
        "ulimit -f 2 && exec \"$0\" \"$@\"".to_string(),
        env!("CARGO_BIN_EXE_aligner").to_string(),
    ];
    let b = batch_cmd(&input, &out, &[]);
    args.extend(b.get_args().map(|a| a.to_string_lossy().into_owned()));
    c.args(&args)
        .env("ALIGNER_GRAPH_CACHE", "off")
        .env("VIRTUAL_ENV", root().join(".venv"))
        .current_dir(root())
        .stdin(Stdio::null());
    let start = Instant::now();
    let o = c.output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(120), "hung");
    assert_one_line_error(&o, "cannot write");
    // Whole rows only: the write that hit the limit may have left a torn one.
    let written = std::fs::read_to_string(&out).unwrap().matches('\n').count();
    assert!(written > 0 && written < 40, "{written} rows");
    // With the limit lifted, a re-run finishes the file: every row exactly once.
    let o = batch(&input, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut seen: Vec<u64> = jsonl(&out)
        .iter()
        .map(|r| r["meta"]["line"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..40).collect::<Vec<_>>());
    drop(dir);
}

#[test]
fn two_runs_on_one_output_cannot_both_write() {
    // Regression: two concurrent runs on one output duplicated every row.
    let (_dir, input, out) = setup(400);
    let mut first = batch_cmd(&input, &out, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.exists() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = batch(&input, &out, &[]);
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run ended before the second started; make the first run longer"
    );
    assert_one_line_error(&second, "another aligner batch is writing");
    assert!(first.wait().unwrap().success());
    let mut seen: Vec<u64> = jsonl(&out)
        .iter()
        .map(|r| r["meta"]["line"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..400).collect::<Vec<_>>());
}

#[test]
fn changed_input_on_resume_is_counted_and_strict_resume_stops() {
    let (_dir, input, out) = setup(5);
    assert!(batch(&input, &out, &[]).status.success());
    let mut lines: Vec<String> = rows(5).lines().map(String::from).collect();
    lines[2] = json!({"question": "Changed?", "answer": "Yes."}).to_string();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();

    let before = std::fs::read(&out).unwrap();
    let o = batch(&input, &out, &["--strict-resume"]);
    assert_one_line_error(&o, "1 row(s)");
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(&out).unwrap(), before, "nothing may change");

    let o = batch(&input, &out, &[]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("warning: 1 row(s)"), "{}", stderr(&o));
    // The changed line ran again; the stale row stays.
    assert_eq!(jsonl(&out).len(), 6);
}

#[test]
fn invalid_utf8_rejects_one_row_and_a_bom_is_accepted() {
    // Regression: one invalid UTF-8 byte aborted the whole run with no line number.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut bytes = b"\xef\xbb\xbf".to_vec(); // BOM
    bytes.extend_from_slice(rows(3).as_bytes());
    bytes.extend_from_slice(b"{\"question\": \"bad \xff byte\", \"answer\": \"x\"}\n");
    bytes.extend_from_slice(rows(1).as_bytes());
    std::fs::write(&input, &bytes).unwrap();
    let out = dir.path().join("out.jsonl");
    let o = batch(&input, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let done: Vec<u64> = jsonl(&out)
        .iter()
        .map(|r| r["meta"]["line"].as_u64().unwrap())
        .collect();
    assert_eq!(done.len(), 4, "{done:?}");
    assert!(done.contains(&0), "the BOM line was processed");
    let rejects = jsonl(&dir.path().join("out.rejects.jsonl"));
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0]["meta"]["line"], 3);
    assert!(rejects[0]["reason"]
        .as_str()
        .unwrap()
        .contains("not valid UTF-8"));
    // A re-run does nothing more.
    assert!(batch(&input, &out, &[]).status.success());
    assert_eq!(jsonl(&out).len(), 4);
}

/// Peak resident set of a finished child, in MB (wait4's rusage).
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also reports its rusage
fn run_measuring_rss(mut command: std::process::Command) -> (std::process::ExitStatus, f64) {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: plain libc call on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    use std::os::unix::process::ExitStatusExt;
    (
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

#[test]
fn huge_rows_are_rejected_without_being_held_or_tokenized() {
    // Regression: one 50 MB row peaked at 6.7 GB.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut text = rows(2);
    // Over the row limit: never held whole.
    text.push_str(&json!({"question": "q", "answer": "w ".repeat(25_000_000)}).to_string());
    text.push('\n');
    // Under the row limit, over what the context could hold: refused before tokenizing.
    text.push_str(&json!({"question": "q", "answer": "w ".repeat(4_000_000)}).to_string());
    text.push('\n');
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("out.jsonl");
    let (status, huge_mb) = run_measuring_rss(batch_cmd(&input, &out, &[]));
    assert!(status.success());
    let rejects = jsonl(&dir.path().join("out.rejects.jsonl"));
    assert_eq!(rejects.len(), 2);
    assert!(rejects[0]["reason"]
        .as_str()
        .unwrap()
        .contains("--max-row-bytes"));
    assert!(rejects[1]["reason"].as_str().unwrap().contains("bytes"));
    // Against the same run over two small rows.
    let small = dir.path().join("small.jsonl");
    std::fs::write(&small, rows(2)).unwrap();
    let (_, small_mb) = run_measuring_rss(batch_cmd(&small, &dir.path().join("o2.jsonl"), &[]));
    eprintln!("peak RSS: {huge_mb:.0} MB with the huge rows, {small_mb:.0} MB without");
    assert!(
        huge_mb < small_mb + 150.0,
        "{huge_mb:.0} MB against {small_mb:.0} MB"
    );
}
