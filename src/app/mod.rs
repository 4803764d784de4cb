//! The `aligner` binary as a tree of leaves: this module parses the command line and
//! dispatches. Each subcommand is a leaf that imports only the shared modules ([`args`],
//! [`workers`], [`report`], [`errors`]) and the library, never another subcommand
//! (`scripts/module_graph.py` checks this in `make lint`).

mod args;
mod batch;
mod bench;
mod correct;
mod errors;
mod generate;
mod info;
mod report;
mod serve;
mod workers;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use errors::{exit_code, panic_message};

#[derive(Parser)]
#[command(
    name = "aligner",
    version,
    about = "Correct answers with Aligner models on ONNX Runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Correct an answer to a question.
    Correct(correct::CorrectArgs),
    /// Generate from a raw prompt (text or token ids), without a correction template.
    Generate(generate::GenerateArgs),
    /// Show the model manifest, the ONNX Runtime in use and its execution providers.
    Info(info::InfoArgs),
    /// Measure prefill and decode speed.
    Bench(bench::BenchArgs),
    /// Serve corrections over HTTP (OpenAI-compatible, optionally in front of an upstream model).
    Serve(args::ServeArgs),
    /// Correct a JSONL file of question/answer rows, resumably (preference data for DPO).
    Batch(args::BatchArgs),
}

pub fn run() -> Result<()> {
    let command = Cli::parse().command;
    // `batch` is after rows per second, and its growing batch KV cache would take fresh
    // pages for every reallocation (1.7% slower on 64 rows here, for 9% less peak).
    if !matches!(command, Command::Batch(_)) {
        return_large_frees();
    }
    match command {
        Command::Correct(a) => correct::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Batch(a) => batch::run(a),
    }
}

/// Has glibc map blocks of 128 KiB and more on their own, so that freeing one returns it to
/// the kernel. By default glibc raises that threshold to the size of each such block freed,
/// and later ones come from the heap, where they stay resident once freed. At a start ONNX
/// Runtime packs every weight again into a temporary buffer (about 120 MB in all on the
/// default model), so that left 27 MB of the start's peak resident (266 against 239 MB on a
/// one-token run). Mapping them anew costs a start 25-50 ms (README, "Peak RSS"); a threshold
/// the user set in glibc's `MALLOC_MMAP_THRESHOLD_` is left as it is.
fn return_large_frees() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets glibc's allocation policy; no other thread runs yet.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
}
