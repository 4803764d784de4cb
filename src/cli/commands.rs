//! `correct`, `generate` and `info`.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use aligner::Generation;

use super::{usage, GenArgs, ModelArgs};

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

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    gen: GenArgs,
    /// Prompt text, used verbatim.
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long, value_name = "IDS")]
    prompt_ids: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
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

/// Streams to a terminal as tokens arrive; otherwise prints once at the end.
fn run_and_print(
    json: bool,
    extra: serde_json::Value,
    mut generate: impl FnMut(&mut dyn FnMut(&str) -> bool) -> aligner::Result<Generation>,
) -> Result<()> {
    let stream = !json && std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let g = generate(&mut |piece| {
        if stream {
            // A closed stdout stops generation instead of failing later.
            out.write_all(piece.as_bytes())
                .and_then(|_| out.flush())
                .is_ok()
        } else {
            true
        }
    })?;
    if json {
        let mut v = json!({
            "correction": g.text,
            "finish_reason": g.finish_reason.as_str(),
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.tokens.len(),
            "tokens": g.tokens,
            "timings": {
                "prefill_ms": g.timings.prefill_ms,
                "decode_ms": g.timings.decode_ms,
                "total_ms": g.timings.total_ms,
                "prefill_tok_s": g.timings.prefill_tok_s(g.prompt_tokens),
                "decode_tok_s": g.timings.decode_tok_s(g.tokens.len()),
            },
        });
        if let (Some(obj), Some(drafts)) = (v.as_object_mut(), &g.drafts) {
            obj.insert("drafts".into(), json!(drafts));
        }
        if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
            obj.extend(extra);
        }
        writeln!(out, "{v}")?;
    } else if stream {
        writeln!(out)?;
    } else {
        writeln!(out, "{}", g.text)?;
    }
    Ok(())
}

pub fn correct(args: CorrectArgs) -> Result<()> {
    let answer = read_answer(&args)?;
    let dir = args.model.model_dir()?;
    let mut aligner = args.model.load(&dir)?;
    let template = aligner.template()?;
    let config = args.gen.apply(aligner.generation_defaults());
    config.validate()?;
    let extra = json!({
        "template": template.name(),
        "model": dir.display().to_string(),
        "provider": aligner.provider().label(),
    });
    run_and_print(args.json, extra, |on_text| {
        aligner.correct(&args.question, &answer, &config, on_text)
    })
}

fn parse_ids(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse::<u32>() {
            Ok(id) => Ok(id),
            Err(_) => usage(format!(
                "--prompt-ids: '{s}' is not a token id (a whole number below 2^32); give ids like 1,4093,198"
            )),
        })
        .collect()
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let dir = args.model.model_dir()?;
    let mut aligner = args.model.load(&dir)?;
    let ids = match (&args.prompt, &args.prompt_ids) {
        (Some(text), None) => aligner.encode_prompt(text)?,
        (None, Some(ids)) => parse_ids(ids)?,
        _ => return usage("give the prompt with --prompt TEXT or --prompt-ids 1,2,3"),
    };
    let config = args.gen.apply(aligner.generation_defaults());
    config.validate()?;
    let extra = json!({"model": dir.display().to_string(), "provider": aligner.provider().label()});
    run_and_print(args.json, extra, |on_text| {
        aligner.generate_ids(&ids, &config, on_text)
    })
}

pub fn info(args: InfoArgs) -> Result<()> {
    let dir = args.model.model_dir()?;
    let aligner = args.model.load(&dir)?;
    let folder = aligner.folder();
    let rt = aligner.runtime();
    let providers = aligner::runtime::available_providers();
    let report = aligner.provider();
    let m = &folder.genai.model;
    let d = &m.decoder;
    let manifest = folder
        .manifest
        .as_ref()
        .map(|m| serde_json::to_value(m).unwrap_or_default())
        .unwrap_or(serde_json::Value::Null);
    let v = json!({
        "model": dir.display().to_string(),
        "type": m.model_type,
        "layers": d.num_hidden_layers,
        "attention_heads": d.num_attention_heads,
        "kv_heads": d.num_key_value_heads,
        "head_size": d.head_size,
        "vocab_size": m.vocab_size,
        "context_length": m.context_length,
        "eos_token_ids": folder.eos_token_ids(),
        "manifest": manifest,
        "onnxruntime": {"version": rt.version, "path": rt.path.display().to_string()},
        "execution_providers": providers,
        "provider_in_use": report.label(),
        "provider_notes": report.notes,
        "node_placement": report.placements.iter().map(|(ep, n)| json!({"provider": ep, "nodes": n})).collect::<Vec<_>>(),
        "exported_for": folder.intended_providers(),
    });
    if args.json {
        println!("{v}");
    } else {
        println!("model:            {}", dir.display());
        println!(
            "architecture:     {} ({} layers, {} heads / {} kv heads, head size {})",
            m.model_type,
            d.num_hidden_layers,
            d.num_attention_heads,
            d.num_key_value_heads,
            d.head_size
        );
        println!("vocab / context:  {} / {}", m.vocab_size, m.context_length);
        println!("eos token ids:    {:?}", folder.eos_token_ids());
        match &folder.manifest {
            Some(_) => println!(
                "manifest:         {}",
                serde_json::to_string_pretty(&v["manifest"])?
            ),
            None => println!("manifest:         none (no aligner.json; pass --template)"),
        }
        println!("onnxruntime:      {} ({})", rt.version, rt.path.display());
        println!("providers:        {}", providers.join(", "));
        println!(
            "provider in use:  {} ({})",
            report.label(),
            report.placement_summary()
        );
        if let Some(intended) = folder.intended_providers() {
            println!("exported for:     {}", intended.join(", "));
        }
    }
    Ok(())
}
