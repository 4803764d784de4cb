//! The model folder and its two manifests (`genai_config.json` in onnxruntime-genai's format,
//! `aligner.json` of ours), read with bounds: every number the runtime sizes anything by is
//! range-checked, and a manifest that is really a device, a symlink loop or a huge file is
//! reported as what it is.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::GenerationConfig;
use crate::error::{Error, Result};
use crate::template::Template;

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

/// The fields of genai_config.json's `model` that the runtime reads; others (bos and pad ids,
/// which a decoder-only correction never needs) are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct GenaiModel {
    pub context_length: usize,
    pub decoder: GenaiDecoder,
    pub eos_token_id: OneOrMany,
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

/// Manifests are a few kilobytes; the bound stops a folder whose manifest is really
/// `/dev/zero` (or a huge file) from being read until memory runs out.
pub const MANIFEST_MAX_BYTES: u64 = 4 << 20;

/// Upper bounds of the shape numbers in `genai_config.json`: far above any real model, low
/// enough that loops and buffers sized by them stay small. The engine checks the layer count
/// against the graph's real inputs and the vocabulary against its logits.
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_HEAD_SIZE: usize = 4096;
const MAX_VOCAB: usize = 1 << 22;
const MAX_CONTEXT: usize = 1 << 24;

impl GenaiConfig {
    /// Parses `genai_config.json` and range-checks every number the runtime sizes anything by.
    /// The error names the field and the fix.
    pub fn parse(text: &str) -> std::result::Result<GenaiConfig, String> {
        let genai: GenaiConfig = serde_json::from_str(text)
            .map_err(|e| format!("genai_config.json is invalid ({e}); re-export the folder"))?;
        let m = &genai.model;
        let d = &m.decoder;
        let checks = [
            ("num_hidden_layers", d.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", d.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", d.num_key_value_heads, MAX_HEADS),
            ("head_size", d.head_size, MAX_HEAD_SIZE),
            ("vocab_size", m.vocab_size, MAX_VOCAB),
            ("context_length", m.context_length, MAX_CONTEXT),
        ];
        for (name, value, max) in checks {
            if value == 0 || value > max {
                return Err(format!(
                    "genai_config.json has {name} {value}, outside 1..={max}; re-export the folder"
                ));
            }
        }
        if let Some(bad) = m
            .eos_token_id
            .to_vec()
            .iter()
            .find(|&&t| t as usize >= m.vocab_size)
        {
            return Err(format!(
                "genai_config.json has eos_token_id {bad}, outside the vocabulary of {}; re-export the folder",
                m.vocab_size
            ));
        }
        Ok(genai)
    }
}

/// The newest `aligner.json` format this runtime reads.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

impl AlignerManifest {
    /// Parses `aligner.json`, checking its version and its generation defaults.
    pub fn parse(text: &str) -> std::result::Result<AlignerManifest, String> {
        let m: AlignerManifest = serde_json::from_str(text)
            .map_err(|e| format!("aligner.json is invalid ({e}); re-export the folder"))?;
        if m.format_version > MANIFEST_FORMAT_VERSION {
            return Err(format!(
                "aligner.json has format_version {}, newer than this runtime reads ({MANIFEST_FORMAT_VERSION}); upgrade aligner or re-export the folder",
                m.format_version
            ));
        }
        if let Some(g) = &m.generation {
            g.validate().map_err(|e| {
                format!("aligner.json has invalid generation defaults ({e}); fix or re-export the folder")
            })?;
        }
        Ok(m)
    }
}

/// Reads a manifest of the folder: `None` when it does not exist, an error naming the real
/// cause (a symlink loop, a device, an oversized file, bad UTF-8) when it cannot be read.
fn read_manifest(dir: &Path, name: &str) -> Result<Option<String>> {
    use std::io::Read;
    if !check_file(dir, name)? {
        return Ok(None);
    }
    let path = dir.join(name);
    let cause = |e: std::io::Error| Error::load(dir, format!("cannot read {name}: {e}"));
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .map_err(cause)?
        .take(MANIFEST_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cause)?;
    if bytes.len() as u64 > MANIFEST_MAX_BYTES {
        return Err(Error::load(
            dir,
            format!("{name} is larger than {MANIFEST_MAX_BYTES} bytes, so it is not a manifest; re-export the folder"),
        ));
    }
    String::from_utf8(bytes).map(Some).map_err(|_| {
        Error::load(
            dir,
            format!("{name} is not UTF-8 text; re-export the folder"),
        )
    })
}

