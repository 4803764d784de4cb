//! Starting a decoder through the graph cache, and checking a new cache entry before any
//! other start may use it.
//!
//! Prepacking the weights (ONNX Runtime's MLAS layouts) is most of a CPU start: on the
//! default model about 130 ms of a 215 ms session build, against about 20 ms of graph
//! optimization. So a new entry holds ONNX Runtime's prepacked weights next to the optimized
//! graph, and a later start maps them from that file instead of prepacking again. They are
//! then file-backed pages, which several processes on the same model share, not heap memory
//! of each.
//!
//! ONNX Runtime 1.31 writes some MatMulNBits blobs that read back wrong (the tiny int8
//! model's K=64 layers give NaN logits). So the start that writes an entry runs a short probe
//! on the original graph and on the entry, and publishes the entry only when their logits
//! agree; otherwise it writes the optimized graph alone, as earlier versions did.

use super::pages;
use super::session::{build_session, load_optimized, CacheWrite};
use super::{EngineConfig, OnnxDecoder};
use crate::error::Result;
use crate::folder::ModelFolder;
use crate::kv_cache::StepPlan;
use crate::model::DecoderModel;
use crate::runtime::OrtRuntime;

/// Prompt tokens of the probe; a decode step follows, so both GroupQueryAttention paths run.
const PROBE_PROMPT: [u32; 8] = [1, 2, 3, 5, 8, 13, 21, 34];

pub(super) fn load(
    runtime: &OrtRuntime,
    folder: &ModelFolder,
    config: &EngineConfig,
) -> Result<OnnxDecoder> {
    let maps = pages::lock_maps();
    let engine = load_checked(runtime, folder, config)?;
    // A session build frees tens of MB of transient buffers (the graph's protobuf, optimizer
    // copies) into glibc's heap, which keeps them resident. After a first session was freed
    // (the start that writes an entry) its raised mmap threshold puts even large ones there.
    release_free_heap();
    // And it reads whole weights that runs read little of (see `pages`).
    let mut dirs = vec![folder.dir.as_path()];
    dirs.extend(config.graph_cache.as_deref());
    pages::release_model_pages(&dirs, &maps);
    Ok(engine)
}

fn load_checked(
    runtime: &OrtRuntime,
    folder: &ModelFolder,
    config: &EngineConfig,
) -> Result<OnnxDecoder> {
    let path = folder.model_path();
    let built = build_session(runtime, folder, &path, config, CacheWrite::WithPrepacked)?;
    let report = built.report.clone();
    let mut engine = OnnxDecoder::from_session(built.session, built.report, folder, &path, config)?;
    let Some(entry) = built.unverified else {
        return Ok(engine);
    };
    let Ok(expected) = probe(&mut engine) else {
        // The run itself fails: leave that to the caller's first real pass to report.
        entry.cache.discard_staging(&entry.staged);
        engine.truncate_cache(0)?;
        return Ok(engine);
    };
    // One model's weights in memory at a time, also while checking; `load` hands the freed
    // heap back once the checked session stands.
    drop(engine);
    let checked = load_optimized(runtime, &entry.staged, config)
        .and_then(|s| OnnxDecoder::from_session(s, report, folder, &path, config))
        .and_then(|mut e| probe(&mut e).map(|logits| (e, logits)));
    // A rejected entry's session is dropped here, before the rebuild below.
    let verified = match checked {
        Ok((engine, logits)) if agree(&expected, &logits) => Some(engine),
        _ => None,
    };
    match verified {
        Some(mut engine) => {
            entry.cache.commit(&entry.staged);
            engine.truncate_cache(0)?;
            Ok(engine)
        }
        None => {
            entry.cache.discard_staging(&entry.staged);
            let built = build_session(runtime, folder, &path, config, CacheWrite::GraphOnly)?;
            OnnxDecoder::from_session(built.session, built.report, folder, &path, config)
        }
    }
}

fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The logits of a short prompt pass and of one decode step after it.
fn probe(engine: &mut OnnxDecoder) -> Result<Vec<f32>> {
    let vocab = engine.vocab_size() as u32;
    let prompt: Vec<u32> = PROBE_PROMPT.iter().map(|t| t % vocab).collect();
    let n = prompt.len();
    let mut logits = engine
        .forward(
            &prompt,
            StepPlan {
                past_len: 0,
                new_len: n,
            },
        )?
        .to_vec();
    let next = engine.forward(
        &[prompt[n - 1]],
        StepPlan {
            past_len: n,
            new_len: 1,
        },
    )?;
    logits.extend_from_slice(next);
    Ok(logits)
}

/// Both finite and equal up to float noise: the same kernels read the same weights, so they
/// agree to the bit in practice; a wrongly read blob gives NaN or wholly other values.
fn agree(expected: &[f32], got: &[f32]) -> bool {
    let scale = expected.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    expected.len() == got.len()
        && expected
            .iter()
            .zip(got)
            .all(|(a, b)| a.is_finite() && b.is_finite() && (a - b).abs() <= 1e-4 * scale)
}

#[cfg(test)]
mod tests {
    use super::agree;

    #[test]
    fn logits_agree_only_when_finite_and_equal_up_to_noise() {
        let a = [1.0, -20.0, 3.5];
        assert!(agree(&a, &a));
        assert!(agree(&a, &[1.0, -20.0, 3.5001]));
        assert!(!agree(&a, &[1.0, -20.0, 3.6]));
        assert!(!agree(&a, &[1.0, f32::NAN, 3.5]));
        assert!(!agree(&[f32::NAN], &[f32::NAN]));
        assert!(!agree(&a, &a[..2]));
    }
}
