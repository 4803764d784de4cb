//! The ONNX Runtime engine: one session over a decoder graph with KV-cache inputs/outputs.
//!
//! The engine reads the session's real inputs and outputs instead of trusting the manifest
//! alone: whether `position_ids` exists, the dtype of `attention_mask`, and whether the cache
//! is fp32 or fp16.
//!
//! Two cache strategies, chosen by `past_present_share_buffer` in genai_config.json:
//! - shared: one preallocated `[1, kv_heads, capacity, head]` buffer per layer is bound (with
//!   IoBinding) as both past input and present output, so GroupQueryAttention writes new
//!   positions in place and nothing is copied or reallocated per token; on the CPU the
//!   decoder's logits buffer is bound as the output too (see `shared::run_bound_into`);
//! - chained: each step's present tensors become the next step's past (any attention op).
//!
//! On CUDA and TensorRT the shared buffers are allocated on the device, so the cache never
//! crosses the bus; only the logits come back, into pinned host memory.

use std::path::PathBuf;
use std::sync::Arc;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session, SessionInputValue};
use ort::value::{DynTensor, DynValue, TensorElementType};

use crate::error::{Error, Result};
use crate::folder::ModelFolder;
use crate::kv_cache::StepPlan;
use crate::model::DecoderModel;
use crate::provider::{ProviderConfig, ProviderReport};
use crate::runtime::OrtRuntime;

mod batch;
pub mod graph_cache;
mod io;
mod kv;
mod pages;
mod row_reads;
mod session;
mod shared;
mod startup;
use io::{attention_on_gpu, InputRole};

/// Shared KV buffers up to this many positions are kept between sequences; larger ones are
/// freed when a shorter sequence follows.
const KV_KEEP_POSITIONS: usize = 1024;

/// Session settings. `Default` runs on the CPU and leaves the thread count to ONNX Runtime.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Intra-op threads; `None` lets ONNX Runtime decide.
    pub threads: Option<usize>,
    pub provider: ProviderConfig,
    /// Folder for optimized CPU graphs (see [`graph_cache`]); `None` optimizes on every start.
    pub graph_cache: Option<PathBuf>,
    /// Keep ONNX Runtime's CPU arena at its high-water mark between passes. By default a
    /// pass over 64 positions or more (a prompt) hands back the regions it grew as it ends:
    /// a lower peak, but the next long prompt maps them again, which cost a server up to 20%
    /// of its requests/s (README, "Peak RSS"); `aligner serve` and `batch` keep them.
    pub keep_arena: bool,
}

impl EngineConfig {
    pub fn with_graph_cache(mut self, root: impl Into<PathBuf>) -> Self {
        self.graph_cache = Some(root.into());
        self
    }
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }
    pub fn with_provider(mut self, provider: ProviderConfig) -> Self {
        self.provider = provider;
        self
    }
    pub fn with_keep_arena(mut self, keep: bool) -> Self {
        self.keep_arena = keep;
        self
    }
}

/// Past key/value tensors, `[key0, value0, key1, value1, ...]`, in one of two strategies.
enum KvStorage {
    Chained(Vec<DynValue>),
    Shared {
        /// Owned here; the binding refers to them as past inputs and present outputs.
        _buffers: Vec<DynTensor>,
        capacity: usize,
        binding: Option<Box<IoBinding>>,
    },
}

impl KvStorage {
    /// Shared buffers not allocated yet (the first sequence sizes them).
    fn unbound() -> KvStorage {
        KvStorage::Shared {
            _buffers: Vec::new(),
            capacity: 0,
            binding: None,
        }
    }
}