/// `Ok(false)` when `name` does not exist; an error when it exists but is no regular file or
/// cannot be inspected (the message carries the system's reason).
fn check_file(dir: &Path, name: &str) -> Result<bool> {
    match std::fs::metadata(dir.join(name)) {
        Ok(meta) if meta.is_file() => Ok(true),
        Ok(_) => Err(Error::load(
            dir,
            format!("{name} is not a regular file; re-export the folder"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::load(dir, format!("cannot read {name}: {e}"))),
    }
}

fn check_regular_file(dir: &Path, name: &str) -> Result<()> {
    if check_file(dir, name)? {
        Ok(())
    } else {
        Err(Error::load(
            dir,
            format!("{name} is missing; re-export the folder"),
        ))
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
        let text = read_manifest(&dir, "genai_config.json")?.ok_or_else(|| {
            Error::load(
                &dir,
                "genai_config.json is missing; export the folder with `python -m aligner_export convert`",
            )
        })?;
        let genai = GenaiConfig::parse(&text).map_err(|e| Error::load(&dir, e))?;
        let manifest = read_manifest(&dir, "aligner.json")?
            .map(|text| AlignerManifest::parse(&text).map_err(|e| Error::load(&dir, e)))
            .transpose()?;
        for file in [genai.model.decoder.filename.as_str(), "tokenizer.json"] {
            check_regular_file(&dir, file)?;
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
    fn eos_accepts_one_or_many() {
        let one: OneOrMany = serde_json::from_str("2").unwrap();
        let many: OneOrMany = serde_json::from_str("[2, 7]").unwrap();
        assert_eq!(one.to_vec(), vec![2]);
        assert_eq!(many.to_vec(), vec![2, 7]);
    }

    fn genai_text(layers: &str, vocab: &str) -> String {
        format!(
            r#"{{"model": {{"context_length": 64, "eos_token_id": 2, "type": "llama", "vocab_size": {vocab},
               "decoder": {{"filename": "model.onnx", "head_size": 8, "num_attention_heads": 2,
                 "num_hidden_layers": {layers}, "num_key_value_heads": 1,
                 "inputs": {{"input_ids": "input_ids", "past_key_names": "k.%d", "past_value_names": "v.%d"}},
                 "outputs": {{"logits": "logits", "present_key_names": "pk.%d", "present_value_names": "pv.%d"}}}}}}}}"#
        )
    }

    #[test]
    fn absurd_manifest_numbers_are_refused_before_anything_is_sized() {
        assert!(GenaiConfig::parse(&genai_text("2", "32")).is_ok());
        // Regression: 1e12 layers looped with growing memory; a vocabulary of 1e12 aborted.
        for (layers, vocab, field) in [
            ("1000000000000", "32", "num_hidden_layers"),
            ("2", "1000000000000", "vocab_size"),
            ("0", "32", "num_hidden_layers"),
        ] {
            let e = GenaiConfig::parse(&genai_text(layers, vocab)).unwrap_err();
            assert!(e.contains(field), "{e}");
        }
        let e = GenaiConfig::parse(&genai_text("2", "2")).unwrap_err();
        assert!(e.contains("eos_token_id 2"), "{e}");
        // A float where a count belongs is a parse error, not a panic.
        assert!(GenaiConfig::parse(&genai_text("1e12", "32")).is_err());
    }

    #[test]
    fn aligner_manifest_checks_version_and_generation_defaults() {
        assert!(AlignerManifest::parse(r#"{"format_version": 1}"#).is_ok());
        let e = AlignerManifest::parse(r#"{"format_version": 9}"#).unwrap_err();
        assert!(e.contains("format_version 9"), "{e}");
        let e = AlignerManifest::parse(r#"{"generation": {"temperature": -1}}"#).unwrap_err();
        assert!(e.contains("temperature"), "{e}");
    }

    #[test]
    fn unreadable_manifests_name_their_real_cause() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::os::unix::fs::symlink(d.join("loop"), d.join("genai_config.json")).unwrap();
        std::os::unix::fs::symlink(d.join("genai_config.json"), d.join("loop")).unwrap();
        let e = ModelFolder::open(d).unwrap_err().to_string();
        assert!(e.contains("symbolic links"), "{e}");
        std::fs::remove_file(d.join("genai_config.json")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.join("genai_config.json")).unwrap();
        let e = ModelFolder::open(d).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(d.join("genai_config.json")).unwrap();
        let big = format!(
            "{{\"pad\": \"{}\"}}",
            "x".repeat(MANIFEST_MAX_BYTES as usize)
        );
        std::fs::write(d.join("genai_config.json"), big).unwrap();
        let e = ModelFolder::open(d).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary text never panics either manifest parser.
        #[test]
        fn manifest_parsers_never_panic_on_any_text(text in "\\PC{0,200}") {
            let _ = GenaiConfig::parse(&text);
            let _ = AlignerManifest::parse(&text);
        }

        /// Real manifests with any numbers in their shape fields: a parse that succeeds has
        /// every number within the bounds the runtime sizes buffers by.
        #[test]
        fn any_numbers_in_genai_config_are_bounded_or_refused(
            layers in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), any::<i64>().prop_map(|n| n.to_string()), any::<f64>().prop_map(|f| format!("{f:?}")), Just("1".to_string())],
            vocab in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), (0u64..100).prop_map(|n| n.to_string())],
        ) {
            if let Ok(g) = GenaiConfig::parse(&genai_text(&layers, &vocab)) {
                prop_assert!((1..=MAX_LAYERS).contains(&g.model.decoder.num_hidden_layers));
                prop_assert!((1..=MAX_VOCAB).contains(&g.model.vocab_size));
                prop_assert!(g.model.vocab_size > 2, "eos 2 is inside the vocabulary");
            }
        }

        /// aligner.json with arbitrary generation values: accepted ones validate.
        #[test]
        fn any_generation_defaults_validate_or_are_refused(
            temperature in prop_oneof![any::<f32>(), Just(f32::INFINITY), Just(-0.0f32)],
            top_p in any::<f32>(),
            max_new in any::<u64>(),
            version in any::<u32>(),
        ) {
            let text = serde_json::json!({"format_version": version, "generation": {
                "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new}}).to_string();
            if let Ok(m) = AlignerManifest::parse(&text) {
                prop_assert!(m.generation.unwrap().validate().is_ok());
                prop_assert!(m.format_version <= MANIFEST_FORMAT_VERSION);
            }
        }
    }

    #[test]
    fn missing_folder_is_a_load_error() {
        let e = ModelFolder::open("/nonexistent/model").unwrap_err();
        assert!(matches!(e, Error::Load { .. }));
        assert!(e.to_string().contains("does not exist"));
    }
}
