//! `aligner generate`: a raw prompt (text or token ids) in, no correction template.

use anyhow::Result;
use clap::Args;

use super::args::{GenArgs, ModelArgs};
use super::errors::usage;
use super::report::{run_and_print, Origin};
use super::workers;

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

pub fn run(args: GenerateArgs) -> Result<()> {
    let dir = args.model.model_dir()?;
    let mut aligner = workers::load(&args.model, &dir)?;
    let ids = match (&args.prompt, &args.prompt_ids) {
        (Some(text), None) => aligner.encode_prompt(text)?,
        (None, Some(ids)) => parse_ids(ids)?,
        _ => return usage("give the prompt with --prompt TEXT or --prompt-ids 1,2,3"),
    };
    let config = args.gen.apply(aligner.generation_defaults());
    config.validate()?;
    let origin = Origin {
        template: None,
        model: dir.display().to_string(),
        provider: aligner.provider().label(),
    };
    run_and_print(args.json, origin, |on_text| {
        aligner.generate_ids(&ids, &config, on_text)
    })
}
