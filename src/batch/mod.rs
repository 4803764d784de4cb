//! `aligner batch IN OUT`: question/answer rows in, corrections (or preference pairs) out.
//!
//! Crash-safe and resumable: each finished row is appended and flushed at once, and fsynced
//! every `--sync-every` rows and at the end; a re-run skips the rows OUT (and its rejects file)
//! already hold, keyed by input line and content hash (see [`resume`]). Bad rows go to
//! `OUT.rejects.jsonl` with the reason, and the run goes on. `--shard i/n` takes the lines whose
//! number is `i` modulo `n`, so `n` machines can split one file without coordination.
//!
//! Throughput: `--workers` model sessions (default: one per core, one thread each) run rows in
//! parallel; a feeder thread reads the input and the main thread writes results.

mod input;
mod resume;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::cli::{cores, usage, GenArgs, ModelArgs};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// {question, answer, correction, meta}
    Aligner,
    /// {prompt, chosen (the correction), rejected (the original answer), meta}
    Dpo,
    /// ShareGPT preference rows: {conversations, chosen, rejected, meta}
    Sharegpt,
}

/// What each row asks of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Task {
    /// Correct the row's answer: {question, answer, correction, meta}.
    Correct,
    /// Answer the row's question as a chat turn (upstream answers, to be corrected later):
    /// {question, answer, meta}. The answer field is not read.
    Answer,
}

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct BatchArgs {
    /// Input JSONL with a question and an answer per line.
    pub input: PathBuf,
    /// Output JSONL; appended to, and a re-run skips the rows it already holds.
    pub output: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub gen: GenArgs,
    /// Input field holding the question.
    #[arg(long, default_value = "question")]
    pub question_field: String,
    /// Input field holding the answer to correct.
    #[arg(long, default_value = "answer")]
    pub answer_field: String,
    #[arg(long, value_enum, default_value = "aligner")]
    pub format: Format,
    /// Correct answers, or write them (then pipe the output into a `correct` run).
    #[arg(long, value_enum, default_value = "correct")]
    pub task: Task,
    /// System prompt of `--task answer` (e.g. to ask for a style of answer).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Process only input lines whose number is I modulo N (0-based), e.g. 3/8.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Model sessions working in parallel (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// fsync the output every N rows (rows are flushed to the OS as they finish).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub sync_every: usize,
    /// Input rows longer than this are rejected without being read whole.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    pub max_row_bytes: usize,
    /// Stop, changing nothing, when the output holds rows of input lines that have changed
    /// since (by default they stay, with a warning, and the changed lines are run again).
    #[arg(long)]
    pub strict_resume: bool,
}

/// `i/n` with `i < n`.
pub fn parse_shard(text: &str) -> Result<(usize, usize)> {
    let parsed = text.split_once('/').and_then(|(i, n)| {
        Some((
            i.trim().parse::<usize>().ok()?,
            n.trim().parse::<usize>().ok()?,
        ))
    });
    match parsed {
        Some((i, n)) if n > 0 && i < n => Ok((i, n)),
        _ => usage(format!(
            "--shard {text} is not I/N with 0 <= I < N (for example 0/4)"
        )),
    }
}

pub fn rejects_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    output.with_file_name(format!("{stem}.rejects.jsonl"))
}

struct Row {
    line: usize,
    hash: String,
    question: String,
    /// Empty for `--task answer`, where the generation is the answer.
    answer: String,
}

enum Outcome {
    Row(Value),
    Reject(Value),
}

fn reject(line: usize, hash: &str, reason: String, raw: &[u8]) -> Outcome {
    let raw: String = String::from_utf8_lossy(raw).chars().take(2000).collect();
    Outcome::Reject(json!({"reason": reason, "raw": raw, "meta": {"line": line, "hash": hash}}))
}

