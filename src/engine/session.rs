//! Session creation (providers, options, placement report) and small input tensors.

use std::path::Path;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType};

use super::EngineConfig;
use crate::config::ModelFolder;
use crate::error::{Error, Result};
use crate::provider::{self, ProviderReport};
use crate::runtime::{self as ort_runtime, OrtRuntime};

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
    // Verbose so that the placement summary is logged; the environment's logger drops
    // everything else (see runtime::capture_log_line).
    let mut builder = Session::builder(&runtime.env)?
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
    ort_runtime::take_placement_log(); // drop lines from earlier sessions
    let session = builder
        .commit_from_file(path)
        .map_err(|e| rejected(e.to_string()))?;
    let report = ProviderReport {
        provider,
        device_id: provider.is_gpu().then_some(config.provider.device_id),
        notes,
        placements: provider::parse_placements(&ort_runtime::take_placement_log()),
    };
    Ok((session, report))
}

/// A small integer input allocated by ONNX Runtime's allocator: IoBinding can then hold it
/// without the defensive copy it makes of tensors that borrow Rust memory.
pub(super) fn int_tensor(
    allocator: &ort::memory::Allocator,
    dtype: TensorElementType,
    shape: [usize; 2],
    values: impl Iterator<Item = i64>,
) -> Result<DynValue> {
    Ok(match dtype {
        TensorElementType::Int32 => {
            let mut t = Tensor::<i32>::new(allocator, shape)?;
            let (_, data) = t.extract_tensor_mut();
            data.iter_mut().zip(values).for_each(|(d, v)| *d = v as i32);
            t.into_dyn()
        }
        _ => {
            let mut t = Tensor::<i64>::new(allocator, shape)?;
            let (_, data) = t.extract_tensor_mut();
            data.iter_mut().zip(values).for_each(|(d, v)| *d = v);
            t.into_dyn()
        }
    })
}
