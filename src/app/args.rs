//! Flags: the groups every model-loading command shares ([`ModelArgs`], [`GenArgs`]) and the
//! flags of the long-running commands ([`ServeArgs`], [`BatchArgs`]), kept here so that the
//! subcommands depend on this module, never on each other.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use aligner::{
    provider::user_cache_dir, ArenaExtend, GenerationConfig, LoadOptions, ProviderChoice,
    ProviderConfig, SamplingOverrides,
};

use super::errors::usage;

/// Cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// More intra-op threads than this is a typo, not a machine.
const MAX_THREADS: usize = 1024;

/// The model folder `make model` writes; used when `--model` is not given.
pub const DEFAULT_MODEL_NAME: &str = "smollm2-135m-aligner-int8";

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
    /// Where optimized CPU graphs and their prepacked weights are cached so that later starts
    /// are fast and map the weights: on by default under ~/.cache/aligner/graphs (or
    /// $XDG_CACHE_HOME); `off` optimizes and prepacks on every start.
    #[arg(long, value_name = "DIR|default|off", env = "ALIGNER_GRAPH_CACHE")]
    pub graph_cache: Option<String>,
    /// Keep ONNX Runtime's CPU arena grown between passes (not a flag: the server and batch
    /// set it, see [`super::workers::load_workers`]).
    #[arg(skip)]
    pub keep_arena: bool,
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
        let mut bundled = None;
        if let Ok(exe) = std::env::current_exe() {
            roots.extend(exe.ancestors().skip(1).map(PathBuf::from));
            // A release bundle: bin/aligner next to share/aligner/models/.
            bundled = exe.parent().map(|bin| bin.join("../share/aligner"));
        }
        roots
            .iter()
            .chain(bundled.iter())
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
            Some("off") => {}
            None | Some("default") => {
                o.engine = o.engine.with_graph_cache(user_cache_dir().join("graphs"))
            }
            Some(dir) => o.engine = o.engine.with_graph_cache(dir),
        }
        Ok(o.with_keep_arena(self.keep_arena))
    }
}

/// Generation flags; unset ones keep the model folder's defaults. The sampling flags are the
/// library's [`SamplingOverrides`], the same type a server request's fields parse into.
#[derive(Args, Clone, Default)]
pub struct GenArgs {
    #[command(flatten)]
    pub sampling: SamplingOverrides,
    /// Count prompt tokens in the repetition penalty too.
    #[arg(long)]
    pub penalize_prompt: bool,
    /// Stop when this text appears (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Turn off copy-draft speculative decoding for corrections (same greedy output, up to
    /// kernel near-ties).
    #[arg(long)]
    pub no_draft: bool,
    /// Length of the first copy draft and cap of the adaptive length; while drafts are at the
    /// cap, the answer's last tokens, up to half of it more, join a draft [default: 32].
    #[arg(long, value_name = "N")]
    pub max_draft_tokens: Option<usize>,
    /// Verify the first copy draft in the prompt's own pass: one pass fewer where the
    /// correction copies its answer, a wasted draft where it rewrites from the first token, and
    /// the first token arrives with the draft's verdict (see the README's copy drafts).
    #[arg(long)]
    pub draft_with_prompt: bool,
    /// Never produce EOS tokens (their logits are masked), so runs have fixed lengths.
    #[arg(long, alias = "ignore-eos")]
    pub suppress_eos: bool,
    /// Run every prompt from its first token, instead of reusing the KV cache of the prefix it
    /// shares with the previous one (the template's fixed part); output is the same.
    #[arg(long)]
    pub no_prefix_reuse: bool,
}

impl GenArgs {
    pub fn apply(&self, c: GenerationConfig) -> GenerationConfig {
        let mut c = self.sampling.apply(c);
        if let Some(v) = self.max_draft_tokens {
            c = c.with_max_draft_tokens(v);
        }
        if self.no_draft {
            c = c.with_copy_drafts(false);
        }
        if self.draft_with_prompt {
            c = c.with_draft_with_prompt(true);
        }
        if self.no_prefix_reuse {
            c = c.with_reuse_prefix(false);
        }
        let penalize_prompt = self.penalize_prompt || c.penalize_prompt;
        let suppress_eos = self.suppress_eos || c.suppress_eos;
        c.with_penalize_prompt(penalize_prompt)
            .with_suppress_eos(suppress_eos)
            .with_stop(self.stop.iter().cloned())
    }
}

#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Defaults for every request; a request's own options override them.
    #[command(flatten)]
    pub gen: GenArgs,
    /// Address to bind (an IP, or a name such as localhost); the default keeps the server on
    /// this machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind; 0 picks a free one (printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Model sessions generating in parallel.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Requests each worker decodes together (continuous batching: a queued request takes a
    /// slot as soon as one frees). 1, the default, runs requests one by one with copy drafts;
    /// wider batches copy-draft greedy corrections too, and on 2 cores gained 6-8% req/s at
    /// twice the p99 latency. CPU only.
    #[arg(long, value_name = "B")]
    pub batch_size: Option<usize>,
    /// Requests that may wait for a free slot; beyond that the server answers 429.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` on /v1/* (or set ALIGNER_API_KEY).
    #[arg(long, env = "ALIGNER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Refuse to start without an API key (for servers reachable from other machines).
    #[arg(long)]
    pub require_api_key: bool,
    /// Largest request body accepted; larger ones get 413.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub max_body_bytes: usize,
    /// Longest prompt a request may bring, in tokens (0: whatever the context holds). A long
    /// prompt holds a worker for its whole prompt pass.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_prompt_tokens: usize,
    /// Seconds a request head may take to arrive; also how long an idle keep-alive connection
    /// is kept open.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub header_timeout: f64,
    /// Seconds a request body may take to arrive (408 after that).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub body_timeout: f64,
    /// Open connections at most; more wait to be accepted (default: 1024, or fewer when the
    /// open-file limit is lower).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// On SIGTERM, the most seconds to wait for requests in flight.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub shutdown_timeout: f64,
    /// On SIGTERM, seconds idle and half-read connections get once no request is in flight.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub shutdown_grace: f64,
    /// OpenAI-compatible server whose answers /v1/chat/completions corrects.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Model name sent upstream (default: the client's).
    #[arg(long, value_name = "NAME")]
    pub upstream_model: Option<String>,
    /// Environment variable holding the upstream's API key.
    #[arg(long, value_name = "VAR")]
    pub upstream_key_env: Option<String>,
    /// Seconds to wait for the upstream before answering 504.
    #[arg(long, default_value_t = 120.0, value_name = "SECONDS")]
    pub upstream_timeout: f64,
}

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
    /// Model sessions working in parallel (default: one per core, one thread each, on the CPU;
    /// two on a GPU).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Rows each session decodes together (continuous batching: a finished row's slot takes
    /// the next row at once). Greedy corrections copy-draft in a batch too; 1 runs rows one by
    /// one. Default: 16 on the CPU, 1 on a GPU.
    #[arg(long, value_name = "B")]
    pub batch_size: Option<usize>,
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
