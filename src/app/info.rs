//! `aligner info`: the model folder, its manifest, the ONNX Runtime in use and where the
//! graph's nodes went.

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use aligner::folder::AlignerManifest;
use aligner::RuntimeInfo;

use super::args::ModelArgs;
use super::workers;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    json: bool,
}

/// `aligner info --json`.
#[derive(Serialize)]
struct InfoReport<'a> {
    model: String,
    #[serde(rename = "type")]
    model_type: &'a str,
    layers: usize,
    attention_heads: usize,
    kv_heads: usize,
    head_size: usize,
    vocab_size: usize,
    context_length: usize,
    eos_token_ids: Vec<u32>,
    manifest: Option<&'a AlignerManifest>,
    onnxruntime: RuntimeInfo,
    execution_providers: Vec<String>,
    provider_in_use: String,
    provider_notes: &'a [String],
    node_placement: Vec<Placement<'a>>,
    exported_for: Option<&'a [String]>,
    /// A prompt's pass projects only its last position onto the vocabulary.
    last_position_logits: bool,
}

#[derive(Serialize)]
struct Placement<'a> {
    provider: &'a str,
    nodes: usize,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let dir = args.model.model_dir()?;
    let aligner = workers::load(&args.model, &dir)?;
    let folder = aligner.folder();
    let report = aligner.provider();
    let m = &folder.genai.model;
    let d = &m.decoder;
    let info = InfoReport {
        model: dir.display().to_string(),
        model_type: &m.model_type,
        layers: d.num_hidden_layers,
        attention_heads: d.num_attention_heads,
        kv_heads: d.num_key_value_heads,
        head_size: d.head_size,
        vocab_size: m.vocab_size,
        context_length: m.context_length,
        eos_token_ids: folder.eos_token_ids(),
        manifest: folder.manifest.as_ref(),
        onnxruntime: aligner.runtime_info(),
        execution_providers: aligner::available_providers(),
        provider_in_use: report.label(),
        provider_notes: &report.notes,
        node_placement: report
            .placements
            .iter()
            .map(|(ep, n)| Placement {
                provider: ep,
                nodes: *n,
            })
            .collect(),
        exported_for: folder.intended_providers(),
        last_position_logits: aligner.keeps_only_needed_logits(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&info)?);
        return Ok(());
    }
    println!("model:            {}", info.model);
    println!(
        "architecture:     {} ({} layers, {} heads / {} kv heads, head size {})",
        info.model_type, info.layers, info.attention_heads, info.kv_heads, info.head_size
    );
    println!(
        "vocab / context:  {} / {}",
        info.vocab_size, info.context_length
    );
    println!("eos token ids:    {:?}", info.eos_token_ids);
    match info.manifest {
        Some(manifest) => println!(
            "manifest:         {}",
            serde_json::to_string_pretty(manifest)?
        ),
        None => println!("manifest:         none (no aligner.json; pass --template)"),
    }
    let rt = &info.onnxruntime;
    println!("onnxruntime:      {} ({})", rt.version, rt.path.display());
    println!("providers:        {}", info.execution_providers.join(", "));
    println!(
        "provider in use:  {} ({})",
        info.provider_in_use,
        report.placement_summary()
    );
    if let Some(intended) = &info.exported_for {
        println!("exported for:     {}", intended.join(", "));
    }
    println!(
        "prompt logits:    {}",
        if info.last_position_logits {
            "last position only (logits_to_keep)"
        } else {
            "every position (the graph has no logits_to_keep input; a folder from `python -m aligner_export` has one and prefills faster)"
        }
    );
    Ok(())
}
