//! `aligner correct`: one question and answer in, the correction out (streamed to a terminal,
//! or one JSON report).

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::args::{GenArgs, ModelArgs};
use super::errors::usage;
use super::report::{run_and_print, Origin};
use super::workers;

/// The most answer text read from a file or stdin. No model context holds this much text; the
/// bound keeps `--answer-file /dev/zero` from reading until memory runs out (the library then
/// refuses anything longer than the context by its length in bytes, before tokenizing).
const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// Reads at most [`MAX_ANSWER_BYTES`] of UTF-8 text from `reader`, naming `origin` on error.
fn read_bounded(reader: impl Read, origin: &str) -> Result<String> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_ANSWER_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {origin}"))?;
    if bytes.len() as u64 > MAX_ANSWER_BYTES {
        return usage(format!(
            "{origin} holds more than {} MiB of text, more than any model context; pass a shorter answer",
            MAX_ANSWER_BYTES >> 20
        ));
    }
    String::from_utf8(bytes)
        .or_else(|_| usage(format!("{origin} is not UTF-8 text; convert it to UTF-8")))
}

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct CorrectArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    gen: GenArgs,
    /// The question the answer responds to.
    #[arg(long, short)]
    question: String,
    /// The answer to correct; `-` reads it from stdin. Empty asks for a fresh answer.
    #[arg(long, short, conflicts_with = "answer_file")]
    answer: Option<String>,
    /// Read the answer from this file.
    #[arg(long, value_name = "PATH")]
    answer_file: Option<PathBuf>,
    /// Print one JSON object: correction, token counts, timings, finish reason.
    #[arg(long)]
    json: bool,
}

fn read_answer(args: &CorrectArgs) -> Result<String> {
    if let Some(path) = &args.answer_file {
        let origin = format!("--answer-file {}", path.display());
        let file = std::fs::File::open(path).with_context(|| format!("cannot read {origin}"))?;
        return read_bounded(file, &origin);
    }
    match args.answer.as_deref() {
        Some("-") => {
            let s = read_bounded(std::io::stdin(), "the answer on stdin")?;
            Ok(s.trim_end_matches('\n').to_string())
        }
        Some(a) => Ok(a.to_string()),
        None => Ok(String::new()),
    }
}

pub fn run(args: CorrectArgs) -> Result<()> {
    let answer = read_answer(&args)?;
    let dir = args.model.model_dir()?;
    let mut aligner = workers::load(&args.model, &dir)?;
    let template = aligner.template()?;
    let config = args.gen.apply(aligner.generation_defaults());
    config.validate()?;
    let origin = Origin {
        template: Some(template.name()),
        model: dir.display().to_string(),
        provider: aligner.provider().label(),
    };
    run_and_print(args.json, origin, |on_text| {
        aligner.correct(&args.question, &answer, &config, on_text)
    })
}
