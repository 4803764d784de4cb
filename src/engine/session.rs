//! Session creation (providers, options, placement report) and small input tensors.

use std::path::Path;

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType};

use super::graph_cache::GraphCache;
use super::EngineConfig;
use crate::error::{Error, Result};
use crate::folder::ModelFolder;
use crate::provider::{self, Provider, ProviderReport};
use crate::runtime::{self as ort_runtime, OrtRuntime, PlacementLog};

pub(super) fn build_session(
    runtime: &OrtRuntime,
    folder: &ModelFolder,
    path: &Path,
    config: &EngineConfig,
) -> Result<(Session, ProviderReport)> {
    let rejected = |e: String| {
        Error::load(
            path,
            format!("ONNX Runtime rejected the model ({e}); the file may be truncated or corrupt: re-export the folder"),
        )
    };
    // Verbose so that the placement summary is logged; this session's logger keeps only
    // that (see runtime::PlacementLog).
    let placements = PlacementLog::default();
    let mut builder = Session::builder(&runtime.env)
        .map_err(|e| rejected(e.to_string()))?
        .with_logger(placements.logger())
        .map_err(|e| rejected(e.to_string()))?
        .with_log_level(ort::logging::LogLevel::Verbose)
        .map_err(|e| rejected(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| rejected(e.to_string()))?;
    if let Some(n) = config.threads {
        builder = builder
            .with_intra_threads(n)
            .map_err(|e| rejected(e.to_string()))?;
    }
    let available = ort_runtime::available_providers();
    let (provider, notes) = provider::register(&mut builder, &config.provider, folder, &available)?;
    placements.take(); // registration may log; only the commit's placement counts
                       // GPU providers keep their own caches (TensorRT engines); the graph cache is for the CPU.
    let cache = config
        .graph_cache
        .as_ref()
        .filter(|_| provider == Provider::Cpu)
        .map(|root| GraphCache::new(root, path, &runtime.version));
    let session = match cache {
        Some(cache) => commit_with_cache(builder, path, &cache),
        None => builder.commit_from_file(path),
    }
    .map_err(|e| rejected(e.to_string()))?;
    let report = ProviderReport {
        provider,
        device_id: provider.is_gpu().then_some(config.provider.device_id),
        notes,
        placements: provider::parse_placements(&placements.take()),
    };
    Ok((session, report))
}

/// Loads the cached optimized graph when there is one; otherwise optimizes `path` and has
/// ONNX Runtime write the result for the next start.
fn commit_with_cache(
    mut builder: SessionBuilder,
    path: &Path,
    cache: &GraphCache,
) -> ort::Result<Session> {
    if let Some(cached) = cache.cached_model() {
        let loaded = builder
            .clone()
            .with_optimization_level(GraphOptimizationLevel::Disable)
            .map_err(ort::Error::from)
            .and_then(|mut b| b.commit_from_file(&cached));
        match loaded {
            Ok(session) => {
                cache.touch();
                return Ok(session);
            }
            Err(_) => cache.invalidate(), // stale or damaged: rebuild it below
        }
    }
    let Ok(staged) = cache.staging() else {
        return builder.commit_from_file(path); // cache folder not writable: just run
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
            )?)
        // Not `session.save_external_prepacked_constant_initializers`: ONNX Runtime 1.31 writes
        // MatMulNBits blobs that decode wrongly for some shapes (the tiny int8 model's K=64
        // layers gave NaN logits), and loading them saves nothing measurable on the default
        // model (0.17 s against 0.18 s): prepacking at load is cheap, optimizing is not.
    };
    match writing(builder.clone()).and_then(|mut b| b.commit_from_file(path)) {
        Ok(session) => {
            cache.commit(&staged);
            Ok(session)
        }
        Err(_) => {
            cache.discard_staging(&staged);
            builder.commit_from_file(path)
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
