//! Argument parsing (clap) and the subcommands.

mod bench;
mod bench_corrections;
mod commands;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use aligner::{
    provider::user_cache_dir, Aligner, ArenaExtend, GenerationConfig, LoadOptions, ProviderChoice,
    ProviderConfig, SamplingOverrides,
};

/// A flag or argument the user must change: exit code 2, like the library's invalid requests.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `Err(UsageError)` as an `anyhow::Error`, for `?` in the subcommands.
pub fn usage<T>(message: impl Into<String>) -> Result<T> {
    Err(UsageError(message.into()).into())
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// More intra-op threads than this is a typo, not a machine.
const MAX_THREADS: usize = 1024;

/// Cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The model folder `make model` writes; used when `--model` is not given.
pub const DEFAULT_MODEL_NAME: &str = "smollm2-135m-aligner-int8";

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
    Correct(commands::CorrectArgs),
    /// Generate from a raw prompt (text or token ids), without a correction template.
    Generate(commands::GenerateArgs),
    /// Show the model manifest, the ONNX Runtime in use and its execution providers.
    Info(commands::InfoArgs),
    /// Measure prefill and decode speed.
    Bench(bench::BenchArgs),
    /// Serve corrections over HTTP (OpenAI-compatible, optionally in front of an upstream model).
    Serve(crate::server::ServeArgs),
    /// Correct a JSONL file of question/answer rows, resumably (preference data for DPO).
    Batch(crate::batch::BatchArgs),
}

/// Flags shared by every command that loads a model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model folder (genai_config.json, model.onnx, tokenizer.json, aligner.json).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// ONNX Runtime library to load (else ORT_DYLIB_PATH, the executable's folder, the active
    /// Python environment, the system path).
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Intra-op threads (default: ONNX Runtime's choice).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Prompt template: aligner-v1, aligner-v2, aligner-2b or chatml-correction.
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    /// Execution provider: cpu, cuda, tensorrt, or auto (TensorRT, then CUDA, then CPU).
    #[arg(long, value_name = "EP", default_value = "cpu")]
    pub ep: String,
    /// When --ep cuda/tensorrt cannot register, run on the CPU (with a warning) instead of failing.
    #[arg(long)]
    pub allow_cpu_fallback: bool,
    /// CUDA device ordinal for cuda and tensorrt.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub device_id: Option<i32>,
    /// Upper bound of the CUDA memory arena, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub gpu_mem_limit: Option<usize>,
    /// Grow the CUDA arena by exactly what is requested instead of by powers of two.
    #[arg(long)]
    pub arena_same_as_requested: bool,
    /// Capture CUDA graphs (cuda; needs the graph's shapes to stay fixed).
    #[arg(long)]
    pub cuda_graph: bool,
    /// TensorRT engine and timing cache folder (default: ~/.cache/aligner/tensorrt/MODEL).
    #[arg(long, value_name = "DIR")]
    pub trt_cache_dir: Option<PathBuf>,
    /// Build TensorRT engines without fp16 kernels.
    #[arg(long)]
    pub no_trt_fp16: bool,
    /// Cache optimized CPU graphs in DIR (`default`: ~/.cache/aligner/graphs) so later starts
    /// are fast. Opt-in: a cached graph of the tiny int8 test model decodes wrongly (open bug).
    #[arg(long, value_name = "DIR|default|off", env = "ALIGNER_GRAPH_CACHE")]
    pub graph_cache: Option<String>,
}

