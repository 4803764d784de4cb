//! aligner: run Aligner correction models on ONNX Runtime.
//!
//! Layers, each in its own module: prompt [`template`]s, the [`tokenizer`] and its streaming
//! detokenizer, the [`sampler`] and logits processors, [`stop`] conditions, the [`kv_cache`]
//! cursor, the ONNX [`engine`] behind the [`model::DecoderModel`] seam, and the [`generate`]
//! loop. [`Aligner`] ties them together for the common case:
//!
//! ```no_run
//! use aligner::{Aligner, LoadOptions};
//!
//! let mut model = Aligner::load(
//!     "models/smollm2-135m-instruct-int8",
//!     &LoadOptions::default().with_threads(2),
//! )?;
//! let config = model.generation_defaults().with_max_new_tokens(128);
//! let out = model.correct("Where is Paris?", "Paris is in Germany.", &config, &mut |piece| {
//!     print!("{piece}");
//!     true // false cancels
//! })?;
//! println!("\n{:?} after {} tokens", out.finish_reason, out.tokens.len());
//! # Ok::<(), aligner::Error>(())
//! ```

pub mod batch;
pub mod batching;
pub mod cancel;
pub mod config;
pub mod draft;
pub(crate) mod engine;
pub mod error;
pub mod ffi;
pub mod folder;
pub mod generate;
pub mod kv_cache;
pub mod model;
pub mod output;
pub mod provider;
pub(crate) mod runtime;
pub mod sampler;
pub(crate) mod sequence;
pub mod speculative;
pub mod stop;
pub mod template;
#[cfg(test)]
mod testing;
pub mod tokenizer;
pub(crate) mod verify;

use std::path::{Path, PathBuf};

use draft::DraftHistory;

pub use batch::Batch;
pub use cancel::CancelHandle;
pub use config::{GenerationConfig, SamplingOverrides};
pub use engine::EngineConfig;
pub use error::{Error, Result};
pub use folder::ModelFolder;
pub use output::{DraftStats, Generation, Timings};
pub use provider::{ArenaExtend, Provider, ProviderChoice, ProviderConfig, ProviderReport};
pub use runtime::{available_providers, MIN_ORT_MINOR};
pub use stop::FinishReason;
pub use template::Template;

use engine::OnnxDecoder;
use generate::Generator;
use runtime::OrtRuntime;
use tokenizer::Tokenizer;

/// Where and how to load a model. Build with `Default` and the `with_*` setters.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    pub ort_lib: Option<PathBuf>,
    pub template: Option<String>,
    pub engine: EngineConfig,
}

impl LoadOptions {
    pub fn with_ort_lib(mut self, path: impl Into<PathBuf>) -> Self {
        self.ort_lib = Some(path.into());
        self
    }
    pub fn with_template(mut self, name: impl Into<String>) -> Self {
        self.template = Some(name.into());
        self
    }
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.engine = self.engine.with_threads(threads);
        self
    }
    pub fn with_provider(mut self, provider: ProviderConfig) -> Self {
        self.engine = self.engine.with_provider(provider);
        self
    }
    /// Cache optimized CPU graphs under `root` (none by default: the binary chooses the
    /// user cache dir).
    pub fn with_graph_cache(mut self, root: impl Into<PathBuf>) -> Self {
        self.engine = self.engine.with_graph_cache(root);
        self
    }
    /// See [`EngineConfig::keep_arena`].
    pub fn with_keep_arena(mut self, keep: bool) -> Self {
        self.engine = self.engine.with_keep_arena(keep);
        self
    }
}

/// Which ONNX Runtime runs a model, without exposing ONNX Runtime's own types.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RuntimeInfo {
    /// The library's version string, e.g. `1.31.1`.
    pub version: String,
    /// The shared library that was loaded.
    pub path: PathBuf,
    /// The execution provider in use, as [`ProviderReport::label`] writes it.
    pub provider: String,
}

/// A loaded model folder, ready to correct answers.
pub struct Aligner {
    runtime: std::sync::Arc<OrtRuntime>,
    folder: ModelFolder,
    /// Shared with the handles [`Aligner::share`] made.
    tokenizer: std::sync::Arc<Tokenizer>,
    engine: OnnxDecoder,
    template: Option<Template>,
    eos_ids: Vec<u32>,
    cancel: CancelHandle,
    /// The tokens whose KV the engine's cache holds (see [`Generator::resume`]).
    kv_tokens: Vec<u32>,
    /// Recent outputs, which corrections also draft from (see [`draft::DraftHistory`]).
    draft_history: DraftHistory,
}

