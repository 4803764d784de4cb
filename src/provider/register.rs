//! Registering providers on a session builder, and explaining why one would not register.

use ort::ep::{ExecutionProvider, TensorRT, CUDA};
use ort::session::builder::SessionBuilder;

use super::{ArenaExtend, Provider, ProviderChoice, ProviderConfig};
use crate::error::{Error, Result};
use crate::folder::ModelFolder;

/// Explains a registration failure in the user's terms: library missing, CUDA libraries
/// missing, no device, or a version mismatch.
pub fn explain_failure(provider: Provider, available: &[String], message: &str) -> String {
    let lower = message.to_ascii_lowercase();
    let fix_build = "install onnxruntime-gpu==1.31.1 (CUDA 13) and point --ort-lib or ORT_DYLIB_PATH at its libonnxruntime.so";
    if !available.iter().any(|a| a == provider.ort_name()) {
        return format!(
            "the loaded ONNX Runtime has no {} (its providers: {}); {fix_build}",
            provider.ort_name(),
            available.join(", ")
        );
    }
    // The provider library loads the CUDA libraries, so check for those first: a missing
    // libcublas surfaces as "Failed to load library libonnxruntime_providers_cuda.so".
    let cuda_libs = [
        "libcudart",
        "libcublas",
        "libcudnn",
        "libnvinfer",
        "libcufft",
        "libcurand",
    ];
    if let Some(lib) = cuda_libs.iter().find(|l| lower.contains(*l)) {
        format!("CUDA libraries are missing ({lib} cannot be loaded: {message}); install CUDA 13, cuDNN 9 (and TensorRT 10 for tensorrt) or add them to LD_LIBRARY_PATH")
    } else if lower.contains("libonnxruntime_providers") {
        format!("the provider library is missing ({message}); {fix_build}")
    } else if lower.contains("no cuda-capable device")
        || lower.contains("cudaerrornodevice")
        || lower.contains("invalid device ordinal")
    {
        format!("no usable CUDA device ({message}); check nvidia-smi and --device-id")
    } else if lower.contains("driver version is insufficient")
        || lower.contains("version mismatch")
        || lower.contains("unsupported ptx")
    {
        format!("CUDA driver and runtime versions do not match ({message}); update the NVIDIA driver for CUDA 13")
    } else {
        format!("{message}; {fix_build}")
    }
}

/// TensorRT optimisation profiles for the decoder's dynamic inputs: decode (one token) at the
/// minimum, a half-full context at the optimum, a full-context prefill at the maximum.
pub fn trt_profiles(folder: &ModelFolder) -> (String, String, String) {
    let d = &folder.genai.model.decoder;
    let ctx = folder.genai.model.context_length.max(2);
    let shape = |seq: usize, total: usize, past: usize| {
        let mut parts = vec![
            format!("{}:1x{seq}", d.inputs.input_ids),
            format!(
                "{}:1x{total}",
                d.inputs
                    .attention_mask
                    .as_deref()
                    .unwrap_or("attention_mask")
            ),
        ];
        for i in 0..d.num_hidden_layers {
            for pattern in [&d.inputs.past_key_names, &d.inputs.past_value_names] {
                parts.push(format!(
                    "{}:1x{}x{past}x{}",
                    pattern.replace("%d", &i.to_string()),
                    d.num_key_value_heads,
                    d.head_size
                ));
            }
        }
        parts.join(",")
    };
    (
        shape(1, 1, 0),
        shape(1, ctx / 2, ctx / 2),
        shape(ctx, ctx, ctx),
    )
}

fn register_one(
    builder: &mut SessionBuilder,
    provider: Provider,
    config: &ProviderConfig,
    folder: &ModelFolder,
    available: &[String],
) -> std::result::Result<(), String> {
    if provider == Provider::Cpu {
        return Ok(());
    }
    if !available.iter().any(|a| a == provider.ort_name()) {
        return Err(explain_failure(provider, available, ""));
    }
    let mut cuda = CUDA::default()
        .with_device_id(config.device_id)
        .with_cuda_graph(config.cuda_graph)
        .with_arena_extend_strategy(match config.arena_extend {
            ArenaExtend::NextPowerOfTwo => ort::ep::ArenaExtendStrategy::NextPowerOfTwo,
            ArenaExtend::SameAsRequested => ort::ep::ArenaExtendStrategy::SameAsRequested,
        });
    if let Some(limit) = config.gpu_mem_limit {
        cuda = cuda.with_memory_limit(limit);
    }
    if provider == Provider::TensorRt {
        let cache = config.trt_cache_for(folder);
        std::fs::create_dir_all(&cache).map_err(|e| {
            format!(
                "cannot create the TensorRT cache folder {} ({e}); pass a writable --trt-cache-dir",
                cache.display()
            )
        })?;
        let (min, opt, max) = trt_profiles(folder);
        let cache = cache.display().to_string();
        let trt = TensorRT::default()
            .with_device_id(config.device_id)
            .with_fp16(config.trt_fp16)
            .with_engine_cache(true)
            .with_engine_cache_path(&cache)
            .with_timing_cache(true)
            .with_timing_cache_path(&cache)
            .with_profile_min_shapes(min)
            .with_profile_opt_shapes(opt)
            .with_profile_max_shapes(max);
        trt.register(builder)
            .map_err(|e| explain_failure(provider, available, e.message()))?;
    }
    // After TensorRT, CUDA takes the nodes TensorRT cannot (our contrib ops among them).
    cuda.register(builder)
        .map_err(|e| explain_failure(provider, available, e.message()))
}