fn format_row(
    format: Format,
    kind: Task,
    task: &Row,
    g: &aligner::Generation,
    meta: Value,
) -> Value {
    match format {
        _ if kind == Task::Answer => {
            json!({"question": task.question, "answer": g.text, "meta": meta})
        }
        Format::Aligner => {
            json!({"question": task.question, "answer": task.answer, "correction": g.text, "meta": meta})
        }
        Format::Dpo => {
            json!({"prompt": task.question, "chosen": g.text, "rejected": task.answer, "meta": meta})
        }
        Format::Sharegpt => json!({
            "conversations": [{"from": "human", "value": task.question}],
            "chosen": {"from": "gpt", "value": g.text},
            "rejected": {"from": "gpt", "value": task.answer},
            "meta": meta,
        }),
    }
}

/// Opens `path` for appending under an exclusive lock, held until the run ends, so that two
/// runs on one output cannot both append (they once duplicated every row).
fn open_locked(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| {
            format!(
                "cannot open {} for appending; check that its folder exists and is writable",
                path.display()
            )
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another aligner batch is writing {} (it holds the file's lock); wait for it to finish, or pick another output",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Refuses an output or rejects file that is the input itself (same file by inode, whatever
/// the path says): appending would first truncate a torn "row", i.e. the input.
fn check_not_input(input: &File, files: &[(&File, &Path)], input_path: &Path) -> Result<()> {
    let id = |f: &File| f.metadata().map(|m| (m.dev(), m.ino()));
    let input_id = id(input)?;
    for (file, path) in files {
        if id(file)? == input_id {
            return usage(format!(
                "{} is the input file {}; writing there would destroy the input. Pick another output",
                path.display(),
                input_path.display()
            ));
        }
    }
    Ok(())
}

/// Line numbers and hashes of this run's input, and how many rows it still has to do.
struct InputPlan {
    pending: u64,
    current: HashSet<(usize, String)>,
}

fn plan_input(args: &BatchArgs, shard: (usize, usize), done: &resume::Keys) -> Result<InputPlan> {
    let file = File::open(&args.input)
        .with_context(|| format!("cannot read input {}", args.input.display()))?;
    let mut reader = BufReader::new(file);
    let mut plan = InputPlan {
        pending: 0,
        current: HashSet::new(),
    };
    let mut number = 0;
    while let Some(line) = input::next_line(&mut reader, args.max_row_bytes)
        .with_context(|| format!("cannot read input {}", args.input.display()))?
    {
        let key = (number, line.hash);
        if number % shard.1 == shard.0 && !done.contains(&key) {
            plan.pending += 1;
        }
        plan.current.insert(key);
        number += 1;
    }
    Ok(plan)
}

pub fn batch(args: BatchArgs) -> Result<()> {
    let (shard, shards) = match &args.shard {
        Some(s) => parse_shard(s)?,
        None => (0, 1),
    };
    if args.workers == Some(0) {
        return usage("--workers must be at least 1");
    }
    if args.max_row_bytes == 0 {
        return usage("--max-row-bytes must be at least 1");
    }
    match args.task {
        Task::Answer if !matches!(args.format, Format::Aligner) => {
            return usage("--task answer writes {question, answer, meta} rows; drop --format (preference formats come from a `correct` run over those rows)");
        }
        Task::Correct if args.system.is_some() => {
            return usage(
                "--system is for --task answer; a correction's prompt is fixed by its template",
            );
        }
        _ => {}
    }
    // A full disk or `ulimit -f` must fail a write with an error we report, not kill us.
    // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let input = File::open(&args.input)
        .with_context(|| format!("cannot read input {}", args.input.display()))?;
    let rejects = rejects_path(&args.output);
    let mut out_file = open_locked(&args.output)?;
    let mut rej_file = open_locked(&rejects)?;
    check_not_input(
        &input,
        &[(&out_file, &args.output), (&rej_file, &rejects)],
        &args.input,
    )?;
    drop(input);
    let mut done = resume::resume(&mut out_file, &args.output)?.keys;
    let rejected_before = resume::resume(&mut rej_file, &rejects)?.keys;
    done.extend(rejected_before);
    let already = done.len();

    let plan = plan_input(&args, (shard, shards), &done)?;
    let stale = done.iter().filter(|k| !plan.current.contains(k)).count();
    if stale > 0 {
        let what = format!(
            "{stale} row(s) in {} and its rejects come from input lines that have changed or gone since they were written",
            args.output.display()
        );
        if args.strict_resume {
            return usage(format!("{what}; nothing was done (--strict-resume). Use a new output, or drop --strict-resume to keep them and run the changed lines again"));
        }
        eprintln!("aligner: warning: {what}; they stay, and the changed lines are run again (--strict-resume stops instead)");
    }

    let workers = args.workers.unwrap_or(cores()).max(1);
    let dir = args.model.model_dir()?;
    let mut model_args = args.model.clone();
    model_args.threads = Some(args.model.threads()?.unwrap_or((cores() / workers).max(1)));
    let models = (0..workers)
        .map(|_| model_args.load(&dir))
        .collect::<Result<Vec<_>>>()?;
    let config = args.gen.apply(models[0].generation_defaults());
    config.validate()?;
    let template = models[0].template()?;

    let bar = ProgressBar::with_draw_target(Some(plan.pending), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let (task_tx, task_rx) = sync_channel::<Row>(workers * 4);
    let task_rx = Arc::new(Mutex::new(task_rx));
    let (out_tx, out_rx) = channel::<Outcome>();
    let started = Instant::now();
    let model_name = dir.display().to_string();
    std::thread::scope(|scope| -> Result<()> {
        let feeder_out = out_tx.clone();
        let args_ref = &args;
        let done_ref = &done;
        let feeder =
            scope.spawn(move || feed(args_ref, shard, shards, done_ref, task_tx, feeder_out));
        for mut model in models {
            let rx = Arc::clone(&task_rx);
            let tx: Sender<Outcome> = out_tx.clone();
            let (config, format, model_name) = (config.clone(), args.format, model_name.clone());
            let (kind, system) = (args.task, args.system.as_deref());
            scope.spawn(move || loop {
                let task = match rx.lock().map(|r| r.recv()) {
                    Ok(Ok(task)) => task,
                    _ => break,
                };
                let started = Instant::now();
                let result = catch_unwind(AssertUnwindSafe(|| {
                    if kind == Task::Answer {
                        model.answer(system, &task.question, &config, &mut |_| true)
                    } else {
                        model.correct(&task.question, &task.answer, &config, &mut |_| true)
                    }
                }));
                let latency_ms = started.elapsed().as_secs_f64() * 1e3;
                let outcome = match result {
                    Ok(Ok(g)) => {
                        let mut meta = json!({"line": task.line, "hash": task.hash, "finish_reason": g.finish_reason.as_str(),
                                          "prompt_tokens": g.prompt_tokens, "completion_tokens": g.tokens.len(),
                                          "latency_ms": (latency_ms * 10.0).round() / 10.0,
                                          "template": template.name(), "model": model_name});
                        if kind == Task::Answer {
                            meta["task"] = json!("answer");
                            meta["system"] = json!(system);
                        }
                        Outcome::Row(format_row(format, kind, &task, &g, meta))
                    }
                    Ok(Err(e)) => reject(task.line, &task.hash, e.to_string(), task.question.as_bytes()),
                    Err(panic) => {
                        let cause = crate::cli::panic_message(panic.as_ref());
                        reject(task.line, &task.hash, format!("internal error ({cause}); please report this row"), task.question.as_bytes())
                    }
                };
                if tx.send(outcome).is_err() {
                    break;
                }
            });
        }
        // Only the workers may hold the task queue: when they stop (the writer failed), the
        // feeder's next send fails instead of blocking for ever on a full queue.
        drop(task_rx);
        drop(out_tx);
        let written = write_results(&args, out_file, rej_file, &rejects, out_rx, &bar);
        let fed = feeder
            .join()
            .map_err(|_| anyhow::anyhow!("the input reader stopped unexpectedly"))?;
        let (rows, rejected) = written?;
        fed?;
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "aligner batch: {rows} {}, {rejected} rejected ({}), {already} already done; {:.1} s, {:.2} rows/s, {workers} worker(s)",
            if args.task == Task::Answer { "answered" } else { "corrected" },
            rejects.display(),
            secs,
            (rows + rejected) as f64 / secs.max(1e-9)
        );
        Ok(())
    })
}

/// Reads the input, sends this shard's new rows to the workers and bad ones straight out.
fn feed(
    args: &BatchArgs,
    shard: usize,
    shards: usize,
    done: &resume::Keys,
    tasks: SyncSender<Row>,
    out: Sender<Outcome>,
) -> Result<()> {
    let input = File::open(&args.input)
        .with_context(|| format!("cannot read input {}", args.input.display()))?;
    let mut reader = BufReader::new(input);
    // `--task answer` reads only the question.
    let answer_field = (args.task == Task::Correct).then_some(args.answer_field.as_str());
    let mut number = 0;
    while let Some(line) = input::next_line(&mut reader, args.max_row_bytes)
        .with_context(|| format!("cannot read input {}", args.input.display()))?
    {
        let n = number;
        number += 1;
        if n % shards != shard || done.contains(&(n, line.hash.clone())) {
            continue;
        }
        let parsed = input::parse_row(
            n,
            &line,
            &args.question_field,
            answer_field,
            args.max_row_bytes,
        );
        let sent = match parsed {
            Ok((question, answer)) => tasks
                .send(Row {
                    line: n,
                    hash: line.hash,
                    question,
                    answer,
                })
                .is_ok(),
            Err(reason) => out.send(reject(n, &line.hash, reason, &line.bytes)).is_ok(),
        };
        if !sent {
            break; // the writer stopped; its error is reported there
        }
    }
    Ok(())
}

fn write_results(
    args: &BatchArgs,
    out: File,
    rej: File,
    rejects: &Path,
    results: Receiver<Outcome>,
    bar: &ProgressBar,
) -> Result<(u64, u64)> {
    let mut out = BufWriter::new(out);
    let mut rej = BufWriter::new(rej);
    let (mut rows, mut rejected, mut since_sync) = (0u64, 0u64, 0usize);
    let failed = |path: &Path| {
        format!(
            "cannot write {}; free disk space (or raise the file-size limit) and re-run: the run resumes where it stopped",
            path.display()
        )
    };
    for outcome in results {
        let (file, path, value) = match outcome {
            Outcome::Row(v) => {
                rows += 1;
                (&mut out, args.output.as_path(), v)
            }
            Outcome::Reject(v) => {
                rejected += 1;
                (&mut rej, rejects, v)
            }
        };
        // One write of the whole row, then a flush: a kill leaves at most one torn last row.
        file.write_all(format!("{value}\n").as_bytes())
            .and_then(|_| file.flush())
            .with_context(|| failed(path))?;
        since_sync += 1;
        if since_sync >= args.sync_every.max(1) {
            out.get_ref()
                .sync_data()
                .with_context(|| failed(&args.output))?;
            rej.get_ref().sync_data().with_context(|| failed(rejects))?;
            since_sync = 0;
        }
        bar.inc(1);
    }
    out.flush().with_context(|| failed(&args.output))?;
    rej.flush().with_context(|| failed(rejects))?;
    out.get_ref()
        .sync_all()
        .with_context(|| failed(&args.output))?;
    rej.get_ref().sync_all().with_context(|| failed(rejects))?;
    Ok((rows, rejected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_bad_ones_are_named() {
        assert_eq!(parse_shard("3/8").unwrap(), (3, 8));
        for bad in ["8/8", "1", "a/2", "0/0"] {
            assert!(
                parse_shard(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("is not I/N"),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_file_sits_next_to_the_output() {
        assert_eq!(
            rejects_path(Path::new("/d/out.jsonl")),
            PathBuf::from("/d/out.rejects.jsonl")
        );
        assert_eq!(
            rejects_path(Path::new("/d/out")),
            PathBuf::from("/d/out.rejects.jsonl")
        );
    }
}
