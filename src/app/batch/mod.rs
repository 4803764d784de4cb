//! `aligner batch IN OUT`: question/answer rows in, corrections (or preference pairs) out.
//!
//! Crash-safe and resumable: each finished row is appended and flushed at once, and fsynced
//! every `--sync-every` rows and at the end; a re-run skips the rows OUT (and its rejects file)
//! already hold, keyed by input line and content hash (see [`resume`]). Bad rows go to
//! `OUT.rejects.jsonl` with the reason, and the run goes on. `--shard i/n` takes the lines whose
//! number is `i` modulo `n`, so `n` machines can split one file without coordination.
//!
//! Throughput: each of `--workers` model sessions decodes up to `--batch-size` rows together
//! (continuous batching, see [`slots`]); by default there is a session per core, one thread
//! each. Greedy corrections copy-draft in the batch too ([`aligner::batching`]); with
//! `--batch-size 1` the sessions take rows one by one. A feeder
//! thread reads the input and the main thread writes results.

mod input;
mod outputs;
mod resume;
mod rows;
mod slots;

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::args::{BatchArgs, Format, Task};
use super::errors::{panic_message, usage};
use super::workers::{batch_size, check_batch_size, load_workers, WorkerCount, Workers};
use outputs::{open_outputs, Outputs};

/// Slots per session on the CPU, chosen by measurement (benches/batch_throughput.py, README
/// "Batched decoding"): 16 slots on a session per core gave the most rows/s at 32 and 160 new
/// tokens on 2 cores; more only adds KV memory.
const BATCH_SLOTS: usize = 16;

/// Workers on a GPU without `--workers` (see [`run`]).
const GPU_WORKERS: usize = 2;

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

struct Row {
    line: usize,
    hash: String,
    question: String,
    /// Empty for `--task answer`, where the generation is the answer.
    answer: String,
}

/// A finished line for the writer: a row for the output, or one for the rejects file.
enum Outcome {
    Row(String),
    Reject(String),
}

fn reject(line: usize, hash: &str, reason: String, raw: &[u8]) -> Outcome {
    let raw: String = String::from_utf8_lossy(raw).chars().take(2000).collect();
    let row = rows::Reject {
        reason: &reason,
        raw,
        meta: rows::RejectMeta { line, hash },
    };
    match rows::line(&row) {
        Ok(text) => Outcome::Reject(text),
        Err(e) => Outcome::Reject(format!("{{\"reason\": {e:?}}}")),
    }
}

/// What every worker needs besides its model.
struct WorkSettings<'a> {
    config: aligner::GenerationConfig,
    format: Format,
    task: Task,
    system: Option<&'a str>,
    template: &'static str,
    model_name: &'a str,
}

/// One worker: takes rows until the queue closes, sends each outcome to the writer.
fn work(
    model: &mut aligner::Aligner,
    rows_in: &Mutex<Receiver<Row>>,
    out: &Sender<Outcome>,
    s: &WorkSettings<'_>,
) {
    loop {
        let row = match rows_in.lock().map(|r| r.recv()) {
            Ok(Ok(row)) => row,
            _ => break,
        };
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| match s.task {
            Task::Answer => model.answer(s.system, &row.question, &s.config, &mut |_| true),
            Task::Correct => model.correct(&row.question, &row.answer, &s.config, &mut |_| true),
        }));
        let result = result.map_err(|panic| panic_message(panic.as_ref()));
        if out.send(outcome(&row, result, started, s)).is_err() {
            break;
        }
    }
}

