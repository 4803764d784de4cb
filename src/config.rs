//! Configuration: generation settings, and the model folder's two manifests
//! (`genai_config.json` in onnxruntime-genai's format, `aligner.json` of ours).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::template::Template;

/// How to generate. Build with `Default` and the `with_*` setters; [`validate`](Self::validate)
/// runs before any generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k limit.
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    /// Count prompt tokens in the repetition penalty too. Off by default: an Aligner copies the
    /// answer it corrects, and penalizing that would push it away from a faithful copy.
    pub penalize_prompt: bool,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Mask EOS tokens out of the logits, as onnxruntime-genai's `min_length` does, so a run
    /// always reaches `max_new_tokens` (benchmarks and parity tests need fixed lengths).
    pub suppress_eos: bool,
    /// Draft from the answer being corrected and verify drafts in one pass (greedy only;
    /// output is identical either way).
    pub copy_drafts: bool,
    /// Upper bound of the adaptive draft length.
    pub max_draft_tokens: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            penalize_prompt: false,
            seed: None,
            stop: Vec::new(),
            suppress_eos: false,
            copy_drafts: true,
            max_draft_tokens: 16,
        }
    }
}

/// Sampling settings to change on top of a [`GenerationConfig`] (from CLI flags or request
/// fields); `None` keeps the base value.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingOverrides {
    #[serde(alias = "max_tokens")]
    pub max_new_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl SamplingOverrides {
    pub fn apply(&self, mut c: GenerationConfig) -> GenerationConfig {
        if let Some(v) = self.max_new_tokens {
            c = c.with_max_new_tokens(v);
        }
        if let Some(v) = self.temperature {
            c = c.with_temperature(v);
        }
        if let Some(v) = self.top_k {
            c = c.with_top_k(v);
        }
        if let Some(v) = self.top_p {
            c = c.with_top_p(v);
        }
        if let Some(v) = self.min_p {
            c = c.with_min_p(v);
        }
        if let Some(v) = self.repetition_penalty {
            c = c.with_repetition_penalty(v);
        }
        if let Some(v) = self.seed {
            c = c.with_seed(v);
        }
        c
    }
}

impl GenerationConfig {
    pub fn with_max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }
    pub fn with_temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }
    pub fn with_top_k(mut self, k: usize) -> Self {
        self.top_k = k;
        self
    }
    pub fn with_top_p(mut self, p: f32) -> Self {
        self.top_p = p;
        self
    }
    pub fn with_min_p(mut self, p: f32) -> Self {
        self.min_p = p;
        self
    }
    pub fn with_repetition_penalty(mut self, p: f32) -> Self {
        self.repetition_penalty = p;
        self
    }
    pub fn with_penalize_prompt(mut self, on: bool) -> Self {
        self.penalize_prompt = on;
        self
    }
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    pub fn with_stop(mut self, stop: impl IntoIterator<Item = String>) -> Self {
        self.stop.extend(stop);
        self
    }
    pub fn with_suppress_eos(mut self, on: bool) -> Self {
        self.suppress_eos = on;
        self
    }

    pub fn with_copy_drafts(mut self, on: bool) -> Self {
        self.copy_drafts = on;
        self
    }
    pub fn with_max_draft_tokens(mut self, n: usize) -> Self {
        self.max_draft_tokens = n;
        self
    }

    /// Rejects values that have no meaning, naming the flag and the valid range.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, msg: String| if ok { Ok(()) } else { Err(Error::invalid(msg)) };
        check(
            self.max_new_tokens >= 1,
            "max_new_tokens must be at least 1".into(),
        )?;
        check(
            self.temperature.is_finite() && self.temperature >= 0.0,
            format!("temperature {} must be >= 0 (0 = greedy)", self.temperature),
        )?;
        check(
            self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0,
            format!("top_p {} must be in (0, 1]", self.top_p),
        )?;
        check(
            self.min_p.is_finite() && (0.0..=1.0).contains(&self.min_p),
            format!("min_p {} must be in [0, 1]", self.min_p),
        )?;
        check(
            self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0,
            format!(
                "repetition_penalty {} must be > 0 (1 = off)",
                self.repetition_penalty
            ),
        )?;
        check(
            (1..=256).contains(&self.max_draft_tokens),
            format!(
                "max_draft_tokens {} must be in [1, 256]",
                self.max_draft_tokens
            ),
        )?;
        check(
            self.stop.iter().all(|s| !s.is_empty()),
            "stop strings must not be empty".into(),
        )
    }
}

