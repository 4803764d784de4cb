//! The graph's inputs and outputs, checked against genai_config.json: which input plays
//! which role, the KV cache's dtype, and the present outputs. A mismatch is a load error that
//! names the input or output and says to re-export. Also each step's input tensors and the
//! copy of the logits it returns.

use std::path::Path;

use ort::session::Session;
use ort::value::{DynValue, TensorElementType, ValueType};

use crate::error::{Error, Result};
use crate::folder::ModelFolder;
use crate::provider::Provider;

use super::session::int_tensor;
use super::OnnxDecoder;

/// What each session input is, in session order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum InputRole {
    InputIds,
    AttentionMask(TensorElementType),
    PositionIds(TensorElementType),
    /// Optional input of our exporter's graphs: logits for only the last k positions.
    LogitsToKeep,
    Past(usize),
}

pub(super) fn tensor_type(vt: &ValueType) -> Option<TensorElementType> {
    match vt {
        ValueType::Tensor { ty, .. } => Some(*ty),
        _ => None,
    }
}

/// Our exporter's optional input: logits for only the last k positions.
const LOGITS_TO_KEEP: &str = "logits_to_keep";

fn layer_name(pattern: &str, i: usize) -> String {
    pattern.replace("%d", &i.to_string())
}

/// The inputs a step binds: their names and roles, in the same order.
pub(super) struct Inputs {
    pub names: Vec<String>,
    pub roles: Vec<InputRole>,
}

/// The role of every session input, and the KV cache's dtype (fp32 or fp16).
///
/// Our exporter's `logits_to_keep` is an input with an initializer (0: every position), so
/// that onnxruntime-genai, which never feeds it, still runs the graph. ONNX Runtime lists such
/// an input among the session's overridable initializers, not its inputs, so it is looked up
/// there: without it, every prefill computes the vocabulary projection of every position.
/// TensorRT is left the graph's default: it would take the input as a shape tensor that its
/// optimisation profiles do not cover, and that path has not yet run on hardware.
pub(super) fn input_roles(
    session: &Session,
    folder: &ModelFolder,
    path: &Path,
    provider: Provider,
) -> Result<(Inputs, TensorElementType)> {
    let d = &folder.genai.model.decoder;
    let names = &d.inputs;

    let mut past_slots = std::collections::HashMap::new();
    for i in 0..d.num_hidden_layers {
        past_slots.insert(layer_name(&names.past_key_names, i), 2 * i);
        past_slots.insert(layer_name(&names.past_value_names, i), 2 * i + 1);
    }
    let mut roles = Vec::new();
    let mut kv_dtype = None;
    let mut input_names = Vec::new();
    let keep = session
        .overridable_initializers()
        .into_iter()
        .find(|i| i.name() == LOGITS_TO_KEEP && provider != Provider::TensorRt)
        .map(|i| (i.name().to_string(), i.dtype().clone()));
    let inputs = session
        .inputs()
        .iter()
        .map(|i| (i.name().to_string(), i.dtype().clone()));
    for (name, dtype) in inputs.chain(keep) {
        let name = name.as_str();
        let ty = tensor_type(&dtype);
        let role = if name == names.input_ids {
            InputRole::InputIds
        } else if Some(name) == names.attention_mask.as_deref() || name == "attention_mask" {
            InputRole::AttentionMask(ty.unwrap_or(TensorElementType::Int64))
        } else if Some(name) == names.position_ids.as_deref() || name == "position_ids" {
            InputRole::PositionIds(ty.unwrap_or(TensorElementType::Int64))
        } else if name == LOGITS_TO_KEEP {
            InputRole::LogitsToKeep
        } else if let Some(&slot) = past_slots.get(name) {
            kv_dtype = ty;
            InputRole::Past(slot)
        } else {
            return Err(Error::load(
                path,
                format!("model input '{name}' is not described by genai_config.json; re-export the folder"),
            ));
        };
        roles.push(role);
        input_names.push(name.to_string());
    }
    let n_past = roles
        .iter()
        .filter(|r| matches!(r, InputRole::Past(_)))
        .count();
    if n_past != 2 * d.num_hidden_layers || !roles.contains(&InputRole::InputIds) {
        return Err(Error::load(
            path,
            format!(
                "model has {n_past} past key/value inputs, genai_config.json expects {}; re-export the folder",
                2 * d.num_hidden_layers
            ),
        ));
    }
    let kv_dtype = match kv_dtype {
        Some(t @ (TensorElementType::Float32 | TensorElementType::Float16)) => t,
        other => {
            return Err(Error::load(
                path,
                format!("KV cache dtype {other:?} is not supported (fp32 or fp16 only)"),
            ))
        }
    };
    let inputs = Inputs {
        names: input_names,
        roles,
    };
    Ok((inputs, kv_dtype))
}