/// Registers the configured provider(s) on `builder`; returns what will run the graph and the
/// notes on anything passed over.
pub(crate) fn register(
    builder: &mut SessionBuilder,
    config: &ProviderConfig,
    folder: &ModelFolder,
    available: &[String],
) -> Result<(Provider, Vec<String>)> {
    config.validate()?;
    let order: &[Provider] = match config.choice {
        ProviderChoice::Cpu => &[Provider::Cpu],
        ProviderChoice::Cuda => &[Provider::Cuda],
        ProviderChoice::TensorRt => &[Provider::TensorRt],
        ProviderChoice::Auto => &[Provider::TensorRt, Provider::Cuda, Provider::Cpu],
    };
    let mut notes = Vec::new();
    for &provider in order {
        match register_one(builder, provider, config, folder, available) {
            Ok(()) => return Ok((provider, notes)),
            Err(reason) if config.choice == ProviderChoice::Auto => {
                notes.push(format!("{provider} unavailable: {reason}"));
            }
            Err(reason) if config.allow_cpu_fallback => {
                notes.push(format!(
                    "{provider} unavailable, falling back to cpu (--allow-cpu-fallback): {reason}"
                ));
                return Ok((Provider::Cpu, notes));
            }
            Err(reason) => {
                return Err(Error::Provider {
                    provider: provider.to_string(),
                    reason: format!("{reason} (or pass --allow-cpu-fallback to run on the CPU)"),
                })
            }
        }
    }
    Ok((Provider::Cpu, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    #[test]
    fn tensorrt_profiles_cover_decode_to_full_context_prefill() {
        let genai: crate::folder::GenaiConfig = serde_json::from_value(serde_json::json!({
            "model": {
                "context_length": 256, "vocab_size": 10, "eos_token_id": 2, "type": "llama",
                "decoder": {
                    "filename": "model.onnx", "head_size": 64, "num_attention_heads": 4,
                    "num_hidden_layers": 2, "num_key_value_heads": 2, "hidden_size": 256,
                    "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                               "past_key_names": "past_key_values.%d.key",
                               "past_value_names": "past_key_values.%d.value"},
                    "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                                "present_value_names": "present.%d.value"}
                }
            }
        }))
        .unwrap();
        let folder = ModelFolder {
            dir: PathBuf::from("m"),
            genai,
            manifest: None,
        };
        let (min, opt, max) = trt_profiles(&folder);
        assert!(min.starts_with("input_ids:1x1,attention_mask:1x1,past_key_values.0.key:1x2x0x64,"));
        assert!(
            opt.contains("attention_mask:1x128,")
                && opt.contains("past_key_values.1.value:1x2x128x64")
        );
        assert!(max.starts_with("input_ids:1x256,attention_mask:1x256,"));
        assert_eq!(max.split(',').count(), 2 + 2 * 2);
    }

    #[test]
    fn failures_are_explained_by_cause() {
        let cpu_only = vec!["CPUExecutionProvider".to_string()];
        let gpu = vec![
            "TensorrtExecutionProvider".to_string(),
            "CUDAExecutionProvider".to_string(),
            "CPUExecutionProvider".to_string(),
        ];
        let m = explain_failure(Provider::Cuda, &cpu_only, "");
        assert!(
            m.contains("has no CUDAExecutionProvider") && m.contains("onnxruntime-gpu==1.31.1")
        );
        let m = explain_failure(
            Provider::Cuda,
            &gpu,
            // What onnxruntime-gpu 1.31.1 says on a machine without CUDA (seen on this machine).
            concat!(
                "provider_bridge_ort.cc:2043 onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : ",
                "FAIL : Failed to load library /x/libonnxruntime_providers_cuda.so with error: ",
                "libcublasLt.so.13: cannot open shared object file: No such file or directory"
            ),
        );
        assert!(
            m.starts_with("CUDA libraries are missing (libcublas cannot be loaded"),
            "{m}"
        );
        let m = explain_failure(
            Provider::Cuda,
            &gpu,
            "Failed to load library libonnxruntime_providers_cuda.so with error: not found",
        );
        assert!(m.starts_with("the provider library is missing"), "{m}");
        let m = explain_failure(
            Provider::Cuda,
            &gpu,
            "CUDA failure 100: no CUDA-capable device is detected",
        );
        assert!(m.starts_with("no usable CUDA device"), "{m}");
        let m = explain_failure(
            Provider::TensorRt,
            &gpu,
            "CUDA driver version is insufficient for CUDA runtime version",
        );
        assert!(
            m.starts_with("CUDA driver and runtime versions do not match"),
            "{m}"
        );
    }
}
