//! What a generation returns: its text and tokens, why it ended, how long it took and how the
//! copy drafts fared. Both loops ([`crate::generate`], [`crate::speculative`]) build these.

use std::time::Instant;

use serde::Serialize;

use crate::stop::FinishReason;

/// Wall-clock split of one generation, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Time to first token: the prompt passes and the first token's sampling.
    pub prefill_ms: f64,
    /// Everything after the first token.
    pub decode_ms: f64,
    pub total_ms: f64,
}

impl Timings {
    pub fn prefill_tok_s(&self, prompt_tokens: usize) -> f64 {
        rate(prompt_tokens, self.prefill_ms)
    }
    pub fn decode_tok_s(&self, new_tokens: usize) -> f64 {
        rate(new_tokens.saturating_sub(1), self.decode_ms)
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// How the copy drafts fared in one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DraftStats {
    /// Forward passes after the prompt (plain decoding needs one per token).
    pub passes: usize,
    pub proposed: usize,
    pub accepted: usize,
}

/// The result of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the previous generation (not run again).
    pub reused_prompt_tokens: usize,
    pub finish_reason: FinishReason,
    pub timings: Timings,
    /// Copy-draft statistics, when speculative decoding ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drafts: Option<DraftStats>,
}

pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