/// A step's inputs and logits, on the decoder.
impl OnnxDecoder {
    /// The per-step inputs (ids, mask, positions, logits to keep) with their session input
    /// index, for `past.len()` rows that each append `tokens.len() / rows` tokens after their
    /// own `past[r]` cached positions. Rows are right-padded: row `r`'s mask has
    /// `past[r] + new` ones, which is how GroupQueryAttention learns each row's length.
    pub(super) fn step_inputs(
        &self,
        tokens: &[u32],
        past: &[usize],
        keep: usize,
    ) -> Result<Vec<(usize, DynValue)>> {
        let rows = past.len();
        let new = tokens.len() / rows;
        let width = past.iter().max().copied().unwrap_or(0) + new;
        let allocator = self.session.allocator();
        let mut out = Vec::with_capacity(4);
        for (index, role) in self.roles.iter().enumerate() {
            let value = match *role {
                InputRole::InputIds => int_tensor(
                    allocator,
                    TensorElementType::Int64,
                    &[rows, new],
                    tokens.iter().map(|&t| t as i64),
                )?,
                InputRole::AttentionMask(dtype) => int_tensor(
                    allocator,
                    dtype,
                    &[rows, width],
                    past.iter()
                        .flat_map(|&p| (0..width).map(move |k| i64::from(k < p + new))),
                )?,
                InputRole::PositionIds(dtype) => int_tensor(
                    allocator,
                    dtype,
                    &[rows, new],
                    past.iter().flat_map(|&p| (p..p + new).map(|k| k as i64)),
                )?,
                InputRole::LogitsToKeep => int_tensor(
                    allocator,
                    TensorElementType::Int64,
                    &[1],
                    std::iter::once(keep as i64),
                )?,
                InputRole::Past(_) => continue,
            };
            out.push((index, value));
        }
        Ok(out)
    }

    /// Copies the last `self.logit_rows` positions' logits into `self.logits`.
    pub(super) fn copy_last_logits(&mut self, value: &DynValue) -> Result<()> {
        let vocab = self.vocab_size;
        let want = self.logit_rows * vocab;
        if self.logits.len() < want {
            self.logits.resize(want, 0.0);
        }
        let shape_err = |n: usize| {
            Error::Inference(format!(
                "logits hold {n} values, expected a multiple of vocab_size {vocab}"
            ))
        };
        match tensor_type(value.dtype()) {
            Some(TensorElementType::Float32) => {
                let (_, data) = value.try_extract_tensor::<f32>().map_err(Error::ort_run)?;
                if data.len() < want || data.len() % vocab != 0 {
                    return Err(shape_err(data.len()));
                }
                self.logits[..want].copy_from_slice(&data[data.len() - want..]);
            }
            Some(TensorElementType::Float16) => {
                let (_, data) = value
                    .try_extract_tensor::<half::f16>()
                    .map_err(Error::ort_run)?;
                if data.len() < want || data.len() % vocab != 0 {
                    return Err(shape_err(data.len()));
                }
                for (dst, src) in self.logits.iter_mut().zip(&data[data.len() - want..]) {
                    *dst = src.to_f32();
                }
            }
            other => {
                return Err(Error::Inference(format!(
                    "unsupported logits dtype {other:?}"
                )))
            }
        }
        Ok(())
    }
}

/// The graph's outputs the decoder binds.
pub(super) struct Outputs {
    /// The present (cache output) names, key then value per layer.
    pub(super) present_names: Vec<String>,
    /// The logits' element type, when the graph declares a tensor type for them.
    pub(super) logits_type: Option<TensorElementType>,
}

/// The graph's outputs, after checking that the graph has every present output and the
/// logits, and that its logits are as wide as the manifest's vocabulary.
pub(super) fn outputs(session: &Session, folder: &ModelFolder, path: &Path) -> Result<Outputs> {
    let d = &folder.genai.model.decoder;
    let outputs = &d.outputs;
    let mut present_names = Vec::with_capacity(2 * d.num_hidden_layers);
    for i in 0..d.num_hidden_layers {
        present_names.push(layer_name(&outputs.present_key_names, i));
        present_names.push(layer_name(&outputs.present_value_names, i));
    }
    let output_names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    let logits = session
        .outputs()
        .iter()
        .find(|o| o.name() == outputs.logits);
    // The manifest's vocabulary sizes every logits buffer: it must be the graph's.
    let graph_vocab = logits
        .and_then(|o| match o.dtype() {
            ValueType::Tensor { shape, .. } => shape.last().copied(),
            _ => None,
        })
        .filter(|&v| v > 0);
    if let Some(v) = graph_vocab.filter(|&v| v as usize != folder.genai.model.vocab_size) {
        return Err(Error::load(
            path,
            format!(
                "genai_config.json says vocab_size {} but the graph's logits have {v} columns; re-export the folder",
                folder.genai.model.vocab_size
            ),
        ));
    }
    for name in present_names.iter().chain(std::iter::once(&outputs.logits)) {
        if !output_names.contains(&name.as_str()) {
            return Err(Error::load(
                path,
                format!(
                    "model has no output '{name}' named in genai_config.json; re-export the folder"
                ),
            ));
        }
    }
    Ok(Outputs {
        present_names,
        logits_type: logits.and_then(|o| tensor_type(o.dtype())),
    })
}

/// Whether ONNX Runtime's CUDA GroupQueryAttention takes a cache of `kv_dtype`: it is
/// registered for fp16 and bf16 only, so an fp32 graph's attention runs on the CPU provider
/// and its shared cache must stay in host memory. With device buffers, ONNX Runtime copies
/// the whole past to the host and the present back on every step, and (seen on an H200 with
/// ORT 1.31.1, every fp32 and cpu-target int8 folder) greedy tokens left the CPU's after the
/// first one.
pub(super) fn attention_on_gpu(kv_dtype: TensorElementType) -> bool {
    matches!(
        kv_dtype,
        TensorElementType::Float16 | TensorElementType::Bfloat16
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_half_precision_caches_live_on_the_gpu() {
        assert!(attention_on_gpu(TensorElementType::Float16));
        assert!(attention_on_gpu(TensorElementType::Bfloat16));
        assert!(!attention_on_gpu(TensorElementType::Float32));
    }
}