pub struct OnnxDecoder {
    /// Shared with the decoders [`OnnxDecoder::share`] made (CPU only).
    session: Arc<session::MappedSession>,
    roles: Vec<InputRole>,
    /// Output name for each past slot (same order as `past`).
    present_names: Vec<String>,
    logits_name: String,
    kv: KvStorage,
    kv_dtype: TensorElementType,
    kv_heads: usize,
    head_size: usize,
    vocab_size: usize,
    context_length: usize,
    /// Logits of the last `logit_rows` positions of the latest step, row by row.
    logits: Vec<f32>,
    logit_rows: usize,
    /// Single-sequence passes bind `logits` as their output (see [`shared::run_bound_into`]).
    logits_in_place: bool,
    /// Session input names, in session order (bound by name every step).
    input_names: Vec<String>,
    /// Where ONNX Runtime allocates the logits of a bound run (pinned host memory on a GPU).
    cpu_output: MemoryInfo<'static>,
    /// Device memory for the shared KV buffers on CUDA/TensorRT; `None` on the CPU.
    kv_allocator: Option<Allocator>,
    /// The batch cache, once a batch asked for one (see [`batch`]).
    batch: Option<batch::BatchKv>,
    report: ProviderReport,
}

impl OnnxDecoder {
    /// Starts a decoder over `folder`'s graph, through the graph cache when `config` has one.
    pub fn load(
        runtime: &OrtRuntime,
        folder: &ModelFolder,
        config: &EngineConfig,
    ) -> Result<OnnxDecoder> {
        startup::load(runtime, folder, config)
    }

    fn from_session(
        session: Session,
        report: ProviderReport,
        folder: &ModelFolder,
        path: &std::path::Path,
        config: &EngineConfig,
    ) -> Result<OnnxDecoder> {
        let d = &folder.genai.model.decoder;
        let (
            io::Inputs {
                names: input_names,
                roles,
            },
            kv_dtype,
        ) = io::input_roles(&session, folder, path, report.provider)?;
        let io::Outputs {
            present_names,
            logits_type,
        } = io::outputs(&session, folder, path)?;
        let vocab_size = folder.genai.model.vocab_size;
        let kv = if folder.genai.search.past_present_share_buffer {
            KvStorage::unbound()
        } else {
            KvStorage::Chained(Vec::new())
        };
        // A pass's logits shape is known ahead only when the graph takes `logits_to_keep`;
        // GPU sessions keep pinned-memory outputs (this path has not run on hardware).
        let logits_in_place = logits_type == Some(TensorElementType::Float32)
            && roles.contains(&InputRole::LogitsToKeep)
            && !report.provider.is_gpu();
        // Only the CPU arena is shrunk, and only on the CPU provider: GPU sessions keep
        // ONNX Runtime's defaults (untested on hardware with this option).
        let shrink = !config.keep_arena && !report.provider.is_gpu();
        let session =
            session::MappedSession::new(session, shrink).map_err(Error::ort_load(path))?;
        let mut engine = OnnxDecoder {
            session: Arc::new(session),
            roles,
            present_names,
            logits_name: d.outputs.logits.clone(),
            kv,
            kv_dtype,
            kv_heads: d.num_key_value_heads,
            head_size: d.head_size,
            vocab_size,
            context_length: folder.genai.model.context_length,
            logits: vec![0.0; vocab_size],
            logit_rows: 1,
            logits_in_place,
            input_names,
            cpu_output: MemoryInfo::new(
                AllocationDevice::CPU,
                0,
                AllocatorType::Device,
                MemoryType::CPUOutput,
            )
            .map_err(Error::ort_load(path))?,
            kv_allocator: None,
            batch: None,
            report,
        };
        if engine.report.provider.is_gpu() {
            engine.use_device_memory()?;
        }
        engine.reset_past()?;
        Ok(engine)
    }

    /// Another decoder over the same session (the same weights in memory), with its own KV
    /// cache, for another thread: passes of the two may overlap. CPU and shared-buffer models
    /// only (see [`shared`]); elsewhere this is an `InvalidRequest` and the caller loads a
    /// second session.
    pub fn share(&self) -> Result<OnnxDecoder> {
        self.require_cpu_shared("sharing a session between threads", "load one per worker")?;
        Ok(OnnxDecoder {
            session: Arc::clone(&self.session),
            roles: self.roles.clone(),
            present_names: self.present_names.clone(),
            logits_name: self.logits_name.clone(),
            kv: KvStorage::unbound(),
            kv_dtype: self.kv_dtype,
            kv_heads: self.kv_heads,
            head_size: self.head_size,
            vocab_size: self.vocab_size,
            context_length: self.context_length,
            logits: vec![0.0; self.vocab_size],
            logit_rows: 1,
            logits_in_place: self.logits_in_place,
            input_names: self.input_names.clone(),
            cpu_output: self.cpu_output.clone(),
            kv_allocator: None,
            batch: None,
            report: self.report.clone(),
        })
    }

