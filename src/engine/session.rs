//! Session creation (providers, options, the graph cache, placement report) and small input
//! tensors.

use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{RunOptions, Session};
use ort::value::{DynValue, Tensor, TensorElementType};

use super::graph_cache::GraphCache;
use super::pages;
use super::EngineConfig;
use crate::error::{Error, Result};
use crate::folder::ModelFolder;
use crate::provider::{self, Provider, ProviderReport};
use crate::runtime::{self as ort_runtime, OrtRuntime, PlacementLog};

/// Passes over fewer positions (decode steps, verification passes of a draft) are not followed
/// by a shrink: they come again within milliseconds and would map the same regions again (after
/// every pass, one `aligner bench` run mapped hundreds of 4 and 8 MiB regions anew).
const SHRINK_FROM_TOKENS: usize = 64;

/// A session whose drop, which unmaps its model files, holds [`pages::lock_maps`] (a start
/// releasing pages of those files must not meet a range that is being unmapped), and the
/// options its passes run with.
pub(super) struct MappedSession {
    session: ManuallyDrop<Session>,
    /// `None`: ONNX Runtime's defaults (a null pointer to `Run`).
    run_options: Option<RunOptions>,
}

impl MappedSession {
    /// `shrink_arena`: at the end of a pass over [`SHRINK_FROM_TOKENS`] positions or more, hand
    /// back the CPU arena's regions it grew. A long prompt grows the arena by doubling regions
    /// (1, 2, 4, 8 MiB on the default model) that it would otherwise hold for the session's life.
    pub fn new(session: Session, shrink_arena: bool) -> ort::Result<MappedSession> {
        let run_options = if shrink_arena {
            let mut options = RunOptions::new()?;
            options.set("memory.enable_memory_arena_shrinkage", "cpu:0")?;
            Some(options)
        } else {
            None
        };
        Ok(MappedSession {
            session: ManuallyDrop::new(session),
            run_options,
        })
    }

    /// Options for a pass over `tokens` positions.
    pub fn run_options(&self, tokens: usize) -> Option<&RunOptions> {
        options_for(&self.run_options, tokens)
    }

    /// The session to run mutably, and the options to run a pass over `tokens` with.
    pub fn parts_mut(&mut self, tokens: usize) -> (&mut Session, Option<&RunOptions>) {
        (&mut self.session, options_for(&self.run_options, tokens))
    }
}

/// A free function so that [`MappedSession::parts_mut`] can borrow the session mutably beside it.
fn options_for(options: &Option<RunOptions>, tokens: usize) -> Option<&RunOptions> {
    options.as_ref().filter(|_| tokens >= SHRINK_FROM_TOKENS)
}

impl Deref for MappedSession {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl Drop for MappedSession {
    fn drop(&mut self) {
        let _maps = pages::lock_maps();
        // SAFETY: dropped once, here; the field is not used after.
        unsafe { ManuallyDrop::drop(&mut self.session) }
    }
}

/// A session and what it runs on, plus a cache entry it wrote that still needs checking.
pub(super) struct Built {
    pub session: Session,
    pub report: ProviderReport,
    /// Written with prepacked weights by this start; published only after the caller checked
    /// that it computes what the original graph does (see `startup`).
    pub unverified: Option<Unverified>,
}

/// A staged cache entry, not yet visible to other starts.
pub(super) struct Unverified {
    pub cache: GraphCache,
    pub staged: PathBuf,
}

/// What a start that finds no cache entry writes for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CacheWrite {
    /// The optimized graph and ONNX Runtime's prepacked weights (staged, to be checked).
    WithPrepacked,
    /// The optimized graph only (published at once); the weights are prepacked at each start.
    GraphOnly,
}

pub(super) fn build_session(
    runtime: &OrtRuntime,
    folder: &ModelFolder,
    path: &Path,
    config: &EngineConfig,
    write: CacheWrite,
) -> Result<Built> {
    let rejected = |e: ort::Error| rejected(path, e);
    let (mut builder, placements) = base_builder(runtime, config).map_err(rejected)?;
    let available = ort_runtime::available_providers();
    let (provider, notes) = provider::register(&mut builder, &config.provider, folder, &available)?;
    placements.take(); // registration may log; only the commit's placement counts
                       // GPU providers keep their own caches (TensorRT engines); the graph cache is for the CPU.
    let cache = config
        .graph_cache
        .as_ref()
        .filter(|_| provider == Provider::Cpu)
        .map(|root| GraphCache::new(root, path, &runtime.version));
    let (session, unverified) = match cache {
        Some(cache) => commit_with_cache(builder, path, cache, write),
        None => builder.commit_from_file(path).map(|s| (s, None)),
    }
    .map_err(rejected)?;
    let report = ProviderReport {
        provider,
        device_id: provider.is_gpu().then_some(config.provider.device_id),
        notes,
        placements: provider::parse_placements(&placements.take()),
    };
    Ok(Built {
        session,
        report,
        unverified,
    })
}

/// A CPU session over an optimized graph that `build_session` wrote: optimization off.
pub(super) fn load_optimized(
    runtime: &OrtRuntime,
    model: &Path,
    config: &EngineConfig,
) -> Result<Session> {
    base_builder(runtime, config)
        .and_then(|(b, _)| {
            b.with_optimization_level(GraphOptimizationLevel::Disable)
                .map_err(ort::Error::from)
        })
        .and_then(|mut b| b.commit_from_file(model))
        .map_err(|e| rejected(model, e))
}

fn rejected(path: &Path, e: ort::Error) -> Error {
    rejection(path, e.to_string())
}

