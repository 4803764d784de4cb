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

mod resume;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::cli::{GenArgs, ModelArgs};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// {question, answer, correction, meta}
    Aligner,
    /// {prompt, chosen (the correction), rejected (the original answer), meta}
    Dpo,
    /// ShareGPT preference rows: {conversations, chosen, rejected, meta}
    Sharegpt,
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
    /// Process only input lines whose number is I modulo N (0-based), e.g. 3/8.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Model sessions working in parallel (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// fsync the output every N rows (rows are flushed to the OS as they finish).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub sync_every: usize,
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
        _ => bail!("--shard {text} is not I/N with 0 <= I < N (for example 0/4)"),
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

struct Task {
    line: usize,
    hash: String,
    question: String,
    answer: String,
}

enum Outcome {
    Row(Value),
    Reject(Value),
}

fn reject(line: usize, hash: &str, reason: String, raw: &str) -> Outcome {
    let raw: String = raw.chars().take(2000).collect();
    Outcome::Reject(json!({"reason": reason, "raw": raw, "meta": {"line": line, "hash": hash}}))
}

/// A task for the line, or the reason it cannot be one.
fn parse_row(line: usize, text: &str, args: &BatchArgs) -> std::result::Result<Task, String> {
    let hash = resume::line_hash(text);
    if text.trim().is_empty() {
        return Err("empty line".into());
    }
    let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let field = |name: &str| match v.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("field '{name}' is not a string")),
        None => Err(format!("missing field '{name}'")),
    };
    Ok(Task {
        line,
        hash,
        question: field(&args.question_field)?,
        answer: field(&args.answer_field)?,
    })
}

fn format_row(format: Format, task: &Task, g: &aligner::Generation, meta: Value) -> Value {
    match format {
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

fn open_append(path: &Path) -> Result<BufWriter<File>> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {} for appending", path.display()))?;
    Ok(BufWriter::new(f))
}

pub fn batch(args: BatchArgs) -> Result<()> {
    let (shard, shards) = match &args.shard {
        Some(s) => parse_shard(s)?,
        None => (0, 1),
    };
    let input = File::open(&args.input)
        .with_context(|| format!("cannot read input {}", args.input.display()))?;
    let rejects = rejects_path(&args.output);
    let mut done = HashSet::new();
    let already =
        resume::collect_done(&args.output, &mut done)? + resume::collect_done(&rejects, &mut done)?;

    // First pass: how many rows this run will do, for the progress bar and ETA.
    let mut pending = 0u64;
    for (line, text) in BufReader::new(input).lines().enumerate() {
        let text = text.with_context(|| format!("cannot read input {}", args.input.display()))?;
        if line % shards == shard && !done.contains(&(line, resume::line_hash(&text))) {
            pending += 1;
        }
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let workers = args.workers.unwrap_or(cores).max(1);
    let dir = args.model.model_dir()?;
    let mut model_args = args.model.clone();
    model_args.threads = Some(args.model.threads.unwrap_or((cores / workers).max(1)));
    let models = (0..workers)
        .map(|_| model_args.load(&dir))
        .collect::<Result<Vec<_>>>()?;
    let config = args.gen.apply(models[0].generation_defaults());
    config.validate()?;
    let template = models[0].template()?;

    let bar = ProgressBar::with_draw_target(Some(pending), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let (task_tx, task_rx) = sync_channel::<Task>(workers * 4);
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
            scope.spawn(move || loop {
                let task = match rx.lock().map(|r| r.recv()) {
                    Ok(Ok(task)) => task,
                    _ => break,
                };
                let outcome = match model.correct(&task.question, &task.answer, &config, &mut |_| true) {
                    Ok(g) => {
                        let meta = json!({"line": task.line, "hash": task.hash, "finish_reason": g.finish_reason.as_str(),
                                          "prompt_tokens": g.prompt_tokens, "completion_tokens": g.tokens.len(),
                                          "template": template.name(), "model": model_name});
                        Outcome::Row(format_row(format, &task, &g, meta))
                    }
                    Err(e) => reject(task.line, &task.hash, e.to_string(), &task.question),
                };
                if tx.send(outcome).is_err() {
                    break;
                }
            });
        }
        drop(out_tx);
        let (rows, rejected) = write_results(&args, &rejects, out_rx, &bar)?;
        feeder
            .join()
            .map_err(|_| anyhow::anyhow!("the input reader stopped unexpectedly"))??;
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "aligner batch: {rows} corrected, {rejected} rejected ({}), {already} already done; {:.1} s, {:.2} rows/s, {workers} worker(s)",
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
    done: &HashSet<(usize, String)>,
    tasks: std::sync::mpsc::SyncSender<Task>,
    out: Sender<Outcome>,
) -> Result<()> {
    let input = File::open(&args.input)
        .with_context(|| format!("cannot read input {}", args.input.display()))?;
    for (line, text) in BufReader::new(input).lines().enumerate() {
        let text = text?;
        if line % shards != shard {
            continue;
        }
        let hash = resume::line_hash(&text);
        if done.contains(&(line, hash.clone())) {
            continue;
        }
        let sent = match parse_row(line, &text, args) {
            Ok(task) => tasks.send(task).is_ok(),
            Err(reason) => out.send(reject(line, &hash, reason, &text)).is_ok(),
        };
        if !sent {
            break; // the writer stopped; its error is reported there
        }
    }
    Ok(())
}

fn write_results(
    args: &BatchArgs,
    rejects: &Path,
    results: Receiver<Outcome>,
    bar: &ProgressBar,
) -> Result<(u64, u64)> {
    let mut out = open_append(&args.output)?;
    let mut rej = open_append(rejects)?;
    let (mut rows, mut rejected, mut since_sync) = (0u64, 0u64, 0usize);
    for outcome in results {
        let (file, value) = match outcome {
            Outcome::Row(v) => {
                rows += 1;
                (&mut out, v)
            }
            Outcome::Reject(v) => {
                rejected += 1;
                (&mut rej, v)
            }
        };
        // One write of the whole row, then a flush: a kill leaves at most one torn last row.
        file.write_all(format!("{value}\n").as_bytes())?;
        file.flush()?;
        since_sync += 1;
        if since_sync >= args.sync_every.max(1) {
            out.get_ref().sync_data()?;
            rej.get_ref().sync_data()?;
            since_sync = 0;
        }
        bar.inc(1);
    }
    out.flush()?;
    rej.flush()?;
    out.get_ref().sync_all()?;
    rej.get_ref().sync_all()?;
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