    /// What batching and sharing a session need: the CPU provider (ONNX Runtime's GPU
    /// allocators are not thread-safe, and the batch cache's slot copies are host memory) and
    /// a shared-buffer cache. `what` names the feature, `otherwise` the way around it.
    fn require_cpu_shared(&self, what: &str, otherwise: &str) -> Result<()> {
        if self.kv_allocator.is_some() || self.report.provider.is_gpu() {
            return Err(Error::invalid(format!(
                "{what} runs on the CPU provider only, not {}; {otherwise}",
                self.report.provider
            )));
        }
        if !matches!(self.kv, KvStorage::Shared { .. }) {
            return Err(Error::invalid(format!(
                "{what} needs a shared-buffer (GroupQueryAttention) model; re-export the folder, or {otherwise}"
            )));
        }
        Ok(())
    }

    /// On a GPU: logits come back into pinned host memory, and the shared KV buffers live on
    /// the device when the attention runs there (see [`attention_on_gpu`]). A failure here is
    /// the provider's, not the model's.
    fn use_device_memory(&mut self) -> Result<()> {
        let device = self.report.device_id.unwrap_or(0);
        let provider = self.report.provider.to_string();
        let unavailable = |e: ort::Error| Error::Provider {
            provider: provider.clone(),
            reason: format!("cannot allocate device memory: {}", e.message()),
        };
        self.cpu_output = MemoryInfo::new(
            AllocationDevice::CUDA_PINNED,
            0,
            AllocatorType::Device,
            MemoryType::CPUOutput,
        )
        .map_err(unavailable)?;
        if matches!(self.kv, KvStorage::Shared { .. }) && attention_on_gpu(self.kv_dtype) {
            let on_device = MemoryInfo::new(
                AllocationDevice::CUDA,
                device,
                AllocatorType::Device,
                MemoryType::Default,
            )
            .map_err(unavailable)?;
            self.kv_allocator =
                Some(Allocator::new(&self.session, on_device).map_err(unavailable)?);
        }
        Ok(())
    }

    /// Bytes the KV cache takes per position (keys and values of every layer).
    pub fn kv_bytes_per_position(&self) -> usize {
        let element = if self.kv_dtype == TensorElementType::Float16 {
            2
        } else {
            4
        };
        self.present_names.len() * self.kv_heads * self.head_size * element
    }

    /// The provider running the graph and where its nodes went.
    pub fn provider_report(&self) -> &ProviderReport {
        &self.report
    }

    /// Whether a pass projects only the positions it needs onto the vocabulary (the graph
    /// takes `logits_to_keep`, as our exporter's do), rather than every position of a prompt.
    pub fn keeps_only_needed_logits(&self) -> bool {
        self.roles.contains(&InputRole::LogitsToKeep)
    }

    fn reset_past(&mut self) -> Result<()> {
        if matches!(self.kv, KvStorage::Chained(_)) {
            let empty = self.kv_tensors(1, 0)?;
            self.kv = KvStorage::Chained(empty.into_iter().map(|t| t.into_dyn()).collect());
        }
        Ok(())
    }

    fn forward_shared(&mut self, tokens: &[u32], plan: StepPlan) -> Result<()> {
        self.ensure_shared_capacity(plan.total_len())?;
        let values = self.step_inputs(tokens, &[plan.past_len], self.logit_rows)?;
        let step = shared::Step {
            names: &self.input_names,
            values: &values,
            tokens: tokens.len(),
        };
        let KvStorage::Shared {
            binding: Some(binding),
            ..
        } = &mut self.kv
        else {
            return Err(Error::Inference("shared KV cache is not bound".into()));
        };
        if self.logits_in_place {
            let want = self.logit_rows * self.vocab_size;
            if self.logits.len() < want {
                self.logits.resize(want, 0.0);
            }
            return shared::run_bound_into(
                &self.session,
                binding,
                step,
                &self.logits_name,
                (&mut self.logits[..want], self.logit_rows),
                &self.cpu_output,
            );
        }
        let logits = shared::run_bound(
            &self.session,
            binding,
            step,
            &self.logits_name,
            &self.cpu_output,
        )?;
        self.copy_last_logits(&logits)
    }