impl ModelArgs {
    pub fn model_dir(&self) -> Result<PathBuf> {
        if let Some(dir) = &self.model {
            return Ok(dir.clone());
        }
        if let Some(dir) = std::env::var_os("ALIGNER_MODEL").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
        let mut roots = vec![std::env::current_dir()?];
        if let Ok(exe) = std::env::current_exe() {
            roots.extend(exe.ancestors().skip(1).map(PathBuf::from));
        }
        roots
            .iter()
            .map(|r| r.join("models").join(DEFAULT_MODEL_NAME))
            .find(|p| p.is_dir())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no --model given and the default model folder models/{DEFAULT_MODEL_NAME} was not found; run `make model` or pass --model DIR"
                )
            })
    }

    pub fn provider_config(&self) -> Result<ProviderConfig> {
        let mut p = ProviderConfig::default()
            .with_choice(self.ep.parse::<ProviderChoice>()?)
            .with_allow_cpu_fallback(self.allow_cpu_fallback)
            .with_cuda_graph(self.cuda_graph)
            .with_trt_fp16(!self.no_trt_fp16);
        if let Some(id) = self.device_id {
            p = p.with_device_id(id);
        }
        if let Some(limit) = self.gpu_mem_limit {
            p = p.with_gpu_mem_limit(limit);
        }
        if self.arena_same_as_requested {
            p = p.with_arena_extend(ArenaExtend::SameAsRequested);
        }
        if let Some(dir) = &self.trt_cache_dir {
            p = p.with_trt_cache_dir(dir);
        }
        p.validate()?;
        Ok(p)
    }

    /// `--threads`, checked: 0 and absurd counts are refused, and more threads than cores
    /// (which only makes ONNX Runtime's threads wait on each other) are capped with a note.
    pub fn threads(&self) -> Result<Option<usize>> {
        let Some(n) = self.threads else {
            return Ok(None);
        };
        if n == 0 || n > MAX_THREADS {
            return usage(format!(
                "--threads {n} must be between 1 and {MAX_THREADS}; give the number of cores to use"
            ));
        }
        let cores = cores();
        if n > cores {
            static NOTE: std::sync::Once = std::sync::Once::new();
            NOTE.call_once(|| {
                eprintln!(
                    "aligner: --threads {n} is more than the {cores} cores here; using {cores}"
                )
            });
            return Ok(Some(cores));
        }
        Ok(Some(n))
    }

    pub fn load_options(&self) -> Result<LoadOptions> {
        let mut o = LoadOptions::default().with_provider(self.provider_config()?);
        if let Some(p) = &self.ort_lib {
            o = o.with_ort_lib(p);
        }
        if let Some(t) = &self.template {
            o = o.with_template(t);
        }
        if let Some(n) = self.threads()? {
            o = o.with_threads(n);
        }
        match self.graph_cache.as_deref() {
            None | Some("off") => {}
            Some("default") => {
                o.engine = o.engine.with_graph_cache(user_cache_dir().join("graphs"))
            }
            Some(dir) => o.engine = o.engine.with_graph_cache(dir),
        }
        Ok(o)
    }

    /// Loads the model and says on stderr how the execution provider was chosen, whenever
    /// that is not simply the CPU the user asked for.
    pub fn load(&self, dir: &Path) -> Result<Aligner> {
        let aligner = Aligner::load(dir, &self.load_options()?)?;
        let report = aligner.provider();
        for note in &report.notes {
            eprintln!("aligner: {note}");
        }
        if !report.notes.is_empty() || self.ep.eq_ignore_ascii_case("auto") {
            eprintln!("aligner: execution provider: {}", report.label());
        }
        if report.provider.is_gpu() && report.nodes_elsewhere() > 0 {
            eprintln!(
                "aligner: {} nodes are not on {}: {}",
                report.nodes_elsewhere(),
                report.provider,
                report.placement_summary()
            );
        }
        if let Some(warning) = aligner.provider_mismatch() {
            eprintln!("aligner: warning: {warning}");
        }
        Ok(aligner)
    }
}

/// Generation flags; unset ones keep the model folder's defaults.
#[derive(Args, Clone, Default)]
pub struct GenArgs {
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// 0 = off.
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub min_p: Option<f32>,
    /// 1 = off; counts generated tokens only unless --penalize-prompt.
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Count prompt tokens in the repetition penalty too.
    #[arg(long)]
    pub penalize_prompt: bool,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text appears (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Turn off copy-draft speculative decoding for corrections (output is identical).
    #[arg(long)]
    pub no_draft: bool,
    /// Upper bound of the adaptive copy-draft length.
    #[arg(long, value_name = "N")]
    pub max_draft_tokens: Option<usize>,
    /// Never produce EOS tokens (their logits are masked), so runs have fixed lengths.
    #[arg(long, alias = "ignore-eos")]
    pub suppress_eos: bool,
}

impl GenArgs {
    pub fn apply(&self, c: GenerationConfig) -> GenerationConfig {
        let mut c = SamplingOverrides {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        }
        .apply(c);
        if let Some(v) = self.max_draft_tokens {
            c = c.with_max_draft_tokens(v);
        }
        if self.no_draft {
            c = c.with_copy_drafts(false);
        }
        let penalize_prompt = self.penalize_prompt || c.penalize_prompt;
        let suppress_eos = self.suppress_eos || c.suppress_eos;
        c.with_penalize_prompt(penalize_prompt)
            .with_suppress_eos(suppress_eos)
            .with_stop(self.stop.iter().cloned())
    }
}

pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Correct(a) => commands::correct(a),
        Command::Generate(a) => commands::generate(a),
        Command::Info(a) => commands::info(a),
        Command::Bench(a) => bench::bench(a),
        Command::Serve(a) => crate::server::serve(a),
        Command::Batch(a) => crate::batch::batch(a),
    }
}

/// 2 for problems with the user's input, 1 for everything else.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    match e.downcast_ref::<aligner::Error>() {
        Some(aligner::Error::InvalidRequest(_)) | Some(aligner::Error::ContextOverflow { .. }) => 2,
        _ => 1,
    }
}