/// The subset of `genai_config.json` the runtime needs.
#[derive(Debug, Clone, Deserialize)]
pub struct GenaiConfig {
    pub model: GenaiModel,
    #[serde(default)]
    pub search: GenaiSearch,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenaiSearch {
    /// The graph accepts one buffer as both past and present KV (GroupQueryAttention's
    /// shared-buffer mode), so the cache is never copied between steps.
    #[serde(default)]
    pub past_present_share_buffer: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GenaiModel {
    pub bos_token_id: Option<u32>,
    pub context_length: usize,
    pub decoder: GenaiDecoder,
    pub eos_token_id: OneOrMany,
    pub pad_token_id: Option<u32>,
    #[serde(rename = "type")]
    pub model_type: String,
    pub vocab_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GenaiDecoder {
    pub filename: String,
    pub head_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub num_key_value_heads: usize,
    pub inputs: GenaiInputs,
    pub outputs: GenaiOutputs,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GenaiInputs {
    pub input_ids: String,
    pub attention_mask: Option<String>,
    pub position_ids: Option<String>,
    pub past_key_names: String,
    pub past_value_names: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GenaiOutputs {
    pub logits: String,
    pub present_key_names: String,
    pub present_value_names: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![*x],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `aligner.json`: our manifest. Optional, since onnxruntime-genai's builder does not write it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AlignerManifest {
    #[serde(default)]
    pub format_version: u32,
    pub template: Option<String>,
    #[serde(default)]
    pub generation: Option<GenerationConfig>,
    #[serde(default)]
    pub eos_token_ids: Vec<u32>,
    #[serde(default)]
    pub provenance: serde_json::Value,
    /// Execution providers the folder was exported for ("cpu", "cuda", "tensorrt").
    #[serde(default)]
    pub providers: Vec<String>,
}

/// A validated model folder: paths and parsed manifests, with no ONNX Runtime involved yet.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub dir: PathBuf,
    pub genai: GenaiConfig,
    pub manifest: Option<AlignerManifest>,
}

impl ModelFolder {
    /// The providers `aligner.json` says the folder was exported for, if it says.
    pub fn intended_providers(&self) -> Option<&[String]> {
        self.manifest
            .as_ref()
            .map(|m| m.providers.as_slice())
            .filter(|p| !p.is_empty())
    }

    pub fn open(dir: impl AsRef<Path>) -> Result<ModelFolder> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::load(
                &dir,
                "folder does not exist; run `make model` or pass --model DIR",
            ));
        }
        let genai_path = dir.join("genai_config.json");
        let text = std::fs::read_to_string(&genai_path).map_err(|_| {
            Error::load(
                &dir,
                "genai_config.json is missing; export the folder with `python -m aligner_export convert`",
            )
        })?;
        let genai: GenaiConfig = serde_json::from_str(&text).map_err(|e| {
            Error::load(
                &dir,
                format!("genai_config.json is invalid ({e}); re-export the folder"),
            )
        })?;
        let d = &genai.model.decoder;
        if d.num_hidden_layers == 0 || d.head_size == 0 || d.num_key_value_heads == 0 {
            return Err(Error::load(
                &dir,
                "genai_config.json has zero layers, heads or head size; re-export the folder",
            ));
        }
        if genai.model.context_length == 0 || genai.model.vocab_size == 0 {
            return Err(Error::load(
                &dir,
                "genai_config.json has a zero context_length or vocab_size; re-export the folder",
            ));
        }
        let manifest = match std::fs::read_to_string(dir.join("aligner.json")) {
            Ok(text) => Some(serde_json::from_str(&text).map_err(|e| {
                Error::load(
                    &dir,
                    format!("aligner.json is invalid ({e}); re-export the folder"),
                )
            })?),
            Err(_) => None,
        };
        for file in [d.filename.as_str(), "tokenizer.json"] {
            if !dir.join(file).is_file() {
                return Err(Error::load(
                    &dir,
                    format!("{file} is missing; re-export the folder"),
                ));
            }
        }
        Ok(ModelFolder {
            dir,
            genai,
            manifest,
        })
    }

    pub fn model_path(&self) -> PathBuf {
        self.dir.join(&self.genai.model.decoder.filename)
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    /// EOS ids from both manifests, deduplicated.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let mut ids = self.genai.model.eos_token_id.to_vec();
        if let Some(m) = &self.manifest {
            ids.extend(&m.eos_token_ids);
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The template: an explicit override, else the manifest's; folders without one need `--template`.
    pub fn template(&self, override_name: Option<&str>) -> Result<Template> {
        if let Some(name) = override_name {
            return Template::from_name(name);
        }
        match self.manifest.as_ref().and_then(|m| m.template.as_deref()) {
            Some(name) => Template::from_name(name),
            None => Err(Error::invalid(
                "this model folder has no aligner.json naming a prompt template; pass --template (aligner-v1, aligner-v2, aligner-2b or chatml-correction)",
            )),
        }
    }

    /// Generation defaults recorded by the exporter, else the library defaults.
    pub fn generation_defaults(&self) -> GenerationConfig {
        self.manifest
            .as_ref()
            .and_then(|m| m.generation.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_the_field() {
        assert!(GenerationConfig::default().validate().is_ok());
        let e = GenerationConfig::default()
            .with_top_p(1.5)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("top_p 1.5"));
        let e = GenerationConfig::default()
            .with_temperature(-1.0)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("temperature -1"));
        assert!(GenerationConfig::default()
            .with_min_p(2.0)
            .validate()
            .is_err());
        assert!(GenerationConfig::default()
            .with_repetition_penalty(0.0)
            .validate()
            .is_err());
        assert!(GenerationConfig::default()
            .with_max_new_tokens(0)
            .validate()
            .is_err());
        assert!(GenerationConfig::default()
            .with_stop(["".to_string()])
            .validate()
            .is_err());
    }

    #[test]
    fn eos_accepts_one_or_many() {
        let one: OneOrMany = serde_json::from_str("2").unwrap();
        let many: OneOrMany = serde_json::from_str("[2, 7]").unwrap();
        assert_eq!(one.to_vec(), vec![2]);
        assert_eq!(many.to_vec(), vec![2, 7]);
    }

    #[test]
    fn missing_folder_is_a_load_error() {
        let e = ModelFolder::open("/nonexistent/model").unwrap_err();
        assert!(matches!(e, Error::Load { .. }));
        assert!(e.to_string().contains("does not exist"));
    }
}