    fn forward_chained(&mut self, tokens: &[u32], plan: StepPlan) -> Result<()> {
        let mut step = self
            .step_inputs(tokens, &[plan.past_len], self.logit_rows)?
            .into_iter();
        let KvStorage::Chained(past) = &self.kv else {
            return Err(Error::Inference("chained KV cache expected".into()));
        };
        // By name: `logits_to_keep` is not among the session's inputs (see `io::input_roles`),
        // so a positional list would not reach it.
        let mut inputs: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(self.roles.len());
        for (index, role) in self.roles.iter().enumerate() {
            let name = self.input_names[index].as_str();
            match *role {
                InputRole::Past(slot) => inputs.push((name, (&past[slot]).into())),
                _ => match step.next() {
                    Some((i, value)) if i == index => inputs.push((name, value.into())),
                    _ => return Err(Error::Inference("input order mismatch".into())),
                },
            }
        }
        // Chained decoders are never shared (see `share`), so the session is this one's.
        let (session, options) = Arc::get_mut(&mut self.session)
            .ok_or_else(|| Error::Inference("a shared session cannot chain its cache".into()))?
            .parts_mut(tokens.len());
        let mut outputs = match options {
            Some(options) => session.run_with_options(inputs, options),
            None => session.run(inputs),
        }
        .map_err(Error::ort_run)?;
        let logits = outputs
            .remove(&self.logits_name)
            .ok_or_else(|| Error::Inference("the model produced no logits".into()))?;
        let mut next_past = Vec::with_capacity(self.present_names.len());
        for name in &self.present_names {
            next_past.push(
                outputs
                    .remove(name)
                    .ok_or_else(|| Error::Inference(format!("the model produced no '{name}'")))?,
            );
        }
        drop(outputs);
        self.kv = KvStorage::Chained(next_past);
        self.copy_last_logits(&logits)
    }
    fn run_step(&mut self, tokens: &[u32], plan: StepPlan, rows: usize) -> Result<()> {
        self.logit_rows = rows;
        match self.kv {
            KvStorage::Shared { .. } => self.forward_shared(tokens, plan),
            KvStorage::Chained(_) => self.forward_chained(tokens, plan),
        }
    }
}

impl DecoderModel for OnnxDecoder {
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn forward(&mut self, tokens: &[u32], plan: StepPlan) -> Result<&mut [f32]> {
        self.run_step(tokens, plan, 1)?;
        Ok(&mut self.logits[..self.vocab_size])
    }

    fn forward_last(&mut self, tokens: &[u32], plan: StepPlan, rows: usize) -> Result<&mut [f32]> {
        let rows = rows.clamp(1, tokens.len().max(1));
        self.run_step(tokens, plan, rows)?;
        Ok(&mut self.logits[..rows * self.vocab_size])
    }

    fn reserve(&mut self, max_total_len: usize) -> Result<bool> {
        // One outlier request must not keep its large cache for good: drop buffers far bigger
        // than this sequence needs (the next allocation is sized for it).
        let mut kept = true;
        if let KvStorage::Shared { capacity, .. } = self.kv {
            if capacity > KV_KEEP_POSITIONS && capacity > 2 * max_total_len {
                self.kv = KvStorage::unbound();
                kept = false;
            }
        }
        // Likewise the logits rows a long verification pass left behind.
        if self.logits.len() > 64 * self.vocab_size {
            self.logits = vec![0.0; self.vocab_size];
        }
        Ok(self.ensure_shared_capacity(max_total_len)? && kept)
    }

    fn can_rollback(&self) -> bool {
        matches!(self.kv, KvStorage::Shared { .. })
    }

    fn truncate_cache(&mut self, len: usize) -> Result<()> {
        match &self.kv {
            // Positions past the attention mask are ignored, then overwritten in place.
            KvStorage::Shared { .. } => Ok(()),
            KvStorage::Chained(_) if len == 0 => self.reset_past(),
            KvStorage::Chained(_) => Err(Error::invalid(
                "partial KV-cache truncation needs a shared-buffer (GroupQueryAttention) model",
            )),
        }
    }
}
