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
    match Cli::parse().command {
        Command::Correct(a) => correct::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Batch(a) => batch::run(a),
    }
}