/// The output row (or the reject) for a finished row; `Err` carries a panic's message.
fn outcome(
    row: &Row,
    result: std::result::Result<aligner::Result<aligner::Generation>, String>,
    started: Instant,
    s: &WorkSettings<'_>,
) -> Outcome {
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok(Ok(g)) => {
            let meta = rows::Meta {
                line: row.line,
                hash: &row.hash,
                finish_reason: g.finish_reason.as_str(),
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.tokens.len(),
                latency_ms: (latency_ms * 10.0).round() / 10.0,
                template: s.template,
                model: s.model_name,
                answer: (s.task == Task::Answer).then_some(rows::AnswerMeta {
                    task: "answer",
                    system: s.system,
                }),
            };
            let out_row =
                rows::OutputRow::new(s.format, s.task, &row.question, &row.answer, &g, meta);
            match rows::line(&out_row) {
                Ok(text) => Outcome::Row(text),
                Err(e) => reject(row.line, &row.hash, e, row.question.as_bytes()),
            }
        }
        Ok(Err(e)) => reject(row.line, &row.hash, e.to_string(), row.question.as_bytes()),
        Err(cause) => {
            let reason = format!("internal error ({cause}); please report this row");
            reject(row.line, &row.hash, reason, row.question.as_bytes())
        }
    }
}

/// Checks the flags that need no file or model; returns the shard.
fn check_flags(args: &BatchArgs) -> Result<(usize, usize)> {
    let (shard, shards) = match &args.shard {
        Some(s) => parse_shard(s)?,
        None => (0, 1),
    };
    if args.workers == Some(0) {
        return usage("--workers must be at least 1");
    }
    check_batch_size(args.batch_size)?;
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
    Ok((shard, shards))
}

fn progress_bar(pending: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(pending), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    bar
}

pub fn run(args: BatchArgs) -> Result<()> {
    let (shard, shards) = check_flags(&args)?;
    // A full disk or `ulimit -f` must fail a write with an error we report, not kill us.
    // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let Outputs {
        out_file,
        rej_file,
        rejects,
        done,
        pending,
    } = open_outputs(&args, (shard, shards))?;
    let already = done.len();

    // On the CPU a worker per core, one thread each, with or without batching: its prompt
    // passes run in parallel, which beat one session of two threads
    // (benches/batch_throughput.py). On a GPU each worker is a session with its own weights in
    // device memory: two overlap each other's host-side work (serve on an H200: 32 req/s with
    // two, 20 with one) without filling a small device with one session per core.
    let count = args.workers.map_or(
        WorkerCount::PerCoreOrGpu { gpu: GPU_WORKERS },
        WorkerCount::Exactly,
    );
    let Workers {
        mut models,
        config,
        dir,
        ..
    } = load_workers(&args.model, &args.gen, count)?;
    let workers = models.len();
    let template = models[0].template()?;
    let slots = batch_size(&mut models[0], args.batch_size, BATCH_SLOTS)?;

    let bar = progress_bar(pending);

    let (task_tx, task_rx) = sync_channel::<Row>(workers * 4);
    let task_rx = Arc::new(Mutex::new(task_rx));
    let (out_tx, out_rx) = channel::<Outcome>();
    let started = Instant::now();
    let model_name = dir.display().to_string();
    let settings = WorkSettings {
        config,
        format: args.format,
        task: args.task,
        system: args.system.as_deref(),
        template: template.name(),
        model_name: &model_name,
    };
    std::thread::scope(|scope| -> Result<()> {
        let feeder_out = out_tx.clone();
        let args_ref = &args;
        let done_ref = &done;
        let feeder =
            scope.spawn(move || feed(args_ref, shard, shards, done_ref, task_tx, feeder_out));
        for mut model in models {
            let (rows_in, out, settings) = (Arc::clone(&task_rx), out_tx.clone(), &settings);
            scope.spawn(move || match slots {
                1 => work(&mut model, &rows_in, &out, settings),
                n => slots::work(&mut model, n, &rows_in, &out, settings),
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
            "aligner batch: {rows} {}, {rejected} rejected ({}), {already} already done; {:.1} s, {:.2} rows/s, {workers} worker(s) x {slots} slot(s)",
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
        let (file, path, text) = match outcome {
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
        file.write_all(format!("{text}\n").as_bytes())
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
}