fn rejection(path: &Path, message: String) -> Error {
    if message.contains("graph capture") {
        // Not the file's fault: CUDA graphs need every node on the GPU, and ONNX Runtime
        // keeps the attention mask's shape arithmetic on the CPU (seen on an H200).
        return Error::invalid(format!(
            "--cuda-graph needs every node on CUDA, but ONNX Runtime placed some on the CPU ({message}); run without --cuda-graph"
        ));
    }
    Error::load(
        path,
        format!("ONNX Runtime rejected the model ({message}); the file may be truncated or corrupt: re-export the folder"),
    )
}

/// Logger, optimization level and threads; no provider registered yet.
fn base_builder(
    runtime: &OrtRuntime,
    config: &EngineConfig,
) -> ort::Result<(SessionBuilder, PlacementLog)> {
    // Verbose so that the placement summary is logged; this session's logger keeps only
    // that (see runtime::PlacementLog).
    let placements = PlacementLog::default();
    let mut builder = Session::builder(&runtime.env)?
        .with_logger(placements.logger())?
        .with_log_level(ort::logging::LogLevel::Verbose)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        // Prepacking the weights is most of a start without a cached entry; spread it over
        // the intra-op threads (default model, 2 threads: 216 ms against 269 ms serially).
        .with_config_entry("session.prepack.enable_parallel", "1")?;
    if let Some(n) = config.threads {
        builder = builder.with_intra_threads(n)?;
    }
    Ok((builder, placements))
}

/// Loads the cached optimized graph when there is one; otherwise optimizes `path` and has
/// ONNX Runtime write the result for the next start.
fn commit_with_cache(
    mut builder: SessionBuilder,
    path: &Path,
    cache: GraphCache,
    write: CacheWrite,
) -> ort::Result<(Session, Option<Unverified>)> {
    if let Some(cached) = cache.cached_model() {
        let loaded = builder
            .clone()
            .with_optimization_level(GraphOptimizationLevel::Disable)
            .map_err(ort::Error::from)
            .and_then(|mut b| b.commit_from_file(&cached));
        match loaded {
            Ok(session) => {
                cache.touch();
                return Ok((session, None));
            }
            Err(_) => cache.invalidate(), // stale or damaged: rebuild it below
        }
    }
    let Ok(staged) = cache.staging() else {
        // Cache folder not writable: just run.
        return builder.commit_from_file(path).map(|s| (s, None));
    };
    // (save the prepacked weights, prepack in parallel)
    let (save, parallel) = match write {
        CacheWrite::WithPrepacked => ("1", "0"),
        CacheWrite::GraphOnly => ("0", "1"),
    };
    let writing = |builder: SessionBuilder| -> ort::Result<SessionBuilder> {
        Ok(builder
            .with_optimized_model_path(&staged)?
            .with_config_entry(
                "session.optimized_model_external_initializers_file_name",
                GraphCache::data_file_name(),
            )?
            .with_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes",
                "1024",
            )?
            // The prepacked blobs go to the data file; a later start maps them from there
            // instead of prepacking again (most of a start) into heap memory of its own.
            .with_config_entry(
                "session.save_external_prepacked_constant_initializers",
                save,
            )?
            // That session is dropped once its entry is checked. Prepacked on the intra-op
            // threads, its blobs are freed into those threads' malloc arenas, whose top
            // `malloc_trim` leaves resident: under load, 7 of 40 such starts kept 25-45 MB
            // more for the process's life. Serially they come from the main arena, which it
            // empties (this once-per-model start takes about 130 ms longer).
            .with_config_entry("session.prepack.enable_parallel", parallel)?)
    };
    match writing(builder.clone()).and_then(|mut b| b.commit_from_file(path)) {
        Ok(session) if write == CacheWrite::WithPrepacked => {
            Ok((session, Some(Unverified { cache, staged })))
        }
        Ok(session) => {
            cache.commit(&staged);
            Ok((session, None))
        }
        Err(_) => {
            cache.discard_staging(&staged);
            builder.commit_from_file(path).map(|s| (s, None))
        }
    }
}

/// A small integer input allocated by ONNX Runtime's allocator: IoBinding can then hold it
/// without the defensive copy it makes of tensors that borrow Rust memory.
pub(super) fn int_tensor(
    allocator: &ort::memory::Allocator,
    dtype: TensorElementType,
    shape: &[usize],
    values: impl Iterator<Item = i64>,
) -> Result<DynValue> {
    Ok(match dtype {
        TensorElementType::Int32 => {
            let mut t = Tensor::<i32>::new(allocator, shape.to_vec()).map_err(Error::ort_run)?;
            let (_, data) = t.extract_tensor_mut();
            data.iter_mut().zip(values).for_each(|(d, v)| *d = v as i32);
            t.into_dyn()
        }
        _ => {
            let mut t = Tensor::<i64>::new(allocator, shape.to_vec()).map_err(Error::ort_run)?;
            let (_, data) = t.extract_tensor_mut();
            data.iter_mut().zip(values).for_each(|(d, v)| *d = v);
            t.into_dyn()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_cuda_graph_is_a_bad_flag_not_a_corrupt_file() {
        let capture = "This session cannot use the graph capture feature as requested by the user as all compute graph nodes have not been partitioned to the CUDAExecutionProvider";
        let e = rejection(Path::new("m/model.onnx"), capture.into()).to_string();
        assert!(e.contains("run without --cuda-graph"), "{e}");
        assert!(!e.contains("corrupt"), "{e}");
        let other = rejection(Path::new("m/model.onnx"), "Protobuf parsing failed".into());
        assert!(
            other.to_string().contains("re-export the folder"),
            "{other}"
        );
    }
}
