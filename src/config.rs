//! Configuration: generation settings. The model folder and its manifests are in
//! [`crate::folder`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How to generate. Build with `Default` and the `with_*` setters; [`validate`](Self::validate)
/// runs before any generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
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
    /// Draft from the answer being corrected and verify drafts in one pass. Greedy output is
    /// the plain greedy output, up to near-ties that the multi-token pass's kernels can flip.
    pub copy_drafts: bool,
    /// Length of the first draft and upper bound of the adaptive draft length. While the
    /// length is at this cap, the last few tokens of the copied text (the answer, or an
    /// earlier output), up to half this length, join the draft: that saves the pass that
    /// would verify them alone.
    pub max_draft_tokens: usize,
    /// Verify the first copy draft in the prompt's own pass instead of a pass after it. Where
    /// the correction copies its answer that saves a pass (about a decode step); where it
    /// rewrites from its first token the whole draft is computed for nothing (about a prefill
    /// token each), and the first token only arrives with the draft's verdict. So it is off by
    /// default: it pays on short, copy-heavy corrections only.
    pub draft_with_prompt: bool,
    /// Longest prompt accepted, in tokens (`None`: whatever the context holds). A server sets
    /// it so that one request cannot hold a worker for a very long prompt pass.
    pub max_prompt_tokens: Option<usize>,
    /// Start from the KV cache of the previous generation's prompt where this prompt begins
    /// with the same tokens (the template's fixed prefix, a repeated system prompt or
    /// question), instead of running those tokens again.
    pub reuse_prefix: bool,
}

use crate::sampler::SamplingParams;
pub use crate::sampler::GREEDY_BELOW_TEMPERATURE;

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
            max_draft_tokens: 32,
            draft_with_prompt: false,
            max_prompt_tokens: None,
            reuse_prefix: true,
        }
    }
}

/// Sampling settings to change on top of a [`GenerationConfig`] (from CLI flags or request
/// fields); `None` keeps the base value. With the `cli` feature it is also the command line's
/// flag group, so the flags and the request fields cannot drift apart.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[non_exhaustive]
pub struct SamplingOverrides {
    #[serde(alias = "max_tokens", alias = "max_completion_tokens")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub max_new_tokens: Option<usize>,
    /// 0 = greedy.
    #[cfg_attr(feature = "cli", arg(long))]
    pub temperature: Option<f32>,
    /// 0 = off.
    #[cfg_attr(feature = "cli", arg(long))]
    pub top_k: Option<usize>,
    #[cfg_attr(feature = "cli", arg(long))]
    pub top_p: Option<f32>,
    #[cfg_attr(feature = "cli", arg(long))]
    pub min_p: Option<f32>,
    /// 1 = off; counts generated tokens only unless --penalize-prompt.
    #[cfg_attr(feature = "cli", arg(long))]
    pub repetition_penalty: Option<f32>,
    #[cfg_attr(feature = "cli", arg(long))]
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
    pub fn with_draft_with_prompt(mut self, on: bool) -> Self {
        self.draft_with_prompt = on;
        self
    }
    pub fn with_reuse_prefix(mut self, on: bool) -> Self {
        self.reuse_prefix = on;
        self
    }
    pub fn with_max_prompt_tokens(mut self, n: usize) -> Self {
        self.max_prompt_tokens = Some(n);
        self
    }

    /// The part of these settings the [`Sampler`](crate::sampler::Sampler) reads.
    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed.unwrap_or(0),
        }
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
            format!(
                "temperature {} must be >= 0 and finite (0 = greedy)",
                self.temperature
            ),
        )?;
        check(
            self.max_prompt_tokens != Some(0),
            "max_prompt_tokens must be at least 1".into(),
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
}