impl Aligner {
    pub fn load(model_dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Aligner> {
        let folder = ModelFolder::open(model_dir)?;
        // Template errors surface at load time only when the user named one explicitly.
        let template = match folder.template(options.template.as_deref()) {
            Ok(t) => Some(t),
            Err(e) if options.template.is_some() => return Err(e),
            Err(_) => None,
        };
        // The tokenizer (a large JSON file) parses on another core while ONNX Runtime builds
        // the session: together they are most of a start.
        let (tokenizer, engine) = std::thread::scope(|scope| {
            let tokenizer = scope.spawn(|| Tokenizer::from_file(&folder.tokenizer_path()));
            let engine = runtime::load(options.ort_lib.as_deref()).and_then(|runtime| {
                Ok((
                    OnnxDecoder::load(&runtime, &folder, &options.engine)?,
                    runtime,
                ))
            });
            let tokenizer = tokenizer
                .join()
                .unwrap_or_else(|_| Err(Error::Tokenizer("the tokenizer loader panicked".into())));
            (tokenizer, engine)
        });
        let tokenizer = tokenizer?;
        let (engine, runtime) = engine?;
        let eos_ids = folder.eos_token_ids();
        Ok(Aligner {
            runtime,
            folder,
            tokenizer: std::sync::Arc::new(tokenizer),
            engine,
            template,
            eos_ids,
            cancel: CancelHandle::new(),
            kv_tokens: Vec::new(),
            draft_history: DraftHistory::default(),
        })
    }

    /// Another handle on this loaded model, for another thread. It shares the ONNX Runtime
    /// session (one copy of the weights in memory) and the tokenizer, and has its own KV
    /// cache, prefix cache and cancel handle; on the CPU, the two generate at the same time.
    /// A GPU session is not shared (ONNX Runtime's GPU allocators are not thread-safe), nor
    /// is a model without a shared-buffer cache: for those this is an `InvalidRequest`, and
    /// the caller loads the model again.
    pub fn share(&self) -> Result<Aligner> {
        Ok(Aligner {
            runtime: std::sync::Arc::clone(&self.runtime),
            folder: self.folder.clone(),
            tokenizer: std::sync::Arc::clone(&self.tokenizer),
            engine: self.engine.share()?,
            template: self.template,
            eos_ids: self.eos_ids.clone(),
            cancel: CancelHandle::new(),
            kv_tokens: Vec::new(),
            draft_history: DraftHistory::default(),
        })
    }

    pub fn folder(&self) -> &ModelFolder {
        &self.folder
    }

    /// The ONNX Runtime library in use and the provider running this model.
    pub fn runtime_info(&self) -> RuntimeInfo {
        RuntimeInfo {
            version: self.runtime.version.clone(),
            path: self.runtime.path.clone(),
            provider: self.provider().label(),
        }
    }

    /// Whether a prompt's pass projects only its last position onto the vocabulary. True for
    /// our exporter's graphs (they take `logits_to_keep`); a graph without that input, such as
    /// onnxruntime-genai's builder's, projects every prompt position, which slows prefill.
    pub fn keeps_only_needed_logits(&self) -> bool {
        self.engine.keeps_only_needed_logits()
    }

    /// The execution provider actually running the model, and where its nodes went.
    pub fn provider(&self) -> &ProviderReport {
        self.engine.provider_report()
    }

    /// A warning when the folder was exported for other providers than the one in use.
    pub fn provider_mismatch(&self) -> Option<String> {
        let intended = self.folder.intended_providers()?;
        let used = self.provider().provider.name();
        let fix = if used == "cpu" {
            "export with --target cpu for the CPU"
        } else {
            "export with --precision fp16, or --target cuda for int8/int4"
        };
        (!intended.iter().any(|p| p == used)).then(|| {
            format!(
                "{} was exported for {}; on {used} it may run slowly or fail ({fix})",
                self.folder.dir.display(),
                intended.join(", ")
            )
        })
    }

    /// Bytes the KV cache needs to hold `positions` positions.
    pub fn kv_cache_bytes(&self, positions: usize) -> usize {
        self.engine.kv_bytes_per_position() * positions
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// A handle that stops this model's generation in progress from another thread (see
    /// [`CancelHandle`]); every clone controls the same model.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// The template in force, or an error telling the user to pass `--template`.
    pub fn template(&self) -> Result<Template> {
        match self.template {
            Some(t) => Ok(t),
            None => self.folder.template(None),
        }
    }

    /// Generation defaults from the folder's manifest.
    pub fn generation_defaults(&self) -> GenerationConfig {
        self.folder.generation_defaults()
    }

    /// Renders the template, then generates the correction, streaming text to `on_text`
    /// (which returns `false` to cancel).
    pub fn correct(
        &mut self,
        question: &str,
        answer: &str,
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let template = self.template()?;
        self.correct_with_template(template, question, answer, config, on_text)
    }

    /// Answers `question` as an ordinary chat turn in the template family's chat format (see
    /// [`Template::chat`]): the upstream side of an evaluation or a bootstrap round.
    pub fn answer(
        &mut self,
        system: Option<&str>,
        question: &str,
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let template = self.template()?;
        let config = with_template_stops(template, config);
        let ids = self.encode_prompt(&template.chat(system, question))?;
        self.run(
            |generator, tokenizer, eos_ids, on_text| {
                generator.generate(tokenizer, &ids, &config, eos_ids, on_text)
            },
            on_text,
        )
    }

    /// [`Aligner::correct`] with a template chosen per call (a server request may name one).
    pub fn correct_with_template(
        &mut self,
        template: Template,
        question: &str,
        answer: &str,
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let config = with_template_stops(template, config);
        // The correction mostly copies the answer: its tokens are the speculative drafts, and
        // where it rewrites, the model's recent outputs are.
        let (ids, answer_ids) = self.correction_ids(template, question, answer)?;
        let source = self.draft_history.source(&answer_ids);
        let out = self.run(
            |generator, tokenizer, eos_ids, on_text| {
                generator
                    .generate_with_copy_drafts(tokenizer, &ids, &source, &config, eos_ids, on_text)
            },
            on_text,
        );
        if let Ok(g) = &out {
            self.draft_history.push(&g.tokens);
        }
        out
    }

    /// The token ids of a correction prompt, and of the answer alone (the copy-draft source),
    /// so benchmarks can feed other runtimes exactly what [`correct`](Self::correct) runs.
    pub fn correction_ids(
        &self,
        template: Template,
        question: &str,
        answer: &str,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        self.check_prompt_bytes(question.len().saturating_add(answer.len()))?;
        let ids = self.encode_prompt(&template.render(question, answer))?;
        Ok((ids, self.tokenizer.encode(answer)?))
    }

    /// Tokenizes a prompt, refusing first (by its length in bytes) text that cannot fit the
    /// context whatever it encodes to: tokenizing 50 MB once took 6.7 GB.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.check_prompt_bytes(text.len())?;
        let ids = self.tokenizer.encode(text)?;
        self.check_ids(&ids)?;
        Ok(ids)
    }

    /// The longest prompt, in bytes, that could still fit the context (see
    /// [`Tokenizer::max_token_bytes`]); longer text is refused before it is tokenized.
    pub fn max_prompt_bytes(&self) -> usize {
        let tokens = self.folder.genai.model.context_length;
        // Twice the bound, for normalizers that shorten text before it is split.
        tokens
            .saturating_mul(self.tokenizer.max_token_bytes())
            .saturating_mul(2)
    }

    fn check_prompt_bytes(&self, bytes: usize) -> Result<()> {
        let max = self.max_prompt_bytes();
        if bytes > max {
            return Err(Error::invalid(format!(
                "the prompt is {bytes} bytes, more than the model's context of {} tokens can hold (at most {max} bytes); shorten the question or answer",
                self.folder.genai.model.context_length
            )));
        }
        Ok(())
    }

    fn check_ids(&self, prompt: &[u32]) -> Result<()> {
        let vocab = self.folder.genai.model.vocab_size;
        match prompt.iter().find(|&&t| t as usize >= vocab) {
            Some(bad) => Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            ))),
            None => Ok(()),
        }
    }

    /// Generates from raw prompt token ids (no template).
    pub fn generate_ids(
        &mut self,
        prompt: &[u32],
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        self.check_ids(prompt)?;
        self.run(
            |generator, tokenizer, eos_ids, on_text| {
                generator.generate(tokenizer, prompt, config, eos_ids, on_text)
            },
            on_text,
        )
    }

    /// Runs one generation on a generator that resumes from what the cache holds, watched by
    /// the cancel handle; records what the cache holds after it (nothing after an error).
    fn run(
        &mut self,
        generate: impl FnOnce(
            &mut Generator<'_, OnnxDecoder>,
            &Tokenizer,
            &[u32],
            &mut dyn FnMut(&str) -> bool,
        ) -> Result<Generation>,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let Aligner {
            engine,
            tokenizer,
            eos_ids,
            cancel,
            kv_tokens,
            ..
        } = self;
        let mut generator = Generator::resume(engine, std::mem::take(kv_tokens));
        let out = cancel.watch(on_text, |on_text| {
            generate(&mut generator, tokenizer, eos_ids, on_text)
        });
        if out.is_ok() {
            *kv_tokens = generator.into_cached();
        }
        out
    }
}

/// `config` plus the stop strings `template` implies.
fn with_template_stops(template: Template, config: &GenerationConfig) -> GenerationConfig {
    let mut config = config.clone();
    for s in template.stop_strings() {
        if !config.stop.iter().any(|x| x == s) {
            config.stop.push(s.to_string());
        }
    }
    config
}
